//! Every file of every fuzz corpus under `fuzz/corpus/` through the function its fuzz target
//! runs (`zkgate::fuzz`), in a normal `cargo test`: what the fuzzer found once stays fixed, and
//! `make test` needs neither nightly nor cargo-fuzz.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{target}: {} corpus files", files.len());
    for path in &files {
        let data = std::fs::read(path).expect("corpus file");
        // A panic names the file it came from.
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn config_corpus() {
    replay("config", zkgate::fuzz::config);
}

#[test]
fn alert_payload_corpus() {
    replay("alert_payload", zkgate::fuzz::alert_payload);
}

#[test]
fn zk_instance_corpus() {
    replay("zk_instance", zkgate::fuzz::zk_instance);
}

#[test]
fn path_corpus() {
    replay("path", zkgate::fuzz::path);
}

#[test]
fn proxy_protocol_corpus() {
    replay("proxy_protocol", zkgate::fuzz::proxy_protocol);
}

#[test]
fn notification_corpus() {
    replay("notification", zkgate::fuzz::notification);
}

#[test]
fn game_frames_corpus() {
    replay("game_frames", zkgate::fuzz::game_frames);
}

#[test]
fn fast_head_corpus() {
    replay("fast_head", zkgate::fuzz::fast_head);
}

#[test]
fn redis_entry_corpus() {
    replay("redis_entry", zkgate::fuzz::redis_entry);
}
