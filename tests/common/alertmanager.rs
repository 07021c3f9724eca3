//! A real Alertmanager (Debian's `prometheus-alertmanager`, installed by `make deps-test`) on a
//! free loopback port, clustering off, with its own storage and config in a temp dir, and its
//! receivers all webhooks. Stopped when its handle drops.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, request, KillOnDrop, Response};

pub const BIN: &str = "/usr/bin/prometheus-alertmanager";

/// The label that picks an alert's receiver, and the only one alerts are grouped by: all the
/// alerts of one receiver go out together, so that the gateway has a group to split.
pub const ROUTE_LABEL: &str = "destination";

/// Alertmanager's notification timings. The group wait is short, yet long enough that all the
/// alerts of one API call are in the group's first notification (a test counts its messages).
/// The long repeat means a group is sent again only when it changes, or when its last
/// notification failed.
const GROUP_WAIT: &str = "250ms";
const GROUP_INTERVAL: &str = "500ms";
const REPEAT_INTERVAL: &str = "1h";

pub struct Alertmanager {
    pub addr: SocketAddr,
    // Declared before `dir`: the process stops before its storage is removed.
    child: KillOnDrop,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Alertmanager with one webhook receiver per `(name, url)`: an alert labelled
    /// `destination=<name>` is posted to `url`, resolved alerts included. Alerts that match no
    /// receiver go to one that has no webhook.
    pub fn start(receivers: &[(&str, String)]) -> Alertmanager {
        assert!(
            std::path::Path::new(BIN).exists(),
            "{BIN} is missing: run `make deps-test`"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, config_text(receivers)).expect("write alertmanager.yml");
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("log file");
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(BIN)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // An empty address turns the gossip cluster off: no second port, no settling wait.
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start alertmanager");
        let mut am = Alertmanager {
            addr,
            child: KillOnDrop(child),
            dir,
        };
        am.wait_ready();
        am
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                panic!("alertmanager exited with {status}:\n{}", self.log());
            }
            if request(self.addr, "GET", "/-/ready", &[], b"").is_ok_and(|r| r.status == 200) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("alertmanager not ready in time:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// Posts `alerts` to the v2 API, as Prometheus does; panics unless Alertmanager takes them.
    pub fn post(&self, alerts: &[Value]) {
        let body = Value::Array(alerts.to_vec()).to_string();
        let r = request(
            self.addr,
            "POST",
            "/api/v2/alerts",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .expect("POST /api/v2/alerts");
        assert_eq!(
            r.status,
            200,
            "alertmanager refused the alerts: {}",
            r.text()
        );
    }

    /// The alerts Alertmanager holds, as its API lists them (with their fingerprints).
    pub fn alerts(&self) -> Vec<Value> {
        let r = self.get("/api/v2/alerts");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// The sum of the samples of metric `name` whose labels contain every one of `labels`
    /// (`key="value"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn get(&self, target: &str) -> Response {
        request(self.addr, "GET", target, &[], b"").unwrap_or_else(|e| panic!("GET {target}: {e}"))
    }
}

fn config_text(receivers: &[(&str, String)]) -> String {
    let mut routes = String::new();
    let mut hooks = String::new();
    for (name, url) in receivers {
        routes.push_str(&format!(
            "    - matchers: ['{ROUTE_LABEL}=\"{name}\"']\n      receiver: {name}\n"
        ));
        hooks.push_str(&format!(
            "  - name: {name}\n    webhook_configs:\n      - url: \"{url}\"\n        send_resolved: true\n"
        ));
    }
    format!(
        "route:\n  receiver: unrouted\n  group_by: [{ROUTE_LABEL}]\n  group_wait: {GROUP_WAIT}\n  group_interval: {GROUP_INTERVAL}\n  repeat_interval: {REPEAT_INTERVAL}\n  routes:\n{routes}receivers:\n  - name: unrouted\n{hooks}"
    )
}

/// Now, as Alertmanager's API wants times.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format the time")
}

/// A firing alert for the v2 API, from now until Alertmanager's resolve timeout.
pub fn alert(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Value {
    let map = |kv: &[(&str, &str)]| -> serde_json::Map<String, Value> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect()
    };
    json!({
        "labels": map(labels),
        "annotations": map(annotations),
        "startsAt": now(),
        "generatorURL": "http://prometheus.test/graph?g0.expr=up%3D%3D0",
    })
}

/// `alert` as Prometheus sends it once its rule stops firing: ended now.
pub fn resolved(alert: &Value) -> Value {
    let mut a = alert.clone();
    a["endsAt"] = json!(now());
    a
}
