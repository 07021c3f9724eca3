//! The config loader: the source (a file or a `zk://` node), `${env:NAME}` expansion, parsing
//! with every error collected and located, and the assembly of a runtime
//! [`Snapshot`] from sections that each build themselves.

pub mod build;
pub mod env;
pub mod listener;
pub mod parse;
pub mod process;
pub mod schema;
pub mod source;

pub use crate::section::{ConfigError, ConfigErrors};
pub use schema::RawConfig;
pub use source::{Source, ZkNode, EMBEDDED_DEFAULT};

/// `<root>/services/<service>` holds a service's instances unless `zookeeper.root` says
/// otherwise; `zkgate register` writes below the same root.
pub const DEFAULT_ZK_ROOT: &str = "/zkgate";

use crate::snapshot::Snapshot;

/// Parses and builds `text`, carrying unchanged upstreams over from `prev`.
pub fn load_str(text: &str, prev: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
    build::build(parse::parse(text)?, prev)
}

pub fn load(source: &Source, prev: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
    load_str(&source.read()?, prev)
}
