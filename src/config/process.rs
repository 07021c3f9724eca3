//! The `server:` section: Pingora's process settings, read once at start. Only the keys zkgate
//! knows are accepted, defaults where Pingora's do not suit a container are applied here, and
//! every value is bounded, so that what `check` accepts `run` can start.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::section::{At, ConfigErrors, Dur};
use crate::snapshot::ServerSettings;

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

/// Pingora's 300 s grace period outlives every orchestrator's kill timeout.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

// The bounds: Pingora unwraps the creation of every thread it is asked for, so
// `threads: 100000` passed `check` and then panicked.

/// Worker threads per listener (each listener has its own runtime with this many).
pub const MAX_THREADS: usize = 1024;
/// Accept tasks per listening socket.
pub const MAX_LISTENER_TASKS_PER_FD: usize = 64;
/// Idle upstream connections kept, all upstreams together.
pub const MAX_UPSTREAM_KEEPALIVE_POOL: usize = 1_000_000;
/// `grace_period` and `graceful_shutdown_timeout`: a stop that takes longer is a hang.
pub const MAX_SHUTDOWN_WAIT: Duration = Duration::from_secs(3600);

impl ServerSection {
    /// The settings, defaults applied, or what is out of bounds at `at` (`server`).
    pub fn build(&self, at: &At, errors: &mut ConfigErrors) -> ServerSettings {
        self.check_bounds(at, errors);
        ServerSettings {
            threads: self.threads,
            // One single-threaded runtime per thread, like nginx workers: measured 15 to 20%
            // more requests per second than Pingora's work-stealing default (benches/compare.sh).
            work_stealing: self.work_stealing.unwrap_or(false),
            grace_period: self.grace_period.map_or(DEFAULT_GRACE_PERIOD, |d| d.0),
            graceful_shutdown_timeout: self
                .graceful_shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.0),
            upgrade_sock: self.upgrade_sock.clone(),
            upstream_keepalive_pool_size: self.upstream_keepalive_pool_size,
            ca_file: self.ca_file.clone(),
            listener_tasks_per_fd: self.listener_tasks_per_fd,
            user: self.user.clone(),
            group: self.group.clone(),
            zone: self.zone.clone(),
        }
    }

    fn check_bounds(&self, at: &At, errors: &mut ConfigErrors) {
        let s = self;
        let mut between = |key: &str, value: Option<usize>, min: usize, max: usize| {
            if value.is_some_and(|v| v < min || v > max) {
                errors.push(at.key(key), format!("must be between {min} and {max}"));
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
                errors.push(at.key(key), "must be at most 1h");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let section: ServerSection = serde_yaml::from_str(yaml).expect("a server section");
        let mut errors = ConfigErrors::default();
        section.build(&At::root().key("server"), &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn process_settings_are_bounded() {
        let errs = errors(
            "{ threads: 100000, listener_tasks_per_fd: 0, upstream_keepalive_pool_size: 100000000000, grace_period: 2h, graceful_shutdown_timeout: 1h }",
        );
        assert_eq!(
            errs,
            [
                "server.threads: must be between 1 and 1024",
                "server.listener_tasks_per_fd: must be between 1 and 64",
                "server.upstream_keepalive_pool_size: must be between 0 and 1000000",
                "server.grace_period: must be at most 1h",
            ],
        );
        assert_eq!(
            errors("{ threads: 0 }"),
            ["server.threads: must be between 1 and 1024"]
        );
        assert!(errors("{ threads: 1024, listener_tasks_per_fd: 64 }").is_empty());
    }

    #[test]
    fn defaults_suit_a_container() {
        let mut errors = ConfigErrors::default();
        let s = ServerSection::default().build(&At::root().key("server"), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(s.grace_period, DEFAULT_GRACE_PERIOD);
        assert_eq!(s.graceful_shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        assert!(!s.work_stealing);
        assert_eq!(s.threads, None);
    }
}
