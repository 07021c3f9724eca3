//! The TLS metrics: handshakes by listener, result and version, their duration, and the
//! expiry time of every configured certificate (so that an alert can fire before it comes).

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
};

static HANDSHAKES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "zkgate_tls_handshakes_total",
        "TLS handshakes of client connections, by listener, result (ok, failed, timeout) and TLS version (empty unless ok).",
        &["listener", "result", "version"]
    )
    .expect("register zkgate_tls_handshakes_total")
});

static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "zkgate_tls_handshake_duration_seconds",
        "Time of the successful TLS handshakes of client connections, by listener.",
        &["listener"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("register zkgate_tls_handshake_duration_seconds")
});

static EXPIRY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "zkgate_tls_certificate_expiry_timestamp_seconds",
        "When each configured listener certificate expires (its notAfter, Unix seconds), by listener and the certificate's first name.",
        &["listener", "name"]
    )
    .expect("register zkgate_tls_certificate_expiry_timestamp_seconds")
});

/// The label pairs of the expiry gauges set now, to remove those no longer configured.
static PUBLISHED: LazyLock<Mutex<HashSet<(String, String)>>> = LazyLock::new(Default::default);

/// One listener's handshake series, resolved when its TLS is built.
pub struct HandshakeMetrics {
    pub ok_12: IntCounter,
    pub ok_13: IntCounter,
    pub failed: IntCounter,
    pub timeout: IntCounter,
    pub duration: Histogram,
}

impl HandshakeMetrics {
    pub fn new(listener: &str) -> HandshakeMetrics {
        let c = |result, version| HANDSHAKES.with_label_values(&[listener, result, version]);
        HandshakeMetrics {
            ok_12: c("ok", "TLSv1.2"),
            ok_13: c("ok", "TLSv1.3"),
            failed: c("failed", ""),
            timeout: c("timeout", ""),
            duration: DURATION.with_label_values(&[listener]),
        }
    }
}

/// Sets the expiry gauge of every `(listener, name, not_after)` given, and removes those
/// published before that are not among them.
pub fn publish_expiry<'a>(certs: impl IntoIterator<Item = (&'a str, &'a str, i64)>) {
    let mut published = PUBLISHED.lock().unwrap_or_else(|p| p.into_inner());
    let mut now = HashSet::new();
    for (listener, name, not_after) in certs {
        EXPIRY.with_label_values(&[listener, name]).set(not_after);
        now.insert((listener.to_owned(), name.to_owned()));
    }
    for (listener, name) in published.difference(&now) {
        let _ = EXPIRY.remove_label_values(&[listener, name]);
    }
    *published = now;
}
