//! The `alert_webhook` plugin: receives Alertmanager's webhook at `<route prefix>/<destination>`,
//! renders it with the destination's template (whole, per alert or in batches) and delivers the
//! messages. A webhook is acknowledged (2xx) only once every message was taken by the
//! destination or durably spooled for it; otherwise Alertmanager is told to send it again.
//! Delivery is therefore at least once.
//!
//! While a destination has messages waiting in its spool, new ones queue behind them, so that a
//! `resolved` never overtakes the `firing` it ends.

pub mod config;
pub mod deliver;
pub mod exercise;
mod metrics;
pub mod payload;
pub mod spool;
pub mod template;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::Method;
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::json;

use self::deliver::{Backoff, Outcome, Sender};
use self::metrics::DestinationMetrics;
use self::payload::{Limits, Payload};
use self::spool::{LazySpool, Spool, SpoolError};
use self::template::{DestinationValues, PayloadValues, RenderContext, Template};
use super::{HttpPlugin, RequestInfo};
use crate::clock::now_ms;

/// How long Alertmanager is asked to wait when a spool is full.
const FULL_RETRY_AFTER_SECS: u64 = 30;
/// A body larger than this is parsed and rendered on Tokio's blocking pool rather than on the
/// worker thread: about 40 alerts, a quarter of a millisecond of work, past which other
/// connections on the worker would wait on it (1000 alerts take about 8 ms).
const OFFLOAD_BODY_BYTES: usize = 32 * 1024;
/// The answer to a webhook whose messages did not render.
const RENDER_FAILED_STATUS: u16 = 422;

/// Who may post webhooks.
pub enum Auth {
    None,
    /// The exact `Authorization` value expected (`Basic ...` or `Bearer ...`).
    Header(Vec<u8>),
}

/// How a payload's alerts are cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    None,
    PerAlert,
    Batch(usize),
}

impl Split {
    /// The alert ranges of the messages for `n` alerts.
    fn ranges(self, n: usize) -> Vec<std::ops::Range<usize>> {
        let size = match self {
            Split::None => n.max(1),
            Split::PerAlert => 1,
            Split::Batch(size) => size.max(1),
        };
        (0..n).step_by(size).map(|i| i..(i + size).min(n)).collect()
    }
}

pub struct AlertWebhook {
    pub route: Arc<str>,
    /// The route's path prefix, without a trailing `/`.
    prefix: String,
    auth: Auth,
    max_body: u64,
    limits: Limits,
    destinations: Vec<Arc<Destination>>,
    connector: Arc<Connector>,
}

/// One named destination: how its messages are made and where they go.
pub struct Destination {
    pub name: Arc<str>,
    sender: Sender,
    template: Template,
    /// Each message must be valid JSON.
    json: bool,
    /// Its name and `vars` as templates see them.
    values: DestinationValues,
    split: Split,
    parallel: usize,
    retry: Backoff,
    spool: Option<LazySpool>,
    /// No replay before this ([`now_ms`] time): the last one gave up.
    replay_after_ms: AtomicU64,
    metrics: DestinationMetrics,
}

/// One rendered message.
struct Message {
    alerts: usize,
    body: Bytes,
}

impl Message {
    /// The spool's record: the alert count (4 bytes, little-endian), then the body.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.body.len());
        out.extend_from_slice(&(self.alerts as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(record: Vec<u8>) -> Option<Message> {
        let count = u32::from_le_bytes(record.get(..4)?.try_into().ok()?);
        Some(Message {
            alerts: count as usize,
            body: Bytes::from(record).slice(4..),
        })
    }
}

/// What became of the messages of one webhook.
#[derive(Default)]
struct Report {
    delivered: usize,
    spooled: usize,
    /// Refused by the destination: `(status, excerpt)` of the first.
    rejected: Option<(u16, String)>,
    /// Neither delivered nor spooled: why, for the first.
    failed: Option<String>,
    full: bool,
}

/// What the plugin learned about one request, for the log.
#[derive(Default)]
pub struct WebhookState {
    destination: Option<Arc<str>>,
    alerts: usize,
    /// Why the webhook was not acknowledged, if it was not.
    failure: Option<String>,
}

impl AlertWebhook {
    pub(crate) fn new(
        route: Arc<str>,
        prefix: String,
        auth: Auth,
        max_body: u64,
        max_alerts: usize,
        destinations: Vec<Arc<Destination>>,
        connector: Connector,
    ) -> AlertWebhook {
        for d in &destinations {
            d.metrics.bind(&route, &d.name);
        }
        AlertWebhook {
            route,
            prefix,
            auth,
            max_body,
            limits: Limits { max_alerts },
            destinations,
            connector: Arc::new(connector),
        }
    }

    /// What `dry_run` shows: the requests `body` would make to `destination`, unsent.
    pub fn render_requests(
        &self,
        destination: &str,
        body: &[u8],
    ) -> Result<Vec<serde_json::Value>, String> {
        let dest = self
            .destinations
            .iter()
            .find(|d| *d.name == *destination)
            .ok_or_else(|| {
                let names: Vec<&str> = self.destinations.iter().map(|d| &*d.name).collect();
                format!(
                    "no destination `{destination}` (there are {})",
                    names.join(", ")
                )
            })?;
        let payload = payload::parse(body, &self.limits).map_err(|e| e.to_string())?;
        let messages = dest.render(&payload)?;
        Ok(messages.iter().map(|m| dest.describe(m)).collect())
    }

    fn destination(&self, path: &str) -> Option<&Arc<Destination>> {
        let name = path.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?;
        self.destinations.iter().find(|d| *d.name == *name)
    }

    fn authorized(&self, session: &Session) -> bool {
        match &self.auth {
            Auth::None => true,
            Auth::Header(expected) => session
                .req_header()
                .headers
                .get(AUTHORIZATION)
                .is_some_and(|v| same_secret(v.as_bytes(), expected)),
        }
    }

    /// The body, read up to the limit: `None` when it is over.
    async fn read_body(&self, session: &mut Session) -> pingora::Result<Option<Bytes>> {
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            if (body.len() + chunk.len()) as u64 > self.max_body {
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body.freeze()))
    }
}

#[async_trait]
impl HttpPlugin for AlertWebhook {
    type State = WebhookState;

    async fn request_filter(
        &self,
        session: &mut Session,
        request: &RequestInfo<'_>,
        state: &mut WebhookState,
    ) -> pingora::Result<bool> {
        let Some(dest) = self.destination(request.path(session)) else {
            reply(
                session,
                404,
                &json!({"status": "error", "error": "unknown destination"}),
            )
            .await?;
            return Ok(true);
        };
        state.destination = Some(dest.name.clone());
        if session.req_header().method != Method::POST {
            let mut head = json_head(405)?;
            head.insert_header(http::header::ALLOW, "POST")?;
            return finish(
                session,
                head,
                &json!({"status": "error", "error": "use POST"}),
            )
            .await;
        }
        if !self.authorized(session) {
            let scheme = match &self.auth {
                Auth::Header(h) if h.starts_with(b"Basic") => "Basic realm=\"zkgate\"",
                _ => "Bearer",
            };
            let mut head = json_head(401)?;
            head.insert_header(WWW_AUTHENTICATE, scheme)?;
            return finish(
                session,
                head,
                &json!({"status": "error", "error": "unauthorized"}),
            )
            .await;
        }
        let declared = session
            .req_header()
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let body = match declared {
            Some(n) if n > self.max_body => None,
            _ => self.read_body(session).await?,
        };
        let Some(body) = body else {
            // The rest of the body is left unread: the connection cannot carry another request.
            session.set_keepalive(None);
            let error = format!("the body is larger than {} bytes", self.max_body);
            state.failure = Some(error.clone());
            reply(session, 413, &json!({"status": "error", "error": error})).await?;
            return Ok(true);
        };
        let parsed = if body.len() > OFFLOAD_BODY_BYTES {
            let (offloaded, limits) = (dest.clone(), self.limits);
            tokio::task::spawn_blocking(move || parse_and_render(&offloaded, &body, &limits))
                .await
                // parse_and_render catches its own panics: a join error is a cancelled task
                // or a panic outside it, answered and counted the same way.
                .unwrap_or_else(|e| Err(Unprocessed::Panic(e.to_string())))
        } else {
            parse_and_render(dest, &body, &self.limits)
        };
        let (payload, rendered) = match parsed {
            Ok(done) => done,
            Err(Unprocessed::Payload(e)) => {
                let status = match e {
                    payload::PayloadError::TooManyAlerts { .. } => 413,
                    _ => 400,
                };
                state.failure = Some(e.to_string());
                reply(
                    session,
                    status,
                    &json!({"status": "error", "error": e.to_string()}),
                )
                .await?;
                return Ok(true);
            }
            Err(Unprocessed::Panic(why)) => {
                dest.metrics.render_failed("panic");
                log::error!(
                    "route {}: destination {}: processing a webhook panicked: {why}",
                    self.route,
                    dest.name
                );
                let error = format!("internal error processing the webhook: {why}");
                state.failure = Some(error.clone());
                reply(
                    session,
                    500,
                    &json!({"status": "error", "destination": &*dest.name, "error": error}),
                )
                .await?;
                return Ok(true);
            }
        };
        state.alerts = payload.alerts.len();
        let messages = match rendered {
            Ok(m) => m,
            Err(e) => {
                // The same payload renders the same way every time: a 4xx, which Alertmanager
                // does not retry, rather than a 5xx it would send again until it gives up.
                state.failure = Some(e.clone());
                reply(
                    session,
                    RENDER_FAILED_STATUS,
                    &json!({"status": "error", "destination": &*dest.name, "error": e}),
                )
                .await?;
                return Ok(true);
            }
        };
        if dry_run(session) {
            let shown: Vec<_> = messages.iter().map(|m| dest.describe(m)).collect();
            reply(
                session,
                200,
                &json!({"status": "dry_run", "destination": &*dest.name, "requests": shown}),
            )
            .await?;
            return Ok(true);
        }
        let report = dest.deliver(&self.connector, messages).await;
        let (status, body) = report.answer(&dest.name, payload.alerts.len());
        if status >= 300 {
            state.failure = body["error"].as_str().map(str::to_owned);
        }
        if report.full {
            let mut head = json_head(status)?;
            head.insert_header(RETRY_AFTER, FULL_RETRY_AFTER_SECS)?;
            return finish(session, head, &body).await;
        }
        reply(session, status, &body).await?;
        Ok(true)
    }

    fn logging(
        &self,
        _session: &Session,
        _request: &RequestInfo<'_>,
        _error: Option<&pingora::Error>,
        state: &mut WebhookState,
    ) {
        if let (Some(dest), Some(why)) = (&state.destination, &state.failure) {
            log::warn!(
                "route {}: webhook for destination {dest} ({} alerts) not acknowledged: {why}",
                self.route,
                state.alerts
            );
        }
    }

    fn tick(&self) {
        for d in &self.destinations {
            d.report_spool();
            if d.replay_due() {
                let (d, connector) = (d.clone(), self.connector.clone());
                tokio::spawn(async move { d.replay(&connector).await });
            }
        }
    }
}

/// A webhook's payload and its messages for one destination, or why they could not be made.
type Parsed = Result<(Payload, Result<Vec<Message>, String>), Unprocessed>;

/// Why a webhook's body gave no payload to render.
enum Unprocessed {
    /// Not an acceptable payload: the sender's fault.
    Payload(payload::PayloadError),
    /// A panic while parsing or rendering, caught: a bug, reported as a 500.
    Panic(String),
}

/// Parses a webhook's body and renders its messages for `dest`, counting the alerts received.
/// A panic anywhere in it is caught: it fails this webhook, not the thread that runs it.
fn parse_and_render(dest: &Destination, body: &[u8], limits: &Limits) -> Parsed {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let payload = payload::parse(body, limits).map_err(Unprocessed::Payload)?;
        dest.metrics.received(payload.alerts.len());
        let rendered = dest.render(&payload);
        Ok((payload, rendered))
    }))
    .unwrap_or_else(|p| Err(Unprocessed::Panic(template::panic_message(p.as_ref()))))
}

impl Destination {
    /// The messages for `payload`, rendered: all of them or an error naming what failed.
    fn render(&self, payload: &Payload) -> Result<Vec<Message>, String> {
        let started = Instant::now();
        let values = PayloadValues::new(payload);
        let mut failure = None;
        let messages = self
            .split
            .ranges(payload.alerts.len())
            .into_iter()
            .map(|alerts| {
                let count = alerts.len();
                let ctx = RenderContext {
                    payload: &values,
                    alerts,
                    destination: &self.values,
                };
                let text = if self.json {
                    self.template.render_json(&ctx)
                } else {
                    self.template.render(&ctx)
                };
                text.map(|t| Message {
                    alerts: count,
                    body: Bytes::from(t),
                })
                .map_err(|e| {
                    failure = Some(e.kind());
                    format!("template {}: {e}", self.template.name())
                })
            })
            .collect::<Result<Vec<_>, _>>();
        self.metrics.rendered(started.elapsed());
        if let Some(kind) = failure {
            self.metrics.render_failed(kind);
            self.metrics.failed(payload.alerts.len());
        }
        messages
    }

    /// A message as the dry run shows it: the request that would be sent.
    fn describe(&self, m: &Message) -> serde_json::Value {
        let body = match serde_json::from_slice::<serde_json::Value>(&m.body) {
            Ok(v) if self.json => v,
            _ => serde_json::Value::String(String::from_utf8_lossy(&m.body).into_owned()),
        };
        json!({
            "method": self.sender.method.as_str(),
            "target": self.sender.target.describe(),
            "alerts": m.alerts,
            "body": body,
        })
    }

    /// Sends `messages`, `parallel` at a time: each is delivered, refused, spooled, or (without
    /// a spool) retried by the policy and then given up on.
    async fn deliver(&self, connector: &Connector, messages: Vec<Message>) -> Report {
        let outcomes: Vec<(usize, Delivery)> = stream::iter(messages)
            .map(|m| async move { (m.alerts, self.deliver_one(connector, m).await) })
            .buffer_unordered(self.parallel)
            .collect()
            .await;
        let mut report = Report::default();
        for (alerts, d) in outcomes {
            match d {
                Delivery::Delivered => {
                    report.delivered += 1;
                    self.metrics.delivered(alerts);
                }
                Delivery::Spooled => {
                    report.spooled += 1;
                    self.metrics.spooled(alerts);
                }
                Delivery::Rejected(status, excerpt) => {
                    self.metrics.failed(alerts);
                    report.rejected.get_or_insert((status, excerpt));
                }
                Delivery::Failed(why) => {
                    self.metrics.failed(alerts);
                    report.failed.get_or_insert(why);
                }
                Delivery::Full(why) => {
                    self.metrics.failed(alerts);
                    report.full = true;
                    report.failed.get_or_insert(why);
                }
            }
        }
        report
    }

    async fn deliver_one(&self, connector: &Connector, m: Message) -> Delivery {
        let Some(spool) = &self.spool else {
            return match self.send_with_retries(connector, &m.body).await {
                Ok(()) => Delivery::Delivered,
                Err(Outcome::Rejected { status, excerpt }) => Delivery::Rejected(status, excerpt),
                Err(Outcome::Failed(why)) => Delivery::Failed(why),
                Err(Outcome::Delivered(_)) => Delivery::Delivered,
            };
        };
        let spool = match spool.get() {
            Ok(s) => s,
            Err(e) => return Delivery::Failed(format!("spool: {e}")),
        };
        // Behind what already waits, so that order holds; otherwise one try, and the spool.
        if spool.depth().0 == 0 {
            match self.try_once(connector, &m.body).await {
                Outcome::Delivered(_) => return Delivery::Delivered,
                Outcome::Rejected { status, excerpt } => {
                    return Delivery::Rejected(status, excerpt)
                }
                Outcome::Failed(why) => {
                    log::info!("destination {}: {why}; spooling the message", self.name);
                }
            }
        }
        let spool = spool.clone();
        let record = m.encode();
        match tokio::task::spawn_blocking(move || spool.push(&record)).await {
            Ok(Ok(_)) => Delivery::Spooled,
            Ok(Err(e @ SpoolError::Full { .. })) => Delivery::Full(e.to_string()),
            Ok(Err(e)) => Delivery::Failed(e.to_string()),
            Err(e) => Delivery::Failed(format!("spool task: {e}")),
        }
    }

    async fn try_once(&self, connector: &Connector, body: &Bytes) -> Outcome {
        let started = Instant::now();
        let outcome = self.sender.send(connector, body).await;
        self.metrics.tried(started.elapsed(), &outcome);
        outcome
    }

    /// Tries by the retry policy: `Ok` once delivered, else the last try's outcome.
    async fn send_with_retries(&self, connector: &Connector, body: &Bytes) -> Result<(), Outcome> {
        let mut n = 0;
        loop {
            n += 1;
            match self.try_once(connector, body).await {
                Outcome::Delivered(_) => return Ok(()),
                failed @ Outcome::Failed(_) if n < self.retry.attempts => {
                    log::info!("destination {}: {failed:?}; trying again", self.name);
                    tokio::time::sleep(self.retry.jittered(n)).await;
                }
                other => return Err(other),
            }
        }
    }

    /// Whether the spool holds messages (or is due a scan for those another process left), the
    /// pause after a failed replay is over, and no replay runs (in this destination, in the one
    /// of the config before a reload, which shares the spool, or in another process): if so,
    /// the caller owns the replay.
    fn replay_due(&self) -> bool {
        let Some(lazy) = &self.spool else {
            return false;
        };
        let spool = match lazy.get() {
            Ok(s) => s,
            Err(e) => {
                self.pause_replay(log::Level::Error, format_args!("spool: {e}"));
                return false;
            }
        };
        (spool.depth().0 > 0 || spool.rescan_due())
            && now_ms() >= self.replay_after_ms.load(Ordering::Relaxed)
            && spool.claim_replay()
    }

    /// No replay for the longest backoff, and why in the log.
    fn pause_replay(&self, level: log::Level, why: impl std::fmt::Display) {
        log::log!(
            level,
            "destination {}: replay paused for {:?}: {why}",
            self.name,
            self.retry.max
        );
        self.replay_after_ms.store(
            now_ms().saturating_add(u64::try_from(self.retry.max.as_millis()).unwrap_or(u64::MAX)),
            Ordering::Relaxed,
        );
    }

    /// Sends what waits in the spool, oldest first, one at a time so that order holds, each by
    /// the retry policy. A message the destination refuses is set aside; when the policy gives
    /// up, the replay pauses for the longest backoff and the message stays first in line.
    async fn replay(&self, connector: &Connector) {
        let Some(spool) = self.spool.as_ref().and_then(LazySpool::opened).cloned() else {
            return;
        };
        if spool.rescan_due() {
            let scan = spool.clone();
            match tokio::task::spawn_blocking(move || scan.adopt()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => log::info!(
                    "destination {}: took {n} spooled messages another process left",
                    self.name
                ),
                Ok(Err(e)) => log::error!("destination {}: {e}", self.name),
                Err(e) => log::error!("destination {}: spool task: {e}", self.name),
            }
        }
        while let Some(&id) = spool.oldest(1).first() {
            let read = {
                let spool = spool.clone();
                tokio::task::spawn_blocking(move || spool.read(id)).await
            };
            let message = match read {
                Ok(Ok(record)) => Message::decode(record),
                // Delivered or set aside by another process sharing the spool; forgotten.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
                // Moved aside to `.bad`, and forgotten.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    log::error!("destination {}: {e}", self.name);
                    continue;
                }
                Ok(Err(e)) => {
                    self.pause_replay(log::Level::Error, e);
                    break;
                }
                Err(e) => {
                    log::error!("destination {}: spool task: {e}", self.name);
                    break;
                }
            };
            let Some(message) = message else {
                log::error!(
                    "destination {}: spooled message {id} is too short",
                    self.name
                );
                set_aside(&spool, id, "rejected").await;
                continue;
            };
            match self.send_with_retries(connector, &message.body).await {
                Ok(()) | Err(Outcome::Delivered(_)) => {
                    self.metrics.replayed(message.alerts);
                    let spool = spool.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.remove(id)).await
                    {
                        // Until it can be deleted, every replay would send it again.
                        self.pause_replay(log::Level::Error, e);
                        break;
                    }
                }
                Err(Outcome::Rejected { status, excerpt }) => {
                    log::error!(
                        "destination {}: refused spooled message {id} with {status}: {excerpt}; set aside",
                        self.name
                    );
                    self.metrics.failed(message.alerts);
                    set_aside(&spool, id, "rejected").await;
                }
                Err(Outcome::Failed(why)) => {
                    self.pause_replay(log::Level::Warn, why);
                    break;
                }
            }
        }
        self.report_spool();
        spool.release_replay();
    }

    fn report_spool(&self) {
        if let Some(spool) = self.spool.as_ref().and_then(LazySpool::opened) {
            let (count, bytes) = spool.depth();
            self.metrics.spool_depth(count, bytes);
        }
    }
}

async fn set_aside(spool: &Arc<Spool>, id: u64, why: &'static str) {
    let spool = spool.clone();
    let _ = tokio::task::spawn_blocking(move || spool.set_aside(id, why)).await;
}

enum Delivery {
    Delivered,
    Spooled,
    Rejected(u16, String),
    Failed(String),
    /// The spool is full: Alertmanager must try again later.
    Full(String),
}

impl Report {
    /// The status and body of the webhook's answer. 2xx: all delivered or spooled. 503: a spool
    /// is full; 502: a message could be neither delivered nor spooled (Alertmanager retries both).
    /// 422: the destination refused a message, which sending again would not change.
    fn answer(&self, destination: &str, alerts: usize) -> (u16, serde_json::Value) {
        let counts = json!({"delivered": self.delivered, "spooled": self.spooled});
        let (status, error) = match (&self.failed, &self.rejected) {
            (Some(why), _) if self.full => (503, why.clone()),
            (Some(why), _) => (502, why.clone()),
            (None, Some((status, excerpt))) => (
                422,
                format!("the destination refused a message with {status}: {excerpt}"),
            ),
            (None, None) => {
                return (
                    200,
                    json!({"status": "success", "destination": destination, "alerts": alerts, "messages": counts}),
                )
            }
        };
        (
            status,
            json!({"status": "error", "destination": destination, "alerts": alerts, "messages": counts, "error": error}),
        )
    }
}

impl deliver::Target {
    fn describe(&self) -> String {
        match self {
            deliver::Target::Upstream { upstream, path, .. } => {
                format!("upstream {}{path}", upstream.name)
            }
            // A webhook URL's path and query are its token (Slack's, Teams', Google Chat's):
            // only the host is shown, the rest as `/config` shows a secret.
            deliver::Target::Url {
                authority, path, ..
            } => format!("{authority}/{:?}", crate::section::Secret(path.clone())),
        }
    }
}

/// Equality in a time that does not depend on where the inputs differ, so that a guesser
/// learns nothing from how fast a wrong credential is refused.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn dry_run(session: &Session) -> bool {
    session.req_header().uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "dry_run=true" || kv == "dry_run=1")
    })
}

/// A JSON answer's head; [`finish`] sets its length.
fn json_head(status: u16) -> pingora::Result<ResponseHeader> {
    let mut head = ResponseHeader::build(status, Some(4))?;
    head.insert_header(CONTENT_TYPE, "application/json")?;
    Ok(head)
}

async fn reply(
    session: &mut Session,
    status: u16,
    body: &serde_json::Value,
) -> pingora::Result<()> {
    finish(session, json_head(status)?, body).await.map(|_| ())
}

/// Writes `head` with `body` as JSON; `Ok(true)`, the request answered.
async fn finish(
    session: &mut Session,
    mut head: ResponseHeader,
    body: &serde_json::Value,
) -> pingora::Result<bool> {
    let mut text = body.to_string();
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
    fn splits_cover_every_alert_once() {
        let whole = 0..5;
        assert_eq!(Split::None.ranges(5), vec![whole]);
        assert_eq!(Split::PerAlert.ranges(3), [0..1, 1..2, 2..3]);
        assert_eq!(Split::Batch(2).ranges(5), [0..2, 2..4, 4..5]);
        let whole = 0..3;
        assert_eq!(Split::Batch(10).ranges(3), vec![whole]);
        assert!(Split::PerAlert.ranges(0).is_empty());
    }

    #[test]
    fn a_spool_record_round_trips() {
        let m = Message {
            alerts: 7,
            body: Bytes::from_static(b"{\"x\":1}"),
        };
        let back = Message::decode(m.encode()).unwrap();
        assert_eq!((back.alerts, &back.body[..]), (7, &b"{\"x\":1}"[..]));
        assert!(Message::decode(vec![1, 2]).is_none());
    }

    #[test]
    fn the_answer_tells_alertmanager_whether_to_send_again() {
        let ok = Report {
            delivered: 2,
            spooled: 1,
            ..Default::default()
        };
        assert_eq!(ok.answer("d", 3).0, 200);
        let full = Report {
            full: true,
            failed: Some("full".into()),
            ..Default::default()
        };
        assert_eq!(full.answer("d", 1).0, 503);
        let failed = Report {
            failed: Some("down".into()),
            rejected: Some((400, "bad".into())),
            ..Default::default()
        };
        assert_eq!(failed.answer("d", 1).0, 502, "a retry may still deliver it");
        let refused = Report {
            rejected: Some((400, "bad".into())),
            ..Default::default()
        };
        assert_eq!(refused.answer("d", 1).0, 422);
    }
}
