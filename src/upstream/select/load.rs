//! The load-aware balancers: `least_conn` (fewest requests in flight relative to weight, among a
//! window of a few) and `p2c` (the less loaded of two drawn at random). They read each
//! backend's in-flight count from its [`BackendState`] at pick time.

use std::sync::Arc;

use super::reduced_weights;
use crate::upstream::state::BackendState;

/// How many backends `least_conn` compares per pick unless told otherwise.
pub const DEFAULT_LEAST_CONN_CHOICES: usize = 8;

/// Weights are reduced to sum at most 2^16 before being inverted into 2^24 / weight, which
/// keeps every inverse at 256 or more (precise enough to order loads) and every score (a load
/// below 2^32 times that) within 56 bits, leaving room for a window position.
const MAX_WEIGHT_SUM: u64 = 1 << 16;
const INVERSE_ONE: u64 = 1 << 24;
const WINDOW_BITS: u32 = 7;
const WINDOW_MASK: u64 = (1 << WINDOW_BITS) - 1;
/// The most backends `least_conn` may be told to compare per pick.
pub const MAX_LEAST_CONN_CHOICES: usize = 1 << WINDOW_BITS;

/// A pickable backend as the load-aware balancers see it: 16 bytes, so that a scan walks
/// four to a cache line.
#[derive(Debug, Clone)]
struct Slot {
    state: Arc<BackendState>,
    /// `2^24 / weight`: load × this orders backends by load / weight with one multiplication.
    inverse_weight: u32,
    index: u32,
}

/// `len` slots from `start` on, wrapping around.
#[inline]
fn window(slots: &[Slot], start: usize, len: usize) -> impl Iterator<Item = &Slot> {
    let end = start + len;
    let (tail, head) = if end <= slots.len() {
        (&slots[start..end], &slots[..0])
    } else {
        (&slots[start..], &slots[..end - slots.len()])
    };
    tail.iter().chain(head)
}

/// `i` modulo `n` for `i` below `2n`, without a division.
#[inline]
fn wrap(i: usize, n: usize) -> usize {
    if i >= n {
        i - n
    } else {
        i
    }
}

/// The slots of the pickable backends, followed, for `least_conn`, by the first `window - 1`
/// of them again: a window that starts near the end then reads on without wrapping around, as
/// one contiguous run.
#[derive(Debug, Default)]
pub struct Slots {
    all: Box<[Slot]>,
    /// How many backends: the slots before the repeated ones.
    n: usize,
    /// How many backends `least_conn` compares per pick (at most `n`).
    window: usize,
}

impl Slots {
    /// The backends of `states` whose weight is above zero; `choices` is `least_conn`'s
    /// window, `None` for `p2c`.
    pub(super) fn build(
        states: &[Arc<BackendState>],
        weights: &[u64],
        choices: Option<usize>,
    ) -> Slots {
        let reduced = reduced_weights(weights, MAX_WEIGHT_SUM);
        let mut all: Vec<Slot> = states
            .iter()
            .zip(reduced)
            .enumerate()
            .filter(|(_, (_, w))| *w > 0)
            .map(|(i, (s, w))| Slot {
                state: s.clone(),
                inverse_weight: (INVERSE_ONE / w) as u32,
                index: i as u32,
            })
            .collect();
        let n = all.len();
        let window = choices.map_or(n, |c| n.min(c));
        if choices.is_some() {
            all.extend_from_within(..window.saturating_sub(1));
        }
        Slots {
            all: all.into(),
            n,
            window,
        }
    }

    /// Each backend's slot once.
    fn live(&self) -> &[Slot] {
        &self.all[..self.n]
    }

    /// Fewest in flight relative to weight among `window` consecutive slots from a place
    /// drawn from `turn` (all of them when there are no more): with a window of a few, the
    /// winner is among the least loaded few percent, which is what the balancer is for, at a
    /// cost that does not grow with the upstream. Moving the start also lets ties (idle
    /// backends) take turns.
    #[inline]
    pub(super) fn least_loaded(
        &self,
        turn: usize,
        usable: impl Fn(&BackendState) -> bool,
    ) -> Option<u32> {
        let n = self.n;
        if n == 0 {
            return None;
        }
        // Fibonacci hashing spreads consecutive turns over the set; the multiply-shift maps the
        // result onto 0..n without a division.
        let spread = (turn as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let start = ((spread as u128 * n as u128) >> 64) as usize;
        let window = &self.all[start..start + self.window];
        // Score above position in one integer, so that one running minimum finds the least
        // loaded and, among equals, the first. The down sort after every backend with fewer than
        // 2^16 requests in flight (2^32 × the smallest inverse weight); a down winner means the
        // whole window is down, or loads beyond that, and the exact scan below decides.
        let mut best = u64::MAX;
        for (position, slot) in window.iter().enumerate() {
            let score = slot.state.load_or_down() * slot.inverse_weight as u64;
            best = best.min(score << WINDOW_BITS | position as u64);
        }
        let winner = &window[(best & WINDOW_MASK) as usize];
        if winner.state.available() && usable(&winner.state) {
            return Some(winner.index);
        }
        // Everything in the window is down, or the winner is one this request already failed
        // on: compare every backend, without it. Rare enough to afford the full scan.
        lowest_score(self.live(), start, usable)
    }

    /// The less loaded, relative to weight, of two distinct random backends; a full
    /// comparison when either is unavailable.
    #[inline]
    pub(super) fn better_of_two(&self, usable: impl Fn(&BackendState) -> bool) -> Option<u32> {
        let slots = self.live();
        let n = slots.len();
        if n == 0 {
            return None;
        }
        let a = fastrand::usize(..n);
        // A second draw among the other n - 1, without a division.
        let b = wrap(a + 1 + fastrand::usize(..n.max(2) - 1), n);
        let (x, y) = (&slots[a], &slots[b]);
        let score = |s: &Slot| {
            Some(s.state.load_if_available()? as u64 * s.inverse_weight as u64)
                .filter(|_| usable(&s.state))
        };
        match (score(x), score(y)) {
            (Some(sx), Some(sy)) => Some(if sy < sx { y.index } else { x.index }),
            _ => lowest_score(slots, a, usable),
        }
    }
}

/// The available, `usable` backend with the lowest load / weight among all `slots`, the first
/// from `start` among equals.
fn lowest_score(
    slots: &[Slot],
    start: usize,
    usable: impl Fn(&BackendState) -> bool,
) -> Option<u32> {
    window(slots, start, slots.len())
        .filter(|s| usable(&s.state))
        .filter_map(|s| {
            Some((
                s.state.load_if_available()? as u64 * s.inverse_weight as u64,
                s,
            ))
        })
        .fold(None, |best: Option<(u64, &Slot)>, (score, s)| match best {
            Some((b, _)) if b <= score => best,
            _ => Some((score, s)),
        })
        .map(|(_, s)| s.index)
}
