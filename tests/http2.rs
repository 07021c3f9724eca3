//! HTTP/2 through the real gateway: h2c with prior knowledge beside HTTP/1.1 on one listener
//! (curl), the HTTP/1 deadlines still acting there, h2load under load, the gateway's own
//! answers (400, 413, 431, 429) over HTTP/2, and gRPC end to end (a real grpcio server behind
//! an `h2c` upstream, called by a real grpcio client through the gateway).
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{localhost_cert, Backend, Gateway, KillOnDrop};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A listener taking h2c, with short head and keep-alive deadlines, a proxied route, a respond
/// route, and routes with each of the gateway's own refusals.
fn gateway(backend: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        r#"
listeners:
  - name: web
    listen: "{{HTTP}}"
    client_header_timeout: 2s
    keepalive_timeout: 5s
    max_request_headers: 20
    http2: {{ h2c: true }}
upstreams:
  - {{ name: app, backends: ["{backend}"] }}
routes:
  - {{ name: ping, match: {{ path: /ping }}, respond: {{ status: 200, body: "pong\n" }} }}
  - {{ name: small, match: {{ path_prefix: /small }}, upstream: app, max_request_body: 1KiB }}
  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: app, rate_limit: {{ per_second: 0.01, burst: 2, key: route }} }}
  - {{ name: app, upstream: app }}
"#
    ))
}

/// The status nghttp (nghttp2's own client) reads for a POST of `body` to `url`, over h2c or
/// TLS. An answer the gateway gives before it has read the body ends, as RFC 9113 §8.1 asks,
/// with RST_STREAM(NO_ERROR) after the response; curl 7.88 (Debian 12) reports that as a failed
/// transfer when the reset arrives while it still uploads, so it cannot check these answers
/// reliably. nghttp reads them as sent. `declared`: whether the request states its length; without
/// one, the gateway counts the body as it streams.
fn nghttp_post_status(url: &str, body: &[u8], declared: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("nghttp")
        .args(["-v", "-t", "10", "-d"])
        .arg(&file)
        .args((!declared).then_some("--no-content-length"))
        .arg(url)
        .output()
        .expect("nghttp (Debian nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split_once(" :status: ").map(|(_, s)| s.trim().to_owned()))
        .unwrap_or_else(|| panic!("no status from nghttp:\n{text}"))
}

/// curl's status line for one request: `"<http_version> <status>"`, and the body.
fn curl(args: &[&str], url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

fn url(gw: &Gateway, path: &str) -> String {
    format!("http://{}{path}", gw.http)
}

/// The value of the counter line `name{labels}` in the gateway's metrics (0 when absent).
fn counter(gw: &Gateway, line: &str) -> u64 {
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0)
}

fn dispatched(gw: &Gateway, version: &str) -> u64 {
    counter(
        gw,
        &format!("zkgate_downstream_connections_total{{listener=\"web\",version=\"{version}\"}}"),
    )
}

/// Sends `bytes` and waits (at most 15 s) for the gateway to close the connection; returns
/// what it answered and how long it took.
fn stall(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (got, start.elapsed())
}

#[test]
fn h2c_and_http1_share_a_listener_and_http1_keeps_its_deadlines() {
    let b = Backend::start("b");
    let gw = gateway(b.addr);

    let (status, body) = curl(&["--http2-prior-knowledge"], &url(&gw, "/ping"));
    assert_eq!((status.as_str(), body.as_str()), ("2 200", "pong\n"));
    let (status, body) = curl(&["--http2-prior-knowledge"], &url(&gw, "/echo?x=1"));
    assert_eq!(status, "2 200", "{body}");
    assert!(body.contains("/echo?x=1"), "{body}");
    let (status, body) = curl(&["--http1.1"], &url(&gw, "/ping"));
    assert_eq!((status.as_str(), body.as_str()), ("1.1 200", "pong\n"));
    // A request head shorter than the preface is HTTP/1 as soon as it differs from it.
    let (got, _) = stall(gw.http, b"GET /ping HTTP/1.0\r\n\r\n");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));

    assert!(common::eventually(Duration::from_secs(5), || {
        dispatched(&gw, "h2c") >= 2 && dispatched(&gw, "http/1.1") >= 2
    }));
    assert_eq!(dispatched(&gw, "h2"), 0);

    let timeouts = "zkgate_connections_closed_total{listener=\"web\",reason=\"header_timeout\"}";
    let before = counter(&gw, timeouts);
    // Half a request head: the HTTP/1 loop's deadline closes it.
    let (got, took) = stall(gw.http, b"GET /ping HTTP/1.1\r\nHo");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(took < Duration::from_secs(15), "never closed");
    // Half a preface: the same deadline, before anything is HTTP/2.
    let (got, took) = stall(gw.http, &PREFACE[..16]);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(took < Duration::from_secs(15), "never closed");
    assert!(common::eventually(Duration::from_secs(5), || counter(
        &gw, timeouts
    ) >= before
        + 2));
}

#[test]
fn a_listener_without_h2c_answers_a_preface_as_http1() {
    let gw = Gateway::start(
        "routes:\n  - { name: ping, match: { path: /ping }, respond: { status: 200, body: \"pong\\n\" } }\n",
    );
    let (status, _) = curl(&["--http1.1"], &url(&gw, "/ping"));
    assert_eq!(status, "1.1 200");
    // `PRI * HTTP/2.0` is no HTTP/1 request: refused, not served as HTTP/2.
    let (got, _) = stall(gw.http, PREFACE);
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(dispatched(&gw, "h2c"), 0);
}

#[test]
fn the_gateways_own_answers_work_over_http2() {
    let b = Backend::start("b");
    let gw = gateway(b.addr);
    let h2 = "--http2-prior-knowledge";

    // 413: a declared length over the limit, and a body of unknown length that passes it.
    let big = "x".repeat(4096);
    assert_eq!(
        nghttp_post_status(&url(&gw, "/small"), big.as_bytes(), true),
        "413"
    );
    assert_eq!(
        nghttp_post_status(&url(&gw, "/small/stream"), big.as_bytes(), false),
        "413"
    );
    let (status, _) = curl(&[h2, "--data-binary", "small"], &url(&gw, "/small"));
    assert_eq!(status, "2 200");

    // 431: more fields than max_request_headers (20).
    let headers: Vec<String> = (0..30).map(|i| format!("x-h{i}: v")).collect();
    let mut args = vec![h2];
    for h in &headers {
        args.extend(["-H", h.as_str()]);
    }
    let (status, body) = curl(&args, &url(&gw, "/echo"));
    assert_eq!(status, "2 431", "{body}");
    // 429: a burst of two, then the bucket is empty.
    for _ in 0..2 {
        let (status, _) = curl(&[h2], &url(&gw, "/limited"));
        assert_eq!(status, "2 200");
    }
    let (status, body) = curl(&[h2], &url(&gw, "/limited"));
    assert_eq!(status, "2 429", "{body}");

    // 400: an encoded slash in the path, which the path policy refuses.
    let (status, body) = curl(&[h2], &url(&gw, "/a%2Fb"));
    assert_eq!(status, "2 400", "{body}");

    // The connection-level refusals left the listener serving.
    let (status, _) = curl(&[h2], &url(&gw, "/ping"));
    assert_eq!(status, "2 200");
}

#[test]
fn the_http2_limits_of_a_listener_apply() {
    let gw = Gateway::start(
        r#"
listeners:
  - name: web
    listen: "{HTTP}"
    max_request_headers: 256
    http2: { h2c: true, max_header_list_size: 16KiB, idle_timeout: 1s }
routes:
  - { name: ping, respond: { status: 200, body: "pong\n" } }
"#,
    );
    let with_headers = |n: usize| {
        let headers: Vec<String> = (0..n)
            .map(|i| format!("x-h{i:03}: {}", "y".repeat(200)))
            .collect();
        let mut args = vec!["--http2-prior-knowledge"];
        for h in &headers {
            args.extend(["-H", h.as_str()]);
        }
        curl(&args, &url(&gw, "/")).0
    };
    // About 12 KiB decoded (each field counts its name, value and 32 bytes): within it.
    assert_eq!(with_headers(50), "2 200");
    // About 24 KiB: the HTTP/2 layer answers 431 itself, below the listener's own limits
    // (256 fields, 64 KiB), which would have let it through.
    assert_eq!(with_headers(100), "2 431");

    // A connection that opens no stream is closed after idle_timeout: the preface and an empty
    // SETTINGS frame, then nothing (the listener's keepalive_timeout is the default 75 s).
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let (got, took) = stall(gw.http, &hello);
    // The server's own SETTINGS came, then the end, well before the 15 s the client waits.
    assert!(got.len() >= 9 && got[3] == 4, "{got:?}");
    assert!(took < Duration::from_secs(15), "never closed");
}

/// h2load's line `requests: N total, N started, N done, N succeeded, N failed, N errored, N
/// timeout` as numbers, and its `status codes:` line.
fn h2load(args: &[&str]) -> (Vec<u64>, String) {
    let out = Command::new("h2load")
        .args(args)
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let requests = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .unwrap_or_else(|| panic!("no requests line in:\n{text}"));
    let counts = requests
        .split(", ")
        .map(|part| part.split(' ').next().unwrap().parse().unwrap())
        .collect();
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_default()
        .to_owned();
    (counts, codes)
}

#[test]
fn h2load_through_h2c_fails_nothing() {
    let b = Backend::start("b");
    let gw = gateway(b.addr);
    for (n, path) in [("20000", "/ping"), ("4000", "/load")] {
        let (counts, codes) = h2load(&["-n", n, "-c", "10", "-m", "10", &url(&gw, path)]);
        // total, started, done, succeeded, failed, errored, timeout
        let n: u64 = n.parse().unwrap();
        assert_eq!(counts, [n, n, n, n, 0, 0, 0], "{path}: {codes}");
        assert!(codes.contains(&format!("{n} 2xx")), "{path}: {codes}");
    }
    assert!(dispatched(&gw, "h2c") >= 20);
}

#[test]
fn an_h2c_upstream_is_proxied_and_health_checked_over_http2() {
    // The backend is another gateway, whose metrics say which protocol its clients spoke.
    let back = Gateway::start(
        r#"
listeners:
  - { name: web, listen: "{HTTP}", http2: { h2c: true } }
routes:
  - { name: health, match: { path: /healthz }, respond: { status: 200, body: "ok\n" } }
  - { name: hello, respond: { status: 200, body: "hello over h2c\n" } }
"#,
    );
    let front = Gateway::start(&format!(
        r#"
upstreams:
  - name: h2c
    backends: ["{}"]
    protocol: h2c
    health_check: {{ type: http, path: /healthz, interval: 100ms, timeout: 90ms, rise: 1, start_unhealthy: true }}
routes:
  - {{ name: all, upstream: h2c }}
"#,
        back.http
    ));
    // Only a passing probe lets traffic through.
    assert!(
        common::eventually(Duration::from_secs(10), || front.get("/x").status == 200),
        "{}",
        front.log()
    );
    let (status, body) = curl(&["--http1.1"], &url(&front, "/x"));
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("1.1 200", "hello over h2c\n")
    );
    assert!(dispatched(&back, "h2c") >= 1);
    assert_eq!(dispatched(&back, "http/1.1"), 0, "{}", back.metrics());
}

/// A gRPC service of raw bytes (no protoc), over TLS when given a certificate and key: `Unary` echoes, or fails NOT_FOUND for `missing`,
/// `Bidi` answers each message with it reversed as it arrives; both set trailing metadata.
const GRPC_SERVER: &str = r#"
import sys, grpc
from concurrent import futures

def unary(req, ctx):
    if req == b"missing":
        ctx.set_trailing_metadata((("x-why", "looked-everywhere"),))
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    ctx.set_trailing_metadata((("x-trailer", "unary-done"),))
    return b"echo:" + req

def bidi(requests, ctx):
    n = 0
    for m in requests:
        n += 1
        yield m[::-1]
    ctx.set_trailing_metadata((("x-count", str(n)),))

handler = grpc.method_handlers_generic_handler("test.Echo", {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
if len(sys.argv) > 2:
    with open(sys.argv[1], "rb") as c, open(sys.argv[2], "rb") as k:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    port = server.add_secure_port("127.0.0.1:0", creds)
else:
    port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
"#;

/// Calls the service at argv[1] and prints one line per observation, for the test to check.
/// The bidirectional call sends its next message only after the answer to the previous one
/// came back: both directions stream through the gateway, nothing waits for the end.
const GRPC_CLIENT: &str = r#"
import sys, queue, grpc
ch = grpc.insecure_channel(sys.argv[1])
unary = ch.unary_unary("/test.Echo/Unary")
resp, call = unary.with_call(b"hello", timeout=10)
print("unary", resp.decode(), call.code().name, dict(call.trailing_metadata()).get("x-trailer"))
try:
    unary(b"missing", timeout=10)
    print("missing answered")
except grpc.RpcError as e:
    print("missing", e.code().name, e.details(), dict(e.trailing_metadata()).get("x-why"))
sent = queue.Queue()
def messages():
    for m in [b"abc", b"hello world", b"x" * 100000 + b"y"]:
        sent.put(m)
        yield m
        sent.join()
bidi = ch.stream_stream("/test.Echo/Bidi")
call = bidi(messages(), timeout=10)
ok = True
for got in call:
    m = sent.get()
    ok = ok and got == m[::-1]
    sent.task_done()
print("bidi", ok, call.code().name, dict(call.trailing_metadata()).get("x-count"))
"#;

#[test]
fn grpc_unary_and_bidi_streaming_calls_pass_with_their_trailers() {
    grpc_through_the_gateway("protocol: h2c", &[]);
}

#[test]
fn grpc_reaches_an_h2_upstream_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_cert(dir.path());
    grpc_through_the_gateway(
        "protocol: h2, tls: { sni: localhost, verify: false }",
        &[&cert, &key],
    );
}

/// [`GRPC_SERVER`] written at `server_py`, started with `args`, and the port it printed.
fn grpc_server(server_py: &std::path::Path, args: &[&str]) -> (KillOnDrop, u16) {
    let mut server = KillOnDrop(
        Command::new("python3")
            .arg(server_py)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with grpcio (make deps-test)"),
    );
    let mut port = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    (server, port.trim().parse().expect("the gRPC server's port"))
}

/// The gRPC calls of [`GRPC_CLIENT`] through an h2c listener to the upstream `grpc` with
/// `upstream` keys, served by [`GRPC_SERVER`] started with `server_args`.
fn grpc_through_the_gateway(upstream: &str, server_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let server_py = dir.path().join("server.py");
    let client_py = dir.path().join("client.py");
    std::fs::write(&server_py, GRPC_SERVER).unwrap();
    std::fs::write(&client_py, GRPC_CLIENT).unwrap();
    let (_server, port) = grpc_server(&server_py, server_args);

    let gw = Gateway::start(&format!(
        r#"
listeners:
  - {{ name: web, listen: "{{HTTP}}", http2: {{ h2c: true }} }}
upstreams:
  - {{ name: grpc, backends: ["127.0.0.1:{port}"], {upstream} }}
routes:
  - {{ name: grpc, match: {{ path_prefix: /test.Echo/ }}, upstream: grpc }}
"#
    ));
    let out = Command::new("python3")
        .arg(&client_py)
        .arg(gw.http.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "unary echo:hello OK unary-done",
            "missing NOT_FOUND no such thing looked-everywhere",
            "bidi True OK 3",
        ],
        "{}",
        gw.log()
    );
    assert!(dispatched(&gw, "h2c") >= 1);
}

#[test]
fn h2_by_alpn_on_a_tls_listener_beside_http1() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_cert(dir.path());
    let b = Backend::start("b");
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - name: web
    listen: "{{HTTP}}"
    client_header_timeout: 2s
    tls: {{ certificates: [{{ cert: "{cert}", key: "{key}" }}] }}
upstreams:
  - {{ name: app, backends: ["{}"] }}
routes:
  - {{ name: ping, match: {{ path: /ping }}, respond: {{ status: 200, body: "pong\n" }} }}
  - {{ name: small, match: {{ path_prefix: /small }}, upstream: app, max_request_body: 1KiB }}
  - {{ name: app, upstream: app }}
"#,
        b.addr
    ));
    let https = format!("https://localhost:{}", gw.http.port());
    let resolve = format!("localhost:{}:127.0.0.1", gw.http.port());
    let tls = ["--resolve", resolve.as_str(), "--cacert", cert.as_str()];
    let with = |more: &[&str], path: &str| {
        let mut args = tls.to_vec();
        args.extend_from_slice(more);
        curl(&args, &format!("{https}{path}"))
    };
    assert_eq!(
        with(&["--http2"], "/ping"),
        ("2 200".into(), "pong\n".into())
    );
    assert_eq!(
        with(&["--http1.1"], "/ping"),
        ("1.1 200".into(), "pong\n".into())
    );
    let (status, body) = with(&["--http2"], "/echo");
    assert_eq!(status, "2 200", "{body}");
    let big = "x".repeat(4096);
    assert_eq!(
        nghttp_post_status(&format!("{https}/small"), big.as_bytes(), true),
        "413"
    );
    assert!(common::eventually(Duration::from_secs(5), || {
        dispatched(&gw, "h2") >= 3 && dispatched(&gw, "http/1.1") >= 1
    }));
    assert_eq!(dispatched(&gw, "h2c"), 0);

    let (counts, codes) = h2load(&[
        "-n",
        "4000",
        "-c",
        "10",
        "-m",
        "10",
        &format!("{https}/ping"),
    ]);
    assert_eq!(counts, [4000, 4000, 4000, 4000, 0, 0, 0], "{codes}");
}

/// `GRPC_CLIENT` over TLS: the same calls on a secure channel trusting `argv[2]`.
const GRPC_TLS_CLIENT: &str = r#"
import sys, grpc
with open(sys.argv[2], "rb") as f:
    creds = grpc.ssl_channel_credentials(root_certificates=f.read())
grpc.insecure_channel = lambda target: grpc.secure_channel(
    target, creds, options=(("grpc.ssl_target_name_override", "localhost"),))
sys.argv = sys.argv[:2]
exec(open(sys.argv[0].replace("tls_client.py", "client.py")).read())
"#;

#[test]
fn grpc_over_tls_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_cert(dir.path());
    let server_py = dir.path().join("server.py");
    std::fs::write(&server_py, GRPC_SERVER).unwrap();
    std::fs::write(dir.path().join("client.py"), GRPC_CLIENT).unwrap();
    let tls_client = dir.path().join("tls_client.py");
    std::fs::write(&tls_client, GRPC_TLS_CLIENT).unwrap();
    let (_server, port) = grpc_server(&server_py, &[&cert, &key]);
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - {{ name: web, listen: "{{HTTP}}", tls: {{ certificates: [{{ cert: "{cert}", key: "{key}" }}] }} }}
upstreams:
  - {{ name: grpc, backends: ["127.0.0.1:{port}"], protocol: h2, tls: {{ sni: localhost, verify: false }} }}
routes:
  - {{ name: grpc, match: {{ path_prefix: /test.Echo/ }}, upstream: grpc }}
"#
    ));
    let out = Command::new("python3")
        .arg(&tls_client)
        .arg(gw.http.to_string())
        .arg(&cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "unary echo:hello OK unary-done",
            "missing NOT_FOUND no such thing looked-everywhere",
            "bidi True OK 3",
        ]
    );
    assert!(dispatched(&gw, "h2") >= 1);
}
