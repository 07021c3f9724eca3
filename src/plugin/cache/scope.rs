//! Whose entries a request may see: no credentials, a hash of the credential, a verified
//! claim, or a class of roles. The scope goes into the primary key, so entries, and the cache
//! lock that coalesces misses, are never shared across it.
//!
//! The tag is `HMAC-SHA256(hash_key, domain ‖ parts)[..16]`, each part length-framed so no two
//! inputs run together into the same bytes. Credentials are never kept in clear: the tag is all
//! that reaches the key, the store and Redis. A token that does not verify, or holds none of a
//! rule's roles, bypasses the cache, so the origin answers it (401, 403) itself: the cache never
//! makes up or masks an authorization answer.

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
                // The leeway lets a token a little past its `exp` verify (clocks differ), but
                // the cache serves it nothing: the origin decides on it, and nothing is stored.
                if claims.expires().is_some_and(|exp| exp <= now) {
                    return Scope::Bypass(BypassReason::InvalidToken);
                }
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

/// Whose entries a request matching `rule` may see: the route's `auth` decides, and without
/// one a request with credentials bypasses the cache.
pub fn of_request(
    maker: Option<&ScopeMaker>,
    rule: &Rule,
    headers: &HeaderMap,
    cert: Option<&[u8]>,
    now: SystemTime,
) -> Scope {
    match maker {
        Some(maker) => maker.scope(rule, headers, cert, now),
        None if bypass_without_auth(headers, cert.is_some()) => {
            Scope::Bypass(BypassReason::Credentials)
        }
        None => Scope::Anonymous,
    }
}

/// The rule without `auth:`: a request with credentials (`Authorization`, `Cookie`, a client
/// certificate) bypasses the cache.
pub fn bypass_without_auth(headers: &HeaderMap, has_client_cert: bool) -> bool {
    has_client_cert || headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use http::HeaderValue;
    use serde_json::json;

    use super::super::jwt::testkit::Keys;
    use super::super::profile::Kind;
    use super::super::store::StoreClass;
    use super::*;

    const T: u64 = 2_000_000_000;
    const ISS: &str = "https://sso.example.com";

    fn at_secs(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn rule(share: Share, scope: Option<ScopeKind>, roles: &[&str]) -> Rule {
        Rule {
            template: "{base}/resourceTypes".into(),
            ttl: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            share,
            class: StoreClass::Shared,
            scope,
            roles: roles.iter().map(|r| Box::<str>::from(*r)).collect(),
            kind: Kind::Generic,
        }
    }

    fn auth(keys: &Keys, scope: ScopeKind) -> AuthSection {
        AuthSection {
            scope,
            claim: Some("sub".into()),
            roles_claim: Some("groups".into()),
            bind_certificate: None,
            jwt: Some(JwtSection {
                jwks_file: Some(keys.jwks_file("jwks.json", &[keys.jwk("rsa", "k1")])),
                key_file: None,
                issuer: Some(ISS.into()),
                audience: Some("o2ims".into()),
                leeway: None,
                algorithms: Some(vec!["RS256".into()]),
            }),
            hash_key: Some(Secret("0123456789abcdef0123456789abcdef".into())),
            leeway: None,
        }
    }

    fn maker(a: &AuthSection) -> ScopeMaker {
        let mut errors = ConfigErrors::default();
        let m = ScopeMaker::build(a, &At::new("routes[0].plugin.cache.auth"), &mut errors);
        assert!(errors.is_empty(), "{errors}");
        m.unwrap()
    }

    fn token(keys: &Keys, claims: serde_json::Value) -> String {
        let mut c = json!({"iss": ISS, "aud": "o2ims", "exp": T});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        keys.sign("rsa", &json!({"alg": "RS256", "kid": "k1"}), &c)
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    }

    fn tag(s: Scope) -> [u8; 16] {
        match s {
            Scope::Keyed { tag, .. } => tag,
            other => panic!("not keyed: {other:?}"),
        }
    }

    #[test]
    fn the_default_mode_bypasses_credentials() {
        let mut h = HeaderMap::new();
        assert!(!bypass_without_auth(&h, false));
        assert!(bypass_without_auth(&h, true));
        h.insert(COOKIE, HeaderValue::from_static("session=1"));
        assert!(bypass_without_auth(&h, false));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic YTpi"));
        assert!(bypass_without_auth(&h, false));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        assert!(!bypass_without_auth(&h, false));
    }

    /// Two principals with the same roles: one role_class tag, two per_claim tags. A holder of
    /// none of the rule's roles bypasses (the origin's 403 is passed on).
    #[test]
    fn role_class_shares_across_principals_and_per_claim_does_not() {
        let keys = Keys::new();
        let now = at_secs(T - 60);
        let alice = token(
            &keys,
            json!({"sub": "alice", "groups": ["o2ims-reader", "staff"]}),
        );
        let bob = token(&keys, json!({"sub": "bob", "groups": "staff o2ims-reader"}));
        let admin = token(
            &keys,
            json!({"sub": "root", "groups": ["o2ims-admin", "o2ims-reader"]}),
        );
        let nobody = token(&keys, json!({"sub": "eve", "groups": ["staff"]}));
        let m = maker(&auth(&keys, ScopeKind::PerClaim));

        let per_claim = rule(Share::Scoped, None, &[]);
        let (a, b) = (
            m.scope(&per_claim, &bearer(&alice), None, now),
            m.scope(&per_claim, &bearer(&bob), None, now),
        );
        assert_ne!(tag(a), tag(b));
        assert_eq!(
            a,
            Scope::Keyed {
                tag: tag(a),
                expires: Some(at_secs(T)),
                label: ScopeLabel::Claim
            }
        );
        // Another token of the same principal shares alice's entries.
        let alice2 = token(&keys, json!({"sub": "alice", "exp": T + 600}));
        assert_eq!(
            tag(m.scope(&per_claim, &bearer(&alice2), None, now)),
            tag(a)
        );

        let readers = rule(
            Share::Scoped,
            Some(ScopeKind::RoleClass),
            &["o2ims-reader", "o2ims-admin"],
        );
        let (ra, rb) = (
            m.scope(&readers, &bearer(&alice), None, now),
            m.scope(&readers, &bearer(&bob), None, now),
        );
        assert_eq!(tag(ra), tag(rb));
        assert!(matches!(
            ra,
            Scope::Keyed {
                label: ScopeLabel::Roles,
                ..
            }
        ));
        // The admin holds both roles: another class.
        assert_ne!(tag(m.scope(&readers, &bearer(&admin), None, now)), tag(ra));
        // The rule's role order does not matter.
        let swapped = rule(
            Share::Scoped,
            Some(ScopeKind::RoleClass),
            &["o2ims-admin", "o2ims-reader"],
        );
        assert_eq!(tag(m.scope(&swapped, &bearer(&alice), None, now)), tag(ra));
        // Role class and claim tags never meet.
        assert_ne!(tag(ra), tag(a));
        assert_eq!(
            m.scope(&readers, &bearer(&nobody), None, now),
            Scope::Bypass(BypassReason::NoRole)
        );
        // A reader on the admin-only rule.
        let dms = rule(
            Share::Scoped,
            Some(ScopeKind::RoleClass),
            &["o2ims-admin", "o2ims-deployer"],
        );
        assert_eq!(
            m.scope(&dms, &bearer(&alice), None, now),
            Scope::Bypass(BypassReason::NoRole)
        );
        assert!(matches!(
            m.scope(&dms, &bearer(&admin), None, now),
            Scope::Keyed { .. }
        ));
        // A dotted roles claim.
        let mut a2 = auth(&keys, ScopeKind::RoleClass);
        a2.roles_claim = Some("realm_access.roles".into());
        let m2 = maker(&a2);
        let kc = token(
            &keys,
            json!({"sub": "k", "realm_access": {"roles": ["o2ims-reader"]}}),
        );
        assert!(matches!(
            m2.scope(&readers, &bearer(&kc), None, now),
            Scope::Keyed { .. }
        ));
        assert_eq!(
            m2.scope(&readers, &bearer(&alice), None, now),
            Scope::Bypass(BypassReason::NoRole)
        );
    }

    #[test]
    fn bad_expired_or_unreadable_tokens_bypass() {
        let keys = Keys::new();
        let m = maker(&auth(&keys, ScopeKind::PerClaim));
        let r = rule(Share::Scoped, None, &[]);
        let good = token(&keys, json!({"sub": "alice"}));
        assert!(matches!(
            m.scope(&r, &bearer(&good), None, at_secs(T - 1)),
            Scope::Keyed { .. }
        ));
        let invalid = Scope::Bypass(BypassReason::InvalidToken);
        // Expired: past the leeway, and within it (it verifies, but is served nothing).
        assert_eq!(m.scope(&r, &bearer(&good), None, at_secs(T + 30)), invalid);
        assert_eq!(m.scope(&r, &bearer(&good), None, at_secs(T)), invalid);
        let readers = rule(Share::Scoped, Some(ScopeKind::RoleClass), &["o2ims-reader"]);
        let reader = token(&keys, json!({"sub": "r", "groups": ["o2ims-reader"]}));
        assert!(matches!(
            m.scope(&readers, &bearer(&reader), None, at_secs(T - 1)),
            Scope::Keyed { .. }
        ));
        assert_eq!(
            m.scope(&readers, &bearer(&reader), None, at_secs(T + 5)),
            invalid
        );
        // Another key's signature, a forged payload.
        let other = keys.sign(
            "rsa2",
            &json!({"alg": "RS256", "kid": "k1"}),
            &json!({"iss": ISS, "aud": "o2ims", "sub": "alice"}),
        );
        assert_eq!(m.scope(&r, &bearer(&other), None, at_secs(T - 1)), invalid);
        let (h, rest) = good.split_once('.').unwrap();
        let s = rest.split_once('.').unwrap().1;
        let forged = format!(
            "{h}.{}.{s}",
            URL_SAFE_NO_PAD
                .encode(br#"{"iss":"https://sso.example.com","aud":"o2ims","sub":"root"}"#)
        );
        assert_eq!(m.scope(&r, &bearer(&forged), None, at_secs(T - 1)), invalid);
        // No principal claim.
        let nosub = token(&keys, json!({"groups": ["x"]}));
        assert_eq!(m.scope(&r, &bearer(&nosub), None, at_secs(T - 1)), invalid);
        // Not a bearer token, or a cookie: credentials this mode cannot name.
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6cHc="),
        );
        assert_eq!(
            m.scope(&r, &h, None, at_secs(T - 1)),
            Scope::Bypass(BypassReason::Credentials)
        );
        let mut h = bearer(&good);
        h.insert(COOKIE, HeaderValue::from_static("s=1"));
        assert_eq!(
            m.scope(&r, &h, None, at_secs(T - 1)),
            Scope::Bypass(BypassReason::Credentials)
        );
        // Two Authorization headers.
        let mut h = bearer(&good);
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(m.scope(&r, &h, None, at_secs(T - 1)), invalid);
        // Nothing at all: anonymous.
        assert_eq!(
            m.scope(&r, &HeaderMap::new(), None, at_secs(T - 1)),
            Scope::Anonymous
        );
        // A certificate alone cannot name a claim.
        assert_eq!(
            m.scope(&r, &HeaderMap::new(), Some(&[7u8; 32]), at_secs(T - 1)),
            Scope::Bypass(BypassReason::Credentials)
        );
    }

    /// `share: never` forces per_credential even on a role_class rule: two tokens of one
    /// principal, or two principals of one role, never share.
    #[test]
    fn share_never_forces_per_credential() {
        let keys = Keys::new();
        let m = maker(&auth(&keys, ScopeKind::RoleClass));
        let now = at_secs(T - 60);
        let dms = rule(Share::Never, Some(ScopeKind::RoleClass), &["o2ims-admin"]);
        assert_eq!(m.effective(&dms), ScopeKind::PerCredential);
        let a1 = token(&keys, json!({"sub": "a", "groups": ["o2ims-admin"]}));
        let a2 = token(
            &keys,
            json!({"sub": "a", "groups": ["o2ims-admin"], "jti": "2"}),
        );
        let s1 = m.scope(&dms, &bearer(&a1), None, now);
        assert!(
            matches!(s1, Scope::Keyed { label: ScopeLabel::Credential, expires: Some(e), .. } if e == at_secs(T))
        );
        assert_ne!(tag(s1), tag(m.scope(&dms, &bearer(&a2), None, now)));
        assert_eq!(tag(s1), tag(m.scope(&dms, &bearer(&a1), None, now)));
    }

    #[test]
    fn per_credential_hashes_every_credential_and_reads_exp_only_to_shorten() {
        let keys = Keys::new();
        let mut a = auth(&keys, ScopeKind::PerCredential);
        a.jwt = None;
        let m = maker(&a);
        let r = rule(Share::Scoped, None, &[]);
        let now = at_secs(T - 60);
        let tok = token(&keys, json!({"sub": "a"}));
        let s = m.scope(&r, &bearer(&tok), None, now);
        assert_eq!(
            s,
            Scope::Keyed {
                tag: tag(s),
                expires: Some(at_secs(T)),
                label: ScopeLabel::Credential
            }
        );
        // The cert and the cookie are part of the credential.
        let with_cert = m.scope(&r, &bearer(&tok), Some(&[1u8; 32]), now);
        assert_ne!(tag(with_cert), tag(s));
        assert_ne!(
            tag(m.scope(&r, &bearer(&tok), Some(&[2u8; 32]), now)),
            tag(with_cert)
        );
        let mut h = bearer(&tok);
        h.insert(COOKIE, HeaderValue::from_static("s=1"));
        assert_ne!(tag(m.scope(&r, &h, None, now)), tag(s));
        // An opaque token: keyed, no expiry. An unsigned "JWT" already past its exp: bypassed.
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer opaque-token-1"),
        );
        assert!(matches!(
            m.scope(&r, &h, None, now),
            Scope::Keyed { expires: None, .. }
        ));
        assert_eq!(
            m.scope(&r, &bearer(&tok), None, at_secs(T)),
            Scope::Bypass(BypassReason::InvalidToken)
        );
        // The same credential under another hash_key gives another tag (replicas must agree).
        let mut b = a.clone();
        b.hash_key = Some(Secret("another-key-of-32-bytes-xxxxxxxx".into()));
        assert_ne!(tag(maker(&b).scope(&r, &bearer(&tok), None, now)), tag(s));
        // Without hash_key, a per-process key: stable across builds (reloads) of this process.
        b.hash_key = None;
        let (p1, p2) = (maker(&b), maker(&b));
        assert!(!p1.has_hash_key());
        assert_eq!(
            tag(p1.scope(&r, &bearer(&tok), None, now)),
            tag(p2.scope(&r, &bearer(&tok), None, now))
        );
        // Framing: moving bytes between the Authorization value and the cookie changes the tag.
        let mut h1 = HeaderMap::new();
        h1.insert(AUTHORIZATION, HeaderValue::from_static("Bearer ab"));
        h1.insert(COOKIE, HeaderValue::from_static("c"));
        let mut h2 = HeaderMap::new();
        h2.insert(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h2.insert(COOKIE, HeaderValue::from_static("bc"));
        assert_ne!(
            tag(m.scope(&r, &h1, None, now)),
            tag(m.scope(&r, &h2, None, now))
        );
    }

    /// RFC 8705: a token bound to a certificate is only good on a connection with it, and with
    /// `bind_certificate` the certificate is part of the principal.
    #[test]
    fn certificate_bound_tokens() {
        let keys = Keys::new();
        let mut a = auth(&keys, ScopeKind::PerClaim);
        a.bind_certificate = Some(true);
        let m = maker(&a);
        let r = rule(Share::Scoped, None, &[]);
        let now = at_secs(T - 60);
        let cert = [9u8; 32];
        let bound = token(
            &keys,
            json!({"sub": "a", "cnf": {"x5t#S256": URL_SAFE_NO_PAD.encode(cert)}}),
        );
        let invalid = Scope::Bypass(BypassReason::InvalidToken);
        assert!(matches!(
            m.scope(&r, &bearer(&bound), Some(&cert), now),
            Scope::Keyed { .. }
        ));
        assert_eq!(m.scope(&r, &bearer(&bound), Some(&[8u8; 32]), now), invalid);
        assert_eq!(m.scope(&r, &bearer(&bound), None, now), invalid);
        // A proof-of-possession the gateway does not check (DPoP).
        let dpop = token(&keys, json!({"sub": "a", "cnf": {"jkt": "abc"}}));
        assert_eq!(m.scope(&r, &bearer(&dpop), None, now), invalid);
        // Unbound token: the connection's certificate still splits the principal.
        let plain = token(&keys, json!({"sub": "a"}));
        assert_ne!(
            tag(m.scope(&r, &bearer(&plain), Some(&[1u8; 32]), now)),
            tag(m.scope(&r, &bearer(&plain), Some(&[2u8; 32]), now))
        );
    }

    #[test]
    fn validation_errors_are_located() {
        let keys = Keys::new();
        let build = |a: &AuthSection| {
            let mut errors = ConfigErrors::default();
            let m = ScopeMaker::build(a, &At::new("routes[0].plugin.cache.auth"), &mut errors);
            assert_eq!(m.is_some(), errors.is_empty());
            errors.to_string()
        };
        let mut a = auth(&keys, ScopeKind::PerClaim);
        a.claim = None;
        assert!(build(&a)
            .contains("routes[0].plugin.cache.auth.claim: `scope: per_claim` needs `claim`"));
        let mut a = auth(&keys, ScopeKind::RoleClass);
        a.roles_claim = None;
        assert!(build(&a).contains("auth.roles_claim: `scope: role_class` needs `roles_claim`"));
        let mut a = auth(&keys, ScopeKind::RoleClass);
        a.jwt = None;
        assert!(build(&a).contains("auth.jwt: `scope: role_class` trusts a token's claims"));
        let mut a = auth(&keys, ScopeKind::PerClaim);
        a.hash_key = Some(Secret("short".into()));
        a.claim = Some("a..b".into());
        let text = build(&a);
        assert!(
            text.contains("auth.hash_key: must be at least 16 bytes"),
            "{text}"
        );
        assert!(text.contains("auth.claim: must be a claim name"), "{text}");
        assert!(!text.contains("short"), "the secret is not shown: {text}");
        let mut a = auth(&keys, ScopeKind::PerClaim);
        a.leeway = Some(Dur(Duration::from_secs(5)));
        a.jwt.as_mut().unwrap().leeway = Some(Dur(Duration::from_secs(5)));
        assert!(build(&a).contains("auth.leeway: is also given as `jwt.leeway`"));
        let mut a = auth(&keys, ScopeKind::PerClaim);
        a.jwt.as_mut().unwrap().jwks_file = Some("/nonexistent".into());
        assert!(build(&a).contains("auth.jwt.jwks_file: cannot read"));
        // per_credential needs no jwt.
        let mut a = auth(&keys, ScopeKind::PerCredential);
        a.jwt = None;
        a.claim = None;
        a.roles_claim = None;
        assert_eq!(build(&a), "");
        // The rules' check.
        let m = maker(&a);
        assert!(m.check_rule(ScopeKind::PerCredential, &[]).is_ok());
        assert!(m
            .check_rule(ScopeKind::PerClaim, &[])
            .unwrap_err()
            .contains("auth.jwt"));
        let m = maker(&auth(&keys, ScopeKind::PerClaim));
        assert!(m
            .check_rule(ScopeKind::RoleClass, &[])
            .unwrap_err()
            .contains("`roles`"));
        assert!(m.check_rule(ScopeKind::RoleClass, &["r".into()]).is_ok());
        // The section as YAML: unknown keys are errors.
        let y: Result<AuthSection, _> =
            serde_yaml::from_str("scope: per_claim\nclaim: sub\nbogus: 1\n");
        assert!(y.is_err());
        let y: AuthSection = serde_yaml::from_str(
            "scope: role_class\nroles_claim: groups\njwt: { key_file: /k.pem, algorithms: [ES256] }\nhash_key: \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert_eq!(y.scope, ScopeKind::RoleClass);
    }
}
