//! Secrets in config: values that `/config`, `zkgate check` and logs show as `<redacted>`, and
//! a way to find every one of them in a config without a hand-kept list.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What `/config` and logs show in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// A value that `/config` and logs show as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

/// A secret must be a string. serde's own error for anything else quotes the value
/// (``invalid type: integer `123456` ``), and config errors reach `zkgate check`'s output and
/// the reload log, so a number is refused without being shown.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        fn not_shown<E: serde::de::Error>() -> E {
            E::custom("must be a string: put it in quotes (the value is secret, so not shown)")
        }
        impl serde::de::Visitor<'_> for Text {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(not_shown())
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(not_shown())
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(not_shown())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(not_shown())
            }
        }
        d.deserialize_any(Text)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        COLLECTED.with(|c| {
            if let Some(found) = c.borrow_mut().as_mut() {
                found.push(self.0.clone());
            }
        });
        s.serialize_str(REDACTED)
    }
}

thread_local! {
    /// While [`collect`] runs: the value of every `Secret` serialized.
    static COLLECTED: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A map of header values read like [`Secret`]s: a wrong type is reported without the value.
pub fn secret_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, Secret>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// The value of every [`Secret`] serialized while `serialize` runs, on this thread.
pub fn collect(serialize: impl FnOnce()) -> Vec<String> {
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            COLLECTED.with(|c| c.borrow_mut().take());
        }
    }
    COLLECTED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let stop = Stop;
    serialize();
    let found = COLLECTED
        .with(|c| c.borrow_mut().take())
        .unwrap_or_default();
    drop(stop);
    found
}
