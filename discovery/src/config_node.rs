//! A gateway config kept in one znode: read it, follow it live, and write it with a version
//! check so that two writers cannot silently overwrite each other.

use std::fmt;
use std::time::Duration;

use tokio::sync::watch;
use zookeeper_client as zk;

use crate::backoff::Backoff;
use crate::ensemble::Ensemble;
use crate::failure::{classify, connected_again, ended, Failure};

/// ZooKeeper refuses requests above `jute.maxbuffer` (1 MiB by default) with a bare connection
/// loss; refusing earlier gives a clear error instead.
pub const MAX_CONFIG_BYTES: usize = 1_000_000;

/// The node's content and its version (ZooKeeper's `dataVersion`, one more per write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub data: Vec<u8>,
    pub version: i32,
}

/// Reads `node`: `None` when it does not exist.
pub async fn read(ensemble: &Ensemble, node: &str) -> Result<Option<Versioned>, zk::Error> {
    read_once(&ensemble.connect().await?, node).await
}

/// What [`write()`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Updated {
        version: i32,
    },
    /// The node already held exactly this content.
    Unchanged {
        version: i32,
    },
}

#[derive(Debug)]
pub enum WriteError {
    /// Someone else wrote the node since the version this write was based on.
    Conflict {
        expected: i32,
        found: Option<i32>,
    },
    TooLarge(usize),
    Zookeeper(zk::Error),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Conflict {
                expected,
                found: Some(found),
            } => write!(
                f,
                "the node is at version {found}, not {expected}: someone else wrote it meanwhile"
            ),
            WriteError::Conflict {
                expected,
                found: None,
            } => write!(
                f,
                "the node was expected at version {expected} but does not exist"
            ),
            WriteError::TooLarge(n) => write!(
                f,
                "{n} bytes is more than ZooKeeper accepts in one node ({MAX_CONFIG_BYTES})"
            ),
            WriteError::Zookeeper(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for WriteError {}

impl From<zk::Error> for WriteError {
    fn from(e: zk::Error) -> Self {
        WriteError::Zookeeper(e)
    }
}

/// Writes `data` to `node`, creating it (and its parents) if missing. The write happens only if
/// the node is still at `expect` (or, without `expect`, at the version just read), so a
/// concurrent writer makes it fail rather than vanish.
pub async fn write(
    ensemble: &Ensemble,
    node: &str,
    data: &[u8],
    expect: Option<i32>,
) -> Result<Written, WriteError> {
    if data.len() > MAX_CONFIG_BYTES {
        return Err(WriteError::TooLarge(data.len()));
    }
    let client = ensemble.connect().await?;
    let current = match client.get_data(node).await {
        Ok((current, stat)) => Some((current, stat.version)),
        Err(zk::Error::NoNode) => None,
        Err(e) => return Err(e.into()),
    };
    let found = current.as_ref().map(|(_, v)| *v);
    if let Some(expected) = expect.filter(|e| Some(*e) != found) {
        return Err(WriteError::Conflict { expected, found });
    }
    match current {
        Some((current, version)) if current == data => Ok(Written::Unchanged { version }),
        Some((_, version)) => match client.set_data(node, data, Some(version)).await {
            Ok(stat) => Ok(Written::Updated {
                version: stat.version,
            }),
            Err(zk::Error::BadVersion) => Err(WriteError::Conflict {
                expected: version,
                found: client.check_stat(node).await?.map(|s| s.version),
            }),
            Err(e) => Err(e.into()),
        },
        None => {
            let options = zk::CreateMode::Persistent.with_acls(ensemble.acls());
            if let Some((parent, _)) = node.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
                match client.mkdir(parent, &options).await {
                    Ok(()) | Err(zk::Error::NodeExists) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match client.create(node, data, &options).await {
                Ok(_) => Ok(Written::Created),
                Err(zk::Error::NodeExists) => Err(WriteError::Conflict {
                    expected: -1,
                    found: client.check_stat(node).await?.map(|s| s.version),
                }),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Calls `apply` with the node's content now and after every change until `shutdown` turns
/// true; `None` when the node is deleted. Nothing is delivered while ZooKeeper is unreachable,
/// and a new connection delivers the content again (the consumer skips what it already has). A
/// read that fails on a broken connection is retried once the client is connected again, on
/// the same session.
pub async fn follow(
    ensemble: Ensemble,
    node: String,
    apply: impl Fn(Option<Versioned>) + Send,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    loop {
        let mut connected = false;
        match session(&ensemble, &node, &apply, &mut shutdown, &mut connected).await {
            Ok(()) => return,
            Err(e) => {
                log::warn!("config node {node}: {e}; keeping the current config and reconnecting")
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

async fn session(
    ensemble: &Ensemble,
    node: &str,
    apply: &impl Fn(Option<Versioned>),
    shutdown: &mut watch::Receiver<bool>,
    connected: &mut bool,
) -> Result<(), zk::Error> {
    let client = ensemble.connect().await?;
    *connected = true;
    let mut state = client.state_watcher();
    // Between reads that failed on a connection of this session.
    let mut retry = Backoff::new();
    loop {
        let e = match watch_node(&client, node, apply, shutdown, &mut retry).await {
            Ok(Next::Shutdown) => return Ok(()),
            Ok(Next::Rearm) => continue,
            Err(e) => e,
        };
        // A broken connection is not a lost session: wait for the client to reconnect.
        if classify(&e) == Failure::SessionEnded {
            return Err(e);
        }
        log::warn!("config node {node}: a read failed ({e}) but the session stands; keeping the current config and reading again once connected");
        if !retry.wait(shutdown).await || !connected_again(&mut state, shutdown, || {}).await? {
            return Ok(());
        }
    }
}

enum Next {
    Shutdown,
    /// Reconnected: arm the watch again.
    Rearm,
}

/// Arms a watch on `node`, reads it, and reads it again on every change.
async fn watch_node(
    client: &zk::Client,
    node: &str,
    apply: &impl Fn(Option<Versioned>),
    shutdown: &mut watch::Receiver<bool>,
    retry: &mut Backoff,
) -> Result<Next, zk::Error> {
    // Re-armed on every reconnect: a watch does not reliably move to another server of the
    // ensemble (see watcher.rs).
    let mut watcher = client.watch(node, zk::AddWatchMode::Persistent).await?;
    apply(read_once(client, node).await?);
    retry.reset();
    let mut disconnected = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => return Ok(Next::Shutdown),
            event = watcher.changed() => event,
        };
        if event.event_type != zk::EventType::Session {
            apply(read_once(client, node).await?);
            continue;
        }
        match event.session_state {
            s if s.is_terminated() => return Err(ended(s)),
            zk::SessionState::SyncConnected if disconnected => return Ok(Next::Rearm),
            zk::SessionState::SyncConnected => {}
            _ => disconnected = true,
        }
    }
}

async fn read_once(client: &zk::Client, node: &str) -> Result<Option<Versioned>, zk::Error> {
    match client.get_data(node).await {
        Ok((data, stat)) => Ok(Some(Versioned {
            data,
            version: stat.version,
        })),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Bounds a one-off operation by a deadline, for command-line use where ZooKeeper may simply be
/// unreachable.
pub async fn within<T, E: From<zk::Error>>(
    limit: Duration,
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(limit, op)
        .await
        .unwrap_or(Err(zk::Error::Timeout.into()))
}
