//! End to end: SIGHUP reload under load, rejected reloads, `check` and `explain`, `/metrics`,
//! graceful shutdown and the SIGQUIT upgrade hand-over.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn config(backend: &Backend, greeting: &str) -> String {
    format!(
        r#"
upstreams: [{{ name: pool, backends: ["{}"] }}]
routes:
  - {{ name: hello, match: {{ path: /hello }}, respond: {{ body: "{greeting}" }} }}
  - {{ name: api, match: {{ path_prefix: /api/ }}, rewrite: {{ strip_prefix: /api }}, upstream: pool }}
"#,
        backend.addr
    )
}

fn reloads(gw: &Gateway, result: &str) -> u64 {
    gw.metrics()
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "zkgate_config_reloads_total{{result=\"{result}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sighup_reload_under_load_drops_nothing_and_a_bad_file_keeps_the_old_config() {
    let backend = Backend::start("b");
    let gw = Gateway::start(&config(&backend, "v1"));
    assert_eq!(gw.get("/hello").text(), "v1");

    let load = Load::start(gw.http, &["/api/x", "/hello"], 4);
    thread::sleep(Duration::from_millis(300));
    for generation in 2..=6 {
        gw.write_config(&config(&backend, &format!("v{generation}")));
        gw.signal("HUP");
        let want = format!("v{generation}");
        assert!(
            eventually(Duration::from_secs(10), || gw.get("/hello").text() == want),
            "reload to {want} not seen\n{}",
            gw.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    load.finish_without_failures(50);
    assert_eq!(reloads(&gw, "success"), 5);

    // An invalid file: rejected, counted, logged with its path; the old config keeps serving.
    gw.write_config(&config(&backend, "v7").replace("path: /hello", "path: hello"));
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || reloads(&gw, "failure") == 1),
        "{}",
        gw.log()
    );
    assert_eq!(gw.get("/hello").text(), "v6");
    assert_eq!(gw.get("/api/x").status, 200);
    assert!(gw.log().contains("routes[0].match.path"), "{}", gw.log());
    let cfg = get(gw.admin, "/config").json();
    assert_eq!(cfg["generation"], 6);
}

#[test]
fn reload_carries_unchanged_upstreams_and_applies_changed_backends() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let yaml = |addr: &str| {
        format!("upstreams: [{{ name: pool, backends: [\"{addr}\"] }}]\nroutes: [{{ name: all, upstream: pool }}]\n")
    };
    let gw = Gateway::start(&yaml(&a.addr.to_string()));
    assert_eq!(gw.get("/").json()["backend"], "a");
    gw.write_config(&yaml(&b.addr.to_string()));
    gw.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || gw.get("/").json()
        ["backend"]
        == "b"));
    let ups = get(gw.admin, "/upstreams").json();
    assert_eq!(
        ups["upstreams"][0]["backends"][0]["addr"],
        b.addr.to_string()
    );
}

#[test]
fn check_reports_every_error_with_its_path_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            r#"
listeners: [{{ name: web, listen: "127.0.0.1:{port}" }}]
upstreams:
  - {{ name: api, backends: ["127.0.0.1:1 weight=x"], balance: consistent_hash }}
routes:
  - {{ name: a, match: {{ path_prefix: /a }}, upstream: missing }}
  - {{ name: b, match: {{ path_prefix: /b }}, upstream: api, rewrite: {{ pattern: "^/b/(", replace: "/$1" }} }}
  - {{ name: c, match: {{ path_regex: "[" }}, respond: {{ status: 42 }} }}
  - {{ name: d, match: {{ path_prefix: /d, methods: [GET] }}, upstream: api, max_request_body: 1XB }}
"#
        ),
    )
    .unwrap();
    let (code, err) = check(&bad);
    assert_eq!(code, Some(1));
    assert!(err.contains("routes[3].max_request_body: "), "{err}");
    // Parsing errors come first; fix that one and the semantic errors all appear together.
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace(", max_request_body: 1XB", "");
    std::fs::write(&bad, text).unwrap();
    let (code, err) = check(&bad);
    assert_eq!(code, Some(1));
    for path in [
        "upstreams[0].backends[0]",
        "upstreams[0].hash_key",
        "routes[0].upstream",
        "routes[1].rewrite.pattern",
        "routes[2].match.path_regex",
        "routes[2].respond.status",
    ] {
        assert!(
            err.contains(&format!("{path}: ")),
            "missing {path} in:\n{err}"
        );
    }
    assert!(err.contains("6 error(s)"), "{err}");
    // Nothing was bound.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "listeners: [{ name: web, listen: \"127.0.0.1:1\" }]\nroutes: [{ name: r, respond: { body: hi } }]\n").unwrap();
    let (code, err) = check(&good);
    assert_eq!(code, Some(0), "{err}");
}

/// `zkgate explain -c conf/zkgate.yaml METHOD URL`: its exit code and what it printed.
fn explain(method: &str, url: &str) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .args([
            "explain",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/zkgate.yaml"),
            method,
            url,
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn explain_shows_route_rewrite_and_upstream() {
    let (code, text) = explain("get", "http://localhost:8080/demo/hello?x=1");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("route:     demo"), "{text}");
    assert!(text.contains("upstream:  demo"), "{text}");
    assert!(text.contains("forwarded: GET /hello?x=1"), "{text}");
    let (code, text) = explain("GET", "/nowhere");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("404"), "{text}");

    // The path shown, matched and forwarded is the normalized one; a refused one says so.
    let (code, text) = explain("GET", "/x/%2e%2e//demo/%68ello");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("path:      /demo/hello (normalized)"),
        "{text}"
    );
    assert!(text.contains("forwarded: GET /hello"), "{text}");
    let (code, text) = explain("GET", "/demo/a%2fb");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("refused:   400"), "{text}");
}

/// The Prometheus text format, line by line: HELP/TYPE comments and `name{labels} value`.
fn assert_prometheus_text(text: &str) {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or("");
            assert!(kind == "HELP" || kind == "TYPE", "bad comment: {line}");
            assert!(valid_name(name), "bad metric name in: {line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
                typed.insert(name.to_owned());
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line in exposition");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value: {line}"
        );
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad name: {line}");
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            typed.contains(name) || typed.contains(base),
            "sample before its TYPE: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels: {line}"
                );
                for pair in labels[1..labels.len() - 1]
                    .split("\",")
                    .filter(|p| !p.is_empty())
                {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(
                        valid_name(k) && v.starts_with('"'),
                        "bad label {pair}: {line}"
                    );
                }
            }
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !n.starts_with(|c: char| c.is_ascii_digit())
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_by_route() {
    let backend = Backend::start("b");
    let gw = Gateway::start(&config(&backend, "hi"));
    let mut c = Conn::open(gw.http).unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/api/x").unwrap().status, 200);
    }
    assert_eq!(gw.get("/hello").status, 200);
    assert_eq!(gw.get("/missing").status, 404);
    assert_eq!(gw.get("/api/status/503").status, 503);
    let text = gw.metrics();
    assert_prometheus_text(&text);
    for expected in [
        "zkgate_requests_total{class=\"2xx\",route=\"api\"} 3",
        "zkgate_requests_total{class=\"5xx\",route=\"api\"} 1",
        "zkgate_requests_total{class=\"2xx\",route=\"hello\"} 1",
        "zkgate_requests_total{class=\"4xx\",route=\"\"} 1",
        "zkgate_request_duration_seconds_count{route=\"api\"} 4",
        "zkgate_upstream_duration_seconds_count{route=\"api\"} 4",
        "zkgate_upstream_backends{upstream=\"pool\"} 1",
        "zkgate_downstream_connections_active 1",
    ] {
        // The logging phase runs just after the response is sent: allow it a moment.
        let seen = eventually(Duration::from_secs(5), || gw.metrics().contains(expected));
        assert!(seen, "missing `{expected}` in:\n{}", gw.metrics());
    }
    drop(c);
    assert!(eventually(Duration::from_secs(5), || gw
        .metrics()
        .contains("zkgate_downstream_connections_active 0")));
}

#[test]
fn sigterm_drains_within_the_configured_grace_period() {
    let backend = Backend::start("b");
    let mut gw = Gateway::start(&config(&backend, "hi"));
    let started = Instant::now();
    gw.signal("TERM");
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", gw.log());
    assert!(gw.log().contains("Graceful"), "{}", gw.log());
}

#[test]
fn sigquit_upgrade_hands_over_the_listeners_without_a_failed_request() {
    let backend = Backend::start("b");
    let old = Gateway::start(&config(&backend, "old"));
    let load = Load::start(old.http, &["/api/x", "/hello"], 4);
    thread::sleep(Duration::from_millis(300));

    // The new process reads a config whose only difference is the greeting.
    let _new = old.successor(&config(&backend, "new"));
    thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    let switched = eventually(Duration::from_secs(20), || {
        request(old.http, "GET", "/hello", &[], b"").is_ok_and(|r| r.text() == "new")
    });
    load.finish_without_failures(1);
    let new_log = old.successor_log();
    assert!(
        switched,
        "the new process never answered\nold:\n{}\nnew:\n{new_log}",
        old.log()
    );
}

#[test]
fn access_log_writes_one_line_per_request_when_enabled() {
    let backend = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = Gateway::start(&format!(
        "access_log: {{ path: \"{}\" }}\n{}",
        path.display(),
        config(&backend, "hi")
    ));
    assert_eq!(gw.get("/api/x?q=1").status, 200);
    assert_eq!(gw.get("/hello").status, 200);
    assert_eq!(gw.get("/nope").status, 404);
    let lines = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(5), || lines().lines().count() == 3),
        "{}",
        lines()
    );
    let text = lines();
    // Each request logs when it ends, on whichever thread served it: lines need not keep the
    // order the requests were sent in.
    let api = text
        .lines()
        .find(|l| l.contains("\"GET /api/x?q=1 HTTP/1.1\" 200"))
        .unwrap_or_else(|| panic!("no line for /api/x:\n{text}"));
    assert!(api.contains("route=api"), "{api}");
    assert!(api.contains(&format!("backend={}", backend.addr)), "{api}");
    assert!(
        text.contains("\"GET /nope HTTP/1.1\" 404") && text.contains("route=-"),
        "{text}"
    );
}
