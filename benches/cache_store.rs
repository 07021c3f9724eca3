//! The cache store's memory tier: hit cost on one thread and on four, and the bytes an entry
//! costs beyond its body (live bytes from a counting allocator over 100k entries, as
//! `tests/alloc_free.rs` counts allocations). TinyUFO, the other candidate of the design, is
//! not in the lock file (no pingora crate here depends on it), so quick_cache is measured alone.
//! And Pingora's meta of an entry, read back from its stored bytes on every hit and written on
//! every store: its response header goes in a zstd frame (pingora-header-serde; stored, not
//! compressed, since that crate's patch 2), so this is where zstd's decoder and its build
//! options (`.cargo/config.toml`) show.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use zkgate::plugin::cache::store::memory::{weight, ENTRY_OVERHEAD, TAG_OVERHEAD};
use zkgate::plugin::cache::store::{Entry, KeyHash, Store, StoreClass, StoreConfig, TagId};

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;

const N: u32 = 100_000;
const NOW: u64 = 1_700_000_000_000;

fn key(n: u32) -> KeyHash {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k[4..8].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
    k
}

/// An entry whose body and meta share one buffer with every other entry, so the live bytes
/// the store adds are its own: the entry, the target, the tags, the cache and the indexes.
fn entry(n: u32, body: &Bytes, meta: &Bytes) -> Entry {
    Entry {
        primary: key(n),
        variance: None,
        meta: (meta.clone(), Bytes::new()),
        body: body.clone(),
        created_ms: NOW,
        hard_expiry_ms: NOW + 600_000 + u64::from(n),
        tags: [1, 2, 3, u64::from(n)].map(TagId).into(),
        class: StoreClass::Shared,
        target: format!("/o2ims-infrastructureInventory/v1/resourcePools/{n:08}").into(),
        kind: 2,
    }
}

fn store(bound: u64) -> Store {
    Store::new(&StoreConfig {
        name: "bench".into(),
        memory: bound,
        redis: None,
    })
}

fn filled(body: usize) -> (Store, i64) {
    let body = Bytes::from(vec![b'x'; body]);
    let meta = Bytes::from(vec![b'm'; 300]);
    let s = store(u64::MAX / 4);
    let before = counting_alloc::live_bytes();
    for n in 0..N {
        s.insert_at(key(n), entry(n, &body, &meta), NOW);
    }
    let added = counting_alloc::live_bytes() - before;
    assert_eq!(s.stats().entries, u64::from(N));
    (s, added as i64)
}

/// Prints the live bytes per entry beyond body and meta, against what the weight charges.
fn bytes_per_entry() {
    for body in [200usize, 20 << 10] {
        let (s, added) = filled(body);
        let per = added as f64 / f64::from(N);
        let sample = entry(7, &Bytes::from(vec![0; body]), &Bytes::from(vec![0; 300]));
        let charged = weight(&sample) - body as u64 - 300;
        println!(
            "cache_store/bytes_per_entry body={body}: {per:.0} live bytes beyond body and meta \
             (target {} B, 4 tags); the weight charges {charged} (ENTRY_OVERHEAD {ENTRY_OVERHEAD} \
             + 4 x TAG_OVERHEAD {TAG_OVERHEAD} + target)",
            sample.target.len()
        );
        drop(s);
    }
}

fn get(s: &Store, k: &KeyHash) -> bool {
    s.get(k, NOW + 1).now_or_never().flatten().is_some()
}

fn hits(c: &mut Criterion) {
    bytes_per_entry();
    for body in [200usize, 20 << 10] {
        let (s, _) = filled(body);
        let s = Arc::new(s);
        let mut i = 0u32;
        c.bench_function(&format!("cache_store/hit/1-thread/body={body}"), |b| {
            b.iter(|| {
                i = (i + 7919) % N;
                black_box(get(&s, &key(i)))
            })
        });
        c.bench_function(&format!("cache_store/hit/4-threads/body={body}"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(4);
                let start = Instant::now();
                let threads: Vec<_> = (0..4u32)
                    .map(|t| {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            let mut i = t * 1_000;
                            for _ in 0..per {
                                i = (i + 7919) % N;
                                black_box(get(&s, &key(i)));
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    let _ = t.join();
                }
                // The wall time of `iters` gets shared by four threads: the throughput view
                // (criterion divides by `iters`; dividing by 4 as well counted each get 4x).
                start.elapsed()
            })
        });
        c.bench_function(&format!("cache_store/miss/1-thread/body={body}"), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                black_box(get(&s, &key(N + i)))
            })
        });
    }
}

/// A meta as an O2 IMS answer leaves it: a JSON body's header, fresh for a minute.
fn meta() -> CacheMeta {
    let mut h = ResponseHeader::build(200, Some(8)).expect("a response header");
    for (name, value) in [
        ("content-type", "application/json"),
        ("content-length", "2048"),
        ("cache-control", "max-age=60"),
        ("etag", "\"5f2c9d1e-7a3b\""),
        ("date", "Sun, 06 Dec 2026 10:00:00 GMT"),
        ("vary", "Authorization"),
        ("x-request-id", "0b3c1f4e-8a2d-4c61-9e57-3d2a6b1f0c88"),
    ] {
        h.append_header(name, value).expect("a header");
    }
    let now = std::time::SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
}

fn metas(c: &mut Criterion) {
    let m = meta();
    let (internal, header) = m.serialize().expect("serialize");
    println!("cache_meta: the header stored in {} bytes", header.len());
    c.bench_function("cache_meta/serialize", |b| {
        b.iter(|| black_box(m.serialize().expect("serialize")))
    });
    c.bench_function("cache_meta/deserialize", |b| {
        b.iter(|| black_box(CacheMeta::deserialize(&internal, &header).expect("deserialize")))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = hits, metas
}
criterion_main!(benches);
