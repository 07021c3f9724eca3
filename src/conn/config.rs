//! The keys of a listener that bound its client connections (deadlines on slow and idle
//! clients, connection caps), checked into [`ConnSettings`].

use std::time::Duration;

use super::{
    ConnSettings, DEFAULT_CLIENT_BODY_TIMEOUT, DEFAULT_CLIENT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT, MAX_TIMEOUT,
};
use crate::section::{At, ConfigErrors, Dur};

/// A listener's connection keys. They sit flat in its YAML section, beside the rest, so the
/// listener hands them over with [`ConnKeys::build`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnKeys {
    pub client_header_timeout: Option<Dur>,
    pub client_body_timeout: Option<Dur>,
    pub keepalive_timeout: Option<Dur>,
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
}

impl ConnKeys {
    /// The settings, or every bad value reported at its key under `at` (the listener's path).
    pub fn build(&self, at: &At, errors: &mut ConfigErrors) -> ConnSettings {
        let mut timeout = |key: &str, value: Option<Dur>, default: Duration, zero_ok: bool| {
            let d = value.map_or(default, |d| d.0);
            if d.is_zero() && !zero_ok {
                errors.push(at.key(key), "must be more than 0");
            } else if d > MAX_TIMEOUT {
                errors.push(
                    at.key(key),
                    format!("must be at most {}s", MAX_TIMEOUT.as_secs()),
                );
            }
            d
        };
        let header = timeout(
            "client_header_timeout",
            self.client_header_timeout,
            DEFAULT_CLIENT_HEADER_TIMEOUT,
            false,
        );
        let body = timeout(
            "client_body_timeout",
            self.client_body_timeout,
            DEFAULT_CLIENT_BODY_TIMEOUT,
            false,
        );
        let keepalive = timeout(
            "keepalive_timeout",
            self.keepalive_timeout,
            DEFAULT_KEEPALIVE_TIMEOUT,
            true,
        );
        for (key, v) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
        ] {
            if v == Some(0) {
                errors.push(at.key(key), "must be at least 1");
            }
        }
        if let (Some(all), Some(per_ip)) = (self.max_connections, self.max_connections_per_ip) {
            if per_ip > all {
                errors.push(
                    at.key("max_connections_per_ip"),
                    format!("is more than max_connections ({all})"),
                );
            }
        }
        ConnSettings {
            client_header_timeout: header,
            client_body_timeout: body,
            keepalive_timeout: (!keepalive.is_zero()).then_some(keepalive),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            proxy_protocol: None,
        }
    }
}
