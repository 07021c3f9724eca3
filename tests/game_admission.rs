//! What the game listener refuses, each case closing only its own connection while a session
//! open beside it keeps being answered: per-address concurrent and per-second limits, the CIDR
//! allowlist, a frame over `max_frame`, a header that cannot be a frame, a truncated frame, and
//! PROXY protocol v1/v2 headers from a trusted peer (the client address they carry reaches the
//! backend) and from an untrusted one (refused).

// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::game::*;
use common::Gateway;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// The connection ends without a session: closed, with at most a close frame first.
fn refused(c: &mut GameClient) -> bool {
    let _ = c.send(WHOAMI, sid(1, 1, 0), b"");
    match c.until_closed(Duration::from_secs(5)) {
        Some(frames) => frames.iter().all(|f| f.msg_id == CLOSE_FRAME),
        None => false,
    }
}

fn start(server: &GameServer, game: &str, listener: &str) -> Gateway {
    Gateway::start(&game_config(
        None,
        &format!("  - {{ name: lobby, backends: [\"{}\"] }}\n", server.addr),
        &format!("      rules:\n        - {{ server_type: 1, upstream: lobby }}\n{game}"),
        listener,
    ))
}

#[test]
fn limits_and_bad_frames_close_only_their_own_connection() {
    let server = GameServer::start("lobby", &["--events"]);
    let gw = start(
        &server,
        "      max_frame: 1024
      first_frame_timeout: 2s
      per_ip: { concurrent: 3, per_second: 1000 }
      allow: [\"127.0.0.0/26\"]
",
        "",
    );
    let _log = LogOnPanic(&gw);
    let addr = game_addr(&gw);
    // The bystander, from its own address.
    let mut by = GameClient::connect_from(ip(2), addr).unwrap();
    assert_eq!(by.whoami(sid(1, 1, 0)), "lobby");

    // Three sessions from 127.0.0.20 are let in, a fourth is refused; another address is not
    // limited by them, and once one closes its place is free again.
    let mut three: Vec<GameClient> = (0..3)
        .map(|_| {
            let mut c = GameClient::connect_from(ip(20), addr).unwrap();
            assert_eq!(c.whoami(sid(1, 1, 0)), "lobby");
            c
        })
        .collect();
    let mut fourth = GameClient::connect_from(ip(20), addr).unwrap();
    assert!(refused(&mut fourth), "a fourth session from one address");
    let mut other = GameClient::connect_from(ip(21), addr).unwrap();
    assert_eq!(other.whoami(sid(1, 1, 0)), "lobby");
    drop(three.pop());
    assert!(
        common::eventually(Duration::from_secs(5), || {
            GameClient::connect_from(ip(20), addr)
                .is_ok_and(|mut c| c.call(WHOAMI, sid(1, 1, 0), b"") != Got::Closed)
        }),
        "the closed session's place was not given back"
    );

    // Outside the allowlist (127.0.0.0/26 ends at .63).
    let mut outside = GameClient::connect_from(ip(100), addr).unwrap();
    assert!(refused(&mut outside), "an address outside the allowlist");

    // A frame over max_frame (1024): the close frame with `malformed` (2), then closed.
    let mut big = GameClient::connect_from(ip(3), addr).unwrap();
    assert_eq!(big.whoami(sid(1, 1, 0)), "lobby");
    big.send(5, sid(1, 1, 0), &[0u8; 2000]).unwrap();
    let frames = big.until_closed(Duration::from_secs(5)).expect("closed");
    assert_eq!(
        frames.last().map(|f| (f.msg_id, f.u16())),
        Some((CLOSE_FRAME, Some(2)))
    );
    // A first header that cannot be a frame here (a length of 65,535 over the bound) before
    // any session: refused as well.
    let mut junk = GameClient::connect_from(ip(4), addr).unwrap();
    junk.send_raw(&[0xff, 0xff, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00])
        .unwrap();
    assert!(junk.until_closed(Duration::from_secs(5)).is_some());

    // A truncated first frame: the header promises 100 bytes, 10 come; the first frame
    // timeout (2 s) closes it.
    let mut cut = GameClient::connect_from(ip(5), addr).unwrap();
    let mut partial = client_frame(WHOAMI, sid(1, 1, 0), &[1u8; 100]);
    partial.truncate(18);
    cut.send_raw(&partial).unwrap();
    assert!(cut.until_closed(Duration::from_secs(10)).is_some());
    // A truncated frame inside a session, then the client half-closes: the session ends.
    let mut half = GameClient::connect_from(ip(6), addr).unwrap();
    assert_eq!(half.whoami(sid(1, 1, 0)), "lobby");
    half.send_raw(&partial).unwrap();
    half.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(half.until_closed(Duration::from_secs(10)).is_some());

    assert_eq!(
        by.whoami(sid(1, 1, 0)),
        "lobby",
        "the bystander is unaffected"
    );
    let f = by.call(9, sid(1, 1, 0), b"still here").frame();
    assert_eq!(f.payload, b"still here");
    let m = gw.metrics();
    assert!(
        metric_sum(&m, "zkgate_game_refused_total", &[]) >= 2.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "zkgate_game_sessions_closed_total",
            &[("reason", "malformed")]
        ) >= 1.0,
        "{m}"
    );
}

#[test]
fn new_sessions_per_second_from_one_address_are_limited() {
    let server = GameServer::start("lobby", &[]);
    let gw = start(&server, "      per_ip: { per_second: 2 }\n", "");
    let _log = LogOnPanic(&gw);
    let addr = game_addr(&gw);
    // Opened back to back: far more than 2 a second, so some of 10 are refused...
    let outcomes: Vec<bool> = (0..10)
        .map(|_| {
            let mut c = GameClient::connect_from(ip(30), addr).unwrap();
            c.call(WHOAMI, sid(1, 1, 0), b"").eq(&Got::Frame(Frame {
                msg_id: WHOAMI,
                server_id: sid(1, 1, 0),
                payload: b"lobby".to_vec(),
            }))
        })
        .collect();
    assert!(outcomes.iter().any(|ok| *ok), "{outcomes:?}");
    assert!(outcomes.iter().any(|ok| !ok), "{outcomes:?}");
    // ...while another address is let in.
    let mut other = GameClient::connect_from(ip(31), addr).unwrap();
    assert_eq!(other.whoami(sid(1, 1, 0)), "lobby");
}

#[test]
fn proxy_headers_count_only_from_trusted_peers() {
    let server = GameServer::start("lobby", &["--events"]);
    let gw = start(
        &server,
        "",
        "    proxy_protocol: { trusted: [\"127.0.0.2/32\"] }\n",
    );
    let _log = LogOnPanic(&gw);
    let addr = game_addr(&gw);
    let client: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    for (v, header) in [(1, proxy_v1(client, addr)), (2, proxy_v2(client, addr))] {
        // From the trusted balancer: the header's client address is the session's.
        let mut s = connect_from(ip(2), addr).unwrap();
        s.write_all(&header).unwrap();
        let mut c = GameClient::over(s);
        assert_eq!(c.whoami(sid(1, 1, 0)), "lobby", "v{v}");
        let hello = c.call(HELLO, sid(1, 1, 0), b"").frame().text();
        assert!(
            hello.starts_with("lobby proto=1 ip=203.0.113.9 port=40000 "),
            "v{v}: {hello}"
        );
        // From any other peer: refused, header or not.
        let mut s = connect_from(ip(3), addr).unwrap();
        s.write_all(&header).unwrap();
        let mut c = GameClient::over(s);
        assert!(refused(&mut c), "v{v} from an untrusted peer");
    }
    // The trusted peer without a header: refused too.
    let mut bare = GameClient::connect_from(ip(2), addr).unwrap();
    assert!(refused(&mut bare), "no header from the trusted peer");
}
