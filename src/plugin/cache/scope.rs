//! Whose entries a request may see: no credentials, a hash of the credential, a verified
//! claim, or a class of roles. The scope goes into the primary key, so entries, and the cache
//! lock that coalesces misses, are never shared across it.
//!
//! The tag is `HMAC-SHA256(hash_key, domain ‖ parts)[..16]`, each part length-framed so no two
//! inputs run together into the same bytes. Credentials are never kept in clear: the tag is all
//! that reaches the key, the store and Redis. A token that does not verify, or holds none of a
//! rule's roles, bypasses the cache, so the origin answers it (401, 403) itself: the cache never
//! makes up or masks an authorization answer.
//!
//! CONTRACT (issue 14): owned by T3.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;
use ring::hmac;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::jwt::{Claims, JwtSection, Verifier, MAX_TOKEN_LEN};
use super::policy::{Rule, Share};
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

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::PerCredential => "per_credential",
            ScopeKind::PerClaim => "per_claim",
            ScopeKind::RoleClass => "role_class",
        }
    }
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
    /// The leeway on `exp`/`nbf` when `jwt.leeway` is not set (giving both is an error).
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

impl ScopeLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeLabel::Credential => "credential",
            ScopeLabel::Claim => "claim",
            ScopeLabel::Roles => "roles",
        }
    }
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

/// The shortest `hash_key` accepted, in bytes.
pub const MIN_HASH_KEY: usize = 16;

/// Works out scopes for one route.
#[derive(Debug)]
pub struct ScopeMaker {
    kind: ScopeKind,
    /// `claim` (per_claim), as written: a dotted path into the token.
    claim: Option<Box<str>>,
    roles_claim: Option<Box<str>>,
    bind_certificate: bool,
    verifier: Option<Verifier>,
    key: hmac::Key,
    /// Whether `hash_key` was configured (else the key is random per process).
    configured_key: bool,
}

/// The key used when `hash_key` is not set: random, once per process, so tags stay the same
/// across reloads (no cold cache on SIGHUP) but differ between processes. That is fine for one
/// gateway, or replicas without a shared Redis tier; with Redis, `hash_key` is required so
/// every replica computes the same tags.
fn process_key() -> Option<&'static [u8; 32]> {
    static KEY: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    KEY.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut k).ok().map(|_| k)
    })
    .as_ref()
}

impl ScopeMaker {
    /// Checks `auth` (located under `at`, the `auth` node) and builds the route's scope maker:
    /// the JWT verifier with its keys read now, and the HMAC key.
    pub fn build(auth: &AuthSection, at: &At, errors: &mut ConfigErrors) -> Option<ScopeMaker> {
        let before = errors.len();
        let needs_jwt = matches!(auth.scope, ScopeKind::PerClaim | ScopeKind::RoleClass);

        let claim = non_empty(&auth.claim, "claim", at, errors);
        let roles_claim = non_empty(&auth.roles_claim, "roles_claim", at, errors);
        if auth.scope == ScopeKind::PerClaim && auth.claim.is_none() {
            errors.push(
                at.key("claim"),
                "`scope: per_claim` needs `claim`: the token claim naming the principal (usually `sub`)",
            );
        }
        if auth.scope == ScopeKind::RoleClass && auth.roles_claim.is_none() {
            errors.push(
                at.key("roles_claim"),
                "`scope: role_class` needs `roles_claim`: the token claim listing its roles (e.g. `groups`, `realm_access.roles`)",
            );
        }

        let leeway = auth.leeway.map(|d| d.0);
        let verifier = match &auth.jwt {
            Some(jwt) => {
                if auth.leeway.is_some() && jwt.leeway.is_some() {
                    errors.push(
                        at.key("leeway"),
                        "is also given as `jwt.leeway`: give it once",
                    );
                }
                Verifier::build_with_leeway(jwt, leeway, &at.key("jwt"), errors)
            }
            None => {
                if needs_jwt {
                    errors.push(
                        at.key("jwt"),
                        format!(
                            "`scope: {}` trusts a token's claims, so it needs `jwt` (a `jwks_file` or `key_file`) to verify them",
                            auth.scope.as_str()
                        ),
                    );
                }
                if auth.leeway.is_some() {
                    errors.push(at.key("leeway"), "is only used with `jwt`");
                }
                None
            }
        };

        let (key, configured_key) = match &auth.hash_key {
            Some(secret) => {
                if secret.0.len() < MIN_HASH_KEY {
                    errors.push(
                        at.key("hash_key"),
                        format!(
                            "must be at least {MIN_HASH_KEY} bytes (32 random bytes, e.g. `openssl rand -base64 32`)"
                        ),
                    );
                }
                (hmac::Key::new(hmac::HMAC_SHA256, secret.0.as_bytes()), true)
            }
            None => match process_key() {
                Some(k) => (hmac::Key::new(hmac::HMAC_SHA256, k), false),
                None => {
                    errors.push(
                        at.key("hash_key"),
                        "no random source to make one: set `hash_key`",
                    );
                    return None;
                }
            },
        };

        if errors.len() > before {
            return None;
        }
        Some(ScopeMaker {
            kind: auth.scope,
            claim,
            roles_claim,
            bind_certificate: auth.bind_certificate.unwrap_or(false),
            verifier,
            key,
            configured_key,
        })
    }

    /// The route's scope (`auth.scope`).
    pub fn kind(&self) -> ScopeKind {
        self.kind
    }

    /// Whether `hash_key` was configured. Without it the key is random per process, so two
    /// replicas compute different tags: validation requires it with a shared (Redis) tier.
    pub fn has_hash_key(&self) -> bool {
        self.configured_key
    }

    /// The scope a rule gets: its own, or the route's; `share: never` forces `per_credential`.
    pub fn effective(&self, rule: &Rule) -> ScopeKind {
        if rule.share == Share::Never {
            return ScopeKind::PerCredential;
        }
        rule.scope.unwrap_or(self.kind)
    }

    /// Whether this route's `auth` can serve a rule that names `kind` with `roles`: for the
    /// rules' validation (config.rs), which pushes the message at the rule's `scope`.
    pub fn check_rule(&self, kind: ScopeKind, roles: &[Box<str>]) -> Result<(), String> {
        match kind {
            ScopeKind::PerCredential => Ok(()),
            ScopeKind::PerClaim if self.verifier.is_none() => {
                Err("`scope: per_claim` needs `auth.jwt` to verify tokens".into())
            }
            ScopeKind::PerClaim if self.claim.is_none() => {
                Err("`scope: per_claim` needs `auth.claim`".into())
            }
            ScopeKind::PerClaim => Ok(()),
            ScopeKind::RoleClass if self.verifier.is_none() => {
                Err("`scope: role_class` needs `auth.jwt` to verify tokens".into())
            }
            ScopeKind::RoleClass if self.roles_claim.is_none() => {
                Err("`scope: role_class` needs `auth.roles_claim`".into())
            }
            ScopeKind::RoleClass if roles.is_empty() => {
                Err("`scope: role_class` needs the rule's `roles`: the roles whose holders all see the same answer".into())
            }
            ScopeKind::RoleClass => Ok(()),
        }
    }

    /// The scope of a request under `rule`. `cert_sha256` is the client certificate's
    /// fingerprint on an mTLS connection.
    pub fn scope(
        &self,
        rule: &Rule,
        headers: &HeaderMap,
        cert_sha256: Option<&[u8]>,
        now: SystemTime,
    ) -> Scope {
        let has_auth = headers.contains_key(AUTHORIZATION);
        let has_cookie = headers.contains_key(COOKIE);
        if !has_auth && !has_cookie && cert_sha256.is_none() {
            return Scope::Anonymous;
        }
        match self.effective(rule) {
            ScopeKind::PerCredential => self.per_credential(headers, cert_sha256, now),
            kind => {
                // A cookie or a certificate alone is a credential these modes cannot name a
                // principal by, and the origin may answer by it: not shared.
                if has_cookie || !has_auth {
                    return Scope::Bypass(BypassReason::Credentials);
                }
                let Some(verifier) = &self.verifier else {
                    // Validation refuses such a rule; stay safe if one gets here.
                    return Scope::Bypass(BypassReason::Credentials);
                };
                let token = match bearer(headers) {
                    Ok(t) => t,
                    Err(why) => return Scope::Bypass(why),
                };
                let claims = match verifier.verify(token, now) {
                    Ok(c) => c,
                    Err(_) => return Scope::Bypass(BypassReason::InvalidToken),
                };
                let Some(cnf) = certificate_binding(&claims, cert_sha256) else {
                    return Scope::Bypass(BypassReason::InvalidToken);
                };
                if kind == ScopeKind::PerClaim {
                    self.per_claim(&claims, cnf, cert_sha256)
                } else {
                    self.role_class(rule, &claims)
                }
            }
        }
    }

    fn tagger(&self, domain: &[u8]) -> Tagger {
        let mut t = Tagger(hmac::Context::with_key(&self.key));
        t.part(b"zkgate-scope-1");
        t.part(domain);
        t
    }

    fn per_credential(
        &self,
        headers: &HeaderMap,
        cert_sha256: Option<&[u8]>,
        now: SystemTime,
    ) -> Scope {
        let mut t = self.tagger(b"cred");
        let mut expires = None;
        let mut n = 0u32;
        for v in headers.get_all(AUTHORIZATION) {
            t.part(v.as_bytes());
            n += 1;
            if let Some(exp) = unverified_exp(v.as_bytes()) {
                expires = Some(expires.map_or(exp, |e: SystemTime| e.min(exp)));
            }
        }
        t.count(n);
        let mut n = 0u32;
        for v in headers.get_all(COOKIE) {
            t.part(v.as_bytes());
            n += 1;
        }
        t.count(n);
        t.part(cert_sha256.unwrap_or_default());
        // The unverified `exp` can only make an entry shorter-lived; one already past means
        // nothing of this credential is served or stored (the origin decides what it is worth).
        if expires.is_some_and(|e| e <= now) {
            return Scope::Bypass(BypassReason::InvalidToken);
        }
        Scope::Keyed {
            tag: t.finish(),
            expires,
            label: ScopeLabel::Credential,
        }
    }

    fn per_claim(&self, claims: &Claims, cnf: &[u8], cert_sha256: Option<&[u8]>) -> Scope {
        let Some(name) = &self.claim else {
            return Scope::Bypass(BypassReason::Credentials);
        };
        let number;
        let principal: &[u8] = match claims.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.as_bytes(),
            Some(serde_json::Value::Number(n)) => {
                number = n.to_string();
                number.as_bytes()
            }
            // No principal: nothing to key by, so not shared with anyone.
            _ => return Scope::Bypass(BypassReason::InvalidToken),
        };
        let mut t = self.tagger(b"claim");
        t.part(claims.issuer().unwrap_or_default().as_bytes());
        t.part(name.as_bytes());
        t.part(principal);
        t.part(cnf);
        if self.bind_certificate {
            t.part(cert_sha256.unwrap_or_default());
        }
        Scope::Keyed {
            tag: t.finish(),
            expires: claims.expires(),
            label: ScopeLabel::Claim,
        }
    }

    fn role_class(&self, rule: &Rule, claims: &Claims) -> Scope {
        let Some(name) = &self.roles_claim else {
            return Scope::Bypass(BypassReason::NoRole);
        };
        let held = claims.get(name);
        let holds = |role: &str| match held {
            Some(serde_json::Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(role)),
            Some(serde_json::Value::String(s)) => s.split_ascii_whitespace().any(|r| r == role),
            _ => false,
        };
        let mut common: SmallVec<[&str; 8]> = rule
            .roles
            .iter()
            .map(|r| &**r)
            .filter(|r| holds(r))
            .collect();
        if common.is_empty() {
            return Scope::Bypass(BypassReason::NoRole);
        }
        common.sort_unstable();
        common.dedup();
        let mut t = self.tagger(b"roles");
        t.part(claims.issuer().unwrap_or_default().as_bytes());
        t.count(common.len() as u32);
        for r in &common {
            t.part(r.as_bytes());
        }
        Scope::Keyed {
            tag: t.finish(),
            expires: claims.expires(),
            label: ScopeLabel::Roles,
        }
    }
}

/// An HMAC over length-framed parts.
struct Tagger(hmac::Context);

impl Tagger {
    fn part(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    fn count(&mut self, n: u32) {
        self.0.update(&n.to_be_bytes());
    }

    fn finish(self) -> [u8; 16] {
        let full = self.0.sign();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full.as_ref()[..16]);
        tag
    }
}

/// The one `Authorization: Bearer` token of a request.
fn bearer(headers: &HeaderMap) -> Result<&str, BypassReason> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (all.next(), all.next()) else {
        // Two Authorization headers: which one the origin reads is not ours to guess.
        return Err(BypassReason::InvalidToken);
    };
    let value = value.to_str().map_err(|_| BypassReason::InvalidToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(BypassReason::Credentials)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Basic, Digest, ...: a credential, but not a token these modes can read.
        return Err(BypassReason::Credentials);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(BypassReason::InvalidToken);
    }
    Ok(token)
}

/// RFC 8705 §3.1: a token bound to a certificate (`cnf.x5t#S256`) is valid only on a
/// connection with that certificate. A stolen bound token must not be served from the cache
/// when the origin would refuse it. `Some(thumbprint)` (empty when unbound) when it holds.
fn certificate_binding<'c>(claims: &'c Claims, cert_sha256: Option<&[u8]>) -> Option<&'c [u8]> {
    let Some(cnf) = claims.map.get("cnf") else {
        return Some(&[]);
    };
    let Some(bound) = cnf.get("x5t#S256") else {
        // `cnf` with other methods (`jkt`: DPoP) is proof the gateway does not check.
        return if cnf.as_object().is_some_and(|o| o.is_empty()) {
            Some(&[])
        } else {
            None
        };
    };
    let bound = bound.as_str()?;
    let cert = cert_sha256?;
    let mut want = [0u8; 43];
    let n = URL_SAFE_NO_PAD.encode_slice(cert, &mut want).ok()?;
    (bound.as_bytes() == &want[..n]).then_some(bound.as_bytes())
}

/// The `exp` of a bearer JWT, read WITHOUT verifying it: only ever used to shorten lifetimes.
fn unverified_exp(value: &[u8]) -> Option<SystemTime> {
    #[derive(Deserialize)]
    struct Exp {
        #[serde(default)]
        exp: Option<serde_json::Value>,
    }
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.trim_matches(' ').split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let exp: Exp = serde_json::from_slice(&payload).ok()?;
    let secs = exp.exp?.as_f64()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    std::time::UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs.min(1e12)))
}

fn non_empty(
    v: &Option<String>,
    key: &str,
    at: &At,
    errors: &mut ConfigErrors,
) -> Option<Box<str>> {
    match v {
        Some(s) if s.is_empty() || s.split('.').any(str::is_empty) => {
            errors.push(at.key(key), "must be a claim name or a dotted path to one");
            None
        }
        Some(s) => Some(s.as_str().into()),
        None => None,
    }
}

/// The rule without `auth:`: a request with credentials (`Authorization`, `Cookie`, a client
/// certificate) bypasses the cache.
pub fn bypass_without_auth(headers: &HeaderMap, has_client_cert: bool) -> bool {
    has_client_cert || headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE)
}
