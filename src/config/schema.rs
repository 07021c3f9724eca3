//! The YAML schema: plain serde types, one per config section, with unknown keys rejected.
//!
//! These types say what may be written; `build` says what it means. Nothing here is read on the
//! request path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::units::{Dur, Size};

/// Pingora's server settings. Only the keys zkgate knows are accepted, so a typo is an error
/// rather than a silently ignored default (Pingora's own loader ignores unknown keys).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    /// Pingora sleeps this long after SIGTERM/SIGQUIT before stopping the runtimes; its own
    /// default is 300 s, far longer than any container runtime waits.
    pub grace_period: Option<Dur>,
    pub graceful_shutdown_timeout: Option<Dur>,
    pub upgrade_sock: Option<String>,
    pub upstream_keepalive_pool_size: Option<usize>,
    pub ca_file: Option<String>,
    pub listener_tasks_per_fd: Option<usize>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// The zone this gateway runs in: upstreams prefer backends of the same zone.
    pub zone: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// A file path, or `stdout` / `stderr`.
    pub path: String,
    /// Lines that may wait for the writer before new ones are dropped (and counted).
    pub buffer: Option<usize>,
}

/// Where the client address comes from: the peer, or `X-Forwarded-For` when the peer is one
/// of `trusted_proxies` (addresses or blocks like `10.0.0.0/8`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientIpSection {
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
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
    /// Usually `${ENV_VAR}`, so that it stays out of the shared config.
    pub password: Secret,
}

/// A value that `/config` and logs show as `<redacted>`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
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
pub struct ListenerSection {
    pub name: String,
    pub listen: String,
    #[serde(default)]
    pub kind: ListenerKind,
    pub max_request_headers: Option<usize>,
    pub max_request_header_bytes: Option<Size>,
    pub keepalive_requests: Option<u32>,
    /// Time for a client to send a complete request head: from the accept on a new
    /// connection, from the first byte of each later request on a keep-alive one.
    pub client_header_timeout: Option<Dur>,
    /// The longest gap between two reads of a request body.
    pub client_body_timeout: Option<Dur>,
    /// How long a keep-alive connection may idle between requests; `0` turns keep-alive off.
    pub keepalive_timeout: Option<Dur>,
    /// Client connections open at once on this listener; more are closed as they arrive.
    pub max_connections: Option<u32>,
    /// Client connections open at once from one IP address.
    pub max_connections_per_ip: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    #[default]
    Http,
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

/// When a request is tried again on another backend.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Tries in all, the first included (1 turns retries off); default 3.
    pub attempts: Option<u32>,
    /// Also retry a request that failed after it was sent (reset, timeout, no answer), if its
    /// method is idempotent and its body fit the retry buffer. Off by default: only failures to
    /// connect, when the backend cannot have seen the request, are retried.
    #[serde(default)]
    pub after_send: bool,
    /// How long each try may wait for the backend to answer (each read); default the
    /// upstream's read timeout.
    pub per_try_timeout: Option<Dur>,
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

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: MatchSection,
    pub upstream: Option<String>,
    pub respond: Option<RespondSection>,
    pub rewrite: Option<RewriteSection>,
    #[serde(default)]
    pub request_headers: HeaderEdits,
    #[serde(default)]
    pub response_headers: HeaderEdits,
    pub max_request_body: Option<Size>,
    pub max_error_body: Option<Size>,
    #[serde(default)]
    pub retry: RetrySection,
    /// Bounds the wait for the backend's answer (its response head) across all tries,
    /// counted from the request's arrival; overrides the upstream's read timeout.
    pub timeout: Option<Dur>,
    pub rate_limit: Option<RateLimitSection>,
    /// Requests of this route in flight at once; more get 503.
    pub max_in_flight: Option<u32>,
    /// A plugin working at this route's phases (one kind: `alert_webhook`), as a map with the
    /// kind as its one key.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub plugin: Option<crate::plugin::PluginSection>,
}

/// A token bucket: `per_second` refill, `burst` capacity (default: one second's worth), one
/// bucket per `key` (`client_ip`, default; `header:NAME`; or `route` for one bucket in all).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub per_second: f64,
    pub burst: Option<u32>,
    pub key: Option<String>,
    /// Keys remembered at most; a flood of new keys evicts old ones (which start afresh).
    pub max_keys: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSection {
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// With neither `value` nor `regex`, the header only has to be present.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: Option<String>,
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn ok() -> u16 {
    200
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewriteSection {
    pub pattern: Option<String>,
    pub replace: Option<String>,
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The whole file, once every section parsed.
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

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RawConfig {
    pub server: ServerSection,
    pub admin: AdminSection,
    pub client_ip: ClientIpSection,
    pub access_log: Option<AccessLogSection>,
    pub zookeeper: Option<ZookeeperSection>,
    pub listeners: Vec<ListenerSection>,
    pub upstreams: Vec<UpstreamSection>,
    pub routes: Vec<RouteSection>,
}
