//! The HTTP proxy: Pingora's `ProxyHttp` phases, each a thin step over the route table and the
//! upstreams of the snapshot the request started with.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::HeaderValue;
use pingora::cache::{CacheKey, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

use crate::access_log::AccessLog;
use crate::limit::{retry_after_secs, Permit};
use crate::live::Shared;
use crate::metrics::{RouteMetrics, METRICS};
use crate::plugin::{PluginState, RequestInfo, RoutePlugin};
use crate::route::{
    normalize_host, path, Action, RateKey, RequestView, Respond, RetryPolicy, Route,
};
use crate::snapshot::{Listener, Snapshot};
use crate::upstream::breaker::Admit;
use crate::upstream::state::InFlight;
use crate::upstream::Upstream;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_REAL_IP: &str = "x-real-ip";

const MAX_ATTEMPTS: usize = RetryPolicy::MAX_ATTEMPTS as usize;

pub struct Gateway {
    shared: Shared,
    listener: Listener,
    access_log: Option<AccessLog>,
}

impl Gateway {
    pub fn new(shared: Shared, listener: Listener, access_log: Option<AccessLog>) -> Self {
        Gateway {
            shared,
            listener,
            access_log,
        }
    }
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    snapshot: Option<Arc<Snapshot>>,
    route: Option<u32>,
    /// The normalized path (`route::path`), when the upstream must get another target than
    /// the one the client sent.
    normalized_path: Option<String>,
    /// The authority of an absolute-form target: the upstream's `Host`.
    authority: Option<Box<str>>,
    /// The client's address: the peer, or from X-Forwarded-For behind trusted proxies.
    client: Option<IpAddr>,
    /// The route's slot for this request while it is in flight, if the route caps that.
    permit: Option<Permit>,
    /// The backend of the current attempt.
    backend: Option<SocketAddr>,
    /// Counts the current attempt in flight on its backend until it is replaced or dropped.
    attempt: Option<InFlight>,
    /// The status the backend answered, as opposed to one the gateway made up.
    upstream_status: Option<u16>,
    /// Backends this request failed on, `failed` of them: a retry avoids them. (A retry after
    /// a stale pooled connection goes back to the same backend.)
    unreachable: [SocketAddr; MAX_ATTEMPTS],
    failed: usize,
    /// Tries started, the first included.
    tries: u8,
    /// What the upstream's circuit breaker said to this request, if it has one.
    admitted: Option<Admit>,
    upstream_started: Option<Instant>,
    upstream_time: Option<Duration>,
    request_body_bytes: u64,
    /// Bytes of a capped 5xx body that may still be forwarded.
    error_body_room: Option<u64>,
    /// Why the gateway itself failed the request, for the error body.
    failure: Option<&'static str>,
    /// What the route's plugin keeps about this request.
    plugin: PluginState,
}

impl RequestCtx {
    fn route(&self) -> Option<&Route> {
        Some(self.snapshot.as_ref()?.routes.get(self.route?))
    }

    /// The route's plugin, what it is told about the request, and its state for it: borrowed
    /// apart, so that calling a hook copies nothing.
    fn plugin(&mut self) -> Option<(&RoutePlugin, RequestInfo<'_>, &mut PluginState)> {
        let plugin = self
            .snapshot
            .as_ref()?
            .routes
            .get(self.route?)
            .plugin
            .as_ref()?;
        let request = RequestInfo {
            normalized_path: self.normalized_path.as_deref(),
            client: self.client,
        };
        Some((plugin, request, &mut self.plugin))
    }

    fn unreachable(&self) -> &[SocketAddr] {
        &self.unreachable[..self.failed]
    }

    fn upstream(&self) -> Option<&Arc<Upstream>> {
        match &self.route()?.action {
            Action::Proxy(u) => Some(u),
            Action::Respond(_) | Action::Plugin => None,
        }
    }

    /// Whether the route's attempts and the upstream's retry budget allow another try.
    fn may_try_again(&self) -> bool {
        let (Some(route), Some(u)) = (self.route(), self.upstream()) else {
            return false;
        };
        self.tries < route.retry.attempts && u.policy.retry_budget.withdraw()
    }

    /// The current try failed on its backend: a retry avoids it, and it counts against the
    /// backend's outlier detection.
    fn failed_on_backend(&mut self) {
        if let (Some(addr), Some(slot)) = (self.backend, self.unreachable.get_mut(self.failed)) {
            *slot = addr;
            self.failed += 1;
        }
        self.end_attempt(true);
    }

    /// Ends the current attempt: it leaves the in-flight count, and its outcome counts toward
    /// the backend's outlier detection.
    fn end_attempt(&mut self, failed: bool) {
        if let Some(attempt) = self.attempt.take() {
            if let Some(u) = self.upstream() {
                u.record(attempt.state(), failed);
            }
        }
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr()?.as_inet().map(|a| a.ip())
}

fn client_went_away(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

/// Writes a short plain-text answer from the gateway itself.
async fn answer(session: &mut Session, status: u16, body: &'static str) -> Result<()> {
    write_answer(session, plain_head(status, body)?, body).await
}

/// The head of a plain-text answer from the gateway itself.
fn plain_head(status: u16, body: &str) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(CONTENT_LENGTH, body.len())?;
    Ok(resp)
}

async fn write_answer(
    session: &mut Session,
    resp: ResponseHeader,
    body: &'static str,
) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
            .await?;
    }
    Ok(())
}

async fn respond(session: &mut Session, r: &Respond, route: &Route) -> Result<()> {
    let mut resp = ResponseHeader::build(r.status, Some(r.headers.len() + 2))?;
    for (k, v) in r.headers.iter() {
        resp.insert_header(k.clone(), v.clone())?;
    }
    resp.insert_header(CONTENT_LENGTH, r.body.len())?;
    route.response_headers.apply_response(&mut resp)?;
    let head_only = session.req_header().method == http::Method::HEAD || r.body.is_empty();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(r.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// Why a route's limits turned a request away.
enum Refused {
    /// Over the rate: try again after this long.
    Rate(Duration),
    Concurrency,
}

/// Applies the route's rate limit and cap on requests in flight; a request let through holds
/// its slot in `ctx` until it ends.
fn admit(route: &Route, ctx: &mut RequestCtx, headers: &http::HeaderMap) -> Option<Refused> {
    if let Some(rate) = &route.rate_limit {
        let mut ip = [0u8; 16];
        let key: Option<&[u8]> = match &rate.key {
            RateKey::Route => None,
            RateKey::Header(name) => headers.get(name).map(HeaderValue::as_bytes),
            RateKey::ClientIp => ctx.client.map(|c| match c {
                IpAddr::V4(v4) => {
                    ip[..4].copy_from_slice(&v4.octets());
                    &ip[..4]
                }
                IpAddr::V6(v6) => {
                    ip = v6.octets();
                    &ip[..]
                }
            }),
        };
        if let Err(wait) = rate.limiter.check(key, ctx.started) {
            route.metrics.rate_limited.inc();
            return Some(Refused::Rate(wait));
        }
    }
    if let Some(limit) = &route.concurrency {
        match limit.try_acquire() {
            Some(p) => ctx.permit = Some(p),
            None => {
                route.metrics.concurrency_limited.inc();
                return Some(Refused::Concurrency);
            }
        }
    }
    None
}

async fn refuse(session: &mut Session, refused: Refused) -> Result<bool> {
    let (status, body, retry_after) = match refused {
        Refused::Rate(wait) => (429, "too many requests\n", Some(retry_after_secs(wait))),
        Refused::Concurrency => (503, "too many requests in flight\n", None),
    };
    let mut resp = plain_head(status, body)?;
    if let Some(secs) = retry_after {
        resp.insert_header(http::header::RETRY_AFTER, secs)?;
    }
    write_answer(session, resp, body).await?;
    Ok(true)
}

/// What `request_filter` decides once the route is known: answer from the gateway (no route,
/// a `respond` route, a body over the limit), returning `true`, or go on to the upstream.
async fn answer_early(session: &mut Session, route: Option<&Route>) -> Result<bool> {
    let Some(route) = route else {
        answer(session, 404, "no route matches this request\n").await?;
        return Ok(true);
    };
    if let Action::Respond(r) = &route.action {
        respond(session, r, route).await?;
        return Ok(true);
    }
    if let Some(limit) = route.max_request_body {
        let declared = session
            .req_header()
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            // The body is left unread, so the connection cannot carry another request.
            session.set_keepalive(None);
            answer(session, 413, "request body too large\n").await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// A 400 from the gateway; the connection is closed, since a client that sent a malformed
/// request may frame the next one differently from us.
async fn bad_request(session: &mut Session, why: &'static str) -> Result<bool> {
    METRICS.bad_requests.inc();
    session.set_keepalive(None);
    answer(session, 400, why).await?;
    Ok(true)
}

/// The one `Host` header, if any. An HTTP/1.1 request must carry exactly one (RFC 9112 §3.2);
/// HTTP/1.0 may carry none, and HTTP/2 carries `:authority` in the URI instead.
fn host_header(req: &RequestHeader) -> std::result::Result<Option<&[u8]>, &'static str> {
    let mut hosts = req.headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err("bad request: more than one Host header\n"),
        (Some(h), None) => Ok(Some(h.as_bytes())),
        (None, _) if req.version == http::Version::HTTP_11 => {
            Err("bad request: an HTTP/1.1 request needs a Host header\n")
        }
        (None, _) => Ok(None),
    }
}

/// Whether every `Content-Length` header holds the same value (none or one trivially do).
fn content_lengths_agree(req: &RequestHeader) -> bool {
    let mut values = req.headers.get_all(CONTENT_LENGTH).iter();
    let first = values.next();
    values.all(|v| Some(v) == first)
}

/// Identical repeated `Content-Length` headers are one length (RFC 9110 §8.6): the upstream
/// gets a single header, so that no hop after us can read them differently.
fn one_content_length(req: &mut RequestHeader) -> Result<()> {
    let mut values = req.headers.get_all(CONTENT_LENGTH).iter();
    if let (Some(first), Some(_)) = (values.next(), values.next()) {
        let first = first.clone();
        req.insert_header(CONTENT_LENGTH, first)?;
    }
    Ok(())
}

/// Header count and total size, checked against the listener's limits.
fn headers_too_large(req: &RequestHeader, l: &Listener) -> bool {
    if req.headers.len() > l.max_request_headers {
        return true;
    }
    let bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    bytes as u64 > l.max_request_header_bytes
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default installs a (disabled) compression module whose
    /// per-request context costs allocations on every request for nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            snapshot: None,
            route: None,
            normalized_path: None,
            authority: None,
            client: None,
            permit: None,
            backend: None,
            attempt: None,
            upstream_status: None,
            unreachable: [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_ATTEMPTS],
            failed: 0,
            tries: 0,
            admitted: None,
            upstream_started: None,
            upstream_time: None,
            request_body_bytes: 0,
            error_body_room: None,
            failure: None,
            plugin: PluginState::None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        crate::conn::head_received(session);
        if headers_too_large(session.req_header(), &self.listener) {
            session.set_keepalive(None);
            answer(session, 431, "request header fields too large\n").await?;
            return Ok(true);
        }
        let snapshot = self.shared.load_full();
        let req = session.req_header();
        let target = match path::normalize(req.raw_path(), &self.listener.path) {
            Ok(t) => t,
            Err(refusal) => return bad_request(session, refusal.reason()).await,
        };
        if !content_lengths_agree(req) {
            return bad_request(session, "bad request: conflicting Content-Length headers\n").await;
        }
        let host_raw = match (target.authority, host_header(req)) {
            (_, Err(why)) => return bad_request(session, why).await,
            // An absolute-form target's authority stands for the host (RFC 9112 §3.2.2).
            (Some(a), _) => Some(a.as_bytes()),
            (None, Ok(Some(h))) => Some(h),
            (None, Ok(None)) => req.uri.authority().map(|a| a.as_str().as_bytes()),
        };
        let host = host_raw.and_then(normalize_host);
        let view = RequestView {
            method: &req.method,
            host: host.as_deref(),
            path: &target.path,
            headers: &req.headers,
        };
        ctx.client = client_ip(session).map(|peer| snapshot.client_ip.resolve(peer, &req.headers));
        let found = snapshot.routes.find(&view);
        if target.changed() {
            ctx.normalized_path = Some(target.path.into_owned());
            ctx.authority = target.authority.map(Box::from);
        }
        ctx.route = found;
        let route = found.map(|id| snapshot.routes.get(id));
        if let Some(refused) = route.and_then(|r| admit(r, ctx, &session.req_header().headers)) {
            let outcome = refuse(session, refused).await;
            ctx.snapshot = Some(snapshot);
            return outcome;
        }
        if let Some(plugin) = route.and_then(|r| r.plugin.as_ref()) {
            ctx.plugin = plugin.new_state();
            let request = RequestInfo {
                normalized_path: ctx.normalized_path.as_deref(),
                client: ctx.client,
            };
            let answered = plugin
                .request_filter(session, &request, &mut ctx.plugin)
                .await;
            if !matches!(answered, Ok(false)) {
                ctx.snapshot = Some(snapshot);
                return answered;
            }
        }
        let outcome = answer_early(session, route).await;
        ctx.snapshot = Some(snapshot);
        outcome
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(chunk) = body else { return Ok(()) };
        ctx.request_body_bytes += chunk.len() as u64;
        if let Some(limit) = ctx.route().and_then(|r| r.max_request_body) {
            if ctx.request_body_bytes > limit {
                ctx.failure = Some("request body too large");
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over max_request_body",
                );
            }
        }
        Ok(())
    }

    /// Caching stays off unless the route's plugin enables it here.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        match ctx.plugin() {
            Some((p, request, state)) => p.request_cache_filter(session, &request, state),
            None => Ok(()),
        }
    }

    /// Called only for a request whose cache a plugin enabled: that plugin makes the key.
    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        if let Some((p, request, state)) = ctx.plugin() {
            if let Some(key) = p.cache_key_callback(session, &request, state) {
                return key;
            }
        }
        // Pingora's default panics; a cache no plugin keys is a bug, failed as one request.
        Error::e_explain(
            ErrorType::InternalError,
            "cache enabled without a plugin cache key",
        )
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        if let Some((p, request, state)) = ctx.plugin() {
            if let Some(cacheable) = p.response_cache_filter(session, &request, resp, state) {
                return cacheable;
            }
        }
        // Pingora's default.
        Ok(RespCacheable::Uncacheable(NoCacheReason::Custom("default")))
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let snapshot = ctx
            .snapshot
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no snapshot"))?;
        let Some(route) = ctx.route.map(|id| snapshot.routes.get(id)) else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let Action::Proxy(upstream) = &route.action else {
            return Error::e_explain(
                ErrorType::InternalError,
                "upstream_peer without a proxy route",
            );
        };
        let req = session.req_header();
        let mut ip_buf = [0u8; 16];
        let key = upstream.policy.hash_key.as_ref().and_then(|k| {
            k.extract(
                ctx.client,
                ctx.normalized_path.as_deref().unwrap_or(req.uri.path()),
                req.uri.query(),
                &req.headers,
                &mut ip_buf,
            )
        });
        // What is left of the route's time, if it has a bound.
        let left = route
            .timeout
            .map(|t| t.saturating_sub(ctx.started.elapsed()));
        if left.is_some_and(|l| l.is_zero()) {
            ctx.failure = Some("gateway timeout: the route's timeout passed");
            return Err(Error::explain(ErrorType::HTTPStatus(504), "route timeout"));
        }
        if ctx.tries == 0 {
            if let Some(breaker) = &upstream.policy.breaker {
                let admit = breaker.admit();
                if admit == Admit::No {
                    ctx.failure = Some("circuit open");
                    return Err(Error::explain(ErrorType::HTTPStatus(503), "circuit open")
                        .more_context(format!("upstream {}", upstream.name)));
                }
                ctx.admitted = Some(admit);
            }
        }
        let avoid = ctx.unreachable();
        let Some(picked) = upstream.select(key, avoid) else {
            let (code, why) = if avoid.is_empty() {
                (503, "no backend available")
            } else {
                (502, "no backend could be reached")
            };
            ctx.failure = Some(why);
            return Err(Error::explain(ErrorType::HTTPStatus(code), why)
                .more_context(format!("upstream {}", upstream.name)));
        };
        if ctx.tries == 0 {
            upstream.policy.retry_budget.deposit();
        }
        ctx.tries += 1;
        ctx.backend = Some(picked.attempt.state().addr);
        ctx.attempt = Some(picked.attempt);
        ctx.upstream_started = Some(Instant::now());
        let mut peer = picked.peer;
        let o = &mut peer.options;
        if let Some(t) = route.retry.per_try_timeout {
            o.read_timeout = Some(t);
        }
        if let Some(left) = left {
            o.read_timeout = Some(o.read_timeout.map_or(left, |t| t.min(left)));
            o.connection_timeout = Some(o.connection_timeout.map_or(left, |t| t.min(left)));
        }
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent yet, so any method may go to another backend.
        let retry = ctx.may_try_again();
        ctx.failed_on_backend();
        e.set_retry(retry);
        e
    }

    /// A failure after the connection was made. The request may have reached the backend, so
    /// it is tried again only where the route allows it, for an idempotent method whose body
    /// is still in the retry buffer, and before any of the answer went to the client.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let safe = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        let after_send = ctx.route().is_some_and(|r| r.retry.after_send);
        if safe && after_send && e.esource() == &ErrorSource::Upstream {
            let retry = ctx.may_try_again();
            ctx.failed_on_backend();
            e.set_retry(retry);
        } else if safe {
            // Pingora's own rule: a pooled connection that failed had probably gone stale;
            // the same backend is tried again on a fresh one.
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = ctx.route() else {
            return Ok(());
        };
        let uri = &session.req_header().uri;
        let path = ctx.normalized_path.as_deref().unwrap_or(uri.path());
        let new = match &route.rewrite {
            Some(rw) => rw.apply(path, uri.query()),
            None => None,
        }
        .or_else(|| {
            ctx.normalized_path.as_ref().map(|p| match uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p.clone(),
            })
        });
        if let Some(new) = new {
            let uri = http::Uri::try_from(new).map_err(|e| {
                Error::because(
                    ErrorType::HTTPStatus(400),
                    "rewritten path is not a valid URI",
                    e,
                )
            })?;
            upstream_request.set_uri(uri);
        }
        if let Some(authority) = &ctx.authority {
            upstream_request.insert_header(HOST, &**authority)?;
        }
        one_content_length(upstream_request)?;
        if let Some(peer) = client_ip(session) {
            let passes = ctx
                .snapshot
                .as_ref()
                .is_some_and(|s| s.client_ip.passes_forwarded(peer));
            let prev = upstream_request
                .headers
                .get(X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok());
            let xff = match prev {
                Some(prev) if passes => format!("{prev}, {peer}"),
                _ => peer.to_string(),
            };
            if !passes {
                upstream_request.remove_header(X_REAL_IP);
                upstream_request.remove_header(&http::header::FORWARDED);
            }
            upstream_request.insert_header(X_FORWARDED_FOR, xff)?;
        }
        route.request_headers.apply_request(upstream_request)?;
        if let Some((p, request, state)) = ctx.plugin() {
            p.upstream_request_filter(session, &request, upstream_request, state)
                .await?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status.is_informational() {
            return Ok(());
        }
        ctx.upstream_time = ctx.upstream_started.map(|t| t.elapsed());
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        let Some(route) = ctx.route() else {
            return Ok(());
        };
        let mut room = None;
        if upstream_response.status.is_server_error() {
            if let Some(cap) = route.max_error_body {
                let declared = upstream_response
                    .headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if declared.is_some_and(|n| n > cap) {
                    upstream_response.insert_header(CONTENT_LENGTH, cap)?;
                }
                room = Some(cap);
            }
        }
        route.response_headers.apply_response(upstream_response)?;
        ctx.error_body_room = room;
        if let Some((p, request, state)) = ctx.plugin() {
            p.upstream_response_filter(session, &request, upstream_response, state)
                .await?;
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let (Some(room), Some(chunk)) = (ctx.error_body_room.as_mut(), body.as_mut()) {
            // Past the cap, chunks are dropped as they arrive: nothing accumulates.
            let keep = (chunk.len() as u64).min(*room) as usize;
            *room -= keep as u64;
            if keep < chunk.len() {
                *body = (keep > 0).then(|| chunk.slice(..keep));
            }
        }
        if let Some((p, request, state)) = ctx.plugin() {
            p.upstream_response_body_filter(session, &request, body, end_of_stream, state)?;
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        match ctx.plugin() {
            Some((p, request, state)) => {
                p.response_filter(session, &request, response, state).await
            }
            None => Ok(()),
        }
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some((p, request, state)) = ctx.plugin() {
            p.response_body_filter(session, &request, body, end_of_stream, state)?;
        }
        Ok(None)
    }

    /// A client closing its connection early is routine (a browser navigating away, a load
    /// generator stopping): it is counted as 499, not logged as an error.
    /// A body timeout is counted and logged (rate-limited) with the other closed connections.
    fn suppress_error_log(&self, session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        client_went_away(error) || crate::conn::client_body_timed_out(session, error)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // The client stalled in its body past client_body_timeout, as nginx says.
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            let why = ctx.failure.unwrap_or(match code {
                502 => "bad gateway: the backend failed",
                504 => "gateway timeout: the backend did not answer in time",
                _ => "",
            });
            let body = match ctx.route().map(|r| &r.action) {
                Some(Action::Proxy(u)) if code >= 500 => format!("{why}: upstream {}\n", u.name),
                _ if why.is_empty() => String::new(),
                _ => format!("{why}\n"),
            };
            let _ = session
                .respond_error_with_body(code, Bytes::from(body))
                .await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = match (session.response_written(), e) {
            (Some(r), _) => r.status.as_u16(),
            // nginx's code for a client that went away before its answer.
            (None, Some(e)) if client_went_away(e) => 499,
            (None, Some(_)) => 502,
            (None, None) => 0,
        };
        // A backend that answered 5xx, or failed after the connection was made, counts against
        // it; a client that went away does not.
        let failed = match (ctx.upstream_status, e) {
            (Some(s), _) => s >= 500,
            (None, Some(e)) => e.esource() == &ErrorSource::Upstream,
            (None, None) => false,
        };
        ctx.end_attempt(failed);
        if let (Some(admitted), Some(u)) = (ctx.admitted, ctx.upstream()) {
            if let Some(breaker) = &u.policy.breaker {
                // A request that never got a backend also failed, from the breaker's view.
                let failed = failed
                    || (ctx.upstream_status.is_none()
                        && e.is_some_and(|e| e.esource() != &ErrorSource::Downstream));
                if breaker.record(admitted, failed) {
                    log::warn!("upstream {}: circuit opened", u.name);
                }
            }
        }
        if let Some((p, request, state)) = ctx.plugin() {
            p.logging(session, &request, e, state);
        }
        let elapsed = ctx.started.elapsed();
        let route = ctx.route();
        let metrics = route.map_or(RouteMetrics::unmatched(), |r| &r.metrics);
        metrics.observe(status, elapsed, ctx.upstream_time);
        if let Some(log) = &self.access_log {
            log.record(
                session,
                status,
                elapsed,
                route.map(|r| &*r.name),
                ctx.backend,
            );
        }
    }
}
