//! Backend selection, prepared when a backend set is built so that a pick is an index
//! computation: no lock, no allocation. Every balancer lives in this folder: the orders
//! (round robin, smooth weighted round robin, random) in [`order`], the ketama ring in
//! [`ring`], and the load-aware `least_conn` and `p2c` in [`load`]. A selector knows backends
//! only by index and [`BackendState`], so it serves any protocol.
//!
//! Adding a balancer: a [`Balance`] variant, a [`Selector`] variant built in
//! [`Selector::build`], and its pick in [`Selector::choose`].

pub mod load;
pub mod order;
pub mod ring;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::state::BackendState;
use load::Slots;
pub use load::{DEFAULT_LEAST_CONN_CHOICES, MAX_LEAST_CONN_CHOICES};
use order::{smooth_schedule, Cycle};
use ring::{ring_points, Ring};

/// How an upstream spreads its requests over its backends (`balance:`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    Random,
    ConsistentHash,
    /// Fewest requests in flight relative to weight.
    LeastConn,
    /// Power of two choices: the less loaded (relative to weight) of two random backends.
    P2c,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::WeightedRoundRobin => "weighted_round_robin",
            Balance::Random => "random",
            Balance::ConsistentHash => "consistent_hash",
            Balance::LeastConn => "least_conn",
            Balance::P2c => "p2c",
        }
    }
}

/// Bounds the precomputed weighted schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 1 << 16;

/// Other choices tried (random draws by weight, or the ring clockwise) before the backend set
/// scans every backend.
const ALTERNATIVES: usize = 16;

/// What a selector sees of the backends it picks among: each one's state, by index.
pub trait States {
    fn state(&self, i: u32) -> &BackendState;
}

#[derive(Debug)]
pub enum Selector {
    /// No backend with a weight above zero.
    Empty,
    /// Indexes of the pickable backends, each once.
    RoundRobin(Cycle),
    /// Indexes in smooth weighted round-robin order (each backend appears in proportion to its
    /// weight, spread out rather than in runs), used by `weighted_round_robin` in order and by
    /// `random` at a random position.
    Schedule(Cycle),
    /// Ketama-style hash ring.
    Ring(Ring),
    /// Fewest in flight relative to weight among a window of the slots.
    LeastConn(Slots),
    /// The better of two slots drawn at random.
    P2c(Slots),
}

impl Selector {
    /// `weights[i]` of zero means backend `i` is drained: never picked. `names` (the ring's
    /// point seeds) and `states` are index for index with `weights`; `choices` is how many
    /// backends `least_conn` compares per pick.
    pub fn build(
        balance: Balance,
        weights: &[u64],
        names: &[String],
        states: &[Arc<BackendState>],
        choices: usize,
    ) -> Selector {
        let live: Vec<u32> = (0..weights.len() as u32)
            .filter(|&i| weights[i as usize] > 0)
            .collect();
        if live.is_empty() {
            return Selector::Empty;
        }
        match balance {
            Balance::RoundRobin => Selector::RoundRobin(Cycle::new(live)),
            Balance::WeightedRoundRobin | Balance::Random => Selector::Schedule(Cycle::new(
                smooth_schedule(&reduced_weights(weights, MAX_SCHEDULE)),
            )),
            Balance::ConsistentHash => Selector::Ring(Ring::new(ring_points(weights, names))),
            Balance::LeastConn => Selector::LeastConn(Slots::build(states, weights, Some(choices))),
            Balance::P2c => Selector::P2c(Slots::build(states, weights, None)),
        }
    }

    /// An available backend that passes `usable`, by this selector's rule, if its choices
    /// hold one: the first choice, then up to `ALTERNATIVES` others for the positional
    /// selectors; the load-aware ones compare loads and fall back to a full comparison.
    #[inline]
    pub fn choose<S: States + ?Sized>(
        &self,
        turn: usize,
        key: Option<&[u8]>,
        states: &S,
        usable: impl Fn(&BackendState) -> bool + Copy,
    ) -> Option<u32> {
        match self {
            Selector::Empty => None,
            Selector::LeastConn(slots) => slots.least_loaded(turn, usable),
            Selector::P2c(slots) => slots.better_of_two(usable),
            positional => {
                let ok = |i: &u32| {
                    let s = states.state(*i);
                    s.available() && usable(s)
                };
                let first = positional.pick(turn, key)?;
                if ok(&first) {
                    return Some(first);
                }
                // The selector's other choices keep weights and a key's stickiness.
                (1..ALTERNATIVES)
                    .filter_map(|k| positional.alternative(turn, key, k))
                    .find(ok)
            }
        }
    }

    /// Picks a backend index by position alone (`None` for the load-aware selectors, which
    /// compare loads in [`Selector::choose`]). `turn` is a shared counter's next value; `key`
    /// is the request's hash key (consistent hashing only; without one, a random point is
    /// used).
    #[inline]
    pub fn pick(&self, turn: usize, key: Option<&[u8]>) -> Option<u32> {
        self.alternative(turn, key, 0)
    }

    /// The `k`-th choice for the same turn and key, 0 being the first. After the first, an
    /// order's choices are drawn at random positions: skipping the unavailable among them keeps
    /// the weights' proportions (the next entry would not: in a smooth schedule the entry after
    /// a given backend is more often the heaviest one). A ring walks clockwise, which keeps the
    /// other keys where they are.
    #[inline]
    pub fn alternative(&self, turn: usize, key: Option<&[u8]>, k: usize) -> Option<u32> {
        match self {
            Selector::Empty | Selector::LeastConn(_) | Selector::P2c(_) => None,
            Selector::RoundRobin(c) | Selector::Schedule(c) => {
                Some(if k == 0 { c.at(turn) } else { c.random() })
            }
            Selector::Ring(ring) => Some(ring.owner(
                match key {
                    Some(k) => xxh3_64(k),
                    None => fastrand::u64(..),
                },
                k,
            )),
        }
    }

    /// Whether `pick` reads `turn` from a counter (as opposed to a random draw or a key).
    pub fn wants_counter(balance: Balance) -> bool {
        matches!(balance, Balance::RoundRobin | Balance::WeightedRoundRobin)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weights divided by their gcd, then scaled so that they sum to at most `cap`; a backend with
/// a weight above zero keeps at least one.
fn reduced_weights(weights: &[u64], cap: u64) -> Vec<u64> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, w)).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| x / g).collect();
    let sum: u64 = w.iter().sum();
    if sum > cap {
        for x in w.iter_mut().filter(|x| **x > 0) {
            *x = (*x * cap / sum).max(1);
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every balancer, for the tests that hold for all of them.
    const EVERY_BALANCE: [Balance; 6] = [
        Balance::RoundRobin,
        Balance::WeightedRoundRobin,
        Balance::Random,
        Balance::ConsistentHash,
        Balance::LeastConn,
        Balance::P2c,
    ];

    pub(super) fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    /// A selector over `weights` for the positional tests (they never look at states).
    pub(super) fn selector(balance: Balance, weights: &[u64]) -> Selector {
        let n = names(weights.len());
        let states: Vec<Arc<BackendState>> = n
            .iter()
            .map(|a| Arc::new(BackendState::new(a.parse().unwrap(), false)))
            .collect();
        Selector::build(balance, weights, &n, &states, DEFAULT_LEAST_CONN_CHOICES)
    }

    fn counts(sel: &Selector, n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for t in 0..picks {
            c[sel.pick(t, None).unwrap() as usize] += 1;
        }
        c
    }

    #[test]
    fn round_robin_ignores_weight_but_skips_drained() {
        let s = selector(Balance::RoundRobin, &[1, 0, 5]);
        assert_eq!(counts(&s, 3, 100), [50, 0, 50]);
    }

    #[test]
    fn weighted_schedule_is_proportional_and_smooth() {
        let s = selector(Balance::WeightedRoundRobin, &[5, 1, 1]);
        let Selector::Schedule(order) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(order.items(), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&s, 3, 700), [500, 100, 100]);
    }

    #[test]
    fn all_drained_is_empty_not_a_panic() {
        for b in EVERY_BALANCE {
            let s = selector(b, &[0, 0]);
            assert!(s.pick(3, Some(b"k")).is_none());
            let s = selector(b, &[]);
            assert!(s.pick(0, None).is_none());
        }
    }

    #[test]
    fn huge_weights_are_scaled() {
        let s = selector(
            Balance::WeightedRoundRobin,
            &[u32::MAX as u64, 1, u32::MAX as u64 / 2],
        );
        let Selector::Schedule(order) = &s else {
            panic!()
        };
        assert!(order.items().len() as u64 <= MAX_SCHEDULE + 3);
        assert!(order.items().contains(&1));
    }

    #[test]
    fn balance_names_are_the_yaml_spelling() {
        for b in EVERY_BALANCE {
            let yaml = serde_yaml::to_string(&b).unwrap();
            assert_eq!(yaml.trim(), b.as_str());
            assert_eq!(serde_yaml::from_str::<Balance>(b.as_str()).unwrap(), b);
        }
    }
}
