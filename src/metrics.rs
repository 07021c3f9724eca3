//! Prometheus metrics, registered once in the default registry (the one `prometheus::gather`
//! reads), with per-route handles resolved when a snapshot is built, not per request.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    register_gauge, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Gauge, Histogram, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec,
};

/// Latency buckets from 250 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

pub struct Metrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub downstream_connections: IntGauge,
    pub bad_requests: IntCounter,
    pub backends: IntGaugeVec,
    pub health_check_failures: IntCounterVec,
    pub limited: IntCounterVec,
    pub backends_available: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    pub circuit_open: IntGaugeVec,
    pub outlier_ejections: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_node_version: IntGauge,
    pub access_log_dropped: IntCounter,
    pub zk_connected: IntGauge,
    pub zk_sessions_lost: IntCounter,
    pub zk_last_sync: IntGauge,
    pub zk_rejected: IntCounter,
    pub zk_full_sync: Gauge,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // Registration only fails on a duplicate name, which this single static rules out.
    Metrics {
        requests: register_int_counter_vec!(
            "zkgate_requests_total",
            "Requests answered, by route and status class (route=\"\" when no route matched).",
            &["route", "class"]
        )
        .expect("register zkgate_requests_total"),
        request_duration: register_histogram_vec!(
            "zkgate_request_duration_seconds",
            "Time from the request head to the end of the response, by route.",
            &["route"],
            LATENCY_BUCKETS.to_vec()
        )
        .expect("register zkgate_request_duration_seconds"),
        upstream_duration: register_histogram_vec!(
            "zkgate_upstream_duration_seconds",
            "Time from choosing a backend to its response head, by route.",
            &["route"],
            LATENCY_BUCKETS.to_vec()
        )
        .expect("register zkgate_upstream_duration_seconds"),
        downstream_connections: register_int_gauge!(
            "zkgate_downstream_connections_active",
            "Client connections open on the proxy listeners."
        )
        .expect("register zkgate_downstream_connections_active"),
        bad_requests: register_int_counter!(
            "zkgate_bad_requests_total",
            "Requests refused with 400 before routing: a target that is not a normal path, a \
             missing or repeated Host."
        )
        .expect("register zkgate_bad_requests_total"),
        backends: register_int_gauge_vec!(
            "zkgate_upstream_backends",
            "Backends that can be picked (weight above zero), per upstream.",
            &["upstream"]
        )
        .expect("register zkgate_upstream_backends"),
        health_check_failures: register_int_counter_vec!(
            "zkgate_health_check_failures_total",
            "Failed active health checks, by upstream.",
            &["upstream"]
        )
        .expect("register zkgate_health_check_failures_total"),
        limited: register_int_counter_vec!(
            "zkgate_requests_limited_total",
            "Requests refused by a route's rate limit (429) or cap on requests in flight (503).",
            &["route", "reason"]
        )
        .expect("register zkgate_requests_limited_total"),
        backends_available: register_int_gauge_vec!(
            "zkgate_upstream_backends_available",
            "Backends neither unhealthy, ejected nor drained, by upstream (every 100 ms).",
            &["upstream"]
        )
        .expect("register zkgate_upstream_backends_available"),
        in_flight: register_int_gauge_vec!(
            "zkgate_upstream_requests_in_flight",
            "Requests in flight to the upstream's backends (every 100 ms).",
            &["upstream"]
        )
        .expect("register zkgate_upstream_requests_in_flight"),
        circuit_open: register_int_gauge_vec!(
            "zkgate_upstream_circuit_open",
            "1 while the upstream's circuit breaker is open or half-open.",
            &["upstream"]
        )
        .expect("register zkgate_upstream_circuit_open"),
        outlier_ejections: register_int_counter_vec!(
            "zkgate_outlier_ejections_total",
            "Backends ejected for failing requests in a row, by upstream.",
            &["upstream"]
        )
        .expect("register zkgate_outlier_ejections_total"),
        config_reloads: register_int_counter_vec!(
            "zkgate_config_reloads_total",
            "Config reloads by result (success or failure).",
            &["result"]
        )
        .expect("register zkgate_config_reloads_total"),
        config_node_version: register_int_gauge!(
            "zkgate_config_node_version",
            "Version of the ZooKeeper config node now serving (replicas that agree have converged); -1 without one."
        )
        .expect("register zkgate_config_node_version"),
        access_log_dropped: register_int_counter!(
            "zkgate_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind."
        )
        .expect("register zkgate_access_log_dropped_total"),
        zk_connected: register_int_gauge!(
            "zkgate_zookeeper_connected",
            "1 while the discovery session is connected to ZooKeeper."
        )
        .expect("register zkgate_zookeeper_connected"),
        zk_sessions_lost: register_int_counter!(
            "zkgate_zookeeper_sessions_lost_total",
            "ZooKeeper sessions lost (expired, closed or never established); each is followed by a reconnect."
        )
        .expect("register zkgate_zookeeper_sessions_lost_total"),
        zk_last_sync: register_int_gauge!(
            "zkgate_zookeeper_last_sync_timestamp_seconds",
            "Unix time of the last instance list read from ZooKeeper."
        )
        .expect("register zkgate_zookeeper_last_sync_timestamp_seconds"),
        zk_rejected: register_int_counter!(
            "zkgate_zookeeper_rejected_instances_total",
            "Instance znodes skipped because they are in none of the accepted formats."
        )
        .expect("register zkgate_zookeeper_rejected_instances_total"),
        zk_full_sync: register_gauge!(
            "zkgate_zookeeper_full_sync_duration_seconds",
            "How long the last full read of every watched path took."
        )
        .expect("register zkgate_zookeeper_full_sync_duration_seconds"),
    }
});

/// Status classes as label values, indexed by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One route's handles.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    by_class: [IntCounter; 5],
    /// Refused by the route's rate limit, and by its cap on requests in flight.
    pub rate_limited: IntCounter,
    pub concurrency_limited: IntCounter,
    duration: Histogram,
    upstream: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        let m = &*METRICS;
        RouteMetrics {
            by_class: CLASSES.map(|c| m.requests.with_label_values(&[route, c])),
            rate_limited: m.limited.with_label_values(&[route, "rate"]),
            concurrency_limited: m.limited.with_label_values(&[route, "concurrency"]),
            duration: m.request_duration.with_label_values(&[route]),
            upstream: m.upstream_duration.with_label_values(&[route]),
        }
    }

    /// For requests that matched no route.
    pub fn unmatched() -> &'static RouteMetrics {
        static UNMATCHED: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new(""));
        &UNMATCHED
    }

    #[inline]
    pub fn observe(&self, status: u16, total: Duration, upstream: Option<Duration>) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(total.as_secs_f64());
        if let Some(u) = upstream {
            self.upstream.observe(u.as_secs_f64());
        }
    }
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::with_capacity(16 * 1024);
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut out) {
        log::error!("encoding metrics: {e}");
    }
    out
}
