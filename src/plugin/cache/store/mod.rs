//! The cache's storage: a memory tier bounded in bytes, an optional Redis tier shared by the
//! replicas, the tag index that invalidation works by, and the per-tag epochs that make an
//! eviction win over an entry stored before it. No Pingora type appears here.
//!
//! CONTRACT (issue 14): owned by T4. The public items below are the seam T1, T2 and T5 call.

pub mod epochs;
pub mod memory;
pub mod redis;

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
    epochs: Epochs,
}

impl Store {
    pub fn new(_cfg: &StoreConfig) -> Store {
        todo!("T4")
    }

    /// Applies a reloaded memory bound.
    pub fn resize(&self, _memory: u64) {
        todo!("T4")
    }

    /// The per-tag epochs (bumped by evictions and by the replica bus).
    pub fn epochs(&self) -> &Epochs {
        &self.epochs
    }

    /// The entry under `key`, from memory, else from Redis (promoted to memory). `None` past
    /// its hard expiry, or when an epoch of one of its tags is newer than its `created_ms`.
    pub async fn get(&self, _key: &KeyHash, _now_ms: u64) -> Option<(Arc<Entry>, Tier)> {
        todo!("T4")
    }

    /// The newest variant stored under a primary key (Pingora's first lookup of a `Vary`ing
    /// response).
    pub async fn get_primary(
        &self,
        _primary: &KeyHash,
        _now_ms: u64,
    ) -> Option<(Arc<Entry>, Tier)> {
        todo!("T4")
    }

    /// Stores an entry in memory now; a `Shared` one is written to Redis in the background.
    pub fn insert(&self, _key: KeyHash, _entry: Entry) {
        todo!("T4")
    }

    pub fn remove(&self, _key: &KeyHash, _why: EvictReason) -> bool {
        todo!("T4")
    }

    /// Removes every entry holding one of `tags`, in both tiers; returns how many in memory.
    pub fn purge_tags(&self, _tags: &[TagId], _why: EvictReason) -> usize {
        todo!("T4")
    }

    /// Removes every entry whose target starts with `prefix` and was created before `older_than_ms`.
    pub fn purge_prefix(&self, _prefix: &str, _older_than_ms: u64, _why: EvictReason) -> usize {
        todo!("T4")
    }

    pub fn purge_all(&self, _why: EvictReason) -> usize {
        todo!("T4")
    }

    pub fn stats(&self) -> StoreStats {
        todo!("T4")
    }

    pub fn entries(&self, _prefix: &str, _limit: usize, _now_ms: u64) -> Vec<EntryInfo> {
        todo!("T4")
    }

    /// Called every 100 ms: the expiry sweep and the Redis breaker.
    pub fn tick(&self, _now_ms: u64) {
        todo!("T4")
    }
}
