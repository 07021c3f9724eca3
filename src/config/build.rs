//! Validation and build: a parsed [`RawConfig`] becomes a [`Snapshot`], or every problem found
//! is returned, each with its YAML path.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode};
use regex::Regex;
use zkgate_discovery::{Digest, Ensemble};

use super::schema::*;
use crate::admin::AdminToken;
use crate::client_ip::{Cidr, ClientIp};
use crate::conn::ConnSettings;
use crate::limit::{ConcurrencyLimit, Rate, RateLimiter};
use crate::metrics::RouteMetrics;
use crate::route::path::{self, PathPolicy};
use crate::route::rewrite::check_replacement;
use crate::route::{
    Action, HeaderCondition, HeaderOps, HeaderValueMatch, HostMatch, MethodSet, PathMatch,
    PathRewrite, RateKey, Respond, RetryPolicy, Route, RouteRate, RouteTable,
};
use crate::section::ConfigErrors;
use crate::section::Dur;
use crate::snapshot::{Listener, Settings, Snapshot};
use crate::upstream::breaker::{Breaker, BreakerPolicy};
use crate::upstream::health::{HealthCheck, Probe};
use crate::upstream::outlier::OutlierPolicy;
use crate::upstream::retry_budget::RetryBudget;
use crate::upstream::slow_start::SlowStart;
use crate::upstream::{
    BackendSpec, HashKey, Locality, PeerSettings, TlsSettings, Upstream, UpstreamPolicy,
    DEFAULT_LEAST_CONN_CHOICES, MAX_LEAST_CONN_CHOICES,
};

pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
const DEFAULT_READ: Duration = Duration::from_secs(60);
const DEFAULT_WRITE: Duration = Duration::from_secs(60);
const DEFAULT_IDLE: Duration = Duration::from_secs(60);
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(6);
pub const DEFAULT_ZK_ROOT: &str = "/zkgate";
/// Pingora refuses more headers than this whatever we allow.
const PINGORA_MAX_HEADERS: usize = 256;

/// Builds a snapshot. Upstreams whose definition did not change since `prev` are carried over
/// as they are, with their live membership and counters.
pub fn build(raw: RawConfig, prev: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let settings = settings(&raw, &mut errors);
    let upstreams = upstreams(&raw, prev, &mut errors);
    let declared: HashSet<&str> = raw.upstreams.iter().map(|u| u.name.as_str()).collect();
    let routes = routes(&raw.routes, &declared, &upstreams, prev, &mut errors);
    let admin_token = raw.admin.token.as_ref().and_then(|t| {
        AdminToken::new(&t.0)
            .map_err(|e| errors.push("admin.token", e))
            .ok()
    });
    let trusted = raw
        .client_ip
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            Cidr::parse(t)
                .map_err(|e| errors.push(format!("client_ip.trusted_proxies[{i}]"), e))
                .ok()
        })
        .collect();
    if raw.routes.is_empty() {
        errors.push("routes", "at least one route is needed");
    }
    errors.into_result(())?;
    Ok(Snapshot {
        routes: RouteTable::new(routes),
        upstreams,
        settings,
        client_ip: ClientIp::new(trusted, raw.client_ip.untrusted_forwarded),
        admin_token,
        raw,
        generation: prev.map_or(1, |p| p.generation + 1),
    })
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(text)
        .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:8080 or [::1]:8080"))
}

fn settings(raw: &RawConfig, errors: &mut ConfigErrors) -> Settings {
    let mut seen = HashSet::new();
    let admin = match socket_addr(raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN)) {
        Ok(a) => Some(a),
        Err(e) => {
            errors.push("admin.listen", e);
            None
        }
    };
    if let Some(a) = admin {
        seen.insert(a);
    }
    if raw.listeners.is_empty() {
        errors.push("listeners", "at least one listener is needed");
    }
    let mut names = HashSet::new();
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        if !names.insert(l.name.as_str()) {
            errors.push(
                format!("{at}.name"),
                format!("listener `{}` is defined twice", l.name),
            );
        }
        let addr = match socket_addr(&l.listen) {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!("{at}.listen"), e);
                continue;
            }
        };
        if !seen.insert(addr) {
            errors.push(
                format!("{at}.listen"),
                format!("{addr} is already used by another listener or the admin listener"),
            );
        }
        let max_headers = l.max_request_headers.unwrap_or(DEFAULT_MAX_HEADERS);
        if max_headers == 0 || max_headers > PINGORA_MAX_HEADERS {
            errors.push(
                format!("{at}.max_request_headers"),
                format!("must be between 1 and {PINGORA_MAX_HEADERS}"),
            );
        }
        listeners.push(Listener {
            name: l.name.clone(),
            addr,
            max_request_headers: max_headers,
            max_request_header_bytes: l
                .max_request_header_bytes
                .map_or(DEFAULT_MAX_HEADER_BYTES, |s| s.0),
            keepalive_requests: l.keepalive_requests,
            path: l.path.build(),
            conn: conn_settings(l, &at, errors),
        });
    }
    server_bounds(&raw.server, errors);
    if let Some(a) = &raw.access_log {
        if a.path.is_empty() {
            errors.push("access_log.path", "must name a file, `stdout` or `stderr`");
        }
        if a.buffer == Some(0) {
            errors.push("access_log.buffer", "must be at least 1");
        }
    }
    Settings {
        listeners,
        admin: admin.unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("valid default")),
        server: raw.server.clone(),
        access_log: raw.access_log.clone(),
        zookeeper: raw.zookeeper.as_ref().map(|z| ensemble(raw, z, errors)),
    }
}

// ---------------------------------------------------------------------------------------------
// Process settings: bounded, so that what `check` accepts `run` can start. Pingora unwraps the
// creation of every thread it is asked for: `threads: 100000` passed and then panicked.

/// Worker threads per listener (each listener has its own runtime with this many).
pub const MAX_THREADS: usize = 1024;
/// Accept tasks per listening socket.
pub const MAX_LISTENER_TASKS_PER_FD: usize = 64;
/// Idle upstream connections kept, all upstreams together.
pub const MAX_UPSTREAM_KEEPALIVE_POOL: usize = 1_000_000;
/// `grace_period` and `graceful_shutdown_timeout`: a stop that takes longer is a hang.
pub const MAX_SHUTDOWN_WAIT: Duration = Duration::from_secs(3600);

fn server_bounds(s: &ServerSection, errors: &mut ConfigErrors) {
    let mut between = |key: &str, value: Option<usize>, min: usize, max: usize| {
        if value.is_some_and(|v| v < min || v > max) {
            errors.push(
                format!("server.{key}"),
                format!("must be between {min} and {max}"),
            );
        }
    };
    between("threads", s.threads, 1, MAX_THREADS);
    between(
        "listener_tasks_per_fd",
        s.listener_tasks_per_fd,
        1,
        MAX_LISTENER_TASKS_PER_FD,
    );
    between(
        "upstream_keepalive_pool_size",
        s.upstream_keepalive_pool_size,
        0,
        MAX_UPSTREAM_KEEPALIVE_POOL,
    );
    for (key, value) in [
        ("grace_period", s.grace_period),
        ("graceful_shutdown_timeout", s.graceful_shutdown_timeout),
    ] {
        if value.is_some_and(|d| d.0 > MAX_SHUTDOWN_WAIT) {
            errors.push(format!("server.{key}"), "must be at most 1h");
        }
    }
}

/// A listener's deadlines and connection limits; every bad value is reported at its key.
fn conn_settings(l: &ListenerSection, at: &str, errors: &mut ConfigErrors) -> ConnSettings {
    let mut timeout = |key: &str, value: Option<Dur>, default: Duration, zero_ok: bool| {
        let d = value.map_or(default, |d| d.0);
        if d.is_zero() && !zero_ok {
            errors.push(format!("{at}.{key}"), "must be more than 0");
        } else if d > crate::conn::MAX_TIMEOUT {
            errors.push(
                format!("{at}.{key}"),
                format!("must be at most {}s", crate::conn::MAX_TIMEOUT.as_secs()),
            );
        }
        d
    };
    let header = timeout(
        "client_header_timeout",
        l.client_header_timeout,
        crate::conn::DEFAULT_CLIENT_HEADER_TIMEOUT,
        false,
    );
    let body = timeout(
        "client_body_timeout",
        l.client_body_timeout,
        crate::conn::DEFAULT_CLIENT_BODY_TIMEOUT,
        false,
    );
    let keepalive = timeout(
        "keepalive_timeout",
        l.keepalive_timeout,
        crate::conn::DEFAULT_KEEPALIVE_TIMEOUT,
        true,
    );
    for (key, v) in [
        ("max_connections", l.max_connections),
        ("max_connections_per_ip", l.max_connections_per_ip),
    ] {
        if v == Some(0) {
            errors.push(format!("{at}.{key}"), "must be at least 1");
        }
    }
    if let (Some(all), Some(per_ip)) = (l.max_connections, l.max_connections_per_ip) {
        if per_ip > all {
            errors.push(
                format!("{at}.max_connections_per_ip"),
                format!("is more than max_connections ({all})"),
            );
        }
    }
    ConnSettings {
        client_header_timeout: header,
        client_body_timeout: body,
        keepalive_timeout: (!keepalive.is_zero()).then_some(keepalive),
        max_connections: l.max_connections,
        max_connections_per_ip: l.max_connections_per_ip,
    }
}

fn ensemble(raw: &RawConfig, z: &ZookeeperSection, errors: &mut ConfigErrors) -> Ensemble {
    let connect = z.connect.trim();
    let (hosts, chroot_suffix) = match connect.find('/') {
        Some(i) => (&connect[..i], Some(&connect[i..])),
        None => (connect, None),
    };
    if hosts.split(',').any(|h| h.trim().is_empty()) {
        errors.push(
            "zookeeper.connect",
            "must name at least one host:port, separated by commas",
        );
    }
    let chroot = match (chroot_suffix, z.chroot.as_deref()) {
        (Some(_), Some(_)) => {
            errors.push(
                "zookeeper.chroot",
                "give the chroot either here or as a /suffix of connect, not both",
            );
            None
        }
        (Some(c), None) => Some(("zookeeper.connect", c)),
        (None, Some(c)) => Some(("zookeeper.chroot", c)),
        (None, None) => None,
    };
    if let Some((at, c)) = chroot {
        if let Err(e) = absolute_path(c) {
            errors.push(at, e);
        }
    }
    let session_timeout = z.session_timeout.map_or(DEFAULT_SESSION_TIMEOUT, |d| d.0);
    if session_timeout < Duration::from_secs(1) {
        errors.push("zookeeper.session_timeout", "must be at least 1s");
    }
    if let Err(e) = absolute_path(zk_root(raw)) {
        errors.push("zookeeper.root", e);
    }
    let digest = z.digest.as_ref().map(|d| {
        if d.user.is_empty() || d.user.contains(':') {
            errors.push(
                "zookeeper.digest.user",
                "must be a non-empty name without `:`",
            );
        }
        Digest {
            user: d.user.clone(),
            password: d.password.0.clone(),
        }
    });
    Ensemble {
        connect: format!("{hosts}{}", chroot.map_or("", |(_, c)| c)),
        session_timeout,
        digest,
    }
}

fn zk_root(raw: &RawConfig) -> &str {
    raw.zookeeper
        .as_ref()
        .and_then(|z| z.root.as_deref())
        .unwrap_or(DEFAULT_ZK_ROOT)
}

/// A ZooKeeper path: absolute, no trailing slash, no empty segment.
fn absolute_path(p: &str) -> Result<(), String> {
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

fn health_check(
    h: &HealthCheckSection,
    at: &str,
    tls: bool,
    errors: &mut ConfigErrors,
) -> HealthCheck {
    let interval = h.interval.map_or(HealthCheck::DEFAULT_INTERVAL, |d| d.0);
    let timeout = h.timeout.map_or(HealthCheck::DEFAULT_TIMEOUT, |d| d.0);
    if interval < Duration::from_millis(100) {
        errors.push(format!("{at}.interval"), "must be at least 100ms");
    }
    if timeout.is_zero() || timeout > interval {
        errors.push(
            format!("{at}.timeout"),
            "must be above zero and at most the interval",
        );
    }
    let rise = h.rise.unwrap_or(HealthCheck::DEFAULT_RISE);
    let fall = h.fall.unwrap_or(HealthCheck::DEFAULT_FALL);
    for (key, n) in [("rise", rise), ("fall", fall)] {
        if n == 0 {
            errors.push(format!("{at}.{key}"), "must be at least 1");
        }
    }
    let http_only = [
        ("path", h.path.is_some()),
        ("method", h.method.is_some()),
        ("host", h.host.is_some()),
        ("expected_statuses", h.expected_statuses.is_some()),
    ];
    let probe = match h.kind {
        HealthCheckKind::Tcp => {
            for (key, given) in http_only {
                if given {
                    errors.push(format!("{at}.{key}"), "only for type: http");
                }
            }
            Probe::Tcp
        }
        HealthCheckKind::Http => {
            if tls {
                errors.push(
                    format!("{at}.type"),
                    "HTTPS checks are not supported yet: use type: tcp for a TLS upstream",
                );
            }
            let path = h.path.clone().unwrap_or_else(|| "/".to_owned());
            if !path.starts_with('/')
                || path
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                errors.push(
                    format!("{at}.path"),
                    format!("`{path}` is not a request path"),
                );
            }
            let method = h.method.clone().unwrap_or_else(|| "GET".to_owned());
            if Method::from_bytes(method.as_bytes()).is_err() {
                errors.push(
                    format!("{at}.method"),
                    format!("`{method}` is not an HTTP method"),
                );
            }
            if let Some(host) = &h.host {
                if HeaderValue::from_str(host).is_err() || host.is_empty() {
                    errors.push(
                        format!("{at}.host"),
                        format!("`{host}` is not a valid Host"),
                    );
                }
            }
            let statuses = match &h.expected_statuses {
                None => vec![(200, 399)],
                Some(list) => list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, text)| {
                        status_range(text)
                            .map_err(|e| errors.push(format!("{at}.expected_statuses[{i}]"), e))
                            .ok()
                    })
                    .collect(),
            };
            Probe::Http {
                method,
                path,
                host: h.host.clone(),
                statuses,
            }
        }
    };
    HealthCheck {
        probe,
        interval,
        timeout,
        rise,
        fall,
        start_unhealthy: h.start_unhealthy,
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

pub(crate) fn breaker_policy(
    b: &BreakerSection,
    at: &str,
    errors: &mut ConfigErrors,
) -> BreakerPolicy {
    let p = BreakerPolicy {
        failure_ratio: b
            .failure_ratio
            .unwrap_or(BreakerPolicy::DEFAULT_FAILURE_RATIO),
        min_requests: b
            .min_requests
            .unwrap_or(BreakerPolicy::DEFAULT_MIN_REQUESTS),
        window: b.window.map_or(BreakerPolicy::DEFAULT_WINDOW, |d| d.0),
        consecutive_failures: b
            .consecutive_failures
            .unwrap_or(BreakerPolicy::DEFAULT_CONSECUTIVE_FAILURES),
        open_for: b.open_for.map_or(BreakerPolicy::DEFAULT_OPEN_FOR, |d| d.0),
        probes: b.probes.unwrap_or(BreakerPolicy::DEFAULT_PROBES),
    };
    if !(p.failure_ratio > 0.0 && p.failure_ratio <= 1.0) {
        errors.push(
            format!("{at}.failure_ratio"),
            "must be above 0 and at most 1",
        );
    }
    for (key, n) in [
        ("min_requests", p.min_requests),
        ("consecutive_failures", p.consecutive_failures),
        ("probes", p.probes),
    ] {
        if n == 0 {
            errors.push(format!("{at}.{key}"), "must be at least 1");
        }
    }
    if p.window.is_zero() {
        errors.push(format!("{at}.window"), "must be above zero");
    }
    if p.open_for.is_zero() {
        errors.push(format!("{at}.open_for"), "must be above zero");
    }
    p
}

fn outlier_policy(o: &OutlierSection, at: &str, errors: &mut ConfigErrors) -> OutlierPolicy {
    let p = OutlierPolicy {
        consecutive_failures: o
            .consecutive_failures
            .unwrap_or(OutlierPolicy::DEFAULT_CONSECUTIVE_FAILURES),
        base_ejection: o
            .base_ejection_time
            .map_or(OutlierPolicy::DEFAULT_BASE_EJECTION, |d| d.0),
        max_ejection: o
            .max_ejection_time
            .map_or(OutlierPolicy::DEFAULT_MAX_EJECTION, |d| d.0),
        max_ejected_percent: o
            .max_ejected_percent
            .unwrap_or(OutlierPolicy::DEFAULT_MAX_EJECTED_PERCENT),
    };
    if p.consecutive_failures == 0 {
        errors.push(format!("{at}.consecutive_failures"), "must be at least 1");
    }
    if p.base_ejection.is_zero() {
        errors.push(format!("{at}.base_ejection_time"), "must be above zero");
    }
    if p.max_ejection < p.base_ejection {
        errors.push(
            format!("{at}.max_ejection_time"),
            "must be at least base_ejection_time",
        );
    }
    if p.max_ejected_percent > 100 {
        errors.push(format!("{at}.max_ejected_percent"), "must be 0 to 100");
    }
    p
}

fn route_rate(rl: &RateLimitSection, at: &str, errors: &mut ConfigErrors) -> Option<RouteRate> {
    let burst = rl
        .burst
        .unwrap_or_else(|| rl.per_second.ceil().clamp(1.0, u32::MAX as f64) as u32);
    let rate = Rate::new(rl.per_second, burst)
        .map_err(|e| errors.push(at, e))
        .ok()?;
    let key = match rl.key.as_deref().unwrap_or("client_ip") {
        "client_ip" => RateKey::ClientIp,
        "route" => RateKey::Route,
        other => match other.strip_prefix("header:").map(HeaderName::try_from) {
            Some(Ok(name)) => RateKey::Header(name),
            _ => {
                errors.push(
                    format!("{at}.key"),
                    format!("`{other}` is not client_ip, route or header:NAME"),
                );
                return None;
            }
        },
    };
    let max_keys = rl.max_keys.unwrap_or(100_000);
    if max_keys == 0 {
        errors.push(format!("{at}.max_keys"), "must be at least 1");
        return None;
    }
    let limiter = match key {
        RateKey::Route => RateLimiter::route(rate),
        _ => RateLimiter::keyed(rate, max_keys),
    };
    Some(RouteRate {
        limiter,
        key,
        definition: rl.clone(),
    })
}

fn retry_policy(r: &RetrySection, at: &str, errors: &mut ConfigErrors) -> RetryPolicy {
    let attempts = r.attempts.unwrap_or(RetryPolicy::DEFAULT_ATTEMPTS.into());
    if !(1..=RetryPolicy::MAX_ATTEMPTS.into()).contains(&attempts) {
        errors.push(
            format!("{at}.attempts"),
            format!("must be 1 to {}", RetryPolicy::MAX_ATTEMPTS),
        );
    }
    let per_try_timeout = r.per_try_timeout.map(|d| d.0);
    if per_try_timeout.is_some_and(|d| d.is_zero()) {
        errors.push(format!("{at}.per_try_timeout"), "must be above zero");
    }
    RetryPolicy {
        attempts: attempts.clamp(1, RetryPolicy::MAX_ATTEMPTS.into()) as u8,
        after_send: r.after_send,
        per_try_timeout,
    }
}

/// `host:port [weight=N] [zone=Z]`; a host name resolves to all of its addresses.
fn backend(text: &str) -> Result<Vec<BackendSpec>, String> {
    let mut parts = text.split_whitespace();
    let addr = parts.next().ok_or("empty backend")?;
    let mut weight = 1u32;
    let mut zone: Option<Arc<str>> = None;
    for opt in parts {
        match opt.split_once('=') {
            Some(("weight", w)) => {
                weight = w.parse().map_err(|_| {
                    format!("weight `{w}` is not a whole number from 0 to {}", u32::MAX)
                })?
            }
            Some(("zone", z)) if !z.is_empty() => zone = Some(z.into()),
            _ => {
                return Err(format!(
                    "unknown backend option `{opt}` (expected weight=N or zone=NAME)"
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
            addr,
            weight,
            zone: zone.clone(),
        })
        .collect())
}

fn upstreams(
    config: &RawConfig,
    prev: Option<&Snapshot>,
    errors: &mut ConfigErrors,
) -> Vec<Arc<Upstream>> {
    let raw = &config.upstreams;
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, u) in raw.iter().enumerate() {
        let at = format!("upstreams[{i}]");
        let before = errors.len();
        if u.name.is_empty() {
            errors.push(format!("{at}.name"), "must not be empty");
        } else if !names.insert(u.name.as_str()) {
            errors.push(
                format!("{at}.name"),
                format!("upstream `{}` is defined twice", u.name),
            );
        }
        let mut specs = Vec::new();
        let mut addrs = HashSet::new();
        for (j, b) in u.backends.iter().enumerate() {
            match backend(b) {
                Ok(list) => {
                    for s in list {
                        if !addrs.insert(s.addr) {
                            errors.push(
                                format!("{at}.backends[{j}]"),
                                format!("{} is listed twice", s.addr),
                            );
                        }
                        specs.push(s);
                    }
                }
                Err(e) => errors.push(format!("{at}.backends[{j}]"), e),
            }
        }
        let discovery = match (&u.zookeeper, u.backends.is_empty()) {
            (Some(_), false) => {
                errors.push(at.clone(), "give either backends or zookeeper, not both");
                None
            }
            (None, true) => {
                errors.push(
                    format!("{at}.backends"),
                    "at least one backend is needed (or zookeeper: to discover them)",
                );
                None
            }
            (None, false) => None,
            (Some(z), true) => {
                if config.zookeeper.is_none() {
                    errors.push(
                        format!("{at}.zookeeper"),
                        "needs the top-level zookeeper: section (connect: ...)",
                    );
                }
                discovery_path(z, zk_root(config))
                    .map_err(|e| errors.push(format!("{at}.zookeeper"), e))
                    .ok()
            }
        };
        let hash_key = match (u.balance, &u.hash_key) {
            (Balance::ConsistentHash, Some(k)) => HashKey::parse(k)
                .map_err(|e| errors.push(format!("{at}.hash_key"), e))
                .ok(),
            (Balance::ConsistentHash, None) => {
                errors.push(format!("{at}.hash_key"), "consistent_hash needs a hash_key: client_ip, path, header:NAME, cookie:NAME or query:NAME");
                None
            }
            (_, Some(_)) => {
                errors.push(
                    format!("{at}.hash_key"),
                    "only used with balance: consistent_hash",
                );
                None
            }
            (_, None) => None,
        };
        let t = &u.timeouts;
        let mut timeout =
            |key: &str, v: Option<crate::section::Dur>, default: Duration, zero_ok: bool| {
                let d = v.map_or(default, |d| d.0);
                if d.is_zero() && !zero_ok {
                    errors.push(format!("{at}.timeouts.{key}"), "must be above zero");
                }
                d
            };
        let settings = PeerSettings {
            connect_timeout: timeout("connect", t.connect, DEFAULT_CONNECT, false),
            read_timeout: timeout("read", t.read, DEFAULT_READ, false),
            write_timeout: timeout("write", t.write, DEFAULT_WRITE, false),
            idle_timeout: timeout("idle", t.idle, DEFAULT_IDLE, true),
            tls: u.tls.as_ref().map(|tls| TlsSettings {
                sni: tls.sni.clone().unwrap_or_default(),
                verify: tls.verify,
            }),
        };
        let health = u
            .health_check
            .as_ref()
            .map(|h| health_check(h, &format!("{at}.health_check"), u.tls.is_some(), errors));
        let outlier = u
            .outlier_detection
            .as_ref()
            .map(|o| outlier_policy(o, &format!("{at}.outlier_detection"), errors));
        let slow_start = u.slow_start.map(|d| SlowStart { window: d.0 });
        if slow_start.is_some() && u.balance == Balance::ConsistentHash {
            errors.push(
                format!("{at}.slow_start"),
                "has no effect with consistent_hash (a key's backend does not change with load)",
            );
        }
        let breaker = u.circuit_breaker.as_ref().map(|b| {
            Breaker::new(
                &u.name,
                breaker_policy(b, &format!("{at}.circuit_breaker"), errors),
            )
        });
        let least_conn_choices = match (u.balance, u.least_conn_choices) {
            (_, None) => DEFAULT_LEAST_CONN_CHOICES,
            (Balance::LeastConn, Some(n))
                if (2..=MAX_LEAST_CONN_CHOICES).contains(&(n as usize)) =>
            {
                n as usize
            }
            (Balance::LeastConn, Some(_)) => {
                errors.push(
                    format!("{at}.least_conn_choices"),
                    format!("must be 2 to {MAX_LEAST_CONN_CHOICES}"),
                );
                DEFAULT_LEAST_CONN_CHOICES
            }
            (_, Some(_)) => {
                errors.push(
                    format!("{at}.least_conn_choices"),
                    "only used with balance: least_conn",
                );
                DEFAULT_LEAST_CONN_CHOICES
            }
        };
        let min_available = u.local_zone_min_available.unwrap_or(50);
        if min_available > 100 {
            errors.push(
                format!("{at}.local_zone_min_available"),
                "must be a percentage, 0 to 100",
            );
        }
        let locality = config
            .server
            .zone
            .as_deref()
            .filter(|z| !z.is_empty())
            .map(|z| Locality {
                zone: z.into(),
                min_available_percent: min_available,
            });
        let budget = u.retry_budget.as_ref();
        let percent = budget
            .and_then(|b| b.percent)
            .unwrap_or(RetryBudget::DEFAULT_PERCENT);
        if percent > 100 {
            errors.push(format!("{at}.retry_budget.percent"), "must be 0 to 100");
        }
        let retry_budget = RetryBudget::new(
            percent,
            budget
                .and_then(|b| b.min_per_second)
                .unwrap_or(RetryBudget::DEFAULT_MIN_PER_SECOND),
        );
        if errors.len() > before {
            continue;
        }
        let reused = prev.and_then(|p| {
            p.upstreams
                .iter()
                .find(|x| x.definition == *u && x.discovery == discovery)
        });
        out.push(match reused {
            Some(existing) => existing.clone(),
            None => Arc::new(Upstream::new(
                u.clone(),
                UpstreamPolicy {
                    hash_key,
                    settings,
                    health,
                    outlier,
                    retry_budget,
                    slow_start,
                    breaker,
                    locality,
                    least_conn_choices,
                },
                discovery,
                specs,
                prev.and_then(|p| p.upstream(&u.name)).map(|x| &**x),
            )),
        });
    }
    out
}

fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("`{text}` is not a valid header name"))
}

fn header_value(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(text).map_err(|_| format!("`{text}` is not a valid header value"))
}

fn regex(text: &str) -> Result<Regex, String> {
    Regex::new(text).map_err(|e| format!("invalid regex: {e}"))
}

/// A route's header edits. Values not marked `public` are secrets: they are flagged sensitive
/// (shown as `Sensitive` in any `Debug` dump, never indexed by HPACK) and kept out of error
/// messages, which reach logs.
fn header_ops(raw: &HeaderEdits, at: &str, errors: &mut ConfigErrors) -> HeaderOps {
    for (i, p) in raw.public.iter().enumerate() {
        let pat = format!("{at}.public[{i}]");
        if let Err(e) = header_name(p) {
            errors.push(pat, e);
        } else if crate::logging::is_credential_header(p) {
            errors.push(
                pat,
                format!("`{p}` carries credentials and is never public"),
            );
        } else if !raw
            .set
            .keys()
            .chain(raw.add.keys())
            .any(|k| k.eq_ignore_ascii_case(p))
        {
            errors.push(pat, format!("`{p}` is not a header of set or add"));
        }
    }
    let mut pairs = |kind: &str,
                     map: &std::collections::BTreeMap<String, String>|
     -> Box<[(HeaderName, HeaderValue)]> {
        map.iter()
            .filter_map(|(k, v)| {
                let public = raw.is_public(k);
                let value = if public {
                    header_value(v)
                } else {
                    HeaderValue::from_str(v)
                        .map(|mut v| {
                            v.set_sensitive(true);
                            v
                        })
                        .map_err(|_| {
                            "not a valid header value (not shown: it is secret unless listed in `public`)"
                                .to_owned()
                        })
                };
                match (header_name(k), value) {
                    (Ok(n), Ok(v)) => Some((n, v)),
                    (Err(e), _) | (_, Err(e)) => {
                        errors.push(format!("{at}.{kind}.{k}"), e);
                        None
                    }
                }
            })
            .collect()
    };
    let set = pairs("set", &raw.set);
    let add = pairs("add", &raw.add);
    let remove = raw
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            header_name(n)
                .map_err(|e| errors.push(format!("{at}.remove[{i}]"), e))
                .ok()
        })
        .collect();
    HeaderOps { remove, set, add }
}

fn host_match(text: &str) -> Result<HostMatch, String> {
    let host = text.to_ascii_lowercase();
    let bad = |why: &str| Err(format!("`{text}` {why}"));
    if host.contains(':') && !host.starts_with('[') {
        return bad("must not carry a port: routes match the host name only");
    }
    if let Some(rest) = host.strip_prefix("*.") {
        if rest.is_empty() || rest.contains('*') {
            return bad("is not a valid wildcard (write *.example.com)");
        }
        return Ok(HostMatch::Suffix(format!(".{rest}").into()));
    }
    if host.is_empty() || host.contains('*') || host.contains('/') {
        return bad("is not a host name (write example.com or *.example.com)");
    }
    Ok(HostMatch::Exact(host.trim_end_matches('.').into()))
}

fn path_match(m: &MatchSection, at: &str, errors: &mut ConfigErrors) -> Option<PathMatch> {
    let given = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        errors.push(
            at.to_owned(),
            "use only one of path, path_prefix and path_regex",
        );
        return None;
    }
    // Requests are matched on their normalized path, so a path that normalization would change
    // could never match. The most lenient policy is the test: a listener may keep `//`, `%2F`
    // and backslashes.
    let must_be_absolute = |key: &str, p: &str, errors: &mut ConfigErrors| {
        if !p.starts_with('/') {
            errors.push(format!("{at}.{key}"), format!("`{p}` must start with `/`"));
            return;
        }
        match path::normalize(p.as_bytes(), &PathPolicy::LENIENT) {
            Ok(t) if t.query.is_none() && !t.changed() => {}
            Ok(t) if t.query.is_none() => errors.push(
                format!("{at}.{key}"),
                format!(
                    "`{p}` never matches: requests are matched on their normalized path, here `{}`",
                    t.path
                ),
            ),
            Ok(_) => errors.push(format!("{at}.{key}"), "a path cannot hold a query (`?`)"),
            Err(r) => {
                let why = r.reason().trim_end().trim_start_matches("bad request: ");
                errors.push(format!("{at}.{key}"), format!("`{p}`: {why}"))
            }
        }
    };
    if let Some(p) = &m.path {
        must_be_absolute("path", p, errors);
        return Some(PathMatch::Exact(p.as_str().into()));
    }
    if let Some(p) = &m.path_prefix {
        must_be_absolute("path_prefix", p, errors);
        return Some(PathMatch::Prefix(p.as_str().into()));
    }
    if let Some(p) = &m.path_regex {
        return regex(p)
            .map(PathMatch::Regex)
            .map_err(|e| errors.push(format!("{at}.path_regex"), e))
            .ok();
    }
    Some(PathMatch::Prefix("/".into()))
}

fn rewrite(raw: &RewriteSection, at: &str, errors: &mut ConfigErrors) -> Option<PathRewrite> {
    let regex_form = raw.pattern.is_some() || raw.replace.is_some();
    let prefix_form = raw.strip_prefix.is_some() || raw.add_prefix.is_some();
    if regex_form && prefix_form {
        errors.push(
            at.to_owned(),
            "use either pattern/replace or strip_prefix/add_prefix, not both",
        );
        return None;
    }
    if regex_form {
        let (Some(p), Some(r)) = (&raw.pattern, &raw.replace) else {
            errors.push(at.to_owned(), "pattern and replace go together");
            return None;
        };
        let pattern = regex(p)
            .map_err(|e| errors.push(format!("{at}.pattern"), e))
            .ok()?;
        if let Err(e) = check_replacement(&pattern, r) {
            errors.push(format!("{at}.replace"), e);
            return None;
        }
        if !r.starts_with('/') && !r.starts_with('$') {
            errors.push(
                format!("{at}.replace"),
                "must produce a path starting with `/`",
            );
        }
        return Some(PathRewrite::Regex {
            pattern,
            replace: r.as_str().into(),
        });
    }
    for (key, v) in [
        ("strip_prefix", &raw.strip_prefix),
        ("add_prefix", &raw.add_prefix),
    ] {
        if let Some(v) = v {
            if !v.starts_with('/') {
                errors.push(format!("{at}.{key}"), format!("`{v}` must start with `/`"));
            }
        }
    }
    if !prefix_form {
        errors.push(
            at.to_owned(),
            "give pattern and replace, or strip_prefix and/or add_prefix",
        );
        return None;
    }
    Some(PathRewrite::Prefix {
        strip: raw
            .strip_prefix
            .as_deref()
            .map(|s| s.trim_end_matches('/').into()),
        add: raw.add_prefix.as_deref().map(Into::into),
    })
}

fn respond(raw: &RespondSection, at: &str, errors: &mut ConfigErrors) -> Option<Respond> {
    let status = match StatusCode::from_u16(raw.status) {
        Ok(s) if raw.status >= 200 => s,
        _ => {
            errors.push(
                format!("{at}.status"),
                format!("`{}` is not a final HTTP status (200 to 999)", raw.status),
            );
            return None;
        }
    };
    let mut headers = Vec::new();
    for (k, v) in &raw.headers {
        match (header_name(k), header_value(v)) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(e), _) | (_, Err(e)) => errors.push(format!("{at}.headers.{k}"), e),
        }
    }
    if !raw.body.is_empty() && !headers.iter().any(|(n, _)| n == CONTENT_TYPE) {
        headers.push((
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ));
    }
    Some(Respond {
        status,
        headers: headers.into(),
        body: Bytes::from(raw.body.clone()),
    })
}

fn routes(
    raw: &[RouteSection],
    declared: &HashSet<&str>,
    upstreams: &[Arc<Upstream>],
    prev: Option<&Snapshot>,
    errors: &mut ConfigErrors,
) -> Vec<Route> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = format!("routes[{i}]");
        let before = errors.len();
        if r.name.is_empty() {
            errors.push(format!("{at}.name"), "must not be empty");
        } else if !names.insert(r.name.as_str()) {
            errors.push(
                format!("{at}.name"),
                format!("route `{}` is defined twice", r.name),
            );
        }
        let m = &r.matches;
        let host = match &m.host {
            None => Some(HostMatch::Any),
            Some(h) => host_match(h)
                .map_err(|e| errors.push(format!("{at}.match.host"), e))
                .ok(),
        };
        let path = path_match(m, &format!("{at}.match"), errors);
        let mut methods = Vec::new();
        for (j, name) in m.methods.iter().enumerate() {
            let upper = name.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => errors.push(
                    format!("{at}.match.methods[{j}]"),
                    format!("`{name}` is not an HTTP method"),
                ),
            }
        }
        let mut headers = Vec::new();
        for (j, h) in m.headers.iter().enumerate() {
            let hat = format!("{at}.match.headers[{j}]");
            let Ok(name) = header_name(&h.name).map_err(|e| errors.push(format!("{hat}.name"), e))
            else {
                continue;
            };
            let value = match (&h.value, &h.regex) {
                (Some(_), Some(_)) => {
                    errors.push(hat, "use value or regex, not both");
                    continue;
                }
                (Some(v), None) => match header_value(v) {
                    Ok(mut v) => {
                        // A route gated on a credential holds it: keep it out of dumps.
                        v.set_sensitive(crate::logging::is_credential_header(&h.name));
                        HeaderValueMatch::Exact(v)
                    }
                    Err(e) => {
                        errors.push(format!("{hat}.value"), e);
                        continue;
                    }
                },
                (None, Some(re)) => match regex(re) {
                    Ok(re) => HeaderValueMatch::Regex(re),
                    Err(e) => {
                        errors.push(format!("{hat}.regex"), e);
                        continue;
                    }
                },
                (None, None) => HeaderValueMatch::Present,
            };
            headers.push(HeaderCondition { name, value });
        }
        let previous = prev.and_then(|p| p.routes.routes().iter().find(|x| *x.name == *r.name));
        let plugin = r.plugin.as_ref().and_then(|p| {
            let lookup = |name: &str| upstreams.iter().find(|u| *u.name == *name).cloned();
            let cx = crate::plugin::PluginCx {
                route: &r.name,
                path_prefix: m.path_prefix.as_deref(),
                at: &crate::section::At::new(format!("{at}.plugin")),
                upstreams: &lookup,
                prev: previous.and_then(|p| p.plugin.as_ref()),
                resources: crate::plugin::Resources::process(),
            };
            p.build(&cx, errors)
        });
        let answered_by_plugin = r.plugin.as_ref().is_some_and(|p| p.answers_itself());
        let action = match (&r.upstream, &r.respond) {
            (None, None) if answered_by_plugin => Some(Action::Plugin),
            (Some(_), _) | (_, Some(_)) if answered_by_plugin => {
                errors.push(
                    at.clone(),
                    "its plugin answers every request: drop upstream and respond",
                );
                None
            }
            (Some(_), Some(_)) => {
                errors.push(at.clone(), "give either upstream or respond, not both");
                None
            }
            (None, None) => {
                errors.push(at.clone(), "needs an action: upstream or respond");
                None
            }
            (Some(name), None) => match upstreams.iter().find(|u| *u.name == **name) {
                Some(u) => Some(Action::Proxy(u.clone())),
                None => {
                    // One that is declared but failed its own checks has been reported already.
                    if !declared.contains(name.as_str()) {
                        errors.push(
                            format!("{at}.upstream"),
                            format!("no upstream named `{name}`"),
                        );
                    }
                    None
                }
            },
            (None, Some(resp)) => {
                respond(resp, &format!("{at}.respond"), errors).map(Action::Respond)
            }
        };
        let rewrite = r
            .rewrite
            .as_ref()
            .and_then(|rw| rewrite(rw, &format!("{at}.rewrite"), errors));
        if rewrite.is_some() && r.respond.is_some() {
            errors.push(format!("{at}.rewrite"), "has no effect on a respond route");
        }
        let request_headers =
            header_ops(&r.request_headers, &format!("{at}.request_headers"), errors);
        let response_headers = header_ops(
            &r.response_headers,
            &format!("{at}.response_headers"),
            errors,
        );
        let retry = retry_policy(&r.retry, &format!("{at}.retry"), errors);
        let timeout = r.timeout.map(|d| d.0);
        let rate_limit = r.rate_limit.as_ref().and_then(|rl| {
            // Unchanged, the buckets carry on: a reload is no way to reset a limit.
            if let Some(kept) = previous
                .and_then(|p| p.rate_limit.as_ref())
                .filter(|k| k.definition == *rl)
            {
                return Some(kept.clone());
            }
            route_rate(rl, &format!("{at}.rate_limit"), errors).map(Arc::new)
        });
        let concurrency = r.max_in_flight.map(|max| {
            if max == 0 {
                errors.push(format!("{at}.max_in_flight"), "must be at least 1");
            }
            previous
                .and_then(|p| p.concurrency.clone())
                .filter(|c| c.max() == max)
                .unwrap_or_else(|| Arc::new(ConcurrencyLimit::new(max)))
        });
        if timeout.is_some_and(|d| d.is_zero()) {
            errors.push(format!("{at}.timeout"), "must be above zero");
        }
        if errors.len() > before {
            continue;
        }
        let (Some(host), Some(path), Some(action)) = (host, path, action) else {
            continue;
        };
        out.push(Route {
            name: r.name.as_str().into(),
            host,
            path,
            methods: MethodSet::new(methods),
            headers: headers.into(),
            action,
            rewrite,
            request_headers,
            response_headers,
            max_request_body: r.max_request_body.map(|s| s.0),
            max_error_body: r.max_error_body.map(|s| s.0),
            retry,
            timeout,
            rate_limit,
            concurrency,
            plugin,
            metrics: RouteMetrics::new(&r.name),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    fn errors(yaml: &str) -> Vec<String> {
        let text = format!("listeners: [{{ name: web, listen: \"127.0.0.1:1\" }}]\n{yaml}");
        match load_str(&text, None) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    /// Each expected error starts one reported error, and nothing else is reported.
    fn assert_exactly(errs: &[String], expected: &[&str]) {
        for want in expected {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in:\n{}",
                errs.join("\n")
            );
        }
        assert_eq!(errs.len(), expected.len(), "{}", errs.join("\n"));
    }

    #[test]
    fn alert_webhook_errors_name_their_paths() {
        let errs = errors(
            r#"
upstreams:
  - { name: sink, backends: ["127.0.0.1:1"] }
routes:
  - name: a
    match: { path_prefix: /alerts }
    plugin:
      alert_webhook:
        auth: { bearer: { token: "" } }
        destinations:
          - { name: broken, upstream: sink, template: { inline: "{{ alerts | nosuchfilter }}" } }
          - { name: unclosed, url: "https://hooks.example.com/x", template: { inline: "{% if x %}" } }
          - { name: nowhere, upstream: gone, template: { builtin: slack } }
          - { name: pd, upstream: sink, template: { builtin: pagerduty } }
          - { name: both, upstream: sink, url: "http://x/", template: { builtin: nope } }
          - { name: batch, url: "ftp://x/", template: { builtin: generic }, split: batch }
  - name: b
    plugin: { alert_webhook: { destinations: [] } }
  - name: c
    match: { path_prefix: /c }
    upstream: sink
    plugin: { alert_webhook: { destinations: [{ name: d, upstream: sink, template: { builtin: generic } }] } }
"#,
        );
        let at = "routes[0].plugin.alert_webhook";
        let expected = [
            format!("{at}.auth.bearer.token: must not be empty"),
            format!("{at}.destinations[0].template: line 1: "),
            format!("{at}.destinations[1].template: line 1: "),
            format!("{at}.destinations[2].upstream: no upstream named `gone`"),
            format!("{at}.destinations[3].split: the pagerduty template sends one event per alert"),
            format!("{at}.destinations[4]: give either url or upstream, not both"),
            format!("{at}.destinations[4].template.builtin: no ready-made template `nope`"),
            format!("{at}.destinations[5].url: must start with http:// or https://"),
            format!("{at}.destinations[5].batch_size: split: batch needs a batch_size"),
            "routes[1].plugin.alert_webhook: needs its route to match a path_prefix".to_owned(),
            "routes[2]: its plugin answers every request: drop upstream and respond".to_owned(),
        ];
        for want in &expected {
            assert!(
                errs.iter().any(|e| e.starts_with(want.as_str())),
                "missing {want:?} in:\n{}",
                errs.join("\n")
            );
        }
        assert_eq!(errs.len(), expected.len(), "{}", errs.join("\n"));
    }

    #[test]
    fn semantic_errors_are_all_collected_with_paths() {
        let errs = errors(
            r#"
upstreams:
  - { name: a, backends: ["127.0.0.1:1", "127.0.0.1:1"] }
  - { name: a, backends: ["nope"] }
  - { name: b, backends: ["127.0.0.1:2 speed=3"], hash_key: path }
  - { name: c, backends: [], timeouts: { connect: 0 } }
  - { name: d, backends: ["127.0.0.1:3"], least_conn_choices: 4 }
  - { name: e, backends: ["127.0.0.1:3"], balance: least_conn, least_conn_choices: 1 }
routes:
  - { name: r, match: { host: "api.example.com:80" }, upstream: a }
  - { name: r, match: { path: /x, path_prefix: /y }, respond: { body: x } }
  - { name: t, upstream: a, respond: { body: x } }
  - { name: u }
  - { name: v, match: { headers: [{ name: "bad header", value: x }] }, upstream: a, rewrite: { strip_prefix: api } }
  - { name: w, upstream: a, request_headers: { set: { x-ok: "line\nbreak" } }, rewrite: { pattern: "^/(.*)$" } }
  - { name: x, match: { methods: ["G T"], host: "*." }, respond: { status: 99 } }
"#,
        );
        let expected = [
            "upstreams[0].backends[1]: 127.0.0.1:1 is listed twice",
            "upstreams[1].name: upstream `a` is defined twice",
            "upstreams[1].backends[0]: `nope` has no port",
            "upstreams[2].backends[0]: unknown backend option `speed=3`",
            "upstreams[2].hash_key: only used with balance: consistent_hash",
            "upstreams[3].backends: at least one backend is needed",
            "upstreams[3].timeouts.connect: must be above zero",
            "upstreams[4].least_conn_choices: only used with balance: least_conn",
            "upstreams[5].least_conn_choices: must be 2 to 128",
            "routes[0].match.host: `api.example.com:80` must not carry a port",
            "routes[1].name: route `r` is defined twice",
            "routes[1].match: use only one of path, path_prefix and path_regex",
            "routes[2]: give either upstream or respond, not both",
            "routes[3]: needs an action: upstream or respond",
            "routes[4].match.headers[0].name: `bad header` is not a valid header name",
            "routes[4].rewrite.strip_prefix: `api` must start with `/`",
            "routes[5].rewrite: pattern and replace go together",
            "routes[5].request_headers.set.x-ok: not a valid header value (not shown",
            "routes[6].match.host: `*.` is not a valid wildcard",
            "routes[6].match.methods[0]: `G T` is not an HTTP method",
            "routes[6].respond.status: `99` is not a final HTTP status",
        ];
        assert_exactly(&errs, &expected);
    }

    #[test]
    fn route_paths_must_be_in_normal_form() {
        let errs = errors(
            r#"
routes:
  - { name: a, match: { path: /a//b/../c }, respond: { body: x } }
  - { name: b, match: { path_prefix: "/%61pi/" }, respond: { body: x } }
  - { name: c, match: { path: "/x?y" }, respond: { body: x } }
  - { name: d, match: { path: "/x%00" }, respond: { body: x } }
  - { name: e, match: { path_prefix: "/a%2Fb//c\\d/" }, respond: { body: x } }
"#,
        );
        let expected = [
            "routes[0].match.path: `/a//b/../c` never matches: requests are matched on their normalized path, here `/a//c`",
            "routes[1].match.path_prefix: `/%61pi/` never matches: requests are matched on their normalized path, here `/api/`",
            "routes[2].match.path: a path cannot hold a query (`?`)",
            "routes[3].match.path: `/x%00`: control character in the path",
            "routes[4].match.path_prefix: `/a%2Fb//c\\d/` never matches: requests are matched on their normalized path, here `/a%2Fb//c%5Cd/`",
        ];
        assert_exactly(&errs, &expected);
    }

    #[test]
    fn zookeeper_upstreams_are_checked() {
        let errs = errors(
            r#"
upstreams:
  - { name: a, zookeeper: { service: api } }
routes: [{ name: r, upstream: a }]
"#,
        );
        assert_eq!(
            errs,
            ["upstreams[0].zookeeper: needs the top-level zookeeper: section (connect: ...)"]
        );
        let errs = errors(
            r#"
zookeeper: { connect: "", root: zkgate/, session_timeout: 100ms }
upstreams:
  - { name: a, zookeeper: { service: api }, backends: ["127.0.0.1:1"] }
  - { name: b, zookeeper: { service: "x/y" } }
  - { name: c, zookeeper: { path: "relative" } }
  - { name: d, zookeeper: { service: s, path: /p } }
routes: [{ name: r, upstream: a }]
"#,
        );
        let expected = [
            "zookeeper.connect: must name at least one host:port",
            "zookeeper.session_timeout: must be at least 1s",
            "zookeeper.root: `zkgate/` is not an absolute ZooKeeper path",
            "upstreams[0]: give either backends or zookeeper, not both",
            "upstreams[1].zookeeper: service `x/y` must be a plain name",
            "upstreams[2].zookeeper: `relative` is not an absolute ZooKeeper path",
            "upstreams[3].zookeeper: give either service: NAME or path: /absolute/path",
        ];
        assert_exactly(&errs, &expected);
        let ok = load_str(
            "listeners: [{ name: web, listen: \"127.0.0.1:1\" }]\nzookeeper: { connect: \"127.0.0.1:2181\", root: /r }\nupstreams: [{ name: a, zookeeper: { service: api } }, { name: b, zookeeper: { path: /real_server } }]\nroutes: [{ name: r, upstream: a }]\n",
            None,
        )
        .expect("valid");
        assert_eq!(
            ok.upstream("a").unwrap().discovery.as_deref(),
            Some("/r/services/api")
        );
        assert_eq!(
            ok.upstream("b").unwrap().discovery.as_deref(),
            Some("/real_server")
        );
    }

    #[test]
    fn zookeeper_chroot_and_digest_are_checked_and_built() {
        let errs = errors(
            r#"
zookeeper:
  connect: "h1:2181,,h3:2181/a"
  chroot: /b
  digest: { user: "x:y", password: p }
upstreams: [{ name: a, backends: ["127.0.0.1:1"] }]
routes: [{ name: r, upstream: a }]
"#,
        );
        assert_exactly(
            &errs,
            &[
                "zookeeper.connect: must name at least one host:port, separated by commas",
                "zookeeper.chroot: give the chroot either here or as a /suffix of connect",
                "zookeeper.digest.user: must be a non-empty name without `:`",
            ],
        );
        let errs = errors(
            "zookeeper: { connect: \"h:1\", chroot: \"rel\" }\nupstreams: [{ name: a, backends: [\"127.0.0.1:1\"] }]\nroutes: [{ name: r, upstream: a }]\n",
        );
        assert_exactly(
            &errs,
            &["zookeeper.chroot: `rel` is not an absolute ZooKeeper path"],
        );

        let ok = load_str(
            "listeners: [{ name: web, listen: \"127.0.0.1:1\" }]\nzookeeper: { connect: \"h1:2181,h2:2181\", chroot: /prod, digest: { user: gw, password: s3cret } }\nupstreams: [{ name: a, zookeeper: { service: api } }]\nroutes: [{ name: r, upstream: a }]\n",
            None,
        )
        .expect("valid");
        let zk = ok.settings.zookeeper.as_ref().unwrap();
        assert_eq!(zk.connect, "h1:2181,h2:2181/prod");
        assert_eq!(zk.digest.as_ref().unwrap().password, "s3cret");
        // `/config` shows the config without the password.
        let shown = serde_yaml::to_string(&ok.raw).unwrap();
        assert!(
            shown.contains("<redacted>") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn header_edit_values_are_secret_unless_public() {
        let errs = errors(
            r#"
upstreams: [{ name: a, backends: ["127.0.0.1:1"] }]
routes:
  - name: r
    upstream: a
    request_headers:
      set: { authorization: "Bearer up", x-key: "s3cret\x01" }
      public: [authorization, x-missing, "bad name"]
"#,
        );
        assert_exactly(
            &errs,
            &[
                "routes[0].request_headers.public[0]: `authorization` carries credentials",
                "routes[0].request_headers.public[1]: `x-missing` is not a header of set or add",
                "routes[0].request_headers.public[2]: `bad name` is not a valid header name",
                "routes[0].request_headers.set.x-key: not a valid header value (not shown",
            ],
        );
        assert!(!errs.concat().contains("s3cret"), "{errs:?}");

        // A number where a secret goes is refused without being shown.
        let errs = errors(
            "zookeeper: { connect: \"h:1\", digest: { user: u, password: 91827364 } }\nadmin: { token: 123456789012345678 }\nupstreams: [{ name: a, backends: [\"127.0.0.1:1\"] }]\nroutes: [{ name: r, upstream: a, request_headers: { set: { x-pin: 5551234 } } }]\n",
        );
        assert_exactly(
            &errs,
            &[
                "zookeeper.digest.password: must be a string: put it in quotes",
                "admin.token: must be a string: put it in quotes",
                "routes[0].request_headers.set.x-pin: must be a string: put it in quotes",
            ],
        );
        for number in ["91827364", "123456789012345678", "5551234"] {
            assert!(!errs.concat().contains(number), "{errs:?}");
        }

        let ok = load_str(
            r#"
listeners: [{ name: web, listen: "127.0.0.1:1" }]
upstreams: [{ name: a, backends: ["127.0.0.1:1"] }]
routes:
  - name: r
    match: { headers: [{ name: Authorization, value: "Bearer in-s3cret" }, { name: x-v, value: "2" }] }
    upstream: a
    request_headers:
      set: { authorization: "Bearer up-s3cret", X-Proto: https }
      add: { x-key: add-s3cret }
      public: [x-proto]
    response_headers: { set: { set-cookie: "c=out-s3cret" } }
"#,
            None,
        )
        .expect("valid");
        let shown = serde_json::to_string(&ok.raw).unwrap();
        let debug = format!("{:?} {:?}", ok.raw, ok.routes.routes()[0].request_headers);
        for text in [&shown, &debug] {
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains("https"), "{text}");
        }
        assert!(shown.contains(r#""x-v","value":"2""#), "{shown}");
        let route = &ok.routes.routes()[0];
        let sensitive = |ops: &crate::route::HeaderOps| -> Vec<(String, bool)> {
            ops.set
                .iter()
                .chain(ops.add.iter())
                .map(|(n, v)| (n.to_string(), v.is_sensitive()))
                .collect()
        };
        assert_eq!(
            sensitive(&route.request_headers),
            [
                ("x-proto".into(), false),
                ("authorization".into(), true),
                ("x-key".into(), true)
            ]
        );
        assert_eq!(
            sensitive(&route.response_headers),
            [("set-cookie".into(), true)]
        );
        let mut secret: Vec<_> = ok.raw.secret_header_names().collect();
        secret.sort_unstable();
        assert_eq!(secret, ["authorization", "set-cookie", "x-key"]);
    }

    #[test]
    fn every_secret_value_is_found_for_the_logger() {
        let ok = load_str(
            r#"
listeners: [{ name: web, listen: "127.0.0.1:1" }]
admin: { token: admin-token-0123456789 }
zookeeper: { connect: "h:1", digest: { user: u, password: zk-password } }
upstreams: [{ name: a, backends: ["127.0.0.1:1"] }]
routes:
  - name: r
    match: { path_prefix: /alerts }
    plugin:
      alert_webhook:
        auth: { bearer: { token: am-token } }
        destinations:
          - name: s
            url: "https://hooks.slack.com/services/T0/B0/XyZ"
            headers: { x-key: hk-s3cret }
            vars: { rk: vv-s3cret }
            template: { builtin: slack }
"#,
            None,
        )
        .expect("valid");
        let mut found = ok.raw.secret_values();
        found.sort_unstable();
        assert_eq!(
            found,
            [
                "admin-token-0123456789",
                "am-token",
                "hk-s3cret",
                "https://hooks.slack.com/services/T0/B0/XyZ",
                "vv-s3cret",
                "zk-password"
            ]
        );
        // Collecting is switched off again: `/config` collects nothing.
        let _ = serde_json::to_string(&ok.raw).unwrap();
        assert_eq!(ok.raw.secret_values().len(), 6);
        let mut names: Vec<_> = ok.raw.secret_header_names().collect();
        names.sort_unstable();
        assert_eq!(names, ["x-key"]);
    }

    #[test]
    fn admin_token_is_checked_and_hidden() {
        let base = "upstreams: [{ name: a, backends: [\"127.0.0.1:1\"] }]\nroutes: [{ name: r, upstream: a }]\n";
        for (token, why) in [
            ("short", "admin.token: must be at least 16 characters"),
            (
                "with a space inside it",
                "admin.token: must be printable ASCII",
            ),
            ("", "admin.token: must be at least 16 characters"),
        ] {
            let errs = errors(&format!("admin: {{ token: \"{token}\" }}\n{base}"));
            assert_exactly(&errs, &[why]);
        }
        let ok = load_str(
            &format!("listeners: [{{ name: web, listen: \"127.0.0.1:1\" }}]\nadmin: {{ token: 0123456789abcdef-s3cret }}\n{base}"),
            None,
        )
        .expect("valid");
        let token = ok.admin_token.as_ref().expect("a token");
        assert!(token.verify(b"0123456789abcdef-s3cret"));
        assert!(!token.verify(b"0123456789abcdef-s3cre"));
        assert!(!token.verify(b""));
        let shown = serde_json::to_string(&ok.raw).unwrap();
        let debug = format!("{ok:?}");
        for text in [&shown, &debug] {
            assert!(!text.contains("s3cret"), "{text}");
        }
        assert!(load_str(
            &format!("listeners: [{{ name: web, listen: \"127.0.0.1:1\" }}]\n{base}"),
            None
        )
        .expect("valid")
        .admin_token
        .is_none());
    }

    #[test]
    fn a_valid_config_builds_and_reuses_unchanged_upstreams() {
        let yaml = "listeners: [{ name: web, listen: \"127.0.0.1:1\" }]\nupstreams: [{ name: a, backends: [\"127.0.0.1:2\"] }, { name: b, backends: [\"127.0.0.1:3\"] }]\nroutes: [{ name: r, upstream: a }]\n";
        let first = load_str(yaml, None).expect("valid");
        let second =
            load_str(&yaml.replace("127.0.0.1:3", "127.0.0.1:4"), Some(&first)).expect("valid");
        assert_eq!(second.generation, 2);
        assert!(std::sync::Arc::ptr_eq(
            first.upstream("a").unwrap(),
            second.upstream("a").unwrap()
        ));
        assert!(!std::sync::Arc::ptr_eq(
            first.upstream("b").unwrap(),
            second.upstream("b").unwrap()
        ));
    }

    #[test]
    fn process_settings_are_bounded() {
        let errors = |server: &str| {
            errors(&format!(
                "{server}\nroutes: [{{ name: r, match: {{ path_prefix: / }}, respond: {{ status: 204 }} }}]"
            ))
        };
        let errs = errors(
            "server: { threads: 100000, listener_tasks_per_fd: 0, upstream_keepalive_pool_size: 100000000000, grace_period: 2h, graceful_shutdown_timeout: 1h }",
        );
        assert_exactly(
            &errs,
            &[
                "server.threads: must be between 1 and 1024",
                "server.listener_tasks_per_fd: must be between 1 and 64",
                "server.upstream_keepalive_pool_size: must be between 0 and 1000000",
                "server.grace_period: must be at most 1h",
            ],
        );
        assert_exactly(&errors("server: { threads: 0 }"), &["server.threads"]);
        assert!(errors("server: { threads: 1024, listener_tasks_per_fd: 64 }").is_empty());
    }
}
