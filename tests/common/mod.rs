//! Test harness: the real gateway binary on free loopback ports, small real backends, a real
//! Alertmanager ([`alertmanager`]), and a minimal HTTP/1.1 client. Everything started here is
//! stopped when its handle drops.
#![allow(dead_code)]

pub mod alertmanager;
pub mod nginx;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A loopback port nothing listens on, for a server a test starts.
///
/// The port is released before the server binds it. One the kernel hands out for `:0` is from
/// its ephemeral range, where any test's outgoing connection may take it in between; so ports
/// come from below that range, in turn from a place set by the process id, so that the tests
/// of one binary never pick the same one and test binaries running side by side rarely do.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const LOW: usize = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32_768)
        .min(u16::MAX as usize);
    if high <= LOW + 1_000 {
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
    }
    let span = high - LOW;
    let start = std::process::id() as usize * 1_009 % span;
    for _ in 0..span {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_zkgate")
}

// ---------------------------------------------------------------------------------------------
// client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("host: test.local\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("connection: close\r\n\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    read_response(&mut BufReader::new(s), method == "HEAD")
}

/// Sends `bytes` as they are (a request the client helpers could not write: a bad request line,
/// odd framing) on a fresh connection, and reads one response; `Ok(None)` when the server closed
/// the connection without answering.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Option<Response>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(bytes)?;
    match read_response(&mut BufReader::new(s), false) {
        Ok(r) => Ok(Some(r)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], b"").unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<(String, BTreeMap<String, String>)> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    Ok((first.trim_end().to_owned(), headers))
}

fn read_body(
    r: &mut impl BufRead,
    headers: &BTreeMap<String, String>,
    until_eof: bool,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(n) = headers.get("content-length") {
        let n: usize = n.parse().map_err(std::io::Error::other)?;
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if until_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn read_response(r: &mut impl BufRead, head_only: bool) -> std::io::Result<Response> {
    let (status_line, headers) = read_head(r)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let body = if head_only {
        Vec::new()
    } else {
        read_body(r, &headers, true)?
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A keep-alive client connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn {
            reader: BufReader::new(s),
        })
    }

    pub fn get(&mut self, target: &str) -> std::io::Result<Response> {
        let req = format!("GET {target} HTTP/1.1\r\nhost: test.local\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes())?;
        let (status_line, headers) = read_head(&mut self.reader)?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = read_body(&mut self.reader, &headers, false)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// backends

/// A real HTTP/1.1 backend on a loopback port. `GET /status/{code}?size={n}` answers with that
/// status and n bytes (`?chunked=1` for a chunked body); anything else is echoed back as JSON,
/// after a pause of `{ms}` milliseconds when the path ends in `/delay/{ms}`.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    /// Every request read, in order: target, headers, body.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    behaviour: Arc<AtomicU64>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Backend::start_at(name, "127.0.0.1:0".parse().unwrap())
    }

    pub fn start_at(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let b = Backend {
            addr,
            name: name.to_owned(),
            connections: Arc::default(),
            requests: Arc::default(),
            seen: Arc::default(),
            stop: Arc::default(),
            behaviour: Arc::default(),
        };
        let behaviour = b.behaviour.clone();
        let (name, conns, reqs, stop, seen) = (
            b.name.clone(),
            b.connections.clone(),
            b.requests.clone(),
            b.stop.clone(),
            b.seen.clone(),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                conns.fetch_add(1, Ordering::SeqCst);
                let (name, reqs, behaviour, seen) =
                    (name.clone(), reqs.clone(), behaviour.clone(), seen.clone());
                thread::spawn(move || serve(stream, &name, &reqs, &behaviour, &seen));
            }
        });
        b
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// How a [`Backend`] treats the requests it reads, changeable while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    /// Answers every request with this status.
    Status(u16),
    /// Answers after this many milliseconds.
    Delay(u64),
    /// Closes the connection without an answer.
    Close,
    /// Never answers (holds the connection for 30 s).
    Hang,
}

impl Behaviour {
    fn encode(self) -> u64 {
        match self {
            Behaviour::Normal => 0,
            Behaviour::Status(s) => 1 << 32 | s as u64,
            Behaviour::Delay(ms) => 2 << 32 | ms,
            Behaviour::Close => 3 << 32,
            Behaviour::Hang => 4 << 32,
        }
    }

    fn decode(v: u64) -> Behaviour {
        match v >> 32 {
            1 => Behaviour::Status(v as u16),
            2 => Behaviour::Delay(v & 0xffff_ffff),
            3 => Behaviour::Close,
            4 => Behaviour::Hang,
            _ => Behaviour::Normal,
        }
    }
}

impl Backend {
    pub fn behave(&self, b: Behaviour) {
        self.behaviour.store(b.encode(), Ordering::SeqCst);
    }
}

/// A request a [`Backend`] read.
#[derive(Clone, Debug)]
pub struct Seen {
    pub target: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The status the backend chose to answer with; 0 when it closed or held the connection
    /// without one. Tells a message the receiver took (2xx) from one it turned away.
    pub status: u16,
}

impl Backend {
    /// The requests read so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    name: &str,
    reqs: &AtomicUsize,
    behaviour: &AtomicU64,
    seen: &Mutex<Vec<Seen>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    loop {
        let Ok((line, headers)) = read_head(&mut r) else {
            return;
        };
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let Ok(body) = read_body(&mut r, &headers, false) else {
            return;
        };
        reqs.fetch_add(1, Ordering::SeqCst);
        // Read once, so that what is recorded is what this request gets.
        let acting = Behaviour::decode(behaviour.load(Ordering::SeqCst));
        let (mut path, query) = target.split_once('?').unwrap_or((&target, ""));
        let status = match acting {
            Behaviour::Status(code) => code,
            Behaviour::Close | Behaviour::Hang => 0,
            Behaviour::Normal | Behaviour::Delay(_) => path
                .strip_prefix("/status/")
                .map_or(200, |code| code.parse().unwrap_or(0)),
        };
        seen.lock().unwrap().push(Seen {
            target: target.clone(),
            headers: headers.clone(),
            body: body.clone(),
            status,
        });
        let forced;
        match acting {
            Behaviour::Normal => {}
            Behaviour::Status(code) => {
                forced = format!("/status/{code}");
                path = &forced;
            }
            Behaviour::Delay(ms) => thread::sleep(Duration::from_millis(ms)),
            Behaviour::Close => return,
            Behaviour::Hang => {
                thread::sleep(Duration::from_secs(30));
                return;
            }
        }
        let resp = if let Some(code) = path.strip_prefix("/status/") {
            let size: usize = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("size="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let payload = vec![b'x'; size];
            let chunked = query.contains("chunked=1");
            let mut resp = format!("HTTP/1.1 {code} Status\r\ncontent-type: text/plain\r\n");
            let mut bytes = Vec::new();
            if chunked {
                resp.push_str("transfer-encoding: chunked\r\n\r\n");
                bytes.extend_from_slice(resp.as_bytes());
                for piece in payload.chunks(4096) {
                    bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    bytes.extend_from_slice(piece);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
            } else {
                resp.push_str(&format!("content-length: {size}\r\n\r\n"));
                bytes.extend_from_slice(resp.as_bytes());
                bytes.extend_from_slice(&payload);
            }
            bytes
        } else {
            if let Some(ms) = path
                .rsplit_once("/delay/")
                .and_then(|(_, ms)| ms.parse().ok())
            {
                thread::sleep(Duration::from_millis(ms));
            }
            let echo = serde_json::json!({
                "backend": name,
                "method": method,
                "target": target,
                "headers": headers,
                "body_bytes": body.len(),
            });
            let text = echo.to_string();
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-backend: {name}\r\ncontent-length: {}\r\n\r\n{text}", text.len()).into_bytes()
        };
        if out.write_all(&resp).is_err() {
            return;
        }
        if headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the gateway

pub struct Gateway {
    pub child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// `{HTTP}` and `{ADMIN}` in `yaml` are replaced with free ports; a `server` section with short
/// grace periods and private pid/upgrade paths is prepended unless `yaml` has one.
pub fn config_text(
    yaml: &str,
    http: SocketAddr,
    admin: SocketAddr,
    dir: &std::path::Path,
) -> String {
    let mut text = yaml
        .replace("{HTTP}", &http.to_string())
        .replace("{ADMIN}", &admin.to_string());
    if !text.contains("server:") {
        text = format!(
            "server:\n  threads: 2\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n  upgrade_sock: {0}/upgrade.sock\n{text}",
            dir.display()
        );
    }
    if !text.contains("admin:") {
        text.push_str(&format!("\nadmin:\n  listen: {admin}\n"));
    }
    if !text.contains("listeners:") {
        text.push_str(&format!(
            "\nlisteners:\n  - name: web\n    listen: {http}\n"
        ));
    }
    text
}

impl Gateway {
    pub fn start(yaml: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("zkgate.yaml");
        std::fs::write(&config, config_text(yaml, http, admin, dir.path())).expect("write config");
        Gateway::spawn(dir, http, admin, config.clone().into_os_string(), &[])
    }

    /// Runs `zkgate run -c <source>` with `env` added; the config it reads must listen on
    /// `${env:HTTP_LISTEN}` and `${env:ADMIN_LISTEN}` and put its upgrade socket at
    /// `${env:UPGRADE_SOCK}`, which this sets to free ports and a private path.
    pub fn start_with_env(source: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let sock = dir.path().join("upgrade.sock").display().to_string();
        let (http_s, admin_s) = (http.to_string(), admin.to_string());
        let mut all = vec![
            ("HTTP_LISTEN", http_s.as_str()),
            ("ADMIN_LISTEN", admin_s.as_str()),
            ("UPGRADE_SOCK", sock.as_str()),
        ];
        all.extend_from_slice(env);
        Gateway::spawn(dir, http, admin, source.into(), &all)
    }

    fn spawn(
        dir: tempfile::TempDir,
        http: SocketAddr,
        admin: SocketAddr,
        source: std::ffi::OsString,
        env: &[(&str, &str)],
    ) -> Gateway {
        let config = dir.path().join("zkgate.yaml");
        let log = std::fs::File::create(dir.path().join("zkgate.log")).expect("log file");
        let child = Command::new(bin())
            .args(["run", "-c"])
            .arg(source)
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start zkgate");
        let mut gw = Gateway {
            child,
            http,
            admin,
            dir,
            config,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("zkgate exited with {status}:\n{}", self.log());
            }
            if request(self.admin, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
                && TcpStream::connect(self.http).is_ok()
            {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("zkgate not ready in time:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zkgate.log")).unwrap_or_default()
    }

    pub fn get(&self, target: &str) -> Response {
        get(self.http, target)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Rewrites the config file (same port substitution as `start`).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(
            &self.config,
            config_text(yaml, self.http, self.admin, self.dir.path()),
        )
        .expect("write config");
    }

    pub fn metrics(&self) -> String {
        get(self.admin, "/metrics").text()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// The `p` quantile (0 to 1) of an ascending list: the smallest value with at least that share
/// of the list at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The native JSON instance data for a backend at `addr`.
pub fn instance_json(addr: SocketAddr) -> Vec<u8> {
    format!(r#"{{"host":"{}","port":{}}}"#, addr.ip(), addr.port()).into_bytes()
}

/// The name of the echo backend that answered a GET of `target` on `c`.
pub fn backend_of(c: &mut Conn, target: &str) -> String {
    let r = c.get(target).expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["backend"].as_str().unwrap_or("").to_owned()
}

/// After backend `name` joined a round-robin set at `since`: the time until a GET of `target`
/// first goes to it (round robin sends it the first or the second request once it is in).
pub fn time_to_join(c: &mut Conn, target: &str, name: &str, since: Instant) -> Duration {
    while backend_of(c, target) != name {
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{name} never served in 5 s"
        );
    }
    since.elapsed()
}

/// After a backend left a round-robin set at `since`, leaving only `rest`: the time of the
/// first of two GETs of `target` in a row answered by `rest` (with two backends in the set one
/// client never sees that, so the pair marks the new set in force).
pub fn time_to_leave(c: &mut Conn, target: &str, rest: &str, since: Instant) -> Duration {
    let mut last = String::new();
    let mut when = since.elapsed();
    loop {
        let now = backend_of(c, target);
        if now == rest && last == rest {
            return when;
        }
        if now == rest {
            when = since.elapsed();
        }
        last = now;
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "the leaving backend still served after 5 s"
        );
    }
}

/// Client threads sending GETs in a loop (a fresh connection each) until `finish`, at most 60 s.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    /// One thread per target, cycling through `targets` if there are more threads.
    pub fn start(addr: SocketAddr, targets: &[&'static str], threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|i| {
                let (stop, target) = (stop.clone(), targets[i % targets.len()]);
                thread::spawn(move || {
                    let (mut ok, mut failures) = (0, Vec::new());
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        match request(addr, "GET", target, &[], b"") {
                            Ok(r) if r.status == 200 => ok += 1,
                            Ok(r) => failures.push(format!("{target}: {} {}", r.status, r.text())),
                            Err(e) => failures.push(format!("{target}: {e}")),
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients; asserts that no request failed and that some traffic flowed.
    pub fn finish_without_failures(self, min_ok: usize) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut ok, mut failures) = (0, Vec::new());
        for t in self.threads {
            let (o, f) = t.join().expect("load thread");
            ok += o;
            failures.extend(f);
        }
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {:?}",
            failures.len(),
            ok + failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(ok >= min_ok, "too little traffic: {ok} requests");
    }
}

/// A child process killed when the test ends, pass or fail.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A ZooKeeper client for code that is not async itself (the benches), with the runtime that
/// drives it.
pub fn blocking_zk_client(connect: &str) -> (tokio::runtime::Runtime, zookeeper_client::Client) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt
        .block_on(zookeeper_client::Client::connect(connect))
        .expect("connect to ZooKeeper");
    (rt, client)
}
