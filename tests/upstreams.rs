//! End to end: balancing algorithms, no-backend answers, body limits and capped error bodies.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use common::*;

fn backends(n: usize) -> Vec<Backend> {
    (0..n).map(|i| Backend::start(&format!("b{i}"))).collect()
}

fn gateway(balance: &str, list: &[String], extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
upstreams:
  - name: pool
    balance: {balance}
    {extra}
    backends: [{}]
routes:
  - {{ name: all, upstream: pool }}
"#,
        list.iter()
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn tally(
    gw: &Gateway,
    n: usize,
    headers: impl Fn(usize) -> Vec<(String, String)>,
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for i in 0..n {
        let h = headers(i);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = request(gw.http, "GET", "/", &h, b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *seen
            .entry(r.json()["backend"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    seen
}

#[test]
fn round_robin_is_even_and_skips_drained_backends() {
    let b = backends(4);
    let list = vec![
        b[0].addr.to_string(),
        format!("{} weight=5", b[1].addr),
        b[2].addr.to_string(),
        format!("{} weight=0", b[3].addr),
    ];
    let gw = gateway("round_robin", &list, "");
    let seen = tally(&gw, 300, |_| vec![]);
    assert_eq!(seen.get("b0"), Some(&100), "{seen:?}");
    assert_eq!(seen.get("b1"), Some(&100), "{seen:?}");
    assert_eq!(seen.get("b2"), Some(&100), "{seen:?}");
    assert_eq!(b[3].requests.load(Ordering::SeqCst), 0);
}

#[test]
fn weighted_round_robin_follows_weights_exactly() {
    let b = backends(3);
    let list = vec![
        format!("{} weight=3", b[0].addr),
        format!("{} weight=1", b[1].addr),
        format!("{} weight=0", b[2].addr),
    ];
    let gw = gateway("weighted_round_robin", &list, "");
    let seen = tally(&gw, 400, |_| vec![]);
    assert_eq!(seen.get("b0"), Some(&300), "{seen:?}");
    assert_eq!(seen.get("b1"), Some(&100), "{seen:?}");
}

#[test]
fn random_honours_weights() {
    let b = backends(2);
    let list = vec![
        format!("{} weight=3", b[0].addr),
        format!("{} weight=1", b[1].addr),
    ];
    let gw = gateway("random", &list, "");
    let seen = tally(&gw, 800, |_| vec![]);
    let (heavy, light) = (seen["b0"] as f64, seen["b1"] as f64);
    // Expected 600/200; five standard deviations either way.
    assert!((540.0..=660.0).contains(&heavy), "{seen:?}");
    assert!(light > 0.0);
}

#[test]
fn consistent_hash_is_sticky_per_key_and_spreads_keys() {
    let b = backends(3);
    let list: Vec<String> = b.iter().map(|b| b.addr.to_string()).collect();
    for (key, header, value) in [
        ("header:x-user", "x-user", "{}"),
        ("cookie:sid", "cookie", "theme=dark; sid={}"),
    ] {
        let gw = gateway("consistent_hash", &list, &format!("hash_key: \"{key}\""));
        let mut owner = HashMap::new();
        for round in 0..3 {
            let seen = tally(&gw, 60, |i| {
                vec![(
                    header.to_owned(),
                    value.replace("{}", &format!("user{}", i % 20)),
                )]
            });
            assert_eq!(seen.values().sum::<usize>(), 60);
            for i in 0..20 {
                let user = format!("user{i}");
                let r = request(
                    gw.http,
                    "GET",
                    "/",
                    &[(header, &value.replace("{}", &user))],
                    b"",
                )
                .unwrap();
                let got = r.json()["backend"].as_str().unwrap().to_owned();
                let first = owner.entry(user.clone()).or_insert(got.clone());
                assert_eq!(*first, got, "{key}: {user} moved in round {round}");
            }
        }
        let distinct: std::collections::HashSet<_> = owner.values().collect();
        assert!(
            distinct.len() >= 2,
            "{key}: 20 keys all on one backend: {owner:?}"
        );
    }
    // query: and path keys.
    let gw = gateway("consistent_hash", &list, "hash_key: \"query:id\"");
    let first = gw.get("/?id=7").json()["backend"].clone();
    for _ in 0..10 {
        assert_eq!(gw.get("/x?a=1&id=7").json()["backend"], first);
    }
}

#[test]
fn no_pickable_backend_is_503_naming_the_upstream() {
    let b = backends(1);
    let gw = gateway("round_robin", &[format!("{} weight=0", b[0].addr)], "");
    let r = gw.get("/");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("upstream pool"), "{}", r.text());
    let ready = get(gw.admin, "/readyz");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["upstreams_without_backends"][0], "pool");
}

#[test]
fn a_dead_backend_is_skipped_and_all_dead_is_502() {
    let live = Backend::start("live");
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = gateway("round_robin", &[dead.clone(), live.addr.to_string()], "");
    for _ in 0..10 {
        let r = gw.get("/");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let gw = gateway("round_robin", &[dead], "");
    let r = gw.get("/");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("upstream pool"), "{}", r.text());
}

#[test]
fn request_body_over_the_limit_is_413_before_the_upstream_is_contacted() {
    let b = Backend::start("b");
    let gw = Gateway::start(&format!(
        r#"
upstreams: [{{ name: pool, backends: ["{}"] }}]
routes: [{{ name: all, upstream: pool, max_request_body: 1KiB }}]
"#,
        b.addr
    ));
    let r = request(gw.http, "POST", "/", &[], &[b'a'; 2000]).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(
        b.connections.load(Ordering::SeqCst),
        0,
        "the backend saw a connection"
    );
    // Within the limit: forwarded.
    let r = request(gw.http, "POST", "/", &[], &[b'a'; 1024]).unwrap();
    assert_eq!(r.json()["body_bytes"], 1024);
    // Chunked, no length known up front: aborted once it passes the limit.
    let mut chunked = Vec::new();
    for _ in 0..5 {
        chunked.extend_from_slice(b"3e8\r\n");
        chunked.extend_from_slice(&[b'c'; 1000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let before = b.requests.load(Ordering::SeqCst);
    match request(
        gw.http,
        "POST",
        "/",
        &[("transfer-encoding", "chunked")],
        &chunked,
    ) {
        Ok(r) => assert_eq!(r.status, 413, "{}", r.text()),
        Err(e) => panic!("expected a 413, got {e}"),
    }
    assert_eq!(
        b.requests.load(Ordering::SeqCst),
        before,
        "the backend got the whole request"
    );
}

#[test]
fn upstream_error_bodies_are_capped() {
    let b = Backend::start("b");
    let gw = Gateway::start(&format!(
        r#"
upstreams: [{{ name: pool, backends: ["{}"] }}]
routes: [{{ name: all, upstream: pool, max_error_body: 1KiB }}]
"#,
        b.addr
    ));
    for query in ["size=100000", "size=100000&chunked=1"] {
        let r = gw.get(&format!("/status/500?{query}"));
        assert_eq!(r.status, 500);
        assert_eq!(r.body.len(), 1024, "{query}");
    }
    // Small error bodies and successful responses pass whole.
    assert_eq!(gw.get("/status/503?size=10").body.len(), 10);
    assert_eq!(gw.get("/status/200?size=5000").body.len(), 5000);
    assert_eq!(gw.get("/status/404?size=5000").body.len(), 5000);
    // The connection to the gateway stays usable after a capped response.
    let mut c = Conn::open(gw.http).unwrap();
    assert_eq!(c.get("/status/502?size=3000").unwrap().body.len(), 1024);
    assert_eq!(c.get("/status/200?size=3").unwrap().body.len(), 3);
}
