//! `zkgate explain`: which route serves a request, its rewritten path and its upstream, from a
//! config alone.

use std::process::ExitCode;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Uri};

use crate::config::Source;
use crate::route::{normalize_host, path, Action, RequestView};

pub fn explain(src: Source, method: &str, url: &str, headers: &[String]) -> ExitCode {
    let snapshot = match super::load_or_report(&src) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let fail = |msg: String| {
        eprintln!("{msg}");
        ExitCode::from(2)
    };
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        return fail(format!("`{method}` is not an HTTP method"));
    };
    // The gateway normalizes with its first listener's policy unless told which listener.
    let policy = snapshot
        .settings
        .listeners
        .first()
        .map(|l| l.path)
        .unwrap_or_default();
    let Ok(uri) = url.parse::<Uri>() else {
        return fail(format!("`{url}` is not a URL"));
    };
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let target = match path::normalize(target.as_bytes(), &policy) {
        Ok(t) => t,
        Err(refusal) => {
            print!("refused:   400 {}", refusal.reason());
            return ExitCode::from(1);
        }
    };
    let path = target.path;
    let mut map = HeaderMap::new();
    for h in headers {
        let Some((k, v)) = h.split_once(':') else {
            return fail(format!("header `{h}` is not `name: value`"));
        };
        match (
            HeaderName::from_bytes(k.trim().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) {
            (Ok(k), Ok(v)) => {
                map.append(k, v);
            }
            _ => return fail(format!("header `{h}` is not valid")),
        }
    }
    if let Some(a) = uri.authority() {
        if !map.contains_key(HOST) {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                map.insert(HOST, v);
            }
        }
    }
    let host = map.get(HOST).and_then(|v| normalize_host(v.as_bytes()));
    let view = RequestView {
        method: &method,
        host: host.as_deref(),
        path: &path,
        headers: &map,
    };
    let Some(id) = snapshot.routes.find(&view) else {
        println!("no route matches: the gateway answers 404");
        return ExitCode::from(1);
    };
    let route = snapshot.routes.get(id);
    println!("route:     {}", route.name);
    println!("path:      {path} (normalized)");
    match &route.action {
        Action::Respond(r) => println!("respond:   {} ({} byte body)", r.status, r.body.len()),
        Action::Plugin => {
            if let Some(p) = &route.plugin {
                println!("plugin:    {p:?} answers");
            }
        }
        Action::Proxy(u) => {
            let rewritten = route
                .rewrite
                .as_ref()
                .and_then(|rw| rw.apply(&path, uri.query()))
                .unwrap_or_else(|| match uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                });
            println!("upstream:  {} ({})", u.name, u.balance.as_str());
            let set = u.load();
            for b in set.backends() {
                println!("backend:   {} weight={}", b.spec.addr, b.spec.weight);
            }
            println!("forwarded: {method} {rewritten}");
        }
    }
    ExitCode::SUCCESS
}
