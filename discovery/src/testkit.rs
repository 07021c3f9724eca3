//! A real ZooKeeper server for tests (Debian's `zookeeper` package), on a free loopback port
//! with its own data directory, stopped when dropped. A test that fails keeps the directory, log
//! included, and prints where it is.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const CLASSPATH: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";

/// A loopback port nothing listens on, for a server a test starts.
///
/// The port is released before the server binds it. One the kernel hands out for `:0` is from
/// its ephemeral range, where any test's outgoing connection may take it in between; so ports
/// come from below that range, in turn from a place set by the process id, so that the tests
/// of one binary never pick the same one and test binaries running side by side rarely do.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const LOW: usize = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32_768)
        .min(u16::MAX as usize);
    if high <= LOW + 1_000 {
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
    }
    let span = high - LOW;
    let start = std::process::id() as usize * 1_009 % span;
    for _ in 0..span {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

pub struct ZkServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl ZkServer {
    /// Starts a standalone server and waits until it serves. `tickTime` is 500 ms, so sessions
    /// as short as 1 s are allowed.
    pub fn start() -> ZkServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let cfg = dir.path().join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,stat,mntr\nmaxSessionTimeout=60000\n",
                dir.path().join("data").display()
            ),
        )
        .expect("zoo.cfg");
        let child = spawn(dir.path());
        let mut server = ZkServer { port, dir, child };
        server.wait_up();
        server
    }

    /// Kills the server (as a crash would); `restart` brings it back with the same data.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.dir.path());
        self.wait_up();
    }

    fn wait_up(&mut self) {
        let server = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.is_ok() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("ZooKeeper exited with {status}:\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "ZooKeeper not up in 30 s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zk.log")).unwrap_or_default()
    }

    /// Serving requests: `srvr` reports a mode (standalone, leader or follower). `ruok` is not
    /// enough: it answers `imok` as soon as the JVM runs, while an ensemble member that restarts
    /// is still looking for a leader. A test that then kills another member would leave the
    /// ensemble with no quorum, which is a double failure, not the single one it means to test.
    fn is_ok(&self) -> bool {
        self.four_letter("srvr").contains("Mode: ")
    }

    /// A ZooKeeper four-letter command's answer, empty when the server does not answer.
    pub fn four_letter(&self, cmd: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut out = String::new();
        if s.write_all(cmd.as_bytes()).is_err() || s.read_to_string(&mut out).is_err() {
            return String::new();
        }
        out
    }
}

/// A 3-node ensemble on loopback, each node with its own directory.
pub struct ZkEnsemble {
    pub nodes: Vec<ZkServer>,
}

impl ZkEnsemble {
    pub fn start() -> ZkEnsemble {
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, election))| {
                format!("server.{}=127.0.0.1:{peer}:{election}\n", i + 1)
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, (client, _, _)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir().expect("temp dir");
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data).expect("data dir");
            std::fs::write(data.join("myid"), format!("{}\n", i + 1)).expect("myid");
            std::fs::write(
                dir.path().join("zoo.cfg"),
                format!(
                    "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={client}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,stat,mntr\nmaxSessionTimeout=60000\n{servers}",
                    data.display()
                ),
            )
            .expect("zoo.cfg");
            let child = spawn(dir.path());
            nodes.push(ZkServer {
                port: *client,
                dir,
                child,
            });
        }
        for n in &mut nodes {
            n.wait_up();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let ensemble = ZkEnsemble { nodes };
        while ensemble.leader().is_none() {
            assert!(Instant::now() < deadline, "no leader elected in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        ensemble
    }

    pub fn connect_string(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.connect_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node that reports `Mode: leader`.
    pub fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.four_letter("srvr").contains("Mode: leader"))
    }
}

impl ZkEnsemble {
    /// The member the process `pid` holds an established connection to: its ZooKeeper client's
    /// current server (read from /proc: the process's sockets, matched in /proc/net/tcp).
    pub fn connected_member(&self, pid: u32) -> Option<usize> {
        let sockets: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()?
            .filter_map(|fd| {
                let link = std::fs::read_link(fd.ok()?.path()).ok()?;
                link.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect();
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        table.lines().skip(1).find_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = f.get(9)?.parse().ok()?;
            if f.get(3) != Some(&"01") || !sockets.contains(&inode) {
                return None;
            }
            let port = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
            self.nodes.iter().position(|n| n.port == port)
        })
    }
}

fn spawn(dir: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("zk.log"))
        .expect("zk.log");
    Command::new("java")
        .args([
            "-Xmx256m",
            "-cp",
            CLASSPATH,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
        ])
        .arg(dir.join("zoo.cfg"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start ZooKeeper (java; Debian package `zookeeper`)")
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The test failed: its server's log is evidence.
            self.dir.disable_cleanup(true);
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- ZooKeeper on port {} kept its directory {}; last lines of {}:\n{}",
                self.port,
                self.dir.path().display(),
                self.dir.path().join("zk.log").display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}
