//! A cap on the requests a route has in flight: a permit per request, given back on drop.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct ConcurrencyLimit {
    max: u32,
    /// Shared with the permits, so that a permit can live in the request context for as long
    /// as the request does without borrowing the route it came from.
    in_flight: Arc<AtomicU32>,
}

impl ConcurrencyLimit {
    /// At most `max` permits out at once (0 refuses every request).
    pub fn new(max: u32) -> ConcurrencyLimit {
        ConcurrencyLimit {
            max,
            in_flight: Arc::new(AtomicU32::new(0)),
        }
    }

    /// A permit, or `None` when `max` are out.
    #[inline]
    pub fn try_acquire(&self) -> Option<Permit> {
        // A CAS rather than an add undone on overshoot: the count never exceeds `max`, so a
        // request racing with an overshoot is not refused while a slot is free.
        self.in_flight
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Permit(self.in_flight.clone()))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u32 {
        self.max
    }
}

/// One request counted in flight until this is dropped.
#[derive(Debug)]
#[must_use = "the slot is given back as soon as the permit is dropped"]
pub struct Permit(Arc<AtomicU32>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn permits_up_to_max_then_refused_until_one_is_dropped() {
        let limit = ConcurrencyLimit::new(3);
        let mut held: Vec<Permit> = (0..3).map(|_| limit.try_acquire().expect("slot")).collect();
        assert_eq!(limit.in_flight(), 3);
        assert!(limit.try_acquire().is_none(), "the fourth is refused");
        drop(held.pop());
        assert_eq!(limit.in_flight(), 2);
        let again = limit.try_acquire();
        assert!(again.is_some(), "a dropped permit frees its slot");
        assert!(limit.try_acquire().is_none());
        drop(again);
        drop(held);
        assert_eq!(limit.in_flight(), 0);
    }

    #[test]
    fn zero_refuses_everything() {
        let limit = ConcurrencyLimit::new(0);
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.in_flight(), 0);
    }

    #[test]
    fn permits_outlive_the_limit() {
        let limit = ConcurrencyLimit::new(1);
        let permit = limit.try_acquire().expect("slot");
        drop(limit);
        drop(permit);
    }

    #[test]
    fn hammered_from_threads_never_exceeds_max_and_returns_to_zero() {
        const MAX: u32 = 5;
        const THREADS: usize = 8;
        let limit = ConcurrencyLimit::new(MAX);
        // Raised by each holder after it got its permit and lowered before it gives it back,
        // so it counts permits actually held, never more than were granted.
        let holding = AtomicU32::new(0);
        let high_water = AtomicU32::new(0);
        let granted = AtomicU32::new(0);
        let start = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    start.wait();
                    for i in 0..20_000u32 {
                        if let Some(permit) = limit.try_acquire() {
                            granted.fetch_add(1, Ordering::Relaxed);
                            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            high_water.fetch_max(now, Ordering::SeqCst);
                            if i % 64 == 0 {
                                std::thread::yield_now();
                            }
                            holding.fetch_sub(1, Ordering::SeqCst);
                            drop(permit);
                        }
                    }
                });
            }
        });
        assert_eq!(limit.in_flight(), 0);
        assert_eq!(holding.load(Ordering::SeqCst), 0);
        let high = high_water.load(Ordering::SeqCst);
        assert!((1..=MAX).contains(&high), "high-water mark {high}");
        assert!(granted.load(Ordering::Relaxed) > 0);
    }
}
