//! zkgate: a declarative reverse-proxy gateway on Pingora.
//!
//! Config ([`config`]) becomes an immutable [`snapshot::Snapshot`] of compiled routes
//! ([`route`]) and upstreams ([`upstream`]); the proxy phases ([`proxy`]) read the snapshot a
//! request started with; [`live`] holds the current snapshot and the members discovery
//! publishes into it; [`server`] assembles the Pingora services, whose client connections [`conn`] holds to their
//! deadlines and limits. [`limit`] holds the admission
//! limits a route can apply (request rates, requests in flight).

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod conn;
#[doc(hidden)]
pub mod fuzz;
pub mod limit;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod section;
pub mod server;
pub mod snapshot;
pub mod upstream;
