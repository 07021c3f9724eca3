//! Backend links of a game listener: the gateway's own long-lived TCP connections to game
//! servers (never Pingora's keep-alive pool, which cannot hold a server-push stream: notes
//! game-router.md §2.3.8), each carrying many sessions multiplexed by the GateMsgHeader's
//! SessionID, or one connection per session (`link: per_session`, the seed's TCP mode).
//!
//! Each link has one writer task, fed through a buffer bounded in bytes: a session that sends
//! to a backend that does not read waits for room, so a slow backend slows only the clients
//! writing to it and memory stays bounded. What is queued is written in one write. Each link
//! has one reader task that decodes backend frames and hands them to the sessions' queues
//! through the [`SessionTable`] without ever waiting on a client. A malformed frame, EOF or an
//! error ends the link: its sessions, and only they, are closed with
//! [`CloseReason::BackendGone`], and the next [`Links::attach`] connects anew.
//!
//! The zkgate opcodes (README "Backend links and the zkgate opcodes"): 1 Trans both ways,
//! 2 SessionOpen and 3 SessionClose toward a backend configured with `events`, 3 SessionClose
//! (a kick) and 4 Broadcast from a backend.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use foldhash::fast::RandomState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio::task::AbortHandle;

use super::codec::{
    BackendCodec, BackendFrame, ClientCodec, ClientFrame, FrameError, Opcode, ServerId,
    MAX_CLIENT_PAYLOAD, SERVER_HEADER,
};
use super::metrics::{GameMetrics, LinkMetrics};
use super::rules::{BackendProtocol, LinkMode};
use super::session::{Delivery, SessionTable};
use super::{ClientProtocol, CloseReason, SessionId};
use crate::upstream::Upstream;

/// GateMsgHeader opcode: a client message, both ways (the seed's only opcode).
pub const OP_TRANS: u8 = 1;
/// Gateway to backend: a session starts (payload: [`SessionOpen`]'s fields).
pub const OP_SESSION_OPEN: u8 = 2;
/// Both ways: a session ends (payload: u16 [`CloseReason::code`]); from a backend, a kick.
pub const OP_SESSION_CLOSE: u8 = 3;
/// Backend to gateway: one client frame to a list of sessions.
pub const OP_BROADCAST: u8 = 4;

/// Bytes queued toward one link before senders wait: room for many small frames and a few
/// maximal ones, and a bound on what a stalled backend costs.
pub const QUEUE_BYTES: usize = 1 << 20;
/// The connect timeout when the upstream's is zero.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// What a link's reader reads into at once.
const READ_CHUNK: usize = 16 * 1024;
/// Client frames are encoded into chunks of this size and split off, so that a frame costs no
/// allocation of its own.
const OUT_CHUNK: usize = 64 * 1024;

/// Why a session could not be attached to, or use, a backend link.
#[derive(Debug)]
pub enum LinkError {
    /// The backend could not be reached (refused, unreachable, or the connect timed out).
    Connect(io::Error),
    /// The link ended (the backend closed it, failed or sent a malformed frame).
    Closed,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Connect(e) => write!(f, "cannot connect to the backend: {e}"),
            LinkError::Closed => f.write_str("the backend link is closed"),
        }
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LinkError::Connect(e) => Some(e),
            LinkError::Closed => None,
        }
    }
}

/// What a backend configured with `events` learns of a session before its first frame.
#[derive(Clone, Copy, Debug)]
pub struct SessionOpen {
    pub id: SessionId,
    /// The client's address (from the PROXY header when there was one).
    pub client: SocketAddr,
    pub protocol: ClientProtocol,
    /// The first frame's ServerID.
    pub server_id: ServerId,
    pub gateway_id: u16,
}

impl SessionOpen {
    /// The SessionOpen payload: u8 protocol, u8 family (4 or 6), the IP (4 or 16 bytes),
    /// u16 port, u16 gateway id.
    fn put_payload(&self, out: &mut BytesMut) {
        out.put_u8(self.protocol as u8);
        match self.client.ip() {
            IpAddr::V4(ip) => {
                out.put_u8(4);
                out.put_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.put_u8(6);
                out.put_slice(&ip.octets());
            }
        }
        out.put_u16_le(self.client.port());
        out.put_u16_le(self.gateway_id);
    }

    fn payload_len(&self) -> usize {
        let ip = if self.client.is_ipv4() { 4 } else { 16 };
        1 + 1 + ip + 2 + 2
    }
}

/// Links of one backend of one upstream (its metrics' label) speaking one protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    upstream: Arc<str>,
    backend: SocketAddr,
    gate: usize,
    events: bool,
    max_frame: usize,
    links: u8,
}

/// A place for one multiplexed link: connects are serialized here so that sessions arriving
/// together share one connection.
#[derive(Debug, Default)]
struct Slot {
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// Sessions attached through this slot now: to spread sessions to the least loaded.
    load: AtomicUsize,
    /// Failed connects; a session that waited behind a connect that failed fails at once
    /// rather than trying again (N sessions do not wait N connect timeouts).
    failures: AtomicU64,
    last_error: Mutex<Option<(io::ErrorKind, String)>>,
}

#[derive(Debug)]
struct Pool {
    slots: Box<[Arc<Slot>]>,
}

impl Pool {
    /// The least loaded slot, ties going to the one of the session's id, with the session
    /// counted in its load at once (so that sessions arriving together spread).
    fn choose(&self, id: SessionId) -> SlotLoad {
        let n = self.slots.len();
        let start = (id.0 as u64 % n as u64) as usize;
        let mut best = start;
        let mut least = usize::MAX;
        for i in 0..n {
            let at = (start + i) % n;
            let load = self.slots[at].load.load(Ordering::Relaxed);
            if load < least {
                least = load;
                best = at;
            }
        }
        let slot = self.slots[best].clone();
        slot.load.fetch_add(1, Ordering::Relaxed);
        SlotLoad(slot)
    }
}

impl Pool {
    /// No session holds a slot and no link is alive (a slot being connected is in use).
    fn unused(&self) -> bool {
        self.slots.iter().all(|s| {
            s.load.load(Ordering::Relaxed) == 0
                && s.link
                    .try_lock()
                    .is_ok_and(|l| l.as_ref().is_none_or(|l| l.is_dead()))
        })
    }
}

/// A session counted in a slot's load, until it is dropped.
#[derive(Debug)]
struct SlotLoad(Arc<Slot>);

impl Drop for SlotLoad {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The backend links of one game listener.
#[derive(Debug)]
pub struct Links {
    table: Arc<SessionTable>,
    metrics: Arc<GameMetrics>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    link_metrics: Mutex<HashMap<Arc<str>, LinkMetrics>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; were it to, the data is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Links {
    pub fn new(table: Arc<SessionTable>, metrics: Arc<GameMetrics>) -> Arc<Links> {
        Arc::new(Links {
            table,
            metrics,
            pools: Mutex::default(),
            link_metrics: Mutex::default(),
        })
    }

    /// Bytes queued toward this listener's backends and not written yet (among them the
    /// SessionClose frames of sessions that just ended): a stopping process waits for them.
    pub fn queued_bytes(&self) -> i64 {
        lock(&self.link_metrics)
            .values()
            .map(|m| m.queue_bytes.get())
            .sum()
    }

    /// Attaches session `open.id` to a link to `backend` (reusing one, or connecting), and
    /// tells the backend of it when `proto.events`. Insert the session in the table first:
    /// the backend may answer at once.
    pub async fn attach(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        backend: SocketAddr,
        proto: BackendProtocol,
        open: &SessionOpen,
    ) -> Result<Attached, LinkError> {
        let (link, slot) = match proto.link {
            LinkMode::PerSession => {
                let link = self
                    .connect(upstream, backend, proto, Some(open.id))
                    .await?;
                if !link.join(open.id) {
                    return Err(LinkError::Closed);
                }
                (link, None)
            }
            LinkMode::Multiplexed => {
                let slot = self.slot(&upstream.name, backend, proto, open.id);
                let mut link = self.link_in(&slot.0, upstream, backend, proto).await?;
                if !link.join(open.id) {
                    // It ended between the two (closed idle, or failed): once more, anew.
                    link = self.link_in(&slot.0, upstream, backend, proto).await?;
                    if !link.join(open.id) {
                        return Err(LinkError::Closed);
                    }
                }
                (link, Some(slot))
            }
        };
        let mut attached = Attached {
            link,
            _slot: slot,
            id: open.id,
            opened: false,
            done: false,
        };
        if proto.events {
            attached.link.send_open(open).await?;
        }
        attached.opened = true;
        Ok(attached)
    }

    /// The slot of a link to `backend` for session `id`, the session counted in its load.
    fn slot(
        &self,
        upstream: &Arc<str>,
        backend: SocketAddr,
        proto: BackendProtocol,
        id: SessionId,
    ) -> SlotLoad {
        let key = PoolKey {
            upstream: upstream.clone(),
            backend,
            gate: proto.gate.size(),
            events: proto.events,
            max_frame: proto.max_frame,
            links: proto.links.max(1),
        };
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.get(&key) {
            // Chosen under the lock, so that the sweep below never drops a pool being joined.
            return pool.choose(id);
        }
        // A backend not seen before (backends come and go with discovery): forget those whose
        // links all ended and that no session uses.
        pools.retain(|_, pool| !pool.unused());
        let pool = Pool {
            slots: (0..key.links).map(|_| Arc::default()).collect(),
        };
        let slot = pool.choose(id);
        pools.insert(key, Arc::new(pool));
        slot
    }

    /// The live link of `slot`, connecting one when there is none.
    async fn link_in(
        &self,
        slot: &Slot,
        upstream: &Arc<Upstream>,
        backend: SocketAddr,
        proto: BackendProtocol,
    ) -> Result<Arc<Link>, LinkError> {
        let failures = slot.failures.load(Ordering::Acquire);
        let mut current = slot.link.lock().await;
        if let Some(link) = current.as_ref().filter(|l| !l.is_dead()) {
            return Ok(link.clone());
        }
        if slot.failures.load(Ordering::Acquire) != failures {
            let (kind, msg) = lock(&slot.last_error)
                .clone()
                .unwrap_or((io::ErrorKind::Other, "connect failed".to_owned()));
            return Err(LinkError::Connect(io::Error::new(kind, msg)));
        }
        match self.connect(upstream, backend, proto, None).await {
            Ok(link) => {
                *current = Some(link.clone());
                Ok(link)
            }
            Err(e) => {
                if let LinkError::Connect(io) = &e {
                    *lock(&slot.last_error) = Some((io.kind(), io.to_string()));
                }
                slot.failures.fetch_add(1, Ordering::AcqRel);
                *current = None;
                Err(e)
            }
        }
    }

    fn link_metrics(&self, upstream: &Arc<str>) -> LinkMetrics {
        lock(&self.link_metrics)
            .entry(upstream.clone())
            .or_insert_with(|| self.metrics.links(upstream))
            .clone()
    }

    /// A new link to `backend`: for one session (`only`) or many.
    async fn connect(
        &self,
        upstream: &Arc<Upstream>,
        backend: SocketAddr,
        proto: BackendProtocol,
        only: Option<SessionId>,
    ) -> Result<Arc<Link>, LinkError> {
        let metrics = self.link_metrics(&upstream.name);
        let settings = &upstream.policy.settings;
        let timeout = Some(settings.connect_timeout)
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(backend)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                metrics.event("connect_failed");
                return Err(LinkError::Connect(e));
            }
            Err(_) => {
                metrics.event("connect_failed");
                return Err(LinkError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                )));
            }
        };
        // Game frames are small and latency-bound: never hold one back.
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("game link to {backend}: TCP_NODELAY not set: {e}");
        }
        let (read, write) = stream.into_split();
        metrics.event("connected");
        metrics.open.inc();
        let link = Arc::new(Link {
            backend,
            upstream: upstream.name.clone(),
            codec: BackendCodec::new(proto.gate, proto.max_frame),
            events: proto.events,
            per_session: only.is_some(),
            queue: Mutex::new(Queue::default()),
            room: Semaphore::new(QUEUE_BYTES),
            wake: Notify::new(),
            sessions: Mutex::default(),
            dead: AtomicBool::new(false),
            metrics,
            game: self.metrics.clone(),
            table: self.table.clone(),
            tasks: Mutex::default(),
        });
        let write_timeout = Some(settings.write_timeout).filter(|t| !t.is_zero());
        let reader = tokio::spawn(read_loop(link.clone(), read, only));
        let idle = Some(settings.idle_timeout).filter(|t| only.is_none() && !t.is_zero());
        let writer = tokio::spawn(write_loop(link.clone(), write, write_timeout, idle));
        {
            let mut tasks = lock(&link.tasks);
            tasks.push(reader.abort_handle());
            tasks.push(writer.abort_handle());
        }
        if link.is_dead() {
            // It died before the handles were kept: end what is left of it.
            link.abort_tasks();
        }
        Ok(link)
    }
}

impl Drop for Links {
    /// The listener is gone: its links end (their sessions, if any are left, with it).
    fn drop(&mut self) {
        for pool in lock(&self.pools).values() {
            for slot in pool.slots.iter() {
                if let Ok(mut current) = slot.link.try_lock() {
                    if let Some(link) = current.take() {
                        link.kill(End::Closed, None);
                    }
                }
            }
        }
    }
}

/// What is waiting to be written to a link.
#[derive(Debug, Default)]
struct Queue {
    buf: BytesMut,
    /// Permits of `room` the bytes in `buf` hold, returned once written.
    permits: usize,
    /// Bytes taken by the writer and not yet written.
    writing: usize,
    dead: bool,
    /// Per-session link: write what is queued, then close.
    closing: bool,
}

/// How a link ended, a link event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Closed,
    Error,
    Malformed,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Error => "error",
            End::Malformed => "malformed",
        }
    }
}

#[derive(Debug)]
struct Link {
    backend: SocketAddr,
    upstream: Arc<str>,
    codec: BackendCodec,
    events: bool,
    per_session: bool,
    queue: Mutex<Queue>,
    /// Bytes that may still be queued; closed when the link dies, which wakes every sender.
    room: Semaphore,
    /// Wakes the writer.
    wake: Notify,
    /// The sessions attached: closed when the link dies, and the only ones its backend reaches.
    /// Looked up per frame; only the gateway's ids are inserted, so a fast hash is safe.
    sessions: Mutex<HashSet<i64, RandomState>>,
    dead: AtomicBool,
    metrics: LinkMetrics,
    game: Arc<GameMetrics>,
    table: Arc<SessionTable>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Link {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Adds `id` to the link's sessions; `false` when the link is dead.
    fn join(&self, id: SessionId) -> bool {
        let mut sessions = lock(&self.sessions);
        // Checked under the lock that `kill` takes the sessions under: none is left behind.
        if self.is_dead() {
            return false;
        }
        sessions.insert(id.0);
        true
    }

    fn has(&self, id: i64) -> bool {
        lock(&self.sessions).contains(&id)
    }

    /// Queues what `put` writes, holding `permits` of `room` (already acquired; given back
    /// when the link is dead or `put` fails).
    fn enqueue(
        &self,
        permits: usize,
        put: impl FnOnce(&mut BytesMut) -> Result<(), FrameError>,
    ) -> Result<(), LinkError> {
        let mut q = lock(&self.queue);
        if q.dead || q.closing {
            drop(q);
            self.room.add_permits(permits);
            return Err(LinkError::Closed);
        }
        let before = q.buf.len();
        if put(&mut q.buf).is_err() {
            q.buf.truncate(before);
            drop(q);
            self.room.add_permits(permits);
            // Only frames checked against the bound reach here: nothing to tell the caller.
            self.game.dropped("too_large");
            return Ok(());
        }
        q.permits += permits;
        self.metrics.queue_bytes.add((q.buf.len() - before) as i64);
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// Waits for room for `len` bytes (a frame larger than the whole bound takes all of it).
    async fn room_for(&self, len: usize) -> Result<usize, LinkError> {
        let permits = len.min(QUEUE_BYTES);
        // QUEUE_BYTES fits a u32.
        match self.room.acquire_many(permits as u32).await {
            Ok(p) => {
                p.forget();
                Ok(permits)
            }
            Err(_) => Err(LinkError::Closed),
        }
    }

    fn frame(
        &self,
        opcode: u8,
        id: SessionId,
        msg_type: i32,
        server_id: u32,
        payload: Bytes,
    ) -> BackendFrame {
        BackendFrame {
            msg_type,
            server_id,
            object_id: id.0,
            opcode: Opcode::from_u8(opcode),
            session_id: id.0,
            trace: None,
            payload,
        }
    }

    async fn send_open(&self, open: &SessionOpen) -> Result<(), LinkError> {
        let len = SERVER_HEADER + self.codec.form().size() + open.payload_len();
        let permits = self.room_for(len).await?;
        self.enqueue(permits, |buf| {
            // Encoded in place: the payload is written after the headers the codec writes
            // for an empty one, and the length patched.
            let start = buf.len();
            let head = self.frame(OP_SESSION_OPEN, open.id, 0, open.server_id.0, Bytes::new());
            self.codec.encode(&head, buf)?;
            open.put_payload(buf);
            patch_len(buf, start);
            Ok(())
        })
    }

    async fn send(&self, id: SessionId, frame: &ClientFrame) -> Result<(), LinkError> {
        let permits = self.room_for(self.trans_len(frame)).await?;
        self.enqueue_trans(permits, id, frame)
    }

    /// Queues a client frame if the link has room for it now: `Ok(false)` when it has not (the
    /// caller then waits in [`Link::send`]). No future to hold: a session's loop calls this
    /// for every frame, and what it awaits stays in its task for the session's life.
    fn try_send(&self, id: SessionId, frame: &ClientFrame) -> Result<bool, LinkError> {
        let permits = self.trans_len(frame).min(QUEUE_BYTES);
        // QUEUE_BYTES fits a u32. Permits given back go to the senders waiting first.
        match self.room.try_acquire_many(permits as u32) {
            Ok(p) => p.forget(),
            Err(TryAcquireError::NoPermits) => return Ok(false),
            Err(TryAcquireError::Closed) => return Err(LinkError::Closed),
        }
        self.enqueue_trans(permits, id, frame).map(|()| true)
    }

    fn trans_len(&self, frame: &ClientFrame) -> usize {
        SERVER_HEADER + self.codec.form().size() + frame.payload.len()
    }

    fn enqueue_trans(
        &self,
        permits: usize,
        id: SessionId,
        frame: &ClientFrame,
    ) -> Result<(), LinkError> {
        self.enqueue(permits, |buf| {
            let f = self.frame(
                OP_TRANS,
                id,
                i32::from(frame.msg_id),
                frame.server_id.0,
                frame.payload.clone(),
            );
            self.codec.encode(&f, buf)
        })
    }

    /// Tells the backend that `id` ended. Not bounded by `room` (it cannot wait: it runs in
    /// `Drop`); one small frame per session at most.
    fn send_close(&self, id: SessionId, reason: CloseReason) {
        let _ = self.enqueue(0, |buf| {
            let start = buf.len();
            let head = self.frame(OP_SESSION_CLOSE, id, 0, 0, Bytes::new());
            self.codec.encode(&head, buf)?;
            buf.put_u16_le(reason.code());
            patch_len(buf, start);
            Ok(())
        });
    }

    /// A per-session link: close it once what is queued is written.
    fn close_after_writes(&self) {
        lock(&self.queue).closing = true;
        self.wake.notify_one();
    }

    fn leave(&self, id: SessionId) {
        lock(&self.sessions).remove(&id.0);
    }

    fn abort_tasks(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// Ends the link: every session still attached is closed with `BackendGone`.
    fn kill(&self, end: End, why: Option<&dyn std::fmt::Display>) {
        self.end(end, why, false);
    }

    /// Ends a multiplexed link no session uses; `false` when one does.
    fn close_if_idle(&self) -> bool {
        self.end(End::Closed, None, true)
    }

    /// `if_idle`: only when no session is attached, checked under the lock a joining session
    /// takes, so that none joins a link being closed.
    fn end(&self, end: End, why: Option<&dyn std::fmt::Display>, if_idle: bool) -> bool {
        let sessions = {
            let mut sessions = lock(&self.sessions);
            if if_idle && !sessions.is_empty() {
                return false;
            }
            if self.dead.swap(true, Ordering::AcqRel) {
                return true;
            }
            std::mem::take(&mut *sessions)
        };
        {
            let mut q = lock(&self.queue);
            q.dead = true;
            self.metrics
                .queue_bytes
                .sub((q.buf.len() + q.writing) as i64);
            q.writing = 0;
            q.buf = BytesMut::new();
        }
        self.room.close();
        self.abort_tasks();
        self.metrics.open.dec();
        self.metrics.event(end.as_str());
        match (end, why) {
            (End::Closed, _) if sessions.is_empty() => {}
            (_, Some(why)) => log::warn!(
                "game link to {} (upstream {}) ended ({}): {why}; {} sessions closed",
                self.backend,
                self.upstream,
                end.as_str(),
                sessions.len()
            ),
            (_, None) => log::warn!(
                "game link to {} (upstream {}) ended ({}); {} sessions closed",
                self.backend,
                self.upstream,
                end.as_str(),
                sessions.len()
            ),
        }
        for id in sessions {
            self.table.close(SessionId(id), CloseReason::BackendGone);
        }
        true
    }

    /// One frame from the backend; `Err` for a frame whose payload breaks its opcode's layout.
    fn on_frame(
        &self,
        frame: BackendFrame,
        only: Option<SessionId>,
        out: &mut BytesMut,
    ) -> Result<(), &'static str> {
        match frame.opcode.as_u8() {
            OP_TRANS => {
                let Some(to) = self.target(only, frame.session_id) else {
                    self.game.dropped("unknown_session");
                    return Ok(());
                };
                if let Some(bytes) = self.client_frame(&frame, frame.payload.clone(), out) {
                    self.deliver(to, bytes);
                }
            }
            OP_SESSION_CLOSE => {
                if let Some(to) = self.target(only, frame.session_id) {
                    self.table.close(to, CloseReason::Kicked);
                } else {
                    self.game.dropped("unknown_session");
                }
            }
            OP_BROADCAST => {
                let mut p = frame.payload.clone();
                if p.len() < 2 {
                    return Err("a broadcast without its count");
                }
                let count = usize::from(p.get_u16_le());
                if p.len() < count * 8 {
                    return Err("a broadcast shorter than its list of sessions");
                }
                let ids = p.split_to(count * 8);
                let Some(bytes) = self.client_frame(&frame, p, out) else {
                    return Ok(());
                };
                for raw in ids.chunks_exact(8) {
                    let mut id = [0; 8];
                    id.copy_from_slice(raw);
                    let id = i64::from_le_bytes(id);
                    // On a per-session link only its own session is reachable.
                    match self.target(only, id).filter(|to| to.0 == id) {
                        Some(to) => self.deliver(to, bytes.clone()),
                        None => self.game.dropped("unknown_session"),
                    }
                }
            }
            _ => self.game.dropped("bad_opcode"),
        }
        Ok(())
    }

    /// The session a frame for `id` goes to: the link's own on a per-session link, else `id`
    /// when it is attached to this link (a backend reaches only the sessions sent to it).
    fn target(&self, only: Option<SessionId>, id: i64) -> Option<SessionId> {
        match only {
            Some(own) => Some(own),
            None => self.has(id).then_some(SessionId(id)),
        }
    }

    fn deliver(&self, to: SessionId, bytes: Bytes) {
        match self.table.deliver(to, bytes) {
            Delivery::Queued => {}
            Delivery::Unknown => self.game.dropped("unknown_session"),
            Delivery::Overflow => self.game.dropped("overflow"),
        }
    }

    /// `frame` re-framed for a client with `payload`, split off `out`; `None` (counted) when
    /// a client frame cannot say it.
    fn client_frame(
        &self,
        frame: &BackendFrame,
        payload: Bytes,
        out: &mut BytesMut,
    ) -> Option<Bytes> {
        let (Ok(msg_id), true) = (
            u16::try_from(frame.msg_type),
            payload.len() <= MAX_CLIENT_PAYLOAD,
        ) else {
            self.game.dropped("too_large");
            return None;
        };
        let need = super::codec::CLIENT_HEADER + payload.len();
        if out.capacity() < need {
            out.reserve(OUT_CHUNK.max(need));
        }
        let f = ClientFrame {
            msg_id,
            server_id: ServerId(frame.server_id),
            payload,
        };
        ClientCodec::encode(&f, out).ok()?;
        Some(out.split().freeze())
    }
}

/// Sets the length field of the frame at `start` of `buf` from what follows its server header.
fn patch_len(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start - SERVER_HEADER) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

async fn read_loop(link: Arc<Link>, mut read: OwnedReadHalf, only: Option<SessionId>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::new();
    loop {
        loop {
            match link.codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(why) = link.on_frame(frame, only, &mut out) {
                        link.kill(End::Malformed, Some(&why));
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    link.kill(End::Malformed, Some(&e));
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => {
                let why = (!buf.is_empty()).then_some("end of stream within a frame");
                let end = if why.is_some() {
                    End::Malformed
                } else {
                    End::Closed
                };
                link.kill(end, why.as_ref().map(|w| w as &dyn std::fmt::Display));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                link.kill(End::Error, Some(&e));
                return;
            }
        }
    }
}

/// What the writer does next.
enum Step {
    Write(usize),
    Wait,
    Close,
    Stop,
}

/// `idle`: a multiplexed link with no session and nothing written for that long is closed
/// (a backend that left discovery but still runs keeps no connection from us).
async fn write_loop(
    link: Arc<Link>,
    mut write: OwnedWriteHalf,
    timeout: Option<Duration>,
    idle: Option<Duration>,
) {
    let mut spare = BytesMut::new();
    loop {
        let step = {
            let mut q = lock(&link.queue);
            if !q.buf.is_empty() {
                std::mem::swap(&mut q.buf, &mut spare);
                q.writing = spare.len();
                Step::Write(std::mem::take(&mut q.permits))
            } else if q.dead {
                Step::Stop
            } else if q.closing {
                Step::Close
            } else {
                Step::Wait
            }
        };
        let permits = match step {
            Step::Write(permits) => permits,
            // `notify_one` keeps a permit when the writer is not waiting yet: no wake is lost.
            Step::Wait => {
                match idle {
                    Some(idle) => {
                        let woken = tokio::time::timeout(idle, link.wake.notified()).await;
                        if woken.is_err() && link.close_if_idle() {
                            return;
                        }
                    }
                    None => link.wake.notified().await,
                }
                continue;
            }
            Step::Close => {
                let _ = write.shutdown().await;
                link.kill(End::Closed, None);
                return;
            }
            Step::Stop => return,
        };
        let written = match timeout {
            Some(t) => tokio::time::timeout(t, write.write_all(&spare))
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the backend read nothing for {t:?}"),
                    ))
                }),
            None => write.write_all(&spare).await,
        };
        {
            let mut q = lock(&link.queue);
            if !q.dead {
                link.metrics.queue_bytes.sub(q.writing as i64);
                q.writing = 0;
            }
        }
        link.room.add_permits(permits);
        spare.clear();
        if let Err(e) = written {
            link.kill(End::Error, Some(&e));
            return;
        }
    }
}

/// A session's attachment to a backend link. Dropping it ends the session on the backend as
/// [`Attached::close`] with [`CloseReason::ClientClosed`] does.
#[derive(Debug)]
pub struct Attached {
    link: Arc<Link>,
    /// Counts the session in its slot's load while it lives.
    _slot: Option<SlotLoad>,
    id: SessionId,
    /// The backend was told of the session (or has no events): a SessionClose may follow.
    opened: bool,
    done: bool,
}

impl Attached {
    /// Sends a client frame to the backend, waiting while the link's queue is full.
    pub async fn send(&self, frame: &ClientFrame) -> Result<(), LinkError> {
        self.link.send(self.id, frame).await
    }

    /// Sends a client frame to the backend if the link's queue has room now: `Ok(false)` when
    /// it is full (then [`Attached::send`] waits for room).
    pub fn try_send(&self, frame: &ClientFrame) -> Result<bool, LinkError> {
        self.link.try_send(self.id, frame)
    }

    pub fn backend(&self) -> SocketAddr {
        self.link.backend
    }

    /// The link died under the session (EOF, an error or a malformed frame from its backend):
    /// what ended a session as `backend_gone` was this backend's doing.
    pub fn link_died(&self) -> bool {
        self.link.is_dead()
    }

    /// Ends the session on this link: the backend gets a SessionClose with `reason` (with
    /// `events`), a per-session connection is closed once what is queued is written.
    pub fn close(mut self, reason: CloseReason) {
        self.finish(reason);
    }

    fn finish(&mut self, reason: CloseReason) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.link.leave(self.id);
        if self.opened && self.link.events {
            self.link.send_close(self.id, reason);
        }
        if self.link.per_session {
            self.link.close_after_writes();
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.finish(CloseReason::ClientClosed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::super::codec::GateForm;
    use super::super::session::{Inbox, SessionHandle};
    use super::*;
    use crate::upstream::config::UpstreamSection;
    use crate::upstream::{PeerSettings, Protocol, UpstreamPolicy};

    /// Client message ids the test backend acts on (the same as examples/game_server.rs).
    const KICK_ME: u16 = 0xF001;
    const BROADCAST: u16 = 0xF002;
    const FLOOD: u16 = 0xF003;
    const DIE: u16 = 0xF004;
    const STOP_READING: u16 = 0xF005;
    const GARBAGE: u16 = 0xF006;
    /// A session id no gateway gave: broadcasts name it, and it must be skipped.
    const STRANGER: i64 = 12_345;
    /// The opcode of the frame the test backend records when the gateway closed a connection.
    const EOF_SEEN: u8 = 0xee;

    fn upstream(name: &str) -> Arc<Upstream> {
        let definition: UpstreamSection =
            serde_yaml::from_str(&format!("name: {name}")).expect("a minimal section");
        let policy = UpstreamPolicy::plain(PeerSettings {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(1),
            tls: None,
            protocol: Protocol::Http1,
        });
        // No backends: the tests give links their addresses directly.
        Arc::new(Upstream::new(definition, policy, None, Vec::new(), None))
    }

    fn proto(link: LinkMode, events: bool) -> BackendProtocol {
        BackendProtocol {
            link,
            links: 2,
            gate: GateForm::Short,
            events,
            max_frame: 1 << 20,
        }
    }

    /// A game server speaking the backend framing: it records every frame with the number of
    /// the connection it came on, echoes Trans frames and acts on the commands above.
    struct Backend {
        addr: SocketAddr,
        frames: mpsc::UnboundedReceiver<(usize, BackendFrame)>,
    }

    /// `wrong_ids`: answers carry SessionID 0 (a per-session server that ignores it).
    async fn backend(wrong_ids: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((s, _)) = listener.accept().await {
                n += 1;
                tokio::spawn(serve(s, n, tx.clone(), wrong_ids));
            }
        });
        Backend { addr, frames }
    }

    fn reply(op: u8, session: i64, msg_type: i32, server_id: u32, payload: Bytes) -> BackendFrame {
        BackendFrame {
            msg_type,
            server_id,
            object_id: session,
            opcode: Opcode::from_u8(op),
            session_id: session,
            trace: None,
            payload,
        }
    }

    async fn serve(
        mut s: TcpStream,
        conn: usize,
        tx: mpsc::UnboundedSender<(usize, BackendFrame)>,
        wrong_ids: bool,
    ) {
        let codec = BackendCodec::new(GateForm::Short, 1 << 20);
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        let mut seen: Vec<i64> = Vec::new();
        loop {
            while let Some(f) = codec.decode(&mut buf).expect("the gateway frames well") {
                let _ = tx.send((conn, f.clone()));
                if f.opcode != Opcode::Trans {
                    continue;
                }
                if !seen.contains(&f.session_id) {
                    seen.push(f.session_id);
                }
                let to = if wrong_ids { 0 } else { f.session_id };
                let mut p = f.payload.clone();
                match f.msg_type as u16 {
                    KICK_ME => {
                        let r = reply(OP_SESSION_CLOSE, to, 0, 0, Bytes::new());
                        codec.encode(&r, &mut out).unwrap();
                    }
                    BROADCAST => {
                        let mut b = BytesMut::new();
                        b.put_u16_le(seen.len() as u16 + 1);
                        for id in seen.iter().chain([&STRANGER]) {
                            b.put_i64_le(*id);
                        }
                        b.put_slice(&f.payload);
                        let r = reply(OP_BROADCAST, 0, 77, 0x8000_0001, b.freeze());
                        codec.encode(&r, &mut out).unwrap();
                    }
                    FLOOD => {
                        for _ in 0..p.get_u32_le() {
                            let r = reply(OP_TRANS, to, 9, 0, Bytes::from(vec![7; 1024]));
                            codec.encode(&r, &mut out).unwrap();
                        }
                    }
                    DIE => return,
                    STOP_READING => std::future::pending::<()>().await,
                    GARBAGE => out.put_slice(&[0xfb; SERVER_HEADER]),
                    _ => {
                        let r = reply(OP_TRANS, to, f.msg_type, f.server_id, f.payload);
                        codec.encode(&r, &mut out).unwrap();
                    }
                }
            }
            if !out.is_empty() {
                if s.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send((conn, reply(EOF_SEEN, i64::MIN, 0, 0, Bytes::new())));
                    return;
                }
                Ok(_) => {}
            }
        }
    }

    /// A session as the client side holds it: in the table, with its queue's receiving end.
    struct Session {
        id: SessionId,
        handle: SessionHandle,
        rx: Inbox,
    }

    impl Session {
        fn new(table: &SessionTable, id: i64, queue: usize) -> Session {
            let (handle, rx) = SessionHandle::new(queue);
            table.insert(SessionId(id), handle.clone());
            Session {
                id: SessionId(id),
                handle,
                rx,
            }
        }

        fn open(&self) -> SessionOpen {
            SessionOpen {
                id: self.id,
                client: "10.1.2.3:4567".parse().unwrap(),
                protocol: ClientProtocol::Tcp,
                server_id: ServerId::new(false, 3, 2, 1),
                gateway_id: 7,
            }
        }

        async fn recv(&mut self) -> ClientFrame {
            let bytes = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
                .await
                .expect("a frame in time");
            let mut b = BytesMut::from(&bytes[..]);
            let f = ClientCodec::new(MAX_CLIENT_PAYLOAD)
                .decode(&mut b)
                .expect("a client frame")
                .expect("a whole one");
            assert!(b.is_empty(), "one frame per queue entry");
            f
        }

        async fn closed(&self) -> CloseReason {
            tokio::time::timeout(Duration::from_secs(10), self.rx.closed())
                .await
                .expect("closed in time")
        }
    }

    fn frame(msg_id: u16, payload: &[u8]) -> ClientFrame {
        ClientFrame {
            msg_id,
            server_id: ServerId::new(true, 3, 2, 1),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// Attaches each session to `backend` and has it say hello (answered), as a client's first
    /// frame would.
    async fn attach_and_greet(
        links: &Arc<Links>,
        up: &Arc<Upstream>,
        backend: SocketAddr,
        p: BackendProtocol,
        sessions: &mut [Session],
    ) -> Vec<Attached> {
        let mut attached = Vec::new();
        for x in sessions.iter_mut() {
            let a = links
                .attach(up, backend, p, &x.open())
                .await
                .expect("attach");
            a.send(&frame(1, b"hi")).await.expect("send");
            x.recv().await;
            attached.push(a);
        }
        attached
    }

    fn links(listener: &str) -> (Arc<SessionTable>, Arc<Links>) {
        let table = Arc::new(SessionTable::new());
        let links = Links::new(table.clone(), Arc::new(GameMetrics::new(listener)));
        (table, links)
    }

    /// The connections the backend saw frames on, by session.
    fn conns_of(
        frames: &mut mpsc::UnboundedReceiver<(usize, BackendFrame)>,
    ) -> HashMap<i64, usize> {
        let mut by = HashMap::new();
        while let Ok((conn, f)) = frames.try_recv() {
            if f.opcode.as_u8() != EOF_SEEN {
                by.insert(f.session_id, conn);
            }
        }
        by
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hundred_sessions_share_two_links_with_no_cross_talk() {
        let mut b = backend(false).await;
        let (table, links) = links("t-mux");
        let up = upstream("mux");
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let mut s = Session::new(&table, 1000 + i, 16);
            let (links, up) = (links.clone(), up.clone());
            let addr = b.addr;
            tasks.push(tokio::spawn(async move {
                let a = links
                    .attach(&up, addr, proto(LinkMode::Multiplexed, false), &s.open())
                    .await
                    .expect("attach");
                assert_eq!(a.backend(), addr);
                for n in 0..5u8 {
                    let payload = [&s.id.0.to_le_bytes()[..], &[n]].concat();
                    a.send(&frame(40 + u16::from(n), &payload))
                        .await
                        .expect("send");
                }
                for n in 0..5u8 {
                    let f = s.recv().await;
                    assert_eq!(f.msg_id, 40 + u16::from(n));
                    assert_eq!(f.server_id, ServerId::new(true, 3, 2, 1), "the zip bit too");
                    assert_eq!(&f.payload[..8], &s.id.0.to_le_bytes(), "no cross-talk");
                    assert_eq!(f.payload[8], n, "in order");
                }
                assert_eq!(s.handle.reason(), None);
                a
            }));
        }
        let mut attached = Vec::new();
        for t in tasks {
            attached.push(t.await.expect("session task"));
        }
        let by_conn = conns_of(&mut b.frames);
        assert_eq!(by_conn.len(), 200);
        let mut per_conn: HashMap<usize, usize> = HashMap::new();
        for c in by_conn.values() {
            *per_conn.entry(*c).or_default() += 1;
        }
        assert_eq!(per_conn.len(), 2, "two links, both used: {per_conn:?}");
        assert!(per_conn.values().all(|n| *n >= 50), "spread: {per_conn:?}");
    }

    #[tokio::test]
    async fn the_backend_hears_of_a_session_before_its_frames_and_nothing_after_its_end() {
        let mut b = backend(false).await;
        let (table, links) = links("t-events");
        let up = upstream("events");
        let mut s1 = Session::new(&table, 1, 8);
        let s2 = Session::new(&table, 2, 8);
        let p = proto(LinkMode::Multiplexed, true);
        let a1 = links
            .attach(&up, b.addr, p, &s1.open())
            .await
            .expect("attach");
        let a2 = links
            .attach(&up, b.addr, p, &s2.open())
            .await
            .expect("attach");
        for n in 0..3 {
            a1.send(&frame(5, &[n])).await.expect("send");
        }
        a2.send(&frame(5, b"x")).await.expect("send");
        for _ in 0..3 {
            s1.recv().await;
        }
        a1.close(CloseReason::ClientIdle);
        drop(a2);
        // A last session after both, so that everything before it has been read.
        let s3 = Session::new(&table, 3, 8);
        let a3 = links
            .attach(&up, b.addr, p, &s3.open())
            .await
            .expect("attach");
        a3.close(CloseReason::Kicked);
        let mut seen: HashMap<i64, Vec<BackendFrame>> = HashMap::new();
        let mut closes = 0;
        while closes < 3 {
            let (_, f) = tokio::time::timeout(Duration::from_secs(10), b.frames.recv())
                .await
                .expect("frames in time")
                .expect("backend running");
            closes += usize::from(f.opcode.as_u8() == OP_SESSION_CLOSE);
            seen.entry(f.session_id).or_default().push(f);
        }
        let ops = |id: i64| -> Vec<u8> { seen[&id].iter().map(|f| f.opcode.as_u8()).collect() };
        assert_eq!(ops(1), [2, 1, 1, 1, 3]);
        assert_eq!(ops(2), [2, 1, 3]);
        assert_eq!(ops(3), [2, 3]);
        let open = &seen[&1][0];
        assert_eq!(
            (open.msg_type, open.server_id, open.object_id),
            (0, ServerId::new(false, 3, 2, 1).0, 1)
        );
        // protocol tcp, IPv4, 10.1.2.3, port 4567, gateway 7.
        let mut want = vec![1, 4, 10, 1, 2, 3];
        want.extend_from_slice(&4567u16.to_le_bytes());
        want.extend_from_slice(&7u16.to_le_bytes());
        assert_eq!(&open.payload[..], &want[..]);
        let code = |id: i64| seen[&id].last().map(|f| f.payload.clone()).unwrap();
        assert_eq!(&code(1)[..], &CloseReason::ClientIdle.code().to_le_bytes());
        assert_eq!(
            &code(2)[..],
            &CloseReason::ClientClosed.code().to_le_bytes()
        );
        assert_eq!(&code(3)[..], &CloseReason::Kicked.code().to_le_bytes());
    }

    #[tokio::test]
    async fn a_backend_kicks_one_session_and_broadcasts_to_several() {
        let b = backend(false).await;
        let (table, links) = links("t-kick");
        let up = upstream("kick");
        let p = BackendProtocol {
            links: 1,
            ..proto(LinkMode::Multiplexed, true)
        };
        let mut s: Vec<Session> = (1..=3).map(|i| Session::new(&table, i, 8)).collect();
        // The backend learns of sessions from their frames.
        let a = attach_and_greet(&links, &up, b.addr, p, &mut s).await;
        a[0].send(&frame(KICK_ME, b"")).await.expect("send");
        assert_eq!(s[0].closed().await, CloseReason::Kicked);
        a[1].send(&frame(BROADCAST, b"news")).await.expect("send");
        for x in &mut s[1..] {
            let f = x.recv().await;
            assert_eq!(
                (f.msg_id, f.server_id.0, &f.payload[..]),
                (77, 0x8000_0001, &b"news"[..])
            );
        }
        // Session 1 was kicked and is still in the table (its task removes it): it got the
        // broadcast queued too, which is the client side's to drop. The others are alive.
        assert_eq!(s[1].handle.reason(), None);
        assert_eq!(s[2].handle.reason(), None);
        a[2].send(&frame(1, b"still")).await.expect("send");
        assert_eq!(&s[2].recv().await.payload[..], b"still");
    }

    /// `events: false` governs what the gateway sends, not what it takes: a kick and a
    /// broadcast from such a backend are acted on (README "Backend links and the zkgate opcodes").
    #[tokio::test]
    async fn a_backend_without_events_still_kicks_and_broadcasts() {
        let mut b = backend(false).await;
        let (table, links) = links("t-quiet-kick");
        let up = upstream("quiet-kick");
        let p = BackendProtocol {
            links: 1,
            ..proto(LinkMode::Multiplexed, false)
        };
        let mut s: Vec<Session> = (1..=2).map(|i| Session::new(&table, i, 8)).collect();
        let a = attach_and_greet(&links, &up, b.addr, p, &mut s).await;
        a[1].send(&frame(BROADCAST, b"news")).await.expect("send");
        for x in &mut s {
            assert_eq!(&x.recv().await.payload[..], b"news");
        }
        a[0].send(&frame(KICK_ME, b"")).await.expect("send");
        assert_eq!(s[0].closed().await, CloseReason::Kicked);
        assert_eq!(s[1].handle.reason(), None);
        // Nothing but Trans went to the backend: it was told of no session.
        while let Ok((_, f)) = b.frames.try_recv() {
            assert_eq!(f.opcode, Opcode::Trans, "{f:?}");
        }
    }

    /// A session on two backends (`route: per_message`) whose one backend dies: only that
    /// attachment says its link died, so only that backend's call is counted as failed.
    #[tokio::test]
    async fn a_session_on_two_backends_knows_which_one_died() {
        let (first, second) = (backend(false).await, backend(false).await);
        let (table, links) = links("t-two");
        let up = upstream("two");
        let p = proto(LinkMode::Multiplexed, false);
        let mut s = Session::new(&table, 1, 8);
        let a = links
            .attach(&up, first.addr, p, &s.open())
            .await
            .expect("a");
        let b = links
            .attach(&up, second.addr, p, &s.open())
            .await
            .expect("b");
        for at in [&a, &b] {
            at.send(&frame(1, b"hi")).await.expect("send");
            s.recv().await;
        }
        b.send(&frame(DIE, b"")).await.expect("send");
        assert_eq!(s.closed().await, CloseReason::BackendGone);
        assert!(b.link_died(), "the second backend's link died");
        assert!(!a.link_died(), "the first backend's link is fine");
    }

    #[tokio::test]
    async fn a_link_that_dies_closes_exactly_its_sessions() {
        for cause in [DIE, GARBAGE] {
            let mut b = backend(false).await;
            let (table, links) = links("t-die");
            let up = upstream("die");
            let p = proto(LinkMode::Multiplexed, false);
            let mut s: Vec<Session> = (1..=6).map(|i| Session::new(&table, i, 8)).collect();
            let mut a = Vec::new();
            for x in s.iter_mut() {
                let at = links
                    .attach(&up, b.addr, p, &x.open())
                    .await
                    .expect("attach");
                at.send(&frame(1, b"hi")).await.expect("send");
                x.recv().await;
                a.push(at);
            }
            let conn = conns_of(&mut b.frames);
            let victim = conn[&1];
            a[0].send(&frame(cause, b"")).await.expect("send");
            for (x, at) in s.iter_mut().zip(&a) {
                if conn[&x.id.0] == victim {
                    assert_eq!(x.closed().await, CloseReason::BackendGone, "{cause:#x}");
                } else {
                    at.send(&frame(2, b"alive")).await.expect("send");
                    assert_eq!(&x.recv().await.payload[..], b"alive");
                    assert_eq!(x.handle.reason(), None);
                }
            }
            // A send on the dead link fails; a new session gets a new connection.
            let dead = a
                .iter()
                .zip(&s)
                .find(|(_, x)| conn[&x.id.0] == victim)
                .unwrap()
                .0;
            assert!(matches!(
                dead.send(&frame(1, b"")).await,
                Err(LinkError::Closed)
            ));
            let mut fresh: Vec<Session> = (7..=8).map(|i| Session::new(&table, i, 8)).collect();
            for x in fresh.iter_mut() {
                let at = links
                    .attach(&up, b.addr, p, &x.open())
                    .await
                    .expect("attach");
                at.send(&frame(3, b"new")).await.expect("send");
                assert_eq!(&x.recv().await.payload[..], b"new");
            }
            let conns = conns_of(&mut b.frames);
            assert!(
                conns.values().any(|c| *c == 3),
                "a third connection: {conns:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_full_client_queue_kicks_only_that_session() {
        let b = backend(false).await;
        let (table, links) = links("t-slowclient");
        let up = upstream("slowclient");
        let p = BackendProtocol {
            links: 1,
            ..proto(LinkMode::Multiplexed, false)
        };
        let slow = Session::new(&table, 1, 4);
        let mut fast = Session::new(&table, 2, 4);
        let a_slow = links
            .attach(&up, b.addr, p, &slow.open())
            .await
            .expect("attach");
        let a_fast = links
            .attach(&up, b.addr, p, &fast.open())
            .await
            .expect("attach");
        a_slow
            .send(&frame(FLOOD, &100u32.to_le_bytes()))
            .await
            .expect("send");
        assert_eq!(slow.closed().await, CloseReason::SlowClient);
        for n in 0..20u8 {
            a_fast.send(&frame(1, &[n])).await.expect("send");
            assert_eq!(fast.recv().await.payload[0], n);
        }
        assert_eq!(fast.handle.reason(), None);
    }

    #[tokio::test]
    async fn a_backend_that_stops_reading_makes_senders_wait_in_bounded_memory() {
        let b = backend(false).await;
        let other = backend(false).await;
        let (table, links) = links("t-slowbackend");
        let up = upstream("slowbackend");
        let p = BackendProtocol {
            links: 1,
            ..proto(LinkMode::Multiplexed, false)
        };
        let stuck = Session::new(&table, 1, 8);
        let a = links
            .attach(&up, b.addr, p, &stuck.open())
            .await
            .expect("attach");
        a.send(&frame(STOP_READING, b"")).await.expect("send");
        let gauge = a.link.metrics.queue_bytes.clone();
        // The kernel's buffers take some megabytes; past them, a send must wait. 64 MiB
        // all accepted would mean an unbounded queue.
        let big = frame(1, &vec![0; 60_000]);
        let mut sent = 0usize;
        let mut blocked = false;
        while sent < 64 << 20 {
            match tokio::time::timeout(Duration::from_secs(1), a.send(&big)).await {
                Ok(r) => r.expect("send"),
                Err(_) => {
                    blocked = true;
                    break;
                }
            }
            sent += big.payload.len();
            assert!(
                gauge.get() as usize <= QUEUE_BYTES,
                "queued {}",
                gauge.get()
            );
        }
        assert!(
            blocked,
            "{sent} bytes accepted by a backend that reads nothing"
        );
        assert!(
            gauge.get() as usize >= QUEUE_BYTES / 2,
            "queued {}",
            gauge.get()
        );
        // Another backend's sessions are not held up.
        let mut free = Session::new(&table, 2, 8);
        let af = links
            .attach(&up, other.addr, p, &free.open())
            .await
            .expect("attach");
        af.send(&frame(1, b"free")).await.expect("send");
        assert_eq!(&free.recv().await.payload[..], b"free");
        // A waiting sender is released with an error when the link ends.
        let waiting = tokio::spawn(async move { a.send(&big).await });
        tokio::task::yield_now().await;
        drop(links);
        let r = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("released")
            .expect("task");
        assert!(matches!(r, Err(LinkError::Closed)), "{r:?}");
        assert_eq!(stuck.closed().await, CloseReason::BackendGone);
        assert_eq!(gauge.get(), 0, "nothing counted as queued on a dead link");
    }

    #[tokio::test]
    async fn per_session_links_are_one_connection_each() {
        let mut b = backend(true).await;
        let (table, links) = links("t-persession");
        let up = upstream("persession");
        let p = proto(LinkMode::PerSession, true);
        let mut s: Vec<Session> = (1..=3).map(|i| Session::new(&table, i, 8)).collect();
        let mut a = Vec::new();
        for x in s.iter_mut() {
            let at = links
                .attach(&up, b.addr, p, &x.open())
                .await
                .expect("attach");
            // The backend answers with SessionID 0: the link's session gets it anyway.
            at.send(&frame(1, &x.id.0.to_le_bytes()))
                .await
                .expect("send");
            assert_eq!(&x.recv().await.payload[..], &x.id.0.to_le_bytes());
            a.push(at);
        }
        let conns = conns_of(&mut b.frames);
        let mut distinct: Vec<usize> = conns.values().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "{conns:?}");
        // A session's end closes its connection after the SessionClose.
        let first = a.remove(0);
        first.close(CloseReason::ClientClosed);
        let (conn, f) = b.frames.recv().await.expect("frame");
        assert_eq!((conn, f.opcode.as_u8()), (conns[&1], OP_SESSION_CLOSE));
        // The backend ending a connection closes that session only.
        a[0].send(&frame(DIE, b"")).await.expect("send");
        assert_eq!(s[1].closed().await, CloseReason::BackendGone);
        a[1].send(&frame(1, b"on")).await.expect("send");
        assert_eq!(&s[2].recv().await.payload[..], b"on");
        assert_eq!(s[2].handle.reason(), None);
        assert_eq!(
            s[0].handle.reason(),
            None,
            "closed by its client, not the link"
        );
    }

    #[tokio::test]
    async fn the_links_of_a_backend_gone_are_forgotten() {
        let (table, links) = links("t-sweep");
        let up = upstream("sweep");
        let p = proto(LinkMode::Multiplexed, false);
        let gone = backend(false).await;
        let mut s = Session::new(&table, 1, 8);
        let a = links
            .attach(&up, gone.addr, p, &s.open())
            .await
            .expect("attach");
        a.send(&frame(1, b"x")).await.expect("send");
        s.recv().await;
        a.send(&frame(DIE, b"")).await.expect("send");
        assert_eq!(s.closed().await, CloseReason::BackendGone);
        // Held by its session, the pool stays; once the session let go, a new backend sweeps it.
        let other = backend(false).await;
        let s2 = Session::new(&table, 2, 8);
        let a2 = links
            .attach(&up, other.addr, p, &s2.open())
            .await
            .expect("attach");
        assert_eq!(lock(&links.pools).len(), 2);
        drop(a);
        let third = backend(false).await;
        let s3 = Session::new(&table, 3, 8);
        let _a3 = links
            .attach(&up, third.addr, p, &s3.open())
            .await
            .expect("attach");
        let pools = lock(&links.pools);
        let mut left: Vec<SocketAddr> = pools.keys().map(|k| k.backend).collect();
        left.sort();
        let mut want = vec![other.addr, third.addr];
        want.sort();
        assert_eq!(left, want, "the live backends' pools only");
        drop(a2);
    }

    #[tokio::test]
    async fn a_link_no_session_uses_is_closed_after_the_idle_timeout() {
        let mut b = backend(false).await;
        let (table, links) = links("t-idle");
        // The upstream's idle_timeout is 1 s.
        let up = upstream("idle");
        let p = proto(LinkMode::Multiplexed, true);
        let mut s = Session::new(&table, 1, 8);
        let a = links
            .attach(&up, b.addr, p, &s.open())
            .await
            .expect("attach");
        a.send(&frame(1, b"x")).await.expect("send");
        s.recv().await;
        drop(a);
        loop {
            let (conn, f) = tokio::time::timeout(Duration::from_secs(10), b.frames.recv())
                .await
                .expect("the idle link closed in time")
                .expect("backend running");
            if f.opcode.as_u8() == EOF_SEEN {
                assert_eq!(conn, 1);
                break;
            }
        }
        // The next session connects anew.
        let mut s2 = Session::new(&table, 2, 8);
        let a2 = links
            .attach(&up, b.addr, p, &s2.open())
            .await
            .expect("attach");
        a2.send(&frame(1, b"y")).await.expect("send");
        assert_eq!(&s2.recv().await.payload[..], b"y");
        assert_eq!(s2.handle.reason(), None);
    }

    #[tokio::test]
    async fn an_unreachable_backend_is_a_connect_error() {
        // A port that was just free: nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let (table, links) = links("t-unreachable");
        let up = upstream("unreachable");
        let s = Session::new(&table, 1, 8);
        for mode in [LinkMode::Multiplexed, LinkMode::PerSession] {
            let r = links.attach(&up, addr, proto(mode, true), &s.open()).await;
            assert!(matches!(r, Err(LinkError::Connect(_))), "{r:?}");
        }
    }
}
