//! Which gateway replica owns a cache store's O2 subscription: an election through one
//! ephemeral znode, and the persistent record of the subscription the owner keeps.
//!
//! Under `<root>/cache/<store>/` (the store's node of [`crate::cache_bus`]):
//! - `owner` (ephemeral) holds `{"replica":…,"since":…}`: whoever created it owns the store's
//!   subscription until its session ends. The others watch it and try again when it goes.
//! - `members/<replica>` (ephemeral): every replica taking part, so that an owner stopping
//!   gracefully can tell whether another one will take over (and keep the subscription for it)
//!   or whether it is the last (and removes the subscription at the O-Cloud).
//! - `subscription` (persistent) holds [`SubscriptionRecord`]: the subscription's id at the
//!   O-Cloud and when the owner last saw it there, so that the next owner adopts it after a
//!   crash rather than subscribing twice, and the others can tell a stalled owner.
//!
//! Nothing here knows Pingora or HTTP: the caller makes the calls to the O-Cloud.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use zookeeper_client as zk;

use crate::backoff::Backoff;
use crate::cache_bus::store_path;
use crate::ensemble::Ensemble;

/// This replica's part in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// No ZooKeeper session yet (or it ended): nobody is known to own the store.
    Unknown,
    /// This replica owns the store's subscription since `since_ms` (Unix ms).
    Owner { since_ms: u64 },
    /// Another replica does.
    Following { owner: String },
}

/// The `owner` node's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerNode {
    pub replica: String,
    pub since: u64,
}

/// The `subscription` node's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRecord {
    /// The inventory subscription's id at the O-Cloud.
    pub subscription_id: String,
    /// The callback it was made with.
    pub callback: String,
    /// When it was made, and when the owner last found it at the O-Cloud (Unix ms).
    pub created: u64,
    pub checked: u64,
    /// The alarm subscription's id, with `alarms: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_subscription_id: Option<String>,
}

/// A running election. Dropping it ends the session, which removes this replica's nodes.
pub struct CacheOwner {
    base: String,
    replica: String,
    acls: zk::Acls<'static>,
    role: watch::Receiver<Role>,
    /// The current session's client, while there is one.
    client: Arc<Mutex<Option<zk::Client>>>,
    stop: watch::Sender<bool>,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the election for `store` under `root` as `replica`, on the caller's tokio runtime.
pub fn start(ensemble: Ensemble, root: &str, store: &str, replica: String) -> CacheOwner {
    let base = store_path(root, store);
    let (role_tx, role) = watch::channel(Role::Unknown);
    let (stop, stop_rx) = watch::channel(false);
    let client = Arc::new(Mutex::new(None));
    let acls = ensemble.acls();
    let task = Task {
        ensemble,
        base: base.clone(),
        replica: replica.clone(),
        role: role_tx,
        client: client.clone(),
    };
    tokio::spawn(task.run(stop_rx));
    CacheOwner {
        base,
        replica,
        acls,
        role,
        client,
        stop,
    }
}

impl CacheOwner {
    /// This replica's name in the `owner` node.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Follows this replica's role.
    pub fn roles(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    fn client(&self) -> Result<zk::Client, zk::Error> {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(zk::Error::ConnectionLoss)
    }

    fn record_path(&self) -> String {
        format!("{}/subscription", self.base)
    }

    /// The subscription record, if an owner wrote one.
    pub async fn read(&self) -> Result<Option<SubscriptionRecord>, zk::Error> {
        let client = self.client()?;
        match client.get_data(&self.record_path()).await {
            Ok((data, _)) => Ok(serde_json::from_slice(&data).ok()),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the subscription record (the owner's to do).
    pub async fn write(&self, record: &SubscriptionRecord) -> Result<(), zk::Error> {
        let client = self.client()?;
        let body = serde_json::to_vec(record).map_err(|_| zk::Error::MarshallingError)?;
        let path = self.record_path();
        match client.set_data(&path, &body, None).await {
            Ok(_) => Ok(()),
            Err(zk::Error::NoNode) => {
                let opts = zk::CreateMode::Persistent.with_acls(self.acls);
                match client.create(&path, &body, &opts).await {
                    Ok(_) => Ok(()),
                    Err(zk::Error::NodeExists) => {
                        client.set_data(&path, &body, None).await.map(|_| ())
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the subscription record.
    pub async fn forget(&self) -> Result<(), zk::Error> {
        match self.client()?.delete(&self.record_path(), None).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// How many other replicas take part in the election now.
    pub async fn others(&self) -> Result<usize, zk::Error> {
        let client = self.client()?;
        let (children, _) = client
            .get_children(&format!("{}/members", self.base))
            .await?;
        Ok(children.iter().filter(|c| **c != self.replica).count())
    }

    /// Leaves the election: this replica's nodes go (the `owner` node first, so a follower
    /// takes over at once) and no new session is made.
    pub async fn resign(&self) {
        let _ = self.stop.send(true);
        if let Ok(client) = self.client() {
            let owner = format!("{}/owner", self.base);
            if let Ok((data, stat)) = client.get_data(&owner).await {
                let ours = serde_json::from_slice::<OwnerNode>(&data)
                    .is_ok_and(|o| o.replica == self.replica);
                if ours {
                    let _ = client.delete(&owner, Some(stat.version)).await;
                }
            }
            let _ = client
                .delete(&format!("{}/members/{}", self.base, self.replica), None)
                .await;
        }
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl Drop for CacheOwner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Task {
    ensemble: Ensemble,
    base: String,
    replica: String,
    role: watch::Sender<Role>,
    client: Arc<Mutex<Option<zk::Client>>>,
}

impl Task {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        loop {
            let mut connected = false;
            let result = self.session(&mut stop, &mut connected).await;
            *self.client.lock().unwrap_or_else(PoisonError::into_inner) = None;
            self.role.send_replace(Role::Unknown);
            match result {
                Ok(()) => return,
                Err(e) => log::warn!(
                    "cache owner {}: zookeeper session ended ({e}); trying again",
                    self.base
                ),
            }
            if connected {
                backoff.reset();
            }
            if !backoff.wait(&mut stop).await {
                return;
            }
        }
    }

    /// One session: `Ok` on stop, `Err` once the session is over.
    async fn session(
        &self,
        stop: &mut watch::Receiver<bool>,
        connected: &mut bool,
    ) -> Result<(), zk::Error> {
        let client = self.ensemble.connect().await?;
        *connected = true;
        let acls = self.ensemble.acls();
        let dir = zk::CreateMode::Persistent.with_acls(acls);
        match client.mkdir(&format!("{}/members", self.base), &dir).await {
            Ok(()) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(e),
        }
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(acls);
        let member = format!("{}/members/{}", self.base, self.replica);
        match client.create(&member, b"", &ephemeral).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(e),
        }
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(client.clone());
        let owner = format!("{}/owner", self.base);
        let mut state = client.state_watcher();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let mine = OwnerNode {
                replica: self.replica.clone(),
                since: wall_ms(),
            };
            let body = serde_json::to_vec(&mine).map_err(|_| zk::Error::MarshallingError)?;
            match client.create(&owner, &body, &ephemeral).await {
                Ok(_) => {
                    log::info!(
                        "cache owner {}: this replica owns the subscription",
                        self.base
                    );
                    self.role.send_replace(Role::Owner {
                        since_ms: mine.since,
                    });
                }
                Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(e),
            }
            // Whoever holds it now (this replica after a reconnect within its session, too),
            // watched so that its removal starts a new round.
            let (data, _, watcher) = match client.get_and_watch_data(&owner).await {
                Ok(got) => got,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(e),
            };
            match serde_json::from_slice::<OwnerNode>(&data) {
                Ok(o) if o.replica == self.replica => {
                    if !matches!(*self.role.borrow(), Role::Owner { .. }) {
                        self.role.send_replace(Role::Owner { since_ms: o.since });
                    }
                }
                Ok(o) => {
                    self.role.send_replace(Role::Following { owner: o.replica });
                }
                Err(_) => {
                    self.role.send_replace(Role::Following {
                        owner: "(unreadable owner node)".into(),
                    });
                }
            }
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                ev = watcher.changed() => {
                    if ev.event_type == zk::EventType::Session && ev.session_state.is_terminated() {
                        return Err(crate::failure::ended(ev.session_state));
                    }
                }
                s = wait_terminated(&mut state) => return Err(crate::failure::ended(s)),
            }
        }
    }
}

/// Returns once the session is over.
async fn wait_terminated(state: &mut zk::StateWatcher) -> zk::SessionState {
    loop {
        let s = state.changed().await;
        if s.is_terminated() {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_camel_case_and_the_alarm_id_optional() {
        let r = SubscriptionRecord {
            subscription_id: "s1".into(),
            callback: "https://smo/cb".into(),
            created: 1,
            checked: 2,
            alarm_subscription_id: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"subscriptionId":"s1","callback":"https://smo/cb","created":1,"checked":2}"#
        );
        let back: SubscriptionRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
