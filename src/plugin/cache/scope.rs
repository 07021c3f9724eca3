//! Whose entries a request may see: no credentials, a hash of the credential, a verified
//! claim, or a class of roles. The scope goes into the primary key, so entries, and the cache
//! lock that coalesces misses, are never shared across it.
//!
//! CONTRACT (issue 14): owned by T3.

use std::time::SystemTime;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::jwt::JwtSection;
use super::policy::Rule;
use super::status::BypassReason;
use crate::section::{At, ConfigErrors, Dur, Secret};

/// How entries of authenticated requests are keyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    PerCredential,
    PerClaim,
    RoleClass,
}

/// `cache.auth`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub scope: ScopeKind,
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub roles_claim: Option<String>,
    #[serde(default)]
    pub bind_certificate: Option<bool>,
    #[serde(default)]
    pub jwt: Option<JwtSection>,
    #[serde(default)]
    pub hash_key: Option<Secret>,
    #[serde(default)]
    pub leeway: Option<Dur>,
}

/// What a scope is shown as (never its input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeLabel {
    Credential,
    Claim,
    Roles,
}

/// The scope of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// No credentials: shared by every caller.
    Anonymous,
    /// Keyed by `tag`; no entry outlives `expires` (the token's `exp`).
    Keyed {
        tag: [u8; 16],
        expires: Option<SystemTime>,
        label: ScopeLabel,
    },
    /// Not served from or stored in the cache.
    Bypass(BypassReason),
}

/// Works out scopes for one route.
#[derive(Debug)]
pub struct ScopeMaker {}

impl ScopeMaker {
    pub fn build(_auth: &AuthSection, _at: &At, _errors: &mut ConfigErrors) -> Option<ScopeMaker> {
        todo!("T3")
    }

    /// The scope of a request under `rule`. `cert_sha256` is the client certificate's
    /// fingerprint on an mTLS connection.
    pub fn scope(
        &self,
        _rule: &Rule,
        _headers: &HeaderMap,
        _cert_sha256: Option<&[u8]>,
        _now: SystemTime,
    ) -> Scope {
        todo!("T3")
    }
}

/// The rule without `auth:`: a request with credentials (`Authorization`, `Cookie`, a client
/// certificate) bypasses the cache.
pub fn bypass_without_auth(_headers: &HeaderMap, _has_client_cert: bool) -> bool {
    todo!("T3")
}
