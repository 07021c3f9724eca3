//! The circuit breaker of an upstream: when its requests keep failing (a failure ratio over a
//! minimum count in a window, or failures in a row) it opens and answers 503 at once, sparing a
//! struggling service; after a pause it lets a few probe requests through (half-open) and closes
//! when they succeed.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use super::Invalid;
use crate::clock::now_ms;

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// Opens when at least this share of the window's requests failed...
    pub failure_ratio: f64,
    /// ...and the window saw at least this many.
    pub min_requests: u32,
    pub window: Duration,
    /// Or when this many failed in a row.
    pub consecutive_failures: u32,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Probe requests let through while half-open; all must succeed to close.
    pub probes: u32,
}

impl BreakerPolicy {
    pub const DEFAULT_FAILURE_RATIO: f64 = 0.5;
    pub const DEFAULT_MIN_REQUESTS: u32 = 20;
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
    pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 10;
    pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(5);
    pub const DEFAULT_PROBES: u32 = 3;

    /// A policy whose every value makes sense, or each value that does not, under its config
    /// key (`circuit_breaker.<key>`).
    pub fn try_new(
        failure_ratio: f64,
        min_requests: u32,
        window: Duration,
        consecutive_failures: u32,
        open_for: Duration,
        probes: u32,
    ) -> Result<BreakerPolicy, Vec<Invalid>> {
        let mut invalid = Vec::new();
        if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
            invalid.push(Invalid::new(
                "failure_ratio",
                "must be above 0 and at most 1",
            ));
        }
        for (key, n) in [
            ("min_requests", min_requests),
            ("consecutive_failures", consecutive_failures),
            ("probes", probes),
        ] {
            if n == 0 {
                invalid.push(Invalid::new(key, "must be at least 1"));
            }
        }
        if window.is_zero() {
            invalid.push(Invalid::new("window", "must be above zero"));
        }
        if open_for.is_zero() {
            invalid.push(Invalid::new("open_for", "must be above zero"));
        }
        if !invalid.is_empty() {
            return Err(invalid);
        }
        Ok(BreakerPolicy {
            failure_ratio,
            min_requests,
            window,
            consecutive_failures,
            open_for,
            probes,
        })
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug)]
pub struct Breaker {
    /// The upstream's, for the log.
    name: String,
    policy: BreakerPolicy,
    state: AtomicU8,
    /// When it last opened, in [`now_ms`] time.
    opened_ms: AtomicU64,
    /// The current window: its start, its requests and failures.
    window_ms: AtomicU64,
    requests: AtomicU32,
    failures: AtomicU32,
    in_a_row: AtomicU32,
    /// Half-open: probes let through, and those that succeeded.
    probes_sent: AtomicU32,
    probes_ok: AtomicU32,
}

/// Whether a request may go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// A half-open probe: its outcome decides.
    Probe,
    /// Open: answer 503 without trying.
    No,
}

impl Breaker {
    pub fn new(name: &str, policy: BreakerPolicy) -> Breaker {
        Breaker {
            name: name.to_owned(),
            policy,
            state: AtomicU8::new(CLOSED),
            opened_ms: AtomicU64::new(0),
            window_ms: AtomicU64::new(now_ms()),
            requests: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            in_a_row: AtomicU32::new(0),
            probes_sent: AtomicU32::new(0),
            probes_ok: AtomicU32::new(0),
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            OPEN => "open",
            HALF_OPEN => "half_open",
            _ => "closed",
        }
    }

    #[inline]
    pub fn admit(&self) -> Admit {
        match self.state.load(Ordering::Relaxed) {
            CLOSED => Admit::Yes,
            OPEN => {
                let since = now_ms().saturating_sub(self.opened_ms.load(Ordering::Relaxed));
                if since < self.policy.open_for.as_millis() as u64 {
                    return Admit::No;
                }
                // The first request after the pause moves it to half-open.
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    self.probes_sent.store(0, Ordering::Relaxed);
                    self.probes_ok.store(0, Ordering::Relaxed);
                    log::info!("upstream {}: circuit half-open, probing", self.name);
                }
                self.probe()
            }
            _ => self.probe(),
        }
    }

    fn probe(&self) -> Admit {
        let sent = self.probes_sent.fetch_add(1, Ordering::Relaxed);
        if sent < self.policy.probes {
            Admit::Probe
        } else {
            Admit::No
        }
    }

    /// The outcome of an admitted request; `true` when it opened the circuit.
    pub fn record(&self, admitted: Admit, failed: bool) -> bool {
        if admitted == Admit::Probe {
            if failed {
                return self.open();
            }
            let ok = self.probes_ok.fetch_add(1, Ordering::Relaxed) + 1;
            if ok >= self.policy.probes
                && self
                    .state
                    .compare_exchange(HALF_OPEN, CLOSED, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.reset_window(now_ms());
                self.in_a_row.store(0, Ordering::Relaxed);
                log::info!(
                    "upstream {}: circuit closed after {ok} successful probes",
                    self.name
                );
            }
            return false;
        }
        let now = now_ms();
        let start = self.window_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= self.policy.window.as_millis() as u64 {
            self.reset_window(now);
        }
        let requests = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if !failed {
            self.in_a_row.store(0, Ordering::Relaxed);
            return false;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let in_a_row = self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        let ratio_tripped = requests >= self.policy.min_requests
            && failures as f64 >= self.policy.failure_ratio * requests as f64;
        if ratio_tripped || in_a_row >= self.policy.consecutive_failures {
            return self.open();
        }
        false
    }

    fn open(&self) -> bool {
        self.opened_ms.store(now_ms(), Ordering::Relaxed);
        let was = self.state.swap(OPEN, Ordering::Relaxed);
        self.in_a_row.store(0, Ordering::Relaxed);
        was != OPEN
    }

    fn reset_window(&self, now: u64) {
        self.window_ms.store(now, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(60),
            consecutive_failures: 4,
            open_for: Duration::ZERO,
            probes: 2,
        }
    }

    #[test]
    fn opens_on_failures_in_a_row_probes_and_closes() {
        let b = Breaker::new("u", policy());
        for _ in 0..3 {
            assert_eq!(b.admit(), Admit::Yes);
            assert!(!b.record(Admit::Yes, true));
        }
        assert!(b.record(Admit::Yes, true), "the fourth in a row opens it");
        // open_for is zero: the next request probes; only `probes` go through.
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No);
        assert_eq!(b.state_name(), "half_open");
        b.record(Admit::Probe, false);
        b.record(Admit::Probe, false);
        assert_eq!(b.state_name(), "closed");
        assert_eq!(b.admit(), Admit::Yes);
    }

    #[test]
    fn a_failed_probe_opens_again_and_the_ratio_trips_too() {
        let b = Breaker::new(
            "u",
            BreakerPolicy {
                open_for: Duration::from_secs(60),
                ..policy()
            },
        );
        // 6 failures out of 12, never 4 in a row.
        for i in 0..12 {
            b.record(Admit::Yes, i % 2 == 0);
        }
        assert_eq!(b.state_name(), "open");
        assert_eq!(b.admit(), Admit::No);

        let b = Breaker::new("u", policy());
        for _ in 0..4 {
            b.record(Admit::Yes, true);
        }
        assert_eq!(b.admit(), Admit::Probe);
        assert!(b.record(Admit::Probe, true));
        assert_eq!(b.state_name(), "open");
    }

    /// Lets `ms` of paused time pass.
    async fn pass(ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_that_ends_forgets_its_requests() {
        let policy = BreakerPolicy {
            window: Duration::from_secs(10),
            consecutive_failures: 100,
            open_for: Duration::from_secs(60),
            ..policy()
        };
        // Both see 9 requests, 5 of them failed; the tenth, failed too, comes on the window's
        // last millisecond for one and on the next window's first for the other.
        let inside = Breaker::new("u", policy.clone());
        let after = Breaker::new("u", policy);
        for i in 0..9 {
            inside.record(Admit::Yes, i % 2 == 0);
            after.record(Admit::Yes, i % 2 == 0);
        }
        pass(9_999).await;
        assert!(
            inside.record(Admit::Yes, true),
            "6 of 10 failed in one window"
        );
        pass(1).await;
        assert!(!after.record(Admit::Yes, true), "a new window: 1 of 1");
        assert_eq!(after.state_name(), "closed");
        // The new window counts from its own start.
        for i in 0..8 {
            after.record(Admit::Yes, i % 2 == 0);
        }
        assert_eq!(after.state_name(), "closed", "5 of 9 is too few requests");
        assert!(after.record(Admit::Yes, true), "6 of 10 in the new window");
    }

    #[tokio::test(start_paused = true)]
    async fn it_stays_open_for_open_for_then_probes() {
        let b = Breaker::new(
            "u",
            BreakerPolicy {
                open_for: Duration::from_secs(5),
                ..policy()
            },
        );
        for _ in 0..4 {
            b.record(Admit::Yes, true);
        }
        assert_eq!(b.state_name(), "open");
        pass(4_999).await;
        assert_eq!(b.admit(), Admit::No);
        assert_eq!(b.state_name(), "open");
        pass(1).await;
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.state_name(), "half_open");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_restarts_the_pause_and_good_probes_close_it() {
        let b = Breaker::new(
            "u",
            BreakerPolicy {
                open_for: Duration::from_secs(5),
                ..policy()
            },
        );
        for _ in 0..4 {
            b.record(Admit::Yes, true);
        }
        pass(5_000).await;
        assert_eq!(b.admit(), Admit::Probe);
        pass(3_000).await;
        assert!(
            b.record(Admit::Probe, true),
            "a failed probe opens it again"
        );
        // The pause counts from the failed probe, not from the first opening.
        pass(4_999).await;
        assert_eq!(b.admit(), Admit::No);
        pass(1).await;
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No, "only `probes` go through");
        b.record(Admit::Probe, false);
        assert_eq!(b.state_name(), "half_open", "one good probe of two");
        b.record(Admit::Probe, false);
        assert_eq!(b.state_name(), "closed");
        assert_eq!(b.admit(), Admit::Yes);
        // Closed afresh: the failures before it opened no longer count.
        for _ in 0..3 {
            assert!(!b.record(Admit::Yes, true));
        }
        assert!(b.record(Admit::Yes, true), "four new failures in a row");
    }
}
