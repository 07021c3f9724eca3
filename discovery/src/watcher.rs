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

/// What a failed ZooKeeper call means for the watcher. The client ends a session only on these
/// (zookeeper-client 0.11 `Session::resolve_serve_error` / `resolve_start_error`): ZooKeeper
/// answered `SessionExpired` or `SessionMoved` (state `Expired`), `AuthFailed`, the client was
/// closed, or it gave up reconnecting within 1.4 × the session timeout (`Timeout`, which it turns
/// into `Expired`). Everything else that breaks a connection (an I/O error such as "Connection
/// reset by peer", which arrives as `Custom`; `ConnectionLoss` at end of stream; "no response from
/// connection" as `Custom`; a reply it could not decode) leaves the state `Disconnected` and the
/// client reconnects by itself within the same session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The session is over: only a new one helps.
    SessionEnded,
    /// The connection broke, or the server could not answer now (`Throttled`): the session
    /// stands, so wait for the client to be connected again and read again.
    Connection,
    /// ZooKeeper refused this one request (no such node, not allowed, ...): the path or node in
    /// question is skipped, the others are unaffected.
    Refused,
}

pub(crate) fn classify(e: &zk::Error) -> Failure {
    use zk::Error as E;
    match e {
        E::SessionExpired | E::SessionMoved | E::AuthFailed | E::ClientClosed | E::NoHosts => {
            Failure::SessionEnded
        }
        E::NoNode
        | E::NoAuth
        | E::BadArguments(_)
        | E::BadVersion
        | E::NoChildrenForEphemerals
        | E::NodeExists
        | E::NotEmpty
        | E::InvalidAcl
        | E::NotReadOnly
        | E::NoWatcher
        | E::QuotaExceeded
        | E::MarshallingError
        | E::Unimplemented
        | E::ReconfigDisabled
        | E::UnexpectedErrorCode(_)
        | E::RuntimeInconsistent => Failure::Refused,
        // ConnectionLoss, Custom (I/O), Timeout, UnmarshalError, UnexpectedError, Throttled, and
        // whatever a later version adds: whether the session survived is the client's state to
        // tell, which `reconnected` asks before reading again.
        _ => Failure::Connection,
    }
}

/// The error that stands for a terminal session state.
fn ended(state: zk::SessionState) -> zk::Error {
    match state {
        zk::SessionState::AuthFailed => zk::Error::AuthFailed,
        zk::SessionState::Closed => zk::Error::ClientClosed,
        _ => zk::Error::SessionExpired,
    }
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

/// Waits until the client is connected again: `Ok(true)`; `Ok(false)` on shutdown; `Err` when
/// the session ended meanwhile.
async fn reconnected(
    state: &mut zk::StateWatcher,
    sink: &dyn Publish,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, zk::Error> {
    let mut reported = false;
    loop {
        match state.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                sink.session(SessionEvent::Connected);
                return Ok(true);
            }
            s if s.is_terminated() => return Err(ended(s)),
            _ if !reported => {
                sink.session(SessionEvent::Disconnected);
                reported = true;
            }
            _ => {}
        }
        // Not terminated yet, so `changed` does return on the next state.
        tokio::select! {
            _ = shutdown.changed() => return Ok(false),
            _ = state.changed() => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn only_an_ended_session_ends_the_session() {
        use zk::Error as E;
        for e in [
            E::SessionExpired,
            E::SessionMoved,
            E::AuthFailed,
            E::ClientClosed,
            E::NoHosts,
        ] {
            assert_eq!(classify(&e), Failure::SessionEnded, "{e:?}");
        }
        for e in [
            E::ConnectionLoss,
            E::Timeout,
            E::Throttled,
            E::UnexpectedError("recv response with xid 7 but no pending request".into()),
        ] {
            assert_eq!(classify(&e), Failure::Connection, "{e:?}");
        }
        for e in [
            E::NoNode,
            E::NoAuth,
            E::Unimplemented,
            E::MarshallingError,
            E::UnexpectedErrorCode(-999),
        ] {
            assert_eq!(classify(&e), Failure::Refused, "{e:?}");
        }
        assert_eq!(ended(zk::SessionState::Expired), E::SessionExpired);
        assert_eq!(ended(zk::SessionState::AuthFailed), E::AuthFailed);
        assert_eq!(ended(zk::SessionState::Closed), E::ClientClosed);
    }

    /// What the fake server does with the first request after the handshake.
    #[derive(Clone, Copy)]
    enum Then {
        /// Resets the connection (a member killed mid-read).
        Reset,
        /// Closes it cleanly.
        Close,
        /// Answers with this ZooKeeper error code.
        Answer(i32),
    }

    async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
        let len = s.read_i32().await.ok()?;
        let mut body = vec![0; usize::try_from(len).ok()?];
        s.read_exact(&mut body).await.ok()?;
        Some(body)
    }

    async fn write_frame(s: &mut TcpStream, body: &[u8]) {
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        let _ = s.write_all(&frame).await;
    }

    /// A reply header: xid, zxid, error code.
    fn reply(xid: i32, err: i32) -> Vec<u8> {
        let mut r = xid.to_be_bytes().to_vec();
        r.extend(1i64.to_be_bytes());
        r.extend(err.to_be_bytes());
        r
    }

    /// A fake ZooKeeper server speaking just enough of the protocol to hand out one session
    /// (and take it back on a reconnect) and answer pings: a real server cannot be made to fail
    /// a read in each of these ways on cue. The first request of the first connection gets
    /// `then`.
    async fn fake_server(then: Then) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((mut s, _)) = listener.accept().await {
                let then = std::mem::take(&mut first).then_some(then);
                tokio::spawn(async move {
                    if read_frame(&mut s).await.is_none() {
                        return;
                    }
                    // Protocol version, session timeout (ms), session id, password, read-only.
                    let mut hello = 0i32.to_be_bytes().to_vec();
                    hello.extend(4000i32.to_be_bytes());
                    hello.extend(0x5eed_i64.to_be_bytes());
                    hello.extend(16i32.to_be_bytes());
                    hello.extend([7u8; 16]);
                    hello.push(0);
                    write_frame(&mut s, &hello).await;
                    while let Some(request) = read_frame(&mut s).await {
                        let xid =
                            i32::from_be_bytes([request[0], request[1], request[2], request[3]]);
                        if xid == -2 {
                            write_frame(&mut s, &reply(-2, 0)).await;
                            continue;
                        }
                        match then {
                            Some(Then::Reset) => {
                                let _ = s.set_zero_linger();
                                return;
                            }
                            Some(Then::Close) => return,
                            Some(Then::Answer(err)) => write_frame(&mut s, &reply(xid, err)).await,
                            None => write_frame(&mut s, &reply(xid, -101)).await,
                        }
                    }
                });
            }
        });
        addr
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<SessionEvent>>);

    impl Publish for Events {
        fn instances(&self, _: &str, _: Vec<Instance>) {}
        fn session(&self, event: SessionEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    async fn failed_read(then: Then) -> (zk::Client, zk::Error) {
        let addr = fake_server(then).await;
        let client = zk::Client::connector()
            .with_session_timeout(Duration::from_secs(4))
            .connect(&addr)
            .await
            .unwrap();
        let e = client.get_data("/zkgate/services/api/a").await.unwrap_err();
        (client, e)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_reset_mid_read_keeps_the_session_and_reconnects() {
        let (client, e) = failed_read(Then::Reset).await;
        // "Connection reset by peer", as the client hands it to the read in flight.
        assert!(matches!(e, zk::Error::Custom(_)), "{e:?}");
        assert_eq!(classify(&e), Failure::Connection);
        let mut state = client.state_watcher();
        assert!(!state.peek_state().is_terminated());
        // The client comes back on the same session: the reads can be retried on it.
        let events = Events::default();
        let (_tx, mut shutdown) = watch::channel(false);
        let back = tokio::time::timeout(
            Duration::from_secs(30),
            reconnected(&mut state, &events, &mut shutdown),
        )
        .await
        .expect("reconnected within the session");
        assert_eq!(back, Ok(true));
        assert_eq!(
            events.0.lock().unwrap().last(),
            Some(&SessionEvent::Connected)
        );
        assert_eq!(
            client.get_data("/x").await.unwrap_err(),
            zk::Error::NoNode,
            "the session answers again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_closed_mid_read_is_a_connection_loss() {
        let (client, e) = failed_read(Then::Close).await;
        assert_eq!(e, zk::Error::ConnectionLoss);
        assert_eq!(classify(&e), Failure::Connection);
        assert!(!client.state().is_terminated());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expiry_reported_mid_read_ends_the_session() {
        let (client, e) = failed_read(Then::Answer(-112)).await;
        assert_eq!(e, zk::Error::SessionExpired);
        assert_eq!(classify(&e), Failure::SessionEnded);
        assert_eq!(client.state(), zk::SessionState::Expired);
        let (_tx, mut shutdown) = watch::channel(false);
        let mut state = client.state_watcher();
        assert_eq!(
            reconnected(&mut state, &Events::default(), &mut shutdown).await,
            Err(zk::Error::SessionExpired)
        );
        let (client, e) = failed_read(Then::Answer(-115)).await;
        assert_eq!(
            (classify(&e), client.state()),
            (Failure::SessionEnded, zk::SessionState::AuthFailed)
        );
    }
}
