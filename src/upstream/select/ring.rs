//! `consistent_hash`: a ketama-style ring. A key keeps its backend while that backend is up,
//! and removing one moves only the keys it held.

use super::reduced_weights;
use xxhash_rust::xxh3::xxh3_64;

/// Ring points per unit of (gcd-reduced) weight, as in ketama.
const POINTS_PER_WEIGHT: u64 = 160;
const MAX_POINTS: u64 = 1 << 20;

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
    pub(super) fn new(points: Vec<(u64, u32)>) -> Ring {
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
    pub(super) fn owner(&self, h: u64, skip: usize) -> u32 {
        let mut i = self.start[(h >> self.shift) as usize] as usize;
        while i < self.points.len() && self.points[i].0 < h {
            i += 1;
        }
        self.points[(i + skip) % self.points.len()].1
    }
}

/// Each backend's points: `weight × 160` hashes of its name (its address) and a counter.
pub(super) fn ring_points(weights: &[u64], names: &[String]) -> Vec<(u64, u32)> {
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
    use super::super::tests::selector;
    use super::super::{Balance, Selector};

    #[test]
    fn ring_index_agrees_with_a_binary_search() {
        let Selector::Ring(ring) = selector(Balance::ConsistentHash, &[1, 2, 3, 1, 1, 5, 1]) else {
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
        let full = selector(Balance::ConsistentHash, &[1; 5]);
        // The same key always lands on the same backend.
        for k in 0..100u32 {
            let key = k.to_be_bytes();
            assert_eq!(full.pick(0, Some(&key)), full.pick(99, Some(&key)));
        }
        // Draining backend 4 only moves the keys that were on it.
        let less = selector(Balance::ConsistentHash, &[1, 1, 1, 1, 0]);
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
