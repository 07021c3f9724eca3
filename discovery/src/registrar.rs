//! Keeps one instance registered for a backend that has no ZooKeeper client of its own: an
//! ephemeral native-JSON node, re-created after a session expires, withdrawn while an optional
//! health URL fails, and deleted on shutdown so that gateways see the removal at once instead of
//! after the session timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use zookeeper_client as zk;

use crate::backoff::Backoff;
use crate::ensemble::Ensemble;

#[derive(Debug, Clone)]
pub struct RegisterSpec {
    pub ensemble: Ensemble,
    /// The service directory, e.g. `/zkgate/services/api`.
    pub service_path: String,
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub zone: Option<String>,
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
            create(&client, &node, &spec.data(), spec.ensemble.acls()).await?;
            registered = true;
            log::info!("registered {node}");
        } else if !healthy && registered {
            remove(&client, &node).await?;
            registered = false;
            log::warn!("withdrew {node}: health check failing");
        }
        tokio::select! {
            _ = shutdown.changed() => {
                if registered {
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

/// Creates the ephemeral node; one left by an earlier session of ours (lingering until its
/// timeout) is replaced.
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
