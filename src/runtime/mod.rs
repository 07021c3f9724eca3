//! The running gateway's state and the work that keeps it current: [`live`] holds the serving
//! snapshot and the members discovery published, [`reload`] builds and installs a new config on
//! SIGHUP or a config-node change, [`discovery`] bridges ZooKeeper into the live upstreams, and
//! [`housekeeping`] is the one periodic tick over the serving snapshot (upstreams, route
//! limiters, plugins), and [`stop`] ends a graceful stop once nothing is left to drain. This layer drives the domain modules; none of them imports it.

pub mod discovery;
pub mod housekeeping;
pub mod live;
pub mod reload;
pub mod stop;

pub use discovery::DiscoveryService;
pub use housekeeping::Housekeeping;
pub use live::Live;
pub use reload::Reloader;
pub use stop::Stop;
