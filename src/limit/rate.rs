//! Token-bucket request rates, as GCRA: a bucket is one "theoretical arrival time" (TAT) in
//! nanoseconds, lock-free for a route-wide bucket and in a sharded, size-capped map for
//! buckets per key (a client address, a header value).
//!
//! A bucket with interval `T = 1/rate` and capacity `burst` admits a request at `now` when
//! `max(tat, now) + T <= now + burst * T`, and then moves its TAT there. `tat <= now` means a
//! full bucket, so an absent key and a key whose bucket has refilled are the same thing.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use foldhash::quality::SeedableRandomState;
use xxhash_rust::xxh3::xxh3_128_with_seed;

/// A bucket's refill rate and capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_second: f64,
    burst: u32,
}

impl Rate {
    /// `per_second` tokens refill each second, up to `burst` saved.
    pub fn new(per_second: f64, burst: u32) -> Result<Rate, String> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(format!(
                "a rate is a positive number of requests per second, not {per_second}"
            ));
        }
        if burst == 0 {
            return Err("a burst is at least 1 request".into());
        }
        Ok(Rate { per_second, burst })
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// The `Retry-After` value for a wait [`RateLimiter::check`] returned: whole seconds, rounded
/// up so that a client that waits that long finds a token (so never 0).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The longest span the nanosecond arithmetic holds: 2^62 ns is 146 years. `now` is clamped
/// to it and so is a burst window (by shortening the interval: a rate that slow refuses all
/// but its burst anyway), which keeps every sum below 2^64, so no overflow can turn a refusal
/// into an admission.
const MAX_SPAN: u64 = 1 << 62;

#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Nanoseconds per token.
    interval: u64,
    /// `burst * interval`: how far ahead of now a TAT may run.
    window: u64,
}

impl Gcra {
    fn new(rate: Rate) -> Gcra {
        let exact = 1e9 / rate.per_second;
        // Rounded up, so that a bucket never refills faster than asked, once float noise is
        // forgiven (1/60 per second is 60 s, not 60 s and 1 ns). `as` saturates: a rate so
        // small that this is infinite lands on the clamp.
        let interval =
            ((exact * (1.0 - 1e-12)).ceil() as u64).clamp(1, MAX_SPAN / u64::from(rate.burst));
        Gcra {
            interval,
            window: interval * u64::from(rate.burst),
        }
    }

    /// The TAT after one more request at `now`, or how long until that request would conform.
    #[inline]
    fn admit(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let next = tat.max(now) + self.interval;
        let horizon = now + self.window;
        if next <= horizon {
            Ok(next)
        } else {
            Err(next - horizon)
        }
    }
}

/// At most this many shards, and fewer for a small `max_keys`: a shard holds this many keys
/// at least, so that a few unlucky keys hashed to one shard do not evict each other while the
/// others stand empty.
const MAX_SHARDS: usize = 64;
const MIN_PER_SHARD: usize = 64;

/// Keys up to this long (an IPv6 address, or an IPv4 one mapped into it) are held as they are.
const INLINE: usize = 16;
/// The length byte of a key held as a 128-bit hash of a longer one.
const HASHED: u8 = u8::MAX;

/// A key as the map holds it: short keys verbatim, longer ones (header values a client
/// chooses) as a seeded 128-bit hash, so that every entry has one small fixed size and a
/// lookup never allocates. Two long keys with the same hash would share a bucket; with a
/// per-limiter random seed that is as likely as guessing the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    /// The bytes as two words: hashed with two multiplies, where a byte-wise hash of a
    /// just-written array stalls on loads that straddle the writes.
    words: [u64; 2],
    len: u8,
}

impl Key {
    #[inline]
    fn new(bytes: &[u8], seed: u64) -> Key {
        if bytes.len() <= INLINE {
            let mut k = [0u8; INLINE];
            k[..bytes.len()].copy_from_slice(bytes);
            let (lo, hi) = k.split_at(8);
            Key {
                words: [word(lo), word(hi)],
                len: bytes.len() as u8,
            }
        } else {
            let h = xxh3_128_with_seed(bytes, seed);
            Key {
                words: [h as u64, (h >> 64) as u64],
                len: HASHED,
            }
        }
    }
}

#[inline]
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_le_bytes(w)
}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One write of the whole key: foldhash hashes a `u128` with one folded multiply.
        let [lo, hi] = self.words;
        state.write_u128(
            u128::from(lo) | u128::from(hi ^ u64::from(self.len).rotate_right(8)) << 64,
        );
    }
}

/// Seeded folded multiplies over a key's two words ([`foldhash`]'s one-shot `write_u128`), with
/// the quality variant's last multiply: without it the top 7 bits, which the map uses as probe
/// tags, spread poorly over sequential addresses for some seeds (1 seed in 20 put 119 to 876
/// keys on one tag where 500 is the mean).
/// Keys are chosen by clients: the random seeds keep them from aiming many keys at one shard
/// or one probe sequence without knowing the seeds, and the per-shard cap bounds what a lookup
/// can cost even then. Seedable, so that the tests can also try fixed seeds.
type KeyHasher = SeedableRandomState;

type Buckets = HashMap<Key, u64, KeyHasher>;

/// A shard on cache lines of its own (a pair on x86-64, where the prefetcher pulls lines in
/// twos), so that threads on different shards do not invalidate each other's lock word.
struct Shard(CachePadded<Mutex<Buckets>>);

impl Shard {
    #[inline]
    fn lock(&self) -> MutexGuard<'_, Buckets> {
        // Nothing in the critical sections can panic halfway through an update; a poisoned
        // map is as consistent as any.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Keyed {
    /// Seeds for long keys and for the shard choice; the maps' hasher has seeds of its own, so
    /// that the keys of one shard do not share the hash bits its map probes with.
    key_seed: u64,
    shard_hasher: KeyHasher,
    shards: Box<[Shard]>,
    per_shard: usize,
}

impl Keyed {
    fn new(max_keys: usize) -> Keyed {
        let max_keys = max_keys.max(1);
        // A power of two; the shards together hold `max_keys` at most.
        let count = 1 << (max_keys / MIN_PER_SHARD).clamp(1, MAX_SHARDS).ilog2();
        let map_hasher = KeyHasher::random();
        Keyed {
            key_seed: RandomState::new().hash_one(0u8),
            shard_hasher: KeyHasher::random(),
            shards: (0..count)
                .map(|_| {
                    Shard(CachePadded::new(Mutex::new(HashMap::with_hasher(
                        map_hasher.clone(),
                    ))))
                })
                .collect(),
            per_shard: max_keys / count,
        }
    }

    #[inline]
    fn shard(&self, key: &Key) -> &Shard {
        let hash = self.shard_hasher.hash_one(key);
        // The shard count is a power of two.
        &self.shards[hash as usize & (self.shards.len() - 1)]
    }

    #[inline]
    fn check(&self, gcra: &Gcra, key: &[u8], now: u64) -> Result<(), u64> {
        let key = Key::new(key, self.key_seed);
        let mut map = self.shard(&key).lock();
        if let Some(tat) = map.get_mut(&key) {
            *tat = gcra.admit(*tat, now)?;
            return Ok(());
        }
        let tat = gcra.admit(0, now)?;
        if map.len() >= self.per_shard {
            *map = make_room(&mut map, now, self.per_shard);
        }
        map.insert(key, tat);
        Ok(())
    }
}

/// A full shard's entries with room for an eighth of its capacity at least, so that a flood
/// of new keys pays for a pass over the shard once per that many inserts rather than on each.
///
/// Entries whose bucket has refilled go first: they carry nothing an absent entry does not.
/// If that is not enough, entries are evicted at random, each starting over with a full
/// bucket. That fails open, the safe direction under a key flood: the alternatives are to
/// refuse the new keys (every new client refused while the flood lasts) or to grow without
/// bound. Random rather than oldest-first needs no recency list, and a flood cannot steer it.
///
/// The entries move to a new map: removing them in place would leave tombstones, and the map
/// would double its allocation to clear them on a later insert.
fn make_room(map: &mut Buckets, now: u64, cap: usize) -> Buckets {
    let live = map.values().filter(|&&tat| tat > now).count();
    let target = cap - (cap / 8).max(1);
    // Selection sampling (Knuth's algorithm S): exactly `excess` of the live ones, uniformly.
    let mut excess = live.saturating_sub(target);
    let mut left = live;
    let mut kept = HashMap::with_capacity_and_hasher(cap, map.hasher().clone());
    for (key, tat) in map.drain() {
        if tat <= now {
            continue;
        }
        let evict = excess > 0 && fastrand::usize(..left) < excess;
        left -= 1;
        excess -= usize::from(evict);
        if !evict {
            kept.insert(key, tat);
        }
    }
    kept
}

/// TATs count nanoseconds from here: one epoch for every limiter, taken when the first is
/// made, so that the instants callers pass (a request's start) come after it; an earlier one
/// counts as the epoch itself.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

enum Shape {
    Route(AtomicU64),
    Keyed(Keyed),
}

/// Token buckets for one route: one for the whole route, or one per key.
pub struct RateLimiter {
    rate: Rate,
    gcra: Gcra,
    /// [`EPOCH`], copied.
    epoch: Instant,
    shape: Shape,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rate", &self.rate)
            .field("keyed", &matches!(self.shape, Shape::Keyed(_)))
            .finish()
    }
}

impl RateLimiter {
    /// One bucket for every request of the route.
    pub fn route(rate: Rate) -> RateLimiter {
        RateLimiter::with_shape(rate, Shape::Route(AtomicU64::new(0)))
    }

    /// One bucket per key, for `max_keys` keys at most, split evenly across up to 64 shards.
    /// A shard that is full forgets the keys whose bucket has refilled, then random others,
    /// which start over with a full bucket (fail open).
    pub fn keyed(rate: Rate, max_keys: usize) -> RateLimiter {
        RateLimiter::with_shape(rate, Shape::Keyed(Keyed::new(max_keys)))
    }

    fn with_shape(rate: Rate, shape: Shape) -> RateLimiter {
        RateLimiter {
            rate,
            gcra: Gcra::new(rate),
            epoch: *EPOCH,
            shape,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    pub fn is_keyed(&self) -> bool {
        matches!(self.shape, Shape::Keyed(_))
    }

    /// Takes a token for a request arriving at `now`, or returns how long until one is there
    /// (for `Retry-After`, see [`retry_after_secs`]). A refusal takes nothing.
    ///
    /// A route-wide limiter ignores `key`; a keyed one puts every request without a key in one
    /// bucket of its own, so that leaving the key out is no way around the limit.
    #[inline]
    pub fn check(&self, key: Option<&[u8]>, now: Instant) -> Result<(), Duration> {
        let now = self.nanos(now);
        let verdict = match &self.shape {
            Shape::Route(tat) => check_atomic(&self.gcra, tat, now),
            Shape::Keyed(keyed) => keyed.check(&self.gcra, key.unwrap_or_default(), now),
        };
        verdict.map_err(Duration::from_nanos)
    }

    /// Keys held now (0 for a route-wide limiter): at most the `max_keys` it was made with.
    pub fn keys(&self) -> usize {
        match &self.shape {
            Shape::Route(_) => 0,
            Shape::Keyed(keyed) => keyed.shards.iter().map(|s| s.lock().len()).sum(),
        }
    }

    /// Drops the keys whose bucket has refilled by `now` (which changes no verdict), so that
    /// [`keys`](Self::keys) counts the clients limited recently and the memory a flood of keys
    /// took is given back; returns how many went. Off the request path: it takes each shard's
    /// lock for a pass over the shard.
    pub fn forget_idle(&self, now: Instant) -> usize {
        let Shape::Keyed(keyed) = &self.shape else {
            return 0;
        };
        let now = self.nanos(now);
        keyed
            .shards
            .iter()
            .map(|shard| {
                let mut map = shard.lock();
                let before = map.len();
                // Into a map sized for what is left, rather than `retain`: see `make_room`.
                let live = map.values().filter(|&&tat| tat > now).count();
                let mut kept = HashMap::with_capacity_and_hasher(live, map.hasher().clone());
                kept.extend(map.drain().filter(|&(_, tat)| tat > now));
                *map = kept;
                before - live
            })
            .sum()
    }

    #[inline]
    fn nanos(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch);
        since
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(since.subsec_nanos()))
            .min(MAX_SPAN)
    }
}

#[inline]
fn check_atomic(gcra: &Gcra, tat: &AtomicU64, now: u64) -> Result<(), u64> {
    // Relaxed: the TAT is the only state and guards no other memory. A refusal writes
    // nothing, so a flood that is being refused only reads the cache line.
    let mut seen = tat.load(Ordering::Relaxed);
    loop {
        let next = gcra.admit(seen, now)?;
        match tat.compare_exchange_weak(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(current) => seen = current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foldhash::SharedSeed;
    use std::sync::atomic::AtomicUsize;

    const MS: Duration = Duration::from_millis(1);

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate::new(per_second, burst).expect("valid rate")
    }

    fn ip(n: u32) -> [u8; 16] {
        // An IPv4 address mapped into IPv6, as a client address key is.
        let mut k = [0u8; 16];
        k[10] = 0xff;
        k[11] = 0xff;
        k[12..].copy_from_slice(&n.to_be_bytes());
        k
    }

    impl RateLimiter {
        fn holds(&self, key: &[u8]) -> bool {
            let Shape::Keyed(keyed) = &self.shape else {
                return false;
            };
            let key = Key::new(key, keyed.key_seed);
            keyed.shard(&key).lock().contains_key(&key)
        }

        fn capacity(&self) -> usize {
            let Shape::Keyed(keyed) = &self.shape else {
                return 0;
            };
            keyed.shards.iter().map(|s| s.lock().capacity()).sum()
        }
    }

    #[test]
    fn rates_are_validated() {
        assert!(Rate::new(0.0, 1).is_err());
        assert!(Rate::new(-1.0, 1).is_err());
        assert!(Rate::new(f64::NAN, 1).is_err());
        assert!(Rate::new(f64::INFINITY, 1).is_err());
        assert!(Rate::new(1.0, 0).is_err());
        assert!(Rate::new(0.5, 1).is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    /// 10/s with a burst of 5, for one bucket seen through `check`.
    fn burst_then_refill(check: impl Fn(Instant) -> Result<(), Duration>) {
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(check(t0), Ok(()), "request {i} of the burst");
        }
        assert_eq!(check(t0), Err(100 * MS), "one token takes 100 ms");
        assert_eq!(retry_after_secs(100 * MS), 1);
        assert_eq!(check(t0 + 40 * MS), Err(60 * MS), "refusals take nothing");
        assert_eq!(check(t0 + 100 * MS), Ok(()));
        assert_eq!(check(t0 + 100 * MS), Err(100 * MS));
        assert_eq!(check(t0 + 250 * MS), Ok(()), "one more at 200 ms");
        assert_eq!(check(t0 + 250 * MS), Err(50 * MS), "the next at 300 ms");
        // A long pause fills the bucket to its burst, no further.
        let later = t0 + Duration::from_secs(60);
        for i in 0..5 {
            assert_eq!(check(later), Ok(()), "request {i} after the pause");
        }
        assert_eq!(check(later), Err(100 * MS));
    }

    #[test]
    fn route_bucket_refuses_beyond_its_burst_and_refills_at_its_rate() {
        let limiter = RateLimiter::route(rate(10.0, 5));
        burst_then_refill(|now| limiter.check(None, now));
        assert_eq!(limiter.keys(), 0);
    }

    #[test]
    fn keyed_bucket_refuses_beyond_its_burst_and_refills_at_its_rate() {
        let limiter = RateLimiter::keyed(rate(10.0, 5), 10_000);
        burst_then_refill(|now| limiter.check(Some(&ip(1)), now));
        assert_eq!(limiter.keys(), 1);
    }

    #[test]
    fn slow_rates_give_long_waits() {
        let limiter = RateLimiter::route(rate(1.0 / 60.0, 1));
        let t0 = Instant::now();
        assert_eq!(limiter.check(None, t0), Ok(()));
        let wait = limiter.check(None, t0).expect_err("empty");
        assert_eq!(retry_after_secs(wait), 60);
        // So slow that the interval is clamped: still refused, never wrapped into an admission.
        let glacial = RateLimiter::route(rate(1e-300, 3));
        for _ in 0..3 {
            assert_eq!(glacial.check(None, t0), Ok(()));
        }
        assert!(glacial.check(None, t0).is_err());
        assert!(glacial.check(None, t0 + Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn distinct_keys_are_limited_separately() {
        let limiter = RateLimiter::keyed(rate(1.0, 2), 10_000);
        let t0 = Instant::now();
        let (a, b) = (ip(1), ip(2));
        let header = b"a header value longer than sixteen bytes".as_slice();
        for _ in 0..2 {
            assert!(limiter.check(Some(&a), t0).is_ok());
        }
        assert!(limiter.check(Some(&a), t0).is_err());
        for _ in 0..2 {
            assert!(limiter.check(Some(&b), t0).is_ok(), "b has its own bucket");
            assert!(
                limiter.check(Some(header), t0).is_ok(),
                "and so has a long key"
            );
        }
        assert!(limiter.check(Some(&b), t0).is_err());
        assert!(limiter.check(Some(header), t0).is_err());
        assert!(limiter.check(Some(&a), t0).is_err(), "a is still empty");
        // Keys that differ only in length or past the 16th byte are different keys.
        assert!(limiter.check(Some(&a[..15]), t0).is_ok());
        assert!(limiter
            .check(Some(b"a header value longer than sixteen bytez"), t0)
            .is_ok());
        // Requests without a key share one bucket.
        for _ in 0..2 {
            assert!(limiter.check(None, t0).is_ok());
        }
        assert!(limiter.check(None, t0).is_err());
        assert_eq!(limiter.keys(), 6);
    }

    #[test]
    fn a_flood_of_keys_stays_within_max_keys_and_evicted_keys_start_over() {
        const MAX: usize = 10_000;
        let limiter = RateLimiter::keyed(rate(1.0, 2), MAX);
        let t0 = Instant::now();
        let victim = ip(u32::MAX);
        assert!(limiter.check(Some(&victim), t0).is_ok());
        assert!(limiter.check(Some(&victim), t0).is_ok());
        assert!(
            limiter.check(Some(&victim), t0).is_err(),
            "the victim is empty"
        );

        // Every flooding key has just spent a token, so none has refilled: evictions are of
        // live buckets.
        let mut evicted_at = None;
        for n in 0..100_000u32 {
            assert!(
                limiter.check(Some(&ip(n)), t0).is_ok(),
                "a new key has a full bucket"
            );
            if n % 128 == 0 {
                let held = limiter.keys();
                assert!(held <= MAX, "{held} keys held after {n}");
            }
            if evicted_at.is_none() && !limiter.holds(&victim) {
                evicted_at = Some(n);
            }
        }
        // Victims are drawn at random, so the victim outlives 100,000 keys about once in
        // 20,000 runs; more keys settle it.
        let mut n = 100_000u32;
        while evicted_at.is_none() && n < 10_000_000 {
            assert!(limiter.check(Some(&ip(n)), t0).is_ok());
            if !limiter.holds(&victim) {
                evicted_at = Some(n);
            }
            n += 1;
        }
        assert!(limiter.keys() <= MAX);
        assert!(
            limiter.keys() > MAX / 2,
            "the shards were used: {}",
            limiter.keys()
        );
        // Bounded memory: the maps never grew past what MAX keys need.
        let capacity = limiter.capacity();
        assert!(capacity <= 2 * MAX, "capacity {capacity}");

        // The victim was evicted (its shard filled up many times over) and so fails open: the
        // same instant that refused it before now admits it with a full bucket.
        assert!(evicted_at.is_some(), "the victim was never evicted");
        assert!(limiter.check(Some(&victim), t0).is_ok());
        assert!(limiter.check(Some(&victim), t0).is_ok());
        assert!(limiter.check(Some(&victim), t0).is_err());
    }

    #[test]
    fn sequential_addresses_spread_evenly_over_shards_and_probes() {
        let limiter = RateLimiter::keyed(rate(1.0, 1), 10_000);
        let Shape::Keyed(keyed) = &limiter.shape else {
            unreachable!("keyed");
        };
        let fixed = SharedSeed::global_fixed();
        // Weak seeds too: the spread must not depend on the seeds' luck.
        for map_hasher in [
            KeyHasher::random(),
            KeyHasher::with_seed(0, fixed),
            KeyHasher::with_seed(11, fixed),
        ] {
            let mut shards = [0usize; MAX_SHARDS];
            let mut slots = [0usize; 64];
            let mut tags = [0usize; 128];
            for n in 0..64_000u32 {
                let key = Key::new(&ip(0x0a00_0000 + n), keyed.key_seed);
                shards[(keyed.shard_hasher.hash_one(key) as usize) % MAX_SHARDS] += 1;
                // What the map probes with: low bits for the slot, the top 7 for the tag.
                let h = map_hasher.hash_one(key);
                slots[h as usize % 64] += 1;
                tags[(h >> 57) as usize] += 1;
            }
            for (what, counts, mean) in [
                ("shard", &shards[..], 1000),
                ("slot", &slots[..], 1000),
                ("tag", &tags[..], 500),
            ] {
                let (min, max) = (counts.iter().min(), counts.iter().max());
                assert!(
                    counts.iter().all(|&c| c > mean * 3 / 4 && c < mean * 5 / 4),
                    "{what} with {map_hasher:?}: from {min:?} to {max:?}, mean {mean}"
                );
            }
        }
    }

    #[test]
    fn making_room_drops_refilled_buckets_before_live_ones() {
        let hasher = KeyHasher::with_seed(7, SharedSeed::global_fixed());
        let key = |n: u32| Key::new(&ip(n), 0);
        let now = 1_000;
        // 16 entries, 4 of them refilled (TAT at or before now).
        let mut map: Buckets = HashMap::with_hasher(hasher.clone());
        for n in 0..16 {
            map.insert(key(n), if n < 4 { now - u64::from(n) } else { now + 1 });
        }
        let map = make_room(&mut map, now, 16);
        assert_eq!(map.len(), 12, "only the refilled ones went");
        assert!((4..16).all(|n| map.contains_key(&key(n))));

        // None refilled: random live ones go, down to 7/8 of the cap.
        let mut map: Buckets = HashMap::with_hasher(hasher.clone());
        for n in 0..16 {
            map.insert(key(n), now + 1);
        }
        let map = make_room(&mut map, now, 16);
        assert_eq!(map.len(), 14);
        assert!(map.capacity() >= 16, "room for the cap without growing");

        // A cap of one still makes room.
        let mut map: Buckets = HashMap::with_hasher(hasher.clone());
        map.insert(key(0), now + 1);
        assert!(make_room(&mut map, now, 1).is_empty());
    }

    #[test]
    fn small_key_caps_are_kept_exactly() {
        for max in [1, 2, 3, 5, 63, 64, 65, 1000] {
            let limiter = RateLimiter::keyed(rate(1.0, 1), max);
            let t0 = Instant::now();
            for n in 0..(max as u32 * 4) {
                assert!(limiter.check(Some(&ip(n)), t0).is_ok());
                assert!(limiter.keys() <= max, "max {max}");
            }
            assert!(limiter.keys() >= 1);
        }
    }

    #[test]
    fn idle_keys_can_be_forgotten() {
        let limiter = RateLimiter::keyed(rate(10.0, 1), 10_000);
        let t0 = Instant::now();
        for n in 0..10 {
            assert!(limiter.check(Some(&ip(n)), t0 + n * 50 * MS).is_ok());
        }
        // Keys seen at 0..=450 ms have refilled by 500 ms when their token came back by then.
        assert_eq!(limiter.forget_idle(t0 + 500 * MS), 9);
        assert_eq!(limiter.keys(), 1);
        assert!(limiter.holds(&ip(9)));
        assert!(
            limiter.check(Some(&ip(9)), t0 + 500 * MS).is_err(),
            "still empty"
        );
        assert!(limiter.check(Some(&ip(0)), t0 + 500 * MS).is_ok());
        assert_eq!(limiter.forget_idle(t0 + 10 * 1000 * MS), 2);
        assert_eq!(limiter.keys(), 0);
    }

    /// Over random request times, no window of any length `w` admits more than
    /// `burst + rate * w`, and steady over-demand gets (nearly) the full rate.
    #[test]
    fn no_window_admits_more_than_burst_plus_rate() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for case in 0..40 {
            let per_second = [0.5, 3.0, 10.0, 333.0, 1000.0][case % 5] * (0.5 + rng.f64());
            let burst = rng.u32(1..=50);
            let limiter = if case % 2 == 0 {
                RateLimiter::route(rate(per_second, burst))
            } else {
                RateLimiter::keyed(rate(per_second, burst), 16)
            };
            let t0 = Instant::now();
            // Demand of about 3x the rate, in clumps and gaps.
            let mean_gap = 1e9 / per_second / 3.0;
            let mut at = 0u64;
            let mut admitted: Vec<u64> = Vec::new();
            for _ in 0..3_000 {
                at += match rng.u8(..10) {
                    0..=5 => 0,
                    6..=8 => (rng.f64() * mean_gap * 2.0) as u64,
                    _ => (rng.f64() * mean_gap * 40.0) as u64,
                };
                let now = t0 + Duration::from_nanos(at);
                if limiter.check(Some(b"k"), now).is_ok() {
                    admitted.push(at);
                }
            }
            for (i, &start) in admitted.iter().enumerate() {
                for (j, &end) in admitted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as f64;
                    let window = (end - start) as f64 / 1e9;
                    assert!(
                        count <= f64::from(burst) + per_second * window + 1e-6,
                        "case {case}: {count} admitted in {window} s at {per_second}/s, burst {burst}"
                    );
                }
            }

            let steady = RateLimiter::route(rate(per_second, burst));
            // Fine-grained demand: a bucket of one token banks no lateness, so a request that
            // comes a step after its token loses that step.
            let step = (1e9 / per_second / 64.0) as u64;
            let span = 200 * (1e9 / per_second) as u64;
            let mut ok = 0u64;
            for k in 0..=span / step {
                ok += u64::from(
                    steady
                        .check(None, t0 + Duration::from_nanos(k * step))
                        .is_ok(),
                );
            }
            let floor = per_second * span as f64 / 1e9 * 0.98;
            assert!(
                ok as f64 >= floor,
                "case {case}: {ok} admitted, expected {floor}"
            );
        }
    }

    #[test]
    fn threads_racing_at_one_instant_take_exactly_the_burst() {
        const BURST: u32 = 1000;
        for limiter in [
            RateLimiter::route(rate(1.0, BURST)),
            RateLimiter::keyed(rate(1.0, BURST), 10),
        ] {
            let now = Instant::now();
            let admitted = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        for _ in 0..5_000 {
                            if limiter.check(Some(b"same"), now).is_ok() {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(admitted.into_inner(), BURST as usize, "{limiter:?}");
        }
    }
}
