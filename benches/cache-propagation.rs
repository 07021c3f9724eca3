//! O2 IMS notification to eviction on three replicas: the time from an inventory change at the
//! test O2 server (oran dialect) to the first answer of each gateway that is no longer a cache
//! hit and carries the new `_generation`, over 200 rounds (`CACHE_PROPAGATION_ROUNDS` lowers
//! it). The fake notifies replica 1's `cache_notify` callback only; replicas 2 and 3 learn of it
//! through ZooKeeper (`replicas: { mode: zookeeper }`). Prints p50/p99 per replica and overall,
//! and next to them the gateways' own `zkgate_cache_notify_to_evict_seconds{origin="remote"}`
//! over the same rounds (p50/p99 interpolated in its buckets; it counts each tag of a
//! notification, from its arrival at replica 1 to the eviction, so the fake's delivery is not in
//! it). `CACHE_PROPAGATION_LOGS=DIR` keeps each replica's log there (with
//! `RUST_LOG=zkgate_discovery::cache_bus=trace`, the timestamps of each publish, ZooKeeper write,
//! watch event and read).
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

    let before: Vec<Buckets> = gws.iter().map(remote_lag).collect();
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

    println!(
        "the gateways' zkgate_cache_notify_to_evict_seconds{{origin=\"remote\"}} over these \
         rounds (one observation per tag; from the arrival at replica 1, ms resolution)"
    );
    let mut sum = Buckets::default();
    for (i, (gw, before)) in gws.iter().zip(&before).enumerate() {
        let delta = remote_lag(gw).minus(before);
        delta.report(&format!("replica {}", i + 1));
        sum.add(&delta);
    }
    sum.report("overall");

    if let Some(dir) = std::env::var_os("CACHE_PROPAGATION_LOGS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("log directory");
        for (i, gw) in gws.iter().enumerate() {
            let path = dir.join(format!("replica-{}.log", i + 1));
            std::fs::write(&path, gw.log()).expect("write a replica's log");
        }
        println!("replica logs in {}", dir.display());
    }
}

/// A cumulative Prometheus histogram: (upper bound, count) in ascending order.
#[derive(Default, Clone)]
struct Buckets(Vec<(f64, f64)>);

/// `zkgate_cache_notify_to_evict_seconds{origin="remote"}` of one replica, from its /metrics.
fn remote_lag(gw: &Gateway) -> Buckets {
    let text = gw.metrics();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("zkgate_cache_notify_to_evict_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.contains(r#"origin="remote""#) {
            continue;
        }
        let le = labels
            .split(',')
            .find_map(|l| l.strip_prefix("le=\""))
            .map(|l| l.trim_end_matches('"'));
        let bound = match le {
            Some("+Inf") => f64::INFINITY,
            Some(b) => b.parse().expect("a bucket bound"),
            None => continue,
        };
        out.push((bound, value.trim().parse().expect("a bucket count")));
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Buckets(out)
}

impl Buckets {
    fn minus(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let was = before.0.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
                    (le, n - was)
                })
                .collect(),
        )
    }

    fn add(&mut self, other: &Buckets) {
        if self.0.is_empty() {
            self.0 = other.0.clone();
            return;
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            mine.1 += theirs.1;
        }
    }

    fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |b| b.1)
    }

    /// The `q` quantile, linear within its bucket, as Prometheus' `histogram_quantile` does.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, n) in &self.0 {
            if n >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let within = if n > prev.1 {
                    (rank - prev.1) / (n - prev.1)
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * within);
            }
            prev = (le, n);
        }
        None
    }

    fn report(&self, what: &str) {
        match (self.quantile(0.50), self.quantile(0.99)) {
            (Some(p50), Some(p99)) => println!(
                "{what:<10} n={:<4} p50={:>8.2?} p99={:>8.2?} (metric)",
                self.count() as u64,
                Duration::from_secs_f64(p50),
                Duration::from_secs_f64(p99),
            ),
            _ => println!("{what:<10} n=0    (metric: no remote eviction observed)"),
        }
    }
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
