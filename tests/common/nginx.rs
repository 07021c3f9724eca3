//! A real nginx (Debian's `nginx-light`, installed by `make deps-test`) on a free loopback port,
//! one process (no master, no daemon) with its config, logs and temp paths in its own temp dir:
//! the reference a test holds the gateway's behaviour against. Stopped when its handle drops.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, KillOnDrop};

pub const BIN: &str = "/usr/sbin/nginx";

pub struct Nginx {
    pub addr: SocketAddr,
    // Declared before `dir`: the process stops before its files are removed.
    child: KillOnDrop,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx with one `server` listening on a free loopback port; `server_body` is what goes
    /// inside the `server { }` block after `listen` (locations, timeouts, ...). `http_extra`
    /// goes into the `http { }` block (upstreams, limits).
    pub fn start(http_extra: &str, server_body: &str) -> Nginx {
        assert!(
            std::path::Path::new(BIN).exists(),
            "{BIN} is missing: run `make deps-test`"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 16384;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  {http_extra}\n\
             server {{\n    listen {addr};\n    {server_body}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let child = Command::new(BIN)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx {
            addr,
            child: KillOnDrop(child),
            dir,
        };
        nginx.wait_ready();
        nginx
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                panic!("nginx exited with {status}:\n{}", self.log());
            }
            if TcpStream::connect(self.addr).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx not ready in time:\n{}", self.log());
    }

    /// What nginx wrote to its stderr and error log.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}
