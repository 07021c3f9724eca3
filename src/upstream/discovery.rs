//! Bridges ZooKeeper discovery into upstreams: each instance list the watcher publishes becomes
//! the backend set of every upstream that follows that path, with one atomic store.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::sync::Notify;
use zkgate_discovery::{Ensemble, Instance, InstanceError, Publish, SessionEvent};

use super::BackendSpec;
use crate::live::Shared;
use crate::metrics::METRICS;

/// How long the proxy waits for the first full read before it starts anyway (answering 503
/// for discovered upstreams until ZooKeeper is reached).
const FIRST_SYNC_LIMIT: Duration = Duration::from_secs(30);

pub struct DiscoveryService {
    shared: Shared,
    ensemble: Ensemble,
}

impl DiscoveryService {
    /// Follows the paths of the discovered upstreams, now and after every reload.
    pub fn new(shared: Shared, ensemble: Ensemble) -> DiscoveryService {
        DiscoveryService { shared, ensemble }
    }
}

struct Bridge {
    shared: Shared,
    first_sync: Notify,
}

/// An instance's address; host names are resolved here, on the discovery thread, never on the
/// request path.
fn resolve(i: &Instance) -> Vec<SocketAddr> {
    if let Ok(ip) = i.host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, i.port)];
    }
    match (i.host.as_str(), i.port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            log::warn!(
                "zookeeper: cannot resolve {}:{}, skipped: {e}",
                i.host,
                i.port
            );
            Vec::new()
        }
    }
}

impl Publish for Bridge {
    fn instances(&self, path: &str, instances: Vec<Instance>) {
        let mut specs: Vec<BackendSpec> = Vec::with_capacity(instances.len());
        for i in &instances {
            for addr in resolve(i) {
                // Two registrations of one address: the later one wins.
                specs.retain(|s| s.addr != addr);
                specs.push(BackendSpec {
                    addr,
                    weight: i.weight,
                    zone: i.zone.as_deref().map(Arc::from),
                });
            }
        }
        log::info!("zookeeper {path}: {} backend(s)", specs.len());
        self.shared.publish(path, specs);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        METRICS.zk_last_sync.set(now as i64);
    }

    fn rejected(&self, path: &str, child: &str, error: &InstanceError) {
        METRICS.zk_rejected.inc();
        log::warn!("zookeeper: {path}/{child} skipped: {error}");
    }

    fn session(&self, event: SessionEvent) {
        match event {
            SessionEvent::Connected => METRICS.zk_connected.set(1),
            SessionEvent::Disconnected => METRICS.zk_connected.set(0),
            SessionEvent::Lost => {
                METRICS.zk_connected.set(0);
                METRICS.zk_sessions_lost.inc();
            }
        }
    }

    fn synced(&self, took: Duration) {
        METRICS.zk_full_sync.set(took.as_secs_f64());
        // A stored permit: the waiter may start waiting after this.
        self.first_sync.notify_one();
    }
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let bridge = Arc::new(Bridge {
            shared: self.shared.clone(),
            first_sync: Notify::new(),
        });
        let waiter = bridge.clone();
        let connect = self.ensemble.connect.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(FIRST_SYNC_LIMIT, waiter.first_sync.notified())
                .await
                .is_err()
            {
                log::error!(
                    "zookeeper {connect}: no full read after {FIRST_SYNC_LIMIT:?}; accepting traffic anyway, discovered upstreams answer 503 until it succeeds"
                );
            }
            ready.notify_ready();
        });
        let paths = self.shared.paths();
        zkgate_discovery::watch(self.ensemble.clone(), paths, bridge, shutdown).await
    }
}
