//! The cache warm-up (`cache.o2ims.warmup`) end to end: listed collections are fetched from the
//! O2 fake before any client asks, so the first client GET is a hit; after the ZooKeeper
//! session is lost (which drops every entry) and the channel comes back, they are fetched
//! again. With the gateway's own subscription, the warm-up waits for it to be active, and runs
//! again when a lost one is made again after the store was degraded. And the checks a config
//! gets: the route must have an upstream, a host to key by and a rule caching each path.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::o2ims::{is_hit, o2ims_config, replica_origin, Receiver};
use common::{eventually, request, Gateway};
use zkgate_discovery::testkit::ZkServer;

/// `zkgate_cache_warmup_total{result}` of store o2.
fn warmed(gw: &Gateway, result: &str) -> u64 {
    let series = format!("zkgate_cache_warmup_total{{result=\"{result}\",store=\"o2\"}} ");
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn session_loss_evictions(gw: &Gateway) -> u64 {
    gw.metrics()
        .lines()
        .filter(|l| {
            l.starts_with("zkgate_cache_evictions_total") && l.contains("reason=\"session_loss\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn listed_collections_are_cached_before_clients_and_again_after_a_lost_session() {
    let mut zk = ZkServer::start();
    let o2 = replica_origin();
    let b = o2.base();
    // The host is the route's (`test.local`, what the test client sends): no `host:` needed.
    let gw = Gateway::start(&format!(
        "zookeeper: {{ connect: \"{}\", session_timeout: 2s }}\n{}",
        zk.connect_string(),
        o2ims_config(
            &o2,
            "host: test.local, path_prefix: /",
            r#"
replicas: { mode: zookeeper, epoch_slack: 200ms }
o2ims:
  warmup:
    paths: ["{base}/resourceTypes", "{base}/resourcePools"]
    version: v2
    concurrency: 2
"#,
        ),
    ));
    let types = format!("{b}/resourceTypes");
    let pools = format!("{b}/resourcePools");

    // Before any client: one GET of each at the origin, both stored.
    assert!(
        eventually(Duration::from_secs(20), || warmed(&gw, "stored") == 2),
        "no warm-up:\n{}\n{}",
        gw.metrics(),
        gw.log()
    );
    assert_eq!((o2.count(&types), o2.count(&pools)), (1, 1));
    assert!(
        gw.log().contains("cache warm-up of store o2"),
        "{}",
        gw.log()
    );

    // The first client GET of each is a hit, and the origin sees nothing more.
    for path in [&types, &pools] {
        let r = request(gw.http, "GET", path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(is_hit(&r), "{path}: {:?}", r.header("cache-status"));
    }
    assert_eq!((o2.count(&types), o2.count(&pools)), (1, 1));
    // Another host's key is not warmed.
    let r = request(gw.http, "GET", &types, &[("host", "test.local:8080")], b"").unwrap();
    assert!(!is_hit(&r), "{:?}", r.header("cache-status"));

    // Down for longer than the 2 s session timeout, so the session expires and every entry is
    // dropped (a wait for the outage to last, not a timing asserted).
    zk.kill();
    std::thread::sleep(Duration::from_secs(5));
    zk.restart();
    assert!(
        eventually(Duration::from_secs(30), || {
            session_loss_evictions(&gw) > 0 && warmed(&gw, "stored") >= 4 && o2.count(&pools) >= 2
        }),
        "no warm-up after the session came back:\n{}",
        gw.metrics()
    );
    let before = o2.count(&pools);
    let r = request(gw.http, "GET", &pools, &[], b"").unwrap();
    assert!(is_hit(&r), "{:?}", r.header("cache-status"));
    assert_eq!(o2.count(&pools), before);
    assert_eq!(warmed(&gw, "failed"), 0);
}

/// Whether `GET /cache` says store o2 is degraded.
fn degraded(gw: &Gateway) -> bool {
    common::get(gw.admin, "/cache").json()["stores"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["store"] == "o2"))
        .is_some_and(|s| s["degraded"] == true)
}

#[test]
fn the_warm_up_waits_for_the_subscription_and_runs_again_when_it_is_made_again() {
    let o2 = replica_origin();
    let b = o2.base();
    let smo = Receiver::start();
    // The SMO's callback fails the O-Cloud's reachability check: no subscription yet.
    smo.set_statuses(500, 204);
    let gw = Gateway::start(&o2ims_config(
        &o2,
        "host: test.local, path_prefix: /",
        &format!(
            r#"
o2ims:
  subscription: {{ callback: "{callback}", check_every: 500ms }}
  warmup: {{ paths: ["{{base}}/resourceTypes", "{{base}}/resourcePools"], version: v2 }}
"#,
            callback = smo.url("/notify"),
        ),
    ));
    let types = format!("{b}/resourceTypes");
    let posts = || o2.count_method("POST", &format!("{b}/subscriptions"));
    assert!(
        eventually(Duration::from_secs(30), || posts() >= 2),
        "the gateway did not try to subscribe again:\n{}",
        gw.log()
    );
    assert_eq!(warmed(&gw, "stored"), 0, "warmed up with no subscription");
    assert_eq!(o2.count(&types), 0);

    // The subscription goes through: the channel is healthy, the warm-up runs.
    smo.set_statuses(204, 204);
    assert!(
        eventually(Duration::from_secs(30), || warmed(&gw, "stored") == 2),
        "no warm-up once subscribed:\n{}\n{}",
        gw.metrics(),
        gw.log()
    );
    assert_eq!(o2.count(&types), 1);

    // The O-Cloud forgets it, and cannot take a new one for a while: the store turns degraded
    // (a loss is tolerated for two check periods); once made again, the warm-up runs again.
    smo.set_statuses(500, 204);
    assert_eq!(o2.restart(), 1);
    assert!(
        eventually(Duration::from_secs(30), || degraded(&gw)),
        "never degraded:\n{}",
        gw.log()
    );
    assert_eq!(warmed(&gw, "stored"), 2);
    smo.set_statuses(204, 204);
    assert!(
        eventually(Duration::from_secs(30), || warmed(&gw, "stored") >= 4
            && o2.count(&types) >= 2),
        "no warm-up after the subscription was made again:\n{}\n{}",
        gw.metrics(),
        gw.log()
    );
}

/// Writes `yaml` to `config`, which `zkgate check` must refuse naming each of `parts`; its
/// stderr.
fn refused(config: &Path, yaml: &str, parts: &[&str]) -> String {
    std::fs::write(config, yaml).unwrap();
    let (code, stderr) = common::check(config);
    assert_eq!(code, Some(1), "{stderr}");
    for part in parts {
        assert!(stderr.contains(part), "{part}\n{stderr}");
    }
    stderr
}

#[test]
fn a_warm_up_needs_an_upstream_a_host_and_a_rule_for_each_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zkgate.yaml");
    refused(
        &config,
        r#"
upstreams: [{ name: o2, backends: ["127.0.0.1:9"] }]
routes:
  - name: o2ims
    match: { path_prefix: / }
    upstream: o2
    plugin:
      cache:
        profile: o2ims
        o2ims:
          warmup: { paths: ["{base}/resourceTypes", "/metrics"], concurrency: 100 }
  - name: edited
    match: { host: a.example, path_prefix: / }
    upstream: o2
    request_headers: { set: { x-a: b } }
    plugin:
      cache:
        profile: o2ims
        o2ims: { warmup: { paths: ["{base}/resourceTypes"] } }
"#,
        &[
            "routes[0].plugin.cache.o2ims.warmup.concurrency: must be between 1 and 64",
            "routes[1].plugin.cache.o2ims.warmup: cannot be used on a route with a rewrite",
        ],
    );
    // With the concurrency fixed, the checks that need the route.
    let stderr = refused(
        &config,
        r#"
upstreams: [{ name: o2, backends: ["127.0.0.1:9"] }]
routes:
  - name: o2ims
    match: { path_prefix: / }
    upstream: o2
    plugin:
      cache:
        profile: o2ims
        o2ims:
          warmup: { paths: ["{base}/resourceTypes", "/metrics"] }
"#,
        &[
            "routes[0].plugin.cache.o2ims.warmup.host: is required",
            "routes[0].plugin.cache.o2ims.warmup.paths[1]: `/metrics`: no rule of this route caches it",
        ],
    );
    assert!(!stderr.contains("paths[0]"), "{stderr}");
}
