//! `zkgate config push` and `zkgate config get`: the config node that replicas follow.

use std::path::Path;
use std::process::ExitCode;

use zkgate_discovery::config_node::{self, Written};

use super::{print_errors, ZkArgs};
use crate::config::source::ZK_READ_LIMIT;
use crate::config::{self, Source, ZkNode};

/// Validates `file` exactly as a gateway loads it (with this process's environment for
/// `${NAME}` references), then writes it with a version check.
pub fn config_push(file: &Path, zk: &ZkArgs, node: String, expect: Option<i32>) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("zkgate config push: {msg}");
        ExitCode::from(2)
    };
    let source = Source::file(file);
    let text = match source.read() {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(errors) = config::load_str(&text, None) {
        print_errors(&source.describe(), &errors);
        eprintln!("zkgate config push: refused, nothing was written");
        return ExitCode::from(1);
    }
    let target = match zk.ensemble() {
        Ok(ensemble) => ZkNode { ensemble, node },
        Err(e) => return fail(e),
    };
    let written = runtime().and_then(|rt| {
        rt.block_on(config_node::within(
            ZK_READ_LIMIT,
            config_node::write(&target.ensemble, &target.node, text.as_bytes(), expect),
        ))
        .map_err(|e| format!("{target}: {e}"))
    });
    match written {
        Ok(Written::Created) => println!("{target}: created at version 0"),
        Ok(Written::Updated { version }) => println!("{target}: written, now version {version}"),
        Ok(Written::Unchanged { version }) => {
            println!("{target}: already holds this config (version {version})")
        }
        Err(e) => return fail(e),
    }
    ExitCode::SUCCESS
}

pub fn config_get(zk: &ZkArgs, node: String) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("zkgate config get: {msg}");
        ExitCode::from(2)
    };
    let target = match zk.ensemble() {
        Ok(ensemble) => ZkNode { ensemble, node },
        Err(e) => return fail(e),
    };
    match target.read_blocking() {
        Ok(Some(v)) => {
            eprintln!("{target}: version {}", v.version);
            match config::source::text(&target, v.data) {
                Ok(t) => print!("{t}"),
                Err(e) => return fail(e.to_string()),
            }
            ExitCode::SUCCESS
        }
        Ok(None) => fail(format!("{target} does not exist")),
        Err(e) => fail(e),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}
