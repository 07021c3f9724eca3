//! The README's "O2 IMS cache" walkthrough, run as written: its shell blocks (between the
//! `o2ims-walkthrough` markers) go to one bash, with only the ports, the demo directory and
//! the gateway binary swapped for this test's own, and what the reader is told to see (a miss,
//! a hit, the eviction by the notification, the new generation) is checked in their output.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

const START: &str = "<!-- o2ims-walkthrough:start -->";
const END: &str = "<!-- o2ims-walkthrough:end -->";

/// The README's walkthrough: the shell blocks between the markers, in order.
fn walkthrough() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find(START)
        .expect("the walkthrough's start marker in README.md");
    let end = readme[start..]
        .find(END)
        .expect("the walkthrough's end marker in README.md")
        + start;
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme[start..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(
        current.is_none(),
        "an unclosed shell block in the walkthrough"
    );
    blocks
}

/// `text` with every `from` replaced, which must occur (a README that no longer says it would
/// otherwise run on the fixed ports and paths).
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the walkthrough no longer has `{from}`"
    );
    text.replace(from, to)
}

fn cache_statuses(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("cache-status")
                .then(|| value.trim().to_owned())
        })
        .collect()
}

#[test]
fn the_readme_walkthrough_shows_a_hit_and_the_eviction() {
    let blocks = walkthrough();
    assert_eq!(blocks.len(), 5, "{blocks:#?}");
    let dir = tempfile::tempdir().unwrap();
    let port = || common::free_port().to_string();
    let (web, admin, api, control) = (port(), port(), port(), port());
    let mut script = String::from("set -euo pipefail\n");
    script += &blocks.join("");
    script = swap(&script, "cargo build --release\n", "");
    script = swap(&script, "target/release/zkgate", common::bin());
    script = swap(&script, "/tmp/o2demo", &dir.path().display().to_string());
    script = swap(&script, "127.0.0.1:8080", &format!("127.0.0.1:{web}"));
    script = swap(&script, "127.0.0.1:9901", &format!("127.0.0.1:{admin}"));
    script = swap(&script, "127.0.0.1:8181", &format!("127.0.0.1:{api}"));
    script = swap(&script, "127.0.0.1:8182", &format!("127.0.0.1:{control}"));
    script = swap(&script, "--api-port 8181", &format!("--api-port {api}"));
    script = swap(
        &script,
        "--control-port 8182",
        &format!("--control-port {control}"),
    );

    let common::script::Ran {
        status,
        stdout,
        stderr,
    } = common::script::run_bash(&script, &[], Duration::from_secs(120));
    let status = status.unwrap_or_else(|| {
        panic!("the walkthrough did not end in 120 s\n{stdout}\n--- stderr\n{stderr}")
    });
    assert!(
        status.success(),
        "the walkthrough failed ({status})\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );

    // Three answers for the pool: stored, hit, then (after the notification) stored again.
    let statuses = cache_statuses(&stdout);
    assert_eq!(statuses.len(), 4, "{stdout}");
    assert_eq!(statuses[0], "zkgate; fwd=uri-miss; stored", "{stdout}");
    assert!(statuses[1].starts_with("zkgate; hit; ttl="), "{stdout}");
    assert_eq!(statuses[2], "zkgate; fwd=uri-miss; stored", "{stdout}");
    // What is stored after the eviction is served: the epoch only refuses older entries.
    assert!(statuses[3].starts_with("zkgate; hit; ttl="), "{stdout}");
    // The bodies: generation 1 twice, then the renamed pool at generation 2, twice.
    let generations: Vec<&str> = stdout
        .split("{\"resourcePoolId\": ")
        .skip(1)
        .map(|body| {
            let at = body.find("\"_generation\": ").expect("a generation") + 15;
            body[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(generations, ["1", "1", "2", "2"], "{stdout}");
    assert_eq!(
        stdout.matches("\"description\": \"renamed\"").count(),
        2,
        "{stdout}"
    );
    // The subscription was made, one notification delivered, and counted as applied.
    assert!(stdout.contains("\"subscriptionId\""), "{stdout}");
    assert!(stdout.contains("\"notified\": 1"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with(
            "zkgate_cache_notifications_total{dialect=\"oran\",result=\"applied\",store=\"o2\"} 1"
        )),
        "{stdout}"
    );
}
