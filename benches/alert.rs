//! Criterion benchmarks of the Alertmanager-webhook plugin's per-notification work: parsing a
//! 10-alert payload, rendering the Slack template for one alert (a per-alert split) and the
//! generic template for all 10, and one label-set fingerprint.
//!
//! The alerts carry what real rules give them: 6 labels and 3 annotations each. Renders
//! include building the context from the parsed payload, as each outgoing message does.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use zkgate::plugin::alert::payload::{fingerprint, parse, Limits};
use zkgate::plugin::alert::template::{RenderContext, Template};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const LIMITS: Limits = Limits { max_alerts: 1000 };

/// A firing notification of `n` alerts, shaped as Alertmanager 0.27 sends it.
fn body(n: usize) -> Vec<u8> {
    let alerts: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "status": if i % 4 == 3 { "resolved" } else { "firing" },
                "labels": {
                    "alertname": "HighErrorRate", "instance": format!("10.0.{}.{}:8080", i / 200, i % 200),
                    "job": "api", "namespace": "prod", "service": "checkout", "severity": "critical"
                },
                "annotations": {
                    "summary": "5xx ratio above 5%",
                    "description": format!("checkout instance {i} answers 7.2% 5xx over the last 5 minutes"),
                    "runbook_url": "https://runbooks.example.com/high-error-rate"
                },
                "startsAt": "2024-05-01T10:00:00.123456789Z",
                "endsAt": if i % 4 == 3 { "2024-05-01T10:45:00Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=sum%28rate%28http_requests_total%7Bcode%3D~%225..%22%7D%5B5m%5D%29%29",
                "fingerprint": format!("{:016x}", 0xc1a2_b3d4_e5f6_0000_u64 + i as u64)
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "receiver": "team-checkout",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": {"alertname": "HighErrorRate"},
        "commonLabels": {"alertname": "HighErrorRate", "job": "api", "namespace": "prod"},
        "commonAnnotations": {"summary": "5xx ratio above 5%"},
        "externalURL": "http://alertmanager.example.com:9093",
        "version": "4",
        "groupKey": "{}:{alertname=\"HighErrorRate\"}",
        "truncatedAlerts": 0
    }))
    .expect("json")
}

fn benches(c: &mut Criterion) {
    let body10 = body(10);
    let payload = parse(&body10, &LIMITS).expect("parse");
    let vars = BTreeMap::from([("routing_key".to_owned(), "R0UT1NGK3Y".to_owned())]);
    let slack = Template::compile("slack", include_str!("../conf/templates/slack.json.j2"))
        .expect("slack template");
    let generic = Template::compile("generic", include_str!("../conf/templates/generic.json.j2"))
        .expect("generic template");
    let ctx = |alerts| RenderContext {
        payload: &payload,
        alerts,
        destination: "bench",
        vars: &vars,
    };

    let mut g = c.benchmark_group("alert");
    g.throughput(criterion::Throughput::Bytes(body10.len() as u64));
    g.bench_function("parse_10_alerts", |b| {
        b.iter(|| black_box(parse(black_box(&body10), &LIMITS).expect("parse")))
    });
    g.finish();

    let mut g = c.benchmark_group("alert");
    let one = ctx(0..1);
    let out = slack.render_json(&one).expect("slack renders JSON");
    eprintln!("slack, one alert: {} bytes", out.len());
    g.bench_function("render_slack_1_alert", |b| {
        b.iter(|| black_box(slack.render(black_box(&one)).expect("render")))
    });
    g.bench_function("render_json_slack_1_alert", |b| {
        b.iter(|| black_box(slack.render_json(black_box(&one)).expect("render")))
    });
    let all = ctx(0..10);
    let out = generic.render_json(&all).expect("generic renders JSON");
    eprintln!("generic, 10 alerts: {} bytes", out.len());
    g.bench_function("render_generic_10_alerts", |b| {
        b.iter(|| black_box(generic.render(black_box(&all)).expect("render")))
    });
    let labels = &payload.alerts[0].labels;
    g.bench_function("fingerprint_6_labels", |b| {
        b.iter(|| black_box(fingerprint(black_box(labels))))
    });
    g.finish();
}

criterion_group!(alert, benches);
criterion_main!(alert);
