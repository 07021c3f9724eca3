//! The cache's storage: a memory tier bounded in bytes, an optional Redis tier shared by the
//! replicas, the tag index that invalidation works by, and the per-tag epochs that make an
//! eviction win over an entry stored before it. No Pingora type appears here.

pub mod epochs;
pub mod memory;
pub mod metrics;
pub mod redis;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use smallvec::SmallVec;

pub use epochs::Epochs;

/// The 16-byte hash of an entry's key (Pingora's combined primary and variance hash).
pub type KeyHash = [u8; 16];

/// A tag, hashed from the store's name and the tag's text (see `profile::tag`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagId(pub u64);

/// The tags of one entry or one eviction.
pub type TagSet = SmallVec<[TagId; 6]>;

/// Where an entry may live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreClass {
    /// Memory, and Redis when configured.
    Shared,
    /// Memory only (`store: memory_only`): never written to Redis.
    MemoryOnly,
}

/// The tier an entry was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
}

/// Why an entry left the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictReason {
    Capacity,
    Expired,
    Invalidation,
    Purge,
    SessionLoss,
    TooLarge,
    /// No route names the store any more (a reload dropped them): its memory is given back.
    Unused,
}

impl EvictReason {
    /// The metrics' `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::Capacity => "capacity",
            EvictReason::Expired => "expired",
            EvictReason::Invalidation => "invalidation",
            EvictReason::Purge => "purge",
            EvictReason::SessionLoss => "session_loss",
            EvictReason::TooLarge => "too_large",
            EvictReason::Unused => "unused",
        }
    }
}

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    /// The primary key hash (method class, host, path, query, scope).
    pub primary: KeyHash,
    /// The variance hash (`Vary` and `key_headers`), if the response varies.
    pub variance: Option<KeyHash>,
    /// The serialized cache meta (opaque here: two parts, as Pingora serializes it).
    pub meta: (Bytes, Bytes),
    /// The body.
    pub body: Bytes,
    /// When the upstream request was sent (ms since the epoch): what epochs are compared with.
    pub created_ms: u64,
    /// After this (ms since the epoch) the entry is gone, stale windows and token `exp` included.
    pub hard_expiry_ms: u64,
    /// Its tags.
    pub tags: Box<[TagId]>,
    /// Where it may live.
    pub class: StoreClass,
    /// The request target (path and query) for listings and purges by prefix.
    pub target: Box<str>,
    /// The resource kind (`profile::Kind as u16`), for listings and metrics.
    pub kind: u16,
}

/// What a store is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// The store's name.
    pub name: Box<str>,
    /// The memory tier's bound in bytes.
    pub memory: u64,
    /// The Redis tier, if any.
    pub redis: Option<redis::RedisConfig>,
}

/// Counters and sizes of a store, for `GET /cache` and the metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreStats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub l2_hits: u64,
    pub redis_up: Option<bool>,
    pub evictions: Vec<(&'static str, u64)>,
}

/// One entry as listed by `GET /cache/entries`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EntryInfo {
    pub target: String,
    pub kind: u16,
    pub age_ms: u64,
    pub ttl_ms: u64,
    pub tags: Vec<u64>,
    pub size: u64,
}

/// The tiers, the tag index and the epochs of one store name.
pub struct Store {
    name: Box<str>,
    memory: memory::Memory,
    redis: Option<redis::RedisTier>,
    epochs: Epochs,
    metrics: Arc<metrics::StoreMetrics>,
    hits: AtomicU64,
    misses: AtomicU64,
    l2_hits: AtomicU64,
    /// `max_lifetime` in ms: the cap on every entry's hard expiry after its creation.
    max_lifetime_ms: AtomicU64,
    /// When the tick last forgot old epochs.
    forgot_ms: AtomicU64,
}

/// The wall clock in ms since the epoch: what `created_ms` and `hard_expiry_ms` are on, and
/// what a local purge records as its epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The least the expiry sweep visits per tick.
const SWEEP_MIN: usize = 64;
/// `max_lifetime` when unset: no entry is served longer after its fetch, whatever its
/// lifetimes, so evictions need to be remembered no longer (design §4.6, pruning).
pub const DEFAULT_MAX_LIFETIME_MS: u64 = 24 * 3600 * 1000;
/// How often the tick forgets epochs past `max_lifetime`.
const FORGET_EVERY_MS: u64 = 60_000;

impl Store {
    pub fn new(cfg: &StoreConfig) -> Store {
        let metrics = Arc::new(metrics::StoreMetrics::new(&cfg.name));
        let counted = metrics.clone();
        let evictions = memory::Evictions::new(Box::new(move |why, n| counted.evicted(why, n)));
        Store {
            name: cfg.name.clone(),
            memory: memory::Memory::new(cfg.memory, evictions),
            redis: cfg
                .redis
                .as_ref()
                .map(|r| redis::RedisTier::new(&cfg.name, r)),
            epochs: Epochs::default(),
            metrics,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            l2_hits: AtomicU64::new(0),
            max_lifetime_ms: AtomicU64::new(DEFAULT_MAX_LIFETIME_MS),
            forgot_ms: AtomicU64::new(0),
        }
    }

    /// Applies `max_lifetime` (a store shared by routes takes the newest build's).
    pub fn set_max_lifetime(&self, ms: u64) {
        self.max_lifetime_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Before this time (ms) an eviction concerns no entry the store may still serve at
    /// `now_ms`: every entry made before it is past `max_lifetime`. The replica bus deletes
    /// older epochs and bans from ZooKeeper.
    pub fn forget_before(&self, now_ms: u64) -> u64 {
        now_ms
            .saturating_sub(self.max_lifetime_ms.load(Ordering::Relaxed))
            .saturating_sub(self.epochs.slack_ms())
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies a reloaded memory bound.
    pub fn resize(&self, memory: u64) {
        self.memory.resize(memory);
    }

    /// The per-tag epochs (bumped by evictions and by the replica bus).
    pub fn epochs(&self) -> &Epochs {
        &self.epochs
    }

    /// Why `e` may not be served at `now_ms`, if it may not.
    fn dead(&self, e: &Entry, now_ms: u64) -> Option<EvictReason> {
        if now_ms >= e.hard_expiry_ms {
            Some(EvictReason::Expired)
        } else if self.epochs.stale(&e.tags, e.created_ms) {
            Some(EvictReason::Invalidation)
        } else {
            None
        }
    }

    /// The entry under `key` in memory, dropping it when it may no longer be served.
    fn get_memory(&self, key: &KeyHash, now_ms: u64) -> Option<Arc<Entry>> {
        let e = self.memory.get(key)?;
        match self.dead(&e, now_ms) {
            None => Some(e),
            Some(why) => {
                if self.memory.remove_exact(key, &e) {
                    self.memory.evictions().add(why, 1);
                }
                None
            }
        }
    }

    /// An entry read from Redis, checked, then promoted into memory.
    fn promote(&self, key: KeyHash, e: Entry, now_ms: u64) -> Option<Arc<Entry>> {
        if self.dead(&e, now_ms).is_some() {
            // Stale for every replica that knows the epoch: drop it for all of them.
            if let Some(r) = &self.redis {
                r.spawn_remove(key);
            }
            return None;
        }
        let e = Arc::new(e);
        self.memory.insert(key, e.clone());
        self.l2_hits.fetch_add(1, Ordering::Relaxed);
        Some(e)
    }

    fn counted(&self, found: Option<(Arc<Entry>, Tier)>) -> Option<(Arc<Entry>, Tier)> {
        match &found {
            Some((_, Tier::Memory)) => self.hits.fetch_add(1, Ordering::Relaxed),
            Some((_, Tier::Redis)) => 0,
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    /// The entry under `key`, from memory, else from Redis (promoted to memory). `None` past
    /// its hard expiry, or when an epoch of one of its tags is newer than its `created_ms`.
    pub async fn get(&self, key: &KeyHash, now_ms: u64) -> Option<(Arc<Entry>, Tier)> {
        if let Some(e) = self.get_memory(key, now_ms) {
            return self.counted(Some((e, Tier::Memory)));
        }
        let found = match &self.redis {
            Some(r) => match r.get(key).await {
                Some(e) => self.promote(*key, e, now_ms).map(|e| (e, Tier::Redis)),
                None => None,
            },
            None => None,
        };
        self.counted(found)
    }

    /// The newest variant stored under a primary key (Pingora's first lookup of a `Vary`ing
    /// response).
    pub async fn get_primary(&self, primary: &KeyHash, now_ms: u64) -> Option<(Arc<Entry>, Tier)> {
        if let Some(key) = self.memory.variant_of(primary) {
            if let Some(e) = self.get_memory(&key, now_ms) {
                return self.counted(Some((e, Tier::Memory)));
            }
        }
        let found = match &self.redis {
            Some(r) => match r.get_primary(primary).await {
                Some((key, e)) => self.promote(key, e, now_ms).map(|e| (e, Tier::Redis)),
                None => None,
            },
            None => None,
        };
        self.counted(found)
    }

    /// Stores an entry in memory now; a `Shared` one is written to Redis in the background.
    pub fn insert(&self, key: KeyHash, entry: Entry) {
        self.insert_at(key, entry, wall_ms());
    }

    /// [`Store::insert`] on a given clock. An entry already past its expiry, or made before
    /// an eviction of one of its tags (the request was in flight when the eviction came), is
    /// not stored at all.
    pub fn insert_at(&self, key: KeyHash, mut entry: Entry, now_ms: u64) {
        let lifetime = self.max_lifetime_ms.load(Ordering::Relaxed);
        entry.hard_expiry_ms = entry
            .hard_expiry_ms
            .min(entry.created_ms.saturating_add(lifetime));
        if let Some(why) = self.dead(&entry, now_ms) {
            self.memory.evictions().add(why, 1);
            return;
        }
        let entry = Arc::new(entry);
        self.memory.insert(key, entry.clone());
        if let Some(r) = &self.redis {
            r.spawn_put(key, entry);
        }
    }

    pub fn remove(&self, key: &KeyHash, why: EvictReason) -> bool {
        let found = self.memory.remove(key).is_some();
        if found {
            self.memory.evictions().add(why, 1);
        }
        if why != EvictReason::SessionLoss {
            if let Some(r) = &self.redis {
                r.spawn_remove(*key);
            }
        }
        found
    }

    /// Removes every entry holding one of `tags`, in both tiers; returns how many in memory.
    /// The tags' epochs move to now, so an entry whose request was in flight is refused too.
    pub fn purge_tags(&self, tags: &[TagId], why: EvictReason) -> usize {
        self.purge_tags_at(tags, why, wall_ms())
    }

    /// [`Store::purge_tags`] on a given clock. A `session_loss` purge empties memory only and
    /// moves no epoch: the re-read epochs decide what Redis may still serve.
    pub fn purge_tags_at(&self, tags: &[TagId], why: EvictReason, now_ms: u64) -> usize {
        let mut n = 0;
        for tag in tags {
            if why != EvictReason::SessionLoss {
                self.epochs.bump(*tag, now_ms);
            }
            for key in self.memory.tagged(*tag) {
                n += usize::from(self.memory.remove(&key).is_some());
            }
        }
        self.memory.evictions().add(why, n as u64);
        if why != EvictReason::SessionLoss && !tags.is_empty() {
            if let Some(r) = &self.redis {
                r.spawn_purge(Some(tags.to_vec()));
            }
        }
        n
    }

    /// Removes every entry whose target starts with `prefix` and was created before `older_than_ms`.
    pub fn purge_prefix(&self, prefix: &str, older_than_ms: u64, why: EvictReason) -> usize {
        self.purge_targets(prefix, false, older_than_ms, why)
    }

    /// Removes every entry (each variant, each scope) whose target is `target`, created before
    /// `older_than_ms`.
    pub fn purge_target(&self, target: &str, older_than_ms: u64, why: EvictReason) -> usize {
        self.purge_targets(target, true, older_than_ms, why)
    }

    fn purge_targets(
        &self,
        text: &str,
        exact: bool,
        older_than_ms: u64,
        why: EvictReason,
    ) -> usize {
        let matches = |t: &str| {
            if exact {
                t == text
            } else {
                t.starts_with(text)
            }
        };
        let doomed: Vec<(KeyHash, Arc<Entry>)> = self
            .memory
            .iter()
            .filter(|(_, e)| matches(&e.target) && e.created_ms < older_than_ms)
            .collect();
        let n = doomed
            .iter()
            .filter(|(k, e)| self.memory.remove_exact(k, e))
            .count();
        self.memory.evictions().add(why, n as u64);
        if why != EvictReason::SessionLoss {
            if let Some(r) = &self.redis {
                r.spawn_purge_prefix(text.to_owned(), exact, older_than_ms);
            }
        }
        n
    }

    pub fn purge_all(&self, why: EvictReason) -> usize {
        self.purge_all_at(why, wall_ms())
    }

    /// [`Store::purge_all`] on a given clock: memory, and unless the reason is `session_loss`,
    /// Redis and a store-wide epoch.
    pub fn purge_all_at(&self, why: EvictReason, now_ms: u64) -> usize {
        if why != EvictReason::SessionLoss {
            self.epochs.bump_all(now_ms);
            if let Some(r) = &self.redis {
                r.spawn_purge(None);
            }
        }
        let keys: Vec<(KeyHash, Arc<Entry>)> = self.memory.iter().collect();
        let n = keys
            .iter()
            .filter(|(k, e)| self.memory.remove_exact(k, e))
            .count();
        self.memory.evictions().add(why, n as u64);
        n
    }

    /// Gives the memory tier's entries back, once no route names the store: memory only, as on
    /// a session loss (Redis is shared with replicas that may still use it, and the epochs
    /// stay, so an entry purged while the store was unused is not served when it comes back).
    pub fn release(&self) -> usize {
        let keys: Vec<(KeyHash, Arc<Entry>)> = self.memory.iter().collect();
        let n = keys
            .iter()
            .filter(|(k, e)| self.memory.remove_exact(k, e))
            .count();
        self.memory.evictions().add(EvictReason::Unused, n as u64);
        // No tick runs for a store no route names: its gauges are set here.
        self.metrics.memory_bytes.set(self.memory.bytes() as i64);
        self.metrics.memory_entries.set(self.memory.len() as i64);
        n
    }

    pub fn stats(&self) -> StoreStats {
        let ev = self.memory.evictions();
        StoreStats {
            entries: self.memory.len() as u64,
            bytes: self.memory.bytes(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            l2_hits: self.l2_hits.load(Ordering::Relaxed),
            redis_up: self.redis.as_ref().map(|r| r.up()),
            evictions: memory::REASONS
                .iter()
                .map(|r| (r.as_str(), ev.get(*r)))
                .collect(),
        }
    }

    /// The memory bound in bytes.
    pub fn capacity(&self) -> u64 {
        self.memory.capacity()
    }

    /// Up to `limit` entries in memory whose target starts with `prefix`, oldest first.
    pub fn entries(&self, prefix: &str, limit: usize, now_ms: u64) -> Vec<EntryInfo> {
        let mut found: Vec<Arc<Entry>> = self
            .memory
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.target.starts_with(prefix) && self.dead(e, now_ms).is_none())
            .collect();
        found.sort_by(|a, b| (a.created_ms, &a.target).cmp(&(b.created_ms, &b.target)));
        found
            .iter()
            .take(limit)
            .map(|e| EntryInfo {
                target: e.target.to_string(),
                kind: e.kind,
                age_ms: now_ms.saturating_sub(e.created_ms),
                ttl_ms: e.hard_expiry_ms.saturating_sub(now_ms),
                tags: e.tags.iter().map(|t| t.0).collect(),
                size: memory::weight(e),
            })
            .collect()
    }

    /// Called every 100 ms: the expiry sweep, the Redis breaker, and once a minute the
    /// epochs past `max_lifetime` forgotten.
    pub fn tick(&self, now_ms: u64) {
        let last = self.forgot_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= FORGET_EVERY_MS
            && self
                .forgot_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.epochs.forget_before(self.forget_before(now_ms));
        }
        let budget = (self.memory.len() / 64).max(SWEEP_MIN);
        let n = self.memory.sweep(now_ms, budget);
        self.memory.evictions().add(EvictReason::Expired, n as u64);
        self.metrics.memory_bytes.set(self.memory.bytes() as i64);
        self.metrics.memory_entries.set(self.memory.len() as i64);
        if let Some(r) = &self.redis {
            r.tick(now_ms);
        }
    }
}
