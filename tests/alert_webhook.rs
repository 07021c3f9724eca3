//! The alert_webhook plugin end to end: the real gateway receives Alertmanager's webhook payload,
//! renders it and delivers it to real destination servers, spools what they do not take, and
//! turns bad input away without forwarding anything.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, request, Backend, Behaviour, Gateway};
use serde_json::{json, Value};

/// An Alertmanager v4 webhook payload with `n` alerts named `alert-0`...
fn payload(n: usize, status: &str) -> Vec<u8> {
    let alerts: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "status": status,
                "labels": {"alertname": format!("alert-{i}"), "severity": "critical", "instance": "db-1:9100"},
                "annotations": {"summary": format!("summary {i}"), "description": "disk almost full"},
                "startsAt": "2026-11-22T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.local/graph?g0.expr=up",
                "fingerprint": ""
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"disk\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "zkgate",
        "groupLabels": {"alertname": "disk"},
        "commonLabels": {"severity": "critical"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": alerts
    })
    .to_string()
    .into_bytes()
}

fn post(gw: &Gateway, target: &str, headers: &[(&str, &str)], body: &[u8]) -> common::Response {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    request(gw.http, "POST", target, &h, body).expect("webhook request")
}

fn config(sink: &Backend, spool: &std::path::Path) -> String {
    format!(
        r#"
upstreams:
  - {{ name: sink, backends: ["{sink}"] }}
routes:
  - name: alerts
    match: {{ path_prefix: /alerts }}
    plugin:
      alert_webhook:
        auth: {{ bearer: {{ token: "${{env:AM_TOKEN:-s3cret}}" }} }}
        max_alerts: 20
        max_body: 64KiB
        spool: {{ dir: "{spool}", max_bytes: 1MiB }}
        destinations:
          - name: generic
            upstream: sink
            path: /generic
            template: {{ builtin: generic }}
            split: per_alert
            retry: {{ attempts: 2, initial_delay: 50ms, max_delay: 200ms }}
          - name: slack
            upstream: sink
            path: /slack
            template: {{ builtin: slack }}
          - name: pagerduty
            upstream: sink
            path: /pd
            template: {{ builtin: pagerduty }}
            vars: {{ routing_key: "R0UT1NG" }}
            split: per_alert
            parallel: 2
"#,
        sink = sink.addr,
        spool = spool.display(),
    )
}

const AUTH: (&str, &str) = ("authorization", "Bearer s3cret");

#[test]
fn webhooks_are_rendered_split_and_delivered() {
    let sink = Backend::start("sink");
    let spool = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(&sink, spool.path()));

    let r = post(&gw, "/alerts/generic", &[AUTH], &payload(3, "firing"));
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["status"], "success");
    assert_eq!(answer["messages"]["delivered"], 3);
    let seen = sink.seen();
    assert_eq!(seen.len(), 3, "one message per alert");
    let mut names: Vec<String> = seen
        .iter()
        .map(|s| {
            assert_eq!(s.target, "/generic");
            assert_eq!(s.headers["content-type"], "application/json");
            let v: Value = serde_json::from_slice(&s.body).expect("valid JSON");
            assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
            v["alerts"][0]["labels"]["alertname"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["alert-0", "alert-1", "alert-2"]);

    // One message for the group.
    let r = post(&gw, "/alerts/slack", &[AUTH], &payload(3, "firing"));
    assert_eq!(r.status, 200, "{}", r.text());
    let slack = &sink.seen()[3];
    assert_eq!(slack.target, "/slack");
    let v: Value = serde_json::from_slice(&slack.body).expect("Slack JSON");
    assert!(
        v.get("blocks").is_some() || v.get("attachments").is_some(),
        "{v}"
    );

    // One PagerDuty event per alert, two in flight at a time.
    let r = post(&gw, "/alerts/pagerduty", &[AUTH], &payload(4, "resolved"));
    assert_eq!(r.status, 200, "{}", r.text());
    let pd: Vec<_> = sink
        .seen()
        .into_iter()
        .filter(|s| s.target == "/pd")
        .collect();
    assert_eq!(pd.len(), 4);
    for m in &pd {
        let v: Value = serde_json::from_slice(&m.body).expect("PagerDuty JSON");
        assert_eq!(v["routing_key"], "R0UT1NG");
        assert_eq!(v["event_action"], "resolve");
    }

    // Eight messages went out over pooled connections, at most two at a time (parallel: 2).
    // Usually two connections carry them all; a connection released while the pool is being
    // searched can make a third, so the bound is loose, but without pooling there are eight.
    let connections = sink.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(connections <= 4, "{connections} connections for 8 messages");

    // A dry run shows the requests and sends nothing.
    let before = sink.seen().len();
    let r = post(
        &gw,
        "/alerts/generic?dry_run=true",
        &[AUTH],
        &payload(2, "firing"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let shown = r.json();
    assert_eq!(shown["requests"].as_array().unwrap().len(), 2);
    assert_eq!(shown["requests"][0]["target"], "upstream sink/generic");
    assert_eq!(sink.seen().len(), before);

    // A body past 32 KiB is parsed and rendered on the blocking pool: the same answer and
    // message. Each alert's 2000-character description fits Slack's text.
    let mut big: Value = serde_json::from_slice(&payload(20, "firing")).unwrap();
    for a in big["alerts"].as_array_mut().unwrap() {
        a["annotations"]["description"] = "d".repeat(2000).into();
    }
    let body = serde_json::to_vec(&big).unwrap();
    assert!(body.len() > 32 * 1024, "{} bytes", body.len());
    let r = post(&gw, "/alerts/slack", &[AUTH], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = sink.seen();
    assert_eq!(seen.len(), before + 1);
    let v: Value = serde_json::from_slice(&seen[before].body).expect("Slack JSON");
    let attachments = v["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 20);
    assert_eq!(
        attachments[19]["blocks"][1]["text"]["text"],
        "d".repeat(2000)
    );

    let metrics = gw.metrics();
    assert!(
        metrics.contains(
            "zkgate_alert_alerts_total{destination=\"generic\",result=\"delivered\",route=\"alerts\"} 3"
        ),
        "{metrics}"
    );
}

#[test]
fn bad_input_gets_the_right_status_and_nothing_is_forwarded() {
    let sink = Backend::start("sink");
    let spool = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(&sink, spool.path()));
    let ok = payload(1, "firing");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("/alerts/nowhere", vec![AUTH], ok.clone(), 404),
        ("/alerts/generic", vec![], ok.clone(), 401),
        (
            "/alerts/generic",
            vec![("authorization", "Bearer wrong")],
            ok.clone(),
            401,
        ),
        ("/alerts/generic", vec![AUTH], b"{not json".to_vec(), 400),
        (
            "/alerts/generic",
            vec![AUTH],
            br#"{"version":"4","status":"firing"}"#.to_vec(),
            400,
        ),
        (
            "/alerts/generic",
            vec![AUTH],
            br#"{"version":"3","status":"firing","alerts":[]}"#.to_vec(),
            400,
        ),
        ("/alerts/generic", vec![AUTH], payload(21, "firing"), 413),
        ("/alerts/generic", vec![AUTH], vec![b' '; 70 * 1024], 413),
    ];
    for (target, headers, body, want) in cases {
        let r = post(&gw, target, &headers, &body);
        assert_eq!(r.status, want, "{target} {headers:?}: {}", r.text());
        if want == 401 {
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        if want == 400 {
            assert!(!r.json()["error"].as_str().unwrap().is_empty());
        }
    }
    let r = request(gw.http, "GET", "/alerts/generic", &[AUTH], b"").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(sink.seen().len(), 0, "nothing was forwarded");
    // The secret is not in the config the admin listener shows.
    let shown = common::get(gw.admin, "/config").text();
    assert!(
        !shown.contains("s3cret") && shown.contains("<redacted>"),
        "{shown}"
    );
}

/// Two gateways on one spool directory, as the old and the new one are during an upgrade: what
/// one acknowledged and spooled is delivered by the other after the first dies, each alert once.
#[test]
fn a_gateway_delivers_what_another_left_in_a_shared_spool() {
    let sink = Backend::start("sink");
    sink.behave(Behaviour::Status(503));
    let spool = tempfile::tempdir().unwrap();
    let mut first = Gateway::start(&config(&sink, spool.path()));
    let second = Gateway::start(&config(&sink, spool.path()));

    // Both spool while the destination is down; ids they pick at the same time do not clash.
    for (n, gw) in [&first, &second, &first, &second].into_iter().enumerate() {
        let mut body: Value = serde_json::from_slice(&payload(1, "firing")).unwrap();
        body["alerts"][0]["labels"]["alertname"] = json!(format!("shared-{n}"));
        let r = post(gw, "/alerts/generic", &[AUTH], body.to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["messages"]["spooled"], 1, "{}", r.text());
    }
    let dir = spool.path().join("generic");
    let spooled = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("msg".as_ref()))
            .count()
    };
    assert_eq!(spooled(), 4);

    // The first dies with two messages of its own that the second never wrote or read.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    sink.behave(Behaviour::Normal);
    let delivered = || {
        let mut names: Vec<String> = sink
            .seen()
            .iter()
            .filter(|s| s.status == 200 && s.target == "/generic")
            .filter_map(|s| {
                let v: Value = serde_json::from_slice(&s.body).ok()?;
                Some(v["alerts"][0]["labels"]["alertname"].as_str()?.to_owned())
            })
            .collect();
        names.sort();
        names
    };
    assert!(
        eventually(Duration::from_secs(20), || spooled() == 0),
        "spool not drained: {:?}\n{}",
        delivered(),
        second.log()
    );
    assert_eq!(
        delivered(),
        ["shared-0", "shared-1", "shared-2", "shared-3"],
        "{}",
        second.log()
    );
}

#[test]
fn a_destination_that_is_down_gets_every_alert_from_the_spool_once_it_is_back() {
    let sink = Backend::start("sink");
    sink.behave(Behaviour::Status(503));
    let spool = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(&sink, spool.path()));

    // Acknowledged while the destination fails: spooled.
    for batch in 0..3 {
        let mut body: Value = serde_json::from_slice(&payload(2, "firing")).unwrap();
        for (i, a) in body["alerts"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            a["labels"]["alertname"] = json!(format!("batch{batch}-{i}"));
        }
        let r = post(&gw, "/alerts/generic", &[AUTH], body.to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["messages"]["spooled"], 2, "{}", r.text());
    }
    let spooled = || {
        std::fs::read_dir(spool.path().join("generic"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("msg".as_ref()))
            .count()
    };
    assert_eq!(spooled(), 6);

    sink.behave(Behaviour::Normal);
    let delivered = || {
        sink.seen()
            .iter()
            .filter(|s| s.target == "/generic")
            .filter_map(|s| {
                let v: Value = serde_json::from_slice(&s.body).ok()?;
                let alert = v["alerts"][0]["labels"]["alertname"].as_str()?.to_owned();
                Some(alert)
            })
            .collect::<Vec<_>>()
    };
    // Replays pause for max_delay (200ms) after a failed round: allow a few seconds.
    assert!(
        eventually(Duration::from_secs(10), || {
            let d = delivered();
            // Taken by the destination (a 200), not counting the 503s it answered while down.
            d.iter().filter(|n| n.starts_with("batch")).count() >= 6 && spooled() == 0
        }),
        "spool not drained: {:?}",
        delivered()
    );
    // Every alert, in the order it was acknowledged, each delivered once with a 200.
    let ok: Vec<String> = sink
        .seen()
        .iter()
        .filter(|s| s.target == "/generic")
        .filter_map(|s| {
            let v: Value = serde_json::from_slice(&s.body).ok()?;
            Some(v["alerts"][0]["labels"]["alertname"].as_str()?.to_owned())
        })
        .collect();
    let last_six: Vec<&str> = ok[ok.len() - 6..].iter().map(String::as_str).collect();
    assert_eq!(
        last_six,
        ["batch0-0", "batch0-1", "batch1-0", "batch1-1", "batch2-0", "batch2-1"]
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains(
            "zkgate_alert_alerts_total{destination=\"generic\",result=\"replayed\",route=\"alerts\"} 6"
        ),
        "{metrics}"
    );
}

/// An HTTPS destination that takes a POST only when its HMAC-SHA256 signature is right, and
/// appends each body it takes to a file, one JSON document per line.
const SIGNED_SINK: &str = r#"
import hashlib, hmac, http.server, json, ssl, sys
port, cert, key, secret, out = sys.argv[1:6]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(self.headers.get("x-signature-256", ""), want)
        if ok:
            with open(out, "ab") as f:
                f.write(json.dumps(json.loads(body)).encode() + b"\n")
        self.send_response(200 if ok else 401)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

#[test]
fn https_destinations_are_verified_against_the_ca_file_and_signed() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name);
    let (ca, cert, key, out) = (
        file("ca.pem"),
        file("cert.pem"),
        file("key.pem"),
        file("taken.jsonl"),
    );
    // A CA, and a certificate for localhost it signs: webpki takes no self-signed leaf.
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("openssl");
        assert!(ok.success(), "openssl {args:?}");
    };
    openssl(
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ]
        .iter()
        .chain(&[
            "-subj",
            "/CN=test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])
        .copied()
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ]
        .iter()
        .chain(&["-keyout", "key.pem", "-out", "leaf.csr"])
        .copied()
        .collect::<Vec<_>>(),
    );
    std::fs::write(file("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        &[
            "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        ]
        .iter()
        .chain(&[
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "cert.pem",
        ])
        .copied()
        .collect::<Vec<_>>(),
    );
    let port = common::free_port();
    let _server = common::KillOnDrop(
        Command::new("python3")
            .args(["-c", SIGNED_SINK, &port.to_string()])
            .arg(&cert)
            .arg(&key)
            .arg("hmac-key")
            .arg(&out)
            .spawn()
            .expect("python3"),
    );
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the HTTPS sink did not start"
    );
    let destination = |name: &str, secret: &str| {
        format!(
            "          - {{ name: {name}, url: \"https://localhost:{port}/hook\", template: {{ builtin: generic }}, signature: {{ secret: {secret} }}, retry: {{ attempts: 1 }} }}\n"
        )
    };
    let yaml = format!(
        "routes:\n  - name: alerts\n    match: {{ path_prefix: /alerts }}\n    plugin:\n      alert_webhook:\n        ca_file: {}\n        destinations:\n{}{}",
        ca.display(),
        destination("signed", "hmac-key"),
        destination("forged", "not-the-key"),
    );
    let gw = Gateway::start(&yaml);
    let r = post(&gw, "/alerts/signed", &[], &payload(2, "firing"));
    assert_eq!(r.status, 200, "{}", r.text());
    let taken = std::fs::read_to_string(&out).expect("the sink took the message");
    let v: Value = serde_json::from_str(taken.lines().next().unwrap()).unwrap();
    assert_eq!(v["alerts"].as_array().unwrap().len(), 2);

    // A wrong signature is refused by the destination, which sending again would not change.
    let r = post(&gw, "/alerts/forged", &[], &payload(1, "firing"));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 1);

    // Without the CA, the certificate is not trusted: nothing is sent, and the answer asks
    // Alertmanager to try again (no spool here).
    let untrusted = yaml.replace(&format!("        ca_file: {}\n", ca.display()), "");
    let gw = Gateway::start(&untrusted);
    let r = post(&gw, "/alerts/signed", &[], &payload(1, "firing"));
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 1);
}

#[test]
fn check_reports_a_broken_template_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alerts.yaml");
    std::fs::write(
        &config,
        r#"
listeners: [{ name: web, listen: "127.0.0.1:1" }]
routes:
  - name: alerts
    match: { path_prefix: /alerts }
    plugin:
      alert_webhook:
        destinations:
          - name: chat
            url: "https://chat.example.com/hook"
            template:
              inline: |
                {"text": {{ alerts | length }}
                {% for a in alerts %}
"#,
    )
    .unwrap();
    let (code, stderr) = common::check(&config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("routes[0].plugin.alert_webhook.destinations[0].template: line "),
        "{stderr}"
    );
}

#[test]
fn an_upstream_destination_honours_the_upstreams_circuit_breaker() {
    let sink = Backend::start("sink");
    sink.behave(Behaviour::Status(503));
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - name: sink
    backends: ["{}"]
    circuit_breaker: {{ consecutive_failures: 2, open_for: 1h }}
routes:
  - name: alerts
    match: {{ path_prefix: /alerts }}
    plugin:
      alert_webhook:
        destinations:
          - {{ name: d, upstream: sink, template: {{ builtin: generic }}, retry: {{ attempts: 1 }} }}
"#,
        sink.addr
    ));
    for _ in 0..2 {
        let r = post(&gw, "/alerts/d", &[], &payload(1, "firing"));
        assert_eq!(r.status, 502, "{}", r.text());
    }
    assert_eq!(sink.seen().len(), 2);
    // Open now: the destination is not tried, and Alertmanager is told to come back.
    let r = post(&gw, "/alerts/d", &[], &payload(1, "firing"));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("circuit breaker is open"), "{}", r.text());
    assert_eq!(sink.seen().len(), 2, "nothing reached the destination");
}

/// The payload of [`payload`] with every alert starting at `starts_at`.
fn payload_starting(n: usize, starts_at: &str) -> Value {
    let mut v: Value = serde_json::from_slice(&payload(n, "firing")).unwrap();
    for a in v["alerts"].as_array_mut().unwrap() {
        a["startsAt"] = starts_at.into();
    }
    v
}

/// Grows each alert's description until the body is past 32 KiB, so that it is parsed and
/// rendered on the blocking pool.
fn offloaded(mut v: Value) -> Vec<u8> {
    let n = v["alerts"].as_array().unwrap().len();
    for a in v["alerts"].as_array_mut().unwrap() {
        a["annotations"]["description"] = "d".repeat(40_000 / n).into();
    }
    let body = serde_json::to_vec(&v).unwrap();
    assert!(body.len() > 32 * 1024, "{} bytes", body.len());
    body
}

#[test]
fn hostile_payloads_get_an_answer_and_render_errors_are_counted() {
    let sink = Backend::start("sink");
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - {{ name: sink, backends: ["{sink}"] }}
routes:
  - name: alerts
    match: {{ path_prefix: /alerts }}
    plugin:
      alert_webhook:
        destinations:
          - {{ name: slack, upstream: sink, path: /slack, template: {{ builtin: slack }} }}
          - {{ name: teams, upstream: sink, path: /teams, template: {{ builtin: teams }} }}
          - {{ name: googlechat, upstream: sink, path: /chat, template: {{ builtin: googlechat }} }}
          # Loops for ever once a payload has three alerts: out of fuel, not out of time.
          - name: loop
            upstream: sink
            path: /loop
            template:
              inline: '{{% for i in range((alerts | length - 2) * 10000) %}}{{% for j in range(10000) %}}x{{% endfor %}}{{% endfor %}}{{"ok": true}}'
          - name: hook
            url: "http://{sink}/services/T000/B000/webhooks3cret"
            template: {{ builtin: slack }}
"#,
        sink = sink.addr
    ));

    // `to_offset` panicked on this instant in a "UTC" zone: every chat template answered
    // nothing, and Alertmanager sent it again for ever. Now it is delivered, shown as sent.
    let hostile = payload_starting(2, "9999-12-31T23:59:59-23:59");
    for dest in ["slack", "teams", "googlechat"] {
        for body in [
            serde_json::to_vec(&hostile).unwrap(),
            offloaded(hostile.clone()),
        ] {
            let r = post(&gw, &format!("/alerts/{dest}"), &[], &body);
            assert_eq!(r.status, 200, "{dest}: {}", r.text());
            assert_eq!(r.json()["messages"]["delivered"], 1, "{dest}");
        }
    }
    let seen = sink.seen();
    assert_eq!(seen.len(), 6);
    for s in &seen {
        let text = String::from_utf8_lossy(&s.body);
        assert!(text.contains("9999-12-31T23:59:59-23:59"), "{text}");
    }

    // A render that runs out of fuel: a 422 (Alertmanager does not retry what would fail the
    // same way), counted, on the worker thread and on the blocking pool alike.
    for body in [
        payload(3, "firing"),
        offloaded(serde_json::from_slice(&payload(3, "firing")).unwrap()),
    ] {
        let r = post(&gw, "/alerts/loop", &[], &body);
        assert_eq!(r.status, 422, "{}", r.text());
        let answer = r.json();
        assert_eq!(answer["destination"], "loop");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("ran more than 5000000 steps"),
            "{answer}"
        );
    }
    // Two alerts: the same template renders.
    assert_eq!(
        post(&gw, "/alerts/loop", &[], &payload(2, "firing")).status,
        200
    );
    assert_eq!(sink.seen().len(), 7);
    let metrics = gw.metrics();
    for want in [
        "zkgate_alert_render_errors_total{destination=\"loop\",reason=\"out_of_fuel\",route=\"alerts\"} 2",
        "zkgate_alert_render_errors_total{destination=\"loop\",reason=\"panic\",route=\"alerts\"} 0",
        "zkgate_alert_render_errors_total{destination=\"slack\",reason=\"out_of_fuel\",route=\"alerts\"} 0",
        "zkgate_alert_alerts_total{destination=\"loop\",result=\"failed\",route=\"alerts\"} 6",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }

    // A dry run shows where a URL destination's messages go, not the token in its path.
    let r = post(&gw, "/alerts/hook?dry_run=true", &[], &payload(1, "firing"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["requests"][0]["target"],
        format!("{}/<redacted>", sink.addr)
    );
    assert!(!r.text().contains("webhooks3cret"), "{}", r.text());
    assert!(!r.text().contains("T000"), "{}", r.text());
    assert_eq!(sink.seen().len(), 7);
}
