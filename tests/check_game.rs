//! End to end: `zkgate check` on game listener configs, as a user runs it: every error of a bad
//! `game:` section at its YAML path with exit status 1, and the documented example (the
//! commented game listener of conf/reference.yaml, uncommented) passing.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

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
