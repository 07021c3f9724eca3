//! An alert destination: renders a webhook's payload into messages with its template and
//! delivers them (retried by its policy, or spooled and replayed in order when it has a spool).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use pingora::connectors::http::Connector;
use serde_json::json;

use super::deliver::{self, Backoff, Outcome, Sender};
use super::metrics::DestinationMetrics;
use super::payload::Payload;
use super::spool::{LazySpool, Spool, SpoolError};
use super::template::{DestinationValues, PayloadValues, RenderContext, Template};
use crate::clock::now_ms;

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

/// One named destination: how its messages are made and where they go.
pub struct Destination {
    pub name: Arc<str>,
    pub(super) sender: Sender,
    pub(super) template: Template,
    /// Each message must be valid JSON.
    pub(super) json: bool,
    /// Its name and `vars` as templates see them.
    pub(super) values: DestinationValues,
    pub(super) split: Split,
    pub(super) parallel: usize,
    pub(super) retry: Backoff,
    pub(super) spool: Option<LazySpool>,
    /// No replay before this ([`now_ms`] time): the last one gave up.
    pub(super) replay_after_ms: AtomicU64,
    pub(super) metrics: DestinationMetrics,
}

/// One rendered message.
pub(super) struct Message {
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
pub(super) struct Report {
    pub(super) delivered: usize,
    pub(super) spooled: usize,
    /// Refused by the destination: `(status, excerpt)` of the first.
    pub(super) rejected: Option<(u16, String)>,
    /// Neither delivered nor spooled: why, for the first.
    pub(super) failed: Option<String>,
    pub(super) full: bool,
}

impl Destination {
    /// The messages for `payload`, rendered: all of them or an error naming what failed.
    pub(super) fn render(&self, payload: &Payload) -> Result<Vec<Message>, String> {
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
    pub(super) fn describe(&self, m: &Message) -> serde_json::Value {
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
    pub(super) async fn deliver(&self, connector: &Connector, messages: Vec<Message>) -> Report {
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
    pub(super) fn replay_due(&self) -> bool {
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
    pub(super) async fn replay(&self, connector: &Connector) {
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

    pub(super) fn report_spool(&self) {
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
    pub(super) fn answer(&self, destination: &str, alerts: usize) -> (u16, serde_json::Value) {
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
