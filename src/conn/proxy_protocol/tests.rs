use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::ReadBuf;

use super::*;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn v2_ipv4(src: [u8; 4], sport: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut p = src.to_vec();
    p.extend_from_slice(&[10, 0, 0, 1]);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&443u16.to_be_bytes());
    p.extend_from_slice(tlvs);
    v2(0x1, 0x11, &p)
}

fn v2_ipv6(src: std::net::Ipv6Addr, sport: u16) -> Vec<u8> {
    let mut p = src.octets().to_vec();
    p.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&8443u16.to_be_bytes());
    v2(0x1, 0x21, &p)
}

/// An `AsyncRead` that hands out at most `chunk` bytes per read, as a slow peer's segments.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Reads a header off `header` + REQUEST in reads of at most `chunk` bytes; returns what it
/// read and checks that the request is left, untouched, for the next reader.
async fn read_off(header: &[u8], chunk: usize) -> Result<Vec<u8>, ReadError> {
    let data = [header, REQUEST].concat();
    let mut io = Trickle { data: &data, chunk };
    let mut buf = Vec::new();
    read_header(&mut io, Versions::BOTH, &mut buf).await?;
    assert_eq!(io.data, REQUEST, "bytes after the header were taken");
    Ok(buf)
}

fn client(source: &str, destination: &str) -> Carried {
    Carried::Client {
        source: source.parse().unwrap(),
        destination: destination.parse().unwrap(),
    }
}

#[tokio::test]
async fn every_kind_of_header_is_read_to_its_end_and_no_further() {
    let cases: Vec<(Vec<u8>, Carried)> = vec![
        (
            b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n".to_vec(),
            client("203.0.113.7:56324", "192.0.2.1:443"),
        ),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n".to_vec(),
            client("[2001:db8::7]:1", "[2001:db8::1]:65535"),
        ),
        (
            b"PROXY TCP4 1.1.1.1 1.1.1.1 1 1\r\n".to_vec(),
            client("1.1.1.1:1", "1.1.1.1:1"),
        ),
        (
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n".to_vec(),
            client(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
        ),
        (b"PROXY UNKNOWN\r\n".to_vec(), Carried::Own),
        (b"PROXY UNKNOWN ::1 ::1 1 1\r\n".to_vec(), Carried::Own),
        (
            v2_ipv4([198, 51, 100, 9], 40000, &[]),
            client("198.51.100.9:40000", "10.0.0.1:443"),
        ),
        (
            v2_ipv6("2001:db8::9".parse().unwrap(), 5),
            client("[2001:db8::9]:5", "[::1]:8443"),
        ),
        // TLVs (an ALPN, a NOOP, and one of a type nobody defined) are skipped.
        (
            v2_ipv4([198, 51, 100, 9], 1, &[0x01, 0, 2, b'h', b'2', 0x04, 0, 0, 0xEE, 0, 1, 7]),
            client("198.51.100.9:1", "10.0.0.1:443"),
        ),
        // LOCAL (a balancer's health check), with the addresses it may still carry.
        (v2(0x0, 0x11, &[1; 12]), Carried::Own),
        (v2(0x0, 0x00, &[]), Carried::Own),
        (v2(0x1, 0x00, &[]), Carried::Own),
        (v2(0x1, 0x31, &[0; 216]), Carried::Own),
    ];
    for (header, carried) in cases {
        for chunk in [1, 2, 3, 7, 4096] {
            let read = read_off(&header, chunk).await;
            let read = read.unwrap_or_else(|e| panic!("{header:?} by {chunk}: {e:?}"));
            assert_eq!(read, header);
            assert_eq!(parse(&read), Ok(carried.clone()), "{header:?}");
        }
    }
}

#[tokio::test]
async fn what_is_not_a_header_is_refused_at_its_first_bytes() {
    // An HTTP request on a PROXY listener: refused on the first read, nothing past 15 bytes.
    let mut io = Trickle {
        data: REQUEST,
        chunk: 4096,
    };
    let mut buf = Vec::new();
    let r = read_header(&mut io, Versions::BOTH, &mut buf).await;
    assert_eq!(
        r,
        Err(ReadError::Malformed(Malformed::Read(
            "no PROXY protocol header"
        )))
    );
    assert_eq!(buf.len(), MIN_HEADER);
    for junk in [
        &b"PROXZ TCP4 1.1.1.1 1.1.1.1 1 1\r\n"[..],
        b"\r\n\r\n\0\r\nQUIZ\n\x21\x11\0\x0c",
        b"PROXY TCP4 1.1.1.1\x00 1.1.1.1 1 1\r\n",
        b"PROXY TCP4 1.1.1.1 1.1.1.1 1 1\rX",
        b"PROXY TCP4 1.1.1.1 1.1.1.1 1 1\n",
        // ppp alone would take this as an UNKNOWN header ended by the lone LF.
        b"PROXY UNKNOWN \n\rf\r\n",
    ] {
        assert!(
            matches!(read_off(junk, 4096).await, Err(ReadError::Malformed(_))),
            "{junk:?}"
        );
    }
}

#[test]
fn a_v1_header_is_refused_at_107_bytes_without_its_end() {
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(V1_MAX - 1, b'a');
    assert_eq!(next_step(&long, Versions::BOTH), Step::Need(1));
    long.push(b'a');
    assert_eq!(
        next_step(&long, Versions::BOTH),
        Step::Invalid("a version 1 header longer than 107 bytes")
    );
    // The longest there is, exactly 107 bytes, is read.
    let mut max = b"PROXY UNKNOWN ".to_vec();
    max.resize(V1_MAX - 2, b'a');
    max.extend_from_slice(b"\r\n");
    assert_eq!(next_step(&max, Versions::BOTH), Step::Complete);
}

#[test]
fn a_v2_header_longer_than_the_cap_is_refused_before_its_body_is_read() {
    let mut fixed = V2_SIGNATURE.to_vec();
    fixed.extend_from_slice(&[0x21, 0x11]);
    let most = (V2_MAX - V2_FIXED) as u16;
    let mut ok = fixed.clone();
    ok.extend_from_slice(&most.to_be_bytes());
    assert_eq!(
        next_step(&ok, Versions::BOTH),
        Step::Need(V2_MAX - V2_FIXED)
    );
    let mut big = fixed.clone();
    big.extend_from_slice(&(most + 1).to_be_bytes());
    assert_eq!(
        next_step(&big, Versions::BOTH),
        Step::Invalid("a version 2 header longer than 4096 bytes")
    );
    let mut huge = fixed;
    huge.extend_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(next_step(&huge, Versions::BOTH), Step::Invalid(_)));
}

#[test]
fn bad_v2_fields_are_malformed() {
    // Version 1 in a v2 signature, an unknown command, an unknown family, addresses longer
    // than the length says, a datagram flow.
    let mut wrong_version = v2_ipv4([1, 2, 3, 4], 1, &[]);
    wrong_version[12] = 0x11;
    assert!(matches!(
        next_step(&wrong_version, Versions::BOTH),
        Step::Invalid(_)
    ));
    assert!(matches!(
        parse(&v2(0x2, 0x11, &[0; 12])),
        Err(Malformed::V2(_))
    ));
    assert!(matches!(
        parse(&v2(0x1, 0x41, &[0; 12])),
        Err(Malformed::V2(_))
    ));
    assert!(matches!(
        parse(&v2(0x1, 0x11, &[0; 8])),
        Err(Malformed::V2(_))
    ));
    assert!(matches!(
        parse(&v2(0x1, 0x21, &[0; 12])),
        Err(Malformed::V2(_))
    ));
    assert_eq!(parse(&v2(0x1, 0x12, &[0; 12])), Err(Malformed::Datagram));
}

#[test]
fn bad_v1_fields_are_malformed() {
    for h in [
        &b"PROXY TCP4 1.1.1 1.1.1.1 1 1\r\n"[..],
        b"PROXY TCP4 ::1 ::1 1 1\r\n",
        b"PROXY TCP6 1.1.1.1 1.1.1.1 1 1\r\n",
        b"PROXY TCP4 1.1.1.1 1.1.1.1 65536 1\r\n",
        b"PROXY TCP4 1.1.1.1 1.1.1.1 01 1\r\n",
        b"PROXY TCP4 1.1.1.1 1.1.1.1 1\r\n",
        b"PROXY TCP4 1.1.1.1  1.1.1.1 1 1\r\n",
        b"PROXY UDP4 1.1.1.1 1.1.1.1 1 1\r\n",
    ] {
        assert!(matches!(parse(h), Err(Malformed::V1(_))), "{h:?}");
    }
}

#[tokio::test]
async fn a_connection_that_ends_says_whether_it_sent_anything() {
    let mut buf = Vec::new();
    let r = read_header(&mut &b""[..], Versions::BOTH, &mut buf).await;
    assert_eq!(r, Err(ReadError::Gone));
    let mut buf = Vec::new();
    let r = read_header(&mut &b"PROXY TCP4 1.1.1.1 "[..], Versions::BOTH, &mut buf).await;
    assert!(matches!(r, Err(ReadError::Malformed(Malformed::Read(_)))));
}

#[test]
fn a_version_the_listener_does_not_take_is_refused() {
    let only_v2 = Versions {
        v1: false,
        v2: true,
    };
    let only_v1 = Versions {
        v1: true,
        v2: false,
    };
    assert!(matches!(next_step(b"PROXY", only_v2), Step::Invalid(_)));
    assert!(matches!(next_step(b"\r\n", only_v1), Step::Invalid(_)));
    assert!(matches!(next_step(b"\r\n", only_v2), Step::Need(_)));
}

#[test]
fn the_fuzz_invariants_hold_on_headers_and_junk() {
    for data in [
        &b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\nGET /"[..],
        b"PROXY UNKNOWN\r\n",
        b"",
        b"P",
        b"\r\n\r\n\0\r\nQUIT\n",
        &v2_ipv4([1, 2, 3, 4], 5, &[1, 0, 1, 9])[..],
    ] {
        exercise(data);
    }
}

fn build(yaml: &str, header_timeout: Duration) -> Result<ProxyProtocol, Vec<String>> {
    let section: ProxyProtocolSection = serde_yaml::from_str(yaml).unwrap();
    let mut errors = ConfigErrors::default();
    let pp = section.build(
        &At::root().index("listeners", 0).key("proxy_protocol"),
        header_timeout,
        &mut errors,
    );
    if errors.is_empty() {
        Ok(pp)
    } else {
        Err(errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect())
    }
}

#[test]
fn the_section_builds_with_its_defaults() {
    let pp = build(
        "trusted: [10.0.0.0/8, 192.0.2.7, '2001:db8::/32']",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(pp.versions, Versions::BOTH);
    assert_eq!(pp.timeout, Duration::from_secs(10));
    assert!(pp.trusts("10.200.0.1".parse().unwrap()));
    assert!(pp.trusts("::ffff:10.1.2.3".parse().unwrap()));
    assert!(pp.trusts("192.0.2.7".parse().unwrap()));
    assert!(!pp.trusts("192.0.2.8".parse().unwrap()));
    assert!(pp.trusts("2001:db8::5".parse().unwrap()));
    assert!(!pp.trusts("127.0.0.1".parse().unwrap()));
    let pp = build(
        "{trusted: [127.0.0.1], versions: [2], timeout: 3s}",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        pp.versions,
        Versions {
            v1: false,
            v2: true
        }
    );
    assert_eq!(pp.timeout, Duration::from_secs(3));
}

#[test]
fn every_bad_value_is_reported_at_its_path() {
    let errors = build(
        "{trusted: [nope, 10.0.0.0/33], versions: [1, 3], timeout: 11s}",
        Duration::from_secs(10),
    )
    .unwrap_err();
    let at = |p: &str| errors.iter().any(|e| e.starts_with(p));
    assert!(at("listeners[0].proxy_protocol.trusted[0]"), "{errors:?}");
    assert!(at("listeners[0].proxy_protocol.trusted[1]"), "{errors:?}");
    assert!(at("listeners[0].proxy_protocol.versions[1]"), "{errors:?}");
    assert!(at("listeners[0].proxy_protocol.timeout"), "{errors:?}");
    assert_eq!(errors.len(), 4, "{errors:?}");
    let errors = build(
        "{trusted: [], versions: [], timeout: 0s}",
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(serde_yaml::from_str::<ProxyProtocolSection>("{trusted: [a], other: 1}").is_err());
}
