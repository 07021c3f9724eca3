//! End to end: an upstream reached over TLS (rustls), with certificate verification on by
//! default. The backend is Python's HTTPS server with a certificate made by `openssl`.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"over tls " + self.path.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

#[test]
fn tls_upstream_is_verified_by_default_and_reachable_when_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_cert(dir.path());
    let port = free_port();
    let _server = KillOnDrop(
        Command::new("python3")
            .args(["-c", SERVER, &port.to_string()])
            .arg(&cert)
            .arg(&key)
            .spawn()
            .expect("python3"),
    );
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));

    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - {{ name: checked, backends: ["127.0.0.1:{port}"], tls: {{ sni: localhost }} }}
  - {{ name: unchecked, backends: ["127.0.0.1:{port}"], tls: {{ sni: localhost, verify: false }} }}
routes:
  - {{ name: checked, match: {{ path_prefix: /checked/ }}, upstream: checked }}
  - {{ name: unchecked, match: {{ path_prefix: /unchecked/ }}, upstream: unchecked }}
"#
    ));
    let r = gw.get("/unchecked/x?y=1");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "over tls /unchecked/x?y=1")
    );
    // A self-signed certificate is not trusted: the handshake fails, nothing is forwarded.
    let r = gw.get("/checked/x");
    assert_eq!(r.status, 502, "{}", r.text());
}

/// A TLS backend named by `argv[4]` whose `/healthz` answers `argv[5]`; any other path answers
/// 200 with its name.
const SERVER_WITH_HEALTH: &str = r#"
import http.server, ssl, sys
name, health = sys.argv[4], int(sys.argv[5])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        status = health if self.path == "/healthz" else 200
        body = name.encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let made = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success(), "openssl {args:?}");
}

/// A test CA (`ca.pem`) and a certificate for `localhost` it signed (`cert.pem`, `key.pem`).
fn ca_and_localhost_cert(dir: &std::path::Path) {
    let rsa = ["-newkey", "rsa:2048", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509", "-days", "2", "-subj", "/CN=zkgate test CA"][..],
            &rsa,
            &["-keyout", "ca.key", "-out", "ca.pem"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign"],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req", "-subj", "/CN=localhost"][..],
            &rsa,
            &["-keyout", "key.pem", "-out", "leaf.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
    );
}

fn tls_backend(dir: &std::path::Path, name: &str, health: u16) -> (u16, KillOnDrop) {
    let port = free_port();
    let server = KillOnDrop(
        Command::new("python3")
            .args(["-c", SERVER_WITH_HEALTH, &port.to_string()])
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .args([name, &health.to_string()])
            .spawn()
            .expect("python3"),
    );
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    (port, server)
}

fn state_of(gw: &Gateway, upstream: &str, addr: &str) -> String {
    let all = get(gw.admin, "/upstreams").json();
    all["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["name"] == upstream)
        .flat_map(|u| u["backends"].as_array().cloned().unwrap_or_default())
        .find(|b| b["addr"] == addr)
        .and_then(|b| b["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Failed checks counted for `upstream` so far.
fn check_failures(gw: &Gateway, upstream: &str) -> u64 {
    let prefix = format!("zkgate_health_check_failures_total{{upstream=\"{upstream}\"}} ");
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn https_health_checks_use_the_upstreams_tls_settings_and_plain_ones_still_work() {
    let dir = tempfile::tempdir().unwrap();
    ca_and_localhost_cert(dir.path());
    let (good, _good) = tls_backend(dir.path(), "good", 200);
    let (busy, _busy) = tls_backend(dir.path(), "busy", 503);
    let plain_ok = Backend::start("plain-ok");
    let plain_busy = Backend::start("plain-busy");
    plain_busy.behave(Behaviour::Status(503));

    // Every backend starts unhealthy and needs one passing check to come in: the TLS one
    // that answers 200 can only pass if the probe speaks HTTPS, verifies the certificate
    // against server.ca_file and sends the upstream's SNI.
    let check = "health_check: { type: http, path: /healthz, interval: 300ms, timeout: 300ms, \
                 rise: 1, fall: 1, start_unhealthy: true }";
    let gw = Gateway::start(&format!(
        r#"
server:
  threads: 2
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  upgrade_sock: {dir}/upgrade.sock
  ca_file: {dir}/ca.pem
upstreams:
  - name: secure
    backends: ["127.0.0.1:{good}", "127.0.0.1:{busy}"]
    tls: {{ sni: localhost }}
    {check}
  - name: misnamed
    backends: ["127.0.0.1:{good}"]
    tls: {{ sni: not-localhost.example }}
    {check}
  - name: plain
    backends: ["{plain_ok}", "{plain_busy}"]
    {check}
routes:
  - {{ name: secure, match: {{ path_prefix: /secure/ }}, upstream: secure }}
  - {{ name: plain, match: {{ path_prefix: /plain/ }}, upstream: plain }}
"#,
        dir = dir.path().display(),
        plain_ok = plain_ok.addr,
        plain_busy = plain_busy.addr,
    ));

    let good_addr = format!("127.0.0.1:{good}");
    let busy_addr = format!("127.0.0.1:{busy}");
    assert!(
        eventually(Duration::from_secs(10), || state_of(
            &gw, "secure", &good_addr
        ) == "active"),
        "the TLS backend answering 200 never passed its check: {}\n{}",
        get(gw.admin, "/upstreams").text(),
        gw.log()
    );
    assert!(
        eventually(Duration::from_secs(10), || check_failures(&gw, "secure")
            > 0),
        "{}",
        gw.metrics()
    );
    assert_eq!(state_of(&gw, "secure", &busy_addr), "unhealthy");
    for _ in 0..20 {
        let r = gw.get("/secure/x");
        assert_eq!((r.status, r.text().as_str()), (200, "good"));
    }

    // The same backend under a name its certificate does not carry fails verification.
    assert!(
        eventually(Duration::from_secs(10), || check_failures(&gw, "misnamed")
            > 0),
        "{}",
        gw.metrics()
    );
    assert_eq!(state_of(&gw, "misnamed", &good_addr), "unhealthy");

    // Plain HTTP checks as before.
    let ok_addr = plain_ok.addr.to_string();
    assert!(
        eventually(Duration::from_secs(10), || state_of(&gw, "plain", &ok_addr)
            == "active"),
        "{}",
        get(gw.admin, "/upstreams").text()
    );
    assert!(eventually(Duration::from_secs(10), || check_failures(
        &gw, "plain"
    ) > 0));
    assert_eq!(
        state_of(&gw, "plain", &plain_busy.addr.to_string()),
        "unhealthy"
    );
    for _ in 0..20 {
        let r = gw.get("/plain/x");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "plain-ok");
    }
}
