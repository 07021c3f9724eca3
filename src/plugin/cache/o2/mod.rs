//! The O2 IMS side of the cache: the notification dialects, what a notification evicts, the
//! callback plugin, the gateway's own subscription and the warm-up.
//!
//! CONTRACT (issue 14): owned by T5.

pub mod dialect;
pub mod mapping;
pub mod notify;
pub mod subscription;
pub mod warmup;

use serde::{Deserialize, Serialize};

/// Notification bookkeeping of one store (dedupe window, counters, subscription state).
#[derive(Default)]
pub struct NotifyState {}

/// `cache.o2ims`: the subscription and the warm-up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct O2Section {}
