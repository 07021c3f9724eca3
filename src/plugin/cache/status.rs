//! What the cache did with a request: the `Cache-Status` header (RFC 9211), the access log's
//! `cache=` field and the outcome label of the metrics.
//!
//! CONTRACT (issue 14): owned by T1. `BypassReason` is shared by policy (T2) and scope (T3).

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
    /// Served from the store, stale (while revalidating, or on an origin error).
    Stale,
    /// Fetched from the origin (and maybe stored).
    Miss,
    /// A stale entry was revalidated with the origin (304).
    Revalidated,
    /// Passed to the origin without the cache.
    Bypass(BypassReason),
}
