//! The gateway's own HTTP requests from plugins (an alert's delivery, the cache's O2
//! subscription calls): one exchange on a pooled connection, and a call through a gateway
//! upstream so that its circuit breaker and outlier detection count it like a proxied request.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;

use crate::upstream::call::Outcome as CallOutcome;
use crate::upstream::Upstream;

/// A response body longer than this is not read to the end: the connection is closed instead
/// of being pooled.
pub const MAX_DRAIN: usize = 1 << 20;

/// An answer: its status and the first bytes of its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// At most the `keep` bytes asked for.
    pub body: Vec<u8>,
    /// The whole body fit in `keep`.
    pub complete: bool,
}

/// Sends `req` with `body` on a pooled connection to `peer` and reads the answer, keeping the
/// first `keep` bytes of its body. A body read to its end (up to [`MAX_DRAIN`], or `keep` if
/// larger) gives the connection back to the pool.
pub async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    body: Bytes,
    keep: usize,
) -> pingora::Result<Answer> {
    exchange_with_head(connector, peer, req, body, keep)
        .await
        .map(|(_, answer)| answer)
}

/// [`exchange`], with the answer's head for a caller that reads its headers.
pub async fn exchange_with_head(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    body: Bytes,
    keep: usize,
) -> pingora::Result<(ResponseHeader, Answer)> {
    let (mut session, _reused) = connector.get_http_session(peer).await?;
    session.write_request_header(Box::new(req)).await?;
    session.write_request_body(body, true).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let Some(head) = session.response_header().cloned() else {
        return pingora::Error::e_explain(
            pingora::ErrorType::InvalidHTTPHeader,
            "no response head",
        );
    };
    let status = head.status.as_u16();
    let drain = MAX_DRAIN.max(keep);
    let mut kept = Vec::new();
    let mut read = 0usize;
    let mut whole = false;
    while read <= drain {
        match session.read_response_body().await? {
            Some(chunk) => {
                read += chunk.len();
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            None => {
                whole = true;
                break;
            }
        }
    }
    if whole {
        connector
            .release_http_session(session, peer, peer.options.idle_timeout)
            .await;
    }
    let answer = Answer {
        status,
        body: kept,
        complete: whole && read <= keep,
    };
    Ok((head, answer))
}

/// Why a call through an upstream reached no backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSent {
    /// The upstream's circuit breaker refused the call.
    CircuitOpen,
    /// No backend could be picked.
    NoBackend,
}

impl NotSent {
    /// Why, for a log line about `upstream`.
    pub fn describe(self, upstream: &str) -> String {
        match self {
            NotSent::CircuitOpen => format!("upstream `{upstream}`: its circuit breaker is open"),
            NotSent::NoBackend => format!("upstream `{upstream}` has no backend"),
        }
    }
}

/// One call through `upstream`, as a proxied request makes it: the breaker's leave, a backend
/// picked by the balancer, `send` to it, and the outcome (`failed` says whether the backend
/// failed) recorded with the breaker and the backend's outlier detection.
pub async fn through_upstream<T, F, Fut>(
    upstream: &Arc<Upstream>,
    send: F,
    failed: impl FnOnce(&T) -> bool,
) -> Result<T, NotSent>
where
    F: FnOnce(Box<HttpPeer>) -> Fut,
    Fut: Future<Output = T>,
{
    let mut call = upstream.begin().map_err(|_| NotSent::CircuitOpen)?;
    let peer = match call.pick(None) {
        Ok(peer) => peer,
        Err(_) => {
            // Ended all the same, so that a half-open breaker's probe is not lost.
            call.finish(CallOutcome::Failed);
            return Err(NotSent::NoBackend);
        }
    };
    let out = send(peer).await;
    call.finish(if failed(&out) {
        CallOutcome::BackendFailed
    } else {
        CallOutcome::Ok
    });
    Ok(out)
}
