//! Logging that an attack cannot turn into a flood: at most one line per interval for a kind of
//! event, with the number of those left out; and the process logger that applies the same to
//! Pingora's accept loop.

use std::sync::atomic::{AtomicU64, Ordering};

use super::clock;
use super::state::Nanos;

/// One line per `every`; the events in between are counted, and the next line says how many.
#[derive(Debug)]
pub struct LogLimiter {
    next: AtomicU64,
    suppressed: AtomicU64,
    every: Nanos,
}

impl LogLimiter {
    pub const fn new(every: Nanos) -> LogLimiter {
        LogLimiter {
            next: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            every,
        }
    }

    /// `Some(n)` when a line may be written at `now`, `n` being the events left out since the
    /// last one; `None` when this one is to be left out.
    pub fn allow(&self, now: Nanos) -> Option<u64> {
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(self.every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// `" (and N more like it since the last line)"`, or nothing.
pub fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" (and {n} more like it since the last line)")
    }
}

/// Pingora's accept loop logs `Accept() failed: Too many open files` at ERROR for every failed
/// accept (it then sleeps a second, per listener) and a handshake error for every client that
/// fails one; under an attack either is a line per connection. Pingora's code cannot be told
/// otherwise, so its lines are rate-limited here, at the logger, for that one target.
const PINGORA_ACCEPT_LOOP: &str = "pingora_core::services::listening";

pub struct Throttled {
    inner: env_logger::Logger,
    accept_loop: LogLimiter,
}

impl Throttled {
    pub fn new(inner: env_logger::Logger) -> Throttled {
        Throttled {
            inner,
            accept_loop: LogLimiter::new(10_000_000_000),
        }
    }

    /// Installs `inner`, throttled, as the process logger.
    pub fn install(inner: env_logger::Logger) -> Result<(), log::SetLoggerError> {
        let level = inner.filter();
        log::set_boxed_logger(Box::new(Throttled::new(inner)))?;
        log::set_max_level(level);
        Ok(())
    }
}

impl log::Log for Throttled {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if record.target() != PINGORA_ACCEPT_LOOP || record.level() > log::Level::Warn {
            return self.inner.log(record);
        }
        let Some(suppressed) = self.accept_loop.allow(clock::now()) else {
            return;
        };
        self.inner.log(record);
        if suppressed > 0 {
            self.inner.log(
                &log::Record::builder()
                    .args(format_args!(
                        "{suppressed} more lines like it left out in the last 10 s"
                    ))
                    .level(record.level())
                    .target(record.target())
                    .build(),
            );
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    #[test]
    fn one_line_per_interval_and_the_count_of_the_rest() {
        let l = LogLimiter::new(10 * S);
        assert_eq!(l.allow(5 * S), Some(0));
        assert_eq!(l.allow(6 * S), None);
        assert_eq!(l.allow(14 * S), None);
        assert_eq!(l.allow(15 * S), Some(2));
        assert_eq!(l.allow(15 * S), None);
        assert_eq!(l.allow(40 * S), Some(1));
    }

    #[test]
    fn the_note_says_how_many_were_left_out() {
        assert_eq!(suppressed_note(0), "");
        assert_eq!(
            suppressed_note(3),
            " (and 3 more like it since the last line)"
        );
    }
}
