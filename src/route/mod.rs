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
//! A route may be limited to some listeners (`routes[].listeners`): each route carries the set
//! of listener positions it serves, resolved at build, and matching skips the others with one
//! bit test.
//!
//! Matching borrows the request and allocates nothing. [`config`] holds the `routes:` section
//! and its build.

pub mod config;
pub mod path;
mod prefix;
pub mod redirect;
pub mod rewrite;
pub mod upgrade;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use regex::Regex;
use rustc_hash::FxHashMap;

use crate::limit::{ConcurrencyLimit, RouteRate};
use crate::metrics::RouteMetrics;
use crate::upstream::hash_key::HashKey;
use crate::upstream::Upstream;
pub use config::{RouteEnv, RouteSection};
use prefix::PrefixTree;
pub use redirect::Redirect;
pub use rewrite::{HeaderOps, PathRewrite};

/// One route, ready for the request path.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// The listeners the route serves; all of them when empty.
    pub listeners: ListenerSet,
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
    pub retry: RetryPolicy,
    /// The wait for an answer across all tries, from the request's arrival.
    pub timeout: Option<std::time::Duration>,
    /// Kept across reloads that leave the route's limit as it was.
    pub rate_limit: Option<Arc<RouteRate>>,
    pub concurrency: Option<Arc<ConcurrencyLimit>>,
    pub plugin: Option<crate::plugin::RoutePlugin>,
    pub metrics: RouteMetrics,
    pub upgrades: upgrade::Upgrades,
}

impl Route {
    /// Whether the route only forwards requests, so that the HTTP/1 fast path may serve them:
    /// a plain HTTP/1.1 upstream (no TLS, no HTTP/2) picked without headers or cookies, and
    /// nothing that edits, answers, retries after sending or watches a request or its answer
    /// (no plugin, rewrite, header edits or error-body cap). Its rate limit and cap in flight
    /// the fast path applies itself, to requests without a body.
    pub fn forwards_only(&self) -> bool {
        let Action::Proxy(upstream) = &self.action else {
            return false;
        };
        let policy = &upstream.policy;
        let plain_upstream = policy.settings.protocol.is_http1()
            && policy.settings.tls.is_none()
            && !matches!(
                policy.hash_key,
                Some(HashKey::Header(_)) | Some(HashKey::Cookie(_))
            );
        plain_upstream
            && self.plugin.is_none()
            && self.rewrite.is_none()
            && self.request_headers.is_empty()
            && self.response_headers.is_empty()
            && self.max_error_body.is_none()
            && !self.retry.after_send
    }
}

/// When a request on this route is tried again, always on another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u8,
    /// Idempotent requests that failed after being sent are retried too.
    pub after_send: bool,
    pub per_try_timeout: Option<std::time::Duration>,
}

impl RetryPolicy {
    pub const DEFAULT_ATTEMPTS: u8 = 3;
    pub const MAX_ATTEMPTS: u8 = 5;
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
    /// Sends the client elsewhere (`Location`), such as from `http://` to `https://`.
    Redirect(Redirect),
    /// The route's plugin answers every request.
    Plugin,
}

/// A listener, by its position in the config's `listeners:` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerId(pub u32);

impl ListenerId {
    /// A listener the config does not name (one renamed by a reload, which takes effect only
    /// on restart): it is served by the routes that apply to every listener.
    pub const UNKNOWN: ListenerId = ListenerId(u32::MAX);
}

/// The listeners a route serves, as a bit set. The first 64 listeners are bits of one inline
/// word, so the test costs the same whether the route names listeners or not (a route for
/// every listener has all bits set); more listeners than that go to `more`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSet {
    low: u64,
    /// Listeners 64 and up; with `all`, every one of them.
    more: Box<[u64]>,
    all: bool,
    /// The names, in the order the route gives them, for `/routes` and `explain`.
    names: Box<[Arc<str>]>,
}

impl Default for ListenerSet {
    /// Every listener.
    fn default() -> Self {
        ListenerSet {
            low: u64::MAX,
            more: Box::default(),
            all: true,
            names: Box::default(),
        }
    }
}

impl ListenerSet {
    /// The set of `ids` (with their `names`, for display).
    pub fn new(ids: &[ListenerId], names: Vec<Arc<str>>) -> ListenerSet {
        let mut low = 0u64;
        let mut more = Vec::new();
        for id in ids {
            match id.0.checked_sub(64) {
                None => low |= 1 << id.0,
                Some(i) => {
                    let word = i as usize / 64;
                    if more.len() <= word {
                        more.resize(word + 1, 0u64);
                    }
                    more[word] |= 1 << (i % 64);
                }
            }
        }
        ListenerSet {
            low,
            more: more.into(),
            all: false,
            names: names.into(),
        }
    }

    #[inline]
    pub fn contains(&self, id: ListenerId) -> bool {
        if id.0 < 64 {
            return self.low & (1 << id.0) != 0;
        }
        let i = id.0 - 64;
        self.all
            || self
                .more
                .get(i as usize / 64)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// The listeners named by the route; empty for all.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }
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
    /// All of `regexes` in one automaton, pattern `i` being route `regexes[i]`: one pass over
    /// the path finds every regex route that matches, however many there are.
    regex_set: Option<regex_automata::meta::Regex>,
}

thread_local! {
    /// Reused across requests so that a regex lookup allocates nothing (it grows once per thread).
    static MATCHED: std::cell::RefCell<regex_automata::PatternSet> =
        std::cell::RefCell::new(regex_automata::PatternSet::new(0));
}

impl HostRoutes {
    fn compile(&mut self, routes: &[Route]) {
        if self.regexes.is_empty() {
            return;
        }
        let patterns: Vec<&str> = self
            .regexes
            .iter()
            .filter_map(|&id| match &routes[id as usize].path {
                PathMatch::Regex(re) => Some(re.as_str()),
                _ => None,
            })
            .collect();
        let built = regex_automata::meta::Regex::builder()
            .configure(
                regex_automata::meta::Config::new().match_kind(regex_automata::MatchKind::All),
            )
            .build_many(&patterns);
        // Each pattern already compiled on its own; should the combined build fail (a size
        // limit), matching falls back to trying them one by one.
        match built {
            Ok(set) => self.regex_set = Some(set),
            Err(e) => log::warn!("{} regex routes tried one by one: {e}", patterns.len()),
        }
    }

    /// The first regex route, in declaration order, whose regex matches and that `accept`s.
    #[inline]
    fn find_regex(
        &self,
        routes: &[Route],
        path: &str,
        accept: &mut impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        let Some(set) = &self.regex_set else {
            return self.regexes.iter().copied().find(|&id| {
                matches!(&routes[id as usize].path, PathMatch::Regex(re) if re.is_match(path))
                    && accept(id)
            });
        };
        MATCHED.with(|m| {
            let mut m = m.borrow_mut();
            if m.capacity() < set.pattern_len() {
                *m = regex_automata::PatternSet::new(set.pattern_len());
            }
            m.clear();
            set.which_overlapping_matches(&regex_automata::Input::new(path), &mut m);
            m.iter()
                .map(|p| self.regexes[p.as_usize()])
                .find(|&id| accept(id))
        })
    }
}

/// All routes of one snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Box<[Route]>,
    hosts: FxHashMap<Box<str>, HostRoutes>,
    /// Keyed by suffix with its leading dot (`.example.com`).
    wildcards: FxHashMap<Box<str>, HostRoutes>,
    any_host: HostRoutes,
    /// Per route, whether its requests may take the HTTP/1 fast path ([`Route::forwards_only`]).
    fast: Box<[bool]>,
    /// The fields some route's header conditions name, each once: all that the HTTP/1 fast
    /// path puts in the header map it matches with.
    condition_headers: Box<[HeaderName]>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut hosts: FxHashMap<Box<str>, HostRoutes> = FxHashMap::default();
        let mut wildcards: FxHashMap<Box<str>, HostRoutes> = FxHashMap::default();
        let mut any_host = HostRoutes::default();
        for (i, route) in routes.iter().enumerate() {
            let group = match &route.host {
                HostMatch::Any => &mut any_host,
                HostMatch::Exact(h) => hosts.entry(h.clone()).or_default(),
                HostMatch::Suffix(s) => wildcards.entry(s.clone()).or_default(),
            };
            let id = i as u32;
            match &route.path {
                PathMatch::Exact(p) => group.exact.entry(p.clone()).or_default().push(id),
                PathMatch::Prefix(p) => group.prefixes.insert(p, id),
                PathMatch::Regex(_) => group.regexes.push(id),
            }
        }
        any_host.compile(&routes);
        for group in hosts.values_mut() {
            group.compile(&routes);
        }
        for group in wildcards.values_mut() {
            group.compile(&routes);
        }
        let mut condition_headers: Vec<HeaderName> = Vec::new();
        for h in routes.iter().flat_map(|r| r.headers.iter()) {
            if !condition_headers.contains(&h.name) {
                condition_headers.push(h.name.clone());
            }
        }
        RouteTable {
            fast: routes.iter().map(Route::forwards_only).collect(),
            condition_headers: condition_headers.into(),
            routes: routes.into(),
            hosts,
            wildcards,
            any_host,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether a request of route `id` may take the HTTP/1 fast path, decided when the table
    /// was built.
    #[inline]
    pub fn fast(&self, id: u32) -> bool {
        self.fast.get(id as usize).copied().unwrap_or(false)
    }

    /// The request fields that some route's header conditions name (none, usually): a
    /// [`RequestView`] with these fields matches as one with all of them.
    #[inline]
    pub fn condition_headers(&self) -> &[HeaderName] {
        &self.condition_headers
    }

    /// Lets every route's rate limiter forget the keys whose buckets have refilled by `now`, so
    /// that memory is held for keys only while they are limited.
    pub fn forget_idle_keys(&self, now: std::time::Instant) {
        for r in self.routes.iter() {
            if let Some(rate) = &r.rate_limit {
                rate.limiter.forget_idle(now);
            }
        }
    }

    pub fn get(&self, id: u32) -> &Route {
        &self.routes[id as usize]
    }

    /// The id of the route that serves `req` on any listener, if any: the view of tools and
    /// tests that stand on no listener. The proxy uses [`RouteTable::find_on`].
    #[inline]
    pub fn find(&self, req: &RequestView<'_>) -> Option<u32> {
        self.find_where(req, None)
    }

    /// The id of the route that serves `req` on listener `on`, if any.
    #[inline]
    pub fn find_on(&self, on: ListenerId, req: &RequestView<'_>) -> Option<u32> {
        self.find_where(req, Some(on))
    }

    #[inline]
    fn find_where(&self, req: &RequestView<'_>, on: Option<ListenerId>) -> Option<u32> {
        if let Some(host) = req.host {
            if let Some(group) = self.hosts.get(host) {
                if let Some(id) = self.find_in(group, req, on) {
                    return Some(id);
                }
            }
            if !self.wildcards.is_empty() {
                // Longest suffix first: `.b.example.com` before `.example.com`. The label
                // before the first dot is never a suffix (`*.x` needs something before `.x`).
                let mut rest = host;
                // Bytes, not chars: a non-ASCII host must not be cut inside a character.
                while let Some(dot) = rest.bytes().skip(1).position(|b| b == b'.') {
                    rest = &rest[dot + 1..];
                    if let Some(group) = self.wildcards.get(rest) {
                        if let Some(id) = self.find_in(group, req, on) {
                            return Some(id);
                        }
                    }
                }
            }
        }
        self.find_in(&self.any_host, req, on)
    }

    #[inline]
    fn find_in(
        &self,
        group: &HostRoutes,
        req: &RequestView<'_>,
        on: Option<ListenerId>,
    ) -> Option<u32> {
        let mut accept = |id: u32| {
            let r = &self.routes[id as usize];
            on.is_none_or(|l| r.listeners.contains(l))
                && r.methods.contains(req.method)
                && r.headers.iter().all(|h| h.matches(req.headers))
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
        group.find_regex(&self.routes, req.path, &mut accept)
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

    /// The table of the `routes:` list `yaml`, whose routes need no upstream.
    fn table(yaml: &str) -> RouteTable {
        use crate::section::{At, ConfigErrors};
        let sections: Vec<config::RouteSection> = serde_yaml::from_str(yaml).expect("routes");
        let declared = std::collections::HashSet::new();
        let env = config::RouteEnv {
            upstreams: &[],
            declared: &declared,
            resources: &crate::plugin::Resources::default(),
            listeners: &["web", "tls"],
            game_listeners: &[],
            zookeeper: None,
            zk_root: "/zkgate",
        };
        let mut errors = ConfigErrors::default();
        let routes = sections
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.build(&At::root().index("routes", i), &env, None, &mut errors))
            .collect();
        assert!(errors.is_empty(), "{errors}");
        RouteTable::new(routes)
    }

    #[test]
    fn regex_routes_match_in_declaration_order_like_a_linear_scan() {
        let patterns = [
            "^/a/[0-9]+$",
            "^/a/",
            "b$",
            "^/(a|b)/x",
            "[0-9]{3}",
            "^/c/.*\\.png$",
            "^/$",
        ];
        let mut yaml = String::new();
        for (i, p) in patterns.iter().enumerate() {
            let methods = if i == 1 { ", methods: [POST]" } else { "" };
            yaml += &format!("  - {{ name: r{i}, match: {{ path_regex: '{p}'{methods} }}, respond: {{ body: x }} }}\n");
        }
        let routes = table(&yaml);
        let compiled: Vec<Regex> = patterns.iter().map(|p| Regex::new(p).unwrap()).collect();
        let headers = HeaderMap::new();
        for path in [
            "/a/12",
            "/a/x",
            "/b/x",
            "/zzb",
            "/q/1234",
            "/c/d/e.png",
            "/",
            "/none",
            "/a/123b",
        ] {
            for method in [Method::GET, Method::POST] {
                let expected = compiled
                    .iter()
                    .enumerate()
                    .find(|(i, re)| re.is_match(path) && (*i != 1 || method == Method::POST))
                    .map(|(i, _)| format!("r{i}"));
                let view = RequestView {
                    method: &method,
                    host: None,
                    path,
                    headers: &headers,
                };
                let got = routes.find(&view).map(|id| routes.get(id).name.to_string());
                assert_eq!(got, expected, "{method} {path}");
            }
        }
    }

    #[test]
    fn wildcard_hosts_take_the_longest_suffix_and_survive_odd_hosts() {
        let routes = table(
            "- { name: short, match: { host: \"*.example.com\" }, respond: { body: x } }\n\
             - { name: long, match: { host: \"*.eu.example.com\" }, respond: { body: x } }\n",
        );
        let headers = HeaderMap::new();
        let find = |host: &str| {
            let view = RequestView {
                method: &Method::GET,
                host: Some(host),
                path: "/",
                headers: &headers,
            };
            routes.find(&view).map(|id| routes.get(id).name.to_string())
        };
        assert_eq!(find("a.eu.example.com").as_deref(), Some("long"));
        assert_eq!(find("a.b.example.com").as_deref(), Some("short"));
        assert_eq!(find("eu.example.com").as_deref(), Some("short"));
        assert_eq!(find("example.com"), None);
        assert_eq!(find(".example.com"), None);
        assert_eq!(find("ä.example.com").as_deref(), Some("short"));
        assert_eq!(find("ä"), None);
        assert_eq!(find("."), None);
        assert_eq!(find("..."), None);
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
