//! The `cache` route plugin: an RFC 9111 shared HTTP cache with an `o2ims` profile, and the
//! `cache_notify` plugin that evicts from it on O2 IMS notifications.
//!
//! CONTRACT (issue 14, lead): this file is owned by T1. The submodules and their owners:
//! adapter, status, metrics: T1 · config, profile, template, key, policy, explain: T2 ·
//! scope, jwt: T3 · store/*, admin: T4 · o2/*, bus: T5. Only `adapter.rs` names
//! `pingora::cache` types besides the hook signatures.

pub mod adapter;
pub mod admin;
pub mod bus;
pub mod config;
pub mod explain;
pub mod jwt;
pub mod key;
pub mod metrics;
pub mod o2;
pub mod policy;
pub mod profile;
pub mod scope;
pub mod status;
pub mod store;
pub mod template;

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

pub use o2::notify::CacheNotify;

use crate::plugin::{HttpPlugin, PluginBuild, PluginCx, Resources};
use crate::section::ConfigErrors;

/// What one store name shares for the life of the process, across reloads and across every
/// route (and `cache_notify` plugin) that names it.
pub struct Shared {
    /// The store's name (`cache.store`, by default the route's name).
    pub name: Box<str>,
    /// The entries, their tags and the per-tag epochs.
    pub store: store::Store,
    /// Whether the notification channel can be trusted (else lifetimes shrink to `degraded_ttl`).
    pub channel: bus::ChannelHealth,
    /// The replica fan-out, once installed (only with `replicas: zookeeper`).
    pub bus: OnceLock<Arc<dyn bus::Bus>>,
    /// Notification bookkeeping: dedupe, counters, subscription state.
    pub notify: o2::NotifyState,
}

/// Every store of the process, for the admin API.
static STORES: Mutex<Vec<&'static Shared>> = Mutex::new(Vec::new());

/// The store named `name`, made with `cfg` the first time (later builds resize it).
pub fn shared(resources: &Resources, cfg: &store::StoreConfig) -> &'static Shared {
    let mut made = false;
    let shared = resources.get_or_init(&cfg.name, || {
        made = true;
        Shared {
            name: cfg.name.clone(),
            store: store::Store::new(cfg),
            channel: bus::ChannelHealth::default(),
            bus: OnceLock::new(),
            notify: o2::NotifyState::default(),
        }
    });
    if made {
        STORES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(shared);
    } else {
        shared.store.resize(cfg.memory);
    }
    shared
}

/// Every store made so far.
pub fn stores() -> Vec<&'static Shared> {
    STORES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The `cache` plugin of one route.
pub struct Cache {
    route: Box<str>,
}

/// What the cache works out about one request.
#[derive(Default)]
pub struct CacheState {
    /// What the cache did, for `Cache-Status`, the access log and the metrics.
    pub outcome: status::CacheOutcome,
}

impl HttpPlugin for Cache {
    type State = CacheState;
}

impl PluginBuild for Cache {
    type Section = config::CacheSection;

    fn answers_itself(_: &config::CacheSection) -> bool {
        false
    }

    fn route(&self) -> &str {
        &self.route
    }

    fn build(
        _section: &config::CacheSection,
        _cx: &PluginCx<'_>,
        _errors: &mut ConfigErrors,
    ) -> Option<Cache> {
        todo!("T1")
    }
}
