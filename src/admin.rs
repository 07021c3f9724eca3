//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/upstreams` and `/config`, and
//! draining a backend by hand.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::live::Shared;
use crate::metrics;
use crate::upstream::state::{BackendState, DRAINED, EJECTED, UNHEALTHY};

pub struct Admin {
    shared: Shared,
}

impl Admin {
    pub fn new(shared: Shared) -> Self {
        Admin { shared }
    }

    fn upstreams(&self) -> serde_json::Value {
        let snap = self.shared.load();
        let now = crate::upstream::state::now_ms();
        let list: Vec<_> = snap
            .upstreams
            .iter()
            .map(|u| {
                let set = u.load();
                json!({
                    "name": &*u.name,
                    "balance": u.balance,
                    "hash_key": u.definition.hash_key,
                    "zookeeper_path": u.discovery,
                    "health_check": u.policy.health.is_some(),
                    "circuit": u.policy.breaker.as_ref().map(|b| b.state_name()),
                    "backends": set.backends().iter().map(|b| {
                        let s = &b.state;
                        json!({
                            "addr": b.spec.addr.to_string(),
                            "weight": b.spec.weight,
                            "effective_weight": u
                                .policy
                                .slow_start
                                .and_then(|ss| ss.ramped(b.spec.weight, s, now))
                                .map_or(b.spec.weight as f64, |w| {
                                    w as f64 / crate::upstream::slow_start::SCALE as f64
                                }),
                            "zone": b.spec.zone.as_deref(),
                            "state": backend_state(b.spec.weight, s),
                            "healthy": !s.is(UNHEALTHY),
                            "ejected_for_ms": s.ejected_for().map(|d| d.as_millis() as u64),
                            "ejections": s.ejections(),
                            "in_flight": s.in_flight(),
                        })
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "upstreams": list })
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
fn backend_state(weight: u32, s: &BackendState) -> &'static str {
    if s.is(DRAINED) || weight == 0 {
        "drained"
    } else if s.is(UNHEALTHY) {
        "unhealthy"
    } else if s.is(EJECTED) {
        "ejected"
    } else {
        "active"
    }
}

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
        if req.method == http::Method::POST {
            let (status, body) = self.drain(req.uri.path());
            return json_reply(status, body);
        }
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"GET, or POST /upstreams/NAME/ADDR/drain|undrain\n".to_vec(),
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
            "/config" => {
                let snap = self.shared.load();
                json_reply(
                    StatusCode::OK,
                    json!({ "generation": snap.generation, "config": &snap.raw }),
                )
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                b"not found: try /metrics /healthz /readyz /upstreams /config\n".to_vec(),
            ),
        }
    }
}
