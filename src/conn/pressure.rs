//! File-descriptor pressure: near the process's limit, the connections idle the longest (new
//! ones that sent nothing yet and keep-alive ones between requests) are closed first, the way
//! nginx reuses its idle connections when it runs out of them.
//!
//! Idle connections are counted per second of the moment they became idle, in a ring of
//! atomics (no lock on the request path). Relief picks the cut-off second that frees the number
//! wanted, oldest first, and wakes the idle connections; those idle since before the cut-off
//! close themselves. The wake-up goes through one `Notify` per worker thread, so that a
//! connection going idle registers on its own thread's list, never on one shared by all.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::LazyLock;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::log::LogLimiter;
use super::state::Nanos;

/// Seconds the ring covers; longer than any idle wait validation allows
/// ([`super::MAX_TIMEOUT`]), so a slot is never shared by two laps.
const BUCKETS: usize = 1024;
const SHARDS: usize = 16;

/// The idle connections of the whole process, for `relieve`.
pub static IDLE: LazyLock<IdleSet> = LazyLock::new(IdleSet::new);

pub struct IdleSet {
    by_second: Box<[AtomicI32]>,
    /// Connections idle since before this second (on the clock base) are to close.
    cutoff: AtomicU64,
    shards: Box<[Notify]>,
}

impl std::fmt::Debug for IdleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleSet")
            .field("idle", &self.count())
            .finish()
    }
}

impl Default for IdleSet {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleSet {
    pub fn new() -> IdleSet {
        IdleSet {
            by_second: (0..BUCKETS).map(|_| AtomicI32::new(0)).collect(),
            cutoff: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Notify::new()).collect(),
        }
    }

    pub fn enter(&self, sec: u64) {
        self.by_second[sec as usize % BUCKETS].fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self, sec: u64) {
        self.by_second[sec as usize % BUCKETS].fetch_sub(1, Ordering::Relaxed);
    }

    /// Idle connections now.
    pub fn count(&self) -> u64 {
        self.by_second
            .iter()
            .map(|c| c.load(Ordering::Relaxed).max(0) as u64)
            .sum()
    }

    pub fn should_evict(&self, idle_since: u64) -> bool {
        idle_since < self.cutoff.load(Ordering::Relaxed)
    }

    /// The wake-up an idle connection waits on: its thread's.
    pub fn notified(&self) -> Notified<'_> {
        thread_local! {
            static SHARD: usize = {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
            };
        }
        self.shards[SHARD.with(|s| *s)].notified()
    }

    /// Marks the `want` longest idle connections (or all, if fewer are idle) for closing and
    /// wakes them. Returns how many were marked.
    pub fn relieve(&self, now_sec: u64, want: u64) -> u64 {
        let oldest = now_sec.saturating_sub(BUCKETS as u64 - 1);
        let mut marked = 0;
        let mut cutoff = oldest;
        for sec in oldest..=now_sec {
            if marked >= want {
                break;
            }
            marked += self.by_second[sec as usize % BUCKETS]
                .load(Ordering::Relaxed)
                .max(0) as u64;
            cutoff = sec + 1;
        }
        if marked == 0 {
            return 0;
        }
        self.cutoff.fetch_max(cutoff, Ordering::Relaxed);
        for shard in self.shards.iter() {
            shard.notify_waiters();
        }
        marked
    }
}

/// The file-descriptor limit the process runs with, and the free fds it keeps in reserve.
struct FdLimit {
    /// Pressure when an fd number at or above this is handed out (0: unknown, never).
    threshold: AtomicU64,
    reserve: AtomicU64,
    last_relief: AtomicU64,
    log: LogLimiter,
}

static FD: FdLimit = FdLimit {
    threshold: AtomicU64::new(0),
    reserve: AtomicU64::new(0),
    last_relief: AtomicU64::new(0),
    log: LogLimiter::new(10_000_000_000),
};

/// Reliefs at most this often: each closes a batch, and the fds they free take a moment to be
/// reused.
const RELIEF_EVERY: Nanos = 100_000_000;

/// The free fds kept in reserve for a soft limit: a sixteenth, between 16 and 1024.
pub fn reserve_for(soft_limit: u64) -> u64 {
    (soft_limit / 16).clamp(16, 1024)
}

/// Reads the process's soft `RLIMIT_NOFILE` (after start-up raised it) once.
pub fn init_fd_limit() {
    let Some(soft) = soft_fd_limit() else {
        log::warn!("cannot read RLIMIT_NOFILE: idle connections are not closed under fd pressure");
        return;
    };
    let reserve = reserve_for(soft);
    FD.reserve.store(reserve, Ordering::Relaxed);
    FD.threshold
        .store(soft.saturating_sub(reserve), Ordering::Relaxed);
    log::info!(
        "file descriptors: limit {soft}; past {} in use, the longest idle connections are closed first",
        soft.saturating_sub(reserve)
    );
}

fn soft_fd_limit() -> Option<u64> {
    let lim = fd_limits().ok()?;
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

fn fd_limits() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, at start: every client and backend
/// connection is a file descriptor, and the usual soft default of 1024 is reached by a few
/// hundred clients.
pub fn raise_fd_limit() {
    let mut lim = match fd_limits() {
        Ok(l) => l,
        Err(e) => {
            log::warn!("cannot read RLIMIT_NOFILE: {e}");
            return;
        }
    };
    if lim.rlim_cur >= lim.rlim_max {
        log::info!(
            "open files limit: {} (already the hard limit)",
            lim.rlim_cur
        );
        return;
    }
    let before = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit only reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        log::warn!(
            "cannot raise the open files limit from {before} to {}: {}",
            lim.rlim_max,
            std::io::Error::last_os_error()
        );
        return;
    }
    log::info!(
        "open files limit raised from {before} to {} (the hard limit)",
        lim.rlim_max
    );
}

/// A new connection got fd number `fd`. The kernel hands out the lowest free number, so a
/// number near the limit means nearly every fd below it is taken: that costs nothing to check.
pub fn on_accept(fd: i32, now: Nanos) {
    let threshold = FD.threshold.load(Ordering::Relaxed);
    if threshold > 0 && fd >= 0 && fd as u64 >= threshold {
        relieve(fd as u64, now);
    }
}

/// The accept loop stops seeing connections once no fd is left, so a timer also probes: it
/// opens `/dev/null` and looks at the number it gets (or the EMFILE it gets).
pub fn probe(now: Nanos) {
    let threshold = FD.threshold.load(Ordering::Relaxed);
    if threshold == 0 {
        return;
    }
    // SAFETY: a plain open of a constant NUL-terminated path; the fd is closed right away.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        relieve(threshold, now);
        return;
    }
    // SAFETY: fd was just opened by us and is not shared.
    unsafe { libc::close(fd) };
    if fd as u64 >= threshold {
        relieve(fd as u64, now);
    }
}

fn relieve(fd: u64, now: Nanos) {
    let last = FD.last_relief.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < RELIEF_EVERY {
        return;
    }
    if FD
        .last_relief
        .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let want = FD.reserve.load(Ordering::Relaxed);
    let marked = IDLE.relieve(now / 1_000_000_000, want);
    if let Some(suppressed) = FD.log.allow(now) {
        let limit = FD.threshold.load(Ordering::Relaxed) + want;
        let note = super::log::suppressed_note(suppressed);
        if marked > 0 {
            log::warn!("file descriptors nearly exhausted (fd {fd}, limit {limit}): closing the {marked} longest idle connections{note}");
        } else {
            log::warn!("file descriptors nearly exhausted (fd {fd}, limit {limit}), and no idle connection to close{note}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relief_takes_the_longest_idle_first() {
        let set = IdleSet::new();
        for _ in 0..3 {
            set.enter(100);
        }
        for _ in 0..5 {
            set.enter(105);
        }
        set.enter(110);
        // Four wanted: the three idle since second 100 are not enough, so those of 105 go too,
        // and the one of 110 stays.
        assert_eq!(set.relieve(120, 4), 8);
        assert!(set.should_evict(100));
        assert!(set.should_evict(105));
        assert!(!set.should_evict(110));
    }

    #[test]
    fn relief_with_nobody_idle_marks_nothing() {
        let set = IdleSet::new();
        assert_eq!(set.relieve(50, 10), 0);
        assert!(!set.should_evict(49));
    }

    #[test]
    fn relief_reads_the_ring_across_its_wrap() {
        let set = IdleSet::new();
        set.enter(1020);
        set.enter(1030);
        assert_eq!(set.relieve(1040, 1), 1);
        assert!(set.should_evict(1020));
        assert!(!set.should_evict(1030));
    }

    #[tokio::test]
    async fn relief_wakes_idle_waiters() {
        let set: &'static IdleSet = Box::leak(Box::new(IdleSet::new()));
        set.enter(1);
        let waiter = set.notified();
        assert_eq!(set.relieve(10, 1), 1);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken");
    }

    #[test]
    fn the_reserve_is_a_sixteenth_within_bounds() {
        assert_eq!(reserve_for(256), 16);
        assert_eq!(reserve_for(1024), 64);
        assert_eq!(reserve_for(1 << 20), 1024);
        assert_eq!(reserve_for(10), 16);
    }
}
