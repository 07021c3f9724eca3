//! The game listener's Pingora `ServerApp`: one task per client connection, from the accept to
//! the session's end.
//!
//! A connection goes through admission (the listener cap, then the PROXY header when the
//! listener takes one, then the allowlist and the per-address limits on the client's real
//! address), sniffing (binary framing, a WebSocket upgrade, or plain HTTP which gets 426), and
//! its first frame within `first_frame_timeout`. The first frame's ServerID picks a rule, the
//! rule's upstream a backend (through the protocol-neutral upstream call, kept for the
//! session's life so that least_conn counts sessions), and the session is attached to a link
//! to that backend and registered in the session table. Then one loop: client frames go to the
//! link, the session's queue is written to the client (what is queued, in one write), and one
//! timer holds the idle, duration, drain and periodic-log deadlines, moved only when it fires.
//!
//! A stop (SIGTERM, or SIGQUIT after the handover) closes a connection still being sniffed,
//! and tells one that awaits its first frame to go, giving it the drain window a session gets.
//!
//! Memory per connection: the task's future, one read buffer that starts at 512 bytes and grows
//! only for a bigger frame, one write buffer, the queue. Pingora's own per-connection buffers
//! are off (`L4BufferSettings::unbuffered`).

use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BufMut, BytesMut};
use futures::{Sink, Stream as _};
use pingora::apps::ServerApp;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::admission::{allowed, Admission, PerIpLimits, Refused};
use super::codec::{ClientCodec, ClientFrame, ServerId, CLIENT_HEADER};
use super::config::GameSettings;
use super::link::{Attached, LinkError, Links, SessionOpen};
use super::metrics::{Direction, GameMetrics};
use super::rules::{RouteMode, Rule};
use super::session::{Inbox, SessionHandle, SessionTable};
use super::sniff::{self, Sniffed};
use super::{ws, ClientProtocol, CloseReason, IdGen, SessionId};
use crate::conn::log::{suppressed_note, LogLimiter};
use crate::conn::proxy_protocol::{self, Carried, ProxyProtocol, ReadError};
use crate::upstream::call::{Outcome, Refusal, Settled};

/// Where a connection finds the listener's settings in force: the serving config's listener of
/// this name, so that rules, upstreams and limits follow reloads. `None` when a reload dropped
/// the listener (it keeps serving until a restart; the last settings stand).
pub type SettingsSource = Arc<dyn Fn() -> Option<Arc<GameSettings>> + Send + Sync>;

/// What a connection's read buffer starts at: a usual first frame fits.
const READ_START: usize = 512;
/// Bytes of queued frames coalesced into one write to the client.
const COALESCE: usize = 64 * 1024;
/// A write buffer that grew past this is let go once written, not kept for an idle session.
const WRITE_KEEP: usize = 16 * 1024;
/// A session whose client sent nothing for this long lets its empty buffers go: an idle
/// session then holds no read or write buffer, and the next bytes get one again.
const TRIM_IDLE: Duration = Duration::from_secs(10);
/// How long a closing session waits for its close frame (and what was queued before it) to be
/// written to a client that may still read.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// Attempts at a backend for a new session (the first one and two others).
const CONNECT_ATTEMPTS: u8 = 3;
/// Ten seconds between two warnings of one kind on one listener.
const LOG_EVERY: u64 = 10_000_000_000;

/// The listener's service: [`GameApp`] on `addr`, with no Pingora read or write buffer.
pub fn service(
    listener: &str,
    addr: SocketAddr,
    proxy_protocol: Option<ProxyProtocol>,
    first: Arc<GameSettings>,
    settings: SettingsSource,
) -> Service<GameApp> {
    let app = GameApp::new(listener, proxy_protocol, first, settings);
    let mut svc = Service::new(format!("game {listener}"), app);
    svc.add_listener(
        ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::unbuffered()),
    );
    svc
}

/// What a game listener still has open: a stopping process exits once it is nothing.
#[derive(Clone)]
pub struct Pending {
    admission: Arc<Admission>,
    links: Arc<Links>,
}

impl Pending {
    /// Connections open, sessions or not yet.
    pub fn connections(&self) -> u32 {
        self.admission.open()
    }

    /// Bytes queued toward backends and not written yet.
    pub fn queued_bytes(&self) -> i64 {
        self.links.queued_bytes()
    }
}

/// The kinds of warning rate-limited per listener.
#[derive(Clone, Copy)]
enum Warn {
    Refused = 0,
    Malformed,
    Route,
}

/// One game listener: what lasts across its connections and across reloads.
pub struct GameApp {
    listener: Arc<str>,
    settings: SettingsSource,
    /// The settings at start: what serves if the listener leaves the config.
    first: Arc<GameSettings>,
    proxy_protocol: Option<ProxyProtocol>,
    admission: Arc<Admission>,
    table: Arc<SessionTable>,
    links: Arc<Links>,
    metrics: Arc<GameMetrics>,
    ids: IdGen,
    gateway_id: u16,
    logs: [LogLimiter; 3],
}

impl GameApp {
    pub fn new(
        listener: &str,
        proxy_protocol: Option<ProxyProtocol>,
        first: Arc<GameSettings>,
        settings: SettingsSource,
    ) -> GameApp {
        let table = Arc::new(SessionTable::new());
        let metrics = Arc::new(GameMetrics::new(listener));
        let links = Links::new(table.clone(), metrics.clone());
        GameApp {
            listener: listener.into(),
            gateway_id: first.gateway_id,
            // The session ids' gateway part is fixed at start: ids stay unique and monotonic.
            ids: IdGen::new(first.gateway_id),
            first,
            settings,
            proxy_protocol,
            admission: Arc::new(Admission::new()),
            table,
            links,
            metrics,
            logs: [
                LogLimiter::new(LOG_EVERY),
                LogLimiter::new(LOG_EVERY),
                LogLimiter::new(LOG_EVERY),
            ],
        }
    }

    /// The sessions of this listener.
    pub fn table(&self) -> &Arc<SessionTable> {
        &self.table
    }

    /// What this listener leaves open, for a stopping process to wait on.
    pub fn pending(&self) -> Pending {
        Pending {
            admission: self.admission.clone(),
            links: self.links.clone(),
        }
    }

    fn current(&self) -> Arc<GameSettings> {
        (self.settings)().unwrap_or_else(|| self.first.clone())
    }

    /// A warning, at most one of its kind per ten seconds.
    fn warn(&self, kind: Warn, line: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.logs[kind as usize].allow(crate::conn::clock::now()) {
            log::warn!(
                "game listener {}: {line}{}",
                self.listener,
                suppressed_note(suppressed)
            );
        }
    }

    fn refuse(&self, reason: &'static str, peer: Option<IpAddr>, why: &str) {
        self.metrics.refused(reason);
        let peer = peer.map_or_else(|| "a client".to_owned(), |p| format!("client {p}"));
        self.warn(
            Warn::Refused,
            format_args!("refused the connection of {peer}, which {why}"),
        );
    }
}

#[async_trait]
impl ServerApp for GameApp {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let accepted = Instant::now();
        let settings = self.current();
        let peer = peer_addr(&io);
        let _slot = match self.admission.admit(settings.max_sessions) {
            Ok(slot) => slot,
            Err(r) => {
                self.refuse(r.as_str(), peer.map(|p| p.ip()), r.describe());
                return None;
            }
        };
        let mut io = io;
        let client = match &self.proxy_protocol {
            Some(pp) => self.proxy_header(&mut io, pp, peer, accepted).await?,
            None => peer?,
        };
        if !allowed(&settings.allow, client.ip()) {
            let r = Refused::NotAllowed;
            self.refuse(r.as_str(), Some(client.ip()), r.describe());
            return None;
        }
        let limits = PerIpLimits {
            concurrent: settings.per_ip_concurrent,
            per_second: settings.per_ip_per_second,
        };
        let now_ns = crate::clock::now_ms().saturating_mul(1_000_000);
        let _ip_slot = match self.admission.admit_ip(client.ip(), limits, now_ns) {
            Ok(slot) => slot,
            Err(r) => {
                self.refuse(r.as_str(), Some(client.ip()), r.describe());
                return None;
            }
        };
        let deadline = accepted + settings.first_frame_timeout;
        let mut stop = shutdown.clone();
        // A connection whose protocol is not known yet cannot be told to go: a stopping
        // gateway closes it.
        let sniffed = tokio::select! {
            // Boxed, as the other cold paths: the session's task keeps only its loop's state.
            front = tokio::time::timeout_at(deadline, Box::pin(self.front(io, &settings, client))) => front,
            _ = stop.wait_for(|s| *s) => return None,
        };
        let (wire, buf) = match sniffed {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(_) => {
                self.metrics.refused("first_frame_timeout");
                return None;
            }
        };
        let first = self.first_frame(wire, buf, &settings, client, deadline, shutdown);
        let (wire, buf, first, drain_until) = Box::pin(first).await?;
        let front = Front {
            first,
            client,
            accepted,
            drain_until,
        };
        Session::run(self, settings, wire, buf, front, shutdown).await;
        None
    }
}

/// The peer's address as Pingora's socket digest has it (the client's, once a PROXY header
/// replaced it).
fn peer_addr(io: &Stream) -> Option<SocketAddr> {
    io.get_socket_digest()?.peer_addr()?.as_inet().copied()
}

impl GameApp {
    /// Reads the PROXY header of a connection from `peer`: the client's address, or `None` when
    /// the connection is to be closed (counted and, rate-limited, logged).
    async fn proxy_header(
        &self,
        io: &mut Stream,
        pp: &ProxyProtocol,
        peer: Option<SocketAddr>,
        accepted: Instant,
    ) -> Option<SocketAddr> {
        let peer_ip = peer.map(|p| p.ip());
        if !peer_ip.is_some_and(|ip| pp.trusts(ip)) {
            self.refuse(
                "proxy_protocol",
                peer_ip,
                "is not in proxy_protocol.trusted",
            );
            return None;
        }
        let mut header = Vec::new();
        let read = proxy_protocol::read_header(io, pp.versions, &mut header);
        let why = match tokio::time::timeout_at(accepted + pp.timeout, read).await {
            Err(_) => "did not send its PROXY protocol header in time".to_owned(),
            Ok(Err(ReadError::Gone)) => return None,
            Ok(Err(ReadError::Malformed(m))) => format!("sent {m}"),
            Ok(Ok(())) => match proxy_protocol::parse(&header) {
                Ok(Carried::Own) => return peer,
                Ok(Carried::Client {
                    source,
                    destination,
                }) => {
                    proxy_protocol::carry(io, source, destination);
                    return Some(source);
                }
                Err(m) => format!("sent {m}"),
            },
        };
        self.refuse("proxy_protocol", peer_ip, &why);
        None
    }

    /// Sniffs the connection: its wire, binary or WebSocket, with what was read of it. `None`:
    /// the connection is done (plain HTTP answered 426, a refused handshake, or the client left).
    async fn front(
        &self,
        io: Stream,
        settings: &GameSettings,
        client: SocketAddr,
    ) -> Option<(Wire, BytesMut)> {
        let mut wire = Wire::Tcp(io);
        let mut buf = BytesMut::with_capacity(READ_START);
        loop {
            match sniff::sniff(&buf) {
                Sniffed::Need => {}
                Sniffed::Binary => break,
                Sniffed::Http => {
                    wire = self.http(wire, &mut buf, settings, client).await?;
                    break;
                }
            }
            if fill(&mut wire, &mut buf).await.ok()? == 0 {
                return None;
            }
        }
        Some((wire, buf))
    }

    /// Reads the first frame of a client whose protocol is known, until `deadline`. A stop
    /// meanwhile tells the client to go (the go-away frame) and gives it the drain window, as
    /// an open session gets: a first frame within it (and the deadline) starts a session whose
    /// window runs on (the instant it ends comes back with the frame); at its end the client
    /// gets the close frame (`shutdown`). `None`: the connection is done.
    async fn first_frame(
        &self,
        mut wire: Wire,
        mut buf: BytesMut,
        settings: &GameSettings,
        client: SocketAddr,
        deadline: Instant,
        shutdown: &ShutdownWatch,
    ) -> Option<(Wire, BytesMut, ClientFrame, Option<Instant>)> {
        enum Wake {
            Read(io::Result<usize>),
            Stopping,
            Deadline,
        }
        let codec = ClientCodec::new(settings.max_frame);
        let mut stop = shutdown.clone();
        let mut stopping = pin!(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let mut timer = pin!(tokio::time::sleep_until(deadline));
        let mut drain_until = None;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(first)) => return Some((wire, buf, first, drain_until)),
                Ok(None) => {}
                Err(e) => {
                    // Not a session yet: counted with the sessions closed for it.
                    self.metrics.closed(CloseReason::Malformed);
                    self.malformed(client, &e);
                    return None;
                }
            }
            let wake = poll_fn(|cx| {
                if let Poll::Ready(r) = wire.poll_fill(cx, &mut buf) {
                    return Poll::Ready(Wake::Read(r));
                }
                if drain_until.is_none() && stopping.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Stopping);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Deadline);
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Read(Ok(0) | Err(_)) => return None,
                Wake::Read(Ok(_)) => {}
                Wake::Stopping => {
                    let until = Instant::now() + settings.drain;
                    drain_until = Some(until);
                    let mut out = BytesMut::new();
                    put_gateway_frame(
                        &mut out,
                        settings.go_away_message_id,
                        &drain_ms(settings.drain).to_le_bytes(),
                    );
                    if !write_within(&mut wire, &mut out, CLOSE_FLUSH).await {
                        return None;
                    }
                    if until < deadline {
                        timer.as_mut().reset(until);
                    }
                }
                Wake::Deadline => {
                    if drain_until.is_some_and(|u| u <= Instant::now()) {
                        let mut out = BytesMut::new();
                        let reason = CloseReason::Shutdown;
                        put_gateway_frame(
                            &mut out,
                            settings.close_message_id,
                            &reason.code().to_le_bytes(),
                        );
                        if write_within(&mut wire, &mut out, CLOSE_FLUSH).await {
                            let _ = tokio::time::timeout(CLOSE_FLUSH, wire.shutdown()).await;
                        }
                        self.metrics.closed(reason);
                    } else {
                        self.metrics.refused("first_frame_timeout");
                    }
                    return None;
                }
            }
        }
    }

    /// An HTTP request on the game port: a WebSocket upgrade becomes the session's wire, any
    /// other request gets 426.
    async fn http(
        &self,
        wire: Wire,
        buf: &mut BytesMut,
        settings: &GameSettings,
        client: SocketAddr,
    ) -> Option<Wire> {
        let Wire::Tcp(mut io) = wire else {
            return None;
        };
        let head = loop {
            if let Some(n) = sniff::head_len(buf) {
                break n;
            }
            if buf.len() >= sniff::MAX_HEAD {
                self.refuse("http", Some(client.ip()), "sent a request head over 8 KiB");
                return None;
            }
            if fill_tcp(&mut io, buf).await.ok()? == 0 {
                return None;
            }
        };
        let request = sniff::request(&buf[..head]);
        match request {
            sniff::Request::WebSocket { key } if settings.websocket => {
                buf.advance(head);
                let rest = buf.split().to_vec();
                match ws::accept(io, &key, rest, settings.max_frame).await {
                    Ok(s) => Some(Wire::Ws(Box::new(WsWire {
                        ws: s,
                        flushing: false,
                    }))),
                    Err(_) => {
                        self.metrics.refused("handshake");
                        None
                    }
                }
            }
            _ => {
                // Plain HTTP, or an upgrade on a listener without `websocket`: 426, then close.
                self.metrics.refused("http");
                let _ = io.write_all(ws::UPGRADE_REQUIRED).await;
                let _ = io.flush().await;
                let _ = io.shutdown().await;
                None
            }
        }
    }

    fn malformed(&self, client: SocketAddr, why: &dyn std::fmt::Display) {
        self.warn(
            Warn::Malformed,
            format_args!(
                "closed the connection of client {client}, which sent a malformed frame: {why}"
            ),
        );
    }
}

/// A client connection after sniffing: the plain stream, or WebSocket framing over it.
enum Wire {
    Tcp(Stream),
    /// Boxed: WebSocket clients are the fewer, and the plain case keeps a small future.
    Ws(Box<WsWire>),
}

struct WsWire {
    ws: WebSocketStream<Stream>,
    /// A message was handed to the sink and is not flushed yet (or a pong is owed).
    flushing: bool,
}

/// Reads once more from a plain stream into `buf`, growing it a step when it is nearly full.
/// A buffer an idle session let go ([`TRIM_IDLE`]) is not taken back to wait: the read goes
/// to the stack, and only bytes that came get a buffer.
fn poll_fill_tcp(
    io: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        let mut stack = [0u8; READ_START];
        let mut read = tokio::io::ReadBuf::new(&mut stack);
        return match Pin::new(io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n > 0 {
                    buf.reserve(READ_START);
                    buf.extend_from_slice(read.filled());
                }
                Poll::Ready(Ok(n))
            }
            other => other.map_ok(|()| 0),
        };
    }
    if buf.capacity() - buf.len() < READ_START / 2 {
        buf.reserve(READ_START);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

async fn fill_tcp(io: &mut Stream, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| poll_fill_tcp(io, cx, buf)).await
}

/// Reads once more into `buf`: the bytes read (0 at the end of the client's stream).
async fn fill(wire: &mut Wire, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| wire.poll_fill(cx, buf)).await
}

impl Wire {
    fn protocol(&self) -> ClientProtocol {
        match self {
            Wire::Tcp(_) => ClientProtocol::Tcp,
            Wire::Ws(_) => ClientProtocol::WebSocket,
        }
    }

    /// Appends what the client sent next to `buf`: Ready(Ok(0)) at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        match self {
            Wire::Tcp(io) => poll_fill_tcp(io, cx, buf),
            Wire::Ws(w) => loop {
                let msg = match Pin::new(&mut w.ws).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => return Poll::Ready(Ok(0)),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e))),
                    Poll::Ready(Some(Ok(m))) => m,
                };
                match msg {
                    Message::Binary(b) if !b.is_empty() => {
                        buf.extend_from_slice(&b);
                        return Poll::Ready(Ok(b.len()));
                    }
                    Message::Binary(_) | Message::Pong(_) | Message::Frame(_) => {}
                    // tungstenite queued the pong (or the close reply): flushed with the writes.
                    Message::Ping(_) => w.flushing = true,
                    Message::Close(_) => return Poll::Ready(Ok(0)),
                    Message::Text(_) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a text message (the game framing travels in binary messages)",
                        )))
                    }
                }
            },
        }
    }

    /// Writes `out` (as one binary message on a WebSocket) and flushes: Ready(Ok) once all of it
    /// is with the kernel.
    fn poll_write_out(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<io::Result<()>> {
        match self {
            Wire::Tcp(io) => {
                while !out.is_empty() {
                    match Pin::new(&mut *io).poll_write(cx, out) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(n)) => out.advance(n),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    }
                }
                Pin::new(&mut *io).poll_flush(cx)
            }
            Wire::Ws(w) => {
                if !out.is_empty() {
                    match Pin::new(&mut w.ws).poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                        Poll::Ready(Ok(())) => {}
                    }
                    let msg = Message::Binary(out.split().freeze());
                    if let Err(e) = Pin::new(&mut w.ws).start_send(msg) {
                        return Poll::Ready(Err(io::Error::other(e)));
                    }
                    w.flushing = true;
                }
                if w.flushing {
                    match Pin::new(&mut w.ws).poll_flush(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                        Poll::Ready(Ok(())) => w.flushing = false,
                    }
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Ends the connection politely: a WebSocket close, a TCP FIN. Bounded by the caller.
    async fn shutdown(&mut self) {
        match self {
            Wire::Tcp(io) => {
                let _ = io.shutdown().await;
            }
            Wire::Ws(w) => {
                let _ = futures::SinkExt::close(&mut w.ws).await;
            }
        }
    }
}

/// The client side of an open session's output: frames from its queue, coalesced, written.
struct Output {
    rx: Inbox,
    out: BytesMut,
    frames: u64,
    bytes: u64,
    /// When the backend last sent this session a frame.
    last: Instant,
}

impl Output {
    /// The session's queue, nothing written yet; the backend counts as heard from `now`.
    fn new(rx: Inbox, now: Instant) -> Output {
        Output {
            rx,
            out: BytesMut::new(),
            frames: 0,
            bytes: 0,
            last: now,
        }
    }

    /// Moves queued frames to the client until the queue is empty and everything is written
    /// (Pending then), or the client fails (Ready with the error). Never Ready otherwise.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        wire: &mut Wire,
        traffic: &Traffic<'_>,
    ) -> Poll<io::Error> {
        loop {
            let mut got = false;
            while self.out.len() < COALESCE {
                match self.rx.poll_recv(cx) {
                    Poll::Ready(frame) => {
                        self.take(&frame, traffic);
                        got = true;
                    }
                    _ => break,
                }
            }
            if got {
                self.last = Instant::now();
            }
            match wire.poll_write_out(cx, &mut self.out) {
                Poll::Ready(Err(e)) => return Poll::Ready(e),
                Poll::Ready(Ok(())) => {
                    if self.out.capacity() > WRITE_KEEP {
                        self.out = BytesMut::new();
                    }
                    if !got {
                        return Poll::Pending;
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn take(&mut self, frame: &[u8], traffic: &Traffic<'_>) {
        self.out.extend_from_slice(frame);
        let payload = frame.len().saturating_sub(CLIENT_HEADER) as u64;
        self.frames += 1;
        self.bytes += payload;
        traffic.to_client.messages.inc();
        traffic.to_client.bytes.inc_by(payload);
    }

    /// Appends a frame of the gateway's own (close, go-away).
    fn push(&mut self, msg_id: u16, payload: &[u8]) {
        put_gateway_frame(&mut self.out, msg_id, payload);
    }
}

/// Appends a frame of the gateway's own (close, go-away) to `out`: ServerID 0.
fn put_gateway_frame(out: &mut BytesMut, msg_id: u16, payload: &[u8]) {
    out.reserve(CLIENT_HEADER + payload.len());
    out.put_u16_le(payload.len() as u16);
    out.put_u16_le(msg_id);
    out.put_u32_le(0);
    out.put_slice(payload);
}

/// The go-away frame's payload: the drain window in ms.
fn drain_ms(drain: Duration) -> u32 {
    u32::try_from(drain.as_millis()).unwrap_or(u32::MAX)
}

/// Writes `out` to the client within `wait`: `false` when it could not.
async fn write_within(wire: &mut Wire, out: &mut BytesMut, wait: Duration) -> bool {
    let write = poll_fn(|cx| wire.poll_write_out(cx, out));
    matches!(tokio::time::timeout(wait, write).await, Ok(Ok(())))
}

/// The counters of the session's serverType toward the client (resolved once).
struct Traffic<'a> {
    to_client: &'a super::metrics::Traffic,
}

/// One backend a session is attached to, with the call that picked it.
struct Route {
    rule: Arc<Rule>,
    attached: Attached,
    call: Settled,
}

/// What woke the session's loop.
enum Event {
    /// Bytes from the client (0: it closed).
    Input(io::Result<usize>),
    /// A write to the client failed.
    Output,
    Closed(CloseReason),
    Timer,
    Stopping,
}

/// An open session.
struct Session<'a> {
    app: &'a GameApp,
    settings: Arc<GameSettings>,
    id: SessionId,
    client: SocketAddr,
    protocol: ClientProtocol,
    timers: Timers,
    routes: Vec<Route>,
    /// The first route's backend and rule, for the log lines (kept once the routes are closed).
    backend: Option<SocketAddr>,
    rule: Option<Arc<str>>,
    frames_in: u64,
    bytes_in: u64,
}

/// A session's deadlines, behind its one timer: idle per direction, the hard cap, the drain
/// window and the periodic log line. Activity only moves a deadline later, so the timer is
/// armed at the earliest and, when it fires, [`Timers::expired`] tells whether anything really
/// passed, and the timer is armed again at [`Timers::deadline`]: no timer work per frame.
#[derive(Debug, Clone)]
struct Timers {
    client_idle: Option<Duration>,
    backend_idle: Option<Duration>,
    max_duration: Option<Duration>,
    log_every: Option<Duration>,
    started: Instant,
    /// The client's last frame.
    last_in: Instant,
    /// The session holds buffers: let go [`TRIM_IDLE`] after the client's last bytes.
    holding: bool,
    drain_until: Option<Instant>,
    next_log: Option<Instant>,
}

impl Timers {
    fn new(s: &GameSettings, started: Instant, now: Instant) -> Timers {
        Timers {
            client_idle: s.client_idle,
            backend_idle: s.backend_idle,
            max_duration: s.max_session_duration,
            log_every: s.log_every,
            started,
            last_in: now,
            holding: false,
            drain_until: None,
            next_log: s.log_every.map(|e| now + e),
        }
    }

    /// The earliest deadline, with the backend's last frame at `last_out` (a day away when
    /// none is set: the timer then only wakes to look again).
    fn deadline(&self, last_out: Instant, now: Instant) -> Instant {
        [
            self.client_idle.map(|d| self.last_in + d),
            self.backend_idle.map(|d| last_out + d),
            self.max_duration.map(|d| self.started + d),
            self.drain_until,
            self.next_log,
            self.holding.then(|| self.last_in + TRIM_IDLE),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_secs(24 * 3600))
    }

    /// The deadline that passed by `now`, if one did.
    fn expired(&self, last_out: Instant, now: Instant) -> Option<CloseReason> {
        if self.drain_until.is_some_and(|t| t <= now) {
            return Some(CloseReason::Shutdown);
        }
        if self.max_duration.is_some_and(|d| self.started + d <= now) {
            return Some(CloseReason::MaxDuration);
        }
        if self.client_idle.is_some_and(|d| self.last_in + d <= now) {
            return Some(CloseReason::ClientIdle);
        }
        if self.backend_idle.is_some_and(|d| last_out + d <= now) {
            return Some(CloseReason::BackendIdle);
        }
        None
    }

    /// Whether the session's buffers are to be let go at `now` (then they count as gone: the
    /// timer does not come back for them until the client sends again).
    fn trim_due(&mut self, now: Instant) -> bool {
        if self.holding && self.last_in + TRIM_IDLE <= now {
            self.holding = false;
            return true;
        }
        false
    }

    /// Whether a periodic log line is due at `now`; the next one is then a period away.
    fn log_due(&mut self, now: Instant) -> bool {
        if self.next_log.is_some_and(|t| t <= now) {
            self.next_log = self.log_every.map(|e| now + e);
            return true;
        }
        false
    }
}

/// What a connection brings to its session: its first frame, the client's address, when it
/// was accepted, and the end of the drain window when a stop told it to go before that frame.
struct Front {
    first: ClientFrame,
    client: SocketAddr,
    accepted: Instant,
    drain_until: Option<Instant>,
}

/// How a route could not be made.
enum NoRoute {
    NoRule,
    Refused(Refusal),
    Unreachable,
}

impl NoRoute {
    fn as_str(&self) -> &'static str {
        match self {
            NoRoute::NoRule => "no_rule",
            NoRoute::Refused(Refusal::CircuitOpen) => "circuit_open",
            NoRoute::Refused(Refusal::NoBackend) => "no_backend",
            NoRoute::Refused(Refusal::Unreachable) | NoRoute::Unreachable => "unreachable",
        }
    }
}

impl<'a> Session<'a> {
    /// The session from its first frame to its end. Its state is set up before the future is
    /// made, and the future owns it directly: an `async fn`'s parameters would each be kept
    /// twice (as given and as bound) for the session's whole life.
    fn run(
        app: &'a GameApp,
        settings: Arc<GameSettings>,
        wire: Wire,
        buf: BytesMut,
        front: Front,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = ()> + 'a {
        let Front {
            first,
            client,
            accepted,
            drain_until,
        } = front;
        let now = Instant::now();
        let mut buf = buf;
        if buf.is_empty() {
            // The usual first frame came alone: the session waits for its next one without a
            // buffer (the next bytes get one, see `poll_fill_tcp`).
            buf = BytesMut::new();
        }
        let mut s = Session {
            app,
            id: app.ids.next(),
            client,
            protocol: wire.protocol(),
            timers: Timers::new(&settings, accepted, now),
            routes: Vec::with_capacity(1),
            backend: None,
            rule: None,
            frames_in: 0,
            bytes_in: 0,
            settings,
        };
        s.timers.holding = buf.capacity() > 0;
        s.timers.drain_until = drain_until;
        let (handle, rx) = SessionHandle::new(s.settings.queue);
        // The session is in the table before its backend hears of it: an answer to SessionOpen
        // or to the first frame finds it.
        app.table.insert(s.id, handle);
        let mut wire = wire;
        async move {
            let mut out = Output::new(rx, now);
            if let Err(e) = s.route(first.server_id).await {
                app.metrics.route_error(e.as_str());
                app.warn(
                    Warn::Route,
                    format_args!(
                        "client {}: no backend for serverType {} world {} ({})",
                        s.client,
                        first.server_id.server_type(),
                        first.server_id.world(),
                        e.as_str()
                    ),
                );
                app.table.remove(s.id);
                out.push(
                    s.settings.close_message_id,
                    &CloseReason::NoRoute.code().to_le_bytes(),
                );
                Box::pin(close_wire(&mut wire, &mut out, CLOSE_FLUSH)).await;
                app.metrics.closed(CloseReason::NoRoute);
                s.log_line("closed", Some(CloseReason::NoRoute), &out);
                return;
            }
            let server_type = s.routes[0].rule.server_type;
            let traffic = Traffic {
                to_client: app.metrics.traffic(Direction::ToClient, server_type),
            };
            app.metrics.opened(s.protocol.as_str());
            app.metrics.active.inc();
            let forwarded = s.forward(&first, &mut wire, &mut out, &traffic).await;
            // Its payload is a view of the buffer it was read into: let go of both now, or an
            // idle session keeps them for its life.
            drop(first);
            let reason = match forwarded {
                Some(r) => r,
                None => {
                    s.pump(&mut wire, &mut buf, &mut out, &traffic, shutdown)
                        .await
                }
            };
            Box::pin(s.end(reason, wire, out)).await;
        }
    }

    /// Attaches the session to a backend for `server_id`'s rule, unless one is attached for
    /// it already (per-message routing): the index of its route.
    async fn route(&mut self, server_id: ServerId) -> Result<usize, NoRoute> {
        let rule = {
            let rules = self.settings.current_rules();
            let rule = rules.route(server_id).ok_or(NoRoute::NoRule)?;
            if let Some(i) = self.routes.iter().position(|r| Arc::ptr_eq(&r.rule, rule)) {
                return Ok(i);
            }
            rule.clone()
        };
        // Boxed: connecting is a cold path with a large future, which would otherwise be part
        // of every session's task for its whole life.
        Box::pin(self.attach(rule, server_id)).await
    }

    async fn attach(&mut self, rule: Arc<Rule>, server_id: ServerId) -> Result<usize, NoRoute> {
        let mut call = rule.upstream.begin().map_err(NoRoute::Refused)?;
        let open = SessionOpen {
            id: self.id,
            client: self.client,
            protocol: self.protocol,
            server_id,
            gateway_id: self.app.gateway_id,
        };
        loop {
            let backend = match rule.pick(&mut call, server_id) {
                Ok(b) => b,
                Err(r) => {
                    let outcome = if call.tries() > 0 {
                        Outcome::BackendFailed
                    } else {
                        Outcome::Failed
                    };
                    call.finish(outcome);
                    return Err(NoRoute::Refused(r));
                }
            };
            match self
                .app
                .links
                .attach(&rule.upstream, backend, rule.backend, &open)
                .await
            {
                Ok(attached) => {
                    if self.routes.is_empty() {
                        self.backend = Some(attached.backend());
                        self.rule = Some(rule.name.clone());
                    }
                    self.routes.push(Route {
                        rule,
                        attached,
                        call: call.settle(),
                    });
                    return Ok(self.routes.len() - 1);
                }
                Err(e) => {
                    self.app.warn(
                        Warn::Route,
                        format_args!(
                            "upstream {}: backend {backend} for a new session: {e}",
                            rule.upstream.name
                        ),
                    );
                    if !call.failed_to_connect(CONNECT_ATTEMPTS) {
                        call.finish(Outcome::BackendFailed);
                        return Err(NoRoute::Unreachable);
                    }
                }
            }
        }
    }

    /// Sends a client frame to its backend (the session's, or with per-message routing the
    /// one of its ServerID), writing the client's queue meanwhile. `Some`: the session ends.
    async fn forward(
        &mut self,
        frame: &ClientFrame,
        wire: &mut Wire,
        out: &mut Output,
        traffic: &Traffic<'_>,
    ) -> Option<CloseReason> {
        let i = if self.routes[0].rule.route == RouteMode::PerMessage {
            match self.route(frame.server_id).await {
                Ok(i) => i,
                Err(e) => {
                    self.app.metrics.route_error(e.as_str());
                    return Some(CloseReason::NoRoute);
                }
            }
        } else {
            0
        };
        let attached = &self.routes[i].attached;
        let sent = match attached.try_send(frame) {
            Ok(true) => Ok(()),
            // The link's queue is full: a slow backend, the rare case, waited for in a box of
            // its own so that the session's task does not carry the wait's state.
            Ok(false) => Box::pin(send_waiting(attached, frame, wire, out, traffic)).await,
            Err(e) => Err(link_gone(e)),
        };
        if let Err(r) = sent {
            return Some(r);
        }
        let t = self
            .app
            .metrics
            .traffic(Direction::ToBackend, frame.server_id.server_type());
        t.messages.inc();
        t.bytes.inc_by(frame.payload.len() as u64);
        self.frames_in += 1;
        self.bytes_in += frame.payload.len() as u64;
        None
    }

    /// The session's loop, until it ends: the reason.
    async fn pump(
        &mut self,
        wire: &mut Wire,
        buf: &mut BytesMut,
        out: &mut Output,
        traffic: &Traffic<'_>,
        shutdown: &ShutdownWatch,
    ) -> CloseReason {
        let codec = ClientCodec::new(self.settings.max_frame);
        // Frames that came with the first one.
        if let Some(r) = self.forward_buffered(&codec, buf, wire, out, traffic).await {
            return r;
        }
        let mut stop = shutdown.clone();
        let mut stopping = pin!(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let mut stopped = *shutdown.borrow();
        let mut timer = pin!(tokio::time::sleep_until(
            self.timers.deadline(out.last, Instant::now())
        ));
        if stopped {
            self.go_away(out);
            timer
                .as_mut()
                .reset(self.timers.deadline(out.last, Instant::now()));
        }
        loop {
            let event = {
                poll_fn(|cx| {
                    if let Poll::Ready(r) = out.rx.poll_closed(cx) {
                        return Poll::Ready(Event::Closed(r));
                    }
                    if out.poll(cx, wire, traffic).is_ready() {
                        return Poll::Ready(Event::Output);
                    }
                    if let Poll::Ready(r) = wire.poll_fill(cx, buf) {
                        return Poll::Ready(Event::Input(r));
                    }
                    if !stopped && stopping.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Stopping);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Timer);
                    }
                    Poll::Pending
                })
                .await
            };
            match event {
                Event::Closed(r) => return r,
                Event::Output => return CloseReason::ClientError,
                Event::Input(Ok(0)) => return CloseReason::ClientClosed,
                Event::Input(Err(e)) => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        // A WebSocket protocol error or a text message.
                        self.app.malformed(self.client, &e);
                        return CloseReason::Malformed;
                    }
                    return CloseReason::ClientClosed;
                }
                Event::Input(Ok(_)) => {
                    let now = Instant::now();
                    self.timers.last_in = now;
                    if !self.timers.holding {
                        // Back from idle with a buffer again: the timer comes to let it go.
                        self.timers.holding = true;
                        timer.as_mut().reset(self.timers.deadline(out.last, now));
                    }
                    if let Some(r) = self.forward_buffered(&codec, buf, wire, out, traffic).await {
                        return r;
                    }
                }
                Event::Stopping => {
                    stopped = true;
                    self.go_away(out);
                    timer
                        .as_mut()
                        .reset(self.timers.deadline(out.last, Instant::now()));
                }
                Event::Timer => {
                    let now = Instant::now();
                    if let Some(r) = self.timers.expired(out.last, now) {
                        return r;
                    }
                    if self.timers.log_due(now) {
                        self.log_line("open", None, out);
                    }
                    if self.timers.trim_due(now) {
                        // A partial frame keeps its buffer; the next bytes make it holding again.
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                        if out.out.is_empty() {
                            out.out = BytesMut::new();
                        }
                    }
                    timer.as_mut().reset(self.timers.deadline(out.last, now));
                }
            }
        }
    }

    /// Forwards every whole frame in `buf`. `Some`: the session ends.
    async fn forward_buffered(
        &mut self,
        codec: &ClientCodec,
        buf: &mut BytesMut,
        wire: &mut Wire,
        out: &mut Output,
        traffic: &Traffic<'_>,
    ) -> Option<CloseReason> {
        loop {
            match codec.decode(buf) {
                Ok(Some(frame)) => {
                    if let Some(r) = self.forward(&frame, wire, out, traffic).await {
                        return Some(r);
                    }
                }
                Ok(None) => {
                    // A frame's bytes were taken out: the buffer is back to small when the
                    // next frame is small.
                    if buf.is_empty() && buf.capacity() > READ_START * 4 {
                        *buf = BytesMut::with_capacity(READ_START);
                    }
                    return None;
                }
                Err(e) => {
                    self.app.malformed(self.client, &e);
                    return Some(CloseReason::Malformed);
                }
            }
        }
    }

    /// Tells the client to go elsewhere within the drain window, and starts that window;
    /// nothing when the client was told before its first frame (the window runs already).
    fn go_away(&mut self, out: &mut Output) {
        if self.timers.drain_until.is_some() {
            return;
        }
        let drain = self.settings.drain;
        out.push(
            self.settings.go_away_message_id,
            &drain_ms(drain).to_le_bytes(),
        );
        self.timers.drain_until = Some(Instant::now() + drain);
    }

    /// The session's end: out of the table, off its backends, the close frame to the client
    /// when it may still read it, the metrics and the access-log line.
    async fn end(mut self, reason: CloseReason, mut wire: Wire, mut out: Output) {
        let app = self.app;
        let server_type = self.routes.first().map_or(0, |r| r.rule.server_type);
        app.table.remove(self.id);
        let any_died = self.routes.iter().any(|r| r.attached.link_died());
        for (i, route) in std::mem::take(&mut self.routes).into_iter().enumerate() {
            let outcome = call_outcome(reason, route.attached.link_died(), i == 0, any_died);
            route.attached.close(reason);
            route.call.finish(outcome);
        }
        let flush = match reason {
            // Nobody to tell.
            CloseReason::ClientClosed | CloseReason::ClientError => None,
            // It does not read: what the socket takes now, no more.
            CloseReason::SlowClient => Some(Duration::ZERO),
            _ => Some(CLOSE_FLUSH),
        };
        if let Some(wait) = flush {
            out.rx.close();
            if reason == CloseReason::SlowClient {
                // Its queue is what it could not take: dropped.
                while out.rx.try_recv().is_some() {}
            } else {
                // What the backend queued before the session ended goes before the close frame.
                let traffic = Traffic {
                    to_client: app.metrics.traffic(Direction::ToClient, server_type),
                };
                while let Some(f) = out.rx.try_recv() {
                    out.take(&f, &traffic);
                }
            }
            out.push(self.settings.close_message_id, &reason.code().to_le_bytes());
            if wait.is_zero() {
                let _ = poll_fn(|cx| Poll::Ready(wire.poll_write_out(cx, &mut out.out))).await;
            } else {
                close_wire(&mut wire, &mut out, wait).await;
            }
        }
        let duration = self.timers.started.elapsed();
        app.metrics.active.dec();
        app.metrics.duration.observe(duration.as_secs_f64());
        app.metrics.closed(reason);
        self.log_line("closed", Some(reason), &out);
    }

    /// The session's access-log line: one at its end, and one every `log_every` while open.
    /// Fixed `key=value` fields, in this order.
    fn log_line(&self, state: &str, reason: Option<CloseReason>, out: &Output) {
        let backend = self
            .backend
            .map_or_else(|| "-".to_owned(), |b| b.to_string());
        log::info!(
            target: "zkgate::game::access",
            "game listener={} session={} client={} protocol={} backend={} rule=\"{}\" state={} duration={:.3}s frames_in={} bytes_in={} frames_out={} bytes_out={} reason={}",
            self.app.listener,
            self.id,
            self.client,
            self.protocol.as_str(),
            backend,
            self.rule.as_deref().unwrap_or("-"),
            state,
            self.timers.started.elapsed().as_secs_f64(),
            self.frames_in,
            self.bytes_in,
            out.frames,
            out.bytes,
            reason.map_or("-", CloseReason::as_str),
        );
    }
}

/// Sends `frame` on a link whose queue is full, once it has room, writing the client's queue
/// meanwhile: `Err` when the session ends first.
async fn send_waiting(
    attached: &Attached,
    frame: &ClientFrame,
    wire: &mut Wire,
    out: &mut Output,
    traffic: &Traffic<'_>,
) -> Result<(), CloseReason> {
    let mut send = pin!(attached.send(frame));
    poll_fn(|cx| {
        if let Poll::Ready(r) = send.as_mut().poll(cx) {
            return Poll::Ready(r.map_err(link_gone));
        }
        if let Poll::Ready(r) = out.rx.poll_closed(cx) {
            return Poll::Ready(Err(r));
        }
        if out.poll(cx, wire, traffic).is_ready() {
            return Poll::Ready(Err(CloseReason::ClientError));
        }
        Poll::Pending
    })
    .await
}

fn link_gone(e: LinkError) -> CloseReason {
    match e {
        LinkError::Closed | LinkError::Connect(_) => CloseReason::BackendGone,
    }
}

/// How a backend call of a session that ended for `reason` ends, given whether its link `died`,
/// whether it is the session's `first` and whether `any_died` of the session's links: with
/// `backend_gone`, every backend whose link died failed (with `route: per_message` a session
/// holds several, and only the dead ones are to blame); when none is seen dead, the first
/// backend, the one the session was sent to. Anything else is no backend's fault.
fn call_outcome(reason: CloseReason, died: bool, first: bool, any_died: bool) -> Outcome {
    if reason == CloseReason::BackendGone && (died || (first && !any_died)) {
        Outcome::BackendFailed
    } else {
        Outcome::Ok
    }
}

/// Writes what `out` holds (a close frame) and closes, within `wait`.
async fn close_wire(wire: &mut Wire, out: &mut Output, wait: Duration) {
    let _ = tokio::time::timeout(wait, async {
        let _ = poll_fn(|cx| wire.poll_write_out(cx, &mut out.out)).await;
        wire.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers(t0: Instant) -> Timers {
        Timers {
            client_idle: Some(Duration::from_secs(60)),
            backend_idle: Some(Duration::from_secs(90)),
            max_duration: None,
            log_every: Some(Duration::from_secs(300)),
            started: t0,
            last_in: t0,
            holding: false,
            drain_until: None,
            next_log: Some(t0 + Duration::from_secs(300)),
        }
    }

    #[test]
    fn idle_deadlines_follow_activity_per_direction() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut t = timers(t0);
        assert_eq!(t.deadline(t0, t0), s(60));
        assert_eq!(t.expired(t0, s(59)), None);
        assert_eq!(t.expired(t0, s(60)), Some(CloseReason::ClientIdle));
        // The client spoke at 50: its deadline moved; the backend's (silent since 0) comes next.
        t.last_in = s(50);
        assert_eq!(
            t.expired(t0, s(60)),
            None,
            "a timer fired early finds nothing passed"
        );
        assert_eq!(t.deadline(t0, s(60)), s(90));
        assert_eq!(t.expired(t0, s(90)), Some(CloseReason::BackendIdle));
        // The backend spoke at 80: the client's idle is next, at 110.
        assert_eq!(t.deadline(s(80), s(90)), s(110));
        assert_eq!(t.expired(s(80), s(110)), Some(CloseReason::ClientIdle));
    }

    #[test]
    fn the_drain_and_the_cap_end_a_busy_session_and_nothing_set_means_no_end() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut t = timers(t0);
        t.max_duration = Some(Duration::from_secs(3600));
        t.last_in = s(3599);
        assert_eq!(t.expired(s(3599), s(3600)), Some(CloseReason::MaxDuration));
        t.drain_until = Some(s(30));
        assert_eq!(t.deadline(t0, t0), s(30));
        assert_eq!(t.expired(s(29), s(30)), Some(CloseReason::Shutdown));
        let idle = Timers {
            client_idle: None,
            backend_idle: None,
            max_duration: None,
            log_every: None,
            started: t0,
            last_in: t0,
            holding: false,
            drain_until: None,
            next_log: None,
        };
        assert_eq!(idle.expired(t0, s(1_000_000)), None);
        assert_eq!(idle.deadline(t0, s(10)), s(10 + 24 * 3600));
    }

    #[test]
    fn an_idle_session_lets_its_buffers_go_once_until_it_sends_again() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut t = timers(t0);
        t.holding = true;
        assert_eq!(t.deadline(t0, t0), t0 + TRIM_IDLE);
        assert!(!t.trim_due(t0 + TRIM_IDLE - Duration::from_millis(1)));
        assert!(t.trim_due(t0 + TRIM_IDLE));
        assert!(!t.trim_due(s(100)), "once");
        assert_eq!(
            t.deadline(t0, t0),
            s(60),
            "the timer does not come back for it"
        );
        // The client spoke at 50 and took a buffer again.
        t.last_in = s(50);
        t.holding = true;
        assert_eq!(t.deadline(t0, s(50)), s(50) + TRIM_IDLE);
        assert_eq!(
            t.expired(t0, s(50) + TRIM_IDLE),
            None,
            "trimming ends nothing"
        );
    }

    #[test]
    fn backend_gone_blames_every_backend_whose_link_died_and_no_other() {
        use Outcome::{BackendFailed as F, Ok as K};
        let of = |reason, died: &[bool]| {
            let any = died.contains(&true);
            let each = died.iter().enumerate();
            each.map(|(i, d)| call_outcome(reason, *d, i == 0, any))
                .collect::<Vec<_>>()
        };
        let gone = CloseReason::BackendGone;
        assert_eq!(
            of(gone, &[false, true, false]),
            [K, F, K],
            "the second died"
        );
        assert_eq!(of(gone, &[true, true]), [F, F]);
        assert_eq!(
            of(gone, &[false, false]),
            [F, K],
            "none seen dead: the first"
        );
        assert_eq!(of(gone, &[true]), [F]);
        assert_eq!(of(CloseReason::ClientClosed, &[true, false]), [K, K]);
        assert_eq!(of(CloseReason::Shutdown, &[false]), [K]);
    }

    #[test]
    fn the_periodic_line_comes_every_period() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut t = timers(t0);
        t.client_idle = None;
        t.backend_idle = None;
        assert_eq!(t.deadline(t0, t0), s(300));
        assert!(!t.log_due(s(299)));
        assert!(t.log_due(s(300)));
        assert!(!t.log_due(s(300)));
        assert_eq!(t.deadline(t0, s(300)), s(600));
    }
}
