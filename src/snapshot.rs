//! The immutable runtime state built from one config: routes, upstreams and the settings that
//! only a restart or upgrade can change. Published with one atomic store; a request holds the
//! snapshot it started with until it ends.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::admin::AdminToken;
use crate::client_ip::ClientIp;
use crate::config::schema::{AccessLogSection, ServerSection};
use crate::conn::ConnSettings;
use crate::logging::Secrets;
use crate::route::path::PathPolicy;
use crate::route::RouteTable;
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
    pub server: ServerSection,
    pub access_log: Option<AccessLogSection>,
    /// The ensemble that discovered upstreams follow.
    pub zookeeper: Option<zkgate_discovery::Ensemble>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
    /// What the listener serves.
    pub kind: ListenerKind,
    pub max_request_headers: usize,
    pub max_request_header_bytes: u64,
    pub keepalive_requests: Option<u32>,
    pub path: PathPolicy,
    /// Deadlines on slow and idle clients, and connection limits.
    pub conn: ConnSettings,
}

/// What a listener serves: HTTP, the one kind today.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    #[default]
    Http,
}

impl Snapshot {
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }

    /// Upstreams that some route sends to but that have no pickable backend.
    pub fn upstreams_without_backends(&self) -> Vec<&str> {
        self.upstreams
            .iter()
            .filter(|u| {
                self.routes.routes().iter().any(
                    |r| matches!(&r.action, crate::route::Action::Proxy(x) if Arc::ptr_eq(x, u)),
                )
            })
            .filter(|u| !u.has_backends())
            .map(|u| &*u.name)
            .collect()
    }
}
