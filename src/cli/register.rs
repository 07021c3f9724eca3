//! `zkgate register`: keep one backend registered in ZooKeeper until SIGTERM/SIGINT.

use std::process::ExitCode;

use super::RegisterArgs;

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
    let mut metadata = std::collections::BTreeMap::new();
    for m in &a.meta {
        match m.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                metadata.insert(k.to_owned(), v.to_owned());
            }
            _ => return fail(format!("--meta `{m}` is not KEY=VALUE")),
        }
    }
    let ensemble = match a.zk.ensemble() {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let spec = zkgate_discovery::RegisterSpec {
        ensemble,
        service_path: format!("{}/services/{}", a.root.trim_end_matches('/'), a.service),
        host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
        port,
        weight: a.weight,
        zone: a.zone,
        metadata,
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
