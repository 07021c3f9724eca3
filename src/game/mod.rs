//! The game-session router (issue 15): a TCP listener kind (`listeners[].game`) that routes
//! game sessions, framed as the seed game gateway frames them, to ZooKeeper-discovered servers,
//! pinned for the session's life, over links multiplexed by SessionID.
//!
//! Data flow: [`app`] accepts (admission, PROXY header, sniffing a WebSocket or plain HTTP),
//! reads a client's first frame, asks [`rules`] for the upstream and picks a backend through
//! the protocol-neutral upstream call, attaches the session to a [`link`] to that backend and
//! registers it in the [`session`] table, through which the link's reader hands each backend
//! frame to its session's bounded queue.

pub mod admission;
pub mod app;
pub mod codec;
pub mod config;
pub mod drain;
pub mod link;
pub mod metrics;
pub mod rules;
pub mod rules_node;
pub mod session;
pub mod sniff;
pub mod ws;

use std::sync::atomic::{AtomicU64, Ordering};

/// A session's id: `[12 bits of the gateway's id][40 bits of ms since the epoch below]
/// [12 bits of sequence]`, as the seed's snowflake ids, so ids are unique across replicas with
/// distinct gateway ids and say which replica a session came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub i64);

impl SessionId {
    /// The gateway id it carries.
    pub fn gateway(self) -> u16 {
        ((self.0 as u64) >> 52) as u16
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Makes [`SessionId`]s for one gateway: lock-free, monotonic, never two alike, even past 4,096
/// ids in one millisecond (the time part then runs ahead of the clock and catches up).
#[derive(Debug)]
pub struct IdGen {
    gateway: u64,
    /// `ms << 12 | seq` of the last id given.
    last: AtomicU64,
}

/// 2024-01-01T00:00:00Z: 40 bits of ms from here last until 2058.
const ID_EPOCH_MS: u64 = 1_704_067_200_000;

impl IdGen {
    /// `gateway` keeps its low 12 bits.
    pub fn new(gateway: u16) -> IdGen {
        IdGen {
            gateway: u64::from(gateway & 0xfff),
            last: AtomicU64::new(0),
        }
    }

    /// A gateway id from a replica's name (CRC-32, low 12 bits), as the seed derives it.
    pub fn gateway_id_of(name: &str) -> u16 {
        (crc32fast::hash(name.as_bytes()) & 0xfff) as u16
    }

    pub fn next(&self) -> SessionId {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.next_at(wall)
    }

    fn next_at(&self, wall_ms: u64) -> SessionId {
        let now = (wall_ms.saturating_sub(ID_EPOCH_MS) & ((1 << 40) - 1)) << 12;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = if now > last { now } else { last + 1 };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return SessionId(((self.gateway << 52) | next) as i64),
                Err(seen) => last = seen,
            }
        }
    }
}

/// Why a session ended: a log field and a metric label (a closed set, never an id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CloseReason {
    /// The client closed its connection.
    ClientClosed = 1,
    /// The client sent bytes that are not a frame, or a frame over the bound.
    Malformed,
    /// No frame from the client within `client_idle`.
    ClientIdle,
    /// Nothing from the backend for this session within `backend_idle`.
    BackendIdle,
    /// `max_session_duration` passed.
    MaxDuration,
    /// The session's outbound queue overflowed: the client does not read fast enough.
    SlowClient,
    /// The backend closed the session (a SessionClose from it).
    Kicked,
    /// The backend's link failed, or the backend was ejected or left.
    BackendGone,
    /// No rule or no backend for the first frame.
    NoRoute,
    /// The gateway is shutting down and the drain window passed.
    Shutdown,
    /// A write to the client failed.
    ClientError,
}

impl CloseReason {
    pub const ALL: [CloseReason; 11] = [
        CloseReason::ClientClosed,
        CloseReason::Malformed,
        CloseReason::ClientIdle,
        CloseReason::BackendIdle,
        CloseReason::MaxDuration,
        CloseReason::SlowClient,
        CloseReason::Kicked,
        CloseReason::BackendGone,
        CloseReason::NoRoute,
        CloseReason::Shutdown,
        CloseReason::ClientError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Malformed => "malformed",
            CloseReason::ClientIdle => "client_idle",
            CloseReason::BackendIdle => "backend_idle",
            CloseReason::MaxDuration => "max_duration",
            CloseReason::SlowClient => "slow_client",
            CloseReason::Kicked => "kicked",
            CloseReason::BackendGone => "backend_gone",
            CloseReason::NoRoute => "no_route",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ClientError => "client_error",
        }
    }

    pub fn from_u8(b: u8) -> Option<CloseReason> {
        CloseReason::ALL.into_iter().find(|r| *r as u8 == b)
    }

    /// The u16 carried in a SessionClose payload and in the close frame to a client.
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// How a client speaks to the gateway: a metric label and a SessionOpen field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientProtocol {
    Tcp = 1,
    WebSocket = 2,
}

impl ClientProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientProtocol::Tcp => "tcp",
            ClientProtocol::WebSocket => "websocket",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_gateway_and_never_repeat_even_within_one_millisecond() {
        let g = IdGen::new(0xabc);
        let t = ID_EPOCH_MS + 1_000;
        let ids: Vec<SessionId> = (0..10_000).map(|_| g.next_at(t)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|i| i.gateway() == 0xabc && i.0 != 0));
        // A clock that steps back does not repeat an id either.
        let after = g.next_at(t - 500);
        assert!(after > ids[ids.len() - 1]);
        assert_ne!(IdGen::new(1).next_at(t), IdGen::new(2).next_at(t));
    }

    #[test]
    fn close_reasons_round_trip_their_codes() {
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_u8(r as u8), Some(r));
        }
        assert_eq!(CloseReason::from_u8(0), None);
    }
}
