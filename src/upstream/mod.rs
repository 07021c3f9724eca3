//! Upstreams: a named backend set with its balancing policy and connection settings.
//!
//! Membership is held apart from config: an [`Upstream`] owns an atomically swapped
//! [`BackendSet`], so a config file (now) or a discovery source (later) can publish a new set
//! with one store, while requests keep picking from the set they loaded, without locks.

pub mod breaker;
pub mod call;
pub mod hash_key;
pub mod health;
pub mod outlier;
pub mod retry_budget;
pub mod select;
pub mod slow_start;
pub mod state;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::upstreams::peer::HttpPeer;
use prometheus::IntGauge;

use crate::config::schema::{Balance, UpstreamSection};
use crate::metrics::METRICS;
use breaker::Breaker;
pub use hash_key::HashKey;
use health::HealthCheck;
use outlier::OutlierPolicy;
use retry_budget::RetryBudget;
use select::Selector;
use slow_start::SlowStart;
use state::{BackendState, InFlight, States, DRAINED};

/// One backend as configured or discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// Zero drains the backend: it stays listed but is never picked.
    pub weight: u32,
    /// The zone it runs in, for zone-aware balancing.
    pub zone: Option<Arc<str>>,
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
    pub(crate) fn peer(&self, addr: SocketAddr) -> HttpPeer {
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

/// Other choices tried (random draws by weight, or the ring clockwise) before scanning every
/// backend.
const ALTERNATIVES: usize = 16;

/// How many backends `least_conn` compares per pick unless told otherwise.
pub const DEFAULT_LEAST_CONN_CHOICES: usize = 8;

/// `len` slots from `start` on, wrapping around.
#[inline]
fn window(slots: &[Slot], start: usize, len: usize) -> impl Iterator<Item = &Slot> {
    let end = start + len;
    let (tail, head) = if end <= slots.len() {
        (&slots[start..end], &slots[..0])
    } else {
        (&slots[start..], &slots[..end - slots.len()])
    };
    tail.iter().chain(head)
}

/// `i` modulo `n` for `i` below `2n`, without a division.
#[inline]
fn wrap(i: usize, n: usize) -> usize {
    if i >= n {
        i - n
    } else {
        i
    }
}

/// An immutable membership snapshot and the selector built for it.
#[derive(Debug)]
pub struct BackendSet {
    backends: Box<[Backend]>,
    selector: Selector,
    /// The pickable backends, compact, for the selectors that compare loads.
    slots: Slots,
    /// How many backends `least_conn` compares per pick.
    choices: usize,
    /// Some backend's weight is ramping up (slow start).
    ramping: bool,
    /// The backends in the gateway's own zone, preferred while enough of them are available.
    local: Option<LocalZone>,
}

#[derive(Debug)]
struct LocalZone {
    selector: Selector,
    slots: Slots,
    members: Box<[u32]>,
    /// Whether enough of `members` are available; kept by the health checker's tick.
    preferred: AtomicBool,
    min_available_percent: u32,
}

impl LocalZone {
    fn healthy_enough(&self, backends: &[Backend]) -> bool {
        let up = self
            .members
            .iter()
            .filter(|&&i| backends[i as usize].state.available())
            .count();
        up * 100 >= self.members.len() * self.min_available_percent as usize && up > 0
    }
}

/// Zone-aware balancing: the gateway's zone, and the share of that zone's backends that must
/// be available for traffic to stay in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locality {
    pub zone: Arc<str>,
    pub min_available_percent: u32,
}

/// A pickable backend as the load-aware balancers see it: 16 bytes, so that a scan walks
/// four to a cache line.
#[derive(Debug, Clone)]
struct Slot {
    state: Arc<BackendState>,
    /// `2^24 / weight`: load × this orders backends by load / weight with one multiplication.
    inverse_weight: u32,
    index: u32,
}

/// Weights are reduced to sum at most 2^16 before being inverted into 2^24 / weight, which
/// keeps every inverse at 256 or more (precise enough to order loads) and every score (a load
/// below 2^32 times that) within 56 bits, leaving room for a window position.
const MAX_WEIGHT_SUM: u64 = 1 << 16;
const INVERSE_ONE: u64 = 1 << 24;
const WINDOW_BITS: u32 = 7;
const WINDOW_MASK: u64 = (1 << WINDOW_BITS) - 1;
/// The most backends `least_conn` may be told to compare per pick.
pub const MAX_LEAST_CONN_CHOICES: usize = 1 << WINDOW_BITS;

/// The slots of the pickable backends for the balancers that compare loads, followed, for
/// `least_conn`, by the first `window - 1` of them again: a window that starts near the end then
/// reads on without wrapping around, as one contiguous run.
#[derive(Debug, Default)]
struct Slots {
    all: Box<[Slot]>,
    /// How many backends: the slots before the repeated ones.
    n: usize,
}

impl Slots {
    fn build(balance: Balance, backends: &[Backend], weights: &[u64], choices: usize) -> Slots {
        if !matches!(balance, Balance::LeastConn | Balance::P2c) {
            return Slots::default();
        }
        let reduced = select::reduced_weights(weights, MAX_WEIGHT_SUM);
        let mut all: Vec<Slot> = backends
            .iter()
            .zip(reduced)
            .enumerate()
            .filter(|(_, (_, w))| *w > 0)
            .map(|(i, (b, w))| Slot {
                state: b.state.clone(),
                inverse_weight: (INVERSE_ONE / w) as u32,
                index: i as u32,
            })
            .collect();
        let n = all.len();
        if balance == Balance::LeastConn {
            let repeat = n.min(choices).saturating_sub(1);
            all.extend_from_within(..repeat);
        }
        Slots { all: all.into(), n }
    }

    /// Each backend's slot once.
    fn live(&self) -> &[Slot] {
        &self.all[..self.n]
    }
}

impl BackendSet {
    /// `slow_start` ramps the weights of backends that joined recently; `ramping` then says so,
    /// and the set is rebuilt until none does.
    fn build(
        balance: Balance,
        settings: &PeerSettings,
        specs: Vec<BackendSpec>,
        states: Vec<Arc<BackendState>>,
        slow_start: Option<&SlowStart>,
        locality: Option<&Locality>,
        choices: usize,
    ) -> BackendSet {
        let now = crate::clock::now_ms();
        let ramped: Vec<Option<u64>> = specs
            .iter()
            .zip(&states)
            .map(|(spec, st)| slow_start.and_then(|s| s.ramped(spec.weight, st, now)))
            .collect();
        let ramping = ramped.iter().any(Option::is_some);
        let weights: Vec<u64> = specs
            .iter()
            .zip(&ramped)
            .map(|(spec, r)| match (ramping, r) {
                (_, Some(w)) => *w,
                (true, None) => spec.weight as u64 * slow_start::SCALE,
                (false, None) => spec.weight as u64,
            })
            .collect();
        // Round robin ignores weights; while a backend ramps it has to honour them.
        let balance_now = match balance {
            Balance::RoundRobin if ramping => Balance::WeightedRoundRobin,
            b => b,
        };
        let names: Vec<String> = specs.iter().map(|s| s.addr.to_string()).collect();
        let selector = Selector::build(balance_now, &weights, &names);
        let local_members: Vec<u32> = locality.map_or_else(Vec::new, |l| {
            (0..specs.len() as u32)
                .filter(|&i| {
                    let spec = &specs[i as usize];
                    spec.weight > 0 && spec.zone.as_deref() == Some(&*l.zone)
                })
                .collect()
        });
        let local_weights: Vec<u64> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if local_members.contains(&(i as u32)) {
                    *w
                } else {
                    0
                }
            })
            .collect();
        let backends: Box<[Backend]> = specs
            .into_iter()
            .zip(states)
            .map(|(spec, state)| Backend {
                peer: settings.peer(spec.addr),
                spec,
                state,
            })
            .collect();
        let slots = Slots::build(balance, &backends, &weights, choices);
        let local = match locality {
            // Preferring a zone makes sense only when there is somewhere else to go.
            Some(l) if !local_members.is_empty() && local_members.len() < backends.len() => {
                let zone = LocalZone {
                    selector: Selector::build(balance_now, &local_weights, &names),
                    slots: Slots::build(balance, &backends, &local_weights, choices),
                    members: local_members.into(),
                    preferred: AtomicBool::new(false),
                    min_available_percent: l.min_available_percent,
                };
                zone.preferred
                    .store(zone.healthy_enough(&backends), Ordering::Relaxed);
                Some(zone)
            }
            _ => None,
        };
        BackendSet {
            backends,
            selector,
            slots,
            choices,
            ramping,
            local,
        }
    }

    /// Re-decides whether the local zone is healthy enough to take all the traffic.
    pub(crate) fn refresh_locality(&self) {
        if let Some(l) = &self.local {
            l.preferred
                .store(l.healthy_enough(&self.backends), Ordering::Relaxed);
        }
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
        let usable = |s: &BackendState| avoid.is_empty() || !avoid.contains(&s.addr);
        let local = self
            .local
            .as_ref()
            .filter(|l| l.preferred.load(Ordering::Relaxed))
            .and_then(|l| self.pick_in(&l.selector, &l.slots, Some(&l.members), turn, key, usable));
        local
            .or_else(|| self.pick_in(&self.selector, &self.slots, None, turn, key, usable))
            .or_else(|| self.scan(turn, |s| !s.is(DRAINED) && usable(s)))
    }

    /// An available backend by `selector` (or the load-aware `slots`), among `members` when
    /// given, if there is one.
    #[inline]
    fn pick_in(
        &self,
        selector: &Selector,
        slots: &Slots,
        members: Option<&[u32]>,
        turn: usize,
        key: Option<&[u8]>,
        usable: impl Fn(&BackendState) -> bool + Copy,
    ) -> Option<&Backend> {
        match selector {
            Selector::Empty => None,
            Selector::LeastConn => self.least_loaded(slots, turn, usable),
            Selector::P2c => self.better_of_two(slots.live(), usable),
            other => {
                let first = &self.backends[other.pick(turn, key)? as usize];
                if first.state.available() && usable(&first.state) {
                    return Some(first);
                }
                // The selector's other choices keep weights and a key's stickiness.
                (1..ALTERNATIVES)
                    .filter_map(|k| other.alternative(turn, key, k))
                    .map(|i| &self.backends[i as usize])
                    .find(|b| b.state.available() && usable(&b.state))
                    .or_else(|| match members {
                        None => self.scan(turn, |s| s.available() && usable(s)),
                        Some(m) => m
                            .iter()
                            .map(|&i| &self.backends[i as usize])
                            .find(|b| b.state.available() && usable(&b.state)),
                    })
            }
        }
    }

    /// The first pickable backend from `start` on whose state passes `ok`.
    fn scan(&self, start: usize, ok: impl Fn(&BackendState) -> bool) -> Option<&Backend> {
        let n = self.backends.len();
        (0..n)
            .map(|i| &self.backends[start.wrapping_add(i) % n])
            .find(|b| b.spec.weight > 0 && ok(&b.state))
    }

    /// Fewest in flight relative to weight among `self.choices` consecutive slots from a place
    /// drawn from `turn` (all of them when there are no more): with a window of a few, the
    /// winner is among the least loaded few percent, which is what the balancer is for, at a cost
    /// that does not grow with the upstream. Moving the start also lets ties (idle backends)
    /// take turns.
    #[inline]
    fn least_loaded(
        &self,
        slots: &Slots,
        turn: usize,
        usable: impl Fn(&BackendState) -> bool,
    ) -> Option<&Backend> {
        let n = slots.n;
        if n == 0 {
            return None;
        }
        // Fibonacci hashing spreads consecutive turns over the set; the multiply-shift maps the
        // result onto 0..n without a division.
        let spread = (turn as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let start = ((spread as u128 * n as u128) >> 64) as usize;
        let window = &slots.all[start..start + n.min(self.choices)];
        // Score above position in one integer, so that one running minimum finds the least
        // loaded and, among equals, the first. The down sort after every backend with fewer than
        // 2^16 requests in flight (2^32 × the smallest inverse weight); a down winner means the
        // whole window is down, or loads beyond that, and the exact scan below decides.
        let mut best = u64::MAX;
        for (position, slot) in window.iter().enumerate() {
            let score = slot.state.load_or_down() * slot.inverse_weight as u64;
            best = best.min(score << WINDOW_BITS | position as u64);
        }
        let winner = &window[(best & WINDOW_MASK) as usize];
        if winner.state.available() && usable(&winner.state) {
            return Some(&self.backends[winner.index as usize]);
        }
        // Everything in the window is down, or the winner is one this request already failed
        // on: compare every backend, without it. Rare enough to afford the full scan.
        self.lowest_score(slots.live(), start, usable)
    }

    /// The available, `usable` backend with the lowest load / weight among all `slots`, the
    /// first from `start` among equals.
    fn lowest_score(
        &self,
        slots: &[Slot],
        start: usize,
        usable: impl Fn(&BackendState) -> bool,
    ) -> Option<&Backend> {
        window(slots, start, slots.len())
            .filter(|s| usable(&s.state))
            .filter_map(|s| {
                Some((
                    s.state.load_if_available()? as u64 * s.inverse_weight as u64,
                    s,
                ))
            })
            .fold(None, |best: Option<(u64, &Slot)>, (score, s)| match best {
                Some((b, _)) if b <= score => best,
                _ => Some((score, s)),
            })
            .map(|(_, s)| &self.backends[s.index as usize])
    }

    /// The less loaded, relative to weight, of two distinct random backends; a full
    /// comparison when either is unavailable.
    #[inline]
    fn better_of_two(
        &self,
        slots: &[Slot],
        usable: impl Fn(&BackendState) -> bool,
    ) -> Option<&Backend> {
        let n = slots.len();
        if n == 0 {
            return None;
        }
        let a = fastrand::usize(..n);
        // A second draw among the other n - 1, without a division.
        let b = wrap(a + 1 + fastrand::usize(..n.max(2) - 1), n);
        let (x, y) = (&slots[a], &slots[b]);
        let score = |s: &Slot| {
            Some(s.state.load_if_available()? as u64 * s.inverse_weight as u64)
                .filter(|_| usable(&s.state))
        };
        match (score(x), score(y)) {
            (Some(sx), Some(sy)) => {
                Some(&self.backends[if sy < sx { y.index } else { x.index } as usize])
            }
            _ => self.lowest_score(slots, a, usable),
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
    pub policy: UpstreamPolicy,
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
            set: ArcSwap::from_pointee(BackendSet {
                backends: Box::new([]),
                selector: Selector::Empty,
                slots: Slots::default(),
                choices: 0,
                ramping: false,
                local: None,
            }),
            states: Mutex::new(states),
            turn: AtomicUsize::new(0),
            next_check_ms: AtomicU64::new(0),
            gauges,
        };
        u.update(specs);
        u
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
        let set = BackendSet::build(
            self.balance,
            &self.policy.settings,
            specs,
            states.refresh(&addrs, start_unhealthy),
            self.policy.slow_start.as_ref(),
            self.policy.locality.as_ref(),
            self.policy.least_conn_choices,
        );
        self.gauges.pickable.set(set.pickable() as i64);
        self.set.store(Arc::new(set));
    }

    /// Publishes the gauges that follow backend state.
    pub(crate) fn report(&self, set: &BackendSet) {
        let available = set
            .backends
            .iter()
            .filter(|b| b.spec.weight > 0 && b.state.available())
            .count();
        let in_flight: u64 = set
            .backends
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
        if !current.ramping {
            return;
        }
        // Under the same lock as `update`, so that a membership change is never undone.
        let _writer = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let set = self.set.load();
        let set = BackendSet::build(
            self.balance,
            &self.policy.settings,
            set.backends.iter().map(|b| b.spec.clone()).collect(),
            set.backends.iter().map(|b| b.state.clone()).collect(),
            self.policy.slow_start.as_ref(),
            self.policy.locality.as_ref(),
            self.policy.least_conn_choices,
        );
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

#[cfg(test)]
mod tests {
    use super::state::{EJECTED, UNHEALTHY};
    use super::*;

    fn set(balance: Balance, weights: &[u32]) -> BackendSet {
        set_comparing(balance, weights, DEFAULT_LEAST_CONN_CHOICES)
    }

    fn set_comparing(balance: Balance, weights: &[u32], choices: usize) -> BackendSet {
        let specs: Vec<BackendSpec> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| BackendSpec {
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                weight: *w,
                zone: None,
            })
            .collect();
        let states = specs
            .iter()
            .map(|s| Arc::new(BackendState::new(s.addr, false)))
            .collect();
        let settings = PeerSettings {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            tls: None,
        };
        BackendSet::build(balance, &settings, specs, states, None, None, choices)
    }

    fn counts(set: &BackendSet, picks: usize, avoid: &[SocketAddr]) -> Vec<usize> {
        let mut c = vec![0; set.backends.len()];
        for turn in 0..picks {
            let b = set.pick(turn, Some(&turn.to_be_bytes()), avoid).unwrap();
            c[(b.spec.addr.port() - 1000) as usize] += 1;
        }
        c
    }

    #[test]
    fn the_fallback_after_an_unavailable_pick_keeps_the_weights() {
        for balance in [Balance::WeightedRoundRobin, Balance::Random] {
            let s = set(balance, &[3, 1, 4]);
            s.backends[2].state.set(EJECTED, true);
            let c = counts(&s, 8000, &[]);
            assert_eq!(c[2], 0, "{balance:?}");
            // Backend 2's share goes to the others 3:1, not evenly.
            let ratio = c[0] as f64 / c[1] as f64;
            assert!((2.4..3.6).contains(&ratio), "{balance:?} {c:?}");
        }
    }

    #[test]
    fn a_key_moves_only_when_its_backend_is_out() {
        let s = set(Balance::ConsistentHash, &[1, 1, 1, 1]);
        let before: Vec<u16> = (0..500usize)
            .map(|k| {
                s.pick(0, Some(&k.to_be_bytes()), &[])
                    .unwrap()
                    .spec
                    .addr
                    .port()
            })
            .collect();
        s.backends[1].state.set(UNHEALTHY, true);
        for (k, was) in before.iter().enumerate() {
            let now = s
                .pick(0, Some(&k.to_be_bytes()), &[])
                .unwrap()
                .spec
                .addr
                .port();
            if *was != 1001 {
                assert_eq!(now, *was, "key {k} moved though its backend is up");
            } else {
                assert_ne!(now, 1001);
            }
        }
    }

    #[test]
    fn least_conn_follows_load_relative_to_weight_and_p2c_avoids_the_busiest() {
        let s = set(Balance::LeastConn, &[1, 2, 1]);
        // Loads 2, 3, 1: relative to weight 2, 1.5, 1: backend 2 wins.
        let guards: Vec<_> = [(0, 2), (1, 3), (2, 1)]
            .iter()
            .flat_map(|&(i, n)| (0..n).map(move |_| i))
            .map(|i| InFlight::start(&s.backends[i].state))
            .collect();
        assert_eq!(s.pick(0, None, &[]).unwrap().spec.addr.port(), 1002);
        // Avoided, the next best by load / weight.
        let avoid = [s.backends[2].spec.addr];
        assert_eq!(s.pick(0, None, &avoid).unwrap().spec.addr.port(), 1001);
        drop(guards);

        let p = set(Balance::P2c, &[1, 1, 1]);
        let _busy: Vec<_> = (0..50)
            .map(|_| InFlight::start(&p.backends[0].state))
            .collect();
        let c = counts(&p, 3000, &[]);
        assert_eq!(c[0], 0, "the busiest of three never wins a pair: {c:?}");
    }

    #[test]
    fn least_conn_over_many_backends_picks_the_least_loaded_of_its_window() {
        // Backend i has 100 - i requests in flight: the last ones are the least loaded.
        let s = set(Balance::LeastConn, &[1; 100]);
        let _load: Vec<_> = (0..100)
            .flat_map(|i| (0..100 - i).map(move |_| i))
            .map(|i| InFlight::start(&s.backends[i].state))
            .collect();
        let c = counts(&s, 10_000, &[]);
        // Each pick is the lightest of 8 consecutive backends from a random start: backend i
        // (7 to 98) wins only the window that ends at it, 1 in 100; backend 99 wins the eight
        // that hold it; backends 0 to 6 are never the lightest of any window.
        assert_eq!(&c[..7], &[0; 7], "{c:?}");
        for (i, &n) in c.iter().enumerate().take(99).skip(7) {
            assert!((30..200).contains(&n), "backend {i}: {n} of 10,000");
        }
        assert!((600..1000).contains(&c[99]), "{c:?}");

        // Told to compare all 100, it is exact.
        let exact = set_comparing(Balance::LeastConn, &[1; 100], 100);
        let _load: Vec<_> = (0..100)
            .flat_map(|i| (0..100 - i).map(move |_| i))
            .map(|i| InFlight::start(&exact.backends[i].state))
            .collect();
        assert_eq!(counts(&exact, 1000, &[])[99], 1000);
    }

    #[test]
    fn least_conn_looks_past_a_window_that_is_all_down() {
        let s = set(Balance::LeastConn, &[1; 100]);
        for b in &s.backends[1..] {
            b.state.set(EJECTED, true);
        }
        let c = counts(&s, 1000, &[]);
        assert_eq!(
            c[0], 1000,
            "the one available backend, wherever the window fell"
        );
        // And past an available winner this request already failed on.
        s.backends[50].state.set(EJECTED, false);
        let avoid = [s.backends[0].spec.addr];
        assert_eq!(counts(&s, 100, &avoid)[50], 100);
    }

    #[test]
    fn nothing_available_falls_back_to_the_unhealthy_but_never_the_drained() {
        let s = set(Balance::RoundRobin, &[1, 1]);
        s.backends[0].state.set(UNHEALTHY, true);
        s.backends[1].state.set(DRAINED, true);
        assert_eq!(counts(&s, 10, &[]), [10, 0]);
        s.backends[0].state.set(DRAINED, true);
        assert!(s.pick(0, None, &[]).is_none());
    }
}
