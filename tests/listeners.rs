//! End to end: routes per listener, the redirect action (one config for `:80` and `:443`),
//! `X-Forwarded-Proto`/`-Port` and `Forwarded` as the backend sees them, and the access log's
//! HTTP and TLS fields. Requests are made with curl, as a user would.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;

/// What curl got: the status and the headers (names in lower case) of the last answer.
struct Curled {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `curl -i` with `args` (URL included), bounded in time.
fn curl(args: &[&str]) -> Curled {
    let out = Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Curled {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn url(addr: SocketAddr, target: &str) -> String {
    format!("http://{addr}{target}")
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_route_limited_to_one_listener_is_not_found_on_the_other() {
    let other = local(free_port());
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - {{ name: web, listen: "{{HTTP}}" }}
  - {{ name: internal, listen: "{other}" }}
routes:
  - {{ name: web-only, listeners: [web], match: {{ path: /only }}, respond: {{ body: "web\n" }} }}
  - {{ name: internal-only, listeners: [internal], match: {{ path_prefix: /admin }}, respond: {{ body: "internal\n" }} }}
  - {{ name: both, match: {{ path: /both }}, respond: {{ body: "both\n" }} }}
"#
    ));
    gw.wait_listening(other);
    let web = gw.http;
    assert_eq!(curl(&[&url(web, "/only")]).body, "web\n");
    assert_eq!(curl(&[&url(other, "/only")]).status, 404);
    assert_eq!(curl(&[&url(other, "/admin/x")]).body, "internal\n");
    assert_eq!(curl(&[&url(web, "/admin/x")]).status, 404);
    assert_eq!(curl(&[&url(web, "/both")]).body, "both\n");
    assert_eq!(curl(&[&url(other, "/both")]).body, "both\n");

    let routes = get(gw.admin, "/routes").json();
    let listeners = |name: &str| {
        routes["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["listeners"].clone())
            .unwrap_or_else(|| panic!("no route {name} in {routes}"))
    };
    assert_eq!(listeners("web-only"), serde_json::json!(["web"]));
    assert_eq!(listeners("internal-only"), serde_json::json!(["internal"]));
    assert_eq!(listeners("both"), serde_json::Value::Null);

    // `explain` asks on the first listener unless told which.
    let explain = |extra: &[&str]| {
        let out = Command::new(bin())
            .args(["explain", "-c"])
            .arg(&gw.config)
            .args(extra)
            .args(["GET", "http://x/only"])
            .output()
            .expect("explain");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        explain(&[]).contains("route:     web-only"),
        "{}",
        explain(&[])
    );
    let internal = explain(&["--listener", "internal"]);
    assert!(internal.contains("no route matches"), "{internal}");
}

#[test]
fn an_unknown_listener_name_fails_check_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zkgate.yaml");
    std::fs::write(
        &path,
        r#"
listeners: [{ name: web, listen: "127.0.0.1:1" }]
routes:
  - { name: a, respond: { body: x } }
  - { name: b, listeners: [web, tls], respond: { body: x } }
"#,
    )
    .unwrap();
    let (code, err) = check(&path);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("routes[1].listeners[1]: no listener named `tls`"),
        "{err}"
    );
}

#[test]
fn redirects_keep_path_and_query_and_override_what_is_configured() {
    let tls_side = local(free_port());
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - {{ name: plain, listen: "{{HTTP}}" }}
  - {{ name: secure, listen: "{tls_side}" }}
routes:
  - name: to-https-post
    listeners: [plain]
    match: {{ path_prefix: /, methods: [POST] }}
    redirect: {{ scheme: https, status: 308 }}
  - name: moved-host
    listeners: [plain]
    match: {{ host: old.example.com }}
    redirect: {{ scheme: https, host: new.example.com, port: 8443, query: drop }}
    response_headers: {{ set: {{ x-why: moved }}, public: [x-why] }}
  - name: fixed
    listeners: [plain]
    match: {{ path: /old }}
    redirect: {{ path: /new }}
  - name: to-https
    listeners: [plain]
    redirect: {{ scheme: https }}
  - name: app
    listeners: [secure]
    respond: {{ body: "app\n" }}
"#
    ));
    gw.wait_listening(tls_side);
    let plain = gw.http;
    let r = curl(&[
        "-H",
        "Host: shop.example.com:80",
        &url(plain, "/a%20b/%C3%A9?x=%2F&y=1&z"),
    ]);
    assert_eq!(r.status, 301, "{}", r.body);
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("https://shop.example.com/a%20b/%C3%A9?x=%2F&y=1&z")
    );
    assert_eq!(
        r.headers.get("content-length").map(String::as_str),
        Some("0")
    );

    // The normalized path: dot segments resolved, as the routes saw it.
    let r = curl(&[
        "--path-as-is",
        "-H",
        "Host: h.example",
        &url(plain, "/a/../b"),
    ]);
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("https://h.example/b")
    );

    let r = curl(&[
        "-X",
        "POST",
        "-d",
        "k=v",
        "-H",
        "Host: h.example",
        &url(plain, "/form?a=1"),
    ]);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("https://h.example/form?a=1")
    );

    let r = curl(&["-H", "Host: OLD.example.com", &url(plain, "/p?q=1")]);
    assert_eq!(r.status, 301);
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("https://new.example.com:8443/p")
    );
    assert_eq!(r.headers.get("x-why").map(String::as_str), Some("moved"));

    // No scheme given: the request's (plain here), to a fixed path, query kept.
    let r = curl(&["-H", "Host: h.example", &url(plain, "/old?k=v")]);
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("http://h.example/new?k=v")
    );

    // A Host that would change what the Location means is refused.
    let r = curl(&["-H", "Host: evil.example/x", &url(plain, "/")]);
    assert_eq!(r.status, 400, "{}", r.body);

    // The same config serves the application on the other listener.
    assert_eq!(curl(&[&url(tls_side, "/anything")]).body, "app\n");
}

#[test]
fn forwarded_proto_and_port_replace_an_untrusted_clients() {
    let backend = Backend::start("echo");
    let gw = Gateway::start(&format!(
        r#"
upstreams: [{{ name: echo, backends: ["{}"] }}]
routes: [{{ name: all, upstream: echo }}]
"#,
        backend.addr
    ));
    let r = curl(&[
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "X-Forwarded-Port: 443",
        "-H",
        "Forwarded: for=6.6.6.6;proto=https",
        &url(gw.http, "/x"),
    ]);
    assert_eq!(r.status, 200);
    let seen = backend.seen();
    let h = &seen.last().expect("the backend saw the request").headers;
    assert_eq!(h.get("x-forwarded-proto").map(String::as_str), Some("http"));
    let port = gw.http.port().to_string();
    assert_eq!(h.get("x-forwarded-port"), Some(&port));
    assert_eq!(
        h.get("forwarded"),
        None,
        "an untrusted Forwarded is dropped"
    );
}

#[test]
fn a_trusted_proxys_forwarding_headers_are_kept_and_forwarded_appends_to_them() {
    let backend = Backend::start("echo");
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, free_port()));
    let gw = Gateway::start(&format!(
        r#"
client_ip: {{ trusted_proxies: [127.0.0.1], forwarded: true }}
listeners:
  - {{ name: v4, listen: "{{HTTP}}" }}
  - {{ name: v6, listen: "{v6}" }}
upstreams: [{{ name: echo, backends: ["{}"] }}]
routes: [{{ name: all, upstream: echo }}]
"#,
        backend.addr
    ));
    gw.wait_listening(v6);
    let last = || {
        backend
            .seen()
            .last()
            .expect("the backend saw the request")
            .headers
            .clone()
    };
    // From a trusted proxy: its proto and port stand, our element goes after its own.
    curl(&[
        "-H",
        "Host: app.example.com",
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "X-Forwarded-Port: 443",
        "-H",
        "Forwarded: for=198.51.100.7;proto=https",
        &url(gw.http, "/x"),
    ]);
    let h = last();
    assert_eq!(
        h.get("x-forwarded-proto").map(String::as_str),
        Some("https")
    );
    assert_eq!(h.get("x-forwarded-port").map(String::as_str), Some("443"));
    assert_eq!(
        h.get("forwarded").map(String::as_str),
        Some("for=198.51.100.7;proto=https, for=127.0.0.1;proto=http;host=app.example.com")
    );

    // ::1 is not trusted: what it sent is replaced, and its address is quoted.
    let v6_url = format!("http://{v6}/y");
    curl(&[
        "-g",
        "-H",
        "Host: app.example.com:8080",
        "-H",
        "Forwarded: for=6.6.6.6",
        "-H",
        "X-Forwarded-Proto: https",
        &v6_url,
    ]);
    let h = last();
    assert_eq!(
        h.get("forwarded").map(String::as_str),
        Some("for=\"[::1]\";proto=http;host=\"app.example.com:8080\"")
    );
    assert_eq!(h.get("x-forwarded-proto").map(String::as_str), Some("http"));
    assert_eq!(h.get("x-forwarded-port"), Some(&v6.port().to_string()));
}

#[test]
fn the_access_log_has_the_http_version_and_tls_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = Gateway::start(&format!(
        "access_log: {{ path: \"{}\" }}\nroutes: [{{ name: r, respond: {{ body: x }} }}]\n",
        path.display()
    ));
    curl(&["--http1.1", &url(gw.http, "/one")]);
    curl(&["--http1.0", &url(gw.http, "/two")]);
    let lines = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(5), || lines().lines().count() == 2),
        "{}",
        lines()
    );
    let text = lines();
    let line = |target: &str| {
        text.lines()
            .find(|l| l.contains(target))
            .unwrap_or_else(|| panic!("no line for {target}:\n{text}"))
    };
    // The older fields are where they were; the new ones follow them.
    assert!(
        line("/one").contains("\"GET /one HTTP/1.1\" 200"),
        "{}",
        line("/one")
    );
    assert!(
        line("/one").ends_with("route=r backend=- http=HTTP/1.1 tls=- cipher=- sni=-"),
        "{}",
        line("/one")
    );
    assert!(
        line("/two").ends_with("http=HTTP/1.0 tls=- cipher=- sni=-"),
        "{}",
        line("/two")
    );
}
