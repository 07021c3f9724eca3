//! The memory tier: entries bounded in bytes, a primary-to-variant index and a tag index.
//!
//! The entries live in a `quick_cache` weighted by their bytes. The indexes sit beside it, each
//! behind its own sharded locks; the only lock order is cache shard -> index shard (the eviction
//! hook unindexes under the cache's lock), so no index lock is ever held while calling the cache.
//! An index may briefly name a key the cache no longer holds (a purge then finds nothing) or
//! miss one being inserted at that instant (the purge's epoch then refuses it at its first read).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use foldhash::fast::RandomState;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};

use super::{Entry, EvictReason, KeyHash, TagId};

/// Bytes an entry costs beyond its body, meta and target: the `Arc<Entry>` allocation, the
/// cache's slot and table share, the primary index, the expiry index and the tags' boxed slice.
/// Measured by `benches/cache_store.rs` (live bytes from a counting allocator, 100k entries
/// with a 56-byte target and 4 tags): 665 bytes beyond body and meta, which this and
/// `TAG_OVERHEAD` charge as 672.
pub const ENTRY_OVERHEAD: u64 = 360;

/// Bytes one tag of an entry costs: its slot in the entry and in the tag index's set (more for
/// a tag of one entry, which has a set of its own; less for one shared by many).
pub const TAG_OVERHEAD: u64 = 64;

/// What quick_cache keeps for its hot queue (its default, set here so `max_object` can
/// reproduce the admission limit it derives from it).
const HOT_ALLOCATION: f64 = 0.97;

/// A shard holds at least this much, so a shard's share of the bound still admits the
/// objects the bound was sized for.
const MIN_SHARD_BYTES: u64 = 4 << 20;

const INDEX_SHARDS: usize = 16;

type Map<K, V> = HashMap<K, V, RandomState>;
type Set<K> = HashSet<K, RandomState>;
/// One shard of the tag index: each tag's keys.
type TagShard = Mutex<Map<TagId, Set<KeyHash>>>;

/// The weight of an entry in the cache: what it holds in memory.
pub fn weight(e: &Entry) -> u64 {
    (e.body.len() + e.meta.0.len() + e.meta.1.len() + e.target.len()) as u64
        + e.tags.len() as u64 * TAG_OVERHEAD
        + ENTRY_OVERHEAD
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<KeyHash, Arc<Entry>> for ByBytes {
    fn weight(&self, _key: &KeyHash, val: &Arc<Entry>) -> u64 {
        weight(val)
    }
}

/// Evictions by reason, shared with the eviction hook.
pub struct Evictions {
    counts: [AtomicU64; REASONS.len()],
    /// Called with each count added (the store's metric handles).
    on_count: Box<dyn Fn(EvictReason, u64) + Send + Sync>,
}

pub const REASONS: [EvictReason; 7] = [
    EvictReason::Capacity,
    EvictReason::Expired,
    EvictReason::Invalidation,
    EvictReason::Purge,
    EvictReason::SessionLoss,
    EvictReason::TooLarge,
    EvictReason::Unused,
];

impl Evictions {
    pub fn new(on_count: Box<dyn Fn(EvictReason, u64) + Send + Sync>) -> Evictions {
        Evictions {
            counts: Default::default(),
            on_count,
        }
    }

    pub fn add(&self, why: EvictReason, n: u64) {
        if n == 0 {
            return;
        }
        let i = REASONS.iter().position(|r| *r == why).unwrap_or(0);
        self.counts[i].fetch_add(n, Ordering::Relaxed);
        (self.on_count)(why, n);
    }

    pub fn get(&self, why: EvictReason) -> u64 {
        let i = REASONS.iter().position(|r| *r == why).unwrap_or(0);
        self.counts[i].load(Ordering::Relaxed)
    }
}

/// The indexes beside the cache.
struct Index {
    tags: Box<[TagShard]>,
    /// primary -> the key of its newest variant.
    primary: Box<[Mutex<Map<KeyHash, KeyHash>>]>,
    /// (hard expiry, key), for the sweep.
    expiry: Mutex<BTreeSet<(u64, KeyHash)>>,
    evictions: Evictions,
}

fn shard_of(bytes: &[u8]) -> usize {
    bytes[0] as usize % INDEX_SHARDS
}

impl Index {
    fn tag_shard(&self, tag: TagId) -> &TagShard {
        &self.tags[(tag.0 as usize) % INDEX_SHARDS]
    }

    fn add(&self, key: &KeyHash, e: &Entry) {
        for tag in e.tags.iter() {
            let mut shard = self
                .tag_shard(*tag)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shard.entry(*tag).or_default().insert(*key);
        }
        self.primary[shard_of(&e.primary)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(e.primary, *key);
        self.expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((e.hard_expiry_ms, *key));
    }

    fn remove(&self, key: &KeyHash, e: &Entry) {
        for tag in e.tags.iter() {
            let mut shard = self
                .tag_shard(*tag)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(set) = shard.get_mut(tag) {
                set.remove(key);
                if set.is_empty() {
                    shard.remove(tag);
                }
            }
        }
        let mut primary = self.primary[shard_of(&e.primary)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if primary.get(&e.primary) == Some(key) {
            primary.remove(&e.primary);
        }
        drop(primary);
        self.expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(e.hard_expiry_ms, *key));
    }
}

/// Unindexes and counts what the cache evicts for room.
#[derive(Clone)]
struct OnEvict(Arc<Index>);

impl Lifecycle<KeyHash, Arc<Entry>> for OnEvict {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), key: KeyHash, val: Arc<Entry>) {
        self.0.remove(&key, &val);
        self.0.evictions.add(EvictReason::Capacity, 1);
    }
}

/// The memory tier.
pub struct Memory {
    cache: Cache<KeyHash, Arc<Entry>, ByBytes, RandomState, OnEvict>,
    index: Arc<Index>,
    /// The largest weight the cache admits (its hot share of one shard).
    max_object: AtomicU64,
}

impl Memory {
    pub fn new(bound: u64, evictions: Evictions) -> Memory {
        let bound = bound.max(1);
        let most = std::thread::available_parallelism().map_or(1, |n| n.get()) * 4;
        let wanted = (bound / MIN_SHARD_BYTES).clamp(1, most as u64) as usize;
        // quick_cache rounds the shard count up to a power of two: round down first, so no
        // shard gets less than `MIN_SHARD_BYTES`.
        let shards = if wanted.is_power_of_two() {
            wanted
        } else {
            wanted.next_power_of_two() / 2
        };
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity((bound / 4096).max(64) as usize)
            .weight_capacity(bound)
            .hot_allocation(HOT_ALLOCATION)
            .build();
        let index = Arc::new(Index {
            tags: (0..INDEX_SHARDS).map(|_| Mutex::default()).collect(),
            primary: (0..INDEX_SHARDS).map(|_| Mutex::default()).collect(),
            expiry: Mutex::default(),
            evictions,
        });
        let hasher = RandomState::default();
        let lifecycle = OnEvict(index.clone());
        let cache = match options {
            Ok(o) => Cache::with_options(o, ByBytes, hasher, lifecycle),
            // Only an allocation outside (0, 1) fails, and ours is a constant inside it.
            Err(_) => Cache::with(
                (bound / 4096).max(64) as usize,
                bound,
                ByBytes,
                hasher,
                lifecycle,
            ),
        };
        let memory = Memory {
            cache,
            index,
            max_object: AtomicU64::new(0),
        };
        memory.set_max_object(bound);
        memory
    }

    fn set_max_object(&self, bound: u64) {
        let shards = self.cache.num_shards() as u64;
        let shard = bound.div_ceil(shards);
        self.max_object
            .store((shard as f64 * HOT_ALLOCATION) as u64, Ordering::Relaxed);
    }

    pub fn evictions(&self) -> &Evictions {
        &self.index.evictions
    }

    pub fn resize(&self, bound: u64) {
        let bound = bound.max(1);
        if bound != self.cache.capacity() {
            self.cache.set_capacity(bound);
            self.set_max_object(bound);
        }
    }

    /// The entry under `key`, if any (expiry and epochs are the caller's).
    pub fn get(&self, key: &KeyHash) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    /// The key of the newest variant stored under `primary`.
    pub fn variant_of(&self, primary: &KeyHash) -> Option<KeyHash> {
        self.index.primary[shard_of(primary)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(primary)
            .copied()
    }

    /// Stores `entry`; `false` (counted as `too_large`) when it exceeds what the bound admits.
    pub fn insert(&self, key: KeyHash, entry: Arc<Entry>) -> bool {
        if weight(&entry) > self.max_object.load(Ordering::Relaxed) {
            self.remove(&key);
            self.index.evictions.add(EvictReason::TooLarge, 1);
            return false;
        }
        // The replaced value is not passed to the eviction hook: unindex it here.
        self.remove(&key);
        self.index.add(&key, &entry);
        self.cache.insert(key, entry);
        true
    }

    /// Removes `key` (uncounted: the caller counts by its reason).
    pub fn remove(&self, key: &KeyHash) -> Option<Arc<Entry>> {
        let (k, e) = self.cache.remove(key)?;
        self.index.remove(&k, &e);
        Some(e)
    }

    /// Removes `key` if it is still `entry` (not a newer one stored meanwhile).
    pub fn remove_exact(&self, key: &KeyHash, entry: &Arc<Entry>) -> bool {
        match self.cache.remove_if(key, |v| Arc::ptr_eq(v, entry)) {
            Some((k, e)) => {
                self.index.remove(&k, &e);
                true
            }
            None => false,
        }
    }

    /// The keys holding `tag`.
    pub fn tagged(&self, tag: TagId) -> Vec<KeyHash> {
        self.index
            .tag_shard(tag)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tag)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Removes the entries past their hard expiry at `now_ms`, at most `budget` of them.
    pub fn sweep(&self, now_ms: u64, budget: usize) -> usize {
        let due: Vec<(u64, KeyHash)> = {
            let expiry = self
                .index
                .expiry
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            expiry
                .range(..(now_ms.saturating_add(1), [0; 16]))
                .take(budget)
                .copied()
                .collect()
        };
        let mut removed = 0;
        for (at, key) in due {
            match self.cache.remove_if(&key, |e| e.hard_expiry_ms <= now_ms) {
                Some((k, e)) => {
                    self.index.remove(&k, &e);
                    removed += 1;
                }
                // Gone or replaced by a later one: only the expiry mark is stale.
                None => {
                    self.index
                        .expiry
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&(at, key));
                }
            }
        }
        removed
    }

    /// Every entry (the key and a reference), for listings and purges by prefix.
    pub fn iter(&self) -> impl Iterator<Item = (KeyHash, Arc<Entry>)> + '_ {
        self.cache.iter()
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// The bytes held, by the weight the bound counts.
    pub fn bytes(&self) -> u64 {
        self.cache.weight()
    }

    pub fn capacity(&self) -> u64 {
        self.cache.capacity()
    }
}
