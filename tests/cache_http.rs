//! The cache plugin end to end: a real gateway in front of an origin started by the test, whose
//! answers (Cache-Control, Vary, validators, status, delay, chunked size) each test sets per
//! path, and which counts the requests it gets per path.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::client::{get, request, Response};
use common::eventually;
use common::gateway::Gateway;

/// How the origin answers one path.
#[derive(Clone, Default)]
struct Spec {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Wait this long before answering.
    delay_ms: u64,
    /// Send the body chunked (no Content-Length).
    chunked: bool,
    /// Close the connection without an answer.
    close: bool,
}

fn ok(cache_control: &str, body: &str) -> Spec {
    Spec {
        status: 200,
        headers: vec![("cache-control".into(), cache_control.into())],
        body: body.as_bytes().to_vec(),
        ..Spec::default()
    }
}

/// A small HTTP/1.1 origin: one thread per connection, answers by path.
struct Origin {
    addr: SocketAddr,
    specs: Arc<Mutex<HashMap<String, Spec>>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Origin {
    fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let specs: Arc<Mutex<HashMap<String, Spec>>> = Arc::default();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (s, c) = (specs.clone(), counts.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (s, c) = (s.clone(), c.clone());
                thread::spawn(move || serve(stream, &s, &c));
            }
        });
        Origin {
            addr,
            specs,
            counts,
        }
    }

    fn set(&self, path: &str, spec: Spec) {
        self.specs.lock().expect("specs").insert(path.into(), spec);
    }

    /// Requests the origin read for `path` (query included in the path as sent).
    fn count(&self, path: &str) -> usize {
        self.counts
            .lock()
            .expect("counts")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn serve(
    stream: TcpStream,
    specs: &Mutex<HashMap<String, Spec>>,
    counts: &Mutex<HashMap<String, usize>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let path = target.split('?').next().unwrap_or("").to_owned();
        *counts
            .lock()
            .expect("counts")
            .entry(path.clone())
            .or_default() += 1;
        let spec = specs
            .lock()
            .expect("specs")
            .get(&path)
            .cloned()
            .unwrap_or_else(|| ok("max-age=60", "default"));
        if spec.delay_ms > 0 {
            thread::sleep(Duration::from_millis(spec.delay_ms));
        }
        if spec.close {
            return;
        }
        let mut head = format!("HTTP/1.1 {} X\r\n", spec.status);
        for (k, v) in &spec.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if spec.chunked {
            head.push_str("transfer-encoding: chunked\r\n\r\n");
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
            for chunk in spec.body.chunks(64 * 1024) {
                let framed = format!("{:x}\r\n", chunk.len());
                let ok = out.write_all(framed.as_bytes()).is_ok()
                    && out.write_all(chunk).is_ok()
                    && out.write_all(b"\r\n").is_ok();
                if !ok {
                    return;
                }
            }
            if out.write_all(b"0\r\n\r\n").is_err() {
                return;
            }
        } else {
            head.push_str(&format!("content-length: {}\r\n\r\n", spec.body.len()));
            if out.write_all(head.as_bytes()).is_err() || out.write_all(&spec.body).is_err() {
                return;
            }
        }
    }
}

fn config(origin: &Origin, cache: &str, extra_route: &str) -> String {
    format!(
        "upstreams:\n  - {{ name: origin, backends: [\"{}\"] }}\n\
         access_log: {{ path: \"{{LOG}}\" }}\n\
         routes:\n  - name: cached\n    match: {{ path_prefix: / }}\n    upstream: origin\n    timeout: 1s\n    plugin:\n      cache: {cache}\n{extra_route}",
        origin.addr
    )
}

/// A gateway and the temp dir of its access log, removed with it.
struct Gw {
    gw: Gateway,
    log_dir: tempfile::TempDir,
}

impl std::ops::Deref for Gw {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.gw
    }
}

/// A gateway for `origin` with the route's `cache` section.
fn gateway(origin: &Origin, cache: &str) -> Gw {
    let log_dir = tempfile::tempdir().expect("dir");
    let log = log_dir.path().join("access.log");
    let yaml = config(origin, cache, "").replace("{LOG}", &log.display().to_string());
    Gw {
        gw: Gateway::start(&yaml),
        log_dir,
    }
}

fn access_log(gw: &Gw) -> String {
    std::fs::read_to_string(gw.log_dir.path().join("access.log")).unwrap_or_default()
}

fn status_of(r: &Response) -> &str {
    r.header("cache-status").unwrap_or("")
}

#[test]
fn a_second_get_is_a_hit_with_age_cache_status_and_a_log_field() {
    let origin = Origin::start();
    origin.set("/a", ok("max-age=60", "one"));
    let gw = gateway(&origin, "{}");
    let first = gw.get("/a");
    assert_eq!((first.status, first.text().as_str()), (200, "one"));
    assert_eq!(status_of(&first), "zkgate; fwd=uri-miss; stored");
    let second = gw.get("/a");
    assert_eq!((second.status, second.text().as_str()), (200, "one"));
    assert!(
        status_of(&second).starts_with("zkgate; hit; ttl="),
        "{second:?}"
    );
    assert!(second.header("age").is_some(), "Age on a hit: {second:?}");
    assert_eq!(origin.count("/a"), 1);
    assert!(
        eventually(Duration::from_secs(5), || access_log(&gw)
            .contains("cache=hit")),
        "{}",
        access_log(&gw)
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains(
            "zkgate_cache_requests_total{kind=\"generic\",result=\"hit\",route=\"cached\"} 1"
        ),
        "{metrics}"
    );
}

/// Trap 10: the answer that filled the entry went out before its body's ETag existed; the hits
/// after it carry the tag, and a conditional request with it gets a 304.
#[test]
fn a_304_answers_if_none_match_from_the_second_request_on() {
    let origin = Origin::start();
    origin.set("/e", ok("max-age=60", "tagged"));
    let gw = gateway(&origin, "{}");
    let first = gw.get("/e");
    assert!(first.header("etag").is_none(), "{first:?}");
    let second = gw.get("/e");
    let etag = second
        .header("etag")
        .expect("a synthesized ETag")
        .to_owned();
    assert!(etag.starts_with("\"z-"), "{etag}");
    let third = request(gw.http, "GET", "/e", &[("if-none-match", &etag)], b"").expect("get");
    assert_eq!(third.status, 304, "{third:?}");
    assert!(third.body.is_empty());
    assert_eq!(origin.count("/e"), 1);
}

#[test]
fn head_is_served_from_a_stored_get() {
    let origin = Origin::start();
    origin.set("/h", ok("max-age=60", "body of h"));
    let gw = gateway(&origin, "{}");
    assert_eq!(gw.get("/h").text(), "body of h");
    let head = request(gw.http, "HEAD", "/h", &[], b"").expect("head");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(status_of(&head).contains("hit"), "{head:?}");
    assert_eq!(origin.count("/h"), 1);
}

#[test]
fn vary_keeps_variants_apart() {
    let origin = Origin::start();
    let mut spec = ok("max-age=60", "varied");
    spec.headers.push(("vary".into(), "accept-language".into()));
    origin.set("/v", spec);
    let gw = gateway(&origin, "{}");
    let get_in =
        |lang: &str| request(gw.http, "GET", "/v", &[("accept-language", lang)], b"").expect("get");
    get_in("en");
    get_in("fr");
    let again = get_in("en");
    assert!(status_of(&again).contains("hit"), "{again:?}");
    assert_eq!(origin.count("/v"), 2, "one origin request per variant");
}

/// RFC 9211: a request whose URI is stored under another variant is a `vary-miss`, not a
/// `uri-miss`; the first request of a URI stays a `uri-miss`.
#[test]
fn a_new_variant_of_a_stored_uri_is_a_vary_miss() {
    let origin = Origin::start();
    let mut spec = ok("max-age=60", "varied");
    spec.headers.push(("vary".into(), "accept-language".into()));
    origin.set("/vm", spec);
    let gw = gateway(&origin, "{}");
    let get_in = |lang: &str| {
        request(gw.http, "GET", "/vm", &[("accept-language", lang)], b"").expect("get")
    };
    let first = get_in("en");
    assert_eq!(status_of(&first), "zkgate; fwd=uri-miss; stored");
    let other = get_in("fr");
    assert_eq!(status_of(&other), "zkgate; fwd=vary-miss; stored");
    let third = get_in("de");
    assert_eq!(status_of(&third), "zkgate; fwd=vary-miss; stored");
    assert!(status_of(&get_in("fr")).contains("hit"));
    assert_eq!(origin.count("/vm"), 3);
}

#[test]
fn no_store_private_and_set_cookie_are_not_stored_and_s_maxage_wins() {
    let origin = Origin::start();
    origin.set("/no-store", ok("no-store", "x"));
    origin.set("/private", ok("private, max-age=60", "x"));
    let mut cookie = ok("max-age=60", "x");
    cookie.headers.push(("set-cookie".into(), "id=1".into()));
    origin.set("/cookie", cookie);
    origin.set("/shared", ok("max-age=0, s-maxage=60", "x"));
    let gw = gateway(&origin, "{}");
    for path in ["/no-store", "/private", "/cookie", "/shared"] {
        gw.get(path);
        gw.get(path);
    }
    assert_eq!(origin.count("/no-store"), 2);
    assert_eq!(origin.count("/private"), 2);
    assert_eq!(origin.count("/cookie"), 2);
    assert_eq!(origin.count("/shared"), 1, "s-maxage beats max-age=0");
    let refused = gw.get("/no-store");
    assert!(
        status_of(&refused).contains("detail=no-store"),
        "{refused:?}"
    );
}

#[test]
fn credentials_bypass_a_route_without_auth() {
    let origin = Origin::start();
    origin.set("/auth", ok("public, max-age=60", "x"));
    let gw = gateway(&origin, "{}");
    for _ in 0..2 {
        let r = request(
            gw.http,
            "GET",
            "/auth",
            &[("authorization", "Bearer t")],
            b"",
        )
        .expect("get");
        assert_eq!(status_of(&r), "zkgate; fwd=bypass; detail=credentials");
    }
    assert_eq!(origin.count("/auth"), 2);
}

/// Trap 1: stale-while-revalidate serves stale and sends exactly one background refresh to
/// the origin, logged as cache=refresh.
#[test]
fn stale_while_revalidate_sends_exactly_one_refresh() {
    let origin = Origin::start();
    origin.set("/swr", ok("max-age=1, stale-while-revalidate=60", "v1"));
    let gw = gateway(&origin, "{}");
    assert_eq!(gw.get("/swr").text(), "v1");
    origin.set("/swr", ok("max-age=60", "v2"));
    // Let the entry go stale (its freshness is 1 s).
    thread::sleep(Duration::from_millis(2100));
    let stale = gw.get("/swr");
    assert_eq!(stale.text(), "v1", "served stale: {stale:?}");
    assert!(status_of(&stale).contains("detail=swr"), "{stale:?}");
    for _ in 0..5 {
        gw.get("/swr");
    }
    assert!(eventually(Duration::from_secs(5), || gw.get("/swr").text() == "v2"));
    assert_eq!(origin.count("/swr"), 2, "one fill, one refresh");
    assert!(
        eventually(Duration::from_secs(5), || access_log(&gw)
            .contains("cache=refresh")),
        "{}",
        access_log(&gw)
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains("zkgate_cache_refreshes_total{route=\"cached\"} 1"),
        "{metrics}"
    );
}

/// Stale-if-error on an origin 500, on a connection the origin closes without an answer, and
/// on the route's own timeout (the gateway's refusal, trap 4).
#[test]
fn stale_if_error_covers_a_500_a_dropped_connection_and_the_routes_timeout() {
    let origin = Origin::start();
    for p in ["/sie-500", "/sie-close", "/sie-timeout"] {
        origin.set(p, ok("max-age=1, stale-if-error=60", "good"));
    }
    let gw = gateway(&origin, "{}");
    for p in ["/sie-500", "/sie-close", "/sie-timeout"] {
        assert_eq!(gw.get(p).text(), "good");
    }
    origin.set(
        "/sie-500",
        Spec {
            status: 500,
            body: b"broken".to_vec(),
            ..Spec::default()
        },
    );
    origin.set(
        "/sie-close",
        Spec {
            close: true,
            ..Spec::default()
        },
    );
    origin.set(
        "/sie-timeout",
        Spec {
            delay_ms: 3000,
            ..ok("max-age=60", "late")
        },
    );
    thread::sleep(Duration::from_millis(2100));
    for (p, fwd) in [
        ("/sie-500", "fwd-status=500"),
        ("/sie-close", "fwd-status=502"),
        ("/sie-timeout", "fwd-status=504"),
    ] {
        let r = gw.get(p);
        assert_eq!((r.status, r.text().as_str()), (200, "good"), "{p}: {r:?}");
        let cs = status_of(&r);
        assert!(
            cs.contains("fwd=stale") && cs.contains(fwd) && cs.contains("detail=sie"),
            "{p}: {cs}"
        );
    }
}

/// Coalescing: many concurrent requests for one missing entry make one origin request.
#[test]
fn two_hundred_concurrent_gets_make_one_origin_request() {
    let origin = Origin::start();
    origin.set(
        "/busy",
        Spec {
            delay_ms: 500,
            ..ok("max-age=60", "shared")
        },
    );
    let gw = gateway(&origin, "{}");
    let addr = gw.http;
    let threads: Vec<_> = (0..200)
        .map(|_| thread::spawn(move || request(addr, "GET", "/busy", &[], b"")))
        .collect();
    let mut ok_count = 0;
    for t in threads {
        let r = t.join().expect("thread").expect("answer");
        assert_eq!(r.text(), "shared");
        ok_count += 1;
    }
    assert_eq!(ok_count, 200);
    assert_eq!(origin.count("/busy"), 1);
}

/// A reader that arrives while another request fetches the entry waits on the lock and is
/// served that fetch's entry: a hit that says `collapsed`, logged and counted as coalesced.
#[test]
fn a_reader_served_the_writers_entry_says_collapsed() {
    let origin = Origin::start();
    origin.set(
        "/col",
        Spec {
            delay_ms: 600,
            ..ok("max-age=60", "filled")
        },
    );
    let gw = gateway(&origin, "{}");
    let addr = gw.http;
    let writer = thread::spawn(move || request(addr, "GET", "/col", &[], b""));
    // The reader goes only once the writer's request is at the origin, holding the lock.
    assert!(eventually(Duration::from_secs(5), || origin.count("/col") == 1));
    let reader = gw.get("/col");
    let writer = writer.join().expect("writer").expect("answer");
    assert_eq!(status_of(&writer), "zkgate; fwd=uri-miss; stored");
    assert_eq!(reader.text(), "filled");
    let cs = status_of(&reader);
    assert!(
        cs.starts_with("zkgate; hit; ttl=") && cs.ends_with("; collapsed"),
        "{reader:?}"
    );
    assert_eq!(origin.count("/col"), 1);
    assert!(
        eventually(Duration::from_secs(5), || access_log(&gw)
            .contains("cache=collapsed")),
        "{}",
        access_log(&gw)
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains("zkgate_cache_coalesced_total{kind=\"generic\",route=\"cached\"} 1"),
        "{metrics}"
    );
}

/// A reader that gives up waiting on the lock (`lock.timeout`) fetches from the origin itself
/// and says so: `detail=lock-timeout` in Cache-Status, `cache=lock-timeout` in the access log,
/// counted in `lock_timeouts_total` and as a miss.
#[test]
fn a_reader_that_gives_up_on_the_lock_says_lock_timeout() {
    let origin = Origin::start();
    origin.set(
        "/lt",
        Spec {
            delay_ms: 800,
            ..ok("max-age=60", "slow")
        },
    );
    let gw = gateway(&origin, "{ lock: { timeout: 100ms, age: 10s } }");
    let addr = gw.http;
    let writer = thread::spawn(move || request(addr, "GET", "/lt", &[], b""));
    assert!(eventually(Duration::from_secs(5), || origin.count("/lt") == 1));
    let reader = gw.get("/lt");
    let writer = writer.join().expect("writer").expect("answer");
    assert_eq!(status_of(&writer), "zkgate; fwd=uri-miss; stored");
    assert_eq!(reader.text(), "slow");
    assert_eq!(
        status_of(&reader),
        "zkgate; fwd=uri-miss; detail=lock-timeout",
        "{reader:?}"
    );
    assert_eq!(
        origin.count("/lt"),
        2,
        "the reader went to the origin itself"
    );
    assert!(
        eventually(Duration::from_secs(5), || access_log(&gw)
            .contains("cache=lock-timeout")),
        "{}",
        access_log(&gw)
    );
    let metrics = gw.metrics();
    for line in [
        "zkgate_cache_lock_timeouts_total{route=\"cached\"} 1",
        "zkgate_cache_requests_total{kind=\"generic\",result=\"miss\",route=\"cached\"} 2",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

/// Trap 7: a chunked body over max_object_size streams to the client whole and is not stored.
#[test]
fn a_large_chunked_body_streams_whole_and_is_not_stored() {
    let origin = Origin::start();
    let body: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    origin.set(
        "/big",
        Spec {
            chunked: true,
            body: body.clone(),
            ..ok("max-age=60", "")
        },
    );
    let gw = gateway(&origin, "{ max_object_size: 1MiB }");
    for _ in 0..2 {
        let r = gw.get("/big");
        assert_eq!(r.status, 200);
        assert!(r.body == body, "the whole body, {} bytes", r.body.len());
    }
    assert_eq!(origin.count("/big"), 2, "not stored");
}

/// Entries live in a process-lifetime store: a reload keeps them.
#[test]
fn entries_survive_a_reload() {
    let origin = Origin::start();
    origin.set("/r", ok("max-age=60", "kept"));
    let gw = gateway(&origin, "{}");
    gw.get("/r");
    let text = std::fs::read_to_string(&gw.config).expect("config");
    let marker = "  - { name: marker, match: { path: /marker }, respond: { body: reloaded } }\n";
    let routes = text.replace("routes:\n", &format!("routes:\n{marker}"));
    std::fs::write(&gw.config, routes).expect("write");
    gw.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || get(
        gw.http, "/marker"
    )
    .text()
        == "reloaded"));
    let after = gw.get("/r");
    assert!(status_of(&after).contains("hit"), "{after:?}");
    assert_eq!(origin.count("/r"), 1);
}

/// A reload whose routes no longer name a store gives its memory back (counted as `unused`
/// evictions); a later reload naming it again finds it cold and fills it again.
#[test]
fn a_store_no_route_names_after_a_reload_is_emptied_and_can_come_back() {
    let origin = Origin::start();
    origin.set("/u", ok("max-age=60", "kept"));
    let gw = gateway(&origin, "{}");
    gw.get("/u");
    assert!(status_of(&gw.get("/u")).contains("hit"));
    let with_cache = std::fs::read_to_string(&gw.config).expect("config");
    let plugin = "    plugin:\n      cache: {}\n";
    assert!(with_cache.contains(plugin), "{with_cache}");
    std::fs::write(&gw.config, with_cache.replace(plugin, "")).expect("write");
    gw.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || gw
        .get("/u")
        .header("cache-status")
        .is_none()));
    assert!(
        eventually(Duration::from_secs(10), || {
            let m = gw.metrics();
            m.contains("zkgate_cache_entries{store=\"cached\",tier=\"memory\"} 0")
                && m.contains("zkgate_cache_evictions_total{reason=\"unused\",store=\"cached\"} 1")
        }),
        "{}",
        gw.metrics()
    );
    std::fs::write(&gw.config, &with_cache).expect("write");
    gw.signal("HUP");
    // The first answer with the cache back on: the entry was not kept.
    let mut first = None;
    assert!(eventually(Duration::from_secs(10), || {
        first = gw.get("/u").header("cache-status").map(str::to_owned);
        first.is_some()
    }));
    assert_eq!(first.as_deref(), Some("zkgate; fwd=uri-miss; stored"));
    assert!(status_of(&gw.get("/u")).contains("hit"));
}
