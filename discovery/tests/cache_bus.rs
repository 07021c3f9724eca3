//! The cache bus against a real ZooKeeper: epochs and bans written by one replica reach the
//! others, a burst is written whole, a replica that starts later reads every epoch, and a
//! session lost while ZooKeeper is down is reported, then every epoch read again.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zkgate_discovery::cache_bus::{self, Ban, EpochSink};
use zkgate_discovery::testkit::ZkServer;
use zkgate_discovery::{Ensemble, SessionEvent};
use zookeeper_client as zk;

#[derive(Default)]
struct Seen {
    /// tag -> (ms, origin, live)
    epochs: Mutex<BTreeMap<u64, (u64, String, bool)>>,
    bans: Mutex<Vec<(Ban, u64, String)>>,
    sessions: Mutex<Vec<SessionEvent>>,
    synced: Mutex<usize>,
    /// What `forget_before` answers (0: nothing is forgotten).
    forget_before: std::sync::atomic::AtomicU64,
}

impl EpochSink for Seen {
    fn epoch(&self, tag: u64, ms: u64, origin: &str, live: bool) {
        self.epochs
            .lock()
            .unwrap()
            .insert(tag, (ms, origin.to_owned(), live));
    }
    fn ban(&self, ban: &Ban, ms: u64, origin: &str) {
        self.bans
            .lock()
            .unwrap()
            .push((ban.clone(), ms, origin.to_owned()));
    }
    fn session(&self, event: SessionEvent) {
        self.sessions.lock().unwrap().push(event);
    }
    fn synced(&self) {
        *self.synced.lock().unwrap() += 1;
    }
    fn forget_before(&self, _now_ms: u64) -> Option<u64> {
        match self
            .forget_before
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            ms => Some(ms),
        }
    }
    fn prune_every(&self) -> Duration {
        Duration::from_millis(200)
    }
}

impl Seen {
    fn epoch(&self, tag: u64) -> Option<(u64, String, bool)> {
        self.epochs.lock().unwrap().get(&tag).cloned()
    }
    fn synced(&self) -> usize {
        *self.synced.lock().unwrap()
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

fn replica(server: &ZkServer, name: &str, session: Duration) -> (cache_bus::CacheBus, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let ensemble = Ensemble::new(server.connect_string(), session);
    let bus = cache_bus::start(ensemble, "/zkgate", "o2", name.to_owned(), seen.clone()).unwrap();
    (bus, seen)
}

/// Replicas `a` and `b`, once each has read every epoch.
async fn two_synced(server: &ZkServer) -> (Replica, Replica) {
    let (a, seen_a) = replica(server, "a", Duration::from_secs(4));
    let (b, seen_b) = replica(server, "b", Duration::from_secs(4));
    assert!(
        until(Duration::from_secs(10), || seen_a.synced() == 1
            && seen_b.synced() == 1)
        .await
    );
    ((a, seen_a), (b, seen_b))
}

type Replica = (cache_bus::CacheBus, Arc<Seen>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_and_bans_reach_every_replica() {
    let server = ZkServer::start();
    let ((a, seen_a), (_b, seen_b)) = two_synced(&server).await;
    assert!(a.healthy());

    a.publish(&[1, 0xdead_beef], 1_000);
    assert!(
        until(Duration::from_secs(10), || seen_b
            .epoch(0xdead_beef)
            .is_some()
            && seen_b.epoch(1).is_some())
        .await
    );
    assert_eq!(seen_b.epoch(1), Some((1_000, "a".to_owned(), true)));
    // The writer sees its own write too (the cache ignores its own origin's purge).
    assert!(until(Duration::from_secs(10), || seen_a.epoch(1).is_some()).await);

    // A newer epoch of a tag that has a node: set, not created.
    a.publish(&[1], 2_000);
    assert!(
        until(Duration::from_secs(10), || seen_b.epoch(1).map(|e| e.0)
            == Some(2_000))
        .await
    );

    // A burst of 300 notifications (more tags than one multi-op holds) arrives whole.
    for i in 0..300u64 {
        a.publish(&[10_000 + i], 3_000 + i);
    }
    assert!(
        until(Duration::from_secs(20), || (0..300u64)
            .all(
                |i| seen_b.epoch(10_000 + i).map(|e| e.0) == Some(3_000 + i)
            ))
        .await,
        "{} of 300",
        (0..300u64)
            .filter(|i| seen_b.epoch(10_000 + i).is_some())
            .count()
    );
    let client = zk::Client::connect(&server.connect_string()).await.unwrap();
    let (data, _) = client
        .get_data(&format!("/zkgate/cache/o2/epochs/{:016x}", 0xdead_beefu64))
        .await
        .unwrap();
    let node: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(node, serde_json::json!({"ms": 1000, "origin": "a"}));

    a.publish_ban(
        Ban::Prefix("/o2ims-infrastructureInventory/v2/resourcePools".into()),
        5_000,
    );
    assert!(
        until(Duration::from_secs(10), || !seen_b
            .bans
            .lock()
            .unwrap()
            .is_empty())
        .await
    );
    assert_eq!(
        seen_b.bans.lock().unwrap()[0],
        (
            Ban::Prefix("/o2ims-infrastructureInventory/v2/resourcePools".into()),
            5_000,
            "a".to_owned()
        )
    );

    // A replica started later reads every epoch and ban (not live).
    let (_c, seen_c) = replica(&server, "c", Duration::from_secs(4));
    assert!(until(Duration::from_secs(10), || seen_c.synced() == 1).await);
    assert_eq!(seen_c.epoch(1), Some((2_000, "a".to_owned(), false)));
    assert_eq!(seen_c.epochs.lock().unwrap().len(), 302);
    assert_eq!(seen_c.bans.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_is_reported_and_epochs_reread() {
    let mut server = ZkServer::start();
    let (a, seen_a) = replica(&server, "a", Duration::from_secs(2));
    let (b, seen_b) = replica(&server, "b", Duration::from_secs(2));
    assert!(
        until(Duration::from_secs(10), || seen_a.synced() == 1
            && seen_b.synced() == 1)
        .await
    );

    server.kill();
    assert!(until(Duration::from_secs(10), || !a.healthy()).await);
    // Published while ZooKeeper is down: kept and written once it is back.
    a.publish(&[7], 7_000);
    // Past the session timeout, so the sessions expire rather than resume.
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.restart();

    assert!(
        until(Duration::from_secs(20), || seen_b
            .sessions
            .lock()
            .unwrap()
            .contains(&SessionEvent::Lost))
        .await,
        "{:?}",
        seen_b.sessions.lock().unwrap()
    );
    assert!(
        until(Duration::from_secs(20), || seen_b.synced() >= 2
            && b.healthy())
        .await
    );
    assert!(
        until(Duration::from_secs(20), || seen_b.epoch(7).map(|e| e.0)
            == Some(7_000))
        .await
    );
    assert!(a.healthy());
}

/// Epochs and bans older than what the sink needs are deleted from ZooKeeper; newer ones stay,
/// and a tag whose node was pruned is written again (created) by its next publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_epochs_and_bans_are_pruned_and_newer_ones_kept() {
    let server = ZkServer::start();
    let ((a, _), (_b, seen_b)) = two_synced(&server).await;
    a.publish(&[1, 2], 1_000);
    a.publish(&[3], 5_000);
    a.publish_ban(Ban::Prefix("/old".into()), 1_000);
    a.publish_ban(Ban::Prefix("/new".into()), 5_000);
    assert!(
        until(Duration::from_secs(10), || seen_b.epoch(3).is_some()
            && seen_b.bans.lock().unwrap().len() == 2)
        .await
    );
    let zk = zk::Client::connect(&server.connect_string()).await.unwrap();
    let children = |dir: &'static str| {
        let zk = zk.clone();
        async move {
            let (mut c, _) = zk
                .get_children(&format!("/zkgate/cache/o2/{dir}"))
                .await
                .unwrap();
            c.sort();
            c
        }
    };
    assert_eq!(children("epochs").await.len(), 3);
    // Replica b alone forgets what is older than 3 s: epochs 1 and 2 and the first ban go.
    seen_b
        .forget_before
        .store(3_000, std::sync::atomic::Ordering::Relaxed);
    let mut left = Vec::new();
    for _ in 0..100 {
        left = children("epochs").await;
        if left.len() == 1 && children("bans").await.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, vec![format!("{:016x}", 3u64)]);
    assert_eq!(children("bans").await.len(), 1, "the newer ban stays");
    // A pruned tag published again is created anew and reaches the other replica.
    a.publish(&[1], 9_000);
    assert!(
        until(Duration::from_secs(10), || seen_b.epoch(1).map(|e| e.0)
            == Some(9_000))
        .await
    );
    assert_eq!(children("epochs").await.len(), 2);
}
