//! The cache's replica bus in ZooKeeper: per-tag epochs and bans that every gateway replica
//! writes and follows, so that an eviction on one replica reaches all of them.
//!
//! Under `<root>/cache/<store>/`:
//! - `epochs/<16 hex digits of the tag>` holds `{"ms":…,"origin":…}`: the newest eviction of the
//!   tag. A notification's tags are written in one multi-op. An epoch is state, not an event:
//!   a replica that missed one (a reconnect, ZOOKEEPER-4698's lost persistent-watch events)
//!   repairs it by reading every epoch again, which it does on every (re)connect.
//! - `bans/ban-<seq>` holds `{"ms":…,"origin":…,"prefix"|"key":…}`: a purge of targets.
//!
//! One persistent recursive watch on the store's node follows both. A lost session (not a lost
//! connection) is reported, since what was missed cannot be known: the cache drops its entries.
//! Epochs and bans older than what the sink still needs ([`EpochSink::forget_before`]) are
//! deleted once a minute (by default) by every replica, each delete conditional on the node's version, so
//! that a newer epoch written meanwhile is never lost.
//! Nothing here knows Pingora or the cache; the consumer is an [`EpochSink`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use zookeeper_client as zk;

use crate::backoff::Backoff;
use crate::ensemble::Ensemble;
use crate::failure::{classify, ended, Failure};
use crate::watcher::SessionEvent;

/// Notifications waiting to be written; past this a publish is dropped (and counted): the
/// tags' entries were already purged here, and the TTLs bound what the others keep.
const QUEUE: usize = 4096;
/// Operations per multi-op, far below ZooKeeper's 1 MiB request bound.
const MULTI_OPS: usize = 128;
/// Node reads in flight at once during a full re-read.
const PIPELINE: usize = 256;
/// How often old epochs and bans are pruned by default, and how many nodes one round deletes
/// at most.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_MAX: usize = 1000;

/// A purge of targets sent to every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ban {
    /// One request target.
    Key(String),
    /// Every target under a prefix.
    Prefix(String),
}

/// Where the bus delivers what it reads.
pub trait EpochSink: Send + Sync + 'static {
    /// The epoch of `tag` is `ms`, written by replica `origin` (`live`: from a watch event;
    /// otherwise from the full re-read after a (re)connect, which repeats known epochs).
    fn epoch(&self, tag: u64, ms: u64, origin: &str, live: bool);
    /// A ban written at `ms` by `origin`.
    fn ban(&self, ban: &Ban, ms: u64, origin: &str);
    fn session(&self, _event: SessionEvent) {}
    /// Every epoch and ban was read once in the current session, and the watch is armed.
    fn synced(&self) {}
    /// The time (ms since the epoch) before which an epoch or a ban no longer matters at
    /// `now_ms`, because every entry it could refuse has expired: such nodes are deleted.
    /// `None` keeps them all.
    fn forget_before(&self, _now_ms: u64) -> Option<u64> {
        None
    }
    /// How often to prune.
    fn prune_every(&self) -> Duration {
        PRUNE_EVERY
    }
}

#[derive(Serialize, Deserialize)]
struct EpochNode<'a> {
    ms: u64,
    #[serde(borrow)]
    origin: std::borrow::Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
struct BanNode {
    ms: u64,
    origin: String,
    #[serde(flatten)]
    ban: Ban,
}

enum Cmd {
    Epochs(Vec<u64>, u64),
    Ban(Ban, u64),
}

/// The handle of a running bus. Dropping it stops the bus.
pub struct CacheBus {
    tx: mpsc::Sender<Cmd>,
    healthy: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    _stop: watch::Sender<bool>,
}

impl CacheBus {
    /// Queues an epoch bump of `tags` at `ms`; never blocks.
    pub fn publish(&self, tags: &[u64], ms: u64) {
        if tags.is_empty() {
            return;
        }
        log::trace!(
            "cache bus: publish {} tags of {ms} at {}us",
            tags.len(),
            wall_us()
        );
        if self.tx.try_send(Cmd::Epochs(tags.to_vec(), ms)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a ban; never blocks.
    pub fn publish_ban(&self, ban: Ban, ms: u64) {
        if self.tx.try_send(Cmd::Ban(ban, ms)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connected, with the watch armed and everything read.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Publishes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The store's node: `<root>/cache/<store>`.
pub fn store_path(root: &str, store: &str) -> String {
    format!("{}/cache/{store}", root.trim_end_matches('/'))
}

/// Starts the bus of `store` under `root` on a thread of its own (it needs no runtime from the
/// caller, which may be a config build), as replica `origin`.
pub fn start(
    ensemble: Ensemble,
    root: &str,
    store: &str,
    origin: String,
    sink: Arc<dyn EpochSink>,
) -> std::io::Result<CacheBus> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (stop_tx, stop_rx) = watch::channel(false);
    let healthy = Arc::new(AtomicBool::new(false));
    let base = store_path(root, store);
    let task = Task {
        ensemble,
        base,
        origin,
        sink,
        healthy: healthy.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("cache-bus-{store}"))
        .spawn(move || runtime.block_on(task.run(rx, stop_rx)))?;
    Ok(CacheBus {
        tx,
        healthy,
        dropped: Arc::new(AtomicU64::new(0)),
        _stop: stop_tx,
    })
}

struct Task {
    ensemble: Ensemble,
    base: String,
    origin: String,
    sink: Arc<dyn EpochSink>,
    healthy: Arc<AtomicBool>,
}

/// Why one session's loop returned without an error.
enum Stop {
    Shutdown,
    /// The connection came back within the session: re-arm and re-read.
    Reconnected,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Cmd>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        // Writes not done yet; kept across sessions.
        let mut pending = Pending::default();
        loop {
            let mut connected = false;
            match self
                .session(&mut rx, &mut stop, &mut pending, &mut connected)
                .await
            {
                Ok(()) => return,
                Err(e) if connected => {
                    self.healthy.store(false, Ordering::Relaxed);
                    log::warn!(
                        "cache bus {}: zookeeper session ended ({e}); the cache drops its \
                         entries and reconnects",
                        self.base
                    );
                    self.sink.session(SessionEvent::Lost);
                }
                // No session was made: nothing was followed, so nothing was missed since the
                // last loss (reported when it happened).
                Err(e) => {
                    log::warn!("cache bus {}: cannot connect to zookeeper: {e}", self.base);
                    self.sink.session(SessionEvent::Disconnected);
                }
            }
            if connected {
                backoff.reset();
            }
            if !backoff.wait(&mut stop).await {
                return;
            }
        }
    }

    /// One ZooKeeper session: `Ok` on shutdown, `Err` once it is over.
    async fn session(
        &self,
        rx: &mut mpsc::Receiver<Cmd>,
        stop: &mut watch::Receiver<bool>,
        pending: &mut Pending,
        connected: &mut bool,
    ) -> Result<(), zk::Error> {
        let client = self.ensemble.connect().await?;
        *connected = true;
        self.sink.session(SessionEvent::Connected);
        let opts = zk::CreateMode::Persistent.with_acls(self.ensemble.acls());
        let mut retry = Backoff::new();
        loop {
            let result = async {
                for dir in ["epochs", "bans"] {
                    match client.mkdir(&format!("{}/{dir}", self.base), &opts).await {
                        Ok(()) | Err(zk::Error::NodeExists) => {}
                        Err(e) => return Err(e),
                    }
                }
                self.follow(&client, rx, stop, pending).await
            }
            .await;
            self.healthy.store(false, Ordering::Relaxed);
            let e = match result {
                Ok(Stop::Shutdown) => return Ok(()),
                Ok(Stop::Reconnected) => continue,
                Err(e) => e,
            };
            if classify(&e) == Failure::SessionEnded {
                return Err(e);
            }
            log::warn!(
                "cache bus {}: {e}; the session stands, trying again once connected",
                self.base
            );
            self.sink.session(SessionEvent::Disconnected);
            if !retry.wait(stop).await {
                return Ok(());
            }
            let mut state = client.state_watcher();
            let back = crate::failure::connected_again(&mut state, stop, || {}).await?;
            if !back {
                return Ok(());
            }
            self.sink.session(SessionEvent::Connected);
        }
    }

    async fn follow(
        &self,
        client: &zk::Client,
        rx: &mut mpsc::Receiver<Cmd>,
        stop: &mut watch::Receiver<bool>,
        pending: &mut Pending,
    ) -> Result<Stop, zk::Error> {
        // Armed before the full read, so no change falls in between.
        let mut watcher = client
            .watch(&self.base, zk::AddWatchMode::PersistentRecursive)
            .await?;
        let mut known = self.read_all(client).await?;
        self.write(client, pending, &mut known).await?;
        self.healthy.store(true, Ordering::Relaxed);
        self.sink.synced();
        let mut disconnected = false;
        let every = self.sink.prune_every();
        let mut prune = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(Stop::Shutdown),
                _ = prune.tick(), if !disconnected => self.prune(client, &mut known).await?,
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return Ok(Stop::Shutdown) };
                    pending.add(cmd);
                    // A burst (a storm of notifications) costs one multi-op: whatever queued
                    // up meanwhile goes with this one, and what comes during the write goes
                    // with the next. Nothing waits for company.
                    while let Ok(cmd) = rx.try_recv() {
                        pending.add(cmd);
                    }
                    if !disconnected {
                        self.write(client, pending, &mut known).await?;
                    }
                }
                ev = watcher.changed() => {
                    // A notification's tags arrive as one event each, together: their reads
                    // go out at once, one round trip for all instead of one each.
                    let mut reads = Reads::default();
                    let mut next = Some(ev);
                    while let Some(ev) = next.take() {
                        match ev.event_type {
                            zk::EventType::Session => {
                                // What was read before the session changed is applied first.
                                self.apply(reads.take(), &mut known).await?;
                                match ev.session_state {
                                    s if s.is_terminated() => return Err(ended(s)),
                                    zk::SessionState::SyncConnected if disconnected => {
                                        self.sink.session(SessionEvent::Connected);
                                        return Ok(Stop::Reconnected);
                                    }
                                    zk::SessionState::SyncConnected => {}
                                    _ => {
                                        if !disconnected {
                                            self.healthy.store(false, Ordering::Relaxed);
                                            self.sink.session(SessionEvent::Disconnected);
                                        }
                                        disconnected = true;
                                    }
                                }
                                // The watcher must not be polled past a terminal event, and a
                                // session change ends the batch anyway.
                                break;
                            }
                            zk::EventType::NodeCreated | zk::EventType::NodeDataChanged => {
                                log::trace!(
                                    "cache bus: event {} zxid {} at {}us",
                                    ev.path,
                                    ev.zxid,
                                    wall_us()
                                );
                                let read = client.get_data(&ev.path);
                                reads.0.push((ev.path, Box::pin(read)));
                            }
                            _ => {}
                        }
                        next = ready(watcher.changed());
                    }
                    self.apply(reads.take(), &mut known).await?;
                }
            }
        }
    }

    /// Reads every epoch and ban; returns what has a node.
    async fn read_all(&self, client: &zk::Client) -> Result<Known, zk::Error> {
        let mut known = Known::default();
        for dir in ["epochs", "bans"] {
            let parent = format!("{}/{dir}", self.base);
            let children = match client.get_children(&parent).await {
                Ok((c, _)) => c,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(e),
            };
            for chunk in children.chunks(PIPELINE) {
                let reads: Vec<_> = chunk
                    .iter()
                    .map(|c| client.get_data(&format!("{parent}/{c}")))
                    .collect();
                for (child, read) in chunk.iter().zip(reads) {
                    let (data, stat) = match read.await {
                        Ok(read) => read,
                        Err(zk::Error::NoNode) => continue,
                        Err(e) => return Err(e),
                    };
                    self.deliver(dir, child, &data, stat.version, false, &mut known);
                }
            }
        }
        Ok(known)
    }

    /// Awaits the reads the watch events asked for, in their order, and delivers each.
    async fn apply(&self, reads: Reads<'_>, known: &mut Known) -> Result<(), zk::Error> {
        for (path, read) in reads.0 {
            let result = read.await;
            let Some(rest) = path.strip_prefix(&self.base) else {
                continue;
            };
            let Some((dir, child)) = rest.trim_start_matches('/').split_once('/') else {
                continue;
            };
            match result {
                Ok((data, stat)) => {
                    log::trace!("cache bus: read {path} at {}us", wall_us());
                    self.deliver(dir, child, &data, stat.version, true, known);
                }
                // Pruned since: nothing to apply.
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn deliver(
        &self,
        dir: &str,
        child: &str,
        data: &[u8],
        version: i32,
        live: bool,
        known: &mut Known,
    ) {
        match dir {
            "epochs" => {
                let Ok(tag) = u64::from_str_radix(child, 16) else {
                    return;
                };
                known.tags.insert(tag);
                match serde_json::from_slice::<EpochNode<'_>>(data) {
                    Ok(e) => {
                        known
                            .nodes
                            .insert(format!("epochs/{child}"), (e.ms, version));
                        self.sink.epoch(tag, e.ms, &e.origin, live);
                    }
                    Err(e) => log::warn!("cache bus {}/epochs/{child}: skipped: {e}", self.base),
                }
            }
            "bans" => match serde_json::from_slice::<BanNode>(data) {
                Ok(b) => {
                    known.nodes.insert(format!("bans/{child}"), (b.ms, version));
                    self.sink.ban(&b.ban, b.ms, &b.origin);
                }
                Err(e) => log::warn!("cache bus {}/bans/{child}: skipped: {e}", self.base),
            },
            _ => {}
        }
    }

    /// Deletes up to [`PRUNE_MAX`] epochs and bans older than the sink needs, each only if it
    /// is still the version that was read (a newer epoch of the tag stays).
    async fn prune(&self, client: &zk::Client, known: &mut Known) -> Result<(), zk::Error> {
        let Some(before) = self.sink.forget_before(wall_ms()) else {
            return Ok(());
        };
        let old: Vec<(String, i32)> = known
            .nodes
            .iter()
            .filter(|(_, (ms, _))| *ms < before)
            .take(PRUNE_MAX)
            .map(|(path, (_, version))| (path.clone(), *version))
            .collect();
        let mut deleted = 0usize;
        for (child, version) in old {
            match client
                .delete(&format!("{}/{child}", self.base), Some(version))
                .await
            {
                Ok(()) | Err(zk::Error::NoNode) => {
                    deleted += 1;
                    known.forget(&child);
                }
                // Written again since it was read: its event brings the new version.
                Err(zk::Error::BadVersion) => {}
                Err(e) => return Err(e),
            }
        }
        if deleted > 0 {
            log::debug!(
                "cache bus {}: pruned {deleted} old epochs and bans",
                self.base
            );
        }
        Ok(())
    }

    /// Writes what is pending: epochs in multi-ops (created when the tag has no node yet),
    /// bans as sequential nodes. What failed on a lost connection stays pending.
    async fn write(
        &self,
        client: &zk::Client,
        pending: &mut Pending,
        known: &mut Known,
    ) -> Result<(), zk::Error> {
        let opts = zk::CreateMode::Persistent.with_acls(self.ensemble.acls());
        while !pending.epochs.is_empty() {
            let batch: Vec<(u64, u64)> = pending
                .epochs
                .iter()
                .take(MULTI_OPS)
                .map(|(t, ms)| (*t, *ms))
                .collect();
            let bodies: Vec<(String, Vec<u8>)> = batch
                .iter()
                .map(|(tag, ms)| (self.epoch_path(*tag), self.epoch_body(*ms)))
                .collect();
            let mut multi = client.new_multi_writer();
            for ((tag, _), (path, body)) in batch.iter().zip(&bodies) {
                if known.tags.contains(tag) {
                    multi.add_set_data(path, body, None)?;
                } else {
                    multi.add_create(path, body, &opts)?;
                }
            }
            log::trace!(
                "cache bus: writing {} epochs at {}us",
                batch.len(),
                wall_us()
            );
            let result = multi.commit().await;
            log::trace!("cache bus: written at {}us", wall_us());
            match result {
                Ok(_) => {}
                Err(zk::MultiWriteError::OperationFailed { .. }) => {
                    // Another replica created a node first (or one was pruned): one at a time.
                    for (path, body) in &bodies {
                        set_or_create(client, path, body, &opts).await?;
                    }
                }
                Err(zk::MultiWriteError::RequestFailed { source }) => return Err(source),
            }
            for (tag, ms) in batch {
                known.tags.insert(tag);
                if pending.epochs.get(&tag) == Some(&ms) {
                    pending.epochs.remove(&tag);
                }
            }
        }
        while let Some((ban, ms)) = pending.bans.first() {
            let body = serde_json::to_vec(&BanNode {
                ms: *ms,
                origin: self.origin.clone(),
                ban: ban.clone(),
            })
            .unwrap_or_default();
            let seq = zk::CreateMode::PersistentSequential.with_acls(self.ensemble.acls());
            client
                .create(&format!("{}/bans/ban-", self.base), &body, &seq)
                .await?;
            pending.bans.remove(0);
        }
        Ok(())
    }

    fn epoch_path(&self, tag: u64) -> String {
        format!("{}/epochs/{tag:016x}", self.base)
    }

    fn epoch_body(&self, ms: u64) -> Vec<u8> {
        serde_json::to_vec(&EpochNode {
            ms,
            origin: self.origin.as_str().into(),
        })
        .unwrap_or_default()
    }
}

type Read<'c> = Pin<Box<dyn Future<Output = Result<(Vec<u8>, zk::Stat), zk::Error>> + Send + 'c>>;

/// Node reads sent and not awaited yet, with their paths.
#[derive(Default)]
struct Reads<'c>(Vec<(String, Read<'c>)>);

impl<'c> Reads<'c> {
    fn take(&mut self) -> Reads<'c> {
        Reads(std::mem::take(&mut self.0))
    }
}

/// The output of `f` if it is ready now (a watch event already received), without waiting.
fn ready<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// The wall clock in microseconds, for the trace of a publish's way through ZooKeeper.
fn wall_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

async fn set_or_create(
    client: &zk::Client,
    path: &str,
    body: &[u8],
    opts: &zk::CreateOptions<'_>,
) -> Result<(), zk::Error> {
    match client.set_data(path, body, None).await {
        Ok(_) => Ok(()),
        Err(zk::Error::NoNode) => match client.create(path, body, opts).await {
            Ok(_) => Ok(()),
            Err(zk::Error::NodeExists) => client.set_data(path, body, None).await.map(|_| ()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// What this replica knows of the nodes under the store's node.
#[derive(Default)]
struct Known {
    /// The tags that have an epoch node (written with `set_data`, the others created).
    tags: HashSet<u64>,
    /// Every epoch and ban read, by path under the store's node: its time and version.
    nodes: HashMap<String, (u64, i32)>,
}

impl Known {
    fn forget(&mut self, child: &str) {
        self.nodes.remove(child);
        if let Some(tag) = child
            .strip_prefix("epochs/")
            .and_then(|t| u64::from_str_radix(t, 16).ok())
        {
            self.tags.remove(&tag);
        }
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes waiting for ZooKeeper: the newest epoch per tag, bans in order.
#[derive(Default)]
struct Pending {
    epochs: BTreeMap<u64, u64>,
    bans: Vec<(Ban, u64)>,
}

impl Pending {
    fn add(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Epochs(tags, ms) => {
                for t in tags {
                    let e = self.epochs.entry(t).or_insert(ms);
                    *e = (*e).max(ms);
                }
            }
            Cmd::Ban(b, ms) => self.bans.push((b, ms)),
        }
    }
}
