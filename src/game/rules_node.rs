//! Rules from ZooKeeper: a game listener's `rules_node` holds a JSON list of rules in the shape
//! of the YAML ones, followed by every replica. Each new version is parsed, checked against the
//! upstreams of every config that listener has alive (the serving one, and one a reload is
//! building), and swapped in atomically over the YAML rules; a bad version is refused, with
//! its errors located and logged, and the last good rules keep serving. A missing node means
//! the YAML rules. A ZooKeeper outage changes nothing: the last good rules stay.
//!
//! The node is followed by [`config_node::follow`], the same watch a `zk://` config uses.

use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use zkgate_discovery::config_node;
use zkgate_discovery::Ensemble;

use super::config::GameSettings;
use super::metrics;
use super::rules::{build_rules, RuleSection};
use crate::section::{At, ConfigErrors};

/// One listener's rules node: its last good version and the configs it delivers to.
pub struct RulesFeed {
    listener: String,
    node: String,
    state: Mutex<FeedState>,
}

#[derive(Default)]
struct FeedState {
    /// The last version every live config took; `None` while the node is missing or unread.
    good: Option<(i32, Arc<Vec<RuleSection>>)>,
    /// The version last delivered, good or bad: one delivered again (after a reconnect) is
    /// not checked and logged again.
    seen: Option<i32>,
    /// The game settings of each config alive for this listener (the serving one, one being
    /// built); dead ones are dropped as they are met.
    subscribers: Vec<Weak<GameSettings>>,
}

impl RulesFeed {
    pub fn new(listener: &str, node: &str) -> Arc<RulesFeed> {
        Arc::new(RulesFeed {
            listener: listener.to_owned(),
            node: node.to_owned(),
            state: Mutex::new(FeedState::default()),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        // Every write leaves the state whole: a panic elsewhere cannot leave it half done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `settings` (a new config's) gets the last good rules, built for its upstreams, and every
    /// later version. Under the same lock as [`RulesFeed::deliver`]: a version arriving while
    /// a reload builds its config reaches that config too.
    pub(super) fn subscribe(&self, settings: &Arc<GameSettings>) {
        let mut state = self.lock();
        state.subscribers.retain(|w| w.strong_count() > 0);
        if let Some((version, sections)) = &state.good {
            let mut errors = ConfigErrors::default();
            let rules = build_rules(
                sections,
                &At::new(&self.node),
                &settings.upstreams,
                &mut errors,
            );
            if errors.is_empty() {
                settings.node_rules.store(Some(Arc::new(rules)));
                // Back on the node's rules if an earlier config did not fit them.
                let refused = state.seen != Some(*version);
                metrics::rules_source(&self.listener, Some(*version), refused);
            } else {
                // The config being built serves its YAML rules: so say the gauges, though a
                // reload that then fails keeps the old config on the node's rules.
                metrics::rules_source(&self.listener, None, true);
                log::error!(
                    "listener {}: rules node {} version {version} does not fit the new config, which serves its YAML rules until the node changes; {} error(s):\n{errors}",
                    self.listener,
                    self.node,
                    errors.len()
                );
            }
        }
        state.subscribers.push(Arc::downgrade(settings));
    }

    /// One delivery of the node: `None` when it does not exist, else its version and content.
    /// Returns whether the rules in use changed.
    pub fn deliver(&self, node: Option<(i32, &[u8])>) -> bool {
        let mut state = self.lock();
        state.subscribers.retain(|w| w.strong_count() > 0);
        let live: Vec<Arc<GameSettings>> =
            state.subscribers.iter().filter_map(Weak::upgrade).collect();
        let Some((version, data)) = node else {
            let had = state.good.take().is_some() || state.seen.is_some();
            state.seen = None;
            for s in &live {
                s.node_rules.store(None);
            }
            metrics::rules_source(&self.listener, None, false);
            log::info!(
                "listener {}: rules node {} does not exist; routing by the YAML rules",
                self.listener,
                self.node
            );
            return had;
        };
        if state.seen == Some(version) {
            return false;
        }
        state.seen = Some(version);
        let good = state.good.as_ref().map(|(v, _)| *v);
        let refuse = |why: &str| {
            metrics::rules_source(&self.listener, good, true);
            log::error!(
                "listener {}: rules node {} version {version} refused, the last good rules keep serving: {why}",
                self.listener,
                self.node
            );
            false
        };
        let sections: Vec<RuleSection> = match serde_json::from_slice(data) {
            Ok(s) => s,
            Err(e) => {
                return refuse(&format!(
                    "not a JSON list of rules ({e}); a rule is {{\"server_type\": 1, \"world\": 0, \"upstream\": \"lobby\"}}"
                ))
            }
        };
        let at = At::new(&self.node);
        let mut built = Vec::with_capacity(live.len());
        let mut errors = ConfigErrors::default();
        for s in &live {
            built.push(build_rules(&sections, &at, &s.upstreams, &mut errors));
            // The same list fails the same way for each config alike: report one config's.
            if !errors.is_empty() {
                break;
            }
        }
        if sections.is_empty() {
            errors.push(
                at.clone(),
                "an empty list routes nothing; delete the node to route by the YAML rules",
            );
        }
        if !errors.is_empty() {
            return refuse(&format!("{} error(s):\n{errors}", errors.len()));
        }
        for (s, rules) in live.iter().zip(built) {
            s.node_rules.store(Some(Arc::new(rules)));
        }
        log::info!(
            "listener {}: rules node {} version {version}: {} rule(s) in use",
            self.listener,
            self.node,
            sections.len()
        );
        state.good = Some((version, Arc::new(sections)));
        metrics::rules_source(&self.listener, Some(version), false);
        true
    }
}

/// Follows the rules node of every game listener that has one, on the ensemble of the config.
pub struct RulesNodeService {
    ensemble: Ensemble,
    feeds: Vec<Arc<RulesFeed>>,
}

impl RulesNodeService {
    /// `None` when no listener has a rules node.
    pub fn new(ensemble: Ensemble, feeds: Vec<Arc<RulesFeed>>) -> Option<RulesNodeService> {
        (!feeds.is_empty()).then_some(RulesNodeService { ensemble, feeds })
    }
}

#[async_trait]
impl BackgroundService for RulesNodeService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let follows = self.feeds.iter().map(|feed| {
            // Until the node is read, the YAML rules serve.
            metrics::rules_source(&feed.listener, None, false);
            log::info!(
                "listener {}: following rules node {}",
                feed.listener,
                feed.node
            );
            let f = feed.clone();
            config_node::follow(
                self.ensemble.clone(),
                feed.node.clone(),
                move |delivered| {
                    f.deliver(delivered.as_ref().map(|v| (v.version, &v.data[..])));
                },
                shutdown.clone(),
            )
        });
        futures::future::join_all(follows).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::ServerId;
    use super::super::config::tests::upstreams;
    use super::super::config::GameSection;
    use super::*;

    fn settings(listener: &str, prev: Option<&GameSettings>) -> Arc<GameSettings> {
        let section: GameSection = serde_yaml::from_str(
            "{ rules: [{ server_type: 1, upstream: lobby }], rules_node: /zkgate/game/rules }",
        )
        .unwrap();
        let mut errors = ConfigErrors::default();
        let built = section.build(&At::root(), &upstreams(), &mut errors);
        assert!(errors.is_empty(), "{errors}");
        built.share(listener, prev)
    }

    /// The upstream type 1 in world 3 routes to, or `-` for no rule.
    fn route(s: &GameSettings, t: u8) -> String {
        s.current_rules()
            .route(ServerId::new(false, 3, t, 0))
            .map_or("-".into(), |r| r.upstream.name.to_string())
    }

    #[test]
    fn a_good_version_replaces_the_yaml_rules_a_bad_one_is_refused_and_deletion_restores_them() {
        // Each test its own listener: the gauges are process-wide.
        let s = settings("version-gauges", None);
        let gauges = || super::super::metrics::rules_gauges("version-gauges");
        let feed = s.rules_feed().unwrap().clone();
        assert_eq!(feed.node(), "/zkgate/game/rules");
        assert_eq!((route(&s, 1), route(&s, 2)), ("lobby".into(), "-".into()));

        let v1 = br#"[{"server_type": 1, "upstream": "battle"}, {"server_type": 2, "world": 3, "upstream": "rooms", "strategy": "instance"}]"#;
        assert!(feed.deliver(Some((1, v1))));
        assert_eq!(
            (route(&s, 1), route(&s, 2)),
            ("battle".into(), "rooms".into())
        );
        assert_eq!(gauges(), (1, 0));
        // Delivered again after a reconnect: nothing to do.
        assert!(!feed.deliver(Some((1, v1))));

        // Not JSON, a rule naming an upstream that does not exist, an empty list: each is
        // refused and version 1 keeps serving.
        assert!(!feed.deliver(Some((2, b"{not json"))));
        assert_eq!(gauges(), (1, 1), "version 1 serves, 2 was refused");
        let bad =
            br#"[{"server_type": 1, "upstream": "lobby"}, {"server_type": 2, "upstream": "gone"}]"#;
        assert!(!feed.deliver(Some((3, bad))));
        assert!(!feed.deliver(Some((4, b"[]"))));
        assert_eq!(
            (route(&s, 1), route(&s, 2)),
            ("battle".into(), "rooms".into())
        );

        assert_eq!(gauges(), (1, 1));
        let v5 = br#"[{"server_type": 1, "upstream": "plain"}]"#;
        assert!(feed.deliver(Some((5, v5))));
        assert_eq!(gauges(), (5, 0));

        // Deleted: the YAML rules again.
        assert!(feed.deliver(None));
        assert_eq!((route(&s, 1), route(&s, 2)), ("lobby".into(), "-".into()));
        assert_eq!(gauges(), (-1, 0));
        // A bad first version with no good one before: the YAML rules serve, and it is refused.
        assert!(!feed.deliver(Some((6, b"[]"))));
        assert_eq!(gauges(), (-1, 1));
    }

    #[test]
    fn a_config_the_node_rules_do_not_fit_serves_its_yaml_rules_and_the_gauges_say_so() {
        let gauges = || super::super::metrics::rules_gauges("unfit");
        let first = settings("unfit", None);
        let feed = first.rules_feed().unwrap().clone();
        assert!(feed.deliver(Some((
            4,
            br#"[{"server_type": 1, "upstream": "battle"}]"#.as_slice()
        ))));
        assert_eq!(gauges(), (4, 0));
        // A reload whose upstreams lack `battle`: its YAML rules serve.
        let section: GameSection = serde_yaml::from_str(
            "{ rules: [{ server_type: 1, upstream: lobby }], rules_node: /zkgate/game/rules }",
        )
        .unwrap();
        let mut errors = ConfigErrors::default();
        let lobby_only = section
            .build(&At::root(), &upstreams()[..1], &mut errors)
            .share("unfit", Some(&first));
        assert!(errors.is_empty(), "{errors}");
        assert_eq!(route(&lobby_only, 1), "lobby");
        assert_eq!(gauges(), (-1, 1));
        // The next reload fits again: back on version 4.
        let again = settings("unfit", Some(&lobby_only));
        assert_eq!(route(&again, 1), "battle");
        assert_eq!(gauges(), (4, 0));
    }

    #[test]
    fn a_reloaded_config_keeps_the_feed_and_gets_the_last_good_rules_for_its_upstreams() {
        let first = settings("reloaded", None);
        let feed = first.rules_feed().unwrap().clone();
        feed.deliver(Some((
            5,
            br#"[{"server_type": 1, "upstream": "plain"}]"#.as_slice(),
        )));
        let next = settings("reloaded", Some(&first));
        assert!(Arc::ptr_eq(next.rules_feed().unwrap(), &feed));
        assert_eq!(route(&next, 1), "plain");
        let rule_upstream = next
            .current_rules()
            .route(ServerId::new(false, 3, 1, 0))
            .unwrap()
            .upstream
            .clone();
        assert!(
            next.upstreams
                .iter()
                .any(|u| Arc::ptr_eq(u, &rule_upstream)),
            "built against the new config's upstreams"
        );
        // Both configs alive (a reload in flight) both get a new version; a dropped one is
        // forgotten.
        feed.deliver(Some((
            6,
            br#"[{"server_type": 1, "upstream": "battle"}]"#.as_slice(),
        )));
        assert_eq!(
            (route(&first, 1), route(&next, 1)),
            ("battle".into(), "battle".into())
        );
        drop(first);
        feed.deliver(Some((
            7,
            br#"[{"server_type": 1, "upstream": "lobby"}]"#.as_slice(),
        )));
        assert_eq!(feed.lock().subscribers.len(), 1);
        assert_eq!(route(&next, 1), "lobby");
    }
}
