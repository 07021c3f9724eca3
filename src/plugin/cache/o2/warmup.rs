//! The warm-up: listed small collections fetched ahead of clients, at start once the
//! notification channel is healthy and again each time it comes back (a lost ZooKeeper session
//! dropped every entry; while it was degraded, changes may have been missed).
//!
//! Each path is fetched with a GET through the route's upstream (a `Call`, so its breaker and
//! outlier detection count it) and admitted exactly as a proxied answer would be: the same key
//! builder, rule, `policy::on_response`, tags and entry format, written through the adapter. So
//! a client's first GET afterwards is a hit. An entry is scoped as the warm-up's own request
//! is: anonymous without `authorization`, else by the route's `auth` scope, and only a
//! `role_class` scope is shared with anyone else; per-credential or per-claim scopes would
//! warm the warm-up's own identity only, so those paths are skipped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, HeaderValue, Method};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use prometheus::{register_int_counter_vec, IntCounter, IntCounterVec};
use serde::{Deserialize, Serialize};

use crate::plugin::cache::{adapter, admission, scope, store, Cache, Entry, Shared};
use crate::plugin::{client, PluginCx};
use crate::section::{At, ConfigErrors, Dur, Secret};
use crate::upstream::Upstream;

/// `concurrency` when unset.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// The largest `concurrency` accepted: the warm-up must not look like a flood to the O-Cloud.
const MAX_CONCURRENCY: usize = 64;
/// `timeout` when unset: one fetch, connection to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `version` when unset (pti-o2 and netweave; oran-o2ims is on `v2`).
pub const DEFAULT_VERSION: &str = "v1";
/// Fetches that failed (no answer, a 5xx, no backend yet) are tried again after these pauses.
const RETRIES: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// A route whose plugin was not ticked for this long is out of the serving config: its
/// warm-up does not run.
const SERVING_MS: u64 = 2_000;

/// `plugin.cache.o2ims.warmup`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupSection {
    /// Paths (with a query if wanted) to fetch; `{base}` is the inventory API's base.
    #[serde(default)]
    pub paths: Vec<String>,
    /// The API version `{base}` expands with (`v1`, `v2`...).
    #[serde(default)]
    pub version: Option<String>,
    /// The `Host` clients send, which entries are keyed by; by default the route's one host.
    #[serde(default)]
    pub host: Option<String>,
    /// Fetches in flight at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// The `Authorization` value the warm-up sends (`Bearer <token>`), if the O2 API wants one.
    #[serde(default)]
    pub authorization: Option<Secret>,
    /// The bound of one fetch.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

/// What the section builds.
#[derive(Clone, Debug)]
pub struct WarmupConfig {
    /// Path and query of each fetch, `{base}` expanded.
    pub paths: Box<[Box<str>]>,
    pub host: Option<Box<str>>,
    pub concurrency: usize,
    /// Marked sensitive: never logged.
    pub authorization: Option<HeaderValue>,
    pub timeout: Duration,
}

impl WarmupSection {
    pub fn build(&self, at: &At, errors: &mut ConfigErrors) -> Option<WarmupConfig> {
        let before = errors.len();
        let version = self.version.as_deref().unwrap_or(DEFAULT_VERSION);
        let valid_version = version.len() > 1
            && version.starts_with('v')
            && version[1..].bytes().all(|b| b.is_ascii_digit());
        if !valid_version {
            errors.push(
                at.key("version"),
                format!("`{version}` is not an API version (v1, v2...)"),
            );
        }
        if self.paths.is_empty() {
            errors.push(at.key("paths"), "must list at least one path to fetch");
        }
        let base = format!("/o2ims-infrastructureInventory/{version}");
        let mut paths = Vec::with_capacity(self.paths.len());
        for (i, p) in self.paths.iter().enumerate() {
            let expanded = p.replace("{base}", &base);
            let why = if !expanded.starts_with('/') {
                Some("must start with `/` or `{base}`".to_owned())
            } else if expanded.contains(['{', '}']) {
                Some("has a placeholder other than `{base}`".to_owned())
            } else if expanded.contains('#') {
                Some("must not hold a fragment (`#`)".to_owned())
            } else {
                http::uri::PathAndQuery::try_from(expanded.as_str())
                    .err()
                    .map(|e| format!("is not a request target: {e}"))
            };
            match why {
                Some(why) => errors.push(at.index("paths", i), format!("`{p}` {why}")),
                None => paths.push(expanded.into_boxed_str()),
            }
        }
        let host = self.host.as_deref().map(str::trim);
        if let Some(h) = host {
            let ok = !h.is_empty()
                && !h.contains('@')
                && h.parse::<http::uri::Authority>().is_ok()
                && HeaderValue::from_str(h).is_ok();
            if !ok {
                errors.push(
                    at.key("host"),
                    format!("`{h}` is not a Host value (name or address, and a port if clients send one)"),
                );
            }
        }
        let concurrency = self.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 || concurrency > MAX_CONCURRENCY {
            errors.push(
                at.key("concurrency"),
                format!("must be between 1 and {MAX_CONCURRENCY}"),
            );
        }
        let timeout = self.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        if timeout.is_zero() {
            errors.push(at.key("timeout"), "must be more than 0");
        }
        let authorization = match &self.authorization {
            None => None,
            Some(s) => match HeaderValue::from_str(s.0.trim()) {
                Ok(mut v) if !s.0.trim().is_empty() => {
                    v.set_sensitive(true);
                    Some(v)
                }
                // The value is secret: the message does not quote it.
                _ => {
                    errors.push(
                        at.key("authorization"),
                        "must be a non-empty header value (`Bearer <token>`)",
                    );
                    None
                }
            },
        };
        if errors.len() > before {
            return None;
        }
        Some(WarmupConfig {
            paths: paths.into(),
            host: host.map(Into::into),
            concurrency,
            authorization,
            timeout,
        })
    }
}

/// What became of one fetch (the metric's `result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fetched {
    /// Admitted into the store.
    Stored,
    /// Answered, but the rules would not store the answer (status, `no-store`...).
    Uncacheable,
    /// Not fetched: the route's rules or scope would not serve it from the cache to anyone
    /// but the warm-up itself.
    Skipped,
    /// Larger than `max_object_size`.
    TooLarge,
    /// No answer, a 5xx, or no backend.
    Failed,
}

impl Fetched {
    const ALL: [Fetched; 5] = [
        Fetched::Stored,
        Fetched::Uncacheable,
        Fetched::Skipped,
        Fetched::TooLarge,
        Fetched::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Fetched::Stored => "stored",
            Fetched::Uncacheable => "uncacheable",
            Fetched::Skipped => "skipped",
            Fetched::TooLarge => "too_large",
            Fetched::Failed => "failed",
        }
    }
}

static WARMUP_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    // Registration fails only on a duplicate name, which this single static rules out.
    register_int_counter_vec!(
        "zkgate_cache_warmup_total",
        "Warm-up fetches by store and result: stored, uncacheable (the rules refused the \
         answer), skipped (the scope would serve it to the warm-up only), too_large, failed \
         (no answer, a 5xx or no backend, after its retries).",
        &["store", "result"]
    )
    .expect("register zkgate_cache_warmup_total")
});

/// The warm-up of one cache route, as its newest build made it.
pub struct Warmup {
    route: Box<str>,
    shared: &'static Shared,
    upstream: Arc<Upstream>,
    host: HeaderValue,
    paths: Box<[Box<str>]>,
    concurrency: usize,
    timeout: Duration,
    authorization: Option<HeaderValue>,
    /// What a proxied request of the route is keyed and admitted by.
    rules: Arc<super::super::policy::Rules>,
    key: Arc<super::super::key::KeyBuilder>,
    scope: Option<Arc<scope::ScopeMaker>>,
    enabler: adapter::Enabler,
    namespace: [u8; 16],
    statuses: Box<[u16]>,
    max_object_size: u64,
    runner: &'static Runner,
    /// By `Fetched` index.
    counted: [IntCounter; 5],
}

/// The process-lifetime side of one route's warm-up: the task, started once, and the newest
/// plan it runs (a reload hands over a new one at its first tick).
struct Runner {
    plan: Mutex<Option<Arc<Warmup>>>,
    started: AtomicBool,
    /// When the route's plugin was last ticked (ms since the epoch).
    ticked_ms: AtomicU64,
    connector: Connector,
}

impl Warmup {
    /// The warm-up of `cache` from its `o2ims.warmup` config, with what only the route knows
    /// (its upstream, its host) checked here; errors located under `cx.at`.
    pub fn bind(
        cfg: WarmupConfig,
        cache: &Cache,
        cx: &PluginCx<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<Arc<Warmup>> {
        let at = cx.at.key("o2ims").key("warmup");
        let before = errors.len();
        let upstream = match cx.upstream {
            Some(name) => cx.upstream(name),
            None => {
                errors.push(
                    &at,
                    "fetches through the route's upstream, and the route has none",
                );
                None
            }
        };
        if cx.route_edits {
            errors.push(
                &at,
                "cannot be used on a route with a rewrite or header edits: the warm-up's \
                 requests and stored answers would not get them",
            );
        }
        let host = match (cfg.host.as_deref(), cx.route_host) {
            (Some(h), _) | (None, Some(h)) => HeaderValue::from_str(h).ok(),
            (None, None) => {
                errors.push(
                    at.key("host"),
                    "is required: the route matches no single host, and entries are keyed by \
                     the Host clients send",
                );
                None
            }
        };
        for (i, p) in cfg.paths.iter().enumerate() {
            let path = p.split_once('?').map_or(&**p, |(path, _)| path);
            if cache.rules.matched(path).is_none() {
                errors.push(
                    at.index("paths", i),
                    format!("`{p}`: no rule of this route caches it"),
                );
            }
        }
        if errors.len() > before {
            return None;
        }
        // A missing upstream was reported by the route itself.
        let upstream = upstream?;
        let store = &*cache.shared.name;
        // Per route and store: a reload that moves the route to another store gets a task
        // watching that store's channel (the old one, no longer ticked, stays idle).
        let runner_name = format!("{}\0{store}", cx.route);
        let runner = cx.resources.get_or_init(&runner_name, || Runner {
            plan: Mutex::new(None),
            started: AtomicBool::new(false),
            ticked_ms: AtomicU64::new(0),
            connector: Connector::new(None),
        });
        Some(Arc::new(Warmup {
            route: cx.route.into(),
            shared: cache.shared,
            upstream,
            host: host?,
            paths: cfg.paths,
            concurrency: cfg.concurrency,
            timeout: cfg.timeout,
            authorization: cfg.authorization,
            rules: cache.rules.clone(),
            key: cache.key.clone(),
            scope: cache.scope.clone(),
            enabler: cache.enabler,
            namespace: cache.namespace,
            statuses: cache.statuses.clone(),
            max_object_size: cache.max_object_size,
            runner,
            counted: Fetched::ALL.map(|f| WARMUP_TOTAL.with_label_values(&[store, f.as_str()])),
        }))
    }

    /// From the route's tick: this plan becomes the one the task runs, and the task starts the
    /// first time.
    pub fn tick(self: &Arc<Self>) {
        let r = self.runner;
        r.ticked_ms.store(store::wall_ms(), Ordering::Relaxed);
        {
            let mut plan = r.plan.lock().unwrap_or_else(PoisonError::into_inner);
            if !plan.as_ref().is_some_and(|p| Arc::ptr_eq(p, self)) {
                *plan = Some(self.clone());
            }
        }
        if !r.started.swap(true, Ordering::Relaxed) {
            tokio::spawn(watch(r, self.shared));
        }
    }

    /// One warm-up: every path, `concurrency` at a time, failures tried again a few times.
    async fn run(self: &Arc<Self>) {
        let started = Instant::now();
        let mut counts = [0usize; 5];
        let mut pending: Vec<usize> = (0..self.paths.len()).collect();
        for pause in std::iter::once(None).chain(RETRIES.map(Some)) {
            if pending.is_empty() {
                break;
            }
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
            let limit = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
            let mut set = tokio::task::JoinSet::new();
            for i in pending.drain(..) {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let me = self.clone();
                set.spawn(async move {
                    let _permit = permit;
                    let path = &me.paths[i];
                    let fetched = tokio::time::timeout(me.timeout, me.fetch(path))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {:?}", me.timeout)));
                    (i, fetched)
                });
            }
            while let Some(done) = set.join_next().await {
                let Ok((i, fetched)) = done else { continue };
                match fetched {
                    Ok(f) => counts[f as usize] += 1,
                    Err(why) => {
                        log::debug!(
                            "route {}: warm-up of {} failed: {why}",
                            self.route,
                            self.paths[i]
                        );
                        pending.push(i);
                    }
                }
            }
        }
        counts[Fetched::Failed as usize] += pending.len();
        for (n, c) in counts.iter().zip(&self.counted) {
            c.inc_by(*n as u64);
        }
        let failed: Vec<&str> = pending.iter().map(|i| &*self.paths[*i]).collect();
        log::info!(
            "route {}: cache warm-up of store {} in {} ms: {} stored, {} uncacheable, {} \
             skipped, {} too large, {} failed{}{}",
            self.route,
            self.shared.name,
            started.elapsed().as_millis(),
            counts[Fetched::Stored as usize],
            counts[Fetched::Uncacheable as usize],
            counts[Fetched::Skipped as usize],
            counts[Fetched::TooLarge as usize],
            counts[Fetched::Failed as usize],
            if failed.is_empty() { "" } else { ": " },
            failed.join(", "),
        );
    }

    /// Fetches `target` and admits the answer as the proxy would; `Err` for a failure worth
    /// trying again.
    async fn fetch(&self, target: &str) -> Result<Fetched, String> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mut headers = HeaderMap::new();
        headers.insert(HOST, self.host.clone());
        if let Some(a) = &self.authorization {
            headers.insert(AUTHORIZATION, a.clone());
        }
        // The decisions of a proxied GET's `request_filter`, in the same order.
        let Some(m) = self.rules.matched(path) else {
            return Ok(Fetched::Skipped);
        };
        if self.rules.on_request(&Method::GET, &headers).is_err() {
            return Ok(Fetched::Skipped);
        }
        let now = SystemTime::now();
        let scope = scope::of_request(self.scope.as_deref(), m.rule, &headers, None, now);
        let tag = match &scope {
            scope::Scope::Anonymous => None,
            scope::Scope::Keyed {
                tag,
                label: scope::ScopeLabel::Roles,
                ..
            } => Some(*tag),
            // Keyed by the warm-up's own credential or claim: nobody else would hit it.
            scope::Scope::Keyed { .. } | scope::Scope::Bypass(_) => return Ok(Fetched::Skipped),
        };
        let mut tags = store::TagSet::new();
        self.rules.tags(&m, path, &mut tags);
        let mut primary = Vec::new();
        self.key.primary(
            self.host.as_bytes(),
            path,
            query,
            tag.as_ref(),
            &mut primary,
        );
        let key = adapter::key(&primary, &self.namespace);

        let mut req = RequestHeader::build(Method::GET, target.as_bytes(), Some(headers.len()))
            .map_err(|e| e.to_string())?;
        for (name, value) in &headers {
            req.insert_header(name.clone(), value.clone())
                .map_err(|e| e.to_string())?;
        }
        let sent_ms = store::wall_ms();
        let (resp, body) = match self.exchange(req.clone()).await? {
            Some(answer) => answer,
            None => return Ok(Fetched::TooLarge),
        };

        // The decisions of `response_cache_filter`.
        let entry = Entry {
            rule: m.id,
            kind: Some(m.rule.kind),
            scope: Some(&scope),
            tags: &tags,
            target,
            sent_ms,
        };
        let meta = admission(
            &self.rules,
            &self.statuses,
            self.max_object_size,
            self.shared.channel.degraded(),
            &entry,
            &resp,
            SystemTime::now(),
        );
        let mut vary = smallvec::SmallVec::<[&str; 4]>::new();
        for v in resp.headers.get_all(http::header::VARY) {
            if let Ok(v) = v.to_str() {
                vary.extend(v.split(',').map(str::trim).filter(|n| !n.is_empty()));
            }
        }
        let variance = self.key.variance(&vary, &req);
        match adapter::admit(&self.enabler, &key, meta, variance, body).await {
            Ok(true) => Ok(Fetched::Stored),
            Ok(false) => Ok(Fetched::Uncacheable),
            Err(e) => Err(format!("not stored: {e}")),
        }
    }

    /// One GET on a backend of the route's upstream: its head and whole body, `None` when the
    /// body is over `max_object_size`, `Err` for no answer or a 5xx.
    async fn exchange(
        &self,
        req: RequestHeader,
    ) -> Result<Option<(ResponseHeader, Bytes)>, String> {
        let connector = &self.runner.connector;
        let max = self.max_object_size;
        let answer = client::through_upstream(
            &self.upstream,
            |peer| async move {
                (
                    get(connector, &peer, req, max).await,
                    peer._address.to_string(),
                )
            },
            |(answer, _)| match answer {
                Ok(Some((resp, _))) => resp.status.is_server_error(),
                Ok(None) => false,
                Err(_) => true,
            },
        )
        .await
        .map_err(|why| why.describe(&self.upstream.name))?;
        match answer {
            (Ok(Some((resp, _))), backend) if resp.status.is_server_error() => {
                Err(format!("{backend} answered {}", resp.status.as_u16()))
            }
            (Ok(a), _) => Ok(a),
            (Err(e), backend) => Err(format!("{backend}: {e}")),
        }
    }
}

/// A GET on a pooled connection to `peer`: the head and whole body, `None` past `max` bytes
/// (the connection is then dropped, not pooled).
async fn get(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    max: u64,
) -> pingora::Result<Option<(ResponseHeader, Bytes)>> {
    let keep = usize::try_from(max).unwrap_or(usize::MAX);
    let (head, answer) =
        client::exchange_with_head(connector, peer, req, Bytes::new(), keep).await?;
    Ok(answer.complete.then(|| (head, Bytes::from(answer.body))))
}

/// The task of one route's warm-up: a run once the channel is healthy, then one after each
/// return to healthy, for as long as the process lives (a route gone from the config is
/// skipped: its plan is no longer ticked).
async fn watch(runner: &'static Runner, shared: &'static Shared) {
    let mut recoveries = shared.channel.recoveries();
    loop {
        while shared.channel.degraded() {
            if recoveries.changed().await.is_err() {
                return;
            }
        }
        // A recovery during the run below runs it again.
        recoveries.borrow_and_update();
        let plan = runner
            .plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let serving =
            store::wall_ms().saturating_sub(runner.ticked_ms.load(Ordering::Relaxed)) < SERVING_MS;
        if let (Some(plan), true) = (plan, serving) {
            plan.run().await;
        }
        if recoveries.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> Result<WarmupConfig, String> {
        let section: WarmupSection = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        let mut errors = ConfigErrors::default();
        let at = At::new("routes[0].plugin.cache.o2ims.warmup");
        section.build(&at, &mut errors).ok_or(errors.to_string())
    }

    #[test]
    fn base_expands_with_the_version() {
        let c =
            build("{ paths: ['{base}/resourceTypes', '/o2ims/v1/resources?fields=a'] }").unwrap();
        let paths: Vec<&str> = c.paths.iter().map(|p| &**p).collect();
        assert_eq!(
            paths,
            [
                "/o2ims-infrastructureInventory/v1/resourceTypes",
                "/o2ims/v1/resources?fields=a"
            ]
        );
        assert_eq!((c.concurrency, c.timeout), (4, DEFAULT_TIMEOUT));
        let c = build(
            "{ paths: ['{base}/resourcePools'], version: v2, host: 'o2.example.com:8443', \
             authorization: 'Bearer t' }",
        )
        .unwrap();
        assert_eq!(
            &*c.paths[0],
            "/o2ims-infrastructureInventory/v2/resourcePools"
        );
        assert_eq!(c.host.as_deref(), Some("o2.example.com:8443"));
        let auth = c.authorization.unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(format!("{auth:?}"), "Sensitive");
    }

    #[test]
    fn every_error_is_located() {
        let e = build(
            "{ paths: ['resourceTypes', '{base}/{poolId}', '/ok', '/a b'], version: v2a, \
             host: 'a b', concurrency: 0, timeout: 0s, authorization: '' }",
        )
        .unwrap_err();
        for part in [
            "warmup.version: `v2a` is not an API version",
            "warmup.paths[0]: `resourceTypes` must start with",
            "warmup.paths[1]: `{base}/{poolId}` has a placeholder",
            "warmup.paths[3]: `/a b` is not a request target",
            "warmup.host: `a b` is not a Host value",
            "warmup.concurrency: must be between 1 and 64",
            "warmup.timeout: must be more than 0",
            "warmup.authorization: must be a non-empty header value",
        ] {
            assert!(e.contains(part), "{part}\n{e}");
        }
        assert!(!e.contains("paths[2]"), "{e}");
        assert!(build("{ paths: [] }")
            .unwrap_err()
            .contains("warmup.paths: must list"));
        assert!(build("{ paths: ['/a'], nope: 1 }").is_err());
    }
}
