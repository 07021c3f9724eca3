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
    // A 5xx answer is passed on, not retried; three of them in a row eject b.
    let mut statuses = HashMap::new();
    for _ in 0..12 {
        *statuses.entry(who(&gw, "GET").0).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&500), Some(&3), "{statuses:?}");
    let state = backend_state(&gw, "app", b.addr);
    assert_eq!(state["state"], "ejected", "{state}");
    assert_eq!(state["ejections"], 1);
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
