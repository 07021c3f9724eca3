//! `zkgate explain --server-type N [--world N] [--inst N]`: which rule of a game listener takes
//! a session whose first frame carries that ServerID, and where it goes (upstream, strategy,
//! link mode, and the backend when the pick does not depend on a turn), from a config alone.
//! Nothing secret is printed: names, addresses and modes only.

use std::process::ExitCode;

use crate::game::codec::{GateForm, ServerId};
use crate::game::rules::{LinkMode, RouteMode, Rule, Strategy};
use crate::snapshot::Listener;
use crate::upstream::call::Outcome;
use crate::upstream::{Balance, Upstream};

/// What a game question asks: a first frame's ServerID, in parts.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub server_type: u8,
    pub world: u16,
    pub inst: u8,
}

/// worldId has 15 bits in a ServerID.
const MAX_WORLD: u16 = 0x7fff;

/// `explain`'s flags for a game listener.
#[derive(clap::Args, Debug, Default)]
pub struct ExplainGameArgs {
    /// Ask about a game session instead of an HTTP request: the serverType of its first frame
    /// (0-255). Shows the rule, upstream, strategy, link mode and (when the frame decides it)
    /// the backend that take it, on the --listener given or the first game listener.
    #[arg(long)]
    pub server_type: Option<u8>,
    /// With --server-type: the frame's worldId (0-32767; default 0, which only a rule for any
    /// world takes).
    #[arg(long, requires = "server_type", value_parser = clap::value_parser!(u16).range(0..=0x7fff))]
    pub world: Option<u16>,
    /// With --server-type: the frame's instId (0-255, default 0), which `strategy: instance`
    /// and the consistent-hash ring pick by.
    #[arg(long, requires = "server_type")]
    pub inst: Option<u8>,
}

/// Sorts out what is asked. `Ok((method, url))`: an HTTP request, for `explain` to answer on
/// an HTTP listener; `Err(code)`: answered here (a game session, or a request asked of a game
/// listener), or asked wrong.
pub fn question<'a>(
    listeners: &[Listener],
    named: Option<usize>,
    request: Option<(&'a str, &'a str)>,
    game: &ExplainGameArgs,
) -> Result<(&'a str, &'a str), ExitCode> {
    if let Some(server_type) = game.server_type {
        if request.is_some() {
            eprintln!("give either METHOD URL (an HTTP request) or --server-type (a game session), not both");
            return Err(ExitCode::from(2));
        }
        let on = named.or_else(|| listeners.iter().position(|l| l.game.is_some()));
        let Some(listener) = on.and_then(|i| listeners.get(i)) else {
            eprintln!("--server-type asks about a game listener, and the config has none");
            return Err(ExitCode::from(2));
        };
        let frame = Frame {
            server_type,
            world: game.world.unwrap_or(0),
            inst: game.inst.unwrap_or(0),
        };
        return Err(explain(listener, frame));
    }
    let Some(request) = request else {
        eprintln!("give METHOD and URL (or --server-type N to ask about a game session)");
        return Err(ExitCode::from(2));
    };
    let on = named.unwrap_or_else(|| first_http(listeners));
    if let Some(l) = listeners.get(on).filter(|l| l.game.is_some()) {
        println!("{}", not_http(l));
        return Err(ExitCode::from(1));
    }
    Ok(request)
}

/// The listener a request is asked of when none is named: the first HTTP one (else the first,
/// a game listener, of which [`question`] says so).
pub fn first_http(listeners: &[Listener]) -> usize {
    listeners.iter().position(|l| l.game.is_none()).unwrap_or(0)
}

/// The plain answer to an HTTP question about a game listener: what it takes, and how to ask.
pub fn not_http(listener: &Listener) -> String {
    format!(
        "listener `{}` ({}) is a game listener: it takes framed game sessions, not HTTP requests (plain HTTP gets 426 Upgrade Required there); ask which rule takes a session with --server-type N [--world N] [--inst N]",
        listener.name, listener.addr
    )
}

/// Prints where a session with `frame` goes on `listener`, a game listener.
pub fn explain(listener: &Listener, frame: Frame) -> ExitCode {
    let Some(game) = listener.game.as_deref() else {
        eprintln!(
            "listener `{}` is an HTTP listener: --server-type is for game listeners; ask with METHOD URL",
            listener.name
        );
        return ExitCode::from(2);
    };
    if frame.world > MAX_WORLD {
        eprintln!("--world {}: a worldId is 0 to {MAX_WORLD}", frame.world);
        return ExitCode::from(2);
    }
    let id = ServerId::new(false, frame.world, frame.server_type, frame.inst);
    println!(
        "listener:  {} (game listener on {})",
        listener.name, listener.addr
    );
    println!(
        "frame:     serverType {}, worldId {}, instId {} (ServerID 0x{:08x})",
        frame.server_type, frame.world, frame.inst, id.0
    );
    match &game.rules_node {
        None => println!("rules:     the YAML rules ({})", game.rules.len()),
        Some(node) => println!(
            "rules:     the YAML rules ({}); ZooKeeper node {node} replaces them while it exists (explain does not read it)",
            game.rules.len()
        ),
    }
    // The YAML rules: what serves when no node does. The snapshot has not followed any node.
    let rules = game.rules.clone();
    let Some(rule) = rules.route(id) else {
        let worlds = if frame.world == 0 {
            "world 0, which only a rule for any world takes".to_owned()
        } else {
            format!("world {} or for any world", frame.world)
        };
        println!(
            "no rule for serverType {} in {worlds}: the session gets the close frame (no_route)",
            frame.server_type
        );
        return ExitCode::from(1);
    };
    let wildcard = if rule.world == 0 && frame.world != 0 {
        " (any world)"
    } else {
        ""
    };
    println!("rule:      {}{wildcard}", rule.name);
    let upstream = &rule.upstream;
    println!(
        "upstream:  {} ({})",
        upstream.name,
        upstream.balance.as_str()
    );
    println!("strategy:  {}", strategy(rule, upstream, frame));
    println!(
        "route:     {}",
        match rule.route {
            RouteMode::FirstFrame => "first_frame: the session keeps this backend for its life",
            RouteMode::PerMessage =>
                "per_message: each later frame goes by its own ServerID's rule",
        }
    );
    let b = &rule.backend;
    let gate = match b.gate {
        GateForm::Short => "short",
        GateForm::Traced => "traced",
    };
    let events = if b.events { "on" } else { "off" };
    match b.link {
        LinkMode::Multiplexed => println!(
            "link:      multiplexed, {} link(s) per backend; gate header {gate}; session events {events}",
            b.links
        ),
        LinkMode::PerSession => println!(
            "link:      per_session, one connection per session; gate header {gate}; session events {events}"
        ),
    }
    backends(rule, upstream, id)
}

/// How the rule picks, in words.
fn strategy(rule: &Rule, upstream: &Upstream, frame: Frame) -> String {
    match rule.strategy {
        Strategy::Instance => format!(
            "instance: the backend registered with inst_id {}{}",
            frame.inst,
            if frame.inst == 0 {
                " (instId 0: unless a backend is instance 0, the upstream's balancer picks)"
            } else {
                ""
            }
        ),
        Strategy::Balance if upstream.balance == Balance::ConsistentHash && frame.inst != 0 => {
            format!(
                "consistent_hash: the ring keyed by worldId {} and instId {}, the same backend on every replica with the same members",
                frame.world, frame.inst
            )
        }
        Strategy::Balance if upstream.balance == Balance::ConsistentHash => {
            "consistent_hash: instId 0 carries no key, so a random point of the ring".to_owned()
        }
        Strategy::Balance => format!(
            "{}: the upstream's balancer picks per session",
            upstream.balance.as_str()
        ),
    }
}

/// The upstream's backends, and the one a session goes to when the pick depends only on the
/// frame (an instance, or a key on the ring), made as the listener makes it.
fn backends(rule: &Rule, upstream: &std::sync::Arc<Upstream>, id: ServerId) -> ExitCode {
    if let Some(path) = &upstream.discovery {
        println!("backends:  discovered from ZooKeeper at {path} (explain does not read it)");
        return ExitCode::SUCCESS;
    }
    let deterministic = match rule.strategy {
        Strategy::Instance => id.inst() != 0 || upstream.load().has_instance(0),
        Strategy::Balance => upstream.balance == Balance::ConsistentHash && id.inst() != 0,
    };
    let picked = deterministic.then(|| {
        let mut call = upstream.begin()?;
        let picked = rule.pick(&mut call, id);
        call.finish(Outcome::Ok);
        picked
    });
    let set = upstream.load();
    for b in set.backends() {
        let inst = b
            .spec
            .inst_id
            .map_or(String::new(), |i| format!(" inst_id={i}"));
        let mark = match &picked {
            Some(Ok(addr)) if *addr == b.spec.addr => "  <- this session",
            _ => "",
        };
        println!(
            "backend:   {} weight={}{inst}{mark}",
            b.spec.addr, b.spec.weight
        );
    }
    match picked {
        Some(Err(_)) if rule.strategy == Strategy::Instance => {
            println!(
                "no backend is instance {}: the session gets the close frame (no_route)",
                id.inst()
            );
            ExitCode::from(1)
        }
        Some(Err(why)) => {
            println!(
                "no backend to pick ({}): the session gets the close frame (no_route)",
                why.reason()
            );
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}
