//! The timeout state machine of one client connection: which deadline applies now (the request
//! head's, the keep-alive wait's, or none while a request is served), driven by plain numbers of
//! nanoseconds so that it is tested on a controlled clock.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::pressure::IdleSet;

/// Nanoseconds since the process's clock base ([`super::clock`]).
pub type Nanos = u64;

const NO_DEADLINE: Nanos = Nanos::MAX;
const NOT_IDLE: u64 = u64::MAX;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Accepted, nothing read yet: the head deadline counts from the accept (as nginx's
    /// `client_header_timeout` does for a new connection).
    Fresh = 0,
    /// Between two requests of a keep-alive connection, nothing of the next one read yet.
    Idle = 1,
    /// Part of a request head has arrived, not all of it.
    Head = 2,
    /// The head is complete: the request is served, with no deadline of ours (the body's read
    /// gaps are bounded by Pingora's read timeout).
    Request = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Fresh,
            1 => Phase::Idle,
            2 => Phase::Head,
            _ => Phase::Request,
        }
    }
}

/// Why a connection was closed by its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    Header,
    Keepalive,
}

/// The state one connection shares between its IO wrapper (which sees the first byte of each
/// request), the proxy's first phase (which sees the head complete) and the connection loop
/// (which waits on the deadline). Atomics only because those are reached through `Arc`; they
/// are all touched from the connection's own task.
#[derive(Debug)]
pub struct ConnState {
    phase: AtomicU8,
    deadline: AtomicU64,
    /// The second (on the clock base) the connection became idle, while it is idle.
    idle_since: AtomicU64,
    header_timeout: Nanos,
    keepalive_timeout: Nanos,
    idle: &'static IdleSet,
}

impl ConnState {
    /// A connection accepted at `now`.
    pub fn new(
        header_timeout: Nanos,
        keepalive_timeout: Nanos,
        idle: &'static IdleSet,
        now: Nanos,
    ) -> ConnState {
        let s = ConnState {
            phase: AtomicU8::new(Phase::Fresh as u8),
            deadline: AtomicU64::new(now.saturating_add(header_timeout)),
            idle_since: AtomicU64::new(NOT_IDLE),
            header_timeout,
            keepalive_timeout,
            idle,
        };
        s.enter_idle(now);
        s
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// True while nothing of the next request has been read: the IO wrapper then notes the
    /// first byte, and only then reads the clock.
    #[inline]
    pub fn awaiting_first_byte(&self) -> bool {
        self.phase.load(Ordering::Relaxed) <= Phase::Idle as u8
    }

    /// Bytes of a request head arrived at `now`. The head deadline of a keep-alive request
    /// counts from its first byte; a new connection's keeps counting from the accept.
    pub fn on_first_byte(&self, now: Nanos) {
        match self.phase() {
            Phase::Fresh => {}
            Phase::Idle => self
                .deadline
                .store(now.saturating_add(self.header_timeout), Ordering::Relaxed),
            Phase::Head | Phase::Request => return,
        }
        self.phase.store(Phase::Head as u8, Ordering::Relaxed);
        self.leave_idle();
    }

    /// The request head is complete (it may have come whole in bytes read with the previous
    /// request, without a read of its own).
    pub fn on_head(&self) {
        self.phase.store(Phase::Request as u8, Ordering::Relaxed);
        self.deadline.store(NO_DEADLINE, Ordering::Relaxed);
        self.leave_idle();
    }

    /// The request was answered and the connection is kept for another one.
    pub fn on_reuse(&self, now: Nanos) {
        self.phase.store(Phase::Idle as u8, Ordering::Relaxed);
        self.deadline.store(
            now.saturating_add(self.keepalive_timeout),
            Ordering::Relaxed,
        );
        self.enter_idle(now);
    }

    /// The deadline now in force, if any.
    pub fn deadline(&self) -> Option<Nanos> {
        let d = self.deadline.load(Ordering::Relaxed);
        (d != NO_DEADLINE).then_some(d)
    }

    /// Whether the deadline in force has passed at `now`, and which one it was.
    pub fn expired(&self, now: Nanos) -> Option<Expired> {
        let d = self.deadline()?;
        if now < d {
            return None;
        }
        match self.phase() {
            Phase::Fresh | Phase::Head => Some(Expired::Header),
            Phase::Idle => Some(Expired::Keepalive),
            Phase::Request => None,
        }
    }

    /// While idle: whether fd pressure asks this connection to go (it has been idle since
    /// before the cut-off the pressure relief chose).
    pub fn evictable(&self) -> bool {
        let since = self.idle_since.load(Ordering::Relaxed);
        since != NOT_IDLE && self.idle.should_evict(since)
    }

    fn enter_idle(&self, now: Nanos) {
        let sec = now / 1_000_000_000;
        let prev = self.idle_since.swap(sec, Ordering::Relaxed);
        if prev != NOT_IDLE {
            self.idle.leave(prev);
        }
        self.idle.enter(sec);
    }

    fn leave_idle(&self) {
        let prev = self.idle_since.swap(NOT_IDLE, Ordering::Relaxed);
        if prev != NOT_IDLE {
            self.idle.leave(prev);
        }
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.leave_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    fn set() -> &'static IdleSet {
        Box::leak(Box::new(IdleSet::new()))
    }

    fn state(idle: &'static IdleSet, now: Nanos) -> ConnState {
        ConnState::new(10 * S, 75 * S, idle, now)
    }

    #[test]
    fn a_new_connection_has_the_header_timeout_from_its_accept() {
        let s = state(set(), 100 * S);
        assert_eq!(s.phase(), Phase::Fresh);
        assert_eq!(s.expired(109 * S), None);
        assert_eq!(s.expired(110 * S), Some(Expired::Header));
        // Its first byte does not restart the count: a slow client gains nothing by sending
        // one byte late.
        s.on_first_byte(105 * S);
        assert_eq!(s.phase(), Phase::Head);
        assert_eq!(s.deadline(), Some(110 * S));
        assert_eq!(s.expired(110 * S), Some(Expired::Header));
    }

    #[test]
    fn a_complete_head_lifts_the_deadline_until_the_connection_is_reused() {
        let s = state(set(), 0);
        s.on_first_byte(S);
        s.on_head();
        assert_eq!(s.phase(), Phase::Request);
        assert_eq!(s.deadline(), None);
        assert_eq!(s.expired(1000 * S), None);
        s.on_reuse(1000 * S);
        assert_eq!(s.phase(), Phase::Idle);
        assert_eq!(s.expired(1074 * S), None);
        assert_eq!(s.expired(1075 * S), Some(Expired::Keepalive));
    }

    #[test]
    fn a_keepalive_request_has_the_header_timeout_from_its_first_byte() {
        let s = state(set(), 0);
        s.on_head();
        s.on_reuse(10 * S);
        // 60 s idle, then one byte: the head must be complete 10 s later, not 75 s after the
        // connection went idle.
        s.on_first_byte(70 * S);
        assert_eq!(s.deadline(), Some(80 * S));
        assert_eq!(s.expired(79 * S), None);
        assert_eq!(s.expired(80 * S), Some(Expired::Header));
        // Later bytes of the same head move nothing.
        s.on_first_byte(79 * S);
        assert_eq!(s.deadline(), Some(80 * S));
    }

    #[test]
    fn a_pipelined_head_needs_no_read_of_its_own() {
        let s = state(set(), 0);
        s.on_head();
        s.on_reuse(S);
        s.on_head();
        assert_eq!(s.phase(), Phase::Request);
        assert_eq!(s.expired(1000 * S), None);
    }

    #[test]
    fn only_idle_connections_are_counted_as_idle() {
        let idle = set();
        let a = state(idle, 5 * S);
        let b = state(idle, 7 * S);
        assert_eq!(idle.count(), 2);
        a.on_first_byte(6 * S);
        assert_eq!(idle.count(), 1);
        a.on_head();
        a.on_reuse(8 * S);
        assert_eq!(idle.count(), 2);
        drop(b);
        assert_eq!(idle.count(), 1);
        a.on_head();
        assert_eq!(idle.count(), 0);
    }
}
