//! `X-Forwarded-Proto`, `X-Forwarded-Port` and the RFC 7239 `Forwarded` element toward the
//! upstream. A trusted proxy's values are kept (its `Forwarded` gets ours appended); anyone
//! else's are replaced, by the rule that governs `X-Forwarded-For` (`client_ip`).

use http::header::{FORWARDED, HOST};
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::client_ip::{forwarded_element, ClientIp, ForwardedMode};

const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_PORT: &str = "x-forwarded-port";

/// What the headers need from the listener, prepared when the proxy is built.
pub(super) struct ForwardingValues {
    port: u16,
    port_value: HeaderValue,
}

impl ForwardingValues {
    pub(super) fn new(listener_port: u16) -> ForwardingValues {
        ForwardingValues {
            port: listener_port,
            port_value: HeaderValue::from(listener_port),
        }
    }

    /// The port the client connected to, from the connection's local port if known.
    pub(super) fn port_number(&self, local: Option<u16>) -> u16 {
        local.unwrap_or(self.port)
    }

    /// The port the client connected to: the connection's local port, which is the
    /// listener's unless the address came from elsewhere (then it is made for this request).
    fn port(&self, session: &Session) -> HeaderValue {
        match session.server_addr().and_then(|a| a.as_inet()) {
            Some(a) if a.port() != self.port => HeaderValue::from(a.port()),
            _ => self.port_value.clone(),
        }
    }
}

/// Sets the forwarding headers of `req` for a request from `session`; `passes` says whether
/// the peer's own forwarding headers are passed on (a trusted proxy, or `untrusted_forwarded:
/// keep`).
pub(super) fn set_headers(
    session: &Session,
    req: &mut RequestHeader,
    passes: bool,
    client_ip: &ClientIp,
    values: &ForwardingValues,
) -> Result<()> {
    let tls = super::redirect::is_tls(session);
    if !passes || !req.headers.contains_key(X_FORWARDED_PROTO) {
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        req.insert_header(X_FORWARDED_PROTO, proto)?;
    }
    if !passes || !req.headers.contains_key(X_FORWARDED_PORT) {
        req.insert_header(X_FORWARDED_PORT, values.port(session))?;
    }
    let mode = client_ip.forwarded();
    if mode == ForwardedMode::Off {
        return Ok(());
    }
    let Some(peer) = session.client_addr().and_then(|a| a.as_inet()) else {
        return Ok(());
    };
    let by = match mode {
        ForwardedMode::WithBy => session.server_addr().and_then(|a| a.as_inet()).copied(),
        _ => None,
    };
    let mut value = String::with_capacity(96);
    if passes {
        // Every line the trusted peer sent, as one list, before ours.
        for prev in req.headers.get_all(FORWARDED).iter() {
            if let Ok(text) = prev.to_str() {
                value.push_str(text);
                value.push_str(", ");
            }
        }
    }
    // An HTTP/2 request may carry its host as `:authority` only.
    let host = req
        .headers
        .get(HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
    forwarded_element(&mut value, peer.ip(), tls, host, by);
    let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .map_err(|e| Error::because(ErrorType::InternalError, "Forwarded header", e))?;
    req.insert_header(FORWARDED, value)?;
    Ok(())
}
