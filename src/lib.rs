//! zkgate: a declarative reverse-proxy gateway on Pingora.
//!
//! The layers, each importing only those below it:
//! - leaf vocabulary: [`section`] (durations, sizes, secrets, located config errors),
//!   [`clock`] (the one clock, driven by paused time in tests) and [`metrics`];
//! - [`tls`]: TLS termination (certificates by SNI, client certificates, handshake metrics);
//! - domain modules: [`route`] (the compiled route table), [`upstream`] (backend sets,
//!   balancers, health, outlier ejection, breaker, retry budget), [`limit`] (request rates,
//!   requests in flight) and [`plugin`] (features acting at the request's phases);
//! - [`config`]: the loader, which reads, validates and assembles an immutable
//!   [`snapshot::Snapshot`];
//! - [`runtime`]: the serving snapshot and the members discovery publishes into it, reload,
//!   the ZooKeeper bridge and the one housekeeping tick;
//! - the faces: [`proxy`] (the proxy phases, over the snapshot a request started with),
//!   [`admin`], and [`server`], which assembles one Pingora service per listener (whose client
//!   connections [`conn`] holds to their deadlines and limits);
//! - [`cli`], used by the binary.

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod conn;
#[doc(hidden)]
pub mod fuzz;
pub mod game;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod plugin;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod section;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
