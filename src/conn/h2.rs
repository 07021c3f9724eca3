//! HTTP/2 on a listener: its `http2:` section, the settings Pingora's HTTP/2 server is given,
//! and the dispatch of each connection to HTTP/2 or to zkgate's HTTP/1 loop.
//!
//! A connection is HTTP/2 when TLS negotiated ALPN `h2`, or, on a listener with `h2c: true`,
//! when its first bytes are the HTTP/2 connection preface (prior knowledge, RFC 9113 §3.3).
//! The preface is read under the listener's `client_header_timeout` like an HTTP/1 head, and
//! the bytes read are replayed to whichever protocol serves the connection.

use std::sync::LazyLock;
use std::time::Duration;

use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use prometheus::{register_int_counter_vec, IntCounter, IntCounterVec};
use serde::{Deserialize, Serialize};

use super::io::Guarded;
use super::{ConnSettings, MAX_TIMEOUT};
use crate::section::{At, ConfigErrors, Dur, Size};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams one client may have open at once on a connection, as nginx's
/// `http2_max_concurrent_streams`.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;

/// A listener's `http2:` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Http2Section {
    /// HTTP/2 with prior knowledge over cleartext, beside HTTP/1.1 on the same port.
    #[serde(default)]
    pub h2c: bool,
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: Option<u32>,
    /// The largest decoded header list of a request (HPACK-decoded names and values, plus 32
    /// bytes per field); the listener's `max_request_header_bytes` when not given.
    pub max_header_list_size: Option<Size>,
    /// How long a connection with no open stream stays open; the listener's
    /// `keepalive_timeout` when not given (its `client_header_timeout` when keep-alive is off).
    pub idle_timeout: Option<Dur>,
}

/// HTTP/2 settings of a listener, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http2Settings {
    pub h2c: bool,
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub idle_timeout: Duration,
}

impl Http2Section {
    /// The settings, or every bad value pushed under `at` (the `http2` key of its listener).
    /// `max_header_bytes` and `conn` are the listener's own limits, which the defaults follow.
    pub fn build(
        &self,
        at: &At,
        max_header_bytes: u64,
        conn: &ConnSettings,
        errors: &mut ConfigErrors,
    ) -> Http2Settings {
        let streams = self
            .max_concurrent_streams
            .unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS);
        if streams == 0 {
            errors.push(at.key("max_concurrent_streams"), "must be at least 1");
        }
        let header_list = self.max_header_list_size.map_or(max_header_bytes, |s| s.0);
        if header_list < 1024 || header_list > u64::from(u32::MAX) {
            errors.push(
                at.key("max_header_list_size"),
                "must be between 1KiB and 4GiB",
            );
        }
        let idle = self.idle_timeout.map_or_else(
            || conn.keepalive_timeout.unwrap_or(conn.client_header_timeout),
            |d| d.0,
        );
        if self.idle_timeout.is_some() && (idle.is_zero() || idle > MAX_TIMEOUT) {
            errors.push(
                at.key("idle_timeout"),
                format!("must be more than 0 and at most {}s", MAX_TIMEOUT.as_secs()),
            );
        }
        Http2Settings {
            h2c: self.h2c,
            max_concurrent_streams: streams,
            max_header_list_size: header_list.min(u64::from(u32::MAX)) as u32,
            idle_timeout: idle,
        }
    }
}

impl Http2Settings {
    /// What Pingora's HTTP/2 server handshakes each connection with: its bounded defaults, with
    /// this listener's limits.
    pub fn h2_options(&self) -> H2Options {
        let mut o = default_h2_options();
        o.max_concurrent_streams(self.max_concurrent_streams);
        o.max_header_list_size(self.max_header_list_size);
        o
    }
}

/// The protocol a connection was dispatched to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http1,
    /// HTTP/2 negotiated by TLS ALPN.
    H2,
    /// HTTP/2 with prior knowledge over cleartext.
    H2c,
}

impl Version {
    const ALL: [Version; 3] = [Version::Http1, Version::H2, Version::H2c];

    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http1 => "http/1.1",
            Version::H2 => "h2",
            Version::H2c => "h2c",
        }
    }
}

static DISPATCHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "zkgate_downstream_connections_total",
        "Client connections by listener and the HTTP version they were served with (http/1.1, h2, h2c), counted when the version is known.",
        &["listener", "version"]
    )
    .expect("register zkgate_downstream_connections_total")
});

/// One listener's counters of `zkgate_downstream_connections_total`, resolved once.
pub struct Versions([IntCounter; 3]);

impl Versions {
    pub fn new(listener: &str) -> Versions {
        Versions(Version::ALL.map(|v| DISPATCHED.with_label_values(&[listener, v.as_str()])))
    }

    pub fn count(&self, v: Version) {
        self.0[v as usize].inc();
    }
}

/// What the first bytes of a connection said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum First {
    /// The client closed (or the server is stopping) before it sent anything.
    Nothing,
    /// Anything but the HTTP/2 preface: the HTTP/1 loop reads it.
    Http1,
    /// The whole HTTP/2 preface.
    Http2,
}

/// Waits for the first bytes of a new connection, and, when HTTP/2 is possible on it (`h2`:
/// ALPN said `h2`, or the listener takes h2c), reads until they are the whole preface or
/// differ from it. Everything read is kept in `g` for the protocol that serves it.
pub async fn first_bytes(g: &mut Guarded, h2: bool) -> std::io::Result<First> {
    if !g.first_byte().await? {
        return Ok(First::Nothing);
    }
    if h2 && g.read_while_prefix_of(PREFACE).await? {
        return Ok(First::Http2);
    }
    Ok(First::Http1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use pingora::protocols::{Peek, Stream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::super::pressure::IDLE;
    use super::super::state::ConnState;
    use super::super::{clock, ListenerConns};

    /// A client on a loopback connection that wrote `sent` (then closed when `close`), and the
    /// gateway's side of it wrapped as a listener wraps it.
    async fn accepted(sent: &[u8], close: bool) -> (Box<Guarded>, Option<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.write_all(sent).await.expect("write");
        let client = if close { None } else { Some(client) };
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(server));
        let state = Arc::new(ConnState::new(1, 1, &IDLE, clock::now()));
        let conns = Arc::new(ListenerConns::new("h2-test", &Default::default(), None));
        (Box::new(Guarded::new(stream, state, conns)), client)
    }

    async fn read_all(g: &mut Guarded, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        g.read_exact(&mut got).await.expect("read");
        got
    }

    #[tokio::test]
    async fn the_first_bytes_decide_and_are_all_read_again() {
        // HTTP/1 shorter than the preface: decided at the first byte that differs.
        let head = b"GET / HTTP/1.0\r\n\r\n";
        let (mut g, _c) = accepted(head, false).await;
        assert_eq!(first_bytes(&mut g, true).await.expect("read"), First::Http1);
        assert_eq!(read_all(&mut g, head.len()).await, head);

        // The preface and a frame after it: Pingora's peek sees the preface, its reads the rest.
        let mut h2 = PREFACE.to_vec();
        h2.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        let (mut g, _c) = accepted(&h2, false).await;
        assert_eq!(first_bytes(&mut g, true).await.expect("read"), First::Http2);
        let mut peeked = [0u8; PREFACE.len()];
        assert!(g.try_peek(&mut peeked).await.expect("peek"));
        assert_eq!(&peeked, PREFACE);
        assert_eq!(read_all(&mut g, h2.len()).await, h2);

        // Where HTTP/2 is not possible the preface is not even looked for.
        let (mut g, _c) = accepted(PREFACE, false).await;
        assert_eq!(
            first_bytes(&mut g, false).await.expect("read"),
            First::Http1
        );
        assert_eq!(read_all(&mut g, PREFACE.len()).await, PREFACE);

        // Half a preface and the end: HTTP/1 reads the half, then the end.
        let (mut g, _c) = accepted(&PREFACE[..10], true).await;
        assert_eq!(first_bytes(&mut g, true).await.expect("read"), First::Http1);
        let mut rest = Vec::new();
        g.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, &PREFACE[..10]);

        // Nothing at all.
        let (mut g, _c) = accepted(b"", true).await;
        assert_eq!(
            first_bytes(&mut g, true).await.expect("read"),
            First::Nothing
        );
    }

    fn build(yaml: &str, conn: &ConnSettings) -> (Http2Settings, Vec<String>) {
        let section: Http2Section = serde_yaml::from_str(yaml).expect("yaml");
        let mut errors = ConfigErrors::default();
        let s = section.build(
            &At::root().key("listeners").index("x", 0),
            64 * 1024,
            conn,
            &mut errors,
        );
        (
            s,
            errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        )
    }

    #[test]
    fn defaults_follow_the_listeners_own_limits() {
        let conn = ConnSettings::default();
        let (s, errors) = build("{}", &conn);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            s,
            Http2Settings {
                h2c: false,
                max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
                max_header_list_size: 64 * 1024,
                idle_timeout: super::super::DEFAULT_KEEPALIVE_TIMEOUT,
            }
        );
        // With keep-alive off, an idle HTTP/2 connection still goes, after the head's time.
        let no_keepalive = ConnSettings {
            keepalive_timeout: None,
            ..ConnSettings::default()
        };
        let (s, _) = build("{}", &no_keepalive);
        assert_eq!(s.idle_timeout, no_keepalive.client_header_timeout);
    }

    #[test]
    fn every_bad_value_is_reported_at_its_key() {
        let (_, errors) = build(
            "{ h2c: true, max_concurrent_streams: 0, max_header_list_size: 10, idle_timeout: 0s }",
            &ConnSettings::default(),
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        for key in [
            "max_concurrent_streams",
            "max_header_list_size",
            "idle_timeout",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(&format!("x[0].{key}"))),
                "{key} in {errors:?}"
            );
        }
        let unknown: Result<Http2Section, _> = serde_yaml::from_str("{ h2: true }");
        assert!(unknown.is_err());
    }
}
