//! zkgate's ZooKeeper side, free of any Pingora dependency: how registered instances are read
//! from znodes (native JSON, Curator `ServiceInstance`, `host:port` names), a watcher that
//! follows them live, a registrar for backends without a client of their own, and the config
//! node that replicas share.

mod backoff;
pub mod cache_bus;
pub mod cache_owner;
pub mod config_node;
pub mod ensemble;
mod failure;
pub mod instance;
pub mod registrar;
mod rejected;
pub mod resolve;
pub mod watcher;

pub use ensemble::{Digest, Ensemble};
pub use instance::{parse_instance, Instance, InstanceError};
pub use registrar::{register, RegisterSpec};
pub use watcher::{watch, Publish, SessionEvent};
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit;
