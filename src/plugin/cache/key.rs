//! Cache keys: the framed bytes of the primary key (host, path, raw query, scope) and the
//! variance of the request headers a response varies on.
//!
//! CONTRACT (issue 14): owned by T2.

use pingora::http::RequestHeader;

/// Builds the keys of one route.
#[derive(Debug)]
pub struct KeyBuilder {}

impl KeyBuilder {
    /// Appends the primary key's bytes to `buf` (cleared first). `scope` is the 16-byte tag of
    /// the caller's scope, if the entry is scoped. GET and HEAD share a key.
    pub fn primary(
        &self,
        _host: &[u8],
        _path: &str,
        _query: Option<&str>,
        _scope: Option<&[u8; 16]>,
        _buf: &mut Vec<u8>,
    ) {
        todo!("T2")
    }

    /// The variance hash of `req` for a stored response that varies on `vary` (the names in
    /// its `Vary` header), plus the route's `key_headers`; `None` when neither names anything.
    pub fn variance(&self, _vary: &[&str], _req: &RequestHeader) -> Option<[u8; 16]> {
        todo!("T2")
    }
}
