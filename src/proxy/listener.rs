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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(listeners: &[&str], generation: u64) -> Snapshot {
        let mut y = String::from("listeners:\n");
        for (i, name) in listeners.iter().enumerate() {
            y += &format!("  - {{ name: {name}, listen: \"127.0.0.1:{}\" }}\n", i + 1);
        }
        y += "routes: [{ name: r, respond: { body: x } }]\n";
        let mut snap = crate::config::load_str(&y, None).expect("config");
        snap.generation = generation;
        snap
    }

    #[test]
    fn the_id_follows_the_snapshot_a_request_uses() {
        let slot = ListenerSlot::new("tls");
        assert_eq!(slot.id(&snapshot(&["web", "tls"], 1)), ListenerId(1));
        // A reload that reorders the listeners moves the id with it.
        assert_eq!(slot.id(&snapshot(&["tls", "web"], 2)), ListenerId(0));
        // One that renames it leaves only the routes for every listener.
        assert_eq!(
            slot.id(&snapshot(&["web", "https"], 3)),
            ListenerId::UNKNOWN
        );
        // A request still on an older snapshot is matched in that snapshot's terms.
        assert_eq!(slot.id(&snapshot(&["web", "tls"], 1)), ListenerId(1));
    }
}
