//! Which address a request comes from: the connection's peer, unless that peer is a proxy
//! listed as trusted, in which case `X-Forwarded-For` is read from the right, skipping trusted
//! proxies, and the first address that is not one is the client (a client can prepend anything
//! to the header, so only what trusted hops appended counts). The same trust decides what the
//! upstream is told: a peer that is no trusted proxy cannot pass forwarding headers on. The
//! RFC 7239 `Forwarded` element this hop adds, when enabled, is written here too.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use serde::{Deserialize, Serialize};

pub use crate::section::Cidr;
use crate::section::{At, ConfigErrors};

/// What the upstream gets of the forwarding headers of a peer that is not a trusted proxy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UntrustedForwarded {
    /// `X-Forwarded-For` starts afresh with the peer's address; `X-Real-IP` and `Forwarded` are
    /// dropped (Envoy's default): a backend that trusts them cannot be lied to.
    #[default]
    Strip,
    /// Passed on as the client sent them, the peer appended to `X-Forwarded-For`.
    Keep,
}

/// Whether the upstream gets an RFC 7239 `Forwarded` element from this hop, and with what.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedMode {
    /// None is added (`X-Forwarded-*` only).
    #[default]
    Off,
    /// `for`, `proto` and `host`.
    On,
    /// Also `by`: the gateway's own address the request arrived on.
    WithBy,
}

/// How the client address is found, built from `client_ip:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIp {
    trusted: Box<[Cidr]>,
    untrusted_forwarded: UntrustedForwarded,
    forwarded: ForwardedMode,
}

impl ClientIp {
    pub fn new(trusted: Vec<Cidr>, untrusted_forwarded: UntrustedForwarded) -> ClientIp {
        ClientIp {
            trusted: trusted.into(),
            untrusted_forwarded,
            forwarded: ForwardedMode::Off,
        }
    }

    /// The same, adding a `Forwarded` element as `mode` says.
    pub fn with_forwarded(self, mode: ForwardedMode) -> ClientIp {
        ClientIp {
            forwarded: mode,
            ..self
        }
    }

    pub fn forwarded(&self) -> ForwardedMode {
        self.forwarded
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// Whether the client of a request from `peer` is read from its `X-Forwarded-For`
    /// (`peer` is a trusted proxy), rather than being `peer` itself.
    pub fn resolves_from_headers(&self, peer: IpAddr) -> bool {
        !self.trusted.is_empty() && self.trusts(peer)
    }

    /// Whether the forwarding headers that `peer` sent reach the upstream (with the peer
    /// appended to `X-Forwarded-For`), rather than being replaced by the peer alone.
    pub fn passes_forwarded(&self, peer: IpAddr) -> bool {
        self.untrusted_forwarded == UntrustedForwarded::Keep || self.trusts(peer)
    }

    /// The client of a request from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.trusted.is_empty() || !self.trusts(peer) {
            return peer;
        }
        // Every X-Forwarded-For line, read as one list from the right.
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for hop in text.rsplit(',') {
                let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                    // Garbage where an address should be: stop at the last good one.
                    return client;
                };
                client = ip;
                if !self.trusts(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

/// Where the client address comes from: the peer, or `X-Forwarded-For` when the peer is one
/// of `trusted_proxies` (addresses or blocks like `10.0.0.0/8`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientIpSection {
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// What becomes of `X-Forwarded-For`, `X-Real-IP` and `Forwarded` from a peer that is not
    /// a trusted proxy (default `strip`).
    #[serde(default)]
    pub untrusted_forwarded: UntrustedForwarded,
    /// Adds this hop's RFC 7239 `Forwarded` element (`for`, `proto`, `host`) toward the
    /// upstream: appended to a trusted proxy's, replacing anyone else's. Off by default.
    #[serde(default)]
    pub forwarded: bool,
    /// Adds `by=` (the gateway's address the request arrived on) to that element. Off by
    /// default: it tells the upstream an internal address.
    #[serde(default)]
    pub forwarded_by: bool,
}

impl ClientIpSection {
    /// How the client address is found; `at` is the section's path (`client_ip`).
    pub fn build(&self, at: &At, errors: &mut ConfigErrors) -> ClientIp {
        let trusted = self
            .trusted_proxies
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                Cidr::parse(t)
                    .map_err(|e| errors.push(at.index("trusted_proxies", i), e))
                    .ok()
            })
            .collect();
        if self.forwarded_by && !self.forwarded {
            errors.push(at.key("forwarded_by"), "needs forwarded: true");
        }
        let mode = match (self.forwarded, self.forwarded_by) {
            (false, _) => ForwardedMode::Off,
            (true, false) => ForwardedMode::On,
            (true, true) => ForwardedMode::WithBy,
        };
        ClientIp::new(trusted, self.untrusted_forwarded).with_forwarded(mode)
    }
}

/// Appends this hop's `Forwarded` element (RFC 7239 §4) to `out`: `for` the peer, `proto`,
/// then `host` when it is a plain host (a value a client could use to inject another pair or
/// element is left out) and `by` when given. An IPv6 node is bracketed and quoted, as is any
/// value that is not a token.
pub fn forwarded_element(
    out: &mut String,
    peer: IpAddr,
    tls: bool,
    host: Option<&[u8]>,
    by: Option<SocketAddr>,
) {
    // Writing to a String cannot fail.
    let _ = match peer {
        IpAddr::V4(v4) => write!(out, "for={v4}"),
        IpAddr::V6(v6) => write!(out, "for=\"[{v6}]\""),
    };
    out.push_str(if tls { ";proto=https" } else { ";proto=http" });
    if let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) {
        if !host.is_empty() && host.bytes().all(is_host_byte) {
            if host.bytes().all(is_token_byte) {
                let _ = write!(out, ";host={host}");
            } else {
                let _ = write!(out, ";host=\"{host}\"");
            }
        }
    }
    if let Some(by) = by {
        let _ = write!(out, ";by=\"{by}\"");
    }
}

/// A byte of a `Host` value (RFC 3986 reg-name, IP literal, port): nothing that would need
/// escaping inside a quoted string.
/// `ip` as a header value (`X-Forwarded-For` without a trusted hop before it), formatted on
/// the stack: this runs for every proxied request, and `to_string` goes through the formatting
/// machinery and a `String` for what is at most 45 bytes.
pub fn ip_header_value(ip: IpAddr) -> http::HeaderValue {
    let mut buf = [0u8; 45];
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        IpAddr::V6(v6) => {
            let mut w = std::io::Cursor::new(&mut buf[..]);
            // 45 bytes hold the longest IPv6 text form (an IPv4-mapped one, fully written).
            if std::io::Write::write_fmt(&mut w, format_args!("{v6}")).is_err() {
                return http::HeaderValue::from_str(&v6.to_string())
                    .unwrap_or_else(|_| http::HeaderValue::from_static(""));
            }
            w.position() as usize
        }
    };
    // Digits, dots, colons and hex letters only: always a valid header value.
    http::HeaderValue::from_bytes(&buf[..len])
        .unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b)
}

/// A `tchar` of RFC 9110 §5.6.2: such a value needs no quotes.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_header_value_is_the_address_text() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().expect("test address");
            assert_eq!(
                ip_header_value(ip).to_str().ok(),
                Some(ip.to_string().as_str())
            );
        }
    }

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cidr_blocks_match_their_addresses_only() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "v4-mapped v6");
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_bits_are_ignored_and_each_mistake_has_its_message() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c, Cidr::parse("10.0.0.0/8").unwrap());
        assert!(c.contains(ip("10.200.0.1")) && !c.contains(ip("11.0.0.1")));
        let v6 = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(
            !v6.contains(ip("10.0.0.1")),
            "a v6 block never holds an IPv4 client"
        );
        assert_eq!(
            Cidr::parse("nope/8").unwrap_err(),
            "`nope/8` is not an address or a block like 10.0.0.0/8"
        );
        assert_eq!(
            Cidr::parse("::/129").unwrap_err(),
            "`::/129`: the prefix length must be 0 to 128"
        );
        assert_eq!(
            Cidr::parse("10.0.0.0/x").unwrap_err(),
            "`10.0.0.0/x`: the prefix length must be 0 to 32"
        );
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_peers() {
        let c = ClientIp::new(
            vec![Cidr::parse("10.0.0.0/8").unwrap()],
            UntrustedForwarded::Strip,
        );
        // An untrusted peer's header is ignored: it could say anything.
        assert_eq!(
            c.resolve(ip("203.0.113.9"), &headers(&["1.2.3.4"])),
            ip("203.0.113.9")
        );
        // Through two trusted hops, the first untrusted address from the right is the client;
        // what the client itself put on the left is not believed.
        assert_eq!(
            c.resolve(
                ip("10.0.0.2"),
                &headers(&["6.6.6.6, 198.51.100.4, 10.0.0.3"])
            ),
            ip("198.51.100.4")
        );
        assert_eq!(
            c.resolve(ip("10.0.0.2"), &headers(&["198.51.100.4", "10.0.0.3"])),
            ip("198.51.100.4"),
            "several header lines are one list"
        );
        assert_eq!(c.resolve(ip("10.0.0.2"), &headers(&[])), ip("10.0.0.2"));
        assert_eq!(
            c.resolve(ip("10.0.0.2"), &headers(&["junk, 10.0.0.5"])),
            ip("10.0.0.5"),
            "garbage stops the walk at the last good hop"
        );
        // Nothing trusted: always the peer.
        let none = ClientIp::default();
        assert_eq!(
            none.resolve(ip("10.0.0.2"), &headers(&["1.2.3.4"])),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn forwarded_elements_quote_what_is_not_a_token() {
        let el = |peer: &str, tls: bool, host: Option<&str>, by: Option<&str>| {
            let mut out = String::new();
            forwarded_element(
                &mut out,
                ip(peer),
                tls,
                host.map(str::as_bytes),
                by.map(|b| b.parse().unwrap()),
            );
            out
        };
        assert_eq!(
            el("192.0.2.60", false, Some("example.com"), None),
            "for=192.0.2.60;proto=http;host=example.com"
        );
        assert_eq!(
            el("2001:db8:cafe::17", true, Some("example.com:8443"), None),
            "for=\"[2001:db8:cafe::17]\";proto=https;host=\"example.com:8443\""
        );
        assert_eq!(
            el("10.0.0.1", true, None, Some("[::1]:443")),
            "for=10.0.0.1;proto=https;by=\"[::1]:443\""
        );
        // A Host that could smuggle a pair, an element or a quote is left out.
        for bad in ["a\";for=1.2.3.4", "a b", "a\\b", "", "h\"x"] {
            assert_eq!(
                el("10.0.0.1", false, Some(bad), None),
                "for=10.0.0.1;proto=http",
                "{bad}"
            );
        }
    }

    #[test]
    fn forwarded_by_needs_forwarded() {
        let section: ClientIpSection =
            serde_yaml::from_str("{ forwarded_by: true }").expect("section");
        let mut errors = ConfigErrors::default();
        section.build(&At::root().key("client_ip"), &mut errors);
        let errs: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errs, ["client_ip.forwarded_by: needs forwarded: true"]);
        let on: ClientIpSection =
            serde_yaml::from_str("{ forwarded: true, forwarded_by: true }").expect("section");
        assert_eq!(
            on.build(&At::root().key("client_ip"), &mut errors)
                .forwarded(),
            ForwardedMode::WithBy
        );
    }
}
