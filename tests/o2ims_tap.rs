//! `cache_notify` in tap mode end to end: the O2 fake is subscribed with a gateway route that
//! proxies to the SMO's own callback (a small receiver here). A notification the SMO accepts
//! reaches it byte for byte and evicts what it names; one the SMO refuses (401, 500) evicts
//! nothing; one over `max_body` still reaches the SMO whole and evicts nothing.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::o2ims::{Dialect, Headers, O2Ims, Opts, Receiver};
use common::{eventually, request, Gateway};
use serde_json::json;

const TAP: &str = "/smo/o2ims/notify";

fn gateway(fake: &O2Ims, smo: &Receiver) -> Gateway {
    Gateway::start(&format!(
        r#"
upstreams:
  - {{ name: o2, backends: ["{api}"] }}
  - {{ name: smo, backends: ["{smo}"] }}
routes:
  - name: tap
    match: {{ path: {TAP} }}
    upstream: smo
    plugin:
      cache_notify: {{ store: o2, mode: tap, max_body: 4KiB }}
  - name: o2ims
    match: {{ path_prefix: /o2ims-infrastructureInventory }}
    upstream: o2
    plugin:
      cache: {{ profile: o2ims, store: o2 }}
"#,
        api = fake.api,
        smo = smo.addr,
    ))
}

/// GETs `path` through the gateway; whether the cache answered it.
fn hit(gw: &Gateway, path: &str) -> bool {
    let r = request(gw.http, "GET", path, &[], b"").unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    common::o2ims::is_hit(&r)
}

/// Caches `path` and checks that it is a hit.
fn cached(gw: &Gateway, path: &str) {
    hit(gw, path);
    assert!(hit(gw, path), "{path} is not cached");
}

/// `zkgate_cache_notify_tap_total{result}` of the tap route.
fn tapped(gw: &Gateway, result: &str) -> u64 {
    let series = format!("zkgate_cache_notify_tap_total{{result=\"{result}\",route=\"tap\"}} ");
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Whether `zkgate_cache_notify_tap_total{result}` comes to `n` (within 5 s).
fn tapped_reaches(gw: &Gateway, result: &str, n: u64) -> bool {
    eventually(Duration::from_secs(5), || tapped(gw, result) == n)
}

/// POSTs `body` to the tap route as the O-Cloud would (JSON, with `headers` too); the SMO's
/// 204 comes back.
fn post_to_tap(gw: &Gateway, headers: &[(&str, &str)], body: &str) {
    let headers: Vec<_> = [("content-type", "application/json")]
        .into_iter()
        .chain(headers.iter().copied())
        .collect();
    let r = request(gw.http, "POST", TAP, &headers, body.as_bytes()).unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
}

#[test]
fn the_smo_gets_every_notification_and_only_those_it_accepts_evict() {
    let smo = Receiver::start();
    let fake = O2Ims::start(
        Dialect::Oran,
        Opts {
            auth: false,
            headers: Headers::None,
            ..Opts::default()
        },
    );
    let gw = gateway(&fake, &smo);
    // The fake checks the callback with a GET, which the route passes to the SMO.
    fake.subscribe_smo(&format!("http://{}{TAP}", gw.http));
    assert!(
        smo.requests()
            .iter()
            .any(|r| r.method == "GET" && r.target == TAP),
        "the reachability GET did not reach the SMO: {:?}",
        smo.requests()
    );

    let b = Dialect::Oran.base();
    let pools = fake.ids("resourcePool");
    let (p0, p1, p2) = (&pools[0], &pools[1], &pools[2]);
    let pool = |p: &str| format!("{b}/resourcePools/{p}");
    for p in [p0, p1, p2] {
        cached(&gw, &pool(p));
    }
    cached(&gw, &format!("{b}/resourceTypes"));

    // Accepted by the SMO: evicted, and the SMO has the very bytes the O-Cloud sent.
    let changed =
        fake.mutate(json!({"kind": "resourcePool", "id": p0, "op": "modify", "wait": true}));
    assert_eq!(changed["notified"], json!(1), "{changed}");
    assert!(tapped_reaches(&gw, "evaluated", 1));
    assert!(
        !hit(&gw, &pool(p0)),
        "{p0} survived a notification the SMO took"
    );
    assert!(
        hit(&gw, &format!("{b}/resourceTypes")),
        "an unrelated entry went"
    );
    let sent = fake
        .deliveries()
        .into_iter()
        .find(|d| d["kind"] == "notification")
        .unwrap();
    let got = smo.posts();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].json(), sent["body"]);
    // Byte for byte, with a body whose spacing no JSON encoder would choose.
    let odd = format!(
        "{{ \"notificationId\" : \"tap-1\",\n  \"notificationEventType\":1,\
         \"objectRef\":\"{}\"   }}",
        pool(p1)
    );
    post_to_tap(&gw, &[], &odd);
    assert!(tapped_reaches(&gw, "evaluated", 2));
    assert_eq!(smo.posts()[1].body, odd.as_bytes());
    assert!(
        !hit(&gw, &pool(p1)),
        "{p1} survived a notification the SMO took"
    );

    // Refused by the SMO: nothing evicted, whatever the O-Cloud retries.
    cached(&gw, &pool(p2));
    for status in [401, 500] {
        smo.set_statuses(204, status);
        let before = tapped(&gw, "refused");
        fake.mutate(json!({"kind": "resourcePool", "id": p2, "op": "modify", "wait": true}));
        assert!(eventually(Duration::from_secs(5), || tapped(
            &gw, "refused"
        ) > before));
        assert!(
            hit(&gw, &pool(p2)),
            "the SMO answered {status}, yet {p2} went"
        );
    }
    smo.set_statuses(204, 204);

    // Over max_body: the SMO gets the whole body, the cache keeps its entries.
    let big = format!(
        r#"{{"notificationId":"tap-big","notificationEventType":1,"objectRef":"{}","pad":"{}"}}"#,
        pool(p2),
        "x".repeat(5000)
    );
    post_to_tap(&gw, &[], &big);
    assert!(tapped_reaches(&gw, "too_large", 1));
    assert!(smo.posts().iter().any(|p| p.body == big.as_bytes()));
    assert!(hit(&gw, &pool(p2)), "an unread body evicted {p2}");
    // The same without a declared length: cut off as it streams, still passed on whole.
    let chunked = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    post_to_tap(&gw, &[("transfer-encoding", "chunked")], &chunked);
    assert!(tapped_reaches(&gw, "too_large", 2));
    assert_eq!(
        smo.posts()
            .iter()
            .filter(|p| p.body == big.as_bytes())
            .count(),
        2
    );
    assert!(hit(&gw, &pool(p2)), "an unread body evicted {p2}");
    assert_eq!(tapped(&gw, "evaluated"), 2);
}

#[test]
fn a_tap_route_needs_an_upstream() {
    // Without one, a tap route has nowhere to send what it observes.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zkgate.yaml");
    std::fs::write(
        &config,
        "routes:\n  - name: tap\n    match: { path: /n }\n    plugin:\n      \
         cache_notify: { store: o2, mode: tap }\n",
    )
    .unwrap();
    let (code, stderr) = common::check(&config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("routes[0]: needs an action: upstream or respond"),
        "{stderr}"
    );
}
