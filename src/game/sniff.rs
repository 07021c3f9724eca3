//! What a game client speaks, told from its first bytes (after any PROXY header): the binary
//! framing, or HTTP (a WebSocket upgrade, or a plain request that gets 426).
//!
//! The seed peeked 4 bytes with a 500 ms deadline and took a timeout for binary, so a binary
//! client that sent less waited half a second. Here the decision is made from what is
//! buffered, as soon as it can be: a binary frame starts with its u16 length, an HTTP request
//! with a method token and a space. A first byte that starts no method is binary at once; bytes
//! that spell a method so far wait for the next read, which every client sends (a binary
//! header is 8 bytes, longer than every method and its space). A first frame whose first bytes
//! spell `GET ` (a 17,735-byte payload with message id 0x2054) is taken for HTTP, as the seed
//! takes it.

/// The longest HTTP request head read before answering (a WebSocket upgrade carries a few
/// hundred bytes; browsers add cookies).
pub const MAX_HEAD: usize = 8 * 1024;

/// The methods an HTTP client may open with, each with its space.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
    b"PATCH ",
];

/// What the bytes so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// Too few bytes to tell: read more.
    Need,
    /// The game's binary framing.
    Binary,
    /// An HTTP request.
    Http,
}

/// Tells `buf` (the connection's first bytes) apart.
pub fn sniff(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::Need;
    }
    let mut prefix = false;
    for m in METHODS {
        let n = buf.len().min(m.len());
        if buf[..n] == m[..n] {
            if n == m.len() {
                return Sniffed::Http;
            }
            prefix = true;
        }
    }
    if prefix {
        Sniffed::Need
    } else {
        Sniffed::Binary
    }
}

/// The length of the request head at the start of `buf` (through its blank line), once whole.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What an HTTP request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A WebSocket upgrade (RFC 6455 §4.2.1): its `Sec-WebSocket-Key`.
    WebSocket { key: String },
    /// Anything else, or an upgrade missing what RFC 6455 requires.
    Other,
    /// Not an HTTP/1.1 request head.
    Malformed,
}

/// Reads a whole request head (as [`head_len`] delimited it).
pub fn request(head: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Request::Malformed,
    }
    if req.method != Some("GET") || req.version != Some(1) {
        return Request::Other;
    }
    let value = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        value(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Request::Other;
    }
    if value("sec-websocket-version") != Some("13") {
        return Request::Other;
    }
    match value("sec-websocket-key") {
        Some(key) if !key.is_empty() => Request::WebSocket {
            key: key.to_owned(),
        },
        _ => Request::Other,
    }
}

/// For the fuzz target (`game_frames`): `data` as a connection's first bytes, read in every
/// prefix. Panics on a broken invariant: a verdict that changes as more bytes arrive, eight
/// bytes that still leave it open (the module's promise of no wait), or a head that panics the
/// request reader.
pub fn exercise(data: &[u8]) {
    let mut verdict = None;
    for n in 0..=data.len().min(64) {
        match (sniff(&data[..n]), verdict) {
            (Sniffed::Need, None) => assert!(n < 8, "undecided after {n} bytes"),
            (Sniffed::Need, Some(v)) => panic!("{v:?} after fewer bytes, undecided after {n}"),
            (v, None) => verdict = Some(v),
            (v, Some(was)) => assert_eq!(v, was, "the verdict changed at {n} bytes"),
        }
    }
    let data = &data[..data.len().min(MAX_HEAD)];
    if let Some(n) = head_len(data) {
        let _ = request(&data[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_frame_is_told_from_its_first_byte() {
        // Length 5, msg id 1, ServerID: the usual first frame.
        assert_eq!(sniff(&[5, 0, 1, 0, 0, 1, 0, 0]), Sniffed::Binary);
        assert_eq!(sniff(&[5]), Sniffed::Binary, "no wait for more");
        assert_eq!(sniff(&[0]), Sniffed::Binary);
        assert_eq!(sniff(&[]), Sniffed::Need);
    }

    #[test]
    fn http_is_told_once_a_method_and_its_space_are_in() {
        assert_eq!(sniff(b"G"), Sniffed::Need);
        assert_eq!(sniff(b"GE"), Sniffed::Need);
        assert_eq!(sniff(b"GET"), Sniffed::Need);
        assert_eq!(sniff(b"GET "), Sniffed::Http);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Http);
        assert_eq!(sniff(b"OPTIONS * HTTP/1.1"), Sniffed::Http);
        assert_eq!(sniff(b"PO"), Sniffed::Need, "POST or PUT or PATCH");
        assert_eq!(sniff(b"PUT "), Sniffed::Http);
        // Starts like a method, then is not one: binary.
        assert_eq!(sniff(b"GX"), Sniffed::Binary);
        assert_eq!(sniff(&[b'G', b'E', 0, 0, 0, 0, 0, 0]), Sniffed::Binary);
        // Any 8 bytes decide.
        for b in 0..=255u8 {
            assert_ne!(sniff(&[b, b'E', b'T', b' ', 1, 2, 3, 4]), Sniffed::Need);
        }
    }

    #[test]
    fn random_first_bytes_keep_the_sniffer_s_promises() {
        let mut rng = fastrand::Rng::with_seed(15);
        for _ in 0..20_000 {
            let len = rng.usize(0..24);
            // Mostly letters and spaces, so that method prefixes come up often.
            let alphabet = b"GETPOSUHADLCNRAC /\r\n\x00\x05";
            let data: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            exercise(&data);
        }
        exercise(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
    }

    #[test]
    fn a_head_ends_at_its_blank_line() {
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
    }

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /game HTTP/1.1\r\nHost: g\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    }

    #[test]
    fn a_websocket_upgrade_is_recognised_and_other_requests_are_not() {
        assert_eq!(
            request(upgrade("Sec-WebSocket-Version: 13\r\n").as_bytes()),
            Request::WebSocket {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into()
            }
        );
        // Without the version RFC 6455 requires: not an upgrade this gateway answers.
        assert_eq!(request(upgrade("").as_bytes()), Request::Other);
        assert_eq!(
            request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Request::Other
        );
        assert_eq!(
            request(b"POST / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            Request::Other
        );
        assert_eq!(request(b"GET /\x01 HTTP/1.1\r\n\r\n"), Request::Malformed);
    }
}
