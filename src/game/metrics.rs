//! The game listener's metrics: families registered once, and per-listener handles resolved
//! when the listener is built, per serverType on first use, so that a frame costs atomic adds
//! only. Labels are the listener, a serverType, a direction or a reason: never a session id or
//! a client address.

use std::sync::{LazyLock, OnceLock};

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use super::CloseReason;

/// Session durations from 1 s to 1 day.
const DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
];

struct Families {
    sessions_active: IntGaugeVec,
    sessions: IntCounterVec,
    closed: IntCounterVec,
    duration: HistogramVec,
    messages: IntCounterVec,
    bytes: IntCounterVec,
    refused: IntCounterVec,
    route_errors: IntCounterVec,
    links: IntGaugeVec,
    link_events: IntCounterVec,
    link_queue_bytes: IntGaugeVec,
    dropped: IntCounterVec,
    rules_version: IntGaugeVec,
    rules_refused: IntGaugeVec,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    // Registration fails only on a duplicate name, which this single static rules out.
    Families {
        sessions_active: register_int_gauge_vec!(
            "zkgate_game_sessions_active",
            "Game sessions open now, by listener.",
            &["listener"]
        )
        .expect("register zkgate_game_sessions_active"),
        sessions: register_int_counter_vec!(
            "zkgate_game_sessions_total",
            "Game sessions opened, by listener and client protocol (tcp, websocket).",
            &["listener", "protocol"]
        )
        .expect("register zkgate_game_sessions_total"),
        closed: register_int_counter_vec!(
            "zkgate_game_sessions_closed_total",
            "Game sessions closed, by listener and reason (slow_client counts queue overflows, kicked the backend's kicks).",
            &["listener", "reason"]
        )
        .expect("register zkgate_game_sessions_closed_total"),
        duration: register_histogram_vec!(
            "zkgate_game_session_duration_seconds",
            "How long game sessions lasted, by listener.",
            &["listener"],
            DURATION_BUCKETS.to_vec()
        )
        .expect("register zkgate_game_session_duration_seconds"),
        messages: register_int_counter_vec!(
            "zkgate_game_messages_total",
            "Frames forwarded, by listener, direction (to_backend, to_client) and serverType.",
            &["listener", "direction", "server_type"]
        )
        .expect("register zkgate_game_messages_total"),
        bytes: register_int_counter_vec!(
            "zkgate_game_bytes_total",
            "Payload bytes forwarded, by listener, direction and serverType.",
            &["listener", "direction", "server_type"]
        )
        .expect("register zkgate_game_bytes_total"),
        refused: register_int_counter_vec!(
            "zkgate_game_refused_total",
            "Connections refused before a session, by listener and reason (max_sessions, per_ip, per_ip_rate, not_allowed, proxy_protocol, http, handshake).",
            &["listener", "reason"]
        )
        .expect("register zkgate_game_refused_total"),
        route_errors: register_int_counter_vec!(
            "zkgate_game_route_errors_total",
            "First frames (or per-message frames) that found no backend, by listener and reason (no_rule, no_backend, unreachable, circuit_open).",
            &["listener", "reason"]
        )
        .expect("register zkgate_game_route_errors_total"),
        links: register_int_gauge_vec!(
            "zkgate_game_links",
            "Backend links open, by listener and upstream.",
            &["listener", "upstream"]
        )
        .expect("register zkgate_game_links"),
        link_events: register_int_counter_vec!(
            "zkgate_game_link_events_total",
            "Backend link events, by listener, upstream and event (connected, connect_failed, closed, error, malformed).",
            &["listener", "upstream", "event"]
        )
        .expect("register zkgate_game_link_events_total"),
        link_queue_bytes: register_int_gauge_vec!(
            "zkgate_game_link_queue_bytes",
            "Bytes waiting to be written to backend links, by listener and upstream.",
            &["listener", "upstream"]
        )
        .expect("register zkgate_game_link_queue_bytes"),
        dropped: register_int_counter_vec!(
            "zkgate_game_frames_dropped_total",
            "Backend frames dropped, by listener and reason (unknown_session, overflow, bad_opcode, too_large).",
            &["listener", "reason"]
        )
        .expect("register zkgate_game_frames_dropped_total"),
        rules_version: register_int_gauge_vec!(
            "zkgate_game_rules_version",
            "The ZooKeeper version of the listener's rules_node whose rules route new sessions; -1 while its YAML rules do (the node missing, not read yet, or its rules not fitting the config's upstreams). Only for listeners with a rules_node.",
            &["listener"]
        )
        .expect("register zkgate_game_rules_version"),
        rules_refused: register_int_gauge_vec!(
            "zkgate_game_rules_refused",
            "1 when the last version of the listener's rules_node was refused (not a JSON list of rules, or not fitting the config's upstreams) and older rules keep serving; 0 otherwise.",
            &["listener"]
        )
        .expect("register zkgate_game_rules_refused"),
    }
});

/// Where a game listener's rules come from: `version` is the rules node's version in use,
/// `None` when the YAML rules serve; `refused` whether the node's last version was refused.
/// Set on the rules node's rare events, so resolved here.
pub fn rules_source(listener: &str, version: Option<i32>, refused: bool) {
    let f = &*FAMILIES;
    f.rules_version
        .with_label_values(&[listener])
        .set(version.map_or(-1, i64::from));
    f.rules_refused
        .with_label_values(&[listener])
        .set(i64::from(refused));
}

/// A direction of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToBackend = 0,
    ToClient = 1,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::ToBackend => "to_backend",
            Direction::ToClient => "to_client",
        }
    }
}

/// Frames and bytes of one serverType in one direction.
#[derive(Debug)]
pub struct Traffic {
    pub messages: IntCounter,
    pub bytes: IntCounter,
}

/// One listener's handles.
#[derive(Debug)]
pub struct GameMetrics {
    listener: String,
    pub active: IntGauge,
    pub duration: Histogram,
    closed: Vec<IntCounter>,
    traffic: Box<[[OnceLock<Traffic>; 2]]>,
}

impl GameMetrics {
    pub fn new(listener: &str) -> GameMetrics {
        let f = &*FAMILIES;
        GameMetrics {
            listener: listener.to_owned(),
            active: f.sessions_active.with_label_values(&[listener]),
            duration: f.duration.with_label_values(&[listener]),
            closed: CloseReason::ALL
                .iter()
                .map(|r| f.closed.with_label_values(&[listener, r.as_str()]))
                .collect(),
            traffic: (0..256)
                .map(|_| [OnceLock::new(), OnceLock::new()])
                .collect(),
        }
    }

    /// The counters of `server_type` in `direction`, resolved on first use.
    #[inline]
    pub fn traffic(&self, direction: Direction, server_type: u8) -> &Traffic {
        self.traffic[server_type as usize][direction as usize].get_or_init(|| {
            let t = server_type.to_string();
            let labels = [self.listener.as_str(), direction.as_str(), t.as_str()];
            Traffic {
                messages: FAMILIES.messages.with_label_values(&labels),
                bytes: FAMILIES.bytes.with_label_values(&labels),
            }
        })
    }

    pub fn closed(&self, reason: CloseReason) {
        if let Some(c) = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.closed.get(i))
        {
            c.inc();
        }
    }

    /// A session opened with `protocol` (`tcp` or `websocket`); rare enough to resolve here.
    pub fn opened(&self, protocol: &str) {
        FAMILIES
            .sessions
            .with_label_values(&[&self.listener, protocol])
            .inc();
    }

    /// A connection refused before it was a session, for `reason`.
    pub fn refused(&self, reason: &str) {
        FAMILIES
            .refused
            .with_label_values(&[&self.listener, reason])
            .inc();
    }

    pub fn route_error(&self, reason: &str) {
        FAMILIES
            .route_errors
            .with_label_values(&[&self.listener, reason])
            .inc();
    }

    pub fn dropped(&self, reason: &str) {
        FAMILIES
            .dropped
            .with_label_values(&[&self.listener, reason])
            .inc();
    }

    /// The link gauges and event counters of `upstream`, resolved when a link opens.
    pub fn links(&self, upstream: &str) -> LinkMetrics {
        let labels = [self.listener.as_str(), upstream];
        LinkMetrics {
            open: FAMILIES.links.with_label_values(&labels),
            queue_bytes: FAMILIES.link_queue_bytes.with_label_values(&labels),
            listener: self.listener.clone(),
            upstream: upstream.to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LinkMetrics {
    pub open: IntGauge,
    pub queue_bytes: IntGauge,
    listener: String,
    upstream: String,
}

impl LinkMetrics {
    /// `connected`, `connect_failed`, `closed`, `error` or `malformed`.
    pub fn event(&self, event: &str) {
        FAMILIES
            .link_events
            .with_label_values(&[&self.listener, &self.upstream, event])
            .inc();
    }
}

/// The rules gauges of `listener`: (version, refused).
#[cfg(test)]
pub(super) fn rules_gauges(listener: &str) -> (i64, i64) {
    let f = &*FAMILIES;
    (
        f.rules_version.with_label_values(&[listener]).get(),
        f.rules_refused.with_label_values(&[listener]).get(),
    )
}
