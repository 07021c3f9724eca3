//! The whole file's schema: [`RawConfig`], the aggregate of every section (each module owns its
//! own: `route::config`, `limit::config`, `client_ip`, `access_log`, `config::listener`,
//! `config::process`), plus the sections that have no module of their own yet. Plain serde
//! types with unknown keys rejected; nothing here is read on the request path.

use serde::{Deserialize, Serialize};

use crate::logging::Secrets;
use crate::section::secret::{self, Secret};
use crate::section::Dur;
use crate::upstream::config::UpstreamSection;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<String>,
    /// The bearer token every admin write (drain, undrain) and `/config` must carry. Without
    /// one, writes are refused and reads stay open.
    pub token: Option<Secret>,
}

/// The ZooKeeper ensemble that `zookeeper:` upstreams follow.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperSection {
    /// `h1:2181,h2:2181,h3:2181`, optionally followed by a chroot (`/chroot`).
    pub connect: String,
    /// Every path below is read relative to this node; the same as a `/chroot` suffix on
    /// `connect`, spelled out.
    pub chroot: Option<String>,
    /// `<root>/services/<service>` holds a service's instances; default `/zkgate`.
    pub root: Option<String>,
    pub session_timeout: Option<Dur>,
    /// Credentials of ZooKeeper's `digest` scheme, sent on every new session.
    pub digest: Option<DigestSection>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DigestSection {
    pub user: String,
    /// Usually `${env:NAME}`, so that it stays out of the shared config.
    pub password: Secret,
}

impl RawConfig {
    /// What `/config` shows (the config with every secret `<redacted>`) and what the logger
    /// must hide, found in one serialization.
    pub fn redacted(&self) -> (serde_json::Value, Secrets) {
        let mut shown = serde_json::Value::Null;
        let values = secret::collect(|| {
            // Every section serializes to JSON (string keys, finite numbers); should one ever
            // refuse, `/config` says so rather than the reload failing.
            shown = serde_json::to_value(self).unwrap_or_else(|e| {
                serde_json::Value::String(format!("the config cannot be shown: {e}"))
            });
        });
        let secrets = Secrets {
            header_names: self.secret_header_names().map(str::to_owned).collect(),
            values,
        };
        (shown, secrets)
    }

    /// The value of every [`Secret`] in the config, wherever it is (plugins included), found by
    /// serializing the config once while collecting: no hand-kept list to forget a new one.
    pub fn secret_values(&self) -> Vec<String> {
        // Serializing to a sink only fails if a type refuses itself; what was seen still counts.
        secret::collect(|| {
            let _ = serde_json::to_writer(std::io::sink(), self);
        })
    }

    /// Headers whose values this config holds as secrets: routes' header edits not marked
    /// public, and the headers alert destinations are sent with.
    pub fn secret_header_names(&self) -> impl Iterator<Item = &str> {
        let edits = self
            .routes
            .iter()
            .flat_map(|r| [&r.request_headers, &r.response_headers])
            .flat_map(|e| e.set.keys().chain(e.add.keys()).filter(|k| !e.is_public(k)));
        let destinations = self
            .routes
            .iter()
            .filter_map(|r| match &r.plugin {
                Some(crate::plugin::PluginSection::AlertWebhook(a)) => Some(a),
                _ => None,
            })
            .flat_map(|a| a.destinations.iter().flat_map(|d| d.headers.keys()));
        edits.chain(destinations).map(String::as_str)
    }
}

/// The whole file, once every section parsed.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RawConfig {
    pub server: super::process::ServerSection,
    pub admin: AdminSection,
    pub client_ip: crate::client_ip::ClientIpSection,
    pub access_log: Option<crate::access_log::AccessLogSection>,
    pub zookeeper: Option<ZookeeperSection>,
    pub listeners: Vec<super::listener::ListenerSection>,
    pub upstreams: Vec<UpstreamSection>,
    pub routes: Vec<crate::route::RouteSection>,
}
