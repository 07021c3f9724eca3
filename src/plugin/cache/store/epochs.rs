//! Per-tag epochs: the time of the newest eviction of each tag, so an entry created before it
//! is never served, whichever replica or tier holds it.
//!
//! CONTRACT (issue 14): owned by T4.

use super::TagId;

/// The newest eviction time (ms since the epoch) of each tag.
#[derive(Default)]
pub struct Epochs {}

impl Epochs {
    /// Records an eviction of `tag` at `ms` (keeps the newest).
    pub fn bump(&self, _tag: TagId, _ms: u64) {
        todo!("T4")
    }

    /// The newest epoch of any of `tags` (0 when none has one).
    pub fn newest(&self, _tags: &[TagId]) -> u64 {
        todo!("T4")
    }

    /// Replaces every epoch (after re-reading them all from ZooKeeper).
    pub fn replace_all(&self, _all: impl IntoIterator<Item = (TagId, u64)>) {
        todo!("T4")
    }
}
