//! The cache plugin's request metrics: hits, misses, stale answers, coalesced requests and
//! bypasses, by route and resource kind, with handles resolved at build.
//!
//! Store metrics (T4) and notification metrics (T5) live in their owners' files.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, IntCounter, IntCounterVec};

use super::profile::Kind;
use super::status::{BypassReason, CacheOutcome};

/// The `result` labels of `zkgate_cache_requests_total`, in [`result_index`] order.
const RESULTS: [&str; 7] = [
    "hit",
    "stale",
    "miss",
    "expired",
    "revalidated",
    "bypass",
    "uncacheable",
];

/// Every bypass reason, for handles made at build.
const BYPASSES: [BypassReason; 7] = [
    BypassReason::Method,
    BypassReason::ClientNoCache,
    BypassReason::Credentials,
    BypassReason::InvalidToken,
    BypassReason::NoRole,
    BypassReason::NoRule,
    BypassReason::Busy,
];

struct Families {
    requests: IntCounterVec,
    bypass: IntCounterVec,
    coalesced: IntCounterVec,
    lock_timeouts: IntCounterVec,
    refreshes: IntCounterVec,
    invalidations: IntCounterVec,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| Families {
    // Registration only fails on a duplicate name, which this single static rules out.
    requests: register_int_counter_vec!(
        "zkgate_cache_requests_total",
        "Requests of cached routes, by route, resource kind and what the cache did.",
        &["route", "kind", "result"]
    )
    .expect("register zkgate_cache_requests_total"),
    bypass: register_int_counter_vec!(
        "zkgate_cache_bypass_total",
        "Requests of cached routes passed to the origin without the cache, by reason.",
        &["route", "reason"]
    )
    .expect("register zkgate_cache_bypass_total"),
    coalesced: register_int_counter_vec!(
        "zkgate_cache_coalesced_total",
        "Requests that waited on another request's fetch of the same entry and were served it.",
        &["route", "kind"]
    )
    .expect("register zkgate_cache_coalesced_total"),
    lock_timeouts: register_int_counter_vec!(
        "zkgate_cache_lock_timeouts_total",
        "Requests that waited on the cache lock past lock.timeout and went to the origin.",
        &["route"]
    )
    .expect("register zkgate_cache_lock_timeouts_total"),
    refreshes: register_int_counter_vec!(
        "zkgate_cache_refreshes_total",
        "Background refreshes of stale entries (stale-while-revalidate), one per entry and window.",
        &["route"]
    )
    .expect("register zkgate_cache_refreshes_total"),
    invalidations: register_int_counter_vec!(
        "zkgate_cache_invalidations_total",
        "Successful unsafe requests that invalidated the entries of their target (RFC 9111 §4.4).",
        &["route"]
    )
    .expect("register zkgate_cache_invalidations_total"),
});

/// The handles of one route, made at build.
pub struct RouteCacheMetrics {
    /// By kind (`Kind as usize`), then by result.
    requests: Box<[[IntCounter; RESULTS.len()]]>,
    bypass: [IntCounter; BYPASSES.len()],
    coalesced: Box<[IntCounter]>,
    pub lock_timeouts: IntCounter,
    pub refreshes: IntCounter,
    pub invalidations: IntCounter,
}

fn result_index(outcome: CacheOutcome) -> Option<usize> {
    let label = outcome.result();
    RESULTS.iter().position(|r| *r == label)
}

impl RouteCacheMetrics {
    pub fn new(route: &str) -> RouteCacheMetrics {
        let f = &*FAMILIES;
        let requests = Kind::ALL
            .iter()
            .map(|k| RESULTS.map(|r| f.requests.with_label_values(&[route, k.as_str(), r])))
            .collect();
        let coalesced = Kind::ALL
            .iter()
            .map(|k| f.coalesced.with_label_values(&[route, k.as_str()]))
            .collect();
        RouteCacheMetrics {
            requests,
            bypass: BYPASSES.map(|b| f.bypass.with_label_values(&[route, b.as_str()])),
            coalesced,
            lock_timeouts: f.lock_timeouts.with_label_values(&[route]),
            refreshes: f.refreshes.with_label_values(&[route]),
            invalidations: f.invalidations.with_label_values(&[route]),
        }
    }

    /// Counts one request that ended with `outcome` on a rule of `kind`.
    pub fn observe(&self, kind: Kind, outcome: CacheOutcome) {
        let Some(r) = result_index(outcome) else {
            return;
        };
        if let Some(row) = self.requests.get(kind as usize) {
            row[r].inc();
        }
        match outcome {
            CacheOutcome::Bypass(why) => {
                if let Some(i) = BYPASSES.iter().position(|b| *b == why) {
                    self.bypass[i].inc();
                }
            }
            CacheOutcome::Collapsed => {
                if let Some(c) = self.coalesced.get(kind as usize) {
                    c.inc();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_counts_under_its_kind_and_result() {
        let m = RouteCacheMetrics::new("metrics-test");
        m.observe(Kind::Resources, CacheOutcome::Collapsed);
        m.observe(Kind::Resources, CacheOutcome::Hit);
        m.observe(Kind::Generic, CacheOutcome::Bypass(BypassReason::NoRole));
        m.observe(Kind::Generic, CacheOutcome::None);
        let f = &*FAMILIES;
        let get = |kind: Kind, r: &str| {
            f.requests
                .with_label_values(&["metrics-test", kind.as_str(), r])
                .get()
        };
        assert_eq!(get(Kind::Resources, "hit"), 2);
        assert_eq!(get(Kind::Generic, "bypass"), 1);
        let coalesced = f
            .coalesced
            .with_label_values(&["metrics-test", Kind::Resources.as_str()]);
        assert_eq!(coalesced.get(), 1);
        let no_role = f.bypass.with_label_values(&["metrics-test", "no-role"]);
        assert_eq!(no_role.get(), 1);
    }
}
