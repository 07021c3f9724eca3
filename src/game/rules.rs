//! The routing table of a game listener: rules keyed by serverType and worldId (worldId 0 a
//! wildcard), each naming a zkgate upstream, how a backend is picked in it, and how the
//! gateway speaks to that backend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::codec::{GateForm, ServerId};
use crate::upstream::call::{Call, Refusal};
use crate::upstream::Upstream;

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
    /// The backend gets SessionOpen/SessionClose and may send SessionClose and Broadcast
    /// (zkgate's opcodes 2 to 4); `false` for backends that know only opcode 1.
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
            // Built by the rules task (G2): the backend whose registration says this inst_id.
            Strategy::Instance => call.pick_backend(None),
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

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
