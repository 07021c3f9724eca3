//! The `cache` route plugin: an RFC 9111 shared HTTP cache with an `o2ims` profile, and the
//! `cache_notify` plugin that evicts from it on O2 IMS notifications.
//!
//! One request through the cache: `request_filter` (rule, scope, tags; a bypass stops there)
//! → `request_cache_filter` (the adapter enables Pingora's cache) → `cache_key_callback` →
//! `cache_hit_filter` → `response_cache_filter` (admission) → `response_filter`
//! (`Cache-Status`, an unsafe request's invalidation) → `logging` (metrics). Only `adapter.rs`
//! calls into `pingora::cache`; this file forwards the hooks' Pingora types to it unopened.

pub mod adapter;
pub mod admin;
pub mod bus;
pub mod config;
pub mod explain;
pub mod jwt;
pub mod key;
pub mod metrics;
pub mod o2;
pub mod policy;
pub mod profile;
pub mod scope;
pub mod status;
pub mod store;
pub mod template;
pub mod usage;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::{Method, StatusCode};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{ErrorSource, ErrorType};
use smallvec::SmallVec;

pub use o2::notify::CacheNotify;

use crate::plugin::{HttpPlugin, PluginBuild, PluginCx, RequestInfo, Resources};
use crate::section::ConfigErrors;

/// What one store name shares for the life of the process, across reloads and across every
/// route (and `cache_notify` plugin) that names it.
pub struct Shared {
    /// The store's name (`cache.store`, by default the route's name).
    pub name: Box<str>,
    /// The entries, their tags and the per-tag epochs.
    pub store: store::Store,
    /// Whether the notification channel can be trusted (else lifetimes shrink to `degraded_ttl`).
    pub channel: bus::ChannelHealth,
    /// The replica fan-out, once installed (only with `replicas: zookeeper`).
    pub bus: bus::BusSlot,
    /// Notification bookkeeping: dedupe, counters, subscription state.
    pub notify: o2::NotifyState,
    /// The gateway's own O2 subscription (`o2ims.subscription`), once a build starts it.
    pub subscription: o2::subscription::SubscriptionSlot,
}

/// Every store of the process, for the admin API.
static STORES: Mutex<Vec<&'static Shared>> = Mutex::new(Vec::new());

/// The store named `name`, made with `cfg` the first time (later builds resize it).
pub fn shared(resources: &Resources, cfg: &store::StoreConfig) -> &'static Shared {
    let mut made = false;
    let shared = resources.get_or_init(&cfg.name, || {
        made = true;
        Shared {
            name: cfg.name.clone(),
            store: store::Store::new(cfg),
            channel: bus::ChannelHealth::default(),
            bus: bus::BusSlot::default(),
            notify: o2::NotifyState::default(),
            subscription: o2::subscription::SubscriptionSlot::default(),
        }
    });
    if made {
        STORES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(shared);
    } else {
        shared.store.resize(cfg.memory);
    }
    shared
}

/// Every store made so far.
pub fn stores() -> Vec<&'static Shared> {
    STORES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The `cache` plugin of one route: a thin glue of phases over the rules (policy), the keys,
/// the scope and the adapter to Pingora's cache.
pub struct Cache {
    route: Box<str>,
    shared: &'static Shared,
    // Shared with the route's warm-up, which admits entries as this route would.
    rules: Arc<policy::Rules>,
    key: Arc<key::KeyBuilder>,
    scope: Option<Arc<scope::ScopeMaker>>,
    enabler: adapter::Enabler,
    /// A digest of the route's settings that shape its upstream's answers (trap 6).
    namespace: [u8; 16],
    max_object_size: u64,
    statuses: Box<[u16]>,
    degraded_ttl: Duration,
    metrics: metrics::RouteCacheMetrics,
    /// The store's O2 subscription as this route configures it, started by the serving
    /// config's tick.
    subscription: Option<o2::subscription::Plan>,
    /// `o2ims.warmup`, run by a task of the store's (`o2/warmup.rs`).
    warmup: Option<Arc<o2::warmup::Warmup>>,
    /// While any built plugin names the store, it keeps its entries and bus.
    _uses: usage::StoreUse,
}

/// What the cache works out about one request.
#[derive(Default)]
pub struct CacheState {
    /// The rule the request matched, when the cache is on for it.
    rule: Option<policy::RuleId>,
    /// The rule's resource kind, for the metrics.
    kind: Option<profile::Kind>,
    /// Whose entries the request may see (set with `rule`).
    scope: Option<scope::Scope>,
    /// The tags an entry stored for this request gets.
    tags: store::TagSet,
    /// What the cache did, for `Cache-Status`, the access log and the metrics.
    pub outcome: status::CacheOutcome,
    /// What an unsafe method invalidates when it succeeds.
    invalidate: store::TagSet,
    /// The gateway's own background refresh of a stale entry.
    refresh: bool,
    /// When the upstream request went out (ms since the epoch): the entry's creation time,
    /// which an eviction during the fetch is newer than.
    sent_ms: u64,
    /// The origin's answer is being stored.
    stored: bool,
    /// A stale entry answers because the origin failed with this status.
    stale_on_error: Option<u16>,
    /// The lookup found the URI but not the request's variant (`fwd=vary-miss`).
    vary_miss: bool,
}

impl CacheState {
    fn bypass(&mut self, why: status::BypassReason) {
        self.outcome = status::CacheOutcome::Bypass(why);
    }
}

thread_local! {
    /// The primary key's bytes, reused by every request on the thread.
    static PRIMARY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[async_trait]
impl HttpPlugin for Cache {
    type State = CacheState;

    /// The rule, the scope (a JWT verified here: a hit runs no later phase an access check
    /// could sit in) and the tags; a bypass stops here.
    async fn request_filter(
        &self,
        session: &mut Session,
        request: &RequestInfo<'_>,
        st: &mut CacheState,
    ) -> pingora::Result<bool> {
        st.refresh = request.subrequest;
        let req = session.req_header();
        let path = request.path(session);
        if !matches!(req.method, Method::GET | Method::HEAD) {
            self.rules
                .invalidations(&req.method, path, &mut st.invalidate);
        }
        let Some(m) = self.rules.matched(path) else {
            st.bypass(status::BypassReason::NoRule);
            return Ok(false);
        };
        st.kind = Some(m.rule.kind);
        if let Err(why) = self.rules.on_request(&req.method, &req.headers) {
            st.bypass(why);
            return Ok(false);
        }
        let cert = request.client_cert_sha256.map(|c| &c[..]);
        let scope = scope::of_request(
            self.scope.as_deref(),
            m.rule,
            &req.headers,
            cert,
            SystemTime::now(),
        );
        if let scope::Scope::Bypass(why) = scope {
            st.bypass(why);
            return Ok(false);
        }
        self.rules.tags(&m, path, &mut st.tags);
        st.rule = Some(m.id);
        st.scope = Some(scope);
        Ok(false)
    }

    fn request_cache_filter(
        &self,
        session: &mut Session,
        _request: &RequestInfo<'_>,
        st: &mut CacheState,
    ) -> pingora::Result<()> {
        if st.rule.is_some() {
            adapter::enable(session, &self.enabler);
        }
        Ok(())
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        request: &RequestInfo<'_>,
        st: &mut CacheState,
    ) -> Option<pingora::Result<CacheKey>> {
        let scope = st.scope.as_ref()?;
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
            .unwrap_or_default();
        let tag = match scope {
            scope::Scope::Keyed { tag, .. } => Some(tag),
            _ => None,
        };
        let key = PRIMARY.with_borrow_mut(|buf| {
            self.key.primary(
                host,
                request.path(session),
                request.query(session),
                tag,
                buf,
            );
            adapter::key(buf, &self.namespace)
        });
        Some(Ok(key))
    }

    /// A hit for a requester whose token has expired is a miss; in degraded mode an entry
    /// older than `degraded_ttl` is stale (its stale windows kept, so nobody waits).
    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit: &mut HitHandler,
        is_fresh: bool,
        _request: &RequestInfo<'_>,
        st: &mut CacheState,
    ) -> pingora::Result<Option<ForcedFreshness>> {
        let now = SystemTime::now();
        if let Some(scope::Scope::Keyed {
            expires: Some(exp), ..
        }) = st.scope
        {
            if exp <= now {
                return Ok(Some(adapter::force_miss()));
            }
        }
        if is_fresh && self.shared.channel.degraded() {
            let cap = adapter::created(meta) + self.degraded_ttl;
            if cap < now {
                return Ok(Some(adapter::force_stale(cap)));
            }
        }
        Ok(None)
    }

    /// Stale while revalidating within the entry's window; stale on any failure of the origin,
    /// the gateway's own refusals included (no backend, circuit open, route timeout: trap 4),
    /// but not on a client's failure.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        error: Option<&pingora::Error>,
        _request: &RequestInfo<'_>,
        st: &mut CacheState,
    ) -> Option<bool> {
        st.rule?;
        let Some(e) = error else {
            return Some(true);
        };
        if e.esource() == &ErrorSource::Downstream {
            return Some(false);
        }
        let status = match e.etype() {
            ErrorType::HTTPStatus(code) if *code < 500 => return Some(false),
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => 502,
        };
        st.stale_on_error = Some(status);
        Some(true)
    }

    /// Whether the miss is a vary miss can only be told here, before the answer's variance is
    /// set on the key for storing.
    fn cache_miss(&self, session: &mut Session, _request: &RequestInfo<'_>, st: &mut CacheState) {
        st.vary_miss = adapter::vary_miss(session);
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        req: &RequestHeader,
        st: &mut CacheState,
    ) -> Option<HashBinary> {
        st.rule?;
        let mut names = SmallVec::new();
        adapter::vary_names(meta, &mut names);
        adapter::variance(self.key.variance(&names, req))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        _request: &RequestInfo<'_>,
        upstream_request: &mut RequestHeader,
        st: &mut CacheState,
    ) -> pingora::Result<()> {
        st.sent_ms = store::wall_ms();
        if st.rule.is_none() {
            return Ok(());
        }
        // With `query: { allow: [...] }` the key holds the allowed parameters only, so the
        // origin must not see the others: an unkeyed parameter could change a stored answer.
        let Some(query) = upstream_request.uri.query() else {
            return Ok(());
        };
        let mut kept = String::new();
        let Some(kept) = self.key.upstream_query(query, &mut kept) else {
            return Ok(());
        };
        let path = upstream_request.uri.path();
        let target = if kept.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{kept}")
        };
        let uri = http::Uri::try_from(target).map_err(|e| {
            pingora::Error::because(
                ErrorType::InternalError,
                "query without unkeyed parameters",
                e,
            )
        })?;
        upstream_request.set_uri(uri);
        Ok(())
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        _request: &RequestInfo<'_>,
        resp: &ResponseHeader,
        st: &mut CacheState,
    ) -> Option<pingora::Result<RespCacheable>> {
        let id = st.rule?;
        let target = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        let now = SystemTime::now();
        let sent = if st.sent_ms == 0 {
            adapter::to_ms(now)
        } else {
            st.sent_ms
        };
        let entry = Entry {
            rule: id,
            kind: st.kind,
            scope: st.scope.as_ref(),
            tags: &st.tags,
            target,
            sent_ms: sent,
        };
        let meta = admission(
            &self.rules,
            &self.statuses,
            self.max_object_size,
            self.shared.channel.degraded(),
            &entry,
            resp,
            now,
        );
        st.stored = matches!(meta, RespCacheable::Cacheable(_));
        Some(Ok(meta))
    }

    /// `Cache-Status` on every answer of the route, from the store or the origin; and the
    /// invalidation by an unsafe request that succeeded.
    async fn response_filter(
        &self,
        session: &mut Session,
        _request: &RequestInfo<'_>,
        response: &mut ResponseHeader,
        st: &mut CacheState,
    ) -> pingora::Result<()> {
        // Before the answer leaves rather than after it (in `logging`): a client that reads
        // the answer to its write and asks again must not get what the write changed.
        if !st.invalidate.is_empty() && succeeded(response.status) {
            self.invalidate(&std::mem::take(&mut st.invalidate));
        }
        if st.rule.is_some() {
            st.outcome = match st.stale_on_error {
                Some(code) => status::CacheOutcome::StaleIfError(code),
                None => adapter::outcome(session),
            };
            if st.outcome == status::CacheOutcome::LockTimeout {
                // No `cache_miss` ran: the reader went from its wait to the origin.
                st.vary_miss = adapter::vary_miss(session);
            }
        }
        if st.outcome == status::CacheOutcome::None {
            return Ok(());
        }
        let ttl = if st.outcome.served_from_store() {
            adapter::ttl(session, SystemTime::now())
        } else {
            0
        };
        let stored = st.stored && !st.outcome.served_from_store();
        let value = status::cache_status(st.outcome, ttl, stored, st.vary_miss);
        response.insert_header(CACHE_STATUS, value)?;
        Ok(())
    }

    /// Metrics, and the invalidation by a successful unsafe request whose answer did not pass
    /// `response_filter` (one the gateway wrote itself).
    fn logging(
        &self,
        session: &Session,
        _request: &RequestInfo<'_>,
        _error: Option<&pingora::Error>,
        st: &mut CacheState,
    ) {
        if st.outcome == status::CacheOutcome::None && st.rule.is_some() {
            st.outcome = adapter::outcome(session);
        }
        let kind = st.kind.unwrap_or(profile::Kind::Generic);
        self.metrics.observe(kind, st.outcome);
        if st.refresh {
            self.metrics.refreshes.inc();
        }
        if adapter::lock_timed_out(session) {
            self.metrics.lock_timeouts.inc();
        }
        let answered = session
            .response_written()
            .is_some_and(|r| succeeded(r.status));
        if !st.invalidate.is_empty() && answered {
            self.invalidate(&st.invalidate);
        }
    }

    fn cache_log(&self, st: &CacheState) -> Option<&'static str> {
        st.outcome.log_field(st.refresh)
    }

    /// The store's expiry sweep and Redis breaker (a store shared by routes is ticked by each).
    fn tick(&self) {
        self.shared.store.tick(store::wall_ms());
        if let Some(plan) = &self.subscription {
            self.shared
                .subscription
                .serve(&self.shared.name, &self.shared.channel, plan);
        }
        if let Some(w) = &self.warmup {
            w.tick();
        }
    }

    /// The owner removes the O2 subscription (or leaves it to the next owner).
    async fn shutdown(&self) {
        self.shared.subscription.shutdown().await;
    }
}

/// `Cache-Status` (RFC 9211).
const CACHE_STATUS: &str = "cache-status";

/// What an origin's answer is stored with, besides the answer itself.
pub(crate) struct Entry<'a> {
    pub rule: policy::RuleId,
    pub kind: Option<profile::Kind>,
    pub scope: Option<&'a scope::Scope>,
    pub tags: &'a store::TagSet,
    /// The request's path and query.
    pub target: &'a str,
    /// When the request went to the origin (ms since the epoch).
    pub sent_ms: u64,
}

/// Whether and how `resp` is stored: the configured statuses, the size bound, then the rule's
/// lifetimes (capped by the requester's token and, when `degraded`, by `degraded_ttl`). The one
/// decision for a proxied miss and for the warm-up, so that their entries are alike.
pub(crate) fn admission(
    rules: &policy::Rules,
    statuses: &[u16],
    max_object_size: u64,
    degraded: bool,
    entry: &Entry<'_>,
    resp: &ResponseHeader,
    now: SystemTime,
) -> RespCacheable {
    let status = resp.status.as_u16();
    if !statuses.is_empty() && !statuses.contains(&status) {
        return adapter::uncacheable("status");
    }
    // Trap 7: a declared length over the bound streams through; an undeclared one is
    // cut off by the miss handler, which keeps streaming.
    if adapter::too_large(resp, max_object_size) {
        return adapter::uncacheable_too_large();
    }
    let cap = match entry.scope {
        Some(scope::Scope::Keyed { expires, .. }) => *expires,
        _ => None,
    };
    let adm = match rules.on_response(entry.rule, resp, now, cap, degraded) {
        Ok(adm) => adm,
        Err(why) => return adapter::uncacheable(why.as_str()),
    };
    let mut hard = now + adm.fresh + adm.stale_while_revalidate.max(adm.stale_if_error);
    if let Some(cap) = cap {
        hard = hard.min(cap);
    }
    let facts = adapter::EntryFacts {
        tags: entry.tags.as_slice().into(),
        class: adm.class,
        target: entry.target.into(),
        kind: entry.kind.map_or(0, |k| k as u16),
        created_ms: entry.sent_ms,
        hard_expiry_ms: adapter::to_ms(hard),
        synth_etag: adm.synth_etag,
        max_object_size,
    };
    adapter::cacheable(&adm, resp, now, facts)
}

/// An unsafe request that changed something at the origin: a 2xx or 3xx answer.
fn succeeded(status: StatusCode) -> bool {
    status.is_success() || status.is_redirection()
}

impl Cache {
    /// Drops what `tags` name here (the store moves their epochs too, so a fetch in flight
    /// since before cannot store what was just invalidated), then on the other replicas.
    fn invalidate(&self, tags: &[store::TagId]) {
        let now = store::wall_ms();
        self.shared
            .store
            .purge_tags(tags, store::EvictReason::Invalidation);
        if let Some(bus) = self.shared.bus.get() {
            bus.publish(tags, now);
        }
        self.metrics.invalidations.inc();
    }
}

impl PluginBuild for Cache {
    type Section = config::CacheSection;

    fn answers_itself(_: &config::CacheSection) -> bool {
        false
    }

    fn route(&self) -> &str {
        &self.route
    }

    fn build(
        section: &config::CacheSection,
        cx: &PluginCx<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<Cache> {
        let cfg = section.build(cx.route, cx.at, errors)?;
        let zookeeper = match (cfg.replicas, cx.zookeeper) {
            (config::Replicas::ZooKeeper { .. }, None) => {
                errors.push(
                    cx.at.key("replicas"),
                    "replicas: zookeeper needs the gateway's zookeeper section",
                );
                return None;
            }
            (config::Replicas::ZooKeeper { .. }, Some(ensemble)) => Some(ensemble),
            (config::Replicas::Off, _) => None,
        };
        let uses = usage::StoreUse::new(&cfg.store.name);
        let shared = shared(cx.resources, &cfg.store);
        shared
            .store
            .set_max_lifetime(u64::try_from(cfg.max_lifetime.as_millis()).unwrap_or(u64::MAX));
        if let (Some(ensemble), config::Replicas::ZooKeeper { epoch_slack }) =
            (zookeeper, cfg.replicas)
        {
            // Idempotent per store: the first build starts it, reloads keep it. The slack
            // covers clock skew between the replicas that stamp epochs and entries.
            bus::install_bus(shared, ensemble, cx.zk_root);
            let slack_ms = u64::try_from(epoch_slack.as_millis()).unwrap_or(u64::MAX);
            shared.store.epochs().set_slack(slack_ms);
        }
        let subscription = o2::subscription::plan(&cfg.store.name, &cfg, cx, errors);
        if let Some(why) = cfg.lock.and_then(|l| l.misfit(cx.route_timeout)) {
            log::warn!("{}: {why}", cx.at);
        }
        let lock = cfg
            .lock
            .map(|l| adapter::lock_for(cx.resources, &cfg.store.name, l.age, l.timeout));
        let mut cache = Cache {
            route: cx.route.into(),
            shared,
            rules: Arc::new(cfg.rules),
            key: Arc::new(cfg.key),
            scope: cfg.scope.map(Arc::new),
            enabler: adapter::Enabler::new(cx.resources, shared, lock),
            namespace: cx.route_digest,
            max_object_size: cfg.max_object_size,
            statuses: cfg.statuses,
            degraded_ttl: cfg.degraded_ttl,
            metrics: metrics::RouteCacheMetrics::new(cx.route),
            subscription,
            warmup: None,
            _uses: uses,
        };
        if let Some(w) = cfg.warmup {
            cache.warmup = Some(o2::warmup::Warmup::bind(w, &cache, cx, errors)?);
        }
        Some(cache)
    }
}
