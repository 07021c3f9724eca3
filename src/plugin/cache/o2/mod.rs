//! The O2 IMS side of the cache: the notification dialects, what a notification evicts, the
//! callback plugin and its bookkeeping, the gateway's own subscription and the warm-up.

pub mod dialect;
pub mod mapping;
pub mod notify;
pub mod subscription;
pub mod warmup;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

pub use notify::{receive, NotifyOutcome};

use self::dialect::Dialect;

/// Notification bookkeeping of one store: the dedupe window and the counters.
pub struct NotifyState {
    dedupe: Mutex<Dedupe>,
    /// `dedupe.window` in ms and `dedupe.entries`, as the newest `cache_notify` build set them.
    window_ms: AtomicU64,
    max_entries: AtomicU64,
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub unmapped: AtomicU64,
    pub rejected: AtomicU64,
    metrics: OnceLock<NotifyMetrics>,
}

impl Default for NotifyState {
    fn default() -> NotifyState {
        NotifyState {
            dedupe: Mutex::default(),
            window_ms: AtomicU64::new(notify::DEFAULT_DEDUPE_WINDOW.as_millis() as u64),
            max_entries: AtomicU64::new(notify::DEFAULT_DEDUPE_ENTRIES as u64),
            applied: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unmapped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            metrics: OnceLock::new(),
        }
    }
}

/// The notification keys seen within the window, oldest first.
#[derive(Default)]
struct Dedupe {
    seen: HashMap<u128, u64>,
    order: VecDeque<(u128, u64)>,
}

impl NotifyState {
    /// Applies a (re)built callback's dedupe settings.
    pub fn configure(&self, window_ms: u64, max_entries: usize) {
        self.window_ms.store(window_ms, Ordering::Relaxed);
        self.max_entries
            .store(max_entries as u64, Ordering::Relaxed);
    }

    /// Whether `key` was seen within the window before `now_ms`; records it if not. The oldest
    /// keys go first when the window passes or the bound is reached, so memory stays bounded
    /// whatever a sender does.
    pub fn seen(&self, key: u128, now_ms: u64) -> bool {
        let window = self.window_ms.load(Ordering::Relaxed);
        let max = self.max_entries.load(Ordering::Relaxed).max(1) as usize;
        let mut d = self.dedupe.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(&(k, at)) = d.order.front() {
            if d.order.len() < max && now_ms.saturating_sub(at) < window {
                break;
            }
            d.order.pop_front();
            // A key seen again later has a newer entry in `order`; only its own removes it.
            if d.seen.get(&k) == Some(&at) {
                d.seen.remove(&k);
            }
        }
        if let Some(&at) = d.seen.get(&key) {
            if now_ms.saturating_sub(at) < window {
                return true;
            }
        }
        d.seen.insert(key, now_ms);
        d.order.push_back((key, now_ms));
        false
    }

    /// How many keys the window holds.
    pub fn dedupe_len(&self) -> usize {
        self.dedupe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seen
            .len()
    }

    /// The store's metric handles, resolved the first time.
    pub(crate) fn metrics(&self, store: &str) -> &NotifyMetrics {
        self.metrics.get_or_init(|| NotifyMetrics::new(store))
    }
}

/// What became of a notification (the metrics' `result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyResult {
    Applied,
    Duplicate,
    Unmapped,
    Rejected,
}

impl NotifyResult {
    const ALL: [NotifyResult; 4] = [
        NotifyResult::Applied,
        NotifyResult::Duplicate,
        NotifyResult::Unmapped,
        NotifyResult::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyResult::Applied => "applied",
            NotifyResult::Duplicate => "duplicate",
            NotifyResult::Unmapped => "unmapped",
            NotifyResult::Rejected => "rejected",
        }
    }
}

struct Registered {
    notifications: IntCounterVec,
    unmapped: IntCounterVec,
    to_evict: HistogramVec,
    last: IntGaugeVec,
}

/// From 100 µs (a local purge) to 10 s (a replica that was reconnecting).
const EVICT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

static REGISTERED: LazyLock<Registered> = LazyLock::new(|| Registered {
    // Registration fails only on a duplicate name, which this single static rules out.
    notifications: register_int_counter_vec!(
        "zkgate_cache_notifications_total",
        "O2 IMS notifications received by a cache_notify callback, by store, dialect \
         (oran, oran_alarm, pti, netweave; unknown when it did not parse) and result \
         (applied, duplicate, unmapped, rejected).",
        &["store", "dialect", "result"]
    )
    .expect("register zkgate_cache_notifications_total"),
    unmapped: register_int_counter_vec!(
        "zkgate_cache_unmapped_object_refs_total",
        "Notifications whose object could not be pinned down, so that its whole kind or API \
         family was evicted.",
        &["store"]
    )
    .expect("register zkgate_cache_unmapped_object_refs_total"),
    to_evict: register_histogram_vec!(
        "zkgate_cache_notify_to_evict_seconds",
        "From a notification's arrival to its eviction: on the replica that received it \
         (origin=local) and on the others (origin=remote, measured against the receiving \
         replica's clock, so it includes the clock skew between hosts).",
        &["store", "origin"],
        EVICT_BUCKETS.to_vec()
    )
    .expect("register zkgate_cache_notify_to_evict_seconds"),
    last: register_int_gauge_vec!(
        "zkgate_cache_last_notification_timestamp_seconds",
        "When the store last received a notification that evicted something (Unix time).",
        &["store"]
    )
    .expect("register zkgate_cache_last_notification_timestamp_seconds"),
});

/// The notification metrics of one store, with every label resolved.
pub(crate) struct NotifyMetrics {
    /// By `Dialect` index (and a last one for `unknown`), then by `NotifyResult` index.
    notifications: [[IntCounter; 4]; 5],
    pub unmapped: IntCounter,
    pub local: Histogram,
    pub remote: Histogram,
    pub last: IntGauge,
}

impl NotifyMetrics {
    pub(crate) fn new(store: &str) -> NotifyMetrics {
        let r = &*REGISTERED;
        let dialects = Dialect::ALL
            .map(Dialect::as_str)
            .into_iter()
            .chain(["unknown"]);
        let notifications: Vec<[IntCounter; 4]> = dialects
            .map(|d| {
                NotifyResult::ALL
                    .map(|res| r.notifications.with_label_values(&[store, d, res.as_str()]))
            })
            .collect();
        NotifyMetrics {
            notifications: notifications
                .try_into()
                .unwrap_or_else(|_| unreachable!("four dialects and unknown")),
            unmapped: r.unmapped.with_label_values(&[store]),
            local: r.to_evict.with_label_values(&[store, "local"]),
            remote: r.to_evict.with_label_values(&[store, "remote"]),
            last: r.last.with_label_values(&[store]),
        }
    }

    pub(crate) fn count(&self, dialect: Option<Dialect>, result: NotifyResult) {
        let d = dialect.map_or(4, |d| d as usize);
        self.notifications[d][result as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_window_and_bound() {
        let s = NotifyState::default();
        s.configure(1000, 3);
        assert!(!s.seen(1, 0));
        assert!(s.seen(1, 999));
        // Past the window the same key is new again.
        assert!(!s.seen(1, 1000));
        assert!(!s.seen(2, 1001));
        assert!(!s.seen(3, 1002));
        // The bound of 3 pushes out the oldest (1 at 1000).
        assert!(!s.seen(4, 1003));
        assert!(s.dedupe_len() <= 3);
        assert!(!s.seen(1, 1004));
        assert!(s.seen(4, 1005));
    }
}
