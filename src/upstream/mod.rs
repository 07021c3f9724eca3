//! Upstreams: a named backend set with its balancing policy and connection settings.
//!
//! Membership is held apart from config: an [`Upstream`] owns an atomically swapped
//! [`BackendSet`], so a config file (now) or a discovery source (later) can publish a new set
//! with one store, while requests keep picking from the set they loaded, without locks.

pub mod discovery;
pub mod hash_key;
pub mod select;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::upstreams::peer::HttpPeer;
use prometheus::IntGauge;

use crate::config::schema::{Balance, UpstreamSection};
use crate::metrics::METRICS;
pub use hash_key::HashKey;
use select::Selector;

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
    /// Built once per set: a pick clones it instead of assembling options per request.
    peer: HttpPeer,
}

/// An immutable membership snapshot and the selector built for it.
#[derive(Debug)]
pub struct BackendSet {
    backends: Box<[Backend]>,
    selector: Selector,
}

impl BackendSet {
    fn build(balance: Balance, settings: &PeerSettings, specs: Vec<BackendSpec>) -> BackendSet {
        let weights: Vec<u32> = specs.iter().map(|s| s.weight).collect();
        let names: Vec<String> = specs.iter().map(|s| s.addr.to_string()).collect();
        let selector = Selector::build(balance, &weights, &names);
        let backends = specs
            .into_iter()
            .map(|spec| Backend {
                peer: settings.peer(spec.addr),
                spec,
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

    #[inline]
    pub fn pick(&self, turn: usize, key: Option<&[u8]>) -> Option<&Backend> {
        self.selector
            .pick(turn, key)
            .map(|i| &self.backends[i as usize])
    }

    /// A pickable backend other than those in `avoid`, scanning from `start`: the fallback
    /// after a failed connection.
    pub fn next_other(&self, start: usize, avoid: &[SocketAddr]) -> Option<&Backend> {
        let n = self.backends.len();
        (0..n)
            .map(|i| &self.backends[(start + i) % n])
            .find(|b| b.spec.weight > 0 && !avoid.contains(&b.spec.addr))
    }
}

#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    pub settings: PeerSettings,
    /// What this upstream was built from; a reload that leaves it equal keeps this object.
    pub definition: UpstreamSection,
    /// The ZooKeeper path its members come from; `None` for static backends.
    pub discovery: Option<String>,
    set: ArcSwap<BackendSet>,
    turn: AtomicUsize,
    backends_gauge: IntGauge,
}

impl Upstream {
    pub fn new(
        definition: UpstreamSection,
        hash_key: Option<HashKey>,
        settings: PeerSettings,
        specs: Vec<BackendSpec>,
        discovery: Option<String>,
    ) -> Upstream {
        let balance = definition.balance;
        let name: Arc<str> = definition.name.as_str().into();
        let set = BackendSet::build(balance, &settings, specs);
        let backends_gauge = METRICS.backends.with_label_values(&[&name]);
        backends_gauge.set(set.pickable() as i64);
        Upstream {
            name,
            balance,
            hash_key,
            settings,
            definition,
            discovery,
            set: ArcSwap::from_pointee(set),
            turn: AtomicUsize::new(0),
            backends_gauge,
        }
    }

    /// Publishes a new membership. Requests that already loaded the old set finish with it.
    pub fn update(&self, specs: Vec<BackendSpec>) {
        let set = BackendSet::build(self.balance, &self.settings, specs);
        self.backends_gauge.set(set.pickable() as i64);
        self.set.store(Arc::new(set));
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<BackendSet>> {
        self.set.load()
    }

    /// Picks a backend for a request with hash key `key`, avoiding the addresses in `avoid`
    /// (backends this request already failed to connect to).
    #[inline]
    pub fn select(&self, key: Option<&[u8]>, avoid: &[SocketAddr]) -> Option<Box<HttpPeer>> {
        let set = self.set.load();
        let turn = if Selector::wants_counter(self.balance) {
            self.turn.fetch_add(1, Ordering::Relaxed)
        } else {
            fastrand::usize(..)
        };
        let first = set.pick(turn, key)?;
        let chosen = if avoid.contains(&first.spec.addr) {
            set.next_other(turn, avoid)?
        } else {
            first
        };
        Some(Box::new(chosen.peer.clone()))
    }

    pub fn has_backends(&self) -> bool {
        self.set.load().pickable() > 0
    }
}
