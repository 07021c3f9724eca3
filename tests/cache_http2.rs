//! The cache over HTTP/2: a TLS listener offering h2 by ALPN in front of a cached route; curl's
//! second `--http2` GET is a hit (`Cache-Status: zkgate; hit`) that never reaches the origin,
//! a conditional GET with its ETag is a 304 from the cache, and h2load's bounded burst of concurrent streams on a new object is answered 2xx every time
//! while the origin is asked once (the misses in flight wait for the one fetch).
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{localhost_cert, Backend, Gateway};

/// One `curl --http2` GET: the HTTP version it used, the status and the `cache-status` header.
fn curl_h2(gw: &Gateway, cert: &str, path: &str) -> (String, u16, Option<String>) {
    let (version, status, headers) = curl_h2_with(gw, cert, path, &[]);
    (version, status, header(&headers, "cache-status"))
}

fn header(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// One `curl --http2` GET with `extra` arguments: the HTTP version, the status and the head.
fn curl_h2_with(gw: &Gateway, cert: &str, path: &str, extra: &[&str]) -> (String, u16, String) {
    let port = gw.http.port();
    let out = Command::new("curl")
        .args(extra)
        .args(["-sS", "--http2", "--max-time", "20", "-o", "/dev/null"])
        .args(["-D", "-", "-w", "%{http_version}"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--cacert", cert])
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let version = text.lines().last().unwrap_or("").to_owned();
    (version, status, text)
}

/// Requests of `target` the origin read.
fn origin_saw(origin: &Backend, target: &str) -> usize {
    origin.seen().iter().filter(|s| s.target == target).count()
}

#[test]
fn an_h2_get_is_a_hit_and_an_h2load_burst_reaches_the_origin_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_cert(dir.path());
    let origin = Backend::start("origin");
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - name: web
    listen: "{{HTTP}}"
    tls: {{ certificates: [{{ cert: "{cert}", key: "{key}" }}] }}
upstreams: [{{ name: origin, backends: ["{}"] }}]
routes:
  - name: cached
    upstream: origin
    plugin:
      cache:
        override_origin: true
        rules: [{{ path: /h2/**, ttl: 10m }}]
"#,
        origin.addr
    ));

    let (version, status, cache) = curl_h2(&gw, &cert, "/h2/object");
    assert_eq!((version.as_str(), status), ("2", 200), "{cache:?}");
    assert!(
        cache.as_deref().is_some_and(|c| !c.contains("hit")),
        "the first GET is a miss: {cache:?}"
    );
    let (version, status, cache) = curl_h2(&gw, &cert, "/h2/object");
    assert_eq!((version.as_str(), status), ("2", 200));
    assert!(
        cache
            .as_deref()
            .is_some_and(|c| c.starts_with("zkgate; hit")),
        "the second GET is a hit: {cache:?}"
    );
    assert_eq!(origin_saw(&origin, "/h2/object"), 1);

    // A conditional GET over h2 with the validator of the stored answer: 304 from the cache.
    let (_, _, head) = curl_h2_with(&gw, &cert, "/h2/object", &[]);
    let etag = header(&head, "etag").unwrap_or_else(|| panic!("no ETag on a hit:\n{head}"));
    let inm = format!("if-none-match: {etag}");
    let (version, status, head) = curl_h2_with(&gw, &cert, "/h2/object", &["-H", &inm]);
    assert_eq!((version.as_str(), status), ("2", 304), "{head}");
    assert_eq!(
        header(&head, "etag").as_deref(),
        Some(etag.as_str()),
        "{head}"
    );
    assert_eq!(origin_saw(&origin, "/h2/object"), 1);

    // 2000 GETs of a new object on 10 connections of 10 streams each.
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "10", "-m", "10"])
        .arg(format!("https://localhost:{}/h2/burst", gw.http.port()))
        .output()
        .expect("h2load (Debian nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("Application protocol: h2")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx"),
        "{text}"
    );
    assert_eq!(
        origin_saw(&origin, "/h2/burst"),
        1,
        "the burst reached the origin once"
    );
}
