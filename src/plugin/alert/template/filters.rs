//! The filters and functions zkgate adds to minijinja's built-ins (listed in the parent
//! module's documentation), each charging its work to the render's budget.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, PoisonError, RwLock};

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use regex::Regex;
use time::format_description::well_known::{Rfc2822, Rfc3339};
use time::format_description::OwnedFormatItem;
use time::{OffsetDateTime, UtcOffset};

use super::super::payload::{self, Status};
use super::context::{AlertObject, StrMap};
use super::{charge, WORK_PER_CALL, WORK_PER_TIME_CALL};

/// Marks an error caused by an argument written in the template (a regex, a time format), so
/// the trial render at compile time reports it.
#[derive(Debug)]
pub(super) struct BadLiteral;

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

pub(super) fn register(env: &mut Environment<'static>) {
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
pub(super) fn urlencode(v: &Value) -> Result<Value, Error> {
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
pub(super) fn human_duration(d: time::Duration) -> String {
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
