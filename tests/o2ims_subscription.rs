//! The gateway's own O2 subscription (`o2ims.subscription`) with three replicas sharing one
//! store through a real ZooKeeper, in front of the test O2 server (oran dialect): exactly one
//! subscription at the O-Cloud whatever the number of replicas; a subscription the O-Cloud loses
//! is noticed and made again, with the store degraded (shorter lifetimes) while it is missing; a
//! killed owner's subscription is adopted by the next owner (no second POST); an owner stopping
//! gracefully hands it over while others run, and the last one removes it.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::o2ims::{is_hit, replica_config, replica_origin, O2Ims, Receiver};
use common::{eventually, Gateway};
use serde_json::{json, Value};
use zkgate_discovery::testkit::ZkServer;

/// Generous bounds for what takes a few check periods (500 ms) or a session timeout (2 s) on
/// a shared machine; no timing is asserted.
const WITHIN: Duration = Duration::from_secs(30);

/// [`replica_config`] with the gateway's own subscription: every replica names the same
/// callback (`callback`, as replicas behind one load balancer would), checks every 500 ms, and
/// caps lifetimes at 1 s while degraded.
fn config(zk: &str, o2: &O2Ims, callback: &str) -> String {
    let base = replica_config(zk, o2);
    let replicas = "replicas: { mode: zookeeper, epoch_slack: 200ms }";
    assert!(base.contains(replicas), "replica_config changed: {base}");
    base.replace(
        replicas,
        &format!(
            "{replicas}\n        degraded_ttl: 1s\n        o2ims:\n          subscription: \
             {{ callback: \"{callback}\", check_every: 500ms }}"
        ),
    )
}

/// The store's `subscription` object in the replica's `GET /cache`.
fn subscription(gw: &Gateway) -> Value {
    let r = common::get(gw.admin, "/cache");
    let all = r.json();
    all["stores"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["store"] == "o2"))
        .map(|s| s["subscription"].clone())
        .unwrap_or(Value::Null)
}

fn degraded(gw: &Gateway) -> bool {
    let all = common::get(gw.admin, "/cache").json();
    all["stores"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["store"] == "o2"))
        .is_some_and(|s| s["degraded"] == true)
}

fn state(gw: &Gateway) -> String {
    subscription(gw)["state"].as_str().unwrap_or("").to_owned()
}

/// The one-hot gauge's value for `state` of store o2.
fn gauge(gw: &Gateway, state: &str) -> Option<u64> {
    gw.metrics()
        .lines()
        .find(|l| {
            l.starts_with("zkgate_cache_subscription_state{")
                && l.contains(r#"store="o2""#)
                && l.contains(&format!(r#"state="{state}""#))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The inventory subscriptions the fake holds.
fn at_origin(o2: &O2Ims) -> Vec<Value> {
    o2.subscriptions()
        .into_iter()
        .filter(|s| s["family"] == "inventory")
        .collect()
}

fn posts(o2: &O2Ims) -> u64 {
    o2.count_method("POST", &format!("{}/subscriptions", o2.base()))
}

/// Waits until one replica owns an active subscription and the others follow it; returns the
/// owner's index and the subscription id.
fn settled(gws: &[&Gateway]) -> (usize, String) {
    let mut last = Vec::new();
    let ok = eventually(WITHIN, || {
        last = gws.iter().map(|g| subscription(g)).collect();
        let active: Vec<usize> = (0..gws.len())
            .filter(|i| last[*i]["state"] == "active")
            .collect();
        active.len() == 1
            && last.iter().filter(|s| s["state"] == "following").count() == gws.len() - 1
    });
    assert!(ok, "no single active owner with followers: {last:?}");
    let owner = (0..gws.len())
        .find(|i| last[*i]["state"] == "active")
        .unwrap();
    let id = last[owner]["id"].as_str().unwrap().to_owned();
    (owner, id)
}

/// The `ttl=` of a `Cache-Status` hit.
fn hit_ttl(r: &common::Response) -> Option<i64> {
    let status = r.header("cache-status")?;
    status
        .split(';')
        .find_map(|p| p.trim().strip_prefix("ttl=")?.parse().ok())
}

#[test]
fn one_subscription_for_three_replicas_made_again_when_the_o_cloud_loses_it() {
    let zk = ZkServer::start();
    let o2 = replica_origin();
    let smo = Receiver::start();
    let callback = smo.url("/notify");
    let cfg = config(&zk.connect_string(), &o2, &callback);
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&cfg)).collect();
    let refs: Vec<&Gateway> = gws.iter().collect();

    let (owner, id) = settled(&refs);
    let subs = at_origin(&o2);
    assert_eq!(subs.len(), 1, "subscriptions at the O-Cloud: {subs:?}");
    assert_eq!(subs[0]["id"], id.as_str());
    assert_eq!(subs[0]["record"]["callback"], callback.as_str());
    assert_eq!(posts(&o2), 1, "more than one POST for three replicas");
    // The O-Cloud checked the callback before it said 201 (oran's reachability GET).
    assert!(smo.requests().iter().any(|r| r.method == "GET"));
    assert_eq!(gauge(&gws[owner], "active"), Some(1));
    assert_eq!(gauge(&gws[owner], "lost"), Some(0));
    assert!(!degraded(&gws[owner]));

    // An entry stored with the profile's lifetime (5 minutes for a pool).
    let pool = o2.ids("resourcePool")[0].clone();
    let item = format!("{}/resourcePools/{pool}", o2.base());
    let gw = &gws[owner];
    assert_eq!(gw.get(&item).status, 200);
    let hit = gw.get(&item);
    assert!(is_hit(&hit), "{:?}", hit.header("cache-status"));
    assert!(
        hit_ttl(&hit).unwrap() > 60,
        "{:?}",
        hit.header("cache-status")
    );

    // The O-Cloud forgets every subscription and refuses new ones for now.
    o2.behave(json!({ "path_regex": "/subscriptions$", "status": 503 }));
    assert_eq!(o2.restart(), 1);
    assert!(
        eventually(WITHIN, || state(gw) == "lost"),
        "the loss was not noticed: {}",
        subscription(gw)
    );
    assert_eq!(gauge(gw, "lost"), Some(1));
    assert_eq!(gauge(gw, "active"), Some(0));
    // Past 2 x check_every without a subscription the store is degraded...
    assert!(
        eventually(WITHIN, || degraded(gw)),
        "never degraded while lost: {}",
        subscription(gw)
    );
    // ... and a hit is only kept for degraded_ttl (1 s): the old entry, older than that, is
    // fetched again and stored with the capped lifetime.
    let capped = eventually(WITHIN, || {
        let r = gw.get(&item);
        is_hit(&r) && hit_ttl(&r).is_some_and(|t| t <= 1)
    });
    assert!(capped, "no hit with a degraded lifetime");
    for other in [&gws[(owner + 1) % 3], &gws[(owner + 2) % 3]] {
        assert_eq!(state(other), "following");
    }

    // The O-Cloud takes subscriptions again: made again, once, and the store is healthy.
    o2.behave(json!({}));
    let mut last = Value::Null;
    let back = eventually(WITHIN, || {
        last = subscription(gw);
        last["state"] == "active" && !degraded(gw)
    });
    assert!(back, "not subscribed again: {last}");
    let subs = at_origin(&o2);
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(last["id"], subs[0]["id"]);
    assert_ne!(last["id"], id.as_str(), "the lost id was kept");
    assert_eq!(gauge(gw, "active"), Some(1));
    assert!(
        eventually(WITHIN, || gws.iter().all(|g| !degraded(g))),
        "followers stay degraded"
    );
}

#[test]
fn a_killed_owner_is_adopted_and_the_last_graceful_stop_deletes() {
    let zk = ZkServer::start();
    let o2 = replica_origin();
    let smo = Receiver::start();
    let cfg = config(&zk.connect_string(), &o2, &smo.url("/notify"));
    let mut gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&cfg)).collect();
    let (owner, id) = settled(&gws.iter().collect::<Vec<_>>());
    assert_eq!(posts(&o2), 1);

    // SIGKILL: no DELETE, the owner node goes with the session (2 s), the next owner adopts.
    let mut killed = gws.remove(owner);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let (owner, adopted) = settled(&gws.iter().collect::<Vec<_>>());
    assert_eq!(adopted, id, "the next owner did not adopt the subscription");
    assert_eq!(posts(&o2), 1, "the next owner subscribed again");
    assert_eq!(at_origin(&o2).len(), 1);
    let deletes =
        |o2: &O2Ims| o2.count_method("DELETE", &format!("{}/subscriptions/{id}", o2.base()));
    assert_eq!(deletes(&o2), 0);

    // A graceful stop of the owner while another replica runs hands the subscription over.
    let stopping = gws.remove(owner);
    stopping.signal("TERM");
    let mut stopping = stopping;
    stopping.child.wait().unwrap();
    let (last, kept) = settled(&gws.iter().collect::<Vec<_>>());
    assert_eq!(kept, id);
    assert_eq!(
        deletes(&o2),
        0,
        "a replica still runs: the subscription must stay"
    );
    assert_eq!(posts(&o2), 1);

    // The last replica's graceful stop removes it at the O-Cloud.
    let mut final_gw = gws.remove(last);
    final_gw.signal("TERM");
    final_gw.child.wait().unwrap();
    assert_eq!(deletes(&o2), 1);
    assert!(at_origin(&o2).is_empty(), "{:?}", at_origin(&o2));
}
