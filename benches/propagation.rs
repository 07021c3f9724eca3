//! Propagation from ZooKeeper to traffic: the time from a znode create or delete to the first
//! request the gateway routes by the new backend set, over 200 changes. Prints p50 and p99.
//! `cargo bench --bench propagation` (`make bench-propagation`); needs Debian's `zookeeper`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Backend, Conn, Gateway};
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

fn backend_of(c: &mut Conn) -> String {
    let r = c.get("/x").expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["backend"].as_str().unwrap_or("").to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let server = ZkServer::start();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt
        .block_on(zk::Client::connect(&server.connect_string()))
        .expect("connect");
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let json = |addr: std::net::SocketAddr| {
        format!(r#"{{"host":"{}","port":{}}}"#, addr.ip(), addr.port()).into_bytes()
    };
    rt.block_on(client.mkdir("/zkgate/services/api", &persistent))
        .expect("mkdir");
    rt.block_on(client.create("/zkgate/services/api/a", &json(a.addr), &ephemeral))
        .expect("create a");
    let gw = Gateway::start(&format!(
        "zookeeper: {{ connect: \"{}\" }}\nupstreams: [{{ name: api, zookeeper: {{ service: api }} }}]\nroutes: [{{ name: api, upstream: api }}]\n",
        server.connect_string()
    ));
    let mut conn = Conn::open(gw.http).expect("connection");
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    let deadline = Duration::from_secs(5);
    for i in 0..changes() {
        if i % 2 == 0 {
            // b joins: round robin over {a, b} sends it the first or second request.
            let t = Instant::now();
            rt.block_on(client.create("/zkgate/services/api/b", &json(b.addr), &ephemeral))
                .expect("create b");
            while backend_of(&mut conn) != "b" {
                assert!(t.elapsed() < deadline, "b never served");
            }
            joins.push(t.elapsed());
        } else {
            // b leaves: the new set is in force once two requests in a row go to a (with
            // round robin over {a, b} one client never sees that).
            let t = Instant::now();
            rt.block_on(client.delete("/zkgate/services/api/b", None))
                .expect("delete b");
            let mut last = String::new();
            let mut when = t.elapsed();
            loop {
                let now = backend_of(&mut conn);
                if now == "a" && last == "a" {
                    break;
                }
                if now == "a" {
                    when = t.elapsed();
                }
                last = now;
                assert!(t.elapsed() < deadline, "b never left");
            }
            leaves.push(when);
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
