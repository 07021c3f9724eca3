//! Bridges ZooKeeper discovery into upstreams: each instance list the watcher publishes becomes
//! the backend set of every upstream that follows that path, with one atomic store. Host names
//! are resolved on the way, asynchronously and within a deadline, never on the request path and
//! never in the watcher's way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::sync::Notify;
use zkgate_discovery::resolve::{Resolved, Resolver, SystemLookup, RESOLVE_TIMEOUT};
use zkgate_discovery::{Ensemble, Instance, InstanceError, Publish, SessionEvent};

use super::Live;
use crate::metrics::METRICS;
use crate::upstream::BackendSpec;

/// How long the proxy waits for the first full read before it starts anyway (answering 503
/// for discovered upstreams until ZooKeeper is reached).
const FIRST_SYNC_LIMIT: Duration = Duration::from_secs(30);

pub struct DiscoveryService {
    shared: Arc<Live>,
    ensemble: Ensemble,
}

impl DiscoveryService {
    /// Follows the paths of the discovered upstreams, now and after every reload.
    pub fn new(shared: Arc<Live>, ensemble: Ensemble) -> DiscoveryService {
        DiscoveryService { shared, ensemble }
    }
}

struct Bridge {
    resolver: Arc<Resolver>,
    first_sync: Arc<Notify>,
}

/// The backend set of one resolved instance list.
fn specs(resolved: Vec<Resolved>) -> Vec<BackendSpec> {
    let mut specs: Vec<BackendSpec> = Vec::with_capacity(resolved.len());
    let mut at: HashMap<SocketAddr, usize> = HashMap::with_capacity(resolved.len());
    for r in resolved {
        let inst_id = inst_id(&r.instance);
        let several = r.addrs.len() > 1;
        for addr in r.addrs {
            let spec = BackendSpec {
                addr,
                weight: r.instance.weight,
                zone: r.instance.zone.as_deref().map(Arc::from),
                // The node name keys the ring; a name that resolves to several addresses
                // gives each its own point set.
                name: if several {
                    format!("{}@{addr}", r.instance.node).into()
                } else {
                    r.instance.node.as_str().into()
                },
                inst_id,
            };
            // Two registrations of one address: the later one wins.
            match at.get(&addr) {
                Some(&i) => specs[i] = spec,
                None => {
                    at.insert(addr, specs.len());
                    specs.push(spec);
                }
            }
        }
    }
    specs
}

/// The instance's metadata `inst_id`, which game rules with `strategy: instance` pick by; a
/// value that is not 0 to 255 is logged and ignored (the backend still serves other rules).
fn inst_id(instance: &Instance) -> Option<u8> {
    let text = instance.metadata.get("inst_id")?;
    match text.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            log::warn!(
                "zookeeper instance {}: metadata inst_id `{text}` is not a whole number from 0 to 255; ignored",
                instance.node
            );
            None
        }
    }
}

impl Bridge {
    fn new(shared: Arc<Live>) -> Bridge {
        let resolver = Resolver::new(
            Arc::new(SystemLookup),
            RESOLVE_TIMEOUT,
            move |path, resolved| {
                let specs = specs(resolved);
                log::info!("zookeeper {path}: {} backend(s)", specs.len());
                shared.publish(path, specs);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                METRICS.zk_last_sync.set(now as i64);
            },
        );
        Bridge {
            resolver,
            first_sync: Arc::new(Notify::new()),
        }
    }
}

impl Publish for Bridge {
    fn instances(&self, path: &str, instances: Vec<Instance>) {
        self.resolver.submit(path, instances);
    }

    fn rejected(&self, path: &str, child: &str, error: &InstanceError) {
        METRICS.zk_rejected.inc();
        log::warn!(
            "zookeeper: {path}/{child} skipped: {error} (reported again only when its data changes)"
        );
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
        let (resolver, first_sync) = (self.resolver.clone(), self.first_sync.clone());
        // Ready once the names of that read are resolved too (within their deadline).
        tokio::spawn(async move {
            resolver.idle().await;
            // A stored permit: the waiter may start waiting after this.
            first_sync.notify_one();
        });
    }
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let bridge = Arc::new(Bridge::new(self.shared.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn resolved(host: &str, weight: u32, addrs: &[&str]) -> Resolved {
        Resolved {
            instance: Instance {
                node: format!("node-{host}"),
                host: host.to_owned(),
                port: 80,
                weight,
                tls: false,
                zone: None,
                metadata: BTreeMap::new(),
            },
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn one_backend_per_address_the_later_registration_wins() {
        let specs = specs(vec![
            resolved("a.internal", 1, &["10.0.0.1:80", "10.0.0.2:80"]),
            resolved("unresolved.internal", 1, &[]),
            resolved("10.0.0.1", 5, &["10.0.0.1:80"]),
        ]);
        let got: Vec<(String, u32)> = specs
            .iter()
            .map(|s| (s.addr.to_string(), s.weight))
            .collect();
        assert_eq!(
            got,
            [("10.0.0.1:80".to_owned(), 5), ("10.0.0.2:80".to_owned(), 1)]
        );
    }

    #[test]
    fn a_discovered_backend_is_named_by_its_node_and_carries_its_inst_id() {
        let mut one = resolved("10.0.0.1", 1, &["10.0.0.1:80"]);
        one.instance.metadata.insert("inst_id".into(), "7".into());
        let mut bad = resolved("10.0.0.3", 1, &["10.0.0.3:80"]);
        bad.instance.metadata.insert("inst_id".into(), "300".into());
        let two = resolved("b.internal", 1, &["10.0.0.2:80", "10.0.0.4:80"]);
        let specs = specs(vec![one, bad, two]);
        let got: Vec<(&str, Option<u8>)> = specs.iter().map(|s| (&*s.name, s.inst_id)).collect();
        assert_eq!(
            got,
            [
                ("node-10.0.0.1", Some(7)),
                ("node-10.0.0.3", None),
                ("node-b.internal@10.0.0.2:80", None),
                ("node-b.internal@10.0.0.4:80", None),
            ]
        );
    }
}
