//! Hostile input through the payload parser and every ready-made template, the way a webhook
//! goes: shared by the fuzz target (`fuzz/fuzz_targets/alert_payload.rs`), the test that replays
//! its corpus and the mutation test, so that what one of them finds the others keep checking.
//!
//! A parse or render error is an answer, not a defect. A defect panics here: a panic in the
//! parser, a render that panicked (caught by [`Template::render`]) or ran out of fuel, and a
//! ready-made JSON template whose output is not JSON (a value it failed to escape).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::config::BUILTIN_TEMPLATES;
use super::payload::{self, Limits};
use super::template::{DestinationValues, PayloadValues, RenderContext, RenderError, Template};

/// As many alerts as a default plugin accepts.
const LIMITS: Limits = Limits {
    max_alerts: super::config::DEFAULT_MAX_ALERTS,
};

/// Alerts rendered one by one, at most: the whole group is always rendered too.
const PER_ALERT: usize = 16;

static TEMPLATES: LazyLock<Vec<Template>> = LazyLock::new(|| {
    BUILTIN_TEMPLATES
        .iter()
        .map(|(name, text)| {
            Template::compile(name, text).unwrap_or_else(|e| panic!("builtin {name}: {e}"))
        })
        .collect()
});

static DESTINATION: LazyLock<DestinationValues> = LazyLock::new(|| {
    let vars = BTreeMap::from([("routing_key".to_owned(), "fuzz-routing-key".to_owned())]);
    DestinationValues::new("fuzz", &vars)
});

/// Parses `body` and renders it with every ready-made template, whole and alert by alert
/// (the first `PER_ALERT`). Returns how many messages rendered; panics on a defect.
pub fn parse_and_render_all(body: &[u8]) -> usize {
    let Ok(p) = payload::parse(body, &LIMITS) else {
        return 0;
    };
    let values = PayloadValues::new(&p);
    let n = p.alerts.len();
    let ranges = std::iter::once(0..n).chain((0..n.min(PER_ALERT)).map(|i| i..i + 1));
    let mut rendered = 0;
    for alerts in ranges {
        let ctx = RenderContext {
            payload: &values,
            alerts,
            destination: &DESTINATION,
        };
        for t in TEMPLATES.iter() {
            match t.render_json(&ctx) {
                Ok(_) => rendered += 1,
                Err(
                    e @ (RenderError::Panic(_) | RenderError::OutOfFuel | RenderError::Json { .. }),
                ) => {
                    panic!(
                        "ready-made template {} on alerts {:?}: {e}",
                        t.name(),
                        ctx.alerts
                    )
                }
                Err(_) => {}
            }
        }
    }
    rendered
}
