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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
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

/// Links of one backend speaking one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
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
    /// The least loaded slot, ties going to the one of the session's id.
    fn choose(&self, id: SessionId) -> Arc<Slot> {
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
        self.slots[best].clone()
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
                (link, None)
            }
            LinkMode::Multiplexed => {
                let slot = self.pool(backend, proto).choose(open.id);
                let link = self.link_in(&slot, upstream, backend, proto).await?;
                (link, Some(slot))
            }
        };
        if !link.join(open.id) {
            return Err(LinkError::Closed);
        }
        if let Some(slot) = &slot {
            slot.load.fetch_add(1, Ordering::Relaxed);
        }
        let mut attached = Attached {
            link,
            slot,
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

    fn pool(&self, backend: SocketAddr, proto: BackendProtocol) -> Arc<Pool> {
        let key = PoolKey {
            backend,
            gate: proto.gate.size(),
            events: proto.events,
            max_frame: proto.max_frame,
            links: proto.links.max(1),
        };
        lock(&self.pools)
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Pool {
                    slots: (0..key.links).map(|_| Arc::default()).collect(),
                })
            })
            .clone()
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
        let writer = tokio::spawn(write_loop(link.clone(), write, write_timeout));
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
    sessions: Mutex<HashSet<i64>>,
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
        let gate = self.codec.form().size();
        let len = SERVER_HEADER + gate + frame.payload.len();
        let permits = self.room_for(len).await?;
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
        let sessions = {
            let mut sessions = lock(&self.sessions);
            if self.dead.swap(true, Ordering::AcqRel) {
                return;
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

async fn write_loop(link: Arc<Link>, mut write: OwnedWriteHalf, timeout: Option<Duration>) {
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
                link.wake.notified().await;
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
    slot: Option<Arc<Slot>>,
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

    pub fn backend(&self) -> SocketAddr {
        self.link.backend
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
        if let Some(slot) = &self.slot {
            slot.load.fetch_sub(1, Ordering::Relaxed);
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
