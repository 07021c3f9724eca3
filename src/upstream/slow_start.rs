//! Slow start: a backend that joins an upstream, or comes back after being unhealthy or
//! ejected, gets a share of traffic that grows over a window instead of its full share at once,
//! so that a cold cache or JIT is not flooded. While any backend ramps, the set is rebuilt on the
//! housekeeping tick with the weights of the moment.

use std::time::Duration;

use super::state::BackendState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowStart {
    pub window: Duration,
}

/// Weights are balanced in hundredths while something ramps, so that a ramp has steps.
pub const SCALE: u64 = 100;
/// A ramping backend starts at this share of its weight.
const MIN_PERCENT: u64 = 10;

impl SlowStart {
    /// `weight` in [`SCALE`]ths as it stands `now` for `state`; `None` once the window is over.
    pub fn ramped(&self, weight: u32, state: &BackendState, now_ms: u64) -> Option<u64> {
        let window = self.window.as_millis() as u64;
        let elapsed = now_ms.saturating_sub(state.joined_ms());
        if weight == 0 || window == 0 || elapsed >= window {
            return None;
        }
        let full = weight as u64 * SCALE;
        Some(
            (full * elapsed / window)
                .max(full * MIN_PERCENT / 100)
                .max(1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_from_a_tenth_to_the_full_weight() {
        let s = SlowStart {
            window: Duration::from_secs(10),
        };
        let b = BackendState::new("127.0.0.1:1".parse().unwrap(), false);
        let t0 = b.joined_ms();
        assert_eq!(s.ramped(4, &b, t0), Some(40));
        assert_eq!(s.ramped(4, &b, t0 + 5_000), Some(200));
        assert_eq!(s.ramped(4, &b, t0 + 9_990), Some(399));
        assert_eq!(s.ramped(4, &b, t0 + 10_000), None);
        assert_eq!(s.ramped(0, &b, t0), None, "a drained weight stays 0");
    }

    #[tokio::test(start_paused = true)]
    async fn the_ramp_follows_the_clock_and_starts_again_on_rejoining() {
        use crate::clock::now_ms;
        let pass = |ms| tokio::time::advance(Duration::from_millis(ms));
        let s = SlowStart {
            window: Duration::from_secs(10),
        };
        let b = BackendState::new("127.0.0.1:1".parse().unwrap(), false);
        assert_eq!(s.ramped(4, &b, now_ms()), Some(40), "a tenth on joining");
        pass(500).await;
        assert_eq!(s.ramped(4, &b, now_ms()), Some(40), "never below a tenth");
        pass(2_000).await;
        assert_eq!(s.ramped(4, &b, now_ms()), Some(100));
        pass(7_499).await;
        assert_eq!(s.ramped(4, &b, now_ms()), Some(399));
        pass(1).await;
        assert_eq!(s.ramped(4, &b, now_ms()), None, "the window is over");
        // Back from an ejection or a failed health check: the ramp starts over.
        b.rejoined();
        assert_eq!(s.ramped(4, &b, now_ms()), Some(40));
        pass(5_000).await;
        assert_eq!(s.ramped(4, &b, now_ms()), Some(200));
    }
}
