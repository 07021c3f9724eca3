//! O2 IMS notifications of every dialect end to end: a gateway with the `o2ims` profile and a
//! `cache_notify` callback, the test O2 server subscribed to it as the SMO, and a change made on
//! the server's control port. A resource pool's change evicts the pool, the pools' list and
//! (oran, whose pools name their site) the site that embeds the pool; an oran location's
//! change, whose `objectRef` holds a tracking UUID, evicts the location by its
//! `globalLocationId`; pti's delete with no `objectRef` evicts by its JSON-string prior state;
//! netweave's top-level resource evicts its pool's list by the flat `resourcePoolId`; an
//! `objectRef` under a known kind but an unknown path evicts the whole kind. Every unrelated
//! entry stays a hit, and the server's request counters show that a hit never reached it.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use common::o2ims::{is_hit, Dialect, O2Ims, Opts};
use common::{request, Gateway};
use serde_json::json;

const CALLBACK: &str = "/zkgate/o2ims/notify";

/// The fake (reads without a bearer, so the cache serves them without an `auth:` scope),
/// subscribed to a gateway caching it under the o2ims profile.
fn start(d: Dialect) -> (O2Ims, Gateway) {
    let fake = O2Ims::start(
        d,
        Opts {
            auth: false,
            ..Opts::default()
        },
    );
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - {{ name: o2, backends: ["{api}"] }}
routes:
  - name: o2ims-notify
    match: {{ path: {CALLBACK} }}
    plugin:
      cache_notify:
        store: o2
        auth: {{ jwt: {{ jwks_file: "{jwks}" }} }}
  - name: o2ims
    match: {{ path_prefix: /o2ims }}
    upstream: o2
    plugin:
      # netweave sends `no-store` on everything: the profile's lifetimes decide.
      cache: {{ profile: o2ims, store: o2, override_origin: true }}
"#,
        api = fake.api,
        jwks = fake.jwks_path().display(),
    ));
    fake.subscribe_smo(&format!("http://{}{CALLBACK}", gw.http));
    (fake, gw)
}

/// GETs `path` through the gateway (200 expected); whether the cache answered it, checked
/// against the fake's counter: a hit never reaches it, anything else does once.
fn hit(fake: &O2Ims, gw: &Gateway, path: &str) -> bool {
    let before = fake.count(path);
    let r = request(gw.http, "GET", path, &[], b"").unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    let hit = is_hit(&r);
    assert_eq!(
        fake.count(path) - before,
        u64::from(!hit),
        "{path}: Cache-Status {:?}",
        r.header("cache-status")
    );
    hit
}

/// Caches every path (a GET, then a hit).
fn warm(fake: &O2Ims, gw: &Gateway, paths: &[String]) {
    for path in paths {
        hit(fake, gw, path);
        assert!(hit(fake, gw, path), "{path} is not cached");
    }
}

/// Changes `kind` `id` on the fake, which notifies the gateway (and waits for its answer).
fn change(fake: &O2Ims, kind: &str, id: &str) {
    let changed = fake.mutate(json!({"kind": kind, "id": id, "op": "modify", "wait": true}));
    assert_eq!(changed["notified"], json!(1), "{changed}");
}

/// Checks that `what` evicted every path of `evicted` and none of `kept`.
fn check(fake: &O2Ims, gw: &Gateway, evicted: &[String], kept: &[String], what: &str) {
    for path in evicted {
        assert!(!hit(fake, gw, path), "{path} survived {what}");
    }
    for path in kept {
        assert!(hit(fake, gw, path), "{path} was evicted by {what}");
    }
}

/// Caches `evicted` and `kept`, has `what` happen (`event`), then [`check`]s it.
fn evicts(
    fake: &O2Ims,
    gw: &Gateway,
    evicted: &[String],
    kept: &[String],
    what: &str,
    event: impl FnOnce(),
) {
    warm(fake, gw, evicted);
    warm(fake, gw, kept);
    event();
    check(fake, gw, evicted, kept, what);
}

/// The applied notifications of store o2 in `dialect`.
fn applied(gw: &Gateway, dialect: &str) -> u64 {
    let series = format!(
        "zkgate_cache_notifications_total{{dialect=\"{dialect}\",result=\"applied\",store=\"o2\"}} "
    );
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A pool's change in `d`: the pool and the list of pools go, the other pools, the pool's
/// resources list of another pool and the resource types stay.
fn a_pool_change_evicts_the_pool_and_its_list(d: Dialect) {
    let (fake, gw) = start(d);
    let b = d.base();
    let pools = fake.ids("resourcePool");
    let (p0, p2) = (&pools[0], &pools[2]);
    let evicted = vec![
        format!("{b}/resourcePools/{p0}"),
        format!("{b}/resourcePools"),
    ];
    let kept = vec![
        format!("{b}/resourcePools/{p2}"),
        format!("{b}/resourcePools/{p2}/resources"),
        format!("{b}/resourceTypes"),
    ];
    evicts(&fake, &gw, &evicted, &kept, "the pool's change", || {
        change(&fake, "resourcePool", p0)
    });
    assert_eq!(applied(&gw, d.name()), 1, "{}", gw.metrics());
}

#[test]
fn pti_a_pool_change_evicts_the_pool_and_its_list() {
    a_pool_change_evicts_the_pool_and_its_list(Dialect::Pti);
}

#[test]
fn netweave_a_pool_change_evicts_the_pool_and_its_list() {
    a_pool_change_evicts_the_pool_and_its_list(Dialect::Netweave);
}

#[test]
fn oran_a_pool_change_evicts_its_site_and_a_location_change_its_global_location_id() {
    let d = Dialect::Oran;
    let (fake, gw) = start(d);
    let b = d.base();
    let pools = fake.ids("resourcePool");
    let sites = fake.ids("oCloudSite");
    let locations = fake.ids("location");
    // The fake's first two pools are in the first site, the third in the second; each site
    // is in the location of the same rank.
    let site_of = |pool: &str| {
        let r = fake.get(&format!("{b}/resourcePools/{pool}"), None);
        r.json()["oCloudSiteId"].as_str().unwrap().to_owned()
    };
    let (p0, p2) = (&pools[0], &pools[2]);
    assert_eq!(site_of(p0), sites[0]);
    assert_eq!(site_of(p2), sites[1]);

    let evicted = vec![
        format!("{b}/resourcePools/{p0}"),
        format!("{b}/resourcePools"),
        format!("{b}/oCloudSites/{}", sites[0]),
        format!("{b}/oCloudSites"),
    ];
    let kept = vec![
        format!("{b}/resourcePools/{p2}"),
        format!("{b}/oCloudSites/{}", sites[1]),
        format!("{b}/locations/{}", locations[0]),
        format!("{b}/locations"),
        format!("{b}/resourceTypes"),
    ];
    evicts(&fake, &gw, &evicted, &kept, "the pool's change", || {
        change(&fake, "resourcePool", p0)
    });

    // oran's location objectRef names a tracking UUID, not the globalLocationId the URLs hold:
    // the id in the states decides.
    let changed =
        fake.mutate(json!({"kind": "location", "id": locations[0], "op": "modify", "wait": true}));
    assert_eq!(changed["notified"], json!(1), "{changed}");
    let tracking = changed["objectRef"].as_str().unwrap();
    assert!(
        !tracking.ends_with(&locations[0]),
        "the fake's ref is a tracking id: {tracking}"
    );
    let evicted = vec![
        format!("{b}/locations/{}", locations[0]),
        format!("{b}/locations"),
    ];
    let kept = vec![
        format!("{b}/locations/{}", locations[1]),
        format!("{b}/oCloudSites/{}", sites[1]),
        format!("{b}/resourcePools/{p2}"),
        format!("{b}/resourceTypes"),
    ];
    warm(&fake, &gw, &[format!("{b}/locations/{}", locations[1])]);
    check(&fake, &gw, &evicted, &kept, "the location's change");
    assert_eq!(applied(&gw, "oran"), 2, "{}", gw.metrics());
}

/// The first resource of `pool` in the fake.
fn first_resource(fake: &O2Ims, pool: &str) -> String {
    let inv = fake.inventory();
    let b = fake.base();
    let r = fake.get(&format!("{b}/resourcePools/{pool}/resources"), None);
    let list = r.json();
    // netweave wraps its lists: {"resources": [...], "total": N}.
    let items = list.get("resources").unwrap_or(&list);
    let id = items[0]["resourceId"].as_str();
    id.unwrap_or_else(|| panic!("no resource in {pool}: {list} ({inv})"))
        .to_owned()
}

/// A resource's change in a dialect: the fake and its gateway, the fake's first pool `p0` and
/// that pool's first resource `r0`, and the entries the change keeps (another pool's resources,
/// the pool itself, the resource types).
struct ResourceChange {
    fake: O2Ims,
    gw: Gateway,
    p0: String,
    r0: String,
    kept: Vec<String>,
}

fn resource_change(d: Dialect) -> ResourceChange {
    let (fake, gw) = start(d);
    let b = d.base();
    let pools = fake.ids("resourcePool");
    let (p0, p2) = (pools[0].clone(), &pools[2]);
    let r0 = first_resource(&fake, &p0);
    let kept = vec![
        format!("{b}/resourcePools/{p2}/resources"),
        format!("{b}/resourcePools/{p0}"),
        format!("{b}/resourceTypes"),
    ];
    ResourceChange {
        fake,
        gw,
        p0,
        r0,
        kept,
    }
}

#[test]
fn pti_a_delete_without_object_ref_evicts_by_its_prior_state() {
    let d = Dialect::Pti;
    let ResourceChange {
        fake,
        gw,
        p0,
        r0,
        kept,
    } = resource_change(d);
    let b = d.base();
    let evicted = vec![
        format!("{b}/resourcePools/{p0}/resources/{r0}"),
        format!("{b}/resourcePools/{p0}/resources"),
    ];
    evicts(&fake, &gw, &evicted, &kept, "the resource's delete", || {
        // pti never sends inventory deletes by itself: the control port forces the body it
        // would send (no objectRef, the states a JSON string).
        fake.notify(json!({"kind": "resource", "id": r0, "op": "delete", "wait": true}));
        let sent = fake
            .deliveries()
            .into_iter()
            .rfind(|d| d["kind"] == "notification")
            .unwrap();
        assert!(sent["body"].get("objectRef").is_none(), "{sent}");
        assert!(sent["body"]["priorObjectState"].is_string(), "{sent}");
    });
    assert_eq!(applied(&gw, "pti"), 1, "{}", gw.metrics());
}

#[test]
fn netweave_a_top_level_resource_evicts_its_pools_list_by_the_flat_pool_id() {
    let d = Dialect::Netweave;
    let ResourceChange {
        fake,
        gw,
        p0,
        r0,
        kept,
    } = resource_change(d);
    let b = d.base();
    let evicted = vec![
        format!("{b}/resources/{r0}"),
        format!("{b}/resources"),
        format!("{b}/resourcePools/{p0}/resources"),
    ];
    evicts(&fake, &gw, &evicted, &kept, "the resource's change", || {
        change(&fake, "resource", &r0)
    });
}

#[test]
fn oran_an_unknown_path_under_a_known_kind_evicts_the_whole_kind() {
    let d = Dialect::Oran;
    let (fake, gw) = start(d);
    let b = d.base();
    let pools = fake.ids("resourcePool");
    let evicted = vec![
        format!("{b}/resourcePools/{}", pools[0]),
        format!("{b}/resourcePools/{}", pools[2]),
        format!("{b}/resourcePools"),
    ];
    let kept = vec![format!("{b}/resourceTypes"), format!("{b}/locations")];
    evicts(&fake, &gw, &evicted, &kept, "a kind-wide purge", || {
        fake.notify(
            json!({"raw": {"notificationId": "k1", "notificationEventType": 1,
            "objectRef": format!("{b}/resourcePools/{}/future/sub/path", pools[0])}, "wait": true}),
        );
    });
}
