//! ZooKeeper service discovery for zkgate, free of any Pingora dependency: how registered
//! instances are read from znodes (native JSON, Curator `ServiceInstance`, `host:port` names).
//! The watcher and registrar come next (issue 3).

pub mod instance;

pub use instance::{parse_instance, Instance, InstanceError};
