//! The command line: `run`, `check` and `explain`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Uri};

use crate::config::{self, Source};
use crate::route::{normalize_host, normalize_path, Action, RequestView};

#[derive(Parser, Debug)]
#[command(
    name = "zkgate",
    version,
    about = "Declarative reverse-proxy gateway on Pingora"
)]
pub struct Cli {
    /// Log level for stderr: error, warn, info, debug or trace (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (without -c: the embedded quickstart config).
    Run {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take over the listeners of a running zkgate (send it SIGQUIT).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a config: print every error with its YAML path; exit 1 if there is any.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Keep one backend registered in ZooKeeper (native JSON, ephemeral) until SIGTERM/SIGINT.
    Register(RegisterArgs),
    /// Show which route serves a request, its rewritten path and its upstream.
    Explain {
        #[arg(short, long)]
        config: PathBuf,
        method: String,
        /// `http://host/path?query`, or `/path?query` (then pass the host with -H host:...).
        url: String,
        /// Extra request header, `name: value`; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
}

fn duration(text: &str) -> Result<std::time::Duration, String> {
    crate::config::units::parse_duration(text)
}

#[derive(clap::Args, Debug)]
pub struct RegisterArgs {
    /// ZooKeeper hosts, `h1:2181,h2:2181`.
    #[arg(long)]
    pub zk: String,
    #[arg(long)]
    pub service: String,
    /// The backend's `host:port`, as gateways should reach it.
    #[arg(long)]
    pub addr: String,
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    #[arg(long)]
    pub zone: Option<String>,
    #[arg(long, default_value = crate::config::build::DEFAULT_ZK_ROOT)]
    pub root: String,
    /// Registered only while this `http://` URL answers 2xx; checked every --health-interval.
    #[arg(long)]
    pub health: Option<String>,
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub health_interval: std::time::Duration,
    #[arg(long, default_value = "6s", value_parser = duration)]
    pub session_timeout: std::time::Duration,
}

pub fn register(a: RegisterArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("zkgate register: {msg}");
        ExitCode::from(2)
    };
    let Some((host, port)) = a.addr.rsplit_once(':') else {
        return fail(format!("--addr `{}` is not host:port", a.addr));
    };
    let Ok(port) = port.parse::<u16>() else {
        return fail(format!("--addr `{}` has no valid port", a.addr));
    };
    if a.service.is_empty() || a.service.contains('/') || !a.root.starts_with('/') {
        return fail("--service must be a plain name and --root an absolute path".into());
    }
    let spec = zkgate_discovery::RegisterSpec {
        connect: a.zk,
        session_timeout: a.session_timeout,
        service_path: format!("{}/services/{}", a.root.trim_end_matches('/'), a.service),
        host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
        port,
        weight: a.weight,
        zone: a.zone,
        health: a.health,
        health_interval: a.health_interval,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start a runtime: {e}")),
    };
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return fail("cannot listen for SIGTERM/SIGINT".into());
        };
        let task = tokio::spawn(zkgate_discovery::register(spec, rx));
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(true);
        // Deleting the node before exiting is the point: wait for it, but not forever.
        if tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .is_err()
        {
            return fail("could not deregister within 10 s; the node goes with the session".into());
        }
        ExitCode::SUCCESS
    })
}

fn source(path: Option<PathBuf>) -> Source {
    path.map_or(Source::Embedded, Source::File)
}

pub fn check(path: PathBuf) -> ExitCode {
    let src = source(Some(path));
    match config::load(&src, None) {
        Ok(s) => {
            println!(
                "{}: ok ({} listener(s), {} upstream(s), {} route(s))",
                src.describe(),
                s.settings.listeners.len(),
                s.upstreams.len(),
                s.routes.routes().len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {} error(s)", src.describe(), errors.len());
            for e in errors.iter() {
                eprintln!("  {e}");
            }
            ExitCode::from(1)
        }
    }
}

pub fn explain(path: PathBuf, method: &str, url: &str, headers: &[String]) -> ExitCode {
    let src = source(Some(path));
    let snapshot = match config::load(&src, None) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{}: {} error(s)\n{errors}", src.describe(), errors.len());
            return ExitCode::from(1);
        }
    };
    let fail = |msg: String| {
        eprintln!("{msg}");
        ExitCode::from(2)
    };
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        return fail(format!("`{method}` is not an HTTP method"));
    };
    let Ok(uri) = url.parse::<Uri>() else {
        return fail(format!("`{url}` is not a URL"));
    };
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
    let path = normalize_path(uri.path());
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
    match &route.action {
        Action::Respond(r) => println!("respond:   {} ({} byte body)", r.status, r.body.len()),
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
