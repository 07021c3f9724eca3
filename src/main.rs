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
        raise_nofile_limit();
    }
    match cli.command {
        Command::Check { config } => cli::check(config),
        Command::Register(args) => cli::register(args),
        Command::Explain {
            config,
            method,
            url,
            headers,
        } => cli::explain(config, &method, &url, &headers),
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

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: every client and backend connection is
/// a file descriptor, and the usual soft default of 1024 is reached by a few hundred clients.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        log::warn!(
            "cannot read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if lim.rlim_cur >= lim.rlim_max {
        log::info!(
            "open files limit: {} (already the hard limit)",
            lim.rlim_cur
        );
        return;
    }
    let before = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        log::warn!(
            "cannot raise the open files limit from {before} to {}: {}",
            lim.rlim_max,
            std::io::Error::last_os_error()
        );
        return;
    }
    log::info!(
        "open files limit raised from {before} to {} (the hard limit)",
        lim.rlim_max
    );
}
