//! Configuration: the YAML schema, parsing with every error collected and located, and the
//! build into a runtime [`Snapshot`].

pub mod build;
pub mod env;
pub mod parse;
pub mod schema;
pub mod source;

pub use crate::section::{ConfigError, ConfigErrors};
pub use schema::RawConfig;
pub use source::{Source, ZkNode, EMBEDDED_DEFAULT};

use crate::snapshot::Snapshot;

/// Parses and builds `text`, carrying unchanged upstreams over from `prev`.
pub fn load_str(text: &str, prev: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
    build::build(parse::parse(text)?, prev)
}

pub fn load(source: &Source, prev: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
    load_str(&source.read()?, prev)
}
