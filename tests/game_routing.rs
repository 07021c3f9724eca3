//! Game sessions routed end to end through the real gateway to the test game servers: by
//! serverType and worldId (an exact world before the wildcard), pinned to the first frame's
//! backend, echoed with the zip bit, over multiplexed links, per-session links with the traced
//! gate header, and WebSocket; a frame no rule takes gets the close frame.

// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::game::*;
use common::Gateway;

/// lobby (serverType 1, any world) on `a` multiplexed with events; battle world 3 on `b`, one
/// connection per session with the traced header and no events; battle any other world on `c`.
fn gateway(a: &GameServer, b: &GameServer, c: &GameServer) -> Gateway {
    Gateway::start(&game_config(
        None,
        &format!(
            "  - {{ name: lobby, backends: [\"{}\"] }}\n  - {{ name: battle3, backends: [\"{}\"] }}\n  - {{ name: battle, backends: [\"{}\"] }}\n",
            a.addr, b.addr, c.addr
        ),
        "      gateway_id: 77
      rules:
        - { server_type: 1, upstream: lobby, links: 1 }
        - { server_type: 2, world: 3, upstream: battle3, link: per_session, gate_header: traced, events: false }
        - { server_type: 2, upstream: battle }
",
        "",
    ))
}

#[test]
fn sessions_route_by_server_type_and_world_and_are_echoed_on_both_link_kinds_and_websocket() {
    let a = GameServer::start("lobby-a", &["--events"]);
    let b = GameServer::start("battle3-b", &["--gate", "traced"]);
    let c = GameServer::start("battle-c", &["--events"]);
    let gw = gateway(&a, &b, &c);
    let _log = LogOnPanic(&gw);
    let addr = game_addr(&gw);

    for (world, ty, want) in [
        (9, 1, "lobby-a"),
        (0, 1, "lobby-a"),
        (3, 2, "battle3-b"),
        (7, 2, "battle-c"),
    ] {
        let mut s = GameClient::connect(addr).unwrap();
        assert_eq!(s.whoami(sid(world, ty, 0)), want, "type {ty} world {world}");
        // Echo: msg id, ServerID (the zip bit too) and payload come back as sent.
        let zipped = sid(world, ty, 4) | 1 << 31;
        let f = s.call(321, zipped, b"ping 123").frame();
        assert_eq!(
            (f.msg_id, f.server_id, &f.payload[..]),
            (321, zipped, &b"ping 123"[..])
        );
        // Pinned: a later frame naming another serverType still reaches the first backend.
        assert_eq!(
            s.whoami(sid(3, 2, 0)),
            want,
            "pinned to the first frame's backend"
        );
    }

    // WebSocket: the same frames in binary messages, to the same rules.
    let mut ws = GameClient::websocket(addr).unwrap();
    assert_eq!(ws.whoami(sid(3, 1, 0)), "lobby-a");
    let f = ws.call(5, sid(3, 1, 0), &[7u8; 3000]).frame();
    assert_eq!((f.msg_id, f.payload.len()), (5, 3000));
    // The backend with events learnt the protocol and the client address from SessionOpen.
    let hello = ws.call(HELLO, sid(3, 1, 0), b"").frame().text();
    assert!(
        hello.starts_with("lobby-a proto=2 ip=127.0.0.1 "),
        "{hello}"
    );
    assert!(hello.ends_with(" gateway=77"), "{hello}");
    let mut tcp = GameClient::connect_from(IpAddr::from([127, 0, 0, 5]), addr).unwrap();
    assert_eq!(tcp.whoami(sid(1, 1, 0)), "lobby-a");
    let hello = tcp.call(HELLO, sid(1, 1, 0), b"").frame().text();
    let port = tcp.stream.local_addr().unwrap().port();
    assert_eq!(
        hello,
        format!("lobby-a proto=1 ip=127.0.0.5 port={port} gateway=77")
    );

    // No rule for serverType 9: the close frame with no_route (9), then the connection closes.
    let mut lost = GameClient::connect(addr).unwrap();
    lost.send(1, sid(1, 9, 0), b"x").unwrap();
    let frames = lost.until_closed(Duration::from_secs(5)).expect("closed");
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!((frames[0].msg_id, frames[0].u16()), (CLOSE_FRAME, Some(9)));

    // The others were not affected, and the session events reached the events backend: the
    // closed no-route session was never opened there, the WebSocket one closes as client_closed.
    assert_eq!(ws.whoami(sid(3, 1, 0)), "lobby-a");
    drop(ws);
    assert!(
        common::eventually(Duration::from_secs(5), || {
            tcp.call(CLOSES, sid(1, 1, 0), b"")
                .frame()
                .text()
                .contains("reasons=1")
        }),
        "no SessionClose with client_closed reached the backend"
    );
    let m = gw.metrics();
    assert!(
        metric_sum(
            &m,
            "zkgate_game_sessions_total",
            &[("protocol", "websocket")]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &m,
            "zkgate_game_sessions_closed_total",
            &[("reason", "no_route")]
        ) >= 1.0
    );
}

#[test]
fn a_kick_and_a_broadcast_from_the_backend_reach_their_sessions() {
    let a = GameServer::start("lobby-a", &["--events"]);
    let b = GameServer::start("battle3-b", &["--gate", "traced"]);
    let c = GameServer::start("battle-c", &["--events"]);
    let gw = gateway(&a, &b, &c);
    let _log = LogOnPanic(&gw);
    let addr = game_addr(&gw);
    let mut clients: Vec<GameClient> = (0..5)
        .map(|_| {
            let mut s = GameClient::connect(addr).unwrap();
            assert_eq!(s.whoami(sid(1, 1, 0)), "lobby-a");
            s
        })
        .collect();
    // A broadcast from the first: every session on that server gets the payload once.
    clients[0].send(BROADCAST, sid(1, 1, 0), b"to all").unwrap();
    for s in clients.iter_mut() {
        let f = s.recv(Duration::from_secs(5)).frame();
        assert_eq!((f.msg_id, &f.payload[..]), (BROADCAST, &b"to all"[..]));
    }
    // A kick: that session gets the close frame with `kicked` (7) and is closed, alone.
    clients[1].send(KICK, sid(1, 1, 0), b"").unwrap();
    let frames = clients[1]
        .until_closed(Duration::from_secs(5))
        .expect("closed");
    assert_eq!(
        frames.last().map(|f| (f.msg_id, f.u16())),
        Some((CLOSE_FRAME, Some(7)))
    );
    for (i, s) in clients.iter_mut().enumerate().filter(|(i, _)| *i != 1) {
        assert_eq!(s.whoami(sid(1, 1, 0)), "lobby-a", "session {i}");
    }
}

/// A gateway whose rules send serverType 4 to upstream `lobby` (server `a`) and 5 to `battle`
/// (server `c`), each frame by its own ServerID; `upstream` is added to both upstreams' YAML.
fn per_message_gateway(a: &GameServer, c: &GameServer, upstream: &str) -> Gateway {
    Gateway::start(&game_config(
        None,
        &format!(
            "  - {{ name: lobby, backends: [\"{}\"]{upstream} }}\n  - {{ name: battle, backends: [\"{}\"]{upstream} }}\n",
            a.addr, c.addr
        ),
        "      rules:
        - { server_type: 4, upstream: lobby, route: per_message }
        - { server_type: 5, upstream: battle, route: per_message }
",
        "",
    ))
}

#[test]
fn per_message_rules_route_each_frame_by_its_own_server_id() {
    let a = GameServer::start("lobby-a", &["--events"]);
    let c = GameServer::start("battle-c", &["--events"]);
    let gw = per_message_gateway(&a, &c, "");
    let _log = LogOnPanic(&gw);
    let mut s = GameClient::connect(game_addr(&gw)).unwrap();
    // One client fanned out to two servers by each frame's serverType, back and forth.
    for _ in 0..2 {
        assert_eq!(s.whoami(sid(1, 4, 0)), "lobby-a");
        assert_eq!(s.whoami(sid(1, 5, 0)), "battle-c");
    }
    let f = s.call(11, sid(2, 5, 1), b"fan").frame();
    assert_eq!(
        (f.msg_id, f.server_id, &f.payload[..]),
        (11, sid(2, 5, 1), &b"fan"[..])
    );
}

/// A `route: per_message` session whose second backend dies ends as `backend_gone`, and the
/// failure goes to that backend's outlier detection only: the first backend, which did nothing
/// wrong, stays in rotation.
#[test]
fn a_per_message_session_blames_only_the_backend_that_died() {
    let a = GameServer::start("lobby-a", &["--events"]);
    let c = GameServer::start("battle-c", &["--events"]);
    let outlier = "outlier_detection: { consecutive_failures: 1, base_ejection_time: 60s, max_ejected_percent: 100 }";
    let gw = per_message_gateway(&a, &c, &format!(", {outlier}"));
    let _log = LogOnPanic(&gw);
    let mut s = GameClient::connect(game_addr(&gw)).unwrap();
    assert_eq!(s.whoami(sid(1, 4, 0)), "lobby-a");
    assert_eq!(s.whoami(sid(1, 5, 0)), "battle-c");
    s.send(DIE, sid(1, 5, 0), b"").unwrap();
    let frames = s.until_closed(Duration::from_secs(10)).expect("closed");
    let last = frames.last().map(|f| (f.msg_id, f.u16()));
    assert_eq!(
        last,
        Some((CLOSE_FRAME, Some(8))),
        "backend_gone: {frames:?}"
    );
    let state = |upstream: &str| {
        let all = common::get(gw.admin, "/upstreams").json();
        let list = all["upstreams"].as_array().cloned().unwrap_or_default();
        let u = list.iter().find(|u| u["name"] == upstream).cloned();
        u.map(|u| u["backends"][0]["state"].as_str().unwrap_or("-").to_owned())
    };
    assert!(
        common::eventually(Duration::from_secs(5), || state("battle").as_deref()
            == Some("ejected")),
        "the backend that died is ejected: {:?}",
        state("battle")
    );
    assert_eq!(
        state("lobby").as_deref(),
        Some("active"),
        "the healthy one is not"
    );
}
