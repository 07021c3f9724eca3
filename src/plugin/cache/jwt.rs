//! JWS verification on *ring* (RS256, PS256, ES256, EdDSA) against a JWKS file or a PEM key,
//! with `exp`, `nbf`, `iss` and `aud` checked: what the cache scopes and the notification
//! callback trust a bearer token by.
//!
//! Only public-key algorithms are accepted. `none` is never accepted, and neither is HS*: a
//! shared-secret MAC verified with a public key is the classic algorithm-confusion forgery, and
//! a JWKS holds public keys only. The algorithm of a token must be on the configured allow-list
//! and must fit the type of the key its `kid` names, so a token cannot choose how it is checked.
//!
//! CONTRACT (issue 14): owned by T3. T5 uses `JwtSection` and `Verifier` for the callback.

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
    if !secs.is_finite() || secs < 0.0 || secs > 1e12 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs))
}

/// The longest token looked at: a header line is bounded by the listener anyway, and this
/// keeps the base64 and JSON work of a hostile token small.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// The largest JWKS or PEM file read.
const MAX_KEY_FILE: usize = 1024 * 1024;

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

    /// Verifies a compact JWS (without the `Bearer ` prefix).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
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
                fitting.any(|k| k.material.verify(alg, message, &sig))
            }
            None => {
                let mut fitting = self.keys.iter().filter(fits).peekable();
                if fitting.peek().is_none() {
                    return Err(JwtError::UnknownKey);
                }
                fitting.any(|k| k.material.verify(alg, message, &sig))
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
        let claims = Claims { map };
        self.check_claims(&claims, now)?;
        Ok(claims)
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
