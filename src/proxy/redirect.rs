//! The answer of a `redirect` route: its status, its `Location` (made while the request is
//! still borrowed, see [`location`]) and the route's response headers, with no body.

use http::header::{CONTENT_LENGTH, LOCATION};
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::route::{Action, Route};

/// Whether the request came over TLS: Pingora leaves a TLS digest on such a connection.
pub(super) fn is_tls(session: &Session) -> bool {
    session
        .digest()
        .is_some_and(|d| d.ssl_digest.as_ref().is_some())
}

/// The `Location` a redirect route sends this request to, or the reason of a 400; `None` for
/// a route of another action.
pub(super) fn location(
    route: Option<&Route>,
    tls: bool,
    host: Option<&str>,
    raw_host: Option<&[u8]>,
    path: &str,
    query: Option<&str>,
) -> Option<Result<HeaderValue, &'static str>> {
    match &route?.action {
        Action::Redirect(r) => Some(r.location(tls, host, port_of(raw_host), path, query)),
        _ => None,
    }
}

/// The port a `Host` (or absolute-form authority) names: the digits after its last `:`, past
/// an IPv6 literal's `]`.
fn port_of(raw_host: Option<&[u8]>) -> Option<u16> {
    let raw = raw_host?;
    let colon = raw.iter().rposition(|&b| b == b':')?;
    if raw[colon..].contains(&b']') {
        return None;
    }
    std::str::from_utf8(&raw[colon + 1..]).ok()?.parse().ok()
}

pub(super) async fn answer(session: &mut Session, route: &Route, to: HeaderValue) -> Result<()> {
    let Action::Redirect(r) = &route.action else {
        return Error::e_explain(
            ErrorType::InternalError,
            "redirect without a redirect route",
        );
    };
    let mut resp = ResponseHeader::build(r.status, Some(2))?;
    resp.insert_header(LOCATION, to)?;
    resp.insert_header(CONTENT_LENGTH, 0)?;
    route.response_headers.apply_response(&mut resp)?;
    session.write_response_header(Box::new(resp), true).await
}

#[cfg(test)]
mod tests {
    use super::port_of;

    #[test]
    fn the_port_of_a_host_header() {
        assert_eq!(port_of(Some(b"a.test:8443")), Some(8443));
        assert_eq!(port_of(Some(b"a.test")), None);
        assert_eq!(port_of(Some(b"[::1]:8080")), Some(8080));
        assert_eq!(port_of(Some(b"[::1]")), None);
        assert_eq!(port_of(Some(b"a.test:x")), None);
        assert_eq!(port_of(None), None);
    }
}
