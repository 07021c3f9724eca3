//! Which position the gateway's listener has in the snapshot a request uses, so that route
//! matching can skip the routes of other listeners with a bit test. The name is looked up once
//! per snapshot, not once per request.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::route::ListenerId;
use crate::snapshot::Snapshot;

pub(super) struct ListenerSlot {
    name: String,
    /// The low 32 bits of the generation the id was found in, then the id: one word, so that
    /// a reader never pairs one snapshot's generation with another's id. A stale hit would need
    /// 2^32 reloads between two requests of this listener.
    cached: AtomicU64,
}

impl ListenerSlot {
    pub(super) fn new(name: &str) -> ListenerSlot {
        ListenerSlot {
            name: name.to_owned(),
            // Generations start at 1: nothing matches this until the first lookup.
            cached: AtomicU64::new(0),
        }
    }

    /// The listener's id in `snap`: its position among `snap`'s listeners, or
    /// [`ListenerId::UNKNOWN`] when a reload renamed or removed it (a listener change applies
    /// on restart; until then the routes for every listener serve it).
    #[inline]
    pub(super) fn id(&self, snap: &Snapshot) -> ListenerId {
        let generation = snap.generation & u64::from(u32::MAX);
        let cached = self.cached.load(Ordering::Relaxed);
        if cached >> 32 == generation {
            return ListenerId(cached as u32);
        }
        let id = snap
            .settings
            .listeners
            .iter()
            .position(|l| l.name == self.name)
            .map_or(ListenerId::UNKNOWN, |p| ListenerId(p as u32));
        self.cached
            .store(generation << 32 | u64::from(id.0), Ordering::Relaxed);
        id
    }
}
