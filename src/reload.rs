//! Config reload on SIGHUP: read, validate and build off the request path, then publish with
//! one atomic store. A config that fails keeps the old one serving.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, Source};
use crate::metrics::METRICS;
use crate::snapshot::Shared;

pub struct Reloader {
    source: Source,
    shared: Shared,
}

impl Reloader {
    pub fn new(source: Source, shared: Shared) -> Self {
        Reloader { source, shared }
    }

    /// One reload attempt; `true` when the new config was published.
    pub fn reload(&self) -> bool {
        let prev = self.shared.load_full();
        match config::load(&self.source, Some(&prev)) {
            Ok(next) => {
                if next.settings != prev.settings {
                    log::warn!(
                        "config reload: listener, admin, server or access_log settings changed; they take effect on restart or upgrade, the rest applies now"
                    );
                }
                let watched: Vec<&str> = prev
                    .upstreams
                    .iter()
                    .filter_map(|u| u.discovery.as_deref())
                    .collect();
                for u in &next.upstreams {
                    if let Some(path) = u.discovery.as_deref().filter(|p| !watched.contains(p)) {
                        log::warn!(
                            "config reload: upstream {} follows {path}, which this process does not watch yet; it stays empty until a restart or upgrade",
                            u.name
                        );
                    }
                }
                let generation = next.generation;
                self.shared.store(Arc::new(next));
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
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
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
                    let this = Reloader { source: self.source.clone(), shared: self.shared.clone() };
                    let _ = tokio::task::spawn_blocking(move || this.reload()).await;
                }
            }
        }
    }
}
