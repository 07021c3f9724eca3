//! Criterion benchmarks of the Alertmanager-webhook plugin's per-notification work: parsing a
//! 10-alert payload; rendering the Slack template for a payload of one alert, and for a
//! 10-alert payload split per alert (10 messages, reported per alert); the generic template for
//! all 10 in one message; a label-set fingerprint and a timestamp.
//!
//! The alerts carry what real rules give them: 6 labels and 3 annotations each. Renders
//! include building the template values from the parsed payload, once per payload, as the
//! plugin does.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::ops::Range;

use criterion::{criterion_group, criterion_main, Criterion};
use zkgate::plugin::alert::payload::{fingerprint, parse, parse_timestamp, Limits, Payload};
use zkgate::plugin::alert::template::{DestinationValues, PayloadValues, RenderContext, Template};

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
    let body1 = body(1);
    let single = parse(&body1, &LIMITS).expect("parse");
    let vars = BTreeMap::from([("routing_key".to_owned(), "R0UT1NGK3Y".to_owned())]);
    let destination = DestinationValues::new("bench", &vars);
    let slack = Template::compile("slack", include_str!("../conf/templates/slack.json.j2"))
        .expect("slack template");
    let generic = Template::compile("generic", include_str!("../conf/templates/generic.json.j2"))
        .expect("generic template");
    // What the plugin does for each webhook: the payload's values once, then each message.
    let render = |t: &Template, p: &Payload, ranges: &[Range<usize>], json: bool| {
        let values = PayloadValues::new(p);
        for alerts in ranges {
            let ctx = RenderContext {
                payload: &values,
                alerts: alerts.clone(),
                destination: &destination,
            };
            let out = if json {
                t.render_json(&ctx)
            } else {
                t.render(&ctx)
            };
            black_box(out.expect("render"));
        }
    };
    let per_alert: Vec<Range<usize>> = (0..10).map(|i| i..i + 1).collect();
    let one: Vec<Range<usize>> = std::iter::once(0..1).collect();
    let whole: Vec<Range<usize>> = std::iter::once(0..10).collect();

    let mut g = c.benchmark_group("alert");
    g.throughput(criterion::Throughput::Bytes(body10.len() as u64));
    g.bench_function("parse_10_alerts", |b| {
        b.iter(|| black_box(parse(black_box(&body10), &LIMITS).expect("parse")))
    });
    g.finish();

    let mut g = c.benchmark_group("alert");
    g.bench_function("render_slack_1_alert", |b| {
        b.iter(|| render(&slack, black_box(&single), &one, false))
    });
    g.finish();

    // Per alert: a 10-alert payload split per alert, 10 messages; criterion's elem/s is alerts.
    let mut g = c.benchmark_group("alert");
    g.throughput(criterion::Throughput::Elements(10));
    g.bench_function("render_slack_per_alert_10", |b| {
        b.iter(|| render(&slack, black_box(&payload), &per_alert, false))
    });
    g.bench_function("render_json_slack_per_alert_10", |b| {
        b.iter(|| render(&slack, black_box(&payload), &per_alert, true))
    });
    g.bench_function("render_generic_10_alerts", |b| {
        b.iter(|| render(&generic, black_box(&payload), &whole, false))
    });
    g.finish();

    let mut g = c.benchmark_group("alert");
    let labels = &payload.alerts[0].labels;
    g.bench_function("fingerprint_6_labels", |b| {
        b.iter(|| black_box(fingerprint(black_box(labels))))
    });
    g.bench_function("timestamp", |b| {
        b.iter(|| black_box(parse_timestamp(black_box("2024-05-01T10:00:00.123456789Z"))))
    });
    g.finish();
}

criterion_group!(alert, benches);
criterion_main!(alert);
