//! Where a consistent-hash upstream takes its key from, read from the request without copying.

use std::net::IpAddr;

use http::header::{HeaderName, COOKIE};
use http::HeaderMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(HeaderName),
    Cookie(Box<str>),
    Query(Box<str>),
}

impl HashKey {
    pub fn parse(text: &str) -> Result<HashKey, String> {
        let (kind, arg) = match text.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (text, None),
        };
        let need = |what: &str| -> Result<&str, String> {
            arg.filter(|a| !a.is_empty())
                .ok_or_else(|| format!("`{kind}` needs a {what}: `{kind}:NAME`"))
        };
        match kind {
            "client_ip" if arg.is_none() => Ok(HashKey::ClientIp),
            "path" if arg.is_none() => Ok(HashKey::Path),
            "header" => HeaderName::from_bytes(need("header name")?.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("`{text}`: not a valid header name")),
            "cookie" => Ok(HashKey::Cookie(need("cookie name")?.into())),
            "query" => Ok(HashKey::Query(need("query parameter")?.into())),
            _ => Err(format!(
                "unknown hash key `{text}`, expected client_ip, path, header:NAME, cookie:NAME or query:NAME"
            )),
        }
    }

    /// The key's bytes, or `None` when the request does not carry it. `ip_buf` holds a client
    /// address' octets so that they can be borrowed.
    #[inline]
    pub fn extract<'a>(
        &self,
        client: Option<IpAddr>,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
        ip_buf: &'a mut [u8; 16],
    ) -> Option<&'a [u8]> {
        match self {
            HashKey::ClientIp => match client? {
                IpAddr::V4(v4) => {
                    ip_buf[..4].copy_from_slice(&v4.octets());
                    Some(&ip_buf[..4])
                }
                IpAddr::V6(v6) => {
                    *ip_buf = v6.octets();
                    Some(&ip_buf[..])
                }
            },
            HashKey::Path => Some(path.as_bytes()),
            HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            HashKey::Cookie(name) => headers
                .get_all(COOKIE)
                .iter()
                .find_map(|v| pair_value(v.as_bytes(), b';', name.as_bytes())),
            HashKey::Query(name) => pair_value(query?.as_bytes(), b'&', name.as_bytes()),
        }
    }
}

/// The key as written in config (`header:NAME`, ...), header names in lower case.
impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Path => f.write_str("path"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::Query(name) => write!(f, "query:{name}"),
        }
    }
}

/// The value of `name` in `a=1<sep> b=2`, spaces around pairs ignored.
fn pair_value<'a>(list: &'a [u8], sep: u8, name: &[u8]) -> Option<&'a [u8]> {
    list.split(|&b| b == sep).find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name).then(|| &pair[eq + 1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(HashKey::parse("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(
            HashKey::parse("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert!(HashKey::parse("cookie").is_err());
        assert!(HashKey::parse("header:bad name").is_err());
        assert!(HashKey::parse("client_ip:x").is_err());
        assert!(HashKey::parse("uri").is_err());
        for text in [
            "client_ip",
            "path",
            "header:x-user",
            "cookie:sid",
            "query:id",
        ] {
            assert_eq!(HashKey::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn extracts() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.append(COOKIE, "a=1; sid=abc ; z=".parse().unwrap());
        let mut buf = [0u8; 16];
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let k = |key: &str, buf: &mut [u8; 16]| {
            HashKey::parse(key)
                .unwrap()
                .extract(Some(ip), "/p", Some("q=1&user=bob"), &h, buf)
                .map(<[u8]>::to_vec)
        };
        assert_eq!(k("client_ip", &mut buf), Some(vec![10, 1, 2, 3]));
        assert_eq!(k("path", &mut buf), Some(b"/p".to_vec()));
        assert_eq!(k("header:x-user", &mut buf), Some(b"alice".to_vec()));
        assert_eq!(k("cookie:sid", &mut buf), Some(b"abc".to_vec()));
        assert_eq!(k("cookie:z", &mut buf), Some(b"".to_vec()));
        assert_eq!(k("cookie:nope", &mut buf), None);
        assert_eq!(k("query:user", &mut buf), Some(b"bob".to_vec()));
        assert_eq!(k("header:x-none", &mut buf), None);
    }
}
