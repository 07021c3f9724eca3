//! The README's "Game sessions" → "Try it", run as written: its shell blocks go to one bash, in
//! the repository, with the ports the commands and conf/game.yaml read (`ALPHA_PORT`,
//! `BETA_PORT`, `GAME_PORT`, `ADMIN_PORT`) set to free ones, `target/release/` pointing at
//! this build's binaries, the `cargo build` line left out (the harness builds them) and the
//! reader's `sleep 1` made a wait for the three ports (a debug build on a busy machine may
//! take longer to start). What the reader is promised is checked in the output: the sessions
//! spread over both servers and stuck to them, no failure, and the metrics served.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

/// The README's "Try it" of the game section: its shell blocks, in order, and its plain
/// blocks (the output it shows).
fn try_it() -> (Vec<String>, Vec<String>) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let game = readme
        .find("\n## Game sessions\n")
        .expect("README.md has a Game sessions section");
    let start = readme[game..]
        .find("\n### Try it\n")
        .expect("the game section has a Try it")
        + game;
    let end = readme[start + 1..]
        .find("\n### ")
        .map_or(readme.len(), |e| e + start + 1);
    let (mut shell, mut shown) = (Vec::new(), Vec::new());
    let mut current: Option<(bool, String)> = None;
    for line in readme[start..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some((true, String::new())),
            (None, "```") => current = Some((false, String::new())),
            (Some(_), "```") => {
                let (is_shell, text) = current.take().unwrap();
                if is_shell { &mut shell } else { &mut shown }.push(text);
            }
            (Some((_, block)), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed block in Try it");
    (shell, shown)
}

/// `text` with `from` replaced, which must occur: a README that no longer says it would
/// otherwise run something else than what this test prepared for.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "Try it no longer has `{from}`:\n{text}"
    );
    text.replace(from, to)
}

/// The `servers:` line's counts by name, and its `moved by the end` count.
fn servers(line: &str) -> (Vec<(String, usize)>, usize) {
    let rest = line.strip_prefix("servers: ").unwrap();
    let (spread, moved) = rest.split_once(" (moved by the end: ").unwrap();
    let counts = spread
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect();
    (counts, moved.trim_end_matches(')').parse().unwrap())
}

#[test]
fn the_readme_try_it_commands_spread_sessions_and_keep_them() {
    let (shell, shown) = try_it();
    assert_eq!(shell.len(), 2, "{shell:#?}");
    // What the first run promises, as the README prints it.
    let promised = |prefix: &str| -> String {
        shown
            .iter()
            .flat_map(|b| b.lines())
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("Try it shows no `{prefix}` line: {shown:#?}"))
            .to_owned()
    };
    let promised_servers = promised("servers:");
    let promised_failures = promised("failures:");
    let promised_sessions = promised("sessions:");
    let promised_sessions = promised_sessions.split(" in ").next().unwrap().to_owned();

    // The binaries the README runs from target/release/, as this test's build has them.
    let game_server = common::game::example_bin("game_server");
    let profile = game_server.parent().unwrap().parent().unwrap();
    assert_eq!(
        std::path::Path::new(common::bin()).parent().unwrap(),
        profile,
        "zkgate and the example in one profile directory"
    );
    let mut script = String::from("set -euo pipefail\n");
    script += &shell.join("");
    // Every fixed port is a default the environment overrides: none may be written bare.
    for (var, port) in [
        ("ALPHA_PORT", "7101"),
        ("BETA_PORT", "7102"),
        ("GAME_PORT", "7000"),
        ("ADMIN_PORT", "9901"),
    ] {
        let defaulted = format!("${{{var}:-{port}}}");
        assert!(
            script.contains(&defaulted),
            "Try it does not use {defaulted}"
        );
        assert!(
            !script.replace(&defaulted, "").contains(port),
            "Try it has port {port} without ${var}:\n{script}"
        );
        let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/game.yaml"))
            .unwrap();
        let in_conf = format!("${{env:{var}:-{port}}}");
        assert!(
            conf.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .all(|l| !l.replace(&in_conf, "").contains(port))
                && conf.contains(&in_conf),
            "conf/game.yaml does not read {var} for port {port}"
        );
    }
    script = swap(
        &script,
        "cargo build --release --bin zkgate --example game_server\n",
        "",
    );
    script = swap(
        &script,
        "target/release/",
        &format!("{}/", profile.display()),
    );
    script = swap(
        &script,
        "sleep 1\n",
        "for p in $ALPHA_PORT $BETA_PORT $GAME_PORT $ADMIN_PORT; do\n  for _ in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done\ndone\n",
    );
    let port = || common::free_port().to_string();
    let (alpha, beta, game, admin) = (port(), port(), port(), port());

    let common::script::Ran {
        status,
        stdout,
        stderr,
    } = common::script::run_bash(
        &script,
        &[
            ("ALPHA_PORT", alpha.as_str()),
            ("BETA_PORT", beta.as_str()),
            ("GAME_PORT", game.as_str()),
            ("ADMIN_PORT", admin.as_str()),
        ],
        Duration::from_secs(120),
    );
    let status = status
        .unwrap_or_else(|| panic!("Try it did not end in 120 s\n{stdout}\n--- stderr\n{stderr}"));
    let all = format!("{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(status.success(), "Try it failed ({status})\n{all}");

    // Two reports: serverType 1 round robin, then serverType 2 on the ring.
    let lines =
        |prefix: &str| -> Vec<&str> { stdout.lines().filter(|l| l.starts_with(prefix)).collect() };
    let (sessions, spread, failures) = (lines("sessions:"), lines("servers:"), lines("failures:"));
    assert_eq!(
        (sessions.len(), spread.len(), failures.len()),
        (2, 2, 2),
        "{all}"
    );
    assert!(sessions[0].starts_with(&promised_sessions), "{all}");
    assert_eq!(spread[0], promised_servers, "{all}");
    assert_eq!(failures, [&promised_failures, &promised_failures], "{all}");
    let (by_server, moved) = servers(spread[1]);
    let names: Vec<&str> = by_server.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"], "both servers take instIds: {all}");
    assert!(by_server.iter().all(|(_, n)| *n > 0), "{all}");
    assert_eq!(moved, 0, "{all}");
    let asked: usize = script
        .split("--sessions ")
        .nth(2)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the second run's --sessions");
    assert_eq!(
        by_server.iter().map(|(_, n)| n).sum::<usize>(),
        asked,
        "{all}"
    );
    assert!(
        sessions[1].starts_with(&format!("sessions: {asked} of {asked} established")),
        "{all}"
    );
    // The metrics the reader greps: sessions of serverType 1 and 2 counted by the gateway.
    let opened: f64 = stdout
        .lines()
        .filter(|l| l.starts_with("zkgate_game_sessions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(opened as usize, 200 + asked, "{all}");
}
