//! Step 2 of a connection's front: the TLS handshake of a listener that terminates TLS, with
//! the acceptor of the serving config, done within `client_header_timeout` from the accept.

use std::sync::Arc;

use pingora::protocols::Stream;

use super::state::Nanos;
use super::{clock, ConnApp, Reason};
use crate::tls::{self, Refused, TlsSource};

impl<A, F> ConnApp<A, F> {
    /// Makes the listener terminate TLS, with the acceptor `source` gives at each accept.
    pub fn with_tls(mut self, source: TlsSource) -> Self {
        self.tls = Some(source);
        self
    }

    /// `io` handshaken (or as it is, on a listener without TLS); `None` when the connection is
    /// done: a handshake past the head deadline is closed as a `header_timeout`, and a failed
    /// one is counted by the TLS metrics only.
    pub(super) async fn tls_front(
        self: &Arc<Self>,
        io: Stream,
        accepted: Nanos,
        peer: Option<std::net::IpAddr>,
    ) -> Option<Stream> {
        let Some(source) = &self.tls else {
            return Some(io);
        };
        let listener_tls = source();
        let deadline = clock::to_tokio(accepted.saturating_add(self.conns.header_timeout));
        match tls::handshake(&listener_tls, io, deadline).await {
            Ok(io) => Some(io),
            Err(Refused::Timeout) => {
                self.conns.closed(Reason::HeaderTimeout, peer);
                None
            }
            Err(Refused::Failed) => None,
        }
    }
}
