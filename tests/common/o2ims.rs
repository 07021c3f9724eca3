//! The test O2 IMS server (`tests/common/o2ims/server.py`, Python) started on loopback in a
//! dialect, with its jwks.json and log in a temp dir of its own, and the calls a test makes on
//! its control port: tokens, inventory changes, notifications and faults, counters and
//! deliveries. Killed when its handle drops (and it exits by itself when the test process
//! goes, as its stdin is a pipe from here).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use super::{request, KillOnDrop, Response};

pub const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/o2ims/server.py");

/// Which implementation the fake behaves like (see the docstring of each dialect module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// openshift-kni/oran-o2ims: inventory v2, monitoring v1, roles per path.
    Oran,
    /// o-ran-sc/pti-o2: inventory v1, pages of 30, string event types, JSON-string states.
    Pti,
    /// piwi3910/netweave: /o2ims/v1, wrapped lists, `Cache-Control: no-store`.
    Netweave,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Oran => "oran",
            Dialect::Pti => "pti",
            Dialect::Netweave => "netweave",
        }
    }

    /// The inventory API's base path.
    pub fn base(self) -> &'static str {
        match self {
            Dialect::Oran => "/o2ims-infrastructureInventory/v2",
            Dialect::Pti => "/o2ims-infrastructureInventory/v1",
            Dialect::Netweave => "/o2ims/v1",
        }
    }

    pub const ALL: [Dialect; 3] = [Dialect::Oran, Dialect::Pti, Dialect::Netweave];
}

/// The caching headers the fake sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Headers {
    /// The dialect's own: none for oran and pti, `no-store` for netweave.
    Dialect,
    None,
    NoStore,
    /// `ETag` and `Cache-Control: max-age`, and 304 on a matching `If-None-Match`.
    Rfc {
        max_age: u32,
    },
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub headers: Headers,
    /// Bearer JWTs checked (and roles, in oran); `false` serves everyone.
    pub auth: bool,
    /// The only callback host an oran subscription may name.
    pub smo_host: Option<String>,
    /// oran: accept `http` callbacks (the real one wants https).
    pub allow_http: bool,
    /// oran: accept callbacks on loopback (the real one refuses them).
    pub allow_loopback: bool,
    /// A CA file the fake trusts for https callbacks.
    pub callback_ca: Option<PathBuf>,
    /// A fixed API port (a free one from `free_port()`); by default the fake picks one.
    pub api_port: Option<u16>,
}

impl Default for Opts {
    /// What the harness needs on loopback: auth on, callbacks to http://127.0.0.1 allowed.
    fn default() -> Opts {
        Opts {
            headers: Headers::Dialect,
            auth: true,
            smo_host: Some("127.0.0.1".into()),
            allow_http: true,
            allow_loopback: true,
            callback_ca: None,
            api_port: None,
        }
    }
}

pub struct O2Ims {
    pub dialect: Dialect,
    pub api: SocketAddr,
    pub control: SocketAddr,
    // Declared before `dir`: the process stops before its files are removed.
    child: KillOnDrop,
    _stdin: ChildStdin,
    pub dir: tempfile::TempDir,
}

impl O2Ims {
    pub fn start(dialect: Dialect, opts: Opts) -> O2Ims {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = std::fs::File::create(dir.path().join("server.err")).expect("stderr file");
        let mut cmd = Command::new("python3");
        cmd.arg(SERVER)
            .args(["--dialect", dialect.name()])
            .arg("--dir")
            .arg(dir.path());
        match opts.headers {
            Headers::Dialect => {}
            Headers::None => {
                cmd.args(["--headers", "none"]);
            }
            Headers::NoStore => {
                cmd.args(["--headers", "no-store"]);
            }
            Headers::Rfc { max_age } => {
                cmd.args(["--headers", "rfc", "--max-age", &max_age.to_string()]);
            }
        }
        if !opts.auth {
            cmd.args(["--auth", "none"]);
        }
        if let Some(host) = &opts.smo_host {
            cmd.args(["--smo-host", host]);
        }
        if opts.allow_http {
            cmd.arg("--allow-http");
        }
        if opts.allow_loopback {
            cmd.arg("--allow-loopback");
        }
        if let Some(ca) = &opts.callback_ca {
            cmd.arg("--callback-ca").arg(ca);
        }
        if let Some(port) = opts.api_port {
            cmd.args(["--api-port", &port.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("start python3 tests/common/o2ims/server.py");
        let stdin = child.stdin.take().expect("server stdin");
        let stdout = child.stdout.take().expect("server stdout");
        let child = KillOnDrop(child);
        // The server prints one JSON line once both listeners accept: no polling, no sleeps.
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "the O2 IMS fake did not start (is `cryptography` installed? `make \
                 deps-test`); its output {line:?}, its stderr:\n{}",
                std::fs::read_to_string(dir.path().join("server.err")).unwrap_or_default()
            )
        });
        let port = |k: &str| {
            let p = ready[k]
                .as_u64()
                .unwrap_or_else(|| panic!("no {k} port in {ready}"));
            SocketAddr::from(([127, 0, 0, 1], p as u16))
        };
        O2Ims {
            dialect,
            api: port("api"),
            control: port("control"),
            child,
            _stdin: stdin,
            dir,
        }
    }

    /// The JWKS the fake signs its tokens with (a gateway's `jwks_file`).
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    /// The inventory API's base path in this dialect.
    pub fn base(&self) -> &'static str {
        self.dialect.base()
    }

    /// `http://127.0.0.1:<api>` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// An RS256 token for `sub` with these groups (roles such as `o2ims-reader`), expiring in
    /// `exp_in` seconds (0 or less: already expired).
    pub fn token(&self, sub: &str, groups: &[&str], exp_in: i64) -> String {
        self.token_alg(sub, groups, exp_in, "RS256")
    }

    /// As [`token`](Self::token), signed with `alg`: `RS256` or `ES256`.
    pub fn token_alg(&self, sub: &str, groups: &[&str], exp_in: i64, alg: &str) -> String {
        let out = self.call(
            "POST",
            "/__fake/token",
            json!({"sub": sub, "groups": groups, "exp_in": exp_in, "alg": alg}),
        );
        out["token"].as_str().expect("token").to_owned()
    }

    /// A token from a full `/__fake/token` body: `{sub, groups, exp_in, alg, claims}`, where
    /// `claims` (say `{"aud": "x"}`) is merged over the standard ones.
    pub fn token_with(&self, body: Value) -> String {
        let out = self.call("POST", "/__fake/token", body);
        out["token"].as_str().expect("token").to_owned()
    }

    /// `GET path` on the API with an optional bearer token.
    pub fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.api_request("GET", path, token, b"")
    }

    /// Any request on the API (a JSON body gets its content type).
    pub fn api_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        request(self.api, method, path, &headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} on the O2 fake: {e}"))
    }

    /// Subscribes `callback` (a full URL) as the SMO would, with the subscriber role; the fake
    /// checks that it answers its reachability GET before it says 201.
    pub fn subscribe_smo(&self, callback: &str) {
        let token = self.token("smo", &["o2ims-subscriber"], 3600);
        let sub = json!({ "callback": callback,
                          "consumerSubscriptionId": "3f20d850-af4f-a84f-fb5a-0ad585410361" });
        let r = self.api_request(
            "POST",
            &format!("{}/subscriptions", self.base()),
            Some(&token),
            sub.to_string().as_bytes(),
        );
        assert_eq!(r.status, 201, "subscription refused: {}", r.text());
    }

    /// `POST /__fake/mutate`: `{kind, id, op: create|modify|delete, fields, wait, drop,
    /// duplicate, omit_object_ref, delay_ms, int_type, token}`. The generation goes up by one
    /// and every subscriber is notified in the dialect's shape. Kinds: ocloud, resourcePool,
    /// resource, resourceType, deploymentManager, location, oCloudSite, alarmDictionary, alarm.
    /// Returns `{generation, kind, id, op, objectRef, notified}`.
    pub fn mutate(&self, body: Value) -> Value {
        self.call("POST", "/__fake/mutate", body)
    }

    /// `POST /__fake/notify`: `{raw, subscriptionId?, token?, wait?}` sends any body as it
    /// is; `{kind, id, op, ...the faults of mutate}` sends the dialect's body without a change
    /// (a pti delete included). Returns `{queued}`.
    pub fn notify(&self, body: Value) -> Value {
        self.call("POST", "/__fake/notify", body)
    }

    /// `POST /__fake/behave`: `{latency_ms, status, close, path_regex}` for the API requests
    /// whose path+query matches; `json!({})` clears it.
    pub fn behave(&self, body: Value) {
        self.call("POST", "/__fake/behave", body);
    }

    /// `POST /__fake/restart`: forgets every subscription (as a restarted O-Cloud whose
    /// database lost them), so a later `GET subscriptions/{id}` is 404. Returns how many.
    pub fn restart(&self) -> u64 {
        self.call("POST", "/__fake/restart", json!({}))["dropped"]
            .as_u64()
            .unwrap_or(0)
    }

    /// `{total, by_method, by_path, by_method_path, by_sub, by_status, generation}`.
    pub fn counters(&self) -> Value {
        self.call("GET", "/__fake/counters", Value::Null)
    }

    /// API requests (any method) whose target was exactly `path_and_query`.
    pub fn count(&self, path_and_query: &str) -> u64 {
        self.counters()["by_path"][path_and_query]
            .as_u64()
            .unwrap_or(0)
    }

    /// API requests with this method and exact target.
    pub fn count_method(&self, method: &str, path_and_query: &str) -> u64 {
        self.counters()["by_method_path"][format!("{method} {path_and_query}")]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn reset_counters(&self) {
        self.call("DELETE", "/__fake/counters", Value::Null);
    }

    /// The generation, raised by every change; every API body carries it as `_generation`.
    pub fn generation(&self) -> u64 {
        self.counters()["generation"].as_u64().unwrap_or(0)
    }

    /// Every request the fake made: `{n, kind: notification|reachability|dropped,
    /// subscriptionId, callback, attempt, status, error, body, notificationId, at_ms}`.
    pub fn deliveries(&self) -> Vec<Value> {
        match self.call("GET", "/__fake/deliveries", Value::Null) {
            Value::Array(v) => v,
            other => panic!("deliveries: {other}"),
        }
    }

    /// `[{id, family: inventory|alarm, record}]`.
    pub fn subscriptions(&self) -> Vec<Value> {
        match self.call("GET", "/__fake/subscriptions", Value::Null) {
            Value::Array(v) => v,
            other => panic!("subscriptions: {other}"),
        }
    }

    /// `{generation, ids: {kind: [id]}, base, dialect}`.
    pub fn inventory(&self) -> Value {
        self.call("GET", "/__fake/inventory", Value::Null)
    }

    /// The ids of one kind, in the fake's order (stable from start to start).
    pub fn ids(&self, kind: &str) -> Vec<String> {
        self.inventory()["ids"][kind]
            .as_array()
            .unwrap_or_else(|| panic!("no kind {kind}"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// Whether the server process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    /// One control call; panics on anything but 200, with the fake's reason.
    pub fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let r = request(
            self.control,
            method,
            path,
            &[("content-type", "application/json")],
            &bytes,
        )
        .unwrap_or_else(|e| panic!("{method} {path} on the O2 fake's control port: {e}"));
        assert_eq!(r.status, 200, "{method} {path} {body}: {}", r.text());
        r.json()
    }
}

/// Where [`replica_config`] takes O2 notifications.
pub const CALLBACK: &str = "/zkgate/o2ims/notify";

/// The config of one of several gateway replicas in front of `o2`: the `o2ims` profile on every
/// path, a `cache_notify` callback on [`CALLBACK`] that trusts the fake's keys, and evictions
/// shared through the ZooKeeper at `zk` (2 s sessions, so an outage can outlast one; a 200 ms
/// epoch slack, so the evicted paths are stored again soon after a change).
pub fn replica_config(zk: &str, o2: &O2Ims) -> String {
    format!(
        r#"zookeeper: {{ connect: "{zk}", session_timeout: 2s }}
{upstream}routes:
  - name: notify
    match: {{ path: {CALLBACK} }}
    plugin:
      cache_notify:
        store: o2
        auth: {{ jwt: {{ jwks_file: "{jwks}", issuer: o2ims-fake }} }}
{route}"#,
        upstream = o2_upstream(o2),
        jwks = o2.jwks_path().display(),
        route = o2ims_route(
            "path_prefix: /",
            "replicas: { mode: zookeeper, epoch_slack: 200ms }\n"
        ),
    )
}

/// A config of one route in front of `o2`: [`o2ims_route`] and its upstream.
pub fn o2ims_config(o2: &O2Ims, route_match: &str, cache: &str) -> String {
    format!(
        "{}routes:\n{}",
        o2_upstream(o2),
        o2ims_route(route_match, cache)
    )
}

/// The upstream `o2`: the API of `o2`.
pub fn o2_upstream(o2: &O2Ims) -> String {
    format!("upstreams: [{{ name: o2, backends: [\"{}\"] }}]\n", o2.api)
}

/// The route `o2ims` to upstream `o2` (see [`o2_upstream`]) for requests matching `route_match`
/// (the inside of a YAML flow map): the `o2ims` profile in store `o2`, with `cache`, further
/// keys of its `cache:` map written from column 0, added.
pub fn o2ims_route(route_match: &str, cache: &str) -> String {
    let mut route = format!(
        "  - name: o2ims\n    match: {{ {route_match} }}\n    upstream: o2\n    plugin:\n      \
         cache:\n        profile: o2ims\n        store: o2\n"
    );
    for line in cache.lines().filter(|l| !l.trim().is_empty()) {
        route.push_str("        ");
        route.push_str(line);
        route.push('\n');
    }
    route
}

/// The fake that [`replica_config`] fronts: the oran dialect, with no bearer needed on reads (so
/// the cache serves them without an `auth:` scope) and no cache headers of its own.
pub fn replica_origin() -> O2Ims {
    O2Ims::start(
        Dialect::Oran,
        Opts {
            auth: false,
            headers: Headers::None,
            ..Opts::default()
        },
    )
}

/// Whether an answer came from the gateway's cache (its `Cache-Status` says `hit`).
pub fn is_hit(r: &Response) -> bool {
    r.header("cache-status")
        .is_some_and(|s| s.split(';').any(|p| p.trim() == "hit"))
}

/// The `_generation` the fake puts in a body (0 when it has none: a list, or not JSON).
pub fn generation(r: &Response) -> u64 {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["_generation"].as_u64())
        .unwrap_or(0)
}

/// A request the [`Receiver`] got.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A small SMO-side callback server on loopback: records every request and answers GETs (the
/// oran reachability check) and POSTs (notifications) with the statuses set for them.
pub struct Receiver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
    statuses: Arc<Mutex<(u16, u16)>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Answers GET with 204 and POST with 204 until told otherwise.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the callback receiver");
        let addr = listener.local_addr().expect("receiver address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let statuses = Arc::new(Mutex::new((204, 204)));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, halt) = (seen.clone(), statuses.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (s, st) = (s.clone(), st.clone());
                thread::spawn(move || {
                    let _ = serve_one(conn, &s, &st);
                });
            }
        });
        Receiver {
            addr,
            seen,
            statuses,
            stop,
        }
    }

    /// `http://127.0.0.1:<port>` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_statuses(&self, get: u16, post: u16) {
        *self.statuses.lock().expect("statuses") = (get, post);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.seen.lock().expect("seen").clone()
    }

    pub fn posts(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve_one(
    conn: TcpStream,
    seen: &Mutex<Vec<Received>>,
    statuses: &Mutex<(u16, u16)>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let (line, headers) = super::client::read_head(&mut reader)?;
    let body = super::client::read_body(&mut reader, &headers, false)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let (get, post) = *statuses.lock().expect("statuses");
    let status = if method == "GET" { get } else { post };
    seen.lock().expect("seen").push(Received {
        method,
        target,
        headers,
        body,
    });
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )?;
    conn.flush()
}
