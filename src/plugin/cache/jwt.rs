//! JWS verification on *ring* (RS256, PS256, ES256, EdDSA) against a JWKS file or a PEM key,
//! with `exp`, `nbf`, `iss` and `aud` checked: what the cache scopes and the notification
//! callback trust a bearer token by.
//!
//! CONTRACT (issue 14): owned by T3. T5 uses `JwtSection` and `Verifier` for the callback.

use std::time::SystemTime;

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

/// A verified token's claims.
#[derive(Debug)]
pub struct Claims {
    pub map: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// A claim by name; a dotted name walks objects (`realm_access.roles`).
    pub fn get(&self, _name: &str) -> Option<&serde_json::Value> {
        todo!("T3")
    }

    pub fn expires(&self) -> Option<SystemTime> {
        todo!("T3")
    }
}

/// Verifies tokens against the configured keys.
#[derive(Debug)]
pub struct Verifier {}

impl Verifier {
    pub fn build(_section: &JwtSection, _at: &At, _errors: &mut ConfigErrors) -> Option<Verifier> {
        todo!("T3")
    }

    /// Verifies a compact JWS (without the `Bearer ` prefix).
    pub fn verify(&self, _token: &str, _now: SystemTime) -> Result<Claims, JwtError> {
        todo!("T3")
    }
}
