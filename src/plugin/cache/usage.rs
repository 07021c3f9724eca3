//! Which store names the serving config uses: a store that no route names any more after a
//! reload gives its memory back and stops its replica bus. The name may come back later: its
//! store then starts cold and its bus starts again (reading every epoch, so nothing published
//! meanwhile is missed).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// How many built plugins (`cache` and `cache_notify`, of every config alive) name each store.
static USERS: Mutex<Option<HashMap<Box<str>, usize>>> = Mutex::new(None);

/// One built plugin's use of a store name, held as long as the plugin lives: a reload builds
/// the new config's plugins before the old config's are dropped, so a store named by both is
/// never counted unused, and the old config's plugins live on while requests still use them.
#[derive(Debug)]
pub struct StoreUse {
    name: Box<str>,
}

impl StoreUse {
    pub fn new(name: &str) -> StoreUse {
        let mut users = USERS.lock().unwrap_or_else(PoisonError::into_inner);
        *users
            .get_or_insert_with(HashMap::new)
            .entry(name.into())
            .or_default() += 1;
        StoreUse { name: name.into() }
    }
}

impl Drop for StoreUse {
    fn drop(&mut self) {
        let mut users = USERS.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(map) = users.as_mut() else { return };
        let Some(n) = map.get_mut(&self.name) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n > 0 {
            return;
        }
        map.remove(&self.name);
        // Still under the lock: a build naming the store again waits for the release to end,
        // then finds no bus and starts one.
        release(&self.name);
    }
}

/// Empties the memory of the store `name` and stops its bus (the lock and the storage handle
/// Pingora holds stay: they are small and the name may come back).
fn release(name: &str) {
    let Some(shared) = super::stores().into_iter().find(|s| &*s.name == name) else {
        return;
    };
    let dropped = shared.store.release();
    let bus = shared.bus.take();
    log::info!(
        "cache store {name}: no route names it any more: {dropped} entries dropped{}",
        if bus.is_some() {
            ", replica bus stopped"
        } else {
            ""
        }
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;

    use super::super::bus::{Ban, Bus};
    use super::super::store::{wall_ms, Entry, StoreClass, StoreConfig, TagId};
    use super::*;
    use crate::plugin::Resources;

    struct FakeBus(Arc<AtomicBool>);

    impl Bus for FakeBus {
        fn publish(&self, _: &[TagId], _: u64) {}
        fn publish_ban(&self, _: Ban<'_>, _: u64) {}
        fn healthy(&self) -> bool {
            true
        }
    }

    impl Drop for FakeBus {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn entry(n: u8) -> Entry {
        let now = wall_ms();
        Entry {
            primary: [n; 16],
            variance: None,
            meta: (Bytes::from_static(b"m"), Bytes::from_static(b"h")),
            body: Bytes::from_static(b"body"),
            created_ms: now,
            hard_expiry_ms: now + 60_000,
            tags: Box::new([TagId(1)]),
            class: StoreClass::MemoryOnly,
            target: "/x".into(),
            kind: 0,
        }
    }

    #[test]
    fn a_store_no_plugin_names_gives_its_memory_back_and_stops_its_bus() {
        let cfg = StoreConfig {
            name: "usage-test".into(),
            memory: 1 << 20,
            redis: None,
        };
        let shared = super::super::shared(&Resources::default(), &cfg);
        let stopped = Arc::new(AtomicBool::new(false));
        shared.bus.set(Arc::new(FakeBus(stopped.clone())));
        shared.store.insert([1; 16], entry(1));
        shared.store.insert([2; 16], entry(2));

        // The old config's plugin and the reloaded config's: the store stays in use.
        let old = StoreUse::new("usage-test");
        let new = StoreUse::new("usage-test");
        drop(old);
        assert_eq!(shared.store.stats().entries, 2);
        assert!(shared.bus.get().is_some() && !stopped.load(Ordering::Relaxed));

        // A reload that names it nowhere: the last use ends.
        drop(new);
        assert_eq!(shared.store.stats().entries, 0);
        assert!(shared.bus.get().is_none() && stopped.load(Ordering::Relaxed));
        let unused = shared.store.stats().evictions;
        assert!(unused.contains(&("unused", 2)), "{unused:?}");

        // The name comes back: the same store, cold, usable again.
        let back = StoreUse::new("usage-test");
        shared.store.insert([3; 16], entry(3));
        assert_eq!(shared.store.stats().entries, 1);
        drop(back);
        assert_eq!(shared.store.stats().entries, 0);
    }
}
