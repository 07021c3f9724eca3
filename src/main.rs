//! The `zkgate` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use zkgate::cli::{self, Cli, Command};
use zkgate::config::{self, Source};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(&cli.log_level))
        .init();
    match cli.command {
        Command::Check { config } => cli::check(config),
        Command::Register(args) => cli::register(args),
        Command::Explain {
            config,
            method,
            url,
            headers,
        } => cli::explain(config, &method, &url, &headers),
        Command::Run { config, upgrade } => {
            let source = config.map_or(Source::Embedded, Source::File);
            match config::load(&source, None) {
                Ok(snapshot) => {
                    log::info!(
                        "zkgate {} starting with {}",
                        env!("CARGO_PKG_VERSION"),
                        source.describe()
                    );
                    zkgate::server::run(source, snapshot, upgrade)
                }
                Err(errors) => {
                    eprintln!("{}: {} error(s)", source.describe(), errors.len());
                    for e in errors.iter() {
                        eprintln!("  {e}");
                    }
                    ExitCode::from(1)
                }
            }
        }
    }
}
