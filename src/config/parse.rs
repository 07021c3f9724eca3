//! YAML text to [`RawConfig`]: each section and each list item is read on its own, so one bad
//! route does not hide the errors of the next.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::error::ConfigErrors;
use super::schema::RawConfig;

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

/// Parses `text`, expanding `${NAME}` references from the process environment.
pub fn parse(text: &str) -> Result<RawConfig, ConfigErrors> {
    parse_with(text, &|name| std::env::var(name).ok())
}

pub fn parse_with(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RawConfig, ConfigErrors> {
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
    fn syntax_error_is_reported() {
        let errs = parse("routes: [").unwrap_err();
        assert!(errs.0[0].message.starts_with("YAML syntax"), "{errs}");
    }
}
