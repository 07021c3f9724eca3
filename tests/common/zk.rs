//! ZooKeeper-side helpers: instance data, a blocking client for the benches, and how long a
//! membership change takes to reach a client of the gateway.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Conn;

/// The native JSON instance data for a backend at `addr`.
pub fn instance_json(addr: SocketAddr) -> Vec<u8> {
    format!(r#"{{"host":"{}","port":{}}}"#, addr.ip(), addr.port()).into_bytes()
}

/// The name of the echo backend that answered a GET of `target` on `c`.
pub fn backend_of(c: &mut Conn, target: &str) -> String {
    let r = c.get(target).expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["backend"].as_str().unwrap_or("").to_owned()
}

/// After backend `name` joined a round-robin set at `since`: the time until a GET of `target`
/// first goes to it (round robin sends it the first or the second request once it is in).
pub fn time_to_join(c: &mut Conn, target: &str, name: &str, since: Instant) -> Duration {
    while backend_of(c, target) != name {
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{name} never served in 5 s"
        );
    }
    since.elapsed()
}

/// After a backend left a round-robin set at `since`, leaving only `rest`: the time of the
/// first of two GETs of `target` in a row answered by `rest` (with two backends in the set one
/// client never sees that, so the pair marks the new set in force).
pub fn time_to_leave(c: &mut Conn, target: &str, rest: &str, since: Instant) -> Duration {
    let mut last = String::new();
    let mut when = since.elapsed();
    loop {
        let now = backend_of(c, target);
        if now == rest && last == rest {
            return when;
        }
        if now == rest {
            when = since.elapsed();
        }
        last = now;
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "the leaving backend still served after 5 s"
        );
    }
}

/// A ZooKeeper client for code that is not async itself (the benches), with the runtime that
/// drives it.
pub fn blocking_zk_client(connect: &str) -> (tokio::runtime::Runtime, zookeeper_client::Client) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt
        .block_on(zookeeper_client::Client::connect(connect))
        .expect("connect to ZooKeeper");
    (rt, client)
}
