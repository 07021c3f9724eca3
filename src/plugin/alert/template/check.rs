//! The checks `Template::compile` makes beyond syntax: that every filter, test and top-level
//! name a template uses exists (found by a token scan of the source, since minijinja looks a
//! filter up only when it runs it), and a trial render against a sample payload.

use std::collections::{BTreeMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::LazyLock;

use minijinja::{Error, ErrorKind};
use regex::Regex;

use super::super::payload::{self, Limits, Payload};
use super::context::context_value;
use super::filters::BadLiteral;
use super::{
    panic_message, with_work_budget, DestinationValues, PayloadValues, RenderContext, RenderError,
    Template, TemplateError, CONTEXT_VARIABLES,
};

impl Template {
    /// Every filter and test named anywhere in the template exists, and every top-level name
    /// is a variable of the context or a function.
    pub(super) fn check_names(&self, source: &str) -> Result<(), TemplateError> {
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
    pub(super) fn trial_render(&self) -> Result<(), TemplateError> {
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

/// A firing and a resolved alert with the labels and annotations real rules carry: what a
/// template is trial-rendered against.
pub(super) const SAMPLE_PAYLOAD: &str = r#"{
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

pub(super) struct Sample {
    pub(super) values: PayloadValues,
    pub(super) destination: DestinationValues,
}

pub(super) static SAMPLE: LazyLock<Sample> = LazyLock::new(|| Sample {
    values: PayloadValues::new(&sample_payload()),
    destination: DestinationValues::new("sample", &sample_vars()),
});

pub(super) fn sample_vars() -> BTreeMap<String, String> {
    BTreeMap::from([("routing_key".to_owned(), "sample-routing-key".to_owned())])
}

pub(super) fn sample_payload() -> Payload {
    payload::parse(SAMPLE_PAYLOAD.as_bytes(), &Limits { max_alerts: 10 })
        .expect("the built-in sample payload parses")
}

/// The whole sample group, then each alert alone.
pub(super) fn sample_contexts() -> [RenderContext<'static>; 3] {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum RefKind {
    Filter,
    Test,
    /// An identifier not after a `.`: a variable, a function or a keyword.
    Name,
    /// A name a `set` or `for` tag assigns.
    Assigned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ref<'s> {
    pub(super) kind: RefKind,
    pub(super) name: &'s str,
    /// Byte offset in the source.
    pub(super) offset: usize,
}

static END_RAW: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{%[-+]?\s*endraw\s*[-+]?%\}").expect("a fixed, valid pattern"));

/// The filters, tests and names in the tags of a template that minijinja has parsed. A token
/// scan, enough for a source known to be valid: strings, comments and raw blocks are skipped.
pub(super) fn scan_refs(src: &str) -> Vec<Ref<'_>> {
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

pub(super) fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
        + 1
}
