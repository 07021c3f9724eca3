//! `${env:NAME}` and `${env:NAME:-default}` in YAML string values, replaced from the environment
//! before the schema reads them: replicas that share one config (a file baked into an image, or
//! one ZooKeeper node) differ in listen addresses, and secrets stay out of the shared text.
//! Only string values are expanded, and they stay strings. The `env:` prefix keeps every other
//! `$` as written: `${name}` and `$$` mean capture groups and `$` in rewrite replacements.

use serde_yaml::Value;

use crate::section::ConfigErrors;

/// Expands every string scalar under `value`; an undefined variable without a default is an
/// error at that value's path.
pub fn expand(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut ConfigErrors,
) {
    match value {
        Value::String(s) if s.contains(OPEN) => match expand_str(s, lookup) {
            Ok(out) => *s = out,
            Err(message) => errors.push(path, message),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand(item, &format!("{path}[{i}]"), lookup, errors);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_owned);
                let at = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                expand(item, &at, lookup, errors);
            }
        }
        Value::Tagged(tagged) => expand(&mut tagged.value, path, lookup, errors),
        _ => {}
    }
}

const OPEN: &str = "${env:";

fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(OPEN) {
        out.push_str(&rest[..i]);
        let tail = &rest[i + OPEN.len()..];
        let end = tail
            .find('}')
            .ok_or_else(|| format!("`{OPEN}` without a closing `}}` in `{s}`"))?;
        let (name, default) = match tail[..end].split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (&tail[..end], None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "`{name}` is not an environment variable name (letters, digits, _)"
            ));
        }
        // As in the shell, `:-` also covers a variable set to the empty string.
        match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (write ${{env:{name}:-default}} for a fallback)"
                ))
            }
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8081".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(yaml: &str) -> Result<Value, ConfigErrors> {
        let mut v: Value = serde_yaml::from_str(yaml).unwrap();
        let mut errors = ConfigErrors::default();
        expand(&mut v, "", &lookup, &mut errors);
        errors.into_result(v)
    }

    #[test]
    fn expands_strings_with_defaults_and_escapes() {
        let v = run(r#"
a: "127.0.0.1:${env:PORT}"
b: ["${env:MISSING:-x}y", "/${rest}$$1", "cost $5", "${env:EMPTY:-d}", "<${env:EMPTY}>"]
c: 3
"#)
        .unwrap();
        assert_eq!(v["a"], "127.0.0.1:8081");
        assert_eq!(v["b"][0], "xy");
        assert_eq!(v["b"][1], "/${rest}$$1");
        assert_eq!(v["b"][2], "cost $5");
        assert_eq!(v["b"][3], "d");
        assert_eq!(v["b"][4], "<>");
        assert_eq!(v["c"], 3);
    }

    #[test]
    fn every_bad_reference_is_located() {
        let errs = run("x: { y: [ok, \"${env:NOPE}\"] }\nz: \"${env:A-B}\"\nw: \"${env:OPEN\"\n")
            .unwrap_err();
        let got: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "x.y[1]: environment variable NOPE is not set (write ${env:NOPE:-default} for a fallback)",
                "z: `A-B` is not an environment variable name (letters, digits, _)",
                "w: `${env:` without a closing `}` in `${env:OPEN`",
            ]
        );
    }
}
