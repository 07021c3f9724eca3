//! The replica fan-out of evictions: per-tag epochs and bans published through ZooKeeper, and
//! the health of the notification channel that decides degraded lifetimes.
//!
//! CONTRACT (issue 14): owned by T5. The ZooKeeper side lives in `zkgate_discovery::cache_bus`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::store::TagId;

/// A purge of targets (not tags) sent to every replica.
#[derive(Clone, Copy, Debug)]
pub enum Ban<'a> {
    Key(&'a str),
    Prefix(&'a str),
}

/// Publishes evictions to the other replicas.
pub trait Bus: Send + Sync {
    /// Queues an epoch bump of `tags` at `at_ms` for every replica; never blocks.
    fn publish(&self, tags: &[TagId], at_ms: u64);
    /// Queues a ban for every replica; never blocks.
    fn publish_ban(&self, ban: Ban<'_>, at_ms: u64);
    /// Whether the bus is connected and its watch armed.
    fn healthy(&self) -> bool;
}

/// Whether notifications can be trusted to arrive.
#[derive(Default)]
pub struct ChannelHealth {
    degraded: AtomicBool,
    last_notification_ms: AtomicU64,
}

impl ChannelHealth {
    /// Whether lifetimes must shrink to `degraded_ttl`.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, Ordering::Relaxed);
    }

    pub fn last_notification_ms(&self) -> u64 {
        self.last_notification_ms.load(Ordering::Relaxed)
    }

    pub fn notified(&self, ms: u64) {
        self.last_notification_ms.store(ms, Ordering::Relaxed);
    }
}
