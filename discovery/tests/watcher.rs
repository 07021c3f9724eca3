//! The watcher against a real ZooKeeper: every format, changes followed, bursts coalesced, the
//! last list kept while ZooKeeper is unreachable, paths added and dropped while it runs, and a
//! registry readable only with digest credentials.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zkgate_discovery::testkit::ZkServer;
use zkgate_discovery::{watch, Digest, Ensemble, Instance, Publish, SessionEvent};
use zookeeper_client as zk;

#[derive(Default)]
struct Seen {
    lists: Mutex<BTreeMap<String, Vec<Instance>>>,
    publishes: Mutex<usize>,
    sessions: Mutex<Vec<SessionEvent>>,
}

impl Publish for Seen {
    fn instances(&self, path: &str, instances: Vec<Instance>) {
        self.lists
            .lock()
            .unwrap()
            .insert(path.to_owned(), instances);
        *self.publishes.lock().unwrap() += 1;
    }
    fn session(&self, event: SessionEvent) {
        self.sessions.lock().unwrap().push(event);
    }
}

impl Seen {
    fn addrs(&self, path: &str) -> Vec<String> {
        let lists = self.lists.lock().unwrap();
        let mut v: Vec<String> = lists
            .get(path)
            .map(|l| {
                l.iter()
                    .map(|i| format!("{}:{} w{}", i.host, i.port, i.weight))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

async fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_every_format_and_keeps_the_last_list_through_an_outage() {
    let server = ZkServer::start();
    let client = zk::Client::connect(&server.connect_string()).await.unwrap();
    client
        .mkdir("/zkgate/services/api", &persistent())
        .await
        .unwrap();

    let seen = Arc::new(Seen::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ensemble = Ensemble::new(server.connect_string(), Duration::from_secs(2));
    let (_paths_tx, paths) = tokio::sync::watch::channel(vec![
        "/zkgate/services/api".to_owned(),
        "/real_server".to_owned(),
    ]);
    let mut server = server;
    let task = tokio::spawn(watch(ensemble, paths, seen.clone(), stop_rx));
    // Both paths are published at once, the missing one as empty.
    assert!(
        until(Duration::from_secs(10), || seen.lists.lock().unwrap().len()
            == 2)
        .await
    );
    assert!(seen.addrs("/real_server").is_empty());

    let eph = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    client
        .create(
            "/zkgate/services/api/a",
            br#"{"host":"10.0.0.1","port":80,"weight":3}"#,
            &eph,
        )
        .await
        .unwrap();
    client
        .create("/zkgate/services/api/b", br#"{"name":"api","id":"b","address":"10.0.0.2","port":81,"payload":{"metadata":{"weight":"2"}}}"#, &eph)
        .await
        .unwrap();
    client
        .create("/zkgate/services/api/junk", b"not json", &eph)
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(5), || seen
            .addrs("/zkgate/services/api")
            == ["10.0.0.1:80 w3", "10.0.0.2:81 w2"])
        .await,
        "{:?}",
        seen.addrs("/zkgate/services/api")
    );

    // The go_gateway convention: a host:port name with no data, parent created later.
    client.mkdir("/real_server", &persistent()).await.unwrap();
    client
        .create("/real_server/127.0.0.1:2003", b"", &eph)
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(5), || seen.addrs("/real_server")
            == ["127.0.0.1:2003 w1"])
        .await
    );

    // A weight change is a data change.
    client
        .set_data(
            "/zkgate/services/api/a",
            br#"{"host":"10.0.0.1","port":80,"weight":7}"#,
            None,
        )
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(5), || seen
            .addrs("/zkgate/services/api")
            .contains(&"10.0.0.1:80 w7".to_owned()))
        .await
    );

    // A burst of 50 registrations costs a handful of re-reads, not 50.
    let before = *seen.publishes.lock().unwrap();
    for i in 0..50 {
        client
            .create(
                &format!("/zkgate/services/api/n{i}"),
                format!(r#"{{"host":"10.1.0.{i}","port":80}}"#).as_bytes(),
                &eph,
            )
            .await
            .unwrap();
    }
    assert!(
        until(Duration::from_secs(5), || seen
            .addrs("/zkgate/services/api")
            .len()
            == 52)
        .await
    );
    let rereads = *seen.publishes.lock().unwrap() - before;
    assert!(rereads < 25, "{rereads} re-reads for 50 creations");

    // Deregistration of everything empties the list: that is a real answer, not an outage.
    for i in 0..50 {
        client
            .delete(&format!("/zkgate/services/api/n{i}"), None)
            .await
            .unwrap();
    }
    client.delete("/zkgate/services/api/a", None).await.unwrap();
    client.delete("/zkgate/services/api/b", None).await.unwrap();
    assert!(
        until(Duration::from_secs(5), || seen
            .addrs("/zkgate/services/api")
            .is_empty())
        .await
    );
    client
        .create(
            "/zkgate/services/api/c",
            br#"{"host":"10.0.0.3","port":80}"#,
            &persistent(),
        )
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(5), || seen
            .addrs("/zkgate/services/api")
            == ["10.0.0.3:80 w1"])
        .await
    );

    // ZooKeeper goes away for longer than the session: the last list stands, nothing is published.
    drop(client);
    let publishes = *seen.publishes.lock().unwrap();
    server.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(*seen.publishes.lock().unwrap(), publishes);
    assert_eq!(seen.addrs("/zkgate/services/api"), ["10.0.0.3:80 w1"]);
    assert!(seen
        .sessions
        .lock()
        .unwrap()
        .iter()
        .any(|e| *e == SessionEvent::Lost || *e == SessionEvent::Disconnected));

    // Back, with a change made while the watcher was away: a new session resyncs and sees it.
    server.restart();
    let client = zk::Client::connect(&server.connect_string()).await.unwrap();
    client
        .create(
            "/zkgate/services/api/d",
            br#"{"host":"10.0.0.4","port":80}"#,
            &persistent(),
        )
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(20), || seen
            .addrs("/zkgate/services/api")
            == ["10.0.0.3:80 w1", "10.0.0.4:80 w1"])
        .await,
        "{:?}\n{}",
        seen.addrs("/zkgate/services/api"),
        server.log()
    );

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("watcher stops on shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_paths_as_they_change_with_digest_credentials() {
    let server = ZkServer::start();
    let digest = Digest {
        user: "gw".into(),
        password: "pw".into(),
    };
    let mut ensemble = Ensemble::new(server.connect_string(), Duration::from_secs(4));
    ensemble.digest = Some(digest);
    // The registry is readable by the gateway's identity only.
    let owner = ensemble.connect().await.unwrap();
    let private = zk::CreateMode::Persistent.with_acls(ensemble.acls());
    owner.mkdir("/sec/services/api", &private).await.unwrap();
    owner
        .create(
            "/sec/services/api/a",
            br#"{"host":"10.0.0.1","port":80}"#,
            &private,
        )
        .await
        .unwrap();
    let anonymous = zk::Client::connect(&server.connect_string()).await.unwrap();
    assert!(matches!(
        anonymous.list_children("/sec/services/api").await,
        Err(zk::Error::NoAuth)
    ));

    let seen = Arc::new(Seen::default());
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (paths_tx, paths) = tokio::sync::watch::channel(vec!["/sec/services/api".to_owned()]);
    let _task = tokio::spawn(watch(ensemble, paths, seen.clone(), stop_rx));
    assert!(
        until(Duration::from_secs(10), || seen.addrs("/sec/services/api")
            == ["10.0.0.1:80 w1"])
        .await
    );

    // A path added while running is armed and read without a new session.
    owner.mkdir("/other", &private).await.unwrap();
    owner
        .create("/other/10.0.0.9:81", b"", &private)
        .await
        .unwrap();
    paths_tx
        .send(vec!["/other".to_owned(), "/sec/services/api".to_owned()])
        .unwrap();
    assert!(
        until(Duration::from_secs(5), || seen.addrs("/other")
            == ["10.0.0.9:81 w1"])
        .await
    );
    owner
        .create("/other/10.0.0.8:81", b"", &private)
        .await
        .unwrap();
    assert!(until(Duration::from_secs(5), || seen.addrs("/other").len() == 2).await);

    // A dropped path is no longer followed.
    paths_tx.send(vec!["/other".to_owned()]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    owner
        .create(
            "/sec/services/api/b",
            br#"{"host":"10.0.0.2","port":80}"#,
            &private,
        )
        .await
        .unwrap();
    owner
        .create("/other/10.0.0.7:81", b"", &private)
        .await
        .unwrap();
    assert!(until(Duration::from_secs(5), || seen.addrs("/other").len() == 3).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.addrs("/sec/services/api"), ["10.0.0.1:80 w1"]);
    assert!(!seen.sessions.lock().unwrap().contains(&SessionEvent::Lost));
}
