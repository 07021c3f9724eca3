//! The process log on stderr, with credentials taken out of every line before it is written.
//!
//! Pingora dumps whole request and response heads at debug and trace level (the request it read
//! from the client, the head it writes to the upstream, the upstream's answer), and the admin
//! listener's head with its bearer token. Those dumps are what makes trace level useful, so
//! rather than silencing Pingora's targets the formatter rewrites every line: the values of
//! `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie` and of every header the config
//! marks secret become `<redacted>`. It works on the text because the dumps are formatted inside
//! Pingora, where zkgate cannot reach; the two shapes they take are `"name": "value"` (the
//! `Debug` of a header map) and `name: value\r\n` (the `Debug` of the bytes written on the wire).
//! As a second net, the config's `Secret` values themselves (tokens, passwords, an alert
//! destination's URL and its path, which for a Slack webhook is the secret) are replaced
//! wherever they appear, in request lines and bodies too.

use std::borrow::Cow;
use std::io::Write;
use std::sync::RwLock;

use crate::section::REDACTED;

/// Headers that carry credentials whatever the config says.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

pub fn is_credential_header(name: &str) -> bool {
    CREDENTIAL_HEADERS
        .iter()
        .any(|c| c.eq_ignore_ascii_case(name))
}

/// Lower-case names of headers whose values the config marks secret, besides
/// [`CREDENTIAL_HEADERS`]. Read for every log line (never on the request path), written on a
/// config install.
static SECRET_HEADERS: RwLock<Vec<Box<str>>> = RwLock::new(Vec::new());

/// Hides the values of these headers in every later log line. Names are only ever added: a
/// header that was secret in an earlier config stays hidden until restart, the safe side.
pub fn add_secret_headers<'a>(names: impl IntoIterator<Item = &'a str>) {
    let mut known = SECRET_HEADERS.write().unwrap_or_else(|e| e.into_inner());
    for name in names {
        if !is_credential_header(name) && !known.iter().any(|k| k.eq_ignore_ascii_case(name)) {
            known.push(name.to_ascii_lowercase().into());
        }
    }
}

/// Secret values shorter than this are not searched for as text: they would blank out common
/// words all over the log. Header dumps hide them by name all the same.
pub const MIN_LITERAL: usize = 8;

/// The `Secret` values of the config in force and of the one before it (requests that started
/// on it may still be logging), longest first so that a URL goes before its own path.
static SECRET_VALUES: RwLock<Generations> = RwLock::new(Generations {
    current: Vec::new(),
    hidden: Vec::new(),
});

struct Generations {
    current: Vec<Box<str>>,
    /// `current` and the previous generation, longest first, without duplicates.
    hidden: Vec<Box<str>>,
}

/// Replaces the secret values to hide with those of the config now installed (keeping the last
/// config's too). A URL also contributes its path and query, which is what a request line shows.
pub fn set_secret_values(values: impl IntoIterator<Item = String>) {
    let mut next: Vec<Box<str>> = Vec::new();
    for v in values {
        if let Some(path) = v
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        {
            next.push(path.into());
        }
        next.push(v.into());
    }
    next.retain(|v| v.len() >= MIN_LITERAL);
    let mut hidden: Vec<Box<str>> = next.clone();
    let mut g = SECRET_VALUES.write().unwrap_or_else(|e| e.into_inner());
    hidden.extend(g.current.iter().cloned());
    hidden.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    hidden.dedup();
    *g = Generations {
        current: next,
        hidden,
    };
}

/// What one config tells the logger to hide, found when the config is built.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// Headers whose values the config holds as secrets.
    pub header_names: Vec<String>,
    /// The value of every `Secret` in the config.
    pub values: Vec<String>,
}

/// Counts only: the values are what must never be shown.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("header_names", &self.header_names)
            .field("values", &format_args!("{} {REDACTED}", self.values.len()))
            .finish()
    }
}

/// What a config install tells the logger: its secret header names and secret values.
pub fn learn_secrets(secrets: &Secrets) {
    add_secret_headers(secrets.header_names.iter().map(String::as_str));
    set_secret_values(secrets.values.iter().cloned());
}

/// The stderr logger: `level` unless `RUST_LOG` is set, every line redacted. The caller installs
/// it (behind `conn::log::Throttled`, which rate-limits Pingora's accept loop).
pub fn logger(level: &str) -> env_logger::Logger {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(|buf, record| {
            let args = record.args();
            let owned;
            let text = match args.as_str() {
                Some(s) => s,
                None => {
                    owned = args.to_string();
                    owned.as_str()
                }
            };
            let names = SECRET_HEADERS.read().unwrap_or_else(|e| e.into_inner());
            let values = SECRET_VALUES.read().unwrap_or_else(|e| e.into_inner());
            let text = redact(text, &names, &values.hidden);
            drop((names, values));
            let style = buf.default_level_style(record.level());
            writeln!(
                buf,
                "[{} {style}{:<5}{style:#} {}] {text}",
                buf.timestamp(),
                record.level(),
                record.target(),
            )
        })
        .build()
}

/// `line` with the value of every credential header or header named in `names`, and every
/// occurrence of the `values` (longest first), replaced by `<redacted>`.
pub fn redact<'a>(line: &'a str, names: &[Box<str>], values: &[Box<str>]) -> Cow<'a, str> {
    let mut text = redact_headers(line, names);
    for v in values {
        if text.contains(&**v) {
            text = Cow::Owned(text.replace(&**v, REDACTED));
        }
    }
    text
}

fn redact_headers<'a>(line: &'a str, extra: &[Box<str>]) -> Cow<'a, str> {
    let bytes = line.as_bytes();
    let mut out: Option<String> = None;
    // Everything before `copied` is in `out` already.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let Some(len) = name_at(bytes, i, extra) else {
            i += 1;
            continue;
        };
        let Some((start, end)) = value_after(bytes, i, i + len) else {
            i += len;
            continue;
        };
        let o = out.get_or_insert_with(|| String::with_capacity(line.len()));
        o.push_str(&line[copied..start]);
        o.push_str(REDACTED);
        copied = end;
        i = end.max(i + len);
    }
    match out {
        None => Cow::Borrowed(line),
        Some(mut o) => {
            o.push_str(&line[copied..]);
            Cow::Owned(o)
        }
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The length of a sensitive header name starting at `i`, when one does and stands as a word
/// of its own (after a separator, or after an escaped `\n` of a wire dump).
fn name_at(bytes: &[u8], i: usize, extra: &[Box<str>]) -> Option<usize> {
    let starts_word =
        i == 0 || !is_token_byte(bytes[i - 1]) || (i >= 2 && &bytes[i - 2..i] == b"\\n");
    if !starts_word {
        return None;
    }
    let rest = &bytes[i..];
    CREDENTIAL_HEADERS
        .iter()
        .copied()
        .chain(extra.iter().map(|n| &**n))
        .map(str::as_bytes)
        .find(|name| {
            rest.len() >= name.len()
                && rest[..name.len()].eq_ignore_ascii_case(name)
                && rest.get(name.len()).is_none_or(|b| !is_token_byte(*b))
        })
        .map(<[u8]>::len)
}

/// The byte range of the value that follows the header name at `name_start..name_end`, if the
/// name is followed by one.
fn value_after(bytes: &[u8], name_start: usize, name_end: usize) -> Option<(usize, usize)> {
    let quoted_name = name_start > 0 && bytes[name_start - 1] == b'"';
    let mut j = name_end;
    if quoted_name {
        // `"name": "value"` or `"name": b"value"`; anything else (`"name": Sensitive`) is not
        // a value shown in clear.
        if bytes.get(j) != Some(&b'"') {
            return None;
        }
        j += 1;
        j += skip_spaces(&bytes[j..]);
        if bytes.get(j) != Some(&b':') {
            return None;
        }
        j += 1;
        j += skip_spaces(&bytes[j..]);
        if bytes.get(j) == Some(&b'b') {
            j += 1;
        }
        if bytes.get(j) != Some(&b'"') {
            return None;
        }
        let start = j + 1;
        let mut k = start;
        while k < bytes.len() {
            match bytes[k] {
                b'\\' => k += 2,
                b'"' => return Some((start, k)),
                _ => k += 1,
            }
        }
        return Some((start, bytes.len()));
    }
    j += skip_spaces(&bytes[j..]);
    if bytes.get(j) != Some(&b':') {
        return None;
    }
    j += 1;
    j += skip_spaces(&bytes[j..]);
    // `name: value` runs to the end of its header line: an escaped `\r` or `\n` in a `Debug`
    // dump, a real line break, or the end of the text.
    let mut k = j;
    while k < bytes.len() {
        match bytes[k] {
            b'\r' | b'\n' => break,
            b'\\' if matches!(bytes.get(k + 1), Some(b'r' | b'n')) => break,
            _ => k += 1,
        }
    }
    Some((j, k))
}

fn skip_spaces(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| **b == b' ').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(line: &str) -> String {
        redact(line, &["x-api-key".into()], &[]).into_owned()
    }

    #[test]
    fn header_map_dumps_lose_credential_values() {
        let line = r#"Request header: Some(RequestHeader { base: Parts { method: GET, uri: /, version: HTTP/1.1, headers: {"host": "a", "authorization": "Bearer s3cr3t \"quoted\"", "cookie": "sid=1", "x-api-key": b"k\xff", "x-other": "shown"} }, header_name_map: Some({"authorization": "Authorization"}) })"#;
        let out = r(line);
        assert!(!out.contains("s3cr3t") && !out.contains("quoted"), "{out}");
        assert!(!out.contains("sid=1") && !out.contains("xff"), "{out}");
        assert!(out.contains(r#""authorization": "<redacted>""#), "{out}");
        assert!(out.contains(r#""x-other": "shown""#), "{out}");
        assert!(out.contains(r#""host": "a""#), "{out}");
        assert!(out.ends_with("})"), "{out}");
    }

    #[test]
    fn wire_dumps_lose_credential_values() {
        let line = r#"Writing request header: b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Digest user=\"u\", response=\"abc\"\r\nProxy-Authorization:Basic eA==\r\nX-Api-Key: k1\r\nSet-Cookie: a=b\r\n\r\n""#;
        let out = r(line);
        for secret in ["user=", "abc", "eA==", "k1", "a=b"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains(r"\r\nHost: a\r\n"), "{out}");
        assert!(
            out.contains(r"\r\nAuthorization: <redacted>\r\nProxy-Authorization:<redacted>\r\n"),
            "{out}"
        );
        assert!(out.ends_with(r#"\r\n\r\n""#), "{out}");
    }

    #[test]
    fn raw_text_and_plain_messages() {
        assert_eq!(
            r("GET /\r\nCookie: a=1\r\nHost: h\r\n"),
            "GET /\r\nCookie: <redacted>\r\nHost: h\r\n"
        );
        assert_eq!(r("authorization: x"), "authorization: <redacted>");
        // Words that only contain a name, names without a value, and hidden values stay.
        for same in [
            "x-authorization-mode: on",
            "authorizations: 3",
            "no authorization header",
            r#"{"authorization": Sensitive}"#,
            "listener web on 127.0.0.1:8080",
        ] {
            assert_eq!(r(same), same);
        }
        assert!(matches!(redact("plain", &[], &[]), Cow::Borrowed(_)));
    }

    #[test]
    fn configured_names_are_matched_in_any_case() {
        add_secret_headers(["X-Upstream-Key", "Authorization"]);
        let extra = SECRET_HEADERS.read().unwrap().clone();
        assert!(extra.iter().any(|n| &**n == "x-upstream-key"));
        assert!(!extra.iter().any(|n| &**n == "authorization"));
        assert_eq!(
            redact(r#"{"x-upstream-key": "v"}"#, &extra, &[]),
            r#"{"x-upstream-key": "<redacted>"}"#
        );
    }

    #[test]
    fn secret_values_are_hidden_wherever_they_appear() {
        set_secret_values([
            "https://hooks.slack.com/services/T0/B0/XyZ123456".to_owned(),
            "short".to_owned(),
            "routing-key-42".to_owned(),
        ]);
        set_secret_values(["new-token-0123456789".to_owned()]);
        let values = SECRET_VALUES.read().unwrap().hidden.clone();
        // The values of the config before the current one stay hidden too (its requests may
        // still be logging); short ones are not searched for.
        let line = r#"Writing request header: b"POST /services/T0/B0/XyZ123456 HTTP/1.1\r\n" body {"routing_key":"routing-key-42"} new-token-0123456789 short"#;
        let out = redact(line, &[], &values);
        assert_eq!(
            out,
            r#"Writing request header: b"POST <redacted> HTTP/1.1\r\n" body {"routing_key":"<redacted>"} <redacted> short"#
        );
        set_secret_values([]);
        assert!(!SECRET_VALUES.read().unwrap().hidden.is_empty());
        set_secret_values([]);
        assert!(SECRET_VALUES.read().unwrap().hidden.is_empty());
    }
}
