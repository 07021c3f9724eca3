//! End to end: `zkgate check` on game listener configs, as a user runs it: every error of a bad
//! `game:` section at its YAML path with exit status 1, and the documented example (the
//! commented game listener of conf/reference.yaml, uncommented) passing. And `zkgate explain`
//! on a game listener: an HTTP request asked of it is answered plainly, and a session's
//! serverType/worldId/instId gets the rule, upstream, strategy, link mode and backend, the
//! backend being the one a running gateway with that config gives the session.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::game::{sid, GameClient, GameServer, LogOnPanic};
use common::*;

const UPSTREAMS: &str = r#"
upstreams:
  - { name: lobby, backends: ["127.0.0.1:7101", "127.0.0.1:7102"] }
  - { name: battle, balance: consistent_hash, hash_key: client_ip, backends: ["127.0.0.1:7201"] }
  - { name: rooms, backends: ["127.0.0.1:7301 inst_id=1"] }
"#;

fn check_text(dir: &Path, text: &str) -> (Option<i32>, String, String) {
    let path = dir.join("zkgate.yaml");
    std::fs::write(&path, text).unwrap();
    check_with_stdout(&path)
}

#[test]
fn a_bad_game_section_fails_check_with_every_error_at_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
listeners:
  - name: game
    listen: "127.0.0.1:7000"
    tls: {{ certificates: [] }}
    game:
      gateway_id: 5000
      rules:
        - {{ server_type: 1, upstream: lobby }}
        - {{ server_type: 1, world: 0, upstream: rooms }}
        - {{ server_type: 2, upstream: x }}
        - {{ server_type: 3, upstream: lobby, strategy: consistent_hash }}
        - {{ server_type: 4, upstream: lobby, strategy: instance }}
      max_frame: 70000
      queue: 0
      allow: ["10.0.0.0/40"]
{UPSTREAMS}"#
    );
    let (code, _, err) = check_text(dir.path(), &text);
    assert_eq!(code, Some(1), "{err}");
    for expected in [
        "listeners[0].tls: is for HTTP listeners, not a game listener",
        "listeners[0].game.gateway_id: must be 0 to 4095",
        "listeners[0].game.rules[1]: server_type 1 world 0 is routed by rule 0 already",
        "listeners[0].game.rules[2].upstream: no upstream named `x`",
        "listeners[0].game.rules[3].strategy: consistent_hash is not the balance of upstream `lobby` (round_robin)",
        "listeners[0].game.rules[4].strategy: instance picks the backend whose inst_id is the frame's instId, and no backend of upstream `lobby` has one",
        "listeners[0].game.max_frame: must be 1 to 65535",
        "listeners[0].game.queue: must be 1 to 65536 frames",
        "listeners[0].game.allow[0]: `10.0.0.0/40` is not an address or a block",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    // A key the section does not have is a shape error, named.
    let (code, _, err) = check_text(
        dir.path(),
        &format!(
            "listeners: [{{ name: game, listen: \"127.0.0.1:7000\", game: {{ rules: [], queues: 3 }} }}]\n{UPSTREAMS}"
        ),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown field `queues`"), "{err}");
}

/// The game listener conf/reference.yaml documents, its comment marks taken off.
fn reference_game_listener() -> String {
    let reference = include_str!("../conf/reference.yaml");
    let start = reference
        .find("  # - name: game\n")
        .expect("reference.yaml documents a game listener");
    reference[start..]
        .lines()
        .take_while(|l| l.starts_with("  #"))
        .map(|l| format!("  {}", &l[4..]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_documented_game_listener_passes_check_beside_an_http_one() {
    let game = reference_game_listener();
    for key in [
        "gateway_id: 7",
        "rules:",
        "strategy: consistent_hash",
        "log_every: 5m",
    ] {
        assert!(game.contains(key), "{key} in:\n{game}");
    }
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
listeners:
  - {{ name: web, listen: "127.0.0.1:18080" }}
{}
routes: [{{ name: r, upstream: lobby }}]
{UPSTREAMS}"#,
        game
    );
    let (code, out, err) = check_text(dir.path(), &text);
    assert_eq!(code, Some(0), "{text}\n{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn an_http_route_naming_a_game_listener_fails_check_at_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
listeners:
  - {{ name: web, listen: "127.0.0.1:18080" }}
  - name: game
    listen: "127.0.0.1:7000"
    game: {{ rules: [{{ server_type: 1, upstream: lobby }}] }}
routes:
  - {{ name: a, upstream: lobby }}
  - {{ name: b, listeners: [web, game], upstream: lobby }}
{UPSTREAMS}"#
    );
    let (code, _, err) = check_text(dir.path(), &text);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "routes[1].listeners[1]: `game` is a game listener; HTTP routes cannot use it"
        ),
        "{err}"
    );
    assert!(err.contains("1 error(s)"), "only that error:\n{err}");
    // Without it, the same config passes: a route that names no listener serves the HTTP ones.
    let (code, _, err) = check_text(dir.path(), &text.replace("[web, game]", "[web]"));
    assert_eq!(code, Some(0), "{err}");
}

/// `zkgate explain -c CONFIG ARGS...`: its exit code, stdout and stderr.
fn explain(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .args(["explain", "-c"])
        .arg(config)
        .args(args)
        .output()
        .expect("zkgate explain");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The address explain marks as the session's backend.
fn marked(out: &str) -> Option<String> {
    out.lines()
        .find(|l| l.ends_with("<- this session"))
        .and_then(|l| l.strip_prefix("backend:"))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
}

#[test]
fn explain_shows_where_a_game_session_goes_as_the_running_gateway_sends_it() {
    let alpha = GameServer::start("alpha", &["--events"]);
    let beta = GameServer::start("beta", &["--events"]);
    let (a, b) = (alpha.addr.to_string(), beta.addr.to_string());
    let name_of = |addr: &str| {
        if addr == a {
            "alpha"
        } else if addr == b {
            "beta"
        } else {
            "?"
        }
    };
    let web = free_port();
    // The game listener first: an HTTP request asked without --listener goes to `web`.
    let gw = Gateway::start(&format!(
        r#"
listeners:
  - name: arena
    listen: "{{HTTP}}"
    game:
      rules:
        - {{ server_type: 1, upstream: lobby }}
        - {{ server_type: 2, upstream: battle, strategy: consistent_hash }}
        - {{ server_type: 3, world: 5, upstream: rooms, strategy: instance, link: per_session }}
  - {{ name: web, listen: "127.0.0.1:{web}" }}
upstreams:
  - {{ name: lobby, backends: ["{a}", "{b}"] }}
  - {{ name: battle, balance: consistent_hash, backends: ["{a}", "{b}"] }}
  - {{ name: rooms, backends: ["{a} inst_id=1", "{b} inst_id=2"] }}
routes: [{{ name: site, listeners: [web], upstream: lobby }}]
"#
    ));
    let _log = LogOnPanic(&gw);
    let config = gw.config.as_path();

    // The ring: explain names the backend the gateway sends each instId to.
    let mut seen = std::collections::BTreeSet::new();
    for inst in 1..=16u8 {
        let inst_arg = inst.to_string();
        let (code, out, err) = explain(
            config,
            &["--server-type", "2", "--world", "3", "--inst", &inst_arg],
        );
        assert_eq!(code, Some(0), "{out}{err}");
        if inst == 1 {
            for line in [
                "listener:  arena (game listener on ",
                "frame:     serverType 2, worldId 3, instId 1 (ServerID 0x00030201)",
                "rule:      type 2 world * (any world)",
                "upstream:  battle (consistent_hash)",
                "strategy:  consistent_hash: the ring keyed by worldId 3 and instId 1",
                "route:     first_frame",
                "link:      multiplexed, 2 link(s) per backend; gate header short; session events on",
            ] {
                assert!(out.contains(line), "missing {line:?} in:\n{out}");
            }
        }
        let addr = marked(&out).unwrap_or_else(|| panic!("no backend marked:\n{out}"));
        let mut client = GameClient::connect(gw.http).unwrap();
        assert_eq!(
            client.whoami(sid(3, 2, inst)),
            name_of(&addr),
            "instId {inst}: explain said {addr}"
        );
        seen.insert(addr);
    }
    assert_eq!(seen.len(), 2, "16 keys on one backend: {seen:?}");

    // An instance: instId 2 is beta's, as the gateway agrees; 9 is nobody's.
    let (code, out, _) = explain(
        config,
        &["--server-type", "3", "--world", "5", "--inst", "2"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("strategy:  instance: the backend registered with inst_id 2"),
        "{out}"
    );
    assert!(
        out.contains("link:      per_session, one connection per session"),
        "{out}"
    );
    assert_eq!(marked(&out).as_deref(), Some(b.as_str()), "{out}");
    let mut client = GameClient::connect(gw.http).unwrap();
    assert_eq!(client.whoami(sid(5, 3, 2)), "beta");
    let (code, out, _) = explain(
        config,
        &["--server-type", "3", "--world", "5", "--inst", "9"],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no backend is instance 9"), "{out}");
    // World 6 has no rule for serverType 3.
    let (code, out, _) = explain(config, &["--server-type", "3", "--world", "6"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("no rule for serverType 3 in world 6 or for any world"),
        "{out}"
    );
    let (code, out, _) = explain(config, &["--server-type", "3"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("no rule for serverType 3 in world 0, which only a rule for any world takes"),
        "{out}"
    );
    // Round robin names no single backend.
    let (code, out, _) = explain(config, &["--server-type", "1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("round_robin: the upstream's balancer picks per session"),
        "{out}"
    );
    assert_eq!(marked(&out), None, "{out}");

    // HTTP questions: on the first HTTP listener by default; asked of the game one, said so.
    let (code, out, err) = explain(config, &["GET", "/x"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("listener:  web") && out.contains("route:     site"),
        "{out}"
    );
    let (code, out, _) = explain(config, &["--listener", "arena", "GET", "/x"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("listener `arena` (") && out.contains("is a game listener"),
        "{out}"
    );
    let (code, _, err) = explain(config, &["GET", "/x", "--server-type", "1"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = explain(config, &["--listener", "web", "--server-type", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`web` is an HTTP listener"), "{err}");
}

#[test]
fn explain_on_a_game_only_config_with_discovery_shows_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zkgate.yaml");
    std::fs::write(
        &path,
        r#"
zookeeper: { connect: "127.0.0.1:2181", digest: { user: gw, password: zk-s3cret } }
listeners:
  - name: game
    listen: "127.0.0.1:7000"
    game: { rules: [{ server_type: 4, upstream: far }], rules_node: /zkgate/game/rules }
upstreams: [{ name: far, balance: consistent_hash, zookeeper: { service: far } }]
"#,
    )
    .unwrap();
    let (code, out, err) = explain(
        &path,
        &["--server-type", "4", "--world", "2", "--inst", "3"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    for line in [
        "rules:     the YAML rules (1); ZooKeeper node /zkgate/game/rules replaces them while it exists",
        "upstream:  far (consistent_hash)",
        "backends:  discovered from ZooKeeper at /zkgate/services/far",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // A request with no HTTP listener to arrive on.
    let (code, out2, _) = explain(&path, &["GET", "/"]);
    assert_eq!(code, Some(1), "{out2}");
    assert!(
        out2.contains("listener `game` (127.0.0.1:7000) is a game listener"),
        "{out2}"
    );
    assert!(!format!("{out}{err}{out2}").contains("s3cret"));
}
