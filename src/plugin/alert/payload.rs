//! Alertmanager's webhook payload (version 4): the types, a parser whose errors name the line or
//! field at fault, and the label-set fingerprint Alertmanager gives each alert.
//!
//! The parser is strict where a wrong payload would send a wrong message (status values,
//! timestamps, an alert without labels) and liberal where Alertmanager itself is: optional maps
//! default to empty, a missing fingerprint is computed, unknown fields are ignored.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The only payload version this parser accepts (Alertmanager has sent "4" since 0.8).
pub const VERSION: &str = "4";

/// Limits applied while parsing; the body's byte limit is the caller's, applied while reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// More alerts than this in one payload is [`PayloadError::TooManyAlerts`].
    pub max_alerts: usize,
}

/// One webhook notification: a group of alerts and what they have in common.
///
/// Serializes with Alertmanager's field names, so a template's `tojson` and the generic
/// destination emit the same shape Alertmanager sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// Always [`VERSION`] once parsed; a payload without one is taken to be version 4.
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    /// How many alerts Alertmanager left out because of its `max_alerts` receiver setting.
    #[serde(default)]
    pub truncated_alerts: u64,
    /// `firing` while any alert of the group fires.
    pub status: Status,
    #[serde(default)]
    pub receiver: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

/// One alert of a [`Payload`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: Status,
    /// Never empty once parsed.
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
    /// As sent (RFC 3339); [`Alert::starts_at_time`] is the parsed instant.
    pub starts_at: String,
    /// As sent; Alertmanager sends `0001-01-01T00:00:00Z` (Go's zero time) while an alert fires.
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// As sent, or computed with [`fingerprint`] when the payload had none.
    #[serde(default)]
    pub fingerprint: String,
    #[serde(skip, default = "epoch")]
    pub starts_at_time: OffsetDateTime,
    /// `None` when `endsAt` was missing, empty or Go's zero time.
    #[serde(skip)]
    pub ends_at_time: Option<OffsetDateTime>,
}

/// An alert's or a group's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a body is not an acceptable Alertmanager payload. `Display` is written for the body of
/// the 400 (413 for [`PayloadError::TooManyAlerts`]) the sender gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// The body is not JSON.
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// JSON of the wrong shape; `path` is like `alerts[3].labels` (empty for the top level).
    Schema { path: String, message: String },
    /// `alerts` is empty.
    NoAlerts,
    /// More alerts than [`Limits::max_alerts`].
    TooManyAlerts { count: usize, max: usize },
    /// A version other than [`VERSION`].
    Version(String),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Json {
                line,
                column,
                message,
            } => write!(f, "invalid JSON at line {line} column {column}: {message}"),
            PayloadError::Schema { path, message } if path.is_empty() => {
                write!(f, "not an Alertmanager webhook payload: {message}")
            }
            PayloadError::Schema { path, message } => {
                write!(f, "not an Alertmanager webhook payload: {path}: {message}")
            }
            PayloadError::NoAlerts => f.write_str("the payload has no alerts"),
            PayloadError::TooManyAlerts { count, max } => {
                write!(f, "the payload has {count} alerts, more than the {max} allowed")
            }
            PayloadError::Version(v) => write!(
                f,
                "unsupported payload version {v:?}: only Alertmanager's webhook version \"{VERSION}\" is accepted"
            ),
        }
    }
}

impl std::error::Error for PayloadError {}

/// Parses and validates one webhook body.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Payload, PayloadError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut payload: Payload = match serde_path_to_error::deserialize(&mut de) {
        Ok(p) => p,
        Err(e) => {
            let path = e.path().to_string();
            return Err(from_json_error(body, path, e.into_inner()));
        }
    };
    // Trailing bytes after the object: a concatenation or a truncated retry, not a payload.
    if let Err(e) = de.end() {
        return Err(from_json_error(body, ".".to_owned(), e));
    }
    if payload.version != VERSION {
        return Err(PayloadError::Version(payload.version));
    }
    if payload.alerts.is_empty() {
        return Err(PayloadError::NoAlerts);
    }
    if payload.alerts.len() > limits.max_alerts {
        return Err(PayloadError::TooManyAlerts {
            count: payload.alerts.len(),
            max: limits.max_alerts,
        });
    }
    for (i, alert) in payload.alerts.iter_mut().enumerate() {
        validate_alert(i, alert)?;
    }
    Ok(payload)
}

fn validate_alert(i: usize, alert: &mut Alert) -> Result<(), PayloadError> {
    let schema = |field: &str, message: String| PayloadError::Schema {
        path: format!("alerts[{i}].{field}"),
        message,
    };
    if alert.labels.is_empty() {
        return Err(schema(
            "labels",
            "must contain at least one label".to_owned(),
        ));
    }
    alert.starts_at_time = parse_timestamp(&alert.starts_at)
        .map_err(|e| schema("startsAt", format!("not an RFC 3339 timestamp: {e}")))?;
    alert.ends_at_time = if alert.ends_at.is_empty() {
        None
    } else {
        let t = parse_timestamp(&alert.ends_at)
            .map_err(|e| schema("endsAt", format!("not an RFC 3339 timestamp: {e}")))?;
        (t != go_zero_time()).then_some(t)
    };
    if alert.fingerprint.is_empty() {
        alert.fingerprint = fingerprint_hex(fingerprint(&alert.labels));
    }
    Ok(())
}

/// Turns a serde_json error into [`PayloadError::Json`] for bad syntax or
/// [`PayloadError::Schema`] for a wrong shape.
fn from_json_error(body: &[u8], path: String, e: serde_json::Error) -> PayloadError {
    use serde_json::error::Category;
    let (line, column) = (e.line(), e.column());
    // serde_json's Display ends with the position, which the variants carry on their own.
    let full = e.to_string();
    let message = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full)
        .to_owned();
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => PayloadError::Json {
            line,
            column,
            message,
        },
        Category::Data => {
            // A future payload version may well differ in shape: say it is the version, not
            // the field the shape broke at.
            if let Some(v) = declared_version(body) {
                if v != VERSION {
                    return PayloadError::Version(v);
                }
            }
            PayloadError::Schema {
                path: if path == "." { String::new() } else { path },
                message,
            }
        }
    }
}

/// The `version` a body declares, read on the error path only.
fn declared_version(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: Option<String>,
    }
    serde_json::from_slice::<VersionOnly>(body).ok()?.version
}

/// The fingerprint Alertmanager and Prometheus compute for a label set (`model.LabelSet
/// .Fingerprint()`): FNV-1a 64 over each label in name order, name then value, each followed
/// by the byte 0xff, which cannot occur in UTF-8 and so keeps `a="bc"` apart from `ab="c"`.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> u64 {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    const SEPARATOR: u8 = 0xff;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    // A BTreeMap iterates in byte order of the names, the order Go's sort.Strings gives.
    for (name, value) in labels {
        add(name.as_bytes());
        add(&[SEPARATOR]);
        add(value.as_bytes());
        add(&[SEPARATOR]);
    }
    h
}

/// A fingerprint as Alertmanager prints it: 16 lowercase hex digits.
pub fn fingerprint_hex(fp: u64) -> String {
    format!("{fp:016x}")
}

fn default_version() -> String {
    VERSION.to_owned()
}

/// An RFC 3339 timestamp. The shape Alertmanager sends (`2024-05-01T10:00:00.123Z`, or with an
/// offset) is read by hand, several times faster than the general parser; anything else, and
/// every error, goes to `time`'s RFC 3339 parser, so what is accepted is exactly what it accepts.
pub fn parse_timestamp(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    match parse_common_timestamp(s.as_bytes()) {
        Some(t) => Ok(t),
        None => OffsetDateTime::parse(s, &Rfc3339),
    }
}

fn parse_common_timestamp(b: &[u8]) -> Option<OffsetDateTime> {
    fn digits(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    }
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':';
    if !shape {
        return None;
    }
    let year = i32::try_from(digits(&b[0..4])?).ok()?;
    let month = time::Month::try_from(u8::try_from(digits(&b[5..7])?).ok()?).ok()?;
    let day = u8::try_from(digits(&b[8..10])?).ok()?;
    let (hour, minute, second) = (
        u8::try_from(digits(&b[11..13])?).ok()?,
        u8::try_from(digits(&b[14..16])?).ok()?,
        u8::try_from(digits(&b[17..19])?).ok()?,
    );
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let [b'.', frac @ ..] = rest {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        // More than nanosecond precision is left to the general parser.
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(&frac[..n])? * 10u32.pow(9 - n as u32);
        rest = &frac[n..];
    }
    let offset = match rest {
        [b'Z'] => time::UtcOffset::UTC,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let (h, m) = (h as i8, m as i8);
            match sign {
                b'+' => time::UtcOffset::from_hms(h, m, 0).ok()?,
                _ => time::UtcOffset::from_hms(-h, -m, 0).ok()?,
            }
        }
        _ => return None,
    };
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let time = time::Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_offset(offset))
}

fn epoch() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH
}

/// Go's `time.Time{}`, which Alertmanager sends as the `endsAt` of an alert without an end.
fn go_zero_time() -> OffsetDateTime {
    time::macros::datetime!(0001-01-01 00:00:00 UTC)
}

/// Some senders write `null` for an empty map; Alertmanager's own Go decoder accepts that.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-read shape agrees with `time`'s RFC 3339 parser on every string it accepts,
    /// and leaves to it every string it does not.
    #[test]
    fn fast_timestamps_agree_with_the_general_parser() {
        let fixed = [
            "2024-05-01T10:00:00Z",
            "2024-05-01T10:00:00.123456789Z",
            "2024-05-01T10:00:00.5+02:00",
            "2024-05-01T10:00:00-05:30",
            "0001-01-01T00:00:00Z",
            "2024-02-29T23:59:59.000000001Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T10:60:00Z",
            "2016-12-31T23:59:60Z",
            "2024-05-01T10:00:00.1234567891Z",
            "2024-05-01T10:00:00.Z",
            "2024-05-01t10:00:00z",
            "2024-05-01T10:00:00+24:00",
            "2024-05-01T10:00:00+23:60",
            "2024-05-01T10:00:00",
            "2024-05-01 10:00:00Z",
            "+2024-05-01T10:00:00Z",
            "2024-05-01T10:00:00+0200",
        ];
        // Mutations of a valid timestamp: each byte swapped for characters of the grammar.
        let base = "2024-05-01T10:00:00.123+02:00";
        let mut inputs: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
        for i in 0..base.len() {
            for c in ['0', '1', '2', '5', '9', '-', ':', '.', 'T', 'Z', '+', 'x'] {
                let mut b = base.as_bytes().to_vec();
                b[i] = c as u8;
                inputs.push(String::from_utf8(b).expect("ascii"));
            }
        }
        for s in &inputs {
            let general = OffsetDateTime::parse(s, &Rfc3339).ok();
            if let Some(fast) = parse_common_timestamp(s.as_bytes()) {
                let general = general.unwrap_or_else(|| panic!("{s}: only the fast path takes it"));
                assert_eq!(fast, general, "{s}");
                assert_eq!(fast.offset(), general.offset(), "{s}");
            }
            assert_eq!(parse_timestamp(s).ok(), general, "{s}");
        }
        assert!(parse_common_timestamp(b"2024-05-01T10:00:00.123456789Z").is_some());
        assert!(parse_common_timestamp(b"2024-05-01T10:00:00-05:30").is_some());
    }

    const LIMITS: Limits = Limits { max_alerts: 100 };

    /// Shaped like a real Alertmanager 0.27 notification: field order, zero `endsAt` while
    /// firing, nanosecond timestamps with an offset.
    const SAMPLE: &str = r#"{
      "receiver": "team-x",
      "status": "firing",
      "alerts": [
        {
          "status": "firing",
          "labels": {"alertname": "HighLatency", "instance": "api-1:9090", "job": "api", "severity": "critical"},
          "annotations": {"summary": "p99 above 2s", "description": "p99 is 2.4s"},
          "startsAt": "2024-05-01T10:00:00.123456789+02:00",
          "endsAt": "0001-01-01T00:00:00Z",
          "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
          "fingerprint": "1a2b3c4d5e6f7a8b"
        },
        {
          "status": "resolved",
          "labels": {"alertname": "HighLatency", "instance": "api-2:9090", "job": "api"},
          "startsAt": "2024-05-01T08:00:00Z",
          "endsAt": "2024-05-01T08:30:00Z"
        }
      ],
      "groupLabels": {"alertname": "HighLatency"},
      "commonLabels": {"alertname": "HighLatency", "job": "api"},
      "commonAnnotations": {},
      "externalURL": "http://alertmanager:9093",
      "version": "4",
      "groupKey": "{}:{alertname=\"HighLatency\"}",
      "truncatedAlerts": 0
    }"#;

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(SAMPLE).expect("sample");
        edit(&mut v);
        serde_json::to_vec(&v).expect("json")
    }

    #[test]
    fn parses_a_real_shaped_payload() {
        let p = parse(SAMPLE.as_bytes(), &LIMITS).expect("parse");
        assert_eq!(p.version, "4");
        assert_eq!(p.status, Status::Firing);
        assert_eq!(p.receiver, "team-x");
        assert_eq!(p.external_url, "http://alertmanager:9093");
        assert_eq!(p.group_key, "{}:{alertname=\"HighLatency\"}");
        assert_eq!(p.alerts.len(), 2);
        let a = &p.alerts[0];
        assert_eq!(
            a.fingerprint, "1a2b3c4d5e6f7a8b",
            "a given fingerprint is kept"
        );
        assert_eq!(a.labels["severity"], "critical");
        assert_eq!(a.ends_at_time, None, "Go's zero time is no end");
        assert_eq!(
            a.ends_at, "0001-01-01T00:00:00Z",
            "the original string is kept"
        );
        assert_eq!(
            a.starts_at_time,
            time::macros::datetime!(2024-05-01 08:00:00.123456789 UTC)
        );
        let b = &p.alerts[1];
        assert!(b.annotations.is_empty());
        assert_eq!(b.generator_url, "");
        assert_eq!(
            b.ends_at_time,
            Some(time::macros::datetime!(2024-05-01 08:30:00 UTC))
        );
        assert_eq!(b.fingerprint, fingerprint_hex(fingerprint(&b.labels)));
        assert_eq!(b.fingerprint.len(), 16);
    }

    #[test]
    fn serializes_with_alertmanager_names() {
        let p = parse(SAMPLE.as_bytes(), &LIMITS).expect("parse");
        let v = serde_json::to_value(&p).expect("serialize");
        for key in [
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
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        let a = &v["alerts"][0];
        for key in [
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
            "fingerprint",
        ] {
            assert!(a.get(key).is_some(), "{key} missing from {a}");
        }
        assert!(a.get("starts_at_time").is_none());
        assert_eq!(v["status"], "firing");
        // And it parses back to the same thing.
        let again = parse(&serde_json::to_vec(&p).expect("json"), &LIMITS).expect("reparse");
        assert_eq!(again, p);
    }

    #[test]
    fn liberal_where_alertmanager_is() {
        let body = br#"{"status":"resolved","alerts":[{"status":"resolved",
            "labels":{"a":"b"},"startsAt":"2024-01-01T00:00:00Z","annotations":null,
            "fingerprint":"","extra":1}],"groupLabels":null}"#;
        let p = parse(body, &LIMITS).expect("parse");
        assert_eq!(p.version, "4");
        assert_eq!(p.truncated_alerts, 0);
        assert!(p.group_labels.is_empty() && p.common_labels.is_empty());
        assert_eq!(p.alerts[0].ends_at_time, None);
        assert_eq!(
            p.alerts[0].fingerprint,
            fingerprint_hex(fingerprint(&p.alerts[0].labels))
        );
    }

    #[test]
    fn invalid_json_names_line_and_column() {
        let err = parse(
            b"{\n  \"status\": \"firing\",\n  \"alerts\": [,]\n}",
            &LIMITS,
        )
        .expect_err("bad json");
        match &err {
            PayloadError::Json { line, column, .. } => assert_eq!((*line, *column), (3, 14)),
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("invalid JSON at line 3 column 14: "),
            "{err}"
        );
        assert!(
            !err.to_string().ends_with("column 14"),
            "position said twice: {err}"
        );

        assert!(matches!(
            parse(b"", &LIMITS),
            Err(PayloadError::Json { .. })
        ));
        let trailing = format!("{SAMPLE} {{}}");
        assert!(matches!(
            parse(trailing.as_bytes(), &LIMITS),
            Err(PayloadError::Json { .. })
        ));
    }

    #[test]
    fn wrong_shapes_name_the_field_path() {
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (
                with(|v| v["alerts"][1]["labels"]["job"] = 5.into()),
                "alerts[1].labels.job",
                "invalid type",
            ),
            (
                with(|v| v["alerts"][1]["labels"] = serde_json::json!({})),
                "alerts[1].labels",
                "at least one label",
            ),
            (
                with(|v| {
                    v["alerts"][0].as_object_mut().map(|o| o.remove("startsAt"));
                }),
                "alerts[0]",
                "missing field `startsAt`",
            ),
            (
                with(|v| v["alerts"][0]["status"] = "pending".into()),
                "alerts[0].status",
                "unknown variant `pending`",
            ),
            (
                with(|v| v["alerts"][1]["startsAt"] = "2024-05-01 08:00:00".into()),
                "alerts[1].startsAt",
                "RFC 3339",
            ),
            (
                with(|v| v["alerts"][1]["endsAt"] = "yesterday".into()),
                "alerts[1].endsAt",
                "RFC 3339",
            ),
            (
                with(|v| {
                    v.as_object_mut().map(|o| o.remove("status"));
                }),
                "",
                "missing field `status`",
            ),
            (
                with(|v| v["alerts"] = serde_json::json!({})),
                "alerts",
                "invalid type",
            ),
        ];
        for (body, want_path, want_msg) in cases {
            match parse(&body, &LIMITS) {
                Err(PayloadError::Schema { path, message }) => {
                    assert_eq!(path, want_path, "{message}");
                    assert!(message.contains(want_msg), "{path}: {message}");
                    assert!(!message.contains(" at line "), "{message}");
                }
                other => panic!("{want_path}: {other:?}"),
            }
        }
        let shown = PayloadError::Schema {
            path: "alerts[1].labels".into(),
            message: "must contain at least one label".into(),
        }
        .to_string();
        assert_eq!(
            shown,
            "not an Alertmanager webhook payload: alerts[1].labels: must contain at least one label"
        );
    }

    #[test]
    fn alert_counts_and_version() {
        let empty = with(|v| v["alerts"] = serde_json::json!([]));
        assert_eq!(parse(&empty, &LIMITS), Err(PayloadError::NoAlerts));

        let tight = Limits { max_alerts: 1 };
        assert_eq!(
            parse(SAMPLE.as_bytes(), &tight),
            Err(PayloadError::TooManyAlerts { count: 2, max: 1 })
        );
        assert!(parse(SAMPLE.as_bytes(), &Limits { max_alerts: 2 }).is_ok());

        let v3 = with(|v| v["version"] = "3".into());
        let err = parse(&v3, &LIMITS).expect_err("v3");
        assert_eq!(err, PayloadError::Version("3".into()));
        assert!(err
            .to_string()
            .contains("only Alertmanager's webhook version \"4\""));

        // A differently shaped future version is reported as the version, not its shape.
        let v5 = with(|v| {
            v["version"] = "5".into();
            v["alerts"] = serde_json::json!({"items": []});
        });
        assert_eq!(parse(&v5, &LIMITS), Err(PayloadError::Version("5".into())));
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Vectors from prometheus/common `model/signature_test.go` (`TestMetricToFingerprint`,
    /// `BenchmarkMetricToFingerprint*`).
    #[test]
    fn fingerprint_matches_prometheus() {
        assert_eq!(fingerprint(&BTreeMap::new()), 14_695_981_039_346_656_037);
        assert_eq!(
            fingerprint(&labels(&[
                ("name", "garland, briggs"),
                ("fear", "love is not enough")
            ])),
            5_799_056_148_416_392_346
        );
        assert_eq!(
            fingerprint(&labels(&[("first-label", "first-label-value")])),
            5_146_282_821_936_882_169
        );
        assert_eq!(
            fingerprint(&labels(&[
                ("first-label", "first-label-value"),
                ("second-label", "second-label-value")
            ])),
            3_195_800_080_984_914_717
        );
        assert_eq!(
            fingerprint(&labels(&[
                ("first-label", "first-label-value"),
                ("second-label", "second-label-value"),
                ("third-label", "third-label-value")
            ])),
            13_843_036_195_897_128_121
        );
    }

    /// `{alertname="test"}` by hand from the definition: FNV-1a over
    /// `alertname 0xff test 0xff`, independent of the loop above.
    #[test]
    fn fingerprint_by_hand() {
        let mut bytes = b"alertname".to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(b"test");
        bytes.push(0xff);
        let want = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let got = fingerprint(&labels(&[("alertname", "test")]));
        assert_eq!(got, want);
        assert_eq!(fingerprint_hex(got).len(), 16);
        assert_eq!(fingerprint_hex(0xab), "00000000000000ab");
        // The separator keeps the boundary between name and value.
        assert_ne!(
            fingerprint(&labels(&[("a", "bc")])),
            fingerprint(&labels(&[("ab", "c")]))
        );
    }
}
