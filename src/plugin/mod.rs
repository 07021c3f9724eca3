//! Plugins: features built on the proxy core that act at the phases of a request's life,
//! configured per route as one of a closed set of kinds.
//!
//! A route plugin implements [`HttpPlugin`], whose hooks are named after the Pingora phases the
//! proxy calls them from and do nothing by default. What a plugin learns about one request lives
//! in its [`HttpPlugin::State`], kept in the request context as a [`PluginState`]. The set is
//! closed ([`RoutePlugin`], built from [`PluginSection`]): dispatch is a `match`, a config error
//! names the kind, and adding a kind is a compile error everywhere it must be handled. A plugin
//! on a listener of its own (the TCP session router) sees no HTTP phases and will get a trait of
//! its own.

pub mod alert;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::proxy::Session;
use serde::{Deserialize, Serialize};

use crate::route::Route;

/// A route's `plugin:` section: exactly one kind.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PluginSection {
    /// Receives Alertmanager webhooks and delivers them, transformed, to destinations.
    AlertWebhook(alert::config::AlertWebhookSection),
}

impl PluginSection {
    /// Whether the plugin answers every request itself, so that its route needs neither an
    /// upstream nor a fixed answer.
    pub fn answers_itself(&self) -> bool {
        match self {
            PluginSection::AlertWebhook(_) => true,
        }
    }
}

/// Builds the plugin of route `route` from its section at config path `at`, collecting every
/// error; `path_prefix` is the route's, `upstream` finds a gateway upstream by name.
pub fn build(
    section: &PluginSection,
    route: &str,
    path_prefix: Option<&str>,
    at: &str,
    upstream: &dyn Fn(&str) -> Option<Arc<crate::upstream::Upstream>>,
    errors: &mut crate::section::ConfigErrors,
) -> Option<RoutePlugin> {
    match section {
        PluginSection::AlertWebhook(s) => alert::config::build(
            s,
            route,
            path_prefix,
            &format!("{at}.alert_webhook"),
            upstream,
            errors,
        )
        .map(|p| RoutePlugin::AlertWebhook(Arc::new(p))),
    }
}

/// What the proxy tells a plugin about the request besides its session.
pub struct RequestInfo<'a> {
    pub route: &'a Route,
    /// The path as routed (after dot-segment removal).
    pub path: &'a str,
}

#[async_trait]
pub trait HttpPlugin: Send + Sync {
    /// What the plugin keeps about one request.
    type State: Default + Send;

    /// `request_filter`, once the route is known and its limits let the request in. `Ok(true)`
    /// when the plugin answered the request itself.
    async fn request_filter(
        &self,
        _session: &mut Session,
        _request: &RequestInfo<'_>,
        _state: &mut Self::State,
    ) -> pingora::Result<bool> {
        Ok(false)
    }

    /// `logging`: the request is over, whatever happened to it.
    fn logging(&self, _state: &mut Self::State) {}

    /// Called on the background service's tick (every 100 ms) while the plugin is in the
    /// serving config: the place for work that outlives requests.
    fn tick(&self) {}
}

/// A route's plugin, built from its [`PluginSection`].
#[derive(Clone)]
pub enum RoutePlugin {
    AlertWebhook(Arc<alert::AlertWebhook>),
}

/// Per-request state of the route's plugin.
#[derive(Default)]
pub enum PluginState {
    #[default]
    None,
    AlertWebhook(<alert::AlertWebhook as HttpPlugin>::State),
}

impl RoutePlugin {
    pub fn new_state(&self) -> PluginState {
        match self {
            RoutePlugin::AlertWebhook(_) => PluginState::AlertWebhook(Default::default()),
        }
    }

    pub async fn request_filter(
        &self,
        session: &mut Session,
        request: &RequestInfo<'_>,
        state: &mut PluginState,
    ) -> pingora::Result<bool> {
        match (self, state) {
            (RoutePlugin::AlertWebhook(p), PluginState::AlertWebhook(s)) => {
                p.request_filter(session, request, s).await
            }
            // Not started by `new_state`: nothing to do.
            (_, PluginState::None) => Ok(false),
        }
    }

    pub fn logging(&self, state: &mut PluginState) {
        match (self, state) {
            (RoutePlugin::AlertWebhook(p), PluginState::AlertWebhook(s)) => p.logging(s),
            (_, PluginState::None) => {}
        }
    }

    pub fn tick(&self) {
        match self {
            RoutePlugin::AlertWebhook(p) => p.tick(),
        }
    }
}

impl std::fmt::Debug for RoutePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutePlugin::AlertWebhook(p) => write!(f, "AlertWebhook({})", p.route),
        }
    }
}
