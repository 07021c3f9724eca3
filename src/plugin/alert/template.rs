//! Alert message templates: minijinja templates compiled and checked once when the config is
//! built, rendered for each outgoing message against a context made straight from the parsed
//! [`Payload`].
//!
//! # Context
//! Every top-level field of the payload by Alertmanager's name (`version`, `groupKey`,
//! `truncatedAlerts`, `status`, `receiver`, `groupLabels`, `commonLabels`, `commonAnnotations`,
//! `externalURL`), then for the message being rendered:
//! - `alerts`: the alerts this message carries (the caller's split of the payload);
//! - `alert`: the first of them, for templates of one message per alert;
//! - `firing`, `resolved`: the message's alerts with that status;
//! - `destination`: the destination's name; `vars`: the destination's configured variables.
//!
//! Each alert has Alertmanager's fields (`status`, `labels`, `annotations`, `startsAt`,
//! `endsAt`, `generatorURL`, `fingerprint`, computed when the payload had none) and the
//! shortcuts `alertname` and `severity`: the label's value, absent (undefined, so it renders
//! empty and `default` applies) when the alert has no such label. The shortcuts are not listed
//! when an alert is iterated or serialized, so `tojson` gives it as Alertmanager sent it.
//!
//! # Filters and functions
//! minijinja's built-ins (`upper`, `lower`, `title`, `capitalize`, `trim`, `replace`, `join`,
//! `split`, `default`, `tojson`, `urlencode`, `length`, `sort`, `selectattr`, `dictsort`, ...)
//! and:
//! - `trim_prefix(p)`, `trim_suffix(s)`; `truncate(length=255, end="...")` counts characters
//!   and includes `end` in `length`;
//! - `regex_replace(pattern, replacement)` (`$1`, `${name}` in the replacement),
//!   `regex_match(pattern)` (true when the pattern matches the whole value, anchored like
//!   Alertmanager's `=~` matchers), `regex_search(pattern)` (the first match, or undefined);
//!   Rust `regex` syntax;
//! - `tojson(indent=none)`: minijinja's, minus its HTML-safety escapes (`<` stays `<`, not
//!   `\u003c`): these bodies go to APIs, not into HTML pages;
//! - `json_escape(max=none)`: a value escaped for use inside a JSON string literal, quotes not
//!   included (`"{{ x | json_escape }}"` writes what `{{ x | tojson }}` does for a string,
//!   faster); with `max`, first cut as `truncate(max)` cuts, for a service's text limit;
//! - `escape_markup`: `&`, `<`, `>` as entities, what Slack mrkdwn and Google Chat text need
//!   (HTML's `escape` also encodes quotes and `/`, which those show as written);
//! - `matchers`: an alert's (or a label map's) labels as an Alertmanager matcher set,
//!   `{alertname="X",job="api"}`, quoted and escaped: a silence link's `filter`;
//! - `timeformat(format, tz=none)`: an RFC 3339 timestamp (or Unix seconds) formatted with a
//!   strftime format (`%Y-%m-%d %H:%M:%S %z`, the specifiers the `time` crate implements) or
//!   `"rfc3339"` / `"rfc2822"`, in the timestamp's own offset or in `tz` (`"UTC"`, `"+05:30"`);
//! - `since`: how long ago a timestamp was, like `5m30s` (the two largest units: `1d2h`,
//!   `3h5m`, `45s`); `duration`: on an alert, how long it fired (until `endsAt` when resolved,
//!   until now while firing), or on a timestamp, the time until the `end` argument or now;
//!   `unixtime`: a timestamp as Unix seconds;
//! - `severity` and `alertname`, each both a filter and a function (`severity(alert)`), on an
//!   alert or a label map.
//!
//! A time filter given something that is not a timestamp returns it unchanged: a label that
//! merely looks wrong must not keep an alert from being delivered.
//!
//! # What `compile` checks
//! Syntax; that every filter and test the template names exists, including those in branches
//! no sample takes (minijinja only looks them up when it runs them); that every top-level
//! name is a context variable or a function; and then it renders the template against a sample
//! payload, failing on the errors a payload cannot cause (an unknown method, a wrong argument
//! count, an invalid regex or time format written in the template). Undefined values stay
//! lenient, since real payloads differ in which labels they carry.
//!
//! A template is one file: this build of minijinja has no `include`, `extends` or `macro`.
//!
//! # Bounds
//! Every render, the trial render included, runs on [`RENDER_FUEL`] of minijinja fuel (about one
//! unit per template instruction): a loop that would run for minutes is an error instead, at
//! `check` time when the sample payload triggers it and counted as a render error otherwise. A
//! panic in a render (a bug in a filter or in minijinja) is caught and returned as
//! [`RenderError::Panic`], so one bad payload cannot take a worker thread down. Time arithmetic
//! on payload timestamps is checked: an instant a time zone cannot show is left as sent.
//!
//! Output is not auto-escaped: a template that writes JSON by hand escapes strings itself
//! (`"{{ x | json_escape }}"` or `{{ x | tojson }}`) and [`Template::render_json`] checks the
//! result. Blocks trim the newline after them and the indentation before them (`trim_blocks`,
//! `lstrip_blocks`), so `{% for %}` lines leave no blank lines in a text message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use minijinja::value::{Enumerator, Kwargs, Object, ObjectExt};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use regex::Regex;
use time::format_description::well_known::{Rfc2822, Rfc3339};
use time::format_description::OwnedFormatItem;
use time::{OffsetDateTime, UtcOffset};

use super::payload::{self, Alert, Limits, Payload, Status};

/// The minijinja fuel of one render: about one unit per instruction. The ready-made templates
/// spend under a tenth of it on 1000 alerts carrying 20 labels and 5 annotations each (Slack,
/// the costliest, 200,000 to 500,000; see `ready_made_templates_fit_in_the_fuel`); a template
/// that runs out is stopped in well under a second instead of holding a thread for as long as
/// its loops last.
pub const RENDER_FUEL: u64 = 5_000_000;

/// The work a render may do besides its fuel, in bytes written and items made: fuel counts one
/// unit for a filter or function call whatever it costs, so a loop within the fuel could still
/// call `timeformat` half a million times or build `range(100000)` in every pass. Output, this
/// module's filters and `range` charge it; the ready-made templates spend about 1 MB of it on
/// 1000 alerts.
pub const RENDER_WORK: u64 = 50_000_000;

/// What a call with no size of its own charges to [`RENDER_WORK`].
const WORK_PER_CALL: usize = 64;
/// What a time filter charges (parsing and formatting a timestamp): about 100,000 of them fit
/// in a render, 2 per alert in the ready-made templates.
const WORK_PER_TIME_CALL: usize = 512;

thread_local! {
    /// [`RENDER_WORK`] left to the render running on this thread; unbounded outside a render.
    static WORK_LEFT: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
}

/// Runs `render` with a fresh [`RENDER_WORK`] budget on this thread (a render runs on one).
fn with_work_budget<T>(render: impl FnOnce() -> T) -> T {
    let before = WORK_LEFT.with(|w| w.replace(RENDER_WORK));
    let out = render();
    WORK_LEFT.with(|w| w.set(before));
    out
}

/// Takes `units` from the running render's [`RENDER_WORK`]; out of fuel when it has no more.
fn charge(units: usize) -> Result<(), Error> {
    WORK_LEFT.with(|w| {
        let units = u64::try_from(units).unwrap_or(u64::MAX);
        match w.get().checked_sub(units) {
            Some(left) => {
                w.set(left);
                Ok(())
            }
            None => {
                w.set(0);
                Err(Error::new(
                    ErrorKind::OutOfFuel,
                    "the template did more work than a render may",
                ))
            }
        }
    })
}

/// A compiled template; cloning shares it.
#[derive(Clone)]
pub struct Template {
    inner: Arc<Inner>,
}

struct Inner {
    /// One environment per template, holding only it: the filters capture caches that live and
    /// die with the template, and a lookup by name is all a render pays for the indirection.
    env: Environment<'static>,
    name: String,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// A payload as templates see it, built once for all the messages rendered from it: a split
/// per alert renders each alert once, and would otherwise rebuild the group's maps every time.
#[derive(Debug)]
pub struct PayloadValues {
    group: Arc<GroupValues>,
    alerts: Vec<Value>,
}

impl PayloadValues {
    pub fn new(p: &Payload) -> PayloadValues {
        PayloadValues {
            group: Arc::new(GroupValues {
                version: Value::from(p.version.as_str()),
                group_key: Value::from(p.group_key.as_str()),
                truncated_alerts: Value::from(p.truncated_alerts),
                status: Value::from(p.status.as_str()),
                receiver: Value::from(p.receiver.as_str()),
                group_labels: str_map(&p.group_labels),
                common_labels: str_map(&p.common_labels),
                common_annotations: str_map(&p.common_annotations),
                external_url: Value::from(p.external_url.as_str()),
            }),
            alerts: p.alerts.iter().map(alert_value).collect(),
        }
    }
}

/// A destination as templates see it: its name (`destination`) and its variables (`vars`),
/// built once when the config is.
#[derive(Debug, Clone)]
pub struct DestinationValues {
    name: Value,
    vars: Value,
}

impl DestinationValues {
    pub fn new(name: &str, vars: &BTreeMap<String, String>) -> DestinationValues {
        DestinationValues {
            name: Value::from(name),
            vars: str_map(vars),
        }
    }
}

/// What one outgoing message is rendered from.
#[derive(Debug, Clone)]
pub struct RenderContext<'a> {
    pub payload: &'a PayloadValues,
    /// The payload's alerts this message carries (`i..i + 1` for one message per alert).
    pub alerts: Range<usize>,
    pub destination: &'a DestinationValues,
}

/// Why a template does not compile. `Display` gives `line 3: unexpected end of block`, for the
/// config layer to put after the template's config path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// 1-based line of the template, when the error has one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TemplateError {}

/// Why a message did not render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// [`RenderContext::alerts`] is not a range of the payload's alerts.
    AlertRange { range: Range<usize>, len: usize },
    /// The template failed, at this line of the template.
    Template {
        line: Option<usize>,
        message: String,
    },
    /// The output is not JSON ([`Template::render_json`]); `line` and `column` are the
    /// output's, `excerpt` the output around that place.
    Json {
        line: usize,
        column: usize,
        message: String,
        excerpt: String,
    },
    /// The render used up its [`RENDER_FUEL`] or its [`RENDER_WORK`].
    OutOfFuel,
    /// The render panicked: a bug, caught so that it fails this message only.
    Panic(String),
}

impl RenderError {
    /// A short name of the kind of error, for a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            RenderError::AlertRange { .. } => "alert_range",
            RenderError::Template { .. } => "template",
            RenderError::Json { .. } => "json",
            RenderError::OutOfFuel => "out_of_fuel",
            RenderError::Panic(_) => "panic",
        }
    }
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::AlertRange { range, len } => write!(
                f,
                "alerts {}..{} asked of a payload with {len}",
                range.start, range.end
            ),
            RenderError::Template {
                line: Some(line),
                message,
            } => write!(f, "template line {line}: {message}"),
            RenderError::Template {
                line: None,
                message,
            } => write!(f, "template: {message}"),
            RenderError::Json {
                line,
                column,
                message,
                excerpt,
            } => write!(
                f,
                "rendered output is not JSON: {message} at line {line} column {column}, near `{excerpt}`"
            ),
            RenderError::OutOfFuel => write!(
                f,
                "the template ran more than {RENDER_FUEL} steps or {RENDER_WORK} units of work (a loop too long for this payload)"
            ),
            RenderError::Panic(why) => write!(f, "the render failed unexpectedly: {why}"),
        }
    }
}

impl std::error::Error for RenderError {}

/// The names a template may use at its top level besides functions.
pub const CONTEXT_VARIABLES: &[&str] = &[
    "version",
    "groupKey",
    "truncatedAlerts",
    "status",
    "receiver",
    "groupLabels",
    "commonLabels",
    "commonAnnotations",
    "externalURL",
    "alerts",
    "alert",
    "firing",
    "resolved",
    "destination",
    "vars",
];

impl Template {
    /// Compiles and checks `source` (see the module documentation for what is checked).
    /// `name` appears in minijinja's own messages only.
    pub fn compile(name: &str, source: &str) -> Result<Template, TemplateError> {
        let mut env = Environment::new();
        // `new` escapes by the template name's extension (`.json` as JSON values), which would
        // make the same template render differently under another config path.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Debug info (a source listing and the variables in scope, gathered on an error) is
        // not what a config error or a failed delivery reports: the line and detail are.
        env.set_debug(false);
        env.set_fuel(Some(RENDER_FUEL));
        // A string is written as it is, without the `fmt` machinery the default formatter
        // goes through for every `{{ }}`: most of what a template emits is strings.
        env.set_formatter(|out, state, value| match value.as_str() {
            Some(s) if state.auto_escape() == AutoEscape::None => {
                charge(s.len())?;
                out.write_str(s).map_err(Error::from)
            }
            _ => {
                charge(WORK_PER_CALL)?;
                minijinja::escape_formatter(out, state, value)
            }
        });
        register(&mut env);
        env.add_template_owned(name.to_owned(), source.to_owned())
            .map_err(TemplateError::from_minijinja)?;
        let template = Template {
            inner: Arc::new(Inner {
                env,
                name: name.to_owned(),
            }),
        };
        template.check_names(source)?;
        template.trial_render()?;
        Ok(template)
    }

    /// The name given to [`Template::compile`].
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Renders one message. A panic inside is caught and returned as [`RenderError::Panic`]:
    /// the last line of defence, so that a bug a payload triggers fails that message only.
    pub fn render(&self, ctx: &RenderContext<'_>) -> Result<String, RenderError> {
        let root = context_value(ctx)?;
        let tmpl = self
            .inner
            .env
            .get_template(&self.inner.name)
            .map_err(RenderError::from_minijinja)?;
        // Nothing shared is left half-changed by an unwind: the template and its caches are
        // only read or replaced whole under a lock that recovers from poisoning.
        catch_unwind(AssertUnwindSafe(|| with_work_budget(|| tmpl.render(root))))
            .map_err(|p| RenderError::Panic(panic_message(p.as_ref())))?
            .map_err(RenderError::from_minijinja)
    }

    /// Renders one message and checks that it is one JSON value.
    pub fn render_json(&self, ctx: &RenderContext<'_>) -> Result<String, RenderError> {
        let out = self.render(ctx)?;
        check_json(&out)?;
        Ok(out)
    }

    /// Checks that the template renders JSON for a sample payload, as a whole group and one
    /// alert at a time: for the config layer to call on the template of a JSON destination,
    /// so a trailing comma is a config error rather than a failed delivery.
    pub fn check_json(&self) -> Result<(), TemplateError> {
        for ctx in sample_contexts() {
            if let Err(e) = self.render_json(&ctx) {
                return Err(TemplateError {
                    line: match e {
                        RenderError::Template { line, .. } => line,
                        _ => None,
                    },
                    message: format!("with a sample payload: {e}"),
                });
            }
        }
        Ok(())
    }

    /// Every filter and test named anywhere in the template exists, and every top-level name
    /// is a variable of the context or a function.
    fn check_names(&self, source: &str) -> Result<(), TemplateError> {
        let refs = scan_refs(source);
        let env = &self.inner.env;
        let mut seen = HashSet::new();
        for r in &refs {
            if matches!(r.kind, RefKind::Name | RefKind::Assigned) || !seen.insert((r.kind, r.name))
            {
                continue;
            }
            // minijinja has no public lookup of a filter or test by name: run one on `none`
            // and see whether it is the name that is missing.
            let (probe, missing, what) = match r.kind {
                RefKind::Filter => (
                    format!("{{{{ none | {} }}}}", r.name),
                    ErrorKind::UnknownFilter,
                    "filter",
                ),
                _ => (
                    format!("{{{{ none is {} }}}}", r.name),
                    ErrorKind::UnknownTest,
                    "test",
                ),
            };
            if let Err(e) = env.render_str(&probe, ()) {
                if e.kind() == missing {
                    return Err(TemplateError {
                        line: Some(line_of(source, r.offset)),
                        message: format!("unknown {what} `{}`", r.name),
                    });
                }
            }
        }

        let tmpl = env
            .get_template(&self.inner.name)
            .map_err(TemplateError::from_minijinja)?;
        let globals: HashSet<&str> = env.globals().map(|(name, _)| name).collect();
        // minijinja's analysis forgets a `set` inside an `if` once the `if` ends, where the
        // template itself keeps it: a name assigned anywhere counts as known.
        let assigned: HashSet<&str> = refs
            .iter()
            .filter(|r| r.kind == RefKind::Assigned)
            .map(|r| r.name)
            .collect();
        let mut unknown: Vec<String> = tmpl
            .undeclared_variables(false)
            .into_iter()
            .filter(|n| {
                let n = n.as_str();
                !CONTEXT_VARIABLES.contains(&n) && !globals.contains(n) && !assigned.contains(n)
            })
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        // The first in the source, so the report is the same every time.
        let first_ref = |n: &str| {
            refs.iter()
                .find(|r| r.kind == RefKind::Name && r.name == n)
                .map(|r| r.offset)
        };
        unknown.sort_by_key(|n| first_ref(n).unwrap_or(usize::MAX));
        let name = &unknown[0];
        Err(TemplateError {
            line: first_ref(name).map(|o| line_of(source, o)),
            message: format!(
                "unknown variable or function `{name}` (the context has {})",
                CONTEXT_VARIABLES.join(", ")
            ),
        })
    }

    /// Renders against the sample payload; fails only on errors no payload could cause.
    fn trial_render(&self) -> Result<(), TemplateError> {
        let tmpl = self
            .inner
            .env
            .get_template(&self.inner.name)
            .map_err(TemplateError::from_minijinja)?;
        for ctx in sample_contexts() {
            let root = match context_value(&ctx) {
                Ok(v) => v,
                Err(e) => {
                    return Err(TemplateError {
                        line: None,
                        message: e.to_string(),
                    })
                }
            };
            match catch_unwind(AssertUnwindSafe(|| with_work_budget(|| tmpl.render(root)))) {
                Ok(Err(e)) if e.kind() == ErrorKind::OutOfFuel => {
                    return Err(TemplateError {
                        line: e.line(),
                        message: RenderError::OutOfFuel.to_string() + " with the sample payload",
                    })
                }
                Ok(Err(e)) if independent_of_payload(&e) => {
                    return Err(TemplateError::from_minijinja(e))
                }
                Ok(_) => {}
                Err(p) => {
                    return Err(TemplateError {
                        line: None,
                        message: RenderError::Panic(panic_message(p.as_ref())).to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

/// An error the template itself causes, whatever the payload.
fn independent_of_payload(e: &Error) -> bool {
    use std::error::Error as _;
    matches!(
        e.kind(),
        ErrorKind::UnknownFilter
            | ErrorKind::UnknownTest
            | ErrorKind::UnknownFunction
            | ErrorKind::UnknownMethod
            | ErrorKind::MissingArgument
            | ErrorKind::TooManyArguments
            | ErrorKind::SyntaxError
            | ErrorKind::BadEscape
    ) || e.source().is_some_and(|s| s.is::<BadLiteral>())
}

fn minijinja_message(e: &Error) -> String {
    match e.detail() {
        Some(detail) => detail.to_owned(),
        None => e.kind().to_string(),
    }
}

impl TemplateError {
    fn from_minijinja(e: Error) -> TemplateError {
        TemplateError {
            line: e.line(),
            message: minijinja_message(&e),
        }
    }
}

/// What a caught panic said, when it said it with a string.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_owned(),
        (_, Some(s)) => s.clone(),
        _ => "panic".to_owned(),
    }
}

impl RenderError {
    fn from_minijinja(e: Error) -> RenderError {
        if e.kind() == ErrorKind::OutOfFuel {
            return RenderError::OutOfFuel;
        }
        RenderError::Template {
            line: e.line(),
            message: minijinja_message(&e),
        }
    }
}

fn check_json(out: &str) -> Result<(), RenderError> {
    let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(out) else {
        return Ok(());
    };
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let message = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full)
        .to_owned();
    Err(RenderError::Json {
        line,
        column,
        message,
        excerpt: excerpt(out, line, column),
    })
}

/// Up to 30 bytes either side of a 1-based line and column of `text`, on char boundaries.
fn excerpt(text: &str, line: usize, column: usize) -> String {
    const SIDE: usize = 30;
    let Some(l) = text.lines().nth(line.saturating_sub(1)) else {
        return String::new();
    };
    let at = column.saturating_sub(1).min(l.len());
    let mut start = at.saturating_sub(SIDE);
    while !l.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + SIDE).min(l.len());
    while !l.is_char_boundary(end) {
        end += 1;
    }
    l[start..end].trim().to_owned()
}

// ---------------------------------------------------------------------------------------------
// The render context

/// The payload's fields that every message of it shares.
#[derive(Debug)]
struct GroupValues {
    version: Value,
    group_key: Value,
    truncated_alerts: Value,
    status: Value,
    receiver: Value,
    group_labels: Value,
    common_labels: Value,
    common_annotations: Value,
    external_url: Value,
}

/// The context of one message: the group's values, shared, and this message's alerts.
/// `firing` and `resolved` are only built when a template asks for them.
#[derive(Debug)]
struct MessageObject {
    group: Arc<GroupValues>,
    alerts: Value,
    alert: Value,
    destination: Value,
    vars: Value,
}

impl MessageObject {
    fn of_status(&self, status: Status) -> Value {
        let Ok(alerts) = self.alerts.try_iter() else {
            return Value::from(Vec::<Value>::new());
        };
        alerts
            .filter(|a| {
                a.downcast_object_ref::<AlertObject>()
                    .is_some_and(|a| a.status == status)
            })
            .collect()
    }
}

impl Object for MessageObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        let g = &self.group;
        let v = match key {
            "version" => &g.version,
            "groupKey" => &g.group_key,
            "truncatedAlerts" => &g.truncated_alerts,
            "status" => &g.status,
            "receiver" => &g.receiver,
            "groupLabels" => &g.group_labels,
            "commonLabels" => &g.common_labels,
            "commonAnnotations" => &g.common_annotations,
            "externalURL" => &g.external_url,
            "alerts" => &self.alerts,
            "alert" => &self.alert,
            "firing" => return Some(self.of_status(Status::Firing)),
            "resolved" => return Some(self.of_status(Status::Resolved)),
            "destination" => &self.destination,
            "vars" => &self.vars,
            _ => return None,
        };
        Some(v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(CONTEXT_VARIABLES)
    }
}

#[derive(Debug)]
struct AlertObject {
    status: Status,
    status_value: Value,
    labels: Value,
    annotations: Value,
    starts_at: Value,
    ends_at: Value,
    generator_url: Value,
    fingerprint: Value,
    alertname: Option<Value>,
    severity: Option<Value>,
    /// `startsAt` and `endsAt` as the payload parsed them, for `duration`.
    starts: OffsetDateTime,
    ends: Option<OffsetDateTime>,
}

/// Alertmanager's fields only: `alertname` and `severity` are shortcuts, so `tojson` and
/// iteration give an alert exactly as Alertmanager sent it.
const ALERT_KEYS: &[&str] = &[
    "status",
    "labels",
    "annotations",
    "startsAt",
    "endsAt",
    "generatorURL",
    "fingerprint",
];

impl Object for AlertObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        Some(match key {
            "status" => self.status_value.clone(),
            "labels" => self.labels.clone(),
            "annotations" => self.annotations.clone(),
            "startsAt" => self.starts_at.clone(),
            "endsAt" => self.ends_at.clone(),
            "generatorURL" => self.generator_url.clone(),
            "fingerprint" => self.fingerprint.clone(),
            "alertname" => return self.alertname.clone(),
            "severity" => return self.severity.clone(),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(ALERT_KEYS)
    }
}

/// A label or annotation map. A minijinja map value is a `BTreeMap<Value, Value>`, whose
/// building sorts its entries again; these arrive sorted, so a vector and a binary search do.
#[derive(Debug)]
struct StrMap(Vec<(Value, Value)>);

impl Object for StrMap {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        let i = self
            .0
            .binary_search_by(|(k, _)| k.as_str().unwrap_or_default().cmp(key))
            .ok()?;
        Some(self.0[i].1.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_key_value_enumerator(|this| Box::new(this.0.iter().cloned()))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

static EMPTY_MAP: LazyLock<Value> = LazyLock::new(|| Value::from_object(StrMap(Vec::new())));

fn str_map(map: &BTreeMap<String, String>) -> Value {
    if map.is_empty() {
        return EMPTY_MAP.clone();
    }
    Value::from_object(StrMap(
        map.iter()
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
            .collect(),
    ))
}

fn alert_value(a: &Alert) -> Value {
    Value::from_object(AlertObject {
        status: a.status,
        status_value: Value::from(a.status.as_str()),
        labels: str_map(&a.labels),
        annotations: str_map(&a.annotations),
        starts_at: Value::from(a.starts_at.as_str()),
        ends_at: Value::from(a.ends_at.as_str()),
        generator_url: Value::from(a.generator_url.as_str()),
        fingerprint: Value::from(a.fingerprint.as_str()),
        alertname: a.labels.get("alertname").map(|v| Value::from(v.as_str())),
        severity: a.labels.get("severity").map(|v| Value::from(v.as_str())),
        starts: a.starts_at_time,
        ends: a.ends_at_time,
    })
}

fn context_value(ctx: &RenderContext<'_>) -> Result<Value, RenderError> {
    let p = ctx.payload;
    let Some(chosen) = p.alerts.get(ctx.alerts.clone()) else {
        return Err(RenderError::AlertRange {
            range: ctx.alerts.clone(),
            len: p.alerts.len(),
        });
    };
    Ok(Value::from_object(MessageObject {
        group: p.group.clone(),
        alert: chosen.first().cloned().unwrap_or(Value::UNDEFINED),
        alerts: Value::from(chosen.to_vec()),
        destination: ctx.destination.name.clone(),
        vars: ctx.destination.vars.clone(),
    }))
}

/// A firing and a resolved alert with the labels and annotations real rules carry: what a
/// template is trial-rendered against.
const SAMPLE_PAYLOAD: &str = r#"{
  "version": "4",
  "groupKey": "{}/{severity=~\"critical|warning\"}:{alertname=\"HighErrorRate\"}",
  "truncatedAlerts": 0,
  "status": "firing",
  "receiver": "sample",
  "groupLabels": {"alertname": "HighErrorRate"},
  "commonLabels": {"alertname": "HighErrorRate", "job": "api"},
  "commonAnnotations": {"runbook_url": "https://runbooks.example.com/high-error-rate"},
  "externalURL": "http://alertmanager.example.com:9093",
  "alerts": [
    {
      "status": "firing",
      "labels": {"alertname": "HighErrorRate", "instance": "10.0.0.5:8080", "job": "api",
                 "namespace": "prod", "service": "checkout", "severity": "critical"},
      "annotations": {"summary": "5xx ratio above 5%", "description": "checkout answers 7.2% 5xx",
                      "runbook_url": "https://runbooks.example.com/high-error-rate"},
      "startsAt": "2024-05-01T10:00:00.123456789Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=rate",
      "fingerprint": "c1a2b3d4e5f60718"
    },
    {
      "status": "resolved",
      "labels": {"alertname": "HighErrorRate", "instance": "10.0.0.6:8080", "job": "api",
                 "namespace": "prod", "service": "checkout", "severity": "warning"},
      "annotations": {"summary": "5xx ratio above 5%", "description": "checkout answered 5.4% 5xx",
                      "runbook_url": "https://runbooks.example.com/high-error-rate"},
      "startsAt": "2024-05-01T09:00:00Z",
      "endsAt": "2024-05-01T09:45:30Z",
      "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=rate",
      "fingerprint": ""
    }
  ]
}"#;

struct Sample {
    values: PayloadValues,
    destination: DestinationValues,
}

static SAMPLE: LazyLock<Sample> = LazyLock::new(|| Sample {
    values: PayloadValues::new(&sample_payload()),
    destination: DestinationValues::new("sample", &sample_vars()),
});

fn sample_vars() -> BTreeMap<String, String> {
    BTreeMap::from([("routing_key".to_owned(), "sample-routing-key".to_owned())])
}

fn sample_payload() -> Payload {
    payload::parse(SAMPLE_PAYLOAD.as_bytes(), &Limits { max_alerts: 10 })
        .expect("the built-in sample payload parses")
}

/// The whole sample group, then each alert alone.
fn sample_contexts() -> [RenderContext<'static>; 3] {
    let Sample {
        values,
        destination,
    } = &*SAMPLE;
    [0..2, 0..1, 1..2].map(|alerts| RenderContext {
        payload: values,
        alerts,
        destination,
    })
}

// ---------------------------------------------------------------------------------------------
// Filters and functions

/// Marks an error caused by an argument written in the template (a regex, a time format), so
/// the trial render at compile time reports it.
#[derive(Debug)]
struct BadLiteral;

impl fmt::Display for BadLiteral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid argument")
    }
}

impl std::error::Error for BadLiteral {}

fn bad_literal(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message).with_source(BadLiteral)
}

/// Compiled regexes and time formats by their source text. Arguments are almost always
/// literals, so a template needs a handful; the cap bounds one that builds them from data.
struct Cache<T> {
    map: RwLock<HashMap<String, Arc<T>>>,
}

impl<T> Cache<T> {
    const CAP: usize = 64;

    fn new() -> Cache<T> {
        Cache {
            map: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, key: &str, make: impl FnOnce(&str) -> Result<T, Error>) -> Result<Arc<T>, Error> {
        if let Some(v) = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Ok(v.clone());
        }
        let v = Arc::new(make(key)?);
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() < Self::CAP {
            map.insert(key.to_owned(), v.clone());
        }
        Ok(v)
    }
}

fn register(env: &mut Environment<'static>) {
    env.add_filter("trim_prefix", |s: &Value, prefix: &str| {
        map_str(s, |s| s.strip_prefix(prefix).unwrap_or(s).to_owned())
    });
    env.add_filter("trim_suffix", |s: &Value, suffix: &str| {
        map_str(s, |s| s.strip_suffix(suffix).unwrap_or(s).to_owned())
    });
    env.add_filter("truncate", truncate);
    env.add_filter("tojson", tojson);
    env.add_filter("json_escape", json_escape);
    env.add_filter("escape_markup", escape_markup);
    env.add_filter("matchers", matchers);
    env.add_filter("urlencode", urlencode);

    let regexes = Arc::new(Cache::<Regex>::new());
    let r = regexes.clone();
    env.add_filter(
        "regex_replace",
        move |s: &Value, pattern: &str, replacement: &str| {
            charge(WORK_PER_CALL + s.as_str().map_or(0, str::len))?;
            let re = r.get(pattern, compile_regex)?;
            Ok::<_, Error>(map_str(s, |s| re.replace_all(s, replacement).into_owned()))
        },
    );
    // Anchored on both ends, as Alertmanager's `=~` matchers are; cached apart from the
    // unanchored ones under the pattern as written.
    let anchored = Arc::new(Cache::<Regex>::new());
    env.add_filter("regex_match", move |s: &Value, pattern: &str| {
        charge(WORK_PER_CALL + s.as_str().map_or(0, str::len))?;
        let re = anchored.get(pattern, |p| {
            compile_regex(p)?;
            compile_regex(&format!("^(?:{p})$"))
        })?;
        Ok::<_, Error>(as_text(s).is_some_and(|s| re.is_match(&s)))
    });
    let r = regexes;
    env.add_filter("regex_search", move |s: &Value, pattern: &str| {
        charge(WORK_PER_CALL + s.as_str().map_or(0, str::len))?;
        let re = r.get(pattern, compile_regex)?;
        Ok::<_, Error>(
            as_text(s)
                .and_then(|s| re.find(&s).map(|m| Value::from(m.as_str())))
                .unwrap_or(Value::UNDEFINED),
        )
    });

    let formats = Arc::new(Cache::<OwnedFormatItem>::new());
    env.add_filter(
        "timeformat",
        move |v: &Value, format: &str, tz: Option<&str>| timeformat(&formats, v, format, tz),
    );
    env.add_filter("since", |v: &Value| {
        charge(WORK_PER_TIME_CALL)?;
        Ok::<_, Error>(match parse_time(v) {
            Some(t) => Value::from(human_duration(OffsetDateTime::now_utc() - t)),
            None => v.clone(),
        })
    });
    env.add_filter("duration", |v: &Value, end: Option<&Value>| {
        charge(WORK_PER_TIME_CALL)?;
        Ok::<_, Error>(duration(v, end))
    });
    env.add_filter("unixtime", |v: &Value| {
        charge(WORK_PER_TIME_CALL)?;
        Ok::<_, Error>(match parse_time(v) {
            Some(t) => Value::from(t.unix_timestamp()),
            None => v.clone(),
        })
    });
    // minijinja's own, charged by its length: it is what makes big loops and big lists.
    env.add_function(
        "range",
        |lower: isize, upper: Option<isize>, step: Option<isize>| {
            let (lo, hi) = match upper {
                Some(u) => (lower, u),
                None => (0, lower),
            };
            let span = (hi as i128 - lo as i128).unsigned_abs();
            let by = step.map_or(1, |s| s.unsigned_abs().max(1)) as u128;
            charge(usize::try_from(span / by).unwrap_or(usize::MAX))?;
            minijinja::functions::range(lower, upper, step)
        },
    );
    env.add_filter("severity", |v: &Value| label_of(v, "severity"));
    env.add_filter("alertname", |v: &Value| label_of(v, "alertname"));
    env.add_function("severity", |v: &Value| label_of(v, "severity"));
    env.add_function("alertname", |v: &Value| label_of(v, "alertname"));
    env.add_function("now", || {
        OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
}

/// A string value, or any other defined value as it would render; `None` for undefined and
/// none, which filters pass through so `default` still applies after them.
fn as_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    if v.is_undefined() || v.is_none() {
        return None;
    }
    Some(match v.as_str() {
        Some(s) => s.into(),
        None => v.to_string().into(),
    })
}

fn map_str(v: &Value, f: impl FnOnce(&str) -> String) -> Value {
    match as_text(v) {
        Some(s) => Value::from(f(&s)),
        None => v.clone(),
    }
}

fn compile_regex(pattern: &str) -> Result<Regex, Error> {
    Regex::new(pattern).map_err(|e| {
        // regex's message draws a caret under the pattern over several lines; its last line
        // says what is wrong.
        let shown = e.to_string();
        let reason = shown.lines().last().unwrap_or("").trim();
        bad_literal(format!("invalid regex {pattern:?}: {reason}"))
    })
}

fn truncate(v: &Value, length: Option<usize>, end: Option<&str>) -> Value {
    let length = length.unwrap_or(255);
    let end = end.unwrap_or("...");
    let Some(s) = as_text(v) else {
        return v.clone();
    };
    match cut(&s, length, end) {
        Some(kept) => Value::from(format!("{kept}{end}")),
        None if v.as_str().is_some() => v.clone(),
        None => Value::from(s.as_ref()),
    }
}

/// What `truncate(length, end)` keeps of `s` before appending `end`; `None` when `s` fits.
fn cut<'s>(s: &'s str, length: usize, end: &str) -> Option<&'s str> {
    // Fewer bytes than `length` are fewer characters too: no counting.
    if s.len() <= length || s.chars().count() <= length {
        return None;
    }
    let keep = length.saturating_sub(end.chars().count());
    Some(&s[..s.char_indices().nth(keep).map_or(s.len(), |(i, _)| i)])
}

/// minijinja's `tojson` without its HTML-safety pass, which rewrote `<`, `>`, `&` and `'` as
/// `\u003c`-style escapes one character at a time: a third of the time of a template that
/// serializes alerts, and a JSON body sent to an API is not embedded in HTML.
fn tojson(v: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    kwargs.assert_all_used()?;
    let width = match indent {
        None => None,
        Some(i) => match bool::try_from(i.clone()) {
            Ok(true) => Some(2),
            Ok(false) => None,
            Err(_) => Some(usize::try_from(i)?),
        },
    };
    let out = match width {
        None => serde_json::to_string(v),
        Some(width) => {
            let indentation = " ".repeat(width);
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(indentation.as_bytes());
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(v, &mut ser)
                .map(|()| String::from_utf8_lossy(&out).into_owned())
        }
    };
    out.map(Value::from_safe_string).map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(e)
    })
}

/// `json_escape(max=none)`: escaped for a JSON string; with `max`, first cut as
/// `truncate(max)` cuts (one call where a message's text limit would take two).
fn json_escape(v: &Value, max: Option<usize>) -> Value {
    let Some(text) = as_text(v) else {
        return Value::from("");
    };
    let (s, end) = match max.and_then(|m| cut(&text, m, "...")) {
        Some(kept) => (kept, "..."),
        None => (text.as_ref(), ""),
    };
    let clean = !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
    // Unchanged strings, the usual case, keep their value.
    if clean && end.is_empty() {
        return match v.as_str() {
            Some(_) => v.clone(),
            None => Value::from(s),
        };
    }
    let mut out = String::with_capacity(s.len() + 8);
    if clean {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    out.push_str(end);
    Value::from(out)
}

/// `&`, `<` and `>` as entities: all that Slack's mrkdwn and Google Chat's text formatting
/// need escaped. HTML's `escape` also turns quotes and `/` into entities, which those show
/// as written.
fn escape_markup(v: &Value) -> Value {
    let Some(s) = as_text(v) else {
        return v.clone();
    };
    if !s.bytes().any(|b| matches!(b, b'&' | b'<' | b'>')) {
        return match v.as_str() {
            Some(_) => v.clone(),
            None => Value::from(s.as_ref()),
        };
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    Value::from(out)
}

/// An alert's (or a label map's) labels as an Alertmanager matcher set,
/// `{alertname="X",job="api"}`: what its silence form's `filter` takes. Values are quoted and
/// escaped as Alertmanager parses them; a name that is not a classic identifier is quoted too.
fn matchers(v: &Value) -> Result<Value, Error> {
    let labels = match v.get_attr("labels") {
        Ok(l) if !l.is_undefined() => l,
        _ => v.clone(),
    };
    if labels.is_undefined() || labels.is_none() {
        return Ok(Value::from("{}"));
    }
    let mut out = String::with_capacity(128);
    out.push('{');
    // The payload's own label maps are walked directly; any other map through minijinja.
    if let Some(map) = labels.downcast_object_ref::<StrMap>() {
        for (i, (name, value)) in map.0.iter().enumerate() {
            push_matcher(
                &mut out,
                i,
                name.as_str().unwrap_or_default(),
                value.as_str().unwrap_or_default(),
            );
        }
    } else {
        for (i, name) in labels.try_iter()?.enumerate() {
            let value = labels.get_item(&name)?;
            push_matcher(&mut out, i, &name.to_string(), &value.to_string());
        }
    }
    out.push('}');
    Ok(Value::from(out))
}

fn push_matcher(out: &mut String, i: usize, name: &str, value: &str) {
    if i > 0 {
        out.push(',');
    }
    let plain = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if plain {
        out.push_str(name);
    } else {
        push_quoted(out, name);
    }
    out.push('=');
    push_quoted(out, value);
}

/// minijinja's `urlencode`, with strings (a silence link's matchers, every time) encoded in one
/// pass rather than through `fmt`: the same bytes are kept (ASCII letters and digits, `/`, `.`,
/// `-`, `_`) and the rest written as `%XX`.
fn urlencode(v: &Value) -> Result<Value, Error> {
    let Some(s) = v.as_str() else {
        return minijinja::filters::urlencode(v).map(Value::from);
    };
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    // Byte by byte: a character outside ASCII is written as its UTF-8 bytes, each encoded.
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    Ok(Value::from(out))
}

fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    while let Some(i) = rest.find(['"', '\\', '\n']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            _ => "\\n",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

fn parse_time(v: &Value) -> Option<OffsetDateTime> {
    if let Some(s) = v.as_str() {
        return payload::parse_timestamp(s).ok();
    }
    if v.is_integer() {
        return OffsetDateTime::from_unix_timestamp(v.as_i64()?).ok();
    }
    None
}

fn timeformat(
    formats: &Cache<OwnedFormatItem>,
    v: &Value,
    format: &str,
    tz: Option<&str>,
) -> Result<Value, Error> {
    // The format and zone are checked before the value, so that the trial render reports a
    // bad one even when its sample value is not a timestamp.
    charge(WORK_PER_TIME_CALL)?;
    let offset = tz.map(parse_offset).transpose()?;
    let items = match format {
        "rfc3339" | "rfc2822" => None,
        _ => Some(formats.get(format, |f| {
            time::format_description::parse_strftime_owned(f)
                .map_err(|e| bad_literal(format!("invalid time format {f:?}: {e}")))
        })?),
    };
    let Some(mut t) = parse_time(v) else {
        return Ok(v.clone());
    };
    if let Some(offset) = offset {
        // An instant near the ends of the calendar (year 9999 at -23:59) may have no date in
        // `tz`: shown as sent, like any other value this filter cannot format.
        match t.checked_to_offset(offset) {
            Some(moved) => t = moved,
            None => return Ok(v.clone()),
        }
    }
    let out = match (&items, format) {
        (Some(items), _) => t.format(&**items),
        (None, "rfc2822") => t.format(&Rfc2822),
        (None, _) => t.format(&Rfc3339),
    };
    // A valid format can still fail on an instant it cannot show (RFC 2822 before 1900).
    Ok(out.map_or_else(|_| v.clone(), Value::from))
}

fn parse_offset(tz: &str) -> Result<UtcOffset, Error> {
    if tz.eq_ignore_ascii_case("utc") || tz == "Z" {
        return Ok(UtcOffset::UTC);
    }
    let fmt = time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]");
    UtcOffset::parse(tz, &fmt).map_err(|_| {
        bad_literal(format!(
            "invalid time zone {tz:?}: use \"UTC\" or \"+05:30\""
        ))
    })
}

/// How long an alert fired, or the time from a timestamp to `end` (now when absent).
fn duration(v: &Value, end: Option<&Value>) -> Value {
    let now = OffsetDateTime::now_utc();
    if let Some(a) = v.downcast_object_ref::<AlertObject>() {
        let end = match a.ends {
            Some(e) if a.status == Status::Resolved => e,
            _ => now,
        };
        return Value::from(human_duration(end - a.starts));
    }
    let (start, end) = match v.get_attr("startsAt") {
        Ok(starts) if !starts.is_undefined() => {
            let resolved = v
                .get_attr("status")
                .ok()
                .is_some_and(|s| s.as_str() == Some("resolved"));
            let ends = v.get_attr("endsAt").ok().and_then(|e| parse_time(&e));
            let end = match ends {
                Some(e) if resolved && e.year() > 1 => e,
                _ => now,
            };
            (parse_time(&starts), end)
        }
        _ => (parse_time(v), end.and_then(parse_time).unwrap_or(now)),
    };
    match start {
        Some(start) => Value::from(human_duration(end - start)),
        None => v.clone(),
    }
}

/// The two largest non-zero units: `1d2h`, `3h5m`, `5m30s`, `45s`, `0s`; `-` before a
/// negative duration.
fn human_duration(d: time::Duration) -> String {
    const UNITS: [(u64, char); 4] = [(86_400, 'd'), (3_600, 'h'), (60, 'm'), (1, 's')];
    let secs = d.whole_seconds().unsigned_abs();
    let mut out = String::new();
    if d.whole_seconds() < 0 {
        out.push('-');
    }
    let Some(first) = UNITS.iter().position(|&(u, _)| secs >= u) else {
        return "0s".to_owned();
    };
    let mut rest = secs;
    for &(unit, name) in &UNITS[first..(first + 2).min(UNITS.len())] {
        let n = rest / unit;
        rest %= unit;
        if n > 0 {
            let _ = write!(out, "{n}{name}");
        }
    }
    out
}

/// A label of an alert (or of a label map); undefined when it has none.
fn label_of(v: &Value, name: &str) -> Value {
    let labels = match v.get_attr("labels") {
        Ok(l) if !l.is_undefined() => l,
        _ => v.clone(),
    };
    match labels.get_attr(name) {
        Ok(l) if !l.is_none() => l,
        _ => Value::UNDEFINED,
    }
}

// ---------------------------------------------------------------------------------------------
// Finding the filters, tests and names a template uses

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RefKind {
    Filter,
    Test,
    /// An identifier not after a `.`: a variable, a function or a keyword.
    Name,
    /// A name a `set` or `for` tag assigns.
    Assigned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ref<'s> {
    kind: RefKind,
    name: &'s str,
    /// Byte offset in the source.
    offset: usize,
}

static END_RAW: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{%[-+]?\s*endraw\s*[-+]?%\}").expect("a fixed, valid pattern"));

/// The filters, tests and names in the tags of a template that minijinja has parsed. A token
/// scan, enough for a source known to be valid: strings, comments and raw blocks are skipped.
fn scan_refs(src: &str) -> Vec<Ref<'_>> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(rel) = src[i..].find('{') {
        let at = i + rel;
        i = match b.get(at + 1) {
            Some(b'#') => src[at + 2..].find("#}").map_or(b.len(), |e| at + 2 + e + 2),
            Some(b'{') => scan_tag(src, at + 2, "}}", false, &mut out),
            Some(b'%') if first_word(src, at + 2) == "raw" => {
                END_RAW.find_at(src, at + 2).map_or(b.len(), |m| m.end())
            }
            Some(b'%') => scan_tag(src, at + 2, "%}", true, &mut out),
            _ => at + 1,
        };
    }
    out
}

fn first_word(src: &str, from: usize) -> &str {
    let rest = src[from..].trim_start_matches(['-', '+']).trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tok<'s> {
    Start,
    Pipe,
    Dot,
    Ident(&'s str),
    Other,
}

/// Scans one tag from `from` to its `end` delimiter; returns the offset after it.
fn scan_tag<'s>(
    src: &'s str,
    from: usize,
    end: &str,
    block: bool,
    out: &mut Vec<Ref<'s>>,
) -> usize {
    let b = src.as_bytes();
    let mut i = from;
    let mut depth = 0usize;
    let mut prev = Tok::Start;
    // After `is` (or `is not`) comes a test's name.
    let mut test_next = false;
    let mut idents = 0usize;
    let mut filter_block = false;
    // Inside `{% set a, b =` or `{% for k, v in`: the names being assigned.
    let mut assigning = false;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if depth == 0 && src[i..].starts_with(end) {
            return i + end.len();
        }
        let tok = match c {
            b'"' | b'\'' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                Tok::Other
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let name = &src[start..i];
                if assigning && name == "in" {
                    assigning = false;
                }
                let kind = if assigning {
                    Some(RefKind::Assigned)
                } else if prev == Tok::Pipe || (filter_block && idents == 1) {
                    Some(RefKind::Filter)
                } else if test_next && name != "not" {
                    Some(RefKind::Test)
                } else if prev != Tok::Dot {
                    Some(RefKind::Name)
                } else {
                    None
                };
                if let Some(kind) = kind {
                    out.push(Ref {
                        kind,
                        name,
                        offset: start,
                    });
                }
                test_next = name == "is" || (test_next && name == "not");
                filter_block |= block && idents == 0 && name == "filter";
                assigning |= block && idents == 0 && (name == "set" || name == "for");
                idents += 1;
                prev = Tok::Ident(name);
                continue;
            }
            b'0'..=b'9' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                Tok::Other
            }
            _ => {
                match c {
                    b'{' | b'[' | b'(' => depth += 1,
                    b'}' | b']' | b')' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                i += 1;
                if c == b'=' || c == b'|' {
                    assigning = false;
                }
                match c {
                    b'|' => Tok::Pipe,
                    b'.' => Tok::Dot,
                    _ => Tok::Other,
                }
            }
        };
        test_next = false;
        prev = tok;
    }
    b.len()
}

fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEAM_SLACK: LazyLock<DestinationValues> =
        LazyLock::new(|| DestinationValues::new("team-slack", &sample_vars()));

    fn ctx(alerts: Range<usize>) -> RenderContext<'static> {
        RenderContext {
            payload: &SAMPLE.values,
            alerts,
            destination: &TEAM_SLACK,
        }
    }

    fn render_range(src: &str, alerts: Range<usize>) -> String {
        Template::compile("t", src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .render(&ctx(alerts))
            .unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    fn render(src: &str) -> String {
        render_range(src, 0..2)
    }

    fn compile_err(src: &str) -> TemplateError {
        match Template::compile("t", src) {
            Ok(_) => panic!("{src:?} compiled"),
            Err(e) => e,
        }
    }

    #[test]
    fn templates_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<Template>();
    }

    #[test]
    fn sample_payload_parses() {
        let p = sample_payload();
        assert_eq!(p.alerts.len(), 2);
        assert_eq!(p.alerts[1].fingerprint.len(), 16);
    }

    #[test]
    fn context_has_the_payload_and_the_message() {
        assert_eq!(
            render(
                "{{ version }}|{{ status }}|{{ receiver }}|{{ externalURL }}|{{ truncatedAlerts }}"
            ),
            "4|firing|sample|http://alertmanager.example.com:9093|0"
        );
        assert_eq!(render("{{ groupKey }}"), sample_payload().group_key);
        assert_eq!(
            render("{{ groupLabels.alertname }} {{ commonLabels.job }} {{ commonAnnotations.runbook_url }}"),
            "HighErrorRate api https://runbooks.example.com/high-error-rate"
        );
        assert_eq!(
            render("{{ destination }} {{ vars.routing_key }}"),
            "team-slack sample-routing-key"
        );
        assert_eq!(
            render("{{ alerts | length }} {{ firing | length }} {{ resolved | length }}"),
            "2 1 1"
        );
        assert_eq!(
            render_range(
                "{{ alerts | length }} {{ firing | length }} {{ resolved | length }}",
                1..2
            ),
            "1 0 1"
        );
        assert_eq!(
            render_range("{{ alert.labels.instance }}", 1..2),
            "10.0.0.6:8080"
        );
        assert_eq!(
            render_range("[{{ alert }}]{{ alerts | length }}", 1..1),
            "[]0"
        );
    }

    #[test]
    fn alerts_have_fields_and_shortcuts() {
        let a = "{% for a in alerts %}{{ a.status }} {{ a.alertname }} {{ a.severity }} {{ a.fingerprint }} {{ a.startsAt }} {{ a.endsAt }} {{ a.annotations.summary }} {{ a.generatorURL }};{% endfor %}";
        let fp1 = &sample_payload().alerts[1].fingerprint;
        assert_eq!(
            render(a),
            format!(
                "firing HighErrorRate critical c1a2b3d4e5f60718 2024-05-01T10:00:00.123456789Z 0001-01-01T00:00:00Z 5xx ratio above 5% http://prometheus.example.com:9090/graph?g0.expr=rate;\
                 resolved HighErrorRate warning {fp1} 2024-05-01T09:00:00Z 2024-05-01T09:45:30Z 5xx ratio above 5% http://prometheus.example.com:9090/graph?g0.expr=rate;"
            )
        );
        // Labels iterate sorted; the shortcuts are not fields of the serialized alert.
        assert_eq!(
            render_range("{{ alert.labels | join(',') }}", 0..1),
            "alertname,instance,job,namespace,service,severity"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_range("{{ alert | tojson }}", 0..1)).expect("json");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "annotations",
                "endsAt",
                "fingerprint",
                "generatorURL",
                "labels",
                "startsAt",
                "status"
            ]
        );
    }

    #[test]
    fn missing_severity_is_undefined_not_none() {
        let body = br#"{"status":"firing","alerts":[{"status":"firing","labels":{"job":"x"},
            "startsAt":"2024-01-01T00:00:00Z"}]}"#;
        let p = payload::parse(body, &Limits { max_alerts: 5 }).expect("parse");
        let vars = BTreeMap::new();
        let t = Template::compile(
            "t",
            "[{{ alert.severity }}][{{ alert.alertname }}][{{ alert.severity | default('unknown') }}][{{ severity(alert) | default('?') }}][{{ alert | alertname }}]",
        )
        .expect("compile");
        let out = t
            .render(&RenderContext {
                payload: &PayloadValues::new(&p),
                alerts: 0..1,
                destination: &DestinationValues::new("d", &vars),
            })
            .expect("render");
        assert_eq!(out, "[][][unknown][?][]");
    }

    #[test]
    fn alert_range_is_checked() {
        let t = Template::compile("t", "x").expect("compile");
        assert_eq!(
            t.render(&ctx(1..3)),
            Err(RenderError::AlertRange {
                range: 1..3,
                len: 2
            })
        );
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let e = compile_err("line one\n{% if status %}\nfiring\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("unexpected end of input"), "{e}");
        assert!(e.to_string().starts_with("line 3: "), "{e}");

        let e = compile_err("a\nb {{ status | }}");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn unknown_filters_and_tests_fail_even_in_branches_not_taken() {
        let e = compile_err("{% if status == 'nope' %}\n\n{{ receiver | shout }}\n{% endif %}");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.message, "unknown filter `shout`");

        let e = compile_err("{% if false %}{% for a in alerts | sortt %}{% endfor %}{% endif %}");
        assert_eq!(e.message, "unknown filter `sortt`");

        let e = compile_err("{% if false %}\n{% filter loud %}x{% endfilter %}{% endif %}");
        assert_eq!(
            (e.line, e.message.as_str()),
            (Some(2), "unknown filter `loud`")
        );

        let e = compile_err("{% if false %}{{ 1 if status is not firingish }}{% endif %}");
        assert_eq!(e.message, "unknown test `firingish`");

        // Pipes in strings and comments are not filters; names after `.` are attributes.
        render("{# x | nofilter #}{{ 'a | b' }}{{ \"c|d\" | upper }}{{ alert.labels.upper }}");
        render("{% raw %}{{ x | nofilter }}{% endraw %}{{ status is defined }}{{ status is not none }}");
    }

    #[test]
    fn unknown_names_fail() {
        let e = compile_err("{{ status }}\n{% if false %}{{ shout(status) }}{% endif %}");
        assert_eq!(e.line, Some(2));
        assert!(
            e.message
                .starts_with("unknown variable or function `shout`"),
            "{e}"
        );

        let e = compile_err("{{ alert_name }}");
        assert!(
            e.message
                .starts_with("unknown variable or function `alert_name`"),
            "{e}"
        );

        // Loop variables, `loop`, `set` names and globals are known.
        render("{% set n = alerts | length %}{% for a in alerts %}{{ loop.index }}{{ a.status }}{{ n }}{% endfor %}{{ range(2) | list }}{{ now() }}");
    }

    #[test]
    fn errors_only_the_template_causes_fail_at_compile() {
        let e = compile_err("x\n{{ alert.startsAt | regex_replace('(', 'y') }}");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("invalid regex \"(\""), "{e}");
        assert!(!e.message.contains('\n'), "{e}");

        let e = compile_err("{{ alert.labels.missing | timeformat('%Q') }}");
        assert!(e.message.contains("invalid time format"), "{e}");
        let e = compile_err("{{ alert.startsAt | timeformat('%H', 'Mars/Base') }}");
        assert!(e.message.contains("invalid time zone"), "{e}");
        let e = compile_err("{{ alert.labels.items() }}");
        assert!(e.line == Some(1), "{e}");
        let e = compile_err("{{ receiver | trim_prefix }}");
        assert!(e.message.contains("missing argument"), "{e}");

        // Lenient where payloads differ: a missing label is not an error.
        assert_eq!(render("[{{ alert.labels.nothere }}]"), "[]");
    }

    #[test]
    fn string_filters() {
        assert_eq!(
            render("{{ 'HighErrorRate' | trim_prefix('High') | trim_suffix('Rate') }}"),
            "Error"
        );
        assert_eq!(render("{{ 'abc' | trim_prefix('x') }}"), "abc");
        assert_eq!(
            render("{{ 'abcdef' | truncate(4) }}|{{ 'abc' | truncate(4) }}"),
            "a...|abc"
        );
        assert_eq!(render("{{ 'ééééé' | truncate(3, '…') }}"), "éé…");
        assert_eq!(
            render("{{ 'x' | truncate(1, '...') }}{{ 'xyz' | truncate(1, '...') }}"),
            "x..."
        );
        assert_eq!(
            render(r#"{{ 'say "hi"\n\tnow\\' | json_escape }}"#),
            r#"say \"hi\"\n\tnow\\"#
        );
        assert_eq!(
            render("[{{ alert.labels.nothere | json_escape }}]{{ 5 | json_escape }}"),
            "[]5"
        );
        assert_eq!(render("{{ 'a-b-c' | split('-') | join('+') }}"), "a+b+c");
        assert_eq!(render("{{ 'abcdef' | json_escape(4) }}"), "a...");
        assert_eq!(
            render(r#"{{ 'a"bcdef' | json_escape(6) }}|{{ 'a"b' | json_escape(6) }}"#),
            r#"a\"b...|a\"b"#
        );
        assert_eq!(render("{{ 'ééééé' | json_escape(4) }}"), "é...");
        assert_eq!(render("{{ 'a b' | urlencode }}"), "a%20b");
        // The string fast path writes what minijinja's own filter does.
        for s in [
            "a b",
            "{alertname=\"X\",job=~\"a|b\"}",
            "ü/ß?x=1&y=~2#",
            "-_./~!*()'",
            "",
        ] {
            let v = Value::from(s);
            assert_eq!(
                urlencode(&v).expect("encode").as_str(),
                Some(minijinja::filters::urlencode(&v).expect("builtin").as_str()),
                "{s}"
            );
        }
        assert_eq!(
            render(
                "{{ {'q': 'a b', 'n': 1} | urlencode }}|{{ 5 | urlencode }}|{{ none | urlencode }}"
            ),
            "n=1&q=a%20b|5|"
        );
        // Values other than strings are written as minijinja writes them.
        assert_eq!(
            render("{{ 1 }}|{{ true }}|{{ none }}|{{ [1, 'a'] }}|{{ 1.5 }}"),
            r#"1|True|None|[1, "a"]|1.5"#
        );
        assert_eq!(render("{{ {'k': 'v'} | tojson }}"), r#"{"k":"v"}"#);
        assert_eq!(
            render("{{ \"it's <b> & \\\"q\\\"\" | tojson }}"),
            r#""it's <b> & \"q\"""#
        );
        assert_eq!(
            render("{{ [1] | tojson(indent=2) }}|{{ [1] | tojson(true) }}"),
            "[\n  1\n]|[\n  1\n]"
        );
        assert_eq!(
            render("{{ alert.labels.job | tojson }}{{ alert.nothing | tojson }}"),
            "\"api\"null"
        );
    }

    #[test]
    fn markup_and_matchers() {
        assert_eq!(
            render("{{ 'a < b && \"c\" > d/e' | escape_markup }}"),
            "a &lt; b &amp;&amp; \"c\" &gt; d/e"
        );
        assert_eq!(
            render("{{ 'plain' | escape_markup }}[{{ alert.labels.no | escape_markup }}]"),
            "plain[]"
        );
        assert_eq!(
            render_range("{{ alert | matchers }}", 1..2),
            r#"{alertname="HighErrorRate",instance="10.0.0.6:8080",job="api",namespace="prod",service="checkout",severity="warning"}"#
        );
        assert_eq!(
            render(r#"{{ {'a': 'say "hi"\\', 'b.c': 'x\ny'} | matchers }}"#),
            r#"{a="say \"hi\"\\","b.c"="x\ny"}"#
        );
        assert_eq!(
            render("{{ groupLabels | matchers }}|{{ alert.nothing | matchers }}"),
            r#"{alertname="HighErrorRate"}|{}"#
        );
    }

    #[test]
    fn regex_filters() {
        assert_eq!(
            render(r#"{{ alert.labels.instance | regex_replace(':\d+$', '') }}"#),
            "10.0.0.5"
        );
        assert_eq!(
            render(r#"{{ 'api-7f9c' | regex_replace('^(\w+)-(?P<id>\w+)$', '${id}/$1') }}"#),
            "7f9c/api"
        );
        // regex_match is anchored on both ends.
        assert_eq!(
            render("{{ 'checkout' | regex_match('check') }} {{ 'checkout' | regex_match('check.*') }} {{ 'a|b' | regex_match('a|b') }}"),
            "False True False"
        );
        assert_eq!(render("{{ 'b' | regex_match('a|b') | tojson }}"), "true");
        assert_eq!(
            render(r#"{{ 'took 250ms' | regex_search('\d+ms') }}"#),
            "250ms"
        );
        assert_eq!(render(r#"[{{ 'nothing' | regex_search('\d+') }}]"#), "[]");
        assert_eq!(
            render(r#"{{ 'x' | regex_search('\d') | default('none found') }}"#),
            "none found"
        );
    }

    #[test]
    fn time_filters() {
        assert_eq!(
            render("{{ alert.startsAt | timeformat('%Y-%m-%d %H:%M:%S') }}"),
            "2024-05-01 10:00:00"
        );
        assert_eq!(
            render("{{ '2024-05-01T10:00:00+02:00' | timeformat('%H:%M %z', 'UTC') }}"),
            "08:00 +0000"
        );
        assert_eq!(
            render("{{ '2024-05-01T10:00:00Z' | timeformat('%H:%M', '+05:30') }}"),
            "15:30"
        );
        assert_eq!(
            render("{{ '2024-05-01T10:00:00.5Z' | timeformat('rfc3339') }}|{{ 0 | timeformat('rfc2822') }}"),
            "2024-05-01T10:00:00.5Z|Thu, 01 Jan 1970 00:00:00 +0000"
        );
        assert_eq!(
            render("{{ 'not a time' | timeformat('%H') }}"),
            "not a time"
        );
        assert_eq!(render("{{ alert.startsAt | unixtime }}"), "1714557600");
        assert_eq!(render("{{ 'soon' | unixtime }}"), "soon");

        // Resolved: endsAt - startsAt. Firing: until now, so only its shape is known.
        assert_eq!(render_range("{{ alert | duration }}", 1..2), "45m30s");
        assert_eq!(
            render("{{ '2024-05-01T09:00:00Z' | duration('2024-05-02T10:30:00Z') }}"),
            "1d1h"
        );
        let firing = render_range("{{ alert | duration }}", 0..1);
        assert!(firing.ends_with('h') || firing.contains('d'), "{firing}");

        let an_hour_ago = (OffsetDateTime::now_utc() - time::Duration::minutes(61))
            .format(&Rfc3339)
            .expect("format");
        let since = render(&format!("{{{{ '{an_hour_ago}' | since }}}}"));
        assert!(since == "1h1m" || since == "1h2m", "{since}");
        assert_eq!(render("{{ 'never' | since }}"), "never");
        let now = render("{{ now() }}");
        assert!(OffsetDateTime::parse(&now, &Rfc3339).is_ok(), "{now}");
    }

    #[test]
    fn human_durations() {
        let d = |s: i64| human_duration(time::Duration::seconds(s));
        assert_eq!(d(0), "0s");
        assert_eq!(d(45), "45s");
        assert_eq!(d(330), "5m30s");
        assert_eq!(d(300), "5m");
        assert_eq!(d(3_600), "1h");
        assert_eq!(d(3_605), "1h");
        assert_eq!(d(3_660 + 59), "1h1m");
        assert_eq!(d(90_061), "1d1h");
        assert_eq!(d(-330), "-5m30s");
    }

    #[test]
    fn alert_helpers() {
        assert_eq!(
            render("{% for a in alerts %}{{ severity(a) }}/{{ a | severity }}/{{ alertname(a) }}/{{ a | alertname }} {% endfor %}"),
            "critical/critical/HighErrorRate/HighErrorRate warning/warning/HighErrorRate/HighErrorRate "
        );
        // On a label map too.
        assert_eq!(
            render("{{ severity(alert.labels) }} {{ commonLabels | alertname }}"),
            "critical HighErrorRate"
        );
    }

    #[test]
    fn render_json_names_where_the_output_breaks() {
        let t = Template::compile("t", "{\n  \"a\": \"{{ receiver }}\",\n}").expect("compile");
        match t.render_json(&ctx(0..2)) {
            Err(RenderError::Json {
                line,
                column,
                message,
                excerpt,
            }) => {
                assert_eq!((line, column), (3, 1), "{message}");
                assert_eq!(message, "key must be a string");
                assert_eq!(excerpt, "}");
            }
            other => panic!("{other:?}"),
        }
        let t = Template::compile("t", "{\"a\": {{ receiver }}}").expect("compile");
        let e = t.render_json(&ctx(0..2)).expect_err("bare word");
        assert!(e.to_string().contains("near `{\"a\": sample}`"), "{e}");
        assert!(t.check_json().is_err());

        let t = Template::compile("t", "{\"a\": {{ receiver | tojson }}}").expect("compile");
        assert_eq!(
            t.render_json(&ctx(0..2)).expect("json"),
            r#"{"a": "sample"}"#
        );
        assert!(t.check_json().is_ok());
    }

    #[test]
    fn excerpts_stay_on_char_boundaries() {
        let line = format!("{}x{}", "é".repeat(40), "ü".repeat(40));
        let ex = excerpt(&line, 1, 82);
        assert!(ex.contains('x') && ex.len() <= 64, "{ex}");
        assert_eq!(excerpt("a", 5, 1), "");
    }

    #[test]
    fn no_auto_escaping_whatever_the_name() {
        let t = Template::compile("x.json", "{{ '<a \"b\">' }}").expect("compile");
        assert_eq!(t.render(&ctx(0..1)).expect("render"), "<a \"b\">");
    }

    #[test]
    fn scan_finds_filters_tests_and_names() {
        let refs = scan_refs("{{ a | f1(x | f2) }}\n{% if b is not t1 and c is t2(1) %}{% filter f3 | f4 %}{% endfilter %}{% endif %}{{ d.e }}{% set s1, s2 = y %}{% for k1, k2 in z | f5 %}{% endfor %}{% set s3 | f6 %}{% endset %}");
        let of = |k: RefKind| {
            refs.iter()
                .filter(|r| r.kind == k)
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(of(RefKind::Filter), ["f1", "f2", "f3", "f4", "f5", "f6"]);
        assert_eq!(of(RefKind::Assigned), ["s1", "s2", "k1", "k2", "s3"]);
        assert_eq!(of(RefKind::Test), ["t1", "t2"]);
        let names = of(RefKind::Name);
        assert!(
            names.contains(&"a") && names.contains(&"d") && !names.contains(&"e"),
            "{names:?}"
        );
        assert!(
            names.contains(&"y") && names.contains(&"z") && !names.contains(&"s1"),
            "{names:?}"
        );
        let t1 = refs.iter().find(|r| r.name == "t1").expect("t1");
        assert_eq!(
            line_of("{{ a | f1(x | f2) }}\n{% if b is not t1", t1.offset),
            2
        );
    }

    // -----------------------------------------------------------------------------------------
    // Hostile input: extreme instants, loops without end, panics

    /// Every ready-made template, compiled.
    fn ready_made_all() -> Vec<Template> {
        super::super::config::BUILTIN_TEMPLATES
            .iter()
            .map(|(n, t)| Template::compile(n, t).unwrap_or_else(|e| panic!("{n}: {e}")))
            .collect()
    }

    fn payload_with_times(starts: &str, ends: &str, status: &str) -> Vec<u8> {
        let mut body: serde_json::Value = serde_json::from_str(SAMPLE_PAYLOAD).expect("sample");
        for a in body["alerts"].as_array_mut().expect("alerts") {
            a["startsAt"] = starts.into();
            a["endsAt"] = ends.into();
            a["status"] = status.into();
        }
        body.to_string().into_bytes()
    }

    #[test]
    fn instants_at_the_ends_of_the_calendar_render() {
        // `to_offset` panicked on these: 9999-12-31 at -23:59 is in year 10000 in UTC.
        for (starts, ends) in [
            ("9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59-23:59"),
            (
                "9999-12-31T23:59:59.999999999-23:59",
                "0001-01-01T00:00:00Z",
            ),
            ("0000-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"),
            ("0000-01-01T00:00:00+23:59", "0000-01-01T00:00:00+23:59"),
        ] {
            for status in ["firing", "resolved"] {
                let body = payload_with_times(starts, ends, status);
                let n = super::super::exercise::parse_and_render_all(&body);
                assert_eq!(n, 5 * 3, "{starts} {ends} {status}");
            }
        }
        // Shown as sent where the zone cannot show it, converted where it can.
        let t = |v: &str, tz: &str| {
            render(&format!(
                "{{{{ '{v}' | timeformat('%Y-%m-%d %H:%M', '{tz}') }}}}"
            ))
        };
        assert_eq!(
            t("9999-12-31T23:59:59-23:59", "UTC"),
            "9999-12-31T23:59:59-23:59"
        );
        assert_eq!(t("9999-12-31T23:59:59-23:59", "-23:59"), "9999-12-31 23:59");
        assert_eq!(
            t("0000-01-01T00:00:00+23:59", "-01:00"),
            "-0001-12-30 23:01"
        );
        assert_eq!(t("9999-12-31T00:00:00Z", "+05:30"), "9999-12-31 05:30");
        assert_eq!(
            render("{{ '9999-12-31T23:59:59-23:59' | since }} {{ '0000-01-01T00:00:00+23:59' | unixtime }} {{ '0000-01-01T00:00:00+23:59' | duration('9999-12-31T23:59:59-23:59') }}").split(' ').count(),
            3
        );
        assert_eq!(
            render("{{ 253402300799 | timeformat('rfc3339', '+01:00') }}"),
            "253402300799"
        );
        assert_eq!(
            render("{{ -377705116800 | timeformat('rfc2822', 'UTC') }}"),
            "-377705116800"
        );
    }

    #[test]
    fn a_loop_without_end_runs_out_of_fuel() {
        // At compile time, when the sample payload runs it: `zkgate check` ran it for hours.
        let e = compile_err(
            "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
        );
        assert!(e.message.contains("ran more than 5000000 steps"), "{e}");
        // At run time, when only some payloads run it: an error, not a thread held for minutes.
        let t = Template::compile(
            "t",
            "{% for i in range((alerts | length - 2) * 10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
        )
        .expect("the sample payload does not loop");
        let mut body: serde_json::Value = serde_json::from_str(SAMPLE_PAYLOAD).expect("sample");
        let first = body["alerts"][0].clone();
        body["alerts"].as_array_mut().expect("alerts").push(first);
        let p =
            payload::parse(body.to_string().as_bytes(), &Limits { max_alerts: 10 }).expect("parse");
        let values = PayloadValues::new(&p);
        let e = t
            .render(&RenderContext {
                payload: &values,
                alerts: 0..3,
                destination: &TEAM_SLACK,
            })
            .expect_err("out of fuel");
        assert_eq!(e, RenderError::OutOfFuel);
        assert_eq!(e.kind(), "out_of_fuel");
    }

    #[test]
    fn costly_calls_in_a_loop_run_out_of_work() {
        // Within the fuel, but each pass calls a filter or builds a list: found by the fuzzer
        // (half a million `timeformat` calls kept a trial render busy for minutes).
        for src in [
            "{% for i in range(500) %}{% for j in range(1000) %}{{ alert.startsAt | timeformat('%Y') }}{% endfor %}{% endfor %}",
            "{% for i in range(100000) %}{% set x = range(100000) %}{% endfor %}",
            "{% for i in range(1000) %}{% set x = range(100000) | join %}{% endfor %}",
            "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        ] {
            let e = compile_err(src);
            assert!(e.message.contains("ran more than"), "{src}: {e}");
        }
        // The same calls, fewer times, are fine.
        assert_eq!(
            render("{{ range(3) | join(',') }}|{{ range(1, 7, 2) | list }}"),
            "0,1,2|[1, 3, 5]"
        );
    }

    #[test]
    fn ready_made_templates_fit_in_the_fuel() {
        // The most a payload may hold by default, each alert with 20 labels and 5 annotations.
        let mut body: serde_json::Value = serde_json::from_str(SAMPLE_PAYLOAD).expect("sample");
        let first = body["alerts"][1].clone();
        body["alerts"] = (0..super::super::config::DEFAULT_MAX_ALERTS)
            .map(|i| {
                let mut a = first.clone();
                for l in 0..20 {
                    a["labels"][format!("label_{l}")] = format!("value {i} {l}").into();
                }
                for n in 0..5 {
                    a["annotations"][format!("note_{n}")] = "x".repeat(100).into();
                }
                a
            })
            .collect();
        let p = payload::parse(body.to_string().as_bytes(), &Limits { max_alerts: 1000 })
            .expect("parse");
        let values = PayloadValues::new(&p);
        for t in ready_made_all() {
            // A tenth of the fuel: the rest is margin for templates written by users.
            let mut env = t.inner.env.clone();
            env.set_fuel(Some(RENDER_FUEL / 10));
            let ctx = RenderContext {
                payload: &values,
                alerts: 0..p.alerts.len(),
                destination: &TEAM_SLACK,
            };
            let root = context_value(&ctx).expect("context");
            let template = env.get_template(t.name()).expect("template");
            let out = with_work_budget(|| {
                WORK_LEFT.with(|w| w.set(RENDER_WORK / 10));
                template.render(root)
            })
            .unwrap_or_else(|e| panic!("{}: {e}", t.name()));
            assert!(!out.is_empty());
        }
    }

    #[test]
    fn a_panic_in_a_render_is_an_error() {
        let mut t = Template::compile("t", "{{ receiver }}").expect("compile");
        let inner = Arc::get_mut(&mut t.inner).expect("sole owner");
        inner
            .env
            .add_filter("boom", |_: &Value| -> Value { panic!("a filter bug") });
        inner
            .env
            .add_template_owned("t", "{{ receiver | boom }}")
            .expect("add");
        let e = t.render(&ctx(0..2)).expect_err("panicked");
        assert_eq!(e, RenderError::Panic("a filter bug".to_owned()));
        assert_eq!(e.kind(), "panic");
        assert!(
            e.to_string().contains("failed unexpectedly: a filter bug"),
            "{e}"
        );
        // And the template still renders afterwards.
        assert!(t.render(&ctx(0..2)).is_err());
    }

    const HOSTILE_STRINGS: &[&str] = &[
        "9999-12-31T23:59:59-23:59",
        "9999-12-31T23:59:59+23:59",
        "0000-01-01T00:00:00+23:59",
        "0000-01-01T00:00:00-23:59",
        "9999-12-31T23:59:59.999999999Z",
        "0001-01-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-05-01T10:00:00.1234567891Z",
        "2024-05-01T24:00:00Z",
        "1970-01-01T00:00:60Z",
        "",
        "\u{0}",
        "\"\\",
        "{{ receiver }}{% raw %}",
        "<&>",
        "\n\t\r\u{7}",
        "%Y%n%",
        "résolu ✓ 🚨",
        "\u{202e}",
        "firing",
        "resolved",
        "4",
    ];

    fn hostile_value(rng: &mut fastrand::Rng) -> serde_json::Value {
        use serde_json::json;
        match rng.usize(0..10) {
            0 => json!(i64::MAX),
            1 => json!(i64::MIN),
            2 => json!(u64::MAX),
            3 => json!(1e308),
            4 => json!(null),
            5 => json!([]),
            6 => json!({}),
            7 => json!(true),
            8 => json!("x".repeat(rng.usize(0..3000))),
            _ => json!(HOSTILE_STRINGS[rng.usize(..HOSTILE_STRINGS.len())]),
        }
    }

    /// JSON pointers of every value under `v`.
    fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    pointers(
                        x,
                        format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        out,
                    );
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    pointers(x, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
        out.push(at);
    }

    /// One random change to a payload: a value replaced by a hostile one (a string more often
    /// than not), a key removed or added, an alert copied, or bytes of its text changed.
    fn mutate(rng: &mut fastrand::Rng, v: &serde_json::Value) -> Vec<u8> {
        let mut v = v.clone();
        for _ in 0..rng.usize(1..4) {
            let mut ptrs = Vec::new();
            pointers(&v, String::new(), &mut ptrs);
            let at = ptrs[rng.usize(..ptrs.len())].clone();
            match rng.usize(0..10) {
                0..=5 => {
                    let new = if rng.bool() {
                        serde_json::Value::from(HOSTILE_STRINGS[rng.usize(..HOSTILE_STRINGS.len())])
                    } else {
                        hostile_value(rng)
                    };
                    if let Some(x) = v.pointer_mut(&at) {
                        *x = new;
                    }
                }
                6 => {
                    if let Some((parent, key)) = at.rsplit_once('/') {
                        if let Some(serde_json::Value::Object(m)) = v.pointer_mut(parent) {
                            m.remove(&key.replace("~1", "/").replace("~0", "~"));
                        }
                    }
                }
                7 => {
                    if let Some(serde_json::Value::Object(m)) = v.pointer_mut(&at) {
                        let key = HOSTILE_STRINGS[rng.usize(..HOSTILE_STRINGS.len())];
                        m.insert(key.to_owned(), hostile_value(rng));
                    }
                }
                8 => {
                    if let Some(serde_json::Value::Array(a)) = v.pointer_mut("/alerts") {
                        if let Some(first) = a.first().cloned() {
                            for _ in 0..rng.usize(1..20) {
                                a.push(first.clone());
                            }
                        }
                    }
                }
                _ => {
                    let mut text = v.to_string().into_bytes();
                    for _ in 0..rng.usize(1..4) {
                        let i = rng.usize(..text.len());
                        text[i] = rng.u8(..);
                    }
                    return text;
                }
            }
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn random_mutations_of_payloads_never_panic() {
        let seeds: Vec<serde_json::Value> = [
            SAMPLE_PAYLOAD.as_bytes(),
            &payload_with_times("2024-05-01T09:00:00Z", "2024-05-01T09:45:30Z", "resolved"),
        ]
        .iter()
        .map(|b| serde_json::from_slice(b).expect("seed"))
        .collect();
        let mut rng = fastrand::Rng::with_seed(11);
        let (mut parsed, mut messages) = (0, 0);
        for case in 0..2_000 {
            let body = mutate(&mut rng, &seeds[case % seeds.len()]);
            let n = super::super::exercise::parse_and_render_all(&body);
            parsed += usize::from(n > 0);
            messages += n;
        }
        // Enough of them are payloads to reach the templates.
        assert!(parsed > 500, "{parsed} of 2000 parsed");
        assert!(messages > 5_000, "{messages} messages");
    }

    // -----------------------------------------------------------------------------------------
    // The ready-made templates under conf/templates

    fn ready_made(file: &str, source: &str, alerts: Range<usize>) -> serde_json::Value {
        let t = Template::compile(file, source).unwrap_or_else(|e| panic!("{file}: {e}"));
        t.check_json().unwrap_or_else(|e| panic!("{file}: {e}"));
        let out = t
            .render_json(&ctx(alerts))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        serde_json::from_str(&out).expect("render_json checked it")
    }

    #[test]
    fn slack_template() {
        let v = ready_made(
            "slack.json.j2",
            include_str!("../../../conf/templates/slack.json.j2"),
            0..2,
        );
        assert_eq!(v["text"], "[FIRING:1, RESOLVED:1] HighErrorRate");
        let att = v["attachments"].as_array().expect("attachments");
        assert_eq!(att.len(), 2);
        assert_eq!(att[0]["color"], "#d00000");
        assert_eq!(att[1]["color"], "#2eb886");
        let blocks = att[0]["blocks"].as_array().expect("blocks");
        let head = blocks[0]["text"]["text"].as_str().expect("text");
        assert!(
            head.starts_with("*[FIRING] HighErrorRate* · critical\n5xx ratio above 5%"),
            "{head}"
        );
        assert_eq!(
            blocks[2]["text"]["text"],
            "*alertname*: HighErrorRate\n*instance*: 10.0.0.5:8080\n*job*: api\n\
             *namespace*: prod\n*service*: checkout\n*severity*: critical"
        );
        let actions = blocks.last().expect("actions");
        assert_eq!(actions["type"], "actions");
        let urls: Vec<&str> = actions["elements"]
            .as_array()
            .expect("elements")
            .iter()
            .map(|b| b["url"].as_str().expect("url"))
            .collect();
        assert_eq!(
            urls[0],
            "http://prometheus.example.com:9090/graph?g0.expr=rate"
        );
        assert_eq!(urls[1], "https://runbooks.example.com/high-error-rate");
        assert!(urls[2].starts_with("http://alertmanager.example.com:9093/#/silences/new?filter=%7Balertname%3D%22HighErrorRate%22%2Cinstance"), "{}", urls[2]);
        let ctx_line = att[1]["blocks"][3]["elements"][0]["text"]
            .as_str()
            .expect("context");
        assert_eq!(
            ctx_line,
            "Started 2024-05-01 09:00:00 UTC · resolved after 45m30s"
        );

        let one = ready_made(
            "slack.json.j2",
            include_str!("../../../conf/templates/slack.json.j2"),
            1..2,
        );
        assert_eq!(one["text"], "[RESOLVED:1] HighErrorRate");
    }

    #[test]
    fn teams_template() {
        let v = ready_made(
            "teams.json.j2",
            include_str!("../../../conf/templates/teams.json.j2"),
            0..2,
        );
        assert_eq!(v["type"], "message");
        let att = &v["attachments"][0];
        assert_eq!(
            att["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &att["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        let body = card["body"].as_array().expect("body");
        assert_eq!(body[0]["text"], "[FIRING:1, RESOLVED:1] HighErrorRate");
        assert_eq!(body.len(), 3);
        assert_eq!(body[1]["style"], "attention");
        assert_eq!(body[2]["style"], "good");
        let facts = body[1]["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|i| i["type"] == "FactSet")
            .expect("facts");
        assert_eq!(facts["facts"].as_array().expect("facts").len(), 2 + 6);
        assert_eq!(
            card["actions"][0]["url"],
            "http://alertmanager.example.com:9093"
        );
    }

    #[test]
    fn teams_template_caps_the_card_at_ten_alerts() {
        let mut body: serde_json::Value = serde_json::from_str(SAMPLE_PAYLOAD).expect("sample");
        let first = body["alerts"][0].clone();
        body["alerts"] = serde_json::Value::Array(
            (0..12)
                .map(|i| {
                    let mut a = first.clone();
                    a["labels"]["instance"] = format!("10.0.0.{i}:8080").into();
                    a
                })
                .collect(),
        );
        let p =
            payload::parse(body.to_string().as_bytes(), &Limits { max_alerts: 20 }).expect("parse");
        let vars = BTreeMap::new();
        let t = Template::compile(
            "teams",
            include_str!("../../../conf/templates/teams.json.j2"),
        )
        .expect("compile");
        let out = t
            .render_json(&RenderContext {
                payload: &PayloadValues::new(&p),
                alerts: 0..12,
                destination: &DestinationValues::new("d", &vars),
            })
            .expect("render");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let body = v["attachments"][0]["content"]["body"]
            .as_array()
            .expect("body");
        assert_eq!(body.len(), 1 + 10 + 1);
        assert_eq!(body[11]["text"], "2 more alerts not shown");
    }

    #[test]
    fn googlechat_template() {
        let v = ready_made(
            "googlechat.json.j2",
            include_str!("../../../conf/templates/googlechat.json.j2"),
            0..2,
        );
        assert_eq!(v["text"], "[FIRING:1, RESOLVED:1] HighErrorRate");
        assert_eq!(v["thread"]["threadKey"], sample_payload().group_key);
        let card = &v["cardsV2"][0];
        assert_eq!(card["cardId"], "alertmanager");
        assert_eq!(
            card["card"]["header"]["title"],
            "[FIRING:1, RESOLVED:1] HighErrorRate"
        );
        let sections = card["card"]["sections"].as_array().expect("sections");
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[1]["header"], "RESOLVED · HighErrorRate · warning");
        let widgets = sections[0]["widgets"].as_array().expect("widgets");
        assert!(widgets[0]["textParagraph"]["text"]
            .as_str()
            .expect("text")
            .contains("<b>FIRING</b>"));
        assert!(widgets[2]["decoratedText"]["text"]
            .as_str()
            .expect("text")
            .contains("instance=10.0.0.5:8080"));
        assert_eq!(
            widgets[3]["buttonList"]["buttons"][0]["onClick"]["openLink"]["url"],
            "http://prometheus.example.com:9090/graph?g0.expr=rate"
        );
    }

    #[test]
    fn googlechat_threads_by_group_alert_or_not_at_all() {
        let t = Template::compile(
            "googlechat",
            include_str!("../../../conf/templates/googlechat.json.j2"),
        )
        .expect("compile");
        let values = PayloadValues::new(&sample_payload());
        let thread = |by: &str| {
            let vars = BTreeMap::from([("thread_by".to_owned(), by.to_owned())]);
            let out = t
                .render_json(&RenderContext {
                    payload: &values,
                    alerts: 1..2,
                    destination: &DestinationValues::new("d", &vars),
                })
                .expect("render");
            serde_json::from_str::<serde_json::Value>(&out).expect("json")["thread"].clone()
        };
        assert_eq!(thread("group")["threadKey"], sample_payload().group_key);
        assert_eq!(
            thread("alert")["threadKey"],
            sample_payload().alerts[1].fingerprint
        );
        assert!(thread("none").is_null());
    }

    #[test]
    fn pagerduty_template() {
        let src = include_str!("../../../conf/templates/pagerduty.json.j2");
        let trigger = ready_made("pagerduty.json.j2", src, 0..1);
        assert_eq!(trigger["routing_key"], "sample-routing-key");
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], "c1a2b3d4e5f60718");
        let p = &trigger["payload"];
        assert_eq!(p["summary"], "[HighErrorRate] 5xx ratio above 5%");
        assert_eq!(p["source"], "10.0.0.5:8080");
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["timestamp"], "2024-05-01T10:00:00.123456789Z");
        assert_eq!(p["custom_details"]["labels"]["service"], "checkout");
        assert_eq!(
            trigger["links"][1]["href"],
            "https://runbooks.example.com/high-error-rate"
        );
        assert_eq!(
            trigger["client_url"],
            "http://alertmanager.example.com:9093"
        );

        let resolve = ready_made("pagerduty.json.j2", src, 1..2);
        assert_eq!(resolve["event_action"], "resolve");
        assert_eq!(
            resolve["dedup_key"],
            sample_payload().alerts[1].fingerprint.as_str()
        );
        assert!(resolve.get("payload").is_none());
    }

    #[test]
    fn generic_template() {
        let src = include_str!("../../../conf/templates/generic.json.j2");
        let v = ready_made("generic.json.j2", src, 0..2);
        let payload = sample_payload();
        // The whole group comes out as Alertmanager sent it.
        assert_eq!(v, serde_json::to_value(payload).expect("serialize"));
        // One resolved alert of a firing group: only it, with the status it has.
        let one = ready_made("generic.json.j2", src, 1..2);
        assert_eq!(one["status"], "resolved");
        assert_eq!(one["alerts"].as_array().expect("alerts").len(), 1);
        assert_eq!(one["alerts"][0]["labels"]["instance"], "10.0.0.6:8080");
    }
}
