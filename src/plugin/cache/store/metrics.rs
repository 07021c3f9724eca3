//! The store's metrics: bytes and entries per tier, evictions by reason, the Redis tier's state
//! and errors. Registered once; each store resolves its label handles when it is made.

use std::sync::LazyLock;

use prometheus::{
    register_int_counter_vec, register_int_gauge_vec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec,
};

use super::memory::REASONS;
use super::EvictReason;

struct Vecs {
    stored_bytes: IntGaugeVec,
    entries: IntGaugeVec,
    evictions: IntCounterVec,
    redis_up: IntGaugeVec,
    redis_errors: IntCounterVec,
}

static VECS: LazyLock<Vecs> = LazyLock::new(|| Vecs {
    // Registration only fails on a duplicate name, which this single static rules out.
    stored_bytes: register_int_gauge_vec!(
        "zkgate_cache_stored_bytes",
        "Bytes held by a cache store, by tier: memory as its bound counts them (bodies, metas, \
         targets and a measured per-entry overhead); redis, the framed entries' lengths, \
         sampled every 30 s (Redis's own key overhead not counted).",
        &["store", "tier"]
    )
    .expect("register zkgate_cache_stored_bytes"),
    entries: register_int_gauge_vec!(
        "zkgate_cache_entries",
        "Entries held by a cache store, by tier (redis: sampled every 30 s).",
        &["store", "tier"]
    )
    .expect("register zkgate_cache_entries"),
    evictions: register_int_counter_vec!(
        "zkgate_cache_evictions_total",
        "Entries that left a cache store's memory tier, by reason: capacity (room for newer \
         ones), expired, invalidation (a notification or unsafe method), purge (admin), \
         session_loss (ZooKeeper session lost), too_large (refused at insert), unused (no route \
         names the store after a reload).",
        &["store", "reason"]
    )
    .expect("register zkgate_cache_evictions_total"),
    redis_up: register_int_gauge_vec!(
        "zkgate_cache_redis_up",
        "1 while a cache store's Redis tier answers, 0 while its breaker skips it or before it \
         first answered (only stores with a Redis tier have it).",
        &["store"]
    )
    .expect("register zkgate_cache_redis_up"),
    redis_errors: register_int_counter_vec!(
        "zkgate_cache_redis_errors_total",
        "Failed or timed-out Redis commands of a cache store, by operation (get, set, purge).",
        &["store", "op"]
    )
    .expect("register zkgate_cache_redis_errors_total"),
});

/// The Redis operations counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisOp {
    Get,
    Set,
    Purge,
}

/// One store's handles.
pub struct StoreMetrics {
    pub memory_bytes: IntGauge,
    pub memory_entries: IntGauge,
    evictions: [IntCounter; REASONS.len()],
}

/// The handles of a store's Redis tier, made only for a store that has one: a memory-only
/// store shows no `redis_up 0` that would read as an outage.
pub struct RedisMetrics {
    pub up: IntGauge,
    pub bytes: IntGauge,
    pub entries: IntGauge,
    errors: [IntCounter; 3],
}

impl StoreMetrics {
    pub fn new(store: &str) -> StoreMetrics {
        let v = &*VECS;
        StoreMetrics {
            memory_bytes: v.stored_bytes.with_label_values(&[store, "memory"]),
            memory_entries: v.entries.with_label_values(&[store, "memory"]),
            evictions: REASONS.map(|r| v.evictions.with_label_values(&[store, r.as_str()])),
        }
    }

    pub fn evicted(&self, why: EvictReason, n: u64) {
        let i = REASONS.iter().position(|r| *r == why).unwrap_or(0);
        self.evictions[i].inc_by(n);
    }
}

impl RedisMetrics {
    pub fn new(store: &str) -> RedisMetrics {
        let v = &*VECS;
        RedisMetrics {
            up: v.redis_up.with_label_values(&[store]),
            bytes: v.stored_bytes.with_label_values(&[store, "redis"]),
            entries: v.entries.with_label_values(&[store, "redis"]),
            errors: ["get", "set", "purge"]
                .map(|op| v.redis_errors.with_label_values(&[store, op])),
        }
    }

    pub fn error(&self, op: RedisOp) {
        let i = match op {
            RedisOp::Get => 0,
            RedisOp::Set => 1,
            RedisOp::Purge => 2,
        };
        self.errors[i].inc();
    }
}
