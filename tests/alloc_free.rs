//! The request-path pieces that must not allocate: path normalization of a path already in
//! normal form, route matching, backend picks and the HTTP/1 fast path's head work. A counting
//! allocator counts this thread's allocations around the calls.

use http::{HeaderMap, Method};
use zkgate::route::RequestView;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

const CONFIG: &str = r#"
listeners: [{ name: web, listen: "127.0.0.1:1" }]
upstreams:
  - { name: rr, backends: ["127.0.0.1:2", "127.0.0.1:3 weight=0", "127.0.0.1:4"] }
  - { name: wrr, balance: weighted_round_robin, backends: ["127.0.0.1:2 weight=5", "127.0.0.1:3"] }
  - { name: rnd, balance: random, backends: ["127.0.0.1:2 weight=5", "127.0.0.1:3"] }
  - { name: ch, balance: consistent_hash, hash_key: client_ip, backends: ["127.0.0.1:2", "127.0.0.1:3"] }
  - { name: lc, balance: least_conn, backends: ["127.0.0.1:2 weight=2", "127.0.0.1:3"] }
  - { name: p2c, balance: p2c, backends: ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"] }
routes:
  - { name: exact, match: { path: /a/b }, upstream: rr }
  - { name: prefix, match: { path_prefix: /a/ }, upstream: rr }
  - { name: deeper, match: { path_prefix: /a/b/c/, headers: [{ name: x-k, value: v }] }, upstream: rr }
  - { name: host, match: { host: "*.example.com", path_prefix: /, methods: [GET, POST] }, upstream: rr }
  - { name: regex, match: { path_regex: "^/r/[0-9]+$" }, upstream: rr }
"#;

#[test]
fn normalizing_a_normal_path_does_not_allocate() {
    use zkgate::route::path::{normalize, PathPolicy};
    let policy = PathPolicy::default();
    for raw in [
        "/",
        "/svc/v2/users/42/orders?page=2&x=%2F",
        "/files/caf%C3%A9/a;b=c/~x",
    ] {
        let n = counting_alloc::allocations(|| {
            let t = normalize(raw.as_bytes(), &policy).expect("normal path");
            assert!(!t.changed());
        });
        assert_eq!(n, 0, "{raw}");
    }
}

#[test]
fn route_matching_and_backend_picks_do_not_allocate() {
    let snap = zkgate::config::load_str(CONFIG, None).expect("config");
    let headers = HeaderMap::new();
    let requests = [
        (None, "/a/b", Some("exact")),
        (None, "/a/b/c/d", Some("prefix")),
        (Some("x.example.com"), "/z", Some("host")),
        (None, "/r/123", Some("regex")),
        (None, "/zzz", None),
    ];
    // Warm up lazily initialised state (regex caches) outside the count.
    for (host, path, _) in requests {
        snap.routes.find(&RequestView {
            method: &Method::GET,
            host,
            path,
            headers: &headers,
        });
    }
    for (host, path, expected) in requests {
        let view = RequestView {
            method: &Method::GET,
            host,
            path,
            headers: &headers,
        };
        let mut found = None;
        let n = counting_alloc::allocations(|| {
            for _ in 0..1000 {
                found = snap.routes.find(&view);
            }
        });
        assert_eq!(
            found.map(|id| &*snap.routes.get(id).name),
            expected,
            "{path}"
        );
        assert_eq!(n, 0, "matching {path} allocated {n} times in 1000 calls");
    }
    for u in &snap.upstreams {
        let set = u.load();
        let key: &[u8] = b"10.0.0.1";
        // One backend out, so that the fallbacks run too.
        set.backends()[0]
            .state
            .set(zkgate::upstream::state::EJECTED, true);
        let n = counting_alloc::allocations(|| {
            for turn in 0..1000 {
                assert!(set.pick(turn, Some(key), &[]).is_some());
            }
        });
        assert_eq!(
            n, 0,
            "picking from {} allocated {n} times in 1000 calls",
            u.name
        );
    }
}

#[test]
fn an_upstream_call_allocates_nothing_beyond_its_picks() {
    use zkgate::upstream::call::Outcome;
    let snap = zkgate::config::load_str(CONFIG, None).expect("config");
    let key: &[u8] = b"10.0.0.1";
    for u in &snap.upstreams {
        // What two picks cost by themselves: the boxed peer Pingora takes.
        let picks = counting_alloc::allocations(|| {
            for _ in 0..1000 {
                let first = u.select(Some(key), &[]).expect("a backend");
                let second = u.select(Some(key), &[]).expect("a backend");
                drop((first, second));
            }
        });
        // A call that fails on one backend and retries on another.
        let calls = counting_alloc::allocations(|| {
            for _ in 0..1000 {
                let mut call = u.begin().expect("no breaker");
                drop(call.pick(Some(key)).expect("a backend"));
                call.failed(2);
                drop(call.pick(Some(key)).expect("another backend"));
                call.finish(Outcome::Ok);
            }
        });
        assert_eq!(
            calls, picks,
            "a call to {} allocated {calls} times where its picks alone do {picks}",
            u.name
        );
    }
}

#[test]
fn the_fast_paths_head_work_does_not_allocate_once_its_buffer_is_grown() {
    use zkgate::client_ip::ForwardedMode;
    use zkgate::proxy::fast::head;
    let req: &[u8] = b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: api.example.com\r\n\
        Accept: */*\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive\r\n\r\n";
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\n\r\nok";
    for passes in [false, true] {
        let fwd = head::Forwarding {
            peer: head::PeerIp::new("2001:db8::7".parse().expect("address")),
            passes,
            tls: false,
            port: 8080,
            // `Forwarded` is built in a String: that mode allocates, and is off by default.
            forwarded: ForwardedMode::Off,
            by: None,
        };
        let mut out = Vec::with_capacity(4096);
        let n = counting_alloc::allocations(|| {
            assert_eq!(head::request_len(req), Ok(Some(req.len())));
            let mut slots = head::slots();
            let r = head::request(req, &mut slots).expect("a fast request");
            head::write_upstream(&r, &fwd, &mut out);
            let a = head::response(answer, false, true, b"d", &mut out).expect("an answer");
            assert!(a.is_some());
            let mut chunked = head::Chunked::Size;
            assert_eq!(chunked.advance(b"2\r\nok\r\n0\r\n\r\n"), Ok(12));
        });
        assert_eq!(n, 0, "passes: {passes}");
    }
}
