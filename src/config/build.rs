//! The assembly: a parsed [`RawConfig`] becomes a [`Snapshot`], or every problem found is
//! returned, each with its YAML path. Each section builds itself; what is left here is what
//! spans sections: unique names and addresses, cross-references (a route's upstream), the
//! predecessor of each route and upstream in the previous snapshot, passed to its build as
//! `prev` so that it may take over its live state, and the snapshot itself.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use zkgate_discovery::{Digest, Ensemble};

use super::schema::*;
use crate::route::{Route, RouteEnv, RouteSection, RouteTable};
use crate::section::AdminToken;
use crate::section::{At, ConfigErrors};
use crate::snapshot::{Settings, Snapshot};
use crate::upstream::config::{absolute_path, UpstreamEnv};
use crate::upstream::Upstream;

pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Builds a snapshot. Upstreams whose definition did not change since `prev` are carried over
/// as they are, with their live membership and counters.
pub fn build(raw: RawConfig, prev: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let mut settings = settings(&raw, &mut errors);
    let upstreams = upstreams(&raw, prev, &mut errors);
    games(&raw, &upstreams, prev, &mut settings, &mut errors);
    let declared: HashSet<&str> = raw.upstreams.iter().map(|u| u.name.as_str()).collect();
    let listeners: Vec<&str> = raw.listeners.iter().map(|l| l.name.as_str()).collect();
    let game_listeners: Vec<&str> = raw
        .listeners
        .iter()
        .filter(|l| l.game.is_some())
        .map(|l| l.name.as_str())
        .collect();
    let env = RouteEnv {
        upstreams: &upstreams,
        declared: &declared,
        resources: crate::plugin::Resources::process(),
        listeners: &listeners,
        game_listeners: &game_listeners,
        zookeeper: settings.zookeeper.as_ref(),
        zk_root: zk_root(&raw),
    };
    let routes = routes(&raw.routes, &env, prev, &mut errors);
    let admin_token = raw.admin.token.as_ref().and_then(|t| {
        AdminToken::new(&t.0)
            .map_err(|e| errors.push("admin.token", e))
            .ok()
    });
    let client_ip = raw
        .client_ip
        .build(&At::root().key("client_ip"), &mut errors);
    // A gateway of game listeners alone has no use for routes.
    if raw.routes.is_empty() && raw.listeners.iter().any(|l| l.game.is_none()) {
        errors.push("routes", "at least one route is needed");
    }
    errors.into_result(())?;
    let (shown, secrets) = raw.redacted();
    Ok(Snapshot {
        routes: RouteTable::new(routes),
        upstreams,
        settings,
        client_ip,
        admin_token,
        shown,
        secrets,
        generation: prev.map_or(1, |p| p.generation + 1),
    })
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(text)
        .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:8080 or [::1]:8080"))
}

fn settings(raw: &RawConfig, errors: &mut ConfigErrors) -> Settings {
    let mut seen = HashSet::new();
    let admin = match socket_addr(raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN)) {
        Ok(a) => Some(a),
        Err(e) => {
            errors.push("admin.listen", e);
            None
        }
    };
    if let Some(a) = admin {
        seen.insert(a);
    }
    if raw.listeners.is_empty() {
        errors.push("listeners", "at least one listener is needed");
    }
    let mut names = HashSet::new();
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let at = At::root().index("listeners", i);
        if !names.insert(l.name.as_str()) {
            errors.push(
                at.key("name"),
                format!("listener `{}` is defined twice", l.name),
            );
        }
        let addr = match socket_addr(&l.listen) {
            Ok(a) => a,
            Err(e) => {
                errors.push(at.key("listen"), e);
                continue;
            }
        };
        if !seen.insert(addr) {
            errors.push(
                at.key("listen"),
                format!("{addr} is already used by another listener or the admin listener"),
            );
        }
        listeners.push(l.build(&at, addr, errors));
    }
    let server = raw.server.build(&At::root().key("server"), errors);
    let access_log = raw
        .access_log
        .as_ref()
        .map(|a| a.build(&At::root().key("access_log"), errors));
    Settings {
        listeners,
        admin: admin.unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("valid default")),
        server,
        access_log,
        zookeeper: raw.zookeeper.as_ref().map(|z| ensemble(raw, z, errors)),
    }
}

fn ensemble(raw: &RawConfig, z: &ZookeeperSection, errors: &mut ConfigErrors) -> Ensemble {
    let connect = z.connect.trim();
    let (hosts, chroot_suffix) = match connect.find('/') {
        Some(i) => (&connect[..i], Some(&connect[i..])),
        None => (connect, None),
    };
    if hosts.split(',').any(|h| h.trim().is_empty()) {
        errors.push(
            "zookeeper.connect",
            "must name at least one host:port, separated by commas",
        );
    }
    let chroot = match (chroot_suffix, z.chroot.as_deref()) {
        (Some(_), Some(_)) => {
            errors.push(
                "zookeeper.chroot",
                "give the chroot either here or as a /suffix of connect, not both",
            );
            None
        }
        (Some(c), None) => Some(("zookeeper.connect", c)),
        (None, Some(c)) => Some(("zookeeper.chroot", c)),
        (None, None) => None,
    };
    if let Some((at, c)) = chroot {
        if let Err(e) = absolute_path(c) {
            errors.push(at, e);
        }
    }
    let session_timeout = z.session_timeout.map_or(DEFAULT_SESSION_TIMEOUT, |d| d.0);
    if session_timeout < Duration::from_secs(1) {
        errors.push("zookeeper.session_timeout", "must be at least 1s");
    }
    if let Err(e) = absolute_path(zk_root(raw)) {
        errors.push("zookeeper.root", e);
    }
    let digest = z.digest.as_ref().map(|d| {
        if d.user.is_empty() || d.user.contains(':') {
            errors.push(
                "zookeeper.digest.user",
                "must be a non-empty name without `:`",
            );
        }
        Digest {
            user: d.user.clone(),
            password: d.password.0.clone(),
        }
    });
    Ensemble {
        connect: format!("{hosts}{}", chroot.map_or("", |(_, c)| c)),
        session_timeout,
        digest,
    }
}

fn zk_root(raw: &RawConfig) -> &str {
    raw.zookeeper
        .as_ref()
        .and_then(|z| z.root.as_deref())
        .unwrap_or(super::DEFAULT_ZK_ROOT)
}

/// Game listeners route to upstreams: their settings are built once the upstreams are.
fn games(
    raw: &RawConfig,
    upstreams: &[Arc<Upstream>],
    prev: Option<&Snapshot>,
    settings: &mut Settings,
    errors: &mut ConfigErrors,
) {
    for (i, l) in raw.listeners.iter().enumerate() {
        let Some(built) = settings.listeners.iter_mut().find(|x| x.name == l.name) else {
            continue;
        };
        let before = prev.and_then(|p| p.settings.listeners.iter().find(|x| x.name == l.name));
        let at = At::root().index("listeners", i);
        built.game = l.build_game(&at, upstreams, raw.zookeeper.is_some(), before, errors);
    }
}

/// Each upstream is built by its own section; the names are checked here, where all are seen.
fn upstreams(
    config: &RawConfig,
    prev: Option<&Snapshot>,
    errors: &mut ConfigErrors,
) -> Vec<Arc<Upstream>> {
    let keyless = hash_key_optional(config);
    let env = UpstreamEnv {
        zk_root: zk_root(config),
        zookeeper: config.zookeeper.is_some(),
        zone: config.server.zone.as_deref(),
        hash_key_optional: &keyless,
    };
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, u) in config.upstreams.iter().enumerate() {
        let at = At::root().index("upstreams", i);
        let named = if u.name.is_empty() {
            errors.push(at.key("name"), "must not be empty");
            false
        } else if !names.insert(u.name.as_str()) {
            let why = format!("upstream `{}` is defined twice", u.name);
            errors.push(at.key("name"), why);
            false
        } else {
            true
        };
        let prev = prev.and_then(|p| p.upstream(&u.name));
        out.extend(u.build(&at, &env, prev, errors).filter(|_| named));
    }
    out
}

/// The upstreams whose `consistent_hash` may go without a `hash_key`: those no HTTP route
/// sends to and game rules may use (a YAML rule names it, or a game listener follows a rules
/// node, whose rules may name any upstream). A game session hashes on its frame's worldId and
/// instId, never on an HTTP key; an upstream neither uses still needs one, as before.
fn hash_key_optional(config: &RawConfig) -> Vec<&str> {
    let games: Vec<_> = config
        .listeners
        .iter()
        .filter_map(|l| l.game.as_ref())
        .collect();
    let any_node = games.iter().any(|g| g.rules_node.is_some());
    let by_rules: HashSet<&str> = games
        .iter()
        .flat_map(|g| g.rules.iter().map(|r| r.upstream.as_str()))
        .collect();
    let by_routes: HashSet<&str> = config
        .routes
        .iter()
        .filter_map(|r| r.upstream.as_deref())
        .collect();
    config
        .upstreams
        .iter()
        .map(|u| u.name.as_str())
        .filter(|n| !by_routes.contains(n) && (any_node || by_rules.contains(n)))
        .collect()
}

fn routes(
    raw: &[RouteSection],
    env: &RouteEnv<'_>,
    prev: Option<&Snapshot>,
    errors: &mut ConfigErrors,
) -> Vec<Route> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = At::root().index("routes", i);
        if r.name.is_empty() {
            errors.push(at.key("name"), "must not be empty");
        } else if !names.insert(r.name.as_str()) {
            errors.push(
                at.key("name"),
                format!("route `{}` is defined twice", r.name),
            );
        }
        let previous = prev.and_then(|p| p.routes.routes().iter().find(|x| *x.name == *r.name));
        out.extend(r.build(&at, env, previous, errors));
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;
    use crate::section::error::assert_exactly;

    fn errors(yaml: &str) -> Vec<String> {
        let text = format!("listeners: [{{ name: web, listen: \"127.0.0.1:1\" }}]\n{yaml}");
        match load_str(&text, None) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn alert_webhook_errors_name_their_paths() {
        let errs = errors(
            r#"
upstreams:
  - { name: sink, backends: ["127.0.0.1:1"] }
routes:
  - name: a
    match: { path_prefix: /alerts }
    plugin:
      alert_webhook:
        auth: { bearer: { token: "" } }
        destinations:
          - { name: broken, upstream: sink, template: { inline: "{{ alerts | nosuchfilter }}" } }
          - { name: unclosed, url: "https://hooks.example.com/x", template: { inline: "{% if x %}" } }
          - { name: nowhere, upstream: gone, template: { builtin: slack } }
          - { name: pd, upstream: sink, template: { builtin: pagerduty } }
          - { name: both, upstream: sink, url: "http://x/", template: { builtin: nope } }
          - { name: batch, url: "ftp://x/", template: { builtin: generic }, split: batch }
  - name: b
    plugin: { alert_webhook: { destinations: [] } }
  - name: c
    match: { path_prefix: /c }
    upstream: sink
    plugin: { alert_webhook: { destinations: [{ name: d, upstream: sink, template: { builtin: generic } }] } }
"#,
        );
        let at = "routes[0].plugin.alert_webhook";
        let expected = [
            format!("{at}.auth.bearer.token: must not be empty"),
            format!("{at}.destinations[0].template: line 1: "),
            format!("{at}.destinations[1].template: line 1: "),
            format!("{at}.destinations[2].upstream: no upstream named `gone`"),
            format!("{at}.destinations[3].split: the pagerduty template sends one event per alert"),
            format!("{at}.destinations[4]: give either url or upstream, not both"),
            format!("{at}.destinations[4].template.builtin: no ready-made template `nope`"),
            format!("{at}.destinations[5].url: must start with http:// or https://"),
            format!("{at}.destinations[5].batch_size: split: batch needs a batch_size"),
            "routes[1].plugin.alert_webhook: needs its route to match a path_prefix".to_owned(),
            "routes[2]: its plugin answers every request: drop upstream and respond".to_owned(),
        ];
        for want in &expected {
            assert!(
                errs.iter().any(|e| e.starts_with(want.as_str())),
                "missing {want:?} in:\n{}",
                errs.join("\n")
            );
        }
        assert_eq!(errs.len(), expected.len(), "{}", errs.join("\n"));
    }

    #[test]
    fn semantic_errors_are_all_collected_with_paths() {
        let errs = errors(
            r#"
upstreams:
  - { name: a, backends: ["127.0.0.1:1", "127.0.0.1:1"] }
  - { name: a, backends: ["nope"] }
  - { name: b, backends: ["127.0.0.1:2 speed=3"], hash_key: path }
  - { name: c, backends: [], timeouts: { connect: 0 } }
  - { name: d, backends: ["127.0.0.1:3"], least_conn_choices: 4 }
  - { name: e, backends: ["127.0.0.1:3"], balance: least_conn, least_conn_choices: 1 }
routes:
  - { name: r, match: { host: "api.example.com:80" }, upstream: a }
  - { name: r, match: { path: /x, path_prefix: /y }, respond: { body: x } }
  - { name: t, upstream: a, respond: { body: x } }
  - { name: u }
  - { name: v, match: { headers: [{ name: "bad header", value: x }] }, upstream: a, rewrite: { strip_prefix: api } }
  - { name: w, upstream: a, request_headers: { set: { x-ok: "line\nbreak" } }, rewrite: { pattern: "^/(.*)$" } }
  - { name: x, match: { methods: ["G T"], host: "*." }, respond: { status: 99 } }
"#,
        );
        let expected = [
            "upstreams[0].backends[1]: 127.0.0.1:1 is listed twice",
            "upstreams[1].name: upstream `a` is defined twice",
            "upstreams[1].backends[0]: `nope` has no port",
            "upstreams[2].backends[0]: unknown backend option `speed=3`",
            "upstreams[2].hash_key: only used with balance: consistent_hash",
            "upstreams[3].backends: at least one backend is needed",
            "upstreams[3].timeouts.connect: must be above zero",
            "upstreams[4].least_conn_choices: only used with balance: least_conn",
            "upstreams[5].least_conn_choices: must be 2 to 128",
            "routes[0].match.host: `api.example.com:80` must not carry a port",
            "routes[1].name: route `r` is defined twice",
            "routes[1].match: use only one of path, path_prefix and path_regex",
            "routes[2]: give either upstream or respond, not both",
            "routes[3]: needs an action: upstream or respond",
            "routes[4].match.headers[0].name: `bad header` is not a valid header name",
            "routes[4].rewrite.strip_prefix: `api` must start with `/`",
            "routes[5].rewrite: pattern and replace go together",
            "routes[5].request_headers.set.x-ok: not a valid header value (not shown",
            "routes[6].match.host: `*.` is not a valid wildcard",
            "routes[6].match.methods[0]: `G T` is not an HTTP method",
            "routes[6].respond.status: `99` is not a final HTTP status",
        ];
        assert_exactly(&errs, &expected);
    }

    #[test]
    fn zookeeper_upstreams_are_checked() {
        let errs = errors(
            r#"
upstreams:
  - { name: a, zookeeper: { service: api } }
routes: [{ name: r, upstream: a }]
"#,
        );
        assert_eq!(
            errs,
            ["upstreams[0].zookeeper: needs the top-level zookeeper: section (connect: ...)"]
        );
        let errs = errors(
            r#"
zookeeper: { connect: "", root: zkgate/, session_timeout: 100ms }
upstreams:
  - { name: a, zookeeper: { service: api }, backends: ["127.0.0.1:1"] }
  - { name: b, zookeeper: { service: "x/y" } }
  - { name: c, zookeeper: { path: "relative" } }
  - { name: d, zookeeper: { service: s, path: /p } }
routes: [{ name: r, upstream: a }]
"#,
        );
        let expected = [
            "zookeeper.connect: must name at least one host:port",
            "zookeeper.session_timeout: must be at least 1s",
            "zookeeper.root: `zkgate/` is not an absolute ZooKeeper path",
            "upstreams[0]: give either backends or zookeeper, not both",
            "upstreams[1].zookeeper: service `x/y` must be a plain name",
            "upstreams[2].zookeeper: `relative` is not an absolute ZooKeeper path",
            "upstreams[3].zookeeper: give either service: NAME or path: /absolute/path",
        ];
        assert_exactly(&errs, &expected);
        let ok = load_str(
            "listeners: [{ name: web, listen: \"127.0.0.1:1\" }]\nzookeeper: { connect: \"127.0.0.1:2181\", root: /r }\nupstreams: [{ name: a, zookeeper: { service: api } }, { name: b, zookeeper: { path: /real_server } }]\nroutes: [{ name: r, upstream: a }]\n",
            None,
        )
        .expect("valid");
        assert_eq!(
            ok.upstream("a").unwrap().discovery.as_deref(),
            Some("/r/services/api")
        );
        assert_eq!(
            ok.upstream("b").unwrap().discovery.as_deref(),
            Some("/real_server")
        );
    }

    #[test]
    fn zookeeper_chroot_and_digest_are_checked_and_built() {
        let errs = errors(
            r#"
zookeeper:
  connect: "h1:2181,,h3:2181/a"
  chroot: /b
  digest: { user: "x:y", password: p }
upstreams: [{ name: a, backends: ["127.0.0.1:1"] }]
routes: [{ name: r, upstream: a }]
"#,
        );
        assert_exactly(
            &errs,
            &[
                "zookeeper.connect: must name at least one host:port, separated by commas",
                "zookeeper.chroot: give the chroot either here or as a /suffix of connect",
                "zookeeper.digest.user: must be a non-empty name without `:`",
            ],
        );
        let errs = errors(
            "zookeeper: { connect: \"h:1\", chroot: \"rel\" }\nupstreams: [{ name: a, backends: [\"127.0.0.1:1\"] }]\nroutes: [{ name: r, upstream: a }]\n",
        );
        assert_exactly(
            &errs,
            &["zookeeper.chroot: `rel` is not an absolute ZooKeeper path"],
        );

        let ok = load_str(
            "listeners: [{ name: web, listen: \"127.0.0.1:1\" }]\nzookeeper: { connect: \"h1:2181,h2:2181\", chroot: /prod, digest: { user: gw, password: s3cret } }\nupstreams: [{ name: a, zookeeper: { service: api } }]\nroutes: [{ name: r, upstream: a }]\n",
            None,
        )
        .expect("valid");
        let zk = ok.settings.zookeeper.as_ref().unwrap();
        assert_eq!(zk.connect, "h1:2181,h2:2181/prod");
        assert_eq!(zk.digest.as_ref().unwrap().password, "s3cret");
        // `/config` shows the config without the password.
        let shown = ok.shown.to_string();
        assert!(
            shown.contains("<redacted>") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn header_edit_values_are_secret_unless_public() {
        let errs = errors(
            r#"
upstreams: [{ name: a, backends: ["127.0.0.1:1"] }]
routes:
  - name: r
    upstream: a
    request_headers:
      set: { authorization: "Bearer up", x-key: "s3cret\x01" }
      public: [authorization, x-missing, "bad name"]
"#,
        );
        assert_exactly(
            &errs,
            &[
                "routes[0].request_headers.public[0]: `authorization` carries credentials",
                "routes[0].request_headers.public[1]: `x-missing` is not a header of set or add",
                "routes[0].request_headers.public[2]: `bad name` is not a valid header name",
                "routes[0].request_headers.set.x-key: not a valid header value (not shown",
            ],
        );
        assert!(!errs.concat().contains("s3cret"), "{errs:?}");

        // A number where a secret goes is refused without being shown.
        let errs = errors(
            "zookeeper: { connect: \"h:1\", digest: { user: u, password: 91827364 } }\nadmin: { token: 123456789012345678 }\nupstreams: [{ name: a, backends: [\"127.0.0.1:1\"] }]\nroutes: [{ name: r, upstream: a, request_headers: { set: { x-pin: 5551234 } } }]\n",
        );
        assert_exactly(
            &errs,
            &[
                "zookeeper.digest.password: must be a string: put it in quotes",
                "admin.token: must be a string: put it in quotes",
                "routes[0].request_headers.set.x-pin: must be a string: put it in quotes",
            ],
        );
        for number in ["91827364", "123456789012345678", "5551234"] {
            assert!(!errs.concat().contains(number), "{errs:?}");
        }

        let text = r#"
listeners: [{ name: web, listen: "127.0.0.1:1" }]
upstreams: [{ name: a, backends: ["127.0.0.1:1"] }]
routes:
  - name: r
    match: { headers: [{ name: Authorization, value: "Bearer in-s3cret" }, { name: x-v, value: "2" }] }
    upstream: a
    request_headers:
      set: { authorization: "Bearer up-s3cret", X-Proto: https }
      add: { x-key: add-s3cret }
      public: [x-proto]
    response_headers: { set: { set-cookie: "c=out-s3cret" } }
"#;
        let ok = load_str(text, None).expect("valid");
        let raw = crate::config::parse::parse(text).expect("valid");
        let shown = ok.shown.to_string();
        let debug = format!("{raw:?} {:?}", ok.routes.routes()[0].request_headers);
        for text in [&shown, &debug] {
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains("https"), "{text}");
        }
        assert_eq!(
            ok.shown["routes"][0]["match"]["headers"][1],
            serde_json::json!({ "name": "x-v", "value": "2", "regex": null }),
            "{shown}"
        );
        let route = &ok.routes.routes()[0];
        let sensitive = |ops: &crate::route::HeaderOps| -> Vec<(String, bool)> {
            ops.set
                .iter()
                .chain(ops.add.iter())
                .map(|(n, v)| (n.to_string(), v.is_sensitive()))
                .collect()
        };
        assert_eq!(
            sensitive(&route.request_headers),
            [
                ("x-proto".into(), false),
                ("authorization".into(), true),
                ("x-key".into(), true)
            ]
        );
        assert_eq!(
            sensitive(&route.response_headers),
            [("set-cookie".into(), true)]
        );
        let mut secret = ok.secrets.header_names.clone();
        secret.sort_unstable();
        assert_eq!(secret, ["authorization", "set-cookie", "x-key"]);
    }

    #[test]
    fn every_secret_value_is_found_for_the_logger() {
        let text = r#"
listeners: [{ name: web, listen: "127.0.0.1:1" }]
admin: { token: admin-token-0123456789 }
zookeeper: { connect: "h:1", digest: { user: u, password: zk-password } }
upstreams: [{ name: a, backends: ["127.0.0.1:1"] }]
routes:
  - name: r
    match: { path_prefix: /alerts }
    plugin:
      alert_webhook:
        auth: { bearer: { token: am-token } }
        destinations:
          - name: s
            url: "https://hooks.slack.com/services/T0/B0/XyZ"
            headers: { x-key: hk-s3cret }
            vars: { rk: vv-s3cret }
            template: { builtin: slack }
"#;
        let ok = load_str(text, None).expect("valid");
        let mut found = ok.secrets.values.clone();
        found.sort_unstable();
        assert_eq!(
            found,
            [
                "admin-token-0123456789",
                "am-token",
                "hk-s3cret",
                "https://hooks.slack.com/services/T0/B0/XyZ",
                "vv-s3cret",
                "zk-password"
            ]
        );
        // Collecting is switched off again: a later serialization collects nothing.
        let raw = crate::config::parse::parse(text).expect("valid");
        let _ = serde_json::to_string(&raw).unwrap();
        assert_eq!(raw.secret_values().len(), 6);
        let mut names = ok.secrets.header_names.clone();
        names.sort_unstable();
        assert_eq!(names, ["x-key"]);
    }

    #[test]
    fn admin_token_is_checked_and_hidden() {
        let base = "upstreams: [{ name: a, backends: [\"127.0.0.1:1\"] }]\nroutes: [{ name: r, upstream: a }]\n";
        for (token, why) in [
            ("short", "admin.token: must be at least 16 characters"),
            (
                "with a space inside it",
                "admin.token: must be printable ASCII",
            ),
            ("", "admin.token: must be at least 16 characters"),
        ] {
            let errs = errors(&format!("admin: {{ token: \"{token}\" }}\n{base}"));
            assert_exactly(&errs, &[why]);
        }
        let ok = load_str(
            &format!("listeners: [{{ name: web, listen: \"127.0.0.1:1\" }}]\nadmin: {{ token: 0123456789abcdef-s3cret }}\n{base}"),
            None,
        )
        .expect("valid");
        let token = ok.admin_token.as_ref().expect("a token");
        assert!(token.verify(b"0123456789abcdef-s3cret"));
        assert!(!token.verify(b"0123456789abcdef-s3cre"));
        assert!(!token.verify(b""));
        let shown = ok.shown.to_string();
        let debug = format!("{ok:?}");
        for text in [&shown, &debug] {
            assert!(!text.contains("s3cret"), "{text}");
        }
        assert!(load_str(
            &format!("listeners: [{{ name: web, listen: \"127.0.0.1:1\" }}]\n{base}"),
            None
        )
        .expect("valid")
        .admin_token
        .is_none());
    }

    #[test]
    fn hash_key_is_needed_only_by_an_upstream_an_http_route_sends_to() {
        let config = |routes: &str, rules_node: &str| {
            format!(
                r#"
zookeeper: {{ connect: "127.0.0.1:2181" }}
listeners:
  - {{ name: web, listen: "127.0.0.1:1" }}
  - {{ name: game, listen: "127.0.0.1:2", game: {{ rules: [{{ server_type: 2, upstream: battle }}]{rules_node} }} }}
upstreams:
  - {{ name: battle, balance: consistent_hash, backends: ["127.0.0.1:3"] }}
  - {{ name: lobby, backends: ["127.0.0.1:4"] }}
  - {{ name: spare, balance: consistent_hash, backends: ["127.0.0.1:5"] }}
routes: [{routes}]
"#
            )
        };
        let needs = |at: &str| {
            format!("{at}.hash_key: consistent_hash needs a hash_key: client_ip, path, header:NAME, cookie:NAME or query:NAME")
        };
        let errs = |text: &str| match load_str(text, None) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        // Game rules alone use battle: no hash_key; spare has no user at all: as before.
        let text = config("{ name: r, upstream: lobby }", "");
        assert_eq!(errs(&text), [needs("upstreams[2]")]);
        // An HTTP route sends to battle as well: it needs one, at its path.
        let text = config(
            "{ name: r, upstream: lobby }, { name: h, upstream: battle }",
            "",
        );
        let upstream_errors: Vec<String> = errs(&text)
            .into_iter()
            .filter(|e| e.starts_with("upstreams"))
            .collect();
        assert_eq!(
            upstream_errors,
            [needs("upstreams[0]"), needs("upstreams[2]")]
        );
        // A rules node may name any upstream: spare, which no route uses, may go without.
        let text = config(
            "{ name: r, upstream: lobby }",
            ", rules_node: /zkgate/rules",
        );
        let snap = load_str(&text, None).expect("valid");
        assert!(snap.upstream("battle").unwrap().policy.hash_key.is_none());
        assert!(snap.upstream("spare").unwrap().policy.hash_key.is_none());
    }

    #[test]
    fn a_valid_config_builds_and_reuses_unchanged_upstreams() {
        let yaml = "listeners: [{ name: web, listen: \"127.0.0.1:1\" }]\nupstreams: [{ name: a, backends: [\"127.0.0.1:2\"] }, { name: b, backends: [\"127.0.0.1:3\"] }]\nroutes: [{ name: r, upstream: a }]\n";
        let first = load_str(yaml, None).expect("valid");
        let second =
            load_str(&yaml.replace("127.0.0.1:3", "127.0.0.1:4"), Some(&first)).expect("valid");
        assert_eq!(second.generation, 2);
        assert!(std::sync::Arc::ptr_eq(
            first.upstream("a").unwrap(),
            second.upstream("a").unwrap()
        ));
        assert!(!std::sync::Arc::ptr_eq(
            first.upstream("b").unwrap(),
            second.upstream("b").unwrap()
        ));
    }
}
