//! The optional access log: one line per request, handed to a writer thread through a bounded
//! queue, so a slow disk drops (and counts) lines instead of stalling requests.
//!
//! A line: `TIME CLIENT "METHOD TARGET VERSION" STATUS BYTES DURATIONms route=R backend=B
//! http=HTTP/1.1 tls=TLSv1.3 cipher=C sni=S`, `-` for what a request has not. New fields go at
//! the end, as `key=value`, so that what reads the older fields keeps working.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::tls::SslDigest;
use pingora::proxy::Session;
use serde::{Deserialize, Serialize};

use crate::metrics::METRICS;
use crate::section::{At, ConfigErrors};
use crate::tls::TlsInfo;

const DEFAULT_BUFFER: usize = 8192;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// A file path, or `stdout` / `stderr`.
    pub path: String,
    /// Lines that may wait for the writer before new ones are dropped (and counted).
    pub buffer: Option<usize>,
}

/// Where the access log goes and how many lines may wait for the writer, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogSettings {
    /// A file path, or `stdout` / `stderr`.
    pub path: String,
    pub buffer: usize,
}

impl AccessLogSection {
    /// The settings, or what is wrong with them at `at` (the section's path, `access_log`).
    pub fn build(&self, at: &At, errors: &mut ConfigErrors) -> AccessLogSettings {
        if self.path.is_empty() {
            errors.push(at.key("path"), "must name a file, `stdout` or `stderr`");
        }
        if self.buffer == Some(0) {
            errors.push(at.key("buffer"), "must be at least 1");
        }
        AccessLogSettings {
            path: self.path.clone(),
            buffer: self.buffer.unwrap_or(DEFAULT_BUFFER),
        }
    }
}

#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
    /// Flush requests the writer has carried out (see [`AccessLog::flush`]).
    flushed: Arc<(Mutex<u64>, Condvar)>,
}

impl AccessLog {
    /// Opens the destination and starts the writer thread.
    pub fn start(cfg: &AccessLogSettings) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match cfg.path.as_str() {
            "stdout" => Box::new(io::stdout()),
            "stderr" => Box::new(io::stderr()),
            path => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = sync_channel(cfg.buffer);
        let flushed = Arc::new((Mutex::new(0), Condvar::new()));
        let done = flushed.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out, &done))?;
        Ok(AccessLog { tx, flushed })
    }

    /// Waits, at most `within`, until every line queued before the call is written out: for a
    /// process about to exit on its own. `false` when the writer did not get there in time.
    pub fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (count, written) = &*self.flushed;
        let before = *count.lock().unwrap_or_else(|e| e.into_inner());
        // An empty line asks for a flush: every real line ends with a newline. The queue may
        // be full: the request waits for room, within the same deadline.
        let mut ask = String::new();
        loop {
            match self.tx.try_send(ask) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    ask = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let guard = count.lock().unwrap_or_else(|e| e.into_inner());
        let wait = deadline.saturating_duration_since(Instant::now());
        let (guard, _) = written
            .wait_timeout_while(guard, wait, |n| *n == before)
            .unwrap_or_else(|e| e.into_inner());
        *guard != before
    }

    pub fn record(
        &self,
        session: &Session,
        status: u16,
        elapsed: Duration,
        route: Option<&str>,
        backend: Option<SocketAddr>,
        cache: Option<&'static str>,
    ) {
        let req = session.req_header();
        self.write(&Entry {
            client: session.client_addr(),
            method: req.method.as_str(),
            target: &Target(&req.uri, req.version),
            version: req.version,
            status,
            body_bytes: session.body_bytes_sent(),
            elapsed,
            route,
            backend,
            tls: session.digest().and_then(|d| d.ssl_digest.as_deref()),
            cache,
        });
    }

    /// Queues the line of `entry`, or drops (and counts) it when the writer is behind.
    pub fn write(&self, entry: &Entry<'_>) {
        let client = entry
            .client
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        let line = format!(
            "{} {} \"{} {} {:?}\" {} {} {:.3}ms route={} backend={} http={} {}{}\n",
            humantime::format_rfc3339_millis(SystemTime::now()),
            client,
            entry.method,
            entry.target,
            entry.version,
            entry.status,
            entry.body_bytes,
            entry.elapsed.as_secs_f64() * 1000.0,
            entry.route.unwrap_or("-"),
            entry
                .backend
                .map_or_else(|| "-".to_owned(), |b| b.to_string()),
            http_version(entry.version),
            TlsFields(entry.tls),
            CacheField(entry.cache),
        );
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                METRICS.access_log_dropped.inc()
            }
        }
    }
}

/// What a line says of one request, from whichever path served it.
pub struct Entry<'a> {
    pub client: Option<&'a PeerAddr>,
    pub method: &'a str,
    /// The request target as logged (a Pingora request's is its URI less any `user:password@`).
    pub target: &'a dyn std::fmt::Display,
    pub version: http::Version,
    pub status: u16,
    /// Body bytes sent to the client.
    pub body_bytes: usize,
    pub elapsed: Duration,
    pub route: Option<&'a str>,
    pub backend: Option<SocketAddr>,
    pub tls: Option<&'a SslDigest>,
    pub cache: Option<&'static str>,
}

/// ` cache=hit` on a request of a cached route (a hit has no backend and no upstream time, so
/// without it a hit reads as a zero-latency proxied answer); nothing otherwise.
struct CacheField(Option<&'static str>);

impl std::fmt::Display for CacheField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(c) => write!(f, " cache={c}"),
            None => Ok(()),
        }
    }
}

/// A request target as logged: an absolute-form target's `user:password@` is left out. The
/// access log never shows headers, so it holds no `Authorization` or `Cookie`. An HTTP/2
/// request's scheme and authority are pseudo-headers, not its target: it is logged by path and
/// query, as an HTTP/1.1 request in origin form is (and as nginx logs both).
struct Target<'a>(&'a http::Uri, http::Version);

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = self.0;
        if self.1 == http::Version::HTTP_2 {
            return f.write_str(uri.path_and_query().map_or("/", |pq| pq.as_str()));
        }
        let Some(authority) = uri.authority() else {
            return write!(f, "{uri}");
        };
        if let Some(scheme) = uri.scheme() {
            write!(f, "{scheme}://")?;
        }
        let host = authority.as_str();
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        f.write_str(host)?;
        match uri.path_and_query() {
            Some(pq) => write!(f, "{pq}"),
            None => Ok(()),
        }
    }
}

/// The HTTP version as people write it (`HTTP/2`, not `HTTP/2.0`).
fn http_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// `tls=VERSION cipher=SUITE sni=NAME` of a TLS connection, `tls=- cipher=- sni=-` otherwise.
struct TlsFields<'a>(Option<&'a SslDigest>);

impl std::fmt::Display for TlsFields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(tls) = self.0 else {
            return f.write_str("tls=- cipher=- sni=-");
        };
        // The handshake's own names (`TLSv1.3`, the IANA suite) when the listener left them;
        // Pingora's digest spells rustls' enum names (`TLSv1_3`).
        match tls.extension.get::<TlsInfo>() {
            Some(info) => write!(
                f,
                "tls={} cipher={} sni={}",
                info.version,
                info.cipher,
                info.sni.as_deref().unwrap_or("-")
            ),
            None => write!(f, "tls={} cipher={} sni=-", tls.version, tls.cipher),
        }
    }
}

fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>, flushed: &(Mutex<u64>, Condvar)) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let mut asked = line.is_empty();
        let mut ok = out.write_all(line.as_bytes()).is_ok();
        // Drain what is queued before flushing, so a busy log writes in large blocks.
        while let Ok(line) = rx.try_recv() {
            asked |= line.is_empty();
            ok &= out.write_all(line.as_bytes()).is_ok();
        }
        if !ok || out.flush().is_err() {
            log::warn!("access log write failed");
        }
        if asked {
            let (count, written) = flushed;
            *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            written.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What was queued before a flush is in the file when it returns, and the file holds no
    /// trace of the flush request itself.
    #[test]
    fn a_flush_returns_once_the_queued_lines_are_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let log = AccessLog::start(&AccessLogSettings {
            path: path.display().to_string(),
            buffer: 4,
        })
        .expect("open");
        for i in 0..3 {
            log.tx.send(format!("line {i}\n")).expect("queued");
        }
        assert!(log.flush(Duration::from_secs(10)));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "line 0\nline 1\nline 2\n");
        assert!(
            log.flush(Duration::from_secs(10)),
            "again, with nothing queued"
        );
    }

    #[test]
    fn targets_are_logged_without_userinfo() {
        let shown = |t: &str| Target(&t.parse().unwrap(), http::Version::HTTP_11).to_string();
        assert_eq!(shown("/a?b=1"), "/a?b=1");
        assert_eq!(shown("http://user:pw@h:8080/x?y"), "http://h:8080/x?y");
        assert_eq!(shown("http://h/x"), "http://h/x");
        assert_eq!(shown("h:443"), "h:443");
        assert_eq!(shown("*"), "*");
    }

    #[test]
    fn http_and_tls_fields() {
        assert_eq!(http_version(http::Version::HTTP_10), "HTTP/1.0");
        assert_eq!(http_version(http::Version::HTTP_11), "HTTP/1.1");
        assert_eq!(http_version(http::Version::HTTP_2), "HTTP/2");
        assert_eq!(TlsFields(None).to_string(), "tls=- cipher=- sni=-");
        let digest = SslDigest::new(
            "TLS13_AES_128_GCM_SHA256",
            "TLSv1.3",
            None,
            None,
            Vec::new(),
        );
        assert_eq!(
            TlsFields(Some(&digest)).to_string(),
            "tls=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256 sni=-"
        );
    }
}
