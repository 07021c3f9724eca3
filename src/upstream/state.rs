//! What the gateway knows about one backend address beyond its config: requests in flight, the
//! health-check verdict, outlier ejection and an administrative drain. One state per address
//! per upstream, shared by every backend set that lists the address, so it survives membership
//! and weight changes; the request path only reads and bumps atomics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ms;

/// Reasons not to pick a backend, as bits of [`BackendState::down`].
pub const UNHEALTHY: u8 = 1;
pub const EJECTED: u8 = 2;
pub const DRAINED: u8 = 4;
const DOWN_SHIFT: u32 = 32;

#[derive(Debug)]
pub struct BackendState {
    /// Requests in flight in the low 32 bits, the reasons it is down in the high ones: a pick
    /// learns both from one load.
    word: AtomicU64,
    pub addr: SocketAddr,
    /// Consecutive passing and failing active checks (written by the health checker only).
    pub(super) passes: AtomicU32,
    pub(super) fails: AtomicU32,
    /// Consecutive failed requests (5xx or no connection), for outlier ejection.
    pub(super) errors: AtomicU32,
    /// How many times it was ejected recently; each ejection lasts longer.
    pub(super) ejections: AtomicU32,
    /// When the current ejection ends, or the last one ended, in [`now_ms`] time.
    pub(super) ejection_end_ms: AtomicU64,
    /// When it joined the upstream or last came back into service, for slow start.
    joined_ms: AtomicU64,
}

impl BackendState {
    pub fn new(addr: SocketAddr, start_unhealthy: bool) -> BackendState {
        BackendState {
            word: AtomicU64::new(if start_unhealthy {
                (UNHEALTHY as u64) << DOWN_SHIFT
            } else {
                0
            }),
            addr,
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            errors: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejection_end_ms: AtomicU64::new(0),
            joined_ms: AtomicU64::new(now_ms()),
        }
    }

    pub fn joined_ms(&self) -> u64 {
        self.joined_ms.load(Ordering::Relaxed)
    }

    /// Back in service after being unhealthy or ejected: slow start begins again.
    pub fn rejoined(&self) {
        self.joined_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Neither unhealthy, ejected nor drained.
    #[inline]
    pub fn available(&self) -> bool {
        self.word.load(Ordering::Relaxed) >> DOWN_SHIFT == 0
    }

    /// Requests in flight when available, `None` when not.
    #[inline]
    pub fn load_if_available(&self) -> Option<u32> {
        let w = self.word.load(Ordering::Relaxed);
        (w >> DOWN_SHIFT == 0).then_some(w as u32)
    }

    /// Requests in flight when available, 2^32 (more than any count) when not: a balancer can
    /// rank backends by this without a branch.
    #[inline]
    pub fn load_or_down(&self) -> u64 {
        self.word.load(Ordering::Relaxed).min(1 << DOWN_SHIFT)
    }

    pub fn down(&self) -> u8 {
        (self.word.load(Ordering::Relaxed) >> DOWN_SHIFT) as u8
    }

    pub fn is(&self, flag: u8) -> bool {
        self.down() & flag != 0
    }

    /// Sets or clears `flag`; `true` when that changed it.
    pub fn set(&self, flag: u8, on: bool) -> bool {
        let bit = (flag as u64) << DOWN_SHIFT;
        let before = if on {
            self.word.fetch_or(bit, Ordering::Relaxed)
        } else {
            self.word.fetch_and(!bit, Ordering::Relaxed)
        };
        (before & bit != 0) != on
    }

    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.word.load(Ordering::Relaxed) as u32
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Time left in the current ejection.
    pub fn ejected_for(&self) -> Option<Duration> {
        let end = self.ejection_end_ms.load(Ordering::Relaxed);
        let now = now_ms();
        (self.is(EJECTED) && end > now).then(|| Duration::from_millis(end - now))
    }
}

/// One request on a backend, from the pick until the attempt ends (drop).
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    pub fn start(state: &Arc<BackendState>) -> InFlight {
        state.word.fetch_add(1, Ordering::Relaxed);
        InFlight(state.clone())
    }

    pub fn state(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.word.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The states of an upstream's current addresses; written only when the membership changes.
#[derive(Debug, Default, Clone)]
pub struct States {
    by_addr: HashMap<SocketAddr, Arc<BackendState>>,
}

impl States {
    /// The states for `addrs`, kept for addresses seen before and created for new ones; the
    /// states of addresses no longer listed are let go (requests still holding them finish).
    pub fn refresh(
        &mut self,
        addrs: &[SocketAddr],
        start_unhealthy: bool,
    ) -> Vec<Arc<BackendState>> {
        let out: Vec<Arc<BackendState>> = addrs
            .iter()
            .map(|a| {
                self.by_addr
                    .entry(*a)
                    .or_insert_with(|| Arc::new(BackendState::new(*a, start_unhealthy)))
                    .clone()
            })
            .collect();
        self.by_addr.retain(|a, _| addrs.contains(a));
        out
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&Arc<BackendState>> {
        self.by_addr.get(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn states_survive_a_refresh_and_in_flight_counts_follow_guards() {
        let mut states = States::default();
        let first = states.refresh(&[addr(1), addr(2)], false);
        first[0].set(UNHEALTHY, true);
        let guard = InFlight::start(&first[1]);
        assert_eq!(first[1].in_flight(), 1);

        let second = states.refresh(&[addr(2), addr(1), addr(3)], true);
        assert!(Arc::ptr_eq(&first[0], &second[1]));
        assert!(!second[1].available(), "health survives the swap");
        assert_eq!(second[0].in_flight(), 1, "in-flight survives the swap");
        assert!(second[2].is(UNHEALTHY), "a new backend may start unhealthy");

        let third = states.refresh(&[addr(3)], false);
        assert_eq!(third.len(), 1);
        assert!(states.get(&addr(2)).is_none());
        drop(guard);
        assert_eq!(first[1].in_flight(), 0);
    }

    #[test]
    fn flags_report_changes() {
        let s = BackendState::new(addr(1), false);
        assert!(s.set(DRAINED, true));
        assert!(!s.set(DRAINED, true));
        assert!(s.set(EJECTED, true));
        assert!(!s.available());
        assert!(s.set(DRAINED, false));
        assert!(s.is(EJECTED) && !s.is(DRAINED));
    }
}
