//! `zkgate gameload`: a load generator for game listeners that speaks the client framing
//! (notes/game-router.md §5): N sessions from several 127.0.0.x source addresses, over TCP or
//! WebSocket, frames of a given size at a total rate (or closed-loop), each frame's payload
//! carrying its session, sequence and send time so that the echo measures the round trip and
//! proves every answer came back to its own session in order.
//!
//! Every session's first frame is the test game server's `whoami` (0xF000), which establishes
//! the session (the gateway routes on the first frame) and names the server that holds it; the
//! last is another `whoami`, which tells whether the session stayed on that server. `--idle`
//! only holds the sessions (the memory bench) and reports the time to establish them.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

use crate::game::codec::{ClientCodec, ClientFrame, ServerId, MAX_CLIENT_PAYLOAD};

/// The test game server's `whoami` command.
const WHOAMI: u16 = 0xF000;
/// The gateway's default close and go-away message ids.
const CLOSE_FRAME: u16 = 0xFFFE;
const GO_AWAY: u16 = 0xFFFF;
/// Session index, sequence and send time: the least payload a measured frame carries.
const MARK: usize = 16;

fn duration(text: &str) -> Result<Duration, String> {
    crate::section::units::parse_duration(text)
}

fn server_id(text: &str) -> Result<u32, String> {
    let t = text.trim();
    match t.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    }
    .map_err(|e| format!("`{text}`: {e}"))
}

/// Source addresses for the sessions, used in turn.
#[derive(Clone, Debug)]
pub struct Sources(pub Vec<IpAddr>);

/// `127.0.0.2-127.0.0.9`, `127.0.0.2,127.0.0.3`, or a mix.
fn sources(text: &str) -> Result<Sources, String> {
    let mut all = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            None => all.push(part.parse().map_err(|e| format!("`{part}`: {e}"))?),
            Some((a, b)) => {
                let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
                    a.parse().map_err(|e| format!("`{a}`: {e}"))?,
                    b.parse().map_err(|e| format!("`{b}`: {e}"))?,
                );
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 65_535 {
                    return Err(format!(
                        "`{part}`: not an ascending range of IPv4 addresses"
                    ));
                }
                all.extend((a..=b).map(|n| IpAddr::V4(n.into())));
            }
        }
    }
    if all.is_empty() {
        return Err("no source address".into());
    }
    Ok(Sources(all))
}

#[derive(clap::Args, Debug, Clone)]
pub struct GameloadArgs {
    /// The game listener, `ip:port`.
    #[arg(long)]
    pub target: SocketAddr,
    /// Sessions to open (one connection each).
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Frames per second over all sessions; 0 = closed loop (each session keeps --window
    /// frames in flight).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Frames in flight per session in closed loop.
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Payload bytes per frame (at least 16: session, sequence, send time).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// How long frames are sent (or, with --idle, sessions held) once all are established.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,
    /// Source addresses, round robin over sessions: `127.0.0.2-127.0.0.9,127.0.0.20`.
    #[arg(long, default_value = "127.0.0.1", value_parser = sources)]
    pub sources: Sources,
    /// The frames' ServerID (`0x00030100` or decimal): world, serverType, instId.
    #[arg(long, default_value = "0x00000100", value_parser = server_id)]
    pub server_id: u32,
    /// Spread sessions over instIds 1..=N (added to --server-id's instId), for
    /// consistent_hash and instance rules.
    #[arg(long, default_value_t = 0)]
    pub inst_spread: u8,
    /// The measured frames' message id (anything the server echoes).
    #[arg(long, default_value_t = 1)]
    pub msg_id: u16,
    /// Speak WebSocket (binary messages carrying the same frames).
    #[arg(long)]
    pub ws: bool,
    /// Only open and hold the sessions (no measured frames): the memory bench.
    #[arg(long)]
    pub idle: bool,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// A connect, or a frame's answer at the end, waited for at most this long.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub timeout: Duration,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What one session saw.
#[derive(Default)]
struct Outcome {
    established: bool,
    /// From the start of the run.
    established_at: Duration,
    refused: bool,
    /// Closed by the gateway before the end (or a close frame).
    closed: bool,
    close_reason: Option<u16>,
    go_away: bool,
    mismatched: u64,
    sent: u64,
    received: u64,
    rtts_ns: Vec<u64>,
    server: Option<String>,
    /// The server that answered the last whoami, when it did.
    server_at_end: Option<String>,
}

/// Shared by every session: the run's clock and its phases.
struct Run {
    args: GameloadArgs,
    start: Instant,
    /// Set when every session is established (or failed): measured frames start then.
    go: tokio::sync::Notify,
    go_flag: AtomicBool,
    pending: AtomicU64,
    /// When sending stops (ns from start), known once all are established.
    stop_ns: AtomicU64,
}

impl Run {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    async fn wait_go(&self) {
        loop {
            let notified = self.go.notified();
            if self.go_flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn one_ready(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let stop = self.now_ns() + self.args.duration.as_nanos() as u64;
            self.stop_ns.store(stop, Ordering::Release);
            self.go_flag.store(true, Ordering::Release);
            self.go.notify_waiters();
        }
    }
}

pub fn gameload(args: GameloadArgs) -> ExitCode {
    if args.payload < MARK && !args.idle {
        eprintln!("zkgate gameload: --payload must be at least {MARK} bytes");
        return ExitCode::from(2);
    }
    if args.payload > MAX_CLIENT_PAYLOAD || args.sessions == 0 || args.window == 0 {
        eprintln!("zkgate gameload: --payload at most 65535, --sessions and --window at least 1");
        return ExitCode::from(2);
    }
    if !args.target.ip().is_loopback() || args.sources.0.iter().any(|s| !s.is_loopback()) {
        eprintln!("zkgate gameload: load goes to loopback only (target and sources in 127.0.0.0/8 or ::1)");
        return ExitCode::from(2);
    }
    crate::conn::pressure::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zkgate gameload: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let json = args.json;
    let report = runtime.block_on(run(args));
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if report.established == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn run(args: GameloadArgs) -> Report {
    let n = args.sessions;
    let run = Arc::new(Run {
        pending: AtomicU64::new(n as u64),
        args,
        start: Instant::now(),
        go: tokio::sync::Notify::new(),
        go_flag: AtomicBool::new(false),
        stop_ns: AtomicU64::new(u64::MAX),
    });
    let connects = Arc::new(Semaphore::new(run.args.connect_concurrency.max(1)));
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(session(i as u32, run.clone(), connects.clone())))
        .collect();
    let mut outcomes = Vec::with_capacity(n);
    for t in tasks {
        outcomes.push(t.await.unwrap_or_default());
    }
    let send_seconds = run.args.duration.as_secs_f64();
    Report::of(&run.args, outcomes, send_seconds)
}

/// A connection from `src` to `dst`, the source port left to the kernel at connect time
/// (IP_BIND_ADDRESS_NO_PORT), so that more than 28k connections fit on each source address.
async fn connect(src: IpAddr, dst: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let sock = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if src.is_ipv4() == dst.is_ipv4() {
        let one: libc::c_int = 1;
        // SAFETY: a valid socket fd and a c_int option of the right size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(SocketAddr::new(src, 0))?;
    }
    let s = sock.connect(dst).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The reading half of a session: client frames from TCP, or from WebSocket messages.
struct Reader {
    rd: OwnedReadHalf,
    ws: bool,
    raw: BytesMut,
    buf: BytesMut,
    codec: ClientCodec,
}

impl Reader {
    /// The next frame; `None` when the gateway closed.
    async fn next(&mut self) -> io::Result<Option<ClientFrame>> {
        loop {
            if let Some(f) = self
                .codec
                .decode(&mut self.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                return Ok(Some(f));
            }
            let into = if self.ws {
                &mut self.raw
            } else {
                &mut self.buf
            };
            if self.rd.read_buf(into).await? == 0 {
                return Ok(None);
            }
            if self.ws && ws_messages(&mut self.raw, &mut self.buf) {
                return Ok(None);
            }
        }
    }
}

/// Moves whole WebSocket messages' payloads from `raw` to `buf`; `true` on a close.
fn ws_messages(raw: &mut BytesMut, buf: &mut BytesMut) -> bool {
    loop {
        if raw.len() < 2 {
            return false;
        }
        let op = raw[0] & 0x0f;
        let masked = raw[1] & 0x80 != 0;
        let (len, mut at) = match raw[1] & 0x7f {
            126 if raw.len() >= 4 => (usize::from(u16::from_be_bytes([raw[2], raw[3]])), 4),
            127 if raw.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&raw[2..10]);
                (
                    usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
                    10,
                )
            }
            126 | 127 => return false,
            n => (usize::from(n), 2),
        };
        let mut mask = [0u8; 4];
        if masked {
            let Some(m) = raw.get(at..at + 4) else {
                return false;
            };
            mask.copy_from_slice(m);
            at += 4;
        }
        if raw.len().saturating_sub(at) < len {
            return false;
        }
        let _ = raw.split_to(at);
        let mut payload = raw.split_to(len);
        if masked {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b ^= mask[i % 4]);
        }
        match op {
            0x0 | 0x2 => buf.extend_from_slice(&payload),
            0x8 => return true,
            // Pings are not answered: the gateway's idle timeout is not what this measures.
            _ => {}
        }
    }
}

/// The writing half: frames as they are, or each one a masked binary WebSocket message.
struct Writer {
    wr: OwnedWriteHalf,
    ws: bool,
    out: BytesMut,
    mask: [u8; 4],
}

impl Writer {
    async fn send(&mut self, frame: &ClientFrame) -> io::Result<()> {
        self.out.clear();
        let mut start = 0;
        if self.ws {
            let len = 8 + frame.payload.len();
            self.out.put_u8(0x82);
            match u16::try_from(len) {
                Ok(n) if n < 126 => self.out.put_u8(0x80 | n as u8),
                Ok(n) => {
                    self.out.put_u8(0x80 | 126);
                    self.out.put_u16(n);
                }
                Err(_) => {
                    self.out.put_u8(0x80 | 127);
                    self.out.put_u64(len as u64);
                }
            }
            self.mask = fastrand::u32(..).to_ne_bytes();
            self.out.put_slice(&self.mask);
            start = self.out.len();
        }
        ClientCodec::encode(frame, &mut self.out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if self.ws {
            let mask = self.mask;
            self.out[start..]
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b ^= mask[i % 4]);
        }
        self.wr.write_all(&self.out).await
    }
}

async fn ws_handshake(s: &mut tokio::net::TcpStream, dst: SocketAddr) -> io::Result<()> {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {dst}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 || head.len() > 8192 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "no WebSocket upgrade",
            ));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "upgrade refused: {}",
                String::from_utf8_lossy(&head).lines().next().unwrap_or("")
            ),
        ));
    }
    Ok(())
}

async fn session(i: u32, run: Arc<Run>, connects: Arc<Semaphore>) -> Outcome {
    let mut o = Outcome::default();
    let a = &run.args;
    let inst_add = if a.inst_spread > 0 {
        (i % u32::from(a.inst_spread)) + 1
    } else {
        0
    };
    let sid = ServerId((a.server_id & !0xff) | ((a.server_id & 0xff) + inst_add) & 0xff);
    let src = a.sources.0[i as usize % a.sources.0.len()];
    let opened = {
        let _permit = connects.acquire().await;
        open(src, a, sid).await
    };
    let (mut reader, mut writer, name) = match opened {
        Ok(x) => x,
        Err(Failed::Refused) => {
            o.refused = true;
            run.one_ready();
            return o;
        }
        Err(Failed::Closed(reason)) => {
            o.closed = true;
            o.close_reason = reason;
            run.one_ready();
            return o;
        }
    };
    o.established = true;
    o.established_at = run.start.elapsed();
    o.server = Some(name);
    run.one_ready();
    run.wait_go().await;
    let stop = run.stop_ns.load(Ordering::Acquire);
    if a.idle {
        hold(&run, &mut reader, stop, &mut o).await;
    } else {
        traffic(i, &run, &mut reader, &mut writer, sid, stop, &mut o).await;
    }
    if !o.closed {
        let who = ClientFrame {
            msg_id: WHOAMI,
            server_id: sid,
            payload: Bytes::new(),
        };
        if writer.send(&who).await.is_ok() {
            let deadline = tokio::time::Instant::now() + a.timeout;
            while let Ok(Ok(Some(f))) = tokio::time::timeout_at(deadline, reader.next()).await {
                if f.msg_id == WHOAMI {
                    o.server_at_end = Some(String::from_utf8_lossy(&f.payload).into_owned());
                    break;
                }
            }
        }
    }
    o
}

enum Failed {
    Refused,
    Closed(Option<u16>),
}

/// Connects, upgrades if WebSocket, and has the first frame (whoami) answered.
async fn open(
    src: IpAddr,
    a: &GameloadArgs,
    sid: ServerId,
) -> Result<(Reader, Writer, String), Failed> {
    let mut s = match tokio::time::timeout(a.timeout, connect(src, a.target)).await {
        Ok(Ok(s)) => s,
        _ => return Err(Failed::Refused),
    };
    if a.ws
        && !matches!(
            tokio::time::timeout(a.timeout, ws_handshake(&mut s, a.target)).await,
            Ok(Ok(()))
        )
    {
        return Err(Failed::Refused);
    }
    let (rd, wr) = s.into_split();
    let mut reader = Reader {
        rd,
        ws: a.ws,
        raw: BytesMut::new(),
        buf: BytesMut::new(),
        codec: ClientCodec::new(MAX_CLIENT_PAYLOAD),
    };
    let mut writer = Writer {
        wr,
        ws: a.ws,
        out: BytesMut::new(),
        mask: [0; 4],
    };
    let who = ClientFrame {
        msg_id: WHOAMI,
        server_id: sid,
        payload: Bytes::new(),
    };
    if writer.send(&who).await.is_err() {
        return Err(Failed::Closed(None));
    }
    match tokio::time::timeout(a.timeout, reader.next()).await {
        Ok(Ok(Some(f))) if f.msg_id == WHOAMI => Ok((
            reader,
            writer,
            String::from_utf8_lossy(&f.payload).into_owned(),
        )),
        Ok(Ok(Some(f))) if f.msg_id == CLOSE_FRAME => Err(Failed::Closed(close_code(&f))),
        // Refused by admission (a close without a frame) or an answer that is not ours.
        _ => Err(Failed::Closed(None)),
    }
}

fn close_code(f: &ClientFrame) -> Option<u16> {
    f.payload.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

/// Holds the session until `stop`, noting a close or a go-away.
async fn hold(run: &Run, reader: &mut Reader, stop: u64, o: &mut Outcome) {
    let until = run.start + Duration::from_nanos(stop);
    loop {
        match tokio::time::timeout_at(until.into(), reader.next()).await {
            Err(_) => return,
            Ok(Ok(Some(f))) if f.msg_id == GO_AWAY => o.go_away = true,
            Ok(Ok(Some(f))) if f.msg_id == CLOSE_FRAME => {
                o.closed = true;
                o.close_reason = close_code(&f);
                return;
            }
            Ok(Ok(Some(_))) => o.mismatched += 1,
            Ok(_) => {
                o.closed = true;
                return;
            }
        }
    }
}

/// Sends measured frames until `stop` (at the session's share of the rate, or closed-loop),
/// reading the answers alongside, then waits for the last answers.
async fn traffic(
    i: u32,
    run: &Run,
    reader: &mut Reader,
    writer: &mut Writer,
    sid: ServerId,
    stop: u64,
    o: &mut Outcome,
) {
    let a = &run.args;
    let sent = AtomicU64::new(0);
    let done_sending = AtomicBool::new(false);
    // The gateway closed the session: sending stops too.
    let gone = AtomicBool::new(false);
    // Closed loop: a permit per frame in flight.
    let window = Semaphore::new(if a.rate > 0.0 { 0 } else { a.window });
    let per_session = a.rate / a.sessions as f64;
    let send = async {
        let mut payload = BytesMut::with_capacity(a.payload);
        let mut tick = (per_session > 0.0).then(|| {
            let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / per_session));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            t
        });
        let mut seq: u32 = 0;
        loop {
            match tick.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => match window.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                },
            }
            let now = run.now_ns();
            if now >= stop || gone.load(Ordering::Acquire) {
                break;
            }
            payload.clear();
            payload.put_u32_le(i);
            payload.put_u32_le(seq);
            payload.put_u64_le(now);
            payload.resize(a.payload, 0xa5);
            let f = ClientFrame {
                msg_id: a.msg_id,
                server_id: sid,
                payload: payload.split().freeze(),
            };
            if writer.send(&f).await.is_err() {
                break;
            }
            seq = seq.wrapping_add(1);
            sent.fetch_add(1, Ordering::Release);
        }
        done_sending.store(true, Ordering::Release);
    };
    let receive = async {
        let mut expect: u32 = 0;
        let mut received = 0u64;
        let mut rtts = Vec::new();
        let end = run.start + Duration::from_nanos(stop) + a.timeout;
        loop {
            if done_sending.load(Ordering::Acquire) && received >= sent.load(Ordering::Acquire) {
                break;
            }
            // While sending, wake now and then to see whether sending ended.
            let wait = if done_sending.load(Ordering::Acquire) {
                end.into()
            } else {
                tokio::time::Instant::now() + Duration::from_millis(100)
            };
            let f = match tokio::time::timeout_at(wait, reader.next()).await {
                Err(_) if done_sending.load(Ordering::Acquire) => break,
                Err(_) => continue,
                Ok(Ok(Some(f))) => f,
                Ok(_) => {
                    o.closed = true;
                    gone.store(true, Ordering::Release);
                    window.close();
                    break;
                }
            };
            match f.msg_id {
                GO_AWAY => {
                    o.go_away = true;
                    continue;
                }
                CLOSE_FRAME => {
                    o.closed = true;
                    o.close_reason = close_code(&f);
                    gone.store(true, Ordering::Release);
                    window.close();
                    break;
                }
                _ => {}
            }
            let p = &f.payload[..];
            let ok = f.msg_id == a.msg_id
                && p.len() == a.payload
                && p[..4] == i.to_le_bytes()
                && p[4..8] == expect.to_le_bytes();
            if !ok {
                o.mismatched += 1;
                continue;
            }
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&p[8..16]);
            rtts.push(run.now_ns().saturating_sub(u64::from_le_bytes(ts)));
            expect = expect.wrapping_add(1);
            received += 1;
            window.add_permits(1);
        }
        (received, rtts)
    };
    let ((), (received, rtts)) = tokio::join!(send, receive);
    o.sent = sent.load(Ordering::Acquire);
    o.received = received;
    o.rtts_ns = rtts;
}

/// The run's figures.
struct Report {
    sessions: usize,
    established: usize,
    establish_seconds: f64,
    refused: usize,
    closed: usize,
    close_reasons: BTreeMap<u16, usize>,
    go_away: usize,
    mismatched: u64,
    sent: u64,
    received: u64,
    lost: u64,
    seconds: f64,
    rtt_ns: Option<[u64; 5]>,
    servers: BTreeMap<String, usize>,
    /// Sessions whose last whoami was answered by another server than their first.
    moved: usize,
    idle: bool,
}

impl Report {
    fn of(a: &GameloadArgs, outcomes: Vec<Outcome>, seconds: f64) -> Report {
        let mut r = Report {
            sessions: outcomes.len(),
            established: 0,
            establish_seconds: 0.0,
            refused: 0,
            closed: 0,
            close_reasons: BTreeMap::new(),
            go_away: 0,
            mismatched: 0,
            sent: 0,
            received: 0,
            lost: 0,
            seconds,
            rtt_ns: None,
            servers: BTreeMap::new(),
            moved: 0,
            idle: a.idle,
        };
        let mut rtts = Vec::new();
        for o in outcomes {
            r.established += usize::from(o.established);
            r.establish_seconds = r.establish_seconds.max(o.established_at.as_secs_f64());
            r.refused += usize::from(o.refused);
            r.closed += usize::from(o.closed);
            if let Some(c) = o.close_reason {
                *r.close_reasons.entry(c).or_default() += 1;
            }
            r.go_away += usize::from(o.go_away);
            r.mismatched += o.mismatched;
            r.sent += o.sent;
            r.received += o.received;
            r.lost += o.sent.saturating_sub(o.received);
            if let Some(s) = &o.server {
                *r.servers.entry(s.clone()).or_default() += 1;
                if o.server_at_end.as_ref().is_some_and(|e| e != s) {
                    r.moved += 1;
                }
            }
            rtts.extend(o.rtts_ns);
        }
        rtts.sort_unstable();
        if !rtts.is_empty() {
            let q =
                |p: f64| rtts[((rtts.len() as f64 * p).ceil() as usize).clamp(1, rtts.len()) - 1];
            r.rtt_ns = Some([q(0.5), q(0.99), q(0.999), rtts[rtts.len() - 1], rtts[0]]);
        }
        r
    }

    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.received as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn text(&self) -> String {
        let mut t = format!(
            "sessions: {} of {} established in {:.3} s\n",
            self.established, self.sessions, self.establish_seconds
        );
        let spread: Vec<String> = self
            .servers
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        t.push_str(&format!(
            "servers: {} (moved by the end: {})\n",
            spread.join(" "),
            self.moved
        ));
        if !self.idle {
            t.push_str(&format!(
                "frames: {} sent, {} answered in {:.1} s: {:.0} frames/s\n",
                self.sent,
                self.received,
                self.seconds,
                self.rate()
            ));
            if let Some([p50, p99, p999, max, min]) = self.rtt_ns {
                let us = |ns: u64| ns as f64 / 1000.0;
                t.push_str(&format!(
                    "rtt: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us (min {:.0}, max {:.0})\n",
                    us(p50),
                    us(p99),
                    us(p999),
                    us(min),
                    us(max)
                ));
            }
        }
        let reasons: Vec<String> = self
            .close_reasons
            .iter()
            .map(|(c, n)| format!("{c}x{n}"))
            .collect();
        t.push_str(&format!(
            "failures: refused {}, closed {} (close frames: {}), mismatched {}, lost {}; go-away {}\n",
            self.refused,
            self.closed,
            if reasons.is_empty() { "none".into() } else { reasons.join(" ") },
            self.mismatched,
            self.lost,
            self.go_away
        ));
        t
    }

    fn json(&self) -> String {
        let rtt = self
            .rtt_ns
            .map_or(serde_json::Value::Null, |[p50, p99, p999, max, min]| {
                serde_json::json!({"p50": p50 / 1000, "p99": p99 / 1000, "p999": p999 / 1000,
                "max": max / 1000, "min": min / 1000})
            });
        serde_json::json!({
            "sessions": self.sessions,
            "established": self.established,
            "establish_seconds": self.establish_seconds,
            "servers": self.servers,
            "moved": self.moved,
            "sent": self.sent,
            "received": self.received,
            "seconds": self.seconds,
            "frames_per_second": self.rate(),
            "rtt_us": rtt,
            "failures": {
                "refused": self.refused,
                "closed": self.closed,
                "mismatched": self.mismatched,
                "lost": self.lost,
            },
            "close_reasons": self.close_reasons.iter().map(|(c, n)| (c.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "go_away": self.go_away,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_take_ranges_and_lists() {
        let s = sources("127.0.0.2-127.0.0.4, 127.0.0.9").unwrap().0;
        assert_eq!(s.len(), 4);
        assert_eq!(s[3], "127.0.0.9".parse::<IpAddr>().unwrap());
        assert!(sources("127.0.0.4-127.0.0.2").is_err());
        assert!(sources("").is_err());
        assert_eq!(server_id("0x00030105").unwrap(), 0x0003_0105);
        assert_eq!(server_id("256").unwrap(), 256);
    }

    #[test]
    fn websocket_messages_are_unwrapped_across_reads() {
        let mut raw = BytesMut::new();
        let mut buf = BytesMut::new();
        // A 3-byte binary message, split, then a close.
        raw.extend_from_slice(&[0x82, 0x03, b'a']);
        assert!(!ws_messages(&mut raw, &mut buf));
        assert!(buf.is_empty());
        raw.extend_from_slice(b"bc");
        raw.extend_from_slice(&[0x88, 0x00]);
        assert!(ws_messages(&mut raw, &mut buf));
        assert_eq!(&buf[..], b"abc");
    }

    #[test]
    fn the_report_counts_moves_and_quantiles() {
        let a = GameloadArgs {
            target: "127.0.0.1:1".parse().unwrap(),
            sessions: 2,
            rate: 0.0,
            window: 1,
            payload: 64,
            duration: Duration::from_secs(1),
            sources: Sources(vec![]),
            server_id: 0,
            inst_spread: 0,
            msg_id: 1,
            ws: false,
            idle: false,
            connect_concurrency: 1,
            timeout: Duration::from_secs(1),
            threads: 1,
            json: true,
        };
        let o = |srv: &str, end: &str, rtts: Vec<u64>| Outcome {
            established: true,
            server: Some(srv.into()),
            server_at_end: Some(end.into()),
            sent: rtts.len() as u64 + 1,
            received: rtts.len() as u64,
            rtts_ns: rtts,
            ..Outcome::default()
        };
        let r = Report::of(
            &a,
            vec![
                o("a", "a", (1..=500).collect()),
                o("b", "c", (501..=1000).collect()),
            ],
            1.0,
        );
        assert_eq!((r.established, r.moved, r.lost), (2, 1, 2));
        assert_eq!(r.rtt_ns, Some([500, 990, 999, 1000, 1]));
        assert_eq!(r.servers.len(), 2);
        assert!(r.json().contains("\"moved\":1"));
    }
}
