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

pub struct Live {
    current: ArcSwap<Snapshot>,
    /// Taken by every writer; readers never take it.
    discovered: Mutex<HashMap<String, Vec<BackendSpec>>>,
    /// The ZooKeeper paths the current snapshot follows, for the watcher.
    paths: watch::Sender<Vec<String>>,
}

/// What the proxy, the admin listener, the reloader and discovery share.
pub type Shared = Arc<Live>;

impl Live {
    pub fn new(snapshot: Snapshot) -> Shared {
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
        let discovered = self.lock();
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
