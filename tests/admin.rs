//! End to end: the admin listener takes writes only with `admin.token`, refuses what a web page
//! sends, and shows no secret in `/config`; credentials never reach the log, even at trace level.

mod common;

use common::{request, Backend, Gateway, Response};

const TOKEN: &str = "admin-token-0123456789";
const RIGHT: (&str, &str) = ("authorization", "Bearer admin-token-0123456789");

/// A gateway whose config reads the admin token (and its addresses) from the environment, as a
/// shared config would; `env` adds to what it is started with.
fn gateway_with_token(backend: &Backend, env: &[(&str, &str)]) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("zkgate.yaml");
    let yaml = format!(
        r#"
server: {{ threads: 2, grace_period: 1s, graceful_shutdown_timeout: 1s, upgrade_sock: "${{env:UPGRADE_SOCK}}" }}
admin: {{ listen: "${{env:ADMIN_LISTEN}}", token: "${{env:ZKGATE_ADMIN_TOKEN}}" }}
listeners: [{{ name: web, listen: "${{env:HTTP_LISTEN}}" }}]
upstreams: [{{ name: app, backends: ["{backend}"] }}]
routes:
  - name: alerts
    match: {{ path_prefix: /alerts }}
    plugin:
      alert_webhook:
        destinations:
          - name: slack
            url: "http://{backend}/services/T0/B0/hook-s3cr3t-path"
            template: {{ builtin: slack }}
  - name: app
    upstream: app
    request_headers:
      set: {{ x-upstream-key: up-s3cr3t-key, x-env: staging }}
      public: [x-env]
    response_headers: {{ set: {{ set-cookie: "sid=resp-s3cr3t-cookie" }} }}
"#,
        backend = backend.addr
    );
    std::fs::write(&path, yaml).expect("write config");
    let mut all = vec![("ZKGATE_ADMIN_TOKEN", TOKEN)];
    all.extend_from_slice(env);
    let gw = Gateway::start_with_env(path.to_str().expect("utf-8 path"), &all);
    (gw, dir)
}

fn admin(gw: &Gateway, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    request(gw.admin, method, target, headers, b"")
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

fn post(gw: &Gateway, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(gw.admin, "POST", target, headers, body)
        .unwrap_or_else(|e| panic!("POST {target}: {e}"))
}

fn state(gw: &Gateway, backend: &Backend) -> String {
    let all = admin(gw, "GET", "/upstreams", &[]).json();
    all["upstreams"][0]["backends"]
        .as_array()
        .and_then(|list| list.iter().find(|b| b["addr"] == backend.addr.to_string()))
        .map(|b| b["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("backend missing: {all}"))
}

#[test]
fn writes_need_the_token_and_browser_requests_are_refused() {
    let backend = Backend::start("a");
    let (gw, _dir) = gateway_with_token(&backend, &[]);
    let drain = format!("/upstreams/app/{}/drain", backend.addr);
    let undrain = format!("/upstreams/app/{}/undrain", backend.addr);

    // No token, a wrong one, another scheme: 401 with a challenge, and nothing changes.
    for headers in [
        &[][..],
        &[("authorization", "Bearer admin-token-0123456780")][..],
        &[("authorization", "Bearer admin-token-012345678")][..],
        &[("authorization", "Basic YWRtaW46YWRtaW4=")][..],
        &[("authorization", TOKEN)][..],
    ] {
        let r = post(&gw, &drain, headers, b"");
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"zkgate admin\""),
            "{headers:?}"
        );
        assert!(r.text().contains("Bearer"), "{}", r.text());
    }
    assert_eq!(state(&gw, &backend), "active");

    // The right token, but from a web page (an Origin header, same-site or not) or as a form
    // post: 403, and nothing changes.
    for origin in ["http://evil.example", "null", "http://127.0.0.1"] {
        let r = post(&gw, &drain, &[RIGHT, ("origin", origin)], b"");
        assert_eq!(r.status, 403, "{origin}: {}", r.text());
        assert!(r.text().contains("Origin"), "{}", r.text());
    }
    for ct in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=zz",
        "text/plain;charset=UTF-8",
    ] {
        let r = post(&gw, &drain, &[RIGHT, ("content-type", ct)], b"a=b");
        assert_eq!(r.status, 403, "{ct}: {}", r.text());
        assert!(r.text().contains("form"), "{}", r.text());
    }
    assert_eq!(state(&gw, &backend), "active");

    // The right token drains and undrains.
    let r = post(&gw, &drain, &[RIGHT], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["drained"], true);
    assert_eq!(state(&gw, &backend), "drained");
    let r = post(
        &gw,
        &undrain,
        &[("Authorization", "bearer admin-token-0123456789")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(state(&gw, &backend), "active");

    // Reads other than /config stay open, but not to a page.
    assert_eq!(admin(&gw, "GET", "/metrics", &[]).status, 200);
    assert_eq!(admin(&gw, "GET", "/upstreams", &[]).status, 200);
    let r = admin(
        &gw,
        "GET",
        "/upstreams",
        &[("origin", "http://evil.example")],
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn config_needs_the_token_once_one_is_set_and_shows_no_secret() {
    let backend = Backend::start("a");
    let (gw, _dir) = gateway_with_token(&backend, &[]);

    for headers in [
        &[][..],
        &[("authorization", "Bearer nope-nope-nope-nope")][..],
    ] {
        let r = admin(&gw, "GET", "/config", headers);
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert!(!r.text().contains("s3cr3t"), "{}", r.text());
    }
    let r = admin(&gw, "GET", "/config", &[RIGHT]);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    for secret in [
        TOKEN,
        "up-s3cr3t-key",
        "resp-s3cr3t-cookie",
        "hook-s3cr3t-path",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let config = &r.json()["config"];
    assert_eq!(config["admin"]["token"], "<redacted>");
    let destination = &config["routes"][0]["plugin"]["alert_webhook"]["destinations"][0];
    assert_eq!(destination["url"], "<redacted>");
    let route = &config["routes"][1];
    assert_eq!(route["name"], "app");
    assert_eq!(
        route["request_headers"]["set"]["x-upstream-key"],
        "<redacted>"
    );
    assert_eq!(route["request_headers"]["set"]["x-env"], "staging");
    assert_eq!(route["response_headers"]["set"]["set-cookie"], "<redacted>");

    // Redacted in the view only: the backend and the client get the real values.
    let r = gw.get("/status/200");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("set-cookie"), Some("sid=resp-s3cr3t-cookie"));
    let seen = backend.seen();
    let last = seen.last().expect("the backend was asked");
    assert_eq!(
        last.headers.get("x-upstream-key").map(String::as_str),
        Some("up-s3cr3t-key")
    );
}

#[test]
fn without_a_token_writes_are_refused_and_reads_open() {
    let backend = Backend::start("a");
    let gw = Gateway::start(&format!(
        r#"
upstreams: [{{ name: app, backends: ["{}"] }}]
routes:
  - name: app
    match: {{ headers: [{{ name: authorization, value: "Bearer route-s3cr3t" }}] }}
    upstream: app
    request_headers: {{ set: {{ authorization: "Bearer up-s3cr3t" }}, add: {{ x-tag: t1 }}, public: [x-tag] }}
  - {{ name: other, respond: {{ status: 404 }} }}
"#,
        backend.addr
    ));
    let drain = format!("/upstreams/app/{}/drain", backend.addr);
    for headers in [&[][..], &[RIGHT][..]] {
        let r = post(&gw, &drain, headers, b"");
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("set admin.token"), "{}", r.text());
    }
    assert_eq!(state(&gw, &backend), "active");

    let r = admin(&gw, "GET", "/config", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("s3cr3t"), "{}", r.text());
    let route = &r.json()["config"]["routes"][0];
    assert_eq!(
        route["request_headers"]["set"]["authorization"],
        "<redacted>"
    );
    assert_eq!(route["request_headers"]["add"]["x-tag"], "t1");
    assert_eq!(route["match"]["headers"][0]["value"], "<redacted>");
    assert_eq!(
        admin(&gw, "GET", "/config", &[("origin", "null")]).status,
        403
    );
}

#[test]
fn credentials_never_reach_the_log_at_trace_level() {
    let backend = Backend::start("a");
    let (gw, _dir) = gateway_with_token(&backend, &[("RUST_LOG", "trace")]);

    let client_secrets = [
        ("authorization", "Bearer s3cr3t-token"),
        ("proxy-authorization", "Basic cHJveHk6czNjcjN0LXByb3h5"),
        ("cookie", "session=s3cr3t-cookie"),
    ];
    // `/status/200` answers without echoing the request (its body is not a header dump).
    let r = request(gw.http, "GET", "/status/200", &client_secrets, b"").expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = backend.seen();
    let last = seen.last().expect("the backend was asked");
    assert_eq!(
        last.headers.get("authorization").map(String::as_str),
        Some("Bearer s3cr3t-token")
    );
    assert_eq!(
        last.headers.get("x-upstream-key").map(String::as_str),
        Some("up-s3cr3t-key")
    );
    // An alert destination's URL path is its secret (a Slack webhook's), and Pingora's dump of
    // the request line shows it.
    let alert = serde_json::json!({
        "version": "4", "status": "firing", "receiver": "zkgate", "groupKey": "g",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": [{
            "status": "firing", "labels": {"alertname": "disk"}, "annotations": {},
            "startsAt": "2026-11-22T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": ""
        }]
    });
    let r = request(
        gw.http,
        "POST",
        "/alerts/slack",
        &[("content-type", "application/json")],
        alert.to_string().as_bytes(),
    )
    .expect("webhook");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        backend
            .seen()
            .iter()
            .any(|s| s.target == "/services/T0/B0/hook-s3cr3t-path"),
        "the destination was not called"
    );
    assert_eq!(admin(&gw, "GET", "/config", &[RIGHT]).status, 200);
    let r = post(
        &gw,
        &format!("/upstreams/app/{}/drain", backend.addr),
        &[RIGHT],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // The log writer may lag the answers a little.
    let mut log = String::new();
    common::eventually(std::time::Duration::from_secs(5), || {
        log = gw.log();
        log.contains("Writing request header") && log.contains("drained")
    });
    // Pingora did dump the heads (else this test would prove nothing)...
    assert!(log.contains("Writing request header"), "{log}");
    assert!(log.contains("Request header"), "{log}");
    assert!(log.contains("<redacted>"), "{log}");
    // ...and no credential is in them.
    for secret in [
        "s3cr3t-token",
        "cHJveHk6czNjcjN0LXByb3h5",
        "s3cr3t-cookie",
        "up-s3cr3t-key",
        "resp-s3cr3t-cookie",
        "hook-s3cr3t-path",
        TOKEN,
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
    // A public value is shown.
    assert!(log.contains("staging"), "{log}");
}

#[test]
fn a_reload_rotates_the_token() {
    let backend = Backend::start("a");
    let yaml = |token: &str| {
        format!(
            "admin: {{ listen: \"{{ADMIN}}\", token: {token} }}\nupstreams: [{{ name: app, backends: [\"{}\"] }}]\nroutes: [{{ name: app, upstream: app }}]\n",
            backend.addr
        )
    };
    let gw = Gateway::start(&yaml(TOKEN));
    let drain = format!("/upstreams/app/{}/drain", backend.addr);
    assert_eq!(post(&gw, &drain, &[RIGHT], b"").status, 200);

    gw.write_config(&yaml("rotated-token-9876543210"));
    gw.signal("HUP");
    let new = ("authorization", "Bearer rotated-token-9876543210");
    assert!(
        common::eventually(std::time::Duration::from_secs(10), || {
            post(&gw, &drain, &[new], b"").status == 200
        }),
        "{}",
        gw.log()
    );
    assert_eq!(post(&gw, &drain, &[RIGHT], b"").status, 401);
}
