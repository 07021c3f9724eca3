//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/upstreams` and `/config`, and
//! draining a backend by hand.
//!
//! The listener is usually on loopback, where any web page an operator opens can reach it, so
//! it refuses what only a browser sends (an `Origin` header, a form body) and takes writes only
//! with the configured bearer token (`admin.token`). Without a token, writes are refused and
//! reads stay open: the safe default that keeps `curl localhost:9901/metrics` working.

use std::sync::Arc;

use crate::section::AdminToken;
use async_trait::async_trait;
use http::header::{AUTHORIZATION, CONTENT_TYPE, ORIGIN, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::metrics;
use crate::plugin::cache;
use crate::route::Action;
use crate::runtime::Live;
use crate::upstream::state::DRAINED;

/// Why a request was turned away before it was served.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// A browser page (cross-origin or not): admin clients are scripts and `curl`.
    Origin,
    /// A body a page can post cross-origin without a CORS preflight.
    FormBody,
    /// A write while no `admin.token` is configured.
    NoTokenConfigured,
    /// The bearer token is missing or wrong.
    Unauthorized,
}

impl Refusal {
    fn reply(&self) -> Response<Vec<u8>> {
        let (status, error) = match self {
            Refusal::Origin => (
                StatusCode::FORBIDDEN,
                "admin requests with an Origin header (sent by web pages) are refused",
            ),
            Refusal::FormBody => (
                StatusCode::FORBIDDEN,
                "admin writes with a form content type are refused; send no body (application/json to /cache/purge)",
            ),
            Refusal::NoTokenConfigured => (
                StatusCode::FORBIDDEN,
                "admin writes are disabled: set admin.token in the config, then send Authorization: Bearer <token>",
            ),
            Refusal::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <admin.token>",
            ),
        };
        let mut resp = json_reply(status, json!({ "error": error }));
        if *self == Refusal::Unauthorized {
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"zkgate admin\""),
            );
        }
        resp
    }
}

/// Content types a page may post anywhere without a CORS preflight (the "simple" ones).
const FORM_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

fn is_form(req: &RequestHeader) -> bool {
    req.headers.get_all(CONTENT_TYPE).iter().any(|v| {
        let v = v.as_bytes();
        let media = v.split(|b| *b == b';').next().unwrap_or(v).trim_ascii();
        FORM_TYPES
            .iter()
            .any(|f| media.eq_ignore_ascii_case(f.as_bytes()))
    })
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case).
fn bearer(req: &RequestHeader) -> Option<&[u8]> {
    let v = req.headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = v.split_at(v.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// Whether `req` may go on; `write` for requests that change state, `guarded` for reads that
/// need the token when one is set.
fn admit(
    req: &RequestHeader,
    token: Option<&AdminToken>,
    write: bool,
    guarded: bool,
) -> Result<(), Refusal> {
    if req.headers.contains_key(ORIGIN) {
        return Err(Refusal::Origin);
    }
    if write && is_form(req) {
        return Err(Refusal::FormBody);
    }
    if !write && !guarded {
        return Ok(());
    }
    let Some(token) = token else {
        return if write {
            Err(Refusal::NoTokenConfigured)
        } else {
            Ok(())
        };
    };
    match bearer(req) {
        Some(presented) if token.verify(presented) => Ok(()),
        _ => Err(Refusal::Unauthorized),
    }
}

pub struct Admin {
    shared: Arc<Live>,
}

impl Admin {
    pub fn new(shared: Arc<Live>) -> Self {
        let snap = shared.load();
        if snap.admin_token.is_none() && !snap.settings.admin.ip().is_loopback() {
            log::warn!(
                "admin listener on {} without admin.token: /config and /upstreams are readable from the network (writes are refused)",
                snap.settings.admin
            );
        }
        drop(snap);
        Admin { shared }
    }

    fn upstreams(&self) -> serde_json::Value {
        let snap = self.shared.load();
        let list: Vec<_> = snap.upstreams.iter().map(|u| u.status()).collect();
        json!({ "upstreams": list })
    }

    /// Each route: the listeners it serves (`null` for all), what it does and, for a route with
    /// `max_in_flight`, its requests in flight. Match values are left out (a header condition
    /// may hold a credential); `/config` has them, redacted.
    fn routes(&self) -> serde_json::Value {
        let snap = self.shared.load();
        let list: Vec<_> = snap
            .routes
            .routes()
            .iter()
            .map(|r| {
                let names = r.listeners.names();
                let listeners =
                    (!names.is_empty()).then(|| names.iter().map(|n| &**n).collect::<Vec<_>>());
                let action = match &r.action {
                    Action::Proxy(u) => json!({ "upstream": &*u.name }),
                    Action::Respond(x) => json!({ "respond": x.status.as_u16() }),
                    Action::Redirect(x) => json!({ "redirect": x.status.as_u16() }),
                    Action::Plugin => json!({ "plugin": true }),
                };
                let mut route =
                    json!({ "name": &*r.name, "listeners": listeners, "action": action });
                // A capped route's occupancy, as HAProxy's stats give each proxy's `scur`
                // beside its `slim`: how near the cap it runs, and whether a request is stuck.
                if let Some(cap) = &r.concurrency {
                    route["max_in_flight"] = cap.max().into();
                    route["in_flight"] = cap.in_flight().into();
                }
                route
            })
            .collect();
        json!({ "generation": snap.generation, "routes": list })
    }

    /// `POST /upstreams/{name}/{addr}/drain` takes a backend out of rotation without removing
    /// it (its requests in flight finish; it keeps being health checked); `undrain` puts it
    /// back. The mark is kept across membership changes and reloads that keep the upstream.
    fn drain(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let ["upstreams", name, addr, action @ ("drain" | "undrain")] = parts[..] else {
            return (
                StatusCode::NOT_FOUND,
                json!({ "error": "POST /upstreams/NAME/ADDR/drain or /undrain" }),
            );
        };
        let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
            return (
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("`{addr}` is not an address like 10.0.0.5:8080") }),
            );
        };
        let snap = self.shared.load();
        let Some(upstream) = snap.upstream(name) else {
            return (
                StatusCode::NOT_FOUND,
                json!({ "error": format!("no upstream {name}") }),
            );
        };
        let Some(state) = upstream.state_of(&addr) else {
            return (
                StatusCode::NOT_FOUND,
                json!({ "error": format!("upstream {name} has no backend {addr}") }),
            );
        };
        let drained = action == "drain";
        if state.set(DRAINED, drained) {
            log::info!("admin: upstream {name} backend {addr} {action}ed");
        }
        (
            StatusCode::OK,
            json!({ "upstream": name, "backend": addr.to_string(), "drained": drained, "in_flight": state.in_flight() }),
        )
    }

    fn readiness(&self) -> (StatusCode, serde_json::Value) {
        let snap = self.shared.load();
        let missing = snap.upstreams_without_backends();
        let ready = missing.is_empty();
        let m = &crate::metrics::METRICS;
        // A ZooKeeper outage does not make the gateway unready: it serves the last known
        // backends, and pulling every replica out of rotation at once would turn a registry
        // outage into a traffic outage.
        let zookeeper = snap.settings.zookeeper.as_ref().map(|_| {
            json!({
                "connected": m.zk_connected.get() == 1,
                "sessions_lost": m.zk_sessions_lost.get(),
                "last_sync_unix": m.zk_last_sync.get(),
            })
        });
        let body = json!({
            "ready": ready,
            "config_generation": snap.generation,
            "upstreams_without_backends": missing,
            "zookeeper": zookeeper,
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, body)
    }
}

/// One word for why a backend is or is not picked; the first reason wins.
fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_reply(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let write = req.method == http::Method::POST;
        // Listed targets may carry identifiers in their queries: read with the token, as /config.
        let guarded = matches!(req.uri.path(), "/config" | "/cache/entries");
        let refused = admit(req, self.shared.load().admin_token.as_ref(), write, guarded);
        if let Err(why) = refused {
            log::debug!("admin: refused {} {}: {why:?}", req.method, req.uri.path());
            return why.reply();
        }
        if write && req.uri.path() == "/cache/purge" {
            return cache_purge(session).await;
        }
        if write {
            let (status, body) = self.drain(req.uri.path());
            return json_reply(status, body);
        }
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"GET, or POST /upstreams/NAME/ADDR/drain|undrain or /cache/purge\n".to_vec(),
            );
        }
        match req.uri.path() {
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(),
            ),
            "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let (status, body) = self.readiness();
                json_reply(status, body)
            }
            "/upstreams" => json_reply(StatusCode::OK, self.upstreams()),
            "/routes" => json_reply(StatusCode::OK, self.routes()),
            "/cache" => cache_reply(cache::admin::overview()),
            "/cache/entries" => cache_reply(cache::admin::entries(req.uri.query())),
            "/config" => {
                let snap = self.shared.load();
                json_reply(
                    StatusCode::OK,
                    json!({ "generation": snap.generation, "config": &snap.shown }),
                )
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                b"not found: try /metrics /healthz /readyz /upstreams /routes /config /cache\n"
                    .to_vec(),
            ),
        }
    }
}

/// The largest `POST /cache/purge` body read.
const PURGE_BODY_MAX: usize = 64 << 10;

fn cache_reply((status, body): cache::admin::Reply) -> Response<Vec<u8>> {
    json_reply(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}

/// `POST /cache/purge`: reads the JSON body (bounded), then purges.
async fn cache_purge(session: &mut ServerSession) -> Response<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= PURGE_BODY_MAX => {
                body.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => {
                return json_reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({ "error": "a purge body is at most 64 KiB" }),
                )
            }
            Ok(None) => break,
            Err(e) => {
                return json_reply(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("reading the body: {e}") }),
                )
            }
        }
    }
    cache_reply(cache::admin::purge(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const TOKEN: &str = "0123456789abcdef";

    #[test]
    fn writes_need_the_token_and_reads_are_open() {
        let token = AdminToken::new(TOKEN).unwrap();
        let t = Some(&token);
        let post = |h: &[(&str, &str)]| req("POST", "/upstreams/a/1.2.3.4:5/drain", h);
        assert_eq!(
            admit(&post(&[]), None, true, false),
            Err(Refusal::NoTokenConfigured)
        );
        assert_eq!(
            admit(&post(&[]), t, true, false),
            Err(Refusal::Unauthorized)
        );
        for wrong in [
            "Bearer 0123456789abcdeF",
            "Bearer",
            "Basic 0123456789abcdef",
            TOKEN,
        ] {
            let r = post(&[("authorization", wrong)]);
            assert_eq!(
                admit(&r, t, true, false),
                Err(Refusal::Unauthorized),
                "{wrong}"
            );
        }
        for right in ["Bearer 0123456789abcdef", "bearer  0123456789abcdef "] {
            let r = post(&[("authorization", right)]);
            assert_eq!(admit(&r, t, true, false), Ok(()), "{right}");
        }
        // Reads: open, but /config (guarded) needs the token once one is set.
        let get = req("GET", "/config", &[]);
        assert_eq!(admit(&get, None, false, true), Ok(()));
        assert_eq!(admit(&get, t, false, true), Err(Refusal::Unauthorized));
        assert_eq!(admit(&get, t, false, false), Ok(()));
    }

    #[test]
    fn browser_requests_are_refused_even_with_the_token() {
        let token = AdminToken::new(TOKEN).unwrap();
        let auth = ("authorization", "Bearer 0123456789abcdef");
        let r = req("GET", "/metrics", &[("origin", "null")]);
        assert_eq!(admit(&r, None, false, false), Err(Refusal::Origin));
        for ct in [
            "application/x-www-form-urlencoded",
            "Multipart/Form-Data; boundary=x",
            "text/plain;charset=UTF-8",
        ] {
            let r = req(
                "POST",
                "/upstreams/a/1.2.3.4:5/drain",
                &[auth, ("content-type", ct)],
            );
            assert_eq!(
                admit(&r, Some(&token), true, false),
                Err(Refusal::FormBody),
                "{ct}"
            );
        }
        let r = req(
            "POST",
            "/upstreams/a/1.2.3.4:5/drain",
            &[auth, ("content-type", "application/json")],
        );
        assert_eq!(admit(&r, Some(&token), true, false), Ok(()));
    }
}
