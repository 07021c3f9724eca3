//! 1,000 game sessions multiplexed on one backend link: every answer comes back to its own
//! session; a client that stops reading while its backend floods it is kicked (slow_client)
//! while the other 999 keep being answered.

// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::game::*;
use common::Gateway;

const SESSIONS: usize = 1_000;

#[test]
fn a_thousand_sessions_share_one_link_and_a_client_that_stops_reading_is_kicked_alone() {
    let server = GameServer::start("solo", &["--events"]);
    let gw = Gateway::start(&game_config(
        None,
        &format!("  - {{ name: solo, backends: [\"{}\"] }}\n", server.addr),
        "      queue: 64
      rules:
        - { server_type: 1, upstream: solo, links: 1 }
",
        "",
    ));
    let _log = LogOnPanic(&gw);
    let addr = game_addr(&gw);

    // Sessions from eight source addresses, each established by its first frame.
    let mut clients: Vec<GameClient> = (0..SESSIONS)
        .map(|i| {
            let src = IpAddr::from([127, 0, 0, 10 + (i % 8) as u8]);
            let mut s = GameClient::connect_from(src, addr).unwrap();
            s.send(WHOAMI, sid(1, 1, 0), b"").unwrap();
            s
        })
        .collect();
    for (i, s) in clients.iter_mut().enumerate() {
        assert_eq!(
            s.recv(Duration::from_secs(10)).frame().text(),
            "solo",
            "session {i}"
        );
    }
    let m = gw.metrics();
    assert_eq!(
        metric_sum(&m, "zkgate_game_links", &[("upstream", "solo")]),
        1.0,
        "one link carries them all:\n{m}"
    );

    // Every session sends its own marker at once; each gets its own back.
    let round = |clients: &mut Vec<GameClient>, tag: &str, skip: Option<usize>| {
        for (i, s) in clients.iter_mut().enumerate() {
            if Some(i) != skip {
                s.send(100, sid(1, 1, 0), format!("{tag} {i}").as_bytes())
                    .unwrap();
            }
        }
        for (i, s) in clients.iter_mut().enumerate() {
            if Some(i) != skip {
                let f = s.recv(Duration::from_secs(10)).frame();
                assert_eq!(f.text(), format!("{tag} {i}"), "session {i}");
            }
        }
    };
    round(&mut clients, "first", None);

    // Session 0 asks for far more than its queue and socket buffers hold, and never reads.
    clients[0]
        .send(FLOOD, sid(1, 1, 0), &20_000u32.to_le_bytes())
        .unwrap();
    // The others keep being answered meanwhile, in several rounds.
    let started = Instant::now();
    for r in 0..3 {
        round(&mut clients, &format!("during {r}"), Some(0));
    }
    assert!(
        common::eventually(Duration::from_secs(20), || metric_sum(
            &gw.metrics(),
            "zkgate_game_sessions_closed_total",
            &[("reason", "slow_client")]
        ) == 1.0),
        "the flooded session was not kicked in {:?}",
        started.elapsed()
    );
    // Its client, reading now, finds the stream ending (what it had queued, then closed).
    assert!(
        clients[0].until_closed(Duration::from_secs(20)).is_some(),
        "the kicked session's connection stayed open"
    );
    round(&mut clients, "after", Some(0));
    let m = gw.metrics();
    assert_eq!(
        metric_sum(&m, "zkgate_game_sessions_closed_total", &[]),
        1.0,
        "only the slow client was closed:\n{m}"
    );
    assert_eq!(
        metric_sum(&m, "zkgate_game_links", &[("upstream", "solo")]),
        1.0
    );
}
