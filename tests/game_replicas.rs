//! Game gateways sharing one ZooKeeper: three replicas send a given key to the same game
//! server, by the consistent-hash ring and by instance id, with no shared state but the
//! registrations; a server joining takes only new sessions; one leaving (it dies) closes its
//! sessions with the close frame, and new sessions go to the others.

// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::game::*;
use common::Gateway;
use zkgate_discovery::testkit::ZkServer;

fn gateway(zk: &ZkServer, id: u16) -> Gateway {
    Gateway::start(&game_config(
        Some(&zk.connect_string()),
        "  - { name: ring, balance: consistent_hash, hash_key: client_ip, zookeeper: { service: ring } }
  - { name: inst, zookeeper: { service: inst } }
  - { name: lobby, zookeeper: { service: lobby } }
",
        &format!(
            "      gateway_id: {id}
      rules:
        - {{ server_type: 2, upstream: ring, strategy: consistent_hash }}
        - {{ server_type: 3, upstream: inst, strategy: instance }}
        - {{ server_type: 1, upstream: lobby }}
"
        ),
        "",
    ))
}

/// Who answers `server_id` on a new session through `gw`.
fn who(gw: &Gateway, server_id: u32) -> String {
    GameClient::connect(game_addr(gw))
        .unwrap()
        .whoami(server_id)
}

#[test]
fn three_replicas_send_a_key_to_the_same_server_by_ring_and_by_instance() {
    let zk = ZkServer::start();
    let reg = Registry::connect(&zk.connect_string());
    let servers: Vec<GameServer> = (1..=4)
        .map(|i| GameServer::start(&format!("s{i}"), &["--events"]))
        .collect();
    for (i, s) in servers.iter().enumerate() {
        let inst = i as u8 + 1;
        reg.add("ring", &format!("node-{inst}"), s, Some(inst));
        reg.add("inst", &format!("node-{inst}"), s, Some(inst));
    }
    let gws: Vec<Gateway> = (1..=3).map(|i| gateway(&zk, i)).collect();
    let all: HashSet<String> = (1..=4).map(|i| format!("s{i}")).collect();
    // Each replica has seen all four before the comparison starts.
    for gw in &gws {
        assert!(
            common::eventually(Duration::from_secs(10), || {
                (1..=4u8).all(|i| who(gw, sid(1, 3, i)) == format!("s{i}"))
            }),
            "{}",
            gw.log()
        );
    }
    let mut spread = HashSet::new();
    for key in 1..=40u8 {
        let world = u16::from(key) * 7;
        let first = who(&gws[0], sid(world, 2, key));
        for gw in &gws[1..] {
            assert_eq!(who(gw, sid(world, 2, key)), first, "key {key}");
        }
        // The same replica again, on a new session: the same server.
        assert_eq!(who(&gws[0], sid(world, 2, key)), first, "key {key}");
        spread.insert(first);
    }
    assert!(spread.len() >= 3, "40 keys on {spread:?} of {all:?}");
    for gw in &gws {
        for i in 1..=4u8 {
            assert_eq!(who(gw, sid(9, 3, i)), format!("s{i}"), "instance {i}");
        }
    }
}

#[test]
fn a_server_joining_takes_only_new_sessions_and_one_dying_closes_only_its_own() {
    let zk = ZkServer::start();
    let reg = Registry::connect(&zk.connect_string());
    let (a, b) = (
        GameServer::start("a", &["--events"]),
        GameServer::start("b", &["--events"]),
    );
    reg.add("lobby", "a", &a, None);
    reg.add("lobby", "b", &b, None);
    let gw = gateway(&zk, 1);
    let _log = LogOnPanic(&gw);
    let addr = game_addr(&gw);
    let mut old: Vec<(GameClient, String)> = (0..20)
        .map(|_| {
            let mut c = GameClient::connect(addr).unwrap();
            let name = c.whoami(sid(1, 1, 0));
            (c, name)
        })
        .collect();
    assert_eq!(
        old.iter().map(|(_, n)| n.as_str()).collect::<HashSet<_>>(),
        HashSet::from(["a", "b"])
    );

    // c joins: new sessions reach it, the open ones stay where they were.
    let c = GameServer::start("c", &["--events"]);
    reg.add("lobby", "c", &c, None);
    let mut new: Vec<GameClient> = Vec::new();
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let mut s = GameClient::connect(addr).unwrap();
            let on_c = s.whoami(sid(1, 1, 0)) == "c";
            if on_c {
                new.push(s);
            }
            on_c
        }),
        "no new session reached the server that joined"
    );
    for (i, (s, name)) in old.iter_mut().enumerate() {
        assert_eq!(&s.whoami(sid(1, 1, 0)), name, "open session {i} moved");
    }
    // More sessions on c.
    while new.len() < 4 {
        let mut s = GameClient::connect(addr).unwrap();
        if s.whoami(sid(1, 1, 0)) == "c" {
            new.push(s);
        }
    }

    // c dies: its sessions get the close frame with backend_gone (8) and are closed; the
    // others keep their servers; new sessions go to a and b.
    new[0].send(DIE, sid(1, 1, 0), b"").unwrap();
    for (i, s) in new.iter_mut().enumerate() {
        let frames = s
            .until_closed(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("session {i} on the dead server still open"));
        assert_eq!(
            frames.last().map(|f| (f.msg_id, f.u16())),
            Some((CLOSE_FRAME, Some(8))),
            "session {i}: {frames:?}"
        );
    }
    // Its registration goes as an ephemeral node would with its process.
    reg.remove("lobby", "c");
    let mut landed: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        *landed.entry(who(&gw, sid(1, 1, 0))).or_default() += 1;
    }
    assert!(!landed.contains_key("c"), "{landed:?}");
    for (i, (s, name)) in old.iter_mut().enumerate() {
        assert_eq!(&s.whoami(sid(1, 1, 0)), name, "open session {i}");
    }
}
