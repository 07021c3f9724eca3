//! Test harness: the real gateway binary on free loopback ports ([`gateway`]), small real
//! backends ([`backend`]), a minimal HTTP/1.1 client ([`client`]), ZooKeeper helpers ([`zk`]; the
//! server itself is `zkgate_discovery::testkit`), a real Alertmanager ([`alertmanager`]) and a
//! real nginx ([`nginx`]). Everything started here is stopped when its handle drops. The test
//! files and the benches (through `#[path]`) use the names re-exported here.
#![allow(dead_code)]

pub mod alertmanager;
pub mod backend;
pub mod client;
pub mod game;
pub mod gateway;
pub mod nginx;
pub mod o2ims;
pub mod redis;
pub mod script;
pub mod zk;

// Each test file uses some of these names and the benches others.
#[allow(unused_imports)]
pub use {backend::*, client::*, gateway::*, zk::*};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub use zkgate_discovery::testkit::free_port;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_zkgate")
}

/// A self-signed certificate for `localhost` (P-256, with the name in its subjectAltName, made
/// by `openssl` in `dir`), for a TLS listener that curl or h2load reach as `localhost`: the
/// paths of its certificate and key PEMs.
pub fn localhost_cert(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:P-256"])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success());
    (
        cert.to_str().expect("a UTF-8 temp path").to_owned(),
        key.to_str().expect("a UTF-8 temp path").to_owned(),
    )
}

/// `zkgate check -c PATH`, as an operator runs it: its exit code and stderr.
pub fn check(path: &Path) -> (Option<i32>, String) {
    let (code, _, stderr) = check_with_stdout(path);
    (code, stderr)
}

/// `zkgate check -c PATH`: its exit code, stdout (where a passing check says `ok`) and stderr.
pub fn check_with_stdout(path: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("zkgate check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// The `p` quantile (0 to 1) of an ascending list: the smallest value with at least that share
/// of the list at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A child process killed when the test ends, pass or fail.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
