//! An upstream's YAML section (`upstreams[i]`) and its build: every value checked and every
//! error pushed under its YAML path, then an [`Upstream`] built, or the previous one of the
//! same name kept when nothing it was built from changed.
//!
//! These types say what may be written and are what `/config` shows; nothing here is read on
//! the request path.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::Method;
use serde::{Deserialize, Serialize};

use super::breaker::{Breaker, BreakerPolicy};
use super::health::{HealthCheck, Probe};
use super::outlier::OutlierPolicy;
use super::retry_budget::RetryBudget;
use super::slow_start::SlowStart;
use super::{
    BackendSpec, Balance, HashKey, Invalid, Locality, PeerSettings, Protocol, TlsSettings,
    Upstream, UpstreamPolicy, DEFAULT_LEAST_CONN_CHOICES, MAX_LEAST_CONN_CHOICES,
};
use crate::section::{At, ConfigErrors, Dur};

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
    /// The HTTP version spoken to the backends: `http1`, `h2` (over `tls`, by ALPN) or `h2c`.
    #[serde(default, skip_serializing_if = "Protocol::is_http1")]
    pub protocol: Protocol,
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

/// Where a `zookeeper:` upstream finds its instances: `{ service: NAME }` or `{ path: /abs }`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamZookeeper {
    pub service: Option<String>,
    pub path: Option<String>,
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

/// What an upstream's build needs from outside its own section.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpstreamEnv<'a> {
    /// `zookeeper.root` or its default: `service:` names are looked up under it.
    pub zk_root: &'a str,
    /// Whether the top-level `zookeeper:` section exists, which `zookeeper:` upstreams need.
    pub zookeeper: bool,
    /// `server.zone`: the gateway's own zone, which zone-aware balancing prefers.
    pub zone: Option<&'a str>,
    /// Upstreams whose `consistent_hash` needs no `hash_key`: no HTTP route sends to them, and
    /// the users they have (game rules) hash on keys of their own.
    pub hash_key_optional: &'a [&'a str],
}

/// Pushes each of `invalid` under `at`.
fn push_invalid(at: &At, invalid: impl IntoIterator<Item = Invalid>, errors: &mut ConfigErrors) {
    for i in invalid {
        errors.push(at.key(i.key), i.why);
    }
}

impl UpstreamSection {
    /// The upstream this section describes, or `None` with every problem pushed to `errors`.
    /// `prev` is the previous snapshot's upstream of the same name: when nothing it was built
    /// from changed, it is kept as it is, live membership and counters included; otherwise
    /// the new upstream takes over the state of the addresses both list.
    pub fn build(
        &self,
        at: &At,
        env: &UpstreamEnv,
        prev: Option<&Arc<Upstream>>,
        errors: &mut ConfigErrors,
    ) -> Option<Arc<Upstream>> {
        let before = errors.len();
        let mut specs = Vec::new();
        let mut addrs = HashSet::new();
        for (j, b) in self.backends.iter().enumerate() {
            match backend(b) {
                Ok(list) => {
                    for s in list {
                        if !addrs.insert(s.addr) {
                            errors.push(
                                at.index("backends", j),
                                format!("{} is listed twice", s.addr),
                            );
                        }
                        specs.push(s);
                    }
                }
                Err(e) => errors.push(at.index("backends", j), e),
            }
        }
        let discovery = self.discovery(at, env, errors);
        let hash_key = self.hash_key(at, env, errors);
        let mut settings = self
            .timeouts
            .settings(&at.key("timeouts"), self.tls.as_ref(), errors);
        settings.protocol = self.protocol(at, errors);
        let health = self
            .health_check
            .as_ref()
            .map(|h| h.build(&at.key("health_check"), errors));
        let outlier = self
            .outlier_detection
            .as_ref()
            .and_then(|o| o.policy(&at.key("outlier_detection"), errors));
        let slow_start = self.slow_start.map(|d| SlowStart { window: d.0 });
        if slow_start.is_some() && self.balance == Balance::ConsistentHash {
            errors.push(
                at.key("slow_start"),
                "has no effect with consistent_hash (a key's backend does not change with load)",
            );
        }
        let breaker = self
            .circuit_breaker
            .as_ref()
            .and_then(|b| b.policy(&at.key("circuit_breaker"), errors));
        let least_conn_choices = self.least_conn_choices(at, errors);
        let min_available = self.local_zone_min_available.unwrap_or(50);
        if min_available > 100 {
            errors.push(
                at.key("local_zone_min_available"),
                "must be a percentage, 0 to 100",
            );
        }
        let locality = env.zone.filter(|z| !z.is_empty()).map(|z| Locality {
            zone: z.into(),
            min_available_percent: min_available,
        });
        let budget = self.retry_budget.as_ref();
        let retry_budget = RetryBudget::try_new(
            budget
                .and_then(|b| b.percent)
                .unwrap_or(RetryBudget::DEFAULT_PERCENT),
            budget
                .and_then(|b| b.min_per_second)
                .unwrap_or(RetryBudget::DEFAULT_MIN_PER_SECOND),
        )
        .map_err(|i| push_invalid(&at.key("retry_budget"), [i], errors))
        .ok();
        if errors.len() > before {
            return None;
        }
        // Everything an upstream is built from: its section, where its members come from, and
        // the zone it prefers.
        if let Some(p) = prev.filter(|p| {
            p.definition == *self && p.discovery == discovery && p.policy.locality == locality
        }) {
            return Some(p.clone());
        }
        let policy = UpstreamPolicy {
            hash_key,
            settings,
            health,
            outlier,
            retry_budget: retry_budget?,
            slow_start,
            breaker: breaker.map(|p| Breaker::new(&self.name, p)),
            locality,
            least_conn_choices,
        };
        Some(Arc::new(Upstream::new(
            self.clone(),
            policy,
            discovery,
            specs,
            prev.map(|p| &**p),
        )))
    }

    /// The ZooKeeper path its members come from; `None` for static backends (and on error).
    fn discovery(&self, at: &At, env: &UpstreamEnv, errors: &mut ConfigErrors) -> Option<String> {
        match (&self.zookeeper, self.backends.is_empty()) {
            (Some(_), false) => {
                errors.push(at, "give either backends or zookeeper, not both");
                None
            }
            (None, true) => {
                errors.push(
                    at.key("backends"),
                    "at least one backend is needed (or zookeeper: to discover them)",
                );
                None
            }
            (None, false) => None,
            (Some(z), true) => {
                if !env.zookeeper {
                    errors.push(
                        at.key("zookeeper"),
                        "needs the top-level zookeeper: section (connect: ...)",
                    );
                }
                discovery_path(z, env.zk_root)
                    .map_err(|e| errors.push(at.key("zookeeper"), e))
                    .ok()
            }
        }
    }

    fn hash_key(&self, at: &At, env: &UpstreamEnv, errors: &mut ConfigErrors) -> Option<HashKey> {
        match (self.balance, &self.hash_key) {
            (Balance::ConsistentHash, Some(k)) => HashKey::parse(k)
                .map_err(|e| errors.push(at.key("hash_key"), e))
                .ok(),
            (Balance::ConsistentHash, None) if env.hash_key_optional.contains(&&*self.name) => None,
            (Balance::ConsistentHash, None) => {
                errors.push(at.key("hash_key"), "consistent_hash needs a hash_key: client_ip, path, header:NAME, cookie:NAME or query:NAME");
                None
            }
            (_, Some(_)) => {
                errors.push(
                    at.key("hash_key"),
                    "only used with balance: consistent_hash",
                );
                None
            }
            (_, None) => None,
        }
    }

    /// The `protocol`, checked against `tls`: `h2` is negotiated in the TLS handshake, `h2c`
    /// is cleartext.
    fn protocol(&self, at: &At, errors: &mut ConfigErrors) -> Protocol {
        match (self.protocol, &self.tls) {
            (Protocol::H2, None) => errors.push(
                at.key("protocol"),
                "h2 is HTTP/2 over TLS and needs `tls`; use h2c for cleartext HTTP/2",
            ),
            (Protocol::H2c, Some(_)) => errors.push(
                at.key("protocol"),
                "h2c is cleartext HTTP/2; use h2 with `tls`",
            ),
            _ => {}
        }
        self.protocol
    }

    fn least_conn_choices(&self, at: &At, errors: &mut ConfigErrors) -> usize {
        match (self.balance, self.least_conn_choices) {
            (_, None) => DEFAULT_LEAST_CONN_CHOICES,
            (Balance::LeastConn, Some(n))
                if (2..=MAX_LEAST_CONN_CHOICES).contains(&(n as usize)) =>
            {
                n as usize
            }
            (Balance::LeastConn, Some(_)) => {
                errors.push(
                    at.key("least_conn_choices"),
                    format!("must be 2 to {MAX_LEAST_CONN_CHOICES}"),
                );
                DEFAULT_LEAST_CONN_CHOICES
            }
            (_, Some(_)) => {
                errors.push(
                    at.key("least_conn_choices"),
                    "only used with balance: least_conn",
                );
                DEFAULT_LEAST_CONN_CHOICES
            }
        }
    }
}

impl TimeoutSection {
    /// How connections are made: these timeouts (defaults where not given) and `tls`.
    fn settings(
        &self,
        at: &At,
        tls: Option<&UpstreamTls>,
        errors: &mut ConfigErrors,
    ) -> PeerSettings {
        let mut timeout = |key: &str, v: Option<Dur>, default: Duration, zero_ok: bool| {
            let d = v.map_or(default, |d| d.0);
            if d.is_zero() && !zero_ok {
                errors.push(at.key(key), "must be above zero");
            }
            d
        };
        PeerSettings {
            connect_timeout: timeout(
                "connect",
                self.connect,
                PeerSettings::DEFAULT_CONNECT,
                false,
            ),
            read_timeout: timeout("read", self.read, PeerSettings::DEFAULT_READ, false),
            write_timeout: timeout("write", self.write, PeerSettings::DEFAULT_WRITE, false),
            idle_timeout: timeout("idle", self.idle, PeerSettings::DEFAULT_IDLE, true),
            tls: tls.map(|tls| TlsSettings {
                sni: tls.sni.clone().unwrap_or_default(),
                verify: tls.verify,
            }),
            protocol: Protocol::Http1,
        }
    }
}

impl BreakerSection {
    /// The policy this section describes, defaults filled in, or `None` with each value that
    /// makes no sense pushed under `at` (the section's own path). The alert plugin's
    /// destinations use it too.
    pub fn policy(&self, at: &At, errors: &mut ConfigErrors) -> Option<BreakerPolicy> {
        BreakerPolicy::try_new(
            self.failure_ratio
                .unwrap_or(BreakerPolicy::DEFAULT_FAILURE_RATIO),
            self.min_requests
                .unwrap_or(BreakerPolicy::DEFAULT_MIN_REQUESTS),
            self.window.map_or(BreakerPolicy::DEFAULT_WINDOW, |d| d.0),
            self.consecutive_failures
                .unwrap_or(BreakerPolicy::DEFAULT_CONSECUTIVE_FAILURES),
            self.open_for
                .map_or(BreakerPolicy::DEFAULT_OPEN_FOR, |d| d.0),
            self.probes.unwrap_or(BreakerPolicy::DEFAULT_PROBES),
        )
        .map_err(|invalid| push_invalid(at, invalid, errors))
        .ok()
    }
}

impl OutlierSection {
    /// The policy this section describes, defaults filled in, or `None` with each value that
    /// makes no sense pushed under `at`.
    pub fn policy(&self, at: &At, errors: &mut ConfigErrors) -> Option<OutlierPolicy> {
        OutlierPolicy::try_new(
            self.consecutive_failures
                .unwrap_or(OutlierPolicy::DEFAULT_CONSECUTIVE_FAILURES),
            self.base_ejection_time
                .map_or(OutlierPolicy::DEFAULT_BASE_EJECTION, |d| d.0),
            self.max_ejection_time
                .map_or(OutlierPolicy::DEFAULT_MAX_EJECTION, |d| d.0),
            self.max_ejected_percent
                .unwrap_or(OutlierPolicy::DEFAULT_MAX_EJECTED_PERCENT),
        )
        .map_err(|invalid| push_invalid(at, invalid, errors))
        .ok()
    }
}

impl HealthCheckSection {
    /// The check this section describes, defaults filled in; each problem is pushed under
    /// `at`. `tls` says whether the upstream's backends speak TLS.
    pub fn build(&self, at: &At, errors: &mut ConfigErrors) -> HealthCheck {
        let interval = self.interval.map_or(HealthCheck::DEFAULT_INTERVAL, |d| d.0);
        let timeout = self.timeout.map_or(HealthCheck::DEFAULT_TIMEOUT, |d| d.0);
        if interval < Duration::from_millis(100) {
            errors.push(at.key("interval"), "must be at least 100ms");
        }
        if timeout.is_zero() || timeout > interval {
            errors.push(
                at.key("timeout"),
                "must be above zero and at most the interval",
            );
        }
        let rise = self.rise.unwrap_or(HealthCheck::DEFAULT_RISE);
        let fall = self.fall.unwrap_or(HealthCheck::DEFAULT_FALL);
        for (key, n) in [("rise", rise), ("fall", fall)] {
            if n == 0 {
                errors.push(at.key(key), "must be at least 1");
            }
        }
        let probe = match self.kind {
            HealthCheckKind::Tcp => {
                let http_only = [
                    ("path", self.path.is_some()),
                    ("method", self.method.is_some()),
                    ("host", self.host.is_some()),
                    ("expected_statuses", self.expected_statuses.is_some()),
                ];
                for (key, given) in http_only {
                    if given {
                        errors.push(at.key(key), "only for type: http");
                    }
                }
                Probe::Tcp
            }
            HealthCheckKind::Http => self.http_probe(at, errors),
        };
        HealthCheck {
            probe,
            interval,
            timeout,
            rise,
            fall,
            start_unhealthy: self.start_unhealthy,
        }
    }

    fn http_probe(&self, at: &At, errors: &mut ConfigErrors) -> Probe {
        let path = self.path.clone().unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/')
            || path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            errors.push(at.key("path"), format!("`{path}` is not a request path"));
        }
        let method = self.method.clone().unwrap_or_else(|| "GET".to_owned());
        if Method::from_bytes(method.as_bytes()).is_err() {
            errors.push(
                at.key("method"),
                format!("`{method}` is not an HTTP method"),
            );
        }
        if let Some(host) = &self.host {
            if HeaderValue::from_str(host).is_err() || host.is_empty() {
                errors.push(at.key("host"), format!("`{host}` is not a valid Host"));
            }
        }
        let statuses = match &self.expected_statuses {
            None => vec![(200, 399)],
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, text)| {
                    status_range(text)
                        .map_err(|e| errors.push(at.index("expected_statuses", i), e))
                        .ok()
                })
                .collect(),
        };
        Probe::Http {
            method,
            path,
            host: self.host.clone(),
            statuses,
        }
    }
}

/// `200` or `200-399`.
fn status_range(text: &str) -> Result<(u16, u16), String> {
    let status = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("`{text}` is not a status (100-599) or a range like 200-399"))
    };
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (status(lo)?, status(hi)?),
        None => (status(text)?, status(text)?),
    };
    if lo > hi {
        return Err(format!("`{text}` is an empty range"));
    }
    Ok((lo, hi))
}

/// A ZooKeeper path: absolute, no trailing slash, no empty segment. The ensemble's chroot and
/// root are checked with it too.
pub fn absolute_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) || p.contains("//") {
        return Err(format!(
            "`{p}` is not an absolute ZooKeeper path like /zkgate/services/api"
        ));
    }
    Ok(())
}

/// The path a `zookeeper:` upstream watches.
fn discovery_path(z: &UpstreamZookeeper, root: &str) -> Result<String, String> {
    match (&z.service, &z.path) {
        (Some(s), None) if !s.is_empty() && !s.contains('/') => {
            Ok(format!("{}/services/{s}", root.trim_end_matches('/')))
        }
        (Some(s), None) => Err(format!("service `{s}` must be a plain name, without `/`")),
        (None, Some(p)) => absolute_path(p).map(|()| p.clone()),
        _ => Err("give either service: NAME or path: /absolute/path".into()),
    }
}

/// `host:port [weight=N] [zone=Z] [inst_id=N]`; a host name resolves to all of its addresses.
fn backend(text: &str) -> Result<Vec<BackendSpec>, String> {
    let mut parts = text.split_whitespace();
    let addr = parts.next().ok_or("empty backend")?;
    let mut weight = 1u32;
    let mut zone: Option<Arc<str>> = None;
    let mut inst_id: Option<u8> = None;
    for opt in parts {
        match opt.split_once('=') {
            Some(("weight", w)) => {
                weight = w.parse().map_err(|_| {
                    format!("weight `{w}` is not a whole number from 0 to {}", u32::MAX)
                })?
            }
            Some(("zone", z)) if !z.is_empty() => zone = Some(z.into()),
            Some(("inst_id", n)) => {
                inst_id =
                    Some(n.parse().map_err(|_| {
                        format!("inst_id `{n}` is not a whole number from 0 to 255")
                    })?)
            }
            _ => {
                return Err(format!(
                    "unknown backend option `{opt}` (expected weight=N, zone=NAME or inst_id=N)"
                ))
            }
        }
    }
    let addrs: Vec<SocketAddr> = match SocketAddr::from_str(addr) {
        Ok(a) => vec![a],
        Err(_) => {
            if !addr.contains(':') {
                return Err(format!("`{addr}` has no port (write host:port)"));
            }
            addr.to_socket_addrs()
                .map_err(|e| format!("cannot resolve `{addr}`: {e}"))?
                .collect()
        }
    };
    if addrs.is_empty() {
        return Err(format!("`{addr}` resolves to no address"));
    }
    Ok(addrs
        .into_iter()
        .map(|addr| BackendSpec {
            weight,
            zone: zone.clone(),
            inst_id,
            ..BackendSpec::at(addr)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::state::DRAINED;

    fn section(yaml: &str) -> UpstreamSection {
        serde_yaml::from_str(yaml).expect("section")
    }

    fn build(
        yaml: &str,
        env: &UpstreamEnv,
        prev: Option<&Arc<Upstream>>,
    ) -> Result<Arc<Upstream>, Vec<String>> {
        let mut errors = ConfigErrors::default();
        let at = At::root().index("upstreams", 3);
        let built = section(yaml).build(&at, env, prev, &mut errors);
        match built {
            Some(u) if errors.is_empty() => Ok(u),
            _ => Err(errors.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn every_policy_error_is_located_under_its_section() {
        let errs = build(
            r#"
name: u
backends: ["127.0.0.1:1"]
circuit_breaker: { failure_ratio: 1.5, probes: 0, open_for: 0s }
outlier_detection: { base_ejection_time: 10s, max_ejection_time: 5s, max_ejected_percent: 101 }
retry_budget: { percent: 200 }
health_check: { type: tcp, path: /x, interval: 10ms }
"#,
            &UpstreamEnv::default(),
            None,
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "upstreams[3].health_check.interval: must be at least 100ms",
                "upstreams[3].health_check.timeout: must be above zero and at most the interval",
                "upstreams[3].health_check.path: only for type: http",
                "upstreams[3].outlier_detection.max_ejection_time: must be at least base_ejection_time",
                "upstreams[3].outlier_detection.max_ejected_percent: must be 0 to 100",
                "upstreams[3].circuit_breaker.failure_ratio: must be above 0 and at most 1",
                "upstreams[3].circuit_breaker.probes: must be at least 1",
                "upstreams[3].circuit_breaker.open_for: must be above zero",
                "upstreams[3].retry_budget.percent: must be 0 to 100",
            ]
        );
    }

    #[test]
    fn the_protocol_goes_with_tls_and_is_set_on_every_prepared_peer() {
        use pingora::protocols::ALPN;
        let env = UpstreamEnv::default();
        let errs = build(
            "{ name: u, backends: [\"127.0.0.1:1\"], protocol: h2 }",
            &env,
            None,
        )
        .unwrap_err();
        assert_eq!(
            errs,
            ["upstreams[3].protocol: h2 is HTTP/2 over TLS and needs `tls`; use h2c for cleartext HTTP/2"]
        );
        let errs = build(
            "{ name: u, backends: [\"127.0.0.1:1\"], protocol: h2c, tls: {} }",
            &env,
            None,
        )
        .unwrap_err();
        assert_eq!(
            errs,
            ["upstreams[3].protocol: h2c is cleartext HTTP/2; use h2 with `tls`"]
        );
        let alpn = |yaml: &str| {
            let u = build(yaml, &env, None).expect("valid");
            let peer = u.select(None, &[]).expect("a backend").peer;
            (peer.options.alpn.clone(), peer.is_tls())
        };
        let h2c = alpn("{ name: u, backends: [\"127.0.0.1:1\"], protocol: h2c }");
        assert!(matches!(h2c, (ALPN::H2, false)), "{h2c:?}");
        let h2 = alpn("{ name: u, backends: [\"127.0.0.1:1\"], protocol: h2, tls: {} }");
        assert!(matches!(h2, (ALPN::H2, true)), "{h2:?}");
        let h1 = alpn("{ name: u, backends: [\"127.0.0.1:1\"] }");
        assert!(matches!(h1, (ALPN::H1, false)), "{h1:?}");
    }

    #[test]
    fn a_breaker_section_alone_gives_its_policy_or_its_errors() {
        let b: BreakerSection = serde_yaml::from_str("{ window: 0s, min_requests: 0 }").unwrap();
        let mut errors = ConfigErrors::default();
        assert!(b
            .policy(&At::new("x.circuit_breaker"), &mut errors)
            .is_none());
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "x.circuit_breaker.min_requests: must be at least 1",
                "x.circuit_breaker.window: must be above zero"
            ]
        );
        let b: BreakerSection = serde_yaml::from_str("{ probes: 5 }").unwrap();
        let p = b.policy(&At::root(), &mut errors).expect("valid");
        assert_eq!(p.probes, 5);
        assert_eq!(p.window, BreakerPolicy::DEFAULT_WINDOW);
    }

    #[test]
    fn consistent_hash_needs_a_hash_key_unless_the_assembly_says_its_users_key_themselves() {
        let yaml = r#"{ name: battle, balance: consistent_hash, backends: ["127.0.0.1:1"] }"#;
        assert_eq!(
            build(yaml, &UpstreamEnv::default(), None).unwrap_err(),
            ["upstreams[3].hash_key: consistent_hash needs a hash_key: client_ip, path, header:NAME, cookie:NAME or query:NAME"]
        );
        let others = UpstreamEnv {
            hash_key_optional: &["lobby"],
            ..UpstreamEnv::default()
        };
        assert!(
            build(yaml, &others, None).is_err(),
            "another upstream's exemption"
        );
        let env = UpstreamEnv {
            hash_key_optional: &["lobby", "battle"],
            ..UpstreamEnv::default()
        };
        let u = build(yaml, &env, None).expect("valid");
        assert_eq!(
            (u.balance, u.policy.hash_key.is_none()),
            (Balance::ConsistentHash, true)
        );
        // A hash_key given is still checked.
        let bad = r#"{ name: battle, balance: consistent_hash, hash_key: nope, backends: ["127.0.0.1:1"] }"#;
        assert!(build(bad, &env, None).is_err());
    }

    #[test]
    fn discovery_needs_the_zookeeper_section_and_follows_the_root() {
        let yaml = "{ name: api, zookeeper: { service: api } }";
        assert_eq!(
            build(yaml, &UpstreamEnv::default(), None).unwrap_err(),
            ["upstreams[3].zookeeper: needs the top-level zookeeper: section (connect: ...)"]
        );
        let env = UpstreamEnv {
            zk_root: "/r/",
            zookeeper: true,
            ..UpstreamEnv::default()
        };
        let u = build(yaml, &env, None).expect("valid");
        assert_eq!(u.discovery.as_deref(), Some("/r/services/api"));
    }

    #[test]
    fn an_unchanged_upstream_is_kept_and_a_changed_one_takes_over_its_states() {
        let yaml = r#"{ name: u, backends: ["127.0.0.1:1", "127.0.0.1:2 zone=a"] }"#;
        let env = UpstreamEnv::default();
        let first = build(yaml, &env, None).expect("valid");
        let kept = build(yaml, &env, Some(&first)).expect("valid");
        assert!(Arc::ptr_eq(&first, &kept));

        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        first.state_of(&addr).expect("member").set(DRAINED, true);
        let changed = build(
            r#"{ name: u, balance: random, backends: ["127.0.0.1:1", "127.0.0.1:2 zone=a"] }"#,
            &env,
            Some(&first),
        )
        .expect("valid");
        assert!(!Arc::ptr_eq(&first, &changed));
        assert!(changed.state_of(&addr).expect("member").is(DRAINED));

        // The zone it prefers comes from outside its section, and counts as a change too.
        let zoned = UpstreamEnv {
            zone: Some("a"),
            ..env
        };
        let moved = build(yaml, &zoned, Some(&first)).expect("valid");
        assert!(!Arc::ptr_eq(&first, &moved));
        assert_eq!(moved.policy.locality.as_ref().map(|l| &*l.zone), Some("a"));
    }

    #[test]
    fn a_static_backend_is_named_by_its_address_and_may_carry_an_inst_id() {
        let specs = backend("127.0.0.1:7001 weight=2 inst_id=7").unwrap();
        assert_eq!(
            (&*specs[0].name, specs[0].inst_id, specs[0].weight),
            ("127.0.0.1:7001", Some(7), 2)
        );
        assert_eq!(backend("127.0.0.1:7001").unwrap()[0].inst_id, None);
        assert_eq!(
            backend("127.0.0.1:7001 inst_id=256").unwrap_err(),
            "inst_id `256` is not a whole number from 0 to 255"
        );
    }
}
