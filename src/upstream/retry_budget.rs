//! The retry budget of an upstream: retries may add at most a share of its recent requests,
//! plus a small floor per second so that a quiet upstream can still retry. A failing upstream
//! then sees its load grow by that share at most, instead of multiplied by the retry count.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use super::Invalid;
use crate::clock::now_ms;

/// One retry, in the budget's unit.
const RETRY: i64 = 1000;

#[derive(Debug)]
pub struct RetryBudget {
    /// Deposited per request, in thousandths of a retry (20% = 200).
    per_request: i64,
    min_per_second: u32,
    /// At most this much is saved up, so that a long quiet spell cannot fund a burst.
    cap: i64,
    balance: AtomicI64,
    /// The floor's current second and the retries taken from it.
    second: AtomicU64,
    floor_used: AtomicU32,
}

impl RetryBudget {
    pub const DEFAULT_PERCENT: u32 = 20;
    pub const DEFAULT_MIN_PER_SECOND: u32 = 10;

    /// A budget of `percent` (0 to 100) of the requests, or why not, under its config key
    /// (`retry_budget.percent`).
    pub fn try_new(percent: u32, min_per_second: u32) -> Result<RetryBudget, Invalid> {
        if percent > 100 {
            return Err(Invalid::new("percent", "must be 0 to 100"));
        }
        Ok(RetryBudget::new(percent, min_per_second))
    }

    pub fn new(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            per_request: percent as i64 * RETRY / 100,
            min_per_second,
            cap: 100 * RETRY,
            balance: AtomicI64::new(0),
            second: AtomicU64::new(0),
            floor_used: AtomicU32::new(0),
        }
    }

    /// Every request (not retry) adds its share.
    #[inline]
    pub fn deposit(&self) {
        if self.per_request > 0 && self.balance.load(Ordering::Relaxed) < self.cap {
            self.balance.fetch_add(self.per_request, Ordering::Relaxed);
        }
    }

    /// Whether one more retry may go out now; takes it from the budget if so.
    pub fn withdraw(&self) -> bool {
        let now = now_ms() / 1000;
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.floor_used.store(0, Ordering::Relaxed);
        }
        if self.floor_used.fetch_add(1, Ordering::Relaxed) < self.min_per_second {
            return true;
        }
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= RETRY).then_some(b - RETRY)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_requests_above_the_floor() {
        let b = RetryBudget::new(20, 2);
        assert!(b.withdraw() && b.withdraw(), "the floor");
        assert!(!b.withdraw(), "nothing saved yet");
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.withdraw() && b.withdraw(), "20% of 10 requests");
        assert!(!b.withdraw());
    }

    #[test]
    fn savings_are_capped() {
        let b = RetryBudget::new(100, 0);
        for _ in 0..1000 {
            b.deposit();
        }
        let granted = (0..1000).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_comes_back_each_second_and_savings_keep() {
        let pass = |ms| tokio::time::advance(std::time::Duration::from_millis(ms));
        // Start on a second's first millisecond, so that each step below knows its second.
        pass(1_000 - now_ms() % 1_000).await;
        let b = RetryBudget::new(20, 2);
        assert!(b.withdraw() && b.withdraw(), "this second's floor");
        assert!(!b.withdraw());
        pass(999).await;
        assert!(!b.withdraw(), "the same second: its floor is spent");
        pass(1).await;
        assert!(b.withdraw() && b.withdraw(), "a new second, a new floor");
        assert!(!b.withdraw());
        // 5 requests at 20% save one retry, and time does not take it away.
        for _ in 0..5 {
            b.deposit();
        }
        pass(60_000).await;
        assert!(b.withdraw() && b.withdraw(), "the floor");
        assert!(b.withdraw(), "the saved retry");
        assert!(!b.withdraw());
    }
}
