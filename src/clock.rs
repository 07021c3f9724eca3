//! The one clock of the process: milliseconds on a monotonic clock, read by every window,
//! back-off, ramp and timer outside Pingora's own.
//!
//! It reads tokio's clock so that a test can drive it: under
//! `#[tokio::test(start_paused = true)]`, `tokio::time::advance` moves every breaker window,
//! ejection, ramp and budget second that reads it, with no sleep. That needs tokio's
//! `test-util` feature, which pingora-core 0.9 turns on in every build (through its
//! `tokio-test` dependency) and our `[dev-dependencies]` name as well. On the request path it
//! costs one atomic load: until some runtime pauses its clock, which only tests do,
//! `tokio::time::Instant::now()` is `std::time::Instant::now()`.

use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::Instant;

/// How far before its first reading the clock's zero lies. A paused test runtime stands still
/// at the moment it was built; another test may read the clock first, a little later in real
/// time, and readings before the zero would all be 0. A day back keeps every paused runtime of
/// a test run after the zero. Outside tests the zero is the first reading.
const ZERO_BEFORE_FIRST_READ: Duration = if cfg!(test) {
    Duration::from_secs(24 * 3600)
} else {
    Duration::ZERO
};

/// Milliseconds on a process-wide monotonic clock.
#[inline]
pub fn now_ms() -> u64 {
    static ZERO: LazyLock<Instant> = LazyLock::new(|| {
        let now = Instant::now();
        now.checked_sub(ZERO_BEFORE_FIRST_READ).unwrap_or(now)
    });
    // Saturating: an instant before the zero reads 0.
    (Instant::now() - *ZERO).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_only_when_advanced() {
        let t0 = now_ms();
        assert_eq!(now_ms(), t0, "a paused clock stands still");
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(now_ms(), t0 + 1_500);
    }
}
