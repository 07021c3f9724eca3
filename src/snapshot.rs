//! The immutable runtime state built from one config: routes, upstreams and the settings that
//! only a restart or upgrade can change. Published with one atomic store; a request holds the
//! snapshot it started with until it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access_log::AccessLogSettings;
use crate::client_ip::ClientIp;
use crate::conn::h2::Http2Settings;
use crate::conn::ConnSettings;
use crate::game::config::GameSettings;
use crate::logging::Secrets;
use crate::route::path::PathPolicy;
use crate::route::RouteTable;
use crate::section::AdminToken;
use crate::tls::ListenerTls;
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Snapshot {
    pub routes: RouteTable,
    pub upstreams: Vec<Arc<Upstream>>,
    pub settings: Settings,
    pub client_ip: ClientIp,
    /// What admin writes and `/config` must present; applies on reload, unlike `settings`.
    pub admin_token: Option<AdminToken>,
    /// What `/config` shows: the config it was built from, every secret `<redacted>`.
    pub shown: serde_json::Value,
    /// What the log must hide while this config serves (and for a while after).
    pub secrets: Secrets,
    /// 1 for the first config, one more for each successful reload.
    pub generation: u64,
}

/// Listener and process settings, read once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listeners: Vec<Listener>,
    pub admin: SocketAddr,
    pub server: ServerSettings,
    pub access_log: Option<AccessLogSettings>,
    /// The ensemble that discovered upstreams follow.
    pub zookeeper: Option<zkgate_discovery::Ensemble>,
}

/// Pingora's process settings, defaults applied and bounds checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Worker threads per listener; `None` keeps Pingora's default.
    pub threads: Option<usize>,
    pub work_stealing: bool,
    /// How long Pingora waits after SIGTERM/SIGQUIT before stopping its runtimes.
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub upgrade_sock: Option<String>,
    pub upstream_keepalive_pool_size: Option<usize>,
    pub ca_file: Option<String>,
    pub listener_tasks_per_fd: Option<usize>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// The zone this gateway runs in (its upstreams prefer backends of the same zone).
    pub zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
    /// What the listener serves: one Pingora service of this kind.
    pub kind: ListenerKind,
    pub max_request_headers: usize,
    pub max_request_header_bytes: u64,
    pub keepalive_requests: Option<u32>,
    /// Plain HTTP/1.1 requests that only need forwarding take `proxy::fast`.
    pub http1_fast_path: bool,
    pub path: PathPolicy,
    /// Deadlines on slow and idle clients, and connection limits.
    pub conn: ConnSettings,
    /// TLS termination, when the listener has a `tls:` section. Whether it has one takes a
    /// restart; what it holds (certificates, versions, client auth) applies on reload.
    pub tls: Option<Arc<ListenerTls>>,
    /// HTTP/2: h2c, and the limits of Pingora's HTTP/2 server.
    pub http2: Http2Settings,
    /// A game listener's settings and rules (`kind` is then [`ListenerKind::Game`]).
    pub game: Option<Arc<GameSettings>>,
}

/// What a listener serves: HTTP, or game sessions (a listener with a `game:` section).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    #[default]
    Http,
    /// The game-session router: framed TCP and WebSocket sessions routed by `game.rules`.
    Game,
}

impl Snapshot {
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }

    /// Upstreams that some route or game rule sends to but that have no pickable backend.
    pub fn upstreams_without_backends(&self) -> Vec<&str> {
        self.upstreams
            .iter()
            .filter(|u| {
                self.routes.routes().iter().any(
                    |r| matches!(&r.action, crate::route::Action::Proxy(x) if Arc::ptr_eq(x, u)),
                ) || self.game_routes_to(u)
            })
            .filter(|u| !u.has_backends())
            .map(|u| &*u.name)
            .collect()
    }

    /// Whether a game listener's rules in use send to `u`.
    fn game_routes_to(&self, u: &Arc<Upstream>) -> bool {
        self.settings
            .listeners
            .iter()
            .filter_map(|l| l.game.as_ref())
            .any(|g| {
                g.current_rules()
                    .iter()
                    .any(|r| Arc::ptr_eq(&r.upstream, u))
            })
    }
}
