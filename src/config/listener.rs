//! A `listeners:` entry: where the gateway accepts, what it serves there, and the limits on
//! the requests and connections it takes. Names and addresses are unique across listeners and
//! the admin listener: that is the assembly's check, which parses the address.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::conn::h2::Http2Section;
use crate::conn::proxy_protocol::ProxyProtocolSection;
use crate::conn::ConnKeys;
use crate::route::path::PathSection;
use crate::section::{At, ConfigErrors, Dur, Size};
use crate::snapshot::{Listener, ListenerKind};
use crate::tls::TlsSection;

pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
/// Pingora refuses more headers than this whatever we allow.
const PINGORA_MAX_HEADERS: usize = 256;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub name: String,
    pub listen: String,
    #[serde(default)]
    pub kind: ListenerKind,
    pub max_request_headers: Option<usize>,
    pub max_request_header_bytes: Option<Size>,
    pub keepalive_requests: Option<u32>,
    /// How request paths are normalized before matching and forwarding.
    #[serde(default)]
    pub path: PathSection,
    /// Time for a client to send a complete request head: from the accept on a new
    /// connection, from the first byte of each later request on a keep-alive one.
    pub client_header_timeout: Option<Dur>,
    /// The longest gap between two reads of a request body.
    pub client_body_timeout: Option<Dur>,
    /// How long a keep-alive connection may idle between requests; `0` turns keep-alive off.
    pub keepalive_timeout: Option<Dur>,
    /// Client connections open at once on this listener; more are closed as they arrive.
    pub max_connections: Option<u32>,
    /// Client connections open at once from one IP address.
    pub max_connections_per_ip: Option<u32>,
    /// TLS termination: certificates chosen by SNI, versions, client certificates.
    pub tls: Option<TlsSection>,
    /// The PROXY protocol header from a load balancer in front; required when present.
    pub proxy_protocol: Option<ProxyProtocolSection>,
    /// HTTP/2: h2c on cleartext, and its limits.
    #[serde(default)]
    pub http2: Http2Section,
}

impl ListenerSection {
    /// The listener at `at` on `addr` (its `listen`, parsed by the assembly).
    pub fn build(&self, at: &At, addr: SocketAddr, errors: &mut ConfigErrors) -> Listener {
        let max_headers = self.max_request_headers.unwrap_or(DEFAULT_MAX_HEADERS);
        if max_headers == 0 || max_headers > PINGORA_MAX_HEADERS {
            errors.push(
                at.key("max_request_headers"),
                format!("must be between 1 and {PINGORA_MAX_HEADERS}"),
            );
        }
        let max_request_header_bytes = self
            .max_request_header_bytes
            .map_or(DEFAULT_MAX_HEADER_BYTES, |s| s.0);
        let mut conn = self.conn_keys().build(at, errors);
        conn.proxy_protocol = self.proxy_protocol.as_ref().map(|p| {
            p.build(
                &at.key("proxy_protocol"),
                conn.client_header_timeout,
                errors,
            )
        });
        let http2 = self
            .http2
            .build(&at.key("http2"), max_request_header_bytes, &conn, errors);
        Listener {
            name: self.name.clone(),
            addr,
            kind: self.kind,
            max_request_headers: max_headers,
            max_request_header_bytes,
            keepalive_requests: self.keepalive_requests,
            path: self.path.build(),
            conn,
            http2,
            tls: self
                .tls
                .as_ref()
                .and_then(|t| t.build(&at.key("tls"), &self.name, errors)),
        }
    }

    fn conn_keys(&self) -> ConnKeys {
        ConnKeys {
            client_header_timeout: self.client_header_timeout,
            client_body_timeout: self.client_body_timeout,
            keepalive_timeout: self.keepalive_timeout,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }
}
