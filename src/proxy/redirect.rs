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
    path: &str,
    query: Option<&str>,
) -> Option<Result<HeaderValue, &'static str>> {
    match &route?.action {
        Action::Redirect(r) => Some(r.location(tls, host, path, query)),
        _ => None,
    }
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
