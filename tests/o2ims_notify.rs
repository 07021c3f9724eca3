//! The O2 IMS notification callback (`cache_notify`) end to end through the real gateway: every
//! dialect's body accepted with 204, the reachability GET, repeats dropped, and every refusal
//! (401, 400, 413, 415, 422, 405) answered as ProblemDetails and counted; and with the test O2
//! server subscribed to the gateway, a change evicts the item and every list variant while
//! unrelated entries stay hits.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use common::o2ims::{Dialect, O2Ims, Opts};
use common::{request, Gateway, Response};
use serde_json::{json, Value};

const CONFIG: &str = r#"
routes:
  - name: o2ims-notify
    match: { path: /zkgate/o2ims/notify }
    plugin:
      cache_notify:
        store: o2
        auth: { token: s3cret }
        max_body: 4KiB
        dedupe: { window: 10m, entries: 1000 }
"#;

const PATH: &str = "/zkgate/o2ims/notify";
const AUTH: (&str, &str) = ("authorization", "Bearer s3cret");
const JSON: (&str, &str) = ("content-type", "application/json");

/// The bodies each O2 server sends (notes §1.8, and the test O2 server's dialects).
const ORAN: &str = r#"{"notificationId":"8c1c3b8e-0f7a-4a43-9a55-0c1f7a1f6a01",
  "consumerSubscriptionId":"3f20d850-af4f-a84f-fb5a-0ad585410361","notificationEventType":1,
  "objectRef":"/o2ims-infrastructureInventory/v2/resourcePools/P1/resources/R1",
  "priorObjectState":{"resourceId":"R1","resourcePoolId":"P1"},
  "postObjectState":{"resourceId":"R1","resourcePoolId":"P1"}}"#;
const ORAN_ALARM: &str = r#"{"globalCloudID":"G","consumerSubscriptionId":"c1",
  "notificationEventType":0,"objectRef":"/o2ims-infrastructureMonitoring/v1/alarms/A1",
  "alarmEventRecordId":"A1","resourceTypeID":"T1","resourceID":"R1","alarmDefinitionID":"D1",
  "probableCauseID":"C1","alarmRaisedTime":"2026-12-05T10:00:00Z","alarmChangedTime":"",
  "alarmAcknowledgeTime":"","alarmAcknowledged":false,"perceivedSeverity":1,"extensions":{}}"#;
const PTI_DELETE: &str = r#"{"consumerSubscriptionId":"c1","notificationEventType":"2",
  "updateTime":"2026-12-05T10:00:00",
  "priorObjectState":"{\"resourceId\": \"R1\", \"resourcePoolId\": \"P1\"}"}"#;
const NETWEAVE: &str = r#"{"subscriptionId":"s1","notificationEventType":"o2ims.Resource.Updated",
  "objectRef":"/o2ims/v1/resources/node-1","resourceTypeId":"T1","resourcePoolId":"P1",
  "globalResourceId":"g1","timestamp":"2026-12-05T10:00:00Z","notificationId":"n-1",
  "callbackUrl":"https://smo.example.com/zkgate/o2ims/notify"}"#;

fn post(gw: &Gateway, headers: &[(&str, &str)], body: &str) -> Response {
    request(gw.http, "POST", PATH, headers, body.as_bytes()).expect("notification request")
}

/// The value of `zkgate_cache_notifications_total` for `dialect` and `result` of store o2.
fn counted(metrics: &str, dialect: &str, result: &str) -> u64 {
    let series =
        format!("zkgate_cache_notifications_total{{dialect=\"{dialect}\",result=\"{result}\",store=\"o2\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn problem(r: &Response, status: u16) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{status}"
    );
    assert_eq!(r.json()["status"], status);
}

#[test]
fn every_dialect_is_accepted_and_every_refusal_answered() {
    let gw = Gateway::start(CONFIG);

    // oran's reachability check before it accepts a subscription.
    let r = request(gw.http, "GET", PATH, &[AUTH], b"").unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());

    for body in [ORAN, ORAN_ALARM, PTI_DELETE, NETWEAVE] {
        let r = post(&gw, &[AUTH, JSON], body);
        assert_eq!(r.status, 204, "{body}\n{}", r.text());
        assert!(r.body.is_empty());
    }
    // oran's retry of the same notification, and pti's same body again.
    assert_eq!(post(&gw, &[AUTH, JSON], ORAN).status, 204);
    assert_eq!(post(&gw, &[AUTH, JSON], PTI_DELETE).status, 204);

    // Credentials.
    let r = post(&gw, &[JSON], ORAN);
    problem(&r, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"zkgate\"")
    );
    problem(
        &post(&gw, &[("authorization", "Bearer s3cre"), JSON], ORAN),
        401,
    );
    problem(&request(gw.http, "GET", PATH, &[], b"").unwrap(), 401);

    // Bodies that are no notification.
    problem(&post(&gw, &[AUTH, JSON], "{not json"), 400);
    problem(&post(&gw, &[AUTH, JSON], r#"{"objectRef":"/x"}"#), 400);
    problem(
        &post(&gw, &[AUTH, JSON], r#"{"notificationEventType":9}"#),
        400,
    );
    problem(
        &post(&gw, &[AUTH, ("content-type", "text/plain")], ORAN),
        415,
    );
    let big = format!(
        r#"{{"notificationEventType":1,"pad":"{}"}}"#,
        "x".repeat(5000)
    );
    problem(&post(&gw, &[AUTH, JSON], &big), 413);
    let unknown = r#"{"notificationId":"u1","notificationEventType":1,
        "objectRef":"/o2ims-infrastructureInventory/v2/widgets/W1"}"#;
    let r = post(&gw, &[AUTH, JSON], unknown);
    problem(&r, 422);
    assert!(r.json()["detail"].as_str().unwrap().contains("widgets"));
    let r = request(gw.http, "PUT", PATH, &[AUTH, JSON], ORAN.as_bytes()).unwrap();
    problem(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));

    let m = gw.metrics();
    assert_eq!(counted(&m, "oran", "applied"), 1, "{m}");
    assert_eq!(counted(&m, "oran", "duplicate"), 1);
    assert_eq!(counted(&m, "oran_alarm", "applied"), 1);
    assert_eq!(counted(&m, "netweave", "applied"), 1);
    assert_eq!(counted(&m, "pti", "applied"), 1);
    assert_eq!(counted(&m, "pti", "duplicate"), 1);
    assert_eq!(counted(&m, "oran", "rejected"), 1, "the 422");
    // 3 x 401, 3 x 400, 415, 413 (405 is not a notification).
    assert_eq!(counted(&m, "unknown", "rejected"), 8);
}

/// A gateway caching the O2 fake's inventory under the o2ims profile, with its callback
/// verifying the fake's notifier JWTs.
fn cached_gateway(fake: &O2Ims) -> Gateway {
    Gateway::start(&format!(
        r#"
upstreams:
  - {{ name: o2, backends: ["{api}"] }}
routes:
  - name: o2ims
    match: {{ path_prefix: /o2ims-infrastructureInventory }}
    upstream: o2
    plugin:
      cache: {{ profile: o2ims, store: o2 }}
  - name: o2ims-notify
    match: {{ path: /zkgate/o2ims/notify }}
    plugin:
      cache_notify:
        store: o2
        auth: {{ jwt: {{ jwks_file: "{jwks}" }} }}
"#,
        api = fake.api,
        jwks = fake.jwks_path().display(),
    ))
}

/// GETs `path` through the gateway; whether the cache answered it.
fn hit(gw: &Gateway, path: &str) -> bool {
    let r = request(gw.http, "GET", path, &[], b"").unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.header("cache-status").is_some_and(|c| c.contains("hit"))
}

#[test]
fn a_change_evicts_the_item_and_every_list_and_nothing_else() {
    let fake = O2Ims::start(
        Dialect::Oran,
        Opts {
            auth: false,
            ..Opts::default()
        },
    );
    let gw = cached_gateway(&fake);
    let b = Dialect::Oran.base();
    let callback = format!("http://{}/zkgate/o2ims/notify", gw.http);
    let sub = json!({"callback": callback, "consumerSubscriptionId": "3f20d850-af4f-a84f-fb5a-0ad585410361"});
    let r = fake.api_request(
        "POST",
        &format!("{b}/subscriptions"),
        None,
        sub.to_string().as_bytes(),
    );
    // oran checks the callback with a GET that must answer 204 before it accepts.
    assert_eq!(r.status, 201, "{}", r.text());

    let pools = fake.ids("resourcePool");
    let (p0, p1) = (&pools[0], &pools[1]);
    let list: Value = fake
        .get(&format!("{b}/resourcePools/{p0}/resources"), None)
        .json();
    let r0 = list[0]["resourceId"].as_str().unwrap().to_owned();
    let item = format!("{b}/resourcePools/{p0}/resources/{r0}");
    let evicted = [
        item.clone(),
        format!("{b}/resourcePools/{p0}/resources"),
        format!("{b}/resourcePools/{p0}/resources?fields=resourceId"),
    ];
    let kept = [
        format!("{b}/resourcePools/{p1}"),
        format!("{b}/resourcePools/{p1}/resources"),
        format!("{b}/resourceTypes"),
    ];
    for path in evicted.iter().chain(&kept) {
        hit(&gw, path);
        assert!(hit(&gw, path), "{path} is not cached");
    }

    let changed = fake.mutate(json!({"kind": "resource", "id": r0, "op": "modify", "wait": true}));
    assert_eq!(changed["notified"], json!(1), "{changed}");
    for path in &evicted {
        assert!(!hit(&gw, path), "{path} survived the notification");
        // (Stored again only past the epoch slack, which covers answers in flight across the
        // notification: not asserted here.)
    }
    for path in &kept {
        assert!(
            hit(&gw, path),
            "{path} was evicted by another object's change"
        );
    }

    // An objectRef outside every O2 base evicts nothing (and is refused with 422).
    fake.notify(
        json!({"raw": {"notificationId": "x1", "notificationEventType": 1,
        "objectRef": "/o2ims-infrastructureInventory/v2/widgets/W1"}, "wait": true}),
    );
    for path in &kept {
        assert!(hit(&gw, path), "{path} was evicted by an unknown kind");
    }

    // A delivery sent twice with one notificationId is applied once.
    fake.notify(
        json!({"kind": "resource", "id": r0, "op": "modify", "duplicate": true, "wait": true}),
    );
    for path in &kept {
        assert!(
            hit(&gw, path),
            "{path} was evicted by another object's change"
        );
    }
    let m = gw.metrics();
    assert_eq!(counted(&m, "oran", "applied"), 2, "{m}");
    assert_eq!(counted(&m, "oran", "duplicate"), 1, "{m}");
    // oran sends a refused notification again (anything above 204 is a failure), and it is
    // refused each time.
    assert!(counted(&m, "oran", "rejected") >= 1, "{m}");
}
