//! One membership of an upstream: the backends as configured or discovered, each with its
//! shared [`BackendState`], the selector built for their weights, and the gateway's own zone
//! among them. Nothing here knows a protocol: a pick yields a backend index, which the HTTP
//! side ([`super::peer`]) maps to its prepared peer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::select::{Balance, Selector, States};
use super::slow_start::{self, SlowStart};
use super::state::{BackendState, DRAINED};

/// One backend as configured or discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// Zero drains the backend: it stays listed but is never picked.
    pub weight: u32,
    /// The zone it runs in, for zone-aware balancing.
    pub zone: Option<Arc<str>>,
    /// A stable identity that seeds its points on the consistent-hash ring, so that every
    /// replica maps a key to the same backend: the ZooKeeper node name of a discovered
    /// instance (which keeps when a pod changes address), the address of a static one.
    pub name: Arc<str>,
    /// The instance id a game rule with `strategy: instance` picks it by: metadata `inst_id`
    /// of a discovered instance, option `inst_id=N` of a static one.
    pub inst_id: Option<u8>,
}

impl BackendSpec {
    /// A backend known by its address alone: named by it, weight 1, no zone, no instance id.
    pub fn at(addr: SocketAddr) -> BackendSpec {
        BackendSpec {
            addr,
            weight: 1,
            zone: None,
            name: addr.to_string().into(),
            inst_id: None,
        }
    }
}

/// A member of a set: what it was listed as, and the state it shares with every set that
/// lists its address.
#[derive(Debug)]
pub struct Backend {
    pub spec: BackendSpec,
    pub state: Arc<BackendState>,
}

impl States for [Backend] {
    #[inline]
    fn state(&self, i: u32) -> &BackendState {
        &self[i as usize].state
    }
}

/// Zone-aware balancing: the gateway's zone, and the share of that zone's backends that must
/// be available for traffic to stay in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locality {
    pub zone: Arc<str>,
    pub min_available_percent: u32,
}

/// An immutable membership snapshot and the selector built for it.
#[derive(Debug)]
pub struct BackendSet {
    backends: Box<[Backend]>,
    selector: Selector,
    /// Some backend's weight is ramping up (slow start).
    ramping: bool,
    /// The backends in the gateway's own zone, preferred while enough of them are available.
    local: Option<LocalZone>,
}

#[derive(Debug)]
struct LocalZone {
    selector: Selector,
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

impl BackendSet {
    /// A set without members, until the first is published.
    pub(crate) fn empty() -> BackendSet {
        BackendSet {
            backends: Box::new([]),
            selector: Selector::Empty,
            ramping: false,
            local: None,
        }
    }

    /// `slow_start` ramps the weights of backends that joined recently; `ramping` then says so,
    /// and the set is rebuilt until none does. `choices` is how many backends `least_conn`
    /// compares per pick.
    pub(crate) fn build(
        balance: Balance,
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
        let balance = match balance {
            Balance::RoundRobin if ramping => Balance::WeightedRoundRobin,
            b => b,
        };
        let names: Vec<String> = specs.iter().map(|s| s.name.to_string()).collect();
        let selector = Selector::build(balance, &weights, &names, &states, choices);
        let local_members: Vec<u32> = locality.map_or_else(Vec::new, |l| {
            (0..specs.len() as u32)
                .filter(|&i| {
                    let spec = &specs[i as usize];
                    spec.weight > 0 && spec.zone.as_deref() == Some(&*l.zone)
                })
                .collect()
        });
        let local = match locality {
            // Preferring a zone makes sense only when there is somewhere else to go.
            Some(l) if !local_members.is_empty() && local_members.len() < specs.len() => {
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
                Some(LocalZone {
                    selector: Selector::build(balance, &local_weights, &names, &states, choices),
                    members: local_members.into(),
                    preferred: AtomicBool::new(false),
                    min_available_percent: l.min_available_percent,
                })
            }
            _ => None,
        };
        let backends: Box<[Backend]> = specs
            .into_iter()
            .zip(states)
            .map(|(spec, state)| Backend { spec, state })
            .collect();
        if let Some(zone) = &local {
            zone.preferred
                .store(zone.healthy_enough(&backends), Ordering::Relaxed);
        }
        BackendSet {
            backends,
            selector,
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

    /// Whether some backend's weight is ramping up, so that the set is to be rebuilt.
    pub(crate) fn ramping(&self) -> bool {
        self.ramping
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
        self.pick_index(turn, key, avoid).map(|i| &self.backends[i])
    }

    /// [`BackendSet::pick`], as the backend's index in [`BackendSet::backends`].
    #[inline]
    pub fn pick_index(
        &self,
        turn: usize,
        key: Option<&[u8]>,
        avoid: &[SocketAddr],
    ) -> Option<usize> {
        let usable = |s: &BackendState| avoid.is_empty() || !avoid.contains(&s.addr);
        let local = self
            .local
            .as_ref()
            .filter(|l| l.preferred.load(Ordering::Relaxed))
            .and_then(|l| self.pick_in(&l.selector, Some(&l.members), turn, key, usable));
        local
            .or_else(|| self.pick_in(&self.selector, None, turn, key, usable))
            .or_else(|| self.scan(turn, |s| !s.is(DRAINED) && usable(s)))
    }

    /// The backend whose instance id is `inst_id`, not in `avoid`: an available one if any,
    /// else one that is unhealthy or ejected rather than none, as [`BackendSet::pick_index`]
    /// does (an instance holds state no other backend has); never a drained one. Several with
    /// the same id (one instance on several addresses) take turns by `turn`.
    pub fn pick_instance(&self, turn: usize, inst_id: u8, avoid: &[SocketAddr]) -> Option<usize> {
        let usable = |s: &BackendState| avoid.is_empty() || !avoid.contains(&s.addr);
        let n = self.backends.len();
        let mut fallback = None;
        for i in (0..n).map(|i| turn.wrapping_add(i) % n) {
            let b = &self.backends[i];
            if b.spec.inst_id != Some(inst_id) || b.spec.weight == 0 || !usable(&b.state) {
                continue;
            }
            if b.state.available() {
                return Some(i);
            }
            if fallback.is_none() && !b.state.is(DRAINED) {
                fallback = Some(i);
            }
        }
        fallback
    }

    /// Whether some backend carries instance id `inst_id`.
    pub fn has_instance(&self, inst_id: u8) -> bool {
        self.backends
            .iter()
            .any(|b| b.spec.inst_id == Some(inst_id))
    }

    /// An available backend by `selector`, or else the first available one among `members`
    /// (all pickable backends when `None`).
    #[inline]
    fn pick_in(
        &self,
        selector: &Selector,
        members: Option<&[u32]>,
        turn: usize,
        key: Option<&[u8]>,
        usable: impl Fn(&BackendState) -> bool + Copy,
    ) -> Option<usize> {
        if let Some(i) = selector.choose(turn, key, &*self.backends, usable) {
            return Some(i as usize);
        }
        let ok = |s: &BackendState| s.available() && usable(s);
        match members {
            None => self.scan(turn, ok),
            Some(m) => m
                .iter()
                .map(|&i| i as usize)
                .find(|&i| ok(&self.backends[i].state)),
        }
    }

    /// The first pickable backend from `start` on whose state passes `ok`.
    fn scan(&self, start: usize, ok: impl Fn(&BackendState) -> bool) -> Option<usize> {
        let n = self.backends.len();
        (0..n)
            .map(|i| start.wrapping_add(i) % n)
            .find(|&i| self.backends[i].spec.weight > 0 && ok(&self.backends[i].state))
    }
}

#[cfg(test)]
mod tests {
    use super::super::select::DEFAULT_LEAST_CONN_CHOICES;
    use super::super::state::{InFlight, EJECTED, UNHEALTHY};
    use super::*;

    fn set(balance: Balance, weights: &[u32]) -> BackendSet {
        set_comparing(balance, weights, DEFAULT_LEAST_CONN_CHOICES)
    }

    fn set_comparing(balance: Balance, weights: &[u32], choices: usize) -> BackendSet {
        let specs: Vec<BackendSpec> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| BackendSpec {
                weight: *w,
                ..BackendSpec::at(SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
            })
            .collect();
        let states = specs
            .iter()
            .map(|s| Arc::new(BackendState::new(s.addr, false)))
            .collect();
        BackendSet::build(balance, specs, states, None, None, choices)
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

    #[test]
    fn an_instance_pick_finds_its_id_prefers_the_available_and_never_the_drained() {
        let mut s = set(Balance::RoundRobin, &[1, 1, 1, 1]);
        let ids = [Some(3), Some(5), Some(5), None];
        let specs: Vec<BackendSpec> = s
            .backends
            .iter()
            .zip(ids)
            .map(|(b, inst_id)| BackendSpec {
                inst_id,
                ..b.spec.clone()
            })
            .collect();
        let states = s.backends.iter().map(|b| b.state.clone()).collect();
        s = BackendSet::build(Balance::RoundRobin, specs, states, None, None, 8);
        let port = |i: Option<usize>| i.map(|i| s.backends[i].spec.addr.port());
        assert_eq!(port(s.pick_instance(0, 3, &[])), Some(1000));
        assert_eq!(port(s.pick_instance(7, 3, &[])), Some(1000));
        assert_eq!(s.pick_instance(0, 9, &[]), None, "no such instance");
        assert!(s.has_instance(5) && !s.has_instance(9));
        // Two addresses of instance 5 take turns; an ejected one is passed over while the
        // other is available, and taken rather than none when it is the last.
        let both: Vec<_> = (0..4).map(|t| port(s.pick_instance(t, 5, &[]))).collect();
        assert!(
            both.contains(&Some(1001)) && both.contains(&Some(1002)),
            "{both:?}"
        );
        s.backends[1].state.set(EJECTED, true);
        assert!((0..4).all(|t| port(s.pick_instance(t, 5, &[])) == Some(1002)));
        let avoid = [s.backends[2].spec.addr];
        assert_eq!(
            port(s.pick_instance(0, 5, &avoid)),
            Some(1001),
            "ejected, not none"
        );
        s.backends[1].state.set(DRAINED, true);
        assert_eq!(s.pick_instance(0, 5, &avoid), None, "drained: never");
    }

    #[test]
    fn the_ring_is_seeded_by_the_backend_name_not_its_address() {
        // Two replicas that see the same instances at different addresses (a pod moved and
        // one replica heard first) still agree on each key's instance.
        let build = |base: u16| {
            let specs: Vec<BackendSpec> = (0..4u16)
                .map(|i| BackendSpec {
                    name: format!("inst-{i}").into(),
                    ..BackendSpec::at(SocketAddr::from(([127, 0, 0, 1], base + i)))
                })
                .collect();
            let states = specs
                .iter()
                .map(|s| Arc::new(BackendState::new(s.addr, false)))
                .collect();
            BackendSet::build(Balance::ConsistentHash, specs, states, None, None, 8)
        };
        let (a, b) = (build(1000), build(2000));
        for k in 0..500u32 {
            let key = k.to_be_bytes();
            let (x, y) = (
                a.pick(0, Some(&key), &[]).unwrap(),
                b.pick(0, Some(&key), &[]).unwrap(),
            );
            assert_eq!(x.spec.name, y.spec.name, "key {k}");
        }
    }
}
