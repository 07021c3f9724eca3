//! Upstreams: a named backend set with its balancing policy and connection settings.
//!
//! Membership is held apart from config: an [`Upstream`] owns an atomically swapped
//! [`BackendSet`], so a config file or a discovery source can publish a new set with one
//! store, while requests keep picking from the set they loaded, without locks.
//!
//! The parts: [`set`] (membership, zones), [`select`] (every balancer), [`call`] (the life of
//! one call: breaker, pick, retries, outlier record), [`state`] (per-address
//! health, ejection, drain and in-flight counts), the policies ([`breaker`], [`outlier`],
//! [`retry_budget`], [`slow_start`], [`health`]), and [`peer`], the only HTTP-specific one:
//! everything else serves any protocol.

pub mod breaker;
pub mod call;
pub mod config;
pub mod hash_key;
pub mod health;
pub mod outlier;
pub mod peer;
pub mod retry_budget;
pub mod select;
pub mod set;
pub mod slow_start;
pub mod state;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use serde::Serialize;

use crate::metrics::METRICS;
use breaker::Breaker;
use config::UpstreamSection;
pub use hash_key::HashKey;
use health::HealthCheck;
use outlier::OutlierPolicy;
use peer::HttpPeers;
pub use peer::{PeerSettings, Protocol, TlsSettings};
use retry_budget::RetryBudget;
use select::Selector;
pub use select::{Balance, DEFAULT_LEAST_CONN_CHOICES, MAX_LEAST_CONN_CHOICES};
pub use set::{Backend, BackendSet, BackendSpec, Locality};
use slow_start::SlowStart;
use state::{BackendState, InFlight, States, DRAINED, EJECTED, UNHEALTHY};

/// A value a policy's validated constructor (`BreakerPolicy::try_new`, ...) refuses: the
/// config key it is given under, relative to the policy's own section, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: &'static str,
    pub why: &'static str,
}

impl Invalid {
    pub fn new(key: &'static str, why: &'static str) -> Invalid {
        Invalid { key, why }
    }
}

/// One published membership: the protocol-neutral set the balancers pick from and, index for
/// index, the HTTP peers prepared for it. Swapped as one, so that a pick and its peer always
/// come from the same membership.
#[derive(Debug)]
pub struct Members {
    set: BackendSet,
    http: HttpPeers,
}

impl Members {
    fn new(set: BackendSet, settings: &PeerSettings) -> Members {
        let http = HttpPeers::build(settings, set.backends().iter().map(|b| b.spec.addr));
        Members { set, http }
    }
}

/// A published membership reads as its backend set: `upstream.load().pick(..)`.
impl Deref for Members {
    type Target = BackendSet;

    fn deref(&self) -> &BackendSet {
        &self.set
    }
}

/// A chosen backend: the guard that counts the request in flight on it (its state holds the
/// address), and what the protocol that connects to it needs, `P`: the prepared HTTP peer from
/// [`Upstream::select`], nothing from [`Upstream::pick`].
pub struct Picked<P = ()> {
    pub peer: P,
    pub attempt: InFlight,
}

impl<P> Picked<P> {
    pub fn addr(&self) -> SocketAddr {
        self.attempt.state().addr
    }
}

#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub balance: Balance,
    pub policy: UpstreamPolicy,
    /// What this upstream was built from; a reload that leaves it equal keeps this object.
    pub definition: UpstreamSection,
    /// The ZooKeeper path its members come from; `None` for static backends.
    pub discovery: Option<String>,
    members: ArcSwap<Members>,
    /// Per-address state; locked only to publish a new set.
    states: Mutex<States>,
    turn: AtomicUsize,
    /// When the health checker next checks this upstream, in [`crate::clock::now_ms`] time.
    pub(crate) next_check_ms: AtomicU64,
    gauges: Gauges,
}

/// This upstream's metric handles, resolved once.
#[derive(Debug)]
struct Gauges {
    pickable: IntGauge,
    available: IntGauge,
    in_flight: IntGauge,
    circuit_open: IntGauge,
}

impl Gauges {
    fn new(upstream: &str) -> Gauges {
        let m = &METRICS;
        Gauges {
            pickable: m.backends.with_label_values(&[upstream]),
            available: m.backends_available.with_label_values(&[upstream]),
            in_flight: m.in_flight.with_label_values(&[upstream]),
            circuit_open: m.circuit_open.with_label_values(&[upstream]),
        }
    }
}

/// How an upstream picks, connects, checks and protects its backends, built from its config.
#[derive(Debug)]
pub struct UpstreamPolicy {
    pub hash_key: Option<HashKey>,
    pub settings: PeerSettings,
    pub health: Option<HealthCheck>,
    pub outlier: Option<OutlierPolicy>,
    pub retry_budget: RetryBudget,
    pub slow_start: Option<SlowStart>,
    pub breaker: Option<Breaker>,
    pub locality: Option<Locality>,
    /// How many backends `least_conn` compares per pick.
    pub least_conn_choices: usize,
}

impl UpstreamPolicy {
    /// Only `settings`: no hash key, health checks, outlier detection, slow start, breaker or
    /// zone preference, and a retry budget of 20% with no floor, so that every retry comes out
    /// of what requests paid in. What an upstream built outside a config (a test, a bench)
    /// starts from.
    pub fn plain(settings: PeerSettings) -> UpstreamPolicy {
        UpstreamPolicy {
            hash_key: None,
            settings,
            health: None,
            outlier: None,
            retry_budget: RetryBudget::new(RetryBudget::DEFAULT_PERCENT, 0),
            slow_start: None,
            breaker: None,
            locality: None,
            least_conn_choices: DEFAULT_LEAST_CONN_CHOICES,
        }
    }
}

impl Upstream {
    /// `inherit` is the upstream of the same name this one replaces in a reload: the states
    /// of the addresses both list carry over (in flight, health, ejection, drain, slow start).
    pub fn new(
        definition: UpstreamSection,
        policy: UpstreamPolicy,
        discovery: Option<String>,
        specs: Vec<BackendSpec>,
        inherit: Option<&Upstream>,
    ) -> Upstream {
        let states = inherit.map_or_else(States::default, |prev| {
            prev.states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
        let balance = definition.balance;
        let name: Arc<str> = definition.name.as_str().into();
        let gauges = Gauges::new(&name);
        let u = Upstream {
            name,
            balance,
            policy,
            definition,
            discovery,
            members: ArcSwap::from_pointee(Members {
                set: BackendSet::empty(),
                http: HttpPeers::default(),
            }),
            states: Mutex::new(states),
            turn: AtomicUsize::new(0),
            next_check_ms: AtomicU64::new(0),
            gauges,
        };
        u.update(specs);
        u
    }

    /// A backend set of `specs` and `states` with this upstream's policy and the weights of
    /// now.
    fn build_set(&self, specs: Vec<BackendSpec>, states: Vec<Arc<BackendState>>) -> Members {
        let set = BackendSet::build(
            self.balance,
            specs,
            states,
            self.policy.slow_start.as_ref(),
            self.policy.locality.as_ref(),
            self.policy.least_conn_choices,
        );
        Members::new(set, &self.policy.settings)
    }

    /// Publishes a new membership. Requests that already loaded the old set finish with it;
    /// addresses that stay keep their state (in flight, health, ejection, drain).
    pub fn update(&self, specs: Vec<BackendSpec>) {
        let addrs: Vec<SocketAddr> = specs.iter().map(|s| s.addr).collect();
        let start_unhealthy = self
            .policy
            .health
            .as_ref()
            .is_some_and(|h| h.start_unhealthy);
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let members = self.build_set(specs, states.refresh(&addrs, start_unhealthy));
        self.gauges.pickable.set(members.pickable() as i64);
        self.members.store(Arc::new(members));
    }

    /// Publishes the gauges that follow backend state.
    pub(crate) fn report(&self, set: &BackendSet) {
        let available = set
            .backends()
            .iter()
            .filter(|b| b.spec.weight > 0 && b.state.available())
            .count();
        let in_flight: u64 = set
            .backends()
            .iter()
            .map(|b| b.state.in_flight() as u64)
            .sum();
        self.gauges.available.set(available as i64);
        self.gauges.in_flight.set(in_flight as i64);
        if let Some(b) = &self.policy.breaker {
            self.gauges
                .circuit_open
                .set((b.state_name() != "closed") as i64);
        }
    }

    /// While a backend of `current` ramps up, rebuilds the set with the weights of now.
    pub(crate) fn ramp(&self, current: &BackendSet) {
        if !current.ramping() {
            return;
        }
        // Under the same lock as `update`, so that a membership change is never undone.
        let _writer = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let set = self.members.load();
        let members = self.build_set(
            set.backends().iter().map(|b| b.spec.clone()).collect(),
            set.backends().iter().map(|b| b.state.clone()).collect(),
        );
        self.members.store(Arc::new(members));
    }

    /// The current membership, to read or pick from.
    pub fn load(&self) -> arc_swap::Guard<Arc<Members>> {
        self.members.load()
    }

    /// The state of a current member, for the admin API.
    pub fn state_of(&self, addr: &SocketAddr) -> Option<Arc<BackendState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(addr).cloned()
    }

    /// Picks a backend with hash key `key`, avoiding the addresses in `avoid` (backends this
    /// request already failed on), for any protocol: the caller connects to
    /// [`Picked::addr`]. HTTP requests use [`Upstream::select`], which adds the prepared peer.
    #[inline]
    pub fn pick(&self, key: Option<&[u8]>, avoid: &[SocketAddr]) -> Option<Picked> {
        self.choose(key, avoid, |_, _| ())
    }

    /// Picks the backend whose instance id is `inst_id` (see [`BackendSet::pick_instance`]),
    /// counted in flight as [`Upstream::pick`] counts it, for any protocol.
    pub fn pick_instance(&self, inst_id: u8, avoid: &[SocketAddr]) -> Option<Picked> {
        let members = self.members.load();
        let i = members.pick_instance(fastrand::usize(..), inst_id, avoid)?;
        Some(Picked {
            attempt: InFlight::start(&members.backends()[i].state),
            peer: (),
        })
    }

    /// Picks from the current membership and lets `attach` add what the protocol needs from
    /// that same membership for the chosen index.
    #[inline]
    fn choose<P>(
        &self,
        key: Option<&[u8]>,
        avoid: &[SocketAddr],
        attach: impl FnOnce(&Members, usize) -> P,
    ) -> Option<Picked<P>> {
        let members = self.members.load();
        let turn = if Selector::wants_counter(self.balance) {
            self.turn.fetch_add(1, Ordering::Relaxed)
        } else {
            fastrand::usize(..)
        };
        let i = members.pick_index(turn, key, avoid)?;
        Some(Picked {
            attempt: InFlight::start(&members.backends()[i].state),
            peer: attach(&members, i),
        })
    }

    pub fn has_backends(&self) -> bool {
        self.members.load().pickable() > 0
    }

    /// What the admin API shows of this upstream and its current backends.
    pub fn status(&self) -> UpstreamStatus<'_> {
        let set = self.load();
        let now = crate::clock::now_ms();
        let backends = set
            .backends()
            .iter()
            .map(|b| {
                let (s, weight) = (&b.state, b.spec.weight);
                BackendStatus {
                    addr: b.spec.addr.to_string(),
                    name: b.spec.name.to_string(),
                    inst_id: b.spec.inst_id,
                    weight,
                    effective_weight: self
                        .policy
                        .slow_start
                        .and_then(|ss| ss.ramped(weight, s, now))
                        .map_or(weight as f64, |w| w as f64 / slow_start::SCALE as f64),
                    zone: b.spec.zone.as_deref().map(str::to_owned),
                    state: if s.is(DRAINED) || weight == 0 {
                        "drained"
                    } else if s.is(UNHEALTHY) {
                        "unhealthy"
                    } else if s.is(EJECTED) {
                        "ejected"
                    } else {
                        "active"
                    },
                    healthy: !s.is(UNHEALTHY),
                    ejected_for_ms: s.ejected_for().map(|d| d.as_millis() as u64),
                    ejections: s.ejections(),
                    in_flight: s.in_flight(),
                }
            })
            .collect();
        UpstreamStatus {
            name: &self.name,
            balance: self.balance,
            hash_key: self.policy.hash_key.as_ref().map(ToString::to_string),
            zookeeper_path: self.discovery.as_deref(),
            health_check: self.policy.health.is_some(),
            circuit: self.policy.breaker.as_ref().map(Breaker::state_name),
            backends,
        }
    }
}

/// An upstream as `GET /upstreams` shows it.
#[derive(Debug, Serialize)]
pub struct UpstreamStatus<'a> {
    pub name: &'a str,
    pub balance: Balance,
    pub hash_key: Option<String>,
    pub zookeeper_path: Option<&'a str>,
    pub health_check: bool,
    /// The breaker's state (`closed`, `open`, `half_open`), if the upstream has one.
    pub circuit: Option<&'static str>,
    pub backends: Vec<BackendStatus>,
}

/// One backend as `GET /upstreams` shows it.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub addr: String,
    /// Its stable identity (the ZooKeeper node name, or the address): what seeds the ring.
    pub name: String,
    /// The instance id game rules with `strategy: instance` pick it by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inst_id: Option<u8>,
    pub weight: u32,
    /// The weight slow start gives it now, in units of `weight`.
    pub effective_weight: f64,
    pub zone: Option<String>,
    /// `drained` (by hand or weight 0), `unhealthy`, `ejected` or `active`, first match.
    pub state: &'static str,
    pub healthy: bool,
    pub ejected_for_ms: Option<u64>,
    pub ejections: u32,
    pub in_flight: u32,
}
