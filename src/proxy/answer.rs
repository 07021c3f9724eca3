//! What the gateway answers by itself: short plain-text answers, `respond` routes, refusals by
//! a route's limits, and the failures it makes for `fail_to_proxy` to answer (the text rides
//! in the Pingora error's context).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;

use crate::limit::retry_after_secs;
use crate::metrics::METRICS;
use crate::route::{Action, Respond, Route};
use crate::upstream::call::Refusal;
use crate::upstream::Upstream;

/// A failure the gateway answers itself: `why` is the text of the answer (the error's context),
/// to which `fail_to_proxy` adds the upstream's name on a proxy route.
pub(super) fn gateway_failure(code: u16, why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(code), why)
}

/// A refused upstream call, as the error the proxy fails with.
pub(super) fn refused(refusal: Refusal, upstream: &Upstream) -> Box<Error> {
    gateway_failure(refusal.status(), refusal.reason())
        .more_context(format!("upstream {}", upstream.name))
}

/// The text of an answer the gateway made itself ([`gateway_failure`]): the context of the
/// innermost error, when that is a status with no cause of its own. Context added on the way
/// out (`more_context`) wraps it; an error caused by something else explains that cause for
/// the log, not for the client.
pub(super) fn gateway_text(e: &Error) -> Option<&str> {
    let mut inner = e;
    while let Some(cause) = inner.cause.as_deref() {
        match cause.downcast_ref::<Box<Error>>() {
            Some(next) => inner = next,
            None => return None,
        }
    }
    match inner.etype() {
        ErrorType::HTTPStatus(_) => inner.context.as_ref().map(|c| c.as_str()),
        _ => None,
    }
}

/// What a failure answer says when the error carries no text of the gateway's: for a backend
/// that failed (502) or did not answer in time (504).
pub(super) fn default_why(code: u16) -> &'static str {
    match code {
        502 => "bad gateway: the backend failed",
        504 => "gateway timeout: the backend did not answer in time",
        _ => "",
    }
}

/// Writes a short plain-text answer from the gateway itself.
pub(super) async fn answer(session: &mut Session, status: u16, body: &'static str) -> Result<()> {
    write_answer(session, plain_head(status, body)?, body).await
}

/// The head of a plain-text answer from the gateway itself.
pub(super) fn plain_head(status: u16, body: &str) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(CONTENT_LENGTH, body.len())?;
    Ok(resp)
}

pub(super) async fn write_answer(
    session: &mut Session,
    resp: ResponseHeader,
    body: &'static str,
) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
            .await?;
    }
    Ok(())
}

pub(super) async fn respond(session: &mut Session, r: &Respond, route: &Route) -> Result<()> {
    let mut resp = ResponseHeader::build(r.status, Some(r.headers.len() + 2))?;
    for (k, v) in r.headers.iter() {
        resp.insert_header(k.clone(), v.clone())?;
    }
    resp.insert_header(CONTENT_LENGTH, r.body.len())?;
    route.response_headers.apply_response(&mut resp)?;
    let head_only = session.req_header().method == http::Method::HEAD || r.body.is_empty();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(r.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// Why a route's limits turned a request away.
pub(super) enum Refused {
    /// Over the rate: try again after this long.
    Rate(Duration),
    Concurrency,
}

impl Refused {
    /// The answer's status, text and `Retry-After` seconds.
    pub(super) fn answer(&self) -> (http::StatusCode, &'static str, Option<u64>) {
        match self {
            Refused::Rate(wait) => (
                http::StatusCode::TOO_MANY_REQUESTS,
                "too many requests\n",
                Some(retry_after_secs(*wait)),
            ),
            Refused::Concurrency => (
                http::StatusCode::SERVICE_UNAVAILABLE,
                "too many requests in flight\n",
                None,
            ),
        }
    }
}

pub(super) async fn refuse(session: &mut Session, refused: Refused) -> Result<bool> {
    let (status, body, retry_after) = refused.answer();
    let mut resp = plain_head(status.as_u16(), body)?;
    if let Some(secs) = retry_after {
        resp.insert_header(http::header::RETRY_AFTER, secs)?;
    }
    write_answer(session, resp, body).await?;
    Ok(true)
}

/// What `request_filter` decides once the route is known: answer from the gateway (no route,
/// a `respond` route, a body over the limit), returning `true`, or go on to the upstream.
pub(super) async fn answer_early(session: &mut Session, route: Option<&Route>) -> Result<bool> {
    let Some(route) = route else {
        answer(session, 404, "no route matches this request\n").await?;
        return Ok(true);
    };
    if let Action::Respond(r) = &route.action {
        respond(session, r, route).await?;
        return Ok(true);
    }
    if let Some(limit) = route.max_request_body {
        let declared = session
            .req_header()
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            // The body is left unread, so the connection cannot carry another request.
            session.set_keepalive(None);
            answer(session, 413, "request body too large\n").await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// A 400 from the gateway; the connection is closed, since a client that sent a malformed
/// request may frame the next one differently from us.
pub(super) async fn bad_request(session: &mut Session, why: &'static str) -> Result<bool> {
    METRICS.bad_requests.inc();
    session.set_keepalive(None);
    answer(session, 400, why).await?;
    Ok(true)
}
