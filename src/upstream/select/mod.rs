//! Backend selection, prepared when a backend set is built so that a pick is an index
//! computation: no lock, no allocation.

use xxhash_rust::xxh3::xxh3_64;

use crate::config::schema::Balance;

/// Bounds the precomputed weighted schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 1 << 16;
/// Ring points per unit of (gcd-reduced) weight, as in ketama.
const POINTS_PER_WEIGHT: u64 = 160;
const MAX_POINTS: u64 = 1 << 20;

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
    /// Fewest in flight relative to weight (`least_conn`: all compared; `p2c`: the better of
    /// two drawn at random). The backend set picks these from its slots, which see the loads.
    LeastConn,
    P2c,
}

impl Selector {
    /// `weights[i]` of zero means backend `i` is drained: never picked.
    pub fn build(balance: Balance, weights: &[u64], names: &[String]) -> Selector {
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
            Balance::LeastConn => Selector::LeastConn,
            Balance::P2c => Selector::P2c,
        }
    }

    /// Picks a backend index by position alone (`None` for the load-aware selectors, which
    /// the backend set picks). `turn` is a shared counter's
    /// next value; `key` is the request's hash key (consistent hashing only; without one, a
    /// random point is used).
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
            // The load-aware ones are picked by the backend set, which sees the loads.
            Selector::Empty | Selector::LeastConn | Selector::P2c => None,
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

/// A fixed order of backend indexes, entered at a position. The position is reduced with
/// Lemire's multiply-shift remainder, precomputed for the length, because a hardware division
/// costs more than the rest of a pick.
#[derive(Debug)]
pub struct Cycle {
    items: Box<[u32]>,
    /// `2^64 / len`, rounded up: the fraction that turns `n * magic` into `n mod len`.
    magic: u64,
}

impl Cycle {
    /// `items` is never empty: a selector without backends is [`Selector::Empty`].
    fn new(items: Vec<u32>) -> Cycle {
        let len = items.len().clamp(1, u32::MAX as usize) as u64;
        Cycle {
            magic: (u64::MAX / len).wrapping_add(1),
            items: items.into(),
        }
    }

    /// The entry at `turn` modulo the length. A counter wraps at 2^32 here, which only breaks
    /// the rotation once in four billion picks.
    #[inline]
    pub fn at(&self, turn: usize) -> u32 {
        let fraction = self.magic.wrapping_mul(turn as u32 as u64);
        let i = ((fraction as u128 * self.items.len() as u128) >> 64) as usize;
        self.items[i]
    }

    #[inline]
    fn random(&self) -> u32 {
        self.items[fastrand::usize(..self.items.len())]
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
pub(super) fn reduced_weights(weights: &[u64], cap: u64) -> Vec<u64> {
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

/// nginx's smooth weighted round robin, unrolled over one full cycle.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = usize::MAX;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            current[i] += w as i64;
            if best == usize::MAX || current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

/// Sorted `(point, backend index)`, plus an index from the top bits of a hash to the first
/// point at or after that bucket, so that a lookup scans about one point instead of a binary
/// search over thousands.
#[derive(Debug)]
pub struct Ring {
    points: Box<[(u64, u32)]>,
    start: Box<[u32]>,
    shift: u32,
}

impl Ring {
    fn new(points: Vec<(u64, u32)>) -> Ring {
        // About two buckets per point.
        let bits = (usize::BITS - points.len().leading_zeros()).clamp(1, 24) + 1;
        let shift = 64 - bits;
        let mut start = Vec::with_capacity(1 << bits);
        let mut i = 0usize;
        for bucket in 0..(1u64 << bits) {
            let floor = bucket << shift;
            while i < points.len() && points[i].0 < floor {
                i += 1;
            }
            start.push(i as u32);
        }
        Ring {
            points: points.into(),
            start: start.into(),
            shift,
        }
    }

    /// The backend owning hash `h` (`skip` 0): the first point at or after it, wrapping
    /// around; with `skip`, the owner of the point that many further clockwise.
    #[inline]
    fn owner(&self, h: u64, skip: usize) -> u32 {
        let mut i = self.start[(h >> self.shift) as usize] as usize;
        while i < self.points.len() && self.points[i].0 < h {
            i += 1;
        }
        self.points[(i + skip) % self.points.len()].1
    }
}

fn ring_points(weights: &[u64], names: &[String]) -> Vec<(u64, u32)> {
    let reduced = reduced_weights(weights, MAX_POINTS / POINTS_PER_WEIGHT);
    let mut points = Vec::new();
    for (i, (&w, name)) in reduced.iter().zip(names).enumerate() {
        for p in 0..w * POINTS_PER_WEIGHT {
            let h = xxh3_64(format!("{name}-{p}").as_bytes());
            points.push((h, i as u32));
        }
    }
    points.sort_unstable();
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn counts(sel: &Selector, n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for t in 0..picks {
            c[sel.pick(t, None).unwrap() as usize] += 1;
        }
        c
    }

    #[test]
    fn cycle_position_is_the_remainder() {
        let mut rng = fastrand::Rng::with_seed(7);
        for len in (1..=300).chain([65_535, 65_536, 1 << 20, 999_983]) {
            let c = Cycle::new((0..len as u32).collect());
            let turns =
                (0..1000)
                    .map(|_| rng.u32(..))
                    .chain([0, 1, len as u32 - 1, len as u32, u32::MAX]);
            for t in turns {
                assert_eq!(c.at(t as usize), t % len as u32, "{t} mod {len}");
            }
        }
    }

    #[test]
    fn round_robin_ignores_weight_but_skips_drained() {
        let s = Selector::build(Balance::RoundRobin, &[1, 0, 5], &names(3));
        assert_eq!(counts(&s, 3, 100), [50, 0, 50]);
    }

    #[test]
    fn weighted_schedule_is_proportional_and_smooth() {
        let s = Selector::build(Balance::WeightedRoundRobin, &[5, 1, 1], &names(3));
        let Selector::Schedule(order) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(order.items.as_ref(), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&s, 3, 700), [500, 100, 100]);
    }

    #[test]
    fn all_drained_is_empty_not_a_panic() {
        for b in [
            Balance::RoundRobin,
            Balance::WeightedRoundRobin,
            Balance::Random,
            Balance::ConsistentHash,
            Balance::LeastConn,
            Balance::P2c,
        ] {
            let s = Selector::build(b, &[0, 0], &names(2));
            assert!(s.pick(3, Some(b"k")).is_none());
            let s = Selector::build(b, &[], &[]);
            assert!(s.pick(0, None).is_none());
        }
    }

    #[test]
    fn huge_weights_are_scaled() {
        let s = Selector::build(
            Balance::WeightedRoundRobin,
            &[u32::MAX as u64, 1, u32::MAX as u64 / 2],
            &names(3),
        );
        let Selector::Schedule(order) = &s else {
            panic!()
        };
        assert!(order.items.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(order.items.contains(&1));
    }

    #[test]
    fn ring_index_agrees_with_a_binary_search() {
        let n = names(7);
        let Selector::Ring(ring) =
            Selector::build(Balance::ConsistentHash, &[1, 2, 3, 1, 1, 5, 1], &n)
        else {
            panic!()
        };
        let mut rng = fastrand::Rng::with_seed(3);
        let probes = (0..20_000).map(|_| rng.u64(..)).chain([
            0,
            u64::MAX,
            ring.points[0].0,
            ring.points[ring.points.len() - 1].0 + 1,
        ]);
        for h in probes {
            let i = ring.points.partition_point(|&(p, _)| p < h);
            let expected = ring.points[if i == ring.points.len() { 0 } else { i }].1;
            assert_eq!(ring.owner(h, 0), expected, "{h}");
        }
    }

    #[test]
    fn ring_is_sticky_and_moves_little_on_removal() {
        let n = names(5);
        let full = Selector::build(Balance::ConsistentHash, &[1; 5], &n);
        // The same key always lands on the same backend.
        for k in 0..100u32 {
            let key = k.to_be_bytes();
            assert_eq!(full.pick(0, Some(&key)), full.pick(99, Some(&key)));
        }
        // Draining backend 4 only moves the keys that were on it.
        let less = Selector::build(Balance::ConsistentHash, &[1, 1, 1, 1, 0], &n);
        let mut moved = 0;
        for k in 0..10_000u32 {
            let key = k.to_be_bytes();
            let (a, b) = (
                full.pick(0, Some(&key)).unwrap(),
                less.pick(0, Some(&key)).unwrap(),
            );
            if a != 4 {
                assert_eq!(a, b);
            } else {
                moved += 1;
            }
        }
        assert!((1000..3000).contains(&moved), "{moved}");
    }
}
