//! Criterion benchmarks of the admission limits: a rate-limit check (route-wide, keyed, keyed
//! among 10,000 keys) alone and with two threads on one limiter, and a concurrency permit
//! taken and given back.
//!
//! Checks run at one fixed instant against a bucket too big to empty during the run (a
//! billion tokens a second, a burst of 2^32), so each one is admitted and writes its bucket:
//! the dearer path, since a refusal only reads. The `*_2_threads` figures are nanoseconds per
//! check per thread with both threads checking the same limiter at once.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use zkgate::limit::{ConcurrencyLimit, Rate, RateLimiter};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn roomy() -> Rate {
    Rate::new(1e9, u32::MAX).expect("rate")
}

/// An IPv4 client address mapped into IPv6, the 16-byte form a client-address key takes.
fn ip(n: u32) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[10] = 0xff;
    k[11] = 0xff;
    k[12..].copy_from_slice(&n.to_be_bytes());
    k
}

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit");
    let route = RateLimiter::route(roomy());
    // After the first limiter: an instant from before the limiters' epoch takes a slower path
    // through `Instant` subtraction than any request's start time would.
    let now = Instant::now();

    g.bench_function("route_admit", |b| {
        b.iter(|| black_box(route.check(None, black_box(now))))
    });

    let empty = RateLimiter::route(Rate::new(1.0, 1).expect("rate"));
    let _ = empty.check(None, now);
    g.bench_function("route_refuse", |b| {
        b.iter(|| black_box(empty.check(None, black_box(now))))
    });

    // What a caller without a request start time to reuse pays: the clock read included.
    g.bench_function("route_admit_with_clock_read", |b| {
        b.iter(|| black_box(route.check(None, Instant::now())))
    });

    let keyed = RateLimiter::keyed(roomy(), 100_000);
    let key = ip(0x0a00_0001);
    g.bench_function("keyed_ipv4_existing", |b| {
        b.iter(|| black_box(keyed.check(Some(black_box(&key)), black_box(now))))
    });

    let keys: Vec<[u8; 16]> = (0..10_000u32).map(|n| ip(0x0a00_0000 + n)).collect();
    for k in &keys {
        let _ = keyed.check(Some(k), now);
    }
    assert!(keyed.keys() >= keys.len());
    let mut i = 0usize;
    g.bench_function("keyed_ipv4_10000_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(keyed.check(Some(&keys[i]), black_box(now)))
        })
    });

    let header = b"tenant-7f3c2a91-4b6e-4d8a-9c1f-0e2d5b7a8c63";
    g.bench_function("keyed_long_header_value", |b| {
        b.iter(|| black_box(keyed.check(Some(black_box(header)), black_box(now))))
    });
    g.finish();

    let mut g = c.benchmark_group("concurrency_limit");
    let limit = ConcurrencyLimit::new(1_000);
    g.bench_function("acquire_release", |b| {
        b.iter(|| black_box(limit.try_acquire()))
    });
    g.finish();
}

/// Runs `work(thread, iters)` on two threads started together and returns the mean time a
/// thread took, so that criterion's time per iteration is the time per call per thread.
fn two_threads(iters: u64, work: impl Fn(usize, u64) + Sync) -> Duration {
    let start = Barrier::new(2);
    let total: Duration = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (start, work) = (&start, &work);
                s.spawn(move || {
                    start.wait();
                    let began = Instant::now();
                    work(t, iters);
                    began.elapsed()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("bench thread"))
            .sum()
    });
    total / 2
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit");
    let now = Instant::now();

    g.bench_function("route_admit_2_threads", |b| {
        b.iter_custom(|iters| {
            let route = RateLimiter::route(roomy());
            two_threads(iters, |_, n| {
                for _ in 0..n {
                    let _ = black_box(route.check(None, black_box(now)));
                }
            })
        })
    });

    g.bench_function("route_refuse_2_threads", |b| {
        b.iter_custom(|iters| {
            let empty = RateLimiter::route(Rate::new(1.0, 1).expect("rate"));
            let _ = empty.check(None, now);
            two_threads(iters, |_, n| {
                for _ in 0..n {
                    let _ = black_box(empty.check(None, black_box(now)));
                }
            })
        })
    });

    let key = ip(0x0a00_0001);
    g.bench_function("keyed_same_key_2_threads", |b| {
        b.iter_custom(|iters| {
            let keyed = RateLimiter::keyed(roomy(), 100_000);
            two_threads(iters, |_, n| {
                for _ in 0..n {
                    let _ = black_box(keyed.check(Some(black_box(&key)), black_box(now)));
                }
            })
        })
    });

    // Each thread cycles through 1,024 keys of its own, so the two meet on a shard (of 64)
    // only by chance, as two clients' requests would.
    let keys: Vec<[u8; 16]> = (0..2048u32).map(|n| ip(0x0a00_0000 + n)).collect();
    g.bench_function("keyed_different_keys_2_threads", |b| {
        b.iter_custom(|iters| {
            let keyed = RateLimiter::keyed(roomy(), 100_000);
            for k in &keys {
                let _ = keyed.check(Some(k), now);
            }
            two_threads(iters, |t, n| {
                let mine = &keys[t * 1024..(t + 1) * 1024];
                for i in 0..n as usize {
                    let _ = black_box(keyed.check(Some(&mine[i % 1024]), black_box(now)));
                }
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("concurrency_limit");
    g.bench_function("acquire_release_2_threads", |b| {
        b.iter_custom(|iters| {
            let limit = ConcurrencyLimit::new(1_000);
            two_threads(iters, |_, n| {
                for _ in 0..n {
                    black_box(limit.try_acquire());
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches);
