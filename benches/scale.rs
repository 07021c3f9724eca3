//! Scale of discovery: many services with many instances registered in ZooKeeper before the
//! gateway starts. For two sizes in one run (5 and 500 services of 20 instances each, so growth
//! is visible side by side) it prints:
//!
//! - memory: the gateway's resident set (`VmRSS`) with every instance loaded, against a gateway
//!   with the same upstreams and routes but no instance registered; the difference per instance;
//! - full resync: `zkgate_zookeeper_full_sync_duration_seconds` after start-up and again after a
//!   ZooKeeper restart (the gateway reconnects, re-arms its watches and reads everything again);
//! - one instance change (a create or delete under one service): the time from the znode write
//!   to the first request routed by the new set, p50/p99; and the gateway's CPU time per change,
//!   from `/proc/<pid>/stat`, in a separate loop with no traffic, less an idle period as long.
//!
//! `cargo bench --bench scale` (`make bench-scale`); needs Debian's `zookeeper`. Under
//! `cargo test` it runs as a smoke test of a few seconds with smaller sizes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    backend_of, instance_json, percentile, time_to_join, time_to_leave, Backend, Conn, Gateway,
};
use futures::future::join_all;
use zkgate_discovery::testkit::ZkServer;
use zookeeper_client as zk;

#[derive(Clone, Copy)]
struct Size {
    services: usize,
    instances: usize,
}

impl Size {
    fn znodes(self) -> usize {
        self.services * self.instances
    }
}

/// What one size is run with.
struct Plan {
    sizes: [Size; 2],
    /// Changes observed by traffic (half creates, half deletes).
    routed_changes: usize,
    /// Changes in the CPU loop, which sends no request.
    cpu_changes: usize,
}

/// `cargo bench` passes `--bench`; under `cargo test` this runs as a short smoke test.
fn plan() -> Plan {
    if std::env::args().any(|a| a == "--bench") {
        Plan {
            sizes: [
                Size {
                    services: 5,
                    instances: 20,
                },
                Size {
                    services: 500,
                    instances: 20,
                },
            ],
            routed_changes: 50,
            cpu_changes: 200,
        }
    } else {
        Plan {
            sizes: [
                Size {
                    services: 3,
                    instances: 5,
                },
                Size {
                    services: 20,
                    instances: 5,
                },
            ],
            routed_changes: 6,
            cpu_changes: 10,
        }
    }
}

/// The service that changes: `a` is a real backend, `b` comes and goes.
const OBSERVED: &str = "/zkgate/services/obs";
/// Pause after each write in the CPU loop: far longer than a change takes to apply (a few
/// milliseconds, see the routed figures), so each change is read on its own.
const CPU_GAP: Duration = Duration::from_millis(50);
/// Instance znodes point at ports from here on; nothing listens there and nothing is sent.
const FIRST_PORT: usize = 20_000;

/// Every result of one size.
struct Figures {
    size: Size,
    register: Duration,
    rss_empty_kib: u64,
    rss_kib: u64,
    sync_start: Duration,
    sync_reconnect: Duration,
    /// ZooKeeper answering again to the gateway's full read having finished.
    reconnect_to_synced: Duration,
    session_kept: bool,
    joins: Vec<Duration>,
    leaves: Vec<Duration>,
    cpu_busy_ms: f64,
    cpu_idle_ms: f64,
    cpu_changes: usize,
    cpu_wall: Duration,
    /// Re-reads of the changed path the gateway logged during the CPU loop.
    cpu_rereads: usize,
}

impl Figures {
    fn cpu_per_change_ms(&self) -> f64 {
        cpu_per_change_ms(self.cpu_busy_ms, self.cpu_idle_ms, self.cpu_changes)
    }

    fn bytes_per_instance(&self) -> f64 {
        bytes_per_instance(self.rss_kib, self.rss_empty_kib, self.size)
    }
}

/// CPU of the change loop less CPU idle for as long, per change.
fn cpu_per_change_ms(busy_ms: f64, idle_ms: f64, changes: usize) -> f64 {
    (busy_ms - idle_ms) / changes as f64
}

/// The RSS difference spread over the instances; negative if the loaded gateway came out
/// smaller (allocator noise at small sizes).
fn bytes_per_instance(rss_kib: u64, rss_empty_kib: u64, size: Size) -> f64 {
    (rss_kib as f64 - rss_empty_kib as f64) * 1024.0 / size.znodes() as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let plan = plan();
    let ticks = clock_ticks_per_second();
    let figures: Vec<Figures> = plan.sizes.iter().map(|&s| run(s, &plan, ticks)).collect();
    summary(&figures, ticks);
}

fn run(size: Size, plan: &Plan, ticks: f64) -> Figures {
    let label = format!("{} services x {} instances", size.services, size.instances);
    let mut server = ZkServer::start();
    let (rt, client) = common::blocking_zk_client(&server.connect_string());
    let yaml = config(&server.connect_string(), size.services);

    // The baseline: the same upstreams and routes, nothing registered, so the difference to
    // the loaded gateway below is what the instances cost.
    let rss_empty_kib = {
        let gw = Gateway::start(&yaml);
        wait_full_sync(&gw, 0.0);
        settle_rss(&gw)
    };

    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let started = Instant::now();
    register(&rt, &client, size, a.addr);
    let register = started.elapsed();

    let gw = Gateway::start(&yaml);
    let pid = gw.child.id();
    let sync_start = wait_full_sync(&gw, 0.0);
    let rss_kib = settle_rss(&gw);
    // The memory figure only means something if the gateway really holds every instance.
    let held = backends_held(&gw.metrics());
    assert_eq!(
        held,
        size.znodes() + 1,
        "the gateway holds {held} backends, not every registered instance"
    );
    println!(
        "scale {label}: {} instance znodes registered in {register:.2?}",
        size.znodes()
    );
    println!(
        "scale {label}: RSS {} with instances, {} with none: {:.0} bytes per instance",
        mib(rss_kib),
        mib(rss_empty_kib),
        bytes_per_instance(rss_kib, rss_empty_kib, size)
    );
    println!(
        "scale {label}: full sync at start-up {:.3} s",
        sync_start.as_secs_f64()
    );

    // Changes observed by traffic, as in benches/propagation.rs.
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let b_path = format!("{OBSERVED}/b");
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    {
        let mut conn = Conn::open(gw.http).expect("connection");
        assert_eq!(backend_of(&mut conn, "/obs/x"), "a");
        for i in 0..plan.routed_changes {
            let t = Instant::now();
            if i % 2 == 0 {
                rt.block_on(client.create(&b_path, &instance_json(b.addr), &persistent))
                    .expect("create b");
                joins.push(time_to_join(&mut conn, "/obs/x", "b", t));
            } else {
                rt.block_on(client.delete(&b_path, None)).expect("delete b");
                leaves.push(time_to_leave(&mut conn, "/obs/x", "a", t));
            }
        }
    }
    joins.sort();
    leaves.sort();
    for (what, v) in [("create -> routed", &joins), ("delete -> routed", &leaves)] {
        println!(
            "scale {label}: change {what} n={} p50={:.2?} p99={:.2?} max={:.2?}",
            v.len(),
            percentile(v, 0.50),
            percentile(v, 0.99),
            v[v.len() - 1]
        );
    }

    // CPU per change with no traffic at all: requests would cost the gateway more than the
    // change does. An idle period as long follows, since a gateway also burns some CPU doing
    // nothing (timers, ZooKeeper pings); the figure is the difference.
    let rereads_before = rereads_logged(&gw);
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    for i in 0..plan.cpu_changes {
        if i % 2 == 0 {
            rt.block_on(client.create(&b_path, &instance_json(b.addr), &persistent))
                .expect("create b");
        } else {
            rt.block_on(client.delete(&b_path, None)).expect("delete b");
        }
        thread::sleep(CPU_GAP);
    }
    let cpu_wall = started.elapsed();
    let cpu_busy_ms = (cpu_ticks(pid) - cpu_before) as f64 * 1000.0 / ticks;
    let cpu_rereads = rereads_logged(&gw) - rereads_before;
    let idle_before = cpu_ticks(pid);
    thread::sleep(cpu_wall);
    let cpu_idle_ms = (cpu_ticks(pid) - idle_before) as f64 * 1000.0 / ticks;
    let per_change = cpu_per_change_ms(cpu_busy_ms, cpu_idle_ms, plan.cpu_changes);
    println!(
        "scale {label}: gateway CPU {per_change:.3} ms per change ({} changes, {cpu_busy_ms:.0} ms in {cpu_wall:.1?}; idle {cpu_idle_ms:.0} ms in as long; {cpu_rereads} re-reads of the path logged)",
        plan.cpu_changes
    );

    // A full resync after a reconnect: restart ZooKeeper (same data) and wait for the gauge
    // to be set again.
    let metrics = gw.metrics();
    let gauge_before =
        metric(&metrics, "zkgate_zookeeper_full_sync_duration_seconds").expect("full sync gauge");
    let lost_before = metric(&metrics, "zkgate_zookeeper_sessions_lost_total").unwrap_or(0.0);
    server.restart();
    let back = Instant::now();
    let sync_reconnect = wait_full_sync(&gw, gauge_before);
    let reconnect_to_synced = back.elapsed();
    let session_kept =
        metric(&gw.metrics(), "zkgate_zookeeper_sessions_lost_total").unwrap_or(0.0) == lost_before;
    assert_eq!(
        backend_of(&mut Conn::open(gw.http).expect("connection"), "/obs/x"),
        "a",
        "traffic after the resync"
    );
    println!(
        "scale {label}: full sync after a ZooKeeper restart {:.3} s (session {}; done {:.2?} after ZooKeeper answered again)",
        sync_reconnect.as_secs_f64(),
        if session_kept { "kept" } else { "lost and renewed" },
        reconnect_to_synced
    );

    Figures {
        size,
        register,
        rss_empty_kib,
        rss_kib,
        sync_start,
        sync_reconnect,
        reconnect_to_synced,
        session_kept,
        joins,
        leaves,
        cpu_busy_ms,
        cpu_idle_ms,
        cpu_changes: plan.cpu_changes,
        cpu_wall,
        cpu_rereads,
    }
}

/// The sizes side by side.
fn summary(f: &[Figures], ticks: f64) {
    let row = |name: &str, cell: &dyn Fn(&Figures) -> String| {
        let cells: String = f.iter().map(|x| format!("{:>16}", cell(x))).collect();
        println!("  {name:<34}{cells}");
    };
    println!("scale summary");
    row("services x instances", &|x| {
        format!("{} x {}", x.size.services, x.size.instances)
    });
    row("registering the znodes", &|x| format!("{:.2?}", x.register));
    row("RSS, no instance registered", &|x| mib(x.rss_empty_kib));
    row("RSS, all instances loaded", &|x| mib(x.rss_kib));
    row("RSS difference per instance", &|x| {
        format!("{:.0} B", x.bytes_per_instance())
    });
    row("full sync at start-up", &|x| {
        format!("{:.3} s", x.sync_start.as_secs_f64())
    });
    row("full sync after ZooKeeper restart", &|x| {
        format!("{:.3} s", x.sync_reconnect.as_secs_f64())
    });
    row("  ZooKeeper back to synced", &|x| {
        format!("{:.2?}", x.reconnect_to_synced)
    });
    row("  session", &|x| {
        (if x.session_kept { "kept" } else { "renewed" }).to_owned()
    });
    row("create -> routed p50", &|x| {
        format!("{:.2?}", percentile(&x.joins, 0.5))
    });
    row("create -> routed p99", &|x| {
        format!("{:.2?}", percentile(&x.joins, 0.99))
    });
    row("delete -> routed p50", &|x| {
        format!("{:.2?}", percentile(&x.leaves, 0.5))
    });
    row("delete -> routed p99", &|x| {
        format!("{:.2?}", percentile(&x.leaves, 0.99))
    });
    row("CPU per change (net of idle)", &|x| {
        format!("{:.3} ms", x.cpu_per_change_ms())
    });
    row("  CPU in the change loop", &|x| {
        format!("{:.0} ms/{:.1?}", x.cpu_busy_ms, x.cpu_wall)
    });
    row("  CPU idle as long", &|x| {
        format!("{:.0} ms", x.cpu_idle_ms)
    });
    row("  changes / re-reads logged", &|x| {
        format!("{} / {}", x.cpu_changes, x.cpu_rereads)
    });
    println!(
        "  (RSS is counted in pages and includes what the allocator keeps: the per-instance figure\n   means something only when the difference is megabytes. CPU is utime+stime from\n   /proc/<pid>/stat at {ticks} ticks/s, so {:.0} ms resolution over the whole loop.)",
        1000.0 / ticks
    );
}

/// `obs` with its one real backend, then `s0`..: one discovered upstream and one route each.
fn config(connect: &str, services: usize) -> String {
    let mut upstreams = String::from("  - { name: obs, zookeeper: { service: obs } }\n");
    let mut routes =
        String::from("  - { name: obs, match: { path_prefix: /obs/ }, upstream: obs }\n");
    for s in 0..services {
        upstreams.push_str(&format!(
            "  - {{ name: s{s}, zookeeper: {{ service: s{s} }} }}\n"
        ));
        routes.push_str(&format!(
            "  - {{ name: s{s}, match: {{ path_prefix: /s{s}/ }}, upstream: s{s} }}\n"
        ));
    }
    format!("zookeeper: {{ connect: \"{connect}\" }}\nupstreams:\n{upstreams}routes:\n{routes}")
}

/// `obs/a` at `a`, and every service's instances with distinct ports, all persistent.
fn register(rt: &tokio::runtime::Runtime, client: &zk::Client, size: Size, a: SocketAddr) {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    rt.block_on(async {
        client
            .mkdir(OBSERVED, &persistent)
            .await
            .expect("mkdir the observed service");
        client
            .create(&format!("{OBSERVED}/a"), &instance_json(a), &persistent)
            .await
            .expect("register obs/a");
        // One multi per service (its node and its instances), many in flight at once: the
        // client pipelines them on its one connection, so this costs a few round trips and
        // group commits rather than one per znode.
        let services: Vec<usize> = (0..size.services).collect();
        for batch in services.chunks(100) {
            let commits = batch.iter().map(|&s| {
                let mut multi = client.new_multi_writer();
                multi
                    .add_create(&format!("/zkgate/services/s{s}"), &[], &persistent)
                    .expect("add a service node");
                for i in 0..size.instances {
                    let port = u16::try_from(FIRST_PORT + s * size.instances + i)
                        .expect("too many instances for distinct ports");
                    multi
                        .add_create(
                            &format!("/zkgate/services/s{s}/i{i}"),
                            &instance_json(SocketAddr::from(([127, 0, 0, 1], port))),
                            &persistent,
                        )
                        .expect("add an instance node");
                }
                multi.commit()
            });
            for result in join_all(commits).await {
                result.expect("register a service");
            }
        }
    });
}

/// Waits until the full sync gauge is set to a value other than `previous` and returns it.
fn wait_full_sync(gw: &Gateway, previous: f64) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // The admin listener itself may be briefly unreachable, never the gateway gone.
        if let Ok(r) = common::request(gw.admin, "GET", "/metrics", &[], b"") {
            if let Some(v) = metric(&r.text(), "zkgate_zookeeper_full_sync_duration_seconds") {
                if v != previous {
                    return Duration::from_secs_f64(v);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no full sync reported in 120 s:\n{}",
            gw.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// One series' value in a Prometheus text exposition, `series` with its labels if any.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Backends over every upstream, as the per-upstream gauge counts them.
fn backends_held(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("zkgate_upstream_backends{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize
}

/// How often the gateway logged a new list for the observed path (one line per re-read).
fn rereads_logged(gw: &Gateway) -> usize {
    let needle = format!("zookeeper {OBSERVED}: ");
    gw.log().matches(&needle).count()
}

/// `VmRSS` in KiB, read after a short pause so that start-up work has finished.
fn settle_rss(gw: &Gateway) -> u64 {
    thread::sleep(Duration::from_millis(500));
    let pid = gw.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// User plus system CPU time of every thread of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields 14 and 15 (utime, stime); the command name before them may hold spaces, so count
    // from the `)` that closes it, after which field 3 comes.
    let (_, rest) = stat.rsplit_once(')').expect("proc stat format");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> u64 { fields[n - 3].parse().expect("proc stat number") };
    field(14) + field(15)
}

/// `getconf CLK_TCK`, or 100 (Linux's value everywhere) if that cannot be run.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
