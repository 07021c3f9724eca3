//! The HTTP proxy: Pingora's `ProxyHttp` phases, each a thin step over the route table and the
//! upstreams of the snapshot the request started with. The request's state is in `ctx`, the
//! answers the gateway makes itself in `answer`, and the upstream call (breaker, pick,
//! retries, outcome) in `upstream::call`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::HeaderValue;
use pingora::cache::key::HashBinary;
use pingora::cache::{
    CacheKey, CacheMeta, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

use crate::access_log::AccessLog;
use crate::limit::{Permit, RateKey};
use crate::metrics::RouteMetrics;
use crate::plugin::RequestInfo;
use crate::route::{normalize_host, path, Action, RequestView, RetryPolicy, Route};
use crate::runtime::Live;
use crate::snapshot::Listener;
use crate::upstream::call::{self, Call, Outcome};

mod answer;
mod ctx;
pub mod fast;
mod forwarding;
mod listener;
mod redirect;
mod upgrade;

use answer::{
    answer, answer_early, bad_request, gateway_failure, gateway_text, refuse, refused, Refused,
};
pub use ctx::RequestCtx;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_REAL_IP: &str = "x-real-ip";

// A call remembers the backends of every try a route may make.
const _: () = assert!(RetryPolicy::MAX_ATTEMPTS <= call::MAX_TRIES);

pub struct Gateway {
    shared: Arc<Live>,
    listener: Listener,
    access_log: Option<AccessLog>,
    /// This listener's id in each snapshot, for routes limited to some listeners.
    on: listener::ListenerSlot,
    forwarding: forwarding::ForwardingValues,
}

impl Gateway {
    pub fn new(shared: Arc<Live>, listener: Listener, access_log: Option<AccessLog>) -> Self {
        Gateway {
            on: listener::ListenerSlot::new(&listener.name),
            forwarding: forwarding::ForwardingValues::new(listener.addr.port()),
            shared,
            listener,
            access_log,
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

/// Applies the route's rate limit and cap on requests in flight: the permit a capped route's
/// request holds until it ends, or why it is turned away. `header` looks up a request field,
/// for a rate limit keyed by one.
fn admit<'h>(
    route: &Route,
    client: Option<IpAddr>,
    now: Instant,
    header: impl FnOnce(&http::HeaderName) -> Option<&'h [u8]>,
) -> std::result::Result<Option<Permit>, Refused> {
    if let Some(rate) = &route.rate_limit {
        let mut ip = [0u8; 16];
        let key: Option<&[u8]> = match &rate.key {
            RateKey::Route => None,
            RateKey::Header(name) => header(name),
            RateKey::ClientIp => client.map(|c| match c {
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
        if let Err(wait) = rate.limiter.check(key, now) {
            route.metrics.rate_limited.inc();
            return Err(Refused::Rate(wait));
        }
    }
    let Some(limit) = &route.concurrency else {
        return Ok(None);
    };
    match limit.try_acquire() {
        Some(permit) => Ok(Some(permit)),
        None => {
            route.metrics.concurrency_limited.inc();
            Err(Refused::Concurrency)
        }
    }
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

/// The route's timeout has passed: no try is left.
struct RouteTimedOut;

/// What is left of the route's `timeout` since the request started (`None`: it has none), for
/// the next try: asked before a backend is picked, so that a route out of time says so.
fn time_left(
    route: &Route,
    started: std::time::Instant,
) -> std::result::Result<Option<Duration>, RouteTimedOut> {
    match route.timeout.map(|t| t.saturating_sub(started.elapsed())) {
        Some(left) if left.is_zero() => Err(RouteTimedOut),
        left => Ok(left),
    }
}

/// Bounds a try's connect and reads by the route's `retry.per_try_timeout` and by `left`, what
/// is left of its `timeout` ([`time_left`]).
fn bound_try(route: &Route, left: Option<Duration>, o: &mut pingora::upstreams::peer::PeerOptions) {
    if let Some(t) = route.retry.per_try_timeout {
        o.read_timeout = Some(t);
    }
    if let Some(left) = left {
        o.read_timeout = Some(o.read_timeout.map_or(left, |t| t.min(left)));
        o.connection_timeout = Some(o.connection_timeout.map_or(left, |t| t.min(left)));
    }
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
        RequestCtx::new()
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
        let found = snapshot.routes.find_on(self.on.id(&snapshot), &view);
        let redirect_to = redirect::location(
            found.map(|id| snapshot.routes.get(id)),
            redirect::is_tls(session),
            view.host,
            host_raw,
            view.path,
            req.uri.query(),
        );
        if target.changed() {
            ctx.normalized_path = Some(target.path.into_owned());
            ctx.authority = target.authority.map(Box::from);
        }
        ctx.route = found;
        let route = found.map(|id| snapshot.routes.get(id));
        // A cache entry's background refresh is the gateway's own request: the client it
        // stands for was admitted already, so it takes neither a rate token nor a slot.
        ctx.subrequest = session.subrequest_ctx.is_some();
        let admitted = match route.filter(|_| !ctx.subrequest) {
            Some(r) => {
                let headers = &session.req_header().headers;
                admit(r, ctx.client, ctx.started, |n| {
                    headers.get(n).map(HeaderValue::as_bytes)
                })
            }
            None => Ok(None),
        };
        match admitted {
            Ok(permit) => ctx.permit = permit,
            Err(refused) => {
                let outcome = refuse(session, refused).await;
                ctx.snapshot = Some(snapshot);
                return outcome;
            }
        }
        if let (Some(to), Some(route)) = (redirect_to, route) {
            let outcome = match to {
                Ok(to) => redirect::answer(session, route, to).await.map(|()| true),
                Err(why) => bad_request(session, why).await,
            };
            ctx.snapshot = Some(snapshot);
            return outcome;
        }
        if let Some(plugin) = route.and_then(|r| r.plugin.as_ref()) {
            ctx.plugin = plugin.new_state();
            ctx.client_cert_sha256 = client_cert_sha256(session);
            let request = RequestInfo {
                normalized_path: ctx.normalized_path.as_deref(),
                client: ctx.client,
                subrequest: ctx.subrequest,
                client_cert_sha256: ctx.client_cert_sha256.as_ref(),
            };
            let answered = plugin
                .request_filter(session, &request, &mut ctx.plugin)
                .await;
            if !matches!(answered, Ok(false)) {
                ctx.snapshot = Some(snapshot);
                return answered;
            }
        }
        upgrade::on_request(session, route, ctx);
        let outcome = answer_early(session, route).await;
        ctx.snapshot = Some(snapshot);
        outcome
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upgrade::is_open(ctx) {
            return Ok(());
        }
        if let Some(chunk) = body {
            ctx.request_body_bytes += chunk.len() as u64;
            if let Some(limit) = ctx.route().and_then(|r| r.max_request_body) {
                if ctx.request_body_bytes > limit {
                    return Err(gateway_failure(413, "request body too large"));
                }
            }
        }
        if let Some((p, request, state)) = ctx.plugin() {
            p.request_body_filter(session, body, end_of_stream, &request, state)
                .await?;
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

    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        if let Some((p, request, state)) = ctx.plugin() {
            p.cache_miss(session, &request, state);
        }
        session.cache.cache_miss();
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        match ctx.plugin() {
            Some((p, request, state)) => {
                p.cache_hit_filter(session, meta, hit, is_fresh, &request, state)
                    .await
            }
            None => Ok(None),
        }
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let (p, _, state) = ctx.plugin()?;
        p.cache_vary_filter(meta, req, state)
    }

    /// The plugin decides; by default (Pingora's) stale is served only on an upstream error.
    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        if let Some((p, request, state)) = ctx.plugin() {
            if let Some(serve) = p.should_serve_stale(session, error, &request, state) {
                return serve;
            }
        }
        error.is_some_and(|e| e.esource() == &ErrorSource::Upstream)
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
        let left = time_left(route, ctx.started).map_err(|RouteTimedOut| {
            gateway_failure(504, "gateway timeout: the route's timeout passed")
        })?;
        let call = match &mut ctx.call {
            Some(call) => call,
            None => ctx
                .call
                .insert(upstream.begin().map_err(|r| refused(r, upstream))?),
        };
        let mut peer = call.pick(key).map_err(|r| refused(r, upstream))?;
        let o = &mut peer.options;
        bound_try(route, left, o);
        upgrade::on_peer(session, route, ctx, o);
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
        let retry = ctx.failed_to_connect();
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
            let retry = ctx.failed_on_backend();
            e.set_retry(retry);
        } else if safe {
            // Pingora's own rule: a pooled connection that failed had probably gone stale;
            // the same backend is tried again on a fresh one.
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        if upgrade::silenced(session) {
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
                Some(prev) if passes => HeaderValue::try_from(format!("{prev}, {peer}"))
                    .map_err(|e| Error::because(ErrorType::InternalError, "X-Forwarded-For", e))?,
                _ => crate::client_ip::ip_header_value(peer),
            };
            if !passes {
                upstream_request.remove_header(X_REAL_IP);
                upstream_request.remove_header(&http::header::FORWARDED);
            }
            upstream_request.insert_header(X_FORWARDED_FOR, xff)?;
        }
        self.forwarding_headers(session, upstream_request, ctx)?;
        crate::tls::client_cert_headers(session.digest(), upstream_request)?;
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
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            upgrade::on_switch(session, upstream_response, ctx)?;
        } else if upstream_response.status.is_informational() {
            return Ok(());
        } else {
            upgrade::on_final_answer(session, ctx);
        }
        ctx.upstream_time = ctx
            .call
            .as_ref()
            .and_then(Call::attempt_started)
            .map(|t| t.elapsed());
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
    /// A backend that did not answer a WebSocket handshake is logged like any backend timeout
    /// (the error is on the client's side only because the wait is held there).
    fn suppress_error_log(&self, session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        if upgrade::handshake_timed_out(session) {
            return false;
        }
        client_went_away(error) || crate::conn::client_body_timed_out(session, error)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            _ if upgrade::handshake_timed_out(session) => 504,
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
            let why = gateway_text(e).unwrap_or(answer::default_why(code));
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
        let backend = ctx.call.as_ref().and_then(Call::backend);
        if let Some(call) = ctx.call.take() {
            call.finish(call_outcome(ctx.upstream_status, e));
        }
        if let Some((p, request, state)) = ctx.plugin() {
            p.logging(session, &request, e, state);
        }
        let elapsed = ctx.started.elapsed();
        let route = ctx.route();
        let metrics = route.map_or(RouteMetrics::unmatched(), |r| &r.metrics);
        metrics.observe(
            status,
            upgrade::request_time(ctx, elapsed),
            ctx.upstream_time,
        );
        if let Some(log) = &self.access_log {
            let cache = route
                .and_then(|r| r.plugin.as_ref())
                .and_then(|p| p.cache_log(&ctx.plugin));
            log.record(
                session,
                status,
                elapsed,
                route.map(|r| &*r.name),
                backend,
                cache,
            );
        }
    }
}

impl Gateway {
    /// `X-Forwarded-Proto`, `X-Forwarded-Port` and `Forwarded`, by the trust rule of
    /// `X-Forwarded-For`.
    fn forwarding_headers(
        &self,
        session: &Session,
        upstream_request: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let Some(snapshot) = ctx.snapshot.as_ref() else {
            return Ok(());
        };
        let passes = client_ip(session).is_some_and(|p| snapshot.client_ip.passes_forwarded(p));
        forwarding::set_headers(
            session,
            upstream_request,
            passes,
            &snapshot.client_ip,
            &self.forwarding,
        )
    }
}

/// SHA-256 of the client certificate of the request's TLS connection, if it gave one.
fn client_cert_sha256(session: &Session) -> Option<[u8; 32]> {
    let hex = crate::tls::TlsInfo::of(session.digest())?
        .client
        .as_ref()?
        .fingerprint
        .as_bytes();
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *o = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// How an upstream call ended, from the backend's answer or the error the request failed with.
fn call_outcome(upstream_status: Option<u16>, e: Option<&Error>) -> Outcome {
    match (upstream_status, e) {
        // A backend that answered 5xx, or failed after the connection was made, counts against
        // it; a client that went away does not.
        (Some(s), _) if s >= 500 => Outcome::BackendFailed,
        (Some(_), _) | (None, None) => Outcome::Ok,
        (None, Some(e)) if e.esource() == &ErrorSource::Upstream => Outcome::BackendFailed,
        // A request that never got a backend also failed, from the breaker's view.
        (None, Some(e)) if e.esource() != &ErrorSource::Downstream => Outcome::Failed,
        (None, Some(_)) => Outcome::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_text_is_the_context_of_the_gateways_own_failure() {
        let why = "gateway timeout: the route's timeout passed";
        assert_eq!(gateway_text(&gateway_failure(504, why)), Some(why));
        // Context added on the way out, for the log, wraps it.
        let e = gateway_failure(503, "circuit open")
            .more_context("upstream u")
            .more_context("Peer: 127.0.0.1:1");
        assert_eq!(gateway_text(&e), Some("circuit open"));
        // A status caused by something else explains that cause to the log, not the client.
        let e = Error::because(
            ErrorType::HTTPStatus(400),
            "rewritten path is not a valid URI",
            std::io::Error::other("bad"),
        );
        assert_eq!(gateway_text(&e), None);
        // Pingora's own failures carry no text for the client either.
        let e = Error::explain(ErrorType::ConnectRefused, "Fail to connect")
            .more_context("Peer: 127.0.0.1:1");
        assert_eq!(gateway_text(&e), None);
    }

    #[test]
    fn the_call_outcome_follows_the_backends_answer_else_the_errors_source() {
        let up = Error::new_up(ErrorType::ConnectionClosed);
        let down = Error::new_down(ErrorType::ConnectionClosed);
        let internal = gateway_failure(502, "no backend could be reached");
        let cases = [
            (Some(200), None, Outcome::Ok),
            (Some(503), None, Outcome::BackendFailed),
            // The answer decides, whatever happened after it.
            (Some(404), Some(&*up), Outcome::Ok),
            (Some(500), Some(&*down), Outcome::BackendFailed),
            (None, Some(&*up), Outcome::BackendFailed),
            // No backend to blame: the breaker still counts it.
            (None, Some(&*internal), Outcome::Failed),
            // The client went away: nobody's failure.
            (None, Some(&*down), Outcome::Ok),
            (None, None, Outcome::Ok),
        ];
        for (status, e, outcome) in cases {
            assert_eq!(call_outcome(status, e), outcome, "{status:?} {e:?}");
        }
    }
}
