//! The state one request carries through the proxy's phases: what `request_filter` found
//! (snapshot, route, normalized target, client), the route's limits held, the upstream call,
//! and what the answer's filters need.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limit::Permit;
use crate::plugin::{PluginState, RequestInfo, RoutePlugin};
use crate::route::Route;
use crate::snapshot::Snapshot;
use crate::upstream::call::Call;

/// Per-request state.
pub struct RequestCtx {
    pub(super) started: Instant,
    pub(super) snapshot: Option<Arc<Snapshot>>,
    pub(super) route: Option<u32>,
    /// The normalized path (`route::path`), when the upstream must get another target than
    /// the one the client sent.
    pub(super) normalized_path: Option<String>,
    /// The authority of an absolute-form target: the upstream's `Host`.
    pub(super) authority: Option<Box<str>>,
    /// The client's address: the peer, or from X-Forwarded-For behind trusted proxies.
    pub(super) client: Option<IpAddr>,
    /// The route's slot for this request while it is in flight, if the route caps that.
    pub(super) permit: Option<Permit>,
    /// The call to the route's upstream, from the breaker's leave to its outcome.
    pub(super) call: Option<Call>,
    /// The status the backend answered, as opposed to one the gateway made up.
    pub(super) upstream_status: Option<u16>,
    pub(super) upstream_time: Option<Duration>,
    pub(super) request_body_bytes: u64,
    /// Bytes of a capped 5xx body that may still be forwarded.
    pub(super) error_body_room: Option<u64>,
    /// What the route's plugin keeps about this request.
    pub(super) plugin: PluginState,
    /// Whether the request is a WebSocket handshake, or already its tunnel.
    pub(super) tunnel: super::upgrade::Tunnel,
    /// Whether the gateway made this request itself (a cache entry's background refresh).
    pub(super) subrequest: bool,
    /// SHA-256 of the verified client certificate, for a route plugin on an mTLS connection.
    pub(super) client_cert_sha256: Option<[u8; 32]>,
}

impl RequestCtx {
    pub(super) fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            snapshot: None,
            route: None,
            normalized_path: None,
            authority: None,
            client: None,
            permit: None,
            call: None,
            upstream_status: None,
            upstream_time: None,
            request_body_bytes: 0,
            error_body_room: None,
            plugin: PluginState::None,
            tunnel: Default::default(),
            subrequest: false,
            client_cert_sha256: None,
        }
    }

    pub(super) fn route(&self) -> Option<&Route> {
        Some(self.snapshot.as_ref()?.routes.get(self.route?))
    }

    /// The route's plugin, what it is told about the request, and its state for it: borrowed
    /// apart, so that calling a hook copies nothing.
    pub(super) fn plugin(&mut self) -> Option<(&RoutePlugin, RequestInfo<'_>, &mut PluginState)> {
        let plugin = self
            .snapshot
            .as_ref()?
            .routes
            .get(self.route?)
            .plugin
            .as_ref()?;
        let request = RequestInfo {
            normalized_path: self.normalized_path.as_deref(),
            client: self.client,
            subrequest: self.subrequest,
            client_cert_sha256: self.client_cert_sha256.as_ref(),
        };
        Some((plugin, request, &mut self.plugin))
    }

    /// The current try failed on its backend: a retry avoids it, and it counts against the
    /// backend's outlier detection. Whether the route's attempts and the upstream's retry
    /// budget allow another try.
    pub(super) fn failed_on_backend(&mut self) -> bool {
        let attempts = self.route().map_or(0, |r| r.retry.attempts);
        self.call.as_mut().is_some_and(|c| c.failed(attempts))
    }

    /// As [`RequestCtx::failed_on_backend`], for a try that could not connect: its retry is
    /// not taken from the upstream's retry budget.
    pub(super) fn failed_to_connect(&mut self) -> bool {
        let attempts = self.route().map_or(0, |r| r.retry.attempts);
        self.call
            .as_mut()
            .is_some_and(|c| c.failed_to_connect(attempts))
    }
}
