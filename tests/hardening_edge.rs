//! End to end, with nginx beside the gateway as the reference: no encoded or unusual path gets
//! past a route that refuses `/admin`; what a backend receives is the normalized path; HTTP/1.1
//! framing (Host, Content-Length) and forwarding headers from untrusted clients.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use common::nginx::Nginx;
use common::*;

const CONFIG: &str = r#"
upstreams:
  - name: echo
    backends: ["{BACKEND}"]
routes:
  - { name: admin, match: { path: /admin }, respond: { status: 403, body: "forbidden\n" } }
  - { name: rest, match: { path_prefix: / }, upstream: echo }
"#;

/// The request targets an adversarial probe sent past `location = /admin { return 403; }`.
/// nginx refused every one (400 or 403); the gateway used to forward them all to the catch-all,
/// where a backend that decodes paths served `/admin`.
const BYPASSES: &[&str] = &[
    "/%61dmin",
    "/adm%69n",
    "//admin",
    "///admin",
    "/%2e%2e/admin",
    "/x/%2e%2e/admin",
    "/x/%2E%2E/admin",
    "/x/.%2e/admin",
    "/x/..%2fadmin",
    "/x%2f..%2fadmin",
    "/%2fadmin",
    "admin",
    "\\admin",
    "/admin%00",
    "/admin%00.html",
    "*admin",
    "http://a/%61dmin",
    // Two spaces after the method: Pingora used to forward the target as `%20/admin`.
    " /admin",
];

fn start() -> (Gateway, Backend, Nginx) {
    let backend = Backend::start("echo");
    let gw = Gateway::start(&CONFIG.replace("{BACKEND}", &backend.addr.to_string()));
    let nginx = Nginx::start(
        "",
        &format!(
            "location = /admin {{ return 403; }}\n    location / {{ proxy_pass http://{}; }}",
            backend.addr
        ),
    );
    (gw, backend, nginx)
}

/// The status of `GET <target>`, or 0 when the server closed the connection without one.
fn status(addr: std::net::SocketAddr, target: &str) -> u16 {
    let req = format!("GET {target} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n");
    raw(addr, req.as_bytes())
        .unwrap_or_else(|e| panic!("GET {target:?}: {e}"))
        .map_or(0, |r| r.status)
}

/// The request head the gateway sends upstream for `req`, as a raw backend reads it. The
/// gateway routes `/len` to an upstream on a listener of this function's own.
fn head_forwarded_by(gw: &Gateway, req: &str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    gw.write_config(&format!(
        "upstreams:\n  - {{ name: raw, backends: [\"{addr}\"] }}\nroutes:\n  - {{ name: raw, match: {{ path: /len }}, upstream: raw }}\n"
    ));
    gw.signal("HUP");
    // The reload is in place once /len no longer reaches the old upstream's routes.
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        String::from_utf8_lossy(&buf).into_owned()
    });
    assert!(
        eventually(std::time::Duration::from_secs(10), || {
            get(gw.admin, "/config").text().contains(&addr.to_string())
        }),
        "reload did not take"
    );
    let r = raw(gw.http, req.as_bytes()).unwrap();
    assert_eq!(r.map(|r| r.status), Some(200));
    reader.join().unwrap()
}

#[test]
fn no_encoded_or_unusual_path_gets_past_a_refusing_route() {
    let (gw, backend, nginx) = start();
    for target in BYPASSES {
        let reference = status(nginx.addr, target);
        assert!(
            matches!(reference, 0 | 400 | 403),
            "nginx, the reference, let {target:?} through with {reference}"
        );
        let got = status(gw.http, target);
        assert!(
            matches!(got, 400 | 403),
            "{target:?}: nginx answers {reference}, the gateway {got}"
        );
    }
    assert!(
        backend.seen().is_empty(),
        "these reached the backend: {:?}",
        backend.seen().iter().map(|s| &s.target).collect::<Vec<_>>()
    );
    let text = gw.metrics();
    assert!(
        text.lines()
            .any(|l| l.starts_with("zkgate_bad_requests_total ") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[test]
fn the_backend_gets_the_path_that_was_matched() {
    let (gw, backend, nginx) = start();
    for (target, forwarded) in [
        ("/public/%2e%2e/ok/%7euser", "/ok/~user"),
        ("//a///b/./c/", "/a/b/c/"),
        ("/caf%c3%a9?q=%2F..", "/caf%C3%A9?q=%2F.."),
        ("http://test.local/a/../b?x=1", "/b?x=1"),
        ("/plain/path?x=1", "/plain/path?x=1"),
    ] {
        assert_eq!(status(gw.http, target), 200, "{target}");
        let seen = backend.seen();
        let last = seen.last().expect("a request reached the backend");
        assert_eq!(last.target, forwarded, "{target}");
        // nginx, given the same request, serves it too: the gateway refuses no more than it.
        assert_eq!(status(nginx.addr, target), 200, "nginx on {target}");
    }
    let seen = backend.seen();
    let absolute = seen
        .iter()
        .find(|s| s.target == "/b?x=1")
        .expect("absolute-form request");
    assert_eq!(
        absolute.headers.get("host").map(String::as_str),
        Some("test.local")
    );
}

#[test]
fn path_options_are_per_listener() {
    let backend = Backend::start("echo");
    let config = CONFIG.replace("{BACKEND}", &backend.addr.to_string())
        + "listeners:\n  - name: web\n    listen: {HTTP}\n    path: { merge_slashes: false, encoded_slashes: keep, backslash: keep }\n";
    let gw = Gateway::start(&config);
    // Kept escapes never separate segments: these are not /admin to the route table, and the
    // backend gets them as they were matched.
    for (target, forwarded) in [
        ("/x/..%2fadmin", "/x/..%2Fadmin"),
        ("/%2fadmin", "/%2Fadmin"),
        ("//admin", "//admin"),
        ("/a\\b", "/a%5Cb"),
    ] {
        assert_eq!(status(gw.http, target), 200, "{target}");
        assert_eq!(backend.seen().last().unwrap().target, forwarded);
    }
    // Dot segments and unreserved escapes are resolved whatever the options.
    assert_eq!(status(gw.http, "/x/%2e%2e/%61dmin"), 403);
}

#[test]
fn http11_framing_and_forwarded_headers() {
    let (gw, backend, nginx) = start();
    let send = |addr, req: &str| raw(addr, req.as_bytes()).unwrap().map_or(0, |r| r.status);
    // No Host in HTTP/1.1, or two of them: 400 from both (RFC 9112 §3.2).
    for req in [
        "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    ] {
        assert_eq!(send(nginx.addr, req), 400, "nginx: {req:?}");
        assert_eq!(send(gw.http, req), 400, "{req:?}");
    }
    // HTTP/1.0 needs none.
    assert_eq!(send(gw.http, "GET /x HTTP/1.0\r\n\r\n"), 200);

    // A client that is no trusted proxy cannot pass forwarding headers on.
    let r = request(
        gw.http,
        "GET",
        "/fwd",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.seen();
    let fwd = seen.iter().rev().find(|s| s.target == "/fwd").unwrap();
    assert_eq!(
        fwd.headers.get("x-forwarded-for").map(String::as_str),
        Some("127.0.0.1")
    );
    assert!(!fwd.headers.contains_key("x-real-ip"), "{:?}", fwd.headers);
    assert!(!fwd.headers.contains_key("forwarded"), "{:?}", fwd.headers);

    // A bare LF inside a chunk extension is refused: read up to CRLF, this body is `WXYZ`, but
    // a front proxy that ends chunk lines at LF reads `ab\r\n` as the chunk. nginx is no
    // reference here (it ends lines at LF).
    let before = backend.seen().len();
    let r = raw(
        gw.http,
        b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;x\nab\r\nWXYZ\r\n0\r\n\r\n",
    )
    .unwrap();
    let status = r.as_ref().map(|r| r.status);
    assert!(matches!(status, None | Some(400)), "{status:?}");
    let reached: Vec<_> = backend.seen()[before..]
        .iter()
        .map(|s| s.body.clone())
        .collect();
    assert!(
        reached.iter().all(|b| b.is_empty()),
        "a body framed across the bare LF reached the backend: {reached:?}"
    );
    // The same body with proper CRLFs goes through.
    let r = raw(
        gw.http,
        b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;x=1\r\nabc\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.map(|r| r.status), Some(200));
    assert_eq!(backend.seen().last().unwrap().body, b"abc");

    // Last, since it reconfigures the gateway.
    // Two identical Content-Length headers are one length: the backend gets one header.
    let head = head_forwarded_by(
        &gw,
        "POST /len HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    let lengths = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
        .count();
    assert_eq!(lengths, 1, "{head}");
}

#[test]
fn forwarding_headers_pass_from_trusted_proxies_or_when_kept() {
    let backend = Backend::start("echo");
    for client_ip in [
        "client_ip: { trusted_proxies: [127.0.0.0/8] }",
        "client_ip: { untrusted_forwarded: keep }",
    ] {
        let config = format!(
            "{client_ip}\n{}",
            CONFIG.replace("{BACKEND}", &backend.addr.to_string())
        );
        let gw = Gateway::start(&config);
        let r = request(
            gw.http,
            "GET",
            "/fwd",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-real-ip", "203.0.113.9"),
            ],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        let seen = backend.seen();
        let fwd = seen.last().unwrap();
        assert_eq!(
            fwd.headers.get("x-forwarded-for").map(String::as_str),
            Some("203.0.113.9, 127.0.0.1"),
            "{client_ip}"
        );
        assert_eq!(
            fwd.headers.get("x-real-ip").map(String::as_str),
            Some("203.0.113.9")
        );
    }
}
