//! YAML text to [`RawConfig`]: each section and each list item is read on its own, so one bad
//! route does not hide the errors of the next.
//!
//! Before the YAML parser sees it, the text is held to [`MAX_CONFIG_BYTES`] and its nesting to
//! [`MAX_NESTING`]: the parser's time grows with the square of the nesting of flow collections
//! (`[[[...]]]` 100,000 deep kept `zkgate check`, and every replica reloading a pushed config,
//! busy for hours), and no real config comes near either bound.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::schema::RawConfig;
use crate::section::ConfigErrors;

/// The largest config accepted, from a file or a config node: ZooKeeper's own default limit on
/// a node. The parser holds every event and value of the text at once: at this bound, a text of
/// nothing but collections 60 deep takes it about 280 MB (12 s in a debug build), four times
/// that at 4 MiB.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The deepest nesting of collections accepted. A config with every section used, a route's
/// plugin and an alert destination nests 7 deep.
pub const MAX_NESTING: usize = 64;

const SECTIONS: &[&str] = &[
    "server",
    "admin",
    "access_log",
    "client_ip",
    "zookeeper",
    "listeners",
    "upstreams",
    "routes",
];

/// Parses `text`, expanding `${env:NAME}` references from the process environment.
pub fn parse(text: &str) -> Result<RawConfig, ConfigErrors> {
    parse_with(text, &|name| std::env::var(name).ok())
}

pub fn parse_with(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RawConfig, ConfigErrors> {
    check_bounds(text)?;
    let doc: Value = serde_yaml::from_str(text)
        .map_err(|e| ConfigErrors::one("", format!("YAML syntax: {e}")))?;
    let map = match doc {
        Value::Mapping(m) => m,
        Value::Null => return Err(ConfigErrors::one("", "the config is empty")),
        _ => {
            return Err(ConfigErrors::one(
                "",
                "the config must be a mapping of sections",
            ))
        }
    };

    let mut errors = ConfigErrors::default();
    let mut raw = RawConfig::default();
    for (key, mut value) in map {
        let Some(key) = key.as_str().map(str::to_owned) else {
            errors.push("", format!("section names must be strings, found {key:?}"));
            continue;
        };
        super::env::expand(&mut value, &key, env, &mut errors);
        match key.as_str() {
            "server" => raw.server = section(&key, value, &mut errors).unwrap_or_default(),
            "admin" => raw.admin = section(&key, value, &mut errors).unwrap_or_default(),
            "access_log" => raw.access_log = section(&key, value, &mut errors),
            "client_ip" => raw.client_ip = section(&key, value, &mut errors).unwrap_or_default(),
            "zookeeper" => raw.zookeeper = section(&key, value, &mut errors),
            "listeners" => raw.listeners = list(&key, value, &mut errors),
            "upstreams" => raw.upstreams = list(&key, value, &mut errors),
            "routes" => raw.routes = list(&key, value, &mut errors),
            other => errors.push(
                other,
                format!("unknown section, expected one of: {}", SECTIONS.join(", ")),
            ),
        }
    }
    errors.into_result(raw)
}

/// Parses and builds `text` as `check` does, minus what reaches outside the process: for the
/// config fuzz target and the test that replays its corpus. `${env:NAME}` references see an empty
/// environment, and a config whose backends name hosts rather than addresses is parsed only
/// (`Ok(None)`), since building it would resolve them.
#[doc(hidden)]
pub fn load_offline(text: &str) -> Result<Option<crate::snapshot::Snapshot>, ConfigErrors> {
    let raw = parse_with(text, &|_| None)?;
    let offline = raw.upstreams.iter().flat_map(|u| &u.backends).all(|b| {
        b.split_whitespace()
            .next()
            .is_some_and(|a| a.parse::<std::net::SocketAddr>().is_ok())
    });
    if !offline {
        return Ok(None);
    }
    super::build::build(raw, None).map(Some)
}

/// Refuses a text over [`MAX_CONFIG_BYTES`] or nested deeper than [`MAX_NESTING`].
pub fn check_bounds(text: &str) -> Result<(), ConfigErrors> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigErrors::one(
            "",
            format!(
                "the config is {} bytes, more than the {MAX_CONFIG_BYTES} allowed",
                text.len()
            ),
        ));
    }
    if let Some(line) = too_deep(text, MAX_NESTING) {
        return Err(ConfigErrors::one(
            "",
            format!("the config nests collections more than {MAX_NESTING} deep (line {line})"),
        ));
    }
    Ok(())
}

/// The 1-based line where `text` first nests collections deeper than `max`, by a scan that
/// runs in linear time and over-counts rather than under-counts: flow brackets outside quotes
/// and comments, plus block levels (each deeper indentation, each `- ` or `? ` that opens a
/// collection on the same line). Block scalars (`|`, `>`) are skipped.
fn too_deep(text: &str, max: usize) -> Option<usize> {
    let mut flow = 0usize;
    // Indentation columns of the open block levels.
    let mut blocks: Vec<usize> = Vec::new();
    // Inside a quoted scalar, by its quote.
    let mut quote: Option<u8> = None;
    // A block scalar's content: lines indented deeper than this are text.
    let mut scalar_above: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        let indent = b.iter().take_while(|&&c| c == b' ').count();
        let blank = b[indent..].iter().all(|c| c.is_ascii_whitespace());
        if let Some(col) = scalar_above {
            if blank || indent > col {
                continue;
            }
            scalar_above = None;
        }
        let mut i = indent;
        if quote.is_none() && flow == 0 && !blank && b[i] != b'#' {
            while blocks.last().is_some_and(|&c| c >= indent) {
                blocks.pop();
            }
            blocks.push(indent);
            // `- - x`, `? - x`: each indicator followed by a space opens one more level.
            while i + 1 < b.len() && matches!(b[i], b'-' | b'?') && matches!(b[i + 1], b' ' | b'\t')
            {
                i += 2;
                while i < b.len() && b[i] == b' ' {
                    i += 1;
                }
                blocks.push(i);
            }
            if blocks.len() > max {
                return Some(n + 1);
            }
        }
        let mut last = None;
        // At a place where a node may start: where a quote opens a quoted scalar. Anywhere
        // else (`a: it's`, `a: x, 'y`) a quote is text, and taking it for an opening one would
        // hide the brackets after it from the count.
        let mut node_start = true;
        while i < b.len() {
            let c = b[i];
            match quote {
                Some(b'\'') if c == b'\'' => {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 1;
                    } else {
                        quote = None;
                    }
                }
                Some(b'"') if c == b'\\' => i += 1,
                Some(b'"') if c == b'"' => quote = None,
                Some(_) => {}
                None => {
                    let spaced = |j: usize| b.get(j).is_none_or(|&c| c == b' ' || c == b'\t');
                    match c {
                        b'#' if i == 0 || spaced(i - 1) => break,
                        b'\'' | b'"' if node_start => quote = Some(c),
                        b'[' | b'{' => {
                            flow += 1;
                            if flow + blocks.len() > max {
                                return Some(n + 1);
                            }
                        }
                        b']' | b'}' => flow = flow.saturating_sub(1),
                        _ => {}
                    }
                    if !matches!(c, b' ' | b'\t') {
                        node_start = match c {
                            // `- ` and `? ` open nodes only where the line's content starts
                            // (consumed above); `: ` anywhere.
                            b':' => spaced(i + 1) || flow > 0,
                            b'[' | b'{' | b',' => flow > 0,
                            _ => false,
                        };
                    }
                }
            }
            if !c.is_ascii_whitespace() {
                last = Some(i);
            }
            i += 1;
        }
        // `key: |`, `key: >-`, `- |2`: the lines below, deeper than this one, are text.
        if quote.is_none() && flow == 0 {
            let tail = last.map_or("", |e| {
                let start = line[..=e].rfind(' ').map_or(0, |s| s + 1);
                &line[start..=e]
            });
            if tail.starts_with(['|', '>'])
                && tail[1..]
                    .bytes()
                    .all(|c| matches!(c, b'-' | b'+' | b'1'..=b'9'))
            {
                scalar_above = Some(indent);
            }
        }
    }
    None
}

/// Deserializes one value, reporting the failing key as a path under `path`.
fn section<T: DeserializeOwned>(path: &str, value: Value, errors: &mut ConfigErrors) -> Option<T> {
    if value.is_null() {
        return None;
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let at = if inner == "." || inner.is_empty() {
                path.to_owned()
            } else {
                format!("{path}.{inner}")
            };
            errors.push(at, tidy(e.into_inner().to_string()));
            None
        }
    }
}

fn list<T: DeserializeOwned>(path: &str, value: Value, errors: &mut ConfigErrors) -> Vec<T> {
    match value {
        Value::Null => Vec::new(),
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| section(&format!("{path}[{i}]"), item, errors))
            .collect(),
        _ => {
            errors.push(path, "must be a list");
            Vec::new()
        }
    }
}

/// serde_yaml appends a position that means nothing for a re-read `Value`.
fn tidy(message: String) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_errors_from_every_item() {
        let text = r#"
listeners:
  - { name: web, listen: "127.0.0.1:8080", colour: blue }
routes:
  - name: a
    match: { path_prefx: /a }
    upstream: x
  - name: b
    rewrite: { pattern: "^/b", replace: 3, extra: 1 }
  - name: c
    max_request_body: 1XB
bogus: 1
"#;
        let errs = parse(text).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].colour",
                "routes[0].match.path_prefx",
                "routes[1].rewrite.replace",
                "routes[2].max_request_body",
                "bogus"
            ],
            "{errs}"
        );
        assert!(errs.0[0].message.contains("colour"), "{errs}");
        assert!(errs.0[3].message.contains("unknown size unit"), "{errs}");
    }

    #[test]
    fn size_and_nesting_are_bounded_before_parsing() {
        let big = format!("# {}\nserver: {{}}\n", "x".repeat(MAX_CONFIG_BYTES));
        let e = parse(&big).unwrap_err().to_string();
        assert!(e.contains("more than the 1048576 allowed"), "{e}");

        // 100,000 deep took the YAML parser hours; refused at once.
        let n = 100_000;
        let flow = format!("routes: {}{}\n", "[".repeat(n), "]".repeat(n));
        let e = parse(&flow).unwrap_err().to_string();
        assert!(
            e.contains("nests collections more than 64 deep (line 1)"),
            "{e}"
        );
        let map = format!("routes: {}1{}\n", "{a: ".repeat(n), "}".repeat(n));
        assert!(parse(&map).unwrap_err().to_string().contains("64 deep"));
        let block = format!("routes:\n  {}x\n", "- ".repeat(n));
        assert!(parse(&block)
            .unwrap_err()
            .to_string()
            .contains("64 deep (line 2)"));
        let indented: String = (0..200)
            .map(|i| format!("{}a{i}:\n", " ".repeat(i)))
            .collect();
        assert!(parse(&indented)
            .unwrap_err()
            .to_string()
            .contains("64 deep"));

        // At the bound, brackets in quotes, comments and block scalars do not count.
        let ok = format!("routes: {}{}\n", "[".repeat(63), "]".repeat(63));
        assert!(too_deep(&ok, MAX_NESTING).is_none());
        let text = format!(
            "a: '[[[{0}'\nb: \"{{{{{0}\\\"\" # [[[[{0}\nc: |\n  {1}\n    {1}\n      {1}\nd: [x]\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert_eq!(too_deep(&text, 3), None, "{text}");
        // A quote inside a plain scalar opens nothing: the brackets after it still count.
        for evasion in [
            "a: it's\nb: ",
            "a: x, 'y\nb: ",
            "a: b:'c\nb: ",
            "a: x - \"y\nb: ",
        ] {
            let text = format!("{evasion}{}\n", "[".repeat(100));
            assert_eq!(too_deep(&text, MAX_NESTING), Some(2), "{evasion}");
        }
        assert_eq!(too_deep("a: ['x[[[[', \"y{{{{\", {k: 'z[[[['}]\n", 3), None);
        let deep_text: String = (0..100)
            .map(|i| format!("  {}{{\n", " ".repeat(i)))
            .collect();
        assert_eq!(too_deep(&format!("t: >-\n{deep_text}x: 1\n"), 3), None);
        // Every example config passes.
        for text in [
            crate::config::EMBEDDED_DEFAULT,
            include_str!("../../conf/reference.yaml"),
        ] {
            assert!(too_deep(text, MAX_NESTING).is_none());
            assert!(too_deep(text, 12).is_none());
        }
    }

    #[test]
    fn syntax_error_is_reported() {
        let errs = parse("routes: [").unwrap_err();
        assert!(errs.0[0].message.starts_with("YAML syntax"), "{errs}");
    }
}
