//! The leaf vocabulary every config section is written in: durations, sizes, address blocks,
//! secrets, bearer tokens, bounded file reads and config errors located by their YAML path. It
//! imports nothing from the crate, so every module may use it.

pub mod cidr;
pub mod error;
pub mod file;
pub mod secret;
pub mod token;
pub mod units;

pub use cidr::Cidr;
pub use error::{At, ConfigError, ConfigErrors};
pub use secret::{Secret, REDACTED};
pub use token::AdminToken;
pub use units::{Dur, Size};
