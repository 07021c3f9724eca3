//! Cache keys: the framed bytes of the primary key (host, path, raw query, scope) and the
//! variance of the request headers a response varies on.
//!
//! Every part is written with its length first, so no choice of bytes in one part can pass
//! for another (`host=a.b path=/c` never collides with `host=a path=.b/c`). The query is kept
//! as the client sent it: O2 servers read `?all_fields`, `?all_fields=` and `?all_fields=true`
//! differently (notes §1.3), and a cache that rewrote the query would serve one for another.
//! GET and HEAD share a key because Pingora serves HEAD from a stored GET.

use http::HeaderName;
use pingora::http::RequestHeader;
use xxhash_rust::xxh3::Xxh3;

/// The version of the framing; bumped when the layout changes so old Redis entries miss.
const FRAMING: u8 = 1;

/// Which query parameters enter the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryKey {
    /// The whole query, byte for byte as sent.
    Keep,
    /// Only these parameters (by name, as sent), in the order the client sent them. The others
    /// must not reach the origin either, or they could change an answer the key ignores:
    /// [`KeyBuilder::upstream_query`] gives the query to send.
    Allow(Box<[Box<str>]>),
}

/// Builds the keys of one route.
#[derive(Debug)]
pub struct KeyBuilder {
    query: QueryKey,
    /// Request headers keyed besides the response's `Vary` (lowercase).
    key_headers: Box<[HeaderName]>,
    /// `/a/` and `/a` share a key: set by the `o2ims` profile, whose servers strip the
    /// trailing slash before routing (oran's `TrailingSlashStripper`, pti's `/{v}/`), so both
    /// answer the same document. A generic origin may not, so generic routes keep them apart.
    fold_trailing_slash: bool,
}

impl KeyBuilder {
    pub fn new(query: QueryKey, key_headers: Box<[HeaderName]>, fold_trailing_slash: bool) -> Self {
        KeyBuilder {
            query,
            key_headers,
            fold_trailing_slash,
        }
    }

    /// The query policy, for `explain`.
    pub fn query(&self) -> &QueryKey {
        &self.query
    }

    /// The headers keyed besides `Vary`.
    pub fn key_headers(&self) -> &[HeaderName] {
        &self.key_headers
    }

    /// Appends the primary key's bytes to `buf` (cleared first). `scope` is the 16-byte tag of
    /// the caller's scope, if the entry is scoped. GET and HEAD share a key. Allocates only
    /// when `buf` must grow, so a buffer kept per thread makes it allocation-free.
    pub fn primary(
        &self,
        host: &[u8],
        path: &str,
        query: Option<&str>,
        scope: Option<&[u8; 16]>,
        buf: &mut Vec<u8>,
    ) {
        buf.clear();
        buf.push(FRAMING);
        // The method class: every method that may use the cache reads the same entry.
        buf.push(b'G');
        put_len(buf, host.len());
        buf.extend(host.iter().map(u8::to_ascii_lowercase));
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let path = if self.fold_trailing_slash && path.len() > 1 {
            path.strip_suffix('/').unwrap_or(path)
        } else {
            path
        };
        put_len(buf, path.len());
        buf.extend_from_slice(path.as_bytes());
        // `/a?` and `/a` (and, with `allow`, `/a?utm=1`) ask the origin for the same thing.
        let query = query.filter(|q| match &self.query {
            QueryKey::Keep => !q.is_empty(),
            QueryKey::Allow(allow) => allowed(q, allow).next().is_some(),
        });
        match query {
            None => buf.push(0),
            Some(q) => {
                buf.push(1);
                match &self.query {
                    QueryKey::Keep => {
                        put_len(buf, q.len());
                        buf.extend_from_slice(q.as_bytes());
                    }
                    QueryKey::Allow(allow) => {
                        let at = buf.len();
                        put_len(buf, 0);
                        let start = buf.len();
                        for pair in allowed(q, allow) {
                            if buf.len() > start {
                                buf.push(b'&');
                            }
                            buf.extend_from_slice(pair.as_bytes());
                        }
                        let n = (buf.len() - start) as u32;
                        buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
                    }
                }
            }
        }
        match scope {
            None => buf.push(0),
            Some(tag) => {
                buf.push(1);
                buf.extend_from_slice(tag);
            }
        }
    }

    /// The query to send upstream: `None` to send it as received (`query: keep`, or nothing
    /// to strip), else the allowed parameters only, written into `out`.
    pub fn upstream_query<'o>(&self, query: &str, out: &'o mut String) -> Option<&'o str> {
        let QueryKey::Allow(allow) = &self.query else {
            return None;
        };
        if query
            .split('&')
            .all(|p| p.is_empty() || is_allowed(p, allow))
        {
            return None;
        }
        out.clear();
        for pair in allowed(query, allow) {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(pair);
        }
        Some(out)
    }

    /// The variance hash of `req` for a stored response that varies on `vary` (the names in
    /// its `Vary` header), plus the route's `key_headers`; `None` when neither names anything.
    pub fn variance(&self, vary: &[&str], req: &RequestHeader) -> Option<[u8; 16]> {
        let names = vary
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty());
        let mut h = Xxh3::new();
        let mut any = false;
        for name in names {
            any = true;
            hash_header(&mut h, name.as_bytes(), req.headers.get_all(name).iter());
        }
        for name in self.key_headers.iter() {
            any = true;
            hash_header(
                &mut h,
                name.as_str().as_bytes(),
                req.headers.get_all(name).iter(),
            );
        }
        any.then(|| h.digest128().to_le_bytes())
    }
}

fn put_len(buf: &mut Vec<u8>, n: usize) {
    buf.extend_from_slice(&(n.min(u32::MAX as usize) as u32).to_le_bytes());
}

/// The name, then each value framed, then an end mark: an absent header, an empty one and
/// two headers `a,b` vs one `a, b` all differ.
fn hash_header<'a>(h: &mut Xxh3, name: &[u8], values: impl Iterator<Item = &'a http::HeaderValue>) {
    h.update(&(name.len() as u32).to_le_bytes());
    for b in name {
        h.update(&[b.to_ascii_lowercase()]);
    }
    for v in values {
        h.update(&[1]);
        h.update(&(v.len() as u32).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.update(&[0]);
}

fn is_allowed(pair: &str, allow: &[Box<str>]) -> bool {
    let name = pair.split_once('=').map_or(pair, |(n, _)| n);
    allow.iter().any(|a| **a == *name)
}

fn allowed<'q>(query: &'q str, allow: &'q [Box<str>]) -> impl Iterator<Item = &'q str> {
    query
        .split('&')
        .filter(move |p| !p.is_empty() && is_allowed(p, allow))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep() -> KeyBuilder {
        KeyBuilder::new(QueryKey::Keep, Box::default(), false)
    }

    fn key(
        b: &KeyBuilder,
        host: &str,
        path: &str,
        q: Option<&str>,
        scope: Option<&[u8; 16]>,
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        b.primary(host.as_bytes(), path, q, scope, &mut buf);
        buf
    }

    #[test]
    fn the_three_all_fields_spellings_are_three_keys() {
        let b = keep();
        let p = "/o2ims-infrastructureInventory/v1/resourceTypes";
        let a = key(&b, "h", p, Some("all_fields"), None);
        let e = key(&b, "h", p, Some("all_fields="), None);
        let t = key(&b, "h", p, Some("all_fields=true"), None);
        assert_ne!(a, e);
        assert_ne!(a, t);
        assert_ne!(e, t);
        assert_ne!(a, key(&b, "h", p, None, None));
        assert_eq!(key(&b, "h", p, Some(""), None), key(&b, "h", p, None, None));
    }

    #[test]
    fn the_query_is_kept_as_sent() {
        let b = keep();
        assert_ne!(
            key(&b, "h", "/a", Some("x=1&y=2"), None),
            key(&b, "h", "/a", Some("y=2&x=1"), None)
        );
        assert_ne!(
            key(&b, "h", "/a", Some("x=%41"), None),
            key(&b, "h", "/a", Some("x=A"), None)
        );
    }

    #[test]
    fn framing_keeps_parts_apart() {
        let b = keep();
        assert_ne!(
            key(&b, "a.b", "/c", None, None),
            key(&b, "a", ".b/c", None, None)
        );
        assert_ne!(
            key(&b, "h", "/a", Some("b"), None),
            key(&b, "h", "/a", None, None)
        );
        assert_ne!(
            key(&b, "h", "/a&b", None, None),
            key(&b, "h", "/a", Some("b"), None)
        );
        assert_eq!(
            key(&b, "h", "/a?b", Some("b"), None),
            key(&b, "h", "/a", Some("b"), None)
        );
        let s1 = [1u8; 16];
        let s2 = [2u8; 16];
        assert_ne!(
            key(&b, "h", "/a", None, Some(&s1)),
            key(&b, "h", "/a", None, Some(&s2))
        );
        assert_ne!(
            key(&b, "h", "/a", None, Some(&s1)),
            key(&b, "h", "/a", None, None)
        );
    }

    #[test]
    fn the_host_is_case_blind() {
        let b = keep();
        assert_eq!(
            key(&b, "O2.Example.com", "/a", None, None),
            key(&b, "o2.example.com", "/a", None, None)
        );
        assert_ne!(
            key(&b, "o2.example.com", "/a", None, None),
            key(&b, "o3.example.com", "/a", None, None)
        );
    }

    #[test]
    fn trailing_slash_folds_only_when_told() {
        let b = keep();
        assert_ne!(
            key(&b, "h", "/a/", None, None),
            key(&b, "h", "/a", None, None)
        );
        let o2 = KeyBuilder::new(QueryKey::Keep, Box::default(), true);
        assert_eq!(
            key(&o2, "h", "/a/", None, None),
            key(&o2, "h", "/a", None, None)
        );
        assert_ne!(
            key(&o2, "h", "/", None, None),
            key(&o2, "h", "", None, None)
        );
    }

    #[test]
    fn allow_keys_only_listed_parameters_and_strips_the_rest_upstream() {
        let b = KeyBuilder::new(
            QueryKey::Allow(vec!["filter".into(), "fields".into()].into()),
            Box::default(),
            false,
        );
        let k1 = key(&b, "h", "/a", Some("filter=(eq,a,b)&utm=1"), None);
        let k2 = key(&b, "h", "/a", Some("utm=2&filter=(eq,a,b)"), None);
        assert_eq!(k1, k2);
        assert_ne!(k1, key(&b, "h", "/a", Some("filter=(eq,a,c)"), None));
        assert_eq!(
            key(&b, "h", "/a", Some("utm=1"), None),
            key(&b, "h", "/a", None, None)
        );
        let mut out = String::new();
        assert_eq!(
            b.upstream_query("filter=x&utm=1&fields=a", &mut out),
            Some("filter=x&fields=a")
        );
        assert_eq!(b.upstream_query("filter=x", &mut out), None);
        assert_eq!(keep().upstream_query("utm=1", &mut out), None);
    }

    #[test]
    fn variance_hashes_vary_and_key_headers() {
        let b = KeyBuilder::new(
            QueryKey::Keep,
            vec![HeaderName::from_static("accept")].into(),
            false,
        );
        let mut r1 = RequestHeader::build("GET", b"/", None).unwrap();
        r1.insert_header("accept-language", "fr").unwrap();
        r1.insert_header("accept", "application/json").unwrap();
        let mut r2 = RequestHeader::build("GET", b"/", None).unwrap();
        r2.insert_header("accept-language", "de").unwrap();
        r2.insert_header("accept", "application/json").unwrap();
        assert_ne!(
            b.variance(&["Accept-Language"], &r1),
            b.variance(&["Accept-Language"], &r2)
        );
        assert_eq!(b.variance(&[], &r1), b.variance(&[], &r2));
        assert!(b.variance(&[], &r1).is_some());
        let plain = keep();
        assert_eq!(plain.variance(&[], &r1), None);
        assert_eq!(plain.variance(&[" , "], &r1), None);
        let mut r3 = RequestHeader::build("GET", b"/", None).unwrap();
        r3.insert_header("accept-language", "").unwrap();
        let r4 = RequestHeader::build("GET", b"/", None).unwrap();
        assert_ne!(
            plain.variance(&["accept-language"], &r3),
            plain.variance(&["accept-language"], &r4)
        );
    }
}
