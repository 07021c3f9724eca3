//! The compiled route table: host, path, method and header matching with a documented
//! precedence, and what a matched route does.
//!
//! Precedence, highest first:
//! 1. host: an exact host, then the longest matching `*.suffix` wildcard, then routes with no host;
//! 2. within one host group: an exact `path`, then the longest `path_prefix`, then `path_regex`
//!    in declaration order;
//! 3. routes that tie (same host and path) are tried in declaration order, and the first whose
//!    methods and headers also match wins. A group with no match falls through to the next.
//!
//! Matching borrows the request and allocates nothing.

mod prefix;
pub mod rewrite;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use regex::Regex;
use rustc_hash::FxHashMap;

use crate::metrics::RouteMetrics;
use crate::upstream::Upstream;
use prefix::PrefixTree;
pub use rewrite::{HeaderOps, PathRewrite};

/// One route, ready for the request path.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub host: HostMatch,
    pub path: PathMatch,
    pub methods: MethodSet,
    pub headers: Box<[HeaderCondition]>,
    pub action: Action,
    pub rewrite: Option<PathRewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub max_request_body: Option<u64>,
    pub max_error_body: Option<u64>,
    pub metrics: RouteMetrics,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    Exact(Box<str>),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(Box<str>),
}

#[derive(Debug)]
pub enum PathMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
}

#[derive(Debug)]
pub enum Action {
    Proxy(Arc<Upstream>),
    Respond(Respond),
}

/// A fixed answer, its header prepared once.
#[derive(Debug)]
pub struct Respond {
    pub status: StatusCode,
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    pub body: Bytes,
}

/// Methods as a bit set; empty means any method.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MethodSet {
    bits: u16,
    other: Box<[Method]>,
}

const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

impl MethodSet {
    pub fn new(methods: impl IntoIterator<Item = Method>) -> Self {
        let mut set = MethodSet::default();
        let mut other = Vec::new();
        for m in methods {
            match STANDARD_METHODS.iter().position(|s| *s == m) {
                Some(i) => set.bits |= 1 << i,
                None => other.push(m),
            }
        }
        set.other = other.into();
        set
    }

    #[inline]
    pub fn contains(&self, m: &Method) -> bool {
        if self.bits == 0 && self.other.is_empty() {
            return true;
        }
        match STANDARD_METHODS.iter().position(|s| s == m) {
            Some(i) => self.bits & (1 << i) != 0,
            None => self.other.contains(m),
        }
    }
}

#[derive(Debug)]
pub struct HeaderCondition {
    pub name: HeaderName,
    pub value: HeaderValueMatch,
}

#[derive(Debug)]
pub enum HeaderValueMatch {
    Present,
    Exact(HeaderValue),
    Regex(Regex),
}

impl HeaderCondition {
    #[inline]
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.value {
            HeaderValueMatch::Present => values.next().is_some(),
            HeaderValueMatch::Exact(v) => values.any(|x| x == v),
            HeaderValueMatch::Regex(re) => values.any(|x| x.to_str().is_ok_and(|s| re.is_match(s))),
        }
    }
}

/// What routing reads from a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Lower case, without port or trailing dot.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Default)]
struct HostRoutes {
    exact: FxHashMap<Box<str>, Vec<u32>>,
    prefixes: PrefixTree,
    regexes: Vec<u32>,
}

/// All routes of one snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Box<[Route]>,
    hosts: FxHashMap<Box<str>, HostRoutes>,
    /// Longest suffix first.
    wildcards: Box<[(Box<str>, HostRoutes)]>,
    any_host: HostRoutes,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut hosts: FxHashMap<Box<str>, HostRoutes> = FxHashMap::default();
        let mut wildcards: Vec<(Box<str>, HostRoutes)> = Vec::new();
        let mut any_host = HostRoutes::default();
        for (i, route) in routes.iter().enumerate() {
            let group = match &route.host {
                HostMatch::Any => &mut any_host,
                HostMatch::Exact(h) => hosts.entry(h.clone()).or_default(),
                HostMatch::Suffix(s) => match wildcards.iter().position(|(w, _)| w == s) {
                    Some(p) => &mut wildcards[p].1,
                    None => {
                        wildcards.push((s.clone(), HostRoutes::default()));
                        &mut wildcards.last_mut().expect("just pushed").1
                    }
                },
            };
            let id = i as u32;
            match &route.path {
                PathMatch::Exact(p) => group.exact.entry(p.clone()).or_default().push(id),
                PathMatch::Prefix(p) => group.prefixes.insert(p, id),
                PathMatch::Regex(_) => group.regexes.push(id),
            }
        }
        wildcards.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        RouteTable {
            routes: routes.into(),
            hosts,
            wildcards: wildcards.into(),
            any_host,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn get(&self, id: u32) -> &Route {
        &self.routes[id as usize]
    }

    /// The id of the route that serves `req`, if any.
    #[inline]
    pub fn find(&self, req: &RequestView<'_>) -> Option<u32> {
        if let Some(host) = req.host {
            if let Some(group) = self.hosts.get(host) {
                if let Some(id) = self.find_in(group, req) {
                    return Some(id);
                }
            }
            for (suffix, group) in self.wildcards.iter() {
                if host.len() > suffix.len() && host.ends_with(suffix.as_ref()) {
                    if let Some(id) = self.find_in(group, req) {
                        return Some(id);
                    }
                }
            }
        }
        self.find_in(&self.any_host, req)
    }

    #[inline]
    fn find_in(&self, group: &HostRoutes, req: &RequestView<'_>) -> Option<u32> {
        let mut accept = |id: u32| {
            let r = &self.routes[id as usize];
            r.methods.contains(req.method) && r.headers.iter().all(|h| h.matches(req.headers))
        };
        if !group.exact.is_empty() {
            if let Some(ids) = group.exact.get(req.path) {
                if let Some(&id) = ids.iter().find(|&&id| accept(id)) {
                    return Some(id);
                }
            }
        }
        if let Some(id) = group.prefixes.find(req.path.as_bytes(), &mut accept) {
            return Some(id);
        }
        group.regexes.iter().copied().find(|&id| {
            matches!(&self.routes[id as usize].path, PathMatch::Regex(re) if re.is_match(req.path))
                && accept(id)
        })
    }
}

/// Host header value to the form routes are keyed by: lower case, no port, no trailing dot.
/// Borrows unless the host has upper-case letters.
pub fn normalize_host(raw: &[u8]) -> Option<Cow<'_, str>> {
    let s = std::str::from_utf8(raw).ok()?;
    let host = if let Some(rest) = s.strip_prefix('[') {
        // [v6]:port
        &s[..rest.find(']')? + 2]
    } else {
        match s.rfind(':') {
            Some(i) => &s[..i],
            None => s,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// Resolves `.` and `..` segments (RFC 3986 section 5.2.4) so that `/public/../admin` is routed,
/// and forwarded, as `/admin`. Borrows when there is nothing to resolve.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let has_dots = path.split('/').any(|seg| seg == "." || seg == "..");
    if !has_dots {
        return Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    Cow::Owned(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(
            normalize_host(b"Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host(b"example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host(b"[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host(b"[::1]").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host(b""), None);
        assert_eq!(normalize_host(b"[::1"), None);
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(normalize_path("/a/b"), "/a/b");
        assert_eq!(normalize_path("/public/../admin"), "/admin");
        assert_eq!(normalize_path("/a/./b/"), "/a/b/");
        assert_eq!(normalize_path("/../../etc"), "/etc");
        assert_eq!(normalize_path("/a/.."), "/");
        assert_eq!(normalize_path("/a/b/."), "/a/b/");
        assert_eq!(normalize_path("/a..b/c"), "/a..b/c");
        assert!(matches!(normalize_path("/x/y"), Cow::Borrowed(_)));
    }

    #[test]
    fn methods() {
        let any = MethodSet::default();
        assert!(any.contains(&Method::DELETE));
        let set = MethodSet::new([Method::GET, Method::from_bytes(b"PURGE").unwrap()]);
        assert!(set.contains(&Method::GET));
        assert!(!set.contains(&Method::POST));
        assert!(set.contains(&Method::from_bytes(b"PURGE").unwrap()));
    }
}
