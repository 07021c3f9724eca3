//! How a game listener's `drain` window fits Pingora's shutdown.
//!
//! On SIGTERM (and on SIGQUIT, after the listening sockets went to the new process) Pingora
//! flips every service's `ShutdownWatch`: the accept loops stop, and each open session sends
//! its client the go-away frame and keeps working until `drain` has passed (the app closes it
//! then with `CloseReason::Shutdown`). Meanwhile Pingora's main thread sleeps
//! `server.grace_period`, whatever is still open, and then gives its runtimes
//! `server.graceful_shutdown_timeout` before the process exits, cutting what is left. A drain
//! longer than the grace period would be cut short without its clients being told when, so the
//! grace period the process runs with is raised to cover the longest drain plus the time a
//! session takes to write its close frame; `server.grace_period` stays the floor (HTTP requests
//! in flight keep what they had).
//!
//! The raised grace period is a ceiling, not a wait: the process exits on its own as soon as
//! every game connection has closed (its client left, or its window ended), what was queued
//! toward the backends is written and the shutdown housekeeping is done (`runtime::stop`, which
//! reads each game listener's `app::Pending`). A gateway with no session open stops at once.

use std::time::Duration;

/// What a session takes past its drain window to write its close frame and close.
pub const CLOSE_MARGIN: Duration = Duration::from_secs(2);

/// The grace period the process runs with: `configured`, or longer when a game listener's
/// drain (one of `drains`) needs more. Whole seconds, as Pingora takes it.
pub fn grace_period(configured: Duration, drains: impl IntoIterator<Item = Duration>) -> Duration {
    let needed = drains
        .into_iter()
        .max()
        .map_or(Duration::ZERO, |d| d + CLOSE_MARGIN);
    let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs(configured).max(secs(needed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_grace_period_covers_the_longest_drain() {
        assert_eq!(
            grace_period(S(5), []),
            S(5),
            "no game listener: as configured"
        );
        assert_eq!(grace_period(S(5), [S(30), S(10)]), S(32));
        assert_eq!(
            grace_period(S(60), [S(30)]),
            S(60),
            "a longer grace period stands"
        );
        assert_eq!(
            grace_period(S(1), [Duration::from_millis(1500)]),
            S(4),
            "rounded up to whole seconds"
        );
        assert_eq!(grace_period(S(5), [Duration::ZERO]), S(5));
    }
}
