//! Sending a rendered message to a destination: one HTTP exchange on a pooled connection (to a
//! backend of a gateway upstream, or to an absolute URL over rustls), bounded by the
//! destination's timeout, guarded by its circuit breaker, signed if it asks, and retried with
//! backoff by the caller's policy.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderName, HeaderValue, Method};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use ring::hmac;

use crate::plugin::client;
use crate::upstream::breaker::{Admit, Breaker};
use crate::upstream::{PeerSettings, Upstream};

/// How much of a destination's answer is kept for the log when it refuses a message.
const EXCERPT: usize = 512;

/// Where a destination's messages go.
pub enum Target {
    /// A backend of a gateway upstream, picked by its balancer among its available backends.
    Upstream {
        upstream: Arc<Upstream>,
        path: String,
        /// The Host header; the backend's address when not given.
        host: Option<String>,
    },
    /// An absolute URL; its host is resolved at each send, so that DNS changes are followed.
    Url {
        host: String,
        port: u16,
        /// `host[:port]`, as the Host header carries it.
        authority: String,
        path: String,
        settings: PeerSettings,
    },
}

/// How long to wait before each retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffKind {
    Exponential,
    Linear,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub kind: BackoffKind,
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The pause before retry `n` (1 for the first retry), without jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let n = n.max(1);
        let d = match self.kind {
            BackoffKind::Constant => self.initial,
            BackoffKind::Linear => self.initial.saturating_mul(n),
            BackoffKind::Exponential => self
                .initial
                .saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX)),
        };
        d.min(self.max)
    }

    /// [`Backoff::delay`] less up to a fifth, drawn at random, so that the retries of many
    /// messages that failed together do not arrive together.
    pub fn jittered(&self, n: u32) -> Duration {
        let d = self.delay(n);
        d - d.mul_f64(fastrand::f64() * 0.2)
    }
}

/// An HMAC-SHA256 of the body in a header, as `prefix` + lowercase hex.
pub struct Signature {
    pub header: HeaderName,
    pub prefix: String,
    pub key: hmac::Key,
}

impl Signature {
    pub fn sign(&self, body: &[u8]) -> String {
        let tag = hmac::sign(&self.key, body);
        let mut out = String::with_capacity(self.prefix.len() + 64);
        out.push_str(&self.prefix);
        for b in tag.as_ref() {
            // Into the one string: no allocation per byte.
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

/// What became of one try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered(u16),
    /// A 4xx answer other than 408 and 429: the destination refuses this message, and sending
    /// it again would not change that.
    Rejected { status: u16, excerpt: String },
    /// No answer, a 5xx, 408 or 429, or the breaker is open: worth trying again later.
    Failed(String),
}

impl Outcome {
    fn from_status(status: u16, excerpt: String) -> Outcome {
        match status {
            200..=299 => Outcome::Delivered(status),
            408 | 429 => Outcome::Failed(format!("answered {status}: {excerpt}")),
            400..=499 => Outcome::Rejected { status, excerpt },
            _ => Outcome::Failed(format!("answered {status}: {excerpt}")),
        }
    }
}

/// A destination's transport: everything about sending except what is sent.
pub struct Sender {
    pub target: Target,
    pub method: Method,
    /// Sent with every message, the content type among them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub breaker: Option<Breaker>,
    pub signature: Option<Signature>,
}

impl Sender {
    /// One try: the breaker's leave, then one exchange within the timeout.
    pub async fn send(&self, connector: &Connector, body: &Bytes) -> Outcome {
        let admitted = self.breaker.as_ref().map(Breaker::admit);
        if admitted == Some(Admit::No) {
            return Outcome::Failed("the destination's circuit breaker is open".into());
        }
        let outcome = match tokio::time::timeout(self.timeout, self.exchange(connector, body)).await
        {
            Ok(o) => o,
            Err(_) => Outcome::Failed(format!("no answer within {:?}", self.timeout)),
        };
        if let (Some(b), Some(a)) = (&self.breaker, admitted) {
            b.record(a, matches!(outcome, Outcome::Failed(_)));
        }
        outcome
    }

    async fn exchange(&self, connector: &Connector, body: &Bytes) -> Outcome {
        match &self.target {
            Target::Upstream {
                upstream,
                path,
                host,
            } => {
                // The same call as a proxied request's: the upstream's own breaker speaks for
                // it, and the outcome counts toward the backend's outlier detection.
                let sent = client::through_upstream(
                    upstream,
                    |peer| async move {
                        let authority = host.clone().unwrap_or_else(|| peer._address.to_string());
                        self.exchange_with(connector, &peer, &authority, path, body)
                            .await
                    },
                    |outcome| matches!(outcome, Outcome::Failed(_)),
                )
                .await;
                sent.unwrap_or_else(|why| Outcome::Failed(why.describe(&upstream.name)))
            }
            Target::Url {
                host,
                port,
                authority,
                path,
                settings,
            } => {
                let addr = match resolve(host, *port).await {
                    Ok(a) => a,
                    Err(e) => return Outcome::Failed(e),
                };
                let peer = settings.peer(addr);
                self.exchange_with(connector, &peer, authority, path, body)
                    .await
            }
        }
    }

    /// One request and its answer on a pooled connection to `peer`.
    async fn exchange_with(
        &self,
        connector: &Connector,
        peer: &HttpPeer,
        authority: &str,
        path: &str,
        body: &Bytes,
    ) -> Outcome {
        match self.http(connector, peer, authority, path, body).await {
            Ok((status, excerpt)) => Outcome::from_status(status, excerpt),
            Err(e) => Outcome::Failed(format!("{}: {e}", peer._address)),
        }
    }

    async fn http(
        &self,
        connector: &Connector,
        peer: &HttpPeer,
        authority: &str,
        path: &str,
        body: &Bytes,
    ) -> pingora::Result<(u16, String)> {
        let mut req = RequestHeader::build(
            self.method.clone(),
            path.as_bytes(),
            Some(self.headers.len() + 3),
        )?;
        req.insert_header(HOST, authority)?;
        for (k, v) in &self.headers {
            req.insert_header(k.clone(), v.clone())?;
        }
        req.insert_header(CONTENT_LENGTH, body.len())?;
        if let Some(sig) = &self.signature {
            req.insert_header(sig.header.clone(), sig.sign(body))?;
        }
        let answer = client::exchange(connector, peer, req, body.clone(), EXCERPT).await?;
        Ok((
            answer.status,
            String::from_utf8_lossy(&answer.body).trim().to_owned(),
        ))
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_as_told_and_stops_at_the_cap() {
        let b = |kind| Backoff {
            attempts: 5,
            kind,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        let ms = |b: Backoff| (1..=6).map(|n| b.delay(n).as_millis()).collect::<Vec<_>>();
        assert_eq!(
            ms(b(BackoffKind::Exponential)),
            [100, 200, 400, 800, 1000, 1000]
        );
        assert_eq!(ms(b(BackoffKind::Linear)), [100, 200, 300, 400, 500, 600]);
        assert_eq!(ms(b(BackoffKind::Constant)), [100; 6]);
        assert_eq!(
            b(BackoffKind::Exponential).delay(200),
            Duration::from_millis(1000)
        );
        let j = b(BackoffKind::Constant).jittered(1);
        assert!(j <= Duration::from_millis(100) && j >= Duration::from_millis(80));
    }

    #[test]
    fn statuses_sort_into_delivered_refused_and_worth_retrying() {
        assert_eq!(
            Outcome::from_status(202, String::new()),
            Outcome::Delivered(202)
        );
        assert!(matches!(
            Outcome::from_status(400, "bad".into()),
            Outcome::Rejected { status: 400, .. }
        ));
        for s in [408, 429, 500, 503] {
            assert!(matches!(
                Outcome::from_status(s, String::new()),
                Outcome::Failed(_)
            ));
        }
    }

    #[test]
    fn signature_is_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        let sig = Signature {
            header: HeaderName::from_static("x-signature"),
            prefix: "sha256=".into(),
            key: hmac::Key::new(hmac::HMAC_SHA256, b"Jefe"),
        };
        assert_eq!(
            sig.sign(b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
