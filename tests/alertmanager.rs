//! The alert_webhook plugin behind a real Alertmanager: alerts posted to Alertmanager reach a
//! real destination server rendered by every ready-made template and split every way; a spool
//! outlives a SIGKILL of the gateway; a full spool turns webhooks away with 503 and keeps what
//! it holds, and Alertmanager's own retries deliver what was turned away.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use common::alertmanager::{self, Alertmanager, ROUTE_LABEL};
use common::{eventually, request, Backend, Behaviour, Gateway};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// helpers

/// The bodies the destination took (answered 2xx) at `path`, in arrival order; each must be
/// JSON, as every real service behind the ready-made templates wants.
fn taken(sink: &Backend, path: &str) -> Vec<Value> {
    sink.seen()
        .into_iter()
        .filter(|s| s.target == path && (200..300).contains(&s.status))
        .map(|s| {
            assert_eq!(
                s.headers.get("content-type").map(String::as_str),
                Some("application/json"),
                "{path}"
            );
            serde_json::from_slice(&s.body).unwrap_or_else(|e| {
                panic!(
                    "{path}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&s.body)
                )
            })
        })
        .collect()
}

/// The alerts of `all` that message `v` carries, named by their fingerprint (PagerDuty's
/// resolve events carry nothing else, as their dedup_key) or by their name.
fn carried(v: &Value, all: &[String], fingerprints: &BTreeMap<String, String>) -> BTreeSet<String> {
    let text = v.to_string();
    all.iter()
        .filter(|n| {
            text.contains(n.as_str())
                || fingerprints
                    .get(*n)
                    .is_some_and(|fp| text.contains(fp.as_str()))
        })
        .cloned()
        .collect()
}

/// The `alertname` of each alert of a message in the generic (Alertmanager webhook) shape.
fn alertnames(v: &Value) -> Vec<String> {
    v["alerts"]
        .as_array()
        .unwrap_or_else(|| panic!("no alerts: {v}"))
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Messages waiting in a destination's spool directory.
fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "msg"))
            .count()
    })
}

/// An Alertmanager v4 webhook carrying one firing alert per name, as the tests post it
/// straight to the gateway.
fn webhook(names: &[String]) -> Vec<u8> {
    let alerts: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({
                "status": "firing",
                "labels": {"alertname": n, "severity": "critical", "instance": "db-1:9100"},
                "annotations": {"summary": format!("summary of {n}")},
                "startsAt": "2026-11-22T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.test/graph",
                "fingerprint": ""
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "direct",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.test",
        "alerts": alerts
    })
    .to_string()
    .into_bytes()
}

fn post(gw: &Gateway, destination: &str, body: &[u8]) -> common::Response {
    request(
        gw.http,
        "POST",
        &format!("/alerts/{destination}"),
        &[("content-type", "application/json")],
        body,
    )
    .expect("webhook request")
}

/// A gateway config with one spooled `generic` destination at `sink`.
fn spool_config(sink: &Backend, spool: &Path, max_bytes: &str, split: &str) -> String {
    format!(
        r#"
routes:
  - name: alerts
    match: {{ path_prefix: /alerts }}
    plugin:
      alert_webhook:
        spool: {{ dir: "{spool}", max_bytes: {max_bytes} }}
        destinations:
          - name: generic
            url: "http://{sink}/generic"
            template: {{ builtin: generic }}
            split: {split}
            retry: {{ attempts: 2, initial_delay: 50ms, max_delay: 200ms }}
"#,
        sink = sink.addr,
        spool = spool.display(),
    )
}

// ---------------------------------------------------------------------------------------------
// every ready-made template, every split

/// Alerts posted to Alertmanager for each destination: enough for every split to cut a group.
const PER_DESTINATION: usize = 5;

struct Case {
    template: &'static str,
    /// The destination's split (and any other keys), as YAML flow-mapping entries.
    keys: &'static str,
    /// The most alerts one message may carry.
    per_message: usize,
}

const CASES: [Case; 5] = [
    Case {
        template: "slack",
        keys: "split: batch, batch_size: 2",
        per_message: 2,
    },
    Case {
        template: "teams",
        keys: "split: none",
        per_message: PER_DESTINATION,
    },
    Case {
        template: "googlechat",
        keys: "split: per_alert",
        per_message: 1,
    },
    Case {
        template: "pagerduty",
        keys: "split: per_alert, vars: { routing_key: R0UT1NG }",
        per_message: 1,
    },
    Case {
        template: "generic",
        keys: "split: batch, batch_size: 3",
        per_message: 3,
    },
];

/// Checks `v` has what the real service behind `template` requires of a message carrying
/// `alerts` alerts.
fn check_service_fields(template: &str, v: &Value, alerts: usize) {
    let nonempty = |v: &Value| v.as_str().is_some_and(|s| !s.trim().is_empty());
    match template {
        // Slack's incoming webhooks want `text` or `blocks`; attachments carry one per alert.
        "slack" => {
            assert!(nonempty(&v["text"]) || v["blocks"].is_array(), "{v}");
            let attachments = v["attachments"].as_array().expect("attachments");
            assert_eq!(attachments.len(), alerts, "{v}");
            for a in attachments {
                assert!(a["blocks"].is_array() || nonempty(&a["text"]), "{a}");
            }
        }
        // A Teams Workflows webhook takes a `message` whose attachments are Adaptive Cards.
        "teams" => {
            assert_eq!(v["type"], "message", "{v}");
            let attachments = v["attachments"].as_array().expect("attachments");
            assert!(!attachments.is_empty(), "{v}");
            for a in attachments {
                assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
                assert_eq!(a["content"]["type"], "AdaptiveCard");
                assert!(nonempty(&a["content"]["version"]), "{a}");
                assert!(
                    a["content"]["body"]
                        .as_array()
                        .is_some_and(|b| !b.is_empty()),
                    "{a}"
                );
            }
        }
        // Google Chat wants `text` or `cardsV2`; the card has a section per alert.
        "googlechat" => {
            assert!(nonempty(&v["text"]) || v["cardsV2"].is_array(), "{v}");
            let sections = v["cardsV2"][0]["card"]["sections"]
                .as_array()
                .expect("sections");
            assert_eq!(sections.len(), alerts, "{v}");
        }
        // PagerDuty Events API v2: a trigger needs a payload with summary, severity, source.
        "pagerduty" => {
            assert_eq!(v["routing_key"], "R0UT1NG", "{v}");
            assert!(nonempty(&v["dedup_key"]), "{v}");
            match v["event_action"].as_str() {
                Some("trigger") => {
                    let p = &v["payload"];
                    assert!(nonempty(&p["summary"]), "{v}");
                    assert!(p["summary"].as_str().is_some_and(|s| s.len() <= 1024));
                    assert!(nonempty(&p["source"]), "{v}");
                    let severity = p["severity"].as_str().unwrap_or("");
                    assert!(
                        ["critical", "error", "warning", "info"].contains(&severity),
                        "{v}"
                    );
                }
                Some("resolve") => {}
                _ => panic!("event_action: {v}"),
            }
        }
        "generic" => {
            assert_eq!(v["version"], "4", "{v}");
            assert_eq!(alertnames(v).len(), alerts, "{v}");
            for a in v["alerts"].as_array().into_iter().flatten() {
                assert!(nonempty(&a["fingerprint"]), "{a}");
            }
        }
        other => panic!("no check for template {other}"),
    }
}

#[test]
fn alertmanager_alerts_arrive_rendered_by_every_template_and_split() {
    let sink = Backend::start("destination");
    let destinations: String = CASES
        .iter()
        .map(|c| {
            format!(
                "          - {{ name: {t}, url: \"http://{sink}/{t}\", template: {{ builtin: {t} }}, {keys} }}\n",
                t = c.template,
                sink = sink.addr,
                keys = c.keys
            )
        })
        .collect();
    let gw = Gateway::start(&format!(
        "
routes:
  - name: alerts
    match: {{ path_prefix: /alerts }}
    plugin:
      alert_webhook:
        destinations:
{destinations}"
    ));
    let receivers: Vec<(&str, String)> = CASES
        .iter()
        .map(|c| {
            (
                c.template,
                format!("http://{}/alerts/{}", gw.http, c.template),
            )
        })
        .collect();
    let am = Alertmanager::start(&receivers);

    let names = |template: &str| -> Vec<String> {
        (0..PER_DESTINATION)
            .map(|i| format!("{template}_alert_{i}"))
            .collect()
    };
    let mut posted = Vec::new();
    for c in &CASES {
        for (i, name) in names(c.template).iter().enumerate() {
            let severity = if i % 2 == 0 { "critical" } else { "warning" };
            posted.push(alertmanager::alert(
                &[
                    ("alertname", name),
                    (ROUTE_LABEL, c.template),
                    ("severity", severity),
                    ("instance", &format!("host-{i}:9100")),
                ],
                &[
                    ("summary", &format!("summary of {name}")),
                    ("description", "disk almost full"),
                ],
            ));
        }
    }
    am.post(&posted);
    let fingerprints: BTreeMap<String, String> = am
        .alerts()
        .iter()
        .filter_map(|a| {
            let name = a["labels"]["alertname"].as_str()?.to_owned();
            Some((name, a["fingerprint"].as_str()?.to_owned()))
        })
        .collect();
    assert_eq!(fingerprints.len(), posted.len(), "{fingerprints:?}");

    let arrived = |c: &Case, since: usize| -> BTreeSet<String> {
        let all = names(c.template);
        taken(&sink, &format!("/{}", c.template))
            .iter()
            .skip(since)
            .flat_map(|m| carried(m, &all, &fingerprints))
            .collect()
    };
    let every = |since: &BTreeMap<&str, usize>| {
        CASES
            .iter()
            .all(|c| arrived(c, since[c.template]).len() == PER_DESTINATION)
    };
    let none = CASES.iter().map(|c| (c.template, 0)).collect();
    assert!(
        eventually(Duration::from_secs(20), || every(&none)),
        "not every alert arrived: {:?}\nalertmanager:\n{}\ngateway:\n{}",
        CASES
            .iter()
            .map(|c| (c.template, arrived(c, 0)))
            .collect::<Vec<_>>(),
        am.log(),
        gw.log()
    );

    // Alertmanager's one notification per group, cut as each destination asks: every alert in
    // exactly one message, no message over its share, one message per alert with per_alert.
    for c in &CASES {
        let all = names(c.template);
        let messages = taken(&sink, &format!("/{}", c.template));
        assert_eq!(
            messages.len(),
            PER_DESTINATION.div_ceil(c.per_message),
            "{}: {messages:?}",
            c.template
        );
        let mut seen = BTreeSet::new();
        for m in &messages {
            let carried = carried(m, &all, &fingerprints);
            assert!(
                (1..=c.per_message).contains(&carried.len()),
                "{}: {m}",
                c.template
            );
            check_service_fields(c.template, m, carried.len());
            for n in carried {
                assert!(seen.insert(n.clone()), "{}: {n} sent twice", c.template);
            }
        }
    }

    // PagerDuty deduplicates on the fingerprint Alertmanager gives the alert; the generic
    // template passes it on as received.
    for m in taken(&sink, "/pagerduty") {
        let name = carried(&m, &names("pagerduty"), &fingerprints)
            .pop_first()
            .expect("an alert");
        assert_eq!(m["event_action"], "trigger");
        assert_eq!(m["dedup_key"], fingerprints[&name], "{m}");
        assert_eq!(
            m["payload"]["severity"], m["payload"]["custom_details"]["labels"]["severity"],
            "critical and warning keep their names: {m}"
        );
    }
    for m in taken(&sink, "/generic") {
        for a in m["alerts"].as_array().into_iter().flatten() {
            let name = a["labels"]["alertname"].as_str().unwrap_or("");
            assert_eq!(a["fingerprint"], fingerprints[name], "{a}");
        }
    }

    // Resolved: every destination hears of every alert again, PagerDuty as a `resolve` of the
    // event it triggered.
    let before: BTreeMap<&str, usize> = CASES
        .iter()
        .map(|c| (c.template, taken(&sink, &format!("/{}", c.template)).len()))
        .collect();
    am.post(
        &posted
            .iter()
            .map(alertmanager::resolved)
            .collect::<Vec<_>>(),
    );
    assert!(
        eventually(Duration::from_secs(20), || every(&before)),
        "not every resolved alert arrived: {:?}\nalertmanager:\n{}",
        CASES
            .iter()
            .map(|c| (c.template, arrived(c, before[c.template])))
            .collect::<Vec<_>>(),
        am.log()
    );
    for c in &CASES {
        for m in taken(&sink, &format!("/{}", c.template))
            .iter()
            .skip(before[c.template])
        {
            let carried = carried(m, &names(c.template), &fingerprints);
            check_service_fields(c.template, m, carried.len());
        }
    }
    let resolves: BTreeSet<String> = taken(&sink, "/pagerduty")
        .iter()
        .skip(before["pagerduty"])
        .filter(|m| m["event_action"] == "resolve")
        .filter_map(|m| Some(m["dedup_key"].as_str()?.to_owned()))
        .collect();
    let triggered: BTreeSet<String> = names("pagerduty")
        .iter()
        .map(|n| fingerprints[n].clone())
        .collect();
    assert_eq!(resolves, triggered);
    // Each alert is sent as resolved (a flush that caught the resolutions half posted may also
    // have sent some as still firing: Alertmanager's doing, and harmless).
    let resolved: BTreeSet<String> = taken(&sink, "/generic")
        .iter()
        .skip(before["generic"])
        .flat_map(|m| m["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["status"] == "resolved")
        .filter_map(|a| Some(a["labels"]["alertname"].as_str()?.to_owned()))
        .collect();
    assert_eq!(resolved, names("generic").into_iter().collect());
}

// ---------------------------------------------------------------------------------------------
// the spool across a SIGKILL

#[test]
fn spooled_alerts_survive_a_sigkill_and_arrive_once_each_in_order() {
    let sink = Backend::start("destination");
    sink.behave(Behaviour::Status(503));
    let spool = tempfile::tempdir().expect("spool dir");
    let queue = spool.path().join("generic");
    let yaml = spool_config(&sink, spool.path(), "1MiB", "per_alert");
    let mut gw = Gateway::start(&yaml);

    let mut order = Vec::new();
    for w in 0..4 {
        let names: Vec<String> = (0..2).map(|i| format!("before_kill_{w}_{i}")).collect();
        let r = post(&gw, "generic", &webhook(&names));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["messages"]["spooled"], 2, "{}", r.text());
        order.extend(names);
    }
    assert_eq!(spooled(&queue), order.len());

    // No shutdown of any kind: whatever was acknowledged must already be on disk.
    gw.signal("KILL");
    let status = gw.child.wait().expect("wait for the killed gateway");
    assert_eq!(status.signal(), Some(9), "{status}");
    drop(gw);
    assert_eq!(
        spooled(&queue),
        order.len(),
        "the kill lost spooled messages"
    );

    let gw = Gateway::start(&yaml);
    // Still down: a new webhook queues behind what the killed gateway left.
    let late = vec!["after_restart".to_owned()];
    let r = post(&gw, "generic", &webhook(&late));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["messages"]["spooled"], 1, "{}", r.text());
    order.extend(late);

    sink.behave(Behaviour::Normal);
    let delivered = || -> Vec<String> {
        taken(&sink, "/generic")
            .iter()
            .flat_map(alertnames)
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(15), || delivered().len() >= order.len()
            && spooled(&queue) == 0),
        "delivered {:?} of {order:?}, {} still spooled\n{}",
        delivered(),
        spooled(&queue),
        gw.log()
    );
    assert_eq!(delivered(), order, "each once, in the order acknowledged");
}

// ---------------------------------------------------------------------------------------------
// a full spool

#[test]
fn a_full_spool_refuses_with_503_keeps_what_it_holds_and_alertmanager_retries() {
    let sink = Backend::start("destination");
    sink.behave(Behaviour::Status(503));
    let spool = tempfile::tempdir().expect("spool dir");
    let queue = spool.path().join("generic");
    let gw = Gateway::start(&spool_config(&sink, spool.path(), "4KiB", "none"));

    // One alert per webhook until the spool is full.
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..64 {
        let name = format!("direct_{i:02}");
        let r = post(&gw, "generic", &webhook(std::slice::from_ref(&name)));
        match r.status {
            200 => {
                assert_eq!(r.json()["messages"]["spooled"], 1, "{}", r.text());
                acked.push(name);
            }
            503 => {
                refused = Some(r);
                break;
            }
            other => panic!("{other}: {}", r.text()),
        }
    }
    let refused = refused.expect("a 4 KiB spool never filled");
    assert!(
        acked.len() >= 2,
        "only {} messages fit in 4 KiB",
        acked.len()
    );
    let retry_after = refused.header("retry-after").unwrap_or("");
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s > 0),
        "Retry-After: {retry_after:?}"
    );
    assert_eq!(refused.json()["status"], "error");
    let again = post(&gw, "generic", &webhook(&["refused_again".to_owned()]));
    assert_eq!(again.status, 503, "{}", again.text());
    assert_eq!(
        spooled(&queue),
        acked.len(),
        "a refusal dropped or took something"
    );

    // Alertmanager is turned away too, with a group larger than any free room.
    let am = Alertmanager::start(&[("generic", format!("http://{}/alerts/generic", gw.http))]);
    let via_am: Vec<String> = (0..3).map(|i| format!("via_alertmanager_{i}")).collect();
    let long = "the disk is almost full; ".repeat(20);
    let alerts: Vec<Value> = via_am
        .iter()
        .map(|n| {
            alertmanager::alert(
                &[
                    ("alertname", n),
                    (ROUTE_LABEL, "generic"),
                    ("severity", "warning"),
                ],
                &[("summary", n), ("description", &long)],
            )
        })
        .collect();
    am.post(&alerts);
    let failed = || {
        am.metric(
            "alertmanager_notification_requests_failed_total",
            &["integration=\"webhook\""],
        )
    };
    assert!(
        eventually(Duration::from_secs(15), || failed() >= 1.0),
        "alertmanager never tried\n{}",
        am.log()
    );
    assert_eq!(
        spooled(&queue),
        acked.len(),
        "nothing was dropped to make room"
    );

    // The destination is back: the spool drains, and Alertmanager's next try gets through.
    sink.behave(Behaviour::Normal);
    let delivered = || -> Vec<String> {
        taken(&sink, "/generic")
            .iter()
            .flat_map(alertnames)
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(25), || {
            let d = delivered();
            acked.iter().chain(&via_am).all(|n| d.contains(n)) && spooled(&queue) == 0
        }),
        "delivered {:?}\nalertmanager:\n{}\ngateway:\n{}",
        delivered(),
        am.log(),
        gw.log()
    );
    let d = delivered();
    let direct: Vec<&String> = d.iter().filter(|n| n.starts_with("direct_")).collect();
    assert_eq!(
        direct,
        acked.iter().collect::<Vec<_>>(),
        "what was spooled arrives once each, in order; what was refused never"
    );
    assert!(!d.iter().any(|n| n == "refused_again"));
}
