//! End to end: TLS termination on a listener, with certificates made by `openssl` in the
//! test's temp dir and clients that are `curl` (and Python's `ssl` for a connection held open
//! across a reload): SNI choice, wildcard, default certificate, `zkgate check` errors with
//! their YAML paths, a certificate swapped by SIGHUP, min_version, mTLS and its headers, and
//! the handshake metrics.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// Certificates made with the `openssl` CLI in a temp dir of their own.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed CA `{name}.pem` / `{name}.key`.
    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A P-256 key `{stem}.key` and a signing request `{stem}.csr` for `subj`.
    fn key_and_request(&self, stem: &str, subj: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            subj,
            "-keyout",
            &format!("{stem}.key"),
            "-out",
            &format!("{stem}.csr"),
        ]);
    }

    /// `{stem}.pem` / `{stem}.key` signed by CA `ca`, for `subj` with these DNS names (none:
    /// no SAN extension at all, the CN is the name).
    fn leaf(&self, ca: &str, stem: &str, subj: &str, dns: &[&str]) {
        self.key_and_request(stem, subj);
        let mut ext = String::from("basicConstraints=CA:FALSE\n");
        if !dns.is_empty() {
            let sans: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
            ext.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(self.path(&format!("{stem}.ext")), ext).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{stem}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{stem}.ext"),
            "-out",
            &format!("{stem}.pem"),
        ]);
    }

    /// `{stem}.pem` / `{stem}.key` signed by `ca`, valid from `start` to `end`
    /// (`YYYYMMDDHHMMSSZ`).
    fn dated(&self, ca: &str, stem: &str, subj: &str, start: &str, end: &str) {
        self.key_and_request(stem, subj);
        let d = self.dir.path().display();
        std::fs::write(self.path("index.txt"), "").unwrap();
        std::fs::write(self.path("serial"), "1000\n").unwrap();
        std::fs::write(
            self.path("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = d\n[d]\ndatabase = {d}/index.txt\nnew_certs_dir = {d}\nserial = {d}/serial\ndefault_md = sha256\npolicy = p\nx509_extensions = ext\n[p]\ncommonName = supplied\n[ext]\nbasicConstraints = CA:FALSE\n"
            ),
        )
        .unwrap();
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            &format!("{ca}.pem"),
            "-keyfile",
            &format!("{ca}.key"),
            "-in",
            &format!("{stem}.csr"),
            "-out",
            &format!("{stem}.pem"),
            "-startdate",
            start,
            "-enddate",
            end,
            "-notext",
        ]);
    }

    /// The SHA-256 fingerprint of `{stem}.pem`, lowercase hex without colons.
    fn fingerprint(&self, stem: &str) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(self.path(&format!("{stem}.pem")))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_ascii_lowercase()
    }

    /// `cert:`/`key:` of `{stem}`, as a YAML flow mapping.
    fn pair(&self, stem: &str) -> String {
        format!(
            "{{ cert: {}, key: {} }}",
            self.p(&format!("{stem}.pem")),
            self.p(&format!("{stem}.key"))
        )
    }
}

/// `curl` over TLS to `addr` with `host` resolved to it, trusting CA `ca` of `pki`; `extra`
/// are more arguments. Verbose, so that the certificate's subject is in stderr.
fn curl(pki: &Pki, ca: &str, host: &str, addr: SocketAddr, path: &str, extra: &[&str]) -> Output {
    let port = addr.port();
    Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(pki.path(&format!("{ca}.pem")))
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("curl")
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The subject line curl printed for the server certificate.
fn subject(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.trim_start_matches("* ").trim().strip_prefix("subject: "))
        .unwrap_or("")
        .to_owned()
}

fn body(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A metric's value from the text exposition, 0 when absent.
fn metric(gw: &Gateway, series: &str) -> f64 {
    gw.metrics()
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

const PING: &str = r#"
routes:
  - { name: ping, match: { path: /ping }, respond: { status: 200, body: "pong\n" } }
"#;

#[test]
fn sni_chooses_among_names_wildcards_and_a_default_and_handshakes_are_counted() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.leaf("ca", "a", "/CN=a.test", &["a.test"]);
    pki.leaf("ca", "b", "/O=bee/CN=b.test", &["b.test", "www.b.test"]);
    pki.leaf("ca", "w", "/CN=wild", &["*.w.test"]);
    // No SAN: the CN is its name.
    pki.leaf("ca", "cn", "/CN=cn.test", &[]);
    let gw = Gateway::start(&format!(
        "listeners:\n  - name: web\n    listen: {{HTTP}}\n    tls: {{ certificates: [{}, {}, {}, {}] }}\n{PING}",
        pki.pair("a"),
        pki.pair("b"),
        pki.pair("w"),
        pki.pair("cn")
    ));
    for (host, want) in [
        ("a.test", "CN=a.test"),
        ("b.test", "CN=b.test"),
        ("www.b.test", "CN=b.test"),
        ("x.w.test", "CN=wild"),
        ("cn.test", "CN=cn.test"),
    ] {
        let out = curl(&pki, "ca", host, gw.http, "/ping", &[]);
        assert!(
            out.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(body(&out), "pong\n", "{host}");
        assert!(subject(&out).contains(want), "{host}: {}", subject(&out));
    }
    // One label only: a.b.w.test is not covered by *.w.test; it gets the default (a.test),
    // which curl refuses for that name.
    let out = curl(&pki, "ca", "a.b.w.test", gw.http, "/ping", &[]);
    assert!(!out.status.success());
    let out = curl(&pki, "ca", "a.b.w.test", gw.http, "/ping", &["-k"]);
    assert!(subject(&out).contains("CN=a.test"), "{}", subject(&out));
    // No SNI at all (an IP address in the URL): the first certificate.
    let out = Command::new("curl")
        .args(["-sS", "-v", "-k", "--max-time", "10"])
        .arg(format!("https://127.0.0.1:{}/ping", gw.http.port()))
        .output()
        .unwrap();
    assert_eq!(body(&out), "pong\n");
    assert!(subject(&out).contains("CN=a.test"), "{}", subject(&out));
    // HTTP/2 is offered first, HTTP/1.1 still served.
    let out = curl(&pki, "ca", "a.test", gw.http, "/ping", &["--http1.1"]);
    assert_eq!(body(&out), "pong\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("< HTTP/1.1 200"));
    let out = curl(&pki, "ca", "a.test", gw.http, "/ping", &["--http2"]);
    assert_eq!(body(&out), "pong\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("< HTTP/2 200"));

    assert!(
        metric(
            &gw,
            r#"zkgate_tls_handshakes_total{listener="web",result="ok",version="TLSv1.3"}"#
        ) >= 8.0
    );
    assert!(
        metric(
            &gw,
            r#"zkgate_tls_handshakes_total{listener="web",result="failed",version=""}"#
        ) >= 1.0
    );
    assert!(
        metric(
            &gw,
            r#"zkgate_tls_handshake_duration_seconds_count{listener="web"}"#
        ) >= 8.0
    );
    let m = gw.metrics();
    for name in ["a.test", "b.test", "*.w.test", "cn.test"] {
        assert!(
            m.contains(&format!(
                "zkgate_tls_certificate_expiry_timestamp_seconds{{listener=\"web\",name=\"{name}\"}}"
            )),
            "{name}"
        );
    }
}

#[test]
fn check_refuses_bad_certificates_with_their_yaml_paths() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.leaf("ca", "a", "/CN=a.test", &["a.test"]);
    pki.leaf("ca", "a2", "/CN=a2", &["a.test"]);
    pki.leaf("ca", "b", "/CN=b.test", &["b.test"]);
    pki.dated(
        "ca",
        "old",
        "/CN=old.test",
        "20200101000000Z",
        "20200102000000Z",
    );
    pki.dated(
        "ca",
        "new",
        "/CN=new.test",
        "20990101000000Z",
        "20991231000000Z",
    );
    let config = pki.path("zkgate.yaml");
    let mismatched = format!("{{ cert: {}, key: {} }}", pki.p("a.pem"), pki.p("b.key"));
    std::fs::write(
        &config,
        format!(
            "admin: {{ listen: \"127.0.0.1:1\" }}\nlisteners:\n  - name: web\n    listen: \"127.0.0.1:2\"\n    tls:\n      certificates: [{}, {}, {}, {}, {{ cert: /nonexistent/x.pem, key: {} }}, {}]\n      min_version: \"1.1\"\n{PING}",
            pki.pair("a"),
            pki.pair("old"),
            mismatched,
            pki.pair("a2"),
            pki.p("a.key"),
            pki.pair("new"),
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = check_with_stdout(&config);
    let text = format!("{stdout}{stderr}");
    assert_eq!(code, Some(1), "{text}");
    // A bad min_version is a parse error, reported on its own: check that separately.
    assert!(text.contains("min_version"), "{text}");

    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("      min_version: \"1.1\"\n", "");
    std::fs::write(&config, text).unwrap();
    let (code, stdout, stderr) = check_with_stdout(&config);
    let text = format!("{stdout}{stderr}");
    assert_eq!(code, Some(1), "{text}");
    for want in [
        "listeners[0].tls.certificates[1].cert: ",
        "expired on",
        "listeners[0].tls.certificates[2].key: ",
        "does not match the certificate",
        "listeners[0].tls.certificates[3].cert: ",
        "the name a.test is already claimed by certificates[0]",
        "listeners[0].tls.certificates[4].cert: cannot read /nonexistent/x.pem",
        "listeners[0].tls.certificates[5].cert: ",
        "is not valid before",
    ] {
        assert!(text.contains(want), "`{want}` not in:\n{text}");
    }
    // Nothing else is wrong: the first certificate passed.
    assert!(!text.contains("certificates[0]."), "{text}");
}

/// Holds one TLS connection open: a request at start, another after a line on stdin.
const HOLD: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="live.test")
def get():
    s.sendall(b"GET /ping HTTP/1.1\r\nHost: live.test\r\n\r\n")
    buf = b""
    while not buf.endswith(b"pong\n"):
        d = s.recv(4096)
        if not d:
            break
        buf += d
    return buf.split(b"\r\n")[0].decode()
org = dict(x[0] for x in s.getpeercert()["subject"]).get("organizationName")
print("first", get(), org, flush=True)
sys.stdin.readline()
print("second", get(), flush=True)
"#;

#[test]
fn sighup_swaps_a_certificate_for_new_connections_and_open_ones_keep_working() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.leaf("ca", "one", "/O=one/CN=live.test", &["live.test"]);
    pki.leaf("ca", "two", "/O=two/CN=live.test", &["live.test"]);
    std::fs::copy(pki.path("one.pem"), pki.path("live.pem")).unwrap();
    std::fs::copy(pki.path("one.key"), pki.path("live.key")).unwrap();
    let gw = Gateway::start(&format!(
        "listeners:\n  - name: web\n    listen: {{HTTP}}\n    tls: {{ certificates: [{}] }}\n{PING}",
        pki.pair("live")
    ));
    let out = curl(&pki, "ca", "live.test", gw.http, "/ping", &[]);
    assert!(subject(&out).contains("O=one"), "{}", subject(&out));

    let mut held = KillOnDrop(
        Command::new("python3")
            .args(["-c", HOLD, &gw.http.port().to_string()])
            .arg(pki.path("ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(held.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first HTTP/1.1 200 OK one");

    std::fs::copy(pki.path("two.pem"), pki.path("live.pem")).unwrap();
    std::fs::copy(pki.path("two.key"), pki.path("live.key")).unwrap();
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || gw
            .log()
            .contains("config reloaded")),
        "{}",
        gw.log()
    );
    // Certificates alone apply on reload: no restart warning.
    assert!(!gw.log().contains("take effect on restart"), "{}", gw.log());
    let out = curl(&pki, "ca", "live.test", gw.http, "/ping", &[]);
    assert_eq!(body(&out), "pong\n");
    assert!(subject(&out).contains("O=two"), "{}", subject(&out));

    // The connection made before the reload still serves.
    writeln!(held.0.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "second HTTP/1.1 200 OK");

    // Turning TLS off is a listener change: it takes a restart, and says so.
    gw.write_config(&format!(
        "listeners:\n  - name: web\n    listen: {{HTTP}}\n{PING}"
    ));
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || gw
            .log()
            .contains("take effect on restart")),
        "{}",
        gw.log()
    );
    // And until then the listener keeps its TLS.
    let out = curl(&pki, "ca", "live.test", gw.http, "/ping", &[]);
    assert_eq!(body(&out), "pong\n");
}

#[test]
fn min_version_refuses_older_clients_and_a_silent_client_times_out() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.leaf("ca", "a", "/CN=a.test", &["a.test"]);
    let v12: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(&format!(
        "listeners:\n  - name: strict\n    listen: {{HTTP}}\n    client_header_timeout: 1s\n    tls: {{ certificates: [{0}], min_version: 1.3 }}\n  - name: v12\n    listen: \"{v12}\"\n    tls: {{ certificates: [{0}] }}\n{PING}",
        pki.pair("a")
    ));
    gw.wait_listening(v12);
    let out = curl(
        &pki,
        "ca",
        "a.test",
        gw.http,
        "/ping",
        &["--tls-max", "1.2"],
    );
    assert!(!out.status.success(), "{}", body(&out));
    let out = curl(&pki, "ca", "a.test", gw.http, "/ping", &[]);
    assert_eq!(body(&out), "pong\n");
    let out = curl(&pki, "ca", "a.test", v12, "/ping", &["--tls-max", "1.2"]);
    assert_eq!(body(&out), "pong\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLSv1.2"));
    assert!(
        metric(
            &gw,
            r#"zkgate_tls_handshakes_total{listener="strict",result="failed",version=""}"#
        ) >= 1.0
    );
    assert!(
        metric(
            &gw,
            r#"zkgate_tls_handshakes_total{listener="v12",result="ok",version="TLSv1.2"}"#
        ) >= 1.0
    );

    // A client that connects and never starts its handshake is closed at
    // client_header_timeout, counted as a header timeout.
    let mut silent = std::net::TcpStream::connect(gw.http).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut silent, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the gateway closes without a byte");
    assert!(eventually(Duration::from_secs(5), || metric(
        &gw,
        r#"zkgate_tls_handshakes_total{listener="strict",result="timeout",version=""}"#
    ) == 1.0));
    assert_eq!(
        metric(
            &gw,
            r#"zkgate_connections_closed_total{listener="strict",reason="header_timeout"}"#
        ),
        1.0
    );
}

#[test]
fn mtls_required_and_optional_with_headers_that_cannot_be_forged() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.ca("clients");
    pki.ca("rogue");
    pki.leaf("ca", "srv", "/CN=gw.test", &["gw.test"]);
    pki.leaf(
        "clients",
        "client",
        "/O=Acme/CN=client.test",
        &["client.test"],
    );
    pki.leaf("rogue", "intruder", "/CN=client.test", &["client.test"]);
    let backend = Backend::start("b");
    let optional: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let client_auth = |mode: &str| {
        format!(
            "{{ ca: {}, mode: {mode}, headers: {{ subject: X-Client-Subject, sans: X-Client-SANs, fingerprint: X-Client-Fingerprint, cert: X-Client-Cert }} }}",
            pki.p("clients.pem")
        )
    };
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - name: required
    listen: {{HTTP}}
    tls: {{ certificates: [{srv}], client_auth: {req} }}
  - name: optional
    listen: "{optional}"
    tls: {{ certificates: [{srv}], client_auth: {opt} }}
upstreams:
  - {{ name: b, backends: ["{b}"] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: b }}
"#,
        srv = pki.pair("srv"),
        req = client_auth("required"),
        opt = client_auth("optional"),
        b = backend.addr
    ));
    gw.wait_listening(optional);
    let cert = |stem: &str| {
        vec![
            "--cert".to_owned(),
            pki.p(&format!("{stem}.pem")),
            "--key".to_owned(),
            pki.p(&format!("{stem}.key")),
        ]
    };

    // Required: no certificate, or one from another CA, is refused; the upstream sees none.
    let out = curl(&pki, "ca", "gw.test", gw.http, "/none", &[]);
    assert!(!out.status.success(), "{}", body(&out));
    let rogue = cert("intruder");
    let out = curl(&pki, "ca", "gw.test", gw.http, "/rogue", &args(&rogue));
    assert!(!out.status.success(), "{}", body(&out));
    assert!(backend.seen().is_empty());

    // A good certificate reaches the upstream in the configured headers, and a forged header
    // is replaced by what the certificate says.
    let good = cert("client");
    let mut with_forgery = args(&good);
    with_forgery.extend([
        "-H",
        "X-Client-Subject: CN=admin",
        "-H",
        "X-Client-Fingerprint: 00",
    ]);
    let out = curl(&pki, "ca", "gw.test", gw.http, "/good", &with_forgery);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = backend.seen();
    let h = &seen.last().unwrap().headers;
    let subject = h.get("x-client-subject").unwrap();
    assert!(
        subject.contains("CN=client.test") && subject.contains("O=Acme"),
        "{subject}"
    );
    assert!(!subject.contains("admin"));
    assert_eq!(h.get("x-client-sans").unwrap(), "DNS:client.test");
    assert_eq!(
        h.get("x-client-fingerprint").unwrap(),
        &pki.fingerprint("client")
    );
    let pem = std::fs::read_to_string(pki.path("client.pem")).unwrap();
    let escaped = h.get("x-client-cert").unwrap();
    assert!(
        escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{escaped}"
    );
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let unescaped = escaped
        .replace("%0A", "")
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    assert!(unescaped.contains(&b64), "{escaped}");

    // Optional: no certificate passes, and forged headers are removed, not passed on.
    let out = curl(
        &pki,
        "ca",
        "gw.test",
        optional,
        "/anonymous",
        &[
            "-H",
            "X-Client-Subject: CN=admin",
            "-H",
            "X-Client-Cert: forged",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = backend.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.target, "/anonymous");
    for name in [
        "x-client-subject",
        "x-client-sans",
        "x-client-fingerprint",
        "x-client-cert",
    ] {
        assert!(
            !last.headers.contains_key(name),
            "{name}: {:?}",
            last.headers
        );
    }
    // A certificate from another CA is still refused on an optional listener.
    let out = curl(&pki, "ca", "gw.test", optional, "/rogue", &args(&rogue));
    assert!(!out.status.success());
    // And a good one is used.
    let out = curl(&pki, "ca", "gw.test", optional, "/good", &args(&good));
    assert!(out.status.success());
    let seen = backend.seen();
    assert_eq!(
        seen.last()
            .unwrap()
            .headers
            .get("x-client-fingerprint")
            .unwrap(),
        &pki.fingerprint("client")
    );
    assert!(
        metric(
            &gw,
            r#"zkgate_tls_handshakes_total{listener="required",result="failed",version=""}"#
        ) >= 2.0
    );
}

/// What the routing task could not test before TLS existed: the upstream hears `https` from a
/// TLS listener, a redirect with no scheme of its own keeps the request's, and the access log
/// line of a TLS request carries its HTTP version, TLS version, cipher and the SNI it asked for.
#[test]
fn a_tls_request_is_forwarded_as_https_and_logged_with_its_tls_facts() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.leaf("ca", "a", "/CN=a.test", &["a.test"]);
    let backend = Backend::start("echo");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::start(&format!(
        r#"listeners:
  - name: web
    listen: {{HTTP}}
    tls: {{ certificates: [{}] }}
access_log: {{ path: "{}" }}
upstreams: [{{ name: echo, backends: ["{}"] }}]
routes:
  - {{ name: moved, match: {{ path: /old }}, redirect: {{ path: /new, status: 308 }} }}
  - {{ name: all, upstream: echo }}
"#,
        pki.pair("a"),
        log.display(),
        backend.addr
    ));
    let out = curl(
        &pki,
        "ca",
        "a.test",
        gw.http,
        "/x",
        &["--http2", "-H", "X-Forwarded-Proto: http"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = backend.seen();
    let h = &seen.last().expect("the backend saw the request").headers;
    assert_eq!(
        h.get("x-forwarded-proto").map(String::as_str),
        Some("https")
    );
    assert_eq!(h.get("x-forwarded-port"), Some(&gw.http.port().to_string()));

    let out = curl(&pki, "ca", "a.test", gw.http, "/old", &["--http1.1"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    let want = format!("< location: https://a.test:{}/new", gw.http.port());
    assert!(stderr.contains("< http/1.1 308"), "{stderr}");
    assert!(stderr.contains(&want), "{want} not in:\n{stderr}");

    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(5), || lines().lines().count() == 2),
        "{}",
        lines()
    );
    let text = lines();
    let x = text
        .lines()
        .find(|l| l.contains("\"GET /x HTTP/2.0\""))
        .unwrap_or_else(|| panic!("no line for /x:\n{text}"));
    assert!(
        x.contains(" http=HTTP/2 tls=TLSv1.3 cipher=TLS13_") && x.ends_with(" sni=a.test"),
        "{x}"
    );
    let old = text
        .lines()
        .find(|l| l.contains("/old HTTP/1.1\""))
        .unwrap_or_else(|| panic!("no line for /old:\n{text}"));
    assert!(
        old.contains(" 308 ") && old.contains("http=HTTP/1.1 tls=TLSv1.3"),
        "{old}"
    );
}
