//! The leaf vocabulary every config section is written in: durations, sizes, secrets, bounded
//! file reads and config errors located by their YAML path. It imports nothing from the crate,
//! so every module may use it.

pub mod error;
pub mod file;
pub mod secret;
pub mod units;

pub use error::{At, ConfigError, ConfigErrors};
pub use secret::{Secret, REDACTED};
pub use units::{Dur, Size};
