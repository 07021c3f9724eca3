//! What the cache did with a request: the `Cache-Status` header (RFC 9211), the access log's
//! `cache=` field and the outcome label of the metrics.

/// Why a request was passed to the origin without the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BypassReason {
    /// Not GET or HEAD, or an upgrade.
    Method,
    /// The client asked for no cache (`Cache-Control: no-cache`/`max-age=0`, `Pragma: no-cache`).
    ClientNoCache,
    /// The request carries credentials and the route names no scope for them.
    Credentials,
    /// The token is not valid (signature, expiry, issuer, audience, algorithm).
    InvalidToken,
    /// The token holds none of the rule's roles.
    NoRole,
    /// No rule matches the path, or the rule says `ttl: 0`.
    NoRule,
    /// A refresh that could not take the lock, or the store is being purged.
    Busy,
}

impl BypassReason {
    /// The RFC 9211 `detail` and the metrics' `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            BypassReason::Method => "method",
            BypassReason::ClientNoCache => "client-no-cache",
            BypassReason::Credentials => "credentials",
            BypassReason::InvalidToken => "invalid-token",
            BypassReason::NoRole => "no-role",
            BypassReason::NoRule => "no-rule",
            BypassReason::Busy => "busy",
        }
    }
}

/// What the cache did with one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The cache was not involved (no rule ran yet).
    #[default]
    None,
    /// Served from the store, fresh.
    Hit,
    /// Served from the store, fresh, after waiting on the lock for another request's fetch.
    Collapsed,
    /// Served from the store, stale, while one background request revalidates it.
    Stale,
    /// Served from the store, stale, because the origin failed with this status (502 when it
    /// gave none: refused, timed out, or the gateway's own refusal).
    StaleIfError(u16),
    /// Fetched from the origin (and maybe stored).
    Miss,
    /// Waited on the lock for another request's fetch past `lock.timeout`, then fetched from
    /// the origin itself, without storing (nginx's `proxy_cache_lock_timeout`).
    LockTimeout,
    /// A stale entry was fetched again from the origin.
    Expired,
    /// A stale entry was revalidated with the origin (304).
    Revalidated,
    /// Passed to the origin without the cache.
    Bypass(BypassReason),
    /// Fetched from the origin, and its answer may not be stored (the reason's label).
    Uncacheable(&'static str),
}

impl CacheOutcome {
    /// The metrics' `result` label.
    pub fn result(self) -> &'static str {
        match self {
            CacheOutcome::None => "none",
            CacheOutcome::Hit | CacheOutcome::Collapsed => "hit",
            CacheOutcome::Stale | CacheOutcome::StaleIfError(_) => "stale",
            CacheOutcome::Miss | CacheOutcome::LockTimeout => "miss",
            CacheOutcome::Expired => "expired",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Bypass(_) => "bypass",
            CacheOutcome::Uncacheable(_) => "uncacheable",
        }
    }

    /// The access log's `cache=` field; `refresh` for the gateway's own background refresh.
    pub fn log_field(self, refresh: bool) -> Option<&'static str> {
        if refresh {
            return Some("refresh");
        }
        Some(match self {
            CacheOutcome::None => return None,
            CacheOutcome::Hit => "hit",
            CacheOutcome::Collapsed => "collapsed",
            CacheOutcome::Stale => "stale",
            CacheOutcome::StaleIfError(_) => "stale-if-error",
            CacheOutcome::Miss => "miss",
            CacheOutcome::LockTimeout => "lock-timeout",
            CacheOutcome::Expired => "expired",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Bypass(_) => "bypass",
            CacheOutcome::Uncacheable(_) => "uncacheable",
        })
    }

    /// Whether the answer came from the store rather than the origin.
    pub fn served_from_store(self) -> bool {
        matches!(
            self,
            CacheOutcome::Hit
                | CacheOutcome::Collapsed
                | CacheOutcome::Stale
                | CacheOutcome::StaleIfError(_)
                | CacheOutcome::Revalidated
        )
    }
}

/// The cache's name in `Cache-Status` (RFC 9211 §2).
const NAME: &str = "zkgate";

/// The `Cache-Status` value (RFC 9211) for `outcome`. `ttl` is the entry's remaining freshness
/// in seconds (negative once stale) on answers from the store; `stored`, whether the origin's
/// answer is being stored; `vary_miss`, whether an entry was found for the URI but not for the
/// request's variant (a miss, or a lock timeout after such a lookup).
pub fn cache_status(outcome: CacheOutcome, ttl: i64, stored: bool, vary_miss: bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(48);
    out.push_str(NAME);
    // Writing to a String cannot fail.
    let _ = match outcome {
        CacheOutcome::None => Ok(()),
        CacheOutcome::Hit => write!(out, "; hit; ttl={ttl}"),
        CacheOutcome::Collapsed => write!(out, "; hit; ttl={ttl}; collapsed"),
        CacheOutcome::Stale => write!(out, "; hit; ttl={ttl}; detail=swr"),
        CacheOutcome::StaleIfError(status) => {
            write!(
                out,
                "; fwd=stale; fwd-status={status}; ttl={ttl}; detail=sie"
            )
        }
        CacheOutcome::Revalidated => write!(out, "; fwd=stale; fwd-status=304; ttl={ttl}"),
        CacheOutcome::Miss | CacheOutcome::Expired => {
            let fwd = match (outcome, vary_miss) {
                (CacheOutcome::Expired, _) => "stale",
                (_, true) => "vary-miss",
                _ => "uri-miss",
            };
            write!(out, "; fwd={fwd}").and_then(|()| {
                if stored {
                    out.write_str("; stored")
                } else {
                    Ok(())
                }
            })
        }
        CacheOutcome::LockTimeout => {
            let fwd = if vary_miss { "vary-miss" } else { "uri-miss" };
            write!(out, "; fwd={fwd}; detail=lock-timeout")
        }
        CacheOutcome::Bypass(why) => write!(out, "; fwd=bypass; detail={}", why.as_str()),
        CacheOutcome::Uncacheable(why) => write!(out, "; fwd=uri-miss; detail={why}"),
    };
    out
}

/// The strong `ETag` the cache gives a body whose origin sent no validator: the same body
/// gets the same tag on every replica and after every refresh, so `If-None-Match` keeps
/// matching while the content does not change.
pub fn synthesized_etag(body: &[u8]) -> String {
    format!("\"z-{:032x}\"", xxhash_rust::xxh3::xxh3_128(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_says_what_rfc_9211_asks() {
        let cases = [
            (CacheOutcome::Hit, 42, false, false, "zkgate; hit; ttl=42"),
            (
                CacheOutcome::Collapsed,
                9,
                false,
                false,
                "zkgate; hit; ttl=9; collapsed",
            ),
            (
                CacheOutcome::Stale,
                -3,
                false,
                false,
                "zkgate; hit; ttl=-3; detail=swr",
            ),
            (
                CacheOutcome::StaleIfError(502),
                -7,
                false,
                false,
                "zkgate; fwd=stale; fwd-status=502; ttl=-7; detail=sie",
            ),
            (
                CacheOutcome::Miss,
                0,
                true,
                false,
                "zkgate; fwd=uri-miss; stored",
            ),
            (
                CacheOutcome::Miss,
                0,
                true,
                true,
                "zkgate; fwd=vary-miss; stored",
            ),
            (CacheOutcome::Expired, 0, false, false, "zkgate; fwd=stale"),
            (
                CacheOutcome::LockTimeout,
                0,
                false,
                false,
                "zkgate; fwd=uri-miss; detail=lock-timeout",
            ),
            (
                CacheOutcome::LockTimeout,
                0,
                false,
                true,
                "zkgate; fwd=vary-miss; detail=lock-timeout",
            ),
            (
                CacheOutcome::Bypass(BypassReason::Credentials),
                0,
                false,
                false,
                "zkgate; fwd=bypass; detail=credentials",
            ),
            (
                CacheOutcome::Uncacheable("no-store"),
                0,
                false,
                false,
                "zkgate; fwd=uri-miss; detail=no-store",
            ),
        ];
        for (outcome, ttl, stored, vary, want) in cases {
            assert_eq!(
                cache_status(outcome, ttl, stored, vary),
                want,
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn the_synthesized_etag_is_strong_and_follows_the_body() {
        let a = synthesized_etag(b"one");
        assert!(
            a.starts_with("\"z-") && a.ends_with('"') && a.len() == 36,
            "{a}"
        );
        assert_eq!(a, synthesized_etag(b"one"));
        assert_ne!(a, synthesized_etag(b"two"));
    }

    #[test]
    fn the_log_field_names_the_refresh_and_the_metrics_fold_the_details() {
        assert_eq!(CacheOutcome::Hit.log_field(true), Some("refresh"));
        assert_eq!(CacheOutcome::None.log_field(false), None);
        assert_eq!(CacheOutcome::Collapsed.result(), "hit");
        assert_eq!(CacheOutcome::StaleIfError(500).result(), "stale");
        assert!(CacheOutcome::Revalidated.served_from_store());
        assert!(!CacheOutcome::Miss.served_from_store());
        assert_eq!(
            CacheOutcome::LockTimeout.log_field(false),
            Some("lock-timeout")
        );
        assert_eq!(CacheOutcome::LockTimeout.result(), "miss");
        assert!(!CacheOutcome::LockTimeout.served_from_store());
    }
}
