//! A game listener's `game:` section (`listeners[].game`) and its build: every key parsed,
//! checked with each error located by its YAML path, then built into the [`GameSettings`] the
//! listener's sessions read, with the routing rules pointing at the snapshot's upstreams.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::codec::MAX_CLIENT_PAYLOAD;
use super::rules::{build_rules, RuleSection, Rules};
use super::rules_node::RulesFeed;
use super::IdGen;
use crate::section::{At, ConfigErrors, Dur, Size};
use crate::upstream::config::absolute_path;
use crate::upstream::Upstream;

pub const DEFAULT_QUEUE: u32 = 256;
const MAX_QUEUE: u32 = 65_536;
pub const DEFAULT_FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_SESSIONS: u32 = 100_000;
pub const DEFAULT_CLOSE_MESSAGE_ID: u16 = 0xfffe;
pub const DEFAULT_GO_AWAY_MESSAGE_ID: u16 = 0xffff;
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
pub const DEFAULT_LOG_EVERY: Duration = Duration::from_secs(300);
/// A session id carries 12 bits of the gateway's id.
const MAX_GATEWAY_ID: u32 = 0xfff;

/// `listeners[].game`: what makes a listener a game listener.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GameSection {
    /// 0 to 4095, in every session id; default: CRC-32 of the host name, low 12 bits.
    pub gateway_id: Option<u32>,
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// A ZooKeeper node holding a JSON list of rules that replaces `rules` while it exists.
    pub rules_node: Option<String>,
    /// The largest client payload (at most 65535, the u16 length field).
    pub max_frame: Option<Size>,
    /// Frames queued toward one client; more kicks the session.
    pub queue: Option<u32>,
    pub first_frame_timeout: Option<Dur>,
    pub client_idle: Option<Toggle>,
    pub backend_idle: Option<Toggle>,
    /// Client message ids that are heartbeats: forwarded like any frame, named for the idle
    /// timers and the metrics.
    #[serde(default)]
    pub heartbeat: Vec<u32>,
    pub max_session_duration: Option<Toggle>,
    pub max_sessions: Option<u32>,
    pub per_ip: Option<PerIpSection>,
    /// CIDR blocks clients may connect from; absent: any.
    pub allow: Option<Vec<String>>,
    /// Accept WebSocket clients on the same port (other HTTP gets 426).
    pub websocket: Option<bool>,
    pub close_message_id: Option<u32>,
    pub go_away_message_id: Option<u32>,
    pub drain: Option<Dur>,
    pub log_every: Option<Toggle>,
}

/// `per_ip: { concurrent, per_second }`: limits on one client address.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PerIpSection {
    pub concurrent: Option<u32>,
    pub per_second: Option<u32>,
}

/// A duration that may be turned off: `30s`, or `off` (also `false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggle {
    Off,
    On(Dur),
}

impl Toggle {
    fn get(self) -> Option<Duration> {
        match self {
            Toggle::Off => None,
            Toggle::On(d) => Some(d.0),
        }
    }
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(false) => Ok(Toggle::Off),
            Raw::Text(t) if t.trim() == "off" => Ok(Toggle::Off),
            Raw::Flag(true) => Err(serde::de::Error::custom(
                "write a duration such as `60s`, or `off`",
            )),
            Raw::Int(0) => Ok(Toggle::On(Dur(Duration::ZERO))),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "duration `{n}` has no unit (write `{n}s` or `{n}ms`), or `off`"
            ))),
            Raw::Text(t) => crate::section::units::parse_duration(&t)
                .map(|d| Toggle::On(Dur(d)))
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Toggle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Toggle::Off => s.serialize_str("off"),
            Toggle::On(d) => d.serialize(s),
        }
    }
}

/// What a game listener's sessions read, built once per config.
pub struct GameSettings {
    pub gateway_id: u16,
    /// The YAML rules; [`GameSettings::current_rules`] is what a new session routes by.
    pub rules: Arc<Rules>,
    pub rules_node: Option<String>,
    pub max_frame: usize,
    pub queue: usize,
    pub first_frame_timeout: Duration,
    pub client_idle: Option<Duration>,
    pub backend_idle: Option<Duration>,
    pub heartbeat: Vec<u16>,
    pub max_session_duration: Option<Duration>,
    pub max_sessions: u32,
    pub per_ip_concurrent: Option<u32>,
    pub per_ip_per_second: Option<u32>,
    pub allow: Vec<IpNet>,
    pub websocket: bool,
    pub close_message_id: u16,
    pub go_away_message_id: u16,
    pub drain: Duration,
    pub log_every: Option<Duration>,
    /// The rules of `rules_node`'s last good version, built for this snapshot's upstreams;
    /// `None`: the node is missing (or not read yet) and the YAML rules serve.
    pub(super) node_rules: ArcSwapOption<Rules>,
    /// The upstreams of the snapshot this belongs to: what a rules node version is checked
    /// against and built with.
    pub(super) upstreams: Vec<Arc<Upstream>>,
    /// Whom the rules node's watcher delivers to: carried over from the previous config of
    /// the same listener and node, so that a reload keeps following it.
    pub(super) feed: Option<Arc<RulesFeed>>,
}

impl GameSettings {
    /// The rules a new session routes by: the rules node's, while it exists and its last
    /// version was good, else the YAML rules. One atomic load and an `Arc` clone; the app
    /// calls it once per session (per frame with `route: per_message`), and keeps what it got
    /// for that session. Read it from the serving snapshot's listener
    /// (`live.load().settings.listeners`), not a copy taken at start: a reload rebuilds the
    /// upstreams the rules point at.
    pub fn current_rules(&self) -> Arc<Rules> {
        self.node_rules
            .load_full()
            .unwrap_or_else(|| self.rules.clone())
    }

    /// These settings as the listener holds them. With a rules node, they join its feed:
    /// `prev`'s (the previous config's settings of this listener) when it followed the same
    /// node, so that the running watcher keeps delivering across reloads, else a new one.
    pub fn share(mut self, listener: &str, prev: Option<&GameSettings>) -> Arc<GameSettings> {
        let Some(node) = self.rules_node.clone() else {
            return Arc::new(self);
        };
        let feed = prev
            .and_then(|p| p.feed.clone())
            .filter(|f| f.node() == node)
            .unwrap_or_else(|| RulesFeed::new(listener, &node));
        self.feed = Some(feed.clone());
        let shared = Arc::new(self);
        feed.subscribe(&shared);
        shared
    }

    /// The watcher of `rules_node` that delivers to this listener, if it has a node.
    pub fn rules_feed(&self) -> Option<&Arc<super::rules_node::RulesFeed>> {
        self.feed.as_ref()
    }
}

impl fmt::Debug for GameSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GameSettings")
            .field("gateway_id", &self.gateway_id)
            .field("rules", &self.rules.len())
            .field("rules_node", &self.rules_node)
            .finish_non_exhaustive()
    }
}

/// What the reload compares to warn that listener settings wait for a restart: only the
/// gateway id, which the listener's session ids keep from the start. Every other key (rules
/// included) is read from the serving snapshot per session, so a reload applies it to new
/// sessions.
impl PartialEq for GameSettings {
    fn eq(&self, other: &GameSettings) -> bool {
        self.gateway_id == other.gateway_id
    }
}

/// The replica's host name, for the default gateway id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "zkgate".to_owned())
}

/// `10.0.0.0/8`, `::1/128` or a bare address (one host).
fn cidr(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    t.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is not an address or a block like 10.0.0.0/8"))
}

/// A message id (`u16`), or an error at `at`.
fn message_id(v: u32, at: At, errors: &mut ConfigErrors) -> u16 {
    u16::try_from(v).unwrap_or_else(|_| {
        errors.push(at, "must be a message id, 0 to 65535");
        0
    })
}

impl GameSection {
    /// The settings of the section at `at`, its rules built against `upstreams` (the
    /// snapshot's). Errors are pushed; what is returned then is not to be used.
    pub fn build(
        &self,
        at: &At,
        upstreams: &[Arc<Upstream>],
        errors: &mut ConfigErrors,
    ) -> GameSettings {
        let gateway_id = match self.gateway_id {
            None => IdGen::gateway_id_of(&host_name()),
            Some(id) if id <= MAX_GATEWAY_ID => id as u16,
            Some(_) => {
                errors.push(
                    at.key("gateway_id"),
                    format!("must be 0 to {MAX_GATEWAY_ID} (12 bits of every session id)"),
                );
                0
            }
        };
        if self.rules.is_empty() && self.rules_node.is_none() {
            errors.push(
                at.key("rules"),
                "at least one rule is needed (or rules_node: a ZooKeeper node of rules)",
            );
        }
        let rules = build_rules(&self.rules, &at.key("rules"), upstreams, errors);
        if let Some(node) = &self.rules_node {
            if let Err(e) = absolute_path(node) {
                errors.push(at.key("rules_node"), e);
            }
        }
        let max_frame = self.max_frame.map_or(MAX_CLIENT_PAYLOAD as u64, |s| s.0);
        if max_frame == 0 || max_frame > MAX_CLIENT_PAYLOAD as u64 {
            errors.push(
                at.key("max_frame"),
                format!("must be 1 to {MAX_CLIENT_PAYLOAD} (a client frame's length is 16 bits)"),
            );
        }
        let queue = self.queue.unwrap_or(DEFAULT_QUEUE);
        if queue == 0 || queue > MAX_QUEUE {
            errors.push(at.key("queue"), format!("must be 1 to {MAX_QUEUE} frames"));
        }
        let first_frame_timeout = self
            .first_frame_timeout
            .map_or(DEFAULT_FIRST_FRAME_TIMEOUT, |d| d.0);
        if first_frame_timeout.is_zero() {
            errors.push(at.key("first_frame_timeout"), "must be above zero");
        }
        let mut toggle = |key: &str, v: Option<Toggle>, default: Option<Duration>| {
            let d = v.map_or(default, Toggle::get);
            if d.is_some_and(|d| d.is_zero()) {
                errors.push(
                    at.key(key),
                    "must be above zero (write `off` to turn it off)",
                );
            }
            d
        };
        let client_idle = toggle("client_idle", self.client_idle, Some(DEFAULT_CLIENT_IDLE));
        let backend_idle = toggle("backend_idle", self.backend_idle, None);
        let max_session_duration = toggle("max_session_duration", self.max_session_duration, None);
        let log_every = toggle("log_every", self.log_every, Some(DEFAULT_LOG_EVERY));
        let close_message_id = self.close_message_id.map_or(DEFAULT_CLOSE_MESSAGE_ID, |v| {
            message_id(v, at.key("close_message_id"), errors)
        });
        let go_away_message_id = self
            .go_away_message_id
            .map_or(DEFAULT_GO_AWAY_MESSAGE_ID, |v| {
                message_id(v, at.key("go_away_message_id"), errors)
            });
        if close_message_id == go_away_message_id {
            errors.push(
                at.key("go_away_message_id"),
                "must differ from close_message_id: a client tells the two frames apart by it",
            );
        }
        let heartbeat: Vec<u16> = self
            .heartbeat
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let id = message_id(v, at.index("heartbeat", i), errors);
                if v <= u32::from(u16::MAX) && (id == close_message_id || id == go_away_message_id)
                {
                    errors.push(
                        at.index("heartbeat", i),
                        "is the close or go-away message id",
                    );
                }
                id
            })
            .collect();
        let max_sessions = self.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        if max_sessions == 0 {
            errors.push(at.key("max_sessions"), "must be at least 1");
        }
        let per_ip = self.per_ip.clone().unwrap_or_default();
        for (key, v) in [
            ("concurrent", per_ip.concurrent),
            ("per_second", per_ip.per_second),
        ] {
            if v == Some(0) {
                errors.push(
                    at.key("per_ip").key(key),
                    "must be at least 1 (leave it out for no limit)",
                );
            }
        }
        let allow = match &self.allow {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                errors.push(
                    at.key("allow"),
                    "an empty list lets no client in; leave allow out to let every address in",
                );
                Vec::new()
            }
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, text)| {
                    cidr(text)
                        .map_err(|e| errors.push(at.index("allow", i), e))
                        .ok()
                })
                .collect(),
        };
        GameSettings {
            gateway_id,
            rules: Arc::new(rules),
            rules_node: self.rules_node.clone(),
            max_frame: max_frame.min(MAX_CLIENT_PAYLOAD as u64) as usize,
            queue: queue as usize,
            first_frame_timeout,
            client_idle,
            backend_idle,
            heartbeat,
            max_session_duration,
            max_sessions,
            per_ip_concurrent: per_ip.concurrent,
            per_ip_per_second: per_ip.per_second,
            allow,
            websocket: self.websocket.unwrap_or(true),
            close_message_id,
            go_away_message_id,
            drain: self.drain.map_or(DEFAULT_DRAIN, |d| d.0),
            log_every,
            node_rules: ArcSwapOption::empty(),
            upstreams: upstreams.to_vec(),
            feed: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use super::super::codec::ServerId;
    use super::super::rules::Strategy;
    use super::*;
    use crate::upstream::config::{UpstreamEnv, UpstreamSection};

    /// The snapshot's upstreams: `lobby` round robin, `battle` consistent hash, `rooms` with
    /// instance ids 1 and 2, `plain` without any, `zk` discovered.
    pub(crate) fn upstreams() -> Vec<Arc<Upstream>> {
        let yaml = [
            r#"{ name: lobby, backends: ["127.0.0.1:7001", "127.0.0.1:7002"] }"#,
            r#"{ name: battle, balance: consistent_hash, hash_key: client_ip, backends: ["127.0.0.1:7101", "127.0.0.1:7102"] }"#,
            r#"{ name: rooms, backends: ["127.0.0.1:7201 inst_id=1", "127.0.0.1:7202 inst_id=2"] }"#,
            r#"{ name: plain, backends: ["127.0.0.1:7301"] }"#,
            r#"{ name: zk, zookeeper: { service: game } }"#,
        ];
        let env = UpstreamEnv {
            zk_root: "/zkgate",
            zookeeper: true,
            ..UpstreamEnv::default()
        };
        yaml.iter()
            .enumerate()
            .map(|(i, y)| {
                let section: UpstreamSection = serde_yaml::from_str(y).expect("upstream");
                let mut errors = ConfigErrors::default();
                let u = section.build(&At::root().index("upstreams", i), &env, None, &mut errors);
                assert!(errors.is_empty(), "{errors}");
                u.expect("built")
            })
            .collect()
    }

    fn section(yaml: &str) -> GameSection {
        serde_yaml::from_str(yaml).expect("game section")
    }

    fn build(yaml: &str) -> Result<GameSettings, Vec<String>> {
        let section = section(yaml);
        let mut errors = ConfigErrors::default();
        let at = At::root().index("listeners", 0).key("game");
        let built = section.build(&at, &upstreams(), &mut errors);
        if errors.is_empty() {
            Ok(built)
        } else {
            Err(errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn every_error_is_collected_and_located() {
        let errs = build(
            r#"
gateway_id: 4096
rules:
  - { server_type: 1, world: 0, upstream: lobby }
  - { server_type: 256, world: 40000, upstream: lobby, links: 0, max_frame: 10 }
  - { server_type: 2, upstream: x }
  - { server_type: 1, world: 0, upstream: lobby }
  - { server_type: 3, upstream: lobby, strategy: consistent_hash }
  - { server_type: 4, upstream: plain, strategy: instance }
  - { server_type: 5, upstream: lobby, link: per_session, links: 2 }
rules_node: zkgate/rules
max_frame: 65536
queue: 0
first_frame_timeout: 0
client_idle: 0
heartbeat: [1, 65534, 70000]
max_sessions: 0
per_ip: { concurrent: 0 }
allow: ["10.0.0.0/8", "10.0.0.0/33", "nope"]
close_message_id: 7
go_away_message_id: 7
"#,
        )
        .unwrap_err();
        let at = "listeners[0].game";
        assert_eq!(
            errs,
            [
                format!("{at}.gateway_id: must be 0 to 4095 (12 bits of every session id)"),
                format!("{at}.rules[1].server_type: must be 0 to 255"),
                format!("{at}.rules[1].world: must be 0 to 32767 (0: any world)"),
                format!("{at}.rules[1].links: must be 1 to 16"),
                format!("{at}.rules[1].max_frame: must be 1KiB to 64MiB"),
                format!("{at}.rules[2].upstream: no upstream named `x`"),
                format!("{at}.rules[3]: server_type 1 world 0 is routed by rule 0 already"),
                format!("{at}.rules[4].strategy: consistent_hash is not the balance of upstream `lobby` (round_robin): a rule picks with its upstream's balancer; set balance: consistent_hash on the upstream or leave strategy out"),
                format!("{at}.rules[5].strategy: instance picks the backend whose inst_id is the frame's instId, and no backend of upstream `plain` has one (write `host:port inst_id=N`, or discover it from ZooKeeper with metadata inst_id)"),
                format!("{at}.rules[6].links: only used with link: multiplexed"),
                format!("{at}.rules_node: `zkgate/rules` is not an absolute ZooKeeper path like /zkgate/services/api"),
                format!("{at}.max_frame: must be 1 to 65535 (a client frame's length is 16 bits)"),
                format!("{at}.queue: must be 1 to 65536 frames"),
                format!("{at}.first_frame_timeout: must be above zero"),
                format!("{at}.client_idle: must be above zero (write `off` to turn it off)"),
                format!("{at}.go_away_message_id: must differ from close_message_id: a client tells the two frames apart by it"),
                format!("{at}.heartbeat[2]: must be a message id, 0 to 65535"),
                format!("{at}.max_sessions: must be at least 1"),
                format!("{at}.per_ip.concurrent: must be at least 1 (leave it out for no limit)"),
                format!("{at}.allow[1]: `10.0.0.0/33` is not an address or a block like 10.0.0.0/8"),
                format!("{at}.allow[2]: `nope` is not an address or a block like 10.0.0.0/8"),
            ]
        );
        assert_eq!(
            build("{ rules: [], allow: [] }").unwrap_err(),
            [
                "listeners[0].game.rules: at least one rule is needed (or rules_node: a ZooKeeper node of rules)",
                "listeners[0].game.allow: an empty list lets no client in; leave allow out to let every address in",
            ]
        );
        let unknown = serde_yaml::from_str::<GameSection>("{ rules: [], queues: 3 }").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `queues`"),
            "{unknown}"
        );
    }

    #[test]
    fn defaults_are_the_documented_ones_and_off_turns_a_timer_off() {
        let g = build("{ rules: [{ server_type: 1, upstream: lobby }] }").unwrap();
        assert_eq!(g.gateway_id, IdGen::gateway_id_of(&host_name()));
        assert_eq!(
            (g.max_frame, g.queue, g.max_sessions),
            (65535, 256, 100_000)
        );
        assert_eq!(g.first_frame_timeout, Duration::from_secs(10));
        assert_eq!(g.client_idle, Some(Duration::from_secs(60)));
        assert_eq!((g.backend_idle, g.max_session_duration), (None, None));
        assert_eq!(g.log_every, Some(Duration::from_secs(300)));
        assert_eq!((g.close_message_id, g.go_away_message_id), (0xfffe, 0xffff));
        assert_eq!((g.drain, g.websocket), (Duration::from_secs(30), true));
        assert!(g.allow.is_empty() && g.heartbeat.is_empty() && g.rules_node.is_none());
        assert_eq!((g.per_ip_concurrent, g.per_ip_per_second), (None, None));
        let r = g.rules.route(ServerId::new(false, 9, 1, 0)).unwrap();
        assert_eq!(r.strategy, Strategy::Balance);
        assert_eq!(
            (r.backend.links, r.backend.events, r.backend.max_frame),
            (2, true, 1 << 20)
        );

        let yaml = r#"
gateway_id: 7
rules: [{ server_type: 2, world: 3, upstream: battle, strategy: consistent_hash, route: per_message, link: per_session, gate_header: traced, events: false, max_frame: 2MiB }]
client_idle: off
backend_idle: 30s
max_session_duration: false
log_every: off
heartbeat: [1, 2]
per_ip: { concurrent: 64, per_second: 32 }
allow: ["127.0.0.1/8", "::1"]
websocket: false
"#;
        let g = build(yaml).unwrap();
        assert_eq!((g.gateway_id, g.client_idle, g.log_every), (7, None, None));
        assert_eq!(g.backend_idle, Some(Duration::from_secs(30)));
        assert_eq!(g.max_session_duration, None);
        assert_eq!(g.heartbeat, [1, 2]);
        assert_eq!(
            (g.per_ip_concurrent, g.per_ip_per_second),
            (Some(64), Some(32))
        );
        let allow: Vec<String> = g.allow.iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["127.0.0.0/8", "::1/128"]);
        assert!(!g.websocket);
        let r = g.rules.route(ServerId::new(true, 3, 2, 5)).unwrap();
        assert_eq!(&*r.name, "type 2 world 3");
        assert_eq!(&*r.upstream.name, "battle");
        assert_eq!(r.route, super::super::rules::RouteMode::PerMessage);
        assert_eq!(r.backend.link, super::super::rules::LinkMode::PerSession);
        assert_eq!(r.backend.gate, super::super::codec::GateForm::Traced);
        assert_eq!((r.backend.events, r.backend.max_frame), (false, 2 << 20));
        assert!(
            g.rules.route(ServerId::new(false, 4, 2, 0)).is_none(),
            "world 4 of type 2 has no rule"
        );
        // The section reads back as it was written, for /config.
        let shown = serde_yaml::to_string(&section(yaml)).unwrap();
        assert!(
            shown.contains("client_idle: off") && shown.contains("backend_idle: 30s"),
            "{shown}"
        );
    }

    #[test]
    fn a_frame_finds_its_exact_world_then_the_wildcard_and_instance_picks_its_backend() {
        let g = build(
            r#"
rules:
  - { server_type: 1, world: 0, upstream: lobby }
  - { server_type: 1, world: 5, upstream: battle }
  - { server_type: 3, upstream: rooms, strategy: instance }
"#,
        )
        .unwrap();
        let rules = g.current_rules();
        let upstream_of = |world, t| {
            rules
                .route(ServerId::new(false, world, t, 0))
                .map(|r| r.upstream.name.to_string())
        };
        assert_eq!(upstream_of(5, 1).as_deref(), Some("battle"));
        assert_eq!(upstream_of(6, 1).as_deref(), Some("lobby"));
        assert_eq!(upstream_of(0, 1).as_deref(), Some("lobby"));
        assert_eq!(upstream_of(5, 2), None);

        let rule = rules.route(ServerId::new(false, 9, 3, 2)).unwrap();
        assert_eq!(rule.strategy, Strategy::Instance);
        let addr = |inst| -> Result<SocketAddr, _> {
            let mut call = rule.upstream.begin()?;
            let picked = rule.pick(&mut call, ServerId::new(false, 9, 3, inst));
            call.finish(crate::upstream::call::Outcome::Ok);
            picked
        };
        for _ in 0..10 {
            assert_eq!(addr(2).unwrap().port(), 7202);
            assert_eq!(addr(1).unwrap().port(), 7201);
        }
        assert_eq!(
            addr(9).unwrap_err(),
            crate::upstream::call::Refusal::NoBackend,
            "no backend is instance 9"
        );
        // instId 0 names no instance: the upstream's balancer picks.
        let ports: std::collections::HashSet<u16> =
            (0..10).map(|_| addr(0).unwrap().port()).collect();
        assert_eq!(ports.len(), 2, "{ports:?}");
    }
}
