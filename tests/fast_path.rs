//! The HTTP/1 fast path against the full proxy: one gateway, two listeners with the same
//! route, one with `http1_fast_path` on (the default) and one with it off. The same raw
//! requests go to both; what the backend receives and what the client receives must say the
//! same (fields compared as multisets, per name in order, since the fast path keeps the
//! client's and the backend's order where Pingora groups fields of a name; `Date` by presence).
//! The fast listener's counter proves the requests took the fast path, and requests the fast
//! path leaves are shown to reach the full proxy on the same connection.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{eventually, free_port, get, Gateway};

/// What a scripted backend answers to a target (by its path), as raw bytes.
fn script(path: &str) -> Vec<u8> {
    let canned: &[u8] = match path {
        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-B: 1\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
        "/http10" => b"HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nuntil the end",
        "/nocontent" => b"HTTP/1.1 204 No Content\r\nX-B: 2\r\n\r\n",
        "/notmodified" => b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n",
        "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/reason" => b"HTTP/1.1 299 Very Fine\r\nContent-Length: 1\r\nKeep-Alive: timeout=5\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\nx",
        "/close" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbye\r\n",
        "/error" => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\n\r\nbusy",
        "/dupes" => b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Z: z\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
        _ => b"",
    };
    if !canned.is_empty() {
        return canned.to_vec();
    }
    let body = format!("you asked for {path}");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A request as the backend read it: its head and its body.
type Received = (Vec<u8>, Vec<u8>);

/// A request as compared: its request line, its fields (as [`Seen`]'s) and its body.
type Upstream = (String, BTreeMap<String, Vec<String>>, Vec<u8>);

/// A raw HTTP/1.1 backend: it records each request's head and body as received and answers
/// from [`script`], keeping the connection unless the answer ends by closing.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Scripted {
    fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let record = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let record = record.clone();
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut buf = Vec::new();
                    loop {
                        let Some((head, body, rest)) = read_request(&mut s, buf) else {
                            return;
                        };
                        buf = rest;
                        let path = request_path(&head);
                        record.lock().expect("record").push((head, body));
                        let answer = script(&path);
                        if s.write_all(&answer).is_err() {
                            return;
                        }
                        if path == "/http10" || path == "/close" {
                            return;
                        }
                    }
                });
            }
        });
        Scripted { addr, seen }
    }

    fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.seen.lock().expect("record"))
    }
}

fn request_path(head: &[u8]) -> String {
    let line = String::from_utf8_lossy(head);
    let target = line.split(' ').nth(1).unwrap_or("/").to_owned();
    target.split('?').next().unwrap_or("/").to_owned()
}

/// One request from `s` (with what was read past it): its head, its Content-Length body.
fn read_request(s: &mut TcpStream, mut buf: Vec<u8>) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
            let chunked = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    && String::from_utf8_lossy(h.value).contains("chunked")
            });
            if chunked {
                let mut rest = buf.split_off(n);
                let body = dechunk(s, &mut rest)?;
                return Some((buf, body, rest));
            }
            let len: usize = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < n + len {
                let mut more = [0u8; 65536];
                let got = s.read(&mut more).ok().filter(|g| *g > 0)?;
                buf.extend_from_slice(&more[..got]);
            }
            let rest = buf.split_off(n + len);
            let body = buf.split_off(n);
            return Some((buf, body, rest));
        }
        let mut more = [0u8; 65536];
        let got = s.read(&mut more).ok().filter(|g| *g > 0)?;
        buf.extend_from_slice(&more[..got]);
    }
}

/// A response as compared: status line, fields (lower-case name, value) sorted by name with
/// each name's values in order, `Date` by presence, and the body decoded.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    line: String,
    fields: BTreeMap<String, Vec<String>>,
    body: Vec<u8>,
}

/// Reads responses from `s` (with `buf` read past the previous one): one per request sent,
/// the body framed as HTTP/1.1 frames it (`head` asked: a HEAD, no body).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head: bool) -> Option<Seen> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp.parse(buf);
        if let Ok(httparse::Status::Complete(n)) = parsed {
            let code = resp.code?;
            let line = format!(
                "HTTP/1.{} {} {}",
                resp.version?,
                code,
                resp.reason.unwrap_or("")
            );
            let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for h in resp.headers.iter() {
                let name = h.name.to_ascii_lowercase();
                let value = if name == "date" {
                    "(a date)".to_owned()
                } else {
                    String::from_utf8_lossy(h.value).into_owned()
                };
                fields.entry(name).or_default().push(value);
            }
            let chunked = fields
                .get("transfer-encoding")
                .is_some_and(|v| v.iter().any(|v| v.contains("chunked")));
            let length: Option<usize> = fields
                .get("content-length")
                .and_then(|v| v.first()?.parse().ok());
            buf.drain(..n);
            if (100..200).contains(&code) {
                return Some(Seen {
                    line,
                    fields,
                    body: Vec::new(),
                });
            }
            let body = if head || code == 204 || code == 304 {
                Vec::new()
            } else if chunked {
                dechunk(s, buf)?
            } else if let Some(len) = length {
                fill(s, buf, len)?;
                buf.drain(..len).collect()
            } else {
                while s.read_to_end(buf).ok()? > 0 {}
                std::mem::take(buf)
            };
            return Some(Seen { line, fields, body });
        }
        let mut more = [0u8; 65536];
        let got = s.read(&mut more).ok().filter(|g| *g > 0)?;
        buf.extend_from_slice(&more[..got]);
    }
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> Option<()> {
    while buf.len() < len {
        let mut more = [0u8; 65536];
        let got = s.read(&mut more).ok().filter(|g| *g > 0)?;
        buf.extend_from_slice(&more[..got]);
    }
    Some(())
}

/// A chunked body's data, trailers dropped.
fn dechunk(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            let mut more = [0u8; 65536];
            let got = s.read(&mut more).ok().filter(|g| *g > 0)?;
            buf.extend_from_slice(&more[..got]);
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                fill(s, buf, 2)?;
                if buf.starts_with(b"\r\n") {
                    buf.drain(..2);
                    return Some(out);
                }
                let end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    let mut more = [0u8; 4096];
                    let got = s.read(&mut more).ok().filter(|g| *g > 0)?;
                    buf.extend_from_slice(&more[..got]);
                };
                buf.drain(..end + 2);
            }
        }
        fill(s, buf, size + 2)?;
        out.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// A request head as the backend saw it: its request line and fields, compared as [`Seen`].
fn upstream_view(head: &[u8]) -> (String, BTreeMap<String, Vec<String>>) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head).expect("the backend got a valid head");
    let line = format!(
        "{} {} HTTP/1.{}",
        req.method.expect("method"),
        req.path.expect("target"),
        req.version.expect("version")
    );
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in req.headers.iter() {
        fields
            .entry(h.name.to_ascii_lowercase())
            .or_default()
            .push(String::from_utf8_lossy(h.value).into_owned());
    }
    (line, fields)
}

struct Pair {
    gw: Gateway,
    fast: SocketAddr,
    full: SocketAddr,
    backend: Scripted,
}

/// A fast and a full listener on the same routes: `extra_routes` (YAML list items) come before
/// the catch-all `app`, and may name the upstreams of `extra_upstreams`.
fn start(extra_upstreams: &str, extra_routes: &str) -> Pair {
    let backend = Scripted::start();
    let full = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - {{ name: fast, listen: "{{HTTP}}" }}
  - {{ name: full, listen: "{full}", http1_fast_path: false }}
upstreams:
  - name: app
    backends: ["{backend}"]
  - name: gone
    backends: ["{dead}"]
{extra_upstreams}
routes:
  - name: dead
    match: {{ path_prefix: /dead }}
    upstream: gone
{extra_routes}
  - name: app
    match: {{ path_prefix: / }}
    upstream: app
"#,
        backend = backend.addr
    ));
    gw.wait_listening(full);
    Pair {
        fast: gw.http,
        gw,
        full,
        backend,
    }
}

impl Pair {
    fn fast_count(&self) -> f64 {
        common::game::metric_sum(
            &self.gw.metrics(),
            "zkgate_http1_fast_path_requests_total",
            &[("listener", "fast")],
        )
    }

    /// Sends `raw` (one or more requests) on a new connection to `to` and reads `answers`
    /// responses; returns them and what the backend received meanwhile.
    fn exchange(&self, to: SocketAddr, raw: &[u8], answers: &[bool]) -> (Vec<Seen>, Vec<Upstream>) {
        let idle = self.gw.in_flight();
        let mut s = TcpStream::connect(to).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(raw).expect("send");
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for &head in answers {
            match read_response(&mut s, &mut buf, head) {
                Some(r) => got.push(r),
                None => break,
            }
        }
        drop(s);
        // A request gives its `max_in_flight` slot back after its answer is written, so the
        // client can read the answer first; the next exchange must not find the slot taken.
        assert!(
            eventually(Duration::from_secs(10), || self.gw.in_flight() == idle),
            "the requests in flight stay {:?}, were {idle:?}",
            self.gw.in_flight()
        );
        // The backend records before it answers: what it saw is in by now.
        let seen = self
            .backend
            .take()
            .into_iter()
            .map(|(head, body)| {
                let (line, fields) = upstream_view(&head);
                (line, fields, body)
            })
            .collect();
        (got, seen)
    }

    /// The same exchange on both listeners must read the same (but for `X-Forwarded-Port`,
    /// each listener's own); returns the fast one's.
    fn same(&self, raw: &[u8], answers: &[bool]) -> Vec<Seen> {
        let (full, mut full_seen) = self.exchange(self.full, raw, answers);
        let (fast, mut fast_seen) = self.exchange(self.fast, raw, answers);
        for (seen, port) in [
            (&mut full_seen, self.full.port()),
            (&mut fast_seen, self.fast.port()),
        ] {
            for (_, fields, _) in seen.iter_mut() {
                if let Some(p) = fields.get_mut("x-forwarded-port") {
                    assert_eq!(*p, [port.to_string()]);
                    *p = vec!["(the listener's port)".to_owned()];
                }
            }
        }
        let what = String::from_utf8_lossy(raw);
        assert_eq!(fast, full, "answers differ for {what}");
        assert_eq!(
            fast_seen, full_seen,
            "the backend saw different requests for {what}"
        );
        assert_eq!(fast.len(), answers.len(), "{what}: {fast:?}");
        fast
    }
}

#[test]
fn the_fast_path_forwards_what_the_full_proxy_forwards() {
    let p = start("", "");
    let before = p.fast_count();
    let cases: &[(&[u8], &[bool])] = &[
        (b"GET /a/b?c=d&e HTTP/1.1\r\nHost: app.test\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n", &[false]),
        (b"GET / HTTP/1.1\r\nhost: App.Test:8080\r\nACCEPT: a\r\nX-Mixed-Case: V\r\naccept: b\r\n\r\n", &[false]),
        // An untrusted client's forwarding headers are replaced.
        (b"GET /fwd HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-For: 10.8.8.8\r\nX-Real-IP: 10.9.9.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nForwarded: for=10.9.9.9\r\n\r\n", &[false]),
        // Hop-by-hop fields stay here.
        (b"GET /hop HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nKeep-Alive: timeout=9\r\nProxy-Connection: keep-alive\r\nTrailer: X\r\n\r\n", &[false]),
        (b"POST /post HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world", &[false]),
        (b"HEAD /head HTTP/1.1\r\nHost: h\r\n\r\n", &[true]),
        (b"GET /close-asked HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", &[false]),
        (b"GET /chunked HTTP/1.1\r\nHost: h\r\n\r\n", &[false]),
        (b"GET /http10 HTTP/1.1\r\nHost: h\r\n\r\n", &[false]),
        (b"GET /nocontent HTTP/1.1\r\nHost: h\r\n\r\n", &[false]),
        (b"GET /notmodified HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"e\"\r\n\r\n", &[false]),
        (b"GET /early HTTP/1.1\r\nHost: h\r\n\r\n", &[false, false]),
        (b"GET /reason HTTP/1.1\r\nHost: h\r\n\r\n", &[false]),
        (b"GET /close HTTP/1.1\r\nHost: h\r\n\r\n", &[false]),
        (b"GET /error HTTP/1.1\r\nHost: h\r\n\r\n", &[false]),
        (b"GET /dupes HTTP/1.1\r\nHost: h\r\n\r\n", &[false]),
        // A backend that cannot be reached: the gateway's own 502.
        (b"GET /dead HTTP/1.1\r\nHost: h\r\n\r\n", &[false]),
        (b"HEAD /dead HTTP/1.1\r\nHost: h\r\n\r\n", &[true]),
        // Keep-alive, and pipelined requests answered in order.
        (b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\nHEAD /three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", &[false, false, true]),
    ];
    let mut expected = 0;
    for (raw, answers) in cases {
        p.same(raw, answers);
        expected += answers.len();
    }
    // 103 is no request of its own.
    expected -= 1;
    assert_eq!(p.fast_count() - before, expected as f64);
}

#[test]
fn a_large_body_streams_through_the_fast_path() {
    let p = start("", "");
    let body = vec![b'x'; 300_000];
    let mut raw = format!(
        "PUT /big HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let before = p.fast_count();
    let (answers, seen) = p.exchange(p.fast, &raw, &[false]);
    assert_eq!(answers[0].line, "HTTP/1.1 200 OK");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].2, body);
    assert_eq!(p.fast_count() - before, 1.0);
}

#[test]
fn what_the_fast_path_leaves_reaches_the_full_proxy_on_the_same_connection() {
    let p = start("", "");
    let before = p.fast_count();
    // A fast request, then a chunked one (the full proxy's), then another plain one, which
    // the full proxy keeps for the rest of the connection.
    let raw = b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n\
        POST /chunked-in HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
        GET /third HTTP/1.1\r\nHost: h\r\n\r\n";
    let answers = p.same(raw, &[false, false, false]);
    assert!(
        answers.iter().all(|a| a.line == "HTTP/1.1 200 OK"),
        "{answers:?}"
    );
    assert_eq!(p.fast_count() - before, 1.0);
    // HTTP/1.0, an unknown method and a malformed head go to the full proxy and get its
    // answers.
    for raw in [
        &b"GET /old HTTP/1.0\r\nHost: h\r\n\r\n"[..],
        b"PURGE /x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHo st: h\r\n\r\n",
        b"GET /x HTTP/1.1\r\n\r\n",
        b"GET /a/../b HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        p.same(raw, &[false]);
    }
    assert_eq!(p.fast_count() - before, 1.0);
}

#[test]
fn keepalive_requests_and_a_stopping_limit_hold_on_the_fast_path() {
    let p = start("", "");
    // Rebuilt with a limit of 1 reuse: the second answer says close, as the full proxy's does.
    drop(p);
    let backend = Scripted::start();
    let full = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - {{ name: fast, listen: "{{HTTP}}", keepalive_requests: 1 }}
  - {{ name: full, listen: "{full}", keepalive_requests: 1, http1_fast_path: false }}
upstreams: [{{ name: app, backends: ["{}"] }}]
routes: [{{ name: app, match: {{ path_prefix: / }}, upstream: app }}]
"#,
        backend.addr
    ));
    gw.wait_listening(full);
    let p = Pair {
        fast: gw.http,
        gw,
        full,
        backend,
    };
    let raw = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n";
    let answers = p.same(raw, &[false, false]);
    assert_eq!(answers[0].fields["connection"], ["keep-alive"]);
    assert_eq!(answers[1].fields["connection"], ["close"]);
}

#[test]
fn a_routes_limits_answer_on_the_fast_path_as_on_the_full_proxy() {
    // The two listeners share each route's limits: every exchange below runs on the full
    // listener first, then on the fast one, so a bucket of 2 lets both through once.
    // A backend that reads a request and never answers: a request to it holds its slot.
    let hung = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_addr = hung.local_addr().expect("addr");
    let (arrived, arrival) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in hung.incoming().flatten() {
            let _ = s.read(&mut [0u8; 4096]);
            let _ = arrived.send(());
            held.push(s);
        }
    });
    let p = start(
        &format!(r#"  - {{ name: hung, backends: ["{hung_addr}"] }}"#),
        r#"
  - name: rated
    match: { path_prefix: /rated }
    upstream: app
    rate_limit: { per_second: 0.001, burst: 2, key: "header:X-User" }
  - name: capped
    match: { path_prefix: /capped }
    upstream: hung
    max_in_flight: 1
  - name: roomy
    match: { path_prefix: /roomy }
    upstream: app
    max_in_flight: 1"#,
    );
    let mut holder = TcpStream::connect(p.fast).expect("connect");
    holder
        .write_all(b"GET /capped/hold HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("send");
    arrival
        .recv_timeout(Duration::from_secs(10))
        .expect("the held request reached its backend");
    p.backend.take();
    // The admin listener shows each capped route's occupancy: the held request is counted.
    assert_eq!(
        p.gw.in_flight(),
        [("capped".to_owned(), 1), ("roomy".to_owned(), 0)]
    );
    let routes = get(p.gw.admin, "/routes").json();
    let caps: Vec<_> = routes["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| (r["name"].as_str(), r["max_in_flight"].as_u64()))
        .collect();
    assert!(caps.contains(&(Some("capped"), Some(1))), "{caps:?}");
    assert!(caps.contains(&(Some("rated"), None)), "{caps:?}");
    let before = p.fast_count();
    let cases: &[(&[u8], &[bool])] = &[
        (b"GET /rated HTTP/1.1\r\nHost: h\r\nX-User: a\r\n\r\n", &[false]),
        // Over the rate: 429 with Retry-After, and the connection goes on.
        (b"GET /rated HTTP/1.1\r\nHost: h\r\nX-User: a\r\n\r\nHEAD /rated HTTP/1.1\r\nHost: h\r\nx-user: a\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n", &[false, true, false]),
        (b"GET /rated HTTP/1.1\r\nHost: h\r\nX-User: a\r\nConnection: close\r\n\r\n", &[false]),
        (b"GET /rated HTTP/1.1\r\nHost: h\r\nX-User: b\r\n\r\n", &[false]),
        (b"GET /capped HTTP/1.1\r\nHost: h\r\n\r\n", &[false]),
        (b"GET /roomy HTTP/1.1\r\nHost: h\r\n\r\nGET /roomy HTTP/1.1\r\nHost: h\r\n\r\n", &[false, false]),
    ];
    let mut answers = Vec::new();
    for (raw, heads) in cases {
        answers.extend(p.same(raw, heads));
    }
    let lines: Vec<&str> = answers.iter().map(|a| a.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 429 Too Many Requests",
            "HTTP/1.1 429 Too Many Requests",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 429 Too Many Requests",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 503 Service Unavailable",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
        ]
    );
    assert_eq!(answers[1].fields["retry-after"], ["1000"]);
    assert_eq!(p.fast_count() - before, 9.0);
    // A request with a body on a limited route is the full proxy's (which drains the body of
    // a refused one); it still takes its token.
    let raw = b"POST /rated HTTP/1.1\r\nHost: h\r\nX-User: c\r\nContent-Length: 2\r\n\r\nhi";
    let answers = p.same(raw, &[false]);
    assert_eq!(answers[0].line, "HTTP/1.1 200 OK");
    let answers = p.same(raw, &[false]);
    assert_eq!(answers[0].line, "HTTP/1.1 429 Too Many Requests");
    assert_eq!(p.fast_count() - before, 9.0);
    drop(holder);
}

#[test]
fn routes_that_match_on_headers_route_alike_on_the_fast_path() {
    // The canary routes go to the dead upstream: the gateway's 502 tells that they matched.
    let p = start(
        "",
        r#"
  - name: canary
    match: { path_prefix: /, headers: [{ name: X-Canary, value: "yes" }] }
    upstream: gone
  - name: versioned
    match: { path_prefix: /v, headers: [{ name: x-version, regex: "^v[23]$" }] }
    upstream: gone
  - name: authorized
    match: { path_prefix: /auth, headers: [{ name: authorization }] }
    upstream: gone"#,
    );
    let before = p.fast_count();
    let cases: &[&[u8]] = &[
        b"GET /a HTTP/1.1\r\nHost: h\r\nX-Canary: yes\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nx-canary: no\r\n\r\n",
        // Any of the field's values may match, as in the full proxy's header map.
        b"GET /a HTTP/1.1\r\nHost: h\r\nX-Canary: no\r\nX-CANARY: yes\r\n\r\n",
        b"GET /v1 HTTP/1.1\r\nHost: h\r\nX-Version: v3\r\n\r\n",
        b"GET /v1 HTTP/1.1\r\nHost: h\r\nX-Version: v4\r\n\r\n",
        b"GET /auth HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n\r\n",
        b"GET /auth HTTP/1.1\r\nHost: h\r\n\r\n",
    ];
    let lines: Vec<String> = cases
        .iter()
        .map(|raw| p.same(raw, &[false]).remove(0).line)
        .collect();
    assert_eq!(
        lines,
        [
            "HTTP/1.1 502 Bad Gateway",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 502 Bad Gateway",
            "HTTP/1.1 502 Bad Gateway",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 502 Bad Gateway",
            "HTTP/1.1 200 OK",
        ]
    );
    assert_eq!(p.fast_count() - before, cases.len() as f64);
}
