//! Admission of a game listener's connections: the listener-wide cap (`max_sessions`), the
//! per-client-address caps (`per_ip.concurrent`, `per_ip.per_second`) and the CIDR allowlist.
//!
//! Places are RAII guards, given back when the connection's task drops them, whatever way it
//! ends. The per-address counts live in shards of small maps, so that accepts on different
//! threads rarely meet on a lock (the seed took one global lock per accept and per close). The
//! limits are passed on each call rather than kept here: they follow config reloads while the
//! counts stay.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use ipnet::IpNet;

/// Shards of the per-address table.
const SHARDS: usize = 64;
/// A shard is swept of spent entries once this many, and half its size, were added since its
/// last sweep: a sweep's cost is spread over the adds before it.
const SWEEP_MIN: usize = 64;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Why a connection was refused; `as_str` is the `zkgate_game_refused_total` reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_sessions` connections are open on the listener.
    MaxSessions,
    /// `per_ip.concurrent` connections are open from the client's address.
    PerIp,
    /// The client's address opened more than `per_ip.per_second` connections in a second.
    PerIpRate,
    /// The client's address is outside `allow`.
    NotAllowed,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::MaxSessions => "max_sessions",
            Refused::PerIp => "per_ip",
            Refused::PerIpRate => "per_ip_rate",
            Refused::NotAllowed => "not_allowed",
        }
    }

    /// For the log line: what the connection ran into.
    pub fn describe(self) -> &'static str {
        match self {
            Refused::MaxSessions => "arrived with max_sessions connections open",
            Refused::PerIp => "arrived with per_ip.concurrent connections open from its address",
            Refused::PerIpRate => "opened more than per_ip.per_second connections in a second",
            Refused::NotAllowed => "is not in the listener's allow list",
        }
    }
}

/// The per-address limits in force for one admission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerIpLimits {
    pub concurrent: Option<u32>,
    pub per_second: Option<u32>,
}

impl PerIpLimits {
    fn is_off(self) -> bool {
        self.concurrent.is_none() && self.per_second.is_none()
    }
}

/// One address's state: connections open now, and the rate limiter's theoretical arrival time
/// (GCRA: a connection is admitted while `tat - now` stays within the burst, each one moves
/// `tat` one interval later), in nanoseconds of the caller's clock.
#[derive(Debug, Default)]
struct Entry {
    open: u32,
    tat: u64,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<IpAddr, Entry>,
    added: usize,
}

/// One listener's admission counts.
#[derive(Debug)]
pub struct Admission {
    open: AtomicU32,
    shards: Box<[Mutex<Shard>]>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new()
    }
}

impl Admission {
    pub fn new() -> Admission {
        Admission {
            open: AtomicU32::new(0),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Connections holding a place now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// A place among the listener's `max` connections.
    pub fn admit(&self, max: u32) -> Result<Slot<'_>, Refused> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        // The slot is made first so that a refusal gives the count back on drop.
        let slot = Slot { admission: self };
        if before >= max {
            return Err(Refused::MaxSessions);
        }
        Ok(slot)
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<Shard> {
        let h = match ip {
            IpAddr::V4(a) => u64::from(u32::from(*a)),
            IpAddr::V6(a) => {
                let v = u128::from(*a);
                (v ^ (v >> 64)) as u64
            }
        };
        // Fibonacci hashing: neighbouring addresses land on different shards.
        let i = (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % self.shards.len();
        &self.shards[i]
    }

    /// A place for a connection from `ip` under `limits`, at `now_ns` of a monotonic clock.
    /// With no per-address limit nothing is counted.
    pub fn admit_ip(
        &self,
        ip: IpAddr,
        limits: PerIpLimits,
        now_ns: u64,
    ) -> Result<IpSlot<'_>, Refused> {
        if limits.is_off() {
            return Ok(IpSlot {
                admission: self,
                ip: None,
            });
        }
        let ip = ip.to_canonical();
        let mut shard = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.map.entry(ip).or_default();
        if limits.concurrent.is_some_and(|max| entry.open >= max) {
            return Err(Refused::PerIp);
        }
        if let Some(rate) = limits.per_second.filter(|r| *r > 0) {
            let interval = NANOS_PER_SEC / u64::from(rate);
            // `rate` connections at once, then one per interval.
            let burst = interval * u64::from(rate - 1);
            let tat = entry.tat.max(now_ns);
            if tat - now_ns > burst {
                return Err(Refused::PerIpRate);
            }
            entry.tat = tat + interval;
        }
        entry.open += 1;
        shard.added += 1;
        if shard.added >= SWEEP_MIN.max(shard.map.len() / 2) {
            // Addresses with nothing open whose rate window has passed are forgotten, so the
            // table holds the addresses of the last second or so, not every one ever seen.
            shard.map.retain(|_, e| e.open > 0 || e.tat > now_ns);
            shard.added = 0;
        }
        Ok(IpSlot {
            admission: self,
            ip: Some(ip),
        })
    }

    fn release_ip(&self, ip: IpAddr) {
        let mut shard = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = shard.map.get_mut(&ip) {
            e.open = e.open.saturating_sub(1);
            // Kept while its rate window runs: the next sweep forgets it.
            if e.open == 0 && e.tat == 0 {
                shard.map.remove(&ip);
            }
        }
    }

    /// Addresses the table holds (for tests and the memory bound).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }
}

/// Whether `ip` may connect: an empty list allows every address. An IPv4 client seen on a
/// dual-stack socket (`::ffff:a.b.c.d`) is matched as the IPv4 address it is.
pub fn allowed(allow: &[IpNet], ip: IpAddr) -> bool {
    if allow.is_empty() {
        return true;
    }
    let ip = ip.to_canonical();
    allow.iter().any(|net| net.contains(&ip))
}

/// A place among the listener's connections, given back on drop.
#[derive(Debug)]
pub struct Slot<'a> {
    admission: &'a Admission,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A place among one address's connections, given back on drop.
#[derive(Debug)]
pub struct IpSlot<'a> {
    admission: &'a Admission,
    ip: Option<IpAddr>,
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            self.admission.release_ip(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SEC;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_listener_cap_holds_and_places_come_back_on_drop() {
        let a = Admission::new();
        let one = a.admit(2).unwrap();
        let two = a.admit(2).unwrap();
        assert_eq!(a.admit(2).unwrap_err(), Refused::MaxSessions);
        assert_eq!(a.open(), 2, "a refusal gives its count back");
        drop(one);
        let three = a.admit(2).unwrap();
        drop((two, three));
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn concurrent_per_address_is_counted_per_address() {
        let a = Admission::new();
        let limits = PerIpLimits {
            concurrent: Some(2),
            per_second: None,
        };
        let x = ip("10.0.0.1");
        let s1 = a.admit_ip(x, limits, 0).unwrap();
        let s2 = a.admit_ip(x, limits, 0).unwrap();
        assert_eq!(a.admit_ip(x, limits, 0).unwrap_err(), Refused::PerIp);
        // Another address, and the same one seen as IPv4-mapped IPv6, are told apart rightly.
        let other = a.admit_ip(ip("10.0.0.2"), limits, 0).unwrap();
        assert_eq!(
            a.admit_ip(ip("::ffff:10.0.0.1"), limits, 0).unwrap_err(),
            Refused::PerIp
        );
        drop(s1);
        let s3 = a.admit_ip(x, limits, 0).unwrap();
        drop((s2, s3, other));
        assert_eq!(
            a.tracked(),
            0,
            "addresses with nothing open and no rate are forgotten"
        );
    }

    #[test]
    fn the_rate_admits_a_second_s_burst_then_one_per_interval() {
        let a = Admission::new();
        let limits = PerIpLimits {
            concurrent: None,
            per_second: Some(4),
        };
        let x = ip("192.0.2.7");
        let t0 = 100 * SEC;
        for _ in 0..4 {
            drop(a.admit_ip(x, limits, t0).unwrap());
        }
        assert_eq!(a.admit_ip(x, limits, t0).unwrap_err(), Refused::PerIpRate);
        // A quarter second later one more fits, not two.
        let t1 = t0 + SEC / 4;
        drop(a.admit_ip(x, limits, t1).unwrap());
        assert_eq!(a.admit_ip(x, limits, t1).unwrap_err(), Refused::PerIpRate);
        // A refused connection does not use the budget: after a quiet second, a burst again.
        let t2 = t1 + SEC + SEC / 4;
        for _ in 0..4 {
            drop(a.admit_ip(x, limits, t2).unwrap());
        }
        assert_eq!(a.admit_ip(x, limits, t2).unwrap_err(), Refused::PerIpRate);
        // Other addresses have their own budget.
        drop(a.admit_ip(ip("192.0.2.8"), limits, t2).unwrap());
    }

    #[test]
    fn spent_rate_entries_are_swept() {
        let a = Admission::new();
        let limits = PerIpLimits {
            concurrent: Some(10),
            per_second: Some(10),
        };
        for i in 0..10_000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(a.admit_ip(addr, limits, u64::from(i) * SEC).unwrap());
        }
        // Ten thousand addresses over ten thousand seconds: only recent ones are held.
        assert!(a.tracked() <= SWEEP_MIN * SHARDS, "{} held", a.tracked());
    }

    #[test]
    fn no_limit_counts_nothing() {
        let a = Admission::new();
        let s = a
            .admit_ip(ip("10.1.1.1"), PerIpLimits::default(), 0)
            .unwrap();
        assert_eq!(a.tracked(), 0);
        drop(s);
    }

    #[test]
    fn the_allowlist_matches_blocks_and_mapped_addresses() {
        let allow: Vec<IpNet> = vec![
            "127.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        assert!(allowed(&allow, ip("127.0.0.2")));
        assert!(allowed(&allow, ip("::ffff:127.0.0.1")));
        assert!(allowed(&allow, ip("2001:db8::1")));
        assert!(!allowed(&allow, ip("10.0.0.1")));
        assert!(!allowed(&allow, ip("2001:db9::1")));
        assert!(allowed(&[], ip("10.0.0.1")), "no list: every address");
    }
}
