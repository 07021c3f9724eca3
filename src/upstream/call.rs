//! One call to an upstream, whoever makes it (the HTTP proxy, an alert destination, later the
//! TCP router): the circuit breaker's leave, a backend picked away from those the call already
//! failed on, each attempt counted in flight and recorded for outlier detection, retries under
//! the caller's attempt limit and the upstream's retry budget, and the outcome recorded with the
//! breaker. The call holds no protocol: what to send and how is the caller's.
//!
//! Nothing here allocates: a call is a few words and a fixed list of addresses, made per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::breaker::Admit;
use super::state::InFlight;
use super::{Picked, Upstream};

/// The most tries a call remembers failed backends for; a caller's attempt limit is at most this.
pub const MAX_TRIES: u8 = 5;

/// Why a call, or its next attempt, cannot go to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The circuit breaker is open, or half-open with all its probes out.
    CircuitOpen,
    /// Nothing to pick: no backend listed, or every one drained.
    NoBackend,
    /// Every backend left is one this call already failed on.
    Unreachable,
}

impl Refusal {
    /// The HTTP status that says so.
    pub fn status(self) -> u16 {
        match self {
            Refusal::CircuitOpen | Refusal::NoBackend => 503,
            Refusal::Unreachable => 502,
        }
    }

    /// Why, as the client and the log read it.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::CircuitOpen => "circuit open",
            Refusal::NoBackend => "no backend available",
            Refusal::Unreachable => "no backend could be reached",
        }
    }
}

/// How a call ended, as the breaker and the last attempt's backend count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer the caller counts as success (for HTTP: below 500), or a failure that was not
    /// the upstream's (the client went away).
    Ok,
    /// The backend of the last attempt failed (for HTTP: a 5xx, or an error after connecting):
    /// it counts against that backend and against the breaker.
    BackendFailed,
    /// The call failed short of any backend's fault (no backend could be picked, an error of
    /// the gateway's): it counts against the breaker only.
    Failed,
}

/// One call in progress. Made by [`Upstream::begin`]; each attempt starts with
/// [`Call::pick`], a failed one ends with [`Call::failed`], and the call with [`Call::finish`].
/// Dropped unfinished, it leaves the in-flight count and records nothing.
#[derive(Debug)]
pub struct Call {
    upstream: Arc<Upstream>,
    /// What the breaker said, if the upstream has one.
    admitted: Option<Admit>,
    /// Tries started, the first included.
    tries: u8,
    /// Backends the call failed on, `failed` of them: a retry avoids them. (A retry after a
    /// stale pooled connection goes back to the same backend: that is not a failed attempt.)
    avoid: [SocketAddr; MAX_TRIES as usize],
    failed: u8,
    /// The current attempt, counted in flight on its backend until it ends.
    attempt: Option<InFlight>,
    /// The backend of the latest attempt, kept after it ended, for the access log.
    backend: Option<SocketAddr>,
    /// When the latest attempt was picked.
    attempt_started: Option<Instant>,
}

impl Upstream {
    /// Begins a call: the circuit breaker's leave, if the upstream has one.
    #[inline]
    pub fn begin(self: &Arc<Self>) -> Result<Call, Refusal> {
        let admitted = match &self.policy.breaker {
            Some(breaker) => match breaker.admit() {
                Admit::No => return Err(Refusal::CircuitOpen),
                admit => Some(admit),
            },
            None => None,
        };
        Ok(Call {
            upstream: self.clone(),
            admitted,
            tries: 0,
            avoid: [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_TRIES as usize],
            failed: 0,
            attempt: None,
            backend: None,
            attempt_started: None,
        })
    }
}

impl Call {
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Tries started so far, the first included.
    pub fn tries(&self) -> u8 {
        self.tries
    }

    /// The backend of the latest attempt, if one was picked.
    pub fn backend(&self) -> Option<SocketAddr> {
        self.backend
    }

    /// When the latest attempt was picked.
    pub fn attempt_started(&self) -> Option<Instant> {
        self.attempt_started
    }

    /// Starts an attempt for any protocol: picks a backend for `key` (the balancer's hash
    /// key), away from those this call failed on, and counts it in flight. Returns its address.
    /// The first attempt of a call pays into the upstream's retry budget.
    #[inline]
    pub fn pick_backend(&mut self, key: Option<&[u8]>) -> Result<SocketAddr, Refusal> {
        let picked = self.upstream.pick(key, self.avoided());
        self.start(picked).map(|((), addr)| addr)
    }

    /// Starts an attempt on the backend whose instance id is `inst_id` (a game rule's
    /// `strategy: instance`), away from those this call failed on, counted as
    /// [`Call::pick_backend`] counts. `NoBackend` when no backend carries that id.
    pub fn pick_instance(&mut self, inst_id: u8) -> Result<SocketAddr, Refusal> {
        let picked = self.upstream.pick_instance(inst_id, self.avoided());
        self.start(picked).map(|((), addr)| addr)
    }

    /// Counts `picked`, the attempt a pick made (or its refusal when there was none), and
    /// hands back what the protocol attached to it.
    #[inline]
    pub(super) fn start<P>(
        &mut self,
        picked: Option<Picked<P>>,
    ) -> Result<(P, SocketAddr), Refusal> {
        let Some(Picked { peer, attempt }) = picked else {
            return Err(if self.failed == 0 {
                Refusal::NoBackend
            } else {
                Refusal::Unreachable
            });
        };
        if self.tries == 0 {
            self.upstream.policy.retry_budget.deposit();
        }
        self.tries += 1;
        let addr = attempt.state().addr;
        self.backend = Some(addr);
        // A pick replaces an attempt still open (a retry on a fresh connection to the same
        // backend): the old one leaves the in-flight count without an outcome, as before.
        self.attempt = Some(attempt);
        self.attempt_started = Some(Instant::now());
        Ok((peer, addr))
    }

    /// The backends this call failed on, for a protocol's own pick.
    pub(super) fn avoided(&self) -> &[SocketAddr] {
        &self.avoid[..self.failed as usize]
    }

    /// The current attempt failed on its backend: it counts toward the backend's outlier
    /// detection and a retry avoids it. Returns whether a retry may go: the caller allows
    /// `attempts` tries in all, and the upstream's retry budget has one to spare.
    pub fn failed(&mut self, attempts: u8) -> bool {
        // The budget is asked only when the attempts allow a retry: a refusal costs nothing.
        let retry = self.tries < attempts && self.upstream.policy.retry_budget.withdraw();
        self.avoid_current();
        retry
    }

    /// The current attempt could not connect: as [`Call::failed`], but the retry is not taken
    /// from the retry budget. Nothing reached a backend, so retrying elsewhere adds no load
    /// to the upstream, which is what the budget bounds; and a backend that just died takes
    /// every third connect of a three-backend upstream until its health checks notice, more
    /// than a 20% budget can carry without failing requests that another backend would serve.
    pub fn failed_to_connect(&mut self, attempts: u8) -> bool {
        let retry = self.tries < attempts;
        self.avoid_current();
        retry
    }

    fn avoid_current(&mut self) {
        if let (Some(addr), Some(slot)) = (self.backend, self.avoid.get_mut(self.failed as usize)) {
            *slot = addr;
            self.failed += 1;
        }
        self.end_attempt(true);
    }

    /// Ends the current attempt, if one is open: it leaves the in-flight count, and its
    /// outcome counts toward the backend's outlier detection.
    fn end_attempt(&mut self, failed: bool) {
        end_attempt(&self.upstream, &mut self.attempt, failed);
    }

    /// Ends the call: the last attempt's outcome goes to its backend, the call's to the
    /// breaker. Returns `true` when this call opened the circuit, which is logged here, once.
    pub fn finish(self, outcome: Outcome) -> bool {
        self.settle().finish(outcome)
    }

    /// The call, its backend found, kept for a long exchange: only what its end needs.
    pub fn settle(self) -> Settled {
        Settled {
            upstream: self.upstream,
            admitted: self.admitted,
            attempt: self.attempt,
        }
    }
}

fn end_attempt(upstream: &Upstream, attempt: &mut Option<InFlight>, failed: bool) {
    if let Some(attempt) = attempt.take() {
        upstream.record(attempt.state(), failed);
    }
}

/// A call settled on its backend for a long exchange, a game session's for its whole life:
/// its attempt still counted in flight, the breaker's leave, and none of the retry state
/// (the backends to avoid alone are 160 bytes) a call carries while it picks.
pub struct Settled {
    upstream: Arc<Upstream>,
    admitted: Option<Admit>,
    attempt: Option<InFlight>,
}

impl Settled {
    /// As [`Call::finish`].
    pub fn finish(mut self, outcome: Outcome) -> bool {
        end_attempt(
            &self.upstream,
            &mut self.attempt,
            outcome == Outcome::BackendFailed,
        );
        let (Some(admitted), Some(breaker)) = (self.admitted, &self.upstream.policy.breaker) else {
            return false;
        };
        let opened = breaker.record(admitted, outcome != Outcome::Ok);
        if opened {
            log::warn!("upstream {}: circuit opened", self.upstream.name);
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::breaker::{Breaker, BreakerPolicy};
    use super::super::outlier::OutlierPolicy;
    use super::super::state::EJECTED;
    use super::super::{BackendSpec, PeerSettings, UpstreamPolicy, UpstreamSection};
    use super::*;

    /// Backends on loopback ports nothing dials: a call picks them but never connects.
    fn backends(n: u16) -> Vec<BackendSpec> {
        (0..n)
            .map(|i| BackendSpec::at(SocketAddr::from(([127, 0, 0, 1], 1000 + i))))
            .collect()
    }

    fn policy() -> UpstreamPolicy {
        UpstreamPolicy::plain(PeerSettings {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            tls: None,
            protocol: crate::upstream::Protocol::Http1,
        })
    }

    fn upstream(name: &str, policy: UpstreamPolicy, specs: Vec<BackendSpec>) -> Arc<Upstream> {
        let definition: UpstreamSection =
            serde_yaml::from_str(&format!("name: {name}")).expect("a minimal section");
        Arc::new(Upstream::new(definition, policy, None, specs, None))
    }

    fn breaker(name: &str, consecutive_failures: u32) -> Breaker {
        Breaker::new(
            name,
            BreakerPolicy {
                failure_ratio: 1.0,
                min_requests: 1000,
                window: Duration::from_secs(60),
                consecutive_failures,
                open_for: Duration::from_secs(60),
                probes: 1,
            },
        )
    }

    fn in_flight(u: &Upstream) -> u32 {
        u.load()
            .backends()
            .iter()
            .map(|b| b.state.in_flight())
            .sum()
    }

    #[test]
    fn an_open_breaker_refuses_the_call_and_a_closed_one_admits_it() {
        let u = upstream(
            "call-breaker",
            UpstreamPolicy {
                breaker: Some(breaker("call-breaker", 2)),
                ..policy()
            },
            backends(2),
        );
        for expect_opened in [false, true] {
            let mut call = u.begin().expect("closed: admitted");
            call.pick(None).expect("a backend");
            assert_eq!(call.finish(Outcome::BackendFailed), expect_opened);
        }
        assert_eq!(u.begin().unwrap_err(), Refusal::CircuitOpen);
        assert_eq!(
            (Refusal::CircuitOpen.status(), Refusal::CircuitOpen.reason()),
            (503, "circuit open")
        );
        // Without a breaker, every call is admitted whatever came before.
        let plain = upstream("call-plain", policy(), backends(1));
        for _ in 0..20 {
            let mut call = plain.begin().expect("no breaker: admitted");
            call.pick(None).unwrap();
            assert!(!call.finish(Outcome::BackendFailed));
        }
    }

    #[test]
    fn the_circuit_opens_once_however_many_calls_fail_together() {
        let u = upstream(
            "call-once",
            UpstreamPolicy {
                breaker: Some(breaker("call-once", 3)),
                ..policy()
            },
            backends(2),
        );
        // Ten calls admitted while it was closed, all failing: the third opens the circuit,
        // the others that end after it find it open already.
        let calls: Vec<Call> = (0..10).map(|_| u.begin().unwrap()).collect();
        let opened: Vec<bool> = calls
            .into_iter()
            .map(|c| c.finish(Outcome::Failed))
            .collect();
        assert_eq!(opened.iter().filter(|o| **o).count(), 1, "{opened:?}");
        assert!(opened[2], "{opened:?}");
        assert_eq!(u.begin().unwrap_err(), Refusal::CircuitOpen);
    }

    #[test]
    fn a_success_or_a_clients_failure_does_not_count_against_the_breaker() {
        let u = upstream(
            "call-ok",
            UpstreamPolicy {
                breaker: Some(breaker("call-ok", 2)),
                ..policy()
            },
            backends(1),
        );
        for _ in 0..10 {
            let fail = u.begin().unwrap();
            assert!(!fail.finish(Outcome::Failed));
            // A success in between resets the failures in a row.
            let mut ok = u.begin().unwrap();
            ok.pick(None).unwrap();
            assert!(!ok.finish(Outcome::Ok));
        }
        assert!(u.begin().is_ok());
    }

    #[test]
    fn retries_stop_at_the_attempt_limit() {
        let u = upstream("call-attempts", policy(), backends(3));
        // Enough requests paid in that the budget is not what stops it.
        for _ in 0..50 {
            u.policy.retry_budget.deposit();
        }
        let mut call = u.begin().unwrap();
        call.pick(None).unwrap();
        assert!(call.failed(3), "1 of 3 tries");
        call.pick(None).unwrap();
        assert!(call.failed(3), "2 of 3 tries");
        call.pick(None).unwrap();
        assert!(!call.failed(3), "3 of 3 tries: no more");
        assert_eq!(call.tries(), 3);
    }

    #[test]
    fn retries_stop_when_the_budget_is_spent() {
        let u = upstream("call-budget", policy(), backends(3));
        // Five calls pay in 20% each: one retry in all.
        let mut calls: Vec<Call> = (0..5).map(|_| u.begin().unwrap()).collect();
        for c in &mut calls {
            c.pick(None).unwrap();
        }
        assert!(calls[0].failed(5), "the one retry the budget holds");
        assert!(!calls[1].failed(5), "the budget is spent");
        // A retry picked again does not pay in a second time.
        calls[0].pick(None).unwrap();
        assert!(!calls[0].failed(5));
    }

    #[test]
    fn a_failed_connect_retries_without_the_budget_but_within_the_attempts() {
        let u = upstream("call-connect", policy(), backends(3));
        let mut calls: Vec<Call> = (0..5).map(|_| u.begin().unwrap()).collect();
        for c in &mut calls {
            c.pick(None).unwrap();
        }
        assert!(calls[0].failed(5), "the one retry the budget holds");
        assert!(calls[1].failed_to_connect(5), "a connect is not paid for");
        let first = calls[1].backend().unwrap();
        calls[1].pick(None).unwrap();
        assert_ne!(calls[1].backend(), Some(first), "and it avoids the backend");
        assert!(calls[1].failed_to_connect(5));
        calls[1].pick(None).unwrap();
        assert!(!calls[1].failed_to_connect(3), "3 of 3 tries: no more");
        assert!(!calls[2].failed(5), "the budget is still spent");
    }

    #[test]
    fn a_retry_avoids_the_backends_that_failed_and_then_none_is_left() {
        let u = upstream("call-avoid", policy(), backends(2));
        let mut call = u.begin().unwrap();
        call.pick(None).unwrap();
        let first = call.backend().unwrap();
        call.failed(5);
        call.pick(None).unwrap();
        let second = call.backend().unwrap();
        assert_ne!(first, second);
        call.failed(5);
        assert_eq!(call.pick(None).unwrap_err(), Refusal::Unreachable);
        assert_eq!(Refusal::Unreachable.status(), 502);
        assert_eq!(call.backend(), Some(second), "kept for the access log");

        let empty = upstream("call-empty", policy(), Vec::new());
        let mut call = empty.begin().unwrap();
        assert_eq!(call.pick(None).unwrap_err(), Refusal::NoBackend);
        assert_eq!(Refusal::NoBackend.status(), 503);
    }

    #[test]
    fn the_protocol_neutral_pick_counts_and_avoids_as_the_http_one_does() {
        let u = upstream("call-neutral", policy(), backends(2));
        let mut call = u.begin().unwrap();
        let first = call.pick_backend(None).unwrap();
        assert_eq!(call.backend(), Some(first));
        assert_eq!(call.tries(), 1);
        call.failed(5);
        let second = call.pick_backend(None).unwrap();
        assert_ne!(first, second);
        call.failed(5);
        assert_eq!(call.pick_backend(None).unwrap_err(), Refusal::Unreachable);
    }

    /// A policy that ejects a backend for a minute after two failures in a row.
    fn ejecting_after_two() -> UpstreamPolicy {
        UpstreamPolicy {
            outlier: Some(OutlierPolicy {
                consecutive_failures: 2,
                base_ejection: Duration::from_secs(60),
                max_ejection: Duration::from_secs(60),
                max_ejected_percent: 100,
            }),
            ..policy()
        }
    }

    #[test]
    fn failed_attempts_count_toward_outlier_ejection_and_leave_the_in_flight_count() {
        let u = upstream("call-outlier", ejecting_after_two(), backends(1));
        let state = u.load().backends()[0].state.clone();
        let mut call = u.begin().unwrap();
        call.pick(None).unwrap();
        assert_eq!(in_flight(&u), 1);
        call.failed(1);
        assert_eq!(in_flight(&u), 0);
        assert!(!state.is(EJECTED), "one failure of two");
        // The second call's last attempt fails at the end of the call.
        let mut call = u.begin().unwrap();
        call.pick(None).unwrap();
        call.finish(Outcome::BackendFailed);
        assert!(state.is(EJECTED), "two failures in a row eject it");
        assert_eq!(in_flight(&u), 0);
    }

    #[test]
    fn a_success_resets_the_failures_in_a_row_and_an_unfinished_call_records_nothing() {
        let u = upstream("call-reset", ejecting_after_two(), backends(1));
        let state = u.load().backends()[0].state.clone();
        for _ in 0..5 {
            let mut bad = u.begin().unwrap();
            bad.pick(None).unwrap();
            bad.finish(Outcome::BackendFailed);
            let mut good = u.begin().unwrap();
            good.pick(None).unwrap();
            // A gateway-side failure is no fault of the backend's either.
            good.finish(Outcome::Failed);
        }
        assert!(!state.is(EJECTED));
        let mut bad = u.begin().unwrap();
        bad.pick(None).unwrap();
        bad.finish(Outcome::BackendFailed);
        let mut dropped = u.begin().unwrap();
        dropped.pick(None).unwrap();
        drop(dropped);
        assert!(
            !state.is(EJECTED),
            "a call dropped unfinished records nothing"
        );
        assert_eq!(in_flight(&u), 0);
    }

    #[test]
    fn an_instance_pick_counts_in_flight_and_avoids_what_failed() {
        let specs: Vec<BackendSpec> = backends(3)
            .into_iter()
            .zip([Some(1), Some(2), Some(2)])
            .map(|(b, inst_id)| BackendSpec { inst_id, ..b })
            .collect();
        let u = upstream("call-instance", policy(), specs);
        let mut call = u.begin().unwrap();
        let first = call.pick_instance(2).unwrap();
        assert_ne!(first.port(), 1000, "instance 2 is on 1001 and 1002");
        assert_eq!(
            (call.backend(), call.tries(), in_flight(&u)),
            (Some(first), 1, 1)
        );
        assert!(call.failed_to_connect(3));
        assert_eq!(in_flight(&u), 0);
        let second = call.pick_instance(2).unwrap();
        assert_ne!(second, first, "the retry avoids the one that failed");
        call.failed_to_connect(3);
        assert_eq!(call.pick_instance(2).unwrap_err(), Refusal::Unreachable);
        call.finish(Outcome::Failed);
        let mut call = u.begin().unwrap();
        assert_eq!(call.pick_instance(9).unwrap_err(), Refusal::NoBackend);
        assert_eq!(call.pick_instance(1).unwrap().port(), 1000);
        call.finish(Outcome::Ok);
        assert_eq!(in_flight(&u), 0);
    }
}
