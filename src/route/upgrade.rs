//! A route's `upgrades` section: whether a WebSocket upgrade on the route becomes a tunnel, and
//! how long a tunnel may stay silent both ways; with the route's tunnel metrics, resolved when
//! the route is built.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use serde::{Deserialize, Serialize};

use crate::section::{At, ConfigErrors, Dur};

/// HAProxy's advice for `timeout tunnel`: a tunnel is long-lived by design, and a WebSocket
/// whose peers send no pings of their own may stay silent for minutes (nginx's 60 s per
/// direction cuts those, which is why its users raise `proxy_read_timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpgradesSection {
    /// Whether a WebSocket upgrade is proxied as a tunnel (default true); false forwards the
    /// request without its `Upgrade` as a plain request.
    pub allow: Option<bool>,
    /// A tunnel where no byte moved in either direction for this long is closed (default 1h).
    pub idle_timeout: Option<Dur>,
}

/// What a route does with an upgrade request.
#[derive(Debug, Clone)]
pub struct Upgrades {
    pub allow: bool,
    pub idle_timeout: Duration,
    pub metrics: TunnelMetrics,
}

impl UpgradesSection {
    pub fn build(&self, route: &str, at: &At, errors: &mut ConfigErrors) -> Upgrades {
        let idle_timeout = self.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0);
        if idle_timeout.is_zero() {
            errors.push(at.key("idle_timeout"), "must be above zero");
        }
        Upgrades {
            allow: self.allow.unwrap_or(true),
            idle_timeout,
            metrics: TunnelMetrics::new(route),
        }
    }
}

struct Families {
    open: IntGaugeVec,
    idle_closed: IntCounterVec,
    duration: HistogramVec,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| Families {
    open: register_int_gauge_vec!(
        "zkgate_upgraded_connections",
        "Upgraded connections (WebSocket tunnels) open now, by route.",
        &["route"]
    )
    .expect("register zkgate_upgraded_connections"),
    idle_closed: register_int_counter_vec!(
        "zkgate_upgraded_idle_closed_total",
        "Upgraded connections closed because no byte moved either way for the route's \
         upgrades.idle_timeout, by route.",
        &["route"]
    )
    .expect("register zkgate_upgraded_idle_closed_total"),
    duration: register_histogram_vec!(
        "zkgate_upgraded_connection_duration_seconds",
        "How long upgraded connections stayed open, from the 101 to the close, by route.",
        &["route"],
        vec![
            1.0,
            10.0,
            60.0,
            300.0,
            900.0,
            3600.0,
            4.0 * 3600.0,
            24.0 * 3600.0
        ]
    )
    .expect("register zkgate_upgraded_connection_duration_seconds"),
});

/// One route's tunnel metrics.
#[derive(Debug, Clone)]
pub struct TunnelMetrics {
    pub open: IntGauge,
    pub idle_closed: IntCounter,
    pub duration: Histogram,
}

impl TunnelMetrics {
    pub fn new(route: &str) -> TunnelMetrics {
        let f = &*FAMILIES;
        TunnelMetrics {
            open: f.open.with_label_values(&[route]),
            idle_closed: f.idle_closed.with_label_values(&[route]),
            duration: f.duration.with_label_values(&[route]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> (Upgrades, ConfigErrors) {
        let s: UpgradesSection = serde_yaml::from_str(yaml).expect("parse");
        let mut errors = ConfigErrors::default();
        let u = s.build(
            "r",
            &At::root().index("routes", 0).key("upgrades"),
            &mut errors,
        );
        (u, errors)
    }

    #[test]
    fn upgrades_are_allowed_with_an_hour_of_silence_by_default() {
        let (u, errors) = build("{}");
        assert!(errors.is_empty());
        assert!(u.allow);
        assert_eq!(u.idle_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn a_zero_idle_timeout_is_an_error_at_its_path() {
        let (_, errors) = build("{ allow: false, idle_timeout: 0 }");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["routes[0].upgrades.idle_timeout"]);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(serde_yaml::from_str::<UpgradesSection>("{ idle: 1s }").is_err());
    }
}
