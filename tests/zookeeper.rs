//! End to end with a real ZooKeeper: upstreams follow registrations in every format under
//! continuous traffic, the proxy starts only after the first read, a deregistration of
//! everything empties the upstream, a reload adds followed paths, and neither a leader fail-over
//! nor a whole-ensemble outage fails a request.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
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
