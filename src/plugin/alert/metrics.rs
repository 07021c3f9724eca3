//! The alert plugin's metrics, per route and destination: alerts received, delivered, failed,
//! spooled and replayed, the time of each delivery try and of each render, and the spool's
//! depth. Handles are resolved once, when the plugin is built.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use super::deliver::Outcome;

struct Families {
    alerts: IntCounterVec,
    tries: IntCounterVec,
    delivery: HistogramVec,
    render: HistogramVec,
    render_errors: IntCounterVec,
    spool_messages: IntGaugeVec,
    spool_bytes: IntGaugeVec,
}

/// The `reason` label values of `zkgate_alert_render_errors_total`; an unknown reason counts as
/// the last.
const RENDER_ERROR_REASONS: &[&str] = &["template", "json", "out_of_fuel", "alert_range", "panic"];

/// Delivery and render buckets, 50 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let labels = &["route", "destination"];
    // Registration fails only on a duplicate name, which this single static rules out.
    Families {
        alerts: register_int_counter_vec!(
            "zkgate_alert_alerts_total",
            "Alerts by what became of them: received, delivered, failed (refused, or neither delivered nor spooled), spooled, replayed (delivered from the spool).",
            &["route", "destination", "result"]
        )
        .expect("register zkgate_alert_alerts_total"),
        tries: register_int_counter_vec!(
            "zkgate_alert_delivery_tries_total",
            "Tries to send a message, by outcome: delivered, rejected (4xx), failed.",
            &["route", "destination", "outcome"]
        )
        .expect("register zkgate_alert_delivery_tries_total"),
        delivery: register_histogram_vec!(
            "zkgate_alert_delivery_duration_seconds",
            "Time of one try to send a message, answer included.",
            labels,
            BUCKETS.to_vec()
        )
        .expect("register zkgate_alert_delivery_duration_seconds"),
        render: register_histogram_vec!(
            "zkgate_alert_render_duration_seconds",
            "Time to render the messages of one webhook.",
            labels,
            BUCKETS.to_vec()
        )
        .expect("register zkgate_alert_render_duration_seconds"),
        render_errors: register_int_counter_vec!(
            "zkgate_alert_render_errors_total",
            "Webhooks whose messages did not render, by reason: template (an error the template raised), json (the output is not JSON), out_of_fuel (the render ran too many steps), panic (a bug, caught), alert_range.",
            &["route", "destination", "reason"]
        )
        .expect("register zkgate_alert_render_errors_total"),
        spool_messages: register_int_gauge_vec!(
            "zkgate_alert_spool_messages",
            "Messages waiting in the destination's spool.",
            labels
        )
        .expect("register zkgate_alert_spool_messages"),
        spool_bytes: register_int_gauge_vec!(
            "zkgate_alert_spool_bytes",
            "Bytes the destination's spool holds on disk.",
            labels
        )
        .expect("register zkgate_alert_spool_bytes"),
    }
});

struct Handles {
    received: IntCounter,
    delivered: IntCounter,
    failed: IntCounter,
    spooled: IntCounter,
    replayed: IntCounter,
    tries_delivered: IntCounter,
    tries_rejected: IntCounter,
    tries_failed: IntCounter,
    delivery: Histogram,
    render: Histogram,
    /// By reason, in the order of [`RENDER_ERROR_REASONS`].
    render_errors: Vec<IntCounter>,
    spool_messages: IntGauge,
    spool_bytes: IntGauge,
}

/// A destination's metric handles, bound to its route and name when the plugin is built.
#[derive(Default)]
pub struct DestinationMetrics {
    handles: OnceLock<Handles>,
}

impl DestinationMetrics {
    pub fn bind(&self, route: &str, destination: &str) {
        let f = &*FAMILIES;
        let alerts = |result| f.alerts.with_label_values(&[route, destination, result]);
        let tries = |outcome| f.tries.with_label_values(&[route, destination, outcome]);
        let labels = [route, destination];
        let _ = self.handles.set(Handles {
            received: alerts("received"),
            delivered: alerts("delivered"),
            failed: alerts("failed"),
            spooled: alerts("spooled"),
            replayed: alerts("replayed"),
            tries_delivered: tries("delivered"),
            tries_rejected: tries("rejected"),
            tries_failed: tries("failed"),
            delivery: f.delivery.with_label_values(&labels),
            render: f.render.with_label_values(&labels),
            render_errors: RENDER_ERROR_REASONS
                .iter()
                .map(|r| f.render_errors.with_label_values(&[route, destination, r]))
                .collect(),
            spool_messages: f.spool_messages.with_label_values(&labels),
            spool_bytes: f.spool_bytes.with_label_values(&labels),
        });
    }

    fn with(&self, f: impl FnOnce(&Handles)) {
        if let Some(h) = self.handles.get() {
            f(h);
        }
    }

    pub fn received(&self, alerts: usize) {
        self.with(|h| h.received.inc_by(alerts as u64));
    }

    pub fn delivered(&self, alerts: usize) {
        self.with(|h| h.delivered.inc_by(alerts as u64));
    }

    pub fn failed(&self, alerts: usize) {
        self.with(|h| h.failed.inc_by(alerts as u64));
    }

    pub fn spooled(&self, alerts: usize) {
        self.with(|h| h.spooled.inc_by(alerts as u64));
    }

    pub fn replayed(&self, alerts: usize) {
        self.with(|h| h.replayed.inc_by(alerts as u64));
    }

    pub fn tried(&self, took: Duration, outcome: &Outcome) {
        self.with(|h| {
            h.delivery.observe(took.as_secs_f64());
            match outcome {
                Outcome::Delivered(_) => h.tries_delivered.inc(),
                Outcome::Rejected { .. } => h.tries_rejected.inc(),
                Outcome::Failed(_) => h.tries_failed.inc(),
            }
        });
    }

    pub fn rendered(&self, took: Duration) {
        self.with(|h| h.render.observe(took.as_secs_f64()));
    }

    /// A webhook whose messages did not render; `reason` is [`RenderError::kind`] or `panic`.
    ///
    /// [`RenderError::kind`]: super::template::RenderError::kind
    pub fn render_failed(&self, reason: &str) {
        self.with(|h| {
            let i = RENDER_ERROR_REASONS
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(RENDER_ERROR_REASONS.len() - 1);
            h.render_errors[i].inc();
        });
    }

    pub fn spool_depth(&self, messages: usize, bytes: u64) {
        self.with(|h| {
            h.spool_messages.set(messages as i64);
            h.spool_bytes.set(bytes as i64);
        });
    }
}
