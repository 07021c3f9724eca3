//! `zkgate register` against a real ZooKeeper: registers, follows a health URL, survives a
//! session expiry, and deletes its node on SIGTERM instead of leaving it for the session timeout.
// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use zkgate_discovery::testkit::ZkServer;
use zookeeper_client as zk;

fn registrar(zk: &ZkServer, addr: &str, extra: &[&str]) -> KillOnDrop {
    let log = std::fs::File::create(
        zk.dir
            .path()
            .join(format!("register-{}.log", addr.replace(':', "_"))),
    )
    .unwrap();
    KillOnDrop(
        Command::new(bin())
            .args([
                "register",
                "--zk",
                &zk.connect_string(),
                "--service",
                "api",
                "--addr",
                addr,
                "--weight",
                "3",
                "--zone",
                "a",
            ])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn node(client: &zk::Client, path: &str) -> Option<serde_json::Value> {
    match client.get_data(path).await {
        Ok((data, _)) => serde_json::from_slice(&data).ok(),
        Err(_) => None,
    }
}

async fn until_node(client: &zk::Client, path: &str, present: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if node(client, path).await.is_some() == present {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_withdraws_on_failed_health_and_deletes_on_sigterm() {
    let mut server = ZkServer::start();
    let client = zk::Client::connect(&server.connect_string()).await.unwrap();

    // A long session: the node disappearing quickly on SIGTERM is the explicit delete.
    let mut plain = registrar(&server, "127.0.0.1:9301", &["--session-timeout", "20s"]);
    let path = "/zkgate/services/api/127.0.0.1:9301";
    assert!(until_node(&client, path, true, Duration::from_secs(10)).await);
    let data = node(&client, path).await.unwrap();
    assert_eq!(
        data,
        serde_json::json!({"host": "127.0.0.1", "port": 9301, "weight": 3, "zone": "a"})
    );
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &plain.0.id().to_string()])
        .status()
        .unwrap();
    assert!(
        until_node(&client, path, false, Duration::from_secs(3)).await,
        "node left behind after SIGTERM"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(plain.0.wait().unwrap().success());

    // Health: registered only while the URL answers 2xx.
    let port = free_port();
    let health = format!("http://127.0.0.1:{port}/status/200");
    let _checked = registrar(
        &server,
        "127.0.0.1:9302",
        &[
            "--health",
            &health,
            "--health-interval",
            "200ms",
            "--session-timeout",
            "2s",
        ],
    );
    let path = "/zkgate/services/api/127.0.0.1:9302";
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        node(&client, path).await.is_none(),
        "registered while its health URL is down"
    );
    let backend = Backend::start_at("health", format!("127.0.0.1:{port}").parse().unwrap());
    assert!(until_node(&client, path, true, Duration::from_secs(5)).await);
    drop(backend);
    assert!(
        until_node(&client, path, false, Duration::from_secs(5)).await,
        "not withdrawn when health failed"
    );
    let backend = Backend::start_at("health", format!("127.0.0.1:{port}").parse().unwrap());
    assert!(until_node(&client, path, true, Duration::from_secs(5)).await);

    // Session expiry: ZooKeeper down for longer than the 2 s session; the node is re-created by
    // a new session.
    let owner_before = client.get_data(path).await.unwrap().1.ephemeral_owner;
    drop(client);
    server.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.restart();
    let client = zk::Client::connect(&server.connect_string()).await.unwrap();
    // The server expires the old session some seconds after it restarts, which removes the old
    // node; the registrar's new session puts it back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        until_node(&client, path, true, Duration::from_secs(15)).await,
        "not re-created after expiry:\n{}",
        server.log()
    );
    let owner_after = client.get_data(path).await.unwrap().1.ephemeral_owner;
    assert!(
        owner_after != 0 && owner_after != owner_before,
        "{owner_before} -> {owner_after}"
    );
    drop(backend);
}
