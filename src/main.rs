//! The `zkgate` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use zkgate::cli::{self, AlertCommand, Cli, Command, ConfigCommand};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logger = zkgate::logging::logger(&cli.log_level);
    if let Err(e) = zkgate::conn::log::Throttled::install(logger) {
        eprintln!("cannot install the logger: {e}");
    }
    if matches!(cli.command, Command::Run { .. }) {
        zkgate::conn::pressure::raise_fd_limit();
    }
    match cli.command {
        Command::Check { config } => cli::check(config),
        Command::Register(args) => cli::register(args),
        Command::Gameload(args) => cli::gameload(args),
        Command::Explain {
            config,
            method,
            url,
            headers,
            listener,
            game,
        } => cli::explain(
            config,
            method.as_deref().zip(url.as_deref()),
            &headers,
            listener.as_deref(),
            &game,
        ),
        Command::Run { config, upgrade } => cli::run(config, upgrade),
        Command::Config(ConfigCommand::Push {
            config,
            zk,
            node,
            expect_version,
        }) => cli::config_push(&config, &zk, node, expect_version),
        Command::Config(ConfigCommand::Get { zk, node }) => cli::config_get(&zk, node),
        Command::Alert(AlertCommand::Render {
            config,
            destination,
            route,
        }) => cli::alert_render(config, &destination, route.as_deref()),
    }
}
