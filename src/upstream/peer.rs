//! The HTTP side of an upstream: how connections to its backends are made (timeouts, TLS),
//! and the Pingora [`HttpPeer`] prepared once per backend of every published set, so that a
//! pick clones a ready peer instead of assembling options per request. Everything else in
//! `upstream/` is protocol-neutral.

use std::net::SocketAddr;
use std::time::Duration;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use serde::{Deserialize, Serialize};

use super::call::{Call, Refusal};
use super::{Picked, Upstream};

/// Streams multiplexed on one HTTP/2 connection to a backend before another is opened
/// (Pingora's own default is one stream per connection).
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// How connections to this upstream's backends are made.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls: Option<TlsSettings>,
    pub protocol: Protocol,
}

/// The HTTP version spoken to an upstream's backends (`upstreams[].protocol`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1, over TLS when the upstream has `tls`.
    #[default]
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN (Pingora speaks HTTP/1.1 to a backend that does
    /// not select `h2`).
    H2,
    /// HTTP/2 with prior knowledge over cleartext.
    H2c,
}

impl Protocol {
    pub fn is_http1(&self) -> bool {
        *self == Protocol::Http1
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub sni: String,
    pub verify: bool,
}

impl PeerSettings {
    pub const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
    pub const DEFAULT_READ: Duration = Duration::from_secs(60);
    pub const DEFAULT_WRITE: Duration = Duration::from_secs(60);
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

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
        if self.protocol != Protocol::Http1 {
            // HTTP/2 only: over TLS it is the one protocol ALPN offers; over cleartext Pingora
            // takes it as prior knowledge.
            o.alpn = ALPN::H2;
            o.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
        peer
    }
}

/// The prepared peers of one backend set, index for index with its backends.
#[derive(Debug, Default)]
pub struct HttpPeers(Box<[HttpPeer]>);

impl HttpPeers {
    pub(crate) fn build(settings: &PeerSettings, addrs: impl Iterator<Item = SocketAddr>) -> Self {
        HttpPeers(addrs.map(|a| settings.peer(a)).collect())
    }

    #[inline]
    pub fn get(&self, i: usize) -> &HttpPeer {
        &self.0[i]
    }
}

impl Upstream {
    /// Picks a backend for an HTTP request with hash key `key`, avoiding the addresses in
    /// `avoid` (backends this request already failed to connect to), with a copy of its
    /// prepared peer in the `Box` Pingora's `upstream_peer` returns.
    #[inline]
    pub fn select(
        &self,
        key: Option<&[u8]>,
        avoid: &[SocketAddr],
    ) -> Option<Picked<Box<HttpPeer>>> {
        self.choose(key, avoid, |members, i| {
            Box::new(members.http.get(i).clone())
        })
    }
}

impl Call {
    /// Starts an attempt for HTTP: [`Call::pick_backend`], with the picked backend's prepared
    /// peer.
    #[inline]
    pub fn pick(&mut self, key: Option<&[u8]>) -> Result<Box<HttpPeer>, Refusal> {
        let picked = self.upstream().select(key, self.avoided());
        self.start(picked).map(|(peer, _)| peer)
    }
}
