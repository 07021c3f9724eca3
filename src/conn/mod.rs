//! Client connections of the HTTP listeners: deadlines on slow and idle clients, limits on
//! connections (in all and per client address), fd-pressure relief and per-connection memory.
//!
//! [`ConnApp`] replaces Pingora's HTTP/1 connection loop: it wraps each accepted stream in
//! [`io::Guarded`], runs Pingora's proxy one request at a time, and between requests holds
//! the deadline of [`state::ConnState`]: the request head must be complete within
//! `client_header_timeout` (from the accept for a new connection, from the first byte for a
//! keep-alive one, as nginx does), and a keep-alive connection may idle `keepalive_timeout`.
//! The proxy's first phase calls [`head_received`] once per request, which lifts the deadline.
//! Gaps between body reads are Pingora's read timeout (`client_body_timeout`).
//! A connection whose first bytes are the HTTP/2 preface (h2c, or after ALPN `h2`) goes to
//! Pingora's HTTP/2 server instead, once those bytes came within the head deadline ([`h2`]).
//! On plain TCP an [`Http1Fast`] path (the gateway's `proxy::fast`) may serve HTTP/1 requests
//! first, under the same deadlines; the first request it leaves, and every later one, goes to
//! Pingora's loop with the bytes already read given back to the stream ([`io::Guarded::unread`]).

pub mod config;
pub mod h2;
pub mod io;
pub mod log;
pub mod pressure;
pub mod proxy_protocol;
pub mod state;
mod tls;
pub mod tunnel;

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::IpAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Ssl, Stream, ALPN};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{register_int_counter_vec, IntCounter, IntCounterVec};
use tokio::sync::futures::Notified;
use tokio::time::Sleep;

pub use self::config::ConnKeys;
use self::io::Guarded;
use self::log::{suppressed_note, LogLimiter};
use self::pressure::IDLE;
use self::state::{ConnState, Expired, Nanos, Phase};
use crate::metrics::METRICS;

pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// The longest header or keep-alive timeout accepted: the idle accounting of
/// [`pressure`] spans a little more.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(900);

/// A listener's connection settings, built from its YAML keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSettings {
    pub client_header_timeout: Duration,
    pub client_body_timeout: Duration,
    /// `None`: keep-alive is off, each connection serves one request.
    pub keepalive_timeout: Option<Duration>,
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    /// The PROXY protocol header the listener requires (`None`: none is read).
    pub proxy_protocol: Option<proxy_protocol::ProxyProtocol>,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            client_header_timeout: DEFAULT_CLIENT_HEADER_TIMEOUT,
            client_body_timeout: DEFAULT_CLIENT_BODY_TIMEOUT,
            keepalive_timeout: Some(DEFAULT_KEEPALIVE_TIMEOUT),
            max_connections: None,
            max_connections_per_ip: None,
            proxy_protocol: None,
        }
    }
}

/// The one clock of connection deadlines: nanoseconds since a base taken at first use.
pub mod clock {
    use std::sync::LazyLock;
    use std::time::{Duration, Instant};

    use super::state::Nanos;

    static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

    pub fn now() -> Nanos {
        BASE.elapsed().as_nanos() as Nanos
    }

    pub fn to_tokio(t: Nanos) -> tokio::time::Instant {
        tokio::time::Instant::from_std(*BASE + Duration::from_nanos(t))
    }
}

/// Why the gateway closed a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    HeaderTimeout,
    BodyTimeout,
    KeepaliveTimeout,
    MaxConnections,
    MaxConnectionsPerIp,
    FdPressure,
}

impl Reason {
    const ALL: [Reason; 6] = [
        Reason::HeaderTimeout,
        Reason::BodyTimeout,
        Reason::KeepaliveTimeout,
        Reason::MaxConnections,
        Reason::MaxConnectionsPerIp,
        Reason::FdPressure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HeaderTimeout => "header_timeout",
            Reason::BodyTimeout => "body_timeout",
            Reason::KeepaliveTimeout => "keepalive_timeout",
            Reason::MaxConnections => "max_connections",
            Reason::MaxConnectionsPerIp => "max_connections_per_ip",
            Reason::FdPressure => "fd_pressure",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Reason::HeaderTimeout => {
                "did not send a complete request head within client_header_timeout"
            }
            Reason::BodyTimeout => "paused its request body longer than client_body_timeout",
            Reason::KeepaliveTimeout => "idled past keepalive_timeout",
            Reason::MaxConnections => "arrived with max_connections open",
            Reason::MaxConnectionsPerIp => {
                "arrived with max_connections_per_ip open from its address"
            }
            Reason::FdPressure => "was idle while file descriptors ran out",
        }
    }
}

impl From<Expired> for Reason {
    fn from(e: Expired) -> Reason {
        match e {
            Expired::Header => Reason::HeaderTimeout,
            Expired::Keepalive => Reason::KeepaliveTimeout,
        }
    }
}

static CLOSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "zkgate_connections_closed_total",
        "Client connections the gateway closed past a limit, by listener and reason (header_timeout, body_timeout, keepalive_timeout, max_connections, max_connections_per_ip, fd_pressure).",
        &["listener", "reason"]
    )
    .expect("register zkgate_connections_closed_total")
});

/// Ten seconds between two lines about the same kind of closing on one listener.
const LOG_EVERY: Nanos = 10_000_000_000;

/// The per-address counts of open connections, in shards so that accepts on different threads
/// rarely wait on each other (touched once per connection, never per request).
struct PerIp {
    max: u32,
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

impl PerIp {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let h = match ip {
            IpAddr::V4(a) => u32::from(*a) as usize,
            IpAddr::V6(a) => (u128::from(*a) ^ (u128::from(*a) >> 64)) as usize,
        };
        &self.shards[h.wrapping_mul(0x9E37_79B9) % self.shards.len()]
    }

    fn acquire(&self, ip: IpAddr) -> bool {
        let mut m = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut m = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// One listener's connections: its settings in the units the loop uses, what is open, and the
/// counters and log limiters of its closings, resolved once.
pub struct ListenerConns {
    name: String,
    header_timeout: Nanos,
    keepalive_timeout: Nanos,
    body_timeout: Duration,
    /// What Pingora is told: it decides `Connection: keep-alive` from it, and bounds each read
    /// of a head with it, so it is set past both of our deadlines, which are the ones that act.
    pingora_keepalive: Option<u64>,
    keepalive_requests: Option<u32>,
    max_connections: Option<u32>,
    open: AtomicU32,
    per_ip: Option<PerIp>,
    proxy_protocol: Option<proxy_protocol::Front>,
    closed: [IntCounter; 6],
    logs: [LogLimiter; 6],
    versions: h2::Versions,
}

impl ListenerConns {
    pub fn new(name: &str, s: &ConnSettings, keepalive_requests: Option<u32>) -> ListenerConns {
        let nanos = |d: Duration| d.as_nanos().min(Nanos::MAX as u128) as Nanos;
        let pingora_keepalive = s
            .keepalive_timeout
            .map(|k| k.max(s.client_header_timeout).as_secs().saturating_add(2));
        ListenerConns {
            name: name.to_owned(),
            header_timeout: nanos(s.client_header_timeout),
            keepalive_timeout: nanos(s.keepalive_timeout.unwrap_or_default()),
            body_timeout: s.client_body_timeout,
            pingora_keepalive,
            keepalive_requests,
            max_connections: s.max_connections,
            open: AtomicU32::new(0),
            per_ip: s.max_connections_per_ip.map(|max| PerIp {
                max,
                shards: (0..32).map(|_| Mutex::new(HashMap::new())).collect(),
            }),
            proxy_protocol: s
                .proxy_protocol
                .as_ref()
                .map(|p| proxy_protocol::Front::new(name, p)),
            closed: Reason::ALL.map(|r| CLOSED.with_label_values(&[name, r.as_str()])),
            logs: Reason::ALL.map(|_| LogLimiter::new(LOG_EVERY)),
            versions: h2::Versions::new(name),
        }
    }

    /// Counts a closing, and logs it unless one like it was logged in the last ten seconds.
    fn closed(&self, reason: Reason, peer: Option<IpAddr>) {
        let i = reason as usize;
        self.closed[i].inc();
        let Some(suppressed) = self.logs[i].allow(clock::now()) else {
            return;
        };
        let peer = peer.map_or_else(|| "a client".to_owned(), |p| format!("client {p}"));
        let line = format!(
            "listener {}: closed the connection of {peer}, which {}{}",
            self.name,
            reason.describe(),
            suppressed_note(suppressed)
        );
        if reason == Reason::KeepaliveTimeout {
            // Routine: idle keep-alive connections are closed all the time.
            ::log::debug!("{line}");
        } else {
            ::log::warn!("{line}");
        }
    }

    /// A place among the listener's `max_connections`, taken at the accept.
    fn admit(&self) -> Result<Slot<'_>, Reason> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = Slot {
            conns: self,
            ip: None,
        };
        if self.max_connections.is_some_and(|max| open > max) {
            return Err(Reason::MaxConnections);
        }
        Ok(slot)
    }

    /// Connections open on this listener now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }
}

/// A connection's place in its listener's counts, given back when dropped.
struct Slot<'a> {
    conns: &'a ListenerConns,
    ip: Option<IpAddr>,
}

impl Slot<'_> {
    /// A place among `max_connections_per_ip` for `peer`: the client's address, which on a
    /// PROXY protocol listener is known only once its header is read.
    fn admit_ip(&mut self, peer: Option<IpAddr>) -> Result<(), Reason> {
        if let (Some(per_ip), Some(ip)) = (&self.conns.per_ip, peer) {
            if !per_ip.acquire(ip) {
                return Err(Reason::MaxConnectionsPerIp);
            }
            self.ip = Some(ip);
        }
        Ok(())
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.conns.open.fetch_sub(1, Ordering::Relaxed);
        if let (Some(per_ip), Some(ip)) = (&self.conns.per_ip, self.ip) {
            per_ip.release(ip);
        }
    }
}

/// Called by the proxy's first phase once per request: the head is complete, so its deadline
/// no longer applies. A load of the session's stream and a type check; nothing is allocated.
pub fn head_received(session: &ServerSession) {
    if let Some(g) = session.stream().and_then(Guarded::of) {
        g.state().on_head();
    }
}

/// For the proxy's error hooks: a client that paused its request body past
/// `client_body_timeout` (Pingora's read timeout on the downstream) is counted and logged here,
/// rate-limited, like the other closings; returns whether `e` was that, so that the caller
/// need not log it again.
pub fn client_body_timed_out(session: &ServerSession, e: &pingora::Error) -> bool {
    if e.esource() != &pingora::ErrorSource::Downstream
        || e.etype() != &pingora::ErrorType::ReadTimedout
    {
        return false;
    }
    if let Some(g) = session.stream().and_then(Guarded::of) {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        g.listener().closed(Reason::BodyTimeout, peer);
    }
    true
}

/// What became of a request served by an [`Http1Fast`] path.
#[derive(Debug, PartialEq, Eq)]
pub enum FastStep {
    /// Answered; the connection waits for its next request.
    Again,
    /// Answered, or the client left: the connection closes.
    Close,
    /// The client paused its request body past `client_body_timeout`; it was answered 408
    /// and the connection closes.
    BodyTimeout,
    /// Not the fast path's: the bytes it read were given back to the stream, and this request
    /// and the connection's later ones go to Pingora's proxy.
    Leave,
}

/// An HTTP/1 path that serves requests straight from a plain-TCP connection before Pingora's
/// session is made (the gateway's is `proxy::fast`), under the same deadlines.
pub trait Http1Fast: Send + Sync + 'static {
    /// A connection's state on the path, made when its first request comes.
    type Conn: Send;

    fn conn(&self, io: &Guarded) -> Self::Conn;

    /// Requests the path answered on the connection.
    fn served(conn: &Self::Conn) -> u32;

    /// Serves the connection's next request. `keep_alive`: the listener keeps connections
    /// open; `remaining`: the requests the connection may still carry after this one, if
    /// limited. A connection that is idle when `shutdown` turns true closes.
    fn request<'a>(
        &'a self,
        io: &'a mut Guarded,
        conn: &'a mut Self::Conn,
        keep_alive: bool,
        remaining: Option<u32>,
        shutdown: &'a mut ShutdownWatch,
    ) -> impl Future<Output = FastStep> + Send + 'a;
}

/// Pingora's HTTP app wrapped in zkgate's connection handling, as a listener's `ServerApp`,
/// with an optional HTTP/1 fast path in front of it.
pub struct ConnApp<A, F> {
    inner: Arc<A>,
    conns: Arc<ListenerConns>,
    /// The listener's TLS, when it terminates TLS (see [`tls`]).
    tls: Option<crate::tls::TlsSource>,
    fast: Option<F>,
}

impl<A, F> ConnApp<A, F> {
    /// The app, with `fast`, when given, serving the HTTP/1 requests it takes (on plain TCP
    /// only) before Pingora's loop.
    pub fn new(inner: A, conns: Arc<ListenerConns>, fast: Option<F>) -> Self {
        ConnApp {
            inner: Arc::new(inner),
            conns,
            tls: None,
            fast,
        }
    }

    /// The listener's connection counts (a stopping process waits for them to reach zero).
    pub fn conns(&self) -> &Arc<ListenerConns> {
        &self.conns
    }
}

/// How a wait of a connection ended: what it waited for, or the deadline, or an eviction, or a
/// tunnel silent past its backstop.
enum Outcome<T> {
    Done(T),
    Expired(Expired),
    Evicted,
    Stuck,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static, F: Http1Fast> ServerApp for ConnApp<A, F> {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        struct Open;
        impl Drop for Open {
            fn drop(&mut self) {
                METRICS.downstream_connections.dec();
            }
        }
        METRICS.downstream_connections.inc();
        let _open = Open;
        let accepted = clock::now();
        pressure::on_accept(io.id(), accepted);
        let mut slot = match self.conns.admit() {
            Ok(slot) => slot,
            Err(reason) => {
                self.conns.closed(reason, io::peer_ip(&io));
                return None;
            }
        };
        // Front step 1: the PROXY protocol header, which replaces the peer address.
        let mut io = io;
        if let Some(p) = &self.conns.proxy_protocol {
            if !p.run(&mut io, accepted, &self.conns).await {
                return None;
            }
        }
        let peer = io::peer_ip(&io);
        if let Err(reason) = slot.admit_ip(peer) {
            self.conns.closed(reason, peer);
            return None;
        }
        let io = self.tls_front(io, accepted, peer).await?;
        if matches!(io.selected_alpn_proto(), Some(ALPN::Custom(_))) {
            // Neither HTTP/1 nor HTTP/2: Pingora's own handling.
            let mut next = Some(io);
            while let Some(io) = next {
                next = ServerApp::process_new(&self.inner, io, shutdown).await;
            }
            return None;
        }
        self.serve(io, shutdown, accepted, peer).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

impl<A: HttpServerApp + Send + Sync + 'static, F: Http1Fast> ConnApp<A, F> {
    /// One connection: its first bytes under the head deadline, then Pingora's HTTP/2 server
    /// if they are the HTTP/2 preface, else the HTTP/1 loop: what Pingora's own loop does, plus
    /// the deadlines.
    async fn serve(
        self: &Arc<Self>,
        io: Stream,
        shutdown: &ShutdownWatch,
        accepted: Nanos,
        peer: Option<IpAddr>,
    ) {
        let c = &*self.conns;
        let state = Arc::new(ConnState::new(
            c.header_timeout,
            c.keepalive_timeout,
            &IDLE,
            accepted,
        ));
        let mut sleep = pin!(tokio::time::sleep_until(clock::to_tokio(accepted)));
        let mut evict = pin!(IDLE.notified());
        // HTTP/2 is decided by the first bytes (h2c) or was by ALPN: either way its preface
        // is read under the head deadline, and the connection then goes to Pingora's HTTP/2.
        let alpn_h2 = matches!(io.selected_alpn_proto(), Some(ALPN::H2));
        let h2c =
            io.get_ssl_digest().is_none() && self.inner.server_options().is_some_and(|o| o.h2c);
        let mut guarded = Box::new(Guarded::new(io, state.clone(), self.conns.clone()));
        // A new connection waits for its first byte here, before Pingora's session and request
        // futures exist: a client that connects and sends nothing costs its stream and this
        // future, not a parked proxy request. (A keep-alive connection cannot wait here: bytes
        // of its next request may already sit in Pingora's buffer.)
        // A server shutting down closes connections that asked for nothing yet, as Pingora does
        // with those waiting for a keep-alive request.
        let mut stopping = shutdown.clone();
        let first = {
            let first_bytes = pin!(async {
                tokio::select! {
                    got = h2::first_bytes(&mut guarded, alpn_h2 || h2c) => got,
                    _ = stopping.wait_for(|stop| *stop) => Ok(h2::First::Nothing),
                }
            });
            watch(first_bytes, &state, sleep.as_mut(), evict.as_mut()).await
        };
        match first {
            Outcome::Done(Ok(h2::First::Http2)) => {
                c.versions.count(if alpn_h2 {
                    h2::Version::H2
                } else {
                    h2::Version::H2c
                });
                // Pingora's HTTP/2 server, bounded by the listener's `http2` settings.
                state.on_head();
                let _ = ServerApp::process_new(&self.inner, guarded, shutdown).await;
                return;
            }
            // ALPN promised HTTP/2 and the client sent something else.
            Outcome::Done(Ok(h2::First::Http1)) if alpn_h2 => return,
            Outcome::Done(Ok(h2::First::Http1)) => c.versions.count(h2::Version::Http1),
            Outcome::Done(_) => return,
            Outcome::Expired(e) => return c.closed(e.into(), peer),
            Outcome::Evicted => return c.closed(Reason::FdPressure, peer),
            Outcome::Stuck => return,
        }
        let mut served = 0;
        if let Some(fast) = self
            .fast
            .as_ref()
            .filter(|_| guarded.get_ssl_digest().is_none())
        {
            let mut conn = fast.conn(&guarded);
            let mut stopping = shutdown.clone();
            loop {
                let keep_alive = c.pingora_keepalive.is_some() && !*shutdown.borrow();
                let remaining = c
                    .keepalive_requests
                    .map(|n| n.saturating_sub(F::served(&conn)));
                let request = pin!(fast.request(
                    &mut guarded,
                    &mut conn,
                    keep_alive,
                    remaining,
                    &mut stopping,
                ));
                match watch(request, &state, sleep.as_mut(), evict.as_mut()).await {
                    Outcome::Done(FastStep::Again) => state.on_reuse(clock::now()),
                    Outcome::Done(FastStep::Leave) => break,
                    Outcome::Done(FastStep::Close) => return,
                    Outcome::Done(FastStep::BodyTimeout) => {
                        return c.closed(Reason::BodyTimeout, peer)
                    }
                    Outcome::Expired(e) => return c.closed(e.into(), peer),
                    Outcome::Evicted => return c.closed(Reason::FdPressure, peer),
                    Outcome::Stuck => return,
                }
            }
            served = F::served(&conn);
        }
        let mut session = ServerSession::new_http1(guarded);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            c.pingora_keepalive
        });
        session
            .set_keepalive_reuses_remaining(c.keepalive_requests.map(|n| n.saturating_sub(served)));
        // Requests sent before the previous answer are answered in order (RFC 9112 §9.3.2);
        // without this Pingora drops them after an answer that said keep-alive. Pingora carries
        // the setting over to the connection's later sessions.
        session.set_pipelining_enabled(true);
        loop {
            session.set_read_timeout(Some(c.body_timeout));
            let request = pin!(self.inner.process_new_http(session, shutdown));
            match watch(request, &state, sleep.as_mut(), evict.as_mut()).await {
                Outcome::Done(Some(reused)) => {
                    let (stream, settings) = reused.consume();
                    state.on_reuse(clock::now());
                    session = ServerSession::new_http1(stream);
                    if let Some(settings) = settings {
                        settings.apply_to_session(&mut session);
                    }
                }
                Outcome::Done(None) => return,
                Outcome::Expired(e) => return c.closed(e.into(), peer),
                Outcome::Evicted => return c.closed(Reason::FdPressure, peer),
                Outcome::Stuck => return tunnel_stuck(&c.name, peer),
            }
        }
    }
}

/// Runs one request of a connection (or its wait for a first byte) under its deadline: the
/// future is dropped (and the connection with it) when the deadline in force passes, or when fd
/// pressure evicts the connection while it waits idle. The request comes pinned where its
/// caller made it: a request's future is kilobytes (Pingora's HTTP session, the fast path's
/// header slots), which moving it in here would copy once per request.
async fn watch<F: Future>(
    mut request: Pin<&mut F>,
    state: &ConnState,
    mut sleep: Pin<&mut Sleep>,
    mut evict: Pin<&mut Notified<'static>>,
) -> Outcome<F::Output> {
    let mut armed: Option<Nanos> = None;
    poll_fn(|cx| {
        if let Poll::Ready(r) = request.as_mut().poll(cx) {
            return Poll::Ready(Outcome::Done(r));
        }
        // Polled after the request so that a deadline its reads just moved is seen at once.
        let Some(deadline) = state.deadline() else {
            return Poll::Pending;
        };
        // A tunnel's deadline moves later with every byte: its timer is moved only to an
        // earlier one, and looked at again when it fires early.
        let rearm = if state.phase().is_tunnel() {
            armed.is_none_or(|a| deadline < a)
        } else {
            armed != Some(deadline)
        };
        if rearm {
            sleep.as_mut().reset(clock::to_tokio(deadline));
            armed = Some(deadline);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            let now = clock::now();
            if let Some(e) = state.expired(now) {
                return Poll::Ready(Outcome::Expired(e));
            }
            if state.stuck(now) {
                // Recorded as the tunnel's silence for the proxy's metrics, then dropped.
                state.silence_passed(now);
                return Poll::Ready(Outcome::Stuck);
            }
            // Fired a hair early by our clock: arm it again rather than wait on a spent timer.
            armed = None;
            cx.waker().wake_by_ref();
        }
        if matches!(state.phase(), Phase::Fresh | Phase::Idle) && evict.as_mut().poll(cx).is_ready()
        {
            if state.evictable() {
                return Poll::Ready(Outcome::Evicted);
            }
            // Someone else's eviction: wait for the next one.
            evict.set(IDLE.notified());
            let _ = evict.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await
}

/// A tunnel outlived its idle timeout without the proxy noticing (it was stalled on a backend
/// that stopped reading): dropped with its request, which writes no access log line.
fn tunnel_stuck(listener: &str, peer: Option<IpAddr>) {
    let peer = peer.map_or_else(|| "a client".to_owned(), |p| format!("client {p}"));
    ::log::info!(
        "listener {listener}: dropped the upgraded connection of {peer}, silent past its idle \
         timeout while its backend did not read"
    );
}

/// Probes the fd limit every quarter second, for when the accept loop no longer gets a
/// connection to notice it by (see [`pressure::probe`]).
pub struct FdWatch;

#[async_trait]
impl BackgroundService for FdWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        pressure::init_fd_limit();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => pressure::probe(clock::now()),
                _ = shutdown.changed() => return,
            }
        }
    }
}
