//! The `alert_webhook` plugin's config: its YAML shape, and the build step that checks it with
//! every error located and turns it into the plugin's runtime objects (templates compiled,
//! headers parsed, secrets turned into keys, spool directories checked; a spool is opened on
//! first use, so that `zkgate check` and a rejected reload touch no disk).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::Method;
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::deliver::{Backoff, BackoffKind, Sender, Signature, Target};
use super::metrics::DestinationMetrics;
use super::spool::LazySpool;
use super::template::{DestinationValues, Template};
use super::{AlertWebhook, Auth, Destination, Split};
use crate::plugin::{PluginBuild, PluginCx};
use crate::section::Secret;
use crate::section::{At, ConfigErrors};
use crate::section::{Dur, Size};
use crate::upstream::breaker::Breaker;
use crate::upstream::config::BreakerSection;
use crate::upstream::{PeerSettings, Protocol, TlsSettings, Upstream};

pub const DEFAULT_MAX_BODY: u64 = 10 << 20;
pub const DEFAULT_MAX_ALERTS: usize = 1000;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SPOOL_BYTES: u64 = 256 << 20;
/// The largest template accepted, from a file or inline: the ready-made ones are under 6 KiB.
pub const MAX_TEMPLATE_BYTES: usize = 256 << 10;
/// The largest `ca_file` accepted: a full public CA bundle is about 220 KiB.
pub const MAX_CA_FILE_BYTES: usize = 4 << 20;
/// Idle connections kept for reuse, over all of a plugin's destinations (Pingora's default).
const KEEPALIVE_POOL: usize = 128;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertWebhookSection {
    /// Who may post: nobody is asked by default. `{ basic: {user, password} }` or
    /// `{ bearer: { token } }`.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub auth: Option<AuthSection>,
    /// Larger bodies get 413 (default 10 MiB).
    pub max_body: Option<Size>,
    /// Payloads with more alerts get 413 (default 1000).
    pub max_alerts: Option<usize>,
    /// Where messages a destination did not take wait for it. Without one, a failed delivery
    /// answers 502 and Alertmanager sends the whole group again later.
    pub spool: Option<SpoolSection>,
    /// CA bundle for `https://` destinations (default: the system's, or `SSL_CERT_FILE`).
    pub ca_file: Option<String>,
    pub destinations: Vec<DestinationSection>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSection {
    Basic { user: String, password: Secret },
    Bearer { token: Secret },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Each destination spools in a directory of its name under this one.
    pub dir: String,
    /// Per destination (default 256 MiB); when full, webhooks for it get 503.
    pub max_bytes: Option<Size>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationSection {
    /// The last path segment Alertmanager posts to: `<route prefix>/<name>`.
    pub name: String,
    /// An absolute `http://` or `https://` URL (it often holds a token, so `/config` hides it)...
    pub url: Option<Secret>,
    /// ...or an upstream of the gateway and the path to post to there.
    pub upstream: Option<String>,
    pub path: Option<String>,
    /// The Host header for an upstream destination (default: the backend's address).
    pub host: Option<String>,
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Default `application/json`; with it, each rendered message must be valid JSON.
    pub content_type: Option<String>,
    /// For one try, connection included (default 10s).
    pub timeout: Option<Dur>,
    /// `{ builtin: NAME }`, `{ file: PATH }` or `{ inline: TEXT }`.
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub template: TemplateSource,
    /// Values the template reads as `vars.NAME` (routing keys, channels); hidden in `/config`.
    #[serde(default)]
    pub vars: BTreeMap<String, Secret>,
    #[serde(default)]
    pub split: SplitKind,
    /// Alerts per message with `split: batch`.
    pub batch_size: Option<usize>,
    /// Messages of one webhook in flight at once (default 1: in order).
    pub parallel: Option<usize>,
    #[serde(default)]
    pub retry: RetrySection,
    pub circuit_breaker: Option<BreakerSection>,
    pub signature: Option<SignatureSection>,
}

/// Exactly one of a ready-made template, a file, or the text itself.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TemplateSource {
    /// `slack`, `teams`, `googlechat`, `pagerduty` or `generic`, built into the binary.
    Builtin(String),
    File(String),
    Inline(String),
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// One message for the whole group.
    #[default]
    None,
    PerAlert,
    Batch,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Tries in all, the first included (default 3).
    pub attempts: Option<u32>,
    pub backoff: Option<BackoffName>,
    /// Before the first retry (default 500ms).
    pub initial_delay: Option<Dur>,
    /// The longest pause between tries (default 30s).
    pub max_delay: Option<Dur>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackoffName {
    Exponential,
    Linear,
    Constant,
}

/// An HMAC-SHA256 of each message's body in `header` (default `X-Signature-256`), as `prefix`
/// (default `sha256=`) and hex.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignatureSection {
    pub secret: Secret,
    pub header: Option<String>,
    pub prefix: Option<String>,
}

/// The ready-made templates, built into the binary so that a scratch image needs no files.
pub const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (
        "slack",
        include_str!("../../../conf/templates/slack.json.j2"),
    ),
    (
        "teams",
        include_str!("../../../conf/templates/teams.json.j2"),
    ),
    (
        "googlechat",
        include_str!("../../../conf/templates/googlechat.json.j2"),
    ),
    (
        "pagerduty",
        include_str!("../../../conf/templates/pagerduty.json.j2"),
    ),
    (
        "generic",
        include_str!("../../../conf/templates/generic.json.j2"),
    ),
];

impl PluginBuild for AlertWebhook {
    type Section = AlertWebhookSection;

    /// Every request to the route is a webhook for one of its destinations.
    fn answers_itself(_: &AlertWebhookSection) -> bool {
        true
    }

    fn route(&self) -> &str {
        &self.route
    }

    fn build(
        section: &AlertWebhookSection,
        cx: &PluginCx<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<AlertWebhook> {
        build(section, cx, errors)
    }
}

/// Builds the plugin of route `cx.route` (at config path `cx.at`, the `alert_webhook`
/// section), collecting every error. Destinations name the gateway's upstreams by name.
fn build(
    section: &AlertWebhookSection,
    cx: &PluginCx<'_>,
    errors: &mut ConfigErrors,
) -> Option<AlertWebhook> {
    let (route, prefix, at) = (cx.route, cx.path_prefix, cx.at.as_str());
    let upstream = cx.upstreams;
    let before = errors.len();
    let Some(prefix) = prefix else {
        errors.push(
            at.to_owned(),
            "needs its route to match a path_prefix: Alertmanager posts to <prefix>/<destination>",
        );
        return None;
    };
    let auth = match &section.auth {
        None => Auth::None,
        Some(AuthSection::Basic { user, password }) => {
            if user.contains(':') {
                errors.push(format!("{at}.auth.basic.user"), "must not contain `:`");
            }
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.0));
            Auth::Header(format!("Basic {token}").into_bytes())
        }
        Some(AuthSection::Bearer { token }) => {
            if token.0.is_empty() {
                errors.push(format!("{at}.auth.bearer.token"), "must not be empty");
            }
            Auth::Header(format!("Bearer {}", token.0).into_bytes())
        }
    };
    let max_body = section.max_body.map_or(DEFAULT_MAX_BODY, |s| s.0);
    if max_body == 0 {
        errors.push(format!("{at}.max_body"), "must be above zero");
    }
    let max_alerts = section.max_alerts.unwrap_or(DEFAULT_MAX_ALERTS);
    if max_alerts == 0 {
        errors.push(format!("{at}.max_alerts"), "must be at least 1");
    }
    if let Some(ca) = &section.ca_file {
        match read_regular_file(ca, MAX_CA_FILE_BYTES) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {}
            Ok(_) => errors.push(
                format!("{at}.ca_file"),
                format!("{ca} holds no PEM certificate"),
            ),
            Err(e) => errors.push(format!("{at}.ca_file"), format!("cannot read {ca}: {e}")),
        }
    }
    if section.destinations.is_empty() {
        errors.push(
            format!("{at}.destinations"),
            "at least one destination is needed",
        );
    }
    if let Some(s) = &section.spool {
        if s.dir.is_empty() {
            errors.push(format!("{at}.spool.dir"), "must not be empty");
        }
        if s.max_bytes.is_some_and(|m| m.0 == 0) {
            errors.push(format!("{at}.spool.max_bytes"), "must be above zero");
        }
    }
    let mut destinations = Vec::new();
    for (i, d) in section.destinations.iter().enumerate() {
        let at = format!("{at}.destinations[{i}]");
        if section.destinations[..i].iter().any(|o| o.name == d.name) {
            errors.push(
                format!("{at}.name"),
                format!("destination `{}` is defined twice", d.name),
            );
        }
        if let Some(dest) = destination(d, &at, section.spool.as_ref(), upstream, errors) {
            destinations.push(Arc::new(dest));
        }
    }
    if errors.len() > before {
        return None;
    }
    let mut options = pingora::connectors::ConnectorOptions::new(KEEPALIVE_POOL);
    options.ca_file = section.ca_file.clone();
    Some(AlertWebhook::new(
        route.into(),
        prefix.trim_end_matches('/').to_owned(),
        auth,
        max_body,
        max_alerts,
        destinations,
        pingora::connectors::http::Connector::new(Some(options)),
    ))
}

fn destination(
    d: &DestinationSection,
    at: &str,
    spool: Option<&SpoolSection>,
    upstream: &dyn Fn(&str) -> Option<Arc<Upstream>>,
    errors: &mut ConfigErrors,
) -> Option<Destination> {
    let before = errors.len();
    if d.name.is_empty() || d.name.contains('/') || d.name.starts_with('.') {
        errors.push(
            format!("{at}.name"),
            "must be one path segment, not starting with `.`",
        );
    }
    let timeout = d.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
    if timeout.is_zero() {
        errors.push(format!("{at}.timeout"), "must be above zero");
    }
    let target = target(d, at, timeout, upstream, errors);
    let method = match d.method.as_deref().unwrap_or("POST").parse::<Method>() {
        Ok(m) => m,
        Err(_) => {
            errors.push(format!("{at}.method"), "is not an HTTP method");
            Method::POST
        }
    };
    let content_type = d.content_type.as_deref().unwrap_or("application/json");
    let mut headers = Vec::new();
    match HeaderValue::from_str(content_type) {
        Ok(v) => headers.push((CONTENT_TYPE, v)),
        Err(_) => errors.push(format!("{at}.content_type"), "is not a valid header value"),
    }
    for (k, v) in &d.headers {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v.0),
        ) {
            (Ok(name), Ok(value)) => headers.push((name, value)),
            (Err(_), _) => errors.push(format!("{at}.headers.{k}"), "is not a valid header name"),
            (_, Err(_)) => errors.push(format!("{at}.headers.{k}"), "is not a valid header value"),
        }
    }
    let json = content_type.split(';').next().is_some_and(|t| {
        t.trim().eq_ignore_ascii_case("application/json") || t.trim().ends_with("+json")
    });
    let template = template(
        &d.template,
        &d.name,
        json,
        &format!("{at}.template"),
        errors,
    );
    let split = match (d.split, d.batch_size) {
        (SplitKind::None, None) => Split::None,
        (SplitKind::PerAlert, None) => Split::PerAlert,
        (SplitKind::Batch, Some(n)) if n > 0 => Split::Batch(n),
        (SplitKind::Batch, Some(_)) => {
            errors.push(format!("{at}.batch_size"), "must be at least 1");
            Split::None
        }
        (SplitKind::Batch, None) => {
            errors.push(
                format!("{at}.batch_size"),
                "split: batch needs a batch_size",
            );
            Split::None
        }
        (_, Some(_)) => {
            errors.push(format!("{at}.batch_size"), "only used with split: batch");
            Split::None
        }
    };
    // PagerDuty takes one event per alert, and its template reads only the message's first
    // alert: any other split would drop the rest without a word.
    if d.template == TemplateSource::Builtin("pagerduty".into()) && split != Split::PerAlert {
        errors.push(
            format!("{at}.split"),
            "the pagerduty template sends one event per alert: use split: per_alert",
        );
    }
    let parallel = d.parallel.unwrap_or(1);
    if parallel == 0 {
        errors.push(format!("{at}.parallel"), "must be at least 1");
    }
    let retry = backoff(&d.retry, &format!("{at}.retry"), errors);
    let breaker = d
        .circuit_breaker
        .as_ref()
        .and_then(|b| b.policy(&At::new(at).key("circuit_breaker"), errors))
        .map(|p| Breaker::new(&d.name, p));
    let signature = d.signature.as_ref().and_then(|s| {
        let header = s.header.as_deref().unwrap_or("X-Signature-256");
        if s.secret.0.is_empty() {
            errors.push(format!("{at}.signature.secret"), "must not be empty");
        }
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(header) => Some(Signature {
                header,
                prefix: s.prefix.clone().unwrap_or_else(|| "sha256=".into()),
                key: hmac::Key::new(hmac::HMAC_SHA256, s.secret.0.as_bytes()),
            }),
            Err(_) => {
                errors.push(
                    format!("{at}.signature.header"),
                    "is not a valid header name",
                );
                None
            }
        }
    });
    let spool = spool.and_then(|s| {
        let dir = PathBuf::from(&s.dir).join(&d.name);
        let max = s.max_bytes.map_or(DEFAULT_SPOOL_BYTES, |m| m.0);
        LazySpool::new(dir, max)
            .map_err(|e| errors.push(at.to_owned(), format!("spool: {e}")))
            .ok()
    });
    if errors.len() > before {
        return None;
    }
    Some(Destination {
        name: d.name.as_str().into(),
        sender: Sender {
            target: target?,
            method,
            headers,
            timeout,
            breaker,
            signature,
        },
        template: template?,
        json,
        values: DestinationValues::new(
            &d.name,
            &d.vars
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        ),
        split,
        parallel,
        retry,
        spool,
        replay_after_ms: AtomicU64::new(0),
        metrics: DestinationMetrics::default(),
    })
}

fn target(
    d: &DestinationSection,
    at: &str,
    timeout: Duration,
    upstream: &dyn Fn(&str) -> Option<Arc<Upstream>>,
    errors: &mut ConfigErrors,
) -> Option<Target> {
    match (&d.url, &d.upstream) {
        (Some(url), None) => {
            if d.path.is_some() || d.host.is_some() {
                errors.push(at.to_owned(), "path and host go with upstream, not url");
            }
            url_target(&url.0)
                .map_err(|e| errors.push(format!("{at}.url"), e))
                .ok()
                .map(|(host, port, tls, path)| Target::Url {
                    authority: match (tls, port) {
                        (true, 443) | (false, 80) => host.clone(),
                        _ => format!("{host}:{port}"),
                    },
                    settings: PeerSettings {
                        connect_timeout: timeout,
                        read_timeout: timeout,
                        write_timeout: timeout,
                        idle_timeout: Duration::from_secs(90),
                        tls: tls.then(|| TlsSettings {
                            sni: host.clone(),
                            verify: true,
                        }),
                        protocol: Protocol::Http1,
                    },
                    host,
                    port,
                    path,
                })
        }
        (None, Some(name)) => {
            let path = d.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                errors.push(format!("{at}.path"), "must start with `/`");
            }
            match upstream(name) {
                Some(u) => Some(Target::Upstream {
                    upstream: u,
                    path,
                    host: d.host.clone(),
                }),
                None => {
                    errors.push(
                        format!("{at}.upstream"),
                        format!("no upstream named `{name}`"),
                    );
                    None
                }
            }
        }
        (Some(_), Some(_)) => {
            errors.push(at.to_owned(), "give either url or upstream, not both");
            None
        }
        (None, None) => {
            errors.push(at.to_owned(), "needs a url or an upstream");
            None
        }
    }
}

/// `(host, port, tls, path and query)` of an absolute http(s) URL.
fn url_target(url: &str) -> Result<(String, u16, bool, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("must start with http:// or https://".into()),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or("has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("must not carry credentials: use headers".into());
    }
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok((
        host,
        port,
        tls,
        if path.is_empty() { "/".into() } else { path },
    ))
}

fn template(
    source: &TemplateSource,
    destination: &str,
    json: bool,
    at: &str,
    errors: &mut ConfigErrors,
) -> Option<Template> {
    let (name, text) = match source {
        TemplateSource::Builtin(name) => match BUILTIN_TEMPLATES.iter().find(|(n, _)| n == name) {
            Some((n, text)) => (format!("builtin:{n}"), (*text).to_owned()),
            None => {
                let known: Vec<&str> = BUILTIN_TEMPLATES.iter().map(|(n, _)| *n).collect();
                errors.push(
                    format!("{at}.builtin"),
                    format!(
                        "no ready-made template `{name}` (there are {})",
                        known.join(", ")
                    ),
                );
                return None;
            }
        },
        TemplateSource::File(path) => match read_regular_file(path, MAX_TEMPLATE_BYTES) {
            Ok(text) => (path.clone(), text),
            Err(e) => {
                errors.push(format!("{at}.file"), format!("cannot read {path}: {e}"));
                return None;
            }
        },
        TemplateSource::Inline(text) if text.len() > MAX_TEMPLATE_BYTES => {
            errors.push(
                format!("{at}.inline"),
                format!(
                    "the template is {} bytes, more than the {MAX_TEMPLATE_BYTES} allowed",
                    text.len()
                ),
            );
            return None;
        }
        TemplateSource::Inline(text) => (format!("{destination}.inline"), text.clone()),
    };
    let compiled = Template::compile(&name, &text)
        .map_err(|e| errors.push(at.to_owned(), e.to_string()))
        .ok()?;
    // A JSON destination's template must make JSON of a sample payload, so that a quoting slip
    // is a config error, not a webhook that fails at 3 a.m.
    if json {
        if let Err(e) = compiled.check_json() {
            errors.push(at.to_owned(), e.to_string());
            return None;
        }
    }
    Some(compiled)
}

/// A file's text, if it is a regular file of at most `max` bytes: a device (`/dev/zero`), a
/// FIFO or a directory would block or never end the read that `check` and every reload make.
fn read_regular_file(path: &str, max: usize) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.len() > max as u64 {
        return Err(format!("{} bytes, more than the {max} allowed", meta.len()));
    }
    // Bounded again: the file may have grown since.
    crate::section::file::read_bounded(std::path::Path::new(path), max).map_err(|e| e.to_string())
}

fn backoff(r: &RetrySection, at: &str, errors: &mut ConfigErrors) -> Backoff {
    let b = Backoff {
        attempts: r.attempts.unwrap_or(3),
        kind: match r.backoff.unwrap_or(BackoffName::Exponential) {
            BackoffName::Exponential => BackoffKind::Exponential,
            BackoffName::Linear => BackoffKind::Linear,
            BackoffName::Constant => BackoffKind::Constant,
        },
        initial: r.initial_delay.map_or(Duration::from_millis(500), |d| d.0),
        max: r.max_delay.map_or(Duration::from_secs(30), |d| d.0),
    };
    if b.attempts == 0 {
        errors.push(format!("{at}.attempts"), "must be at least 1");
    }
    if b.initial.is_zero() {
        errors.push(format!("{at}.initial_delay"), "must be above zero");
    }
    if b.max < b.initial {
        errors.push(format!("{at}.max_delay"), "must be at least initial_delay");
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_what_a_peer_needs() {
        assert_eq!(
            url_target("https://hooks.slack.com/services/T/B/x?y=1").unwrap(),
            (
                "hooks.slack.com".into(),
                443,
                true,
                "/services/T/B/x?y=1".into()
            )
        );
        assert_eq!(
            url_target("http://127.0.0.1:8080").unwrap(),
            ("127.0.0.1".into(), 8080, false, "/".into())
        );
        assert_eq!(url_target("http://[::1]:9/x").unwrap().0, "::1");
        for bad in [
            "ftp://x/",
            "/relative",
            "https://user:pw@host/",
            "not a url",
        ] {
            assert!(url_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn template_and_ca_files_must_be_small_regular_files() {
        assert_eq!(
            read_regular_file("/dev/zero", MAX_TEMPLATE_BYTES).unwrap_err(),
            "not a regular file"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let at = dir.path().to_str().expect("utf-8 path");
        assert_eq!(
            read_regular_file(at, MAX_TEMPLATE_BYTES).unwrap_err(),
            "not a regular file"
        );
        let big = dir.path().join("big.j2");
        std::fs::write(&big, vec![b'x'; MAX_TEMPLATE_BYTES + 1]).expect("write");
        let e = read_regular_file(big.to_str().expect("utf-8"), MAX_TEMPLATE_BYTES).unwrap_err();
        assert_eq!(e, "262145 bytes, more than the 262144 allowed");
        let ok = dir.path().join("ok.j2");
        std::fs::write(&ok, "{{ receiver }}").expect("write");
        assert_eq!(
            read_regular_file(ok.to_str().expect("utf-8"), MAX_TEMPLATE_BYTES).unwrap(),
            "{{ receiver }}"
        );
    }

    #[test]
    fn every_builtin_template_compiles() {
        for (name, text) in BUILTIN_TEMPLATES {
            Template::compile(name, text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
