//! Follows service paths in ZooKeeper with persistent recursive watches and publishes each
//! path's instance list when it changes. The set of paths can change while it runs (a config
//! reload adds an upstream). A lost connection or session publishes nothing: the consumer keeps
//! serving the last list it got. A lost connection is not a lost session: the client reconnects
//! within the session (to another ensemble member if need be) and the reads are retried there;
//! only a session ZooKeeper reports expired, closed or refused starts a new one. Either way the
//! watches are armed again and everything is read again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use zookeeper_client as zk;

use crate::backoff::Backoff;
use crate::ensemble::Ensemble;
use crate::failure::{classify, connected_again, ended, Failure};
use crate::instance::{parse_instance, Instance, InstanceError};
use crate::rejected::{Rejections, Version};

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
    /// A child of `path` that is none of the accepted formats; it is left out of the list. Called
    /// once per version of the child's data, not on every re-read of `path`.
    fn rejected(&self, path: &str, child: &str, error: &InstanceError) {
        log::warn!("zookeeper: {path}/{child} skipped: {error}");
    }
    fn session(&self, _event: SessionEvent) {}
    /// Every path was read once in the current session; `took` is how long that read took.
    fn synced(&self, _took: Duration) {}
}

/// Bursts of node events within this window cost one re-read.
const COALESCE: Duration = Duration::from_millis(5);

/// Paths whose reads are in flight at once during a resync: ZooKeeper answers pipelined
/// requests on one connection in order, so a full resync costs a few round trips, not one per
/// node, while the number of outstanding requests stays bounded.
const PIPELINE_PATHS: usize = 64;

/// Follows the absolute paths in `paths` (each one's children are instances) until `shutdown`
/// turns true.
pub async fn watch(
    ensemble: Ensemble,
    mut paths: watch::Receiver<Vec<String>>,
    sink: Arc<dyn Publish>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    // Kept across sessions: a new session reads the same node versions again.
    let mut rejections = Rejections::default();
    loop {
        let mut connected = false;
        let result = session(
            &ensemble,
            &mut paths,
            &*sink,
            &mut shutdown,
            &mut connected,
            &mut rejections,
        )
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                log::warn!(
                    "zookeeper {}: {e}; keeping the last known instances and reconnecting",
                    ensemble.connect
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
    ensemble: &Ensemble,
    paths: &mut watch::Receiver<Vec<String>>,
    sink: &dyn Publish,
    shutdown: &mut watch::Receiver<bool>,
    connected: &mut bool,
    rejections: &mut Rejections,
) -> Result<(), zk::Error> {
    let client = ensemble.connect().await?;
    *connected = true;
    sink.session(SessionEvent::Connected);
    let mut state = client.state_watcher();
    // Between reads that failed on a connection of this session.
    let mut retry = Backoff::new();
    loop {
        let mut watches = Watches::new();
        let result = follow(
            &client,
            &mut watches,
            paths,
            sink,
            shutdown,
            rejections,
            &mut retry,
        )
        .await;
        // Dropping a watcher removes its watch.
        watches.clear();
        let e = match result {
            Ok(Stop::Shutdown) => return Ok(()),
            Ok(Stop::Reconnected) => continue,
            Err(e) => e,
        };
        if classify(&e) == Failure::SessionEnded {
            return Err(e);
        }
        log::warn!(
            "zookeeper {}: a read failed ({e}) but the session stands; keeping the last known instances and reading again once connected",
            ensemble.connect
        );
        if !retry.wait(shutdown).await {
            return Ok(());
        }
        if !reconnected(&mut state, sink, shutdown).await? {
            return Ok(());
        }
    }
}

/// Waits until the client is connected again (see [`connected_again`]), telling `sink`.
async fn reconnected(
    state: &mut zk::StateWatcher,
    sink: &dyn Publish,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, zk::Error> {
    let back = connected_again(state, shutdown, || sink.session(SessionEvent::Disconnected)).await;
    if back == Ok(true) {
        sink.session(SessionEvent::Connected);
    }
    back
}

type Event = (Arc<str>, zk::WatchedEvent);

/// The armed watches of one connection, each forwarding its events tagged with its path.
struct Watches {
    armed: HashMap<Arc<str>, AbortHandle>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Watches {
    fn new() -> Watches {
        let (tx, rx) = mpsc::unbounded_channel();
        Watches {
            armed: HashMap::new(),
            tx,
            rx,
        }
    }

    /// Arms the paths of `want` not armed yet and drops the others; returns the newly armed,
    /// which need a first read. Each watch is armed before that read, so no change falls in
    /// between.
    async fn set(
        &mut self,
        client: &zk::Client,
        want: &[String],
    ) -> Result<Vec<Arc<str>>, zk::Error> {
        let keep: HashSet<&str> = want.iter().map(String::as_str).collect();
        self.armed.retain(|path, task| {
            let keep = keep.contains(&**path);
            if !keep {
                task.abort();
            }
            keep
        });
        let new: Vec<Arc<str>> = want
            .iter()
            .filter(|p| !self.armed.contains_key(p.as_str()))
            .map(|p| Arc::from(p.as_str()))
            .collect();
        let mut added = Vec::with_capacity(new.len());
        for chunk in new.chunks(PIPELINE_PATHS) {
            // Sent at once, answered in order: one round trip for the chunk.
            let requests: Vec<_> = chunk
                .iter()
                .map(|p| client.watch(p, zk::AddWatchMode::PersistentRecursive))
                .collect();
            for (path, request) in chunk.iter().zip(requests) {
                let watcher = match request.await {
                    Ok(w) => w,
                    // One forbidden path must not stop the others; it is retried on reconnect.
                    Err(e) if classify(&e) == Failure::Refused => {
                        log::error!("zookeeper {path}: cannot watch it: {e}{}; its upstreams keep their last members", hint(&e));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                self.armed
                    .insert(path.clone(), self.forward(path.clone(), watcher));
                added.push(path.clone());
            }
        }
        Ok(added)
    }

    /// Sends each event of `watcher` tagged with `path` until the session ends.
    fn forward(&self, path: Arc<str>, mut watcher: zk::PersistentWatcher) -> AbortHandle {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            loop {
                let event = watcher.changed().await;
                let terminal = event.event_type == zk::EventType::Session
                    && event.session_state.is_terminated();
                // A terminated watcher must not be polled again.
                if tx.send((path.clone(), event)).is_err() || terminal {
                    return;
                }
            }
        })
        .abort_handle()
    }

    fn clear(&mut self) {
        for task in self.armed.values() {
            task.abort();
        }
        self.armed.clear();
    }
}

async fn follow(
    client: &zk::Client,
    watches: &mut Watches,
    paths: &mut watch::Receiver<Vec<String>>,
    sink: &dyn Publish,
    shutdown: &mut watch::Receiver<bool>,
    rejections: &mut Rejections,
    retry: &mut Backoff,
) -> Result<Stop, zk::Error> {
    let want = paths.borrow_and_update().clone();
    let mut dirty: Vec<Arc<str>> = watches.set(client, &want).await?;
    rejections.retain_paths(&want.iter().map(String::as_str).collect());
    let mut full = true;
    let mut disconnected = false;
    loop {
        if !dirty.is_empty() || full {
            let started = tokio::time::Instant::now();
            dirty.sort_unstable();
            dirty.dedup();
            resync(client, &dirty, sink, rejections).await?;
            dirty.clear();
            if std::mem::take(&mut full) {
                retry.reset();
                sink.synced(started.elapsed());
            }
        }
        let first = tokio::select! {
            _ = shutdown.changed() => return Ok(Stop::Shutdown),
            changed = paths.changed() => {
                if changed.is_err() {
                    // The consumer is gone: nothing left to publish to.
                    return Ok(Stop::Shutdown);
                }
                let want = paths.borrow_and_update().clone();
                dirty.extend(watches.set(client, &want).await?);
                rejections.retain_paths(&want.iter().map(String::as_str).collect());
                continue;
            }
            ev = watches.rx.recv() => ev,
        };
        let Some(first) = first else {
            return Err(zk::Error::ConnectionLoss);
        };
        let mut batch = vec![first];
        // Coalesce a burst into one re-read per path.
        let deadline = tokio::time::Instant::now() + COALESCE;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, watches.rx.recv()).await {
            batch.push(ev);
        }
        for (path, ev) in batch {
            if ev.event_type != zk::EventType::Session {
                // A path dropped since the event was sent is not read again.
                if watches.armed.contains_key(&path) {
                    dirty.push(path);
                }
                continue;
            }
            match ev.session_state {
                s if s.is_terminated() => return Err(ended(s)),
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

/// Reads `paths` and publishes each one's list, with the requests of up to [`PIPELINE_PATHS`]
/// paths in flight together. A rejected child is reported once per version of its data.
async fn resync(
    client: &zk::Client,
    paths: &[Arc<str>],
    sink: &dyn Publish,
    rejections: &mut Rejections,
) -> Result<(), zk::Error> {
    for chunk in paths.chunks(PIPELINE_PATHS) {
        // These calls send their requests at once; awaiting them in order then costs about one
        // round trip for the whole chunk.
        let listings: Vec<_> = chunk.iter().map(|p| client.get_children(p)).collect();
        let mut reads = Vec::with_capacity(chunk.len());
        for (path, listing) in chunk.iter().zip(listings) {
            let children = match listing.await {
                Ok((children, _)) => children,
                Err(zk::Error::NoNode) => Vec::new(),
                Err(e) if classify(&e) == Failure::Refused => {
                    log::error!("zookeeper {path}: cannot list it: {e}{}; its upstreams keep their last members", hint(&e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let data: Vec<_> = children
                .iter()
                .map(|child| client.get_data(&child_path(path, child)))
                .collect();
            reads.push((path, children, data));
        }
        for (path, children, data) in reads {
            let mut instances = Vec::with_capacity(children.len());
            let mut rejected: HashMap<String, Version> = HashMap::new();
            for (child, read) in children.into_iter().zip(data) {
                let (data, stat) = match read.await {
                    Ok(read) => read,
                    // Deleted since it was listed; its deletion is already on its way.
                    Err(zk::Error::NoNode) => continue,
                    Err(e) if classify(&e) == Failure::Refused => {
                        if rejections.is_new(path, &child, None) {
                            log::warn!(
                                "zookeeper {path}/{child} skipped: cannot read it: {e}{}",
                                hint(&e)
                            );
                        }
                        rejected.insert(child, None);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                match parse_instance(&child, &data) {
                    Ok(i) => instances.push(i),
                    Err(e) => {
                        let version = Some(stat.mzxid);
                        if rejections.is_new(path, &child, version) {
                            sink.rejected(path, &child, &e);
                        }
                        rejected.insert(child, version);
                    }
                }
            }
            rejections.replace(path, rejected);
            sink.instances(path, instances);
        }
    }
    Ok(())
}

/// What to check when ZooKeeper refuses a request.
fn hint(e: &zk::Error) -> &'static str {
    match e {
        zk::Error::NoAuth => " (check zookeeper.digest)",
        _ => "",
    }
}

fn child_path(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{parent}/{child}")
    }
}
