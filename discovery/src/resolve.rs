//! Host names in instances turned into addresses without holding up the watcher: each path's
//! list is resolved on a task of its own, the names of one list concurrently and all within one
//! deadline, so a slow or dead DNS server delays only the paths that use it, and those by at most
//! the deadline. A list of literal addresses is delivered at once, in order with the others.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::instance::Instance;

/// How long the names of one instance list may take to resolve, all together.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Lookups of one list in flight at once: the system resolver runs each on a blocking thread.
const CONCURRENT_LOOKUPS: usize = 16;

/// Turns a host name into addresses.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool: /etc/hosts, DNS, ...).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// An instance and the addresses it stands for (none when its name did not resolve in time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub instance: Instance,
    pub addrs: Vec<SocketAddr>,
}

type Deliver = dyn Fn(&str, Vec<Resolved>) + Send + Sync;

/// Takes each path's instance list as the watcher publishes it and delivers it resolved, per
/// path in the order given, the latest list replacing one not started yet.
pub struct Resolver {
    lookup: Arc<dyn Lookup>,
    timeout: Duration,
    deliver: Box<Deliver>,
    /// The paths with a resolving task, each with the list it takes next, if any.
    running: Mutex<HashMap<String, Option<Vec<Instance>>>>,
    /// Paths with a resolving task running.
    busy: watch::Sender<usize>,
}

impl Resolver {
    pub fn new(
        lookup: Arc<dyn Lookup>,
        timeout: Duration,
        deliver: impl Fn(&str, Vec<Resolved>) + Send + Sync + 'static,
    ) -> Arc<Resolver> {
        Arc::new(Resolver {
            lookup,
            timeout,
            deliver: Box::new(deliver),
            running: Mutex::new(HashMap::new()),
            busy: watch::channel(0).0,
        })
    }

    /// Hands over the current list of `path`. Needs a tokio runtime when a name is to be
    /// resolved. `deliver` must not call back into this resolver.
    pub fn submit(self: &Arc<Self>, path: &str, instances: Vec<Instance>) {
        let mut running = self.lock();
        if let Some(next) = running.get_mut(path) {
            // The task on this path takes this list next, instead of any older one waiting.
            *next = Some(instances);
            return;
        }
        if instances.iter().all(|i| i.host.parse::<IpAddr>().is_ok()) {
            // Under the lock, so that no task for this path can start and deliver in between.
            (self.deliver)(path, literal(instances));
            return;
        }
        running.insert(path.to_owned(), None);
        self.busy.send_modify(|n| *n += 1);
        tokio::spawn(self.clone().run(path.to_owned(), instances));
    }

    /// Returns once no list is being resolved (at most the timeout after the last submit).
    pub async fn idle(&self) {
        let mut busy = self.busy.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = busy.wait_for(|n| *n == 0).await;
    }

    /// Resolves the lists of `path` one after the other until none is waiting.
    async fn run(self: Arc<Self>, path: String, mut instances: Vec<Instance>) {
        let mut task = Task {
            resolver: &self,
            path: &path,
            done: false,
        };
        loop {
            let resolved = self.resolve(&path, instances).await;
            let mut running = self.lock();
            // Delivered under the lock, like a literal list in `submit`, so the order holds.
            (self.deliver)(&path, resolved);
            match running.get_mut(&path).and_then(Option::take) {
                Some(next) => instances = next,
                None => {
                    // Under the same lock as the check, so no list handed over meanwhile is lost.
                    running.remove(&path);
                    task.done = true;
                    return;
                }
            }
        }
    }

    /// `instances` with their addresses: literal ones as they are, names looked up concurrently,
    /// all within the timeout.
    async fn resolve(&self, path: &str, instances: Vec<Instance>) -> Vec<Resolved> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let limit = Arc::new(Semaphore::new(CONCURRENT_LOOKUPS));
        let mut lookups = JoinSet::new();
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for i in &instances {
            if i.host.parse::<IpAddr>().is_ok() || names.contains_key(&i.host) {
                continue;
            }
            names.insert(i.host.clone(), Vec::new());
            let (lookup, limit, host) = (self.lookup.clone(), limit.clone(), i.host.clone());
            lookups.spawn(async move {
                let result = tokio::time::timeout_at(deadline, async {
                    let _permit = limit.acquire().await;
                    lookup.lookup(&host).await
                })
                .await;
                (host, result)
            });
        }
        while let Some(done) = lookups.join_next().await {
            let Ok((host, result)) = done else { continue };
            match result {
                Ok(Ok(ips)) => {
                    let mut unique = Vec::with_capacity(ips.len());
                    for ip in ips {
                        if !unique.contains(&ip) {
                            unique.push(ip);
                        }
                    }
                    names.insert(host, unique);
                }
                Ok(Err(e)) => log::warn!("zookeeper {path}: cannot resolve {host}, its instances are left out: {e}"),
                Err(_) => log::warn!(
                    "zookeeper {path}: {host} did not resolve within {:?}, its instances are left out",
                    self.timeout
                ),
            }
        }
        instances
            .into_iter()
            .map(|instance| {
                let addrs = match instance.host.parse::<IpAddr>() {
                    Ok(ip) => vec![SocketAddr::new(ip, instance.port)],
                    Err(_) => names
                        .get(&instance.host)
                        .map(|ips| {
                            ips.iter()
                                .map(|ip| SocketAddr::new(*ip, instance.port))
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                Resolved { instance, addrs }
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Option<Vec<Instance>>>> {
        // Every write is one insert, replace or remove, so the map is whole even after a panic.
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running task of [`Resolver::run`]: when it ends, even by a panic in `deliver`, the path is
/// free for a new task and the resolver no longer counts it busy.
struct Task<'a> {
    resolver: &'a Resolver,
    path: &'a str,
    /// The path was already freed under the lock.
    done: bool,
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.resolver.lock().remove(self.path);
        }
        self.resolver.busy.send_modify(|n| *n -= 1);
    }
}

fn literal(instances: Vec<Instance>) -> Vec<Resolved> {
    instances
        .into_iter()
        .filter_map(|instance| {
            let ip = instance.host.parse::<IpAddr>().ok()?;
            Some(Resolved {
                addrs: vec![SocketAddr::new(ip, instance.port)],
                instance,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn instance(host: &str, port: u16) -> Instance {
        Instance {
            node: format!("{host}:{port}"),
            host: host.to_owned(),
            port,
            weight: 1,
            tls: false,
            zone: None,
            metadata: BTreeMap::new(),
        }
    }

    type Log = Arc<Mutex<Vec<(String, Vec<String>)>>>;

    /// A resolver delivering into a log of (path, "instance host:port -> addresses").
    fn resolver(lookup: impl Lookup, timeout: Duration) -> (Arc<Resolver>, Log) {
        let log: Log = Arc::default();
        let sink = log.clone();
        let r = Resolver::new(Arc::new(lookup), timeout, move |path, resolved| {
            let list = resolved
                .iter()
                .map(|r| {
                    let addrs: Vec<String> = r.addrs.iter().map(ToString::to_string).collect();
                    format!(
                        "{}:{} -> {}",
                        r.instance.host,
                        r.instance.port,
                        addrs.join(" ")
                    )
                })
                .collect();
            sink.lock().unwrap().push((path.to_owned(), list));
        });
        (r, log)
    }

    /// Names that answer at once, fail, or never answer; and one gated by a semaphore, so a
    /// test decides when it answers.
    struct Fake {
        gate: Arc<Semaphore>,
    }

    impl Lookup for Fake {
        fn lookup(
            &self,
            host: &str,
        ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
            let gate = self.gate.clone();
            let host = host.to_owned();
            Box::pin(async move {
                match host.as_str() {
                    "fast.test" => Ok(vec![
                        "10.0.0.2".parse().unwrap(),
                        "10.0.0.2".parse().unwrap(),
                    ]),
                    "gated.test" => {
                        let _ = gate.acquire().await;
                        Ok(vec!["10.0.0.9".parse().unwrap()])
                    }
                    "slow.test" => std::future::pending().await,
                    _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
                }
            })
        }
    }

    fn fake() -> (Fake, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        (Fake { gate: gate.clone() }, gate)
    }

    #[tokio::test]
    async fn localhost_resolves_with_the_system_resolver() {
        let (r, log) = resolver(SystemLookup, RESOLVE_TIMEOUT);
        r.submit("/a", vec![instance("localhost", 8080)]);
        r.idle().await;
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        let line = &log[0].1[0];
        assert!(
            line.contains("127.0.0.1:8080") || line.contains("[::1]:8080"),
            "{line}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_never_answers_holds_back_only_its_own_path_and_only_until_the_timeout() {
        let (lookup, _gate) = fake();
        let (r, log) = resolver(lookup, Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        r.submit(
            "/a",
            vec![
                instance("slow.test", 80),
                instance("fast.test", 81),
                instance("10.0.0.1", 82),
                instance("nowhere.test", 83),
            ],
        );
        // Another service's update: literal addresses, delivered before submit returns.
        r.submit("/b", vec![instance("10.0.0.3", 80)]);
        r.submit("/c", vec![instance("fast.test", 80)]);
        assert_eq!(log.lock().unwrap().len(), 1);
        r.idle().await;
        // On the paused clock `idle` returns exactly when the deadline fired.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let log = log.lock().unwrap();
        assert_eq!(
            *log,
            [
                (
                    "/b".to_owned(),
                    vec!["10.0.0.3:80 -> 10.0.0.3:80".to_owned()]
                ),
                (
                    "/c".to_owned(),
                    vec!["fast.test:80 -> 10.0.0.2:80".to_owned()]
                ),
                (
                    "/a".to_owned(),
                    vec![
                        "slow.test:80 -> ".to_owned(),
                        "fast.test:81 -> 10.0.0.2:81".to_owned(),
                        "10.0.0.1:82 -> 10.0.0.1:82".to_owned(),
                        "nowhere.test:83 -> ".to_owned(),
                    ]
                ),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lists_of_one_path_arrive_in_order_and_the_latest_replaces_a_waiting_one() {
        let (lookup, gate) = fake();
        let (r, log) = resolver(lookup, Duration::from_secs(2));
        r.submit("/a", vec![instance("gated.test", 80)]);
        tokio::task::yield_now().await;
        // Literal lists, but a resolution of the path is under way: they wait their turn, and
        // the second replaces the first.
        r.submit("/a", vec![instance("10.0.0.1", 80)]);
        r.submit("/a", vec![instance("10.0.0.2", 80)]);
        assert!(log.lock().unwrap().is_empty());
        gate.add_permits(1);
        r.idle().await;
        assert_eq!(
            *log.lock().unwrap(),
            [
                (
                    "/a".to_owned(),
                    vec!["gated.test:80 -> 10.0.0.9:80".to_owned()]
                ),
                (
                    "/a".to_owned(),
                    vec!["10.0.0.2:80 -> 10.0.0.2:80".to_owned()]
                ),
            ]
        );
        // Free again: a literal list goes straight through.
        r.submit("/a", vec![instance("10.0.0.3", 80)]);
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
