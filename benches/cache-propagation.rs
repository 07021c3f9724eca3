//! O2 IMS notification to eviction on three replicas: the time from an inventory change at the
//! test O2 server (oran dialect) to the first answer of each gateway that is no longer a cache
//! hit and carries the new `_generation`, over 200 rounds (`CACHE_PROPAGATION_ROUNDS` lowers
//! it). The fake notifies replica 1's `cache_notify` callback only; replicas 2 and 3 learn of it
//! through ZooKeeper (`replicas: { mode: zookeeper }`). Prints p50/p99 per replica and overall.
//! `cargo bench --bench cache-propagation` (`make bench-cache-propagation`); needs Debian's
//! `zookeeper` and Python's `cryptography` (`make deps-test`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::o2ims::{generation, is_hit, replica_config, replica_origin, CALLBACK};
use common::{percentile, Conn, Gateway};
use serde_json::json;
use zkgate_discovery::testkit::ZkServer;

/// `cargo bench` passes `--bench` (200 rounds); under `cargo test` this is a 5-round smoke test.
/// `CACHE_PROPAGATION_ROUNDS=N` sets it either way.
fn rounds() -> usize {
    if let Some(n) = std::env::var("CACHE_PROPAGATION_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if std::env::args().any(|a| a == "--bench") {
        200
    } else {
        5
    }
}

/// How long a replica may take before the round counts it as not evicted (the entry's TTL,
/// 1 minute for a resource, would be the backstop).
fn give_up_after() -> Duration {
    Duration::from_millis(
        std::env::var("CACHE_PROPAGATION_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let zk = ZkServer::start();
    let o2 = replica_origin();
    let config = replica_config(&zk.connect_string(), &o2);
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&config)).collect();

    // The SMO's subscription, with replica 1's callback (the fake checks it is reachable).
    o2.subscribe_smo(&format!("http://{}{CALLBACK}", gws[0].http));

    // The resources' item paths, read from the fake directly; each round changes the next one,
    // so a round never starts on an item a previous round evicted moments ago.
    let items: Vec<(String, String)> = o2
        .ids("resourcePool")
        .iter()
        .flat_map(|pool| {
            let list = o2.get(
                &format!("{}/resourcePools/{pool}/resources", o2.base()),
                None,
            );
            assert_eq!(list.status, 200, "{}", list.text());
            list.json()
                .as_array()
                .expect("a list of resources")
                .iter()
                .filter_map(|r| r["resourceId"].as_str().map(str::to_owned))
                .map(|id| {
                    (
                        format!("{}/resourcePools/{pool}/resources/{id}", o2.base()),
                        id,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!items.is_empty(), "the fake has no resources");
    let mut conns: Vec<Conn> = gws
        .iter()
        .map(|g| Conn::open(g.http).expect("connection"))
        .collect();

    let n = rounds();
    let limit = give_up_after();
    let mut lags: Vec<Vec<Duration>> = vec![Vec::new(); 3];
    let mut missed = [0usize; 3];
    for round in 0..n {
        let (path, resource) = &items[round % items.len()];
        // Warm: each replica answers the item from its cache.
        for (i, c) in conns.iter_mut().enumerate() {
            let hit = (0..50).any(|_| {
                let r = c.get(path).expect("warm GET");
                assert_eq!(r.status, 200, "replica {}: {}", i + 1, r.text());
                is_hit(&r)
            });
            assert!(
                hit,
                "replica {} never served {path} from its cache (an item evicted before is \
                 never stored again while the clock bug of bugs.md stands: use at most as many \
                 rounds as the fake has resources)",
                i + 1
            );
        }
        let t0 = Instant::now();
        let change = json!({ "kind": "resource", "id": resource, "op": "modify",
                             "fields": { "description": format!("round {round}") } });
        let fresh = o2.mutate(change)["generation"]
            .as_u64()
            .expect("generation");
        let mut done = [false; 3];
        while done.iter().any(|d| !d) && t0.elapsed() < limit {
            for (i, c) in conns.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                let r = c.get(path).expect("poll GET");
                if !is_hit(&r) && generation(&r) >= fresh {
                    lags[i].push(t0.elapsed());
                    done[i] = true;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for (i, d) in done.iter().enumerate() {
            if !d {
                missed[i] += 1;
            }
        }
    }

    println!(
        "cache notification -> eviction, oran dialect, 3 replicas, {n} rounds (time from the \
         change at the O2 server to the first fresh miss)"
    );
    let mut all = Vec::new();
    for (i, v) in lags.iter_mut().enumerate() {
        report(&format!("replica {}", i + 1), v, missed[i]);
        all.extend_from_slice(v);
    }
    report("overall", &mut all, missed.iter().sum());
}

fn report(what: &str, v: &mut [Duration], missed: usize) {
    v.sort();
    if v.is_empty() {
        println!("{what:<10} n=0    not evicted within the timeout: {missed}");
        return;
    }
    println!(
        "{what:<10} n={:<4} p50={:>8.2?} p99={:>8.2?} max={:>8.2?} not evicted within the timeout: {missed}",
        v.len(),
        percentile(v, 0.50),
        percentile(v, 0.99),
        v[v.len() - 1]
    );
}
