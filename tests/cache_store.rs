//! The cache store against a real `redis-server`: two stores sharing entries through Redis as
//! two replicas do, Redis killed under reads and writes (every call returns, memory keeps
//! serving, `redis_up` falls, then recovers after a restart), and a memory-only entry never
//! written to Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::redis::Redis;
use common::{request, Backend, Gateway};
use zkgate::plugin::cache::store::redis::RedisConfig;
use zkgate::plugin::cache::store::{
    wall_ms, Entry, EvictReason, KeyHash, Store, StoreClass, StoreConfig, TagId, Tier,
};

fn config(name: &str, redis: &Redis) -> StoreConfig {
    StoreConfig {
        name: name.into(),
        memory: 4 << 20,
        redis: Some(RedisConfig {
            url: redis.url(),
            timeout: Duration::from_millis(200),
            max_object_size: 1 << 20,
            down_after: 2,
            retry_after: Duration::from_millis(100),
        }),
    }
}

fn key(n: u32) -> KeyHash {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k[8] = 0x5a;
    k
}

fn entry(n: u32, body: &str, tags: &[u64], class: StoreClass) -> Entry {
    let now = wall_ms();
    Entry {
        primary: key(n),
        variance: None,
        meta: (Bytes::from_static(b"head"), Bytes::from_static(b"tail")),
        body: Bytes::from(body.to_owned()),
        created_ms: now,
        hard_expiry_ms: now + 60_000,
        tags: tags.iter().map(|t| TagId(*t)).collect(),
        class,
        target: format!("/items/{n}").into(),
        kind: 2,
    }
}

/// A liveness bound, not a timing: a call that never returns fails the test instead of hanging it.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("a store call never returned")
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not within 5 s");
}

fn entry_keys(redis: &Redis) -> usize {
    redis.keys().iter().filter(|k| k.contains("}:e:")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_entries_through_redis_and_purges_reach_it() {
    let redis = Redis::start();
    let a = Store::new(&config("shared", &redis));
    let b = Store::new(&config("shared", &redis));
    a.insert(key(1), entry(1, "one", &[10, 11], StoreClass::Shared));
    a.insert(key(2), entry(2, "two", &[11], StoreClass::Shared));
    a.insert(key(3), entry(3, "three", &[12], StoreClass::Shared));
    wait_for("3 entries in Redis", || entry_keys(&redis) == 3).await;
    // Every key of the store is in one hash slot.
    assert!(redis
        .keys()
        .iter()
        .all(|k| k.starts_with("zkgate:{shared}:")));

    let (e, tier) = bounded(b.get(&key(1), wall_ms()))
        .await
        .expect("from Redis");
    assert_eq!((&e.body[..], tier), (&b"one"[..], Tier::Redis));
    assert_eq!(&*e.tags, &[TagId(10), TagId(11)]);
    let (_, tier) = bounded(b.get(&key(1), wall_ms())).await.expect("promoted");
    assert_eq!(tier, Tier::Memory);
    let (e, tier) = bounded(b.get_primary(&key(3), wall_ms()))
        .await
        .expect("by primary");
    assert_eq!((&e.body[..], tier), (&b"three"[..], Tier::Redis));
    assert_eq!(b.stats().l2_hits, 2);
    assert_eq!(b.stats().redis_up, Some(true));

    // An epoch B learned (from the bus) wins over what Redis still holds.
    b.epochs().bump(TagId(11), wall_ms() + 1);
    assert!(bounded(b.get(&key(2), wall_ms() + 2)).await.is_none());

    // A purge by tag on A removes the entries from Redis: a third replica cannot find them.
    assert_eq!(a.purge_tags(&[TagId(12)], EvictReason::Invalidation), 1);
    wait_for("entry 3 gone from Redis", || !in_redis(&redis, 3)).await;
    let c = Store::new(&config("shared", &redis));
    assert!(bounded(c.get(&key(3), wall_ms())).await.is_none());
    // A purge by prefix reaches Redis too.
    assert_eq!(
        a.purge_prefix("/items/1", wall_ms() + 1, EvictReason::Purge),
        1
    );
    wait_for("entry 1 gone from Redis", || !in_redis(&redis, 1)).await;
    // And a purge of everything.
    a.purge_all(EvictReason::Purge);
    wait_for("no entry left in Redis", || entry_keys(&redis) == 0).await;
}

fn in_redis(redis: &Redis, n: u32) -> bool {
    let hex: String = key(n).iter().map(|b| format!("{b:02x}")).collect();
    redis
        .keys()
        .iter()
        .any(|k| k.ends_with(&format!(":e:{hex}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_only_entry_never_reaches_redis() {
    let redis = Redis::start();
    let a = Store::new(&config("secret", &redis));
    let marker = "SECRET-4f6a1c2e-memory-only";
    a.insert(
        key(1),
        entry(
            1,
            &format!("{{\"admin_client_key\":\"{marker}\"}}"),
            &[1],
            StoreClass::MemoryOnly,
        ),
    );
    a.insert(key(2), entry(2, "public", &[1], StoreClass::Shared));
    wait_for("the shared entry in Redis", || entry_keys(&redis) == 1).await;
    // The shared one is written after the memory-only one: had it been written, it is there now.
    let values = redis.scan_values();
    assert!(values
        .iter()
        .any(|(_, v)| v.windows(6).any(|w| w == b"public")));
    for (k, v) in &values {
        assert!(
            !v.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "the marker is in Redis under {k}"
        );
    }
    let (e, tier) = bounded(a.get(&key(1), wall_ms())).await.expect("in memory");
    assert_eq!(tier, Tier::Memory);
    assert!(e.body.windows(marker.len()).any(|w| w == marker.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_reads_and_writes_then_restarted() {
    let mut redis = Redis::start();
    let a = Arc::new(Store::new(&config("outage", &redis)));
    let b = Store::new(&config("outage", &redis));
    for i in 0..20 {
        a.insert(key(i), entry(i, "before", &[1], StoreClass::Shared));
    }
    wait_for("20 entries in Redis", || entry_keys(&redis) == 20).await;
    assert!(bounded(b.get(&key(0), wall_ms())).await.is_some());

    redis.kill();
    // Reads and writes go on: memory answers what it holds, misses answer None, nothing
    // hangs or fails.
    for round in 0..50u32 {
        let i = round % 20;
        let hit = bounded(a.get(&key(i), wall_ms())).await;
        assert_eq!(
            hit.map(|(e, t)| (e.body.clone(), t)),
            Some((Bytes::from_static(b"before"), Tier::Memory))
        );
        assert!(bounded(b.get(&key(1000 + round), wall_ms()))
            .await
            .is_none());
        a.insert(
            key(100 + round),
            entry(100 + round, "during", &[2], StoreClass::Shared),
        );
        a.tick(wall_ms());
        b.tick(wall_ms());
    }
    wait_for("redis_up falls", || b.stats().redis_up == Some(false)).await;
    let text = String::from_utf8(zkgate::metrics::render()).expect("utf-8");
    assert!(
        text.contains("zkgate_cache_redis_up{store=\"outage\"} 0"),
        "{text}"
    );
    assert!(text.contains("zkgate_cache_redis_errors_total{op=\"get\",store=\"outage\"}"));
    // Entries written during the outage are served from memory.
    assert!(bounded(a.get(&key(100), wall_ms())).await.is_some());

    redis.restart();
    // The breaker's probe brings the tier back without waiting for traffic.
    wait_for("redis_up recovers", || {
        a.tick(wall_ms());
        b.tick(wall_ms());
        a.stats().redis_up == Some(true) && b.stats().redis_up == Some(true)
    })
    .await;
    // A write is not retried by the store: one that timed out on a loaded machine (200 ms here)
    // is dropped, as in production, where the next insert of the key writes it again. So the
    // entry is inserted again every half second until Redis has it.
    let mut waited = 0u32;
    wait_for("the new entry in Redis", || {
        if waited.is_multiple_of(20) {
            a.insert(key(500), entry(500, "after", &[3], StoreClass::Shared));
        }
        waited += 1;
        entry_keys(&redis) == 1
    })
    .await;
    let (e, tier) = bounded(b.get(&key(500), wall_ms()))
        .await
        .expect("shared again");
    assert_eq!((&e.body[..], tier), (&b"after"[..], Tier::Redis));
}

fn metric_line(name: &str) -> Option<String> {
    let text = String::from_utf8(zkgate::metrics::render()).expect("utf-8");
    text.lines()
        .find(|l| l.starts_with(name))
        .map(|l| l[name.len()..].trim().to_owned())
}

/// The Redis tier's size is sampled by the tick, not per request: the entries and bytes the
/// store holds in Redis whichever replica wrote them (a memory-only entry is not there), again
/// once the sample period has passed. A store without Redis shows no Redis gauges at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_samples_the_redis_tiers_size() {
    use zkgate::plugin::cache::store::redis::{encode, SAMPLE_EVERY_MS};
    let redis = Redis::start();
    let a = Store::new(&config("sized", &redis));
    let mut want_bytes = 0;
    for i in 0..3 {
        let e = entry(
            i,
            &"x".repeat(100 * (i as usize + 1)),
            &[1],
            StoreClass::Shared,
        );
        want_bytes += encode(&e).len();
        a.insert(key(i), e);
    }
    a.insert(key(9), entry(9, "local", &[1], StoreClass::MemoryOnly));
    wait_for("3 entries in Redis", || entry_keys(&redis) == 3).await;
    let entries = r#"zkgate_cache_entries{store="sized",tier="redis"}"#;
    let bytes = r#"zkgate_cache_stored_bytes{store="sized",tier="redis"}"#;
    let t0 = wall_ms();
    a.tick(t0);
    wait_for("the first sample", || {
        metric_line(entries).as_deref() == Some("3")
    })
    .await;
    assert_eq!(metric_line(bytes), Some(want_bytes.to_string()));
    assert_eq!(
        metric_line(r#"zkgate_cache_redis_up{store="sized"}"#).as_deref(),
        Some("1")
    );

    // Another replica's writes count too, from the next sample on.
    let b = Store::new(&config("sized", &redis));
    b.insert(key(3), entry(3, "from b", &[1], StoreClass::Shared));
    wait_for("4 entries in Redis", || entry_keys(&redis) == 4).await;
    a.tick(t0 + SAMPLE_EVERY_MS);
    wait_for("the next sample", || {
        metric_line(entries).as_deref() == Some("4")
    })
    .await;

    let _memory_only = Store::new(&StoreConfig {
        name: "memory-only".into(),
        memory: 1 << 20,
        redis: None,
    });
    assert_eq!(
        metric_line(r#"zkgate_cache_entries{store="memory-only",tier="memory"}"#).as_deref(),
        Some("0")
    );
    assert_eq!(
        metric_line(r#"zkgate_cache_redis_up{store="memory-only"}"#),
        None
    );
}

/// The admin endpoints through a real gateway (no cache route yet): reads are open or
/// token-guarded as documented, purges need the token and a JSON body, and a bad one is
/// answered, not obeyed.
#[test]
fn admin_cache_endpoints_answer_and_guard_writes() {
    const TOKEN: &str = "cache-admin-token-0123456789";
    let right = ("authorization", "Bearer cache-admin-token-0123456789");
    let json = ("content-type", "application/json");
    let gw = Gateway::start(&format!(
        "admin: {{ listen: \"{{ADMIN}}\", token: {TOKEN} }}\nupstreams: [{{ name: u, backends: [\"127.0.0.1:9\"] }}]\nroutes: [{{ name: r, upstream: u }}]\n"
    ));
    let call = |method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]| {
        request(gw.admin, method, target, headers, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    };
    let r = call("GET", "/cache", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stores"], serde_json::json!([]));
    assert_eq!(call("GET", "/cache/entries", &[], b"").status, 401);
    assert_eq!(call("GET", "/cache/entries", &[right], b"").status, 404);
    assert_eq!(
        call("GET", "/cache/entries?limit=0", &[right], b"").status,
        400
    );
    let all = br#"{"store":"o2","all":true}"#;
    assert_eq!(call("POST", "/cache/purge", &[json], all).status, 401);
    assert_eq!(
        call(
            "POST",
            "/cache/purge",
            &[right, ("content-type", "text/plain")],
            all
        )
        .status,
        403
    );
    let r = call("POST", "/cache/purge", &[right, json], all);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.text().contains("no cache store named `o2`"),
        "{}",
        r.text()
    );
    let r = call("POST", "/cache/purge", &[right, json], b"{\"store\":");
    assert_eq!(r.status, 400, "{}", r.text());
    let big = vec![b' '; 100 << 10];
    assert_eq!(
        call("POST", "/cache/purge", &[right, json], &big).status,
        413
    );
    // The other admin writes are untouched.
    assert_eq!(
        call("POST", "/upstreams/u/127.0.0.1:9/drain", &[right], b"").status,
        200
    );
}

/// Through a caching gateway: `/cache` counts the store, `/cache/entries` lists its targets,
/// and each kind of purge makes the next request go to the origin again.
#[test]
fn admin_purges_reach_a_caching_route() {
    use std::sync::atomic::Ordering;
    const TOKEN: &str = "cache-admin-token-0123456789";
    let right = ("authorization", "Bearer cache-admin-token-0123456789");
    let json = ("content-type", "application/json");
    let backend = Backend::start("origin");
    let gw = Gateway::start(&format!(
        "admin: {{ listen: \"{{ADMIN}}\", token: {TOKEN} }}
upstreams: [{{ name: u, backends: [\"{}\"] }}]
routes:
  - name: r
    upstream: u
    plugin:
      cache: {{ store: e2e, override_origin: true, rules: [{{ path: /items/**, ttl: 10m }}] }}
",
        backend.addr
    ));
    let origin = || backend.requests.load(Ordering::SeqCst);
    let get = |target: &str| {
        let r = gw.get(target);
        assert_eq!(r.status, 200, "{target}: {}", r.text());
    };
    let call = |method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]| {
        request(gw.admin, method, target, headers, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    };
    let purge = |body: &str| {
        let r = call("POST", "/cache/purge", &[right, json], body.as_bytes());
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        r.json()["purged"].as_u64().unwrap_or(u64::MAX)
    };
    get("/items/1");
    get("/items/1");
    get("/items/2");
    assert_eq!(origin(), 2, "the second GET of /items/1 is a hit");

    let r = call("GET", "/cache", &[], b"");
    let store = &r.json()["stores"][0];
    assert_eq!(store["store"], "e2e", "{}", r.text());
    assert_eq!(store["entries"], 2, "{}", r.text());
    assert!(store["hits"].as_u64().unwrap_or(0) >= 1, "{}", r.text());
    let r = call(
        "GET",
        "/cache/entries?store=e2e&prefix=/items/",
        &[right],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut targets: Vec<String> = r.json()["entries"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|e| e["target"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default();
    targets.sort();
    assert_eq!(targets, ["/items/1", "/items/2"]);

    assert_eq!(
        purge(r#"{"store":"e2e","prefix":"/items/1","replicas":"local"}"#),
        1
    );
    get("/items/1");
    get("/items/2");
    assert_eq!(origin(), 3, "only /items/1 went to the origin again");
    get("/items/1");
    assert_eq!(origin(), 3, "and is cached again");

    assert_eq!(purge(r#"{"store":"e2e","key":"/items/2"}"#), 1);
    get("/items/2");
    assert_eq!(origin(), 4);

    let r = call(
        "POST",
        "/cache/purge",
        &[right, json],
        br#"{"store":"e2e","all":true,"replicas":"all"}"#,
    );
    assert_eq!(r.status, 409, "no replica bus: {}", r.text());
    assert_eq!(purge(r#"{"store":"e2e","all":true}"#), 2);
    get("/items/1");
    get("/items/2");
    assert_eq!(origin(), 6);
    let text = gw.metrics();
    assert!(
        text.contains("zkgate_cache_evictions_total{reason=\"purge\",store=\"e2e\"} 4"),
        "{text}"
    );
}
