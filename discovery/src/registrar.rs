//! Keeps one instance registered for a backend that has no ZooKeeper client of its own: an
//! ephemeral native-JSON node, re-created after a session expires, withdrawn while an optional
//! health URL fails, and deleted on shutdown so that gateways see the removal at once instead of
//! after the session timeout. A write that fails on a broken connection is retried on the same
//! session once the client has reconnected: giving the session up would delete the node.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use zookeeper_client as zk;

use crate::backoff::Backoff;
use crate::ensemble::Ensemble;
use crate::failure::{classify, connected_again, Failure};

#[derive(Debug, Clone)]
pub struct RegisterSpec {
    pub ensemble: Ensemble,
    /// The service directory, e.g. `/zkgate/services/api`.
    pub service_path: String,
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub zone: Option<String>,
    /// Written as the native instance's `metadata` (e.g. `inst_id` for game rules).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// `http://host:port/path`: the instance is registered only while it answers 2xx.
    pub health: Option<String>,
    pub health_interval: Duration,
}

impl RegisterSpec {
    pub fn node(&self) -> String {
        format!("{}/{}:{}", self.service_path, self.host, self.port)
    }

    fn data(&self) -> Vec<u8> {
        let mut v =
            serde_json::json!({ "host": self.host, "port": self.port, "weight": self.weight });
        if let Some(z) = &self.zone {
            v["zone"] = serde_json::Value::String(z.clone());
        }
        if !self.metadata.is_empty() {
            v["metadata"] = serde_json::json!(self.metadata);
        }
        v.to_string().into_bytes()
    }
}

/// Runs until `shutdown` turns true, then deletes the node.
pub async fn register(spec: RegisterSpec, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new();
    loop {
        let mut connected = false;
        match session(&spec, &mut shutdown, &mut connected).await {
            Ok(()) => return,
            Err(e) => log::warn!("registrar {}: {e}; reconnecting", spec.node()),
        }
        if connected {
            backoff.reset();
        }
        if !backoff.wait(&mut shutdown).await {
            return;
        }
    }
}

async fn session(
    spec: &RegisterSpec,
    shutdown: &mut watch::Receiver<bool>,
    connected: &mut bool,
) -> Result<(), zk::Error> {
    let client = spec.ensemble.connect().await?;
    *connected = true;
    let mut state = client.state_watcher();
    let persistent = zk::CreateMode::Persistent.with_acls(spec.ensemble.acls());
    match client.mkdir(&spec.service_path, &persistent).await {
        Ok(()) | Err(zk::Error::NodeExists) => {}
        Err(e) => return Err(e),
    }
    let node = spec.node();
    let mut registered = false;
    loop {
        let healthy = match &spec.health {
            None => true,
            Some(url) => healthy(url, spec.health_interval).await,
        };
        if healthy && !registered {
            let data = spec.data();
            let done = retrying(&node, &mut state, shutdown, || {
                create(&client, &node, &data, spec.ensemble.acls())
            })
            .await?;
            if !done {
                return Ok(());
            }
            registered = true;
            log::info!("registered {node}");
        } else if !healthy && registered {
            if !retrying(&node, &mut state, shutdown, || remove(&client, &node)).await? {
                return Ok(());
            }
            registered = false;
            log::warn!("withdrew {node}: health check failing");
        }
        tokio::select! {
            _ = shutdown.changed() => {
                if registered {
                    // Shutting down already: one try, then the session's end removes the node.
                    remove(&client, &node).await?;
                    log::info!("deregistered {node}");
                }
                return Ok(());
            }
            s = state.changed() => {
                if s.is_terminated() {
                    return Err(zk::Error::SessionExpired);
                }
            }
            _ = tokio::time::sleep(spec.health_interval) => {}
        }
    }
}

/// Runs the write `op` until it succeeds (`Ok(true)`), shutdown comes (`Ok(false)`) or the
/// session ends (`Err`). A failure on the connection waits for the client to reconnect on the
/// same session and tries again, so `op` must be safe to repeat.
async fn retrying<F: std::future::Future<Output = Result<(), zk::Error>>>(
    node: &str,
    state: &mut zk::StateWatcher,
    shutdown: &mut watch::Receiver<bool>,
    mut op: impl FnMut() -> F,
) -> Result<bool, zk::Error> {
    let mut backoff = Backoff::new();
    loop {
        let e = match op().await {
            Ok(()) => return Ok(true),
            Err(e) => e,
        };
        if classify(&e) != Failure::Connection {
            return Err(e);
        }
        log::warn!("registrar {node}: {e}; the session stands, trying again once connected");
        if !backoff.wait(shutdown).await || !connected_again(state, shutdown, || {}).await? {
            return Ok(false);
        }
    }
}

/// Creates the ephemeral node. One that exists already is kept if this session owns it (an
/// earlier try whose answer the connection lost), and replaced if it is left by an earlier
/// session (lingering until its timeout).
async fn create(
    client: &zk::Client,
    node: &str,
    data: &[u8],
    acls: zk::Acls<'static>,
) -> Result<(), zk::Error> {
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(acls);
    match client.create(node, data, &ephemeral).await {
        Ok(_) => Ok(()),
        Err(zk::Error::NodeExists) => {
            let owner = client.check_stat(node).await?.map(|s| s.ephemeral_owner);
            if owner == Some(client.session_id().0) {
                return Ok(());
            }
            remove(client, node).await?;
            client.create(node, data, &ephemeral).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

async fn remove(client: &zk::Client, node: &str) -> Result<(), zk::Error> {
    match client.delete(node, None).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A plain-HTTP GET of `url`; healthy on a 2xx status within `timeout`.
async fn healthy(url: &str, timeout: Duration) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        log::warn!("health URL {url}: only http:// is supported");
        return false;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let check = async {
        let mut s = tokio::net::TcpStream::connect(authority).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\nuser-agent: zkgate-register\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        // "HTTP/1.1 200"
        Some(head.starts_with(b"HTTP/1.") && head[9] == b'2')
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::ZkServer;

    #[test]
    fn metadata_is_written_as_the_native_instance_reads_it() {
        let spec = RegisterSpec {
            ensemble: Ensemble::new("127.0.0.1:1", Duration::from_secs(4)),
            service_path: "/zkgate/services/game".into(),
            host: "127.0.0.1".into(),
            port: 7001,
            weight: 2,
            zone: None,
            metadata: [("inst_id".to_owned(), "3".to_owned())].into(),
            health: None,
            health_interval: Duration::from_secs(2),
        };
        let read = crate::parse_instance("127.0.0.1:7001", &spec.data()).unwrap();
        assert_eq!((read.weight, read.metadata["inst_id"].as_str()), (2, "3"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creating_again_keeps_a_node_of_this_session_and_replaces_one_of_another() {
        let server = ZkServer::start();
        let ensemble = Ensemble::new(server.connect_string(), Duration::from_secs(4));
        let (mine, other) = (
            ensemble.connect().await.unwrap(),
            ensemble.connect().await.unwrap(),
        );
        let acls = ensemble.acls();
        let node = "/n";
        create(&mine, node, b"1", acls).await.unwrap();
        let first = mine.check_stat(node).await.unwrap().unwrap();
        // A retry after a lost answer: the node stays, not deleted and created again.
        create(&mine, node, b"1", acls).await.unwrap();
        assert_eq!(
            mine.check_stat(node).await.unwrap().unwrap().czxid,
            first.czxid
        );
        // Another session's node (a lingering one of an earlier run) is taken over.
        create(&other, node, b"2", acls).await.unwrap();
        let taken = other.check_stat(node).await.unwrap().unwrap();
        assert_ne!(taken.czxid, first.czxid);
        assert_eq!(taken.ephemeral_owner, other.session_id().0);
    }
}
