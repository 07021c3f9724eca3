//! End to end with a real ZooKeeper: upstreams follow registrations in every format under
//! continuous traffic, the proxy starts only after the first read, a deregistration of
//! everything empties the upstream, a reload adds followed paths, and neither a leader fail-over
//! nor a whole-ensemble outage fails a request. A member killed in the middle of a read of 3,000
//! instances costs a reconnect, not the session, and junk nodes are reported once however often
//! they are read. A failing test prints the gateway's log; the ZooKeeper servers keep theirs.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use zkgate_discovery::testkit::ZkServer;
use zookeeper_client as zk;

fn who(gw: &Gateway, target: &str) -> Option<String> {
    let r = gw.get(target);
    (r.status == 200).then(|| r.json()["backend"].as_str().unwrap_or("").to_owned())
}

fn seen_backends(gw: &Gateway, target: &str, n: usize) -> HashSet<String> {
    (0..n).filter_map(|_| who(gw, target)).collect()
}

fn names(list: &[&str]) -> HashSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn native(addr: SocketAddr, weight: u32) -> Vec<u8> {
    format!(
        r#"{{"host":"{}","port":{},"weight":{weight}}}"#,
        addr.ip(),
        addr.port()
    )
    .into_bytes()
}

/// Prints the gateway's log when the test fails (the ZooKeeper servers keep theirs, see
/// `testkit`). Declared after the gateway, so it runs before the gateway's directory goes.
struct LogOnFailure(PathBuf);

impl LogOnFailure {
    fn of(gw: &Gateway) -> LogOnFailure {
        LogOnFailure(gw.dir.path().join("zkgate.log"))
    }
}

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- gateway log {}:\n{}",
                self.0.display(),
                std::fs::read_to_string(&self.0).unwrap_or_default()
            );
        }
    }
}

/// The value of the metric line starting with `name ` (no labels), if any.
fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// A client on `connect`, with `instances` registered under /zkgate/services/api as persistent
/// native-JSON nodes.
async fn registry(connect: &str, instances: &[(&str, SocketAddr)]) -> zk::Client {
    let client = zk::Client::connect(connect).await.unwrap();
    client
        .mkdir("/zkgate/services/api", &persistent())
        .await
        .unwrap();
    for (name, addr) in instances {
        client
            .create(
                &format!("/zkgate/services/api/{name}"),
                &native(*addr, 1),
                &persistent(),
            )
            .await
            .unwrap();
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_follow_registrations_in_every_format_without_failed_requests() {
    let server = ZkServer::start();
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let client = registry(&server.connect_string(), &[]).await;
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    client.mkdir("/real_server", &persistent()).await.unwrap();
    // Registered before the gateway starts: its very first request must find it.
    client
        .create("/zkgate/services/api/a", &native(a.addr, 1), &ephemeral)
        .await
        .unwrap();

    let gw = Gateway::start(&format!(
        r#"
zookeeper: {{ connect: "{}", session_timeout: 3s }}
upstreams:
  - {{ name: api, zookeeper: {{ service: api }} }}
  - {{ name: legacy, zookeeper: {{ path: /real_server }} }}
routes:
  - {{ name: api, match: {{ path_prefix: /api/ }}, upstream: api }}
  - {{ name: legacy, match: {{ path_prefix: /legacy/ }}, upstream: legacy }}
"#,
        server.connect_string()
    ));
    let _log = LogOnFailure::of(&gw);
    assert_eq!(who(&gw, "/api/x").as_deref(), Some("a"), "{}", gw.log());
    assert_eq!(
        gw.get("/legacy/x").status,
        503,
        "nothing registered under /real_server yet"
    );

    // Continuous traffic on /api/ while its membership changes.
    let load = Load::start(gw.http, &["/api/load"], 3);

    // Curator ServiceInstance (Spring Cloud Zookeeper) joins.
    let curator = format!(
        r#"{{"name":"api","id":"b","address":"{}","port":{},"payload":{{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance","metadata":{{"instance_status":"UP"}}}}}}"#,
        b.addr.ip(),
        b.addr.port()
    );
    client
        .create("/zkgate/services/api/b", curator.as_bytes(), &ephemeral)
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || seen_backends(
        &gw, "/api/x", 10
    ) == names(&[
        "a", "b"
    ])));

    // a leaves while requests are in flight on it: they finish, and no new one reaches a.
    // Round robin over two backends (shared with the load) puts some of ten concurrent
    // requests on a; all ten landing on b has odds of about 1 in 1000.
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let addr = gw.http;
            thread::spawn(move || get(addr, "/api/delay/800"))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.delete("/zkgate/services/api/a", None).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || seen_backends(
        &gw, "/api/x", 10
    ) == names(&["b"])));
    let finished: HashSet<String> = slow
        .into_iter()
        .map(|t| {
            let r = t.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["backend"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    assert!(
        finished.contains("a"),
        "no in-flight request finished on a: {finished:?}"
    );
    client
        .create("/zkgate/services/api/c", &native(c.addr, 0), &ephemeral)
        .await
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        seen_backends(&gw, "/api/x", 10),
        names(&["b"]),
        "weight 0 must not be picked"
    );
    client
        .set_data("/zkgate/services/api/c", &native(c.addr, 1), None)
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || seen_backends(
        &gw, "/api/x", 10
    ) == names(&[
        "b", "c"
    ])));

    // 102 more membership changes in a row, cycling through the three formats.
    let curator_a = format!(
        r#"{{"name":"api","id":"a","address":"{}","port":{},"payload":{{"metadata":{{"weight":"2"}}}}}}"#,
        a.addr.ip(),
        a.addr.port()
    );
    let formats: [(String, Vec<u8>); 3] = [
        ("/zkgate/services/api/a".into(), native(a.addr, 1)),
        (
            "/zkgate/services/api/a-curator".into(),
            curator_a.into_bytes(),
        ),
        (format!("/zkgate/services/api/{}", a.addr), Vec::new()),
    ];
    for i in 0..102 {
        let (node, data) = &formats[(i / 2) % 3];
        if i % 2 == 0 {
            client.create(node, data, &ephemeral).await.unwrap();
        } else {
            client.delete(node, None).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    load.finish_without_failures(50);

    // The go_gateway convention: a host:port node with no data.
    client
        .create(&format!("/real_server/{}", a.addr), b"", &ephemeral)
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || who(&gw, "/legacy/x")
        .as_deref()
        == Some("a")));

    // Every instance deregistered: a real, empty answer (503), unlike an outage.
    for node in ["b", "c"] {
        client
            .delete(&format!("/zkgate/services/api/{node}"), None)
            .await
            .unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || gw
        .get("/api/x")
        .status
        == 503));
    let metrics = gw.metrics();
    assert!(
        metrics.contains("zkgate_zookeeper_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zkgate_upstream_backends{upstream=\"legacy\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_ensemble_leader_under_load_fails_nothing_and_keeps_the_session() {
    let mut ensemble = zkgate_discovery::testkit::ZkEnsemble::start();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    registry(&ensemble.connect_string(), &[("a", a.addr)]).await;
    let gw = Gateway::start(&format!(
        "zookeeper: {{ connect: \"{}\", session_timeout: 6s }}\nupstreams: [{{ name: api, zookeeper: {{ service: api }} }}]\nroutes: [{{ name: api, upstream: api }}]\n",
        ensemble.connect_string()
    ));
    let _log = LogOnFailure::of(&gw);
    assert_eq!(who(&gw, "/x").as_deref(), Some("a"));

    let load = Load::start(gw.http, &["/load"], 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = ensemble.leader().expect("a leader");
    ensemble.nodes[leader].kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ensemble.leader().is_none_or(|l| l == leader) {
        assert!(Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Discovery still follows changes after the fail-over.
    let client = zk::Client::connect(&ensemble.connect_string())
        .await
        .unwrap();
    client
        .create("/zkgate/services/api/b", &native(b.addr, 1), &persistent())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || seen_backends(&gw, "/x", 10)
            == names(&["a", "b"])),
        "{}",
        gw.log()
    );
    load.finish_without_failures(50);
    let metrics = gw.metrics();
    assert!(
        metrics.contains("zkgate_zookeeper_sessions_lost_total 0"),
        "the session did not survive:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_add_followed_paths_and_an_outage_keeps_the_last_backends() {
    let mut server = ZkServer::start();
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let client = registry(&server.connect_string(), &[("a", a.addr)]).await;
    let config = |extra: &str| {
        format!(
            "zookeeper: {{ connect: \"{}\", session_timeout: 2s }}\nupstreams:\n  - {{ name: api, zookeeper: {{ service: api }} }}\n{extra}routes:\n  - {{ name: new, match: {{ path_prefix: /new/ }}, upstream: {} }}\n  - {{ name: api, upstream: api }}\n",
            server.connect_string(),
            if extra.is_empty() { "api" } else { "new" }
        )
    };
    let gw = Gateway::start(&config(""));
    let _log = LogOnFailure::of(&gw);
    assert_eq!(who(&gw, "/x").as_deref(), Some("a"));

    // A reload brings an upstream on a path nobody watched yet: it is followed at once.
    client
        .create("/zkgate/services/new", b"", &persistent())
        .await
        .unwrap();
    client
        .create("/zkgate/services/new/b", &native(b.addr, 1), &persistent())
        .await
        .unwrap();
    gw.write_config(&config("  - { name: new, zookeeper: { service: new } }\n"));
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || who(&gw, "/new/x").as_deref()
            == Some("b")),
        "{}",
        gw.log()
    );

    // ZooKeeper is gone for longer than the session timeout, under load: every request is
    // still served by the last known backends.
    let load = Load::start(gw.http, &["/load", "/new/load"], 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metrics()
            .contains("zkgate_zookeeper_connected 0")),
        "{}",
        gw.log()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ready = get(gw.admin, "/readyz");
    assert_eq!(
        ready.status, 200,
        "an outage must not take the gateway out of rotation"
    );
    assert_eq!(
        ready.json()["zookeeper"]["connected"],
        false,
        "{}",
        ready.text()
    );
    assert!(ready.json()["zookeeper"]["last_sync_unix"].as_i64() > Some(0));
    assert_eq!(seen_backends(&gw, "/x", 5), names(&["a"]));

    // Back, with a change made before the gateway reconnects: the resync finds it.
    server.restart();
    let client = zk::Client::connect(&server.connect_string()).await.unwrap();
    client
        .create("/zkgate/services/api/c", &native(c.addr, 1), &persistent())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || seen_backends(&gw, "/x", 10)
            == names(&["a", "c"])),
        "{}",
        gw.log()
    );
    assert_eq!(who(&gw, "/new/x").as_deref(), Some("b"));
    load.finish_without_failures(50);
    assert!(gw.metrics().contains("zkgate_zookeeper_connected 1"));
}

/// The address of instance `i` of the big service: distinct loopback addresses nothing listens
/// on (the test reads the set, it sends no traffic there).
fn big_addr(i: usize) -> String {
    format!("127.0.{}.{}:8000", 1 + i / 250, 1 + i % 250)
}

fn big_instance(i: usize, weight: u32) -> Vec<u8> {
    let addr: SocketAddr = big_addr(i).parse().unwrap();
    native(addr, weight)
}

/// The addresses of upstream `name`, from the admin API.
fn upstream_addrs(gw: &Gateway, name: &str) -> HashSet<String> {
    let r = get(gw.admin, "/upstreams");
    r.json()["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["name"] == name)
        .flat_map(|u| u["backends"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["addr"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_connected_member_during_a_read_of_3000_instances_keeps_the_session() {
    const N: usize = 3_000;
    const JUNK: usize = 50;
    let mut ensemble = zkgate_discovery::testkit::ZkEnsemble::start();
    let client = registry(&ensemble.connect_string(), &[]).await;
    // Sent at once and answered in order: a few round trips per chunk, not one per node.
    let opts = persistent();
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        let nodes: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|&i| (format!("/zkgate/services/api/n{i:04}"), big_instance(i, 1)))
            .collect();
        let pending: Vec<_> = nodes
            .iter()
            .map(|(path, data)| client.create(path, data, &opts))
            .collect();
        for p in pending {
            p.await.unwrap();
        }
    }
    for j in 0..JUNK {
        client
            .create(
                &format!("/zkgate/services/api/junk{j:02}"),
                b"not json",
                &persistent(),
            )
            .await
            .unwrap();
    }
    let gw = Gateway::start(&format!(
        "zookeeper: {{ connect: \"{}\", session_timeout: 6s }}\nupstreams: [{{ name: api, zookeeper: {{ service: api }} }}]\nroutes: [{{ name: api, upstream: api }}]\n",
        ensemble.connect_string()
    ));
    let _log = LogOnFailure::of(&gw);
    let mut want: HashSet<String> = (0..N).map(big_addr).collect();
    assert!(
        eventually(Duration::from_secs(10), || upstream_addrs(&gw, "api")
            == want),
        "the first read did not give the {N} instances"
    );

    // Keeps the gateway re-reading the whole service: one node's data changes every few
    // milliseconds, much sooner than a read of 3,050 nodes takes, so a read is nearly always
    // under way.
    let churn = Arc::new(AtomicBool::new(true));
    let writer = {
        let (client, churn) = (client.clone(), churn.clone());
        tokio::spawn(async move {
            let mut weight = 1;
            while churn.load(Ordering::SeqCst) {
                weight = 3 - weight;
                // A write may fail while its own server is the one killed: try the next one.
                let _ = client
                    .set_data("/zkgate/services/api/n0000", &big_instance(0, weight), None)
                    .await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Kill the member the gateway talks to. Should a kill fall between two reads (it then
    // tests nothing new), bring that member back and kill the next connected one: up to 5 times.
    let retried = |gw: &Gateway| gw.log().matches("but the session stands").count();
    let mut hit = false;
    for _ in 0..5 {
        let member = ensemble
            .connected_member(gw.child.id())
            .expect("the gateway is connected to a member");
        ensemble.nodes[member].kill();
        hit = eventually(Duration::from_secs(5), || retried(&gw) > 0);
        eprintln!("killed member {member}; a read was under way: {hit}");
        assert!(
            eventually(Duration::from_secs(20), || gw
                .metrics()
                .contains("zkgate_zookeeper_connected 1")
                && ensemble.connected_member(gw.child.id()).is_some()),
            "the gateway did not reconnect"
        );
        ensemble.nodes[member].restart();
        if hit {
            break;
        }
    }
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, "zkgate_zookeeper_sessions_lost_total"),
        Some(0.0),
        "the session did not survive:\n{metrics}"
    );
    assert!(hit, "no kill fell during a read in 5 tries");
    churn.store(false, Ordering::SeqCst);
    writer.await.unwrap();

    // Still following: a deregistration and a registration after the reconnect show up.
    client
        .delete(&format!("/zkgate/services/api/n{:04}", N - 1), None)
        .await
        .unwrap();
    client
        .create(
            "/zkgate/services/api/extra",
            &big_instance(N, 1),
            &persistent(),
        )
        .await
        .unwrap();
    want.remove(&big_addr(N - 1));
    want.insert(big_addr(N));
    assert!(
        eventually(Duration::from_secs(15), || upstream_addrs(&gw, "api")
            == want),
        "the set is not right after the reconnect: {} addresses",
        upstream_addrs(&gw, "api").len()
    );
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, "zkgate_zookeeper_sessions_lost_total"),
        Some(0.0),
        "the session did not survive:\n{metrics}"
    );
    // Dozens of re-reads and a reconnect later, each junk node was reported once.
    assert_eq!(
        metric(&metrics, "zkgate_zookeeper_rejected_instances_total"),
        Some(JUNK as f64),
        "{metrics}"
    );
    assert_eq!(gw.log().matches("/junk").count(), JUNK);
    // New data on a junk node is a new version: reported once more.
    client
        .set_data("/zkgate/services/api/junk00", b"still not json", None)
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || metric(
        &gw.metrics(),
        "zkgate_zookeeper_rejected_instances_total"
    ) == Some(
        JUNK as f64 + 1.0
    )));
}
