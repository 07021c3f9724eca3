//! Admission limits a route applies before a request reaches an upstream: token-bucket rates
//! ([`RateLimiter`], route-wide or per key) and a cap on requests in flight
//! ([`ConcurrencyLimit`]).

pub mod concurrency;
pub mod rate;

pub use concurrency::{ConcurrencyLimit, Permit};
pub use rate::{retry_after_secs, Rate, RateLimiter};
