//! The replica fan-out of evictions: per-tag epochs and bans published through ZooKeeper, and
//! the health of the notification channel that decides degraded lifetimes.
//!
//! The ZooKeeper side lives in `zkgate_discovery::cache_bus`; this file connects it to a
//! store: an epoch read from ZooKeeper bumps the store's epoch (so the entries it covers are
//! refused at their next read, whichever tier holds them) and purges memory at once; a lost
//! session drops every entry, since what was missed meanwhile cannot be known.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::Histogram;
use zkgate_discovery::cache_bus::{self, CacheBus, EpochSink};
use zkgate_discovery::{Ensemble, SessionEvent};

use super::store::{EvictReason, TagId};
use super::Shared;

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

/// Where a store keeps its running bus: set by the first build that names the store, taken
/// (which stops it) when no route names the store any more, set again if one names it later.
#[derive(Default)]
pub struct BusSlot(Mutex<Option<Arc<dyn Bus>>>);

impl BusSlot {
    /// The running bus, if any.
    pub fn get(&self) -> Option<Arc<dyn Bus>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, bus: Arc<dyn Bus>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(bus);
    }

    /// Removes the bus; it stops once the last user of it lets go.
    pub fn take(&self) -> Option<Arc<dyn Bus>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A part of the notification channel that can fail on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChannelPart {
    /// The replica bus (ZooKeeper connected, watch armed, epochs read).
    Bus = 1,
    /// The gateway's subscription to the O2 IMS.
    Subscription = 2,
    /// What `set_degraded` sets.
    Manual = 4,
}

/// Whether notifications can be trusted to arrive: degraded while any part is down.
pub struct ChannelHealth {
    down: AtomicU8,
    last_notification_ms: AtomicU64,
    /// Counts the returns to healthy, for what must run again then (the warm-up).
    recovered: tokio::sync::watch::Sender<u64>,
}

impl Default for ChannelHealth {
    fn default() -> ChannelHealth {
        ChannelHealth {
            down: AtomicU8::new(0),
            last_notification_ms: AtomicU64::new(0),
            recovered: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl ChannelHealth {
    /// Changes each time the channel turns healthy again after a part was down.
    pub fn recoveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.recovered.subscribe()
    }

    /// Whether lifetimes must shrink to `degraded_ttl`.
    pub fn degraded(&self) -> bool {
        self.down.load(Ordering::Relaxed) != 0
    }

    pub fn set_degraded(&self, degraded: bool) {
        self.set(ChannelPart::Manual, !degraded);
    }

    /// Records whether `part` works.
    pub fn set(&self, part: ChannelPart, ok: bool) {
        if ok {
            let before = self.down.fetch_and(!(part as u8), Ordering::Relaxed);
            if before == part as u8 {
                self.recovered.send_modify(|n| *n += 1);
            }
        } else {
            self.down.fetch_or(part as u8, Ordering::Relaxed);
        }
    }

    pub fn last_notification_ms(&self) -> u64 {
        self.last_notification_ms.load(Ordering::Relaxed)
    }

    pub fn notified(&self, ms: u64) {
        self.last_notification_ms.store(ms, Ordering::Relaxed);
    }
}

/// The bus over ZooKeeper.
struct ZkBus {
    inner: CacheBus,
}

impl Bus for ZkBus {
    fn publish(&self, tags: &[TagId], at_ms: u64) {
        let raw: smallvec::SmallVec<[u64; 8]> = tags.iter().map(|t| t.0).collect();
        self.inner.publish(&raw, at_ms);
    }

    fn publish_ban(&self, ban: Ban<'_>, at_ms: u64) {
        let ban = match ban {
            Ban::Key(k) => cache_bus::Ban::Key(k.to_owned()),
            Ban::Prefix(p) => cache_bus::Ban::Prefix(p.to_owned()),
        };
        self.inner.publish_ban(ban, at_ms);
    }

    fn healthy(&self) -> bool {
        self.inner.healthy()
    }
}

/// Applies what the bus reads to one store.
struct StoreSink {
    shared: &'static Shared,
    origin: String,
    remote: Histogram,
    /// Whether a session was ever up: the first connect is not a recovery.
    was_up: AtomicBool,
}

impl EpochSink for StoreSink {
    fn epoch(&self, tag: u64, ms: u64, _origin: &str, live: bool) {
        let tag = TagId(tag);
        let epochs = self.shared.store.epochs();
        // Known already: this replica's own publish, or a repeat from a full re-read.
        if ms <= epochs.newest(&[tag]) {
            return;
        }
        epochs.bump(tag, ms);
        self.shared
            .store
            .purge_tags(&[tag], EvictReason::Invalidation);
        if live {
            let lag_ms = super::store::wall_ms().saturating_sub(ms);
            self.remote.observe(lag_ms as f64 / 1000.0);
        }
    }

    fn ban(&self, ban: &cache_bus::Ban, ms: u64, origin: &str) {
        if origin == self.origin {
            // Applied here when it was published.
            return;
        }
        let (cache_bus::Ban::Key(p) | cache_bus::Ban::Prefix(p)) = ban;
        self.shared.store.purge_prefix(p, ms, EvictReason::Purge);
    }

    fn session(&self, event: SessionEvent) {
        match event {
            SessionEvent::Connected => {}
            SessionEvent::Disconnected => self.shared.channel.set(ChannelPart::Bus, false),
            SessionEvent::Lost => {
                self.shared.channel.set(ChannelPart::Bus, false);
                let dropped = self.shared.store.purge_all(EvictReason::SessionLoss);
                log::warn!(
                    "cache store {}: zookeeper session lost: dropped {dropped} entries, since \
                     evictions published meanwhile cannot be known",
                    self.shared.name
                );
            }
        }
    }

    /// Epochs and bans older than any entry the store may still serve.
    fn forget_before(&self, now_ms: u64) -> Option<u64> {
        Some(self.shared.store.forget_before(now_ms))
    }

    fn synced(&self) {
        if self.was_up.swap(true, Ordering::Relaxed) {
            log::info!(
                "cache store {}: replica bus back, every epoch read again",
                self.shared.name
            );
        }
        self.shared.channel.set(ChannelPart::Bus, true);
    }
}

/// This replica's name in the epochs it writes: host and process.
fn origin() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{host}-{}", std::process::id())
}

/// Starts the replica bus of `shared` under `<root>/cache/<store>` (once per store: later calls,
/// on reloads, keep the running bus). The channel counts as down until the first full read.
pub fn install_bus(shared: &'static Shared, ensemble: &Ensemble, root: &str) {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    if shared.bus.get().is_some() {
        return;
    }
    shared.channel.set(ChannelPart::Bus, false);
    let origin = origin();
    let sink = Arc::new(StoreSink {
        shared,
        origin: origin.clone(),
        remote: shared.notify.metrics(&shared.name).remote.clone(),
        was_up: AtomicBool::new(false),
    });
    match cache_bus::start(ensemble.clone(), root, &shared.name, origin, sink) {
        Ok(inner) => {
            shared.bus.set(Arc::new(ZkBus { inner }));
        }
        Err(e) => log::error!(
            "cache store {}: cannot start the replica bus: {e}; evictions stay on this replica",
            shared.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_parts() {
        let c = ChannelHealth::default();
        assert!(!c.degraded());
        c.set(ChannelPart::Bus, false);
        c.set(ChannelPart::Subscription, false);
        assert!(c.degraded());
        c.set(ChannelPart::Bus, true);
        assert!(c.degraded());
        let recoveries = c.recoveries();
        c.set(ChannelPart::Subscription, true);
        assert!(!c.degraded());
        assert_eq!(*recoveries.borrow(), 1);
        // Setting a part that was up already is no recovery.
        c.set(ChannelPart::Bus, true);
        assert_eq!(*recoveries.borrow(), 1);
        c.set_degraded(true);
        assert!(c.degraded());
        c.set_degraded(false);
        assert!(!c.degraded());
    }
}
