//! The `cache_notify` plugin: the O2 notification callback, which authenticates its caller,
//! drops repeats and evicts what the notification names.
//!
//! CONTRACT (issue 14): owned by T5.

use serde::{Deserialize, Serialize};

use crate::plugin::{HttpPlugin, PluginBuild, PluginCx};
use crate::section::ConfigErrors;

/// `plugin.cache_notify`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// The store this callback evicts from.
    pub store: String,
}

/// The notification callback of one route.
pub struct CacheNotify {
    route: Box<str>,
}

impl HttpPlugin for CacheNotify {
    type State = ();
}

impl PluginBuild for CacheNotify {
    type Section = NotifySection;

    fn answers_itself(_: &NotifySection) -> bool {
        true
    }

    fn route(&self) -> &str {
        &self.route
    }

    fn build(_: &NotifySection, _cx: &PluginCx<'_>, _errors: &mut ConfigErrors) -> Option<Self> {
        todo!("T5")
    }
}
