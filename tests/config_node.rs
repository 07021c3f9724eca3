//! The config node end to end with a real ZooKeeper: `config push` validates and writes with a
//! version check, two gateways started with `-c zk://...` follow every valid change without a
//! failed request, and an invalid node written by another client is rejected while they keep
//! serving.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use zkgate_discovery::testkit::ZkServer;
use zookeeper_client as zk;

/// One config for every replica: each one's listeners come from its environment.
fn shared_config(backend: std::net::SocketAddr, extra_route: &str) -> String {
    format!(
        r#"
server:
  threads: 1
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  upgrade_sock: "${{env:UPGRADE_SOCK:-/tmp/zkgate-upgrade.sock}}"
admin: {{ listen: "${{env:ADMIN_LISTEN:-127.0.0.1:9901}}" }}
listeners: [{{ name: web, listen: "${{env:HTTP_LISTEN:-127.0.0.1:8080}}" }}]
upstreams: [{{ name: app, backends: ["{backend}"] }}]
routes:
{extra_route}  - {{ name: app, upstream: app }}
"#
    )
}

fn zkgate(args: &[&str], file_text: Option<&str>) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("push.yaml");
    let mut cmd = Command::new(bin());
    if let Some(text) = file_text {
        std::fs::write(&file, text).expect("write");
        cmd.args(["config", "push", "-c"]).arg(&file);
    }
    cmd.args(args).output().expect("run zkgate")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn who(gw: &Gateway) -> String {
    let r = gw.get("/x");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    r.json()["backend"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_configs_reach_every_replica_and_invalid_ones_never_do() {
    let server = ZkServer::start();
    let zk_hosts = server.connect_string();
    let (a, b) = (Backend::start("a"), Backend::start("b"));

    // An invalid first push writes nothing.
    let bad = shared_config(
        a.addr,
        "  - { name: bad, match: { path_regex: \"(\" }, upstream: nowhere }\n",
    );
    let out = zkgate(&["--zk", &zk_hosts], Some(&bad));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("routes[0].match.path_regex") && err.contains("routes[0].upstream"),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    let got = zkgate(&["config", "get", "--zk", &zk_hosts], None);
    assert_eq!(got.status.code(), Some(2), "the node must not exist yet");

    let out = zkgate(&["--zk", &zk_hosts], Some(&shared_config(a.addr, "")));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("created at version 0"),
        "{}",
        text(&out.stdout)
    );

    let url = format!("zk://{zk_hosts}/zkgate/config");
    let gw1 = Gateway::start_with_env(&url, &[]);
    let gw2 = Gateway::start_with_env(&url, &[]);
    assert_eq!(who(&gw1), "a");
    assert_eq!(who(&gw2), "a");

    // A valid push reaches both replicas, under traffic, without a failed request.
    // (The pauses make sure traffic runs on both sides of the change.)
    let load = Load::start(gw1.http, &["/load"], 2);
    std::thread::sleep(Duration::from_millis(300));
    let out = zkgate(&["--zk", &zk_hosts], Some(&shared_config(b.addr, "")));
    assert!(
        text(&out.stdout).contains("now version 1"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for gw in [&gw1, &gw2] {
        assert!(
            eventually(Duration::from_secs(5), || who(gw) == "b"),
            "{}",
            gw.log()
        );
        // The gauge is set just after the new config serves: wait for it as well.
        assert!(eventually(Duration::from_secs(5), || gw
            .metrics()
            .contains("zkgate_config_node_version 1")));
    }
    std::thread::sleep(Duration::from_millis(300));
    load.finish_without_failures(20);

    // Pushing the same file again changes nothing; a push based on a stale version is refused.
    let out = zkgate(&["--zk", &zk_hosts], Some(&shared_config(b.addr, "")));
    assert!(
        text(&out.stdout).contains("already holds this config (version 1)"),
        "{}",
        text(&out.stdout)
    );
    let out = zkgate(
        &["--zk", &zk_hosts, "--expect-version", "0"],
        Some(&shared_config(a.addr, "")),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("at version 1, not 0"),
        "{}",
        text(&out.stderr)
    );

    // Another client writes junk: both gateways reject it and keep serving what they had.
    let client = zk::Client::connect(&zk_hosts).await.unwrap();
    client
        .set_data(
            "/zkgate/config",
            b"routes: [ { name: x, upstream: missing } ]\n",
            None,
        )
        .await
        .unwrap();
    for gw in [&gw1, &gw2] {
        assert!(
            eventually(Duration::from_secs(5), || gw
                .metrics()
                .contains("zkgate_config_reloads_total{result=\"failure\"} 1")),
            "{}",
            gw.log()
        );
        assert_eq!(who(gw), "b");
        assert!(gw.log().contains("routes[0].upstream"), "{}", gw.log());
    }

    // SIGHUP re-reads the node; it is still invalid and still changes nothing, and the process
    // lives on (SIGHUP's default action would end it).
    gw1.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gw1
        .metrics()
        .contains("zkgate_config_reloads_total{result=\"failure\"} 2")));
    assert_eq!(who(&gw1), "b");

    // The next valid push (based on the junk's version) heals both.
    let got = zkgate(&["config", "get", "--zk", &zk_hosts], None);
    assert!(
        text(&got.stderr).contains("version 2"),
        "{}",
        text(&got.stderr)
    );
    assert!(text(&got.stdout).contains("missing"));
    let out = zkgate(
        &["--zk", &zk_hosts, "--expect-version", "2"],
        Some(&shared_config(a.addr, "")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for gw in [&gw1, &gw2] {
        assert!(eventually(Duration::from_secs(5), || who(gw) == "a"));
        assert!(eventually(Duration::from_secs(5), || gw
            .metrics()
            .contains("zkgate_config_node_version 3")));
    }
}

#[test]
fn a_digest_protected_node_is_readable_by_its_identity_only() {
    let server = ZkServer::start();
    let zk_hosts = server.connect_string();
    let a = Backend::start("a");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, shared_config(a.addr, "")).expect("write");
    let as_gw = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env("ZKGATE_ZK_PASSWORD", "s3cret")
            .output()
            .expect("run zkgate")
    };
    let node = ["--node", "/secure/config"];
    let out = as_gw(
        &[
            &[
                "config",
                "push",
                "-c",
                file.to_str().unwrap(),
                "--zk",
                &zk_hosts,
                "--zk-user",
                "gw",
            ][..],
            &node[..],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let anonymous = zkgate(
        &[&["config", "get", "--zk", &zk_hosts][..], &node[..]].concat(),
        None,
    );
    assert_eq!(anonymous.status.code(), Some(2));
    assert!(
        text(&anonymous.stderr).contains("not authorized"),
        "{}",
        text(&anonymous.stderr)
    );
    let got = as_gw(
        &[
            &["config", "get", "--zk", &zk_hosts, "--zk-user", "gw"][..],
            &node[..],
        ]
        .concat(),
    );
    assert!(
        text(&got.stdout).contains(&a.addr.to_string()),
        "{}",
        text(&got.stderr)
    );

    let gw = Gateway::start_with_env(
        &format!("zk://gw@{zk_hosts}/secure/config"),
        &[("ZKGATE_ZK_PASSWORD", "s3cret")],
    );
    assert_eq!(who(&gw), "a");
    // The password never reaches the log or /config.
    assert!(!gw.log().contains("s3cret"));
    assert!(!get(gw.admin, "/config").text().contains("s3cret"));
}
