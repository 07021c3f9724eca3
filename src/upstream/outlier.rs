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
        let Some((n, length)) = policy.eject(state, now_ms()) else {
            return; // another request got there first
        };
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
    /// stayed in for a whole base period decay by one. Called on the housekeeping tick.
    pub(crate) fn expire_ejections(&self, set: &BackendSet, now: u64) {
        let Some(policy) = &self.policy.outlier else {
            return;
        };
        for b in set.backends() {
            if policy.expire(&b.state, now) {
                log::info!(
                    "upstream {}: backend {} readmitted after ejection",
                    self.name,
                    b.state.addr
                );
            }
        }
    }
}

impl OutlierPolicy {
    /// Ejects `state` at `now` for as long as its ejection count calls for: the count and the
    /// length, or `None` when it was out already.
    fn eject(&self, state: &BackendState, now: u64) -> Option<(u32, Duration)> {
        if !state.set(EJECTED, true) {
            return None;
        }
        let n = state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = self.ejection(n);
        state
            .ejection_end_ms
            .store(now + length.as_millis() as u64, Ordering::Relaxed);
        state.errors.store(0, Ordering::Relaxed);
        Some((n, length))
    }

    /// At `now`: readmits `state` if its ejection is over (`true`, and its slow start begins),
    /// or takes one off its ejection count once it has stayed in for a whole base period since
    /// its last ejection ended (or its count last decayed).
    fn expire(&self, state: &BackendState, now: u64) -> bool {
        let base = self.base_ejection.as_millis() as u64;
        let end = state.ejection_end_ms.load(Ordering::Relaxed);
        if state.is(EJECTED) {
            if now >= end && state.set(EJECTED, false) {
                state.rejoined();
                return true;
            }
        } else if state.ejections() > 0 && now >= end + base {
            state.ejections.fetch_sub(1, Ordering::Relaxed);
            state.ejection_end_ms.store(now, Ordering::Relaxed);
        }
        false
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

    /// What the housekeeping tick does to `s` from `from` to `to` (inclusive), every 100 ms.
    fn ticks(p: &OutlierPolicy, s: &BackendState, from: u64, to: u64) {
        for now in (from..=to).step_by(100) {
            p.expire(s, now);
        }
    }

    // Paused: readmission starts a slow start at the clock's now, which then stands still.
    #[tokio::test(start_paused = true)]
    async fn ejections_grow_while_they_repeat_and_decay_while_it_behaves() {
        let p = OutlierPolicy {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        };
        let s = BackendState::new("127.0.0.1:1".parse().unwrap(), false);
        let t = 1_000_000;
        assert_eq!(p.eject(&s, t), Some((1, Duration::from_secs(10))));
        assert_eq!(p.eject(&s, t), None, "out already");
        ticks(&p, &s, t, t + 9_900);
        assert!(s.is(EJECTED), "still out at 9.9 s");
        assert!(p.expire(&s, t + 10_000), "readmitted after 10 s");
        assert!(s.available());
        assert_eq!(s.joined_ms(), now_ms(), "its slow start begins");

        // Failing again soon after: out twice as long.
        let t = t + 12_000;
        assert_eq!(p.eject(&s, t), Some((2, Duration::from_secs(20))));
        ticks(&p, &s, t, t + 19_900);
        assert!(s.is(EJECTED));
        assert!(p.expire(&s, t + 20_000));
        let back = t + 20_000;

        // In for a whole base period (10 s) after its ejection ended: the count decays by one,
        // and by one more after the next period, not sooner.
        ticks(&p, &s, back, back + 9_900);
        assert_eq!(s.ejections(), 2);
        ticks(&p, &s, back + 10_000, back + 19_900);
        assert_eq!(s.ejections(), 1);
        ticks(&p, &s, back + 20_000, back + 20_000);
        assert_eq!(s.ejections(), 0);
        let t = back + 25_000;
        assert_eq!(
            p.eject(&s, t),
            Some((1, Duration::from_secs(10))),
            "forgiven: back to the base length"
        );
    }
}
