//! `zkgate alert render`: the requests an Alertmanager payload (on stdin) would make to one
//! destination of an `alert_webhook` route, rendered from a config alone and not sent.

use std::io::Read;
use std::process::ExitCode;

use crate::config::Source;
use crate::plugin::RoutePlugin;

pub fn render(src: Source, destination: &str, route: Option<&str>) -> ExitCode {
    let snapshot = match super::load_or_report(&src) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let fail = |msg: String| {
        eprintln!("{msg}");
        ExitCode::from(2)
    };
    let plugins: Vec<_> = snapshot
        .routes
        .routes()
        .iter()
        .filter(|r| route.is_none_or(|name| *r.name == *name))
        .filter_map(|r| match &r.plugin {
            Some(RoutePlugin::AlertWebhook(p)) => Some(p),
            _ => None,
        })
        .collect();
    let plugin = match (plugins.as_slice(), route) {
        ([one], _) => one,
        ([], Some(name)) => return fail(format!("route `{name}` has no alert_webhook plugin")),
        ([], None) => return fail("no route has an alert_webhook plugin".into()),
        (_, _) => {
            return fail(
                "several routes have an alert_webhook plugin: name one with --route".into(),
            )
        }
    };
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        return fail(format!("cannot read the payload from stdin: {e}"));
    }
    match plugin.render_requests(destination, &body) {
        Ok(requests) => {
            let text = serde_json::to_string_pretty(&requests).unwrap_or_default();
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
