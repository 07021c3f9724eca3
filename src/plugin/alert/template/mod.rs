//! Alert message templates: minijinja templates compiled and checked once when the config is
//! built, rendered for each outgoing message against a context made straight from the parsed
//! [`Payload`](super::payload::Payload).
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
//!
//! # Layout
//! This file holds the [`Template`] API and its errors; `context.rs` the values a template
//! sees, `filters.rs` the filters and functions, `check.rs` what `compile` checks (the name
//! scan, the sample payload and the trial render).

mod check;
mod context;
mod filters;
#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, Error, ErrorKind};

use self::check::sample_contexts;
use self::context::context_value;
pub use self::context::{DestinationValues, PayloadValues, RenderContext};
use self::filters::register;

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
