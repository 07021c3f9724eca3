//! WebSocket through the gateway, end to end: a real Python `websockets` server as the backend
//! and a real `websockets` client (pinned in tests/requirements.txt), both started by the test on
//! loopback ports. Echo both ways, a large and a fragmented message, close codes both ways, a
//! server pushing to a silent client past `client_body_timeout`, the tunnel idle timeout, a
//! route that refuses upgrades, and two tunnels at once.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The backend: `/echo` echoes every message (and writes the close code and reason it got to
/// `closed.txt`), `/push?n=N&every=MS` sends N messages to a client that says nothing and then
/// closes, `/close` closes at once with 4001, `/silent` waits without a word. Pings are off, so
/// that a quiet tunnel is really quiet.
const SERVER: &str = r#"
import asyncio, sys, urllib.parse
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

port, out = int(sys.argv[1]), sys.argv[2]

async def handler(ws):
    url = urllib.parse.urlsplit(ws.request.path)
    q = dict(urllib.parse.parse_qsl(url.query))
    if url.path == "/echo":
        try:
            async for msg in ws:
                await ws.send(msg)
        except ConnectionClosed:
            pass
        with open(out + "/closed.txt", "w") as f:
            f.write(f"{ws.close_code} {ws.close_reason}")
    elif url.path == "/push":
        for i in range(int(q["n"])):
            await ws.send(f"push {i}")
            await asyncio.sleep(int(q["every"]) / 1000)
        await ws.close(1000, "pushed")
    elif url.path == "/close":
        await ws.close(4001, "server says bye")
    else:
        await ws.wait_closed()

async def main():
    async with serve(handler, "127.0.0.1", port, max_size=None, ping_interval=None):
        print("ready", flush=True)
        await asyncio.Future()

asyncio.run(main())
"#;

/// The client: one scenario per run, named by its first argument, printing what it saw.
const CLIENT: &str = r#"
import asyncio, os, sys, time
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

scenario, base = sys.argv[1], sys.argv[2]

def opened(path):
    return connect(base + path, max_size=None, ping_interval=None, open_timeout=10, close_timeout=5)

async def echo():
    async with opened("/echo") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        big = os.urandom(4 * 1024 * 1024)
        await ws.send(big)
        assert await ws.recv() == big, "4 MiB message changed"
        # One text message in three frames.
        await ws.send(["frag-1 ", "frag-2 ", "frag-3"])
        assert await ws.recv() == "frag-1 frag-2 frag-3"
        await ws.close(4002, "client says bye")
    print("echo ok", flush=True)

async def close():
    async with opened("/close") as ws:
        try:
            await ws.recv()
        except ConnectionClosed as e:
            print(f"closed {e.rcvd.code} {e.rcvd.reason}", flush=True)

async def push():
    n, every = sys.argv[3], sys.argv[4]
    got = 0
    async with opened(f"/push?n={n}&every={every}") as ws:
        try:
            while True:
                await ws.recv()
                got += 1
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
    print(f"got {got} close {code}", flush=True)

async def silent():
    wait = float(sys.argv[3])
    async with opened("/silent") as ws:
        start = time.monotonic()
        try:
            await asyncio.wait_for(ws.recv(), wait)
            print("message", flush=True)
        except asyncio.TimeoutError:
            print("open", flush=True)
        except ConnectionClosed:
            print(f"closed after {time.monotonic() - start:.1f}s", flush=True)

async def refused():
    try:
        async with opened("/echo") as ws:
            print("upgraded", flush=True)
    except InvalidStatus as e:
        print(f"status {e.response.status_code}", flush=True)

async def two():
    async with opened("/echo") as a, opened("/echo") as b:
        for i in range(20):
            await a.send(f"a{i}")
            await b.send(f"b{i}")
            assert await b.recv() == f"b{i}"
            assert await a.recv() == f"a{i}"
        print("two ok", flush=True)

asyncio.run(globals()[scenario]())
"#;

struct WsServer {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _child: KillOnDrop,
}

impl WsServer {
    fn start() -> WsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("server.py"), SERVER).expect("write server");
        std::fs::write(dir.path().join("client.py"), CLIENT).expect("write client");
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(dir.path().join("server.py"))
            .arg(port.to_string())
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python websockets server");
        let stdout = child.stdout.take().expect("server stdout");
        let child = KillOnDrop(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("server output");
        assert_eq!(line.trim(), "ready", "websockets server did not start");
        WsServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            _child: child,
        }
    }

    fn client_script(&self) -> PathBuf {
        self.dir.path().join("client.py")
    }

    /// What the server's `/echo` handler saw the client close with.
    fn closed_with(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("closed.txt")).unwrap_or_default()
    }
}

/// Runs one client scenario against `ws://addr` and returns what it printed (stderr too, so
/// that a failing assertion in the client shows in the test's message).
fn client(script: &Path, addr: SocketAddr, args: &[&str]) -> String {
    client_at(script, &format!("ws://{addr}"), args)
}

/// The same against URLs under `base`.
fn client_at(script: &Path, base: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg("python3")
        .arg(script)
        .arg(args[0])
        .arg(base)
        .args(&args[1..])
        .output()
        .expect("run the Python websockets client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A gateway in front of `server`: route `ws` (everything) with the given `upgrades` section,
/// route `plain` (under /plain/) refusing upgrades, and every per-direction timeout at 1 s so
/// that a tunnel that outlives them shows that none of them applies to it.
fn gateway(server: &WsServer, upgrades: &str) -> Gateway {
    Gateway::start(&format!(
        "listeners:\n  - name: web\n    listen: {{HTTP}}\n    client_body_timeout: 1s\n\
         upstreams:\n  - name: ws\n    backends: [\"{}\"]\n    timeouts: {{ read: 1s }}\n\
         routes:\n\
         \x20 - name: plain\n    match: {{ path_prefix: /plain/ }}\n    rewrite: {{ strip_prefix: /plain }}\n\
         \x20   upstream: ws\n    upgrades: {{ allow: false }}\n\
         \x20 - name: ws\n    upstream: ws\n    timeout: 1s\n    upgrades: {upgrades}\n\
         access_log:\n  path: stdout\n",
        server.addr
    ))
}

fn metric(gw: &Gateway, line_start: &str) -> Option<f64> {
    gw.metrics()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn messages_echo_both_ways_large_and_fragmented_and_close_codes_pass_through() {
    let server = WsServer::start();
    let gw = gateway(&server, "{ idle_timeout: 30s }");
    let out = client(&server.client_script(), gw.http, &["echo"]);
    assert!(out.contains("echo ok"), "{out}\n{}", gw.log());
    // The client's close code and reason reached the server...
    assert!(
        eventually(Duration::from_secs(5), || server.closed_with()
            == "4002 client says bye"),
        "server saw {:?}",
        server.closed_with()
    );
    // ...and the server's reached the client.
    let out = client(&server.client_script(), gw.http, &["close"]);
    assert!(out.contains("closed 4001 server says bye"), "{out}");
    // Both tunnels are closed and counted as such.
    assert!(
        eventually(Duration::from_secs(5), || metric(
            &gw,
            "zkgate_upgraded_connections{route=\"ws\"}"
        ) == Some(0.0)),
        "{}",
        gw.metrics()
    );
    // One access log line per tunnel, written when it closed: status 101.
    let log = gw.log();
    assert!(log.contains("\"GET /echo HTTP/1.1\" 101 "), "{log}");
    assert!(log.contains("\"GET /close HTTP/1.1\" 101 "), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn a_server_pushing_to_a_silent_client_is_not_cut_by_the_request_timeouts() {
    let server = WsServer::start();
    let gw = gateway(&server, "{ idle_timeout: 30s }");
    // 3 messages 1.5 s apart: the client says nothing for 4.5 s, and neither does the server
    // between two messages, past client_body_timeout, the upstream's read timeout and the
    // route's timeout (1 s each), any of which cut such a tunnel before upgrades had their own
    // idle timeout.
    let out = client(&server.client_script(), gw.http, &["push", "3", "1500"]);
    assert_eq!(out.trim(), "got 3 close 1000", "{}", gw.log());
}

#[test]
fn a_tunnel_where_neither_side_talks_is_closed_at_the_idle_timeout() {
    let server = WsServer::start();
    let gw = gateway(&server, "{ idle_timeout: 2s }");
    // Open while traffic flows in one direction only, for longer than the idle timeout.
    let out = client(&server.client_script(), gw.http, &["push", "10", "500"]);
    assert_eq!(out.trim(), "got 10 close 1000", "{}", gw.log());
    let before = metric(&gw, "zkgate_upgraded_idle_closed_total{route=\"ws\"}").unwrap_or(0.0);
    // Silent both ways: closed, well before the client's own 20 s wait.
    let out = client(&server.client_script(), gw.http, &["silent", "20"]);
    assert!(out.starts_with("closed after"), "{out}\n{}", gw.log());
    assert!(
        eventually(Duration::from_secs(5), || metric(
            &gw,
            "zkgate_upgraded_idle_closed_total{route=\"ws\"}"
        ) == Some(before + 1.0)),
        "{}",
        gw.metrics()
    );
    // Silent for less than the idle timeout: still open.
    let out = client(&server.client_script(), gw.http, &["silent", "1"]);
    assert_eq!(out.trim(), "open", "{}", gw.log());
}

#[test]
fn a_route_that_refuses_upgrades_forwards_a_plain_request() {
    let server = WsServer::start();
    let gw = gateway(&server, "{ allow: true }");
    let out = client(&server.client_script(), gw.http, &["refused"]);
    assert_eq!(out.trim(), "upgraded", "{}", gw.log());
    // Under /plain/ the backend gets the GET without Upgrade: websockets answers such a
    // request 426 Upgrade Required, which reaches the client as the backend's answer.
    let base = format!("ws://{}/plain", gw.http);
    let out = client_at(&server.client_script(), &base, &["refused"]);
    assert_eq!(out.trim(), "status 426", "{}", gw.log());
    assert_eq!(
        metric(&gw, "zkgate_upgraded_connections{route=\"plain\"}"),
        Some(0.0)
    );
}

#[test]
fn two_tunnels_at_once() {
    let server = WsServer::start();
    let gw = gateway(&server, "{ idle_timeout: 30s }");
    let out = client(&server.client_script(), gw.http, &["two"]);
    assert!(out.contains("two ok"), "{out}\n{}", gw.log());
}

/// A backend that reads a request head and then, by its path: `/hang` holds the connection for
/// 30 s without a word; `/switch` answers `101 Switching Protocols` whatever was asked, and then
/// holds it as well, reading nothing more.
fn odd_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head);
                if head.starts_with("GET /switch") {
                    let _ = s.write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nraw",
                    );
                }
                std::thread::sleep(Duration::from_secs(30));
            });
        }
    });
    addr
}

#[test]
fn a_handshake_the_backend_never_answers_is_a_504_and_an_unasked_101_a_502() {
    let backend = odd_backend();
    // The route's timeout bounds the wait for the 101 as it bounds any answer, though the
    // tunnel itself could stay silent for 30 s.
    let gw = Gateway::start(&format!(
        "upstreams:\n  - name: odd\n    backends: [\"{backend}\"]\n\
         routes:\n  - name: odd\n    upstream: odd\n    timeout: 1s\n    retry: {{ attempts: 1 }}\n\
         \x20   upgrades: {{ idle_timeout: 30s }}\n"
    ));
    let handshake = b"GET /hang HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                      sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";
    let r = raw(gw.http, handshake).expect("answer").expect("an answer");
    assert_eq!(r.status, 504, "{}", r.text());
    // Logged as the backend's failure, like any backend that does not answer in time.
    assert!(
        eventually(Duration::from_secs(5), || gw
            .log()
            .contains("did not answer the upgrade in time")),
        "{}",
        gw.log()
    );
    // A plain GET answered with 101: the client must not get bytes of a protocol it did not
    // ask for.
    let r = raw(gw.http, b"GET /switch HTTP/1.1\r\nhost: a\r\n\r\n")
        .expect("answer")
        .expect("an answer");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("switched protocols"), "{}", r.text());
}

#[test]
fn a_tunnel_stalled_on_a_backend_that_stopped_reading_is_dropped_after_its_idle_timeout() {
    let backend = odd_backend();
    let gw = Gateway::start(&format!(
        "upstreams:\n  - name: odd\n    backends: [\"{backend}\"]\n\
         routes:\n  - name: odd\n    upstream: odd\n    upgrades: {{ idle_timeout: 2s }}\n"
    ));
    let mut s = std::net::TcpStream::connect(gw.http).expect("connect");
    s.write_all(
        b"GET /switch HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .expect("handshake");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("101"), 1, "closed before the 101");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // The client sends until every buffer between it and the backend, which reads nothing, is
    // full: the gateway then waits on the backend and reads no more from the client, so only
    // the connection loop's backstop can end the silent tunnel (2 s + 5 s), well before the
    // backend lets go (30 s) or the upstream's write timeout (60 s).
    let mut writer = s.try_clone().expect("clone");
    std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        while writer.write_all(&chunk).is_ok() {}
    });
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let mut rest = Vec::new();
    let closed = match s.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the tunnel was not closed");
    assert!(
        eventually(Duration::from_secs(5), || gw
            .log()
            .contains("dropped the upgraded connection")),
        "{}",
        gw.log()
    );
    assert!(
        eventually(Duration::from_secs(5), || metric(
            &gw,
            "zkgate_upgraded_idle_closed_total{route=\"odd\"}"
        ) == Some(1.0)
            && metric(&gw, "zkgate_upgraded_connections{route=\"odd\"}")
                == Some(0.0)),
        "{}",
        gw.metrics()
    );
}
