//! The game rules node with a real ZooKeeper: two replicas (two configs built from the same
//! text, each with its own watcher, as two gateways have) route by the YAML rules while the node
//! is missing, both take every version written, keep the last rules through a ZooKeeper
//! restart and take the next version once it is back, and return to the YAML rules when the
//! node is deleted. A gateway's /metrics says which node version serves and whether the last
//! one was refused. And `zkgate register --meta inst_id=N` gives a discovered backend the
//! instance id game rules pick by, as the gateway's `/upstreams` shows.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pingora::services::background::BackgroundService;
use zkgate::game::codec::ServerId;
use zkgate::game::config::GameSettings;
use zkgate::game::rules_node::RulesNodeService;
use zkgate::snapshot::Snapshot;
use zkgate_discovery::testkit::ZkServer;
use zookeeper_client as zk;

const NODE: &str = "/zkgate/game/rules";

fn config(zk: &str) -> String {
    format!(
        r#"
zookeeper: {{ connect: "{zk}", session_timeout: 4s }}
listeners:
  - name: game
    listen: "127.0.0.1:7000"
    game: {{ rules: [{{ server_type: 1, upstream: lobby }}], rules_node: {NODE} }}
upstreams:
  - {{ name: lobby, backends: ["127.0.0.1:7101"] }}
  - {{ name: battle, backends: ["127.0.0.1:7201"] }}
  - {{ name: rooms, backends: ["127.0.0.1:7301 inst_id=3"] }}
"#
    )
}

/// One replica: its config and its running watcher (stopped when the sender drops).
struct Replica {
    snapshot: Snapshot,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Replica {
    fn start(zk: &str) -> Replica {
        let snapshot = zkgate::config::load_str(&config(zk), None).unwrap();
        let feeds = vec![snapshot.settings.listeners[0]
            .game
            .as_ref()
            .unwrap()
            .rules_feed()
            .unwrap()
            .clone()];
        let ensemble = snapshot.settings.zookeeper.clone().unwrap();
        let service = RulesNodeService::new(ensemble, feeds).unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move { service.start(shutdown).await });
        Replica {
            snapshot,
            _stop: stop,
        }
    }

    fn game(&self) -> &Arc<GameSettings> {
        self.snapshot.settings.listeners[0].game.as_ref().unwrap()
    }

    /// The upstream serverType `t` in world 2 goes to, `-` for none.
    fn route(&self, t: u8) -> String {
        self.game()
            .current_rules()
            .route(ServerId::new(false, 2, t, 0))
            .map_or("-".into(), |r| r.upstream.name.to_string())
    }
}

async fn until(replicas: &[&Replica], t: u8, upstream: &str) {
    for _ in 0..400 {
        if replicas.iter().all(|r| r.route(t) == upstream) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let got: Vec<String> = replicas.iter().map(|r| r.route(t)).collect();
    panic!("type {t} still routes to {got:?}, not {upstream}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_written_to_the_node_reach_every_replica_and_survive_a_zookeeper_restart() {
    let mut server = ZkServer::start();
    let hosts = server.connect_string();
    let (a, b) = (Replica::start(&hosts), Replica::start(&hosts));
    // No node yet: the YAML rules.
    assert_eq!(
        (a.route(1), b.route(1), a.route(2)),
        ("lobby".into(), "lobby".into(), "-".into())
    );

    let client = zk::Client::connect(&hosts).await.unwrap();
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    client.mkdir("/zkgate/game", &open).await.unwrap();
    let v1 = br#"[{"server_type": 1, "upstream": "battle"}, {"server_type": 2, "world": 2, "upstream": "rooms", "strategy": "instance"}]"#;
    client.create(NODE, v1, &open).await.unwrap();
    until(&[&a, &b], 1, "battle").await;
    until(&[&a, &b], 2, "rooms").await;

    // ZooKeeper gone: the last rules keep serving; back, the next version arrives.
    server.kill();
    assert_eq!((a.route(1), b.route(1)), ("battle".into(), "battle".into()));
    server.restart();
    let client = zk::Client::connect(&hosts).await.unwrap();
    client
        .set_data(NODE, br#"[{"server_type": 1, "upstream": "rooms"}]"#, None)
        .await
        .unwrap();
    until(&[&a, &b], 1, "rooms").await;
    assert_eq!(a.route(2), "-", "version 2 has no rule for type 2");

    // Deleted: the YAML rules again.
    client.delete(NODE, None).await.unwrap();
    until(&[&a, &b], 1, "lobby").await;
}

#[test]
fn the_gateway_reports_the_rules_node_version_in_use_and_a_refused_one_on_metrics() {
    let server = ZkServer::start();
    let hosts = server.connect_string();
    let gw = Gateway::start(&format!(
        r#"
zookeeper: {{ connect: "{hosts}", session_timeout: 4s }}
listeners:
  - name: arena
    listen: "{{HTTP}}"
    game: {{ rules: [{{ server_type: 1, upstream: lobby }}], rules_node: {NODE} }}
upstreams:
  - {{ name: lobby, backends: ["127.0.0.1:7101"] }}
  - {{ name: battle, backends: ["127.0.0.1:7201"] }}
"#
    ));
    let _log = game::LogOnPanic(&gw);
    let gauges = || {
        let m = gw.metrics();
        let labels = [("listener", "arena")];
        (
            game::metric_sum(&m, "zkgate_game_rules_version", &labels),
            game::metric_sum(&m, "zkgate_game_rules_refused", &labels),
            m.contains("zkgate_game_rules_version{listener=\"arena\"}"),
        )
    };
    let until = |want: (f64, f64)| {
        assert!(
            eventually(Duration::from_secs(15), || {
                let (v, r, present) = gauges();
                present && (v, r) == want
            }),
            "never (version, refused) = {want:?}: {:?}",
            gauges()
        );
    };
    // No node: the YAML rules, nothing refused.
    until((-1.0, 0.0));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(zk::Client::connect(&hosts)).unwrap();
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    rt.block_on(client.mkdir("/zkgate/game", &open)).unwrap();
    let set = |data: &[u8]| {
        rt.block_on(client.set_data(NODE, data, None)).unwrap();
    };
    rt.block_on(client.create(
        NODE,
        br#"[{"server_type": 1, "upstream": "battle"}]"#,
        &open,
    ))
    .unwrap();
    until((0.0, 0.0));
    // A version naming an unknown upstream is refused, and version 0 keeps serving; the next
    // good one clears it; one that is not JSON is refused in turn.
    set(br#"[{"server_type": 1, "upstream": "gone"}]"#);
    until((0.0, 1.0));
    set(br#"[{"server_type": 2, "upstream": "lobby"}]"#);
    until((2.0, 0.0));
    set(b"{not json");
    until((2.0, 1.0));
    set(br#"[{"server_type": 1, "upstream": "lobby"}]"#);
    until((4.0, 0.0));
    // Deleted: the YAML rules again.
    rt.block_on(client.delete(NODE, None)).unwrap();
    until((-1.0, 0.0));
}

#[test]
fn a_backend_registered_with_an_inst_id_carries_it_and_its_node_name() {
    let server = ZkServer::start();
    let hosts = server.connect_string();
    let log = std::fs::File::create(server.dir.path().join("register.log")).unwrap();
    let _registrar = KillOnDrop(
        std::process::Command::new(bin())
            .args([
                "register",
                "--zk",
                &hosts,
                "--service",
                "rooms",
                "--addr",
                "127.0.0.1:7301",
            ])
            .args(["--meta", "inst_id=3", "--meta", "room=blue"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let gw = Gateway::start(&format!(
        r#"
zookeeper: {{ connect: "{hosts}", session_timeout: 4s }}
upstreams: [{{ name: rooms, zookeeper: {{ service: rooms }} }}]
routes: [{{ name: r, upstream: rooms }}]
"#
    ));
    let backend = || get(gw.admin, "/upstreams").json()["upstreams"][0]["backends"][0].clone();
    assert!(
        eventually(Duration::from_secs(15), || backend()["addr"]
            == "127.0.0.1:7301"),
        "never discovered: {}\n{}",
        backend(),
        gw.log()
    );
    let b = backend();
    assert_eq!(
        (&b["name"], &b["inst_id"]),
        (&serde_json::json!("127.0.0.1:7301"), &serde_json::json!(3))
    );
}
