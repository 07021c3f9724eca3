//! Per-tag epochs: the time of the newest eviction of each tag, so an entry created before it
//! is never served, whichever replica or tier holds it.
//!
//! Every hit asks [`Epochs::stale`], so the common case (no eviction since the entry was
//! made) is answered from two atomics without touching the map: `max` is the newest epoch of
//! any tag, and an entry created after it (plus the slack) cannot be older than one of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use super::TagId;

/// The newest eviction time (ms since the epoch) of each tag.
#[derive(Default)]
pub struct Epochs {
    tags: RwLock<HashMap<TagId, u64, rustc_hash::FxBuildHasher>>,
    /// The newest epoch of any tag, or of the whole store.
    max: AtomicU64,
    /// An eviction of every entry of the store (`purge_all`): no tag needed.
    floor: AtomicU64,
    /// How far after an epoch an entry still counts as made before it: covers clock skew
    /// between replicas and a request sent just before the eviction on another host.
    slack_ms: AtomicU64,
}

impl Epochs {
    /// Records an eviction of `tag` at `ms` (keeps the newest).
    pub fn bump(&self, tag: TagId, ms: u64) {
        let mut tags = self.tags.write().unwrap_or_else(PoisonError::into_inner);
        let e = tags.entry(tag).or_insert(0);
        *e = (*e).max(ms);
        self.max.fetch_max(ms, Ordering::Release);
    }

    /// Records an eviction of every entry at `ms` (a purge of the whole store).
    pub fn bump_all(&self, ms: u64) {
        self.floor.fetch_max(ms, Ordering::Release);
        self.max.fetch_max(ms, Ordering::Release);
    }

    /// The newest epoch of any of `tags` (0 when none has one).
    pub fn newest(&self, tags: &[TagId]) -> u64 {
        let floor = self.floor.load(Ordering::Acquire);
        if self.max.load(Ordering::Acquire) == floor {
            return floor;
        }
        let map = self.tags.read().unwrap_or_else(PoisonError::into_inner);
        tags.iter()
            .filter_map(|t| map.get(t))
            .copied()
            .fold(floor, u64::max)
    }

    /// Whether an entry created at `created_ms` with `tags` was evicted since (slack included).
    pub fn stale(&self, tags: &[TagId], created_ms: u64) -> bool {
        let slack = self.slack_ms.load(Ordering::Relaxed);
        let max = self.max.load(Ordering::Acquire);
        if max == 0 || created_ms >= max.saturating_add(slack) {
            return false;
        }
        let newest = self.newest(tags);
        newest != 0 && created_ms < newest.saturating_add(slack)
    }

    /// Replaces every epoch (after re-reading them all from ZooKeeper).
    pub fn replace_all(&self, all: impl IntoIterator<Item = (TagId, u64)>) {
        let fresh: HashMap<TagId, u64, rustc_hash::FxBuildHasher> = all.into_iter().collect();
        let newest = fresh.values().copied().max().unwrap_or(0);
        let mut tags = self.tags.write().unwrap_or_else(PoisonError::into_inner);
        *tags = fresh;
        // `max` only grows: a smaller one would let an entry skip the map while an epoch
        // it should meet is still there, and a larger one only costs a map lookup.
        self.max.fetch_max(newest, Ordering::Release);
    }

    /// Forgets the epochs an entry made after `before_ms` can no longer meet (slack included):
    /// with every entry's life capped (`max_lifetime`), older ones refuse nothing that is still
    /// stored. Returns how many went.
    pub fn forget_before(&self, before_ms: u64) -> usize {
        let slack = self.slack_ms.load(Ordering::Relaxed);
        let mut tags = self.tags.write().unwrap_or_else(PoisonError::into_inner);
        let was = tags.len();
        tags.retain(|_, ms| ms.saturating_add(slack) > before_ms);
        was - tags.len()
    }

    /// The slack (`replicas.epoch_slack`).
    pub fn slack_ms(&self) -> u64 {
        self.slack_ms.load(Ordering::Relaxed)
    }

    /// Sets the slack (`replicas.epoch_slack`); 0 until set, which is right for one replica.
    pub fn set_slack(&self, ms: u64) {
        self.slack_ms.store(ms, Ordering::Relaxed);
    }

    /// How many tags have an epoch.
    pub fn len(&self) -> usize {
        self.tags
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_of_the_entry_tags_wins() {
        let e = Epochs::default();
        assert_eq!(e.newest(&[TagId(1)]), 0);
        assert!(!e.stale(&[TagId(1)], 5));
        e.bump(TagId(1), 100);
        e.bump(TagId(1), 50);
        e.bump(TagId(2), 200);
        assert_eq!(e.newest(&[TagId(1)]), 100);
        assert_eq!(e.newest(&[TagId(1), TagId(2)]), 200);
        assert_eq!(e.newest(&[TagId(3)]), 0);
        assert!(e.stale(&[TagId(1)], 99));
        assert!(!e.stale(&[TagId(1)], 100));
        assert!(!e.stale(&[TagId(3)], 1));
    }

    #[test]
    fn slack_widens_the_window_and_floor_covers_every_tag() {
        let e = Epochs::default();
        e.bump(TagId(1), 1_000);
        e.set_slack(500);
        assert!(e.stale(&[TagId(1)], 1_499));
        assert!(!e.stale(&[TagId(1)], 1_500));
        e.bump_all(2_000);
        assert!(e.stale(&[TagId(9)], 2_400));
        assert!(e.stale(&[], 1_999));
        assert!(!e.stale(&[TagId(9)], 2_500));
    }

    #[test]
    fn old_epochs_are_forgotten_but_not_those_the_slack_still_reaches() {
        let e = Epochs::default();
        e.set_slack(100);
        e.bump(TagId(1), 1_000);
        e.bump(TagId(2), 1_950);
        e.bump(TagId(3), 3_000);
        // An entry made at 2_049 could still meet tag 2's epoch (1_950 + 100): kept.
        assert_eq!(e.forget_before(2_049), 1);
        assert_eq!(e.newest(&[TagId(1)]), 0);
        assert_eq!(e.newest(&[TagId(2)]), 1_950);
        assert!(e.stale(&[TagId(2)], 2_049));
        // One made at 2_050 or later cannot.
        assert_eq!(e.forget_before(2_050), 1);
        assert_eq!(e.len(), 1);
        assert!(e.stale(&[TagId(3)], 3_050));
    }

    #[test]
    fn replace_all_drops_old_tags() {
        let e = Epochs::default();
        e.bump(TagId(1), 100);
        e.replace_all([(TagId(2), 300)]);
        assert_eq!(e.newest(&[TagId(1)]), 0);
        assert_eq!(e.newest(&[TagId(2)]), 300);
        assert_eq!(e.len(), 1);
    }
}
