//! The timeout state machine of one client connection: which deadline applies now (the request
//! head's, the keep-alive wait's, none while a request is served, or a tunnel's silence), driven
//! by plain numbers of nanoseconds so that it is tested on a controlled clock.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::pressure::IdleSet;

/// Nanoseconds since the process's clock base ([`super::clock`]).
pub type Nanos = u64;

const NO_DEADLINE: Nanos = Nanos::MAX;
const NOT_IDLE: u64 = u64::MAX;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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
    /// An upgrade request went to the backend, whose `101` is awaited: the wait is bounded by
    /// the silence allowance the proxy set (the read timeout the request would have had).
    Handshake = 4,
    /// Upgraded to a tunnel: closed once no byte moved either way for the route's idle timeout.
    Tunnel = 5,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Fresh,
            1 => Phase::Idle,
            2 => Phase::Head,
            4 => Phase::Handshake,
            5 => Phase::Tunnel,
            _ => Phase::Request,
        }
    }

    /// Whether bytes moving either way are what keeps the connection: a handshake or a tunnel.
    #[inline]
    pub fn is_tunnel(self) -> bool {
        self as u8 >= Phase::Handshake as u8
    }
}

/// How a tunnel (or its handshake) was ended by its silence allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Silenced {
    /// The backend did not answer the upgrade within the request's read timeout.
    Handshake = 1,
    /// No byte moved either way for the idle timeout.
    Idle = 2,
}

/// The serve loop drops a tunnel this long after its silence passed, in case the proxy never
/// polled the client stream to notice it itself (a backend that stopped reading stalls the
/// proxy before any read or write of the client's).
const SILENCE_BACKSTOP: Nanos = 5_000_000_000;

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
    /// In a tunnel phase: when the last byte moved (either way), how long the tunnel may stay
    /// silent after it, and whether the silence ended it (a [`Silenced`], 0 for no).
    last_io: AtomicU64,
    allowance: AtomicU64,
    silenced: AtomicU8,
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
            last_io: AtomicU64::new(now),
            allowance: AtomicU64::new(NO_DEADLINE),
            silenced: AtomicU8::new(0),
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
            Phase::Head | Phase::Request | Phase::Handshake | Phase::Tunnel => return,
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

    /// The deadline now in force, if any. In a tunnel phase it is the serve loop's backstop,
    /// a little after the end of the silence allowance ([`ConnState::stuck`]).
    pub fn deadline(&self) -> Option<Nanos> {
        if self.phase().is_tunnel() {
            return Some(self.silent_until().saturating_add(SILENCE_BACKSTOP));
        }
        let d = self.deadline.load(Ordering::Relaxed);
        (d != NO_DEADLINE).then_some(d)
    }

    /// An upgrade request was sent to the backend at `now`; its `101` must come within `wait`.
    pub fn on_upgrade_request(&self, now: Nanos, wait: Nanos) {
        self.start_silence(Phase::Handshake, now, wait);
    }

    /// The backend switched protocols at `now`: the connection is a tunnel kept while bytes
    /// move either way at least every `idle`.
    pub fn on_switched(&self, now: Nanos, idle: Nanos) {
        self.start_silence(Phase::Tunnel, now, idle);
    }

    /// The backend answered the upgrade request without switching: a plain request again.
    pub fn on_upgrade_refused(&self) {
        if self.phase() == Phase::Handshake {
            self.phase.store(Phase::Request as u8, Ordering::Relaxed);
        }
    }

    fn start_silence(&self, phase: Phase, now: Nanos, allowance: Nanos) {
        self.last_io.store(now, Ordering::Relaxed);
        self.allowance.store(allowance, Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// A byte moved through the tunnel at `now`: one store, the whole per-byte cost.
    #[inline]
    pub fn on_tunnel_io(&self, now: Nanos) {
        self.last_io.store(now, Ordering::Relaxed);
    }

    /// When the tunnel's silence allowance runs out, unless a byte moves before.
    pub fn silent_until(&self) -> Nanos {
        self.last_io
            .load(Ordering::Relaxed)
            .saturating_add(self.allowance.load(Ordering::Relaxed))
    }

    /// Whether the tunnel (or its handshake) has been silent past its allowance at `now`; the
    /// first to see it records why, for the proxy's answer and metrics.
    pub fn silence_passed(&self, now: Nanos) -> Option<Silenced> {
        let why = match self.phase() {
            Phase::Handshake => Silenced::Handshake,
            Phase::Tunnel => Silenced::Idle,
            _ => return None,
        };
        if now < self.silent_until() {
            return None;
        }
        self.silenced.store(why as u8, Ordering::Relaxed);
        Some(why)
    }

    /// Whether the silence allowance ended the tunnel or its handshake.
    pub fn silenced(&self) -> Option<Silenced> {
        match self.silenced.load(Ordering::Relaxed) {
            1 => Some(Silenced::Handshake),
            2 => Some(Silenced::Idle),
            _ => None,
        }
    }

    /// Whether a tunnel is still open past its silence and the backstop: the proxy did not
    /// notice the silence, so the serve loop drops the connection.
    pub fn stuck(&self, now: Nanos) -> bool {
        self.phase().is_tunnel() && self.deadline().is_some_and(|d| now >= d)
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
            Phase::Request | Phase::Handshake | Phase::Tunnel => None,
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
    fn a_tunnel_lives_while_bytes_move_either_way_and_closes_after_its_idle_timeout() {
        let s = state(set(), 0);
        s.on_head();
        s.on_upgrade_request(S, 60 * S);
        assert_eq!(s.phase(), Phase::Handshake);
        s.on_switched(2 * S, 30 * S);
        assert_eq!(s.phase(), Phase::Tunnel);
        assert_eq!(s.silent_until(), 32 * S);
        // Bytes one way, then the other: each pushes the end of the silence.
        s.on_tunnel_io(20 * S);
        assert_eq!(s.silence_passed(49 * S), None);
        s.on_tunnel_io(45 * S);
        assert_eq!(s.silence_passed(74 * S), None);
        assert_eq!(s.silenced(), None);
        assert_eq!(s.silence_passed(75 * S), Some(Silenced::Idle));
        assert_eq!(s.silenced(), Some(Silenced::Idle));
        // None of the connection's other deadlines apply to a tunnel.
        assert_eq!(s.expired(10_000 * S), None);
    }

    #[test]
    fn a_handshake_is_bounded_by_its_wait_and_a_refused_one_is_a_plain_request() {
        let s = state(set(), 0);
        s.on_head();
        s.on_upgrade_request(10 * S, 5 * S);
        assert_eq!(s.silence_passed(14 * S), None);
        assert_eq!(s.silence_passed(15 * S), Some(Silenced::Handshake));

        let s = state(set(), 0);
        s.on_head();
        s.on_upgrade_request(10 * S, 5 * S);
        s.on_upgrade_refused();
        assert_eq!(s.phase(), Phase::Request);
        assert_eq!(s.silence_passed(1000 * S), None);
        assert_eq!(s.deadline(), None);
        // The next request on the connection is a plain one.
        s.on_reuse(20 * S);
        assert_eq!(s.phase(), Phase::Idle);
        assert_eq!(s.expired(95 * S), Some(Expired::Keepalive));
    }

    #[test]
    fn the_serve_loop_backstop_comes_a_little_after_the_silence() {
        let s = state(set(), 0);
        s.on_head();
        s.on_switched(0, 10 * S);
        assert_eq!(s.deadline(), Some(10 * S + SILENCE_BACKSTOP));
        assert!(!s.stuck(10 * S));
        assert!(s.stuck(10 * S + SILENCE_BACKSTOP));
        s.on_tunnel_io(12 * S);
        assert!(!s.stuck(10 * S + SILENCE_BACKSTOP));
        // Not a tunnel: never stuck.
        let s = state(set(), 0);
        assert!(!s.stuck(10_000 * S));
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
