//! The positional balancers: a fixed order of backend indexes, entered at a position. Round
//! robin walks the pickable backends; `weighted_round_robin` walks nginx's smooth schedule,
//! and `random` enters that schedule at a random place.

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
    /// `items` is never empty: a selector without backends is [`super::Selector::Empty`].
    pub(super) fn new(items: Vec<u32>) -> Cycle {
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
    pub(super) fn random(&self) -> u32 {
        self.items[fastrand::usize(..self.items.len())]
    }

    #[cfg(test)]
    pub(super) fn items(&self) -> &[u32] {
        &self.items
    }
}

/// nginx's smooth weighted round robin, unrolled over one full cycle.
pub(super) fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
