//! Admission limits a route applies before a request reaches an upstream: token-bucket rates
//! ([`RateLimiter`], route-wide or per key) and a cap on requests in flight
//! ([`ConcurrencyLimit`]). [`config`] builds them from a route's keys.

pub mod concurrency;
pub mod config;
pub mod rate;

pub use concurrency::{ConcurrencyLimit, Permit};
pub use config::{RateKey, RateLimitSection, RouteRate};
pub use rate::{retry_after_secs, Rate, RateLimiter};
