//! Process assembly: Pingora's server with one service per listener, built from the listener's
//! kind, the admin listener, the runtime's background services (discovery, housekeeping,
//! reload) and the signal handling Pingora provides (SIGTERM drain, SIGQUIT upgrade), which
//! ends as soon as nothing is left to drain (`runtime::stop`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora::services::{ServiceHandle, ServiceWithDependents};

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::config::Source;
use crate::conn::{ConnApp, FdWatch, ListenerConns};
use crate::game::rules_node::RulesNodeService;
use crate::proxy::fast::FastPath;
use crate::proxy::Gateway;
use crate::runtime::{DiscoveryService, Housekeeping, Live, Reloader, Stop};
use crate::snapshot::{Listener, ListenerKind, ServerSettings, Settings, Snapshot};
use crate::upstream::health::Prober;

/// Pingora's configuration from settings the config build checked and completed.
pub fn server_conf(s: &ServerSettings) -> ServerConf {
    let mut c = ServerConf::default();
    if let Some(t) = s.threads {
        c.threads = t;
    }
    c.work_stealing = s.work_stealing;
    c.grace_period_seconds = Some(s.grace_period.as_secs());
    c.graceful_shutdown_timeout_seconds = Some(s.graceful_shutdown_timeout.as_secs());
    if let Some(p) = &s.upgrade_sock {
        c.upgrade_sock = p.clone();
    }
    if let Some(n) = s.upstream_keepalive_pool_size {
        c.upstream_keepalive_pool_size = n;
    }
    // Idle upstream connections wait in a list per worker thread: no task spawned per
    // released connection and no wait to take one back (vendor/README.md, pingora-core patch 3).
    c.upstream_keepalive_pool_per_thread = true;
    c.ca_file = s.ca_file.clone();
    if let Some(n) = s.listener_tasks_per_fd {
        c.listener_tasks_per_fd = n;
    }
    c.user = s.user.clone();
    c.group = s.group.clone();
    c
}

/// Starts the gateway and never returns; Pingora exits the process on shutdown.
/// `text` is what `snapshot` was built from.
pub fn run(source: Source, text: String, snapshot: Snapshot, upgrade: bool) -> ! {
    let settings: Settings = snapshot.settings.clone();
    crate::tls::publish_certificates(settings.listeners.iter().filter_map(|l| l.tls.as_deref()));
    let live = Live::new(snapshot);
    let mut conf = server_conf(&settings.server);
    game_grace_period(&mut conf, &settings);
    let opt = Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let access_log = settings
        .access_log
        .as_ref()
        .and_then(|cfg| match AccessLog::start(cfg) {
            Ok(l) => Some(l),
            Err(e) => {
                log::error!(
                    "access log {} cannot be opened, logging disabled: {e}",
                    cfg.path
                );
                None
            }
        });

    // What a graceful stop waits for before the process exits on its own (see runtime::stop).
    let mut stop = Stop::new(access_log.clone());
    // Discovered upstreams are filled before the proxy accepts: a restart or an upgrade never
    // answers 503 for want of backends it could have read.
    let discovery = settings
        .zookeeper
        .as_ref()
        .map(|zk| DiscoveryService::new(live.clone(), zk.clone()))
        .map(|svc| {
            let svc = stop.track("zookeeper", svc);
            server.add_service(background_service("zookeeper", svc))
        });

    // Game listeners' rules nodes: each followed for the life of the process.
    let feeds = settings
        .listeners
        .iter()
        .filter_map(|l| l.game.as_ref()?.rules_feed().cloned());
    if let Some(svc) = settings
        .zookeeper
        .clone()
        .and_then(|zk| RulesNodeService::new(zk, feeds.collect()))
    {
        server.add_service(background_service(
            "game rules",
            stop.track("game rules", svc),
        ));
    }

    for l in &settings.listeners {
        let service: Box<dyn ServiceWithDependents> = match l.kind {
            ListenerKind::Http => {
                let svc = http_service(&server, &live, l, access_log.clone());
                if let Some(app) = svc.app_logic() {
                    stop.http(&l.name, app.conns().clone());
                }
                Box::new(svc)
            }
            ListenerKind::Game => match game_service(&live, l) {
                Some(svc) => {
                    if let Some(app) = svc.app_logic() {
                        stop.game(&l.name, app.pending());
                    }
                    Box::new(svc)
                }
                None => continue,
            },
        };
        log::info!("listener {} on {}", l.name, l.addr);
        let handle: ServiceHandle = server.add_boxed_service(service);
        if let Some(d) = &discovery {
            handle.add_dependency(d);
        }
    }

    let mut admin = Service::new("admin".to_string(), Admin::new(live.clone()));
    admin.threads = Some(1);
    admin.add_tcp(&settings.admin.to_string());
    log::info!("admin on {}", settings.admin);
    server.add_service(admin);

    server.add_service(background_service("fd pressure", FdWatch));
    let housekeeping = Housekeeping::new(live.clone(), Prober::new(&server.configuration));
    server.add_service(background_service(
        "housekeeping",
        stop.track("housekeeping", housekeeping),
    ));
    server.add_service(background_service(
        "reload",
        stop.track("reload", Reloader::new(source, live, text)),
    ));
    stop.start(server.watch_execution_phase());
    run_or_exit(server)
}

/// An HTTP listener: the gateway's proxy phases, behind the listener's connection deadlines
/// and limits.
fn http_service(
    server: &Server,
    live: &Arc<Live>,
    l: &Listener,
    access_log: Option<AccessLog>,
) -> Service<ConnApp<HttpProxy<Gateway>, FastPath>> {
    let fast = l.http1_fast_path.then(|| {
        let connector = ConnectorOptions::from_server_conf(&server.configuration);
        FastPath::new(
            live.clone(),
            l,
            access_log.clone(),
            TransportConnector::new(Some(connector)),
        )
    });
    let gateway = Gateway::new(live.clone(), l.clone(), access_log);
    let mut proxy: HttpProxy<Gateway> = http_proxy(&server.configuration, gateway);
    let mut options = HttpServerOptions::default();
    options.keepalive_request_limit = l.keepalive_requests;
    options.h2c = l.http2.h2c;
    options.h2_idle_timeout = Some(l.http2.idle_timeout);
    proxy.server_options = Some(options);
    proxy.h2_options = Some(l.http2.h2_options());
    let conns = Arc::new(ListenerConns::new(&l.name, &l.conn, l.keepalive_requests));
    let mut app = ConnApp::new(proxy, conns, fast);
    if let Some(source) = tls_source(live, l) {
        app = app.with_tls(source);
    }
    let mut svc = Service::new(format!("proxy {}", l.name), app);
    // No L4 read buffer: Pingora reads a request head into its own buffer anyway, so a
    // 64 KiB buffer per connection only adds a copy, and memory to every idle connection.
    svc.add_listener(
        ListenerConfig::tcp(l.addr.to_string()).l4_buffer(L4BufferSettings::default().read(0)),
    );
    svc
}

/// A game listener: the game-session router's `ServerApp`, reading the listener's game
/// settings from the serving config (as [`tls_source`] does), so that rules, upstreams and
/// limits follow reloads.
fn game_service(live: &Arc<Live>, l: &Listener) -> Option<Service<crate::game::app::GameApp>> {
    let Some(first) = l.game.clone() else {
        log::error!(
            "listener {}: a game listener without game settings; skipped",
            l.name
        );
        return None;
    };
    let source_live = live.clone();
    let name = l.name.clone();
    let source: crate::game::app::SettingsSource = Arc::new(move || {
        source_live
            .load()
            .settings
            .listeners
            .iter()
            .find(|x| x.name == name)
            .and_then(|x| x.game.clone())
    });
    Some(crate::game::app::service(
        &l.name,
        l.addr,
        l.conn.proxy_protocol.clone(),
        first,
        source,
    ))
}

/// Pingora sleeps `grace_period` after SIGTERM/SIGQUIT whatever is open: raised, when a game
/// listener's `drain` needs longer, so that its sessions get the window their go-away frame
/// announced (see `game::drain`).
fn game_grace_period(conf: &mut ServerConf, settings: &Settings) {
    let configured = settings.server.grace_period;
    let drains = settings
        .listeners
        .iter()
        .filter_map(|l| l.game.as_ref().map(|g| g.drain));
    let grace = crate::game::drain::grace_period(configured, drains);
    if grace > configured {
        log::info!(
            "server.grace_period {}s raised to {}s to cover the game listeners' drain",
            configured.as_secs(),
            grace.as_secs()
        );
        conf.grace_period_seconds = Some(grace.as_secs());
    }
}

/// Where a TLS listener's connections get their acceptor: the listener of the same name in
/// the serving config, so that a reload swaps certificates for new connections. A reload that
/// drops the listener's `tls:` cannot turn TLS off without a restart (it is warned about), so
/// the listener keeps the TLS it started with until then.
fn tls_source(live: &Arc<Live>, l: &Listener) -> Option<crate::tls::TlsSource> {
    let first = l.tls.clone()?;
    let live = live.clone();
    let name = l.name.clone();
    Some(Arc::new(move || {
        live.load()
            .settings
            .listeners
            .iter()
            .find(|x| x.name == name)
            .and_then(|x| x.tls.clone())
            .unwrap_or_else(|| first.clone())
    }))
}

/// Runs `server` until it exits the process. Pingora unwraps what can fail while starting its
/// runtimes (a thread the system refuses, above all): that panic, on this thread, becomes one
/// clear error line and exit status 1 instead of a panic message and status 101.
fn run_or_exit(server: Server) -> ! {
    let previous = std::panic::take_hook();
    let main = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        // This thread's panic is reported below, in a sentence.
        if std::thread::current().id() != main {
            previous(info);
        }
    }));
    let why = match std::panic::catch_unwind(AssertUnwindSafe(|| -> () { server.run_forever() })) {
        Err(p) => crate::plugin::alert::template::panic_message(p.as_ref()),
        Ok(()) => "the server returned".to_owned(),
    };
    eprintln!(
        "zkgate cannot run: {why} (at start-up: compare server.threads with the system's limits on threads and memory)"
    );
    std::process::exit(1)
}
