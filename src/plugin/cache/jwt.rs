//! JWS verification on *ring* (RS256, PS256, ES256, EdDSA) against a JWKS file or a PEM key,
//! with `exp`, `nbf`, `iss` and `aud` checked: what the cache scopes and the notification
//! callback trust a bearer token by.
//!
//! Only public-key algorithms are accepted. `none` is never accepted, and neither is HS*: a
//! shared-secret MAC verified with a public key is the classic algorithm-confusion forgery, and
//! a JWKS holds public keys only. The algorithm of a token must be on the configured allow-list
//! and must fit the type of the key its `kid` names, so a token cannot choose how it is checked.
//!
//! A token that verified is remembered (by the SHA-256 of its bytes, in a bounded cache of each
//! verifier), so a client sending it again costs a hash and a lookup instead of a public-key
//! operation (tens of µs for RS256). What a remembered token gets is what verifying it again
//! would give: the signature and header depend on nothing but the token and the keys, which a
//! verifier never changes (a reload that reads a changed JWKS or key builds a new verifier,
//! with an empty cache), and the claims are checked again against the time of each request, so
//! no token passes past its `exp`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ring::signature;
use serde::{Deserialize, Serialize};

use crate::section::{At, ConfigErrors, Dur};

/// `auth.jwt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub leeway: Option<Dur>,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
}

impl JwtError {
    /// For logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed",
            JwtError::Algorithm => "algorithm",
            JwtError::UnknownKey => "unknown-key",
            JwtError::Signature => "signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not-yet-valid",
            JwtError::Issuer => "issuer",
            JwtError::Audience => "audience",
        }
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for JwtError {}

/// A verified token's claims.
#[derive(Debug)]
pub struct Claims {
    pub map: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// A claim by name; a dotted name walks objects (`realm_access.roles`). A claim whose own
    /// name holds dots (`https://example.com/roles`, common for namespaced claims) is found
    /// first, as written.
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        if let Some(v) = self.map.get(name) {
            return Some(v);
        }
        let mut parts = name.split('.');
        let mut value = self.map.get(parts.next()?)?;
        for part in parts {
            value = value.as_object()?.get(part)?;
        }
        Some(value)
    }

    /// The `exp` claim, when it is a number of seconds since the epoch.
    pub fn expires(&self) -> Option<SystemTime> {
        self.map.get("exp").and_then(numeric_date)
    }

    /// The `iss` claim, when it is a string.
    pub fn issuer(&self) -> Option<&str> {
        self.map.get("iss").and_then(|v| v.as_str())
    }
}

/// A JWT `NumericDate` (seconds since the epoch, maybe fractional) as a time; `None` when it is
/// not a number, negative or out of range.
fn numeric_date(v: &serde_json::Value) -> Option<SystemTime> {
    let secs = v.as_f64()?;
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs))
}

/// The longest token looked at: a header line is bounded by the listener anyway, and this
/// keeps the base64 and JSON work of a hostile token small.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// The most keys one token is checked against (a token without `kid`, or a JWKS that reuses
/// one): each costs a public-key operation, so a hostile token cannot make a request cost many.
const MAX_KEYS_TRIED: usize = 4;
/// The most signing keys a JWKS may hold.
const MAX_KEYS: usize = 64;
/// The largest JWKS or PEM file read.
const MAX_KEY_FILE: usize = 1024 * 1024;
/// The bytes of verified tokens one verifier remembers (each weighs [`verified_weight`]): some
/// thousands of typical tokens, more than the clients of one gateway hold at once.
const VERIFIED_BYTES: u64 = 4 << 20;

/// A signature algorithm zkgate verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    const ALL: [Alg; 9] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];

    /// The JOSE name (RFC 7518 §3.1, RFC 8037 §3.1).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// Exact, case-sensitive: JOSE names are (RFC 7515 §4.1.1).
    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// Whether a key of this material can check this algorithm.
    fn fits(self, key: &KeyMaterial) -> bool {
        matches!(
            (self, key),
            (
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512,
                KeyMaterial::Rsa { .. }
            ) | (Alg::Es256, KeyMaterial::EcP256(_))
                | (Alg::Es384, KeyMaterial::EcP384(_))
                | (Alg::EdDsa, KeyMaterial::Ed25519(_))
        )
    }
}

/// The public half of a key, in the form *ring* takes.
#[derive(Clone, PartialEq, Eq)]
enum KeyMaterial {
    /// Modulus and exponent, big-endian, without leading zeros.
    Rsa {
        n: Box<[u8]>,
        e: Box<[u8]>,
    },
    /// The uncompressed point `04 ‖ x ‖ y`.
    EcP256(Box<[u8]>),
    EcP384(Box<[u8]>),
    /// The 32-byte public key.
    Ed25519(Box<[u8]>),
}

impl KeyMaterial {
    fn kind(&self) -> &'static str {
        match self {
            KeyMaterial::Rsa { .. } => "RSA",
            KeyMaterial::EcP256(_) => "EC P-256",
            KeyMaterial::EcP384(_) => "EC P-384",
            KeyMaterial::Ed25519(_) => "Ed25519",
        }
    }

    fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        let rsa = |params: &'static signature::RsaParameters, n: &[u8], e: &[u8]| {
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, message, sig)
                .is_ok()
        };
        let other = |algorithm: &'static dyn signature::VerificationAlgorithm, key: &[u8]| {
            signature::UnparsedPublicKey::new(algorithm, key)
                .verify(message, sig)
                .is_ok()
        };
        match (alg, self) {
            (Alg::Rs256, KeyMaterial::Rsa { n, e }) => {
                rsa(&signature::RSA_PKCS1_2048_8192_SHA256, n, e)
            }
            (Alg::Rs384, KeyMaterial::Rsa { n, e }) => {
                rsa(&signature::RSA_PKCS1_2048_8192_SHA384, n, e)
            }
            (Alg::Rs512, KeyMaterial::Rsa { n, e }) => {
                rsa(&signature::RSA_PKCS1_2048_8192_SHA512, n, e)
            }
            (Alg::Ps256, KeyMaterial::Rsa { n, e }) => {
                rsa(&signature::RSA_PSS_2048_8192_SHA256, n, e)
            }
            (Alg::Ps384, KeyMaterial::Rsa { n, e }) => {
                rsa(&signature::RSA_PSS_2048_8192_SHA384, n, e)
            }
            (Alg::Ps512, KeyMaterial::Rsa { n, e }) => {
                rsa(&signature::RSA_PSS_2048_8192_SHA512, n, e)
            }
            (Alg::Es256, KeyMaterial::EcP256(k)) => other(&signature::ECDSA_P256_SHA256_FIXED, k),
            (Alg::Es384, KeyMaterial::EcP384(k)) => other(&signature::ECDSA_P384_SHA384_FIXED, k),
            (Alg::EdDsa, KeyMaterial::Ed25519(k)) => other(&signature::ED25519, k),
            _ => false,
        }
    }
}

/// One verification key.
#[derive(Clone)]
struct Key {
    kid: Option<Box<str>>,
    /// The JWK's own `alg`, when it pins one.
    alg: Option<Alg>,
    material: KeyMaterial,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("type", &self.material.kind())
            .finish()
    }
}

/// Verifies tokens against the configured keys.
#[derive(Debug)]
pub struct Verifier {
    keys: Box<[Key]>,
    /// Bit set of [`Alg`]s allowed.
    algorithms: u16,
    issuer: Option<Box<str>>,
    audience: Option<Box<str>>,
    leeway: Duration,
    verified: VerifiedTokens,
}

/// A token whose signature verified, by the SHA-256 of its bytes: a collision-resistant key, so
/// no other token can be crafted to find it. Only tokens signed by a configured key get in,
/// so a client cannot fill it with made-up ones.
struct VerifiedTokens(quick_cache::sync::Cache<[u8; 32], Verified, ByTokenSize>);

#[derive(Clone)]
struct Verified {
    claims: Arc<Claims>,
    weight: u32,
}

/// Weighs a remembered token by its length: its claims, parsed, take about as much again.
#[derive(Clone)]
struct ByTokenSize;

impl quick_cache::Weighter<[u8; 32], Verified> for ByTokenSize {
    fn weight(&self, _key: &[u8; 32], val: &Verified) -> u64 {
        u64::from(val.weight)
    }
}

/// What a token of `len` bytes is charged: the token's share of its parsed claims (the payload
/// is about three quarters of it, its JSON parsed into a map about twice that) and the entry.
fn verified_weight(len: usize) -> u32 {
    u32::try_from(len.saturating_mul(2).saturating_add(256)).unwrap_or(u32::MAX)
}

impl VerifiedTokens {
    fn new() -> VerifiedTokens {
        VerifiedTokens(quick_cache::sync::Cache::with_weighter(
            1024,
            VERIFIED_BYTES,
            ByTokenSize,
        ))
    }
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("len", &self.0.len())
            .finish()
    }
}

/// The protected header fields read; the rest is ignored.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// RFC 7515 §4.1.11: a header naming extensions the verifier must understand. zkgate
    /// understands none, so such a token is refused.
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// base64url as JWKs are written in the wild: with or without padding.
const JWK_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The default leeway on `exp` and `nbf`, for clocks a little apart.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

impl Verifier {
    /// Reads the keys (a JWKS file, or a PEM public key or certificate) and checks the section;
    /// every problem is pushed located under `at`.
    pub fn build(section: &JwtSection, at: &At, errors: &mut ConfigErrors) -> Option<Verifier> {
        Self::build_with_leeway(section, None, at, errors)
    }

    /// As [`Verifier::build`], with a leeway given elsewhere (`auth.leeway`) used when the
    /// section sets none.
    pub fn build_with_leeway(
        section: &JwtSection,
        fallback_leeway: Option<Duration>,
        at: &At,
        errors: &mut ConfigErrors,
    ) -> Option<Verifier> {
        let before = errors.len();
        let keys = match (&section.jwks_file, &section.key_file) {
            (Some(_), Some(_)) => {
                errors.push(
                    at.key("key_file"),
                    "give either `jwks_file` or `key_file`, not both",
                );
                Vec::new()
            }
            (None, None) => {
                errors.push(
                    at.clone(),
                    "needs `jwks_file` (a JWKS document) or `key_file` (a PEM public key or certificate)",
                );
                Vec::new()
            }
            (Some(path), None) => {
                let at = at.key("jwks_file");
                match crate::section::file::read_bounded(std::path::Path::new(path), MAX_KEY_FILE) {
                    Ok(text) => parse_jwks(&text, &at, errors),
                    Err(e) => {
                        errors.push(at, format!("cannot read `{path}`: {e}"));
                        Vec::new()
                    }
                }
            }
            (None, Some(path)) => {
                let at = at.key("key_file");
                match crate::section::file::read_bounded(std::path::Path::new(path), MAX_KEY_FILE) {
                    Ok(text) => parse_pem(&text, &at, errors).into_iter().collect(),
                    Err(e) => {
                        errors.push(at, format!("cannot read `{path}`: {e}"));
                        Vec::new()
                    }
                }
            }
        };

        let mut algorithms = 0u16;
        match &section.algorithms {
            Some(list) => {
                if list.is_empty() {
                    errors.push(at.key("algorithms"), "must name at least one algorithm");
                }
                for (i, name) in list.iter().enumerate() {
                    match Alg::parse(name) {
                        Some(a) => algorithms |= a.bit(),
                        None => errors.push(at.index("algorithms", i), refused_algorithm(name)),
                    }
                }
            }
            // By default, every algorithm one of the keys can check.
            None => {
                for a in Alg::ALL {
                    if keys
                        .iter()
                        .any(|k| a.fits(&k.material) && k.alg.is_none_or(|p| p == a))
                    {
                        algorithms |= a.bit();
                    }
                }
            }
        }

        let usable = keys.iter().any(|k| {
            Alg::ALL.into_iter().any(|a| {
                algorithms & a.bit() != 0 && a.fits(&k.material) && k.alg.is_none_or(|p| p == a)
            })
        });
        if !keys.is_empty() && algorithms != 0 && !usable {
            let types: Vec<&str> = keys.iter().map(|k| k.material.kind()).collect();
            errors.push(
                at.key("algorithms"),
                format!(
                    "no key can check any of these algorithms (the keys are {})",
                    types.join(", ")
                ),
            );
        }

        let mut text = |key: &str, v: &Option<String>| match v {
            Some(s) if s.is_empty() => {
                errors.push(
                    at.key(key),
                    "must not be empty (leave it out to not check it)",
                );
                None
            }
            Some(s) => Some(Box::<str>::from(s.as_str())),
            None => None,
        };
        let issuer = text("issuer", &section.issuer);
        let audience = text("audience", &section.audience);

        let leeway = section
            .leeway
            .map(|d| d.0)
            .or(fallback_leeway)
            .unwrap_or(DEFAULT_LEEWAY);
        if leeway > Duration::from_secs(300) {
            errors.push(
                at.key("leeway"),
                "must be at most 5m: it lets an expired token through for that long",
            );
        }

        if errors.len() > before {
            return None;
        }
        Some(Verifier {
            keys: keys.into_boxed_slice(),
            algorithms,
            issuer,
            audience,
            leeway,
            verified: VerifiedTokens::new(),
        })
    }

    /// The allowed algorithms' names, for `explain` and logs.
    pub fn algorithms(&self) -> impl Iterator<Item = &'static str> + '_ {
        Alg::ALL
            .into_iter()
            .filter(|a| self.algorithms & a.bit() != 0)
            .map(Alg::name)
    }

    /// The issuer required, if any.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// Verifies a compact JWS (without the `Bearer ` prefix). A token verified before is not
    /// checked against the keys again, only its claims against `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Arc<Claims>, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        if let Some(known) = self.verified.0.get(&id) {
            return match self.check_claims(&known.claims, now) {
                Ok(()) => Ok(known.claims),
                Err(e) => {
                    // Past its `exp` (+ leeway) it never passes again: no need to keep it.
                    if e == JwtError::Expired {
                        self.verified.0.remove(&id);
                    }
                    Err(e)
                }
            };
        }
        let claims = Arc::new(self.verify_signed(token)?);
        let checked = self.check_claims(&claims, now);
        // Remembered once its signature verified, unless it is already expired for good: a
        // token early for its `nbf` becomes valid later, one refused for its issuer or
        // audience stays refused cheaply, and the claims are checked again on each use.
        if checked != Err(JwtError::Expired) {
            self.verified.0.insert(
                id,
                Verified {
                    claims: claims.clone(),
                    weight: verified_weight(token.len()),
                },
            );
        }
        checked?;
        Ok(claims)
    }

    /// The token's claims if its header and signature verify against the keys (not its claims).
    fn verify_signed(&self, token: &str) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header = URL_SAFE_NO_PAD
            .decode(h64)
            .map_err(|_| JwtError::Malformed)?;
        let header: Header = serde_json::from_slice(&header).map_err(|_| JwtError::Malformed)?;
        if header.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        let alg = Alg::parse(&header.alg).ok_or(JwtError::Algorithm)?;
        if self.algorithms & alg.bit() == 0 {
            return Err(JwtError::Algorithm);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s64)
            .map_err(|_| JwtError::Malformed)?;
        // The signing input is the two first parts as sent, with their dot.
        let message = &token.as_bytes()[..h64.len() + 1 + p64.len()];

        let fits = |k: &&Key| alg.fits(&k.material) && k.alg.is_none_or(|p| p == alg);
        let verified = match &header.kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                    .peekable();
                if named.peek().is_none() {
                    return Err(JwtError::UnknownKey);
                }
                let mut fitting = named.filter(fits).peekable();
                if fitting.peek().is_none() {
                    // The kid names a key of another type: the token picked the wrong algorithm.
                    return Err(JwtError::Algorithm);
                }
                fitting
                    .take(MAX_KEYS_TRIED)
                    .any(|k| k.material.verify(alg, message, &sig))
            }
            None => {
                let mut fitting = self.keys.iter().filter(fits).peekable();
                if fitting.peek().is_none() {
                    return Err(JwtError::UnknownKey);
                }
                fitting
                    .take(MAX_KEYS_TRIED)
                    .any(|k| k.material.verify(alg, message, &sig))
            }
        };
        if !verified {
            return Err(JwtError::Signature);
        }

        // Only a signed payload is parsed: nothing an attacker sends unsigned reaches serde.
        let payload = URL_SAFE_NO_PAD
            .decode(p64)
            .map_err(|_| JwtError::Malformed)?;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed)?;
        Ok(Claims { map })
    }

    fn check_claims(&self, claims: &Claims, now: SystemTime) -> Result<(), JwtError> {
        if let Some(exp) = claims.map.get("exp") {
            let exp = numeric_date(exp).ok_or(JwtError::Malformed)?;
            // Valid while now < exp + leeway (RFC 7519 §4.1.4: "on or after" is expired).
            if now >= exp.checked_add(self.leeway).unwrap_or(exp) {
                return Err(JwtError::Expired);
            }
        }
        if let Some(nbf) = claims.map.get("nbf") {
            let nbf = numeric_date(nbf).ok_or(JwtError::Malformed)?;
            if now.checked_add(self.leeway).unwrap_or(now) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        if let Some(iss) = &self.issuer {
            if claims.issuer() != Some(iss) {
                return Err(JwtError::Issuer);
            }
        }
        if let Some(aud) = &self.audience {
            let ok = match claims.map.get("aud") {
                Some(serde_json::Value::String(s)) => s == &**aud,
                Some(serde_json::Value::Array(list)) => {
                    list.iter().any(|v| v.as_str() == Some(&**aud))
                }
                _ => false,
            };
            if !ok {
                return Err(JwtError::Audience);
            }
        }
        Ok(())
    }
}

/// Why an algorithm name in `algorithms` is refused.
fn refused_algorithm(name: &str) -> String {
    let names: Vec<&str> = Alg::ALL.iter().map(|a| a.name()).collect();
    let why = if name.eq_ignore_ascii_case("none") {
        "`none` means an unsigned token and is never accepted".to_owned()
    } else if name.len() >= 2 && name[..2].eq_ignore_ascii_case("HS") {
        format!(
            "`{name}` is a shared-secret MAC; zkgate verifies public-key signatures only, \
             so a public key can never be used as an HMAC secret"
        )
    } else {
        format!("unknown algorithm `{name}`")
    };
    format!("{why} (use {})", names.join(", "))
}

/// One JWK as read (RFC 7517 §4, RFC 7518 §6).
#[derive(Deserialize)]
struct Jwk {
    #[serde(default)]
    kty: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<serde_json::Value>,
}

/// The verification keys of a JWKS document. Keys meant for encryption (`use: enc`) and key
/// types zkgate does not verify with are skipped, as RFC 7517 §5 asks; a symmetric (`oct`)
/// key is an error, since a JWKS is published and its secret would be public.
fn parse_jwks(text: &str, at: &At, errors: &mut ConfigErrors) -> Vec<Key> {
    let jwks: Jwks = match serde_json::from_str(text) {
        Ok(j) => j,
        Err(e) => {
            errors.push(
                at.clone(),
                format!("not a JWKS document (a JSON object with a `keys` list): {e}"),
            );
            return Vec::new();
        }
    };
    let before = errors.len();
    let mut keys = Vec::new();
    for (i, value) in jwks.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(k) => k,
            Err(e) => {
                errors.push(at.clone(), format!("keys[{i}]: {e}"));
                continue;
            }
        };
        let name = match &jwk.kid {
            Some(kid) => format!("keys[{i}] (kid `{kid}`)"),
            None => format!("keys[{i}]"),
        };
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let alg = match jwk.alg.as_deref() {
            None => None,
            Some(a) => match Alg::parse(a) {
                Some(a) => Some(a),
                None if a.starts_with("HS") || a == "none" => {
                    errors.push(at.clone(), format!("{name}: {}", refused_algorithm(a)));
                    continue;
                }
                // An algorithm for another purpose (RSA-OAEP...): not a signing key.
                None => continue,
            },
        };
        let material = match jwk_material(&jwk) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                errors.push(at.clone(), format!("{name}: {e}"));
                continue;
            }
        };
        if let Some(a) = alg {
            if !a.fits(&material) {
                errors.push(
                    at.clone(),
                    format!(
                        "{name}: `alg: {}` does not fit a {} key",
                        a.name(),
                        material.kind()
                    ),
                );
                continue;
            }
        }
        keys.push(Key {
            kid: jwk.kid.map(Into::into),
            alg,
            material,
        });
    }
    if keys.len() > MAX_KEYS {
        errors.push(
            at.clone(),
            format!("holds {} signing keys: at most {MAX_KEYS}", keys.len()),
        );
    }
    if keys.is_empty() && errors.len() == before {
        errors.push(
            at.clone(),
            "holds no usable signing key (RSA, EC P-256/P-384 or Ed25519 with `use: sig` or no `use`)",
        );
    }
    keys
}

fn b64(field: &str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let v = v.as_deref().ok_or_else(|| format!("has no `{field}`"))?;
    JWK_B64
        .decode(v)
        .map_err(|e| format!("`{field}` is not base64url: {e}"))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// `Ok(None)`: a key type zkgate does not verify with.
fn jwk_material(jwk: &Jwk) -> Result<Option<KeyMaterial>, String> {
    match jwk.kty.as_deref() {
        Some("RSA") => {
            let n = b64("n", &jwk.n)?;
            let e = b64("e", &jwk.e)?;
            rsa_material(&n, &e).map(Some)
        }
        Some("EC") => {
            let x = b64("x", &jwk.x)?;
            let y = b64("y", &jwk.y)?;
            let (len, p384) = match jwk.crv.as_deref() {
                Some("P-256") => (32, false),
                Some("P-384") => (48, true),
                Some(other) => return Err(format!("curve `{other}` is not supported (P-256, P-384)")),
                None => return Err("has no `crv`".into()),
            };
            if x.len() != len || y.len() != len {
                return Err(format!("`x` and `y` must be {len} bytes each"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let point = point.into_boxed_slice();
            Ok(Some(if p384 {
                KeyMaterial::EcP384(point)
            } else {
                KeyMaterial::EcP256(point)
            }))
        }
        Some("OKP") => match jwk.crv.as_deref() {
            Some("Ed25519") => {
                let x = b64("x", &jwk.x)?;
                if x.len() != 32 {
                    return Err("an Ed25519 `x` must be 32 bytes".into());
                }
                Ok(Some(KeyMaterial::Ed25519(x.into_boxed_slice())))
            }
            // X25519 and friends are key-agreement keys.
            _ => Ok(None),
        },
        Some("oct") => Err(
            "is a symmetric (`oct`) key: a JWKS is public, so its secret would be too; HS* is never accepted"
                .into(),
        ),
        Some(_) => Ok(None),
        None => Err("has no `kty`".into()),
    }
}

fn rsa_material(n: &[u8], e: &[u8]) -> Result<KeyMaterial, String> {
    let n = strip_zeros(n);
    let e = strip_zeros(e);
    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    if !(2048..=8192).contains(&bits) {
        return Err(format!(
            "an RSA modulus of {bits} bits: 2048 to 8192 bits are accepted"
        ));
    }
    if e.is_empty() || e.len() > 4 {
        return Err("the RSA exponent is out of range".into());
    }
    Ok(KeyMaterial::Rsa {
        n: n.into(),
        e: e.into(),
    })
}

/// The key of a PEM file: a `PUBLIC KEY` (SubjectPublicKeyInfo) or a `CERTIFICATE` whose key is
/// used. The first block that is one of those is taken.
fn parse_pem(text: &str, at: &At, errors: &mut ConfigErrors) -> Option<Key> {
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;

    let mut rest = text.as_bytes();
    let mut labels = Vec::new();
    while !rest.is_empty() {
        let Ok((next, pem)) = x509_parser::pem::parse_x509_pem(rest) else {
            break;
        };
        rest = next;
        let material = match pem.label.as_str() {
            "PUBLIC KEY" => match SubjectPublicKeyInfo::from_der(&pem.contents) {
                Ok((_, spki)) => spki_material(&spki),
                Err(e) => Err(format!("the PUBLIC KEY block does not parse: {e}")),
            },
            "CERTIFICATE" => match x509_parser::parse_x509_certificate(&pem.contents) {
                Ok((_, cert)) => spki_material(cert.public_key()),
                Err(e) => Err(format!("the CERTIFICATE block does not parse: {e}")),
            },
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => Err(
                "holds a private key: give the public key (`openssl pkey -pubout`), the gateway needs no secret"
                    .into(),
            ),
            other => {
                labels.push(other.to_owned());
                continue;
            }
        };
        return match material {
            Ok(material) => Some(Key {
                kid: None,
                alg: None,
                material,
            }),
            Err(e) => {
                errors.push(at.clone(), e);
                None
            }
        };
    }
    errors.push(
        at.clone(),
        if labels.is_empty() {
            "holds no PEM block (expected `-----BEGIN PUBLIC KEY-----` or a certificate)".to_owned()
        } else {
            format!(
                "holds no public key or certificate (found {})",
                labels.join(", ")
            )
        },
    );
    None
}

fn spki_material(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<KeyMaterial, String> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    };
    use x509_parser::public_key::PublicKey;

    let oid = &spki.algorithm.algorithm;
    let data: &[u8] = &spki.subject_public_key.data;
    if *oid == OID_SIG_ED25519 {
        if data.len() != 32 {
            return Err("an Ed25519 key must be 32 bytes".into());
        }
        return Ok(KeyMaterial::Ed25519(data.into()));
    }
    if *oid == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(PublicKey::RSA(k)) => rsa_material(k.modulus, k.exponent),
            _ => Err("the RSA key does not parse".into()),
        };
    }
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 && data.len() == 65 && data[0] == 4 => {
                Ok(KeyMaterial::EcP256(data.into()))
            }
            Some(c) if c == OID_NIST_EC_P384 && data.len() == 97 && data[0] == 4 => {
                Ok(KeyMaterial::EcP384(data.into()))
            }
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => {
                Err("the EC point must be uncompressed".into())
            }
            _ => Err("the EC curve is not supported (P-256, P-384)".into()),
        };
    }
    Err(format!(
        "a key of algorithm {oid} is not supported (RSA, EC P-256/P-384, Ed25519)"
    ))
}

#[cfg(test)]
pub(crate) mod testkit;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testkit::Keys;
    use super::*;

    // RFC 7515 Appendix A.2 (RS256) and A.3 (ES256), the keys and tokens as the RFC prints them:
    // known answers from outside this code base.
    const RFC_RSA_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    const RFC_RS256: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
    const RFC_EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const RFC_EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const RFC_ES256: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    /// The RFC tokens' `exp`.
    const RFC_EXP: u64 = 1_300_819_380;

    fn at_secs(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn section(jwks: Option<String>, key: Option<String>) -> JwtSection {
        JwtSection {
            jwks_file: jwks,
            key_file: key,
            issuer: None,
            audience: None,
            leeway: None,
            algorithms: None,
        }
    }

    fn build(s: &JwtSection) -> Result<Verifier, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let v = Verifier::build(s, &At::new("auth.jwt"), &mut errors);
        match v {
            Some(v) if errors.is_empty() => Ok(v),
            _ => Err(errors),
        }
    }

    fn jwks_verifier(dir: &tempfile::TempDir, keys: serde_json::Value) -> Verifier {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
        build(&section(Some(path.display().to_string()), None)).unwrap()
    }

    #[test]
    fn rfc_7515_a2_rs256_and_a3_es256_verify() {
        let dir = tempfile::tempdir().unwrap();
        let rsa = jwks_verifier(&dir, json!([{"kty": "RSA", "n": RFC_RSA_N, "e": "AQAB"}]));
        let ec = jwks_verifier(
            &dir,
            json!([{"kty": "EC", "crv": "P-256", "x": RFC_EC_X, "y": RFC_EC_Y}]),
        );
        let now = at_secs(RFC_EXP - 100);
        let claims = rsa.verify(RFC_RS256, now).unwrap();
        assert_eq!(claims.get("iss").unwrap(), "joe");
        // A claim whose name holds dots is found as written.
        assert_eq!(claims.get("http://example.com/is_root").unwrap(), true);
        assert_eq!(claims.expires(), Some(at_secs(RFC_EXP)));
        assert_eq!(
            ec.verify(RFC_ES256, now).unwrap().get("iss").unwrap(),
            "joe"
        );
        // Each against the other's key: by default only the algorithms the keys can check
        // are allowed.
        assert_eq!(rsa.verify(RFC_ES256, now).unwrap_err(), JwtError::Algorithm);
        assert_eq!(ec.verify(RFC_RS256, now).unwrap_err(), JwtError::Algorithm);
        // The RFC tokens expired in 2011.
        assert_eq!(
            rsa.verify(RFC_RS256, SystemTime::now()).unwrap_err(),
            JwtError::Expired
        );
    }

    /// One character changed anywhere (header, payload, signature) and the token is refused.
    #[test]
    fn tampered_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rsa = jwks_verifier(&dir, json!([{"kty": "RSA", "n": RFC_RSA_N, "e": "AQAB"}]));
        let ec = jwks_verifier(
            &dir,
            json!([{"kty": "EC", "crv": "P-256", "x": RFC_EC_X, "y": RFC_EC_Y}]),
        );
        let now = at_secs(RFC_EXP - 100);
        for (token, v) in [(RFC_RS256, &rsa), (RFC_ES256, &ec)] {
            let (h, rest) = token.split_once('.').unwrap();
            let (p, s) = rest.split_once('.').unwrap();
            for i in 0..token.len() {
                if token.as_bytes()[i] == b'.' {
                    continue;
                }
                let mut b = token.as_bytes().to_vec();
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                let t = String::from_utf8(b).unwrap();
                assert!(v.verify(&t, now).is_err(), "byte {i} of {token}");
            }
            // The payload of another token with this signature.
            let forged = format!(
                "{h}.{}.{s}",
                URL_SAFE_NO_PAD.encode(br#"{"iss":"joe","exp":9999999999,"admin":true}"#)
            );
            assert_eq!(v.verify(&forged, now).unwrap_err(), JwtError::Signature);
            // The signature left out or doubled.
            assert!(v.verify(&format!("{h}.{p}."), now).is_err());
            assert!(v.verify(&format!("{h}.{p}"), now).is_err());
            assert!(v.verify(&format!("{h}.{p}.{s}.{s}"), now).is_err());
        }
    }

    /// A token is checked against the keys once: its second use gets the same claims without
    /// a signature check, at any time before its `exp` (+ leeway), and not after.
    #[test]
    fn a_verified_token_is_remembered_and_still_expires() {
        let dir = tempfile::tempdir().unwrap();
        let v = jwks_verifier(&dir, json!([{"kty": "RSA", "n": RFC_RSA_N, "e": "AQAB"}]));
        let first = v.verify(RFC_RS256, at_secs(RFC_EXP - 100)).unwrap();
        let again = v.verify(RFC_RS256, at_secs(RFC_EXP + 29)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second use is not verified again"
        );
        assert_eq!(v.verified.0.len(), 1);
        assert_eq!(
            v.verify(RFC_RS256, at_secs(RFC_EXP + 30)).unwrap_err(),
            JwtError::Expired,
            "the leeway ends where a cold verify would end it"
        );
        assert_eq!(v.verified.0.len(), 0, "an expired token is forgotten");
        assert_eq!(
            v.verify(RFC_RS256, at_secs(RFC_EXP + 60)).unwrap_err(),
            JwtError::Expired
        );
        assert_eq!(
            v.verified.0.len(),
            0,
            "nor remembered when first seen expired"
        );
        // A copy with one signature byte changed is another token, checked on its own.
        v.verify(RFC_RS256, at_secs(RFC_EXP - 100)).unwrap();
        let mut forged = RFC_RS256.as_bytes().to_vec();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            v.verify(&forged, at_secs(RFC_EXP - 100)).unwrap_err(),
            JwtError::Signature
        );
    }

    /// The remembered tokens belong to the verifier: a reload that reads a changed JWKS builds
    /// another, which checks every token against its own keys.
    #[test]
    fn a_changed_jwks_forgets_what_the_old_keys_verified() {
        let dir = tempfile::tempdir().unwrap();
        let now = at_secs(RFC_EXP - 100);
        let old = jwks_verifier(&dir, json!([{"kty": "RSA", "n": RFC_RSA_N, "e": "AQAB"}]));
        old.verify(RFC_RS256, now).unwrap();
        let new = jwks_verifier(
            &dir,
            json!([{"kty": "EC", "crv": "P-256", "x": RFC_EC_X, "y": RFC_EC_Y}]),
        );
        assert!(new.verify(RFC_RS256, now).is_err());
        assert!(new.verify(RFC_ES256, now).is_ok());
    }

    /// However many tokens verify, the remembered ones stay within their byte bound.
    #[test]
    fn the_remembered_tokens_are_bounded() {
        let cache = VerifiedTokens::new();
        let claims = Arc::new(Claims {
            map: serde_json::Map::new(),
        });
        let n = 4 * (VERIFIED_BYTES / u64::from(verified_weight(1000)));
        for i in 0..n {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_le_bytes());
            let verified = Verified {
                claims: claims.clone(),
                weight: verified_weight(1000),
            };
            cache.0.insert(id, verified);
        }
        assert!(cache.0.weight() <= VERIFIED_BYTES, "{}", cache.0.weight());
        assert!((cache.0.len() as u64) < n);
        assert!(cache.0.len() > 100, "{}", cache.0.len());
    }

    /// `none`, HS256 over a JWKS RSA key (the classic confusion: the public key used as the
    /// HMAC secret) and names not on the allow-list are refused before any key is tried.
    #[test]
    fn algorithm_confusion_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rsa = jwks_verifier(
            &dir,
            json!([{"kty": "RSA", "kid": "k", "n": RFC_RSA_N, "e": "AQAB"}]),
        );
        let now = at_secs(RFC_EXP - 100);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"joe","sub":"mallory"}"#);
        for alg in [
            "none", "None", "HS256", "HS384", "HS512", "rs256", "ES512", "",
        ] {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": "k"}).to_string());
            let input = format!("{header}.{payload}");
            // Sign with HMAC keyed by the RSA modulus bytes, as a confused verifier would check.
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, RFC_RSA_N.as_bytes());
            let tag = ring::hmac::sign(&key, input.as_bytes());
            for sig in [String::new(), URL_SAFE_NO_PAD.encode(tag.as_ref())] {
                assert_eq!(
                    rsa.verify(&format!("{input}.{sig}"), now).unwrap_err(),
                    JwtError::Algorithm,
                    "{alg}"
                );
            }
        }
        // A header without `alg`, or with `crit`, is malformed.
        let h = URL_SAFE_NO_PAD.encode(br#"{"kid":"k"}"#);
        assert_eq!(
            rsa.verify(&format!("{h}.{payload}.AAAA"), now).unwrap_err(),
            JwtError::Malformed
        );
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","crit":["b64"],"b64":false}"#);
        assert_eq!(
            rsa.verify(&format!("{h}.{payload}.AAAA"), now).unwrap_err(),
            JwtError::Malformed
        );
    }

    #[test]
    fn config_refuses_none_hs_and_unknown_algorithms() {
        let keys = Keys::new();
        let mut s = section(None, Some(keys.pub_pem("rsa")));
        s.algorithms = Some(vec![
            "RS256".into(),
            "none".into(),
            "HS256".into(),
            "RS999".into(),
        ]);
        let errors = build(&s).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("auth.jwt.algorithms[1]: `none`"), "{text}");
        assert!(
            text.contains("auth.jwt.algorithms[2]: `HS256` is a shared-secret MAC"),
            "{text}"
        );
        assert!(
            text.contains("auth.jwt.algorithms[3]: unknown algorithm `RS999`"),
            "{text}"
        );
        assert_eq!(errors.len(), 3);
        // Algorithms no key can check.
        s.algorithms = Some(vec!["ES256".into()]);
        let text = build(&s).unwrap_err().to_string();
        assert!(
            text.contains("auth.jwt.algorithms: no key can check"),
            "{text}"
        );
        s.algorithms = Some(vec![]);
        assert!(build(&s).is_err());
    }

    #[test]
    fn every_algorithm_verifies_openssl_signatures_by_kid() {
        let keys = Keys::new();
        let jwks = keys.jwks_file(
            "jwks.json",
            &[
                keys.jwk("rsa", "r1"),
                keys.jwk("rsa2", "r2"),
                keys.jwk("ec", "e1"),
                keys.jwk("ec384", "e2"),
                keys.jwk("ed", "d1"),
            ],
        );
        let v = build(&section(Some(jwks), None)).unwrap();
        assert_eq!(
            v.algorithms().collect::<Vec<_>>(),
            ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
        );
        let now = SystemTime::now();
        let claims = json!({"sub": "alice", "exp": 4_000_000_000u64});
        for (key, kid, alg) in [
            ("rsa", "r1", "RS256"),
            ("rsa2", "r2", "RS256"),
            ("rsa", "r1", "RS384"),
            ("rsa", "r1", "RS512"),
            ("rsa", "r1", "PS256"),
            ("rsa", "r1", "PS384"),
            ("rsa2", "r2", "PS512"),
            ("ec", "e1", "ES256"),
            ("ec384", "e2", "ES384"),
            ("ed", "d1", "EdDSA"),
        ] {
            let token = keys.sign(key, &json!({"alg": alg, "kid": kid}), &claims);
            let c = v
                .verify(&token, now)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(c.get("sub").unwrap(), "alice");
            // Without a kid, the keys that fit the algorithm are tried.
            let token = keys.sign(key, &json!({"alg": alg}), &claims);
            assert!(v.verify(&token, now).is_ok(), "{alg} without kid");
        }
        // Signed by rsa, naming rsa2's kid: the signature does not hold.
        let token = keys.sign("rsa", &json!({"alg": "RS256", "kid": "r2"}), &claims);
        assert_eq!(v.verify(&token, now).unwrap_err(), JwtError::Signature);
        // An unknown kid.
        let token = keys.sign("rsa", &json!({"alg": "RS256", "kid": "r9"}), &claims);
        assert_eq!(v.verify(&token, now).unwrap_err(), JwtError::UnknownKey);
        // The kid of an EC key with an RSA algorithm.
        let token = keys.sign("rsa", &json!({"alg": "RS256", "kid": "e1"}), &claims);
        assert_eq!(v.verify(&token, now).unwrap_err(), JwtError::Algorithm);
    }

    #[test]
    fn a_pem_public_key_or_certificate_is_the_alternative() {
        let keys = Keys::new();
        let now = SystemTime::now();
        let claims = json!({"sub": "bob"});
        for (name, alg) in [
            ("rsa", "PS256"),
            ("ec", "ES256"),
            ("ec384", "ES384"),
            ("ed", "EdDSA"),
        ] {
            let v = build(&section(None, Some(keys.pub_pem(name)))).unwrap();
            let token = keys.sign(name, &json!({"alg": alg}), &claims);
            assert!(v.verify(&token, now).is_ok(), "{name}");
            // Another key's signature.
            let other = if name == "rsa" { "rsa2" } else { "rsa" };
            let alg2 = if other == "rsa" { "RS256" } else { "PS256" };
            let token = keys.sign(other, &json!({"alg": alg2}), &claims);
            assert!(v.verify(&token, now).is_err(), "{name}");
        }
        // A certificate's key.
        let d = keys.dir.path();
        let ok = std::process::Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-key", "ec.pem", "-subj", "/CN=idp", "-days", "2", "-out",
                "cert.pem",
            ])
            .current_dir(d)
            .status()
            .unwrap();
        assert!(ok.success());
        let v = build(&section(
            None,
            Some(keys.path("cert.pem").display().to_string()),
        ))
        .unwrap();
        let token = keys.sign("ec", &json!({"alg": "ES256"}), &claims);
        assert!(v.verify(&token, now).is_ok());
        // A private key is refused, with the way out.
        let text = build(&section(
            None,
            Some(keys.path("ec.pem").display().to_string()),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            text.starts_with("auth.jwt.key_file: holds a private key"),
            "{text}"
        );
    }

    #[test]
    fn unusable_key_files_are_located_errors() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let cases = [
            (section(None, None), "auth.jwt: needs `jwks_file`"),
            (
                section(Some("/nonexistent/jwks.json".into()), None),
                "auth.jwt.jwks_file: cannot read `/nonexistent/jwks.json`",
            ),
            (section(Some(write("a", "not json")), None), "auth.jwt.jwks_file: not a JWKS document"),
            (section(Some(write("b", r#"{"keys":[]}"#)), None), "auth.jwt.jwks_file: holds no usable signing key"),
            (
                section(Some(write("c", r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#)), None),
                "auth.jwt.jwks_file: keys[0]: is a symmetric (`oct`) key",
            ),
            (
                section(Some(write("d", &json!({"keys":[{"kty":"RSA","use":"enc","n":RFC_RSA_N,"e":"AQAB"}]}).to_string())), None),
                "holds no usable signing key",
            ),
            (
                section(Some(write("e", &json!({"keys":[{"kty":"RSA","kid":"small","n":URL_SAFE_NO_PAD.encode([0xc5u8; 128]),"e":"AQAB"}]}).to_string())), None),
                "keys[0] (kid `small`): an RSA modulus of 1024 bits",
            ),
            (
                section(Some(write("f", &json!({"keys":[{"kty":"EC","crv":"P-256","x":RFC_EC_X}]}).to_string())), None),
                "keys[0]: has no `y`",
            ),
            (
                section(Some(write("g", &json!({"keys":[{"kty":"RSA","alg":"HS256","n":RFC_RSA_N,"e":"AQAB"}]}).to_string())), None),
                "keys[0]: `HS256` is a shared-secret MAC",
            ),
            (
                section(Some(write("h", &json!({"keys":[{"kty":"EC","alg":"RS256","crv":"P-256","x":RFC_EC_X,"y":RFC_EC_Y}]}).to_string())), None),
                "`alg: RS256` does not fit a EC P-256 key",
            ),
            (section(None, Some(write("i", "hello"))), "auth.jwt.key_file: holds no PEM block"),
            (
                section(Some(write("j", r#"{"keys":[]}"#)), Some(write("k", ""))),
                "auth.jwt.key_file: give either",
            ),
        ];
        for (s, want) in cases {
            let text = build(&s).unwrap_err().to_string();
            assert!(text.contains(want), "want {want:?} in {text:?}");
        }
        let mut s = section(
            Some(write(
                "l",
                &json!({"keys":[{"kty":"RSA","n":RFC_RSA_N,"e":"AQAB"}]}).to_string(),
            )),
            None,
        );
        s.issuer = Some(String::new());
        s.leeway = Some(Dur(Duration::from_secs(3600)));
        let text = build(&s).unwrap_err().to_string();
        assert!(
            text.contains("auth.jwt.issuer: must not be empty"),
            "{text}"
        );
        assert!(
            text.contains("auth.jwt.leeway: must be at most 5m"),
            "{text}"
        );
    }

    /// A token cannot make a request cost many signature checks, nor a JWKS hold too many keys.
    #[test]
    fn keys_tried_per_token_and_keys_per_jwks_are_bounded() {
        let keys = Keys::new();
        let unnamed = |name: &str| {
            let mut k = keys.jwk(name, "x");
            k.as_object_mut().unwrap().remove("kid");
            k
        };
        let token = keys.sign("rsa", &json!({"alg": "RS256"}), &json!({"sub": "a"}));
        let now = SystemTime::now();
        let mut set = vec![unnamed("rsa2"); MAX_KEYS_TRIED - 1];
        set.push(unnamed("rsa"));
        let v = build(&section(Some(keys.jwks_file("a.json", &set)), None)).unwrap();
        assert!(v.verify(&token, now).is_ok());
        set.insert(0, unnamed("rsa2"));
        let v = build(&section(Some(keys.jwks_file("b.json", &set)), None)).unwrap();
        assert_eq!(v.verify(&token, now).unwrap_err(), JwtError::Signature);
        let many = vec![unnamed("rsa"); MAX_KEYS + 1];
        let text = build(&section(Some(keys.jwks_file("c.json", &many)), None))
            .unwrap_err()
            .to_string();
        assert!(text.contains("holds 65 signing keys: at most 64"), "{text}");
    }

    /// exp, nbf, iss and aud on a controlled clock: the edges are where the leeway ends.
    #[test]
    fn claims_are_checked_at_their_edges() {
        let keys = Keys::new();
        let mut s = section(None, Some(keys.pub_pem("ec")));
        s.issuer = Some("https://sso.example.com".into());
        s.audience = Some("o2ims".into());
        s.leeway = Some(Dur(Duration::from_secs(30)));
        let v = build(&s).unwrap();
        let t = 2_000_000_000u64;
        let sign = |c: serde_json::Value| keys.sign("ec", &json!({"alg": "ES256"}), &c);
        let base =
            json!({"iss": "https://sso.example.com", "aud": "o2ims", "exp": t, "nbf": t - 100});
        let token = sign(base.clone());
        assert!(v.verify(&token, at_secs(t - 1)).is_ok());
        assert!(v.verify(&token, at_secs(t + 29)).is_ok());
        assert_eq!(
            v.verify(&token, at_secs(t + 30)).unwrap_err(),
            JwtError::Expired
        );
        assert!(v.verify(&token, at_secs(t - 130)).is_ok());
        assert_eq!(
            v.verify(&token, at_secs(t - 131)).unwrap_err(),
            JwtError::NotYetValid
        );

        let with = |k: &str, val: serde_json::Value| {
            let mut c = base.clone();
            c[k] = val;
            sign(c)
        };
        let now = at_secs(t - 10);
        assert_eq!(
            v.verify(&with("iss", json!("https://evil")), now)
                .unwrap_err(),
            JwtError::Issuer
        );
        assert_eq!(
            v.verify(&with("iss", json!(1)), now).unwrap_err(),
            JwtError::Issuer
        );
        assert_eq!(
            v.verify(&with("aud", json!("other")), now).unwrap_err(),
            JwtError::Audience
        );
        assert!(v
            .verify(&with("aud", json!(["other", "o2ims"])), now)
            .is_ok());
        assert_eq!(
            v.verify(&with("aud", json!(["other"])), now).unwrap_err(),
            JwtError::Audience
        );
        assert_eq!(
            v.verify(&with("exp", json!("soon")), now).unwrap_err(),
            JwtError::Malformed
        );
        assert_eq!(
            v.verify(&with("exp", json!(-5)), now).unwrap_err(),
            JwtError::Malformed
        );
        assert_eq!(
            v.verify(&with("nbf", json!(1e300)), now).unwrap_err(),
            JwtError::Malformed
        );
        // Fractional seconds are dates too.
        assert!(v.verify(&with("exp", json!(t as f64 + 0.5)), now).is_ok());
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(v.verify(&sign(c), now).unwrap_err(), JwtError::Audience);
        // No exp: valid, and no expiry to cap entries by.
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(v.verify(&sign(c), now).unwrap().expires(), None);
    }

    #[test]
    fn dotted_claim_paths_walk_objects() {
        let claims = Claims {
            map: json!({
                "realm_access": {"roles": ["o2ims-reader"]},
                "a.b": 1,
                "a": {"b": 2, "c": {"d": "deep"}},
                "s": "x"
            })
            .as_object()
            .unwrap()
            .clone(),
        };
        assert_eq!(
            claims.get("realm_access.roles").unwrap(),
            &json!(["o2ims-reader"])
        );
        assert_eq!(claims.get("a.b").unwrap(), 1);
        assert_eq!(claims.get("a.c.d").unwrap(), "deep");
        assert!(claims.get("a.c.d.e").is_none());
        assert!(claims.get("s.t").is_none());
        assert!(claims.get("missing.x").is_none());
        assert!(claims.get("").is_none());
    }

    /// No input panics: a seeded loop of mangled tokens, from a valid one and from noise. None of
    /// them verifies unless it is the valid token itself.
    #[test]
    fn mangled_tokens_never_panic_or_pass() {
        let keys = Keys::new();
        let v = build(&section(None, Some(keys.pub_pem("ec")))).unwrap();
        let good = keys.sign(
            "ec",
            &json!({"alg": "ES256"}),
            &json!({"sub": "a", "exp": 4_000_000_000u64}),
        );
        let now = SystemTime::now();
        assert!(v.verify(&good, now).is_ok());
        let pieces = [
            ".",
            "..",
            "=",
            "eyJ",
            "e30",
            "bnVsbA",
            "W10",
            "IiI",
            "eyJhbGciOiJFUzI1NiJ9",
            "\u{0}",
            "é",
            "%",
            "A",
            "eyJhbGciOiJub25lIn0",
            "eyJleHAiOjF9",
            "MTIz",
        ];
        let mut rng = fastrand::Rng::with_seed(14);
        for round in 0..20_000 {
            let mut t: Vec<u8> = if round % 4 == 0 {
                Vec::new()
            } else {
                good.as_bytes().to_vec()
            };
            for _ in 0..rng.usize(1..6) {
                match rng.u8(0..5) {
                    0 if !t.is_empty() => {
                        let i = rng.usize(..t.len());
                        t[i] = rng.u8(..);
                    }
                    1 if !t.is_empty() => t.truncate(rng.usize(..t.len())),
                    2 => {
                        let i = rng.usize(..=t.len());
                        let p = pieces[rng.usize(..pieces.len())].as_bytes();
                        t.splice(i..i, p.iter().copied());
                    }
                    3 if !t.is_empty() => {
                        let i = rng.usize(..t.len());
                        t.remove(i);
                    }
                    _ => t.extend(std::iter::repeat_n(b'A', rng.usize(..64))),
                }
            }
            let Ok(text) = std::str::from_utf8(&t) else {
                continue;
            };
            let r = v.verify(text, now);
            assert!(r.is_err() || text == good, "mangled token verified: {text}");
        }
        // Long and deep inputs.
        assert_eq!(
            v.verify(&"A".repeat(MAX_TOKEN_LEN + 1), now).unwrap_err(),
            JwtError::Malformed
        );
        let deep = URL_SAFE_NO_PAD.encode("[".repeat(5000));
        assert!(v.verify(&format!("{deep}.{deep}.{deep}"), now).is_err());
    }
}
