//! RFC 9111 decisions of a shared cache: which requests may use it, which responses it may
//! store and for how long, with the route's rules (path templates, lifetimes, marks) on top of
//! the origin's `Cache-Control`.
//!
//! CONTRACT (issue 14): owned by T2.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};
use pingora::http::ResponseHeader;

use super::profile::Kind;
use super::scope::ScopeKind;
use super::status::BypassReason;
use super::store::{StoreClass, TagSet};

/// A rule's index in its route's [`Rules`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleId(pub u16);

/// Whether a rule's responses may be shared between callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// By the route's scope (`auth.scope`, or the rule's own).
    Scoped,
    /// Never across credentials: at least `per_credential`.
    Never,
}

/// One rule: a path template and what it decides.
#[derive(Debug)]
pub struct Rule {
    /// The template as written, for messages and `explain`.
    pub template: Box<str>,
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub share: Share,
    pub class: StoreClass,
    /// The rule's own scope, overriding `auth.scope`.
    pub scope: Option<ScopeKind>,
    /// The roles a `role_class` scope intersects the token's roles with.
    pub roles: Box<[Box<str>]>,
    pub kind: Kind,
}

/// A rule that matched a path, with the ids the template captured (`poolId`, `resourceId`...).
#[derive(Debug)]
pub struct Matched<'a> {
    pub id: RuleId,
    pub rule: &'a Rule,
    /// Up to two captures: (name, value), the value borrowed from the path.
    pub ids: [Option<(&'a str, &'a str)>; 2],
}

/// How a response is admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub fresh: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub class: StoreClass,
    /// The origin sent no validator: the cache makes up a strong ETag from the body.
    pub synth_etag: bool,
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoStoreReason {
    Status,
    NoStore,
    Private,
    SetCookie,
    VaryStar,
    TooLarge,
    ZeroTtl,
}

impl NoStoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NoStoreReason::Status => "status",
            NoStoreReason::NoStore => "no-store",
            NoStoreReason::Private => "private",
            NoStoreReason::SetCookie => "set-cookie",
            NoStoreReason::VaryStar => "vary-star",
            NoStoreReason::TooLarge => "too-large",
            NoStoreReason::ZeroTtl => "zero-ttl",
        }
    }
}

/// A route's rules, first match wins.
#[derive(Debug)]
pub struct Rules {}

impl Rules {
    /// The rule for `path`, if any.
    pub fn matched<'a>(&'a self, _path: &'a str) -> Option<Matched<'a>> {
        todo!("T2")
    }

    pub fn rule(&self, _id: RuleId) -> &Rule {
        todo!("T2")
    }

    /// Whether the request may use the cache at all (method, upgrade, client `no-cache`).
    pub fn on_request(&self, _method: &Method, _headers: &HeaderMap) -> Result<(), BypassReason> {
        todo!("T2")
    }

    /// Whether and how the response is stored. `cap` is the latest time the entry may live to
    /// (the token's `exp`); `degraded` shrinks O2 lifetimes to `degraded_ttl`.
    pub fn on_response(
        &self,
        _id: RuleId,
        _resp: &ResponseHeader,
        _now: SystemTime,
        _cap: Option<SystemTime>,
        _degraded: bool,
    ) -> Result<Admission, NoStoreReason> {
        todo!("T2")
    }

    /// The tags of an entry stored for `path` under `m`.
    pub fn tags(&self, _m: &Matched<'_>, _path: &str, _out: &mut TagSet) {
        todo!("T2")
    }

    /// What an unsafe `method` on `path` invalidates when it succeeds (RFC 9111 §4.4).
    pub fn invalidations(&self, _method: &Method, _path: &str, _out: &mut TagSet) {
        todo!("T2")
    }
}
