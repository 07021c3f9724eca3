//! End to end: idle upstream HTTP/1 connections are reused, and closed when the backend closes
//! them, when `timeouts.idle` passes, or when a thread's idle list is full (the per-thread pool
//! of pingora-core patch 3, vendor/README.md).
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// What [`RawBackend`] does after it answered a request.
#[derive(Clone, Copy)]
enum After {
    /// Waits for the next request on the connection.
    KeepAlive,
    /// Sends its FIN soon after (the connection was answered as keep-alive) and waits for the
    /// gateway's.
    Fin,
}

/// A keep-alive HTTP/1.1 backend that counts the connections it accepted and those the gateway
/// closed (a read of 0 bytes while waiting for a request).
struct RawBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed_by_gateway: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl RawBackend {
    fn start(after: After, delay: Duration) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = RawBackend {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            closed_by_gateway: Arc::default(),
            requests: Arc::default(),
        };
        let (accepted, closed, requests) = (
            b.accepted.clone(),
            b.closed_by_gateway.clone(),
            b.requests.clone(),
        );
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (closed, requests) = (closed.clone(), requests.clone());
                thread::spawn(move || serve(s, after, delay, &closed, &requests));
            }
        });
        b
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed_by_gateway(&self) -> usize {
        self.closed_by_gateway.load(Ordering::SeqCst)
    }
}

fn serve(
    s: TcpStream,
    after: After,
    delay: Duration,
    closed: &AtomicUsize,
    requests: &AtomicUsize,
) {
    // bounds a test that goes wrong; no assertion depends on it
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        // the request head, up to its empty line; GETs only, so no body
        let mut got_any = false;
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) if !got_any => {
                    closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(0) | Err(_) => return,
                Ok(_) => got_any = true,
            }
            if line == "\r\n" {
                break;
            }
        }
        requests.fetch_add(1, Ordering::SeqCst);
        thread::sleep(delay);
        if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
        if let After::Fin = after {
            // later than the gateway's release of the connection, most likely: the FIN then
            // reaches a connection that waits in the idle list
            thread::sleep(Duration::from_millis(300));
            let _ = w.shutdown(Shutdown::Write);
            let mut rest = Vec::new();
            if r.read_to_end(&mut rest).is_ok() && rest.is_empty() {
                closed.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
    }
}

/// The gateway, and the directory of its upgrade socket (kept while it runs).
fn gateway(
    backend: SocketAddr,
    threads: usize,
    server_extra: &str,
    idle: &str,
) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let gw = Gateway::start(&format!(
        r#"
server:
  threads: {threads}
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  upgrade_sock: {sock}
  {server_extra}
upstreams:
  - name: b
    backends: ["{backend}"]
    timeouts: {{ idle: {idle} }}
routes:
  - {{ name: all, upstream: b }}
"#,
        sock = sock.display()
    ));
    (gw, dir)
}

fn ok(gw: &Gateway) {
    let r = request(gw.http, "GET", "/", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    assert_eq!(r.text(), "ok");
}

#[test]
fn sequential_requests_reuse_one_upstream_connection_per_thread() {
    let b = RawBackend::start(After::KeepAlive, Duration::ZERO);
    let (gw, _dir) = gateway(b.addr, 1, "", "60s");
    for _ in 0..20 {
        ok(&gw);
    }
    assert_eq!(
        b.accepted(),
        1,
        "one thread keeps reusing its one connection"
    );
    assert_eq!(b.closed_by_gateway(), 0);

    // Two threads: each reuses what it released, so at most one connection each.
    let b = RawBackend::start(After::KeepAlive, Duration::ZERO);
    let (gw, _dir) = gateway(b.addr, 2, "", "60s");
    for _ in 0..40 {
        ok(&gw);
    }
    assert!(
        (1..=2).contains(&b.accepted()),
        "{} connections",
        b.accepted()
    );
}

#[test]
fn a_connection_the_backend_closes_while_idle_is_closed_and_never_reused() {
    let b = RawBackend::start(After::Fin, Duration::ZERO);
    let (gw, _dir) = gateway(b.addr, 1, "", "60s");
    ok(&gw);
    // The idle timeout is a minute: only noticing the backend's FIN closes it this soon.
    assert!(
        eventually(Duration::from_secs(10), || b.closed_by_gateway() == 1),
        "the gateway kept a connection the backend closed:\n{}",
        gw.log()
    );
    // Every request gets a live connection (none is sent on a closed one).
    for i in 2..=5 {
        ok(&gw);
        assert_eq!(b.accepted(), i);
        assert_eq!(b.requests.load(Ordering::SeqCst), i);
    }
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let b = RawBackend::start(After::KeepAlive, Duration::ZERO);
    let (gw, _dir) = gateway(b.addr, 1, "", "1s");
    ok(&gw);
    assert!(
        eventually(Duration::from_secs(10), || b.closed_by_gateway() == 1),
        "an idle connection outlived timeouts.idle:\n{}",
        gw.log()
    );
    ok(&gw);
    assert_eq!(b.accepted(), 2, "the closed connection was not reused");
}

#[test]
fn idle_zero_reuses_nothing() {
    let b = RawBackend::start(After::KeepAlive, Duration::ZERO);
    let (gw, _dir) = gateway(b.addr, 1, "", "0s");
    for i in 1..=3 {
        ok(&gw);
        assert_eq!(b.accepted(), i);
    }
    assert!(eventually(Duration::from_secs(10), || b
        .closed_by_gateway()
        == 3));
}

#[test]
fn a_full_idle_list_closes_its_oldest_connection() {
    // Two requests at once need two connections; a list of one keeps only one of them.
    let b = RawBackend::start(After::KeepAlive, Duration::from_millis(300));
    let (gw, _dir) = gateway(b.addr, 1, "upstream_keepalive_pool_size: 1", "60s");
    let http = gw.http;
    let both: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || request(http, "GET", "/", &[], b"").unwrap().status))
        .collect();
    for t in both {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(b.accepted(), 2);
    assert!(
        eventually(Duration::from_secs(10), || b.closed_by_gateway() == 1),
        "a list of one kept two connections:\n{}",
        gw.log()
    );
    ok(&gw);
    assert_eq!(b.accepted(), 2, "the connection kept was reused");
}
