//! The Redis tier: entries shared by every replica, keys of one store in one hash slot, tags as
//! Redis sets, and a breaker that skips Redis while it is down.
//!
//! CONTRACT (issue 14): owned by T4.

use serde::{Deserialize, Serialize};

use crate::section::{At, ConfigErrors, Dur, Size};

/// `cache.redis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: String,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub max_object_size: Option<Size>,
    #[serde(default)]
    pub down_after: Option<u32>,
    #[serde(default)]
    pub retry_after: Option<Dur>,
}

/// The built Redis tier settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisConfig {
    pub url: String,
}

impl RedisSection {
    pub fn build(&self, _at: &At, _errors: &mut ConfigErrors) -> Option<RedisConfig> {
        todo!("T4")
    }
}
