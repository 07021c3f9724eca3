//! Criterion benchmarks of the request-path pieces: path normalization, route match among 1,000
//! routes (with and without `listeners` on them), path rewrites, backend picks for each balancing
//! algorithm, the `X-Forwarded-For` value, and the HTTP/1 fast path's head parsing and editing. `tests/alloc_free.rs` proves the
//! same calls allocate nothing.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use zkgate::route::{ListenerId, RequestView};
use zkgate::snapshot::Snapshot;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// 1,000 routes: exact paths, prefixes, host and wildcard-host routes, regexes.
pub fn thousand_routes() -> Snapshot {
    routes_on(None)
}

/// The same 1,000 routes, each limited to `listeners` (YAML, e.g. `[web]`) when given.
fn routes_on(listeners: Option<&str>) -> Snapshot {
    let mut y = String::from(
        "listeners: [{ name: web, listen: \"127.0.0.1:1\" }, { name: tls, listen: \"127.0.0.1:3\" }]\nupstreams:\n  - { name: u, backends: [\"127.0.0.1:2\"] }\nroutes:\n",
    );
    for i in 0..300 {
        y += &format!("  - {{ name: exact{i}, match: {{ path: /exact/{i} }}, upstream: u }}\n");
    }
    for i in 0..400 {
        y += &format!(
            "  - {{ name: prefix{i}, match: {{ path_prefix: /svc{}/v{}/ }}, upstream: u }}\n",
            i / 4,
            i % 4
        );
    }
    for i in 0..100 {
        y += &format!("  - {{ name: host{i}, match: {{ host: host{i}.example.com, path_prefix: / }}, upstream: u }}\n");
    }
    for i in 0..50 {
        y += &format!("  - {{ name: wild{i}, match: {{ host: \"*.t{i}.example.com\", path_prefix: /api/ }}, upstream: u }}\n");
    }
    for i in 0..150 {
        y += &format!("  - {{ name: regex{i}, match: {{ path_regex: \"^/re{i}/[0-9]+$\", methods: [GET] }}, upstream: u }}\n");
    }
    if let Some(l) = listeners {
        if let Some((head, routes)) = y.split_once("routes:\n") {
            let routes = routes.replace("  - { name: ", &format!("  - {{ listeners: {l}, name: "));
            y = format!("{head}routes:\n{routes}");
        }
    }
    zkgate::config::load_str(&y, None).expect("bench config")
}

fn normalize(c: &mut Criterion) {
    use zkgate::route::path::{normalize, PathPolicy};
    let policy = PathPolicy::default();
    let mut g = c.benchmark_group("path_normalize");
    for (name, raw) in [
        ("plain", "/svc60/v2/users/42/orders?page=2"),
        ("encoded_kept", "/files/caf%C3%A9/r%C3%A9sum%C3%A9.pdf"),
        ("rewritten", "/svc60//v2/./users/%2e%2e/%34%32/orders"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(normalize(black_box(raw.as_bytes()), &policy)).is_ok())
        });
    }
    g.finish();
}

fn route_match(c: &mut Criterion) {
    let snap = thousand_routes();
    assert_eq!(snap.routes.routes().len(), 1000);
    let headers = HeaderMap::new();
    let cases = [
        ("exact", None, "/exact/150"),
        ("longest_prefix", None, "/svc60/v2/users/42/orders"),
        ("host_exact", Some("host50.example.com"), "/anything"),
        ("host_wildcard", Some("a.t10.example.com"), "/api/x"),
        ("regex_first", None, "/re0/123"),
        ("regex_150th", None, "/re149/123"),
        ("miss", Some("nowhere.example.org"), "/nothing/here"),
    ];
    let mut g = c.benchmark_group("route_match_1000");
    for (name, host, path) in cases {
        let view = RequestView {
            method: &Method::GET,
            host,
            path,
            headers: &headers,
        };
        g.bench_function(name, |b| {
            b.iter(|| black_box(snap.routes.find(black_box(&view))))
        });
    }
    g.finish();
    // As the proxy matches: on its listener. Every route for every listener, then every route
    // limited to the request's listener (each candidate costs one bit test more), then every
    // route limited to both listeners.
    let web = ListenerId(0);
    for (group, listeners) in [
        ("route_match_1000_on_listener", None),
        ("route_match_1000_listeners_web", Some("[web]")),
        ("route_match_1000_listeners_both", Some("[web, tls]")),
    ] {
        let snap = routes_on(listeners);
        let mut g = c.benchmark_group(group);
        for (name, host, path) in cases {
            let view = RequestView {
                method: &Method::GET,
                host,
                path,
                headers: &headers,
            };
            assert_eq!(
                snap.routes.find_on(web, &view).is_some(),
                name != "miss",
                "{group} {name}"
            );
            g.bench_function(name, |b| {
                b.iter(|| black_box(snap.routes.find_on(black_box(web), black_box(&view))))
            });
        }
        g.finish();
    }
}

fn rewrite(c: &mut Criterion) {
    let snap = zkgate::config::load_str(
        r#"
listeners: [{ name: web, listen: "127.0.0.1:1" }]
upstreams: [{ name: u, backends: ["127.0.0.1:2"] }]
routes:
  - { name: rx, match: { path_prefix: /api/ }, rewrite: { pattern: "^/api/(?P<rest>.*)$", replace: "/v1/${rest}" }, upstream: u }
  - { name: px, match: { path_prefix: /old/ }, rewrite: { strip_prefix: /old, add_prefix: /new }, upstream: u }
"#,
        None,
    )
    .expect("config");
    let mut g = c.benchmark_group("rewrite");
    let regex = snap.routes.routes()[0].rewrite.as_ref().expect("rewrite");
    let prefix = snap.routes.routes()[1].rewrite.as_ref().expect("rewrite");
    g.bench_function("regex_captures", |b| {
        b.iter(|| black_box(regex.apply(black_box("/api/users/42/orders"), Some("page=2"))))
    });
    g.bench_function("strip_add_prefix", |b| {
        b.iter(|| black_box(prefix.apply(black_box("/old/users/42"), Some("page=2"))))
    });
    g.finish();
}

fn pick(c: &mut Criterion) {
    for n in [10usize, 100] {
        let backends: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "\"10.0.{}.{}:80 weight={}\"",
                    i / 250,
                    i % 250 + 1,
                    i % 5 + 1
                )
            })
            .collect();
        let mut y =
            String::from("listeners: [{ name: web, listen: \"127.0.0.1:1\" }]\nupstreams:\n");
        for balance in [
            "round_robin",
            "weighted_round_robin",
            "random",
            "consistent_hash",
            "least_conn",
            "p2c",
        ] {
            let key = if balance == "consistent_hash" {
                ", hash_key: \"header:x-user\""
            } else {
                ""
            };
            y += &format!(
                "  - {{ name: {balance}, balance: {balance}{key}, backends: [{}] }}\n",
                backends.join(", ")
            );
        }
        // least_conn told to compare every backend, as nginx does: the exact scan's cost.
        y += &format!(
            "  - {{ name: least_conn_all, balance: least_conn, least_conn_choices: 128, backends: [{}] }}\n",
            backends.join(", ")
        );
        y += "routes: [{ name: r, respond: { body: x } }]\n";
        let snap = zkgate::config::load_str(&y, None).expect("config");
        let mut g = c.benchmark_group(format!("pick_{n}_backends"));
        for u in &snap.upstreams {
            let set = u.load();
            let key: Option<&[u8]> =
                (u.name.as_ref() == "consistent_hash").then_some(b"user-12345");
            let mut turn = 0usize;
            g.bench_function(u.name.as_ref(), |b| {
                b.iter(|| {
                    turn = turn.wrapping_add(1);
                    // The reference itself: copying the address out stalls on store
                    // forwarding in black_box and cost more than the pick.
                    black_box(set.pick(black_box(turn), black_box(key), &[]))
                })
            });
        }
        if n == 10 {
            // What upstream_peer does in full: load the set, pick, and clone the prepared peer
            // into the Box Pingora's API asks for (that Box is the one allocation).
            let u = &snap.upstreams[0];
            g.bench_function("select_with_peer_box", |b| {
                b.iter(|| black_box(u.select(None, &[])))
            });
        }
        g.finish();
    }
}

/// The `X-Forwarded-For` value of a request whose peer is not a trusted proxy: formatted on the
/// stack, against the `to_string` it replaced.
fn forwarded_for(c: &mut Criterion) {
    let mut g = c.benchmark_group("x_forwarded_for");
    for ip in ["127.0.0.1", "203.0.113.254", "2001:db8::8a2e:370:7334"] {
        let ip: std::net::IpAddr = ip.parse().expect("address");
        g.bench_function(format!("stack {ip}"), |b| {
            b.iter(|| black_box(zkgate::client_ip::ip_header_value(black_box(ip))))
        });
        g.bench_function(format!("to_string {ip}"), |b| {
            b.iter(|| black_box(http::HeaderValue::try_from(black_box(ip).to_string())))
        });
    }
    g.finish();
}

/// The HTTP/1 fast path's head work per request: finding the end of a typical browser-like
/// request head, parsing it, writing its upstream form with the forwarding headers, and
/// editing a backend's answer head.
fn fast_heads(c: &mut Criterion) {
    use zkgate::client_ip::ForwardedMode;
    use zkgate::proxy::fast::head;
    let req: &[u8] = b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: api.example.com\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: application/json\r\n\
        Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
        Cookie: session=0123456789abcdef\r\nConnection: keep-alive\r\n\r\n";
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
        Content-Length: 19\r\nDate: Sun, 06 Dec 2026 05:00:00 GMT\r\nServer: nginx\r\n\
        Connection: keep-alive\r\n\r\n{\"items\": [1, 2, 3]}";
    let fwd = head::Forwarding {
        peer: head::PeerIp::new("203.0.113.7".parse().expect("address")),
        passes: false,
        tls: false,
        port: 8080,
        forwarded: ForwardedMode::Off,
        by: None,
    };
    let mut g = c.benchmark_group("fast_path");
    g.bench_function("request_len", |b| {
        b.iter(|| black_box(head::request_len(black_box(req))))
    });
    let mut out = Vec::with_capacity(1024);
    g.bench_function("request_and_upstream_head", |b| {
        b.iter(|| {
            let mut slots = head::slots();
            if let Ok(r) = head::request(black_box(req), &mut slots) {
                head::write_upstream(&r, &fwd, &mut out);
            }
            black_box(out.len())
        })
    });
    g.bench_function("answer_head", |b| {
        b.iter(|| {
            black_box(head::response(
                black_box(answer),
                false,
                true,
                b"Sun, 06 Dec 2026 05:00:01 GMT",
                &mut out,
            ))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    normalize,
    route_match,
    rewrite,
    pick,
    forwarded_for,
    fast_heads
);
criterion_main!(benches);
