//! A route's YAML section and its build into a [`Route`]: the listeners it serves, matching
//! (host, path, methods, headers), its action (an upstream, a fixed answer, a redirect or its
//! plugin), rewrites, header edits,
//! retries, deadlines and limits. Every problem is reported at its YAML path, and nothing built
//! here is parsed again on the request path.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::path::{self, PathPolicy};
use super::redirect::RedirectSection;
use super::rewrite::check_replacement;
use super::{
    Action, HeaderCondition, HeaderOps, HeaderValueMatch, HostMatch, ListenerId, ListenerSet,
    MethodSet, PathMatch, PathRewrite, Respond, RetryPolicy, Route,
};
use crate::logging::is_credential_header;
use crate::metrics::RouteMetrics;
use crate::section::secret::{secret_map, REDACTED};
use crate::section::{At, ConfigErrors, Dur, Size};
use crate::upstream::Upstream;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: String,
    /// The listeners (by name) this route serves; all of them when left out.
    pub listeners: Option<Vec<String>>,
    #[serde(default, rename = "match")]
    pub matches: MatchSection,
    pub upstream: Option<String>,
    pub respond: Option<RespondSection>,
    /// Answers with a redirect elsewhere (`http://` to `https://`, another host or path).
    pub redirect: Option<RedirectSection>,
    pub rewrite: Option<RewriteSection>,
    #[serde(default)]
    pub request_headers: HeaderEdits,
    #[serde(default)]
    pub response_headers: HeaderEdits,
    pub max_request_body: Option<Size>,
    pub max_error_body: Option<Size>,
    #[serde(default)]
    pub retry: RetrySection,
    /// Bounds the wait for the backend's answer (its response head) across all tries,
    /// counted from the request's arrival; overrides the upstream's read timeout.
    pub timeout: Option<Dur>,
    pub rate_limit: Option<crate::limit::RateLimitSection>,
    /// Requests of this route in flight at once; more get 503.
    pub max_in_flight: Option<u32>,
    /// A plugin working at this route's phases (one kind: `alert_webhook`), as a map with the
    /// kind as its one key.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub plugin: Option<crate::plugin::PluginSection>,
    /// What a WebSocket upgrade on this route does (`upgrade.rs`).
    #[serde(default)]
    pub upgrades: super::upgrade::UpgradesSection,
}

/// When a request is tried again on another backend.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Tries in all, the first included (1 turns retries off); default 3.
    pub attempts: Option<u32>,
    /// Also retry a request that failed after it was sent (reset, timeout, no answer), if its
    /// method is idempotent and its body fit the retry buffer. Off by default: only failures to
    /// connect, when the backend cannot have seen the request, are retried.
    #[serde(default)]
    pub after_send: bool,
    /// How long each try may wait for the backend to answer (each read); default the
    /// upstream's read timeout.
    pub per_try_timeout: Option<Dur>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSection {
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// With neither `value` nor `regex`, the header only has to be present.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: Option<String>,
    pub regex: Option<String>,
}

impl HeaderMatch {
    /// What `/config` shows: a route that matches on a credential (`authorization: Bearer ...`)
    /// holds that credential, so its value and regex are redacted.
    fn shown(&self) -> (Option<&str>, Option<&str>) {
        if is_credential_header(&self.name) {
            let hide = |v: &Option<String>| v.as_ref().map(|_| REDACTED);
            (hide(&self.value), hide(&self.regex))
        } else {
            (self.value.as_deref(), self.regex.as_deref())
        }
    }
}

impl Serialize for HeaderMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (value, regex) = self.shown();
        let mut st = s.serialize_struct("HeaderMatch", 3)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("value", &value)?;
        st.serialize_field("regex", &regex)?;
        st.end()
    }
}

impl std::fmt::Debug for HeaderMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (value, regex) = self.shown();
        f.debug_struct("HeaderMatch")
            .field("name", &self.name)
            .field("value", &value)
            .field("regex", &regex)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn ok() -> u16 {
    200
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewriteSection {
    pub pattern: Option<String>,
    pub replace: Option<String>,
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
}

/// Header edits of a route. Values of `set` and `add` are often credentials for the upstream
/// (`Authorization`, an API key), so `/config` and debug logs show them as `<redacted>` unless
/// their name is listed in `public`.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default, deserialize_with = "secret_map")]
    pub set: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "secret_map")]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
    /// Names (any case) of `set` and `add` headers whose values are not secret.
    #[serde(default)]
    pub public: Vec<String>,
}

impl HeaderEdits {
    /// Whether the value `set` or `add` gives header `name` may be shown.
    pub fn is_public(&self, name: &str) -> bool {
        self.public.iter().any(|p| p.eq_ignore_ascii_case(name))
    }

    fn shown<'a>(&'a self, map: &'a BTreeMap<String, String>) -> BTreeMap<&'a str, &'a str> {
        map.iter()
            .map(|(k, v)| {
                let v = if self.is_public(k) {
                    v.as_str()
                } else {
                    REDACTED
                };
                (k.as_str(), v)
            })
            .collect()
    }
}

/// What `/config` shows: the secret values replaced.
impl Serialize for HeaderEdits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("HeaderEdits", 4)?;
        st.serialize_field("set", &self.shown(&self.set))?;
        st.serialize_field("add", &self.shown(&self.add))?;
        st.serialize_field("remove", &self.remove)?;
        st.serialize_field("public", &self.public)?;
        st.end()
    }
}

impl std::fmt::Debug for HeaderEdits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderEdits")
            .field("set", &self.shown(&self.set))
            .field("add", &self.shown(&self.add))
            .field("remove", &self.remove)
            .field("public", &self.public)
            .finish()
    }
}

/// What a route's build needs from outside its section.
pub struct RouteEnv<'a> {
    /// The upstreams that built, which a route sends to by name.
    pub upstreams: &'a [Arc<Upstream>],
    /// Every upstream the config declares, built or not: a route naming one that failed its
    /// own checks is not reported a second time.
    pub declared: &'a HashSet<&'a str>,
    /// What outlives reloads, for the routes' plugins.
    pub resources: &'a crate::plugin::Resources,
    /// The names of the config's listeners, in order: a route's `listeners` refer to them.
    pub listeners: &'a [&'a str],
    /// The names of its game listeners, which take framed game sessions and no HTTP: a route
    /// naming one is refused.
    pub game_listeners: &'a [&'a str],
    /// The ZooKeeper ensemble, for plugins that keep state there.
    pub zookeeper: Option<&'a zkgate_discovery::Ensemble>,
    /// The root znode (`zookeeper.root`, or its default).
    pub zk_root: &'a str,
}

impl RouteEnv<'_> {
    fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.upstreams.iter().find(|u| *u.name == *name).cloned()
    }
}

impl RouteSection {
    /// A digest of what shapes the upstream's answers: the upstream's name, the rewrite and
    /// the header edits (secret values as shown, so a changed secret keeps the digest).
    fn digest(&self) -> [u8; 16] {
        let shaping = (
            &self.upstream,
            &self.rewrite,
            &self.request_headers,
            &self.response_headers,
        );
        let text = serde_json::to_vec(&shaping).unwrap_or_default();
        let sha = ring::digest::digest(&ring::digest::SHA256, &text);
        let mut out = [0u8; 16];
        out.copy_from_slice(&sha.as_ref()[..16]);
        out
    }

    /// Builds the route at `at`, or reports why it cannot be. `prev` is the previous config's
    /// route of the same name: its limiters take over their state when unchanged, and its
    /// plugin is handed to the new plugin's build. The name's
    /// uniqueness is the assembly's to check.
    pub fn build(
        &self,
        at: &At,
        env: &RouteEnv<'_>,
        prev: Option<&Route>,
        errors: &mut ConfigErrors,
    ) -> Option<Route> {
        let before = errors.len();
        let listeners = self.listener_set(at, env, errors);
        let m = &self.matches;
        let host = m.host_match(&at.key("match").key("host"), errors);
        let path = m.path_match(&at.key("match"), errors);
        let methods = m.methods(&at.key("match"), errors);
        let headers = m.header_conditions(&at.key("match"), errors);
        let exact_host = m
            .host
            .as_deref()
            .filter(|h| !h.contains('*'))
            .map(str::to_ascii_lowercase);
        let plugin = self.plugin.as_ref().and_then(|p| {
            let lookup = |name: &str| env.upstream(name);
            let cx = crate::plugin::PluginCx {
                route: &self.name,
                path_prefix: m.path_prefix.as_deref(),
                upstream: self.upstream.as_deref(),
                at: &at.key("plugin"),
                upstreams: &lookup,
                prev: prev.and_then(|p| p.plugin.as_ref()),
                resources: env.resources,
                zookeeper: env.zookeeper,
                zk_root: env.zk_root,
                route_digest: self.digest(),
                route_host: exact_host.as_deref(),
                route_edits: self.rewrite.is_some()
                    || self.request_headers != HeaderEdits::default()
                    || self.response_headers != HeaderEdits::default(),
                route_timeout: self.timeout.map(|d| d.0),
            };
            p.build(&cx, errors)
        });
        let action = self.action(at, env, errors);
        let rewrite = self
            .rewrite
            .as_ref()
            .and_then(|rw| rw.build(&at.key("rewrite"), errors));
        if rewrite.is_some() && self.respond.is_some() {
            errors.push(at.key("rewrite"), "has no effect on a respond route");
        }
        if rewrite.is_some() && self.redirect.is_some() {
            errors.push(at.key("rewrite"), "has no effect on a redirect route");
        }
        let request_headers = self
            .request_headers
            .build(&at.key("request_headers"), errors);
        let response_headers = self
            .response_headers
            .build(&at.key("response_headers"), errors);
        let retry = self.retry.build(&at.key("retry"), errors);
        let timeout = self.timeout.map(|d| d.0);
        let rate_limit = self.rate_limit.as_ref().and_then(|rl| {
            let prev = prev.and_then(|p| p.rate_limit.as_ref());
            rl.build(&at.key("rate_limit"), prev, errors)
        });
        let concurrency = self.max_in_flight.map(|max| {
            let prev = prev.and_then(|p| p.concurrency.as_ref());
            crate::limit::config::concurrency(max, &at.key("max_in_flight"), prev, errors)
        });
        if timeout.is_some_and(|d| d.is_zero()) {
            errors.push(at.key("timeout"), "must be above zero");
        }
        let upgrades = self.upgrades.build(&self.name, &at.key("upgrades"), errors);
        if errors.len() > before {
            return None;
        }
        Some(Route {
            name: self.name.as_str().into(),
            listeners,
            host: host?,
            path: path?,
            methods,
            headers,
            action: action?,
            rewrite,
            request_headers,
            response_headers,
            max_request_body: self.max_request_body.map(|s| s.0),
            max_error_body: self.max_error_body.map(|s| s.0),
            retry,
            timeout,
            rate_limit,
            concurrency,
            plugin,
            metrics: RouteMetrics::new(&self.name),
            upgrades,
        })
    }

    /// The listeners the route serves, each name resolved to its position in `listeners:`.
    fn listener_set(&self, at: &At, env: &RouteEnv<'_>, errors: &mut ConfigErrors) -> ListenerSet {
        let Some(names) = &self.listeners else {
            return ListenerSet::default();
        };
        if names.is_empty() {
            errors.push(
                at.key("listeners"),
                "name at least one listener, or leave listeners out for all of them",
            );
        }
        let mut ids = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match env.listeners.iter().position(|l| l == name) {
                Some(_) if env.game_listeners.contains(&name.as_str()) => errors.push(
                    at.index("listeners", i),
                    format!("`{name}` is a game listener; HTTP routes cannot use it"),
                ),
                Some(p) => ids.push(ListenerId(p as u32)),
                None => errors.push(
                    at.index("listeners", i),
                    format!("no listener named `{name}`"),
                ),
            }
        }
        ListenerSet::new(&ids, names.iter().map(|n| n.as_str().into()).collect())
    }

    /// What the route does: exactly one of an upstream, a fixed answer, a redirect, or its
    /// plugin.
    fn action(&self, at: &At, env: &RouteEnv<'_>, errors: &mut ConfigErrors) -> Option<Action> {
        if let Some(redirect) = &self.redirect {
            if self.upstream.is_some() || self.respond.is_some() || self.plugin.is_some() {
                errors.push(
                    at,
                    "a redirect route answers every request: drop upstream, respond and plugin",
                );
                return None;
            }
            return redirect
                .build(&at.key("redirect"), errors)
                .map(Action::Redirect);
        }
        let answered_by_plugin = self.plugin.as_ref().is_some_and(|p| p.answers_itself());
        match (&self.upstream, &self.respond) {
            (None, None) if answered_by_plugin => Some(Action::Plugin),
            (Some(_), _) | (_, Some(_)) if answered_by_plugin => {
                errors.push(
                    at,
                    "its plugin answers every request: drop upstream and respond",
                );
                None
            }
            (Some(_), Some(_)) => {
                errors.push(at, "give either upstream or respond, not both");
                None
            }
            (None, None) => {
                errors.push(at, "needs an action: upstream or respond (or redirect)");
                None
            }
            (Some(name), None) => match env.upstream(name) {
                Some(u) => Some(Action::Proxy(u)),
                None => {
                    // One that is declared but failed its own checks has been reported already.
                    if !env.declared.contains(name.as_str()) {
                        errors.push(at.key("upstream"), format!("no upstream named `{name}`"));
                    }
                    None
                }
            },
            (None, Some(resp)) => resp.build(&at.key("respond"), errors).map(Action::Respond),
        }
    }
}

impl MatchSection {
    fn host_match(&self, at: &At, errors: &mut ConfigErrors) -> Option<HostMatch> {
        match &self.host {
            None => Some(HostMatch::Any),
            Some(h) => host_match(h).map_err(|e| errors.push(at, e)).ok(),
        }
    }

    /// The path condition; `at` is the `match:` section's path.
    fn path_match(&self, at: &At, errors: &mut ConfigErrors) -> Option<PathMatch> {
        let given = [
            self.path.is_some(),
            self.path_prefix.is_some(),
            self.path_regex.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            errors.push(at, "use only one of path, path_prefix and path_regex");
            return None;
        }
        // Requests are matched on their normalized path, so a path that normalization would
        // change could never match. The most lenient policy is the test: a listener may keep
        // `//`, `%2F` and backslashes.
        let must_be_absolute = |key: &str, p: &str, errors: &mut ConfigErrors| {
            if !p.starts_with('/') {
                errors.push(at.key(key), format!("`{p}` must start with `/`"));
                return;
            }
            match path::normalize(p.as_bytes(), &PathPolicy::LENIENT) {
                Ok(t) if t.query.is_none() && !t.changed() => {}
                Ok(t) if t.query.is_none() => errors.push(
                    at.key(key),
                    format!(
                        "`{p}` never matches: requests are matched on their normalized path, here `{}`",
                        t.path
                    ),
                ),
                Ok(_) => errors.push(at.key(key), "a path cannot hold a query (`?`)"),
                Err(r) => {
                    let why = r.reason().trim_end().trim_start_matches("bad request: ");
                    errors.push(at.key(key), format!("`{p}`: {why}"))
                }
            }
        };
        if let Some(p) = &self.path {
            must_be_absolute("path", p, errors);
            return Some(PathMatch::Exact(p.as_str().into()));
        }
        if let Some(p) = &self.path_prefix {
            must_be_absolute("path_prefix", p, errors);
            return Some(PathMatch::Prefix(p.as_str().into()));
        }
        if let Some(p) = &self.path_regex {
            return regex(p)
                .map(PathMatch::Regex)
                .map_err(|e| errors.push(at.key("path_regex"), e))
                .ok();
        }
        Some(PathMatch::Prefix("/".into()))
    }

    fn methods(&self, at: &At, errors: &mut ConfigErrors) -> MethodSet {
        let mut methods = Vec::new();
        for (j, name) in self.methods.iter().enumerate() {
            let upper = name.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => errors.push(
                    at.index("methods", j),
                    format!("`{name}` is not an HTTP method"),
                ),
            }
        }
        MethodSet::new(methods)
    }

    fn header_conditions(&self, at: &At, errors: &mut ConfigErrors) -> Box<[HeaderCondition]> {
        let mut headers = Vec::new();
        for (j, h) in self.headers.iter().enumerate() {
            let hat = at.index("headers", j);
            let Ok(name) = header_name(&h.name).map_err(|e| errors.push(hat.key("name"), e)) else {
                continue;
            };
            let value = match (&h.value, &h.regex) {
                (Some(_), Some(_)) => {
                    errors.push(hat, "use value or regex, not both");
                    continue;
                }
                (Some(v), None) => match header_value(v) {
                    Ok(mut v) => {
                        // A route gated on a credential holds it: keep it out of dumps.
                        v.set_sensitive(is_credential_header(&h.name));
                        HeaderValueMatch::Exact(v)
                    }
                    Err(e) => {
                        errors.push(hat.key("value"), e);
                        continue;
                    }
                },
                (None, Some(re)) => match regex(re) {
                    Ok(re) => HeaderValueMatch::Regex(re),
                    Err(e) => {
                        errors.push(hat.key("regex"), e);
                        continue;
                    }
                },
                (None, None) => HeaderValueMatch::Present,
            };
            headers.push(HeaderCondition { name, value });
        }
        headers.into()
    }
}

fn host_match(text: &str) -> Result<HostMatch, String> {
    let host = text.to_ascii_lowercase();
    let bad = |why: &str| Err(format!("`{text}` {why}"));
    if host.contains(':') && !host.starts_with('[') {
        return bad("must not carry a port: routes match the host name only");
    }
    if let Some(rest) = host.strip_prefix("*.") {
        if rest.is_empty() || rest.contains('*') {
            return bad("is not a valid wildcard (write *.example.com)");
        }
        return Ok(HostMatch::Suffix(format!(".{rest}").into()));
    }
    if host.is_empty() || host.contains('*') || host.contains('/') {
        return bad("is not a host name (write example.com or *.example.com)");
    }
    Ok(HostMatch::Exact(host.trim_end_matches('.').into()))
}

impl RewriteSection {
    fn build(&self, at: &At, errors: &mut ConfigErrors) -> Option<PathRewrite> {
        let regex_form = self.pattern.is_some() || self.replace.is_some();
        let prefix_form = self.strip_prefix.is_some() || self.add_prefix.is_some();
        if regex_form && prefix_form {
            errors.push(
                at,
                "use either pattern/replace or strip_prefix/add_prefix, not both",
            );
            return None;
        }
        if regex_form {
            let (Some(p), Some(r)) = (&self.pattern, &self.replace) else {
                errors.push(at, "pattern and replace go together");
                return None;
            };
            let pattern = regex(p)
                .map_err(|e| errors.push(at.key("pattern"), e))
                .ok()?;
            if let Err(e) = check_replacement(&pattern, r) {
                errors.push(at.key("replace"), e);
                return None;
            }
            if !r.starts_with('/') && !r.starts_with('$') {
                errors.push(at.key("replace"), "must produce a path starting with `/`");
            }
            return Some(PathRewrite::Regex {
                pattern,
                replace: r.as_str().into(),
            });
        }
        for (key, v) in [
            ("strip_prefix", &self.strip_prefix),
            ("add_prefix", &self.add_prefix),
        ] {
            if let Some(v) = v {
                if !v.starts_with('/') {
                    errors.push(at.key(key), format!("`{v}` must start with `/`"));
                }
            }
        }
        if !prefix_form {
            errors.push(
                at,
                "give pattern and replace, or strip_prefix and/or add_prefix",
            );
            return None;
        }
        Some(PathRewrite::Prefix {
            strip: self
                .strip_prefix
                .as_deref()
                .map(|s| s.trim_end_matches('/').into()),
            add: self.add_prefix.as_deref().map(Into::into),
        })
    }
}

impl RespondSection {
    fn build(&self, at: &At, errors: &mut ConfigErrors) -> Option<Respond> {
        let status = match StatusCode::from_u16(self.status) {
            Ok(s) if self.status >= 200 => s,
            _ => {
                errors.push(
                    at.key("status"),
                    format!("`{}` is not a final HTTP status (200 to 999)", self.status),
                );
                return None;
            }
        };
        let mut headers = Vec::new();
        for (k, v) in &self.headers {
            match (header_name(k), header_value(v)) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(e), _) | (_, Err(e)) => errors.push(at.key("headers").key(k), e),
            }
        }
        if !self.body.is_empty() && !headers.iter().any(|(n, _)| n == CONTENT_TYPE) {
            headers.push((
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ));
        }
        Some(Respond {
            status,
            headers: headers.into(),
            body: Bytes::from(self.body.clone()),
        })
    }
}

impl HeaderEdits {
    /// The edits as prepared header pairs. Values not marked `public` are secrets: they are
    /// flagged sensitive (shown as `Sensitive` in any `Debug` dump, never indexed by HPACK)
    /// and kept out of error messages, which reach logs.
    fn build(&self, at: &At, errors: &mut ConfigErrors) -> HeaderOps {
        for (i, p) in self.public.iter().enumerate() {
            let pat = at.index("public", i);
            if let Err(e) = header_name(p) {
                errors.push(pat, e);
            } else if is_credential_header(p) {
                errors.push(
                    pat,
                    format!("`{p}` carries credentials and is never public"),
                );
            } else if !self
                .set
                .keys()
                .chain(self.add.keys())
                .any(|k| k.eq_ignore_ascii_case(p))
            {
                errors.push(pat, format!("`{p}` is not a header of set or add"));
            }
        }
        let mut pairs = |kind: &str,
                         map: &BTreeMap<String, String>|
         -> Box<[(HeaderName, HeaderValue)]> {
            map.iter()
                    .filter_map(|(k, v)| {
                        let value = if self.is_public(k) {
                            header_value(v)
                        } else {
                            HeaderValue::from_str(v)
                                .map(|mut v| {
                                    v.set_sensitive(true);
                                    v
                                })
                                .map_err(|_| {
                                    "not a valid header value (not shown: it is secret unless listed in `public`)"
                                        .to_owned()
                                })
                        };
                        match (header_name(k), value) {
                            (Ok(n), Ok(v)) => Some((n, v)),
                            (Err(e), _) | (_, Err(e)) => {
                                errors.push(at.key(kind).key(k), e);
                                None
                            }
                        }
                    })
                    .collect()
        };
        let set = pairs("set", &self.set);
        let add = pairs("add", &self.add);
        let remove = self
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                header_name(n)
                    .map_err(|e| errors.push(at.index("remove", i), e))
                    .ok()
            })
            .collect();
        HeaderOps { remove, set, add }
    }
}

impl RetrySection {
    fn build(&self, at: &At, errors: &mut ConfigErrors) -> RetryPolicy {
        let attempts = self
            .attempts
            .unwrap_or(RetryPolicy::DEFAULT_ATTEMPTS.into());
        if !(1..=RetryPolicy::MAX_ATTEMPTS.into()).contains(&attempts) {
            errors.push(
                at.key("attempts"),
                format!("must be 1 to {}", RetryPolicy::MAX_ATTEMPTS),
            );
        }
        let per_try_timeout = self.per_try_timeout.map(|d| d.0);
        if per_try_timeout.is_some_and(|d| d.is_zero()) {
            errors.push(at.key("per_try_timeout"), "must be above zero");
        }
        RetryPolicy {
            attempts: attempts.clamp(1, RetryPolicy::MAX_ATTEMPTS.into()) as u8,
            after_send: self.after_send,
            per_try_timeout,
        }
    }
}

fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("`{text}` is not a valid header name"))
}

fn header_value(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(text).map_err(|_| format!("`{text}` is not a valid header value"))
}

fn regex(text: &str) -> Result<Regex, String> {
    Regex::new(text).map_err(|e| format!("invalid regex: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::section::error::assert_exactly;

    #[derive(Deserialize)]
    struct Routes {
        routes: Vec<RouteSection>,
    }

    fn build(yaml: &str, prev: &[Route]) -> (Vec<Route>, Vec<String>) {
        let routes: Routes = serde_yaml::from_str(yaml).expect("route sections");
        let declared = HashSet::new();
        let env = RouteEnv {
            upstreams: &[],
            declared: &declared,
            resources: crate::plugin::Resources::process(),
            listeners: &["web", "tls", "game"],
            game_listeners: &["game"],
            zookeeper: None,
            zk_root: "/zkgate",
        };
        let mut errors = ConfigErrors::default();
        let built = routes
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let prev = prev.iter().find(|p| *p.name == *r.name);
                r.build(&At::root().index("routes", i), &env, prev, &mut errors)
            })
            .collect();
        (built, errors.iter().map(ToString::to_string).collect())
    }

    fn errors(yaml: &str) -> Vec<String> {
        build(yaml, &[]).1
    }

    #[test]
    fn route_paths_must_be_in_normal_form() {
        let errs = errors(
            r#"
routes:
  - { name: a, match: { path: /a//b/../c }, respond: { body: x } }
  - { name: b, match: { path_prefix: "/%61pi/" }, respond: { body: x } }
  - { name: c, match: { path: "/x?y" }, respond: { body: x } }
  - { name: d, match: { path: "/x%00" }, respond: { body: x } }
  - { name: e, match: { path_prefix: "/a%2Fb//c\\d/" }, respond: { body: x } }
"#,
        );
        let expected = [
            "routes[0].match.path: `/a//b/../c` never matches: requests are matched on their normalized path, here `/a//c`",
            "routes[1].match.path_prefix: `/%61pi/` never matches: requests are matched on their normalized path, here `/api/`",
            "routes[2].match.path: a path cannot hold a query (`?`)",
            "routes[3].match.path: `/x%00`: control character in the path",
            "routes[4].match.path_prefix: `/a%2Fb//c\\d/` never matches: requests are matched on their normalized path, here `/a%2Fb//c%5Cd/`",
        ];
        assert_exactly(&errs, &expected);
    }

    #[test]
    fn a_rebuilt_route_keeps_its_unchanged_limiters() {
        let yaml = "routes: [{ name: r, respond: { body: x }, rate_limit: { per_second: 1 }, max_in_flight: 2 }, { name: s, respond: { body: x }, rate_limit: { per_second: 1 } }]";
        let (first, errs) = build(yaml, &[]);
        assert!(errs.is_empty(), "{errs:?}");
        let (second, errs) = build(
            &yaml
                .replace("max_in_flight: 2", "max_in_flight: 3")
                .replace(
                    "name: s, respond: { body: x }, rate_limit: { per_second: 1 }",
                    "name: s, respond: { body: x }, rate_limit: { per_second: 2 }",
                ),
            &first,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let rate = |r: &Route| r.rate_limit.clone().expect("a rate limit");
        assert!(Arc::ptr_eq(&rate(&first[0]), &rate(&second[0])));
        assert!(!Arc::ptr_eq(&rate(&first[1]), &rate(&second[1])));
        let cap = |r: &Route| r.concurrency.clone().expect("a cap");
        assert!(!Arc::ptr_eq(&cap(&first[0]), &cap(&second[0])));
        assert_eq!(cap(&second[0]).max(), 3);
    }

    #[test]
    fn a_route_to_an_unknown_upstream_is_refused() {
        assert_exactly(
            &errors("routes: [{ name: r, upstream: nowhere }]"),
            &["routes[0].upstream: no upstream named `nowhere`"],
        );
    }

    #[test]
    fn listeners_are_named_and_resolved_at_build() {
        assert_exactly(
            &errors(
                "routes:\n  - { name: a, listeners: [web, nope, game], respond: { body: x } }\n  - { name: b, listeners: [], respond: { body: x } }",
            ),
            &[
                "routes[0].listeners[1]: no listener named `nope`",
                "routes[0].listeners[2]: `game` is a game listener; HTTP routes cannot use it",
                "routes[1].listeners: name at least one listener, or leave listeners out for all of them",
            ],
        );
        let (built, errs) = build(
            "routes: [{ name: a, listeners: [tls], respond: { body: x } }, { name: b, respond: { body: x } }]",
            &[],
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert!(!built[0].listeners.contains(ListenerId(0)));
        assert!(built[0].listeners.contains(ListenerId(1)));
        assert!(!built[0].listeners.contains(ListenerId::UNKNOWN));
        assert_eq!(&*built[0].listeners.names()[0], "tls");
        assert!(built[1].listeners.contains(ListenerId(0)));
        assert!(built[1].listeners.contains(ListenerId::UNKNOWN));
        // Past the inline word.
        let far = ListenerSet::new(
            &[ListenerId(3), ListenerId(64), ListenerId(200)],
            Vec::new(),
        );
        for (id, yes) in [
            (3, true),
            (4, false),
            (64, true),
            (65, false),
            (200, true),
            (201, false),
        ] {
            assert_eq!(far.contains(ListenerId(id)), yes, "{id}");
        }
        assert!(!far.contains(ListenerId::UNKNOWN));
        assert!(ListenerSet::default().contains(ListenerId(500)));
    }

    #[test]
    fn a_redirect_is_the_routes_only_action() {
        assert_exactly(
            &errors(
                "routes:\n  - { name: a, redirect: { scheme: https }, respond: { body: x } }\n  - { name: b, redirect: { scheme: https }, rewrite: { strip_prefix: /x } }\n  - { name: c, redirect: { status: 200, scheme: https } }",
            ),
            &[
                "routes[0]: a redirect route answers every request: drop upstream, respond and plugin",
                "routes[1].rewrite: has no effect on a redirect route",
                "routes[2].redirect.status: `200` is not a redirect status",
            ],
        );
        let (built, errs) = build("routes: [{ name: a, redirect: { scheme: https } }]", &[]);
        assert!(errs.is_empty(), "{errs:?}");
        assert!(matches!(built[0].action, Action::Redirect(_)));
    }
}
