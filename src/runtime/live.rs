//! The running state: the snapshot requests read, and the instance lists discovery last
//! published per ZooKeeper path. Reloads and discovery both write through here, under one lock,
//! so a snapshot a reload installs always carries the latest members and no publish can fall
//! between building it and storing it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use crate::snapshot::Snapshot;
use crate::upstream::BackendSpec;

/// What the proxy, the admin listener, the reloader, discovery and housekeeping share, as an
/// `Arc<Live>`.
pub struct Live {
    current: ArcSwap<Snapshot>,
    /// Taken by every writer; readers never take it.
    discovered: Mutex<HashMap<String, Vec<BackendSpec>>>,
    /// The ZooKeeper paths the current snapshot follows, for the watcher.
    paths: watch::Sender<Vec<String>>,
}

impl Live {
    pub fn new(snapshot: Snapshot) -> Arc<Live> {
        crate::logging::learn_secrets(&snapshot.secrets);
        let paths = watch::Sender::new(discovery_paths(&snapshot));
        Arc::new(Live {
            current: ArcSwap::from_pointee(snapshot),
            discovered: Mutex::new(HashMap::new()),
            paths,
        })
    }

    /// The snapshot for one request; lock-free.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes `next`: its discovered upstreams that are new objects get the last published
    /// members of their path first, then it is stored, and the watcher learns of new paths.
    pub fn install(&self, next: Snapshot) {
        crate::logging::learn_secrets(&next.secrets);
        let mut discovered = self.lock();
        let prev = self.current.load();
        for u in &next.upstreams {
            let Some(path) = u.discovery.as_deref() else {
                continue;
            };
            // A carried-over upstream already holds its members.
            if prev.upstreams.iter().any(|p| Arc::ptr_eq(p, u)) {
                continue;
            }
            if let Some(specs) = discovered.get(path) {
                u.update(specs.clone());
            }
        }
        let paths = discovery_paths(&next);
        // A path no longer followed is read afresh if it ever comes back.
        discovered.retain(|path, _| paths.binary_search(path).is_ok());
        self.current.store(Arc::new(next));
        drop(discovered);
        self.paths.send_if_modified(|p| {
            let changed = *p != paths;
            *p = paths;
            changed
        });
    }

    /// Sets the members of every upstream that follows `path`.
    pub fn publish(&self, path: &str, specs: Vec<BackendSpec>) {
        let mut discovered = self.lock();
        for u in self
            .current
            .load()
            .upstreams
            .iter()
            .filter(|u| u.discovery.as_deref() == Some(path))
        {
            u.update(specs.clone());
        }
        discovered.insert(path.to_owned(), specs);
    }

    /// The paths to follow, updated by every [`install`](Self::install) that changes them.
    pub fn paths(&self) -> watch::Receiver<Vec<String>> {
        self.paths.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<BackendSpec>>> {
        // The map stays consistent even if a writer panicked: every write is one insert.
        self.discovered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn discovery_paths(snapshot: &Snapshot) -> Vec<String> {
    let mut paths: Vec<String> = snapshot
        .upstreams
        .iter()
        .filter_map(|u| u.discovery.clone())
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn config(balance: &str, services: &[&str]) -> String {
        let mut text = String::from(
            "listeners: [{ name: web, listen: \"127.0.0.1:1\" }]\nzookeeper: { connect: \"127.0.0.1:2181\" }\nupstreams:\n  - { name: static, backends: [\"127.0.0.1:2\"] }\n",
        );
        for s in services {
            text.push_str(&format!(
                "  - {{ name: {s}, balance: {balance}, zookeeper: {{ service: {s} }} }}\n"
            ));
        }
        text + "routes: [{ name: r, upstream: static }]\n"
    }

    fn members(live: &Live, upstream: &str) -> Vec<String> {
        let snap = live.load();
        let set = snap.upstream(upstream).expect("upstream").load();
        set.backends()
            .iter()
            .map(|b| b.spec.addr.to_string())
            .collect()
    }

    fn spec(addr: &str) -> BackendSpec {
        BackendSpec::at(addr.parse().unwrap())
    }

    #[test]
    fn a_rebuilt_upstream_gets_the_last_published_members() {
        let live = Live::new(load_str(&config("round_robin", &["api"]), None).unwrap());
        let mut paths = live.paths();
        assert_eq!(*paths.borrow_and_update(), ["/zkgate/services/api"]);
        live.publish("/zkgate/services/api", vec![spec("10.0.0.1:80")]);
        assert_eq!(members(&live, "api"), ["10.0.0.1:80"]);

        // A changed definition builds a new, empty upstream object; installing fills it.
        let next = load_str(&config("random", &["api", "new"]), Some(&live.load())).unwrap();
        assert!(next.upstream("api").unwrap().load().backends().is_empty());
        live.install(next);
        assert_eq!(members(&live, "api"), ["10.0.0.1:80"]);
        assert!(paths.has_changed().unwrap());
        assert_eq!(
            *paths.borrow_and_update(),
            ["/zkgate/services/api", "/zkgate/services/new"]
        );

        // An unchanged path set is not announced again.
        let same = load_str(&config("round_robin", &["api", "new"]), Some(&live.load())).unwrap();
        live.install(same);
        assert!(!paths.has_changed().unwrap());
        assert_eq!(members(&live, "api"), ["10.0.0.1:80"]);

        // A dropped path is forgotten: coming back, it starts empty until read again.
        live.install(load_str(&config("round_robin", &["new"]), Some(&live.load())).unwrap());
        live.install(
            load_str(&config("round_robin", &["api", "new"]), Some(&live.load())).unwrap(),
        );
        assert!(members(&live, "api").is_empty());
    }
}
