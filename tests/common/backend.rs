//! Small real backends: an HTTP/1.1 server on a loopback port that echoes what it read, answers
//! with a chosen status, or misbehaves on demand ([`Behaviour`]).

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::client::{read_body, read_head};

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
        Backend::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)))
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
        self.seen.lock().expect("a backend thread panicked").clone()
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
        seen.lock().expect("a backend thread panicked").push(Seen {
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
