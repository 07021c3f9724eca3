//! The PROXY protocol on a listener, against the real gateway: the client is a raw socket that
//! writes v1 text and v2 binary headers as a load balancer does, then its HTTP request. The
//! carried address must be the client address everywhere (the upstream's X-Forwarded-For, the
//! rate limiter's key, the access log, the per-address connection cap), and every connection
//! that is not a trusted balancer's with a whole, well-formed header must be closed before
//! anything reaches the upstream.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use common::{eventually, free_port, raw, Backend, Conn, Gateway, Response};

const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const PROXY: u8 = 0x1;
const LOCAL: u8 = 0x0;

fn v1(source: &str, destination: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

fn v2(command: u8, source: &str, destination: &str, tlvs: &[u8]) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    let mut h = SIGNATURE.to_vec();
    h.push(0x20 | command);
    let mut payload = Vec::new();
    match (s, d) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11);
            payload.extend_from_slice(&s.ip().octets());
            payload.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.push(0x21);
            payload.extend_from_slice(&s.ip().octets());
            payload.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("one family for both addresses"),
    }
    payload.extend_from_slice(&s.port().to_be_bytes());
    payload.extend_from_slice(&d.port().to_be_bytes());
    payload.extend_from_slice(tlvs);
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&payload);
    h
}

fn request_to(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\n\r\n").into_bytes()
}

/// `header` and a request in one write, as a balancer relays a client that sent its request at
/// once: the request must be served, so not one of its bytes was taken with the header.
fn through(addr: SocketAddr, header: &[u8], target: &str) -> Response {
    raw(addr, &[header, &request_to(target)].concat())
        .unwrap()
        .expect("an answer")
}

/// Whether the gateway closed the connection after `bytes` without answering a byte. A
/// connection still open when the 20 s read timeout passes is not closed.
fn closed_without_answer(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The gateway may close before the write: what counts is what comes back.
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got.is_empty(),
        Err(e) => {
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) && got.is_empty()
        }
    }
}

fn echoed_client(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The value of the series `series` (`name{labels}`), 0 when absent.
fn metric_value(gw: &Gateway, series: &str) -> u64 {
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn metric(gw: &Gateway, line: &str) -> bool {
    eventually(Duration::from_secs(5), || {
        gw.metrics().lines().any(|l| l == line)
    })
}

struct Setup {
    gw: Gateway,
    backend: Backend,
    /// A listener that trusts only 10.0.0.0/8, where the test's 127.0.0.1 is a stranger.
    elsewhere: SocketAddr,
    access_log: std::path::PathBuf,
}

fn start(listener_extra: &str) -> Setup {
    let backend = Backend::start("app");
    let elsewhere = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let logs = tempfile::tempdir().unwrap();
    let access_log = logs.path().join("access.log");
    let gw = Gateway::start(&format!(
        r#"
access_log: {{ path: "{log}" }}
upstreams: [{{ name: app, backends: ["{backend}"] }}]
listeners:
  - name: lb
    listen: "{{HTTP}}"
    client_header_timeout: 3s
    proxy_protocol: {{ trusted: [127.0.0.0/8], timeout: 1s }}
{listener_extra}
  - name: elsewhere
    listen: "{elsewhere}"
    proxy_protocol: {{ trusted: [10.0.0.0/8] }}
routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: app
    rate_limit: {{ per_second: 0.01, burst: 2, key: client_ip }}
  - {{ name: app, upstream: app }}
"#,
        log = access_log.display(),
        backend = backend.addr,
    ));
    gw.wait_listening(elsewhere);
    // The access log's directory lives as long as the gateway's.
    std::mem::forget(logs);
    Setup {
        gw,
        backend,
        elsewhere,
        access_log,
    }
}

#[test]
fn the_carried_address_is_the_client_for_the_upstream_the_rate_limiter_and_the_access_log() {
    let s = start("");
    let addr = s.gw.http;
    let cases = [
        (v1("203.0.113.7:56324", "192.0.2.1:443"), "203.0.113.7"),
        (
            v1("[2001:db8::7]:40000", "[2001:db8::1]:443"),
            "2001:db8::7",
        ),
        (
            v2(PROXY, "198.51.100.9:1234", "10.0.0.1:80", &[]),
            "198.51.100.9",
        ),
        (
            v2(PROXY, "[2001:db8::9]:5", "[2001:db8::1]:80", &[]),
            "2001:db8::9",
        ),
        // TLVs (an ALPN, a NOOP, one of a type nobody defined) are skipped.
        (
            v2(
                PROXY,
                "198.51.100.10:1",
                "10.0.0.1:80",
                &[0x01, 0, 2, b'h', b'2', 0x04, 0, 0, 0xEE, 0, 1, 7],
            ),
            "198.51.100.10",
        ),
        // LOCAL: the balancer's own connection (a health check) keeps the real peer.
        (v2(LOCAL, "192.0.2.99:1", "10.0.0.1:80", &[]), "127.0.0.1"),
        (b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
    ];
    for (header, client) in &cases {
        let r = through(addr, header, "/x");
        assert_eq!(&echoed_client(&r), client, "{header:?}");
    }

    // Each carried address has a bucket of its own: two requests, then 429.
    let a = v1("203.0.113.50:1000", "192.0.2.1:443");
    let b = v2(PROXY, "203.0.113.51:1000", "192.0.2.1:443", &[]);
    for _ in 0..2 {
        assert_eq!(through(addr, &a, "/limited").status, 200);
    }
    assert_eq!(through(addr, &a, "/limited").status, 429);
    assert_eq!(through(addr, &b, "/limited").status, 200);
    assert_eq!(through(addr, &b, "/limited").status, 200);
    assert_eq!(through(addr, &b, "/limited").status, 429);
    // And the balancer's own address has not been charged for either.
    assert_eq!(
        through(
            addr,
            &v2(LOCAL, "192.0.2.99:1", "10.0.0.1:80", &[]),
            "/limited"
        )
        .status,
        200
    );

    let log = || std::fs::read_to_string(&s.access_log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(5), || log()
            .contains("203.0.113.7:56324 \"GET /x HTTP/1.1\" 200")),
        "{}",
        log()
    );
    assert!(
        log().contains("[2001:db8::9]:5 \"GET /x HTTP/1.1\" 200"),
        "{}",
        log()
    );
    assert!(metric(
        &s.gw,
        "zkgate_proxy_protocol_rejected_total{listener=\"lb\",reason=\"malformed\"} 0"
    ));
}

#[test]
fn a_header_sent_one_byte_at_a_time_still_works() {
    let s = start("");
    for (header, client) in [
        (v1("203.0.113.8:1", "192.0.2.1:443"), "203.0.113.8"),
        (
            v2(
                PROXY,
                "[2001:db8::8]:1",
                "[2001:db8::1]:443",
                &[0x04, 0, 1, 0],
            ),
            "2001:db8::8",
        ),
    ] {
        let mut sock = TcpStream::connect(s.gw.http).unwrap();
        sock.set_nodelay(true).unwrap();
        for b in &header {
            sock.write_all(&[*b]).unwrap();
            // Each byte in a segment of its own.
            thread::sleep(Duration::from_millis(2));
        }
        let mut c = Conn::from_stream(sock).unwrap();
        let r = c.get("/x").unwrap();
        assert_eq!(echoed_client(&r), client);
        // The connection goes on as any keep-alive one, with the same client.
        assert_eq!(echoed_client(&c.get("/y").unwrap()), client);
    }
}

#[test]
fn an_untrusted_peer_is_closed_whatever_it_sends_and_the_upstream_sees_nothing() {
    let s = start("");
    let series =
        "zkgate_proxy_protocol_rejected_total{listener=\"elsewhere\",reason=\"untrusted\"}";
    // The second listener is up (this connection is refused, and counted, as well).
    assert!(eventually(Duration::from_secs(5), || {
        TcpStream::connect(s.elsewhere).is_ok()
    }));
    assert!(eventually(Duration::from_secs(5), || metric_value(
        &s.gw, series
    ) > 0));
    let before = metric_value(&s.gw, series);
    let valid = [v1("203.0.113.7:1", "192.0.2.1:443"), request_to("/x")].concat();
    assert!(closed_without_answer(s.elsewhere, &valid));
    assert!(closed_without_answer(s.elsewhere, &request_to("/x")));
    assert!(closed_without_answer(s.elsewhere, b""));
    assert!(eventually(Duration::from_secs(5), || {
        metric_value(&s.gw, series) == before + 3
    }));
    assert_eq!(s.backend.requests.load(Ordering::SeqCst), 0);
    assert!(s.gw.log().contains(
        "closed the connection of peer 127.0.0.1, which is not in proxy_protocol.trusted"
    ));
}

#[test]
fn a_missing_or_malformed_header_closes_the_connection() {
    let s = start("");
    let mut bad_command = v2(PROXY, "198.51.100.9:1", "10.0.0.1:80", &[]);
    bad_command[12] = 0x2F;
    let mut too_long = SIGNATURE.to_vec();
    too_long.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
    for (what, bytes) in [
        ("no header", request_to("/x")),
        (
            "bad address",
            b"PROXY TCP4 203.0.113 192.0.2.1 1 443\r\n".to_vec(),
        ),
        (
            "no CRLF",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 1 443\n".to_vec(),
        ),
        ("bad v2 command", bad_command),
        ("v2 past the cap", too_long),
        ("closed inside", b"PROXY TCP4 203.0.113.7".to_vec()),
    ] {
        let mut sent = bytes.clone();
        sent.extend_from_slice(&request_to("/x"));
        if what == "closed inside" {
            // Ends its side right after the partial header.
            let mut sock = TcpStream::connect(s.gw.http).unwrap();
            sock.write_all(&bytes).unwrap();
            sock.shutdown(std::net::Shutdown::Write).unwrap();
            let mut got = Vec::new();
            let _ = sock.read_to_end(&mut got);
            assert!(got.is_empty(), "{what}");
            continue;
        }
        assert!(closed_without_answer(s.gw.http, &sent), "{what}");
    }
    assert!(metric(
        &s.gw,
        "zkgate_proxy_protocol_rejected_total{listener=\"lb\",reason=\"malformed\"} 6"
    ));
    assert_eq!(s.backend.requests.load(Ordering::SeqCst), 0);
    assert!(s.gw.log().contains("which sent no PROXY protocol header"));
}

#[test]
fn a_header_that_never_finishes_is_closed_at_the_timeout() {
    let s = start("");
    // Half a header, then nothing; and nothing at all.
    assert!(closed_without_answer(s.gw.http, b"PROXY TCP4 203."));
    assert!(closed_without_answer(s.gw.http, b""));
    assert!(metric(
        &s.gw,
        "zkgate_proxy_protocol_rejected_total{listener=\"lb\",reason=\"timeout\"} 2"
    ));
    assert!(metric(
        &s.gw,
        "zkgate_connections_closed_total{listener=\"lb\",reason=\"header_timeout\"} 2"
    ));
    assert_eq!(s.backend.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn the_per_address_connection_cap_counts_the_carried_address() {
    let s = start("    max_connections_per_ip: 1\n    keepalive_timeout: 30s");
    let open = |header: &[u8]| {
        let mut sock = TcpStream::connect(s.gw.http).unwrap();
        sock.write_all(header).unwrap();
        Conn::from_stream(sock).unwrap()
    };
    let a = v1("203.0.113.20:1", "192.0.2.1:443");
    let mut first = open(&a);
    assert_eq!(echoed_client(&first.get("/x").unwrap()), "203.0.113.20");
    // Another client through the same balancer is not held to the first one's cap.
    let mut other = open(&v1("203.0.113.21:1", "192.0.2.1:443"));
    assert_eq!(echoed_client(&other.get("/x").unwrap()), "203.0.113.21");
    // The same client again, while its first connection is open, is.
    assert!(closed_without_answer(
        s.gw.http,
        &[a.clone(), request_to("/x")].concat()
    ));
    assert!(metric(
        &s.gw,
        "zkgate_connections_closed_total{listener=\"lb\",reason=\"max_connections_per_ip\"} 1"
    ));
    assert_eq!(echoed_client(&first.get("/x").unwrap()), "203.0.113.20");
}
