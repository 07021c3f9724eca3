//! Upstreams: a named backend set with its balancing policy and connection settings.
//!
//! Membership is held apart from config: an [`Upstream`] owns an atomically swapped
//! [`BackendSet`], so a config file (now) or a discovery source (later) can publish a new set
//! with one store, while requests keep picking from the set they loaded, without locks.

pub mod discovery;
pub mod hash_key;
pub mod health;
pub mod outlier;
pub mod retry_budget;
pub mod select;
pub mod state;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::upstreams::peer::HttpPeer;
use prometheus::IntGauge;

use crate::config::schema::{Balance, UpstreamSection};
use crate::metrics::METRICS;
pub use hash_key::HashKey;
use health::HealthCheck;
use outlier::OutlierPolicy;
use retry_budget::RetryBudget;
use select::Selector;
use state::{BackendState, InFlight, States, DRAINED};

/// One backend as configured or discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// Zero drains the backend: it stays listed but is never picked.
    pub weight: u32,
}

/// How connections to this upstream's backends are made.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls: Option<TlsSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub sni: String,
    pub verify: bool,
}

impl PeerSettings {
    fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let (tls, sni) = match &self.tls {
            Some(t) => (true, t.sni.clone()),
            None => (false, String::new()),
        };
        let mut peer = HttpPeer::new(addr, tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        if let Some(t) = &self.tls {
            o.verify_cert = t.verify;
            o.verify_hostname = t.verify;
        }
        peer
    }
}

#[derive(Debug)]
pub struct Backend {
    pub spec: BackendSpec,
    pub state: Arc<BackendState>,
    /// Built once per set: a pick clones it instead of assembling options per request.
    peer: HttpPeer,
}

/// Fallback picks tried in the selector's own order before scanning every backend.
const ALTERNATIVES: usize = 8;

/// An immutable membership snapshot and the selector built for it.
#[derive(Debug)]
pub struct BackendSet {
    backends: Box<[Backend]>,
    selector: Selector,
}

impl BackendSet {
    fn build(
        balance: Balance,
        settings: &PeerSettings,
        specs: Vec<BackendSpec>,
        states: Vec<Arc<BackendState>>,
    ) -> BackendSet {
        let weights: Vec<u32> = specs.iter().map(|s| s.weight).collect();
        let names: Vec<String> = specs.iter().map(|s| s.addr.to_string()).collect();
        let selector = Selector::build(balance, &weights, &names);
        let backends = specs
            .into_iter()
            .zip(states)
            .map(|(spec, state)| Backend {
                peer: settings.peer(spec.addr),
                spec,
                state,
            })
            .collect();
        BackendSet { backends, selector }
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Backends with a weight above zero.
    pub fn pickable(&self) -> usize {
        self.backends.iter().filter(|b| b.spec.weight > 0).count()
    }

    /// Picks a backend for `turn` and `key`, skipping unavailable ones (unhealthy, ejected,
    /// drained) and those in `avoid` (already failed by this request). When none is available,
    /// it picks among the unhealthy and ejected rather than fail (Envoy's panic mode): a health
    /// check gone wrong must not take the whole upstream down.
    #[inline]
    pub fn pick(&self, turn: usize, key: Option<&[u8]>, avoid: &[SocketAddr]) -> Option<&Backend> {
        let ok = |b: &Backend| b.state.available() && !avoid.contains(&b.spec.addr);
        let chosen = match &self.selector {
            Selector::Empty => return None,
            Selector::LeastConn(live) => self.least_loaded(live, turn, ok),
            Selector::P2c(live) => self.better_of_two(live, ok),
            other => {
                let first = &self.backends[other.pick(turn, key)? as usize];
                if ok(first) {
                    return Some(first);
                }
                // The selector's next choices keep weights and a key's stickiness.
                (1..ALTERNATIVES.min(other.positions()))
                    .filter_map(|k| other.alternative(turn, key, k))
                    .map(|i| &self.backends[i as usize])
                    .find(|b| ok(b))
                    .or_else(|| self.scan(turn, ok))
            }
        };
        chosen.or_else(|| {
            self.scan(turn, |b| {
                !b.state.is(DRAINED) && !avoid.contains(&b.spec.addr)
            })
        })
    }

    /// The first pickable backend from `start` on that passes `ok`.
    fn scan(&self, start: usize, ok: impl Fn(&Backend) -> bool) -> Option<&Backend> {
        let n = self.backends.len();
        (0..n)
            .map(|i| &self.backends[start.wrapping_add(i) % n])
            .find(|b| b.spec.weight > 0 && ok(b))
    }

    /// Fewest in flight relative to weight; ties go to the first from `start`, so that idle
    /// backends take turns.
    #[inline]
    fn least_loaded(
        &self,
        live: &[u32],
        start: usize,
        ok: impl Fn(&Backend) -> bool,
    ) -> Option<&Backend> {
        let split = start % live.len();
        let (tail, head) = live.split_at(split);
        let mut best: Option<(&Backend, u64, u64)> = None;
        for &i in head.iter().chain(tail) {
            let b = &self.backends[i as usize];
            if !ok(b) {
                continue;
            }
            let (load, weight) = (b.state.in_flight() as u64, b.spec.weight as u64);
            // load / weight < best_load / best_weight, without dividing.
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
                best = Some((b, load, weight));
            }
        }
        best.map(|(b, _, _)| b)
    }

    /// The less loaded, relative to weight, of two distinct random backends; a full
    /// comparison when either is unavailable.
    #[inline]
    fn better_of_two(&self, live: &[u32], ok: impl Fn(&Backend) -> bool) -> Option<&Backend> {
        let n = live.len();
        let a = fastrand::usize(..n);
        let b = if n > 1 {
            (a + 1 + fastrand::usize(..n - 1)) % n
        } else {
            a
        };
        let (x, y) = (
            &self.backends[live[a] as usize],
            &self.backends[live[b] as usize],
        );
        match (ok(x), ok(y)) {
            (true, true) => {
                let (lx, wx) = (x.state.in_flight() as u64, x.spec.weight as u64);
                let (ly, wy) = (y.state.in_flight() as u64, y.spec.weight as u64);
                Some(if ly * wx < lx * wy { y } else { x })
            }
            _ => self.least_loaded(live, a, ok),
        }
    }
}

/// A chosen backend: the peer to connect to, and the guard that counts the request in flight.
pub struct Picked {
    pub peer: Box<HttpPeer>,
    pub attempt: InFlight,
}

#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    pub settings: PeerSettings,
    pub health: Option<HealthCheck>,
    pub outlier: Option<OutlierPolicy>,
    pub retry_budget: RetryBudget,
    /// What this upstream was built from; a reload that leaves it equal keeps this object.
    pub definition: UpstreamSection,
    /// The ZooKeeper path its members come from; `None` for static backends.
    pub discovery: Option<String>,
    set: ArcSwap<BackendSet>,
    /// Per-address state; locked only to publish a new set.
    states: Mutex<States>,
    turn: AtomicUsize,
    /// When the health checker next checks this upstream, in [`state::now_ms`] time.
    pub(crate) next_check_ms: AtomicU64,
    backends_gauge: IntGauge,
}

/// How an upstream is built, beside its definition and members.
pub struct UpstreamParts {
    pub hash_key: Option<HashKey>,
    pub settings: PeerSettings,
    pub health: Option<HealthCheck>,
    pub outlier: Option<OutlierPolicy>,
    pub retry_budget: RetryBudget,
    pub discovery: Option<String>,
}

impl Upstream {
    pub fn new(
        definition: UpstreamSection,
        parts: UpstreamParts,
        specs: Vec<BackendSpec>,
    ) -> Upstream {
        let balance = definition.balance;
        let name: Arc<str> = definition.name.as_str().into();
        let backends_gauge = METRICS.backends.with_label_values(&[&name]);
        let u = Upstream {
            name,
            balance,
            hash_key: parts.hash_key,
            settings: parts.settings,
            health: parts.health,
            outlier: parts.outlier,
            retry_budget: parts.retry_budget,
            definition,
            discovery: parts.discovery,
            set: ArcSwap::from_pointee(BackendSet {
                backends: Box::new([]),
                selector: Selector::Empty,
            }),
            states: Mutex::new(States::default()),
            turn: AtomicUsize::new(0),
            next_check_ms: AtomicU64::new(0),
            backends_gauge,
        };
        u.update(specs);
        u
    }

    /// Publishes a new membership. Requests that already loaded the old set finish with it;
    /// addresses that stay keep their state (in flight, health, ejection, drain).
    pub fn update(&self, specs: Vec<BackendSpec>) {
        let addrs: Vec<SocketAddr> = specs.iter().map(|s| s.addr).collect();
        let start_unhealthy = self.health.as_ref().is_some_and(|h| h.start_unhealthy);
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let set = BackendSet::build(
            self.balance,
            &self.settings,
            specs,
            states.refresh(&addrs, start_unhealthy),
        );
        self.backends_gauge.set(set.pickable() as i64);
        self.set.store(Arc::new(set));
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<BackendSet>> {
        self.set.load()
    }

    /// The state of a current member, for the admin API.
    pub fn state_of(&self, addr: &SocketAddr) -> Option<Arc<BackendState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(addr).cloned()
    }

    /// Picks a backend for a request with hash key `key`, avoiding the addresses in `avoid`
    /// (backends this request already failed to connect to).
    #[inline]
    pub fn select(&self, key: Option<&[u8]>, avoid: &[SocketAddr]) -> Option<Picked> {
        let set = self.set.load();
        let turn = if Selector::wants_counter(self.balance) {
            self.turn.fetch_add(1, Ordering::Relaxed)
        } else {
            fastrand::usize(..)
        };
        let chosen = set.pick(turn, key, avoid)?;
        Some(Picked {
            peer: Box::new(chosen.peer.clone()),
            attempt: InFlight::start(&chosen.state),
        })
    }

    pub fn has_backends(&self) -> bool {
        self.set.load().pickable() > 0
    }
}
