//! Criterion benchmarks of the cache's per-request work before a lookup: the rule match, the
//! request check, the tags and the primary key of an O2 list with a 3-parameter query. Before
//! measuring, a counting allocator (as in `tests/alloc_free.rs`) asserts that this path
//! allocates nothing once the per-thread key buffer has grown.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use zkgate::plugin::cache::config::{CacheConfig, CacheSection};
use zkgate::plugin::cache::store::TagSet;
use zkgate::section::{At, ConfigErrors};

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;

const PATH: &str = "/o2ims-infrastructureInventory/v2/resourcePools/5d1e2f30-7a4b-4c6d-8e9f-0a1b2c3d4e5f/resources";
const QUERY: &str = "filter=(eq,resourceTypeId,7c1f8a2e-0b3d-4e5f-9a6b-1c2d3e4f5a6b)&fields=resourceId,description&all_fields";

fn config() -> CacheConfig {
    let section: CacheSection =
        serde_yaml::from_str("{ profile: o2ims, store: o2, stale_if_error: 5m }").expect("section");
    let mut errors = ConfigErrors::default();
    section
        .build("o2", &At::root(), &mut errors)
        .expect("a valid cache section")
}

/// What the cache does for a GET before it looks the key up.
fn prepare(cfg: &CacheConfig, headers: &HeaderMap, tags: &mut TagSet, key: &mut Vec<u8>) -> usize {
    let m = cfg
        .rules
        .matched(PATH)
        .expect("the profile's resources rule");
    cfg.rules
        .on_request(&Method::GET, headers)
        .expect("a cacheable request");
    tags.clear();
    cfg.rules.tags(&m, PATH, tags);
    cfg.key
        .primary(b"o2.example.com", PATH, Some(QUERY), None, key);
    key.len()
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let headers = HeaderMap::new();
    let mut tags = TagSet::new();
    let mut key = Vec::new();
    prepare(&cfg, &headers, &mut tags, &mut key);
    let n = counting_alloc::allocations(|| {
        black_box(prepare(&cfg, &headers, &mut tags, &mut key));
    });
    assert_eq!(n, 0, "the cache's request path allocated {n} time(s)");

    c.bench_function(
        "cache: rule + request check + tags + key (3-param query)",
        |b| b.iter(|| black_box(prepare(&cfg, black_box(&headers), &mut tags, &mut key))),
    );
    c.bench_function("cache: primary key only (3-param query)", |b| {
        b.iter(|| {
            cfg.key.primary(
                black_box(b"o2.example.com"),
                black_box(PATH),
                black_box(Some(QUERY)),
                None,
                &mut key,
            );
            black_box(key.len())
        })
    });
    c.bench_function("cache: rule match among the o2ims profile", |b| {
        b.iter(|| black_box(cfg.rules.matched(black_box(PATH)).map(|m| m.id)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
