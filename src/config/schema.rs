//! The whole file's schema: [`RawConfig`], the aggregate of every section (each module owns its
//! own: `route::config`, `limit::config`, `client_ip`, `access_log`, `config::listener`,
//! `config::process`), plus the sections that have no module of their own yet. Plain serde
//! types with unknown keys rejected; nothing here is read on the request path.

use serde::{Deserialize, Serialize};

use crate::logging::Secrets;
use crate::section::secret::{self, Secret};
use crate::section::Dur;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<String>,
    /// The bearer token every admin write (drain, undrain) and `/config` must carry. Without
    /// one, writes are refused and reads stay open.
    pub token: Option<Secret>,
}

/// The ZooKeeper ensemble that `zookeeper:` upstreams follow.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperSection {
    /// `h1:2181,h2:2181,h3:2181`, optionally followed by a chroot (`/chroot`).
    pub connect: String,
    /// Every path below is read relative to this node; the same as a `/chroot` suffix on
    /// `connect`, spelled out.
    pub chroot: Option<String>,
    /// `<root>/services/<service>` holds a service's instances; default `/zkgate`.
    pub root: Option<String>,
    pub session_timeout: Option<Dur>,
    /// Credentials of ZooKeeper's `digest` scheme, sent on every new session.
    pub digest: Option<DigestSection>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DigestSection {
    pub user: String,
    /// Usually `${env:NAME}`, so that it stays out of the shared config.
    pub password: Secret,
}

/// Where a `zookeeper:` upstream finds its instances: `{ service: NAME }` or `{ path: /abs }`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamZookeeper {
    pub service: Option<String>,
    pub path: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub name: String,
    #[serde(default)]
    pub backends: Vec<String>,
    pub zookeeper: Option<UpstreamZookeeper>,
    #[serde(default)]
    pub balance: Balance,
    pub hash_key: Option<String>,
    #[serde(default)]
    pub timeouts: TimeoutSection,
    pub tls: Option<UpstreamTls>,
    pub health_check: Option<HealthCheckSection>,
    pub outlier_detection: Option<OutlierSection>,
    pub retry_budget: Option<RetryBudgetSection>,
    /// A joining backend's share grows from a tenth to all of its weight over this window.
    pub slow_start: Option<Dur>,
    pub circuit_breaker: Option<BreakerSection>,
    /// With `server.zone` set, traffic stays in that zone while at least this percentage of
    /// its backends is available (default 50); below it, it spreads over every zone.
    pub local_zone_min_available: Option<u32>,
    /// How many backends `least_conn` compares per pick (default 8, at most 128): all of them
    /// when the upstream has no more, otherwise that many consecutive ones from a place that
    /// moves with every pick.
    pub least_conn_choices: Option<u32>,
}

/// Opens on `failure_ratio` of at least `min_requests` in `window`, or on
/// `consecutive_failures`; answers 503 for `open_for`, then lets `probes` requests test it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    pub failure_ratio: Option<f64>,
    pub min_requests: Option<u32>,
    pub window: Option<Dur>,
    pub consecutive_failures: Option<u32>,
    pub open_for: Option<Dur>,
    pub probes: Option<u32>,
}

/// Retries to this upstream may add at most `percent` of its requests, plus
/// `min_per_second`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSection {
    pub percent: Option<u32>,
    pub min_per_second: Option<u32>,
}

/// Active health checks of every backend of an upstream.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(rename = "type", default)]
    pub kind: HealthCheckKind,
    /// HTTP only: the request line and Host header of the check.
    pub path: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    /// HTTP only: statuses that pass, each `200` or a range `200-399`; default `200-399`.
    pub expected_statuses: Option<Vec<String>>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    /// Consecutive passes that make an unhealthy backend healthy, and failures for the reverse.
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// A backend joining the upstream gets no traffic until its first passing check.
    #[serde(default)]
    pub start_unhealthy: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

/// Passive health: backends whose requests keep failing are taken out for a while.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    /// Consecutive failed requests (5xx answers, or no connection) that eject a backend.
    pub consecutive_failures: Option<u32>,
    /// The first ejection's length; each further one lasts this much longer, up to the max.
    pub base_ejection_time: Option<Dur>,
    pub max_ejection_time: Option<Dur>,
    /// At most this share of the upstream's backends is ejected at once.
    pub max_ejected_percent: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    Random,
    ConsistentHash,
    /// Fewest requests in flight relative to weight.
    LeastConn,
    /// Power of two choices: the less loaded (relative to weight) of two random backends.
    P2c,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSection {
    pub connect: Option<Dur>,
    pub read: Option<Dur>,
    pub write: Option<Dur>,
    /// How long an unused upstream connection stays in the keepalive pool; `0` disables reuse.
    pub idle: Option<Dur>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    #[serde(default = "yes")]
    pub verify: bool,
}

fn yes() -> bool {
    true
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::WeightedRoundRobin => "weighted_round_robin",
            Balance::Random => "random",
            Balance::ConsistentHash => "consistent_hash",
            Balance::LeastConn => "least_conn",
            Balance::P2c => "p2c",
        }
    }
}

impl RawConfig {
    /// What `/config` shows (the config with every secret `<redacted>`) and what the logger
    /// must hide, found in one serialization.
    pub fn redacted(&self) -> (serde_json::Value, Secrets) {
        let mut shown = serde_json::Value::Null;
        let values = secret::collect(|| {
            // Every section serializes to JSON (string keys, finite numbers); should one ever
            // refuse, `/config` says so rather than the reload failing.
            shown = serde_json::to_value(self).unwrap_or_else(|e| {
                serde_json::Value::String(format!("the config cannot be shown: {e}"))
            });
        });
        let secrets = Secrets {
            header_names: self.secret_header_names().map(str::to_owned).collect(),
            values,
        };
        (shown, secrets)
    }

    /// The value of every [`Secret`] in the config, wherever it is (plugins included), found by
    /// serializing the config once while collecting: no hand-kept list to forget a new one.
    pub fn secret_values(&self) -> Vec<String> {
        // Serializing to a sink only fails if a type refuses itself; what was seen still counts.
        secret::collect(|| {
            let _ = serde_json::to_writer(std::io::sink(), self);
        })
    }

    /// Headers whose values this config holds as secrets: routes' header edits not marked
    /// public, and the headers alert destinations are sent with.
    pub fn secret_header_names(&self) -> impl Iterator<Item = &str> {
        let edits = self
            .routes
            .iter()
            .flat_map(|r| [&r.request_headers, &r.response_headers])
            .flat_map(|e| e.set.keys().chain(e.add.keys()).filter(|k| !e.is_public(k)));
        let destinations = self
            .routes
            .iter()
            .filter_map(|r| match &r.plugin {
                Some(crate::plugin::PluginSection::AlertWebhook(a)) => Some(a),
                _ => None,
            })
            .flat_map(|a| a.destinations.iter().flat_map(|d| d.headers.keys()));
        edits.chain(destinations).map(String::as_str)
    }
}

/// The whole file, once every section parsed.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RawConfig {
    pub server: super::process::ServerSection,
    pub admin: AdminSection,
    pub client_ip: crate::client_ip::ClientIpSection,
    pub access_log: Option<crate::access_log::AccessLogSection>,
    pub zookeeper: Option<ZookeeperSection>,
    pub listeners: Vec<super::listener::ListenerSection>,
    pub upstreams: Vec<UpstreamSection>,
    pub routes: Vec<crate::route::RouteSection>,
}
