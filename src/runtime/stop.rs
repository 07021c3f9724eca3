//! The end of a graceful stop: the process exits as soon as nothing is left to drain, instead of
//! sleeping out Pingora's whole grace period.
//!
//! On SIGTERM (and on SIGQUIT once the listening sockets went to the new process) Pingora flips
//! every service's `ShutdownWatch` and then sleeps `server.grace_period` on its main thread,
//! whatever is still open (pingora-core 0.9 `Server::run`). That period is raised to cover the
//! longest game `drain` (see `game::drain`), so a gateway with a game listener took `drain` + 2 s
//! to stop even with no session open. Pingora has no hook to end the sleep early, so a watcher
//! thread does what the end of the sleep would lead to: once the grace period has begun, it
//! looks every [`POLL`] at what is left, and when nothing has been for [`QUIET`] it flushes the
//! logs and exits the process with status 0. Left means: a connection open on an HTTP listener
//! (zkgate's own connection loop counts them, keep-alive and HTTP/2 included), a game
//! connection (session or not yet), bytes queued toward a game backend (the SessionClose frames
//! of sessions that just ended), or a background service that has not returned from its
//! shutdown work (housekeeping's plugin shutdown above all: a cache's O2 subscription is
//! removed there). When something stays open, Pingora's grace period ends the process as it
//! always did: the watcher only ever shortens a stop, never lengthens or cuts one.
//!
//! The quiet time covers a connection accepted just before the accept loops stopped, whose task
//! has not counted itself yet (microseconds, for a plain TCP accept).
//!
//! Why an exit and not a patch ending the sleep when every service says it is drained: this was
//! written before pingora-core was vendored (`vendor/README.md`), and what Pingora does after
//! the sleep (shut its runtimes down within `graceful_shutdown_timeout`, then `exit(0)`) has
//! nothing left to wait for once everything here is drained; exiting skips only the dropping of
//! idle tasks. Now that the crate carries zkgate's patches, such a patch (upstreamable) is the
//! cleaner way, and would let Pingora's own shutdown steps run.
//! Not covered: the admin listener's requests (a scrape in flight at that moment is cut), and
//! a daemonized server (zkgate does not daemonize).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::access_log::AccessLog;
use crate::conn::ListenerConns;
use crate::game::app::Pending;

/// How often what is left is looked at.
pub const POLL: Duration = Duration::from_millis(50);
/// How long nothing must be left before the process exits.
pub const QUIET: Duration = Duration::from_millis(250);
/// How long the access log's writer gets to write what is queued.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);
/// How often a stop still waiting says on what.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// One thing a stop waits for: what is left of it, `None` when nothing.
type Probe = Box<dyn Fn() -> Option<String> + Send>;

/// What a graceful stop waits for, gathered while the server is assembled.
#[derive(Default)]
pub struct Stop {
    probes: Vec<Probe>,
    access_log: Option<AccessLog>,
}

impl Stop {
    pub fn new(access_log: Option<AccessLog>) -> Stop {
        Stop {
            probes: Vec::new(),
            access_log,
        }
    }

    /// An HTTP listener: its open connections.
    pub fn http(&mut self, listener: &str, conns: Arc<ListenerConns>) {
        let name = listener.to_owned();
        self.probes.push(Box::new(move || match conns.open() {
            0 => None,
            n => Some(format!("listener {name}: {n} connections")),
        }));
    }

    /// A game listener: its connections and what is queued toward its backends.
    pub fn game(&mut self, listener: &str, pending: Pending) {
        let name = listener.to_owned();
        self.probes.push(Box::new(move || {
            let (n, bytes) = (pending.connections(), pending.queued_bytes());
            (n > 0 || bytes > 0).then(|| {
                format!("game listener {name}: {n} connections, {bytes} bytes toward backends")
            })
        }));
    }

    /// `service`, whose return from `start` (its shutdown work done) a stop waits for.
    pub fn track<S>(&mut self, name: &str, service: S) -> Tracked<S> {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let name = name.to_owned();
        self.probes.push(Box::new(move || {
            (!flag.load(Ordering::Acquire)).then(|| format!("background service {name}"))
        }));
        Tracked {
            inner: service,
            done,
        }
    }

    /// What is left now, one description per thing.
    fn left(&self) -> Vec<String> {
        self.probes.iter().filter_map(|p| p()).collect()
    }

    /// Starts the watcher thread. `phases` is the server's (`Server::watch_execution_phase`),
    /// taken before `run`. Not for a daemonized server, whose fork would lose the thread (zkgate
    /// does not daemonize; a supervisor runs it).
    pub fn start(self, phases: broadcast::Receiver<ExecutionPhase>) {
        let spawned = std::thread::Builder::new()
            .name("graceful-stop".into())
            .spawn(move || self.watch(phases));
        if let Err(e) = spawned {
            log::warn!(
                "graceful stop watcher not started ({e}): a stop takes the whole grace period"
            );
        }
    }

    fn watch(self, mut phases: broadcast::Receiver<ExecutionPhase>) {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                // A fast shutdown (SIGINT) has no grace period to shorten.
                Ok(ExecutionPhase::ShutdownRuntimes | ExecutionPhase::Terminated) => return,
                Err(RecvError::Closed) => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
            }
        }
        let began = Instant::now();
        let mut quiet = Quiet::default();
        let mut report = began + REPORT_EVERY;
        loop {
            let now = Instant::now();
            let left = self.left();
            if quiet.settled(left.is_empty(), now) {
                break;
            }
            if now >= report && !left.is_empty() {
                log::info!("graceful stop: waiting for {}", left.join(", "));
                report = now + REPORT_EVERY;
            }
            std::thread::sleep(POLL);
        }
        log::info!(
            "graceful stop: nothing left to drain after {:.1}s; exiting before the grace period ends",
            began.elapsed().as_secs_f64()
        );
        if let Some(l) = &self.access_log {
            if !l.flush(FLUSH_WITHIN) {
                log::warn!(
                    "graceful stop: the access log was not written out within {FLUSH_WITHIN:?}"
                );
            }
        }
        log::logger().flush();
        std::process::exit(0)
    }
}

/// Whether nothing has been left for [`QUIET`]: each look says whether something was.
#[derive(Debug, Default)]
struct Quiet {
    since: Option<Instant>,
}

impl Quiet {
    fn settled(&mut self, empty: bool, now: Instant) -> bool {
        if !empty {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.duration_since(since) >= QUIET
    }
}

/// A background service whose return from `start` is noted for [`Stop`].
pub struct Tracked<S> {
    inner: S,
    done: Arc<AtomicBool>,
}

/// Pingora calls `start_with_ready_notifier`: forwarded as it is, so that a service that says
/// when it is ready (discovery, before the listeners that depend on it accept) still does.
#[async_trait]
impl<S: BackgroundService + Send + Sync> BackgroundService for Tracked<S> {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        self.inner.start_with_ready_notifier(shutdown, ready).await;
        self.done.store(true, Ordering::Release);
    }

    async fn start(&self, shutdown: ShutdownWatch) {
        self.inner.start(shutdown).await;
        self.done.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_settles_only_after_nothing_was_left_for_the_quiet_time() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut q = Quiet::default();
        assert!(!q.settled(false, at(0)));
        assert!(!q.settled(true, at(50)), "empty from 50");
        assert!(!q.settled(true, at(250)));
        assert!(!q.settled(false, at(300)), "a connection came");
        assert!(!q.settled(true, at(350)), "empty again from 350");
        assert!(!q.settled(true, at(599)));
        assert!(q.settled(true, at(600)));
    }

    struct Returns;

    #[async_trait]
    impl BackgroundService for Returns {
        async fn start(&self, mut shutdown: ShutdownWatch) {
            let _ = shutdown.changed().await;
        }
    }

    /// Says it is ready only when told to (as discovery does once its first fill is in).
    struct ReadyLater(tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

    #[async_trait]
    impl BackgroundService for ReadyLater {
        async fn start_with_ready_notifier(
            &self,
            _shutdown: ShutdownWatch,
            ready: ServiceReadyNotifier,
        ) {
            if let Some(go) = self.0.lock().await.take() {
                let _ = go.await;
            }
            ready.notify_ready();
        }
    }

    /// Tracking keeps a service's own readiness: dependents wait for it as before.
    #[tokio::test]
    async fn a_tracked_service_says_it_is_ready_when_it_does() {
        let (go, wait) = tokio::sync::oneshot::channel();
        let mut stop = Stop::new(None);
        let svc =
            Arc::new(stop.track("zookeeper", ReadyLater(tokio::sync::Mutex::new(Some(wait)))));
        let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
        let (_stop_tx, shutdown) = tokio::sync::watch::channel(false);
        let running = tokio::spawn({
            let svc = svc.clone();
            async move {
                svc.start_with_ready_notifier(shutdown, ServiceReadyNotifier::new(ready_tx))
                    .await
            }
        });
        tokio::task::yield_now().await;
        assert!(!*ready.borrow(), "not ready before the service says so");
        go.send(()).expect("the service waits");
        ready.wait_for(|r| *r).await.expect("ready");
        running.await.expect("returns");
        assert!(stop.left().is_empty(), "and done");
    }

    /// A tracked service is left until its `start` returns on shutdown.
    #[tokio::test]
    async fn a_tracked_service_is_left_until_it_returns() {
        let mut stop = Stop::new(None);
        let svc = Arc::new(stop.track("housekeeping", Returns));
        assert_eq!(stop.left(), ["background service housekeeping"]);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn({
            let svc = svc.clone();
            async move { svc.start(rx).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(stop.left().len(), 1, "running");
        tx.send(true).expect("the service listens");
        running.await.expect("returns");
        assert!(stop.left().is_empty());
    }
}
