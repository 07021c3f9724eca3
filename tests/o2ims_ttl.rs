//! Lifetimes by template and what an O2 answer keeps through the cache, end to end against the
//! test O2 server (pti on /v1, oran on /v2, no credentials): a rule's short TTL gives a hit within
//! it and a miss after it; `?all_fields`, `?all_fields=` and `?all_fields=true` are three
//! entries; pti's `Link`/`X-Total-Count` are replayed on a hit; a client's forwarding headers do
//! not change what another client gets; a POST of a subscription evicts the subscription list.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::o2ims::{Dialect, Headers, O2Ims, Opts};
use common::{request, Gateway, Response};
use serde_json::json;

/// Bound of every poll (the shared machine may be slow; the TTLs are far below it).
const LIMIT: Duration = Duration::from_secs(10);

struct Setup {
    pti: O2Ims,
    oran: O2Ims,
    gw: Gateway,
}

fn start() -> Setup {
    let opts = Opts {
        auth: false,
        headers: Headers::None,
        ..Opts::default()
    };
    let pti = O2Ims::start(Dialect::Pti, opts.clone());
    let oran = O2Ims::start(Dialect::Oran, opts);
    let gw = Gateway::start(&format!(
        r#"upstreams:
  - {{ name: pti, backends: ["{pti}"] }}
  - {{ name: oran, backends: ["{oran}"] }}
routes:
  - name: pti
    match: {{ path_prefix: /o2ims-infrastructureInventory/v1 }}
    upstream: pti
    plugin:
      cache:
        profile: o2ims
        store: o2
        rules:
          - {{ path: "{{base}}/resourcePools/{{poolId}}/resources", ttl: 300ms }}
  - name: oran
    match: {{ path_prefix: /o2ims-infrastructureInventory/v2 }}
    upstream: oran
    plugin:
      cache:
        profile: o2ims
        store: o2
        rules:
          - {{ path: "{{base}}/resourcePools/{{poolId}}/resources", ttl: 300ms }}
"#,
        pti = pti.api,
        oran = oran.api,
    ));
    Setup { pti, oran, gw }
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Response {
    let r = request(gw.http, "GET", path, headers, b"").expect("GET through the gateway");
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r
}

fn status(r: &Response) -> &str {
    r.header("cache-status").unwrap_or("")
}

fn is_hit(r: &Response) -> bool {
    status(r).split(';').any(|p| p.trim() == "hit")
}

/// The first GET of `path` goes to the origin, the second is a hit.
fn warm(gw: &Gateway, path: &str) {
    let r = get(gw, path, &[]);
    assert!(!is_hit(&r), "{path}: first GET a hit: {}", status(&r));
    let r = get(gw, path, &[]);
    assert!(is_hit(&r), "{path}: second GET not a hit: {}", status(&r));
}

/// Polls `path` until it is no hit, within LIMIT.
fn expires(gw: &Gateway, path: &str) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if !is_hit(&get(gw, path, &[])) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_template_rule_sets_the_lifetime_on_both_dialects() {
    let s = start();
    for fake in [&s.pti, &s.oran] {
        let pool = &fake.ids("resourcePool")[0];
        let short = format!("{}/resourcePools/{pool}/resources", fake.base());
        // A path of the profile only: its own lifetime (minutes), so still a hit at the end.
        let long = format!("{}/resourcePools/{pool}", fake.base());
        warm(&s.gw, &long);
        warm(&s.gw, &short);
        assert!(
            expires(&s.gw, &short),
            "{short} still a hit after its 300ms TTL"
        );
        // Stored again by the miss (or the next GET), then a hit again.
        let deadline = Instant::now() + LIMIT;
        let again = loop {
            if is_hit(&get(&s.gw, &short, &[])) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(again, "{short} is not stored again after it expired");
        let r = get(&s.gw, &long, &[]);
        assert!(
            is_hit(&r),
            "{long} expired with the rule's TTL: {}",
            status(&r)
        );
    }
}

#[test]
fn all_fields_variants_are_three_entries() {
    let s = start();
    let pool = &s.pti.ids("resourcePool")[0];
    let item = format!("{}/resourcePools/{pool}", s.pti.base());
    let variants = [
        format!("{item}?all_fields"),
        format!("{item}?all_fields="),
        format!("{item}?all_fields=true"),
    ];
    for v in &variants {
        for _ in 0..3 {
            get(&s.gw, v, &[]);
        }
    }
    for v in &variants {
        assert_eq!(s.pti.count(v), 1, "{v}: origin requests");
    }
}

#[test]
fn pti_paging_headers_are_replayed_on_a_hit() {
    let s = start();
    let b = s.pti.base();
    // A pti list with more than one page (30 a page), so it has a `Link`.
    let mut candidates = vec![
        format!("{b}/resourceTypes"),
        format!("{b}/resourcePools"),
        format!("{b}/deploymentManagers"),
    ];
    for p in s.pti.ids("resourcePool") {
        candidates.push(format!("{b}/resourcePools/{p}/resources"));
    }
    let mut paged = None;
    for c in &candidates {
        let direct = s.pti.get(c, None);
        if direct.header("link").is_some() {
            paged = Some((c.clone(), direct));
            break;
        }
    }
    let (path, direct) = paged.expect("no pti list of the fake has a second page");
    let miss = get(&s.gw, &path, &[]);
    let hit = get(&s.gw, &path, &[]);
    assert!(is_hit(&hit), "{path}: {}", status(&hit));
    for h in ["link", "x-total-count"] {
        assert!(direct.header(h).is_some(), "{path}: the fake sent no {h}");
        assert_eq!(miss.header(h), direct.header(h), "{path} {h} on the miss");
        assert_eq!(hit.header(h), direct.header(h), "{path} {h} on the hit");
    }
    assert_eq!(hit.body, miss.body);
}

#[test]
fn forwarding_headers_of_one_client_do_not_reach_another() {
    let s = start();
    let b = s.oran.base();
    let pool = &s.oran.ids("resourcePool")[0];
    let path = format!("{b}/resourcePools/{pool}");
    let direct = s.oran.get(&path, None);
    let forged = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-prefix", "/evil"),
        ("forwarded", "host=evil.example;proto=http"),
    ];
    // (The fake does not echo these headers, so this sees the gateway keying or splitting on
    // them, not an origin that builds its answer from them.)
    let first = get(&s.gw, &path, &forged);
    assert!(!is_hit(&first), "{}", status(&first));
    let other = get(&s.gw, &path, &[]);
    assert_eq!(
        other.body, direct.body,
        "another client got a different body"
    );
    assert!(!other.text().contains("evil"), "{}", other.text());
    // And the other way round: a forged request does not get something else stored.
    let again = get(&s.gw, &path, &forged);
    assert_eq!(again.body, direct.body);
    // One request from the test itself (`direct`), one from the gateway.
    assert_eq!(s.oran.count(&path), 2, "the forged headers split the entry");
}

#[test]
fn a_posted_subscription_evicts_the_subscription_list() {
    let s = start();
    let list = format!("{}/subscriptions", s.pti.base());
    warm(&s.gw, &list);
    let before = s.pti.count_method("GET", &list);
    let sub = json!({ "callback": "http://127.0.0.1:9/zkgate/o2ims/notify",
                      "consumerSubscriptionId": "3f20d850-af4f-a84f-fb5a-0ad585410361",
                      "filter": "" });
    let r = request(
        s.gw.http,
        "POST",
        &list,
        &[("content-type", "application/json")],
        sub.to_string().as_bytes(),
    )
    .expect("POST through the gateway");
    assert!(
        r.status == 200 || r.status == 201,
        "subscription refused: {} {}",
        r.status,
        r.text()
    );
    let after = get(&s.gw, &list, &[]);
    assert!(
        !is_hit(&after),
        "the subscription list survived the POST: {}",
        status(&after)
    );
    assert!(
        after
            .text()
            .contains("3f20d850-af4f-a84f-fb5a-0ad585410361"),
        "{}",
        after.text()
    );
    assert_eq!(s.pti.count_method("GET", &list), before + 1);
}
