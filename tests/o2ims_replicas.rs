//! Three gateways sharing one cache store name through ZooKeeper (`replicas: { mode: zookeeper }`)
//! in front of the test O2 server (oran dialect): a change the O2 server notifies to replica 1
//! only evicts the item and its collection list on replicas 2 and 3 as well, an unrelated item
//! stays a hit everywhere, the evicted paths are stored again and served as hits afterwards; and
//! a ZooKeeper outage past the session timeout makes every replica drop its entries.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::o2ims::{generation, is_hit, replica_config, replica_origin, CALLBACK};
use common::{request, Conn, Gateway, Response};
use serde_json::json;
use zkgate_discovery::testkit::ZkServer;

/// How long a replica may take to learn of a change through ZooKeeper before the test fails
/// (generous: the machine is shared; the resource's TTL, a minute, is far beyond it).
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);

fn cache_status(r: &Response) -> String {
    r.header("cache-status").unwrap_or("").to_owned()
}

const CHANGED: &str = "changed by the test";

/// An answer from the origin that already shows the change: the item's `_generation`, or the
/// list's body (an array, no `_generation`) holding the new description.
fn fresh(r: &Response, generation_now: u64) -> bool {
    !is_hit(r) && (generation(r) >= generation_now || r.text().contains(CHANGED))
}

fn get(c: &mut Conn, path: &str, replica: usize) -> Response {
    let r = c.get(path).expect("GET");
    assert_eq!(r.status, 200, "replica {replica} {path}: {}", r.text());
    r
}

/// The first GET of `path` is answered by the origin, the second from the cache.
fn warm(c: &mut Conn, path: &str, replica: usize) {
    let first = get(c, path, replica);
    assert!(
        !is_hit(&first),
        "replica {replica} {path}: first GET was a hit: {}",
        cache_status(&first)
    );
    let second = get(c, path, replica);
    assert!(
        is_hit(&second),
        "replica {replica} {path}: second GET not a hit: {}",
        cache_status(&second)
    );
}

#[test]
fn a_change_notified_to_one_replica_evicts_on_all_three() {
    let zk = ZkServer::start();
    let o2 = replica_origin();
    let config = replica_config(&zk.connect_string(), &o2);
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&config)).collect();

    // The SMO's subscription, with replica 1's callback only.
    o2.subscribe_smo(&format!("http://{}{CALLBACK}", gws[0].http));

    // Two resources of one pool: one changes, the other must stay cached.
    let pool = o2.ids("resourcePool")[0].clone();
    let list = format!("{}/resourcePools/{pool}/resources", o2.base());
    let ids: Vec<String> = o2
        .get(&list, None)
        .json()
        .as_array()
        .expect("a list of resources")
        .iter()
        .filter_map(|r| r["resourceId"].as_str().map(str::to_owned))
        .collect();
    assert!(ids.len() >= 2, "the fake's pool {pool} has < 2 resources");
    let changed = format!("{list}/{}", ids[0]);
    let unrelated = format!("{list}/{}", ids[1]);

    let mut conns: Vec<Conn> = gws
        .iter()
        .map(|g| Conn::open(g.http).expect("connection"))
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        for path in [&changed, &list, &unrelated] {
            warm(c, path, i + 1);
        }
    }

    let generation_now = o2.mutate(json!({ "kind": "resource", "id": ids[0], "op": "modify",
                                  "fields": { "description": CHANGED } }))["generation"]
        .as_u64()
        .expect("generation");

    // Every replica, for the item and its list, until a miss carrying the new generation.
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    for (i, c) in conns.iter_mut().enumerate() {
        for path in [&changed, &list] {
            let mut last = String::new();
            let evicted = loop {
                let r = get(c, path, i + 1);
                if fresh(&r, generation_now) {
                    break true;
                }
                last = format!("{} generation {}", cache_status(&r), generation(&r));
                if Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            assert!(
                evicted,
                "replica {} still serves the old {path} (wanted generation {generation_now}, last: {last})",
                i + 1
            );
        }
    }

    for (i, c) in conns.iter_mut().enumerate() {
        // The unrelated item was never evicted.
        let r = get(c, &unrelated, i + 1);
        assert!(
            is_hit(&r),
            "replica {}: the unrelated {unrelated} was evicted: {}",
            i + 1,
            cache_status(&r)
        );
        // The evicted paths are stored again once the epoch slack is past, then served from
        // the cache with the new content.
        for path in [&changed, &list] {
            let deadline = Instant::now() + PROPAGATION_LIMIT;
            let mut last = String::new();
            let stored = loop {
                let r = get(c, path, i + 1);
                assert!(
                    generation(&r) >= generation_now || r.text().contains(CHANGED),
                    "replica {} {path}: the old body again",
                    i + 1
                );
                if is_hit(&r) {
                    break true;
                }
                last = cache_status(&r);
                if Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(
                stored,
                "replica {} never stores {path} again after its eviction (last: {last})",
                i + 1
            );
        }
    }
}

/// `zkgate_cache_evictions_total{reason="session_loss"}` of store o2.
fn session_loss_evictions(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("zkgate_cache_evictions_total{")
                && l.contains(r#"reason="session_loss""#)
                && l.contains(r#"store="o2""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn a_lost_zookeeper_session_drops_the_entries() {
    let mut zk = ZkServer::start();
    let o2 = replica_origin();
    let config = replica_config(&zk.connect_string(), &o2);
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&config)).collect();
    let pool = o2.ids("resourcePool")[0].clone();
    let item = format!("{}/resourcePools/{pool}", o2.base());
    let mut conns: Vec<Conn> = gws
        .iter()
        .map(|g| Conn::open(g.http).expect("connection"))
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        warm(c, &item, i + 1);
        assert_eq!(session_loss_evictions(&gws[i].metrics()), 0);
    }

    // Down for longer than the 2 s session timeout, so the sessions expire (a wait for the
    // outage to last, not a timing asserted).
    zk.kill();
    std::thread::sleep(Duration::from_secs(5));
    zk.restart();

    for (i, gw) in gws.iter().enumerate() {
        let dropped = common::eventually(Duration::from_secs(30), || {
            session_loss_evictions(&gw.metrics()) > 0
        });
        assert!(
            dropped,
            "replica {} dropped nothing after its session was lost:\n{}",
            i + 1,
            gw.metrics()
        );
    }
    // The entry is gone: the next GET goes to the origin.
    for (i, gw) in gws.iter().enumerate() {
        let r = request(gw.http, "GET", &item, &[], b"").expect("GET");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            !is_hit(&r),
            "replica {}: still a hit after the session loss",
            i + 1
        );
    }
}
