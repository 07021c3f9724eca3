//! The `alert_webhook` plugin: receives Alertmanager's webhook at `<route prefix>/<destination>`,
//! renders it with the destination's template (whole, per alert or in batches) and delivers the
//! messages. A webhook is acknowledged (2xx) only once every message was taken by the
//! destination or durably spooled for it; otherwise Alertmanager is told to send it again.
//! Delivery is therefore at least once.
//!
//! While a destination has messages waiting in its spool, new ones queue behind them, so that a
//! `resolved` never overtakes the `firing` it ends.
//!
//! This file is the webhook's HTTP face (authorization, body limits, the answers);
//! `destination.rs` renders, delivers, spools and replays a destination's messages.

pub mod config;
pub mod deliver;
mod destination;
pub mod exercise;
mod metrics;
pub mod payload;
pub mod spool;
pub mod template;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::Method;
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::json;
use subtle::ConstantTimeEq;

use self::destination::Message;
pub use self::destination::{Destination, Split};
use self::payload::{Limits, Payload};
use super::{read_body_within, HttpPlugin, RequestInfo};

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
        let body = read_body_within(session, self.max_body).await?;
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

/// Equality in a time that does not depend on where the inputs differ, so that a guesser
/// learns nothing from how fast a wrong credential is refused (`subtle` keeps the optimiser
/// from turning the compare into an early exit; a length that differs is refused at once).
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
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
