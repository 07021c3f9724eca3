//! WebSocket upgrades in the proxy's phases: which requests become tunnels, the backend's `101`
//! (or one nobody asked for), and the tunnel's metrics. The tunnel's bytes and its idle timeout
//! are the connection's (`conn::tunnel`); nothing here runs per byte.
//!
//! Only a WebSocket handshake is tunnelled (RFC 6455 §4.1: GET, HTTP/1.1, `Upgrade: websocket`,
//! `Connection: upgrade`), on a proxy route without a plugin whose `upgrades.allow` is on:
//! Pingora's upstream request policy forwards no other upgrade, and an `h2c` upgrade in
//! particular would move every later request of the connection past routing. Any other request
//! with an `Upgrade` goes on as a plain request without it, which RFC 9110 §7.8 allows a server
//! to do. HTTP/2 has no Upgrade (RFC 8441's extended CONNECT is not supported).

use std::time::{Duration, Instant};

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Method, StatusCode, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::upstreams::peer::PeerOptions;

use super::answer::gateway_failure;
use super::RequestCtx;
use crate::conn::tunnel::{self, TunnelConn};
use crate::route::upgrade::TunnelMetrics;
use crate::route::{Action, Route};

/// Where a request is with respect to an upgrade.
#[derive(Debug, Default)]
pub(super) enum Tunnel {
    /// No upgrade asked for (or it was refused by the route and taken out).
    #[default]
    None,
    /// A WebSocket handshake the route lets through, sent or about to be.
    Requested,
    /// The backend switched protocols: the tunnel is open until the request ends.
    Open(OpenTunnel),
}

/// An open tunnel's place in its route's metrics, given back when the request's state goes
/// (at the end of the proxy's phases, or with them when the serve loop drops a stuck tunnel).
#[derive(Debug)]
pub(super) struct OpenTunnel {
    metrics: TunnelMetrics,
    /// The `101`, where the request's own time ends and the tunnel's begins.
    switched: Instant,
    conn: Option<TunnelConn>,
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.metrics.open.dec();
        self.metrics
            .duration
            .observe(self.switched.elapsed().as_secs_f64());
        if self.conn.as_ref().is_some_and(TunnelConn::idle_closed) {
            self.metrics.idle_closed.inc();
        }
    }
}

/// Whether `req` is a WebSocket handshake (RFC 6455 §4.1), the one upgrade that is tunnelled.
fn is_websocket_handshake(req: &RequestHeader) -> bool {
    req.version == Version::HTTP_11
        && req.method == Method::GET
        && req
            .headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && req.headers.get_all(CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// In `request_filter`, once the route is known: a WebSocket handshake the route lets through
/// is marked for the later phases; from any other request an `Upgrade` is taken out (with its
/// `upgrade` token in `Connection`), so that neither side of the proxy treats it as one and a
/// `101` to it is refused.
pub(super) fn on_request(session: &mut Session, route: Option<&Route>, ctx: &mut RequestCtx) {
    let req = session.req_header();
    if !req.headers.contains_key(UPGRADE) {
        return;
    }
    let tunnels = route.is_some_and(|r| {
        r.upgrades.allow && r.plugin.is_none() && matches!(r.action, Action::Proxy(_))
    });
    if tunnels && is_websocket_handshake(req) {
        ctx.tunnel = Tunnel::Requested;
        return;
    }
    strip_upgrade(session.req_header_mut());
}

/// Takes `Upgrade` out of a request, with the `upgrade` token of its `Connection`.
fn strip_upgrade(req: &mut RequestHeader) {
    let kept: Vec<Vec<u8>> = req
        .headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"upgrade"))
        .map(<[u8]>::to_vec)
        .collect();
    req.remove_header(&UPGRADE);
    req.remove_header(&CONNECTION);
    if !kept.is_empty() {
        // Tokens taken from a valid header value, joined by ", ": still a valid value.
        if let Ok(v) = HeaderValue::from_bytes(&kept.join(&b", "[..])) {
            let _ = req.insert_header(CONNECTION, v);
        }
    }
}

/// In `upstream_peer`, for a handshake: the read timeout the request would have had (the
/// upstream's, the try's or what is left of the route's timeout) bounds the wait for the
/// `101` instead, held by the connection; on the peer it would go on cutting a quiet backend
/// after the switch. Without one, the idle timeout bounds the wait.
pub(super) fn on_peer(session: &Session, route: &Route, ctx: &RequestCtx, o: &mut PeerOptions) {
    if matches!(ctx.tunnel, Tunnel::Requested) {
        let wait = o.read_timeout.take().unwrap_or(route.upgrades.idle_timeout);
        tunnel::upgrade_requested(session, wait);
    }
}

/// The failure text of a `101` to a request that asked for no upgrade.
pub(super) const UNASKED_SWITCH: &str =
    "bad gateway: the backend switched protocols on a request that asked for no upgrade";

/// In `upstream_response_filter`, for a `101`: the tunnel opens if the request asked for it;
/// a backend switching protocols on a request that did not is a 502 (the client would get
/// bytes of a protocol it never asked for).
pub(super) fn on_switch(
    session: &mut Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    debug_assert_eq!(resp.status, StatusCode::SWITCHING_PROTOCOLS);
    if !matches!(ctx.tunnel, Tunnel::Requested) {
        return Err(gateway_failure(502, UNASKED_SWITCH));
    }
    let Some(route) = ctx.route() else {
        return Err(gateway_failure(
            502,
            "bad gateway: an upgrade without a route",
        ));
    };
    let metrics = route.upgrades.metrics.clone();
    let idle = route.upgrades.idle_timeout;
    let conn = tunnel::switched(session, idle);
    metrics.open.inc();
    ctx.tunnel = Tunnel::Open(OpenTunnel {
        metrics,
        switched: Instant::now(),
        conn,
    });
    Ok(())
}

/// In `upstream_response_filter`, for a final answer other than `101`: a handshake the backend
/// refused is a plain request from here on.
pub(super) fn on_final_answer(session: &Session, ctx: &mut RequestCtx) {
    if matches!(ctx.tunnel, Tunnel::Requested) {
        tunnel::upgrade_refused(session);
        ctx.tunnel = Tunnel::None;
    }
}

/// Whether the request is an open tunnel: its bytes are not a request body, so the route's
/// body limit does not apply to them.
pub(super) fn is_open(ctx: &RequestCtx) -> bool {
    matches!(ctx.tunnel, Tunnel::Open(_))
}

/// For `fail_to_proxy`: a backend that did not answer the handshake within the request's read
/// timeout gets the same 504 a plain request would.
pub(super) fn handshake_timed_out(session: &Session) -> bool {
    tunnel::handshake_timed_out(session)
}

/// For `error_while_proxy`: a tunnel or handshake ended by its silence allowance is the
/// gateway's decision, not a failure to try again.
pub(super) fn silenced(session: &Session) -> bool {
    tunnel::silenced(session)
}

/// The request's own time for the duration histogram: up to the `101` for a tunnel, whose life
/// (in `zkgate_upgraded_connection_duration_seconds`) would swamp the latency buckets.
pub(super) fn request_time(ctx: &RequestCtx, total: Duration) -> Duration {
    match &ctx.tunnel {
        Tunnel::Open(t) => t.switched.saturating_duration_since(ctx.started),
        _ => total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/chat", None).expect("request");
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn only_a_get_with_upgrade_websocket_and_connection_upgrade_on_http11_is_a_handshake() {
        let ws = [("upgrade", "websocket"), ("connection", "Upgrade")];
        assert!(is_websocket_handshake(&req("GET", Version::HTTP_11, &ws)));
        // Tokens in any case, among others, in any of several Connection headers.
        assert!(is_websocket_handshake(&req(
            "GET",
            Version::HTTP_11,
            &[
                ("upgrade", "WebSocket"),
                ("connection", "keep-alive"),
                ("connection", "x-a, UPGRADE")
            ]
        )));
        assert!(!is_websocket_handshake(&req("POST", Version::HTTP_11, &ws)));
        assert!(!is_websocket_handshake(&req("GET", Version::HTTP_10, &ws)));
        assert!(!is_websocket_handshake(&req(
            "GET",
            Version::HTTP_11,
            &[("upgrade", "websocket")]
        )));
        assert!(!is_websocket_handshake(&req(
            "GET",
            Version::HTTP_11,
            &[("upgrade", "websocket"), ("connection", "upgraded")]
        )));
        assert!(!is_websocket_handshake(&req(
            "GET",
            Version::HTTP_11,
            &[
                ("upgrade", "h2c"),
                ("connection", "Upgrade, HTTP2-Settings")
            ]
        )));
    }

    #[test]
    fn a_refused_upgrade_loses_its_upgrade_header_and_connection_token_only() {
        let mut r = req(
            "GET",
            Version::HTTP_11,
            &[
                ("upgrade", "websocket"),
                ("connection", "keep-alive, Upgrade"),
                ("connection", "x-hop"),
                ("x-other", "stays"),
            ],
        );
        strip_upgrade(&mut r);
        assert!(r.headers.get(UPGRADE).is_none());
        let conn: Vec<_> = r.headers.get_all(CONNECTION).iter().collect();
        assert_eq!(conn, ["keep-alive, x-hop"]);
        assert_eq!(r.headers.get("x-other").unwrap(), "stays");

        let mut r = req(
            "GET",
            Version::HTTP_11,
            &[("upgrade", "h2c"), ("connection", "upgrade")],
        );
        strip_upgrade(&mut r);
        assert!(r.headers.get(UPGRADE).is_none());
        assert!(r.headers.get(CONNECTION).is_none());
    }
}
