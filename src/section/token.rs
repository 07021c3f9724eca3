//! A bearer token from config (the admin API's `admin.token`), kept only as a keyed hash so
//! that checking a presented one takes the same time whatever it holds.

use ring::hmac;

/// Tokens shorter than this are refused: a bearer token is the only thing between a local web
/// page, or anyone on the admin address, and draining every backend.
pub const MIN_TOKEN_LEN: usize = 16;

/// The configured admin token, kept as a keyed hash: checking a presented token compares two
/// MACs in constant time (`ring::hmac::verify`), so the time taken tells nothing about the
/// token, not even its length.
pub struct AdminToken {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl AdminToken {
    pub fn new(token: &str) -> Result<AdminToken, String> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces, to fit a bearer header".into());
        }
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| "no randomness available to key the token check".to_owned())?;
        let tag = hmac::sign(&key, token.as_bytes());
        Ok(AdminToken { key, tag })
    }

    pub fn verify(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(super::REDACTED)
    }
}
