//! A measured prototype for issue 16: how fast a lean HTTP/1.1 forwarding loop on pingora-core's
//! pieces (server, listener, runtime, connector) goes, next to bare Pingora's proxy on the same
//! runtime. Not a product path: it forwards bodyless and `Content-Length` requests to one
//! backend and refuses everything else, which zkgate would hand to the full proxy instead.
//!
//! Per request it does what nginx does: one read of the head into the connection's buffer, one
//! parse with a small header array on the stack, one write of the edited head upstream, one read
//! of the answer's head, one write of it down, and the body copied by its framing. Idle upstream
//! connections wait in a per-thread list checked on take, instead of Pingora's pool with its
//! watcher task per release.
//!
//! Usage: lean_h1 LISTEN BACKEND [THREADS]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use futures::FutureExt;
use pingora::apps::ServerApp;
use pingora::connectors::TransportConnector;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::upstreams::peer::HttpPeer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MAX_HEADERS: usize = 64;
const MAX_HEAD: usize = 16 * 1024;
const KEEPALIVE: Duration = Duration::from_secs(60);
const UPSTREAM_READ: Duration = Duration::from_secs(60);
const IDLE_KEEP: usize = 256;

/// The answers of a refused request, each closing the connection.
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const NOT_IMPLEMENTED: &[u8] =
    b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const TOO_LARGE: &[u8] =
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

thread_local! {
    /// Idle upstream connections of this thread, most recently used last.
    static IDLE: RefCell<Vec<Stream>> = const { RefCell::new(Vec::new()) };
}

struct Lean {
    peer: HttpPeer,
    connector: TransportConnector,
}

/// Why a connection ends: `Close` after a complete exchange, `Refuse` with a status first.
enum End {
    Close,
    Refuse(&'static [u8]),
}

/// The facts of a request head that forwarding needs.
struct Req {
    head_len: usize,
    body_len: usize,
    keep_alive: bool,
    head_method: bool,
}

/// The facts of a response head that forwarding needs.
struct Resp {
    head_len: usize,
    body: Framing,
    keep_alive: bool,
}

enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a connection stays open after a `Connection` field with `value`, given what its
/// HTTP version said.
fn keep_alive_after(value: &[u8], version_default: bool) -> bool {
    if has_token(value, "close") {
        false
    } else {
        version_default || has_token(value, "keep-alive")
    }
}

fn put_header(out: &mut Vec<u8>, h: &httparse::Header<'_>) {
    out.extend_from_slice(h.name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(h.value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the request head in `buf` and writes its upstream form into `out`. `Ok(None)`: the
/// head is not complete yet.
fn request_head(buf: &[u8], out: &mut Vec<u8>) -> Result<Option<Req>, End> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(End::Refuse(BAD_REQUEST)),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(End::Close);
    };
    let mut keep_alive = version == 1;
    let mut body_len = 0;
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = keep_alive_after(h.value, keep_alive);
            if h.value.split(|b| *b == b',').any(|t| {
                let t = t.trim_ascii();
                !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
            }) {
                // Nominated hop-by-hop headers: the full proxy's business.
                return Err(End::Refuse(NOT_IMPLEMENTED));
            }
            continue;
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("upgrade")
        {
            return Err(End::Refuse(NOT_IMPLEMENTED));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            match n {
                Some(n) if body_len == 0 => body_len = n,
                _ => return Err(End::Refuse(BAD_REQUEST)),
            }
        }
        if is_hop(h.name) {
            continue;
        }
        put_header(out, h);
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Req {
        head_len,
        body_len,
        keep_alive,
        head_method: method == "HEAD",
    }))
}

/// Parses the response head in `buf` and writes its downstream form into `out`.
fn response_head(
    buf: &[u8],
    head_method: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Result<Option<Resp>, End> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(End::Refuse(BAD_GATEWAY)),
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err(End::Close);
    };
    let mut upstream_keep = version == 1;
    let mut body = if head_method || code == 204 || code == 304 || (100..200).contains(&code) {
        Framing::None
    } else {
        Framing::UntilClose
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // The status line carries the three digits the backend sent (httparse checked them).
    let _ = std::io::Write::write_fmt(out, format_args!("{code}"));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            upstream_keep = keep_alive_after(h.value, upstream_keep);
            continue;
        }
        if !matches!(body, Framing::None) {
            if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    Some(n) => body = Framing::Length(n),
                    None => return Err(End::Refuse(BAD_GATEWAY)),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                && has_token(h.value, "chunked")
            {
                body = Framing::Chunked;
                // Passed through as chunked: the client reads the same framing.
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                continue;
            }
        }
        if is_hop(h.name) {
            continue;
        }
        put_header(out, h);
    }
    let keep = keep_alive && !matches!(body, Framing::UntilClose);
    out.extend_from_slice(if keep {
        b"\r\n" as &[u8]
    } else {
        b"connection: close\r\n\r\n"
    });
    Ok(Some(Resp {
        head_len,
        body,
        keep_alive: upstream_keep,
    }))
}

/// How many bytes of `buf` finish a chunked body, if it is complete in `buf`.
fn chunked_end(buf: &[u8]) -> Result<Option<usize>, End> {
    let mut at = 0;
    loop {
        match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete((n, size))) => {
                at += n;
                if size == 0 {
                    // Trailers are not expected from the backends this prototype fronts.
                    return Ok((buf.len() >= at + 2).then_some(at + 2));
                }
                let size = usize::try_from(size).map_err(|_| End::Close)?;
                if buf.len() < at + size + 2 {
                    return Ok(None);
                }
                at += size + 2;
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(End::Close),
        }
    }
}

/// An idle upstream connection of this thread that is still usable, or a new one.
async fn upstream(lean: &Lean) -> Option<Stream> {
    while let Some(mut s) = IDLE.with(|i| i.borrow_mut().pop()) {
        let mut probe = [0u8; 1];
        // A read that would block means the backend has neither closed nor sent stray bytes.
        if s.read(&mut probe).now_or_never().is_none() {
            return Some(s);
        }
    }
    lean.connector.new_stream(&lean.peer).await.ok()
}

fn release(s: Stream) {
    IDLE.with(|i| {
        let mut i = i.borrow_mut();
        if i.len() < IDLE_KEEP {
            i.push(s);
        }
    });
}

async fn read_more(s: &mut Stream, buf: &mut BytesMut) -> Option<usize> {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(4096);
    }
    match s.read_buf(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

impl Lean {
    async fn serve(&self, down: &mut Stream) -> End {
        let mut dbuf = BytesMut::with_capacity(4096);
        let mut ubuf = BytesMut::with_capacity(4096);
        let mut head = Vec::with_capacity(1024);
        loop {
            // One request head, under the keep-alive timeout.
            let req = loop {
                match request_head(&dbuf, &mut head) {
                    Ok(Some(r)) => break r,
                    Ok(None) if dbuf.len() >= MAX_HEAD => return End::Refuse(TOO_LARGE),
                    Ok(None) => {}
                    Err(e) => return e,
                }
                let read = pingora::prelude::fast_timeout::fast_timeout(
                    KEEPALIVE,
                    read_more(down, &mut dbuf),
                );
                if !matches!(read.await, Ok(Some(_))) {
                    return End::Close;
                }
            };
            dbuf.advance(req.head_len);
            let Some(mut up) = upstream(self).await else {
                return End::Refuse(BAD_GATEWAY);
            };
            if up.write_all(&head).await.is_err() {
                return End::Refuse(BAD_GATEWAY);
            }
            // The request body, by its Content-Length.
            let mut left = req.body_len;
            while left > 0 {
                if dbuf.is_empty() && read_more(down, &mut dbuf).await.is_none() {
                    return End::Close;
                }
                let n = left.min(dbuf.len());
                if up.write_all(&dbuf[..n]).await.is_err() {
                    return End::Close;
                }
                dbuf.advance(n);
                left -= n;
            }
            // The response head.
            ubuf.clear();
            let resp = loop {
                match response_head(&ubuf, req.head_method, req.keep_alive, &mut head) {
                    Ok(Some(r)) => break r,
                    Ok(None) if ubuf.len() >= MAX_HEAD => return End::Refuse(BAD_GATEWAY),
                    Ok(None) => {}
                    Err(e) => return e,
                }
                let read = pingora::prelude::fast_timeout::fast_timeout(
                    UPSTREAM_READ,
                    read_more(&mut up, &mut ubuf),
                );
                if !matches!(read.await, Ok(Some(_))) {
                    return End::Refuse(BAD_GATEWAY);
                }
            };
            ubuf.advance(resp.head_len);
            // Head and what came of the body in one write when the body is complete already.
            let done = match resp.body {
                Framing::None => Some(0),
                Framing::Length(n) => (ubuf.len() >= n).then_some(n),
                Framing::Chunked => match chunked_end(&ubuf) {
                    Ok(end) => end,
                    Err(e) => return e,
                },
                Framing::UntilClose => None,
            };
            if let Some(n) = done {
                head.extend_from_slice(&ubuf[..n]);
                if down.write_all(&head).await.is_err() || down.flush().await.is_err() {
                    return End::Close;
                }
                ubuf.advance(n);
                if resp.keep_alive && ubuf.is_empty() {
                    release(up);
                }
            } else {
                if down.write_all(&head).await.is_err() {
                    return End::Close;
                }
                if !self.body(&mut up, down, &mut ubuf, resp.body).await {
                    return End::Close;
                }
                if resp.keep_alive {
                    release(up);
                }
            }
            if !req.keep_alive {
                return End::Close;
            }
        }
    }

    /// The rest of a response body that did not come with its head.
    async fn body(
        &self,
        up: &mut Stream,
        down: &mut Stream,
        ubuf: &mut BytesMut,
        framing: Framing,
    ) -> bool {
        match framing {
            Framing::Length(mut left) => loop {
                let n = left.min(ubuf.len());
                if down.write_all(&ubuf[..n]).await.is_err() {
                    return false;
                }
                ubuf.advance(n);
                left -= n;
                if left == 0 {
                    return down.flush().await.is_ok();
                }
                if read_more(up, ubuf).await.is_none() {
                    return false;
                }
            },
            Framing::Chunked => loop {
                match chunked_end(ubuf) {
                    Ok(Some(n)) => {
                        let ok =
                            down.write_all(&ubuf[..n]).await.is_ok() && down.flush().await.is_ok();
                        ubuf.advance(n);
                        return ok;
                    }
                    Ok(None) => {}
                    Err(_) => return false,
                }
                if read_more(up, ubuf).await.is_none() {
                    return false;
                }
            },
            Framing::UntilClose => loop {
                if down.write_all(ubuf).await.is_err() {
                    return false;
                }
                ubuf.clear();
                if read_more(up, ubuf).await.is_none() {
                    let _ = down.flush().await;
                    return false;
                }
            },
            Framing::None => true,
        }
    }
}

#[async_trait]
impl ServerApp for Lean {
    async fn process_new(
        self: &Arc<Self>,
        mut down: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if let End::Refuse(answer) = self.serve(&mut down).await {
            let _ = down.write_all(answer).await;
            let _ = down.flush().await;
        }
        None
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(backend)) = (
        args.get(1),
        args.get(2).and_then(|b| b.parse::<SocketAddr>().ok()),
    ) else {
        eprintln!("usage: lean_h1 LISTEN BACKEND [THREADS]");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1),
        work_stealing: false,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let lean = Lean {
        peer: HttpPeer::new(backend, false, String::new()),
        connector: TransportConnector::new(None),
    };
    let mut svc = Service::new("lean h1".to_owned(), lean);
    svc.add_listener(
        ListenerConfig::tcp(listen.clone()).l4_buffer(L4BufferSettings::default().read(0)),
    );
    server.add_service(svc);
    server.run_forever()
}
