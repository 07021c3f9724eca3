//! The cache's Redis tier through real gateways: two replicas sharing one real `redis-server`,
//! Redis killed with SIGKILL in the middle of a bounded load of GETs (every request still
//! answered 2xx, the outage visible in `zkgate_cache_redis_up`, `redis_errors_total` and the
//! log), then restarted (the tier comes back on both replicas unasked, and shares entries
//! again); Redis hung with SIGSTOP under load (each command waits its timeout, no request
//! fails, the breaker turns the tier off, SIGCONT brings it back); and in front of the test O2 IMS server with tokens, no deployment manager's secret
//! marker ever reaching Redis while other O2 answers do.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::o2ims::{o2ims_config, Dialect, O2Ims, Opts};
use common::redis::Redis;
use common::{eventually, request, Backend, Conn, Gateway};

/// A replica of a gateway caching `/items/**` of `origin` for 10 minutes in store `shared`,
/// whose second tier is `redis`: a failure or two turns the tier off, and it is retried soon.
fn replica(origin: &Backend, redis: &Redis) -> Gateway {
    Gateway::start(&format!(
        r#"
upstreams: [{{ name: origin, backends: ["{}"] }}]
routes:
  - name: items
    match: {{ path_prefix: /items/ }}
    upstream: origin
    timeout: 5s
    plugin:
      cache:
        store: shared
        override_origin: true
        rules: [{{ path: /items/**, ttl: 10m }}]
        redis: {{ url: "{}", timeout: 200ms, down_after: 2, retry_after: 300ms }}
"#,
        origin.addr,
        redis.url()
    ))
}

/// The value of the series `line` (name and labels, as printed) in a metrics text.
fn series(metrics: &str, line: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.trim().parse().ok())
}

fn redis_up(gw: &Gateway) -> Option<f64> {
    series(&gw.metrics(), "zkgate_cache_redis_up{store=\"shared\"}")
}

/// Every `zkgate_cache_redis_errors_total` of store `shared`, summed over operations.
fn redis_errors(gw: &Gateway) -> f64 {
    gw.metrics()
        .lines()
        .filter(|l| {
            l.starts_with("zkgate_cache_redis_errors_total{") && l.contains("store=\"shared\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn entry_keys(redis: &Redis) -> usize {
    redis.keys().iter().filter(|k| k.contains("}:e:")).count()
}

/// GETs on keep-alive connections to both replicas, running in the background.
struct Load {
    /// Requests answered or failed so far.
    done: Arc<AtomicUsize>,
    /// Each failure: its target and the status and body, or the error.
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<thread::JoinHandle<()>>,
}

/// Starts `threads` clients, alternating between the replicas at `addrs`, each sending
/// `per_thread` GETs of `/items/{prefix}{k}-{n}`: keys of its own that repeat (hits in memory,
/// in Redis from the other replica) and keep growing (misses that ask Redis first), so Redis
/// is read and written all along. A client stops at the first failure of any.
fn load(addrs: [SocketAddr; 2], threads: usize, per_thread: usize, prefix: &'static str) -> Load {
    let done = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let clients = (0..threads)
        .map(|t| {
            let (done, failures) = (done.clone(), failures.clone());
            thread::spawn(move || {
                let mut conn = Conn::open(addrs[t % 2]).unwrap();
                for n in 0..per_thread {
                    // Half of each thread's targets are also read by the next thread, which
                    // uses the other replica.
                    let target = format!("/items/{prefix}{}-{}", (t + n % 2) % threads, n / 3);
                    match conn.get(&target) {
                        Ok(r) if (200..300).contains(&r.status) => {}
                        Ok(r) => failures.lock().unwrap().push(format!(
                            "{target}: {} {}",
                            r.status,
                            r.text()
                        )),
                        Err(e) => failures.lock().unwrap().push(format!("{target}: {e}")),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    // One failure fails the test: stop, rather than wait out every request's
                    // read timeout when the gateway hangs.
                    if !failures.lock().unwrap().is_empty() {
                        break;
                    }
                }
            })
        })
        .collect();
    Load {
        done,
        failures,
        clients,
    }
}

impl Load {
    /// Requests answered or failed so far.
    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits for every client to end: the failures.
    fn finish(self) -> Vec<String> {
        for c in self.clients {
            c.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        failures
    }
}

/// Fails naming the first few `failures`, if any, of the `total` requests sent.
fn assert_none_failed(failures: &[String], total: usize) {
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        total,
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn redis_killed_under_load_fails_no_request_and_the_tier_comes_back() {
    const THREADS: usize = 6;
    const PER_THREAD: usize = 600;
    const KILL_AT: usize = THREADS * PER_THREAD / 3;

    let mut redis = Redis::start();
    let origin = Backend::start("origin");
    let replicas = [replica(&origin, &redis), replica(&origin, &redis)];

    // The tier works before the outage: an entry one replica stored is a hit on the other
    // without the origin.
    let r = replicas[0].get("/items/warm");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(eventually(Duration::from_secs(5), || entry_keys(&redis) == 1));
    let before = origin.requests.load(Ordering::SeqCst);
    let r = replicas[1].get("/items/warm");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("cache-status").is_some_and(|s| s.contains("hit")),
        "the second replica reads the first one's entry from Redis: {:?}",
        r.header("cache-status")
    );
    assert_eq!(origin.requests.load(Ordering::SeqCst), before);
    for gw in &replicas {
        assert_eq!(redis_up(gw), Some(1.0));
    }

    let load = load(
        [replicas[0].http, replicas[1].http],
        THREADS,
        PER_THREAD,
        "",
    );
    assert!(
        eventually(Duration::from_secs(60), || load.done() >= KILL_AT),
        "the load stalled at {} requests",
        load.done()
    );
    let stored_before_kill = entry_keys(&redis);
    redis.kill();
    let killed_at = load.done();
    assert_none_failed(&load.finish(), THREADS * PER_THREAD);
    assert!(
        stored_before_kill > 10,
        "entries reached Redis before the kill"
    );
    assert!(
        killed_at < THREADS * PER_THREAD * 9 / 10,
        "Redis died while the load still ran (at {killed_at})"
    );

    // The outage shows on both replicas: the tier is off, the failed commands counted, and
    // the log says why.
    for gw in &replicas {
        assert!(
            eventually(Duration::from_secs(10), || redis_up(gw) == Some(0.0)),
            "redis_up stays {:?}",
            redis_up(gw)
        );
        assert!(redis_errors(gw) > 0.0, "{}", gw.metrics());
        assert!(
            gw.log().lines().any(|l| l.contains("WARN")
                && l.contains("cache store shared: Redis ")
                && l.contains(" failed: ")),
            "{}",
            gw.log()
        );
    }
    // Still answering from memory and the origin while Redis is down.
    for gw in &replicas {
        assert_eq!(gw.get("/items/during-the-outage").status, 200);
    }

    // Back: the breaker's probe finds the new server without waiting for traffic.
    let ups = |gw: &Gateway| {
        gw.log()
            .matches("cache store shared: Redis tier up")
            .count()
    };
    let ups_before = [ups(&replicas[0]), ups(&replicas[1])];
    redis.restart();
    for (gw, before) in replicas.iter().zip(ups_before) {
        assert!(
            eventually(Duration::from_secs(10), || redis_up(gw) == Some(1.0)),
            "redis_up stays {:?}",
            redis_up(gw)
        );
        assert!(ups(gw) > before, "{}", gw.log());
    }
    // And shares again: a new entry of one replica is the other's hit.
    assert_eq!(replicas[0].get("/items/after").status, 200);
    assert!(eventually(Duration::from_secs(5), || entry_keys(&redis) == 1));
    let before = origin.requests.load(Ordering::SeqCst);
    let r = replicas[1].get("/items/after");
    assert!(
        r.header("cache-status").is_some_and(|s| s.contains("hit")),
        "{:?}",
        r.header("cache-status")
    );
    assert_eq!(origin.requests.load(Ordering::SeqCst), before);
}

#[test]
fn no_deployment_manager_secret_ever_reaches_redis() {
    let redis = Redis::start();
    let fake = O2Ims::start(Dialect::Oran, Opts::default());
    let gw = Gateway::start(&o2ims_config(
        &fake,
        "path_prefix: /",
        &format!(
            r#"
redis: {{ url: "{url}" }}
auth:
  scope: per_claim
  claim: sub
  jwt: {{ jwks_file: "{jwks}", issuer: o2ims-fake }}
  hash_key: "0123456789abcdef0123456789abcdef"
"#,
            url = redis.url(),
            jwks = fake.jwks_path().display(),
        ),
    ));
    let admin = fake.token("root", &["o2ims-admin"], 300);
    let auth = format!("Bearer {admin}");
    let get = |path: &str| {
        let r = request(gw.http, "GET", path, &[("authorization", &auth)], b"").unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r
    };
    let b = fake.base();
    let dms = format!("{b}/deploymentManagers");
    let dm = fake.ids("deploymentManager")[0].clone();
    let one_dm = format!("{b}/deploymentManagers/{dm}");
    let pools = format!("{b}/resourcePools");
    let pool = fake.ids("resourcePool")[0].clone();

    for path in [&dms, &one_dm, &pools, &dms, &one_dm, &pools] {
        get(path);
    }
    assert!(get(&dms).text().contains("SECRET-"), "the admin sees it");
    assert_eq!(fake.count(&dms), 1, "the deployment managers are cached");
    assert_eq!(fake.count(&one_dm), 1);

    // The pools' answer is in Redis as it was sent (so the marker would be found if it were
    // written), the deployment managers' never, under any key.
    assert!(eventually(Duration::from_secs(5), || {
        redis
            .scan_values()
            .iter()
            .any(|(_, v)| v.windows(pool.len()).any(|w| w == pool.as_bytes()))
    }));
    let values = redis.scan_values();
    assert!(!values.is_empty());
    for (k, v) in &values {
        assert!(
            !v.windows(7).any(|w| w == b"SECRET-"),
            "a deployment manager's secret is in Redis under {k}"
        );
        assert!(
            !v.windows(admin.len().min(40))
                .any(|w| w == &admin.as_bytes()[..admin.len().min(40)]),
            "the token is in Redis under {k}"
        );
    }
}

/// The process id of the `redis-server` on `redis`'s port (its `INFO server`).
fn redis_pid(redis: &Redis) -> String {
    let mut c = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let info: String = ::redis::cmd("INFO").arg("server").query(&mut c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|p| p.trim().to_owned())
        .expect("process_id in INFO server")
}

fn signal(pid: &str, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Redis that stops answering (SIGSTOP: the connections stay open, no command returns) is
/// worse than a dead one: every command waits for the timeout. Requests still all succeed, the
/// breaker turns the tier off, and after SIGCONT it comes back.
#[test]
fn a_hung_redis_under_load_fails_no_request_and_the_tier_comes_back() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 300;

    let redis = Redis::start();
    let pid = redis_pid(&redis);
    let origin = Backend::start("origin");
    let replicas = [replica(&origin, &redis), replica(&origin, &redis)];
    let r = replicas[0].get("/items/warm");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(eventually(Duration::from_secs(5), || entry_keys(&redis) == 1));

    let load = load(
        [replicas[0].http, replicas[1].http],
        THREADS,
        PER_THREAD,
        "hung-",
    );
    assert!(eventually(Duration::from_secs(60), || load.done()
        >= THREADS * PER_THREAD / 4));
    signal(&pid, "-STOP");
    let paused_at = load.done();
    let failures = load.finish();
    // Resume before asserting, so a failure does not leave a stopped process behind.
    let down: Vec<Option<f64>> = replicas.iter().map(redis_up).collect();
    signal(&pid, "-CONT");
    assert_none_failed(&failures, THREADS * PER_THREAD);
    assert!(
        paused_at < THREADS * PER_THREAD * 9 / 10,
        "paused at {paused_at}"
    );
    assert_eq!(
        down,
        [Some(0.0), Some(0.0)],
        "the breaker turned the tier off"
    );
    for gw in &replicas {
        assert!(redis_errors(gw) > 0.0);
        assert!(
            eventually(Duration::from_secs(10), || redis_up(gw) == Some(1.0)),
            "redis_up stays {:?} after SIGCONT",
            redis_up(gw)
        );
    }
    // Shared again: a path one replica stored is, on the other's first request, a hit from
    // Redis (a fresh path each try, so the other replica's own memory cannot answer).
    let mut n = 0;
    assert!(eventually(Duration::from_secs(10), || {
        n += 1;
        let path = format!("/items/after-the-hang-{n}");
        assert_eq!(replicas[0].get(&path).status, 200);
        thread::sleep(Duration::from_millis(50));
        replicas[1]
            .get(&path)
            .header("cache-status")
            .is_some_and(|c| c.contains("hit"))
    }));
}
