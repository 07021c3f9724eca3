//! The warm-up: listed small collections fetched ahead of clients, at start and after the
//! notification channel comes back (contract stub).

use serde::{Deserialize, Serialize};

use crate::section::{At, ConfigErrors};

/// `plugin.cache.o2ims.warmup`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupSection {}

/// What the section builds.
#[derive(Clone, Debug)]
pub struct WarmupConfig {}

impl WarmupSection {
    pub fn build(&self, _at: &At, _errors: &mut ConfigErrors) -> Option<WarmupConfig> {
        None
    }
}
