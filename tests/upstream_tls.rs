//! End to end: an upstream reached over TLS (rustls), with certificate verification on by
//! default. The backend is Python's HTTPS server with a certificate made by `openssl`.

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
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success());
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
