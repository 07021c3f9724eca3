//! The routing table of a game listener: rules keyed by serverType and worldId (worldId 0 a
//! wildcard), each naming a zkgate upstream, how a backend is picked in it, and how the
//! gateway speaks to that backend. [`RuleSection`] is one rule as YAML (`listeners[].game.rules`)
//! and the rules node's JSON write it; [`build_rules`] checks a list of them against the
//! snapshot's upstreams, every error located, and builds the table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::codec::{GateForm, ServerId};
use crate::section::{At, ConfigErrors, Size};
use crate::upstream::call::{Call, Refusal};
use crate::upstream::{Balance, Upstream};

/// How a backend is picked among a rule's upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The upstream's own `balance` (round_robin, least_conn or consistent_hash; for the ring,
    /// keyed by the frame's worldId and instId).
    Balance,
    /// instId picks the backend registered with that `inst_id`.
    Instance,
}

/// Whether a session keeps the backend of its first frame, or each frame is routed by its
/// own ServerID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RouteMode {
    #[default]
    FirstFrame,
    PerMessage,
}

/// How sessions reach a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LinkMode {
    /// A few long-lived links per backend, frames demultiplexed by SessionID.
    #[default]
    Multiplexed,
    /// One connection per session, as the seed's TCP mode.
    PerSession,
}

/// What a rule's backends speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendProtocol {
    pub link: LinkMode,
    /// Links per backend in multiplexed mode.
    pub links: u8,
    pub gate: GateForm,
    /// The backend gets SessionOpen/SessionClose (zkgate's opcodes 2 and 3); `false` for
    /// backends that know only opcode 1. What a backend sends (a kick, a broadcast) is acted on
    /// either way: `events` says only what the gateway sends.
    pub events: bool,
    /// The largest backend frame accepted (its length field).
    pub max_frame: usize,
}

#[derive(Debug)]
pub struct Rule {
    /// `type 3 world 7` or `type 3 world *`: for logs.
    pub name: Arc<str>,
    pub server_type: u8,
    /// 0: any world.
    pub world: u16,
    pub upstream: Arc<Upstream>,
    pub strategy: Strategy,
    pub route: RouteMode,
    pub backend: BackendProtocol,
}

impl Rule {
    /// Picks a backend for a frame with `id` within `call` (which avoids what it failed on).
    pub fn pick(&self, call: &mut Call, id: ServerId) -> Result<SocketAddr, Refusal> {
        match self.strategy {
            Strategy::Balance => {
                let key = [
                    (id.world() & 0xff) as u8,
                    (id.world() >> 8) as u8,
                    id.inst(),
                ];
                let key = (id.inst() != 0).then_some(&key[..]);
                call.pick_backend(key)
            }
            // instId 0 is a client that names no instance (a login, say): unless some backend
            // is instance 0, it goes wherever the upstream's balancer sends it.
            Strategy::Instance if id.inst() == 0 && !self.upstream.load().has_instance(0) => {
                call.pick_backend(None)
            }
            Strategy::Instance => call.pick_instance(id.inst()),
        }
    }
}

/// The rules of one listener, looked up by serverType and worldId.
#[derive(Debug, Default)]
pub struct Rules {
    by_key: HashMap<(u8, u16), Arc<Rule>>,
}

impl Rules {
    pub fn new(rules: impl IntoIterator<Item = Arc<Rule>>) -> Rules {
        Rules {
            by_key: rules
                .into_iter()
                .map(|r| ((r.server_type, r.world), r))
                .collect(),
        }
    }

    /// The rule for `id`: its exact world first, then the serverType's wildcard.
    pub fn route(&self, id: ServerId) -> Option<&Arc<Rule>> {
        let t = id.server_type();
        self.by_key
            .get(&(t, id.world()))
            .or_else(|| self.by_key.get(&(t, 0)))
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Every rule, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.by_key.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// Backend frames up to this size by default: a broadcast to many sessions carries their ids
/// ahead of a client payload of up to 64 KiB.
pub const DEFAULT_BACKEND_MAX_FRAME: u64 = 1 << 20;
const MIN_BACKEND_MAX_FRAME: u64 = 1 << 10;
const MAX_BACKEND_MAX_FRAME: u64 = 64 << 20;
pub const DEFAULT_LINKS: u32 = 2;
const MAX_LINKS: u32 = 16;
/// worldId has 15 bits in a ServerID.
const MAX_WORLD: u32 = 0x7fff;

/// One rule as written in YAML or in the rules node's JSON list.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub server_type: u32,
    /// 0: any world.
    #[serde(default)]
    pub world: u32,
    pub upstream: String,
    /// Absent: the upstream's own `balance`.
    pub strategy: Option<StrategyName>,
    #[serde(default)]
    pub route: RouteName,
    #[serde(default)]
    pub link: LinkName,
    /// Links per backend with `link: multiplexed` (default 2).
    pub links: Option<u32>,
    #[serde(default)]
    pub gate_header: GateName,
    /// The backend understands zkgate's opcodes 2 to 4 (default true).
    pub events: Option<bool>,
    /// The largest backend frame accepted (default 1MiB).
    pub max_frame: Option<Size>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    RoundRobin,
    LeastConn,
    ConsistentHash,
    Instance,
}

impl StrategyName {
    fn as_str(self) -> &'static str {
        match self {
            StrategyName::RoundRobin => "round_robin",
            StrategyName::LeastConn => "least_conn",
            StrategyName::ConsistentHash => "consistent_hash",
            StrategyName::Instance => "instance",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RouteName {
    #[default]
    FirstFrame,
    PerMessage,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LinkName {
    #[default]
    Multiplexed,
    PerSession,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GateName {
    #[default]
    Short,
    Traced,
}

impl RuleSection {
    /// The rule at `at`, its upstream found among `upstreams`; `None` with every problem
    /// pushed to `errors`.
    pub fn build(
        &self,
        at: &At,
        upstreams: &[Arc<Upstream>],
        errors: &mut ConfigErrors,
    ) -> Option<Arc<Rule>> {
        let before = errors.len();
        if self.server_type > u32::from(u8::MAX) {
            errors.push(at.key("server_type"), "must be 0 to 255");
        }
        if self.world > MAX_WORLD {
            errors.push(
                at.key("world"),
                format!("must be 0 to {MAX_WORLD} (0: any world)"),
            );
        }
        let upstream = upstreams.iter().find(|u| *u.name == *self.upstream);
        if upstream.is_none() {
            errors.push(
                at.key("upstream"),
                format!("no upstream named `{}`", self.upstream),
            );
        }
        let strategy = upstream.map_or(Strategy::Balance, |u| self.strategy(at, u, errors));
        let links = self.links.unwrap_or(DEFAULT_LINKS);
        match (self.link, self.links) {
            (LinkName::PerSession, Some(_)) => {
                errors.push(at.key("links"), "only used with link: multiplexed")
            }
            (_, Some(n)) if n == 0 || n > MAX_LINKS => {
                errors.push(at.key("links"), format!("must be 1 to {MAX_LINKS}"))
            }
            _ => {}
        }
        let max_frame = self.max_frame.map_or(DEFAULT_BACKEND_MAX_FRAME, |s| s.0);
        if !(MIN_BACKEND_MAX_FRAME..=MAX_BACKEND_MAX_FRAME).contains(&max_frame) {
            errors.push(at.key("max_frame"), "must be 1KiB to 64MiB");
        }
        if errors.len() > before {
            return None;
        }
        let world = self.world as u16;
        let name = if world == 0 {
            format!("type {} world *", self.server_type)
        } else {
            format!("type {} world {world}", self.server_type)
        };
        Some(Arc::new(Rule {
            name: name.into(),
            server_type: self.server_type as u8,
            world,
            upstream: upstream?.clone(),
            strategy,
            route: match self.route {
                RouteName::FirstFrame => RouteMode::FirstFrame,
                RouteName::PerMessage => RouteMode::PerMessage,
            },
            backend: BackendProtocol {
                link: match self.link {
                    LinkName::Multiplexed => LinkMode::Multiplexed,
                    LinkName::PerSession => LinkMode::PerSession,
                },
                links: links as u8,
                gate: match self.gate_header {
                    GateName::Short => GateForm::Short,
                    GateName::Traced => GateForm::Traced,
                },
                events: self.events.unwrap_or(true),
                max_frame: max_frame as usize,
            },
        }))
    }

    /// The strategy, which for a balancer must be the upstream's own: a rule picks through its
    /// upstream, and one upstream has one balancer.
    fn strategy(&self, at: &At, upstream: &Upstream, errors: &mut ConfigErrors) -> Strategy {
        let balance = match self.strategy {
            None => return Strategy::Balance,
            Some(StrategyName::Instance) => {
                // A static upstream says now whether any backend has an id to be picked by.
                if upstream.discovery.is_none()
                    && !upstream
                        .load()
                        .backends()
                        .iter()
                        .any(|b| b.spec.inst_id.is_some())
                {
                    errors.push(
                        at.key("strategy"),
                        format!(
                            "instance picks the backend whose inst_id is the frame's instId, and no backend of upstream `{}` has one (write `host:port inst_id=N`, or discover it from ZooKeeper with metadata inst_id)",
                            upstream.name
                        ),
                    );
                }
                return Strategy::Instance;
            }
            Some(StrategyName::RoundRobin) => Balance::RoundRobin,
            Some(StrategyName::LeastConn) => Balance::LeastConn,
            Some(StrategyName::ConsistentHash) => Balance::ConsistentHash,
        };
        if balance != upstream.balance {
            errors.push(
                at.key("strategy"),
                format!(
                    "{} is not the balance of upstream `{}` ({}): a rule picks with its upstream's balancer; set balance: {} on the upstream or leave strategy out",
                    self.strategy.map_or("", StrategyName::as_str),
                    upstream.name,
                    upstream.balance.as_str(),
                    balance.as_str(),
                ),
            );
        }
        Strategy::Balance
    }
}

/// The table of `sections`, item `i` located at `at.item(i)`: each rule built, and a second
/// rule for the same serverType and worldId refused.
pub fn build_rules(
    sections: &[RuleSection],
    at: &At,
    upstreams: &[Arc<Upstream>],
    errors: &mut ConfigErrors,
) -> Rules {
    let mut seen: HashMap<(u32, u32), usize> = HashMap::new();
    let mut rules = Vec::with_capacity(sections.len());
    for (i, r) in sections.iter().enumerate() {
        let here = at.item(i);
        let first = *seen.entry((r.server_type, r.world)).or_insert(i);
        if first != i {
            errors.push(
                here.clone(),
                format!(
                    "server_type {} world {} is routed by rule {first} already",
                    r.server_type, r.world
                ),
            );
        }
        rules.extend(r.build(&here, upstreams, errors));
    }
    Rules::new(rules)
}
