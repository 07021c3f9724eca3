//! The YAML schema: plain serde types, one per config section, with unknown keys rejected.
//!
//! These types say what may be written; `build` says what it means. Nothing here is read on the
//! request path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::section::secret::{self, secret_map, Secret, REDACTED};
use crate::section::{Dur, Size};

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
    /// The bearer token every admin write (drain, undrain) and `/config` must carry. Without
    /// one, writes are refused and reads stay open.
    pub token: Option<Secret>,
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
    /// What becomes of `X-Forwarded-For`, `X-Real-IP` and `Forwarded` from a peer that is not
    /// a trusted proxy (default `strip`).
    #[serde(default)]
    pub untrusted_forwarded: crate::client_ip::UntrustedForwarded,
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
    /// How request paths are normalized before matching and forwarding.
    #[serde(default)]
    pub path: crate::route::path::PathSection,
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
    pub rate_limit: Option<crate::limit::RateLimitSection>,
    /// Requests of this route in flight at once; more get 503.
    pub max_in_flight: Option<u32>,
    /// A plugin working at this route's phases (one kind: `alert_webhook`), as a map with the
    /// kind as its one key.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub plugin: Option<crate::plugin::PluginSection>,
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
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: Option<String>,
    pub regex: Option<String>,
}

impl HeaderMatch {
    /// What `/config` shows: a route that matches on a credential (`authorization: Bearer ...`)
    /// holds that credential, so its value and regex are redacted.
    fn shown(&self) -> (Option<&str>, Option<&str>) {
        if crate::logging::is_credential_header(&self.name) {
            let hide = |v: &Option<String>| v.as_ref().map(|_| REDACTED);
            (hide(&self.value), hide(&self.regex))
        } else {
            (self.value.as_deref(), self.regex.as_deref())
        }
    }
}

impl Serialize for HeaderMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (value, regex) = self.shown();
        let mut st = s.serialize_struct("HeaderMatch", 3)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("value", &value)?;
        st.serialize_field("regex", &regex)?;
        st.end()
    }
}

impl std::fmt::Debug for HeaderMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (value, regex) = self.shown();
        f.debug_struct("HeaderMatch")
            .field("name", &self.name)
            .field("value", &value)
            .field("regex", &regex)
            .finish()
    }
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

/// Header edits of a route. Values of `set` and `add` are often credentials for the upstream
/// (`Authorization`, an API key), so `/config` and debug logs show them as `<redacted>` unless
/// their name is listed in `public`.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default, deserialize_with = "secret_map")]
    pub set: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "secret_map")]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
    /// Names (any case) of `set` and `add` headers whose values are not secret.
    #[serde(default)]
    pub public: Vec<String>,
}

impl HeaderEdits {
    /// Whether the value `set` or `add` gives header `name` may be shown.
    pub fn is_public(&self, name: &str) -> bool {
        self.public.iter().any(|p| p.eq_ignore_ascii_case(name))
    }

    fn shown<'a>(&'a self, map: &'a BTreeMap<String, String>) -> BTreeMap<&'a str, &'a str> {
        map.iter()
            .map(|(k, v)| {
                let v = if self.is_public(k) {
                    v.as_str()
                } else {
                    REDACTED
                };
                (k.as_str(), v)
            })
            .collect()
    }
}

/// What `/config` shows: the secret values replaced.
impl Serialize for HeaderEdits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("HeaderEdits", 4)?;
        st.serialize_field("set", &self.shown(&self.set))?;
        st.serialize_field("add", &self.shown(&self.add))?;
        st.serialize_field("remove", &self.remove)?;
        st.serialize_field("public", &self.public)?;
        st.end()
    }
}

impl std::fmt::Debug for HeaderEdits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderEdits")
            .field("set", &self.shown(&self.set))
            .field("add", &self.shown(&self.add))
            .field("remove", &self.remove)
            .field("public", &self.public)
            .finish()
    }
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

impl RawConfig {
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
