//! Config errors, each located by its YAML path (`routes[2].rewrite.pattern`), and [`At`], the
//! path a section's build step carries down as it walks the YAML.

use std::fmt;

/// A YAML path, extended as a section is walked: `At::root().index("routes", 2).key("rewrite")`
/// is `routes[2].rewrite`. It converts into the path a [`ConfigErrors::push`] takes, so a check
/// reads `errors.push(at.key("interval"), "must be more than 0")`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct At(String);

impl At {
    /// The top of the document.
    pub fn root() -> At {
        At(String::new())
    }

    /// A path written out, for a section built on its own (`"routes[0].plugin.alert_webhook"`).
    pub fn new(path: impl Into<String>) -> At {
        At(path.into())
    }

    /// The child `key` of this node.
    pub fn key(&self, key: &str) -> At {
        if self.0.is_empty() {
            At(key.to_owned())
        } else {
            At(format!("{}.{key}", self.0))
        }
    }

    /// Item `i` of this node's list `key`: `key[i]`.
    pub fn index(&self, key: &str, i: usize) -> At {
        let mut at = self.key(key);
        at.0.push_str(&format!("[{i}]"));
        at
    }

    /// Item `i` of this node, which is itself a list.
    pub fn item(&self, i: usize) -> At {
        At(format!("{}[{i}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<At> for String {
    fn from(at: At) -> String {
        at.0
    }
}

impl From<&At> for String {
    fn from(at: &At) -> String {
        at.0.clone()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Every error found in one config, in document order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }

    /// `Ok(value)` when nothing was collected.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::default();
        e.push(path, message);
        e
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Test helper: each expected error starts one of the reported errors `errs`, and nothing
/// else is reported.
#[cfg(test)]
pub(crate) fn assert_exactly(errs: &[String], expected: &[&str]) {
    for want in expected {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in:\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(errs.len(), expected.len(), "{}", errs.join("\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_as_written_in_yaml() {
        let route = At::root().index("routes", 2);
        assert_eq!(
            route.key("rewrite").key("pattern").as_str(),
            "routes[2].rewrite.pattern"
        );
        assert_eq!(At::root().key("admin").to_string(), "admin");
        assert_eq!(
            route.key("methods").item(0).as_str(),
            "routes[2].methods[0]"
        );
        let mut errors = ConfigErrors::default();
        errors.push(route.key("upstream"), "unknown upstream `x`");
        assert_eq!(
            errors.to_string(),
            "routes[2].upstream: unknown upstream `x`"
        );
    }
}
