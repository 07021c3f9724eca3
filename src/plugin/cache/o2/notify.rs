//! The `cache_notify` plugin: the O2 notification callback, which authenticates its caller,
//! drops repeats and evicts what the notification names.
//!
//! In `receive` mode it answers every request itself and reads the body in `request_filter`
//! with `session.read_request_body()`, as `alert_webhook` does: an answering plugin owns the
//! whole exchange, so the body is read exactly when the caller is known to be allowed and the
//! size within bounds, and no proxy phase after it runs. Success is 204 and never more, since
//! oran-o2ims counts anything above 204 as a failure and sends it again (notes §1.9). Every
//! refusal is an RFC 9457 ProblemDetails.
//!
//! In `tap` mode (for O-Clouds that accept no callback but the SMO's own) the route proxies
//! the O-Cloud's requests to the SMO unchanged. A POST's body is copied aside as it streams
//! through `request_body_filter`, up to `max_body`, and evicts in `logging` only when the SMO
//! answered 2xx: the SMO authenticated the sender, and a notification it refused must not
//! empty the cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::Method;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use prometheus::{register_int_counter_vec, IntCounter, IntCounterVec};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::dialect::{self, Dialect, Rejection};
use super::mapping::{self, Mapped};
use super::{NotifyResult, NotifyState};
use crate::plugin::cache::jwt::{JwtSection, Verifier};
use crate::plugin::cache::store::{EvictReason, TagSet};
use crate::plugin::cache::Shared;
use crate::plugin::{read_body_within, HttpPlugin, PluginBuild, PluginCx, RequestInfo};
use crate::section::{At, ConfigErrors, Dur, Secret, Size};
use crate::tls::info::TlsInfo;

/// `max_body` when unset: a notification is a few KiB; an oran state of a resource with many
/// elements stays far below this.
pub const DEFAULT_MAX_BODY: u64 = 256 * 1024;
/// `dedupe.window` when unset: longer than oran's whole retry schedule (10 s doubling, 5 tries:
/// 5 min 10 s), so a retry of a notification that was applied is recognised.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// `dedupe.entries` when unset: 16 bytes of key and 8 of time each, a few MiB at most.
pub const DEFAULT_DEDUPE_ENTRIES: usize = 100_000;
/// The largest `dedupe.entries` accepted.
const MAX_DEDUPE_ENTRIES: usize = 10_000_000;

/// `plugin.cache_notify`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// The store this callback evicts from (a `cache` route's `store`, by default its name).
    pub store: String,
    /// Who may post notifications: exactly one of `token`, `client_cert_sha256`, `jwt`.
    /// Required in `receive` mode; optional in `tap` mode, where the SMO authenticates.
    #[serde(default)]
    pub auth: Option<NotifyAuthSection>,
    /// The largest body accepted (413 past it).
    #[serde(default)]
    pub max_body: Option<Size>,
    #[serde(default)]
    pub dedupe: Option<DedupeSection>,
    /// `receive` (the default): the route answers the O-Cloud itself. `tap`: the route has an
    /// upstream (the SMO's callback), and a notification evicts once the SMO accepted it.
    #[serde(default)]
    pub mode: Option<String>,
}

impl NotifySection {
    fn tap(&self) -> bool {
        self.mode.as_deref() == Some("tap")
    }
}

/// `cache_notify.auth`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyAuthSection {
    /// `Authorization: Bearer <token>` with exactly this token.
    #[serde(default)]
    pub token: Option<Secret>,
    /// SHA-256 fingerprints (hex, colons allowed) of the client certificates allowed; the
    /// listener must ask for client certificates.
    #[serde(default)]
    pub client_cert_sha256: Option<Vec<String>>,
    /// A bearer JWT verified against these keys and claims.
    #[serde(default)]
    pub jwt: Option<JwtSection>,
}

/// `cache_notify.dedupe`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeSection {
    /// How long a `notificationId` (pti: the body's digest) is remembered.
    #[serde(default)]
    pub window: Option<Dur>,
    /// How many are remembered at most (the oldest go first).
    #[serde(default)]
    pub entries: Option<usize>,
}

/// Who may post notifications.
enum Auth {
    /// The whole expected `Authorization` value, `Bearer <token>`.
    Token(Vec<u8>),
    /// Lowercase hex SHA-256 of the allowed client certificates.
    Certs(Vec<String>),
    Jwt(Verifier),
}

/// The notification callback of one route.
pub struct CacheNotify {
    route: Box<str>,
    store: Box<str>,
    /// `None` only in tap mode, where the SMO behind the route decides.
    auth: Option<Auth>,
    /// In tap mode, the counters of the tapped requests.
    tap: Option<TapMetrics>,
    max_body: u64,
    window_ms: u64,
    entries: usize,
    /// The store, found the first time a request needs it: the `cache` route that makes it may
    /// be built after this one.
    shared: OnceLock<&'static Shared>,
    /// Whether the missing store was already reported.
    warned: AtomicBool,
    /// The dedupe and counters while no cache route has made the store.
    orphan: NotifyState,
    /// A callback names the store too: it keeps its bus (and entries) while this route lives.
    _uses: crate::plugin::cache::usage::StoreUse,
}

impl CacheNotify {
    fn shared(&self) -> Option<&'static Shared> {
        if let Some(s) = self.shared.get() {
            return Some(s);
        }
        let found = crate::plugin::cache::stores()
            .into_iter()
            .find(|s| *s.name == *self.store)?;
        found.notify.configure(self.window_ms, self.entries);
        Some(*self.shared.get_or_init(|| found))
    }

    fn authorized(&self, session: &Session) -> bool {
        let Some(auth) = &self.auth else {
            return true;
        };
        let bearer = || {
            session
                .req_header()
                .headers
                .get(AUTHORIZATION)
                .map(|v| v.as_bytes())
        };
        match auth {
            Auth::Token(expected) => bearer().is_some_and(|v| v.ct_eq(expected).into()),
            Auth::Certs(allowed) => TlsInfo::of(session.digest())
                .and_then(|i| i.client.as_ref())
                .is_some_and(|c| allowed.contains(&c.fingerprint)),
            Auth::Jwt(verifier) => bearer()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                })
                .is_some_and(|t| verifier.verify(t, SystemTime::now()).is_ok()),
        }
    }

    fn challenge(&self) -> &'static str {
        match self.auth {
            Some(Auth::Certs(_)) => "Mutual-TLS realm=\"zkgate\"",
            _ => "Bearer realm=\"zkgate\"",
        }
    }

    fn count_rejected(&self) {
        let state = self.shared().map_or(&self.orphan, |s| &s.notify);
        state.rejected.fetch_add(1, Ordering::Relaxed);
        state
            .metrics(&self.store)
            .count(None, NotifyResult::Rejected);
    }
}

/// What tap mode keeps about one proxied request.
#[derive(Default)]
pub struct TapState {
    /// A POST: its body is a notification once the SMO accepts it.
    post: bool,
    /// The body so far (within `max_body`).
    body: BytesMut,
    /// The body went past `max_body`: it streamed on to the SMO and evicts nothing.
    over: bool,
    /// When the request arrived (Unix ms): the epoch of what it evicts.
    arrived_ms: u64,
}

#[async_trait]
impl HttpPlugin for CacheNotify {
    type State = TapState;

    async fn request_filter(
        &self,
        session: &mut Session,
        _request: &RequestInfo<'_>,
        state: &mut TapState,
    ) -> pingora::Result<bool> {
        if self.tap.is_some() {
            return self.tap_request(session, state).await;
        }
        let method = session.req_header().method.clone();
        if method != Method::GET && method != Method::HEAD && method != Method::POST {
            let mut head = problem_head(405)?;
            head.insert_header(ALLOW, "GET, HEAD, POST")?;
            let r = Rejection {
                status: 405,
                title: "Method Not Allowed",
                detail: "a notification is a POST; a GET checks that the callback answers".into(),
            };
            return finish(session, head, &r).await;
        }
        if !self.authorized(session) {
            return self.unauthorized(session).await;
        }
        if method != Method::POST {
            // The reachability check oran-o2ims makes before it accepts a subscription.
            no_content(session).await?;
            return Ok(true);
        }
        let content_type = session.req_header().headers.get(CONTENT_TYPE);
        if content_type.is_some_and(|v| !is_json(v.as_bytes())) {
            self.count_rejected();
            let r = Rejection {
                status: 415,
                title: "Unsupported Media Type",
                detail: "a notification is application/json".into(),
            };
            return finish(session, problem_head(415)?, &r).await;
        }
        let body = read_body_within(session, self.max_body).await?;
        let Some(body) = body else {
            // The rest of the body is left unread: the connection cannot carry another request.
            session.set_keepalive(None);
            self.count_rejected();
            let r = Rejection::too_large(self.max_body as usize);
            return finish(session, problem_head(413)?, &r).await;
        };
        // Unix ms: epochs travel between replicas and are compared with entries' `created_ms`.
        let now_ms = crate::plugin::cache::store::wall_ms();
        let outcome = match self.shared() {
            Some(shared) => receive(shared, body, now_ms).await,
            None => {
                // No cache route names this store, so nothing is cached under it: the body is
                // still judged, so that the sender learns of what it gets wrong.
                self.warn_orphan();
                decide(&self.orphan, &self.store, &body, now_ms).0
            }
        };
        match &outcome.problem {
            None => no_content(session).await?,
            Some(r) => return finish(session, problem_head(r.status)?, r).await,
        }
        Ok(true)
    }

    /// Tap mode: a copy of a POST's body, the chunks themselves passed on untouched.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        _request: &RequestInfo<'_>,
        state: &mut TapState,
    ) -> pingora::Result<()> {
        if !state.post || state.over {
            return Ok(());
        }
        if let Some(chunk) = body {
            if (state.body.len() + chunk.len()) as u64 > self.max_body {
                state.over = true;
                state.body = BytesMut::new();
            } else {
                state.body.extend_from_slice(chunk);
            }
        }
        Ok(())
    }

    /// Tap mode: the eviction, once the SMO has answered the POST with a 2xx.
    fn logging(
        &self,
        session: &Session,
        _request: &RequestInfo<'_>,
        error: Option<&pingora::Error>,
        state: &mut TapState,
    ) {
        let Some(metrics) = &self.tap else { return };
        if !state.post {
            return;
        }
        let status = session.response_written().map(|r| r.status.as_u16());
        let accepted = error.is_none() && status.is_some_and(|s| (200..300).contains(&s));
        if !accepted {
            match status {
                Some(s) if error.is_none() => {
                    log::debug!(
                        "route {}: the SMO answered a tapped notification with {s}: nothing \
                         evicted",
                        self.route
                    );
                    metrics.refused.inc();
                }
                _ => metrics.failed.inc(),
            }
            return;
        }
        if state.over {
            log::warn!(
                "route {}: a tapped notification over max_body ({} bytes) passed to the SMO \
                 unread: nothing evicted",
                self.route,
                self.max_body
            );
            metrics.too_large.inc();
            return;
        }
        let body = std::mem::take(&mut state.body).freeze();
        let outcome = match self.shared() {
            Some(shared) => apply(shared, &body, state.arrived_ms),
            None => {
                self.warn_orphan();
                decide(&self.orphan, &self.store, &body, state.arrived_ms).0
            }
        };
        if let Some(r) = &outcome.problem {
            // The SMO took it, so the sender is told nothing: the log says why it evicted
            // nothing.
            log::info!(
                "route {}: a tapped notification the SMO accepted evicts nothing: {} {}",
                self.route,
                r.status,
                r.detail
            );
        }
        metrics.evaluated.inc();
    }
}

impl CacheNotify {
    /// Tap mode's `request_filter`: the optional check of the caller, then the request goes on
    /// to the SMO; a POST's body is copied as it passes.
    async fn tap_request(
        &self,
        session: &mut Session,
        state: &mut TapState,
    ) -> pingora::Result<bool> {
        if !self.authorized(session) {
            return self.unauthorized(session).await;
        }
        if session.req_header().method != Method::POST {
            // The reachability GET, or whatever else the SMO's callback answers.
            return Ok(false);
        }
        state.post = true;
        state.arrived_ms = crate::plugin::cache::store::wall_ms();
        let declared = session
            .req_header()
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            state.over = true;
        }
        Ok(false)
    }

    /// The 401 (with the challenge) for a caller the callback's `auth` refuses.
    async fn unauthorized(&self, session: &mut Session) -> pingora::Result<bool> {
        self.count_rejected();
        let mut head = problem_head(401)?;
        head.insert_header(WWW_AUTHENTICATE, self.challenge())?;
        let r = Rejection {
            status: 401,
            title: "Unauthorized",
            detail: "missing or refused credentials".into(),
        };
        finish(session, head, &r).await
    }

    fn warn_orphan(&self) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            log::warn!(
                "route {}: cache_notify store `{}` is named by no cache route; notifications \
                 evict nothing",
                self.route,
                self.store
            );
        }
    }
}

static TAP_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    // Registration fails only on a duplicate name, which this single static rules out.
    register_int_counter_vec!(
        "zkgate_cache_notify_tap_total",
        "POSTs a cache_notify route in tap mode passed to the SMO, by route and result: \
         evaluated (the SMO answered 2xx, the body was handled as a notification: \
         zkgate_cache_notifications_total says how), refused (the SMO answered otherwise: \
         nothing evicted), too_large (over max_body: passed on unread, nothing evicted), \
         failed (no answer from the SMO).",
        &["route", "result"]
    )
    .expect("register zkgate_cache_notify_tap_total")
});

/// The tap counters of one route, labels resolved at build.
struct TapMetrics {
    evaluated: IntCounter,
    refused: IntCounter,
    too_large: IntCounter,
    failed: IntCounter,
}

impl TapMetrics {
    fn new(route: &str) -> TapMetrics {
        let c = |result| TAP_TOTAL.with_label_values(&[route, result]);
        TapMetrics {
            evaluated: c("evaluated"),
            refused: c("refused"),
            too_large: c("too_large"),
            failed: c("failed"),
        }
    }
}

impl PluginBuild for CacheNotify {
    type Section = NotifySection;

    /// In tap mode the route proxies to the SMO.
    fn answers_itself(section: &NotifySection) -> bool {
        !section.tap()
    }

    fn route(&self) -> &str {
        &self.route
    }

    fn build(
        section: &NotifySection,
        cx: &PluginCx<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<Self> {
        let at = cx.at;
        let before = errors.len();
        if section.store.trim().is_empty() {
            errors.push(at.key("store"), "must name a cache store");
        }
        let auth = match (&section.auth, section.tap()) {
            (None, true) => None,
            (auth, _) => build_auth(auth.as_ref(), &at.key("auth"), errors),
        };
        let max_body = section.max_body.map_or(DEFAULT_MAX_BODY, |s| s.0);
        if max_body == 0 || max_body > dialect::MAX_BODY as u64 {
            errors.push(
                at.key("max_body"),
                format!(
                    "must be between 1 byte and {} KiB",
                    dialect::MAX_BODY / 1024
                ),
            );
        }
        let dedupe = section.dedupe.clone().unwrap_or_default();
        let window = dedupe.window.map_or(DEFAULT_DEDUPE_WINDOW, |d| d.0);
        if window.is_zero() {
            errors.push(at.key("dedupe").key("window"), "must be more than 0");
        }
        let entries = dedupe.entries.unwrap_or(DEFAULT_DEDUPE_ENTRIES);
        if entries == 0 || entries > MAX_DEDUPE_ENTRIES {
            errors.push(
                at.key("dedupe").key("entries"),
                format!("must be between 1 and {MAX_DEDUPE_ENTRIES}"),
            );
        }
        match section.mode.as_deref() {
            None | Some("receive") | Some("tap") => {}
            Some(other) => errors.push(
                at.key("mode"),
                format!("`{other}` is not a mode (receive, tap)"),
            ),
        }
        if errors.len() > before {
            return None;
        }
        let orphan = NotifyState::default();
        orphan.configure(window.as_millis().min(u64::MAX as u128) as u64, entries);
        Some(CacheNotify {
            orphan,
            route: cx.route.into(),
            store: section.store.trim().into(),
            auth: match auth {
                Some(a) => Some(a),
                // Only tap mode goes without: build_auth reported the rest.
                None if section.tap() && section.auth.is_none() => None,
                None => return None,
            },
            tap: section.tap().then(|| TapMetrics::new(cx.route)),
            max_body,
            window_ms: window.as_millis().min(u64::MAX as u128) as u64,
            entries,
            shared: OnceLock::new(),
            warned: AtomicBool::new(false),
            _uses: crate::plugin::cache::usage::StoreUse::new(section.store.trim()),
        })
    }
}

fn build_auth(
    section: Option<&NotifyAuthSection>,
    at: &At,
    errors: &mut ConfigErrors,
) -> Option<Auth> {
    let Some(s) = section else {
        errors.push(
            at,
            "is required: `token`, `client_cert_sha256` or `jwt` (anyone who can post here can \
             empty the cache)",
        );
        return None;
    };
    let given = [
        s.token.is_some(),
        s.client_cert_sha256.is_some(),
        s.jwt.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        errors.push(
            at,
            "needs exactly one of `token`, `client_cert_sha256` and `jwt`",
        );
        return None;
    }
    if let Some(token) = &s.token {
        if token.0.trim().is_empty() {
            errors.push(at.key("token"), "must not be empty");
            return None;
        }
        return Some(Auth::Token(format!("Bearer {}", token.0).into_bytes()));
    }
    if let Some(certs) = &s.client_cert_sha256 {
        if certs.is_empty() {
            errors.push(
                at.key("client_cert_sha256"),
                "must list at least one fingerprint",
            );
            return None;
        }
        let mut out = Vec::with_capacity(certs.len());
        for (i, c) in certs.iter().enumerate() {
            let hex: String = c
                .chars()
                .filter(|ch| *ch != ':')
                .map(|ch| ch.to_ascii_lowercase())
                .collect();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(
                    at.index("client_cert_sha256", i),
                    "must be a SHA-256 fingerprint: 64 hex digits, colons allowed",
                );
            } else {
                out.push(hex);
            }
        }
        return (out.len() == certs.len()).then_some(Auth::Certs(out));
    }
    let jwt = s.jwt.as_ref()?;
    Verifier::build(jwt, &at.key("jwt"), errors).map(Auth::Jwt)
}

/// `application/json`, or any `+json` type, with or without parameters.
fn is_json(value: &[u8]) -> bool {
    let essence = value.split(|b| *b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5
            && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json")
            && essence
                .get(..12)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"application/")))
}

/// What became of one notification.
#[derive(Debug)]
pub struct NotifyOutcome {
    /// 204, or the refusal's status.
    pub status: u16,
    /// Entries removed from this replica's memory.
    pub evicted: usize,
    pub result: NotifyResult,
    /// The dialect, when the body parsed.
    pub dialect: Option<Dialect>,
    /// The refusal, when there is one.
    pub problem: Option<Rejection>,
}

/// Handles one authenticated notification body arrived at `now_ms`: parse, drop a repeat, bump
/// the epochs of what it names and purge it here, then queue the epochs for the other replicas.
pub async fn receive(shared: &'static Shared, body: Bytes, now_ms: u64) -> NotifyOutcome {
    apply(shared, &body, now_ms)
}

/// [`receive`], which waits on nothing: tap mode runs it from `logging`.
pub fn apply(shared: &'static Shared, body: &[u8], now_ms: u64) -> NotifyOutcome {
    let started = Instant::now();
    let (mut outcome, tags) = decide(&shared.notify, &shared.name, body, now_ms);
    if tags.is_empty() {
        return outcome;
    }
    // The epochs first: an entry being stored right now from an answer sent before this
    // notification is then refused at its first read even if the purge misses it.
    let epochs = shared.store.epochs();
    for t in &tags {
        epochs.bump(*t, now_ms);
    }
    outcome.evicted = shared.store.purge_tags(&tags, EvictReason::Invalidation);
    if let Some(bus) = shared.bus.get() {
        bus.publish(&tags, now_ms);
    }
    shared.channel.notified(now_ms);
    let metrics = shared.notify.metrics(&shared.name);
    metrics.local.observe(started.elapsed().as_secs_f64());
    metrics.last.set((now_ms / 1000) as i64);
    outcome
}

/// What a notification body means for store `store`, counted: the answer, and the tags to
/// evict (none for a refusal or a repeat).
pub fn decide(
    state: &NotifyState,
    store: &str,
    body: &[u8],
    now_ms: u64,
) -> (NotifyOutcome, TagSet) {
    let metrics = state.metrics(store);
    let mut tags = TagSet::new();
    let n = match dialect::parse(body) {
        Ok(n) => n,
        Err(r) => {
            state.rejected.fetch_add(1, Ordering::Relaxed);
            metrics.count(None, NotifyResult::Rejected);
            let outcome = NotifyOutcome {
                status: r.status,
                evicted: 0,
                result: NotifyResult::Rejected,
                dialect: None,
                problem: Some(r),
            };
            return (outcome, tags);
        }
    };
    let mapped = mapping::map(&n, store, &mut tags);
    if mapped == Mapped::Unknown {
        state.rejected.fetch_add(1, Ordering::Relaxed);
        metrics.count(Some(n.dialect), NotifyResult::Rejected);
        let r = Rejection {
            status: 422,
            title: "Unprocessable Content",
            detail: format!(
                "objectRef {:?} is outside every O2 IMS API base or names no O2 IMS kind",
                n.object_ref.as_deref().unwrap_or_default()
            ),
        };
        let outcome = NotifyOutcome {
            status: 422,
            evicted: 0,
            result: NotifyResult::Rejected,
            dialect: Some(n.dialect),
            problem: Some(r),
        };
        return (outcome, TagSet::new());
    }
    if state.seen(dedupe_key(&n, body), now_ms) {
        state.duplicates.fetch_add(1, Ordering::Relaxed);
        metrics.count(Some(n.dialect), NotifyResult::Duplicate);
        let outcome = NotifyOutcome {
            status: 204,
            evicted: 0,
            result: NotifyResult::Duplicate,
            dialect: Some(n.dialect),
            problem: None,
        };
        return (outcome, TagSet::new());
    }
    let result = if mapped == Mapped::Tags {
        state.applied.fetch_add(1, Ordering::Relaxed);
        NotifyResult::Applied
    } else {
        state.unmapped.fetch_add(1, Ordering::Relaxed);
        metrics.unmapped.inc();
        log::info!(
            "cache store {store}: {} notification {} not pinned to an object: evicting {}",
            n.dialect.as_str(),
            n.object_ref.as_deref().unwrap_or("without objectRef"),
            match mapped {
                Mapped::Kind(k) => format!("the kind {}", k.as_str()),
                _ => "the API family".to_owned(),
            },
        );
        NotifyResult::Unmapped
    };
    metrics.count(Some(n.dialect), result);
    let outcome = NotifyOutcome {
        status: 204,
        evicted: 0,
        result,
        dialect: Some(n.dialect),
        problem: None,
    };
    (outcome, tags)
}

/// The notification's id, or for pti, which sends none, the digest of the whole body (its
/// `updateTime` makes two real changes differ).
fn dedupe_key(n: &dialect::Notification, body: &[u8]) -> u128 {
    use xxhash_rust::xxh3::Xxh3;
    let mut h = Xxh3::new();
    match &n.id {
        Some(id) => {
            h.update(b"id\0");
            h.update(id.as_bytes());
        }
        None => {
            h.update(b"body\0");
            h.update(body);
        }
    }
    h.digest128()
}

fn problem_head(status: u16) -> pingora::Result<ResponseHeader> {
    let mut head = ResponseHeader::build(status, Some(4))?;
    head.insert_header(CONTENT_TYPE, "application/problem+json")?;
    Ok(head)
}

async fn no_content(session: &mut Session) -> pingora::Result<()> {
    let head = ResponseHeader::build(204, Some(1))?;
    session.write_response_header(Box::new(head), true).await
}

/// Writes `head` with the ProblemDetails of `r`; `Ok(true)`, the request answered.
async fn finish(
    session: &mut Session,
    mut head: ResponseHeader,
    r: &Rejection,
) -> pingora::Result<bool> {
    let mut text = r.problem().to_string();
    text.push('\n');
    head.insert_header(CONTENT_LENGTH, text.len())?;
    session.write_response_header(Box::new(head), false).await?;
    session
        .write_response_body(Some(Bytes::from(text)), true)
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_types() {
        for ok in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"application/merge-patch+json",
            b" application/json ",
        ] {
            assert!(is_json(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"text/plain"[..],
            b"application/jsonx",
            b"text/x+json",
            b"+json",
            b"",
        ] {
            assert!(!is_json(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn auth_validation() {
        let at = At::root().key("auth");
        let mut errors = ConfigErrors::default();
        assert!(build_auth(None, &at, &mut errors).is_none());
        let both = NotifyAuthSection {
            token: Some(Secret("t".into())),
            client_cert_sha256: Some(vec![]),
            jwt: None,
        };
        assert!(build_auth(Some(&both), &at, &mut errors).is_none());
        let certs = NotifyAuthSection {
            client_cert_sha256: Some(vec!["AB:".repeat(31) + "AB", "nothex".into()]),
            ..Default::default()
        };
        assert!(build_auth(Some(&certs), &at, &mut errors).is_none());
        assert_eq!(errors.len(), 3, "{errors}");
        assert!(
            errors.to_string().contains("auth.client_cert_sha256[1]"),
            "{errors}"
        );
        let mut errors = ConfigErrors::default();
        let ok = NotifyAuthSection {
            client_cert_sha256: Some(vec!["AB:".repeat(31) + "AB"]),
            ..Default::default()
        };
        match build_auth(Some(&ok), &at, &mut errors) {
            Some(Auth::Certs(c)) => assert_eq!(c, vec!["ab".repeat(32)]),
            _ => panic!("{errors}"),
        }
    }

    #[test]
    fn decisions() {
        let state = NotifyState::default();
        let oran = br#"{"notificationId":"n1","notificationEventType":1,
            "objectRef":"/o2ims-infrastructureInventory/v2/resourcePools/P1"}"#;
        let (o, tags) = decide(&state, "s", oran, 1_000);
        assert_eq!(
            (o.status, o.result, o.dialect),
            (204, NotifyResult::Applied, Some(Dialect::Oran))
        );
        assert!(!tags.is_empty());
        // oran's retry of the same event.
        let (o, tags) = decide(&state, "s", oran, 2_000);
        assert_eq!((o.status, o.result), (204, NotifyResult::Duplicate));
        assert!(tags.is_empty());
        let (o, tags) = decide(&state, "s", br#"{"notificationEventType":"2"}"#, 3_000);
        assert_eq!((o.status, o.result), (204, NotifyResult::Unmapped));
        assert_eq!(tags.len(), 1);
        let unknown = br#"{"notificationId":"n2","notificationEventType":1,"objectRef":"/x/v1/y"}"#;
        for _ in 0..2 {
            // Refused each time: a 422 is never remembered as seen.
            let (o, tags) = decide(&state, "s", unknown, 4_000);
            assert_eq!((o.status, o.result), (422, NotifyResult::Rejected));
            assert_eq!(o.problem.unwrap().problem()["status"], 422);
            assert!(tags.is_empty());
        }
        let (o, _) = decide(&state, "s", b"{", 5_000);
        assert_eq!((o.status, o.dialect), (400, None));
        let counts = [
            &state.applied,
            &state.duplicates,
            &state.unmapped,
            &state.rejected,
        ]
        .map(|c| c.load(Ordering::Relaxed));
        assert_eq!(counts, [1, 1, 1, 3]);
    }

    #[test]
    fn dedupe_keys() {
        let a = dialect::parse(br#"{"notificationEventType":1,"notificationId":"x"}"#).unwrap();
        let b = dialect::parse(br#"{"notificationEventType":2,"notificationId":"x"}"#).unwrap();
        // Same id: a duplicate whatever the body says (oran retries the same event).
        assert_eq!(dedupe_key(&a, b"1"), dedupe_key(&b, b"2"));
        let p = dialect::parse(br#"{"notificationEventType":"1"}"#).unwrap();
        assert_ne!(dedupe_key(&p, b"1"), dedupe_key(&p, b"2"));
    }
}
