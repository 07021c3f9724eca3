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

/// A new ZooKeeper session: what the watcher and the registrar open on each (re)connect.
async fn connect(
    hosts: &str,
    session_timeout: std::time::Duration,
) -> Result<zookeeper_client::Client, zookeeper_client::Error> {
    zookeeper_client::Client::connector()
        .with_session_timeout(session_timeout)
        .connect(hosts)
        .await
}
