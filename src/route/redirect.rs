//! The `redirect` action: its YAML section, checked at build, and the `Location` it makes for a
//! request. What is fixed (scheme, a configured host, port) is joined once at build; a request
//! adds only its host (when not configured), its normalized path and its raw query.

use http::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::section::{At, ConfigErrors};

/// `redirect: { status, scheme, host, port, path, query }`, as nginx's
/// `return 301 https://$host$request_uri` or HAProxy's `redirect scheme https code 301`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedirectSection {
    /// 301 (default), 302, 303, 307 or 308; 307 and 308 make the client repeat the method and
    /// body (a POST stays a POST).
    pub status: Option<u16>,
    /// Default: the scheme the request came with.
    pub scheme: Option<Scheme>,
    /// Default: the request's host (its validated `Host`, without its port).
    pub host: Option<String>,
    /// Default: the port the request was sent to when the redirect keeps its scheme and host
    /// (as nginx's `port_in_redirect`); none, the scheme's own, when it changes either.
    pub port: Option<u16>,
    /// `keep` (default): the request's normalized path; or a fixed path starting with `/`.
    pub path: Option<String>,
    /// `keep` (default) the request's query as it was sent, or `drop` it.
    #[serde(default)]
    pub query: QueryRule,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueryRule {
    #[default]
    Keep,
    Drop,
}

const STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// A redirect, ready for the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub status: http::StatusCode,
    /// What comes before the request's host, or before the path when the host is configured:
    /// `https://` or `https://example.com:8443`. Indexed by whether the request came over TLS,
    /// since an unset scheme follows the request's.
    head: [Box<str>; 2],
    /// What follows a host taken from the request: `:8443` or nothing.
    port: [Box<str>; 2],
    host_from_request: bool,
    /// Neither scheme, host nor port is configured: the request's own port (from its `Host`)
    /// stays, so `https://a.test:8443/old` goes to `https://a.test:8443/new`.
    keep_request_port: bool,
    /// A fixed path, or the request's.
    path: Option<Box<str>>,
    keep_query: bool,
}

/// Why a request cannot be redirected: the text of its 400.
pub const NO_HOST: &str = "bad request: a redirect needs the request's Host\n";
pub const BAD_HOST: &str = "bad request: the Host header cannot be redirected to\n";

impl RedirectSection {
    pub fn build(&self, at: &At, errors: &mut ConfigErrors) -> Option<Redirect> {
        let before = errors.len();
        let status = self.status.unwrap_or(301);
        if !STATUSES.contains(&status) {
            errors.push(
                at.key("status"),
                format!("`{status}` is not a redirect status: use 301, 302, 303, 307 or 308"),
            );
        }
        let host = self.host.as_deref().map(str::to_ascii_lowercase);
        if let Some(h) = &host {
            let h = h.strip_suffix('.').unwrap_or(h);
            if !valid_host(h) {
                errors.push(
                    at.key("host"),
                    format!("`{h}` is not a host name or address (give the port in `port`)"),
                );
            }
        }
        if self.port == Some(0) {
            errors.push(at.key("port"), "must be 1 to 65535");
        }
        let path = match self.path.as_deref() {
            None | Some("keep") => None,
            Some(p) => {
                let ok = p.starts_with('/')
                    && !p.contains(['?', '#'])
                    && p.parse::<http::uri::PathAndQuery>().is_ok();
                if !ok {
                    errors.push(
                        at.key("path"),
                        format!("`{p}` is neither `keep` nor a path starting with `/` (without `?` or `#`)"),
                    );
                }
                Some(p)
            }
        };
        if self.scheme.is_none() && host.is_none() && self.port.is_none() && path.is_none() {
            errors.push(
                at,
                "sends every request back to itself: give a scheme, host, port or path",
            );
        }
        if errors.len() > before {
            return None;
        }
        let parts = |tls: bool| {
            let scheme = self
                .scheme
                .unwrap_or(if tls { Scheme::Https } else { Scheme::Http });
            let port = match self.port {
                Some(p) if p != scheme.default_port() => format!(":{p}"),
                _ => String::new(),
            };
            match &host {
                Some(h) => (
                    format!(
                        "{}://{}{port}",
                        scheme.as_str(),
                        h.strip_suffix('.').unwrap_or(h)
                    )
                    .into_boxed_str(),
                    Box::<str>::default(),
                ),
                None => (
                    format!("{}://", scheme.as_str()).into_boxed_str(),
                    port.into_boxed_str(),
                ),
            }
        };
        let (plain_head, plain_port) = parts(false);
        let (tls_head, tls_port) = parts(true);
        Some(Redirect {
            status: http::StatusCode::from_u16(status).ok()?,
            head: [plain_head, tls_head],
            port: [plain_port, tls_port],
            keep_request_port: self.scheme.is_none() && host.is_none() && self.port.is_none(),
            host_from_request: host.is_none(),
            path: path.map(Into::into),
            keep_query: self.query == QueryRule::Keep,
        })
    }
}

/// A host as a `Location` may carry it: a DNS name or IPv4 address (letters, digits, `-`, `.`,
/// `_`), or an IPv6 address in brackets. Anything else in a request's `Host` (`/`, `@`, `?`,
/// quotes) would change what the `Location` means.
fn valid_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl Redirect {
    /// The `Location` for a request that came over TLS or not, to `host` (normalized: lower
    /// case, no port) and `port` (the port its `Host` named, if any), with its normalized
    /// `path` and raw `query`. One allocation, of the exact size.
    pub fn location(
        &self,
        tls: bool,
        host: Option<&str>,
        port: Option<u16>,
        path: &str,
        query: Option<&str>,
    ) -> Result<HeaderValue, &'static str> {
        let i = usize::from(tls);
        let host = match (self.host_from_request, host) {
            (false, _) => "",
            (true, Some(h)) if valid_host(h) => h,
            (true, Some(_)) => return Err(BAD_HOST),
            (true, None) => return Err(NO_HOST),
        };
        let path = self.path.as_deref().unwrap_or(path);
        let query = query.filter(|_| self.keep_query);
        let port = port.filter(|_| self.keep_request_port);
        let len = self.head[i].len()
            + host.len()
            + self.port[i].len()
            + port.map_or(0, |_| 6)
            + path.len()
            + query.map_or(0, |q| q.len() + 1);
        let mut out = String::with_capacity(len);
        out.push_str(&self.head[i]);
        out.push_str(host);
        out.push_str(&self.port[i]);
        if let Some(p) = port {
            use std::fmt::Write;
            let _ = write!(out, ":{p}");
        }
        out.push_str(path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        // Checked, not trusted: a control byte would split the answer's head.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).map_err(|_| BAD_HOST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(yaml: &str) -> Result<Redirect, Vec<String>> {
        let section: RedirectSection = serde_yaml::from_str(yaml).expect("section");
        let mut errors = ConfigErrors::default();
        let built = section.build(&At::root().key("redirect"), &mut errors);
        match built {
            Some(r) if errors.is_empty() => Ok(r),
            _ => Err(errors.iter().map(ToString::to_string).collect()),
        }
    }

    fn loc(r: &Redirect, tls: bool, host: Option<&str>, path: &str, q: Option<&str>) -> String {
        let v = r.location(tls, host, None, path, q).expect("a location");
        v.to_str().expect("ascii").to_owned()
    }

    #[test]
    fn the_request_port_stays_only_when_scheme_host_and_port_do() {
        let moved = redirect("{ path: /new }").unwrap();
        let to = |r: &Redirect, port| {
            let v = r
                .location(true, Some("a.test"), port, "/old", None)
                .unwrap();
            v.to_str().unwrap().to_owned()
        };
        assert_eq!(to(&moved, Some(8443)), "https://a.test:8443/new");
        assert_eq!(to(&moved, None), "https://a.test/new");
        let https = redirect("{ scheme: https }").unwrap();
        assert_eq!(to(&https, Some(8080)), "https://a.test/old");
        let port = redirect("{ port: 9443 }").unwrap();
        assert_eq!(to(&port, Some(8443)), "https://a.test:9443/old");
    }

    #[test]
    fn to_https_keeps_host_path_and_query_as_sent() {
        let r = redirect("{ scheme: https }").unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(
            loc(&r, false, Some("example.com"), "/a%20b/c", Some("x=%2F&y")),
            "https://example.com/a%20b/c?x=%2F&y"
        );
        assert_eq!(loc(&r, false, Some("[::1]"), "/", None), "https://[::1]/");
    }

    #[test]
    fn port_host_path_and_query_overrides() {
        let r = redirect("{ status: 308, scheme: https, port: 8443, query: drop }").unwrap();
        assert_eq!(r.status, 308);
        assert_eq!(
            loc(&r, false, Some("a.example"), "/p", Some("q=1")),
            "https://a.example:8443/p"
        );
        // The scheme's own port is left out.
        let r = redirect("{ scheme: https, port: 443 }").unwrap();
        assert_eq!(loc(&r, false, Some("h"), "/", None), "https://h/");
        // A fixed host is joined at build; the request's host is not needed.
        let r = redirect("{ host: WWW.Example.com., path: /moved }").unwrap();
        assert_eq!(
            loc(&r, true, None, "/old", Some("k=v")),
            "https://www.example.com/moved?k=v"
        );
        assert_eq!(
            loc(&r, false, None, "/old", None),
            "http://www.example.com/moved"
        );
        // The scheme follows the request's when unset, and so does its default port.
        let r = redirect("{ port: 80 }").unwrap();
        assert_eq!(loc(&r, false, Some("h"), "/", None), "http://h/");
        assert_eq!(loc(&r, true, Some("h"), "/", None), "https://h:80/");
    }

    #[test]
    fn a_host_that_would_change_the_location_is_refused() {
        let r = redirect("{ scheme: https }").unwrap();
        for bad in ["evil.com/x", "a@b", "h?x", "h\"", "[zz]", ""] {
            assert_eq!(
                r.location(false, Some(bad), None, "/", None),
                Err(BAD_HOST),
                "{bad}"
            );
        }
        assert_eq!(r.location(false, None, None, "/", None), Err(NO_HOST));
    }

    #[test]
    fn config_mistakes_are_located() {
        assert_eq!(
            redirect("{ status: 200, host: \"a/b\", port: 0, path: nope }").unwrap_err(),
            [
                "redirect.status: `200` is not a redirect status: use 301, 302, 303, 307 or 308",
                "redirect.host: `a/b` is not a host name or address (give the port in `port`)",
                "redirect.port: must be 1 to 65535",
                "redirect.path: `nope` is neither `keep` nor a path starting with `/` (without `?` or `#`)",
            ]
        );
        assert_eq!(
            redirect("{ path: keep }").unwrap_err(),
            ["redirect: sends every request back to itself: give a scheme, host, port or path"]
        );
        assert!(redirect("{ host: \"h:80\" }").is_err());
    }
}
