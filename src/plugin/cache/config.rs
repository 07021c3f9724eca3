//! `plugin.cache`: the YAML section of the cache plugin, its validation and what it builds.
//!
//! CONTRACT (issue 14): owned by T2. Fields may be added; the built `CacheConfig` is what T1
//! turns into the plugin.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::key::KeyBuilder;
use super::o2::O2Section;
use super::policy::Rules;
use super::scope::{AuthSection, ScopeMaker};
use super::store::redis::RedisSection;
use super::store::StoreConfig;
use crate::section::{At, ConfigErrors, Dur, Size};

/// `plugin.cache`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// `none` (default) or `o2ims`.
    #[serde(default)]
    pub profile: Option<String>,
    /// The store's name; by default the route's.
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub memory: Option<Size>,
    #[serde(default)]
    pub max_object_size: Option<Size>,
    #[serde(default)]
    pub statuses: Option<Vec<u16>>,
    #[serde(default)]
    pub lock: Option<serde_yaml::Value>,
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    #[serde(default)]
    pub override_origin: Option<bool>,
    #[serde(default)]
    pub request_no_cache: Option<String>,
    #[serde(default)]
    pub query: Option<serde_yaml::Value>,
    #[serde(default)]
    pub key_headers: Option<Vec<String>>,
    #[serde(default)]
    pub degraded_ttl: Option<Dur>,
    #[serde(default)]
    pub auth: Option<AuthSection>,
    #[serde(default)]
    pub rules: Option<Vec<serde_yaml::Value>>,
    #[serde(default)]
    pub redis: Option<RedisSection>,
    #[serde(default)]
    pub replicas: Option<serde_yaml::Value>,
    #[serde(default)]
    pub o2ims: Option<O2Section>,
}

/// The cache lock (request coalescing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockConfig {
    /// How long a reader waits for the writer before going to the origin itself.
    pub timeout: Duration,
    /// How long a writer may hold the lock.
    pub age: Duration,
}

/// How replicas learn of evictions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    Off,
    ZooKeeper { epoch_slack: Duration },
}

/// What the section builds.
#[derive(Debug)]
pub struct CacheConfig {
    pub store: StoreConfig,
    pub rules: Rules,
    pub key: KeyBuilder,
    pub scope: Option<ScopeMaker>,
    pub lock: Option<LockConfig>,
    pub max_object_size: u64,
    pub statuses: Box<[u16]>,
    pub replicas: Replicas,
    pub degraded_ttl: Duration,
}

impl CacheSection {
    /// Validates the section (every error located under `at`) and builds it.
    pub fn build(&self, _route: &str, _at: &At, _errors: &mut ConfigErrors) -> Option<CacheConfig> {
        todo!("T2")
    }
}
