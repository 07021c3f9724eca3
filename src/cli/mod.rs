//! The command line: `run`, `check`, `explain` (an HTTP request or a game session),
//! `register`, `config push|get`, `alert render` and `gameload` (the game listener's load
//! generator).

mod alert;
mod config_node;
mod explain;
mod explain_game;
mod gameload;
mod register;

pub use alert::render as alert_render;
pub use config_node::{config_get, config_push};
pub use explain::explain;
pub use explain_game::ExplainGameArgs;
pub use gameload::{gameload, GameloadArgs};
pub use register::register;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zkgate_discovery::{Digest, Ensemble};

use crate::config::source::{DEFAULT_CONFIG_NODE, PASSWORD_ENV};
use crate::config::{self, Source};

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
        /// A YAML file, or `zk://[user@]host:port[,...]/node` to follow a config node.
        #[arg(short, long, value_parser = Source::from_arg)]
        config: Option<Source>,
        /// Take over the listeners of a running zkgate (send it SIGQUIT).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a config: print every error with its YAML path; exit 1 if there is any.
    Check {
        #[arg(short, long, value_parser = Source::from_arg)]
        config: Source,
    },
    /// Keep one backend registered in ZooKeeper (native JSON, ephemeral) until SIGTERM/SIGINT.
    Register(RegisterArgs),
    /// Read or write the config node that gateways started with `-c zk://...` follow.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show which route serves a request, its rewritten path and its upstream; with
    /// --server-type, which game rule, upstream and backend take a game session.
    Explain {
        #[arg(short, long, value_parser = Source::from_arg)]
        config: Source,
        #[arg(requires = "url")]
        method: Option<String>,
        /// `http://host/path?query`, or `/path?query` (then pass the host with -H host:...).
        url: Option<String>,
        /// Extra request header, `name: value`; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The listener the request arrives on (default: the first): routes limited to other
        /// listeners do not match, and its path rules apply.
        #[arg(short, long)]
        listener: Option<String>,
        #[command(flatten)]
        game: ExplainGameArgs,
    },
    /// Work with the alert_webhook plugin of a config.
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Load a game listener: N sessions from 127.0.0.x sources, echoed frames at a rate;
    /// round trips (p50/p99/p99.9), frames/s and failures.
    Gameload(GameloadArgs),
}

#[derive(Subcommand, Debug)]
pub enum AlertCommand {
    /// Print the requests an Alertmanager payload read from stdin would make to a destination,
    /// without sending them.
    Render {
        #[arg(short, long, value_parser = Source::from_arg)]
        config: Source,
        #[arg(short, long)]
        destination: String,
        /// The route, when more than one has an alert_webhook plugin.
        #[arg(long)]
        route: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate FILE, then write it to the node; refused if invalid, or if the node changed
    /// since --expect-version (default: since it was read just before writing).
    Push {
        #[arg(short, long)]
        config: PathBuf,
        #[command(flatten)]
        zk: ZkArgs,
        #[arg(long, default_value = DEFAULT_CONFIG_NODE)]
        node: String,
        /// Write only if the node is still at this version (as printed by `config get` or the
        /// last push).
        #[arg(long)]
        expect_version: Option<i32>,
    },
    /// Print the node's config to stdout and its version to stderr.
    Get {
        #[command(flatten)]
        zk: ZkArgs,
        #[arg(long, default_value = DEFAULT_CONFIG_NODE)]
        node: String,
    },
}

fn duration(text: &str) -> Result<std::time::Duration, String> {
    crate::section::units::parse_duration(text)
}

/// How a command reaches ZooKeeper.
#[derive(clap::Args, Debug)]
pub struct ZkArgs {
    /// ZooKeeper hosts, `h1:2181,h2:2181[/chroot]`.
    #[arg(long)]
    pub zk: String,
    /// User for ZooKeeper's digest scheme; the password is read from ZKGATE_ZK_PASSWORD.
    #[arg(long)]
    pub zk_user: Option<String>,
    #[arg(long, default_value = "6s", value_parser = duration)]
    pub session_timeout: std::time::Duration,
}

impl ZkArgs {
    pub fn ensemble(&self) -> Result<Ensemble, String> {
        let digest = match &self.zk_user {
            None => None,
            Some(user) => Some(Digest {
                user: user.clone(),
                password: std::env::var(PASSWORD_ENV)
                    .map_err(|_| format!("--zk-user {user}: set {PASSWORD_ENV} to its password"))?,
            }),
        };
        Ok(Ensemble {
            connect: self.zk.clone(),
            session_timeout: self.session_timeout,
            digest,
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub zk: ZkArgs,
    #[arg(long)]
    pub service: String,
    /// The backend's `host:port`, as gateways should reach it.
    #[arg(long)]
    pub addr: String,
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    #[arg(long)]
    pub zone: Option<String>,
    #[arg(long, default_value = crate::config::DEFAULT_ZK_ROOT)]
    pub root: String,
    /// Registered only while this `http://` URL answers 2xx; checked every --health-interval.
    #[arg(long)]
    pub health: Option<String>,
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub health_interval: std::time::Duration,
    /// Instance metadata `KEY=VALUE`, repeatable: `--meta inst_id=3` is what a game rule with
    /// `strategy: instance` picks the backend by.
    #[arg(long = "meta")]
    pub meta: Vec<String>,
}

pub fn check(src: Source) -> ExitCode {
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
            print_errors(&src.describe(), &errors);
            ExitCode::from(1)
        }
    }
}

/// Starts the gateway on `source` (the embedded quickstart without one).
pub fn run(source: Option<Source>, upgrade: bool) -> ExitCode {
    let source = source.unwrap_or(Source::Embedded);
    let loaded = source.read_versioned().and_then(|(text, version)| {
        let snapshot = config::load_str(&text, None)?;
        Ok((text, version, snapshot))
    });
    match loaded {
        Ok((text, version, snapshot)) => {
            log::info!(
                "zkgate {} starting with {}",
                env!("CARGO_PKG_VERSION"),
                source.describe()
            );
            crate::metrics::METRICS
                .config_node_version
                .set(version.map_or(-1, i64::from));
            crate::server::run(source, text, snapshot, upgrade)
        }
        Err(errors) => {
            print_errors(&source.describe(), &errors);
            ExitCode::from(1)
        }
    }
}

/// The config of `src`, built; its errors printed and exit code 1 when it has any.
fn load_or_report(src: &Source) -> Result<crate::snapshot::Snapshot, ExitCode> {
    config::load(src, None).map_err(|errors| {
        print_errors(&src.describe(), &errors);
        ExitCode::from(1)
    })
}

/// Every error of a config, one per line under a count.
pub fn print_errors(what: &str, errors: &config::ConfigErrors) {
    eprintln!("{what}: {} error(s)", errors.len());
    for e in errors.iter() {
        eprintln!("  {e}");
    }
}
