//! A route's admission-limit keys (`rate_limit:` and `max_in_flight`) and the limiters built
//! from them. Each build takes the previous config's limiter of the same route and keeps it
//! when its definition did not change: a reload is no way to reset a limit.

use std::sync::Arc;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use super::{ConcurrencyLimit, Rate, RateLimiter};
use crate::section::{At, ConfigErrors};

/// Keys remembered by a keyed limiter unless `max_keys` says otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// A token bucket: `per_second` refill, `burst` capacity (default: one second's worth), one
/// bucket per `key` (`client_ip`, default; `header:NAME`; or `route` for one bucket in all).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub per_second: f64,
    pub burst: Option<u32>,
    pub key: Option<String>,
    /// Keys remembered at most; a flood of new keys evicts old ones (which start afresh).
    pub max_keys: Option<usize>,
}

/// A route's token buckets and what they are keyed by.
#[derive(Debug)]
pub struct RouteRate {
    pub limiter: RateLimiter,
    pub key: RateKey,
    /// What it was built from: a reload with the same keeps the buckets.
    definition: RateLimitSection,
}

/// What a route's buckets are keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    Header(HeaderName),
    Route,
}

impl RateLimitSection {
    /// The limiter of the route at `at` (the section's own path is `at`). `prev`, the previous
    /// config's limiter of the same route, is taken over when it was built from the same
    /// definition, with its buckets as they are.
    pub fn build(
        &self,
        at: &At,
        prev: Option<&Arc<RouteRate>>,
        errors: &mut ConfigErrors,
    ) -> Option<Arc<RouteRate>> {
        if let Some(kept) = prev.filter(|p| p.definition == *self) {
            return Some(kept.clone());
        }
        let burst = self
            .burst
            .unwrap_or_else(|| self.per_second.ceil().clamp(1.0, u32::MAX as f64) as u32);
        let rate = Rate::new(self.per_second, burst)
            .map_err(|e| errors.push(at, e))
            .ok()?;
        let key = match self.key.as_deref().unwrap_or("client_ip") {
            "client_ip" => RateKey::ClientIp,
            "route" => RateKey::Route,
            other => match other.strip_prefix("header:").map(HeaderName::try_from) {
                Some(Ok(name)) => RateKey::Header(name),
                _ => {
                    errors.push(
                        at.key("key"),
                        format!("`{other}` is not client_ip, route or header:NAME"),
                    );
                    return None;
                }
            },
        };
        let max_keys = self.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        if max_keys == 0 {
            errors.push(at.key("max_keys"), "must be at least 1");
            return None;
        }
        let limiter = match key {
            RateKey::Route => RateLimiter::route(rate),
            _ => RateLimiter::keyed(rate, max_keys),
        };
        Some(Arc::new(RouteRate {
            limiter,
            key,
            definition: self.clone(),
        }))
    }
}

/// The cap of `max_in_flight: max` at `at`. `prev`, the previous config's cap of the same
/// route, is taken over when its maximum is the same, with the requests it counts in flight.
pub fn concurrency(
    max: u32,
    at: &At,
    prev: Option<&Arc<ConcurrencyLimit>>,
    errors: &mut ConfigErrors,
) -> Arc<ConcurrencyLimit> {
    if max == 0 {
        errors.push(at, "must be at least 1");
    }
    match prev.filter(|p| p.max() == max) {
        Some(kept) => kept.clone(),
        None => Arc::new(ConcurrencyLimit::new(max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> RateLimitSection {
        serde_yaml::from_str(yaml).expect("a rate_limit section")
    }

    #[test]
    fn an_unchanged_limit_keeps_its_buckets_and_a_changed_one_starts_afresh() {
        let at = At::new("routes[0].rate_limit");
        let mut errors = ConfigErrors::default();
        let first = section("{ per_second: 1, burst: 1 }")
            .build(&at, None, &mut errors)
            .expect("valid");
        let now = std::time::Instant::now();
        assert!(first.limiter.check(Some(b"k"), now).is_ok());
        assert!(
            first.limiter.check(Some(b"k"), now).is_err(),
            "bucket empty"
        );

        let same = section("{ per_second: 1, burst: 1 }")
            .build(&at, Some(&first), &mut errors)
            .expect("valid");
        assert!(Arc::ptr_eq(&first, &same));
        assert!(same.limiter.check(Some(b"k"), now).is_err(), "still empty");

        let changed = section("{ per_second: 1, burst: 2 }")
            .build(&at, Some(&first), &mut errors)
            .expect("valid");
        assert!(!Arc::ptr_eq(&first, &changed));
        assert!(
            changed.limiter.check(Some(b"k"), now).is_ok(),
            "a new bucket"
        );
        assert!(errors.is_empty(), "{errors}");
    }

    #[test]
    fn bad_keys_are_reported_at_their_paths() {
        let at = At::new("routes[3].rate_limit");
        let mut errors = ConfigErrors::default();
        for yaml in [
            "{ per_second: 1, key: \"header:bad name\" }",
            "{ per_second: 1, key: ip }",
            "{ per_second: 1, max_keys: 0 }",
            "{ per_second: 0 }",
        ] {
            assert!(
                section(yaml).build(&at, None, &mut errors).is_none(),
                "{yaml}"
            );
        }
        let shown: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            shown,
            [
                "routes[3].rate_limit.key",
                "routes[3].rate_limit.key",
                "routes[3].rate_limit.max_keys",
                "routes[3].rate_limit",
            ]
        );
    }

    #[test]
    fn an_unchanged_cap_keeps_counting_the_requests_in_flight() {
        let at = At::new("routes[0].max_in_flight");
        let mut errors = ConfigErrors::default();
        let first = concurrency(2, &at, None, &mut errors);
        let _permit = first.try_acquire().expect("a slot");
        let same = concurrency(2, &at, Some(&first), &mut errors);
        assert!(Arc::ptr_eq(&first, &same));
        assert_eq!(same.in_flight(), 1);
        let changed = concurrency(3, &at, Some(&first), &mut errors);
        assert_eq!(changed.in_flight(), 0);
        assert!(errors.is_empty());
        concurrency(0, &at, None, &mut errors);
        assert_eq!(
            errors.to_string(),
            "routes[0].max_in_flight: must be at least 1"
        );
    }
}
