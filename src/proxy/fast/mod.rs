//! The HTTP/1 fast path: plain HTTP/1.1 requests on routes that only forward them, served
//! straight from the connection's bytes instead of through Pingora's proxy phases.
//!
//! Per request it does what nginx does: one parse of the head into a small array on the stack,
//! the route matched and a backend picked as the full proxy does it, the upstream head written
//! with its forwarding headers in one write, the answer's head edited the same way, and the
//! body copied by its framing. Everything else stays the full proxy's, which gets the request's
//! bytes back untouched ([`Step::Leave`]): TLS connections, HTTP/1.0, `Transfer-Encoding` or
//! `Expect` or `Upgrade` requests, an unknown route or one that edits or watches
//! ([`crate::route::Route::forwards_only`]), a request with a body on a route with limits, a
//! path the listener normalizes, a trusted peer's `X-Forwarded-For`, a head over the listener's
//! limits. A connection handed over stays with the full proxy.
//!
//! What it shares with the full proxy: the snapshot, route table, the route's rate limit and cap
//! in flight with their answers, upstream call (breaker, pick,
//! retries on connect failure and on a stale pooled connection, outcome), the forwarding-header
//! rule, the failure answers, the route metrics, the access log line and the listener's
//! connection deadlines. Differences on the wire, none of meaning (RFC 9110 §5.3): fields keep
//! the client's and the backend's order (Pingora groups fields of a name at the first one), a
//! chunked answer passes with its chunk sizes, extensions and trailers as the backend sent them,
//! and a TLS listener's connections are not served here yet.

pub mod head;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, DATE};
use pingora::connectors::TransportConnector;
use pingora::prelude::fast_timeout::fast_timeout;
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::http::error_resp::gen_error_response;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::{GetSocketDigest, Stream};
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType};
use prometheus::{register_int_counter_vec, IntCounter, IntCounterVec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::head::{BadAnswer, Chunked, Forwarding, Framing, Leave, PeerIp};
use super::answer::Refused;
use super::forwarding::ForwardingValues;
use super::listener::ListenerSlot;
use crate::access_log::{AccessLog, Entry};
use crate::conn::io::Guarded;
use crate::conn::{FastStep as Step, Http1Fast};
use crate::limit::Permit;
use crate::route::{normalize_host, path, Action, RequestView, Route};
use crate::runtime::Live;
use crate::snapshot::{Listener, Snapshot};
use crate::upstream::call::{Call, Outcome, Refusal};
use crate::upstream::Upstream;

/// The longest request head taken here: a larger one (rare) goes to the full proxy.
const MAX_HEAD: usize = 16 * 1024;
/// The longest answer head read from a backend before the request fails with a 502.
const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// A request body read ahead of sending, to be sent again if a stale pooled connection fails.
const READ_SIZE: usize = 16 * 1024;

/// One listener's fast path.
pub struct FastPath {
    live: Arc<Live>,
    listener: Listener,
    on: ListenerSlot,
    forwarding: ForwardingValues,
    access_log: Option<AccessLog>,
    connector: TransportConnector,
    /// Requests this path answered (`zkgate_http1_fast_path_requests_total`).
    answered: IntCounter,
}

static ANSWERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "zkgate_http1_fast_path_requests_total",
        "Requests the HTTP/1 fast path served (answered, or failed with its own answer), by listener; the others went through the full proxy.",
        &["listener"]
    )
    .expect("register zkgate_http1_fast_path_requests_total")
});

/// A connection's state on the fast path: its buffers, kept from request to request.
pub struct Conn {
    peer: Option<PeerAddr>,
    peer_ip: Option<PeerIp>,
    local: Option<std::net::SocketAddr>,
    /// Requests answered on the connection so far.
    pub served: u32,
    down: BytesMut,
    up: BytesMut,
    /// The upstream request head, kept for a retry until the answer comes.
    head: Vec<u8>,
    /// The downstream answer head (and what of the body goes in its write).
    answer: Vec<u8>,
}

impl Conn {
    pub fn new(stream: &impl GetSocketDigest) -> Conn {
        let digest = stream.get_socket_digest();
        let peer = digest.as_ref().and_then(|d| d.peer_addr().cloned());
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr()?.as_inet().copied());
        Conn {
            peer_ip: peer
                .as_ref()
                .and_then(|p| p.as_inet())
                .map(|a| PeerIp::new(a.ip())),
            peer,
            local,
            served: 0,
            down: BytesMut::with_capacity(4096),
            up: BytesMut::new(),
            head: Vec::with_capacity(1024),
            answer: Vec::with_capacity(1024),
        }
    }
}

/// A request the fast path takes, as decided from its head before anything was sent.
struct Plan {
    started: Instant,
    snapshot: Arc<Snapshot>,
    route: u32,
    upstream: Arc<Upstream>,
    head: Bytes,
    /// Where the target is in `head`, and where its path ends.
    target: std::ops::Range<usize>,
    path_end: usize,
    method: http::Method,
    body_len: u64,
    /// The client's connection stays open after the answer.
    keep_alive: bool,
    /// The route's limits let the request through (holding its slot, on a capped route), or
    /// turned it away.
    admitted: Result<Option<Permit>, Refused>,
}

impl Plan {
    fn route(&self) -> &Route {
        self.snapshot.routes.get(self.route)
    }

    fn target(&self) -> &str {
        // The target was checked to be UTF-8 (httparse takes visible ASCII only).
        std::str::from_utf8(&self.head[self.target.clone()]).unwrap_or("/")
    }
}

/// How a request failed before its answer began, and the answer it gets.
enum Failure {
    /// The upstream refused the call (breaker open, no backend, all failed).
    Refused(Refusal),
    /// The route's timeout passed before a try.
    RouteTimeout,
    /// Connecting, sending or reading the answer's head failed; `timeout` when it was a timeout.
    Backend { timeout: bool, error: Box<Error> },
    /// The backend's answer could not be forwarded.
    BadAnswer(BadAnswer),
    /// The client paused its body past `client_body_timeout`.
    BodyTimeout,
    /// The client went away.
    ClientGone,
}

/// How an exchange ended once its answer began.
struct Answered {
    status: u16,
    upstream_time: Duration,
    body_bytes: usize,
    /// The answer reached the client whole, so its connection may carry another request.
    complete: bool,
    /// The backend's connection failed inside the body.
    backend_failed: bool,
}

impl FastPath {
    pub fn new(
        live: Arc<Live>,
        listener: &Listener,
        access_log: Option<AccessLog>,
        connector: TransportConnector,
    ) -> FastPath {
        FastPath {
            live,
            on: ListenerSlot::new(&listener.name),
            forwarding: ForwardingValues::new(listener.addr.port()),
            answered: ANSWERED.with_label_values(&[&listener.name]),
            listener: listener.clone(),
            access_log,
            connector,
        }
    }

    /// Serves the next request of the connection on `io`, if it is this path's (see
    /// [`Http1Fast::request`]).
    async fn serve(
        &self,
        io: &mut Guarded,
        conn: &mut Conn,
        keep_alive: bool,
        remaining: Option<u32>,
        shutdown: &mut ShutdownWatch,
    ) -> Step {
        // The head, read under the connection's head deadline (the caller's).
        let head_len = loop {
            match head::request_len(&conn.down) {
                Ok(Some(n)) => break n,
                Ok(None) if conn.down.len() < MAX_HEAD => {}
                _ => return leave(io, conn, Bytes::new()),
            }
            if conn.down.capacity() - conn.down.len() < 1024 {
                conn.down.reserve(4096);
            }
            let read = if conn.down.is_empty() {
                // Idle between requests: a server that stops closes the connection.
                tokio::select! {
                    biased;
                    read = io.read_buf(&mut conn.down) => read,
                    _ = shutdown.wait_for(|stop| *stop) => return Step::Close,
                }
            } else {
                io.read_buf(&mut conn.down).await
            };
            match read {
                Ok(0) | Err(_) if conn.down.is_empty() => return Step::Close,
                // Closed or failed inside a head: the full proxy sees what came.
                Ok(0) | Err(_) => return leave(io, conn, Bytes::new()),
                Ok(_) => {}
            }
        };
        let head = conn.down.split_to(head_len).freeze();
        let Ok(mut plan) = self.plan(&head, conn) else {
            return leave(io, conn, head);
        };
        // The head is complete: its deadline no longer applies.
        io.state().on_head();
        self.answered.inc();
        plan.keep_alive &= keep_alive && remaining != Some(0);
        // Held until the exchange ends.
        let _permit = match std::mem::replace(&mut plan.admitted, Ok(None)) {
            Ok(permit) => permit,
            Err(refused) => return self.refuse(io, conn, &plan, refused).await,
        };
        let mut call = match plan.upstream.begin() {
            Ok(call) => call,
            Err(refusal) => {
                let failure = Failure::Refused(refusal);
                return self.fail(io, conn, &plan, None, failure).await;
            }
        };
        let exchange = self.exchange(io, conn, &plan, &mut call).await;
        let backend = call.backend();
        match exchange {
            Ok(answered) => {
                let outcome = if answered.status >= 500 || answered.backend_failed {
                    Outcome::BackendFailed
                } else {
                    Outcome::Ok
                };
                call.finish(outcome);
                let route = plan.route();
                route.metrics.observe(
                    answered.status,
                    plan.started.elapsed(),
                    Some(answered.upstream_time),
                );
                self.log(conn, &plan, answered.status, answered.body_bytes, backend);
                conn.served += 1;
                if answered.complete && plan.keep_alive {
                    Step::Again
                } else {
                    Step::Close
                }
            }
            Err(failure) => self.fail(io, conn, &plan, Some(call), failure).await,
        }
    }

    /// Decides from the head whether the request is this path's, and how it goes.
    fn plan(&self, head: &Bytes, conn: &mut Conn) -> Result<Plan, Leave> {
        let started = Instant::now();
        let mut slots = head::slots();
        let req = head::request(head, &mut slots)?;
        let l = &self.listener;
        if !req.within(l.max_request_headers, l.max_request_header_bytes) {
            return Err(Leave);
        }
        let target = path::normalize(req.target.as_bytes(), &l.path).map_err(|_| Leave)?;
        if target.changed() {
            return Err(Leave);
        }
        let peer_ip = conn.peer_ip.ok_or(Leave)?;
        let peer = peer_ip.ip;
        let snapshot = self.live.load_full();
        if snapshot.client_ip.resolves_from_headers(peer) {
            return Err(Leave);
        }
        let host = normalize_host(req.host);
        let headers = condition_fields(&req, snapshot.routes.condition_headers())?;
        let view = RequestView {
            method: &req.method,
            host: host.as_deref(),
            path: &target.path,
            headers: &headers,
        };
        let id = snapshot
            .routes
            .find_on(self.on.id(&snapshot), &view)
            .ok_or(Leave)?;
        if !snapshot.routes.fast(id) {
            return Err(Leave);
        }
        let route = snapshot.routes.get(id);
        let Action::Proxy(upstream) = &route.action else {
            return Err(Leave);
        };
        if route.max_request_body.is_some_and(|max| req.body_len > max) {
            return Err(Leave);
        }
        // A refusal leaves the body unread; the full proxy drains it to keep the connection.
        if req.body_len > 0 && (route.rate_limit.is_some() || route.concurrency.is_some()) {
            return Err(Leave);
        }
        let passes = snapshot.client_ip.passes_forwarded(peer);
        let fwd = Forwarding {
            peer: peer_ip,
            passes,
            tls: false,
            port: self.forwarding.port_number(conn.local.map(|a| a.port())),
            forwarded: snapshot.client_ip.forwarded(),
            by: conn.local,
        };
        head::write_upstream(&req, &fwd, &mut conn.head);
        // Last: a request counted against the limits is this path's from here on.
        let admitted = super::admit(route, Some(peer), started, |name| {
            let field = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name.as_str()));
            field.map(|h| h.value)
        });
        let offset = req.target.as_ptr() as usize - head.as_ptr() as usize;
        let path_end = offset + req.target.find('?').unwrap_or(req.target.len());
        Ok(Plan {
            started,
            upstream: upstream.clone(),
            route: id,
            target: offset..offset + req.target.len(),
            path_end,
            method: req.method.clone(),
            body_len: req.body_len,
            keep_alive: req.keep_alive,
            head: head.clone(),
            snapshot,
            admitted,
        })
    }

    /// Sends the request to a backend and forwards its answer, with the full proxy's retries: on
    /// another backend after a failed connect, and on a new connection to the same one when a
    /// pooled connection turns out closed before any of the answer came.
    async fn exchange(
        &self,
        io: &mut Guarded,
        conn: &mut Conn,
        plan: &Plan,
        call: &mut Call,
    ) -> Result<Answered, Failure> {
        let route = plan.route();
        let mut fresh = false;
        // The body is sent again on a retry only if all of it is at hand.
        let body_at_hand = plan.body_len <= conn.down.len() as u64;
        loop {
            let mut ip_buf = [0u8; 16];
            let key = plan.upstream.policy.hash_key.as_ref().and_then(|k| {
                let no_headers = http::HeaderMap::new();
                let path =
                    std::str::from_utf8(&plan.head[plan.target.start..plan.path_end]).ok()?;
                let query = std::str::from_utf8(&plan.head[plan.path_end..plan.target.end])
                    .ok()
                    .and_then(|q| q.strip_prefix('?'));
                let peer = conn.peer_ip.map(|p| p.ip);
                k.extract(peer, path, query, &no_headers, &mut ip_buf)
                    .map(<[u8]>::to_vec)
            });
            let left = super::time_left(route, plan.started).map_err(|_| Failure::RouteTimeout)?;
            let mut peer = call.pick(key.as_deref()).map_err(Failure::Refused)?;
            super::bound_try(route, left, &mut peer.options);
            let reused = if fresh {
                None
            } else {
                self.connector.reused_stream(&*peer).await
            };
            let was_reused = reused.is_some();
            let mut up = match reused {
                Some(s) => s,
                None => match self.connector.new_stream(&*peer).await {
                    Ok(s) => s,
                    Err(e) => {
                        if call.failed_to_connect(route.retry.attempts) {
                            continue;
                        }
                        let timeout = e.etype() == &ErrorType::ConnectTimedout;
                        return Err(Failure::Backend { timeout, error: e });
                    }
                },
            };
            match self.send(io, conn, plan, &peer, &mut up).await {
                Ok(()) => {}
                Err(Sent::Stale) if was_reused && body_at_hand => {
                    fresh = true;
                    continue;
                }
                Err(Sent::Stale) => return Err(backend_closed()),
                Err(Sent::Failed(f)) => return Err(f),
            }
            match self.answer(io, conn, plan, &peer, up).await {
                Err(Sent::Stale) if was_reused && body_at_hand => {
                    fresh = true;
                    continue;
                }
                Err(Sent::Stale) => return Err(backend_closed()),
                Err(Sent::Failed(f)) => return Err(f),
                Ok(answered) => {
                    if body_at_hand {
                        // Kept for a retry until now; a larger body was consumed as it went.
                        conn.down.advance(plan.body_len as usize);
                    }
                    return Ok(answered);
                }
            }
        }
    }

    /// Writes the request head, and its body (from the connection's buffer, then as it comes).
    async fn send(
        &self,
        io: &mut Guarded,
        conn: &mut Conn,
        plan: &Plan,
        peer: &HttpPeer,
        up: &mut Stream,
    ) -> Result<(), Sent> {
        let write_timeout = peer.options.write_timeout;
        let at_hand = (plan.body_len.min(conn.down.len() as u64)) as usize;
        if at_hand > 0 && at_hand <= READ_SIZE {
            // Head and body in one write. The body stays in the buffer until the answer came.
            conn.head.extend_from_slice(&conn.down[..at_hand]);
            let written = within(write_timeout, up.write_all(&conn.head)).await;
            conn.head.truncate(conn.head.len() - at_hand);
            written.map_err(|_| Sent::Stale)?;
        } else {
            within(write_timeout, up.write_all(&conn.head))
                .await
                .map_err(|_| Sent::Stale)?;
            if at_hand > 0 {
                within(write_timeout, up.write_all(&conn.down[..at_hand]))
                    .await
                    .map_err(|_| Sent::Stale)?;
            }
        }
        let mut left = plan.body_len - at_hand as u64;
        if left == 0 {
            // A connection may buffer writes (Pingora's streams can): the request goes out now.
            return within(write_timeout, up.flush())
                .await
                .map_err(|_| Sent::Stale);
        }
        // The rest of a large body: read and sent as it comes, under the body timeout. It is
        // not kept: such a request is not retried.
        let body_timeout = self.listener.conn.client_body_timeout;
        conn.down.advance(at_hand);
        let mut chunk = BytesMut::with_capacity(READ_SIZE);
        while left > 0 {
            chunk.clear();
            let want = left.min(READ_SIZE as u64) as usize;
            let read = tokio::time::timeout(
                body_timeout,
                (&mut *io).take(want as u64).read_buf(&mut chunk),
            )
            .await;
            match read {
                Err(_) => return Err(Sent::Failed(Failure::BodyTimeout)),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Sent::Failed(Failure::ClientGone)),
                Ok(Ok(n)) => {
                    within(write_timeout, up.write_all(&chunk[..n]))
                        .await
                        .map_err(|e| Sent::Failed(backend_error(e)))?;
                    left -= n as u64;
                }
            }
        }
        within(write_timeout, up.flush())
            .await
            .map_err(|e| Sent::Failed(backend_error(e)))
    }

    /// Reads the answer's head (forwarding informational ones) and forwards the answer.
    async fn answer(
        &self,
        io: &mut Guarded,
        conn: &mut Conn,
        plan: &Plan,
        peer: &HttpPeer,
        mut up: Stream,
    ) -> Result<Answered, Sent> {
        let attempt_started = Instant::now();
        let read_timeout = peer.options.read_timeout;
        let head_request = plan.method == http::Method::HEAD;
        let date = get_cached_date();
        conn.up.clear();
        let mut any = false;
        let resp = loop {
            match head::response(
                &conn.up,
                head_request,
                plan.keep_alive,
                date.as_bytes(),
                &mut conn.answer,
            ) {
                Ok(Some(r)) if r.status < 200 => {
                    conn.up.advance(r.head_len);
                    io.write_all(&conn.answer)
                        .await
                        .map_err(|_| Sent::Failed(Failure::ClientGone))?;
                    io.flush()
                        .await
                        .map_err(|_| Sent::Failed(Failure::ClientGone))?;
                    continue;
                }
                Ok(Some(r)) => break r,
                Ok(None) if conn.up.len() < MAX_ANSWER_HEAD => {}
                Err(bad) => return Err(Sent::Failed(Failure::BadAnswer(bad))),
                Ok(None) => return Err(Sent::Failed(Failure::BadAnswer(BadAnswer::Malformed))),
            }
            if conn.up.capacity() - conn.up.len() < 1024 {
                conn.up.reserve(4096);
            }
            match within(read_timeout, up.read_buf(&mut conn.up)).await {
                Ok(0) if !any => return Err(Sent::Stale),
                Ok(0) => return Err(Sent::Failed(backend_closed())),
                Ok(_) => any = true,
                Err(e) if !any && e.kind() != std::io::ErrorKind::TimedOut => {
                    return Err(Sent::Stale)
                }
                Err(e) => return Err(Sent::Failed(backend_error(e))),
            }
        };
        conn.up.advance(resp.head_len);
        let upstream_time = attempt_started.elapsed();
        let mut answered = Answered {
            status: resp.status,
            upstream_time,
            body_bytes: 0,
            complete: false,
            backend_failed: false,
        };
        // From here the answer has begun: a failure ends the client's connection.
        let body = forward_body(io, &mut up, conn, resp.framing, read_timeout, &mut answered).await;
        match body {
            Ok(reusable) => {
                answered.complete = true;
                if reusable && resp.reusable && conn.up.is_empty() {
                    self.connector
                        .release_stream(up, peer.reuse_hash(), peer.options.idle_timeout);
                }
            }
            Err(BodyEnd::Backend) => answered.backend_failed = true,
            Err(BodyEnd::Client) => {}
        }
        Ok(answered)
    }

    /// Answers a request the route's limits turned away, as the full proxy's `refuse` does; the
    /// connection stays open (the request had no body).
    async fn refuse(
        &self,
        io: &mut Guarded,
        conn: &mut Conn,
        plan: &Plan,
        refused: Refused,
    ) -> Step {
        let (status, body, retry_after) = refused.answer();
        let head_request = plan.method == http::Method::HEAD;
        head::plain_answer(
            status,
            body,
            retry_after,
            head_request,
            plan.keep_alive,
            get_cached_date().as_bytes(),
            &mut conn.answer,
        );
        let sent = io.write_all(&conn.answer).await.is_ok() && io.flush().await.is_ok();
        let status = status.as_u16();
        plan.route()
            .metrics
            .observe(status, plan.started.elapsed(), None);
        let body_bytes = if head_request { 0 } else { body.len() };
        self.log(conn, plan, status, body_bytes, None);
        conn.served += 1;
        if sent && plan.keep_alive {
            Step::Again
        } else {
            Step::Close
        }
    }

    /// Answers a request that failed before its answer began, as the full proxy's
    /// `fail_to_proxy` does, then ends its bookkeeping; the connection closes.
    async fn fail(
        &self,
        io: &mut Guarded,
        conn: &mut Conn,
        plan: &Plan,
        call: Option<Call>,
        failure: Failure,
    ) -> Step {
        let name = &plan.upstream.name;
        let (code, why, outcome) = match &failure {
            Failure::Refused(r) => (r.status(), r.reason(), Outcome::Failed),
            Failure::RouteTimeout => (
                504,
                "gateway timeout: the route's timeout passed",
                Outcome::Failed,
            ),
            Failure::Backend { timeout: true, .. } => {
                (504, super::answer::default_why(504), Outcome::BackendFailed)
            }
            Failure::BadAnswer(BadAnswer::Switched) => {
                (502, super::upgrade::UNASKED_SWITCH, Outcome::BackendFailed)
            }
            Failure::Backend { .. } | Failure::BadAnswer(_) => {
                (502, super::answer::default_why(502), Outcome::BackendFailed)
            }
            Failure::BodyTimeout => (408, "", Outcome::Ok),
            Failure::ClientGone => (0, "", Outcome::Ok),
        };
        match &failure {
            Failure::Backend { error, .. } => log::error!(
                "listener {}: {} {} failed on upstream {name}: {error}",
                self.listener.name,
                plan.method,
                plan.target()
            ),
            Failure::BadAnswer(_) => log::error!(
                "listener {}: {} {}: upstream {name} sent an answer that cannot be forwarded",
                self.listener.name,
                plan.method,
                plan.target()
            ),
            _ => {}
        }
        let backend = call.as_ref().and_then(Call::backend);
        if let Some(call) = call {
            call.finish(outcome);
        }
        let status = if code == 0 {
            499
        } else {
            let body = if code >= 500 {
                format!("{why}: upstream {name}\n")
            } else {
                String::new()
            };
            error_answer(
                code,
                &body,
                plan.method == http::Method::HEAD,
                &mut conn.answer,
            );
            let _ = io.write_all(&conn.answer).await;
            let _ = io.flush().await;
            code
        };
        plan.route()
            .metrics
            .observe(status, plan.started.elapsed(), None);
        self.log(conn, plan, status, 0, backend);
        match failure {
            Failure::BodyTimeout => Step::BodyTimeout,
            _ => Step::Close,
        }
    }

    fn log(
        &self,
        conn: &Conn,
        plan: &Plan,
        status: u16,
        body_bytes: usize,
        backend: Option<std::net::SocketAddr>,
    ) {
        let Some(log) = &self.access_log else {
            return;
        };
        log.write(&Entry {
            client: conn.peer.as_ref(),
            method: plan.method.as_str(),
            target: &plan.target(),
            version: http::Version::HTTP_11,
            status,
            body_bytes,
            elapsed: plan.started.elapsed(),
            route: Some(&plan.route().name),
            backend,
            tls: None,
            cache: None,
        });
    }
}

impl Http1Fast for FastPath {
    type Conn = Conn;

    fn conn(&self, io: &Guarded) -> Conn {
        Conn::new(io)
    }

    fn served(conn: &Conn) -> u32 {
        conn.served
    }

    fn request<'a>(
        &'a self,
        io: &'a mut Guarded,
        conn: &'a mut Conn,
        keep_alive: bool,
        remaining: Option<u32>,
        shutdown: &'a mut ShutdownWatch,
    ) -> impl std::future::Future<Output = Step> + Send + 'a {
        self.serve(io, conn, keep_alive, remaining, shutdown)
    }
}

/// The request's fields that route conditions name, as the header map routes match on: empty
/// (which allocates nothing) unless some route matches on a header the request carries.
fn condition_fields(
    req: &head::Request,
    names: &[http::HeaderName],
) -> Result<http::HeaderMap, Leave> {
    let mut map = http::HeaderMap::new();
    for name in names {
        for h in req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name.as_str()))
        {
            // httparse takes no byte that HeaderValue refuses; should one come, the full
            // proxy decides.
            let value = http::HeaderValue::from_bytes(h.value).map_err(|_| Leave)?;
            map.append(name.clone(), value);
        }
    }
    Ok(map)
}

/// Gives the request's bytes back to the stream for the full proxy: `head`, split off the
/// connection's buffer already or empty, then what the buffer still holds.
fn leave(io: &mut Guarded, conn: &mut Conn, head: Bytes) -> Step {
    let bytes = if head.is_empty() {
        conn.down.split().freeze()
    } else {
        let mut all = BytesMut::with_capacity(head.len() + conn.down.len());
        all.extend_from_slice(&head);
        all.extend_from_slice(&conn.down);
        conn.down.clear();
        all.freeze()
    };
    io.unread(bytes);
    Step::Leave
}

/// Why sending or reading a head failed: `Stale` when the backend's connection was found
/// closed before any of the answer came (a pooled connection the backend had closed: tried
/// again on a new one), else the failure to answer.
enum Sent {
    Stale,
    Failed(Failure),
}

fn backend_closed() -> Failure {
    Failure::Backend {
        timeout: false,
        error: Error::explain(
            ErrorType::ConnectionClosed,
            "the backend closed the connection before answering",
        ),
    }
}

fn backend_error(e: std::io::Error) -> Failure {
    let timeout = e.kind() == std::io::ErrorKind::TimedOut;
    let etype = if timeout {
        ErrorType::ReadTimedout
    } else {
        ErrorType::ReadError
    };
    Failure::Backend {
        timeout,
        error: Error::because(etype, "talking to the backend", e),
    }
}

/// An I/O future bounded by `limit` (none: unbounded), a timeout read as `TimedOut`.
async fn within<T>(
    limit: Option<Duration>,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match limit {
        Some(limit) => match fast_timeout(limit, f).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            )),
        },
        None => f.await,
    }
}

/// Where a body's forwarding stopped short.
enum BodyEnd {
    Backend,
    Client,
}

/// Writes the edited head in `conn.answer` and the body after it: what came with the head in the
/// same write, the rest as it comes. `Ok(true)`: the backend's connection is at a clean end.
async fn forward_body(
    io: &mut Guarded,
    up: &mut Stream,
    conn: &mut Conn,
    framing: Framing,
    read_timeout: Option<Duration>,
    answered: &mut Answered,
) -> Result<bool, BodyEnd> {
    let mut chunked = Chunked::Size;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut first = true;
    loop {
        // What of `conn.up` is body, and whether the body ends there.
        let (take, done) = match framing {
            Framing::None => (0, true),
            Framing::Length(_) => {
                let n = left.min(conn.up.len() as u64);
                left -= n;
                (n as usize, left == 0)
            }
            Framing::Chunked => {
                let n = chunked.advance(&conn.up).map_err(|_| BodyEnd::Backend)?;
                (n, chunked == Chunked::Done)
            }
            Framing::UntilClose => (conn.up.len(), false),
        };
        if first {
            first = false;
            if framing == Framing::UntilClose {
                put_chunk(&mut conn.answer, &conn.up[..take]);
            } else {
                conn.answer.extend_from_slice(&conn.up[..take]);
            }
            io.write_all(&conn.answer)
                .await
                .map_err(|_| BodyEnd::Client)?;
        } else if take > 0 {
            if framing == Framing::UntilClose {
                conn.answer.clear();
                put_chunk(&mut conn.answer, &conn.up[..take]);
                io.write_all(&conn.answer)
                    .await
                    .map_err(|_| BodyEnd::Client)?;
            } else {
                io.write_all(&conn.up[..take])
                    .await
                    .map_err(|_| BodyEnd::Client)?;
            }
        }
        answered.body_bytes += take;
        conn.up.advance(take);
        if done {
            io.flush().await.map_err(|_| BodyEnd::Client)?;
            return Ok(true);
        }
        // What is left (the start of a chunk-size line) is read on from.
        if conn.up.capacity() - conn.up.len() < 4096 {
            conn.up.reserve(READ_SIZE);
        }
        match within(read_timeout, up.read_buf(&mut conn.up)).await {
            Ok(0) if framing == Framing::UntilClose => {
                io.write_all(b"0\r\n\r\n")
                    .await
                    .map_err(|_| BodyEnd::Client)?;
                io.flush().await.map_err(|_| BodyEnd::Client)?;
                return Ok(false);
            }
            Ok(0) | Err(_) => return Err(BodyEnd::Backend),
            Ok(_) => {}
        }
    }
}

/// One chunk of a body made chunked here (nothing for an empty piece: that would end it).
fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write;
    if data.is_empty() {
        return;
    }
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The gateway's failure answer as Pingora's `respond_error_with_body` writes it: its error
/// head (`Server`, `Cache-Control: private, no-store`), `Content-Length`, `Date` and
/// `Connection: close`, and `body` unless the request was a HEAD.
fn error_answer(code: u16, body: &str, head_request: bool, out: &mut Vec<u8>) {
    let mut resp = gen_error_response(code);
    if !body.is_empty() {
        let _ = resp.set_content_length(body.len());
    }
    let _ = resp.insert_header(DATE, get_cached_date());
    let _ = resp.insert_header(CONNECTION, "close");
    out.clear();
    head::status_line(out, resp.status);
    resp.header_to_h1_wire(out);
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(body.as_bytes());
    }
}
