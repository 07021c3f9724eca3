//! Housekeeping: the one background service for periodic work off the request path. Every
//! 100 ms it walks the serving snapshot and ticks each upstream (ejections that are over, the
//! local zone, slow-start ramps, gauges, the health checks that are due) and each route plugin
//! (spool replays); every 10 s the routes' rate limiters forget the keys whose buckets have
//! refilled; on shutdown it calls each plugin's `shutdown`. It takes the snapshot afresh on each tick, so what a reload adds is kept from the
//! next tick on and what it drops is left alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Live;
use crate::clock::now_ms;
use crate::upstream::health::Prober;

/// How often due checks, expired ejections, ramps and plugins are looked at.
const TICK: Duration = Duration::from_millis(100);
/// Every this many ticks (10 s), rate limiters drop refilled keys: memory is held for keys
/// only while they are limited, not for every client ever seen.
const FORGET_EVERY: u64 = 100;

pub struct Housekeeping {
    live: Arc<Live>,
    /// What health probes connect with.
    prober: Arc<Prober>,
}

impl Housekeeping {
    pub fn new(live: Arc<Live>, prober: Prober) -> Housekeeping {
        Housekeeping {
            live,
            prober: Arc::new(prober),
        }
    }

    /// The `n`-th tick (from 1), now.
    fn tick(&self, n: u64) {
        // The limiters keep time on their own monotonic clock.
        self.tick_at(n, now_ms(), Instant::now());
    }

    /// The `n`-th tick at `now` ([`now_ms`] time), `limiter_now` on the limiters' clock.
    fn tick_at(&self, n: u64, now: u64, limiter_now: Instant) {
        let snapshot = self.live.load_full();
        for u in &snapshot.upstreams {
            u.tick(now, &self.prober);
        }
        for r in snapshot.routes.routes() {
            if let Some(plugin) = &r.plugin {
                plugin.tick();
            }
        }
        if n.is_multiple_of(FORGET_EVERY) {
            snapshot.routes.forget_idle_keys(limiter_now);
        }
    }
}

impl Housekeeping {
    /// Lets each plugin of the serving config undo what it did outside the process (a
    /// cache's O2 subscription), one after the other, within the shutdown grace period.
    async fn shutdown_plugins(&self) {
        let snapshot = self.live.load_full();
        for r in snapshot.routes.routes() {
            if let Some(plugin) = &r.plugin {
                plugin.shutdown().await;
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.shutdown_plugins().await;
                    return;
                }
                _ = tick.tick() => {
                    n += 1;
                    self.tick(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const CONFIG: &str = "listeners: [{ name: web, listen: \"127.0.0.1:1\" }]
upstreams:
  - name: api
    backends: [\"127.0.0.1:2\", \"127.0.0.1:3\"]
    outlier_detection: { consecutive_failures: 1, base_ejection_time: 2s }
routes:
  - { name: r, upstream: api, rate_limit: { per_second: 1000, key: client_ip } }
";

    /// The service's own loop on paused time: an ejected backend is readmitted by the first
    /// tick after its ejection ends.
    #[tokio::test(start_paused = true)]
    async fn the_ticks_readmit_an_ejected_backend_when_its_ejection_ends() {
        let live = Live::new(load_str(CONFIG, None).expect("config"));
        let api = live.load().upstream("api").expect("api").clone();
        let state = api
            .state_of(&"127.0.0.1:2".parse().expect("addr"))
            .expect("a member");
        api.record(&state, true);
        assert!(!state.available(), "ejected for 2 s");

        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let housekeeping = Housekeeping::new(live, Prober::new(&Default::default()));
        let service = tokio::spawn(async move { housekeeping.start(shutdown).await });
        // While the test sleeps, paused time jumps from one tick to the next.
        tokio::time::sleep(Duration::from_millis(1_950)).await;
        assert!(!state.available(), "19 ticks, the ejection is not over");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(state.available(), "the tick at 2 s readmitted it");

        stop.send(true).expect("the service listens");
        service.await.expect("it returns on shutdown");
    }

    /// Every 100th tick, and only then, the rate limiters drop the keys that have refilled.
    #[test]
    fn the_limiters_forget_refilled_keys_every_hundredth_tick() {
        let live = Live::new(load_str(CONFIG, None).expect("config"));
        let limiter = || {
            let snapshot = live.load_full();
            let rate = snapshot.routes.routes()[0].rate_limit.clone();
            rate.expect("a rate limit")
        };
        let seen = Instant::now();
        assert!(limiter().limiter.check(Some(b"10.0.0.1"), seen).is_ok());
        // A minute on, its bucket has long refilled.
        let later = seen + Duration::from_secs(60);
        let housekeeping = Housekeeping::new(live.clone(), Prober::new(&Default::default()));
        for n in 1..FORGET_EVERY {
            housekeeping.tick_at(n, now_ms(), later);
        }
        assert_eq!(limiter().limiter.keys(), 1, "kept until the 100th tick");
        housekeeping.tick_at(FORGET_EVERY, now_ms(), later);
        assert_eq!(limiter().limiter.keys(), 0);
    }
}
