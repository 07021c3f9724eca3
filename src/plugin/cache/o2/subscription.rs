//! The gateway's own subscription to the O2 IMS notifications, kept by one owner among the
//! replicas: the owner adopts, finds or makes the subscription, checks every `check_every` that
//! the O-Cloud still has it, subscribes again when it is lost, and removes it when the last
//! replica stops. Its state drives the notification channel's health (degraded lifetimes).
//!
//! The owner is elected through ZooKeeper (`zkgate_discovery::cache_owner`) with
//! `replicas: zookeeper`; without it the single replica is its own owner. One manager runs per
//! store, on a thread of its own (a config build has no runtime to lend), started by the first
//! `Cache` build that names the section; a reload hands it the new settings and upstream.
//!
//! The API base: `base:` when set, else the highest version `GET
//! /o2ims-infrastructureInventory/api_versions` lists (oran-o2ims answers 2.0.0, so `v2`;
//! pti-o2 `v1`), else `/o2ims-infrastructureInventory/v1`. netweave serves `/o2ims/v1` and
//! needs `base: /o2ims/v1`. Alarm subscriptions are on `/o2ims-infrastructureMonitoring/v1`,
//! the only version any of the three has.

use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method};
use prometheus::{register_int_gauge_vec, IntGauge, IntGaugeVec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use zkgate_discovery::cache_owner::{self, Role, SubscriptionRecord};
use zkgate_discovery::Ensemble;

use super::super::bus::{ChannelHealth, ChannelPart};
use super::super::store::wall_ms;
use crate::plugin::client::{self, Answer};
use crate::section::{At, ConfigErrors, Dur, Secret};
use crate::upstream::Upstream;

/// `check_every` when unset.
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(30);
/// The inventory base when neither `base:` nor the O-Cloud's `api_versions` says.
pub const DEFAULT_BASE: &str = "/o2ims-infrastructureInventory/v1";
/// Where the inventory API lists its versions.
const VERSIONS: &str = "/o2ims-infrastructureInventory/api_versions";
/// The alarm subscriptions' collection.
const ALARM_SUBSCRIPTIONS: &str = "/o2ims-infrastructureMonitoring/v1/alarmSubscriptions";
/// How long one call to the O-Cloud may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the DELETEs (the bound).
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(2);
/// The largest subscription answer read (a list of every subscriber).
const MAX_BODY: usize = 4 << 20;
/// The namespace of the default `consumerSubscriptionId` (uuid v5 of the store's name), so
/// that every replica and every restart names the same subscriber.
const CONSUMER_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b1e_3f3c_8f1a_5d52_9a57_c2a4_0f0e_2b14);

/// `plugin.cache.o2ims.subscription`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSection {
    /// `subscribe` (default) or `off`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The URL the O-Cloud sends notifications to (a `cache_notify` route).
    #[serde(default)]
    pub callback: Option<String>,
    #[serde(default)]
    pub consumer_subscription_id: Option<String>,
    #[serde(default)]
    pub check_every: Option<Dur>,
    /// The gateway's credential on its own O2 calls.
    #[serde(default)]
    pub authorization: Option<Secret>,
    /// Also subscribe to alarms on the monitoring API.
    #[serde(default)]
    pub alarms: Option<bool>,
    /// Passed as the subscription's `filter`, as the O-Cloud's dialect wants it.
    #[serde(default)]
    pub filter: Option<serde_yaml::Value>,
    /// The inventory API's base path; by default asked of the O-Cloud.
    #[serde(default)]
    pub base: Option<String>,
    /// The upstream the calls go through; by default the route's.
    #[serde(default)]
    pub upstream: Option<String>,
}

/// `subscribe` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Subscribe,
    Off,
}

/// What the section builds.
#[derive(Clone, Debug)]
pub struct SubscriptionConfig {
    pub mode: Mode,
    pub callback: String,
    /// `None`: the uuid v5 of the store's name.
    pub consumer_subscription_id: Option<String>,
    pub check_every: Duration,
    pub authorization: Option<HeaderValue>,
    pub alarms: bool,
    pub filter: Option<Value>,
    pub base: Option<String>,
    pub upstream: Option<String>,
}

impl SubscriptionSection {
    pub fn build(&self, at: &At, errors: &mut ConfigErrors) -> Option<SubscriptionConfig> {
        let before = errors.len();
        let mode = match self.mode.as_deref() {
            None | Some("subscribe") => Mode::Subscribe,
            Some("off") => Mode::Off,
            Some("tap") => {
                errors.push(
                    at.key("mode"),
                    "`tap` is a mode of the `cache_notify` plugin (which observes the SMO's own \
                     callback); here: subscribe or off",
                );
                Mode::Off
            }
            Some(other) => {
                errors.push(
                    at.key("mode"),
                    format!("`{other}` is not one of subscribe, off"),
                );
                Mode::Off
            }
        };
        let callback = self.callback.clone().unwrap_or_default();
        match &self.callback {
            None if mode == Mode::Subscribe => errors.push(
                at.key("callback"),
                "mode: subscribe needs the callback URL the O-Cloud notifies (a cache_notify route)",
            ),
            None => {}
            Some(url) => {
                if let Err(why) = check_callback(url) {
                    errors.push(at.key("callback"), why);
                }
            }
        }
        let check_every = self.check_every.map_or(DEFAULT_CHECK_EVERY, |d| d.0);
        if check_every.is_zero() {
            errors.push(at.key("check_every"), "must be more than 0");
        }
        let authorization = self.authorization.as_ref().and_then(|s| {
            let text = authorization_value(&s.0);
            match HeaderValue::from_str(&text) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    Some(v)
                }
                Err(_) => {
                    // The value is secret: not quoted.
                    errors.push(
                        at.key("authorization"),
                        "is not a valid header value (control characters?)",
                    );
                    None
                }
            }
        });
        if let Some(id) = &self.consumer_subscription_id {
            if id.trim().is_empty() {
                errors.push(at.key("consumer_subscription_id"), "must not be empty");
            }
        }
        let filter = self
            .filter
            .as_ref()
            .and_then(|f| match serde_json::to_value(f) {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(at.key("filter"), format!("cannot be sent as JSON: {e}"));
                    None
                }
            });
        if let Some(base) = &self.base {
            if !base.starts_with('/') || base.contains(['?', '#', ' ']) {
                errors.push(
                    at.key("base"),
                    "must be a path such as /o2ims-infrastructureInventory/v2",
                );
            }
        }
        if errors.len() > before {
            return None;
        }
        Some(SubscriptionConfig {
            mode,
            callback,
            consumer_subscription_id: self.consumer_subscription_id.clone(),
            check_every,
            authorization,
            alarms: self.alarms.unwrap_or(false),
            filter,
            base: self
                .base
                .as_ref()
                .map(|b| b.trim_end_matches('/').to_owned()),
            upstream: self.upstream.clone(),
        })
    }
}

/// A callback the O-Cloud can call: an absolute http(s) URL with a host.
fn check_callback(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{url}` is not an http(s) URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` names no host"));
    }
    Ok(())
}

/// A bare token is sent as `Bearer <token>`; a value with a scheme (`Bearer …`, `Basic …`) as
/// it is.
fn authorization_value(text: &str) -> String {
    let text = text.trim();
    if text.contains(' ') {
        text.to_owned()
    } else {
        format!("Bearer {text}")
    }
}

/// The default `consumerSubscriptionId` of a store.
pub fn default_consumer_id(store: &str) -> String {
    uuid::Uuid::new_v5(&CONSUMER_NAMESPACE, store.as_bytes()).to_string()
}

// ---------------------------------------------------------------------------------------------
// States

/// Where a store's subscription stands on this replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubState {
    /// `mode: off`.
    Off,
    /// Nobody is known to own it (no ZooKeeper session).
    Unowned,
    /// This replica owns it and is adopting or making it.
    Subscribing,
    /// The O-Cloud has it.
    Active { id: String, since_ms: u64 },
    /// The O-Cloud no longer has it (or refused to make it again): subscribing again.
    Lost { why: String },
    /// Another replica owns it.
    Following { owner: String },
}

impl SubState {
    const NAMES: [&'static str; 6] = [
        "off",
        "unowned",
        "subscribing",
        "active",
        "lost",
        "following",
    ];

    fn index(&self) -> usize {
        match self {
            SubState::Off => 0,
            SubState::Unowned => 1,
            SubState::Subscribing => 2,
            SubState::Active { .. } => 3,
            SubState::Lost { .. } => 4,
            SubState::Following { .. } => 5,
        }
    }

    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

/// What `GET /cache` and the channel health read: the state and what decides the health.
#[derive(Clone, Debug)]
struct Status {
    state: SubState,
    /// Monotonic ms when the state last turned Lost or Unowned (kept while it stays so).
    bad_since: u64,
    /// Whether the subscription was ever in place while this manager ran: before that, any
    /// state but Active (or a fresh owner's record) counts as down.
    ever_up: bool,
    /// Wall ms of the last successful check at the O-Cloud (the owner's, or the record's).
    checked_ms: u64,
    /// The last failure, for the admin.
    error: Option<String>,
    alarm_id: Option<String>,
}

impl Status {
    fn new(state: SubState) -> Status {
        Status {
            state,
            bad_since: 0,
            ever_up: false,
            checked_ms: 0,
            error: None,
            alarm_id: None,
        }
    }

    /// Whether notifications can be trusted to arrive, at monotonic `now` and wall `wall`.
    fn healthy(&self, check_every: Duration, now: u64, wall: u64) -> bool {
        let every = check_every.as_millis() as u64;
        let fresh = |checked: u64| checked > 0 && wall.saturating_sub(checked) <= 3 * every;
        match &self.state {
            SubState::Off => true,
            SubState::Active { .. } => fresh(self.checked_ms),
            SubState::Following { .. } => fresh(self.checked_ms),
            SubState::Subscribing => false,
            SubState::Lost { .. } | SubState::Unowned => {
                self.ever_up && now.saturating_sub(self.bad_since) <= 2 * every
            }
        }
    }
}

static STATE_GAUGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    // Registration fails only on a duplicate name, which this single static rules out.
    register_int_gauge_vec!(
        "zkgate_cache_subscription_state",
        "The O2 IMS subscription of a cache store on this replica: 1 for its state (off, \
         unowned, subscribing, active, lost, following), 0 for the others.",
        &["store", "state"]
    )
    .expect("register zkgate_cache_subscription_state")
});

/// The state, the one-hot gauge and the channel health of one store, kept together.
pub struct Tracker {
    status: Mutex<Status>,
    gauges: [IntGauge; 6],
    channel: &'static ChannelHealth,
    check_every_ms: std::sync::atomic::AtomicU64,
}

impl Tracker {
    fn new(store: &str, channel: &'static ChannelHealth, initial: SubState) -> Tracker {
        let gauges = SubState::NAMES.map(|n| STATE_GAUGE.with_label_values(&[store, n]));
        let t = Tracker {
            status: Mutex::new(Status::new(initial.clone())),
            gauges,
            channel,
            check_every_ms: std::sync::atomic::AtomicU64::new(
                DEFAULT_CHECK_EVERY.as_millis() as u64
            ),
        };
        t.show(&initial);
        if initial != SubState::Off {
            // Down until the subscription is in place, so its arrival counts as a recovery
            // (what the warm-up waits for).
            channel.set(ChannelPart::Subscription, false);
        }
        t
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn show(&self, state: &SubState) {
        for (i, g) in self.gauges.iter().enumerate() {
            g.set(i64::from(i == state.index()));
        }
    }

    fn check_every(&self) -> Duration {
        Duration::from_millis(
            self.check_every_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn set_state(&self, state: SubState) {
        let mut s = self.status();
        if s.state == state {
            return;
        }
        let bad = matches!(state, SubState::Lost { .. } | SubState::Unowned);
        let was_bad = matches!(s.state, SubState::Lost { .. } | SubState::Unowned);
        if bad && !was_bad {
            s.bad_since = crate::clock::now_ms();
        }
        if let SubState::Active { .. } = state {
            s.ever_up = true;
            s.error = None;
        }
        if s.state.name() != state.name() {
            log::info!("cache subscription: {} -> {:?}", s.state.name(), state);
        }
        self.show(&state);
        s.state = state;
        drop(s);
        self.refresh();
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status());
        self.refresh();
    }

    /// Sets the channel's subscription part from the state and the clocks.
    fn refresh(&self) {
        let mut s = self.status();
        let ok = s.healthy(self.check_every(), crate::clock::now_ms(), wall_ms());
        if ok && matches!(s.state, SubState::Following { .. }) {
            s.ever_up = true;
        }
        drop(s);
        self.channel.set(ChannelPart::Subscription, ok);
    }

    fn state(&self) -> SubState {
        self.status().state.clone()
    }

    /// `GET /cache`'s `subscription` object.
    fn view(&self) -> Value {
        let s = self.status();
        let wall = wall_ms();
        let mut v = json!({
            "state": s.state.name(),
            "checked_age_ms": (s.checked_ms > 0).then(|| wall.saturating_sub(s.checked_ms)),
            "error": s.error,
        });
        match &s.state {
            SubState::Active { id, since_ms } => {
                v["id"] = json!(id);
                v["since_ms"] = json!(since_ms);
                v["alarm_id"] = json!(s.alarm_id);
            }
            SubState::Lost { why } => v["why"] = json!(why),
            SubState::Following { owner } => v["owner"] = json!(owner),
            _ => {}
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// What the manager talks to

/// The O-Cloud's API, as the manager calls it.
#[async_trait]
pub(crate) trait O2Api: Send + Sync {
    /// One call; `Err` when no answer came.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, String>;
}

/// The election and the shared record.
#[async_trait]
pub(crate) trait Coord: Send + Sync {
    fn roles(&self) -> watch::Receiver<Role>;
    async fn read(&self) -> Result<Option<SubscriptionRecord>, String>;
    async fn write(&self, record: &SubscriptionRecord) -> Result<(), String>;
    async fn forget(&self);
    /// Other replicas that would take over.
    async fn others(&self) -> usize;
    async fn resign(&self);
}

/// A replica on its own: always the owner; the record lives in memory.
struct Solo {
    role: watch::Sender<Role>,
    record: Mutex<Option<SubscriptionRecord>>,
}

impl Solo {
    fn new() -> Solo {
        Solo {
            role: watch::Sender::new(Role::Owner {
                since_ms: wall_ms(),
            }),
            record: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Coord for Solo {
    fn roles(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }
    async fn read(&self) -> Result<Option<SubscriptionRecord>, String> {
        Ok(self
            .record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }
    async fn write(&self, record: &SubscriptionRecord) -> Result<(), String> {
        *self.record.lock().unwrap_or_else(PoisonError::into_inner) = Some(record.clone());
        Ok(())
    }
    async fn forget(&self) {
        *self.record.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
    async fn others(&self) -> usize {
        0
    }
    async fn resign(&self) {}
}

#[async_trait]
impl Coord for cache_owner::CacheOwner {
    fn roles(&self) -> watch::Receiver<Role> {
        cache_owner::CacheOwner::roles(self)
    }
    async fn read(&self) -> Result<Option<SubscriptionRecord>, String> {
        cache_owner::CacheOwner::read(self)
            .await
            .map_err(|e| format!("zookeeper: {e}"))
    }
    async fn write(&self, record: &SubscriptionRecord) -> Result<(), String> {
        cache_owner::CacheOwner::write(self, record)
            .await
            .map_err(|e| format!("zookeeper: {e}"))
    }
    async fn forget(&self) {
        if let Err(e) = cache_owner::CacheOwner::forget(self).await {
            log::warn!("cache subscription: cannot remove its zookeeper record: {e}");
        }
    }
    async fn others(&self) -> usize {
        cache_owner::CacheOwner::others(self).await.unwrap_or(0)
    }
    async fn resign(&self) {
        cache_owner::CacheOwner::resign(self).await;
    }
}

/// What the manager works with; a reload replaces it.
pub(crate) struct Settings {
    pub cfg: SubscriptionConfig,
    pub consumer_id: String,
    pub upstream: Option<Arc<Upstream>>,
}

/// The O-Cloud through the route's upstream.
struct UpstreamApi {
    settings: Arc<Mutex<Arc<Settings>>>,
    connector: pingora::connectors::http::Connector,
}

#[async_trait]
impl O2Api for UpstreamApi {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, String> {
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(upstream) = settings.upstream.clone() else {
            return Err("no upstream to reach the O-Cloud through".into());
        };
        let body = Bytes::from(body.unwrap_or_default());
        let len = body.len();
        let build = |authority: &str| -> pingora::Result<pingora::http::RequestHeader> {
            let mut req =
                pingora::http::RequestHeader::build(method.clone(), path.as_bytes(), Some(5))?;
            req.insert_header(HOST, authority)?;
            req.insert_header(ACCEPT, "application/json")?;
            if len > 0 {
                req.insert_header(CONTENT_TYPE, "application/json")?;
            }
            req.insert_header(CONTENT_LENGTH, len)?;
            if let Some(auth) = &settings.cfg.authorization {
                req.insert_header(AUTHORIZATION, auth.clone())?;
            }
            Ok(req)
        };
        let connector = &self.connector;
        let sent = client::through_upstream(
            &upstream,
            |peer| async move {
                let req = build(&peer._address.to_string()).map_err(|e| e.to_string())?;
                let exchange = client::exchange(connector, &peer, req, body, MAX_BODY);
                match tokio::time::timeout(CALL_TIMEOUT, exchange).await {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(e)) => Err(format!("{}: {e}", peer._address)),
                    Err(_) => Err(format!(
                        "{}: no answer within {CALL_TIMEOUT:?}",
                        peer._address
                    )),
                }
            },
            |r: &Result<Answer, String>| r.as_ref().map_or(true, |a| a.status >= 500),
        )
        .await;
        match sent {
            Ok(r) => r,
            Err(why) => Err(why.describe(&upstream.name)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The manager

/// The two kinds of subscription the gateway keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Inventory,
    Alarm,
}

impl Family {
    fn id_field(self) -> &'static str {
        match self {
            Family::Inventory => "subscriptionId",
            Family::Alarm => "alarmSubscriptionId",
        }
    }
}

/// Why an attempt failed, and whether the subscription is known gone.
#[derive(Debug)]
enum Trouble {
    /// The O-Cloud says the subscription does not exist.
    Gone(String),
    /// Anything else: no answer, an error status, ZooKeeper.
    Failed(String),
}

/// Starts with this pause after a failed attempt, doubling up to `check_every`.
const FIRST_RETRY: Duration = Duration::from_millis(250);

pub(crate) struct Engine<A: O2Api, C: Coord> {
    pub api: A,
    pub coord: C,
    pub settings: Arc<Mutex<Arc<Settings>>>,
    pub tracker: Arc<Tracker>,
    /// The inventory base found for this ownership.
    base: Option<String>,
}

impl<A: O2Api, C: Coord> Engine<A, C> {
    pub(crate) fn new(
        api: A,
        coord: C,
        settings: Arc<Mutex<Arc<Settings>>>,
        tracker: Arc<Tracker>,
    ) -> Self {
        Engine {
            api,
            coord,
            settings,
            tracker,
            base: None,
        }
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn check_every(&self) -> Duration {
        let every = self.settings().cfg.check_every;
        self.tracker.check_every_ms.store(
            every.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        every
    }

    /// Runs until `stop` says so; then, if this replica owns the subscription, removes it (the
    /// last replica) or hands it over (others take part).
    pub(crate) async fn run(mut self, mut stop: mpsc::Receiver<oneshot::Sender<()>>) {
        let mut roles = self.coord.roles();
        loop {
            let role = roles.borrow_and_update().clone();
            let done = match role {
                Role::Unknown => {
                    self.tracker.set_state(SubState::Unowned);
                    self.wait(&mut roles, &mut stop).await
                }
                Role::Following { owner } => {
                    self.base = None;
                    self.follow(owner, &mut roles, &mut stop).await
                }
                Role::Owner { .. } => self.own(&mut roles, &mut stop).await,
            };
            if let Some(reply) = done {
                self.stop_now().await;
                let _ = reply.send(());
                return;
            }
        }
    }

    /// Waits for a role change, re-checking the health every quarter period; `Some` on stop.
    async fn wait(
        &self,
        roles: &mut watch::Receiver<Role>,
        stop: &mut mpsc::Receiver<oneshot::Sender<()>>,
    ) -> Option<oneshot::Sender<()>> {
        loop {
            tokio::select! {
                reply = stop.recv() => return Some(reply.unwrap_or_else(|| oneshot::channel().0)),
                r = roles.changed() => {
                    if r.is_err() {
                        // The election is gone: nothing will change any more.
                        std::future::pending::<()>().await;
                    }
                    return None;
                }
                _ = tokio::time::sleep(self.check_every() / 4) => self.tracker.refresh(),
            }
        }
    }

    /// A non-owner: reads the owner's record every period to tell a stalled owner.
    async fn follow(
        &self,
        owner: String,
        roles: &mut watch::Receiver<Role>,
        stop: &mut mpsc::Receiver<oneshot::Sender<()>>,
    ) -> Option<oneshot::Sender<()>> {
        self.tracker.set_state(SubState::Following { owner });
        loop {
            match self.coord.read().await {
                Ok(Some(r)) => self.tracker.update(|s| {
                    s.checked_ms = r.checked;
                    s.alarm_id = r.alarm_subscription_id.clone();
                    s.error = None;
                }),
                Ok(None) => self.tracker.update(|s| s.checked_ms = 0),
                Err(e) => self.tracker.update(|s| s.error = Some(e)),
            }
            let every = self.check_every();
            tokio::select! {
                reply = stop.recv() => return Some(reply.unwrap_or_else(|| oneshot::channel().0)),
                r = roles.changed() => {
                    if r.is_ok() {
                        return None;
                    }
                }
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// The owner: in place, then checked every period, again after a loss.
    async fn own(
        &mut self,
        roles: &mut watch::Receiver<Role>,
        stop: &mut mpsc::Receiver<oneshot::Sender<()>>,
    ) -> Option<oneshot::Sender<()>> {
        if !matches!(self.tracker.state(), SubState::Lost { .. }) {
            self.tracker.set_state(SubState::Subscribing);
        }
        let mut failures = 0u32;
        // Whether the record may be adopted (not after the O-Cloud said it is gone).
        let mut adopt = true;
        loop {
            let pause = match self.establish(adopt).await {
                Ok(()) => {
                    failures = 0;
                    adopt = true;
                    self.check_every()
                }
                Err(trouble) => {
                    let (why, gone) = match trouble {
                        Trouble::Gone(w) => (w, true),
                        Trouble::Failed(w) => (w, false),
                    };
                    if gone {
                        adopt = false;
                        log::warn!("cache subscription: lost: {why}; subscribing again");
                        self.tracker.set_state(SubState::Lost { why: why.clone() });
                    } else if let SubState::Lost { .. } = self.tracker.state() {
                        self.tracker.set_state(SubState::Lost { why: why.clone() });
                    }
                    self.tracker.update(|s| s.error = Some(why));
                    failures = failures.saturating_add(1);
                    retry_pause(failures, self.check_every())
                }
            };
            tokio::select! {
                reply = stop.recv() => return Some(reply.unwrap_or_else(|| oneshot::channel().0)),
                r = roles.changed() => {
                    if r.is_ok() {
                        return None;
                    }
                }
                _ = tokio::time::sleep(pause) => {}
            }
            // The health may have gone past its bound while waiting.
            self.tracker.refresh();
        }
    }

    /// Makes sure the subscriptions exist: the record's ids checked (adopted), or found by
    /// our consumer id or callback, or made; the record written. Active on success.
    async fn establish(&mut self, adopt: bool) -> Result<(), Trouble> {
        let settings = self.settings();
        let cfg = &settings.cfg;
        let base = match &self.base {
            Some(b) => b.clone(),
            None => {
                let b = self.discover_base(cfg).await;
                self.base = Some(b.clone());
                b
            }
        };
        let record = self
            .coord
            .read()
            .await
            .map_err(Trouble::Failed)?
            .unwrap_or_default();
        let inventory = format!("{base}/subscriptions");
        let known =
            (adopt && !record.subscription_id.is_empty() && record.callback == cfg.callback)
                .then_some(record.subscription_id.as_str());
        let (id, made) = self
            .ensure(Family::Inventory, &inventory, known, &settings)
            .await?;
        let alarm_id = if cfg.alarms {
            let known = adopt
                .then_some(record.alarm_subscription_id.as_deref())
                .flatten();
            Some(
                self.ensure(Family::Alarm, ALARM_SUBSCRIPTIONS, known, &settings)
                    .await?
                    .0,
            )
        } else {
            None
        };
        let now = wall_ms();
        let created = if made || record.subscription_id != id {
            now
        } else {
            record.created
        };
        let new = SubscriptionRecord {
            subscription_id: id.clone(),
            callback: cfg.callback.clone(),
            created,
            checked: now,
            alarm_subscription_id: alarm_id.clone(),
        };
        self.coord.write(&new).await.map_err(Trouble::Failed)?;
        let since = match self.tracker.state() {
            SubState::Active { id: old, since_ms } if old == id => since_ms,
            _ => now,
        };
        self.tracker.update(|s| {
            s.checked_ms = now;
            s.alarm_id = alarm_id;
        });
        self.tracker.set_state(SubState::Active {
            id,
            since_ms: since,
        });
        Ok(())
    }

    /// One family's subscription: `known` checked, else searched, else made. Returns its id
    /// and whether it was made now.
    async fn ensure(
        &self,
        family: Family,
        collection: &str,
        known: Option<&str>,
        settings: &Settings,
    ) -> Result<(String, bool), Trouble> {
        if let Some(id) = known {
            let a = self
                .call(Method::GET, &format!("{collection}/{id}"), None)
                .await?;
            match a.status {
                200..=299 => return Ok((id.to_owned(), false)),
                404 => {
                    return Err(Trouble::Gone(format!(
                        "the O-Cloud no longer knows {} {id}",
                        family.id_field()
                    )))
                }
                s => return Err(Trouble::Failed(answer_error("checking", collection, s, &a))),
            }
        }
        if let Some(id) = self.search(family, collection, settings).await? {
            log::info!("cache subscription: adopted {} {id}", family.id_field());
            return Ok((id, false));
        }
        let mut body = json!({
            "callback": settings.cfg.callback,
            "consumerSubscriptionId": settings.consumer_id,
        });
        if let (Family::Inventory, Some(filter)) = (family, &settings.cfg.filter) {
            body["filter"] = filter.clone();
        }
        let a = self
            .call(
                Method::POST,
                collection,
                Some(body.to_string().into_bytes()),
            )
            .await?;
        match a.status {
            200..=299 => {
                let id = serde_json::from_slice::<Value>(&a.body)
                    .ok()
                    .and_then(|v| v[family.id_field()].as_str().map(str::to_owned));
                match id {
                    Some(id) => {
                        log::info!("cache subscription: subscribed, {} {id}", family.id_field());
                        Ok((id, true))
                    }
                    // Made, but the answer does not say its id: the list does.
                    None => match self.search(family, collection, settings).await? {
                        Some(id) => Ok((id, true)),
                        None => Err(Trouble::Failed(format!(
                            "POST {collection} answered {} without a {}",
                            a.status,
                            family.id_field()
                        ))),
                    },
                }
            }
            s => Err(Trouble::Failed(answer_error(
                "subscribing at",
                collection,
                s,
                &a,
            ))),
        }
    }

    /// Our subscription in the O-Cloud's list, by consumer id or callback.
    async fn search(
        &self,
        family: Family,
        collection: &str,
        settings: &Settings,
    ) -> Result<Option<String>, Trouble> {
        let a = self.call(Method::GET, collection, None).await?;
        if !(200..=299).contains(&a.status) {
            return Err(Trouble::Failed(answer_error(
                "listing", collection, a.status, &a,
            )));
        }
        let v: Value = serde_json::from_slice(&a.body)
            .map_err(|e| Trouble::Failed(format!("GET {collection}: not a JSON list: {e}")))?;
        // A bare array (oran, pti) or an object holding one (netweave's `{subscriptions, total}`).
        let items = match &v {
            Value::Array(items) => items.as_slice(),
            Value::Object(m) => m
                .values()
                .find_map(|x| x.as_array().map(Vec::as_slice))
                .unwrap_or(&[]),
            _ => &[],
        };
        Ok(items.iter().find_map(|s| {
            let ours = s["consumerSubscriptionId"].as_str() == Some(&settings.consumer_id)
                || s["callback"].as_str() == Some(&settings.cfg.callback);
            ours.then(|| s[family.id_field()].as_str().map(str::to_owned))
                .flatten()
        }))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, Trouble> {
        let m = method.clone();
        self.api
            .call(method, path, body)
            .await
            .map_err(|e| Trouble::Failed(format!("{m} {path}: {e}")))
    }

    /// `base:`, else the highest version the O-Cloud lists, else the default.
    async fn discover_base(&self, cfg: &SubscriptionConfig) -> String {
        if let Some(b) = &cfg.base {
            return b.clone();
        }
        let Ok(a) = self.api.call(Method::GET, VERSIONS, None).await else {
            return DEFAULT_BASE.into();
        };
        if a.status != 200 {
            return DEFAULT_BASE.into();
        }
        let v: Value = serde_json::from_slice(&a.body).unwrap_or_default();
        let major = v["apiVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["version"].as_str())
            .filter_map(|s| {
                s.trim_start_matches('v')
                    .split('.')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .max();
        match major {
            Some(m) if m > 0 => format!("/o2ims-infrastructureInventory/v{m}"),
            _ => DEFAULT_BASE.into(),
        }
    }

    /// On stop: the owner removes the subscription when no other replica takes part (the last
    /// one), else leaves it to the next owner; then it leaves the election.
    async fn stop_now(&mut self) {
        let owner = matches!(*self.coord.roles().borrow(), Role::Owner { .. });
        if owner && self.coord.others().await == 0 {
            let record = self.coord.read().await.ok().flatten();
            if let Some(r) = record {
                let base = match &self.base {
                    Some(b) => b.clone(),
                    None => self.discover_base(&self.settings().cfg).await,
                };
                let mut targets = vec![format!("{base}/subscriptions/{}", r.subscription_id)];
                if let Some(a) = &r.alarm_subscription_id {
                    targets.push(format!("{ALARM_SUBSCRIPTIONS}/{a}"));
                }
                for t in targets {
                    match self.api.call(Method::DELETE, &t, None).await {
                        Ok(a) if a.status < 300 || a.status == 404 => {
                            log::info!("cache subscription: removed {t}");
                        }
                        Ok(a) => log::warn!(
                            "cache subscription: DELETE {t} answered {}: it stays at the O-Cloud",
                            a.status
                        ),
                        Err(e) => log::warn!(
                            "cache subscription: DELETE {t}: {e}: it stays at the O-Cloud"
                        ),
                    }
                }
                self.coord.forget().await;
            }
        } else if owner {
            log::info!("cache subscription: stopping; another replica takes the subscription over");
        }
        self.coord.resign().await;
        self.tracker.set_state(SubState::Unowned);
    }
}

fn retry_pause(failures: u32, check_every: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    FIRST_RETRY
        .saturating_mul(1 << shift)
        .min(check_every.max(FIRST_RETRY))
}

fn answer_error(doing: &str, path: &str, status: u16, a: &Answer) -> String {
    let excerpt = String::from_utf8_lossy(&a.body[..a.body.len().min(200)]).into_owned();
    format!("{doing} {path}: answered {status}: {}", excerpt.trim())
}

// ---------------------------------------------------------------------------------------------
// One manager per store

/// A store's subscription, in its `Shared`: the manager once started.
#[derive(Default)]
pub struct SubscriptionSlot {
    manager: OnceLock<Manager>,
}

struct Manager {
    settings: Arc<Mutex<Arc<Settings>>>,
    tracker: Arc<Tracker>,
    /// Asks the manager to stop; it answers when done.
    stop: mpsc::Sender<oneshot::Sender<()>>,
}

/// What a `Cache` built with the section hands its store's manager: prepared at config build,
/// applied from the serving config's tick, so that neither `zkgate check` nor a reload that
/// fails ever subscribes.
pub struct Plan {
    settings: Arc<Settings>,
    /// The ensemble and root with `replicas: zookeeper`; alone otherwise.
    zookeeper: Option<(Ensemble, Box<str>)>,
}

/// Prepares the store's subscription from the route's cache config: the upstream its calls go
/// through (`upstream:`, else the route's), the consumer id, the election.
pub fn plan(
    store: &str,
    cfg: &super::super::config::CacheConfig,
    cx: &crate::plugin::PluginCx<'_>,
    errors: &mut ConfigErrors,
) -> Option<Plan> {
    let sub = cfg.subscription.as_ref()?;
    let at = cx.at.key("o2ims").key("subscription");
    let upstream = match (&sub.upstream, cx.upstream) {
        (Some(name), _) => match cx.upstream(name) {
            Some(u) => Some(u),
            None => {
                errors.push(at.key("upstream"), format!("no upstream named `{name}`"));
                return None;
            }
        },
        (None, Some(name)) => cx.upstream(name),
        (None, None) => None,
    };
    if upstream.is_none() && sub.mode == Mode::Subscribe {
        errors.push(
            at.key("upstream"),
            "the route has no upstream to reach the O-Cloud through: name one here",
        );
        return None;
    }
    let zookeeper = match (cfg.replicas, cx.zookeeper) {
        (super::super::config::Replicas::ZooKeeper { .. }, Some(e)) => {
            Some((e.clone(), cx.zk_root.into()))
        }
        _ => None,
    };
    if zookeeper.is_none() && sub.mode == Mode::Subscribe {
        log::warn!(
            "{at}: mode: subscribe with `replicas: off`: each replica of this config keeps a \
             subscription of its own (set `replicas: {{ mode: zookeeper }}` for one owner)"
        );
    }
    Some(Plan {
        settings: Arc::new(Settings {
            consumer_id: sub
                .consumer_subscription_id
                .clone()
                .unwrap_or_else(|| default_consumer_id(store)),
            cfg: sub.clone(),
            upstream,
        }),
        zookeeper,
    })
}

impl SubscriptionSlot {
    /// Starts the manager of `store` with `plan` the first time; later (every tick of the
    /// serving config, a reload's new plan among them) hands it the plan's settings.
    pub fn serve(&self, store: &str, channel: &'static ChannelHealth, plan: &Plan) {
        if let Some(m) = self.manager.get() {
            let mut current = m.settings.lock().unwrap_or_else(PoisonError::into_inner);
            if !Arc::ptr_eq(&current, &plan.settings) {
                *current = plan.settings.clone();
                m.tracker.check_every_ms.store(
                    plan.settings.cfg.check_every.as_millis() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            return;
        }
        static STARTING: Mutex<()> = Mutex::new(());
        let _one = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
        if self.manager.get().is_some() {
            return;
        }
        let cfg = &plan.settings.cfg;
        let initial = match cfg.mode {
            Mode::Off => SubState::Off,
            Mode::Subscribe => SubState::Unowned,
        };
        let tracker = Arc::new(Tracker::new(store, channel, initial));
        tracker.check_every_ms.store(
            cfg.check_every.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let settings = Arc::new(Mutex::new(plan.settings.clone()));
        let (stop, stop_rx) = mpsc::channel(1);
        if cfg.mode == Mode::Subscribe {
            let zk = plan.zookeeper.clone();
            let (store_name, s, t) = (store.to_owned(), settings.clone(), tracker.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let spawned = runtime.and_then(|rt| {
                std::thread::Builder::new()
                    .name(format!("cache-sub-{store}"))
                    .spawn(move || rt.block_on(manage(store_name, zk, s, t, stop_rx)))
            });
            if let Err(e) = spawned {
                log::error!("cache store {store}: cannot start the subscription manager: {e}");
                return;
            }
        }
        let _ = self.manager.set(Manager {
            settings,
            tracker,
            stop,
        });
    }

    /// Removes (or hands over) the subscription, within 2 s.
    pub async fn shutdown(&self) {
        let Some(m) = self.manager.get() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        if m.stop.try_send(tx).is_err() {
            // Stopped already (another route of the store asked first), or never ran.
            return;
        }
        if tokio::time::timeout(SHUTDOWN_WITHIN, rx).await.is_err() {
            log::warn!(
                "cache subscription: not removed within {SHUTDOWN_WITHIN:?}; the next owner adopts it"
            );
        }
    }

    /// `GET /cache`'s view, if the store has a subscription section.
    pub fn view(&self) -> Option<Value> {
        self.manager.get().map(|m| m.tracker.view())
    }
}

/// The manager's thread: the election (if any) and the engine.
async fn manage(
    store: String,
    zk: Option<(Ensemble, Box<str>)>,
    settings: Arc<Mutex<Arc<Settings>>>,
    tracker: Arc<Tracker>,
    stop: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let api = UpstreamApi {
        settings: settings.clone(),
        connector: pingora::connectors::http::Connector::new(None),
    };
    match zk {
        Some((ensemble, root)) => {
            let coord = cache_owner::start(ensemble, &root, &store, replica_name());
            Engine::new(api, coord, settings, tracker).run(stop).await;
        }
        None => {
            Engine::new(api, Solo::new(), settings, tracker)
                .run(stop)
                .await
        }
    }
}

/// This replica in the `owner` node: host and process.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{host}-{}", std::process::id())
}
