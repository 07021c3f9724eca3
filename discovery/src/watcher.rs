//! Follows service paths in ZooKeeper with persistent recursive watches and publishes each
//! path's instance list when it changes. A lost connection or session publishes nothing: the
//! consumer keeps serving the last list it got; a new session starts with a full resync.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use zookeeper_client as zk;

use crate::backoff::Backoff;
use crate::instance::{parse_instance, Instance, InstanceError};

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// `host:port[,host:port...][/chroot]`.
    pub connect: String,
    pub session_timeout: Duration,
    /// Absolute paths whose children are instances.
    pub paths: Vec<String>,
}

/// The session as the consumer needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    Connected,
    Disconnected,
    /// The session ended (expired, closed, or could not be established); reconnecting.
    Lost,
}

/// Where the watcher delivers what it reads.
pub trait Publish: Send + Sync + 'static {
    /// The full current instance list under `path`.
    fn instances(&self, path: &str, instances: Vec<Instance>);
    /// A child of `path` that is none of the accepted formats; it is left out of the list.
    fn rejected(&self, path: &str, child: &str, error: &InstanceError) {
        log::warn!("zookeeper: {path}/{child} skipped: {error}");
    }
    fn session(&self, _event: SessionEvent) {}
    /// Every path was read once in the current session; `took` is how long that read took.
    fn synced(&self, _took: Duration) {}
}

/// Bursts of node events within this window cost one re-read.
const COALESCE: Duration = Duration::from_millis(5);

/// Runs until `shutdown` turns true.
pub async fn watch(spec: WatchSpec, sink: Arc<dyn Publish>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new();
    loop {
        let mut connected = false;
        match session(&spec, &*sink, &mut shutdown, &mut connected).await {
            Ok(()) => return,
            Err(e) => {
                log::warn!(
                    "zookeeper {}: {e}; keeping the last known instances and reconnecting",
                    spec.connect
                );
                sink.session(SessionEvent::Lost);
            }
        }
        if connected {
            backoff.reset();
        }
        if !backoff.wait(&mut shutdown).await {
            return;
        }
    }
}

/// Why following stopped short of a session loss.
enum Stop {
    Shutdown,
    /// Reconnected (possibly to another server of the ensemble): arm the watches again rather
    /// than trust that they moved along, then read everything.
    Reconnected,
}

/// One ZooKeeper session: `Ok` on shutdown, `Err` when the session is gone.
async fn session(
    spec: &WatchSpec,
    sink: &dyn Publish,
    shutdown: &mut watch::Receiver<bool>,
    connected: &mut bool,
) -> Result<(), zk::Error> {
    let client = crate::connect(&spec.connect, spec.session_timeout).await?;
    *connected = true;
    sink.session(SessionEvent::Connected);
    loop {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut forwarders = Vec::new();
        for (i, path) in spec.paths.iter().enumerate() {
            // Armed before the first read, so no change falls in between.
            let mut watcher = client
                .watch(path, zk::AddWatchMode::PersistentRecursive)
                .await?;
            let tx = tx.clone();
            forwarders.push(tokio::spawn(async move {
                loop {
                    let event = watcher.changed().await;
                    let terminal = event.event_type == zk::EventType::Session
                        && event.session_state.is_terminated();
                    // A terminated watcher must not be polled again.
                    if tx.send((i, event)).is_err() || terminal {
                        return;
                    }
                }
            }));
        }
        drop(tx);
        let result = follow(&client, spec, sink, shutdown, &mut rx).await;
        // Dropping a watcher removes its watch.
        for f in forwarders {
            f.abort();
        }
        match result? {
            Stop::Shutdown => return Ok(()),
            Stop::Reconnected => continue,
        }
    }
}

async fn follow(
    client: &zk::Client,
    spec: &WatchSpec,
    sink: &dyn Publish,
    shutdown: &mut watch::Receiver<bool>,
    rx: &mut mpsc::UnboundedReceiver<(usize, zk::WatchedEvent)>,
) -> Result<Stop, zk::Error> {
    let mut dirty = vec![true; spec.paths.len()];
    let mut disconnected = false;
    loop {
        if dirty.iter().any(|d| *d) {
            let full = dirty.iter().all(|d| *d);
            let started = tokio::time::Instant::now();
            for (i, path) in spec.paths.iter().enumerate() {
                if std::mem::take(&mut dirty[i]) {
                    resync(client, path, sink).await?;
                }
            }
            if full {
                sink.synced(started.elapsed());
            }
        }
        let first = tokio::select! {
            _ = shutdown.changed() => return Ok(Stop::Shutdown),
            ev = rx.recv() => ev,
        };
        let Some(first) = first else {
            return Err(zk::Error::ConnectionLoss);
        };
        let mut batch = vec![first];
        // Coalesce a burst into one re-read per path.
        let deadline = tokio::time::Instant::now() + COALESCE;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            batch.push(ev);
        }
        for (i, ev) in batch {
            if ev.event_type != zk::EventType::Session {
                dirty[i] = true;
                continue;
            }
            match ev.session_state {
                s if s.is_terminated() => return Err(zk::Error::SessionExpired),
                zk::SessionState::SyncConnected if disconnected => {
                    sink.session(SessionEvent::Connected);
                    return Ok(Stop::Reconnected);
                }
                zk::SessionState::SyncConnected => {}
                _ => {
                    if !disconnected {
                        sink.session(SessionEvent::Disconnected);
                    }
                    disconnected = true;
                }
            }
        }
    }
}

async fn resync(client: &zk::Client, path: &str, sink: &dyn Publish) -> Result<(), zk::Error> {
    let children = match client.list_children(path).await {
        Ok(c) => c,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut instances = Vec::with_capacity(children.len());
    for child in children {
        let node = if path == "/" {
            format!("/{child}")
        } else {
            format!("{path}/{child}")
        };
        let data = match client.get_data(&node).await {
            Ok((data, _)) => data,
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(e),
        };
        match parse_instance(&child, &data) {
            Ok(i) => instances.push(i),
            Err(e) => sink.rejected(path, &child, &e),
        }
    }
    sink.instances(path, instances);
    Ok(())
}
