//! Smoke test of the game listener's client side, with the real gateway binary: one session
//! echoed through a static upstream by a tiny backend in the test (it speaks the backend
//! framing: 20-byte server header, 9-byte gate header), plain HTTP answered 426, and a frame
//! over `max_frame` closing only its own connection with the close frame. The full suite is
//! G5's `tests/game_*.rs`.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use common::{free_port, Gateway};

/// A backend that answers every Trans frame with the same msg id, ServerID and payload, to
/// the session it came from (opcode 1 only: `events: false`).
fn echo_backend() -> (SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        for link in listener.incoming() {
            let Ok(mut link) = link else { return };
            thread::spawn(move || {
                let mut head = [0u8; 29];
                while link.read_exact(&mut head).is_ok() {
                    let len = i32::from_le_bytes(head[0..4].try_into().unwrap()) as usize;
                    let mut payload = vec![0u8; len - 9];
                    if link.read_exact(&mut payload).is_err() {
                        return;
                    }
                    // The reply: the same headers (type, ServerID, ObjectID, opcode, SessionID).
                    let mut reply = head.to_vec();
                    reply.extend_from_slice(&payload);
                    if link.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, handle)
}

fn frame(msg_id: u16, server_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    f.extend_from_slice(&msg_id.to_le_bytes());
    f.extend_from_slice(&server_id.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads one client frame: (msg id, ServerID, payload).
fn read_frame(s: &mut TcpStream) -> std::io::Result<(u16, u32, Vec<u8>)> {
    let mut head = [0u8; 8];
    s.read_exact(&mut head)?;
    let len = u16::from_le_bytes([head[0], head[1]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok((
        u16::from_le_bytes([head[2], head[3]]),
        u32::from_le_bytes(head[4..8].try_into().unwrap()),
        payload,
    ))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn start(backend: SocketAddr) -> (Gateway, SocketAddr) {
    let game: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = format!(
        "listeners:
  - name: web
    listen: \"{{HTTP}}\"
  - name: game
    listen: \"{game}\"
    game:
      gateway_id: 9
      max_frame: 1024
      rules:
        - {{ server_type: 1, upstream: lobby, events: false }}
upstreams:
  - {{ name: lobby, backends: [\"{backend}\"] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: lobby }}
"
    );
    let gw = Gateway::start(&yaml);
    assert!(
        common::eventually(Duration::from_secs(10), || TcpStream::connect(game).is_ok()),
        "the game listener did not open:\n{}",
        gw.log()
    );
    (gw, game)
}

#[test]
fn a_session_is_echoed_and_http_gets_426_and_an_oversized_frame_closes_only_its_connection() {
    let (backend, _b) = echo_backend();
    let (gw, game) = start(backend);

    // serverType 1, world 5, instId 2, zip bit set: passed through both ways.
    let server_id = (1u32 << 31) | (5 << 16) | (1 << 8) | 2;
    let mut a = connect(game);
    a.write_all(&frame(42, server_id, b"hello")).unwrap();
    assert_eq!(
        read_frame(&mut a).unwrap(),
        (42, server_id, b"hello".to_vec()),
        "{}",
        gw.log()
    );
    // Two frames in one write, then a frame split across writes.
    let mut two = frame(43, server_id, b"one");
    two.extend(frame(44, server_id, b"two"));
    a.write_all(&two).unwrap();
    assert_eq!(read_frame(&mut a).unwrap().2, b"one");
    assert_eq!(read_frame(&mut a).unwrap().2, b"two");
    let split = frame(45, server_id, b"split");
    a.write_all(&split[..5]).unwrap();
    thread::sleep(Duration::from_millis(50));
    a.write_all(&split[5..]).unwrap();
    assert_eq!(
        read_frame(&mut a).unwrap(),
        (45, server_id, b"split".to_vec())
    );

    // Plain HTTP on the game port: 426 and close.
    let mut h = connect(game);
    h.write_all(b"GET / HTTP/1.1\r\nHost: g\r\n\r\n").unwrap();
    let mut answer = String::new();
    h.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");

    // A frame over max_frame (1024): that connection gets the close frame (reason malformed,
    // code 2) and is closed; the first session goes on.
    let mut b = connect(game);
    b.write_all(&frame(1, 1 << 8, b"first")).unwrap();
    assert_eq!(read_frame(&mut b).unwrap().2, b"first");
    b.write_all(&frame(2, 1 << 8, &[7u8; 2000])).unwrap();
    let (msg, sid, payload) = read_frame(&mut b).unwrap();
    assert_eq!(
        (msg, sid, payload),
        (0xFFFE, 0, 2u16.to_le_bytes().to_vec())
    );
    let mut rest = Vec::new();
    assert_eq!(b.read_to_end(&mut rest).unwrap_or(0), 0, "closed after it");

    a.write_all(&frame(46, server_id, b"still here")).unwrap();
    assert_eq!(read_frame(&mut a).unwrap().2, b"still here");

    // No rule for serverType 9: the close frame with reason no_route (9), then close.
    let mut c = connect(game);
    c.write_all(&frame(1, 9 << 8, b"x")).unwrap();
    assert_eq!(
        read_frame(&mut c).unwrap(),
        (0xFFFE, 0, 9u16.to_le_bytes().to_vec())
    );

    drop(a);
    let log_has =
        |needle: &str| common::eventually(Duration::from_secs(5), || gw.log().contains(needle));
    assert!(
        log_has("reason=client_closed") && log_has("reason=malformed"),
        "one access line per session at its end:\n{}",
        gw.log()
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains("zkgate_game_refused_total{listener=\"game\",reason=\"http\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "zkgate_game_sessions_closed_total{listener=\"game\",reason=\"malformed\"} 1"
        ),
        "{metrics}"
    );
}

/// A WebSocket client, by hand: the upgrade, then masked binary messages.
fn ws_connect(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(
        b"GET /game HTTP/1.1\r\nHost: g\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    s
}

fn ws_send(s: &mut TcpStream, payload: &[u8]) {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x82, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).unwrap();
}

/// The payload of the next binary message (unmasked, as a server sends).
fn ws_read(s: &mut TcpStream) -> Vec<u8> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[0], 0x82, "a final binary frame");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => panic!("too long"),
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    p
}

#[test]
fn a_websocket_session_carries_the_framing_across_messages() {
    let (backend, _b) = echo_backend();
    let (_gw, game) = start(backend);
    let mut s = ws_connect(game);
    // One game frame split over two messages, then two frames in one message.
    let f = frame(7, 1 << 8, b"over ws");
    ws_send(&mut s, &f[..3]);
    ws_send(&mut s, &f[3..]);
    assert_eq!(ws_read(&mut s), f);
    let mut two = frame(8, 1 << 8, b"a");
    two.extend(frame(9, 1 << 8, b"b"));
    ws_send(&mut s, &two);
    // Answers may come in one message or two: the frames, in order.
    let mut got = Vec::new();
    while got.len() < two.len() {
        got.extend(ws_read(&mut s));
    }
    assert_eq!(got, two);
}

#[test]
fn sigterm_sends_the_go_away_frame_then_closes_after_the_drain() {
    let (backend, _b) = echo_backend();
    let game: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = format!(
        "listeners:
  - name: web
    listen: \"{{HTTP}}\"
  - name: game
    listen: \"{game}\"
    game:
      drain: 1s
      rules:
        - {{ server_type: 1, upstream: lobby, events: false }}
upstreams:
  - {{ name: lobby, backends: [\"{backend}\"] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: lobby }}
"
    );
    let gw = Gateway::start(&yaml);
    assert!(common::eventually(Duration::from_secs(10), || {
        TcpStream::connect(game).is_ok()
    }));
    let mut a = connect(game);
    a.write_all(&frame(1, 1 << 8, b"before")).unwrap();
    assert_eq!(read_frame(&mut a).unwrap().2, b"before");
    gw.signal("TERM");
    // The go-away frame: msg id 0xFFFF, ServerID 0, the drain window in ms.
    assert_eq!(
        read_frame(&mut a).unwrap(),
        (0xFFFF, 0, 1000u32.to_le_bytes().to_vec()),
        "{}",
        gw.log()
    );
    // The session still works within the window.
    a.write_all(&frame(2, 1 << 8, b"draining")).unwrap();
    assert_eq!(read_frame(&mut a).unwrap().2, b"draining");
    // Then the close frame with reason shutdown (10), and the end of the stream.
    assert_eq!(
        read_frame(&mut a).unwrap(),
        (0xFFFE, 0, 10u16.to_le_bytes().to_vec())
    );
    let mut rest = Vec::new();
    assert_eq!(a.read_to_end(&mut rest).unwrap_or(0), 0);
    assert!(
        gw.log().contains("raised to"),
        "the grace period covers the drain:\n{}",
        gw.log()
    );
}
