//! The connection side of upgraded tunnels (WebSocket), for the proxy's phases: the wait for
//! the backend's `101` and the tunnel's idle timeout are held by the connection's
//! [`ConnState`], watched where both directions are visible ([`Guarded`]), so that a tunnel
//! lives as long as either side talks and no per-direction read timeout applies to it.

use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::http::ServerSession;

use super::clock;
use super::io::Guarded;
use super::state::{ConnState, Nanos, Silenced};

fn nanos(d: Duration) -> Nanos {
    d.as_nanos().min(Nanos::MAX as u128) as Nanos
}

fn state(session: &ServerSession) -> Option<&Arc<ConnState>> {
    session.stream().and_then(Guarded::of).map(Guarded::state)
}

/// An upgrade request is about to go to the backend, whose `101` must come within `wait`
/// (what the request's read timeout would have been; the upstream's read timeout itself is
/// lifted, since it would go on cutting a quiet backend after the switch).
pub fn upgrade_requested(session: &ServerSession, wait: Duration) {
    if let Some(s) = state(session) {
        s.on_upgrade_request(clock::now(), nanos(wait));
    }
}

/// The backend answered the upgrade request without switching: it goes on as a plain request.
pub fn upgrade_refused(session: &ServerSession) {
    if let Some(s) = state(session) {
        s.on_upgrade_refused();
    }
}

/// The backend switched protocols: from now on the connection is a tunnel closed when no byte
/// moved either way for `idle`. The client's read timeout (`client_body_timeout`) is lifted: it
/// would cut a client that only listens. `None` outside a zkgate HTTP/1 listener.
pub fn switched(session: &mut ServerSession, idle: Duration) -> Option<TunnelConn> {
    session.set_read_timeout(None);
    let s = state(session)?.clone();
    s.on_switched(clock::now(), nanos(idle));
    Some(TunnelConn(s))
}

/// Whether the upgrade request failed because the backend did not answer it in time.
pub fn handshake_timed_out(session: &ServerSession) -> bool {
    state(session).is_some_and(|s| s.silenced() == Some(Silenced::Handshake))
}

/// Whether the tunnel or its handshake was ended by its silence allowance: such a failure is
/// the gateway's decision, not one to retry.
pub fn silenced(session: &ServerSession) -> bool {
    state(session).is_some_and(|s| s.silenced().is_some())
}

/// The connection of an open tunnel, kept by the proxy's request state to learn at the end how
/// the tunnel closed (also when the serve loop dropped it, with the proxy's phases).
#[derive(Debug)]
pub struct TunnelConn(Arc<ConnState>);

impl TunnelConn {
    /// Whether the tunnel was closed by its idle timeout.
    pub fn idle_closed(&self) -> bool {
        self.0.silenced() == Some(Silenced::Idle)
    }
}
