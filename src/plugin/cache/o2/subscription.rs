//! The gateway's own subscription to the O2 IMS notifications, kept by one owner among the
//! replicas (contract stub: the owner election, the calls and the checks come with issue 14).

use serde::{Deserialize, Serialize};

use crate::section::{At, ConfigErrors};

/// `plugin.cache.o2ims.subscription`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSection {}

/// What the section builds.
#[derive(Clone, Debug)]
pub struct SubscriptionConfig {}

impl SubscriptionSection {
    pub fn build(&self, _at: &At, _errors: &mut ConfigErrors) -> Option<SubscriptionConfig> {
        None
    }
}
