//! A test game server speaking the game gateway's backend framing (`zkgate::game::codec`): the
//! server behind the game e2e tests, the README's "Try it" and the throughput benches.
//!
//! One connection from a gateway may carry many sessions (multiplexed links): every frame is
//! answered on the connection it came from, addressed to its gate SessionID. What a client's
//! message id asks for (the contract's test commands):
//!
//! | msg id | does |
//! | --- | --- |
//! | any other | echo: same msg id, ServerID and payload |
//! | 0xF000 whoami | payload = this server's `--name` |
//! | 0xF001 kick me | a SessionClose for the session (`--events`; else the link is closed) |
//! | 0xF002 broadcast | the payload to every session this server knows, one Broadcast per link |
//! | 0xF003 flood | payload u32 n: n frames of 1 KiB to this session |
//! | 0xF004 die | the process exits at once |
//! | 0xF005 sleep | payload u32 ms: this link is not read for that long |
//! | 0xF006 hello | `name proto=P ip=IP port=N gateway=G` from the session's SessionOpen (`-` if none) |
//! | 0xF007 closes | `opened=N closed=N reasons=R,R,...`: the SessionOpen/SessionClose seen so far |
//!
//! With `--client` it speaks the client framing instead (8-byte header, one session per
//! connection; echo and whoami only): the server behind a plain TCP proxy such as HAProxy in
//! `benches/game-compare.sh`.
//!
//! Usage: `game_server --name NAME [--port N] [--listen IP] [--gate short|traced] [--events]
//! [--client] [--threads N]`. It prints `listening IP:PORT` once bound, then serves until
//! killed.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use zkgate::game::codec::{
    BackendCodec, BackendFrame, ClientCodec, GateForm, Opcode, MAX_CLIENT_PAYLOAD,
};

const WHOAMI: i32 = 0xF000;
const KICK: i32 = 0xF001;
const BROADCAST: i32 = 0xF002;
const FLOOD: i32 = 0xF003;
const DIE: i32 = 0xF004;
const SLEEP: i32 = 0xF005;
const HELLO: i32 = 0xF006;
const CLOSES: i32 = 0xF007;

const OP_OPEN: u8 = 2;
const OP_CLOSE: u8 = 3;
const OP_BROADCAST: u8 = 4;

/// Bigger than any frame a gateway sends (its client payloads are at most 65,535 bytes).
const MAX_FRAME: usize = 1 << 20;

struct Opts {
    name: String,
    listen: SocketAddr,
    gate: GateForm,
    events: bool,
    client: bool,
    threads: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("game_server: {msg}");
    eprintln!(
        "usage: game_server --name NAME [--port N] [--listen IP] [--gate short|traced] [--events] [--threads N]"
    );
    std::process::exit(2)
}

fn opts() -> Opts {
    let mut o = Opts {
        name: "game".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        gate: GateForm::Short,
        events: false,
        client: false,
        threads: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--name" => o.name = val(),
            "--port" => {
                let p = val();
                o.listen.set_port(
                    p.parse()
                        .unwrap_or_else(|_| usage(&format!("bad port {p}"))),
                );
            }
            "--listen" => {
                let ip = val();
                o.listen.set_ip(
                    ip.parse()
                        .unwrap_or_else(|_| usage(&format!("bad IP {ip}"))),
                );
            }
            "--gate" => {
                o.gate = match val().as_str() {
                    "short" => GateForm::Short,
                    "traced" => GateForm::Traced,
                    other => usage(&format!("--gate {other}: short or traced")),
                }
            }
            "--events" => o.events = true,
            "--client" => o.client = true,
            "--threads" => {
                let t = val();
                o.threads = t
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage(&format!("bad thread count {t}")));
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    o
}

/// What a session's SessionOpen said.
#[derive(Clone)]
struct Opened {
    proto: u8,
    client: SocketAddr,
    gateway: u16,
}

/// Everything the links share: which link each session was last seen on (for broadcasts) and
/// what the events said.
#[derive(Default)]
struct World {
    sessions: Mutex<HashMap<i64, (u64, mpsc::Sender<Bytes>)>>,
    opened: Mutex<HashMap<i64, Opened>>,
    opens: AtomicU64,
    closes: Mutex<Vec<u16>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn main() {
    let o = Arc::new(opts());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads)
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage(&format!("cannot start a runtime: {e}")));
    rt.block_on(async move {
        let listener = match TcpListener::bind(o.listen).await {
            Ok(l) => l,
            Err(e) => usage(&format!("cannot listen on {}: {e}", o.listen)),
        };
        let addr = listener.local_addr().unwrap_or(o.listen);
        println!("listening {addr}");
        let _ = std::io::stdout().flush();
        let world = Arc::new(World::default());
        let mut next_link = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of fds or the like: let the gateway's connect fail, try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            next_link += 1;
            if o.client {
                tokio::spawn(serve_client(stream, o.clone()));
            } else {
                tokio::spawn(serve(stream, next_link, o.clone(), world.clone()));
            }
        }
    });
}

/// One gateway link: a reader that answers, a writer that coalesces what the answers and
/// broadcasts queue.
async fn serve(stream: TcpStream, link: u64, o: Arc<Opts>, world: Arc<World>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    let writer = tokio::spawn(async move {
        let mut batch = BytesMut::new();
        while let Some(first) = rx.recv().await {
            batch.extend_from_slice(&first);
            while batch.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if wr.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
        }
        let _ = wr.shutdown().await;
    });
    let codec = BackendCodec::new(o.gate, MAX_FRAME);
    let mut seen: HashSet<i64> = HashSet::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::new();
    'read: loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("link {link}: {e}; closing it");
                    break 'read;
                }
            };
            if seen.insert(frame.session_id) {
                lock(&world.sessions).insert(frame.session_id, (link, tx.clone()));
            }
            let after = handle(&o, &world, &codec, link, frame, &mut out, &mut seen);
            if !out.is_empty() && tx.send(out.split().freeze()).await.is_err() {
                break 'read;
            }
            match after {
                After::Go => {}
                After::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                After::Broadcast(payload, msg_type) => {
                    broadcast(&o, &world, &codec, msg_type, payload).await;
                }
                // Its own task: the link keeps being read while the flood waits on it.
                After::Flood(session, n) => {
                    tokio::spawn(flood(codec, tx.clone(), session, n));
                }
                After::Close => break 'read,
            }
        }
    }
    drop(tx);
    {
        // The writer ends once no session entry holds this link's sender any more.
        let mut sessions = lock(&world.sessions);
        for id in &seen {
            if sessions.get(id).is_some_and(|(l, _)| *l == link) {
                sessions.remove(id);
            }
        }
    }
    let _ = writer.await;
}

/// One client connection in the client framing: every frame echoed (whoami answered with the
/// name), each read's answers in one write.
async fn serve_client(mut stream: TcpStream, o: Arc<Opts>) {
    let codec = ClientCodec::new(MAX_CLIENT_PAYLOAD);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let name = Bytes::from(o.name.clone());
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(mut f)) => {
                    if i32::from(f.msg_id) == WHOAMI {
                        f.payload = name.clone();
                    }
                    let _ = ClientCodec::encode(&f, &mut out);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

/// What the reader does after a frame's direct answer is queued.
enum After {
    Go,
    Sleep(u64),
    Broadcast(Bytes, i32),
    Flood(i64, u32),
    Close,
}

fn u32_of(p: &[u8]) -> u32 {
    p.get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn handle(
    o: &Opts,
    world: &World,
    codec: &BackendCodec,
    link: u64,
    f: BackendFrame,
    out: &mut BytesMut,
    seen: &mut HashSet<i64>,
) -> After {
    match f.opcode {
        Opcode::Trans => {}
        Opcode::Other(OP_OPEN) => {
            if let Some(opened) = parse_open(&f.payload) {
                lock(&world.opened).insert(f.session_id, opened);
            }
            world.opens.fetch_add(1, Ordering::Relaxed);
            return After::Go;
        }
        Opcode::Other(OP_CLOSE) => {
            let reason = f
                .payload
                .get(..2)
                .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
            lock(&world.closes).push(reason);
            lock(&world.opened).remove(&f.session_id);
            let mut sessions = lock(&world.sessions);
            if sessions.get(&f.session_id).is_some_and(|(l, _)| *l == link) {
                sessions.remove(&f.session_id);
            }
            seen.remove(&f.session_id);
            return After::Go;
        }
        Opcode::Other(op) => {
            eprintln!("link {link}: unknown opcode {op}, frame ignored");
            return After::Go;
        }
    }
    let reply = |out: &mut BytesMut, payload: Bytes| {
        let r = BackendFrame {
            payload,
            opcode: Opcode::Trans,
            ..f.clone()
        };
        // Our own frames are within MAX_FRAME: a client payload is at most 65,535 bytes.
        let _ = codec.encode(&r, out);
    };
    match f.msg_type {
        WHOAMI => reply(out, Bytes::from(o.name.clone())),
        KICK => {
            if !o.events {
                return After::Close;
            }
            let close = BackendFrame {
                msg_type: 0,
                server_id: 0,
                object_id: f.session_id,
                opcode: Opcode::Other(OP_CLOSE),
                session_id: f.session_id,
                trace: f.trace,
                payload: Bytes::from_static(&[0, 0]),
            };
            let _ = codec.encode(&close, out);
        }
        BROADCAST => return After::Broadcast(f.payload, f.msg_type),
        FLOOD => return After::Flood(f.session_id, u32_of(&f.payload)),
        DIE => std::process::exit(0),
        SLEEP => return After::Sleep(u64::from(u32_of(&f.payload))),
        HELLO => {
            let text = match lock(&world.opened).get(&f.session_id) {
                Some(op) => format!(
                    "{} proto={} ip={} port={} gateway={}",
                    o.name,
                    op.proto,
                    op.client.ip(),
                    op.client.port(),
                    op.gateway
                ),
                None => format!("{} -", o.name),
            };
            reply(out, Bytes::from(text));
        }
        CLOSES => {
            let closes = lock(&world.closes);
            let reasons: Vec<String> = closes.iter().map(u16::to_string).collect();
            let text = format!(
                "opened={} closed={} reasons={}",
                world.opens.load(Ordering::Relaxed),
                closes.len(),
                reasons.join(",")
            );
            reply(out, Bytes::from(text));
        }
        _ => reply(out, f.payload.clone()),
    }
    After::Go
}

/// SessionOpen's payload: u8 protocol, u8 family, the IP, u16 port, u16 gateway id.
fn parse_open(p: &[u8]) -> Option<Opened> {
    let (&proto, rest) = p.split_first()?;
    let (&family, rest) = rest.split_first()?;
    let (ip, rest): (IpAddr, &[u8]) = match family {
        4 => {
            let b: [u8; 4] = rest.get(..4)?.try_into().ok()?;
            (Ipv4Addr::from(b).into(), &rest[4..])
        }
        6 => {
            let b: [u8; 16] = rest.get(..16)?.try_into().ok()?;
            (Ipv6Addr::from(b).into(), &rest[16..])
        }
        _ => return None,
    };
    let port = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?);
    let gateway = u16::from_le_bytes(rest.get(2..4)?.try_into().ok()?);
    Some(Opened {
        proto,
        client: SocketAddr::new(ip, port),
        gateway,
    })
}

/// The payload to every known session: with events one Broadcast frame per link (in chunks of
/// at most 65,535 ids), without them one Trans frame per session.
async fn broadcast(o: &Opts, world: &World, codec: &BackendCodec, msg_type: i32, payload: Bytes) {
    let mut by_link: HashMap<u64, (mpsc::Sender<Bytes>, Vec<i64>)> = HashMap::new();
    for (id, (link, tx)) in lock(&world.sessions).iter() {
        by_link
            .entry(*link)
            .or_insert_with(|| (tx.clone(), Vec::new()))
            .1
            .push(*id);
    }
    for (_, (tx, ids)) in by_link {
        let mut out = BytesMut::new();
        if o.events {
            for chunk in ids.chunks(usize::from(u16::MAX)) {
                let mut p = BytesMut::with_capacity(2 + 8 * chunk.len() + payload.len());
                p.put_u16_le(chunk.len() as u16);
                for id in chunk {
                    p.put_i64_le(*id);
                }
                p.put_slice(&payload);
                let f = BackendFrame {
                    msg_type,
                    server_id: 0,
                    object_id: 0,
                    opcode: Opcode::Other(OP_BROADCAST),
                    session_id: 0,
                    trace: None,
                    payload: p.freeze(),
                };
                let _ = codec.encode(&f, &mut out);
            }
        } else {
            for id in ids {
                let f = BackendFrame {
                    msg_type,
                    server_id: 0,
                    object_id: id,
                    opcode: Opcode::Trans,
                    session_id: id,
                    trace: None,
                    payload: payload.clone(),
                };
                let _ = codec.encode(&f, &mut out);
            }
        }
        let _ = tx.send(out.freeze()).await;
    }
}

/// `n` frames of 1 KiB to `session`, queued in batches (waiting while the link is full).
async fn flood(codec: BackendCodec, tx: mpsc::Sender<Bytes>, session: i64, n: u32) {
    let chunk = Bytes::from(vec![0x5a; 1024]);
    let mut left = n;
    while left > 0 {
        let now = left.min(64);
        let mut out = BytesMut::new();
        for _ in 0..now {
            let f = BackendFrame {
                msg_type: FLOOD,
                server_id: 0,
                object_id: session,
                opcode: Opcode::Trans,
                session_id: session,
                trace: None,
                payload: chunk.clone(),
            };
            let _ = codec.encode(&f, &mut out);
        }
        if tx.send(out.freeze()).await.is_err() {
            return;
        }
        left -= now;
    }
}
