//! ZooKeeper service discovery for zkgate, free of any Pingora dependency: how registered
//! instances are read from znodes (native JSON, Curator `ServiceInstance`, `host:port` names) and
//! a watcher that follows them live, and a registrar for backends without a client of their own.

mod backoff;
pub mod instance;
pub mod registrar;
pub mod watcher;

pub use instance::{parse_instance, Instance, InstanceError};
pub use registrar::{register, RegisterSpec};
pub use watcher::{watch, Publish, SessionEvent, WatchSpec};
#[doc(hidden)]
pub mod testkit;
