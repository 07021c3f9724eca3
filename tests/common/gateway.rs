//! The real gateway binary on free loopback ports, with its config, log and upgrade socket in
//! a temp dir of its own; killed when its handle drops.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{bin, free_port, get, request, KillOnDrop, Response};

pub struct Gateway {
    pub child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// `{HTTP}` and `{ADMIN}` in `yaml` are replaced with free ports; a `server` section with short
/// grace periods and private pid/upgrade paths is prepended unless `yaml` has one.
pub fn config_text(
    yaml: &str,
    http: SocketAddr,
    admin: SocketAddr,
    dir: &std::path::Path,
) -> String {
    let mut text = yaml
        .replace("{HTTP}", &http.to_string())
        .replace("{ADMIN}", &admin.to_string());
    if !text.contains("server:") {
        text = format!(
            "server:\n  threads: 2\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n  upgrade_sock: {0}/upgrade.sock\n{text}",
            dir.display()
        );
    }
    if !text.contains("admin:") {
        text.push_str(&format!("\nadmin:\n  listen: {admin}\n"));
    }
    if !text.contains("listeners:") {
        text.push_str(&format!(
            "\nlisteners:\n  - name: web\n    listen: {http}\n"
        ));
    }
    text
}

impl Gateway {
    pub fn start(yaml: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let http: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.path().join("zkgate.yaml");
        std::fs::write(&config, config_text(yaml, http, admin, dir.path())).expect("write config");
        Gateway::spawn(dir, http, admin, config.clone().into_os_string(), &[])
    }

    /// Runs `zkgate run -c <source>` with `env` added; the config it reads must listen on
    /// `${env:HTTP_LISTEN}` and `${env:ADMIN_LISTEN}` and put its upgrade socket at
    /// `${env:UPGRADE_SOCK}`, which this sets to free ports and a private path.
    pub fn start_with_env(source: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let http: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let sock = dir.path().join("upgrade.sock").display().to_string();
        let (http_s, admin_s) = (http.to_string(), admin.to_string());
        let mut all = vec![
            ("HTTP_LISTEN", http_s.as_str()),
            ("ADMIN_LISTEN", admin_s.as_str()),
            ("UPGRADE_SOCK", sock.as_str()),
        ];
        all.extend_from_slice(env);
        Gateway::spawn(dir, http, admin, source.into(), &all)
    }

    fn spawn(
        dir: tempfile::TempDir,
        http: SocketAddr,
        admin: SocketAddr,
        source: std::ffi::OsString,
        env: &[(&str, &str)],
    ) -> Gateway {
        let config = dir.path().join("zkgate.yaml");
        let log = std::fs::File::create(dir.path().join("zkgate.log")).expect("log file");
        let child = Command::new(bin())
            .args(["run", "-c"])
            .arg(source)
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start zkgate");
        let mut gw = Gateway {
            child,
            http,
            admin,
            dir,
            config,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("zkgate exited with {status}:\n{}", self.log());
            }
            if request(self.admin, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
                && TcpStream::connect(self.http).is_ok()
            {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("zkgate not ready in time:\n{}", self.log());
    }

    /// Waits until `addr`, a listener of the config other than `{HTTP}`, accepts: start-up
    /// waits only for the first, and Pingora binds each listener in its own service's runtime.
    pub fn wait_listening(&self, addr: SocketAddr) {
        if !super::eventually(Duration::from_secs(20), || TcpStream::connect(addr).is_ok()) {
            panic!("zkgate not listening on {addr} in time:\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zkgate.log")).unwrap_or_default()
    }

    pub fn get(&self, target: &str) -> Response {
        get(self.http, target)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Rewrites the config file (same port substitution as `start`).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(
            &self.config,
            config_text(yaml, self.http, self.admin, self.dir.path()),
        )
        .expect("write config");
    }

    /// Starts `zkgate run --upgrade` on `yaml` (the same substitution, in this gateway's dir)
    /// as this process's successor, logging to `new.log`: a SIGQUIT to this one hands over.
    pub fn successor(&self, yaml: &str) -> KillOnDrop {
        let config = self.dir.path().join("new.yaml");
        std::fs::write(
            &config,
            config_text(yaml, self.http, self.admin, self.dir.path()),
        )
        .expect("write the successor's config");
        let log = std::fs::File::create(self.dir.path().join("new.log")).expect("new.log");
        KillOnDrop(
            Command::new(bin())
                .args(["run", "--upgrade", "-c"])
                .arg(&config)
                .stdout(log.try_clone().expect("new.log"))
                .stderr(log)
                .spawn()
                .expect("start the successor"),
        )
    }

    /// What the successor started by [`Gateway::successor`] logged.
    pub fn successor_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("new.log")).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        get(self.admin, "/metrics").text()
    }

    /// Each capped route's name and requests in flight, from the admin listener's `/routes`.
    pub fn in_flight(&self) -> Vec<(String, u64)> {
        let routes = get(self.admin, "/routes").json();
        let list = routes["routes"].as_array().expect("routes").iter();
        list.filter_map(|r| Some((r["name"].as_str()?.to_owned(), r["in_flight"].as_u64()?)))
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
