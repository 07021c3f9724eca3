//! Config reload: on SIGHUP, and on every change of the node for a ZooKeeper config.
//! Read, validate and build off the request path, then install with one atomic store; a
//! config that fails keeps the old one serving.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use zkgate_discovery::config_node::{self, Versioned};

use super::Live;
use crate::config::{self, ConfigErrors, Source, ZkNode};
use crate::metrics::METRICS;

#[derive(Clone)]
pub struct Reloader {
    source: Source,
    shared: Arc<Live>,
    /// The config text last tried, good or bad: a node delivered again after a reconnect is
    /// not rebuilt, and a rejected one is not rejected again until it changes.
    last: Arc<Mutex<String>>,
}

impl Reloader {
    /// `current` is the text the running snapshot was built from.
    pub fn new(source: Source, shared: Arc<Live>, current: String) -> Self {
        Reloader {
            source,
            shared,
            last: Arc::new(Mutex::new(current)),
        }
    }

    /// Reads the source again and applies it; `true` when a new config was installed.
    pub fn reload(&self) -> bool {
        self.apply(self.source.read())
    }

    /// Validates and installs `text`; `true` when it was installed.
    fn apply(&self, text: Result<String, ConfigErrors>) -> bool {
        // Held until the snapshot is installed: a SIGHUP and a node change arriving together
        // are applied one after the other, each on top of the one before.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let prev = self.shared.load_full();
        let built = text.and_then(|text| {
            *last = text;
            config::load_str(&last, Some(&prev))
        });
        match built {
            Ok(next) => {
                if next.settings != prev.settings {
                    log::warn!(
                        "config reload: listener, admin, server, access_log or zookeeper settings changed; they take effect on restart or upgrade, the rest applies now"
                    );
                }
                let generation = next.generation;
                crate::tls::publish_certificates(
                    next.settings
                        .listeners
                        .iter()
                        .filter_map(|l| l.tls.as_deref()),
                );
                self.shared.install(next);
                METRICS.config_reloads.with_label_values(&["success"]).inc();
                log::info!(
                    "config reloaded from {} (generation {generation})",
                    self.source.describe()
                );
                true
            }
            Err(errors) => {
                METRICS.config_reloads.with_label_values(&["failure"]).inc();
                log::error!(
                    "config reload from {} rejected, still serving generation {}; {} error(s):\n{errors}",
                    self.source.describe(),
                    prev.generation,
                    errors.len()
                );
                false
            }
        }
    }

    /// One delivery of the config node.
    fn node_changed(&self, zk: &ZkNode, node: Option<Versioned>) {
        let Some(Versioned { data, version }) = node else {
            log::error!("config node {zk} was deleted; still serving the current config");
            return;
        };
        let text = config::source::text(zk, data);
        if let Ok(t) = &text {
            if *self.last.lock().unwrap_or_else(|p| p.into_inner()) == *t {
                METRICS.config_node_version.set(version.into());
                return;
            }
        }
        log::info!("config node {zk} changed (version {version})");
        if self.apply(text) {
            METRICS.config_node_version.set(version.into());
        }
    }

    async fn on_sighup(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload disabled: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => {
                    if got.is_none() { return; }
                    log::info!("SIGHUP: reloading config");
                    // Building may resolve host names: keep it off this runtime's worker.
                    let this = self.clone();
                    let _ = tokio::task::spawn_blocking(move || this.reload()).await;
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, shutdown: ShutdownWatch) {
        match &self.source {
            Source::Zookeeper(zk) => {
                log::info!("following config node {zk}");
                let this = self.clone();
                let node = zk.clone();
                let follow = config_node::follow(
                    zk.ensemble.clone(),
                    zk.node.clone(),
                    move |delivered| this.node_changed(&node, delivered),
                    shutdown.clone(),
                );
                // SIGHUP still forces a read and rebuild, and must be handled anyway: its
                // default action ends the process.
                tokio::join!(follow, self.on_sighup(shutdown));
            }
            Source::File(_) | Source::Embedded => self.on_sighup(shutdown).await,
        }
    }
}
