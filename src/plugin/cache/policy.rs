//! RFC 9111 decisions of a shared cache: which requests may use it, which responses it may
//! store and for how long, with the route's rules (path templates, lifetimes, marks) on top of
//! the origin's `Cache-Control`.

use std::time::{Duration, SystemTime};

use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, DATE, ETAG, EXPIRES, LAST_MODIFIED, PRAGMA, SET_COOKIE,
    UPGRADE, VARY,
};
use http::{HeaderMap, HeaderValue, Method};
use pingora::http::ResponseHeader;
use serde::Deserialize;

use super::config::CacheSection;
use super::profile::{self, Family, Kind, Shape, TagName};
use super::scope::ScopeKind;
use super::status::BypassReason;
use super::store::{StoreClass, TagId, TagSet};
use super::template::Template;
use crate::section::{At, ConfigErrors, Dur};

/// A rule's index in its route's [`Rules`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleId(pub u16);

/// Whether a rule's responses may be shared between callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// By the route's scope (`auth.scope`, or the rule's own).
    Scoped,
    /// Never across credentials: at least `per_credential`.
    Never,
}

/// One rule: a path template and what it decides.
#[derive(Debug)]
pub struct Rule {
    /// The template as written, for messages and `explain`.
    pub template: Box<str>,
    pub ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub share: Share,
    pub class: StoreClass,
    /// The rule's own scope, overriding `auth.scope`.
    pub scope: Option<ScopeKind>,
    /// The roles a `role_class` scope intersects the token's roles with.
    pub roles: Box<[Box<str>]>,
    pub kind: Kind,
}

/// What a rule knows besides the contract's [`Rule`] (kept apart so that struct's literal
/// stays as the other modules' tests write it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMeta {
    /// What the path names (item, list, singleton), for its tags.
    pub shape: Shape,
    /// No lifetime of its own: the origin's explicit one, else the RFC 9111 §4.2.2 heuristic.
    /// The implicit last rule of a route without a profile.
    pub from_origin: bool,
}

/// A rule that matched a path, with the ids the template captured (`poolId`, `resourceId`...).
#[derive(Debug)]
pub struct Matched<'a> {
    pub id: RuleId,
    pub rule: &'a Rule,
    /// Up to two captures: (name, value), the value borrowed from the path.
    pub ids: [Option<(&'a str, &'a str)>; 2],
    /// The path after the API base, without its leading or trailing slash
    /// (`resourcePools/P1/resources`): the collection tag's text.
    pub rest: &'a str,
    /// The rule's shape and lifetime source.
    pub meta: RuleMeta,
}

impl<'a> Matched<'a> {
    /// False for a rule written with `ttl: 0`: its paths bypass the cache.
    pub fn caches(&self) -> bool {
        self.meta.from_origin || !self.rule.ttl.is_zero()
    }

    /// The item's id: the last capture, when the rule names an item.
    pub fn item(&self) -> Option<&'a str> {
        if self.meta.shape != Shape::Item {
            return None;
        }
        self.ids.iter().rev().flatten().next().map(|(_, v)| *v)
    }
}

/// How a response is admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub fresh: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub class: StoreClass,
    /// The origin sent no validator: the cache makes up a strong ETag from the body.
    pub synth_etag: bool,
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoStoreReason {
    Status,
    NoStore,
    Private,
    SetCookie,
    VaryStar,
    TooLarge,
    ZeroTtl,
}

impl NoStoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NoStoreReason::Status => "status",
            NoStoreReason::NoStore => "no-store",
            NoStoreReason::Private => "private",
            NoStoreReason::SetCookie => "set-cookie",
            NoStoreReason::VaryStar => "vary-star",
            NoStoreReason::TooLarge => "too-large",
            NoStoreReason::ZeroTtl => "zero-ttl",
        }
    }
}

/// The longest lifetime the RFC 9111 §4.2.2 heuristic (10% of the time since
/// `Last-Modified`) gives: a document unchanged for a year is still rechecked hourly.
pub const HEURISTIC_CAP: Duration = Duration::from_secs(3600);

/// Statuses RFC 9110 §15.1 makes heuristically cacheable.
const HEURISTIC_STATUSES: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// One entry of `cache.rules`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// The path template.
    pub path: String,
    /// The lifetime when the origin gives none (or always, with `override_origin`); `0`
    /// bypasses the cache on these paths; absent: the profile's, else the origin's.
    #[serde(default)]
    pub ttl: Option<Dur>,
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    /// `scoped` (default) or `never`.
    #[serde(default)]
    pub share: Option<ShareWord>,
    /// `shared` (default) or `memory_only`.
    #[serde(default)]
    pub store: Option<ClassWord>,
    #[serde(default)]
    pub scope: Option<ScopeKind>,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

/// `rules[].share`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareWord {
    Scoped,
    Never,
}

/// `rules[].store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWord {
    Shared,
    MemoryOnly,
}

/// A route's rules, first match wins.
#[derive(Debug)]
pub struct Rules {
    rules: Box<[Rule]>,
    metas: Box<[RuleMeta]>,
    /// Every compiled template and the index of its rule, in match order.
    templates: Box<[(Template, u16)]>,
    /// `f:` and `k:` of each rule, hashed at build.
    kind_tags: Box<[(TagId, TagId)]>,
    store: Box<str>,
    ns: TagId,
    statuses: Box<[u16]>,
    max_object_size: u64,
    override_origin: bool,
    honour_client_no_cache: bool,
    degraded_ttl: Duration,
}

/// What the rules are built from, besides `cache.rules` (the section's resolved defaults).
#[derive(Clone, Debug)]
pub struct RuleDefaults {
    pub o2ims: bool,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub statuses: Box<[u16]>,
    pub max_object_size: u64,
    pub override_origin: bool,
    pub honour_client_no_cache: bool,
    pub degraded_ttl: Duration,
}

impl Rules {
    /// The rules of `section` for store `store`: the route's own rules in order (a rule with a
    /// profile path takes the profile's values as its defaults), then the profile's other
    /// paths, then, without a profile, an implicit `/**` that follows the origin alone.
    pub fn build(
        section: &CacheSection,
        store: &str,
        defaults: &RuleDefaults,
        at: &At,
        errors: &mut ConfigErrors,
    ) -> Option<Rules> {
        let before = errors.len();
        let profile: &[profile::ProfileRule] = if defaults.o2ims { profile::O2IMS } else { &[] };
        let mut rules: Vec<Rule> = Vec::new();
        let mut metas: Vec<RuleMeta> = Vec::new();
        let mut templates: Vec<(Template, u16)> = Vec::new();
        let mut used = vec![false; profile.len()];
        let mut seen: Vec<&str> = Vec::new();
        let written = section.rules.as_deref().unwrap_or_default();
        let mut parsed = Vec::with_capacity(written.len());
        for (i, value) in written.iter().enumerate() {
            let at = at.index("rules", i);
            match serde_yaml::from_value::<RuleSection>(value.clone()) {
                Ok(r) => parsed.push((at, r)),
                Err(e) => errors.push(at, format!("not a rule: {e}")),
            }
        }
        for (at, r) in &parsed {
            if seen.contains(&r.path.as_str()) {
                errors.push(
                    at.key("path"),
                    format!("`{}` is named by an earlier rule", r.path),
                );
                continue;
            }
            seen.push(&r.path);
            let base = profile.iter().position(|p| p.path == r.path);
            if let Some(b) = base {
                used[b] = true;
            }
            let base = base.map(|b| profile[b]);
            let rule = Rule {
                template: r.path.as_str().into(),
                ttl: r
                    .ttl
                    .map(|d| d.0)
                    .or(base.map(|b| Duration::from_secs(b.ttl_secs)))
                    .unwrap_or_default(),
                stale_while_revalidate: r
                    .stale_while_revalidate
                    .map_or(defaults.stale_while_revalidate, |d| d.0),
                stale_if_error: r.stale_if_error.map_or(defaults.stale_if_error, |d| d.0),
                share: match r.share {
                    Some(ShareWord::Never) => Share::Never,
                    Some(ShareWord::Scoped) => Share::Scoped,
                    None if base.is_some_and(|b| b.share_never) => Share::Never,
                    None => Share::Scoped,
                },
                class: match r.store {
                    Some(ClassWord::MemoryOnly) => StoreClass::MemoryOnly,
                    Some(ClassWord::Shared) => StoreClass::Shared,
                    None if base.is_some_and(|b| b.memory_only) => StoreClass::MemoryOnly,
                    None => StoreClass::Shared,
                },
                scope: r.scope,
                roles: match (&r.roles, base) {
                    (Some(roles), _) => roles.iter().map(|s| s.as_str().into()).collect(),
                    (None, Some(b)) => b.roles.iter().map(|s| (*s).into()).collect(),
                    (None, None) => Box::default(),
                },
                kind: base.map_or(Kind::Generic, |b| b.kind),
            };
            metas.push(RuleMeta {
                shape: base.map_or_else(|| shape_of(&r.path), |b| b.shape),
                from_origin: r.ttl.is_none() && base.is_none(),
            });
            check_rule(&rule, section, at, errors);
            let id = rules.len() as u16;
            match Template::compile(&r.path) {
                Ok(ts) => templates.extend(ts.into_iter().map(|t| (t, id))),
                Err(e) => errors.push(at.key("path"), e),
            }
            rules.push(rule);
        }
        for (p, _) in profile.iter().zip(&used).filter(|(_, used)| !**used) {
            let id = rules.len() as u16;
            let ts = Template::compile(p.path).unwrap_or_default();
            templates.extend(ts.into_iter().map(|t| (t, id)));
            rules.push(Rule {
                template: p.path.into(),
                ttl: Duration::from_secs(p.ttl_secs),
                stale_while_revalidate: defaults.stale_while_revalidate,
                stale_if_error: defaults.stale_if_error,
                share: if p.share_never {
                    Share::Never
                } else {
                    Share::Scoped
                },
                class: if p.memory_only {
                    StoreClass::MemoryOnly
                } else {
                    StoreClass::Shared
                },
                scope: None,
                roles: p.roles.iter().map(|s| (*s).into()).collect(),
                kind: p.kind,
            });
            metas.push(RuleMeta {
                shape: p.shape,
                from_origin: false,
            });
        }
        if !defaults.o2ims && !seen.contains(&"/**") {
            let id = rules.len() as u16;
            templates.extend(
                Template::compile("/**")
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| (t, id)),
            );
            rules.push(Rule {
                template: "/**".into(),
                ttl: Duration::ZERO,
                stale_while_revalidate: defaults.stale_while_revalidate,
                stale_if_error: defaults.stale_if_error,
                share: Share::Scoped,
                class: StoreClass::Shared,
                scope: None,
                roles: Box::default(),
                kind: Kind::Generic,
            });
            metas.push(RuleMeta {
                shape: Shape::Collection,
                from_origin: true,
            });
        }
        if rules.len() > usize::from(u16::MAX) {
            errors.push(at.key("rules"), "too many rules");
        }
        if errors.len() > before {
            return None;
        }
        let kind_tags = rules
            .iter()
            .map(|r| {
                (
                    profile::tag(store, TagName::Family(r.kind.family())),
                    profile::tag(store, TagName::Kind(r.kind)),
                )
            })
            .collect();
        Some(Rules {
            rules: rules.into(),
            metas: metas.into(),
            templates: templates.into(),
            kind_tags,
            store: store.into(),
            ns: profile::tag(store, TagName::Ns),
            statuses: defaults.statuses.clone(),
            max_object_size: defaults.max_object_size,
            override_origin: defaults.override_origin,
            honour_client_no_cache: defaults.honour_client_no_cache,
            degraded_ttl: defaults.degraded_ttl,
        })
    }

    /// Every rule, in match order.
    pub fn all(&self) -> &[Rule] {
        &self.rules
    }

    /// The shape and lifetime source of rule `id`.
    pub fn meta(&self, id: RuleId) -> RuleMeta {
        self.metas[usize::from(id.0)]
    }

    /// The store the tags are hashed for.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// The first rule whose template matches `path`, `ttl: 0` rules included.
    pub fn lookup<'a>(&'a self, path: &'a str) -> Option<Matched<'a>> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.templates.iter().find_map(|(t, id)| {
            let c = t.matches(path)?;
            Some(Matched {
                id: RuleId(*id),
                rule: &self.rules[usize::from(*id)],
                ids: c.ids,
                rest: c.rest,
                meta: self.metas[usize::from(*id)],
            })
        })
    }

    /// The rule for `path`, if any: `None` when no rule matches or the first match says
    /// `ttl: 0` (both bypass the cache as `no-rule`).
    pub fn matched<'a>(&'a self, path: &'a str) -> Option<Matched<'a>> {
        self.lookup(path).filter(Matched::caches)
    }

    pub fn rule(&self, id: RuleId) -> &Rule {
        // A RuleId is only made by `lookup` from this route's rules.
        &self.rules[usize::from(id.0)]
    }

    /// Whether the request may use the cache at all (method, upgrade, client `no-cache`).
    pub fn on_request(&self, method: &Method, headers: &HeaderMap) -> Result<(), BypassReason> {
        if (method != Method::GET && method != Method::HEAD) || headers.contains_key(UPGRADE) {
            return Err(BypassReason::Method);
        }
        if self.honour_client_no_cache {
            // RFC 9111 §5.2.1: `no-cache` and `max-age=0` ask for a response validated with
            // the origin, and `no-store` for one the cache does not keep: the origin answers
            // them directly. `Pragma: no-cache` counts only without Cache-Control (§5.4).
            let mut any = false;
            for d in directives(headers.get_all(CACHE_CONTROL).iter()) {
                any = true;
                match d.name {
                    n if n.eq_ignore_ascii_case("no-cache")
                        || n.eq_ignore_ascii_case("no-store") =>
                    {
                        return Err(BypassReason::ClientNoCache)
                    }
                    n if n.eq_ignore_ascii_case("max-age") && d.seconds() == Some(0) => {
                        return Err(BypassReason::ClientNoCache)
                    }
                    _ => {}
                }
            }
            if !any
                && headers.get_all(PRAGMA).iter().any(|v| {
                    directives(std::iter::once(v)).any(|d| d.name.eq_ignore_ascii_case("no-cache"))
                })
            {
                return Err(BypassReason::ClientNoCache);
            }
        }
        Ok(())
    }

    /// Whether and how the response is stored. `cap` is the latest time the entry may live to
    /// (the token's `exp`); `degraded` shrinks O2 lifetimes to `degraded_ttl`.
    pub fn on_response(
        &self,
        id: RuleId,
        resp: &ResponseHeader,
        now: SystemTime,
        cap: Option<SystemTime>,
        degraded: bool,
    ) -> Result<Admission, NoStoreReason> {
        let rule = self.rule(id);
        let meta = self.metas[usize::from(id.0)];
        let headers = &resp.headers;
        let status = resp.status.as_u16();
        if !self.statuses.contains(&status) {
            return Err(NoStoreReason::Status);
        }
        let cc = ResponseDirectives::parse(headers);
        if !self.override_origin {
            if cc.no_store {
                return Err(NoStoreReason::NoStore);
            }
            if cc.private {
                return Err(NoStoreReason::Private);
            }
        }
        // A cookie set for one caller must never reach another, whatever the rules say.
        if headers.contains_key(SET_COOKIE) {
            return Err(NoStoreReason::SetCookie);
        }
        if headers.get_all(VARY).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|n| n.trim_ascii() == b"*")
        }) {
            return Err(NoStoreReason::VaryStar);
        }
        if let Some(len) = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if len > self.max_object_size {
                return Err(NoStoreReason::TooLarge);
            }
        }
        let validators = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
        let mut swr = rule.stale_while_revalidate;
        let mut sie = rule.stale_if_error;
        let fresh = if self.override_origin {
            rule.ttl
        } else {
            // RFC 9111 §4.2.1: s-maxage, then max-age, then Expires; without any of them the
            // rule's lifetime (or the heuristic of §4.2.2 where the rule defers to the origin).
            let lifetime = if cc.no_cache {
                Duration::ZERO
            } else if let Some(s) = cc.s_maxage.or(cc.max_age) {
                Duration::from_secs(s)
            } else if let Some(expires) = headers.get(EXPIRES) {
                let date = headers.get(DATE).and_then(http_date).unwrap_or(now);
                http_date(expires)
                    .and_then(|e| e.duration_since(date).ok())
                    .unwrap_or_default()
            } else if meta.from_origin {
                heuristic(status, headers, now)
            } else {
                rule.ttl
            };
            if let Some(s) = cc.stale_while_revalidate {
                swr = Duration::from_secs(s);
            }
            if let Some(s) = cc.stale_if_error {
                sie = Duration::from_secs(s);
            }
            // §5.2.2.2, §5.2.2.8 and §5.2.2.10: never served stale without the origin.
            if cc.must_revalidate || cc.no_cache || cc.s_maxage.is_some() {
                swr = Duration::ZERO;
                sie = Duration::ZERO;
            }
            // §4.2.3: what an upstream cache already spent of the lifetime.
            let age = headers
                .get(AGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            lifetime.saturating_sub(Duration::from_secs(age))
        };
        let mut fresh = fresh;
        if degraded && rule.kind != Kind::Generic {
            fresh = fresh.min(self.degraded_ttl);
        }
        if let Some(cap) = cap {
            let left = cap.duration_since(now).unwrap_or_default();
            if left.is_zero() {
                return Err(NoStoreReason::ZeroTtl);
            }
            fresh = fresh.min(left);
            swr = swr.min(left - fresh);
            sie = sie.min(left - fresh);
        }
        if fresh.is_zero() && !validators && swr.is_zero() {
            return Err(NoStoreReason::ZeroTtl);
        }
        Ok(Admission {
            fresh,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            class: rule.class,
            synth_etag: !headers.contains_key(ETAG),
        })
    }

    /// The tags of an entry stored for `path` under `m`: `ns`, the target's `u:`, and for an
    /// O2 rule its family, kind, and item or collection (design §4.3).
    pub fn tags(&self, m: &Matched<'_>, path: &str, out: &mut TagSet) {
        out.push(self.ns);
        let kind = m.rule.kind;
        if kind != Kind::Generic {
            let (family, k) = self.kind_tags[usize::from(m.id.0)];
            out.push(family);
            out.push(k);
            match m.meta.shape {
                Shape::Item => {
                    if let Some(id) = m.item() {
                        out.push(profile::tag(&self.store, TagName::Item(kind, id)));
                    }
                }
                Shape::Collection => {
                    out.push(profile::tag(&self.store, TagName::Collection(m.rest)))
                }
                Shape::Singleton => {}
            }
        }
        out.push(profile::tag(&self.store, TagName::Uri(normalized(path))));
    }

    /// The names of the tags [`Rules::tags`] gives, in the same order, for `explain`.
    pub fn tag_names<'a>(&self, m: &Matched<'a>, path: &'a str, mut f: impl FnMut(TagName<'a>)) {
        f(TagName::Ns);
        let kind = m.rule.kind;
        if kind != Kind::Generic {
            f(TagName::Family(kind.family()));
            f(TagName::Kind(kind));
            match m.meta.shape {
                Shape::Item => {
                    if let Some(id) = m.item() {
                        f(TagName::Item(kind, id));
                    }
                }
                Shape::Collection => f(TagName::Collection(m.rest)),
                Shape::Singleton => {}
            }
        }
        f(TagName::Uri(normalized(path)));
    }

    /// What an unsafe `method` on `path` invalidates when it succeeds (RFC 9111 §4.4): the
    /// target and its parent (`u:`), and under a profile the target's item and its collection,
    /// or the collection it posts to.
    pub fn invalidations(&self, method: &Method, path: &str, out: &mut TagSet) {
        if is_safe(method) {
            return;
        }
        let path = normalized(path);
        out.push(profile::tag(&self.store, TagName::Uri(path)));
        if let Some(parent) = parent(path) {
            out.push(profile::tag(&self.store, TagName::Uri(parent)));
        }
        let Some(m) = self.lookup(path) else {
            return;
        };
        let kind = m.rule.kind;
        if kind == Kind::Generic {
            return;
        }
        match m.meta.shape {
            Shape::Item => {
                if let Some(id) = m.item() {
                    out.push(profile::tag(&self.store, TagName::Item(kind, id)));
                    if let Some(c) = collection_of(m.rest, id) {
                        out.push(profile::tag(&self.store, TagName::Collection(c)));
                    }
                }
            }
            Shape::Collection => out.push(profile::tag(&self.store, TagName::Collection(m.rest))),
            Shape::Singleton => out.push(self.kind_tags[usize::from(m.id.0)].1),
        }
    }

    /// The `f:` tag of `family` in this store.
    pub fn family_tag(&self, family: Family) -> TagId {
        profile::tag(&self.store, TagName::Family(family))
    }
}

/// The shape of a template written by the operator: an item when it ends in a capture.
fn shape_of(path: &str) -> Shape {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if last.starts_with('{') && last != "{base}" && last != "{version}" {
        Shape::Item
    } else {
        Shape::Collection
    }
}

/// Checks one rule's marks against each other and the route's `auth`.
fn check_rule(rule: &Rule, section: &CacheSection, at: &At, errors: &mut ConfigErrors) {
    if rule.scope == Some(ScopeKind::RoleClass) {
        if rule.share == Share::Never {
            errors.push(
                at.key("scope"),
                "`role_class` shares entries between principals, which `share: never` forbids",
            );
        }
        if rule.class == StoreClass::MemoryOnly {
            errors.push(
                at.key("scope"),
                "`role_class` with `store: memory_only`: a response kept out of the shared tier must not be shared between principals either",
            );
        }
        if rule.roles.is_empty() {
            errors.push(
                at.key("roles"),
                "`role_class` needs the roles that may read these paths",
            );
        }
    }
    if rule.scope.is_some() && section.auth.is_none() {
        errors.push(
            at.key("scope"),
            "a rule's scope needs `auth` (the token's verification) on the cache",
        );
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// `path` without its query and without one trailing slash (`/` stays).
pub fn normalized(path: &str) -> &str {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    }
}

/// `/a/b` → `/a`; `/a` → `/`; `/` → none.
fn parent(path: &str) -> Option<&str> {
    if path == "/" || path.is_empty() {
        return None;
    }
    let i = path.rfind('/')?;
    Some(if i == 0 { "/" } else { &path[..i] })
}

/// The collection an item sits in: `rest` up to the slash before `id` (`id` is a slice of
/// the same path as `rest`).
fn collection_of<'a>(rest: &'a str, id: &str) -> Option<&'a str> {
    let at = (id.as_ptr() as usize).checked_sub(rest.as_ptr() as usize)?;
    let before = rest.get(..at)?;
    before.strip_suffix('/').filter(|c| !c.is_empty())
}

/// RFC 9111 §4.2.2: 10% of the time since `Last-Modified`, at most [`HEURISTIC_CAP`], for
/// the statuses that allow it; nothing without `Last-Modified`.
fn heuristic(status: u16, headers: &HeaderMap, now: SystemTime) -> Duration {
    if !HEURISTIC_STATUSES.contains(&status) {
        return Duration::ZERO;
    }
    let Some(modified) = headers.get(LAST_MODIFIED).and_then(http_date) else {
        return Duration::ZERO;
    };
    let date = headers.get(DATE).and_then(http_date).unwrap_or(now);
    (date.duration_since(modified).unwrap_or_default() / 10).min(HEURISTIC_CAP)
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7). The obsolete forms
/// are not read: RFC 9111 §5.3 has a cache treat a date it cannot read as in the past.
pub fn http_date(v: &HeaderValue) -> Option<SystemTime> {
    use time::macros::format_description;
    let fmt = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let s = v.to_str().ok()?;
    let t = time::PrimitiveDateTime::parse(s.trim(), &fmt)
        .ok()?
        .assume_utc();
    Some(SystemTime::from(t))
}

/// One `Cache-Control` directive: its name and raw value (quotes removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directive<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
}

impl Directive<'_> {
    /// A delta-seconds value; a malformed one reads as 0, so it errs towards fresher data.
    pub fn seconds(&self) -> Option<u64> {
        let v = self.value?;
        Some(if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
            v.parse::<u64>().unwrap_or(u64::MAX)
        } else {
            0
        })
    }
}

/// The directives of every field value in `values`, comma-separated, quoted strings kept
/// whole (`no-cache="a, b"` is one directive).
pub fn directives<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = Directive<'a>> {
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| SplitDirectives { rest: s })
}

struct SplitDirectives<'a> {
    rest: &'a str,
}

impl<'a> Iterator for SplitDirectives<'a> {
    type Item = Directive<'a>;

    fn next(&mut self) -> Option<Directive<'a>> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let mut quoted = false;
            let mut end = self.rest.len();
            for (i, c) in self.rest.char_indices() {
                match c {
                    '"' => quoted = !quoted,
                    ',' if !quoted => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let item = &self.rest[..end];
            self.rest = self.rest.get(end + 1..).unwrap_or("");
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => {
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v);
                    (n.trim(), Some(v))
                }
                None => (item, None),
            };
            return Some(Directive { name, value });
        }
    }
}

/// The response directives a shared cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ResponseDirectives {
    no_store: bool,
    private: bool,
    no_cache: bool,
    must_revalidate: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    stale_while_revalidate: Option<u64>,
    stale_if_error: Option<u64>,
}

impl ResponseDirectives {
    fn parse(headers: &HeaderMap) -> ResponseDirectives {
        // A directive given twice takes its most restrictive value (RFC 9111 §4.2.1).
        fn least(slot: &mut Option<u64>, v: Option<u64>) {
            if let Some(v) = v {
                *slot = Some(slot.map_or(v, |s| s.min(v)));
            }
        }
        let mut d = ResponseDirectives::default();
        for x in directives(headers.get_all(CACHE_CONTROL).iter()) {
            let n = x.name;
            if n.eq_ignore_ascii_case("no-store") {
                d.no_store = true;
            } else if n.eq_ignore_ascii_case("private") {
                // The qualified form (`private="f"`) lets a cache store the rest; refusing
                // the whole response is the safe reading.
                d.private = true;
            } else if n.eq_ignore_ascii_case("no-cache") {
                d.no_cache = true;
            } else if n.eq_ignore_ascii_case("must-revalidate")
                || n.eq_ignore_ascii_case("proxy-revalidate")
            {
                d.must_revalidate = true;
            } else if n.eq_ignore_ascii_case("max-age") {
                least(&mut d.max_age, x.seconds().or(Some(0)));
            } else if n.eq_ignore_ascii_case("s-maxage") {
                least(&mut d.s_maxage, x.seconds().or(Some(0)));
            } else if n.eq_ignore_ascii_case("stale-while-revalidate") {
                least(&mut d.stale_while_revalidate, x.seconds());
            } else if n.eq_ignore_ascii_case("stale-if-error") {
                least(&mut d.stale_if_error, x.seconds());
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::plugin::cache::config::CacheSection;

    fn section(yaml: &str) -> CacheSection {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn build(yaml: &str) -> Result<Rules, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let cfg = section(yaml).build("r", &At::new("routes[0].plugin.cache"), &mut errors);
        match cfg {
            Some(c) if errors.is_empty() => Ok(c.rules),
            _ => Err(errors),
        }
    }

    fn rules(yaml: &str) -> Rules {
        build(yaml).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    const NOW_S: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_S)
    }

    fn date(offset: i64) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp(NOW_S as i64 + offset).unwrap();
        let fmt = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        t.format(&fmt).unwrap()
    }

    fn admit(r: &Rules, path: &str, h: &[(&str, &str)]) -> Result<Admission, NoStoreReason> {
        let m = r.matched(path).expect("a rule");
        r.on_response(m.id, &resp(200, h), now(), None, false)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_generic_route_follows_the_origin() {
        let r = rules("{}");
        assert_eq!(
            admit(&r, "/a", &[("cache-control", "max-age=60")])
                .unwrap()
                .fresh,
            secs(60)
        );
        assert_eq!(
            admit(&r, "/a", &[("cache-control", "max-age=60, s-maxage=30")])
                .unwrap()
                .fresh,
            secs(30)
        );
        assert_eq!(admit(&r, "/a", &[]), Err(NoStoreReason::ZeroTtl));
        assert_eq!(
            admit(&r, "/a", &[("cache-control", "no-store")]),
            Err(NoStoreReason::NoStore)
        );
        assert_eq!(
            admit(&r, "/a", &[("cache-control", "private")]),
            Err(NoStoreReason::Private)
        );
        assert_eq!(
            admit(
                &r,
                "/a",
                &[("cache-control", "private=\"x, y\", max-age=5")]
            ),
            Err(NoStoreReason::Private)
        );
        let e = date(120);
        let d = date(0);
        assert_eq!(
            admit(&r, "/a", &[("expires", &e), ("date", &d)])
                .unwrap()
                .fresh,
            secs(120)
        );
        assert_eq!(
            admit(&r, "/a", &[("expires", "0")]),
            Err(NoStoreReason::ZeroTtl)
        );
        // The heuristic: 10% of the time since Last-Modified, capped.
        let lm = date(-1000);
        assert_eq!(
            admit(&r, "/a", &[("last-modified", &lm)]).unwrap().fresh,
            secs(100)
        );
        let old = date(-10_000_000);
        assert_eq!(
            admit(&r, "/a", &[("last-modified", &old)]).unwrap().fresh,
            HEURISTIC_CAP
        );
        // An upstream cache's Age is spent.
        assert_eq!(
            admit(&r, "/a", &[("cache-control", "max-age=60"), ("age", "20")])
                .unwrap()
                .fresh,
            secs(40)
        );
        // Invalid max-age reads as 0.
        assert_eq!(
            admit(&r, "/a", &[("cache-control", "max-age=abc")]),
            Err(NoStoreReason::ZeroTtl)
        );
        // A duplicated directive takes its least value.
        assert_eq!(
            admit(
                &r,
                "/a",
                &[
                    ("cache-control", "max-age=60"),
                    ("cache-control", "max-age=10")
                ]
            )
            .unwrap()
            .fresh,
            secs(10)
        );
    }

    #[test]
    fn stale_windows_come_from_the_rule_then_the_origin_and_revalidation_forbids_them() {
        let r = rules(
            "{ stale_while_revalidate: 10s, stale_if_error: 5m, rules: [{ path: /x, ttl: 1m }] }",
        );
        let a = admit(&r, "/x", &[]).unwrap();
        assert_eq!(
            (a.fresh, a.stale_while_revalidate, a.stale_if_error),
            (secs(60), secs(10), secs(300))
        );
        let a = admit(
            &r,
            "/x",
            &[(
                "cache-control",
                "max-age=5, stale-while-revalidate=2, stale-if-error=3",
            )],
        )
        .unwrap();
        assert_eq!(
            (a.fresh, a.stale_while_revalidate, a.stale_if_error),
            (secs(5), secs(2), secs(3))
        );
        for cc in [
            "max-age=5, must-revalidate",
            "max-age=5, proxy-revalidate",
            "s-maxage=5",
        ] {
            let a = admit(&r, "/x", &[("cache-control", cc)]).unwrap();
            assert_eq!(
                (a.stale_while_revalidate, a.stale_if_error),
                (Duration::ZERO, Duration::ZERO),
                "{cc}"
            );
        }
        // no-cache: stored only to be revalidated, which needs a validator.
        assert_eq!(
            admit(&r, "/x", &[("cache-control", "no-cache")]),
            Err(NoStoreReason::ZeroTtl)
        );
        let a = admit(
            &r,
            "/x",
            &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
        )
        .unwrap();
        assert_eq!(a.fresh, Duration::ZERO);
        assert!(!a.synth_etag);
        assert!(admit(&r, "/x", &[]).unwrap().synth_etag);
    }

    #[test]
    fn refused_whatever_the_rules_say() {
        let r = rules("{ override_origin: true, rules: [{ path: /x, ttl: 1m }] }");
        assert_eq!(
            admit(&r, "/x", &[("set-cookie", "a=b")]),
            Err(NoStoreReason::SetCookie)
        );
        assert_eq!(
            admit(&r, "/x", &[("vary", "accept, *")]),
            Err(NoStoreReason::VaryStar)
        );
        assert_eq!(
            admit(&r, "/x", &[("content-length", "2000000")]),
            Err(NoStoreReason::TooLarge)
        );
        assert!(admit(&r, "/x", &[("content-length", "1000")]).is_ok());
        let m = r.matched("/x").unwrap();
        for s in [206, 404, 401, 403, 500, 503] {
            assert_eq!(
                r.on_response(m.id, &resp(s, &[]), now(), None, false),
                Err(NoStoreReason::Status),
                "{s}"
            );
        }
        // override_origin: the rule decides, not the origin's no-store or max-age.
        let a = admit(
            &r,
            "/x",
            &[("cache-control", "no-store, private, max-age=5")],
        )
        .unwrap();
        assert_eq!(a.fresh, secs(60));
    }

    #[test]
    fn the_token_caps_and_degraded_shrinks_o2_lifetimes() {
        let r = rules("{ profile: o2ims, stale_if_error: 5m }");
        let p = "/o2ims-infrastructureInventory/v1/resourceTypes";
        let m = r.matched(p).unwrap();
        let a = r
            .on_response(m.id, &resp(200, &[]), now(), None, false)
            .unwrap();
        assert_eq!(a.fresh, secs(1800));
        let a = r
            .on_response(m.id, &resp(200, &[]), now(), None, true)
            .unwrap();
        assert_eq!(a.fresh, secs(15));
        let a = r
            .on_response(m.id, &resp(200, &[]), now(), Some(now() + secs(100)), false)
            .unwrap();
        assert_eq!((a.fresh, a.stale_if_error), (secs(100), Duration::ZERO));
        let a = r
            .on_response(
                m.id,
                &resp(200, &[]),
                now(),
                Some(now() + secs(2000)),
                false,
            )
            .unwrap();
        assert_eq!((a.fresh, a.stale_if_error), (secs(1800), secs(200)));
        assert_eq!(
            r.on_response(m.id, &resp(200, &[]), now(), Some(now() - secs(1)), false),
            Err(NoStoreReason::ZeroTtl)
        );
        // A generic route is not shrunk by a degraded O2 channel.
        let g = rules("{ rules: [{ path: /x, ttl: 1m }] }");
        let m = g.matched("/x").unwrap();
        assert_eq!(
            g.on_response(m.id, &resp(200, &[]), now(), None, true)
                .unwrap()
                .fresh,
            secs(60)
        );
    }

    #[test]
    fn o2ims_ttls_by_template_on_every_base_and_version() {
        let r = rules("{ profile: o2ims }");
        let cases = [
            ("/o2ims-infrastructureInventory/v1", 1800, Kind::Ocloud),
            (
                "/o2ims-infrastructureInventory/api_versions",
                1800,
                Kind::Ocloud,
            ),
            (
                "/o2ims-infrastructureInventory/v2/api_versions",
                1800,
                Kind::Ocloud,
            ),
            (
                "/o2ims-infrastructureInventory/v2/resourcePools",
                300,
                Kind::ResourcePools,
            ),
            (
                "/o2ims-infrastructureInventory/v2/resourcePools/",
                300,
                Kind::ResourcePools,
            ),
            (
                "/o2ims-infrastructureInventory/v1/resourcePools/P1",
                300,
                Kind::ResourcePools,
            ),
            (
                "/o2ims-infrastructureInventory/v1/resourcePools/P1/resources",
                60,
                Kind::Resources,
            ),
            ("/o2ims/v1/resources/R1", 60, Kind::Resources),
            (
                "/o2ims-infrastructureInventory/v2/resourceTypes/T/alarmDictionary",
                1800,
                Kind::ResourceTypes,
            ),
            (
                "/o2ims-infrastructureInventory/v2/deploymentManagers/D",
                600,
                Kind::DeploymentManagers,
            ),
            (
                "/o2ims-infrastructureInventory/v2/oCloudSites",
                300,
                Kind::OCloudSites,
            ),
            (
                "/o2ims-infrastructureInventory/v2/subscriptions/S",
                30,
                Kind::Subscriptions,
            ),
            (
                "/o2ims-infrastructureMonitoring/v1/alarms/A",
                30,
                Kind::Alarms,
            ),
        ];
        for (p, ttl, kind) in cases {
            let m = r.matched(p).unwrap_or_else(|| panic!("{p}"));
            assert_eq!((m.rule.ttl, m.rule.kind), (secs(ttl), kind), "{p}");
        }
        let dm = r
            .matched("/o2ims-infrastructureInventory/v2/deploymentManagers")
            .unwrap();
        assert_eq!(
            (dm.rule.share, dm.rule.class),
            (Share::Never, StoreClass::MemoryOnly)
        );
        assert!(dm.rule.roles.iter().any(|r| &**r == "o2ims-deployer"));
        for p in [
            "/o2ims-infrastructureInventory/x1/resourcePools",
            "/o2ims-infrastructureProvisioning/v1/provisioningRequests",
            "/o2ims-infrastructureInventory/v1/resourcePools/P1/resources/R1/x",
        ] {
            assert!(r.matched(p).is_none(), "{p}");
        }
    }

    #[test]
    fn route_rules_come_first_and_override_the_profile_path() {
        let r = rules(
            "{ profile: o2ims, rules: [
                { path: '{base}/resourcePools/{poolId}/resources', ttl: 5s },
                { path: '{base}/resourceTypes', ttl: 0 },
                { path: '/extra/{id}', ttl: 2s } ] }",
        );
        let m = r
            .matched("/o2ims-infrastructureInventory/v2/resourcePools/P/resources")
            .unwrap();
        assert_eq!(
            (m.rule.ttl, m.rule.kind, m.meta.shape),
            (secs(5), Kind::Resources, Shape::Collection)
        );
        assert!(r
            .matched("/o2ims-infrastructureInventory/v2/resourceTypes")
            .is_none());
        assert!(r
            .lookup("/o2ims-infrastructureInventory/v2/resourceTypes")
            .is_some());
        let m = r.matched("/extra/1").unwrap();
        assert_eq!(
            (m.rule.kind, m.meta.shape, m.item()),
            (Kind::Generic, Shape::Item, Some("1"))
        );
        // An o2ims route caches no path outside its rules.
        assert!(r.matched("/other").is_none());
    }

    #[test]
    fn a_ttl_zero_rule_stops_the_search() {
        let r = rules("{ rules: [{ path: /private/**, ttl: 0 }, { path: /**, ttl: 1m }] }");
        assert!(r.matched("/private/a").is_none());
        assert_eq!(r.matched("/a").unwrap().rule.ttl, secs(60));
        assert!(!r.matched("/a").unwrap().meta.from_origin);
    }

    #[test]
    fn on_request_bypasses_unsafe_methods_upgrades_and_client_no_cache() {
        let r = rules("{}");
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (n, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        assert_eq!(r.on_request(&Method::GET, &h(&[])), Ok(()));
        assert_eq!(r.on_request(&Method::HEAD, &h(&[])), Ok(()));
        assert_eq!(
            r.on_request(&Method::POST, &h(&[])),
            Err(BypassReason::Method)
        );
        assert_eq!(
            r.on_request(&Method::GET, &h(&[("upgrade", "websocket")])),
            Err(BypassReason::Method)
        );
        for cc in ["no-cache", "max-age=0", "no-store", "foo, No-Cache"] {
            assert_eq!(
                r.on_request(&Method::GET, &h(&[("cache-control", cc)])),
                Err(BypassReason::ClientNoCache),
                "{cc}"
            );
        }
        assert_eq!(
            r.on_request(&Method::GET, &h(&[("cache-control", "max-age=10")])),
            Ok(())
        );
        assert_eq!(
            r.on_request(&Method::GET, &h(&[("pragma", "no-cache")])),
            Err(BypassReason::ClientNoCache)
        );
        assert_eq!(
            r.on_request(
                &Method::GET,
                &h(&[("pragma", "no-cache"), ("cache-control", "max-age=5")])
            ),
            Ok(())
        );
        let ignore = rules("{ request_no_cache: ignore }");
        assert_eq!(
            ignore.on_request(&Method::GET, &h(&[("cache-control", "no-cache")])),
            Ok(())
        );
    }

    fn tagset(r: &Rules, path: &str) -> TagSet {
        let m = r.matched(path).unwrap();
        let mut out = TagSet::new();
        r.tags(&m, path, &mut out);
        out
    }

    #[test]
    fn o2_tags_speak_the_shared_vocabulary() {
        let r = rules("{ profile: o2ims, store: o2 }");
        let t = |n| profile::tag("o2", n);
        let item = tagset(
            &r,
            "/o2ims-infrastructureInventory/v2/resourcePools/P1/resources/R1",
        );
        assert_eq!(
            item.as_slice(),
            [
                t(TagName::Ns),
                t(TagName::Family(Family::Inventory)),
                t(TagName::Kind(Kind::Resources)),
                t(TagName::Item(Kind::Resources, "R1")),
                t(TagName::Uri(
                    "/o2ims-infrastructureInventory/v2/resourcePools/P1/resources/R1"
                )),
            ]
        );
        let list = tagset(
            &r,
            "/o2ims-infrastructureInventory/v1/resourcePools/P1/resources/",
        );
        assert!(list.contains(&t(TagName::Collection("resourcePools/P1/resources"))));
        assert!(list.contains(&t(TagName::Uri(
            "/o2ims-infrastructureInventory/v1/resourcePools/P1/resources"
        ))));
        let dict = tagset(
            &r,
            "/o2ims-infrastructureInventory/v2/resourceTypes/T1/alarmDictionary",
        );
        assert!(dict.contains(&t(TagName::Item(Kind::ResourceTypes, "T1"))));
        let alarm = tagset(&r, "/o2ims-infrastructureMonitoring/v1/alarms/A1");
        assert!(alarm.contains(&t(TagName::Family(Family::Monitoring))));
        assert!(alarm.contains(&t(TagName::Item(Kind::Alarms, "A1"))));
        let generic = rules("{ store: g }");
        let g = tagset(&generic, "/a/b/");
        assert_eq!(
            g.as_slice(),
            [
                profile::tag("g", TagName::Ns),
                profile::tag("g", TagName::Uri("/a/b"))
            ]
        );
    }

    #[test]
    fn tag_names_are_the_tags() {
        for (yaml, path) in [
            (
                "{ profile: o2ims }",
                "/o2ims-infrastructureInventory/v2/resourcePools/P1/resources/R1",
            ),
            ("{ profile: o2ims }", "/o2ims/v1/resources/"),
            ("{ profile: o2ims }", "/o2ims-infrastructureInventory/v2"),
            ("{}", "/a/b?c"),
        ] {
            let r = rules(yaml);
            let m = r.matched(path).unwrap();
            let mut names = TagSet::new();
            r.tag_names(&m, path, |n| names.push(profile::tag(r.store(), n)));
            assert_eq!(names, tagset(&r, path), "{path}");
        }
    }

    fn inval(r: &Rules, m: Method, path: &str) -> TagSet {
        let mut out = TagSet::new();
        r.invalidations(&m, path, &mut out);
        out
    }

    #[test]
    fn unsafe_methods_invalidate_the_item_and_its_collection() {
        let r = rules("{ profile: o2ims, store: o2 }");
        let t = |n| profile::tag("o2", n);
        let del = inval(
            &r,
            Method::DELETE,
            "/o2ims-infrastructureInventory/v2/subscriptions/S1",
        );
        assert!(del.contains(&t(TagName::Item(Kind::Subscriptions, "S1"))));
        assert!(del.contains(&t(TagName::Collection("subscriptions"))));
        assert!(del.contains(&t(TagName::Uri(
            "/o2ims-infrastructureInventory/v2/subscriptions/S1"
        ))));
        assert!(del.contains(&t(TagName::Uri(
            "/o2ims-infrastructureInventory/v2/subscriptions"
        ))));
        let post = inval(
            &r,
            Method::POST,
            "/o2ims-infrastructureInventory/v2/subscriptions",
        );
        assert!(post.contains(&t(TagName::Collection("subscriptions"))));
        let patch = inval(
            &r,
            Method::PATCH,
            "/o2ims-infrastructureMonitoring/v1/alarms/A1?x=1",
        );
        assert!(patch.contains(&t(TagName::Item(Kind::Alarms, "A1"))));
        assert!(patch.contains(&t(TagName::Collection("alarms"))));
        let nested = inval(
            &r,
            Method::PUT,
            "/o2ims-infrastructureInventory/v1/resourcePools/P/resources/R",
        );
        assert!(nested.contains(&t(TagName::Collection("resourcePools/P/resources"))));
        // What a stored entry is tagged with is what an invalidation names.
        let stored = tagset(&r, "/o2ims-infrastructureInventory/v2/subscriptions/S1");
        assert!(stored
            .iter()
            .any(|s| del.contains(s) && *s != t(TagName::Ns)));
        assert!(inval(
            &r,
            Method::GET,
            "/o2ims-infrastructureInventory/v2/subscriptions"
        )
        .is_empty());
        let cfg = inval(
            &r,
            Method::PATCH,
            "/o2ims-infrastructureMonitoring/v1/alarmServiceConfiguration",
        );
        assert_eq!(cfg.len(), 2);
        let root = inval(&rules("{ store: g }"), Method::POST, "/a");
        assert_eq!(
            root.as_slice(),
            [
                profile::tag("g", TagName::Uri("/a")),
                profile::tag("g", TagName::Uri("/"))
            ]
        );
    }

    #[test]
    fn directives_split_on_commas_outside_quotes() {
        let v = HeaderValue::from_static("a, b=1 ,c=\"x, y\",, D");
        let d: Vec<_> = directives(std::iter::once(&v)).collect();
        assert_eq!(
            d,
            [
                Directive {
                    name: "a",
                    value: None
                },
                Directive {
                    name: "b",
                    value: Some("1")
                },
                Directive {
                    name: "c",
                    value: Some("x, y")
                },
                Directive {
                    name: "D",
                    value: None
                },
            ]
        );
    }

    /// The rules alone, so a section with `auth` is checked without building its scope.
    fn build_rules(yaml: &str) -> Result<Rules, ConfigErrors> {
        let s = section(yaml);
        let defaults = RuleDefaults {
            o2ims: s.profile.as_deref() == Some("o2ims"),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            statuses: vec![200].into(),
            max_object_size: 1 << 20,
            override_origin: false,
            honour_client_no_cache: true,
            degraded_ttl: secs(15),
        };
        let mut errors = ConfigErrors::default();
        let at = At::new("routes[0].plugin.cache");
        Rules::build(&s, "r", &defaults, &at, &mut errors).ok_or(errors)
    }

    #[test]
    fn rule_errors_are_located() {
        let e = build_rules(
            "{ profile: o2ims, auth: { scope: per_claim }, rules: [
                { path: '{base}/deploymentManagers', scope: role_class },
                { path: '/a/{x}{y}', ttl: 1s },
                { path: '/b', ttl: 1s, colour: red },
                { path: '/c', scope: role_class, store: memory_only, roles: [a] },
                { path: '/d', scope: role_class },
                { path: '/c', ttl: 1s } ] }",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        let at = |s: &str| format!("routes[0].plugin.cache.{s}");
        for want in [
            at("rules[0].scope"),
            at("rules[1].path"),
            at("rules[2]"),
            at("rules[3].scope"),
            at("rules[4].roles"),
            at("rules[5].path"),
        ] {
            assert!(paths.contains(&want.as_str()), "{want} not in {paths:?}");
        }
        let e = build("{ rules: [{ path: /x, scope: per_claim }] }").unwrap_err();
        assert_eq!(
            e.iter().next().unwrap().path,
            "routes[0].plugin.cache.rules[0].scope"
        );
    }
}
