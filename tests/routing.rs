//! End to end: routing precedence, rewrites and header edits, respond routes, 404, 431.

mod common;

use common::*;

const ROUTES: &str = r#"
upstreams:
  - name: echo
    backends: ["{BACKEND}"]
routes:
  - { name: root-prefix, match: { path_prefix: / }, respond: { body: root-prefix } }
  - { name: api-prefix, match: { path_prefix: /api/ }, respond: { body: api-prefix } }
  - { name: api-v1-prefix, match: { path_prefix: /api/v1/ }, respond: { body: api-v1-prefix } }
  - { name: api-exact, match: { path: /api/v1/status }, respond: { body: api-exact } }
  - { name: regex-first, match: { path_regex: "^/files/.*\\.png$" }, respond: { body: regex-first } }
  - { name: regex-second, match: { path_regex: "^/files/" }, respond: { body: regex-second } }
  - { name: post-only, match: { path: /submit, methods: [POST] }, respond: { body: post-only } }
  - { name: any-method, match: { path: /submit }, respond: { body: any-method } }
  - name: canary
    match: { path_prefix: /api/, headers: [{ name: x-canary, value: "yes" }] }
    respond: { body: canary }
  - name: debug-present
    match: { path_prefix: /api/, headers: [{ name: x-debug }] }
    respond: { body: debug-present }
  - { name: host-exact, match: { host: shop.example.com, path_prefix: / }, respond: { body: host-exact } }
  - { name: host-wild, match: { host: "*.example.com", path_prefix: / }, respond: { body: host-wild } }
  - { name: host-wild-deeper, match: { host: "*.eu.example.com", path_prefix: / }, respond: { body: host-wild-deeper } }
  - { name: host-only-ping, match: { host: shop.example.com, path: /only }, respond: { body: host-only } }
  - name: rewrite-regex
    match: { path_prefix: /rx/ }
    rewrite: { pattern: "^/rx/(?P<svc>[a-z]+)/(.*)$", replace: "/v2/${svc}/$2" }
    upstream: echo
    request_headers:
      set: { x-route: rewrite-regex }
      add: { x-added: one }
      remove: [x-secret]
    response_headers:
      set: { x-gateway: zkgate }
      remove: [x-backend]
  - name: rewrite-query
    match: { path_prefix: /q/ }
    rewrite: { pattern: "^/q/([0-9]+)$", replace: "/lookup?id=$1" }
    upstream: echo
  - name: strip
    match: { path_prefix: /strip/ }
    rewrite: { strip_prefix: /strip, add_prefix: /inner }
    upstream: echo
  - name: nothing
    match: { path: /nothing-here, host: nowhere.invalid }
    respond: { status: 204 }
"#;

fn start() -> (Gateway, Backend) {
    let backend = Backend::start("echo");
    let gw = Gateway::start(&ROUTES.replace("{BACKEND}", &backend.addr.to_string()));
    (gw, backend)
}

fn body_for(gw: &Gateway, method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let r = request(gw.http, method, target, headers, b"").expect("request");
    assert_eq!(r.status, 200, "{method} {target}: {}", r.text());
    r.text()
}

#[test]
fn precedence_is_exact_then_longest_prefix_then_regex_and_host_specific_first() {
    let (gw, _b) = start();
    let b = |t: &str| body_for(&gw, "GET", t, &[]);
    assert_eq!(b("/api/v1/status"), "api-exact");
    assert_eq!(b("/api/v1/status/more"), "api-v1-prefix");
    assert_eq!(b("/api/v1/"), "api-v1-prefix");
    assert_eq!(b("/api/v2"), "api-prefix");
    assert_eq!(b("/apis"), "root-prefix");
    // A prefix beats a regex: /files/ is only reachable by regex because no prefix but / ...
    // ... and `/` is a prefix, so it wins over both regexes.
    assert_eq!(b("/files/a.png"), "root-prefix");
    // Methods: the POST-only route is skipped for GET and the next tie wins.
    assert_eq!(b("/submit"), "any-method");
    assert_eq!(body_for(&gw, "POST", "/submit", &[]), "post-only");
    // Header conditions, declaration order among equal prefixes.
    assert_eq!(
        body_for(&gw, "GET", "/api/x", &[("x-canary", "yes")]),
        "api-prefix"
    );
    // Hosts: exact, then the longest wildcard, then host-less routes; case and port ignored.
    assert_eq!(
        body_for(&gw, "GET", "/only", &[("host", "SHOP.example.com:8080")]),
        "host-only"
    );
    assert_eq!(
        body_for(&gw, "GET", "/x", &[("host", "shop.example.com")]),
        "host-exact"
    );
    assert_eq!(
        body_for(&gw, "GET", "/x", &[("host", "blog.example.com")]),
        "host-wild"
    );
    assert_eq!(
        body_for(&gw, "GET", "/x", &[("host", "a.eu.example.com")]),
        "host-wild-deeper"
    );
    assert_eq!(
        body_for(&gw, "GET", "/api/v1/status", &[("host", "example.com")]),
        "api-exact"
    );
    // Dot segments are resolved before matching.
    assert_eq!(b("/api/v1/x/../status"), "api-exact");
}

#[test]
fn regex_routes_apply_in_declaration_order_when_no_prefix_matches() {
    let backend = Backend::start("echo");
    let gw = Gateway::start(&format!(
        r#"
upstreams: [{{ name: echo, backends: ["{}"] }}]
routes:
  - {{ name: regex-first, match: {{ path_regex: "^/files/.*\\.png$" }}, respond: {{ body: regex-first }} }}
  - {{ name: regex-second, match: {{ path_regex: "^/files/" }}, respond: {{ body: regex-second }} }}
  - {{ name: exact, match: {{ path: /files/x.png }}, respond: {{ body: exact }} }}
  - {{ name: prefix, match: {{ path_prefix: /files/keep/ }}, respond: {{ body: prefix }} }}
  - name: canary
    match: {{ path_prefix: /hdr/, headers: [{{ name: x-canary, value: "yes" }}] }}
    respond: {{ body: canary }}
  - name: version
    match: {{ path_prefix: /hdr/, headers: [{{ name: x-ver, regex: "^v[23]$" }}], methods: [get] }}
    respond: {{ body: version }}
  - name: debug
    match: {{ path_prefix: /hdr/, headers: [{{ name: x-debug }}] }}
    respond: {{ body: debug }}
  - {{ name: plain, match: {{ path_prefix: /hdr/ }}, respond: {{ body: plain }} }}
"#,
        backend.addr
    ));
    assert_eq!(gw.get("/files/a.png").text(), "regex-first");
    assert_eq!(gw.get("/files/a.txt").text(), "regex-second");
    assert_eq!(gw.get("/files/x.png").text(), "exact");
    assert_eq!(gw.get("/files/keep/a.png").text(), "prefix");
    let h = |headers: &[(&str, &str)]| {
        request(gw.http, "GET", "/hdr/x", headers, b"")
            .unwrap()
            .text()
    };
    assert_eq!(h(&[("x-canary", "yes")]), "canary");
    assert_eq!(h(&[("x-canary", "no")]), "plain");
    assert_eq!(h(&[("x-ver", "v3")]), "version");
    assert_eq!(h(&[("x-ver", "v4")]), "plain");
    assert_eq!(h(&[("x-debug", "")]), "debug");
    assert_eq!(h(&[("x-debug", "1"), ("x-canary", "yes")]), "canary");
    let r = request(gw.http, "POST", "/hdr/x", &[("x-ver", "v2")], b"").unwrap();
    assert_eq!(r.text(), "plain");
    let r = gw.get("/elsewhere");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no route"), "{}", r.text());
}

#[test]
fn unmatched_requests_get_404_from_the_gateway() {
    let (gw, backend) = start();
    let r = request(
        gw.http,
        "GET",
        "/nothing-here",
        &[("host", "elsewhere.invalid")],
        b"",
    )
    .unwrap();
    // The root prefix catches it: the host-specific exact route does not apply to other hosts.
    assert_eq!(r.text(), "root-prefix");
    let r = request(
        gw.http,
        "GET",
        "/nothing-here",
        &[("host", "nowhere.invalid")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn rewrite_with_captures_keeps_the_query_and_edits_headers() {
    let (gw, _b) = start();
    let r = request(
        gw.http,
        "GET",
        "/rx/users/7/details?a=1&b=two",
        &[("x-secret", "s3"), ("x-added", "zero")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["target"], "/v2/users/7/details?a=1&b=two");
    assert_eq!(echo["headers"]["x-route"], "rewrite-regex");
    assert!(echo["headers"].get("x-secret").is_none(), "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        echo["headers"]["host"], "test.local",
        "the client's Host is passed on"
    );
    assert_eq!(r.header("x-gateway"), Some("zkgate"));
    assert_eq!(r.header("x-backend"), None);

    // A replacement with `?` sets the query.
    let echo = gw.get("/q/42?dropped=1").json();
    assert_eq!(echo["target"], "/lookup?id=42");
    // A path the pattern does not match is forwarded unchanged.
    let echo = gw.get("/q/abc?x=1").json();
    assert_eq!(echo["target"], "/q/abc?x=1");
    // strip_prefix then add_prefix.
    let echo = gw.get("/strip/a/b?z=9").json();
    assert_eq!(echo["target"], "/inner/a/b?z=9");
    // The path forwarded is the normalized one that was matched.
    let echo = gw.get("/strip/a/../b").json();
    assert_eq!(echo["target"], "/inner/b");
}

#[test]
fn respond_routes_answer_head_and_keep_the_connection() {
    let (gw, _b) = start();
    let r = request(gw.http, "HEAD", "/api/v1/status", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("9"));
    let mut c = Conn::open(gw.http).unwrap();
    for _ in 0..5 {
        assert_eq!(c.get("/api/x").unwrap().text(), "api-prefix");
    }
}

#[test]
fn too_many_or_too_large_headers_get_431() {
    let backend = Backend::start("echo");
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - {{ name: web, listen: "{{HTTP}}", max_request_headers: 20, max_request_header_bytes: 2KiB }}
upstreams: [{{ name: echo, backends: ["{}"] }}]
routes: [{{ name: all, upstream: echo }}]
"#,
        backend.addr
    ));
    let many: Vec<(String, String)> = (0..25)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        request(gw.http, "GET", "/", &many, b"").unwrap().status,
        431
    );
    let big = "y".repeat(3000);
    assert_eq!(
        request(gw.http, "GET", "/", &[("x-big", &big)], b"")
            .unwrap()
            .status,
        431
    );
    assert_eq!(
        request(gw.http, "GET", "/", &many[..5], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[test]
fn keepalive_requests_closes_a_connection_after_its_budget() {
    let gw = Gateway::start(
        r#"
listeners:
  - { name: web, listen: "{HTTP}", keepalive_requests: 3 }
routes: [{ name: all, respond: { body: ok } }]
"#,
    );
    let mut c = Conn::open(gw.http).unwrap();
    let mut served = 0;
    for _ in 0..10 {
        match c.get("/") {
            Ok(r) if r.status == 200 => served += 1,
            _ => break,
        }
    }
    assert!(
        (3..=4).contains(&served),
        "served {served} requests on one connection"
    );
}
