//! Configuration: the YAML schema, parsing with every error collected and located, and the
//! build into a runtime [`Snapshot`](crate::snapshot::Snapshot).

pub mod build;
pub mod error;
pub mod parse;
pub mod schema;
pub mod units;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors};
pub use schema::RawConfig;

use crate::snapshot::Snapshot;

/// The quickstart config, compiled in so that `zkgate run` works with no file at all.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../conf/zkgate.yaml");

/// Where a config comes from; kept so that a reload reads the same place again.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl Source {
    pub fn read(&self) -> Result<String, ConfigErrors> {
        match self {
            Source::Embedded => Ok(EMBEDDED_DEFAULT.to_owned()),
            Source::File(path) => std::fs::read_to_string(path)
                .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display()))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Embedded => "embedded conf/zkgate.yaml".to_owned(),
            Source::File(p) => p.display().to_string(),
        }
    }

    pub fn file(path: impl AsRef<Path>) -> Source {
        Source::File(path.as_ref().to_path_buf())
    }
}

/// Parses and builds `text`, carrying unchanged upstreams over from `prev`.
pub fn load_str(text: &str, prev: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
    build::build(parse::parse(text)?, prev)
}

pub fn load(source: &Source, prev: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
    load_str(&source.read()?, prev)
}
