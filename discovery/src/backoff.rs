//! Jittered exponential backoff between ZooKeeper reconnects, shared by the watcher and the
//! registrar.

use std::time::Duration;

use tokio::sync::watch;

const MIN: Duration = Duration::from_millis(200);
const MAX: Duration = Duration::from_secs(5);

pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { next: MIN }
    }

    /// The last session did come up: the next failure starts over from the shortest wait.
    pub(crate) fn reset(&mut self) {
        self.next = MIN;
    }

    /// Sleeps the next wait (between half and 1.5 times it, so that a fleet of gateways does not
    /// reconnect in step); `false` when shutdown came first.
    pub(crate) async fn wait(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let wait = self.next.mul_f64(0.5 + fastrand::f64());
        self.next = (self.next * 2).min(MAX);
        tokio::select! {
            _ = shutdown.changed() => false,
            _ = tokio::time::sleep(wait) => !*shutdown.borrow(),
        }
    }
}
