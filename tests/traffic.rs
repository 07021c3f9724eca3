//! Traffic management end to end: active health checks and retries hide a backend killed under
//! load, outlier ejection takes out a backend that answers 5xx and readmits it, retries after a
//! request was sent happen only for idempotent methods, a backend that never answers is cut by
//! the per-try timeout, and the load-aware balancers send less to a slow backend.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use common::*;

/// The demo backend as its own process, so that it can be killed abruptly (SIGKILL resets its
/// connections, as a crashed server's would).
fn python_backend(name: &str, port: u16) -> KillOnDrop {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo-backend.py");
    let child = Command::new("python3")
        .args([script, &port.to_string(), name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            addr
        )
        .is_ok()),
        "backend {name} did not start"
    );
    KillOnDrop(child)
}

fn backend_state(gw: &Gateway, upstream: &str, addr: SocketAddr) -> serde_json::Value {
    let all = get(gw.admin, "/upstreams").json();
    all["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["name"] == upstream)
        .flat_map(|u| u["backends"].as_array().cloned().unwrap_or_default())
        .find(|b| b["addr"] == addr.to_string())
        .unwrap_or_default()
}

fn who(gw: &Gateway, method: &str) -> (u16, String) {
    let r = request(gw.http, method, "/x", &[], b"").expect("request");
    let name = if r.status == 200 {
        r.json()["backend"].as_str().unwrap_or("").to_owned()
    } else {
        String::new()
    };
    (r.status, name)
}

#[test]
fn a_backend_killed_under_load_fails_no_request_and_is_marked_unhealthy() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut procs: Vec<Option<KillOnDrop>> = ["a", "b", "c"]
        .iter()
        .zip(&ports)
        .map(|(n, p)| Some(python_backend(n, *p)))
        .collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - name: app
    backends: [{}]
    health_check: {{ type: http, path: /healthz, interval: 300ms, timeout: 200ms, rise: 2, fall: 2 }}
routes:
  - {{ name: app, upstream: app, retry: {{ attempts: 3, after_send: true }} }}
"#,
        addrs.join(", ")
    ));
    let load = Load::start(gw.http, &["/load"], 4);
    thread::sleep(Duration::from_millis(500));
    let victim = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    drop(procs[1].take());

    // Taken out by the second failed check in a row, so within two intervals.
    assert!(
        eventually(Duration::from_secs(5), || backend_state(&gw, "app", victim)
            ["state"]
            == "unhealthy"),
        "{}",
        gw.log()
    );
    let flipped = format!("backend {victim} unhealthy after 2 failed checks");
    assert!(gw.log().contains(&flipped), "{}", gw.log());
    thread::sleep(Duration::from_millis(500));
    load.finish_without_failures(100);

    // Back on the same port: healthy again after `rise` passing checks, and it gets traffic.
    procs[1] = Some(python_backend("b", ports[1]));
    assert!(eventually(Duration::from_secs(5), || backend_state(
        &gw, "app", victim
    )["state"]
        == "active"));
    let seen: std::collections::HashSet<String> = (0..30).map(|_| who(&gw, "GET").1).collect();
    assert!(seen.contains("b"), "{seen:?}");
}

#[test]
fn a_backend_answering_5xx_is_ejected_then_readmitted() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - name: app
    backends: ["{}", "{}"]
    outlier_detection: {{ consecutive_failures: 3, base_ejection_time: 1s, max_ejection_time: 10s }}
routes:
  - {{ name: app, upstream: app }}
"#,
        a.addr, b.addr
    ));
    b.behave(Behaviour::Status(500));
    // A 5xx answer is passed on, not retried; three of them in a row eject b (counted as each
    // request ends, just after the client has its answer).
    let mut answers = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            answers.push(who(&gw, "GET").0);
            backend_state(&gw, "app", b.addr)["state"] == "ejected"
        }),
        "{answers:?}"
    );
    assert!(
        answers.iter().filter(|s| **s == 500).count() >= 3,
        "{answers:?}"
    );
    for _ in 0..10 {
        assert_eq!(who(&gw, "GET"), (200, "a".to_owned()));
    }
    assert_eq!(backend_state(&gw, "app", b.addr)["ejections"], 1);
    assert!(gw
        .metrics()
        .contains("zkgate_outlier_ejections_total{upstream=\"app\"} 1"));

    // Healed, and the ejection over: b is back in rotation.
    b.behave(Behaviour::Normal);
    assert!(eventually(Duration::from_secs(3), || backend_state(
        &gw, "app", b.addr
    )["state"]
        == "active"));
    let seen: std::collections::HashSet<String> = (0..10).map(|_| who(&gw, "GET").1).collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn only_idempotent_requests_are_retried_after_being_sent() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - {{ name: app, backends: ["{}", "{}"] }}
routes:
  - {{ name: app, upstream: app, retry: {{ attempts: 2, after_send: true, per_try_timeout: 300ms }} }}
"#,
        a.addr, b.addr
    ));
    // b takes the request and closes without an answer.
    b.behave(Behaviour::Close);
    for _ in 0..6 {
        assert_eq!(who(&gw, "GET"), (200, "a".to_owned()), "{}", gw.log());
    }
    let before = (
        a.requests.load(Ordering::SeqCst),
        b.requests.load(Ordering::SeqCst),
    );
    let mut posts = Vec::new();
    for _ in 0..6 {
        posts.push(who(&gw, "POST").0);
    }
    let sent_to_b = b.requests.load(Ordering::SeqCst) - before.1;
    let sent_to_a = a.requests.load(Ordering::SeqCst) - before.0;
    assert!(sent_to_b > 0, "round robin sends some POSTs to b");
    assert_eq!(
        posts.iter().filter(|s| **s == 502).count(),
        sent_to_b,
        "every POST that reached b failed, none was sent again: {posts:?}"
    );
    assert_eq!(sent_to_a + sent_to_b, 6, "each POST was sent once");

    // b accepts and never answers: the per-try timeout cuts it and a GET goes to a.
    b.behave(Behaviour::Hang);
    // (Without the per-try timeout these would wait 30 s, past the client's 20 s timeout.)
    for _ in 0..4 {
        assert_eq!(who(&gw, "GET"), (200, "a".to_owned()));
    }
    let hung_post = (0..4).map(|_| who(&gw, "POST").0).collect::<Vec<_>>();
    assert!(hung_post.contains(&504), "{hung_post:?}");
}

#[test]
fn load_aware_balancing_sends_less_to_a_slow_backend() {
    let (fast, slow) = (Backend::start("fast"), Backend::start("slow"));
    slow.behave(Behaviour::Delay(60));
    let mut share = HashMap::new();
    for balance in ["round_robin", "least_conn", "p2c"] {
        let gw = Gateway::start(&format!(
            "upstreams: [{{ name: app, balance: {balance}, backends: [\"{}\", \"{}\"] }}]\nroutes: [{{ name: app, upstream: app }}]\n",
            fast.addr, slow.addr
        ));
        let before = (
            fast.requests.load(Ordering::SeqCst),
            slow.requests.load(Ordering::SeqCst),
        );
        let load = Load::start(gw.http, &["/x"], 6);
        thread::sleep(Duration::from_millis(1500));
        load.finish_without_failures(20);
        let f = fast.requests.load(Ordering::SeqCst) - before.0;
        let s = slow.requests.load(Ordering::SeqCst) - before.1;
        share.insert(balance, s as f64 / (f + s) as f64);
    }
    // Round robin splits requests evenly whatever the speed; the others follow the load.
    assert!((0.4..=0.6).contains(&share["round_robin"]), "{share:?}");
    assert!(share["least_conn"] < 0.25, "{share:?}");
    assert!(share["p2c"] < 0.35, "{share:?}");
}

#[test]
fn the_circuit_opens_fails_fast_half_opens_and_closes() {
    let a = Backend::start("a");
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - name: app
    backends: ["{}"]
    circuit_breaker: {{ consecutive_failures: 3, open_for: 1s, probes: 2 }}
routes:
  - {{ name: app, upstream: app }}
"#,
        a.addr
    ));
    a.behave(Behaviour::Status(503));
    for _ in 0..3 {
        assert_eq!(who(&gw, "GET").0, 503);
    }
    // The third failure opens it (counted as the request ends, just after the client has
    // its answer). Open: answered at once, the backend sees nothing.
    assert!(eventually(Duration::from_secs(2), || get(
        gw.admin,
        "/upstreams"
    )
    .text()
    .contains("\"circuit\": \"open\"")));
    let seen = a.requests.load(Ordering::SeqCst);
    for _ in 0..5 {
        let r = gw.get("/x");
        assert_eq!(r.status, 503);
        assert!(r.text().contains("circuit open"), "{}", r.text());
    }
    assert_eq!(a.requests.load(Ordering::SeqCst), seen);

    // Healed; after open_for two probes go through, succeed, and it closes.
    a.behave(Behaviour::Normal);
    assert!(
        eventually(Duration::from_secs(5), || who(&gw, "GET").0 == 200),
        "{}",
        gw.log()
    );
    assert_eq!(who(&gw, "GET").0, 200);
    assert!(eventually(Duration::from_secs(2), || get(
        gw.admin,
        "/upstreams"
    )
    .text()
    .contains("\"circuit\": \"closed\"")));
    for _ in 0..5 {
        assert_eq!(who(&gw, "GET").0, 200);
    }
}

/// Admin writes need the config's `admin.token`.
const ADMIN_TOKEN: &str = "traffic-test-admin-token";
const AUTH: (&str, &str) = ("authorization", "Bearer traffic-test-admin-token");

#[test]
fn a_drained_backend_gets_no_new_requests_and_a_new_one_starts_slowly() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let config = |backends: &[SocketAddr]| {
        let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "admin: {{ listen: \"{{ADMIN}}\", token: {ADMIN_TOKEN} }}\nupstreams: [{{ name: app, backends: [{}], slow_start: 6s }}]\nroutes: [{{ name: app, upstream: app }}]\n",
            list.join(", ")
        )
    };
    let gw = Gateway::start(&config(&[a.addr, b.addr]));

    // Drained by hand: no new request reaches b, one already on it finishes.
    b.behave(Behaviour::Delay(600));
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let addr = gw.http;
            thread::spawn(move || get(addr, "/x"))
        })
        .collect();
    let on_b = || backend_state(&gw, "app", b.addr)["in_flight"].as_u64() > Some(0);
    assert!(
        eventually(Duration::from_secs(5), on_b),
        "no request reached b"
    );
    let drained = request(
        gw.admin,
        "POST",
        &format!("/upstreams/app/{}/drain", b.addr),
        &[AUTH],
        b"",
    )
    .unwrap();
    assert_eq!(drained.status, 200, "{}", drained.text());
    assert!(
        drained.json()["in_flight"].as_u64() > Some(0),
        "{}",
        drained.text()
    );
    for t in slow {
        assert_eq!(t.join().unwrap().status, 200);
    }
    b.behave(Behaviour::Normal);
    let before = b.requests.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(who(&gw, "GET"), (200, "a".to_owned()));
    }
    assert_eq!(b.requests.load(Ordering::SeqCst), before);
    assert_eq!(backend_state(&gw, "app", b.addr)["state"], "drained");
    let bad = request(
        gw.admin,
        "POST",
        "/upstreams/app/10.9.9.9:1/drain",
        &[AUTH],
        b"",
    )
    .unwrap();
    assert_eq!(bad.status, 404);
    let undrained = request(
        gw.admin,
        "POST",
        &format!("/upstreams/app/{}/undrain", b.addr),
        &[AUTH],
        b"",
    )
    .unwrap();
    assert_eq!(undrained.status, 200, "{}", undrained.text());

    // c joins with a 6 s slow start: at first it gets well under its even third, and all of
    // it once the window is over. a and b may still be ramping too (they joined when the
    // gateway started). Weights only grow, so c's share while counting is at most its weight
    // after counting over a's and b's before plus its own; bounding it by that, not by a fixed
    // count, keeps a slow machine from failing the test.
    gw.write_config(&config(&[a.addr, b.addr, c.addr]));
    gw.signal("HUP");
    assert!(eventually(Duration::from_secs(3), || get(
        gw.admin,
        "/upstreams"
    )
    .text()
    .contains(&c.addr.to_string())));
    let counts = |n: usize| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for _ in 0..n {
            *m.entry(who(&gw, "GET").1).or_default() += 1;
        }
        m
    };
    let weight = |addr| {
        backend_state(&gw, "app", addr)["effective_weight"]
            .as_f64()
            .expect("effective_weight")
    };
    let others = weight(a.addr) + weight(b.addr);
    let early = counts(60);
    let early_c = early.get("c").copied().unwrap_or(0);
    let weight_c = weight(c.addr);
    assert!(
        weight_c < 1.0,
        "c at full weight right after joining: {weight_c}"
    );
    let bound = (60.0 * weight_c / (others + weight_c)).ceil() as usize + 3;
    assert!(
        early_c <= bound,
        "c got {early_c} of 60 right after joining (weights: c {weight_c}, a and b {others}): {early:?}"
    );
    assert!(eventually(Duration::from_secs(12), || backend_state(
        &gw, "app", c.addr
    )["effective_weight"]
        == 1.0));
    let late = counts(60);
    assert_eq!(late.get("c").copied(), Some(20), "{late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_replacement_through_zookeeper_fails_no_request() {
    use zookeeper_client as zk;
    let server = zkgate_discovery::testkit::ZkServer::start();
    let client = zk::Client::connect(&server.connect_string()).await.unwrap();
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    client
        .mkdir("/zkgate/services/app", &persistent)
        .await
        .unwrap();
    let register = |port: u16| {
        let client = client.clone();
        let ephemeral = ephemeral.clone();
        async move {
            client
                .create(
                    &format!("/zkgate/services/app/127.0.0.1:{port}"),
                    b"",
                    &ephemeral,
                )
                .await
                .unwrap();
        }
    };
    let mut old = Vec::new();
    for name in ["old-1", "old-2", "old-3"] {
        let port = free_port();
        old.push((port, python_backend(name, port)));
        register(port).await;
    }
    let gw = Gateway::start(&format!(
        r#"
zookeeper: {{ connect: "{}" }}
upstreams:
  - name: app
    zookeeper: {{ service: app }}
    balance: least_conn
    health_check: {{ interval: 500ms, timeout: 300ms }}
routes:
  - {{ name: app, upstream: app, retry: {{ after_send: true }} }}
"#,
        server.connect_string()
    ));
    let load = Load::start(gw.http, &["/load"], 4);
    let mut new = Vec::new();
    for (i, (old_port, old_proc)) in old.into_iter().enumerate() {
        // Register the replacement, deregister the old one, let its requests finish, stop it.
        let port = free_port();
        new.push(python_backend(&format!("new-{i}"), port));
        register(port).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        client
            .delete(&format!("/zkgate/services/app/127.0.0.1:{old_port}"), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(old_proc);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load.finish_without_failures(100);
    let seen: std::collections::HashSet<String> = (0..12).map(|_| who(&gw, "GET").1).collect();
    assert!(seen.iter().all(|n| n.starts_with("new-")), "{seen:?}");
}

#[test]
fn the_route_timeout_bounds_every_try_together() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    a.behave(Behaviour::Hang);
    b.behave(Behaviour::Hang);
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - {{ name: app, backends: ["{}", "{}"] }}
routes:
  - {{ name: app, upstream: app, timeout: 500ms, retry: {{ attempts: 5, after_send: true, per_try_timeout: 300ms }} }}
"#,
        a.addr, b.addr
    ));
    // 300 ms on one, the 200 ms left on the other, then no time for a third try.
    let r = gw.get("/x");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("route's timeout passed"), "{}", r.text());
    assert_eq!(
        a.requests.load(Ordering::SeqCst) + b.requests.load(Ordering::SeqCst),
        2
    );
}

#[test]
fn traffic_stays_in_the_gateway_zone_while_enough_of_it_is_healthy() {
    let (a1, a2, b1) = (
        Backend::start("a1"),
        Backend::start("a2"),
        Backend::start("b1"),
    );
    let gw = Gateway::start(&format!(
        r#"
server: {{ threads: 2, grace_period: 1s, graceful_shutdown_timeout: 1s, zone: a }}
upstreams:
  - name: app
    backends: ["{} zone=a", "{} zone=a", "{} zone=b"]
    outlier_detection: {{ consecutive_failures: 1, base_ejection_time: 30s, max_ejected_percent: 100 }}
routes:
  - {{ name: app, upstream: app }}
"#,
        a1.addr, a2.addr, b1.addr
    ));
    let names = |n: usize| -> std::collections::HashSet<String> {
        (0..n).map(|_| who(&gw, "GET").1).collect()
    };
    assert_eq!(names(20), ["a1", "a2"].map(String::from).into());

    // One of two in zone a out: half are left, which is still enough (50%).
    a1.behave(Behaviour::Status(500));
    assert!(eventually(Duration::from_secs(3), || {
        who(&gw, "GET");
        backend_state(&gw, "app", a1.addr)["state"] == "ejected"
    }));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(names(20), ["a2"].map(String::from).into());

    // Both out: traffic spreads to the other zone.
    a2.behave(Behaviour::Status(500));
    assert!(eventually(Duration::from_secs(3), || {
        who(&gw, "GET");
        backend_state(&gw, "app", a2.addr)["state"] == "ejected"
    }));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(names(20), ["b1"].map(String::from).into());
}

#[test]
fn the_client_address_comes_from_forwarded_for_only_behind_trusted_proxies() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = |trusted: &str| {
        format!(
            "client_ip: {{ trusted_proxies: [{trusted}] }}\nupstreams: [{{ name: app, balance: consistent_hash, hash_key: client_ip, backends: [\"{}\", \"{}\"] }}]\nroutes: [{{ name: app, upstream: app }}]\n",
            a.addr, b.addr
        )
    };
    let backends_for = |gw: &Gateway| -> std::collections::HashSet<String> {
        (0..40)
            .map(|i| {
                let xff = format!("198.51.100.{i}");
                let r = request(gw.http, "GET", "/x", &[("x-forwarded-for", &xff)], b"").unwrap();
                r.json()["backend"].as_str().unwrap_or("").to_owned()
            })
            .collect()
    };
    // The test client connects from 127.0.0.1: trusted, its header names the client.
    let trusting = Gateway::start(&config("127.0.0.0/8"));
    assert_eq!(backends_for(&trusting).len(), 2);
    // Not trusted: the header is ignored, every request is the same client.
    let wary = Gateway::start(&config("10.0.0.0/8"));
    assert_eq!(backends_for(&wary).len(), 1);
    let bad = wary.dir.path().join("bad.yaml");
    std::fs::write(&bad, config("\"10.0.0.0/40\"")).unwrap();
    let (_, stderr) = check(&bad);
    assert!(stderr.contains("client_ip.trusted_proxies[0]"), "{stderr}");
}

#[test]
fn rate_limits_answer_429_per_key_and_in_flight_caps_answer_503() {
    let a = Backend::start("a");
    let gw = Gateway::start(&format!(
        r#"
upstreams: [{{ name: app, backends: ["{}"] }}]
routes:
  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: app, max_in_flight: 2 }}
  - {{ name: app, upstream: app, rate_limit: {{ per_second: 0.5, burst: 3, key: "header:x-user" }} }}
"#,
        a.addr
    ));
    let as_user =
        |user: &str| request(gw.http, "GET", "/x", &[("x-user", user)], b"").expect("request");
    for _ in 0..3 {
        assert_eq!(as_user("alice").status, 200);
    }
    let refused = as_user("alice");
    assert_eq!(refused.status, 429);
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry), "{retry}");
    // Another key has a bucket of its own.
    assert_eq!(as_user("bob").status, 200);
    assert!(gw
        .metrics()
        .contains("zkgate_requests_limited_total{reason=\"rate\",route=\"app\"} 1"));

    // Two requests in flight on /slow at most: the third at the same time gets 503.
    a.behave(Behaviour::Delay(600));
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = gw.http;
            thread::spawn(move || get(addr, "/slow"))
        })
        .collect();
    let both = || gw.in_flight() == [("slow".to_owned(), 2)];
    assert!(
        eventually(Duration::from_secs(10), both),
        "{:?}",
        gw.in_flight()
    );
    let third = gw.get("/slow");
    assert_eq!(third.status, 503, "{}", third.text());
    assert!(third.text().contains("in flight"));
    for t in slow {
        assert_eq!(t.join().unwrap().status, 200);
    }
    a.behave(Behaviour::Normal);
    // A slot comes back after its answer is written, so maybe after the client has read it.
    let none = || gw.in_flight() == [("slow".to_owned(), 0)];
    assert!(
        eventually(Duration::from_secs(10), none),
        "{:?}",
        gw.in_flight()
    );
    assert_eq!(gw.get("/slow").status, 200, "the slots were given back");
}
