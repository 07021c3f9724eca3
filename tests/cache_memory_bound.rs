//! The memory tier's byte bound under a real gateway: a store of 1 MiB fed many times that in
//! distinct objects keeps `GET /cache` bytes and `zkgate_cache_stored_bytes` within the bound
//! (which counts the per-entry overhead itself), counts its capacity evictions, still serves
//! hits, and the process's resident memory does not grow with a second round of new objects.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;

use common::{request, Backend, Conn, Gateway};
use serde_json::Value;

const BOUND: u64 = 1 << 20;
/// Bytes of one object's body.
const SIZE: usize = 8_000;
/// Distinct objects per round: 16 MB of bodies, sixteen times the bound.
const OBJECTS: usize = 2_000;

fn stats(gw: &Gateway) -> Value {
    let r = request(gw.admin, "GET", "/cache", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["stores"][0].clone()
}

/// The gateway process's resident set, in bytes (`VmRSS` of /proc/<pid>/status).
fn rss(gw: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn series(metrics: &str, line: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.trim().parse().ok())
}

/// GETs `OBJECTS` distinct objects of round `round` on one keep-alive connection (the bytes of
/// one round are sixteen times the bound), then asserts the bound held.
fn round(gw: &Gateway, round: usize) {
    let mut conn = Conn::open(gw.http).unwrap();
    for n in 0..OBJECTS {
        let r = conn
            .get(&format!("/status/200?size={SIZE}&r={round}&n={n}"))
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), SIZE);
    }
    let s = stats(gw);
    let bytes = s["bytes"].as_u64().unwrap();
    let entries = s["entries"].as_u64().unwrap();
    assert_eq!(s["capacity"].as_u64(), Some(BOUND), "{s}");
    assert!(
        bytes <= BOUND,
        "{bytes} bytes held over a {BOUND} bound: {s}"
    );
    assert!(
        entries as usize * SIZE <= BOUND as usize,
        "{entries} entries of {SIZE} bytes each"
    );
    // The store still holds something: the bound is not met by keeping nothing.
    assert!(entries >= 16, "{s}");
    println!("round {round}: {entries} entries, {bytes} bytes held of {BOUND}");
    let m = gw.metrics();
    let stored = series(
        &m,
        "zkgate_cache_stored_bytes{store=\"bounded\",tier=\"memory\"}",
    )
    .unwrap();
    assert!(stored <= BOUND, "stored_bytes {stored}");
}

#[test]
fn a_store_of_one_mib_stays_within_it_under_a_gateway() {
    let origin = Backend::start("origin");
    let gw = Gateway::start(&format!(
        r#"
upstreams: [{{ name: origin, backends: ["{}"] }}]
routes:
  - name: bounded
    upstream: origin
    plugin:
      cache:
        memory: 1MiB
        override_origin: true
        rules: [{{ path: /status/**, ttl: 10m }}]
"#,
        origin.addr
    ));

    // Stored and hit at all (else the bound would hold trivially).
    let first = "/status/200?size=8000&first";
    assert_eq!(gw.get(first).status, 200);
    let r = gw.get(first);
    assert!(
        r.header("cache-status").is_some_and(|c| c.contains("hit")),
        "{:?}",
        r.header("cache-status")
    );

    round(&gw, 1);
    let capacity_evictions = |m: &str| {
        series(
            m,
            "zkgate_cache_evictions_total{reason=\"capacity\",store=\"bounded\"}",
        )
        .unwrap_or(0)
    };
    let evicted = capacity_evictions(&gw.metrics());
    // Every object but what the bound holds was evicted (or refused admission, which
    // quick_cache counts as an eviction too).
    assert!(
        evicted as usize >= OBJECTS - 200,
        "{evicted} capacity evictions of {OBJECTS} objects"
    );
    assert_eq!(
        stats(&gw)["evictions"]["capacity"].as_u64(),
        Some(evicted),
        "/cache and the metric agree"
    );
    let rss_after_one = rss(&gw);

    // Recent objects still hit after the churn.
    let before = origin.requests.load(Ordering::SeqCst);
    let last = format!("/status/200?size={SIZE}&r=1&n={}", OBJECTS - 1);
    let r = gw.get(&last);
    assert_eq!(r.status, 200);
    let hit = r.header("cache-status").is_some_and(|c| c.contains("hit"));
    assert_eq!(
        origin.requests.load(Ordering::SeqCst) - before,
        usize::from(!hit),
        "the origin is asked exactly when the cache says miss"
    );

    // A second round of as many new objects: another 16 MB through the store, and the process
    // keeps to what it had (allowing a quarter of a round for allocator slack).
    round(&gw, 2);
    assert!(capacity_evictions(&gw.metrics()) >= evicted + OBJECTS as u64 - 200);
    let rss_after_two = rss(&gw);
    println!("RSS after round 1: {rss_after_one} B, after round 2: {rss_after_two} B");
    let slack = (OBJECTS * SIZE / 4) as u64;
    assert!(
        rss_after_two <= rss_after_one + slack,
        "RSS grew from {rss_after_one} to {rss_after_two} bytes over a second round"
    );
}
