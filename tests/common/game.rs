//! The game listener's harness: the test game server (`examples/game_server.rs`) as a process,
//! a blocking game client over TCP or WebSocket that can come from any 127.0.0.x address, and
//! the ZooKeeper registrations game rules route to.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{blocking_zk_client, free_port};

/// The test server's commands (client message ids), as the contract lists them.
pub const WHOAMI: u16 = 0xF000;
pub const KICK: u16 = 0xF001;
pub const BROADCAST: u16 = 0xF002;
pub const FLOOD: u16 = 0xF003;
pub const DIE: u16 = 0xF004;
pub const SLEEP: u16 = 0xF005;
/// `name proto=P ip=IP port=N gateway=G` from the session's SessionOpen, `name -` without.
pub const HELLO: u16 = 0xF006;
/// `opened=N closed=N reasons=R,...`: the session events the server has seen.
pub const CLOSES: u16 = 0xF007;
/// The gateway's defaults for the close and go-away frames.
pub const CLOSE_FRAME: u16 = 0xFFFE;
pub const GO_AWAY: u16 = 0xFFFF;

/// A ServerID: world (15 bits), serverType, instId; no zip bit.
pub fn sid(world: u16, server_type: u8, inst: u8) -> u32 {
    (u32::from(world & 0x7fff) << 16) | (u32::from(server_type) << 8) | u32::from(inst)
}

/// The path of an example binary built next to this test binary (`target/<profile>/examples`).
/// `cargo test` builds the examples, `cargo test --test NAME` does not: then it is built here.
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !path.exists() && !*built {
        let profile = profile_dir.file_name().and_then(|n| n.to_str()) == Some("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile {
            cmd.arg("--release");
        }
        let ok = cmd.status().is_ok_and(|s| s.success());
        assert!(ok, "cargo build --example {name} failed");
        *built = true;
    }
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// The test game server as a process on a free loopback port; killed when dropped.
pub struct GameServer {
    pub name: String,
    pub addr: SocketAddr,
    pub child: Child,
    args: Vec<String>,
}

impl GameServer {
    /// `--name NAME` on a free port, with `args` (`--events`, `--gate traced`).
    pub fn start(name: &str, args: &[&str]) -> GameServer {
        GameServer::start_at(name, free_port(), args)
    }

    pub fn start_at(name: &str, port: u16, args: &[&str]) -> GameServer {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn(name, port, &args);
        GameServer {
            name: name.to_owned(),
            addr,
            child,
            args,
        }
    }

    /// Kills it (as a crash would) and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process still runs (it exits at once on `DIE`).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Starts it again on the same port with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        let (child, addr) = spawn(&self.name, self.addr.port(), &self.args);
        self.child = child;
        self.addr = addr;
    }

    /// The ZooKeeper instance data for it, `inst_id` in its metadata when given.
    pub fn instance_json(&self, inst_id: Option<u8>) -> Vec<u8> {
        game_instance_json(self.addr, inst_id)
    }
}

fn spawn(name: &str, port: u16, args: &[String]) -> (Child, SocketAddr) {
    let mut child = Command::new(example_bin("game_server"))
        .args(["--name", name, "--port", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start game_server");
    let mut out = child.stdout.take().expect("stdout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let addr = line
        .strip_prefix("listening ")
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("game_server {name} did not start: {line:?}")
        });
    (child, addr)
}

impl Drop for GameServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The native ZooKeeper instance JSON for a game server, with `inst_id` in its metadata.
pub fn game_instance_json(addr: SocketAddr, inst_id: Option<u8>) -> Vec<u8> {
    let meta = inst_id.map_or(String::new(), |i| {
        format!(r#","metadata":{{"inst_id":"{i}"}}"#)
    });
    format!(r#"{{"host":"{}","port":{}{meta}}}"#, addr.ip(), addr.port()).into_bytes()
}

/// A blocking ZooKeeper client that registers game servers under `/zkgate/services/SERVICE`.
pub struct Registry {
    rt: tokio::runtime::Runtime,
    client: zookeeper_client::Client,
}

impl Registry {
    pub fn connect(connect: &str) -> Registry {
        let (rt, client) = blocking_zk_client(connect);
        Registry { rt, client }
    }

    /// Registers `server` as instance `node` of `service` (a persistent node: tests that kill
    /// ZooKeeper keep their registrations).
    pub fn add(&self, service: &str, node: &str, server: &GameServer, inst_id: Option<u8>) {
        self.put(service, node, &server.instance_json(inst_id));
    }

    pub fn put(&self, service: &str, node: &str, data: &[u8]) {
        let opts = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        let dir = format!("/zkgate/services/{service}");
        self.rt.block_on(async {
            match self.client.mkdir(&dir, &opts).await {
                Ok(()) | Err(zookeeper_client::Error::NodeExists) => {}
                Err(e) => panic!("mkdir {dir}: {e}"),
            }
            self.client
                .create(&format!("{dir}/{node}"), data, &opts)
                .await
                .unwrap_or_else(|e| panic!("create {dir}/{node}: {e}"));
        });
    }

    pub fn remove(&self, service: &str, node: &str) {
        let path = format!("/zkgate/services/{service}/{node}");
        self.rt
            .block_on(self.client.delete(&path, None))
            .unwrap_or_else(|e| panic!("delete {path}: {e}"));
    }

    /// Writes `data` to `path` (created with its parents when missing).
    pub fn set(&self, path: &str, data: &[u8]) {
        let opts = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        self.rt.block_on(async {
            if let Some((parent, _)) = path.rsplit_once('/') {
                if !parent.is_empty() {
                    match self.client.mkdir(parent, &opts).await {
                        Ok(()) | Err(zookeeper_client::Error::NodeExists) => {}
                        Err(e) => panic!("mkdir {parent}: {e}"),
                    }
                }
            }
            match self.client.create(path, data, &opts).await {
                Ok(_) => {}
                Err(zookeeper_client::Error::NodeExists) => {
                    self.client
                        .set_data(path, data, None)
                        .await
                        .unwrap_or_else(|e| panic!("set {path}: {e}"));
                }
                Err(e) => panic!("create {path}: {e}"),
            }
        });
    }
}

/// One client frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub msg_id: u16,
    pub server_id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The u16 reason of a close frame, the u32 window of a go-away frame.
    pub fn u16(&self) -> Option<u16> {
        Some(u16::from_le_bytes(self.payload.get(..2)?.try_into().ok()?))
    }

    pub fn u32(&self) -> Option<u32> {
        Some(u32::from_le_bytes(self.payload.get(..4)?.try_into().ok()?))
    }
}

/// What a read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    Frame(Frame),
    /// The gateway closed (EOF, a reset, or a WebSocket close).
    Closed,
    /// Nothing within the time allowed.
    Timeout,
}

impl Got {
    /// The frame, or a panic saying what came instead.
    pub fn frame(self) -> Frame {
        match self {
            Got::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// Encodes a client frame.
pub fn client_frame(msg_id: u16, server_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("a client payload fits in u16");
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&msg_id.to_le_bytes());
    v.extend_from_slice(&server_id.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// A blocking game client: frames over TCP, or over WebSocket binary messages.
pub struct GameClient {
    pub stream: TcpStream,
    ws: bool,
    /// Bytes read and not yet a whole frame (for WebSocket: message payloads).
    buf: Vec<u8>,
    /// WebSocket only: raw bytes read and not yet a whole WebSocket frame.
    raw: Vec<u8>,
}

/// A TCP connection from `src` (any 127.0.0.x) to `addr`.
pub fn connect_from(src: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    s.set_nodelay(true)?;
    Ok(s)
}

impl GameClient {
    pub fn connect(addr: SocketAddr) -> io::Result<GameClient> {
        GameClient::connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), addr)
    }

    pub fn connect_from(src: IpAddr, addr: SocketAddr) -> io::Result<GameClient> {
        Ok(GameClient::over(connect_from(src, addr)?))
    }

    /// A client on a stream already open (after a PROXY header, say).
    pub fn over(stream: TcpStream) -> GameClient {
        GameClient {
            stream,
            ws: false,
            buf: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// A WebSocket client: the upgrade of `GET /` answered 101 with the right accept key.
    pub fn websocket(addr: SocketAddr) -> io::Result<GameClient> {
        let mut stream = connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed during the upgrade: {}",
                        String::from_utf8_lossy(&head)
                    ),
                ));
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        // RFC 6455's own example key and its accept value.
        if !head.starts_with("http/1.1 101")
            || !head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=")
        {
            return Err(io::Error::other(format!("no WebSocket upgrade: {head}")));
        }
        Ok(GameClient {
            stream,
            ws: true,
            buf: Vec::new(),
            raw: Vec::new(),
        })
    }

    pub fn send(&mut self, msg_id: u16, server_id: u32, payload: &[u8]) -> io::Result<()> {
        let frame = client_frame(msg_id, server_id, payload);
        self.send_raw(&frame)
    }

    /// Bytes as they are: over WebSocket, one binary message.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !self.ws {
            return self.stream.write_all(bytes);
        }
        let mut msg = Vec::with_capacity(bytes.len() + 14);
        msg.push(0x82);
        match bytes.len() {
            n if n < 126 => msg.push(0x80 | n as u8),
            n if n <= 0xffff => {
                msg.push(0x80 | 126);
                msg.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                msg.push(0x80 | 127);
                msg.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = fastrand::u32(..).to_be_bytes();
        msg.extend_from_slice(&mask);
        msg.extend(bytes.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&msg)
    }

    /// The next frame within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.take_frame() {
                return Got::Frame(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Got::Closed,
                Ok(n) => {
                    if self.ws {
                        self.raw.extend_from_slice(&chunk[..n]);
                        if self.take_ws_messages() {
                            if let Some(f) = self.take_frame() {
                                return Got::Frame(f);
                            }
                            return Got::Closed;
                        }
                    } else {
                        self.buf.extend_from_slice(&chunk[..n]);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Got::Timeout
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Got::Closed,
            }
        }
    }

    /// Sends a frame and reads the next one (5 s at most).
    pub fn call(&mut self, msg_id: u16, server_id: u32, payload: &[u8]) -> Got {
        if self.send(msg_id, server_id, payload).is_err() {
            return Got::Closed;
        }
        self.recv(Duration::from_secs(5))
    }

    /// The name of the game server answering `WHOAMI` for `server_id`.
    pub fn whoami(&mut self, server_id: u32) -> String {
        self.call(WHOAMI, server_id, b"").frame().text()
    }

    /// Frames until the connection closes (or `timeout` passes: then `None`).
    pub fn until_closed(&mut self, timeout: Duration) -> Option<Vec<Frame>> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                Got::Frame(f) => frames.push(f),
                Got::Closed => return Some(frames),
                Got::Timeout => return None,
            }
        }
    }

    fn take_frame(&mut self) -> Option<Frame> {
        let head = self.buf.get(..8)?;
        let len = usize::from(u16::from_le_bytes([head[0], head[1]]));
        if self.buf.len() < 8 + len {
            return None;
        }
        let msg_id = u16::from_le_bytes([head[2], head[3]]);
        let server_id = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let payload = self.buf[8..8 + len].to_vec();
        self.buf.drain(..8 + len);
        Some(Frame {
            msg_id,
            server_id,
            payload,
        })
    }

    /// Moves whole WebSocket messages' payloads from `raw` to `buf`; `true` on a close.
    fn take_ws_messages(&mut self) -> bool {
        loop {
            let r = &self.raw;
            if r.len() < 2 {
                return false;
            }
            let op = r[0] & 0x0f;
            let masked = r[1] & 0x80 != 0;
            let (len, mut at) = match r[1] & 0x7f {
                126 if r.len() >= 4 => (usize::from(u16::from_be_bytes([r[2], r[3]])), 4),
                127 if r.len() >= 10 => (
                    u64::from_be_bytes(r[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => return false,
                n => (usize::from(n), 2),
            };
            let mask = if masked {
                let Some(m) = r.get(at..at + 4) else {
                    return false;
                };
                at += 4;
                Some([m[0], m[1], m[2], m[3]])
            } else {
                None
            };
            if r.len() < at + len {
                return false;
            }
            let mut payload = r[at..at + len].to_vec();
            if let Some(m) = mask {
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= m[i % 4]);
            }
            self.raw.drain(..at + len);
            match op {
                0x0 | 0x2 => self.buf.extend_from_slice(&payload),
                0x8 => return true,
                0x9 => {
                    // A ping: answer it (masked, as a client must).
                    let mut pong = vec![0x8a, 0x80 | payload.len().min(125) as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(&payload[..payload.len().min(125)]);
                    let _ = self.stream.write_all(&pong);
                }
                _ => {}
            }
        }
    }
}

/// A PROXY protocol v1 header for a TCP4 client `src` to `dst`.
pub fn proxy_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4) for `src` to `dst`.
pub fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 addresses only");
    };
    let mut v = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v.push(0x21);
    v.push(0x11);
    v.extend_from_slice(&12u16.to_be_bytes());
    v.extend_from_slice(&s.octets());
    v.extend_from_slice(&d.octets());
    v.extend_from_slice(&src.port().to_be_bytes());
    v.extend_from_slice(&dst.port().to_be_bytes());
    v
}

/// The YAML of a game gateway: `listeners` holds one game listener on `{HTTP}` with `game`
/// (the body of its `game:` map, indented by the caller's text) and `upstreams` as given.
pub fn game_config(zk: Option<&str>, upstreams: &str, game: &str, extra_listener: &str) -> String {
    let zk = zk.map_or(String::new(), |c| {
        format!("zookeeper: {{ connect: \"{c}\", session_timeout: 3s }}\n")
    });
    format!(
        "{zk}upstreams:\n{upstreams}\nlisteners:\n  - name: game\n    listen: \"{{HTTP}}\"\n{extra_listener}    game:\n{game}\n"
    )
}

/// The gateway's game listener: the `{HTTP}` address of a config whose only listener is the
/// game one (as `game_config` writes it).
pub fn game_addr(gw: &super::Gateway) -> SocketAddr {
    gw.http
}

/// The sum of the samples of `family` whose labels contain every `labels` pair (`k="v"`).
pub fn metric_sum(metrics: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Prints the gateway's log when the test fails.
pub struct LogOnPanic<'a>(pub &'a super::Gateway);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway log:\n{}", self.0.log());
        }
    }
}
