//! Passive health (outlier ejection): a backend whose requests keep failing (5xx answers, or no
//! connection) is taken out of rotation for a while, longer each time it happens again, with at
//! most a configured share of the upstream out at once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::state::{BackendState, EJECTED};
use super::{BackendSet, Invalid, Upstream};
use crate::clock::now_ms;
use crate::metrics::METRICS;

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

impl OutlierPolicy {
    pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
    pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
    pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;

    /// A policy whose every value makes sense, or each value that does not, under its config
    /// key (`outlier_detection.<key>`).
    pub fn try_new(
        consecutive_failures: u32,
        base_ejection: Duration,
        max_ejection: Duration,
        max_ejected_percent: u32,
    ) -> Result<OutlierPolicy, Vec<Invalid>> {
        let mut invalid = Vec::new();
        if consecutive_failures == 0 {
            invalid.push(Invalid::new("consecutive_failures", "must be at least 1"));
        }
        if base_ejection.is_zero() {
            invalid.push(Invalid::new("base_ejection_time", "must be above zero"));
        }
        if max_ejection < base_ejection {
            invalid.push(Invalid::new(
                "max_ejection_time",
                "must be at least base_ejection_time",
            ));
        }
        if max_ejected_percent > 100 {
            invalid.push(Invalid::new("max_ejected_percent", "must be 0 to 100"));
        }
        if !invalid.is_empty() {
            return Err(invalid);
        }
        Ok(OutlierPolicy {
            consecutive_failures,
            base_ejection,
            max_ejection,
            max_ejected_percent,
        })
    }

    /// How long the `n`-th ejection in a row lasts (`n` from 1).
    fn ejection(&self, n: u32) -> Duration {
        self.base_ejection
            .saturating_mul(n.max(1))
            .min(self.max_ejection)
    }

    /// How many of `members` may be out at once; at least one, so that a single bad backend
    /// of a small upstream can still be ejected.
    fn cap(&self, members: usize) -> usize {
        (members * self.max_ejected_percent as usize / 100).max(1)
    }
}

impl Upstream {
    /// Counts the outcome of one request on `state`.
    pub fn record(&self, state: &BackendState, failed: bool) {
        let Some(policy) = &self.policy.outlier else {
            return;
        };
        if !failed {
            state.errors.store(0, Ordering::Relaxed);
            return;
        }
        let errors = state.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if errors < policy.consecutive_failures || state.is(EJECTED) {
            return;
        }
        let set = self.load();
        let ejected = set
            .backends()
            .iter()
            .filter(|b| b.state.is(EJECTED))
            .count();
        if ejected >= policy.cap(set.backends().len()) {
            return;
        }
        if !state.set(EJECTED, true) {
            return; // another request got there first
        }
        let n = state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = policy.ejection(n);
        state
            .ejection_end_ms
            .store(now_ms() + length.as_millis() as u64, Ordering::Relaxed);
        state.errors.store(0, Ordering::Relaxed);
        METRICS
            .outlier_ejections
            .with_label_values(&[&self.name])
            .inc();
        log::warn!(
            "upstream {}: backend {} ejected for {length:?} after {errors} failed requests in a row (ejection {n})",
            self.name,
            state.addr
        );
    }

    /// Readmits backends whose ejection is over, and lets the ejection count of a backend that
    /// stayed in for a whole base period decay by one. Called by the health checker's tick.
    pub(crate) fn expire_ejections(&self, set: &BackendSet, now: u64) {
        let Some(policy) = &self.policy.outlier else {
            return;
        };
        let base = policy.base_ejection.as_millis() as u64;
        for b in set.backends() {
            let s = &b.state;
            let end = s.ejection_end_ms.load(Ordering::Relaxed);
            if s.is(EJECTED) {
                if now >= end && s.set(EJECTED, false) {
                    s.rejoined();
                    log::info!(
                        "upstream {}: backend {} readmitted after ejection",
                        self.name,
                        s.addr
                    );
                }
            } else if s.ejections() > 0 && now >= end + base {
                s.ejections.fetch_sub(1, Ordering::Relaxed);
                s.ejection_end_ms.store(now, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_grow_to_the_cap_and_the_share_is_bounded() {
        let p = OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 50,
        };
        assert_eq!(p.ejection(1), Duration::from_secs(10));
        assert_eq!(p.ejection(2), Duration::from_secs(20));
        assert_eq!(p.ejection(9), Duration::from_secs(25));
        assert_eq!(p.cap(1), 1);
        assert_eq!(p.cap(3), 1);
        assert_eq!(p.cap(10), 5);
    }
}
