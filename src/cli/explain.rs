//! `zkgate explain`: which route serves a request on a listener, its rewritten path and its
//! upstream (or its redirect), from a config alone; for a game listener, what takes a session
//! ([`super::explain_game`]).

use std::process::ExitCode;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Uri};

use super::explain_game::{self, ExplainGameArgs};
use crate::config::Source;
use crate::route::{normalize_host, path, Action, ListenerId, RequestView};

pub fn explain(
    src: Source,
    request: Option<(&str, &str)>,
    headers: &[String],
    listener: Option<&str>,
    game: &ExplainGameArgs,
) -> ExitCode {
    let snapshot = match super::load_or_report(&src) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let fail = |msg: String| {
        eprintln!("{msg}");
        ExitCode::from(2)
    };
    let listeners = &snapshot.settings.listeners;
    let named = match listener {
        None => None,
        Some(name) => match listeners.iter().position(|l| l.name == name) {
            Some(i) => Some(i),
            None => {
                let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
                return fail(format!(
                    "no listener named `{name}` (the config has: {})",
                    names.join(", ")
                ));
            }
        },
    };
    let (method, url) = match explain_game::question(listeners, named, request, game) {
        Ok(request) => request,
        Err(answered) => return answered,
    };
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        return fail(format!("`{method}` is not an HTTP method"));
    };
    // The request arrives on the first HTTP listener unless told which: its path policy
    // applies, and only the routes that serve it match.
    let on = named.unwrap_or_else(|| explain_game::first_http(listeners));
    let policy = listeners.get(on).map(|l| l.path).unwrap_or_default();
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
    let Some(id) = snapshot.routes.find_on(ListenerId(on as u32), &view) else {
        println!("no route matches: the gateway answers 404");
        return ExitCode::from(1);
    };
    let route = snapshot.routes.get(id);
    if let Some(l) = listeners.get(on) {
        println!("listener:  {}", l.name);
    }
    println!("route:     {}", route.name);
    println!("path:      {path} (normalized)");
    match &route.action {
        Action::Respond(r) => println!("respond:   {} ({} byte body)", r.status, r.body.len()),
        Action::Redirect(r) => {
            // As the listener would answer: over TLS when its URL says https.
            let tls = uri.scheme_str() == Some("https");
            match r.location(tls, host.as_deref(), uri.port_u16(), &path, uri.query()) {
                Ok(to) => println!(
                    "redirect:  {} {}",
                    r.status.as_u16(),
                    to.to_str().unwrap_or_default()
                ),
                Err(why) => print!("refused:   400 {why}"),
            }
        }
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
    if let Some(crate::plugin::RoutePlugin::Cache(_)) = &route.plugin {
        // The key takes the Host header as the proxy sees it (port included).
        let host = map.get(HOST).map_or(&b""[..], |v| v.as_bytes());
        if let Err(why) = explain_cache(&src, &route.name, &method, host, &path, uri.query(), &map)
        {
            return fail(why);
        }
    }
    ExitCode::SUCCESS
}

/// The cache's view of the request: its rule, scope, key and tags. The built plugin keeps its
/// parts private, so the route's section is read and built again from the same source.
fn explain_cache(
    src: &Source,
    route: &str,
    method: &Method,
    host: &[u8],
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), String> {
    use crate::plugin::cache::explain::{explain, Request};
    use crate::plugin::PluginSection;
    use crate::section::{At, ConfigErrors};

    let text = src
        .read()
        .map_err(|e| format!("{} error(s) reading the config", e.len()))?;
    let raw = crate::config::parse::parse(&text)
        .map_err(|e| format!("{} error(s) parsing the config", e.len()))?;
    let Some((i, section)) = raw
        .routes
        .iter()
        .enumerate()
        .find_map(|(i, r)| match &r.plugin {
            Some(PluginSection::Cache(c)) if r.name == route => Some((i, c)),
            _ => None,
        })
    else {
        return Err(format!("route `{route}` has no cache section"));
    };
    let mut errors = ConfigErrors::default();
    let at = At::root().index("routes", i).key("plugin").key("cache");
    let Some(cfg) = section.build(route, &at, &mut errors) else {
        return Err(format!("the cache section of `{route}` does not build"));
    };
    let request = Request {
        method,
        host,
        path,
        query,
        headers,
        now: std::time::SystemTime::now(),
    };
    for (label, line) in explain(&cfg, &request) {
        println!("{:<10} {line}", format!("{label}:"));
    }
    Ok(())
}
