//! `plugin.cache`: the YAML section of the cache plugin, its validation and what it builds.

use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use super::key::{KeyBuilder, QueryKey};
use super::o2::subscription::{SubscriptionConfig, SubscriptionSection};
use super::o2::warmup::{WarmupConfig, WarmupSection};
use super::policy::{RuleDefaults, Rules, Share};
use super::scope::{AuthSection, ScopeKind, ScopeMaker};
use super::store::redis::RedisSection;
use super::store::{StoreClass, StoreConfig};
use crate::section::{At, ConfigErrors, Dur, Size};

/// `memory` when unset: room for a few thousand O2 documents.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// `max_object_size` when unset.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 1 << 20;
/// `statuses` when unset: the RFC 9110 §15.1 heuristically cacheable statuses a shared cache
/// can replay to anyone, without 404 (an O2 object may appear any moment) and without 206.
pub const DEFAULT_STATUSES: [u16; 7] = [200, 203, 204, 300, 301, 308, 410];
/// `lock` when unset.
pub const DEFAULT_LOCK: LockConfig = LockConfig {
    timeout: Duration::from_secs(5),
    age: Duration::from_secs(10),
};
/// `max_lifetime` when unset.
pub const DEFAULT_MAX_LIFETIME: Duration =
    Duration::from_millis(super::store::DEFAULT_MAX_LIFETIME_MS);
/// `degraded_ttl` when unset.
pub const DEFAULT_DEGRADED_TTL: Duration = Duration::from_secs(15);
/// `replicas.epoch_slack` when unset: covers clock skew between replicas (design §4.6).
pub const DEFAULT_EPOCH_SLACK: Duration = Duration::from_secs(1);

/// `plugin.cache`. The larger subsections are boxed so the plugin section enum of every
/// route stays small.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// `none` (default) or `o2ims`.
    #[serde(default)]
    pub profile: Option<String>,
    /// The store's name; by default the route's.
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub memory: Option<Size>,
    #[serde(default)]
    pub max_object_size: Option<Size>,
    /// The longest any entry is kept after its fetch, whatever its lifetimes say (default 24h);
    /// evictions are remembered (and kept in ZooKeeper) that long.
    #[serde(default)]
    pub max_lifetime: Option<Dur>,
    #[serde(default)]
    pub statuses: Option<Vec<u16>>,
    #[serde(default)]
    pub lock: Option<Box<serde_yaml::Value>>,
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    #[serde(default)]
    pub override_origin: Option<bool>,
    #[serde(default)]
    pub request_no_cache: Option<String>,
    #[serde(default)]
    pub query: Option<Box<serde_yaml::Value>>,
    #[serde(default)]
    pub key_headers: Option<Vec<String>>,
    #[serde(default)]
    pub degraded_ttl: Option<Dur>,
    #[serde(default)]
    pub auth: Option<Box<AuthSection>>,
    #[serde(default)]
    pub rules: Option<Vec<serde_yaml::Value>>,
    #[serde(default)]
    pub redis: Option<Box<RedisSection>>,
    #[serde(default)]
    pub replicas: Option<Box<serde_yaml::Value>>,
    /// The O2 IMS side: the gateway's own subscription and the warm-up.
    #[serde(default)]
    pub o2ims: Option<Box<O2imsSection>>,
}

/// `plugin.cache.o2ims`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct O2imsSection {
    #[serde(default)]
    pub subscription: Option<SubscriptionSection>,
    #[serde(default)]
    pub warmup: Option<WarmupSection>,
}

/// The cache lock (request coalescing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockConfig {
    /// How long a reader waits for the writer before going to the origin itself.
    pub timeout: Duration,
    /// How long a writer may hold the lock.
    pub age: Duration,
}

impl LockConfig {
    /// Why this lock does not fit a route whose upstream answer is bounded by `route_timeout`
    /// (across every try, design trap 3), if it does not. A reader waits on the lock while the
    /// writer fetches: when `timeout` is the shorter, every reader of a slow answer the route
    /// still accepts gives up and goes to the origin too, the load coalescing is there to
    /// spare; when `age` is, the writer's lock lapses mid-fetch and a second fetch starts.
    /// A longer lock costs nothing: the writer's fetch ends by the route's timeout anyway.
    pub fn misfit(&self, route_timeout: Option<Duration>) -> Option<String> {
        let t = route_timeout?;
        let name = |d: Duration| humantime::format_duration(d).to_string();
        if self.timeout < t {
            return Some(format!(
                "lock.timeout ({}) is shorter than the route's timeout ({}): while the origin takes between the two, the requests waiting for one entry's fetch give up and all go to the origin; set lock.timeout to at least {}",
                name(self.timeout),
                name(t),
                name(t)
            ));
        }
        if self.age < t {
            return Some(format!(
                "lock.age ({}) is shorter than the route's timeout ({}): a fetch still within the route's time loses its lock, and the waiting requests start a second one; set lock.age to at least {}",
                name(self.age),
                name(t),
                name(t)
            ));
        }
        None
    }
}

/// How replicas learn of evictions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    Off,
    ZooKeeper { epoch_slack: Duration },
}

/// The rule set a route starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Only the route's rules, then every other path by the origin's headers.
    None,
    /// The O2 IMS paths, lifetimes and marks of `profile.rs`.
    O2ims,
}

/// What the section builds.
#[derive(Debug)]
pub struct CacheConfig {
    pub store: StoreConfig,
    pub rules: Rules,
    pub key: KeyBuilder,
    pub scope: Option<ScopeMaker>,
    pub lock: Option<LockConfig>,
    pub max_object_size: u64,
    pub statuses: Box<[u16]>,
    pub replicas: Replicas,
    pub degraded_ttl: Duration,
    /// `max_lifetime`.
    pub max_lifetime: Duration,
    pub profile: Profile,
    /// `o2ims.subscription`, when the gateway keeps its own.
    pub subscription: Option<SubscriptionConfig>,
    /// `o2ims.warmup`, when listed collections are fetched ahead of clients.
    pub warmup: Option<WarmupConfig>,
}

/// `lock: { timeout, age }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockSection {
    #[serde(default)]
    timeout: Option<Dur>,
    #[serde(default)]
    age: Option<Dur>,
}

/// `query: { allow: [...] }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuerySection {
    allow: Vec<String>,
}

/// `replicas: { mode, epoch_slack }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicasSection {
    mode: String,
    #[serde(default)]
    epoch_slack: Option<Dur>,
}

impl CacheSection {
    /// Validates the section (every error located under `at`) and builds it. `route` names
    /// the store when `store` is not set.
    pub fn build(&self, route: &str, at: &At, errors: &mut ConfigErrors) -> Option<CacheConfig> {
        let before = errors.len();
        let profile = match self.profile.as_deref() {
            None | Some("none") => Profile::None,
            Some("o2ims") => Profile::O2ims,
            Some(other) => {
                errors.push(
                    at.key("profile"),
                    format!("`{other}` is not a profile (none, o2ims)"),
                );
                Profile::None
            }
        };
        let store = self.store.as_deref().unwrap_or(route);
        if store.is_empty() {
            errors.push(at.key("store"), "must name a store");
        }
        let memory = self.memory.map_or(DEFAULT_MEMORY, |s| s.0);
        if memory == 0 {
            errors.push(at.key("memory"), "must be more than 0");
        }
        // Unset, it follows a small `memory` down: only a value the user wrote is refused.
        let max_object_size = self
            .max_object_size
            .map_or(DEFAULT_MAX_OBJECT_SIZE.min(memory / 8).max(1), |s| s.0);
        if max_object_size == 0 {
            errors.push(at.key("max_object_size"), "must be more than 0");
        } else if max_object_size > memory / 8 {
            errors.push(
                at.key("max_object_size"),
                format!(
                    "{} is more than an eighth of `memory` ({}): a few large bodies would evict everything else",
                    Size(max_object_size),
                    Size(memory)
                ),
            );
        }
        let statuses = self.statuses.as_deref().unwrap_or(&DEFAULT_STATUSES);
        check_statuses(statuses, &at.key("statuses"), errors);
        let lock = self.lock(at, errors);
        let degraded_ttl = self.degraded_ttl.map_or(DEFAULT_DEGRADED_TTL, |d| d.0);
        let max_lifetime = self.max_lifetime.map_or(DEFAULT_MAX_LIFETIME, |d| d.0);
        if max_lifetime < Duration::from_secs(1) {
            errors.push(at.key("max_lifetime"), "must be at least 1s");
        }
        if degraded_ttl.is_zero() {
            errors.push(at.key("degraded_ttl"), "must be more than 0");
        }
        let honour_client_no_cache = match self.request_no_cache.as_deref() {
            None | Some("honour") | Some("honor") => true,
            Some("ignore") => false,
            Some(other) => {
                errors.push(
                    at.key("request_no_cache"),
                    format!("`{other}` is not one of honour, ignore"),
                );
                true
            }
        };
        let query = self.query_key(at, errors);
        let key_headers = self.key_headers(at, errors);
        let replicas = self.replicas(at, errors);
        let defaults = RuleDefaults {
            o2ims: profile == Profile::O2ims,
            stale_while_revalidate: self.stale_while_revalidate.map_or(Duration::ZERO, |d| d.0),
            stale_if_error: self.stale_if_error.map_or(Duration::ZERO, |d| d.0),
            statuses: statuses.into(),
            max_object_size,
            override_origin: self.override_origin.unwrap_or(false),
            honour_client_no_cache,
            degraded_ttl,
        };
        let rules = Rules::build(self, store, &defaults, at, errors);
        if let Some(rules) = &rules {
            self.check_hash_key(rules, at, errors);
        }
        let scope = self
            .auth
            .as_ref()
            .and_then(|a| ScopeMaker::build(a, &at.key("auth"), errors));
        if let (Some(rules), Some(scope)) = (&rules, &scope) {
            // A rule's own scope that this `auth` cannot produce would pass the build and then
            // never cache (every request bypassing), so it is refused here.
            for rule in rules.all().iter().filter(|r| r.scope.is_some()) {
                if let Err(e) = scope.check_rule(scope.effective(rule), &rule.roles) {
                    errors.push(at.key("rules"), format!("rule `{}`: {e}", rule.template));
                }
            }
        }
        let redis = self
            .redis
            .as_ref()
            .and_then(|r| r.build(&at.key("redis"), errors));
        let o2ims_at = at.key("o2ims");
        let o2ims = self.o2ims.as_deref();
        let subscription = o2ims
            .and_then(|o| o.subscription.as_ref())
            .and_then(|s| s.build(&o2ims_at.key("subscription"), errors));
        let warmup = o2ims
            .and_then(|o| o.warmup.as_ref())
            .and_then(|w| w.build(&o2ims_at.key("warmup"), errors));
        if errors.len() > before {
            return None;
        }
        Some(CacheConfig {
            store: StoreConfig {
                name: store.into(),
                memory,
                redis,
            },
            rules: rules?,
            key: KeyBuilder::new(query, key_headers, profile == Profile::O2ims),
            scope,
            lock,
            max_object_size,
            statuses: statuses.into(),
            replicas,
            degraded_ttl,
            max_lifetime,
            profile,
            subscription,
            warmup,
        })
    }

    fn lock(&self, at: &At, errors: &mut ConfigErrors) -> Option<LockConfig> {
        let at = at.key("lock");
        let value = match self.lock.as_deref() {
            None => return Some(DEFAULT_LOCK),
            Some(serde_yaml::Value::String(s)) if s == "off" => return None,
            Some(serde_yaml::Value::Bool(false)) => return None,
            Some(v) => v,
        };
        match serde_yaml::from_value::<LockSection>(value.clone()) {
            Ok(l) => {
                let lock = LockConfig {
                    timeout: l.timeout.map_or(DEFAULT_LOCK.timeout, |d| d.0),
                    age: l.age.map_or(DEFAULT_LOCK.age, |d| d.0),
                };
                if lock.timeout.is_zero() {
                    errors.push(at.key("timeout"), "must be more than 0 (or `lock: off`)");
                }
                if lock.age.is_zero() {
                    errors.push(at.key("age"), "must be more than 0 (or `lock: off`)");
                }
                Some(lock)
            }
            Err(e) => {
                errors.push(at, format!("`off` or `{{ timeout, age }}`: {e}"));
                None
            }
        }
    }

    fn query_key(&self, at: &At, errors: &mut ConfigErrors) -> QueryKey {
        let at = at.key("query");
        let value = match self.query.as_deref() {
            None => return QueryKey::Keep,
            Some(serde_yaml::Value::String(s)) if s == "keep" => return QueryKey::Keep,
            Some(v) => v,
        };
        match serde_yaml::from_value::<QuerySection>(value.clone()) {
            Ok(q) => {
                for (i, name) in q.allow.iter().enumerate() {
                    if name.is_empty() || name.contains(['&', '=', '#', ' ']) {
                        errors.push(
                            at.index("allow", i),
                            format!("`{name}` is not a query parameter name"),
                        );
                    }
                }
                if q.allow.is_empty() {
                    errors.push(
                        at.key("allow"),
                        "lists no parameter (write `query: keep` to key them all)",
                    );
                }
                QueryKey::Allow(q.allow.into_iter().map(String::into_boxed_str).collect())
            }
            Err(e) => {
                errors.push(at, format!("`keep` or `{{ allow: [names] }}`: {e}"));
                QueryKey::Keep
            }
        }
    }

    fn key_headers(&self, at: &At, errors: &mut ConfigErrors) -> Box<[HeaderName]> {
        let mut out = Vec::new();
        for (i, name) in self.key_headers.iter().flatten().enumerate() {
            match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                Ok(h) => out.push(h),
                Err(_) => errors.push(
                    at.index("key_headers", i),
                    format!("`{name}` is not a header name"),
                ),
            }
        }
        out.into()
    }

    fn replicas(&self, at: &At, errors: &mut ConfigErrors) -> Replicas {
        let at = at.key("replicas");
        let value = match self.replicas.as_deref() {
            None => return Replicas::Off,
            Some(serde_yaml::Value::String(s)) if s == "off" => return Replicas::Off,
            Some(serde_yaml::Value::Bool(false)) => return Replicas::Off,
            Some(v) => v,
        };
        match serde_yaml::from_value::<ReplicasSection>(value.clone()) {
            Ok(r) => match r.mode.as_str() {
                "off" => Replicas::Off,
                "zookeeper" => Replicas::ZooKeeper {
                    epoch_slack: r.epoch_slack.map_or(DEFAULT_EPOCH_SLACK, |d| d.0),
                },
                other => {
                    errors.push(
                        at.key("mode"),
                        format!("`{other}` is not one of off, zookeeper"),
                    );
                    Replicas::Off
                }
            },
            Err(e) => {
                errors.push(
                    at,
                    format!("`off` or `{{ mode: zookeeper, epoch_slack }}`: {e}"),
                );
                Replicas::Off
            }
        }
    }

    /// Replicas sharing Redis must hash a credential the same way, so a keyed scope that
    /// reaches the shared tier needs `auth.hash_key`.
    fn check_hash_key(&self, rules: &Rules, at: &At, errors: &mut ConfigErrors) {
        let (Some(auth), Some(_)) = (&self.auth, &self.redis) else {
            return;
        };
        if auth.hash_key.is_some() {
            return;
        }
        let keyed = |s: ScopeKind| matches!(s, ScopeKind::PerCredential | ScopeKind::PerClaim);
        let route_keyed = keyed(auth.scope);
        let rule_keyed = rules.all().iter().any(|r| {
            r.class == StoreClass::Shared && (r.share == Share::Never || r.scope.is_some_and(keyed))
        });
        if route_keyed || rule_keyed {
            errors.push(
                at.key("auth").key("hash_key"),
                "required with `redis` when entries are keyed per credential or per claim: every replica must compute the same scope hash",
            );
        }
    }
}

/// Statuses a shared cache must never replay: 401/403/407 answer one caller's credentials,
/// 5xx a passing failure (stale-if-error covers those), 206 a part of a body, 304 a
/// conditional request, 1xx an interim answer.
fn check_statuses(statuses: &[u16], at: &At, errors: &mut ConfigErrors) {
    if statuses.is_empty() {
        errors.push(at.clone(), "lists no status: nothing would be stored");
    }
    for (i, s) in statuses.iter().enumerate() {
        let why = match *s {
            0..=99 | 600.. => Some("is not an HTTP status"),
            100..=199 => Some("is an interim answer"),
            206 => Some("is a partial body"),
            304 => Some("answers a conditional request"),
            401 | 403 | 407 => Some("answers one caller's credentials and must never be shared"),
            500..=599 => Some("is a failure (stale_if_error serves a stored answer instead)"),
            _ => None,
        };
        if let Some(why) = why {
            errors.push(at.item(i), format!("{s} {why}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> Result<CacheConfig, Vec<(String, String)>> {
        let section: CacheSection = serde_yaml::from_str(yaml).unwrap();
        let mut errors = ConfigErrors::default();
        let cfg = section.build("r", &At::new("c"), &mut errors);
        match cfg {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(errors
                .iter()
                .map(|e| (e.path.clone(), e.message.clone()))
                .collect()),
        }
    }

    /// Trap 3: readers wait through every try of the writer, so a lock shorter than the
    /// route's own bound is called out; a longer one, or a route without a bound, is fine.
    #[test]
    fn a_lock_shorter_than_the_routes_timeout_is_called_out() {
        let secs = Duration::from_secs;
        let lock = |timeout, age| LockConfig {
            timeout: secs(timeout),
            age: secs(age),
        };
        assert_eq!(DEFAULT_LOCK.misfit(None), None);
        assert_eq!(DEFAULT_LOCK.misfit(Some(secs(5))), None);
        assert_eq!(lock(30, 60).misfit(Some(secs(5))), None);
        let short = lock(2, 60)
            .misfit(Some(secs(5)))
            .expect("timeout too short");
        assert!(
            short.starts_with("lock.timeout (2s) is shorter than the route's timeout (5s)")
                && short.contains("all go to the origin")
                && short.ends_with("at least 5s"),
            "{short}"
        );
        let lapses = lock(10, 3).misfit(Some(secs(5))).expect("age too short");
        assert!(
            lapses.starts_with("lock.age (3s) is shorter than the route's timeout (5s)")
                && lapses.contains("second one"),
            "{lapses}"
        );
        let built = build("{ lock: { timeout: 1s, age: 2s } }").expect("valid");
        assert!(built.lock.expect("lock").misfit(Some(secs(3))).is_some());
    }

    #[test]
    fn defaults() {
        let c = build("{}").unwrap();
        assert_eq!(c.store.name.as_ref(), "r");
        assert_eq!(c.store.memory, 64 << 20);
        assert_eq!(c.store.redis, None);
        assert_eq!(c.max_object_size, 1 << 20);
        assert_eq!(&*c.statuses, &[200, 203, 204, 300, 301, 308, 410]);
        assert_eq!(
            c.lock,
            Some(LockConfig {
                timeout: Duration::from_secs(5),
                age: Duration::from_secs(10)
            })
        );
        assert_eq!(c.replicas, Replicas::Off);
        assert_eq!(c.degraded_ttl, Duration::from_secs(15));
        assert_eq!(c.profile, Profile::None);
        assert!(c.scope.is_none());
        assert_eq!(c.key.query(), &QueryKey::Keep);
        let only = &c.rules.all()[0];
        assert!(
            c.rules
                .meta(crate::plugin::cache::policy::RuleId(0))
                .from_origin
        );
        assert_eq!(
            (only.stale_while_revalidate, only.stale_if_error),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn every_key_is_read() {
        let c = build(
            "{ profile: o2ims, store: o2, memory: 256MiB, max_object_size: 2MiB, statuses: [200, 404],
               lock: { timeout: 2s, age: 4s }, stale_while_revalidate: 10s, stale_if_error: 5m,
               override_origin: true, request_no_cache: ignore, query: { allow: [filter, fields] },
               key_headers: [Accept], degraded_ttl: 20s, replicas: { mode: zookeeper, epoch_slack: 2s } }",
        )
        .unwrap();
        assert_eq!(c.store.name.as_ref(), "o2");
        assert_eq!(c.store.memory, 256 << 20);
        assert_eq!(c.max_object_size, 2 << 20);
        assert_eq!(&*c.statuses, &[200, 404]);
        assert_eq!(
            c.lock,
            Some(LockConfig {
                timeout: Duration::from_secs(2),
                age: Duration::from_secs(4)
            })
        );
        assert_eq!(
            c.replicas,
            Replicas::ZooKeeper {
                epoch_slack: Duration::from_secs(2)
            }
        );
        assert_eq!(c.degraded_ttl, Duration::from_secs(20));
        assert_eq!(c.profile, Profile::O2ims);
        assert_eq!(
            c.key.query(),
            &QueryKey::Allow(vec!["filter".into(), "fields".into()].into())
        );
        assert_eq!(c.key.key_headers(), &[HeaderName::from_static("accept")]);
        assert!(c
            .rules
            .all()
            .iter()
            .all(|r| r.stale_if_error == Duration::from_secs(300)));
        assert_eq!(build("{ lock: off }").unwrap().lock, None);
        assert_eq!(build("{ replicas: off }").unwrap().replicas, Replicas::Off);
    }

    #[test]
    fn validation_errors_are_located() {
        let e = build(
            "{ profile: o3, memory: 8MiB, max_object_size: 2MiB, statuses: [200, 401, 403, 502, 206],
               lock: { timeout: 0s }, request_no_cache: maybe, query: { allow: ['a=b'] },
               key_headers: ['bad header'], replicas: { mode: etcd }, degraded_ttl: 0s }",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "c.profile",
            "c.max_object_size",
            "c.statuses[1]",
            "c.statuses[2]",
            "c.statuses[3]",
            "c.statuses[4]",
            "c.lock.timeout",
            "c.request_no_cache",
            "c.query.allow[0]",
            "c.key_headers[0]",
            "c.replicas.mode",
            "c.degraded_ttl",
        ] {
            assert!(paths.contains(&want), "{want} not in {e:?}");
        }
        assert!(!paths.contains(&"c.statuses[0]"));
        // Unset, max_object_size follows a small memory bound instead of refusing it.
        assert_eq!(
            build("{ memory: 1MiB }").unwrap().max_object_size,
            128 << 10
        );
        let e = build("{ memory: 1MiB, max_object_size: 1MiB }").unwrap_err();
        assert_eq!(e[0].0, "c.max_object_size");
        let e = build("{ lock: { timeout: 1s, wait: 2s } }").unwrap_err();
        assert_eq!(e[0].0, "c.lock");
        let e = build("{ statuses: [] }").unwrap_err();
        assert_eq!(e[0].0, "c.statuses");
    }

    #[test]
    fn a_rule_scope_the_routes_auth_cannot_produce_is_refused() {
        let e = build(
            "{ auth: { scope: per_credential },
               rules: [{ path: /types, ttl: 1m, scope: role_class, roles: [reader] }] }",
        )
        .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "c.rules");
        assert!(
            e[0].1.contains("/types") && e[0].1.contains("auth.jwt"),
            "{e:?}"
        );
        assert!(build(
            "{ auth: { scope: per_credential }, rules: [{ path: /types, ttl: 1m, scope: per_credential }] }"
        )
        .is_ok());
    }

    #[test]
    fn the_o2ims_profile_folds_the_trailing_slash_and_a_generic_route_does_not() {
        let key = |c: &CacheConfig, p: &str| {
            let mut b = Vec::new();
            c.key.primary(b"h", p, None, None, &mut b);
            b
        };
        let o2 = build("{ profile: o2ims }").unwrap();
        assert_eq!(
            key(&o2, "/o2ims/v1/resources/"),
            key(&o2, "/o2ims/v1/resources")
        );
        let g = build("{}").unwrap();
        assert_ne!(key(&g, "/a/"), key(&g, "/a"));
    }
}

#[cfg(test)]
mod hash_key_tests {
    use super::*;
    use crate::plugin::cache::policy::RuleDefaults;

    /// The check alone: building the scope and the Redis tier belongs to their own modules.
    fn check(yaml: &str) -> Vec<String> {
        let section: CacheSection = serde_yaml::from_str(yaml).unwrap();
        let defaults = RuleDefaults {
            o2ims: section.profile.as_deref() == Some("o2ims"),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            statuses: vec![200].into(),
            max_object_size: 1,
            override_origin: false,
            honour_client_no_cache: true,
            degraded_ttl: Duration::from_secs(1),
        };
        let mut errors = ConfigErrors::default();
        let rules = Rules::build(&section, "s", &defaults, &At::new("c"), &mut errors).unwrap();
        section.check_hash_key(&rules, &At::new("c"), &mut errors);
        errors.iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn redis_with_a_keyed_scope_needs_a_hash_key() {
        let redis = "redis: { url: 'redis://127.0.0.1:1' }";
        assert_eq!(
            check(&format!("{{ {redis}, auth: {{ scope: per_claim }} }}")),
            ["c.auth.hash_key"]
        );
        assert_eq!(
            check(&format!("{{ {redis}, auth: {{ scope: per_credential }} }}")),
            ["c.auth.hash_key"]
        );
        assert!(check(&format!(
            "{{ {redis}, auth: {{ scope: per_claim, hash_key: k }} }}"
        ))
        .is_empty());
        assert!(check("{ auth: { scope: per_claim } }").is_empty());
        // role_class alone shares by role; but the profile's subscriptions (share: never, in
        // the shared tier) are keyed per credential.
        assert!(check(&format!("{{ {redis}, auth: {{ scope: role_class }} }}")).is_empty());
        assert_eq!(
            check(&format!(
                "{{ profile: o2ims, {redis}, auth: {{ scope: role_class }} }}"
            )),
            ["c.auth.hash_key"]
        );
    }
}
