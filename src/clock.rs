//! The one clock of the process: milliseconds on a monotonic clock, read by every window,
//! back-off, ramp and timer outside Pingora's own.

use std::sync::LazyLock;
use std::time::Instant;

/// Milliseconds on a process-wide monotonic clock.
pub fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}
