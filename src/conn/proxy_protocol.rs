//! The PROXY protocol (HAProxy's v1 text and v2 binary header) on a listener behind a load
//! balancer: step 1 of a connection's front, before TLS and HTTP.
//!
//! As with HAProxy's `accept-proxy`, the header is mandatory on such a listener: a peer outside
//! `trusted` is closed before anything is read, and a trusted one that sends no header, a
//! malformed one, or not all of it within the timeout, is closed too. The source address the
//! header carries becomes the connection's peer address (its socket digest), so the rate
//! limiter, X-Forwarded-For, the access log and `max_connections_per_ip` see the client, not the
//! balancer. The header is read without taking a byte past its end: what follows is the TLS
//! ClientHello or the HTTP request, read by the next step from the same stream. Parsing is
//! `ppp`'s; this file decides how much to read, and what the result means for the connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::time::Duration;

use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::{SocketDigest, Stream};
use prometheus::{register_int_counter_vec, IntCounter, IntCounterVec};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::log::{suppressed_note, LogLimiter};
use super::state::Nanos;
use super::{clock, ListenerConns, Reason, LOG_EVERY};
use crate::section::{At, Cidr, ConfigErrors, Dur};

/// The longest v1 header, CRLF included (the specification's bound, for `UNKNOWN`).
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: its 16 fixed bytes, the addresses and the TLVs. Balancers
/// send a few dozen bytes of TLVs (AWS's VPC endpoint id, HAProxy's SSL facts); the protocol
/// allows 64 KiB, which no connection should get to hold before it has said anything.
pub const V2_MAX: usize = 4096;
/// The shortest header of either version: `PROXY UNKNOWN\r\n` (a v2 header has 16 bytes at
/// least), so a first read of this many bytes never takes one past the header.
const MIN_HEADER: usize = 15;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// A v2 header's fixed part: signature, version and command, family and transport, length.
const V2_FIXED: usize = 16;

// === config ===

/// `listeners[].proxy_protocol`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolSection {
    /// The load balancers allowed to connect (addresses or blocks); every other peer is closed.
    pub trusted: Vec<String>,
    /// The header versions accepted, `[1, 2]` when omitted.
    pub versions: Option<Vec<u8>>,
    /// Time from the accept for the whole header to arrive; `client_header_timeout` when
    /// omitted, and at most that.
    pub timeout: Option<Dur>,
}

/// Which header versions a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions {
    pub v1: bool,
    pub v2: bool,
}

impl Versions {
    pub const BOTH: Versions = Versions { v1: true, v2: true };
}

/// A listener's PROXY protocol settings, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProtocol {
    pub trusted: Vec<Cidr>,
    pub versions: Versions,
    pub timeout: Duration,
}

impl ProxyProtocolSection {
    /// The settings of the section at `at`, on a listener whose `client_header_timeout` is
    /// `header_timeout` (steps before HTTP count against it, from the accept).
    pub fn build(
        &self,
        at: &At,
        header_timeout: Duration,
        errors: &mut ConfigErrors,
    ) -> ProxyProtocol {
        if self.trusted.is_empty() {
            errors.push(
                at.key("trusted"),
                "lists no address: name the load balancers that connect (0.0.0.0/0 and ::/0 trust every peer)",
            );
        }
        let mut trusted = Vec::with_capacity(self.trusted.len());
        for (i, text) in self.trusted.iter().enumerate() {
            match Cidr::parse(text) {
                Ok(net) => trusted.push(net),
                Err(e) => errors.push(at.index("trusted", i), e),
            }
        }
        let versions = match &self.versions {
            None => Versions::BOTH,
            Some(list) => {
                if list.is_empty() {
                    errors.push(at.key("versions"), "is empty: list 1, 2 or both");
                }
                let mut v = Versions {
                    v1: false,
                    v2: false,
                };
                for (i, n) in list.iter().enumerate() {
                    match n {
                        1 => v.v1 = true,
                        2 => v.v2 = true,
                        _ => errors.push(
                            at.index("versions", i),
                            format!("{n} is not a PROXY protocol version (1 or 2)"),
                        ),
                    }
                }
                v
            }
        };
        let timeout = self.timeout.map_or(header_timeout, |d| d.0);
        if timeout.is_zero() {
            errors.push(at.key("timeout"), "must be more than 0");
        } else if timeout > header_timeout {
            errors.push(
                at.key("timeout"),
                format!(
                    "is more than the listener's client_header_timeout ({}), which bounds every step before the request head",
                    Dur(header_timeout)
                ),
            );
        }
        ProxyProtocol {
            trusted,
            versions,
            timeout,
        }
    }
}

impl ProxyProtocol {
    /// Whether `ip` may send a header. An IPv4 peer seen on a dual-stack socket (as
    /// `::ffff:a.b.c.d`) is matched as the IPv4 address it is.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|block| block.contains(ip))
    }
}

// === the header on the wire ===

/// What to do next with the bytes of a header read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Read at most this many more bytes (at least one): no more than the header has left,
    /// whatever it turns out to be.
    Need(usize),
    /// The bytes read are the whole header.
    Complete,
    /// Not a header this listener accepts; no more bytes would make it one.
    Invalid(&'static str),
}

/// The next step of reading a header whose first bytes are `buf` (all of what was read).
pub fn next_step(buf: &[u8], versions: Versions) -> Step {
    match buf.first() {
        None => Step::Need(MIN_HEADER),
        Some(b'P') if versions.v1 => v1_step(buf),
        Some(b'\r') if versions.v2 => v2_step(buf),
        Some(b'P') => Step::Invalid("a version 1 header, which this listener does not accept"),
        Some(b'\r') => Step::Invalid("a version 2 header, which this listener does not accept"),
        Some(_) => Step::Invalid("no PROXY protocol header"),
    }
}

fn v1_step(buf: &[u8]) -> Step {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Step::Invalid("no PROXY protocol header");
    }
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\r' {
            return match buf.get(i + 1) {
                None => Step::Need(1),
                Some(b'\n') if i + 2 == buf.len() => Step::Complete,
                _ => Step::Invalid("a version 1 header not ended by CRLF"),
            };
        }
        // Junk is refused as it arrives, not after 107 bytes of it.
        if !(0x20..0x7f).contains(&b) {
            return Step::Invalid("a version 1 header with a byte that is not printable ASCII");
        }
    }
    if buf.len() >= V1_MAX {
        return Step::Invalid("a version 1 header longer than 107 bytes");
    }
    if buf.len() < MIN_HEADER {
        return Step::Need(MIN_HEADER - buf.len());
    }
    Step::Need(v1_min_left(&buf[V1_PREFIX.len()..]).clamp(1, V1_MAX - buf.len()))
}

/// A lower bound on the bytes left of a v1 header after `rest` (what follows `PROXY `, at least
/// 9 bytes, no CR yet). Reading no more than this never takes a byte past the header's CRLF,
/// yet takes a usual header in a handful of reads rather than one read per byte.
fn v1_min_left(rest: &[u8]) -> usize {
    const CRLF: usize = 2;
    if rest.first() != Some(&b'T') {
        // `UNKNOWN`, and whatever up to the CRLF.
        return CRLF;
    }
    // `TCP4 SRC DST SPORT DPORT`: four spaces after the protocol, each with a field of at least
    // one byte after it, then CRLF; one more byte if the field being read has none yet.
    let spaces = rest.iter().filter(|&&b| b == b' ').count();
    let empty_field = rest.last() == Some(&b' ');
    2 * 4usize.saturating_sub(spaces) + CRLF + usize::from(empty_field)
}

fn v2_step(buf: &[u8]) -> Step {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Step::Invalid("no PROXY protocol header");
    }
    if buf.len() < V2_FIXED {
        return Step::Need(V2_FIXED - buf.len());
    }
    if buf[12] >> 4 != 2 {
        return Step::Invalid("a version 2 signature with another version number");
    }
    let total = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > V2_MAX {
        return Step::Invalid("a version 2 header longer than 4096 bytes");
    }
    match total.checked_sub(buf.len()) {
        Some(0) => Step::Complete,
        Some(left) => Step::Need(left),
        None => Step::Invalid("a version 2 header read past its length"),
    }
}

/// What a complete header says about the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Carried {
    /// A client's connection, relayed: where it came from and the address it connected to.
    Client {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The balancer's own connection (v2 `LOCAL`, such as a health check), or one whose
    /// addresses it does not tell (v1 `UNKNOWN`, v2 `UNSPEC` or a Unix socket): the real peer
    /// address stands.
    Own,
}

/// Why a header was refused.
#[derive(Debug, PartialEq)]
pub enum Malformed {
    Read(&'static str),
    V1(ppp::v1::BinaryParseError),
    V2(ppp::v2::ParseError),
    Datagram,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::Read(why) => f.write_str(why),
            Malformed::V1(e) => write!(f, "a version 1 header that does not parse: {e}"),
            Malformed::V2(e) => write!(f, "a version 2 header that does not parse: {e}"),
            Malformed::Datagram => f.write_str("a version 2 header for a datagram (UDP) flow"),
        }
    }
}

/// The meaning of `header`, a whole header as [`next_step`] delimited it. TLVs of a v2 header
/// are not read: none changes what the gateway does, so they are skipped whatever they hold.
pub fn parse(header: &[u8]) -> Result<Carried, Malformed> {
    if header.first() == Some(&b'P') {
        let h = ppp::v1::Header::try_from(header).map_err(Malformed::V1)?;
        return Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Carried::Client {
                source: SocketAddr::from((a.source_address, a.source_port)),
                destination: SocketAddr::from((a.destination_address, a.destination_port)),
            },
            ppp::v1::Addresses::Tcp6(a) => Carried::Client {
                source: SocketAddr::from((a.source_address, a.source_port)),
                destination: SocketAddr::from((a.destination_address, a.destination_port)),
            },
            ppp::v1::Addresses::Unknown => Carried::Own,
        });
    }
    let h = ppp::v2::Header::try_from(header).map_err(Malformed::V2)?;
    if h.command == ppp::v2::Command::Local {
        return Ok(Carried::Own);
    }
    let (source, destination) = match h.addresses {
        ppp::v2::Addresses::IPv4(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        ppp::v2::Addresses::IPv6(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => return Ok(Carried::Own),
    };
    if h.protocol == ppp::v2::Protocol::Datagram {
        return Err(Malformed::Datagram);
    }
    Ok(Carried::Client {
        source,
        destination,
    })
}

/// How reading a header failed.
#[derive(Debug, PartialEq)]
pub enum ReadError {
    /// The peer closed before sending anything, or the connection broke: nothing to report.
    Gone,
    Malformed(Malformed),
}

/// Reads a header from `io` into `buf` (empty at first), each read bounded by [`next_step`]
/// so that no byte after the header is taken; the whole header is then in `buf`.
pub async fn read_header<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    versions: Versions,
    buf: &mut Vec<u8>,
) -> Result<(), ReadError> {
    loop {
        let want = match next_step(buf, versions) {
            Step::Complete => return Ok(()),
            Step::Invalid(why) => return Err(ReadError::Malformed(Malformed::Read(why))),
            Step::Need(n) => n,
        };
        let start = buf.len();
        buf.resize(start + want, 0);
        let got = io.read(&mut buf[start..]).await;
        let got = got.unwrap_or(0);
        buf.truncate(start + got);
        if got == 0 {
            return Err(if start == 0 {
                ReadError::Gone
            } else {
                ReadError::Malformed(Malformed::Read("a connection that ended inside its header"))
            });
        }
    }
}

// === the front step ===

/// Why a connection was closed by this step; `as_str` is the metric's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rejected {
    Untrusted,
    Malformed,
    Timeout,
}

impl Rejected {
    const ALL: [Rejected; 3] = [Rejected::Untrusted, Rejected::Malformed, Rejected::Timeout];

    fn as_str(self) -> &'static str {
        match self {
            Rejected::Untrusted => "untrusted",
            Rejected::Malformed => "malformed",
            Rejected::Timeout => "timeout",
        }
    }
}

static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "zkgate_proxy_protocol_rejected_total",
        "Connections a PROXY protocol listener closed before HTTP, by listener and reason (untrusted: a peer outside proxy_protocol.trusted; malformed: no header, or a bad one; timeout: the header was not complete within proxy_protocol.timeout).",
        &["listener", "reason"]
    )
    .expect("register zkgate_proxy_protocol_rejected_total")
});

/// A listener's PROXY protocol step, with its counters and log limiters resolved once.
pub(super) struct Front {
    settings: ProxyProtocol,
    timeout: Nanos,
    rejected: [IntCounter; 3],
    logs: [LogLimiter; 3],
}

impl Front {
    pub(super) fn new(listener: &str, settings: &ProxyProtocol) -> Front {
        Front {
            settings: settings.clone(),
            timeout: settings.timeout.as_nanos().min(Nanos::MAX as u128) as Nanos,
            rejected: Rejected::ALL.map(|r| REJECTED.with_label_values(&[listener, r.as_str()])),
            logs: Rejected::ALL.map(|_| LogLimiter::new(LOG_EVERY)),
        }
    }

    /// Step 1 of the front of the connection `io`, accepted at `accepted`: reads and checks its
    /// header, and gives the stream the client's address. `false`: the connection is to be
    /// closed (and was counted and, rate-limited, logged).
    pub(super) async fn run(
        &self,
        io: &mut Stream,
        accepted: Nanos,
        conns: &ListenerConns,
    ) -> bool {
        let peer = super::io::peer_ip(io);
        if !peer.is_some_and(|ip| self.settings.trusts(ip)) {
            self.reject(
                conns,
                Rejected::Untrusted,
                peer,
                format_args!("is not in proxy_protocol.trusted"),
            );
            return false;
        }
        let mut buf = Vec::new();
        let deadline = clock::to_tokio(accepted.saturating_add(self.timeout));
        let read = read_header(io, self.settings.versions, &mut buf);
        let malformed = match tokio::time::timeout_at(deadline, read).await {
            Err(_) => {
                // A slow header is a slow request head: the listener's closings count it so.
                conns.closed[Reason::HeaderTimeout as usize].inc();
                self.reject(
                    conns,
                    Rejected::Timeout,
                    peer,
                    format_args!(
                        "did not send a complete PROXY protocol header within {}",
                        Dur(self.settings.timeout)
                    ),
                );
                return false;
            }
            Ok(Err(ReadError::Gone)) => return false,
            Ok(Err(ReadError::Malformed(m))) => m,
            Ok(Ok(())) => match parse(&buf) {
                Ok(Carried::Own) => return true,
                Ok(Carried::Client {
                    source,
                    destination,
                }) => {
                    carry(io, source, destination);
                    return true;
                }
                Err(m) => m,
            },
        };
        self.reject(
            conns,
            Rejected::Malformed,
            peer,
            format_args!("sent {malformed}"),
        );
        false
    }

    fn reject(
        &self,
        conns: &ListenerConns,
        r: Rejected,
        peer: Option<IpAddr>,
        why: std::fmt::Arguments<'_>,
    ) {
        let i = r as usize;
        self.rejected[i].inc();
        let Some(suppressed) = self.logs[i].allow(clock::now()) else {
            return;
        };
        let peer = peer.map_or_else(|| "a peer".to_owned(), |p| format!("peer {p}"));
        ::log::warn!(
            "listener {}: closed the connection of {peer}, which {why}{}",
            conns.name,
            suppressed_note(suppressed)
        );
    }
}

/// The connection's addresses become those a PROXY header carried: what every later step (the
/// logs, the client-IP rules, the backend's view) takes as the client's and the local ones.
pub fn carry(io: &mut Stream, source: SocketAddr, destination: SocketAddr) {
    let digest = SocketDigest::from_raw_fd(io.id());
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(source)));
    let _ = digest.local_addr.set(Some(PeerAddr::Inet(destination)));
    io.set_socket_digest(digest);
}

/// For the fuzz target: `data` read as a connection's first bytes, in reads of the sizes the
/// reader asks for, then parsed. Panics on a broken invariant: a step that asks for nothing, a
/// read past the end of a header that `ppp` finds in `data`, or a header `ppp` accepts that the
/// reader refused.
pub fn exercise(data: &[u8]) {
    let mut len = 0;
    let outcome = loop {
        match next_step(&data[..len], Versions::BOTH) {
            Step::Need(0) => panic!("a step that asks for no byte after {len}"),
            Step::Need(n) if len == data.len() => break Err(n),
            Step::Need(n) => len = (len + n).min(data.len()),
            Step::Complete => break Ok(parse(&data[..len])),
            Step::Invalid(_) => break Err(0),
        }
    };
    // The same bytes one at a time (a peer's smallest segments): every prefix gets a step, and
    // a header accepted either way is accepted the other way, with the same end. (Junk may be
    // refused at different points: the steps' sizes are bounds for headers, not for junk.)
    let mut one = 0;
    let one_by_one = loop {
        match next_step(&data[..one], Versions::BOTH) {
            Step::Need(0) => panic!("a step that asks for no byte after {one}"),
            Step::Need(_) if one == data.len() => break None,
            Step::Need(_) => one += 1,
            Step::Complete => break parse(&data[..one]).is_ok().then_some(one),
            Step::Invalid(_) => break None,
        }
    };
    assert_eq!(
        one_by_one,
        matches!(outcome, Ok(Ok(_))).then_some(len),
        "read byte by byte, the header ends elsewhere"
    );
    let reference = match ppp::HeaderResult::parse(data) {
        // ppp takes an `UNKNOWN` line up to any lone LF before the CR; the reader wants
        // printable ASCII ended by CRLF, as the specification writes it.
        ppp::HeaderResult::V1(Ok(h)) => Some((
            h.header.len(),
            h.header
                .strip_suffix("\r\n")
                .is_some_and(|line| line.bytes().all(|b| (0x20..0x7f).contains(&b))),
        )),
        ppp::HeaderResult::V2(Ok(h)) if h.header.len() <= V2_MAX => Some((h.header.len(), true)),
        _ => None,
    };
    if let Some((header, plain)) = reference {
        // Never a byte past a header.
        assert!(len <= header, "read {len} bytes of a {header}-byte header");
        // A header ppp accepts, whole in `data`, is one the reader takes whole (v1 text other
        // than printable ASCII is refused on purpose).
        if plain {
            assert!(
                matches!(outcome, Ok(Ok(_) | Err(Malformed::Datagram))) && len == header,
                "ppp accepts a {header}-byte header, the reader stopped at {len}: {outcome:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests;
