//! A real `redis-server` on a free loopback port, in its own temp dir, with no persistence;
//! killed and restarted on the same port by the tests of the cache's Redis tier, and read back
//! key by key to see what the gateway wrote.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port, KillOnDrop};

pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    server: Option<KillOnDrop>,
}

impl Redis {
    /// Starts a server and waits until it answers `PING`.
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            server: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (as a crash would: no shutdown, no save).
    pub fn kill(&mut self) {
        self.server = None;
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/ensure-packages.sh redis-server)");
        self.server = Some(KillOnDrop(child));
        assert!(
            eventually(Duration::from_secs(10), || self.ping()),
            "redis-server on {} never answered",
            self.port
        );
    }

    fn connection(&self) -> Option<::redis::Connection> {
        ::redis::Client::open(self.url())
            .ok()?
            .get_connection()
            .ok()
    }

    pub fn ping(&self) -> bool {
        self.connection()
            .and_then(|mut c| ::redis::cmd("PING").query::<String>(&mut c).ok())
            .is_some_and(|p| p == "PONG")
    }

    /// Every key.
    pub fn keys(&self) -> Vec<String> {
        let Some(mut c) = self.connection() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query(&mut c)
                .expect("SCAN");
            out.extend(keys);
            if next == 0 {
                return out;
            }
            cursor = next;
        }
    }

    /// Every key with its value: the string's bytes, or a set's members joined.
    pub fn scan_values(&self) -> Vec<(String, Vec<u8>)> {
        let Some(mut c) = self.connection() else {
            return Vec::new();
        };
        self.keys()
            .into_iter()
            .map(|k| {
                let kind: String = ::redis::cmd("TYPE").arg(&k).query(&mut c).expect("TYPE");
                let value = if kind == "set" {
                    let members: Vec<Vec<u8>> = ::redis::cmd("SMEMBERS")
                        .arg(&k)
                        .query(&mut c)
                        .expect("SMEMBERS");
                    members.concat()
                } else {
                    ::redis::cmd("GET")
                        .arg(&k)
                        .query::<Option<Vec<u8>>>(&mut c)
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                };
                (k, value)
            })
            .collect()
    }
}
