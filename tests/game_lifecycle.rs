//! Game sessions through the gateway's life: on SIGTERM every open session gets the go-away
//! frame before its connection closes; on SIGQUIT with a new `run --upgrade` process the new
//! one takes new sessions while the old one tells its sessions to go away; ZooKeeper killed
//! under traffic fails no session.

// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::game::*;
use common::Gateway;
use zkgate_discovery::testkit::ZkServer;

fn config(server: &GameServer, drain: &str) -> String {
    game_config(
        None,
        &format!("  - {{ name: lobby, backends: [\"{}\"] }}\n", server.addr),
        &format!(
            "      drain: {drain}\n      rules:\n        - {{ server_type: 1, upstream: lobby }}\n"
        ),
        "",
    )
}

/// Every client's frames until its connection closed: a go-away among them, and none cut.
fn all_told_to_go(clients: &mut [GameClient]) {
    for (i, c) in clients.iter_mut().enumerate() {
        let frames = c
            .until_closed(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("session {i} still open"));
        let go = frames.iter().find(|f| f.msg_id == GO_AWAY);
        assert!(
            go.is_some(),
            "session {i} closed without a go-away: {frames:?}"
        );
        assert!(go.and_then(|f| f.u32()).is_some(), "the window in ms");
    }
}

#[test]
fn sigterm_sends_every_session_the_go_away_frame_before_closing() {
    let server = GameServer::start("lobby", &["--events"]);
    let mut gw = Gateway::start(&config(&server, "2s"));
    let addr = game_addr(&gw);
    let mut clients: Vec<GameClient> = (0..20)
        .map(|_| {
            let mut c = GameClient::connect(addr).unwrap();
            assert_eq!(c.whoami(sid(1, 1, 0)), "lobby");
            c
        })
        .collect();
    gw.signal("TERM");
    // Told to go, and still answered within the window.
    let f = clients[0].recv(Duration::from_secs(5)).frame();
    assert_eq!((f.msg_id, f.u32()), (GO_AWAY, Some(2000)), "{}", gw.log());
    assert_eq!(clients[0].whoami(sid(1, 1, 0)), "lobby");
    all_told_to_go(&mut clients[1..]);
    assert!(clients[0].until_closed(Duration::from_secs(20)).is_some());
    let exited = common::eventually(Duration::from_secs(20), || {
        matches!(gw.child.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "zkgate still runs:\n{}", gw.log());
}

/// How long the gateway took to exit from `from` (within `limit`), and whether it exited 0.
fn exit_within(gw: &mut Gateway, from: Instant, limit: Duration) -> Option<(Duration, bool)> {
    let mut status = None;
    common::eventually(limit, || {
        status = gw.child.try_wait().ok().flatten();
        status.is_some()
    });
    status.map(|s| (from.elapsed(), s.success()))
}

/// The grace period is raised to 32 s for a 30 s drain, but with nothing open the process ends
/// once its housekeeping is done, not when the grace period does.
#[test]
fn sigterm_with_no_session_open_stops_long_before_the_drain_window() {
    let server = GameServer::start("lobby", &["--events"]);
    let mut gw = Gateway::start(&config(&server, "30s"));
    // A session came and went: its link to the backend stays, idle.
    let mut c = GameClient::connect(game_addr(&gw)).unwrap();
    assert_eq!(c.whoami(sid(1, 1, 0)), "lobby");
    drop(c);
    assert!(common::eventually(Duration::from_secs(5), || {
        metric_sum(&gw.metrics(), "zkgate_game_sessions_active", &[]) == 0.0
    }));
    let signalled = Instant::now();
    gw.signal("TERM");
    let (took, ok) = exit_within(&mut gw, signalled, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("zkgate still runs:\n{}", gw.log()));
    assert!(
        took < Duration::from_secs(15),
        "took {took:?} against a 32 s grace period:\n{}",
        gw.log()
    );
    assert!(ok, "exit status 0:\n{}", gw.log());
    assert!(gw.log().contains("nothing left to drain"), "{}", gw.log());
}

/// With a session open the stop waits for it: the go-away comes at once, the session keeps
/// working, and once its client leaves (well within the window) the process ends promptly.
#[test]
fn sigterm_with_a_session_open_waits_for_its_client_to_leave_then_exits() {
    let server = GameServer::start("lobby", &["--events"]);
    let mut gw = Gateway::start(&config(&server, "30s"));
    let mut c = GameClient::connect(game_addr(&gw)).unwrap();
    assert_eq!(c.whoami(sid(1, 1, 0)), "lobby");
    gw.signal("TERM");
    let f = c.recv(Duration::from_secs(5)).frame();
    assert_eq!((f.msg_id, f.u32()), (GO_AWAY, Some(30_000)));
    // The session outlives the quiet time a stop waits for, and still works.
    thread::sleep(Duration::from_secs(2));
    assert!(gw.child.try_wait().unwrap().is_none(), "{}", gw.log());
    assert_eq!(c.whoami(sid(1, 1, 0)), "lobby");
    let left = Instant::now();
    drop(c);
    let (took, ok) = exit_within(&mut gw, left, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("zkgate still runs:\n{}", gw.log()));
    assert!(
        took < Duration::from_secs(15),
        "took {took:?} after the client left, against a 30 s drain:\n{}",
        gw.log()
    );
    assert!(ok, "exit status 0:\n{}", gw.log());
}

/// Connections that are not sessions yet at a stop: one whose first bytes were seen and an
/// established WebSocket are told to go and may still start their session within the window;
/// one that sent nothing is closed at once, with no frame.
#[test]
fn sigterm_tells_connections_not_yet_sessions_to_go_when_their_protocol_is_known() {
    let server = GameServer::start("lobby", &["--events"]);
    // The first-frame deadline (which a drain does not lift) past the window.
    let yaml = config(&server, "10s").replace(
        "      drain: 10s\n",
        "      drain: 10s\n      first_frame_timeout: 30s\n",
    );
    assert!(yaml.contains("first_frame_timeout"));
    let mut gw = Gateway::start(&yaml);
    let addr = game_addr(&gw);
    let whoami = client_frame(WHOAMI, sid(1, 1, 0), b"");
    // Half a first frame: its protocol, the binary framing, is known.
    let mut half = GameClient::connect(addr).unwrap();
    half.send_raw(&whoami[..4]).unwrap();
    let mut ws = GameClient::websocket(addr).unwrap();
    let mut silent = GameClient::connect(addr).unwrap();
    // Time for the gateway to read the half frame (the WebSocket's upgrade was answered).
    thread::sleep(Duration::from_secs(1));
    gw.signal("TERM");
    assert_eq!(
        silent.until_closed(Duration::from_secs(5)),
        Some(Vec::new()),
        "closed without a frame, long before the window ends:\n{}",
        gw.log()
    );
    for (name, c) in [("tcp", &mut half), ("websocket", &mut ws)] {
        let f = c.recv(Duration::from_secs(5)).frame();
        assert_eq!((f.msg_id, f.u32()), (GO_AWAY, Some(10_000)), "{name}");
    }
    // The rest of the frame, within the window: a session, told to go already.
    half.send_raw(&whoami[4..]).unwrap();
    assert_eq!(half.recv(Duration::from_secs(5)).frame().text(), "lobby");
    // At the window's end both get the close frame (`shutdown`), and no second go-away.
    for (name, c) in [("tcp", &mut half), ("websocket", &mut ws)] {
        let frames = c
            .until_closed(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{name} still open"));
        let closes: Vec<_> = frames.iter().map(|f| (f.msg_id, f.u16())).collect();
        assert_eq!(closes, [(CLOSE_FRAME, Some(10))], "{name}");
    }
    let (_, ok) = exit_within(&mut gw, Instant::now(), Duration::from_secs(20))
        .unwrap_or_else(|| panic!("zkgate still runs:\n{}", gw.log()));
    assert!(ok, "{}", gw.log());
}

#[test]
fn sigquit_upgrade_hands_new_sessions_over_while_old_ones_are_told_to_go() {
    let server = GameServer::start("lobby", &["--events"]);
    let old = Gateway::start(&config(&server, "3s"));
    let _log = LogOnPanic(&old);
    let addr = game_addr(&old);
    let mut clients: Vec<GameClient> = (0..10)
        .map(|_| {
            let mut c = GameClient::connect(addr).unwrap();
            assert_eq!(c.whoami(sid(1, 1, 0)), "lobby");
            c
        })
        .collect();
    let _new = old.successor(&config(&server, "3s"));
    thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    all_told_to_go(&mut clients);
    // New sessions are served all along: by the new process once the old one has gone.
    for _ in 0..10 {
        let mut c = GameClient::connect(addr).unwrap();
        assert_eq!(c.whoami(sid(1, 1, 0)), "lobby");
    }
    let new_log = old.successor_log();
    assert!(
        common::eventually(Duration::from_secs(20), || {
            GameClient::connect(addr).is_ok_and(|mut c| c.whoami(sid(1, 1, 0)) == "lobby")
        }),
        "new process:\n{new_log}"
    );
}

#[test]
fn zookeeper_killed_under_traffic_fails_no_session() {
    let mut zk = ZkServer::start();
    let (a, b) = (
        GameServer::start("a", &["--events"]),
        GameServer::start("b", &["--events"]),
    );
    let reg = Registry::connect(&zk.connect_string());
    reg.add("lobby", "a", &a, None);
    reg.add("lobby", "b", &b, None);
    let gw = Gateway::start(&game_config(
        Some(&zk.connect_string()),
        "  - { name: lobby, zookeeper: { service: lobby } }\n",
        "      rules:\n        - { server_type: 1, upstream: lobby }\n",
        "",
    ));
    let _log = LogOnPanic(&gw);
    let addr = game_addr(&gw);
    assert!(common::eventually(Duration::from_secs(10), || {
        GameClient::connect(addr)
            .is_ok_and(|mut c| c.call(WHOAMI, sid(1, 1, 0), b"") != Got::Closed)
    }));
    // Eight clients echo without pause, each on one session; every 20th frame a new session.
    let stop = Arc::new(AtomicBool::new(false));
    let frames = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (stop, frames) = (stop.clone(), frames.clone());
            thread::spawn(move || -> Result<(), String> {
                let mut n = 0u64;
                let mut c = GameClient::connect(addr).map_err(|e| e.to_string())?;
                while !stop.load(Ordering::Relaxed) {
                    if n % 20 == 19 {
                        c = GameClient::connect(addr).map_err(|e| e.to_string())?;
                    }
                    let body = format!("{w} {n}");
                    match c.call(7, sid(1, 1, 0), body.as_bytes()) {
                        Got::Frame(f) if f.payload == body.as_bytes() => {}
                        other => return Err(format!("worker {w} frame {n}: {other:?}")),
                    }
                    frames.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok(())
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    zk.kill();
    // Well past the ZooKeeper session timeout (3 s): the last known backends keep serving.
    thread::sleep(Duration::from_secs(5));
    let during = frames.load(Ordering::Relaxed);
    zk.restart();
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap().unwrap();
    }
    assert!(frames.load(Ordering::Relaxed) > during, "traffic went on");
    let m = gw.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "zkgate_game_sessions_closed_total",
            &[("reason", "backend_gone")]
        ),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "zkgate_game_route_errors_total", &[]),
        0.0,
        "{m}"
    );
}
