//! A `listeners:` entry: where the gateway accepts, what it serves there, and the limits on
//! the requests and connections it takes. Names and addresses are unique across listeners and
//! the admin listener: that is the assembly's check, which parses the address.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::conn::h2::Http2Section;
use crate::conn::proxy_protocol::ProxyProtocolSection;
use crate::conn::ConnKeys;
use crate::game::config::{GameSection, GameSettings, DEFAULT_FIRST_FRAME_TIMEOUT};
use crate::route::path::PathSection;
use crate::section::{At, ConfigErrors, Dur, Size};
use crate::snapshot::{Listener, ListenerKind};
use crate::tls::TlsSection;
use crate::upstream::Upstream;

pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
/// Pingora refuses more headers than this whatever we allow.
const PINGORA_MAX_HEADERS: usize = 256;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub name: String,
    pub listen: String,
    #[serde(default)]
    pub kind: ListenerKind,
    pub max_request_headers: Option<usize>,
    pub max_request_header_bytes: Option<Size>,
    pub keepalive_requests: Option<u32>,
    /// How request paths are normalized before matching and forwarding.
    #[serde(default)]
    pub path: PathSection,
    /// Time for a client to send a complete request head: from the accept on a new
    /// connection, from the first byte of each later request on a keep-alive one.
    pub client_header_timeout: Option<Dur>,
    /// The longest gap between two reads of a request body.
    pub client_body_timeout: Option<Dur>,
    /// How long a keep-alive connection may idle between requests; `0` turns keep-alive off.
    pub keepalive_timeout: Option<Dur>,
    /// Client connections open at once on this listener; more are closed as they arrive.
    pub max_connections: Option<u32>,
    /// Client connections open at once from one IP address.
    pub max_connections_per_ip: Option<u32>,
    /// TLS termination: certificates chosen by SNI, versions, client certificates.
    pub tls: Option<TlsSection>,
    /// The PROXY protocol header from a load balancer in front; required when present.
    pub proxy_protocol: Option<ProxyProtocolSection>,
    /// HTTP/2: h2c on cleartext, and its limits.
    #[serde(default)]
    pub http2: Http2Section,
    /// Plain HTTP/1.1 requests on routes that only forward them are served by the fast path
    /// instead of Pingora's full proxy (on by default; `false` sends every request through
    /// the full proxy).
    pub http1_fast_path: Option<bool>,
    /// Makes this a game listener: framed game sessions routed by serverType and worldId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub game: Option<GameSection>,
}

impl ListenerSection {
    /// The listener at `at` on `addr` (its `listen`, parsed by the assembly).
    pub fn build(&self, at: &At, addr: SocketAddr, errors: &mut ConfigErrors) -> Listener {
        let max_headers = self.max_request_headers.unwrap_or(DEFAULT_MAX_HEADERS);
        if max_headers == 0 || max_headers > PINGORA_MAX_HEADERS {
            errors.push(
                at.key("max_request_headers"),
                format!("must be between 1 and {PINGORA_MAX_HEADERS}"),
            );
        }
        let max_request_header_bytes = self
            .max_request_header_bytes
            .map_or(DEFAULT_MAX_HEADER_BYTES, |s| s.0);
        let kind = self.kind(at, errors);
        let mut conn = self.conn_keys().build(at, errors);
        // On a game listener, the PROXY header counts against the wait for the first frame.
        let header_timeout = match &self.game {
            Some(g) => g
                .first_frame_timeout
                .map_or(DEFAULT_FIRST_FRAME_TIMEOUT, |d| d.0),
            None => conn.client_header_timeout,
        };
        conn.proxy_protocol = self
            .proxy_protocol
            .as_ref()
            .map(|p| p.build(&at.key("proxy_protocol"), header_timeout, errors));
        let http2 = self
            .http2
            .build(&at.key("http2"), max_request_header_bytes, &conn, errors);
        Listener {
            name: self.name.clone(),
            addr,
            kind,
            max_request_headers: max_headers,
            max_request_header_bytes,
            keepalive_requests: self.keepalive_requests,
            http1_fast_path: self.http1_fast_path.unwrap_or(true),
            path: self.path.build(),
            conn,
            http2,
            // Refused on a game listener above: not built, to say no more about it.
            tls: self
                .tls
                .as_ref()
                .filter(|_| kind != ListenerKind::Game)
                .and_then(|t| t.build(&at.key("tls"), &self.name, errors)),
            // Set by the assembly once the upstreams its rules name are built.
            game: None,
        }
    }

    /// `game` when there is a `game:` section, which then refuses what only HTTP reads.
    fn kind(&self, at: &At, errors: &mut ConfigErrors) -> ListenerKind {
        if self.game.is_none() {
            if self.kind == ListenerKind::Game {
                errors.push(at.key("kind"), "a game listener needs its game: section");
            }
            return self.kind;
        }
        let http_only: [(&str, bool, &str); 12] = [
            ("tls", self.tls.is_some(), "terminate TLS in front of it"),
            ("http2", self.http2 != Http2Section::default(), ""),
            ("path", self.path != PathSection::default(), ""),
            (
                "max_request_headers",
                self.max_request_headers.is_some(),
                "",
            ),
            (
                "max_request_header_bytes",
                self.max_request_header_bytes.is_some(),
                "",
            ),
            ("keepalive_requests", self.keepalive_requests.is_some(), ""),
            ("http1_fast_path", self.http1_fast_path.is_some(), ""),
            (
                "keepalive_timeout",
                self.keepalive_timeout.is_some(),
                "see game.client_idle",
            ),
            (
                "client_body_timeout",
                self.client_body_timeout.is_some(),
                "see game.client_idle",
            ),
            (
                "client_header_timeout",
                self.client_header_timeout.is_some(),
                "see game.first_frame_timeout",
            ),
            (
                "max_connections",
                self.max_connections.is_some(),
                "see game.max_sessions",
            ),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip.is_some(),
                "see game.per_ip.concurrent",
            ),
        ];
        for (key, given, hint) in http_only {
            if given {
                let hint = if hint.is_empty() {
                    String::new()
                } else {
                    format!(" ({hint})")
                };
                errors.push(
                    at.key(key),
                    format!("is for HTTP listeners, not a game listener{hint}"),
                );
            }
        }
        ListenerKind::Game
    }

    /// A game listener's settings, its rules built against the snapshot's `upstreams`; `prev`
    /// is this listener in the config before, whose rules node watcher carries over.
    pub fn build_game(
        &self,
        at: &At,
        upstreams: &[Arc<Upstream>],
        zookeeper: bool,
        prev: Option<&Listener>,
        errors: &mut ConfigErrors,
    ) -> Option<Arc<GameSettings>> {
        let game = self.game.as_ref()?;
        let at = at.key("game");
        if game.rules_node.is_some() && !zookeeper {
            errors.push(
                at.key("rules_node"),
                "needs the top-level zookeeper: section (connect: ...)",
            );
        }
        let settings = game.build(&at, upstreams, errors);
        Some(settings.share(&self.name, prev.and_then(|p| p.game.as_deref())))
    }

    fn conn_keys(&self) -> ConnKeys {
        ConnKeys {
            client_header_timeout: self.client_header_timeout,
            client_body_timeout: self.client_body_timeout,
            keepalive_timeout: self.keepalive_timeout,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::load_str;
    use crate::snapshot::ListenerKind;

    const UPSTREAMS: &str = r#"
upstreams:
  - { name: lobby, backends: ["127.0.0.1:7001"] }
"#;

    fn errors(yaml: &str) -> Vec<String> {
        match load_str(&format!("{yaml}{UPSTREAMS}"), None) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_game_section_makes_a_game_listener_beside_http_ones() {
        let yaml = format!(
            r#"
listeners:
  - {{ name: web, listen: "127.0.0.1:1" }}
  - name: game
    listen: "127.0.0.1:2"
    proxy_protocol: {{ trusted: ["127.0.0.1"] }}
    game: {{ gateway_id: 9, rules: [{{ server_type: 1, upstream: lobby }}] }}
routes: [{{ name: r, upstream: lobby }}]
{UPSTREAMS}"#
        );
        let snap = load_str(&yaml, None).unwrap();
        let [web, game] = &snap.settings.listeners[..] else {
            panic!("two listeners")
        };
        assert_eq!((web.kind, web.game.is_none()), (ListenerKind::Http, true));
        assert_eq!(game.kind, ListenerKind::Game);
        assert!(game.conn.proxy_protocol.is_some(), "PROXY protocol is kept");
        let settings = game.game.as_ref().unwrap();
        assert_eq!(settings.gateway_id, 9);
        let rules = settings.current_rules();
        let rule_upstream = &rules
            .route(crate::game::codec::ServerId::new(false, 1, 1, 0))
            .unwrap()
            .upstream;
        assert!(
            Arc::ptr_eq(rule_upstream, snap.upstream("lobby").unwrap()),
            "the snapshot's upstream"
        );
        // A reload of the same text gives equal settings: no restart warning.
        let again = load_str(&yaml, Some(&snap)).unwrap();
        assert!(again.settings == snap.settings);
        // Game keys other than gateway_id apply to new sessions on reload: no warning either.
        let queue = yaml.replace("gateway_id: 9,", "gateway_id: 9, queue: 8,");
        let again = load_str(&queue, Some(&snap)).unwrap();
        assert_eq!(again.settings.listeners[1].game.as_ref().unwrap().queue, 8);
        assert!(again.settings == snap.settings);
        let id = yaml.replace("gateway_id: 9,", "gateway_id: 10,");
        assert!(load_str(&id, Some(&snap)).unwrap().settings != snap.settings);
    }

    #[test]
    fn a_game_listener_refuses_http_keys_and_needs_no_routes() {
        assert_eq!(
            errors(
                r#"
listeners:
  - name: game
    listen: "127.0.0.1:2"
    tls: { certificates: [] }
    http2: { h2c: true }
    max_connections: 10
    client_header_timeout: 5s
    game: { rules: [{ server_type: 1, upstream: nowhere }], rules_node: /zkgate/rules }
"#
            ),
            [
                "listeners[0].tls: is for HTTP listeners, not a game listener (terminate TLS in front of it)",
                "listeners[0].http2: is for HTTP listeners, not a game listener",
                "listeners[0].client_header_timeout: is for HTTP listeners, not a game listener (see game.first_frame_timeout)",
                "listeners[0].max_connections: is for HTTP listeners, not a game listener (see game.max_sessions)",
                "listeners[0].game.rules_node: needs the top-level zookeeper: section (connect: ...)",
                "listeners[0].game.rules[0].upstream: no upstream named `nowhere`",
            ]
        );
        assert_eq!(
            errors(
                r#"
listeners:
  - { name: web, listen: "127.0.0.1:1", kind: game }
"#
            ),
            [
                "listeners[0].kind: a game listener needs its game: section",
                "routes: at least one route is needed",
            ]
        );
        let game_only = r#"
listeners:
  - { name: game, listen: "127.0.0.1:2", game: { rules: [{ server_type: 1, upstream: lobby }] } }
"#;
        assert_eq!(errors(game_only), Vec::<String>::new());
    }

    #[test]
    fn an_upstream_a_game_rule_sends_to_counts_for_readiness() {
        let snap = load_str(
            r#"
zookeeper: { connect: "127.0.0.1:2181" }
listeners:
  - { name: game, listen: "127.0.0.1:2", game: { rules: [{ server_type: 1, upstream: rooms }] } }
upstreams:
  - { name: rooms, zookeeper: { service: rooms } }
  - { name: idle, zookeeper: { service: idle } }
"#,
            None,
        )
        .unwrap();
        assert_eq!(snap.upstreams_without_backends(), ["rooms"]);
    }
}
