//! Propagation from ZooKeeper to traffic: the time from a znode create or delete to the first
//! request the gateway routes by the new backend set, over 200 changes. Prints p50 and p99.
//! `cargo bench --bench propagation` (`make bench-propagation`); needs Debian's `zookeeper`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{instance_json, percentile, time_to_join, time_to_leave, Backend, Conn, Gateway};
use zkgate_discovery::testkit::ZkServer;
use zookeeper_client as zk;

/// `cargo bench` passes `--bench`; under `cargo test` this runs as a short smoke test.
fn changes() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        200
    } else {
        10
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let server = ZkServer::start();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (rt, client) = common::blocking_zk_client(&server.connect_string());
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    rt.block_on(client.mkdir("/zkgate/services/api", &persistent))
        .expect("mkdir");
    rt.block_on(client.create("/zkgate/services/api/a", &instance_json(a.addr), &ephemeral))
        .expect("create a");
    let gw = Gateway::start(&format!(
        "zookeeper: {{ connect: \"{}\" }}\nupstreams: [{{ name: api, zookeeper: {{ service: api }} }}]\nroutes: [{{ name: api, upstream: api }}]\n",
        server.connect_string()
    ));
    let mut conn = Conn::open(gw.http).expect("connection");
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for i in 0..changes() {
        let t = Instant::now();
        if i % 2 == 0 {
            rt.block_on(client.create(
                "/zkgate/services/api/b",
                &instance_json(b.addr),
                &ephemeral,
            ))
            .expect("create b");
            joins.push(time_to_join(&mut conn, "/x", "b", t));
        } else {
            rt.block_on(client.delete("/zkgate/services/api/b", None))
                .expect("delete b");
            leaves.push(time_to_leave(&mut conn, "/x", "a", t));
        }
    }
    for (what, mut v) in [("create -> routed", joins), ("delete -> routed", leaves)] {
        v.sort();
        println!(
            "propagation {what:<18} n={:<4} p50={:>8.2?} p99={:>8.2?} max={:>8.2?}",
            v.len(),
            percentile(&v, 0.50),
            percentile(&v, 0.99),
            v[v.len() - 1]
        );
    }
}
