//! The store on a controlled clock, memory tier only: bound, evictions by reason, variants,
//! epochs, tags, prefixes, expiry.

use super::*;

const T0: u64 = 1_700_000_000_000;

fn store(memory: u64) -> Store {
    Store::new(&StoreConfig {
        name: format!("unit-{}", fastrand::u64(..)).into(),
        memory,
        redis: None,
    })
}

fn key(n: u32) -> KeyHash {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k[15] = 0xee;
    k
}

fn entry(n: u32, body: usize, tags: &[u64], target: &str) -> Entry {
    Entry {
        primary: key(n),
        variance: None,
        meta: (Bytes::from_static(b"meta-head"), Bytes::from_static(b"")),
        body: Bytes::from(vec![b'x'; body]),
        created_ms: T0,
        hard_expiry_ms: T0 + 60_000,
        tags: tags.iter().map(|t| TagId(*t)).collect(),
        class: StoreClass::Shared,
        target: target.into(),
        kind: 0,
    }
}

fn evicted(s: &Store, why: EvictReason) -> u64 {
    s.stats()
        .evictions
        .iter()
        .find(|(r, _)| *r == why.as_str())
        .map_or(0, |(_, n)| *n)
}

async fn has(s: &Store, n: u32, now: u64) -> bool {
    s.get(&key(n), now).await.is_some()
}

#[tokio::test]
async fn the_bound_holds_and_evictions_are_counted_as_capacity() {
    let s = store(1 << 20);
    let n = 3 * 1024;
    for i in 0..n {
        s.insert_at(key(i), entry(i, 1024, &[1, u64::from(i)], "/x"), T0);
        assert!(
            s.stats().bytes <= s.capacity(),
            "{} > {}",
            s.stats().bytes,
            s.capacity()
        );
    }
    let st = s.stats();
    assert!(
        st.entries > 100 && st.entries < u64::from(n),
        "{}",
        st.entries
    );
    assert_eq!(
        evicted(&s, EvictReason::Capacity),
        u64::from(n) - st.entries
    );
    // The tag index forgot what the cache evicted: the shared tag names only what is held.
    assert_eq!(s.memory.tagged(TagId(1)).len() as u64, st.entries);
    // An evicted entry's own tag is gone from the index altogether.
    let gone = (0..n)
        .find(|i| s.memory.get(&key(*i)).is_none())
        .expect("one evicted");
    assert!(s.memory.tagged(TagId(u64::from(gone))).is_empty());
}

#[tokio::test]
async fn an_entry_larger_than_the_bound_admits_is_refused_as_too_large() {
    let s = store(64 << 10);
    s.insert_at(key(1), entry(1, 100, &[], "/small"), T0);
    s.insert_at(key(2), entry(2, 200 << 10, &[], "/big"), T0);
    assert!(has(&s, 1, T0).await);
    assert!(!has(&s, 2, T0).await);
    assert_eq!(evicted(&s, EvictReason::TooLarge), 1);
    assert_eq!(evicted(&s, EvictReason::Capacity), 0);
}

#[tokio::test]
async fn the_primary_finds_the_newest_variant() {
    let s = store(1 << 20);
    let primary = key(100);
    let mut a = entry(100, 10, &[], "/v");
    a.variance = Some(key(1));
    let mut b = entry(100, 20, &[], "/v");
    b.variance = Some(key(2));
    s.insert_at(key(101), a, T0);
    s.insert_at(key(102), b, T0);
    let (e, tier) = s.get_primary(&primary, T0).await.expect("a variant");
    assert_eq!((e.body.len(), tier), (20, Tier::Memory));
    // Both variants stay reachable by their own keys.
    assert!(has(&s, 101, T0).await && has(&s, 102, T0).await);
    // The newest one gone: the primary finds nothing rather than a wrong variant.
    assert!(s.remove(&key(102), EvictReason::Purge));
    assert!(s.get_primary(&primary, T0).await.is_none());
    assert!(has(&s, 101, T0).await);
}

#[tokio::test]
async fn an_epoch_newer_than_the_entry_removes_it_at_its_next_read() {
    let s = store(1 << 20);
    s.insert_at(key(1), entry(1, 10, &[7], "/a"), T0);
    s.insert_at(key(2), entry(2, 10, &[8], "/b"), T0);
    // As the bus does: an epoch from another replica, no active purge yet.
    s.epochs().bump(TagId(7), T0 + 5);
    assert!(!has(&s, 1, T0 + 10).await);
    assert!(has(&s, 2, T0 + 10).await);
    assert_eq!(evicted(&s, EvictReason::Invalidation), 1);
    assert_eq!(s.stats().entries, 1);
    // An entry whose request was sent before the epoch is refused at insert (the in-flight
    // race); one sent after it is kept.
    s.insert_at(key(3), entry(3, 10, &[7], "/a"), T0 + 10);
    assert!(!has(&s, 3, T0 + 10).await);
    let mut later = entry(4, 10, &[7], "/a");
    later.created_ms = T0 + 6;
    s.insert_at(key(4), later, T0 + 10);
    assert!(has(&s, 4, T0 + 10).await);
    // The slack widens the window (clock skew between replicas).
    s.epochs().set_slack(1_000);
    assert!(!has(&s, 4, T0 + 10).await);
}

#[tokio::test]
async fn purge_by_tag_removes_its_members_only_and_moves_its_epoch() {
    let s = store(1 << 20);
    s.insert_at(key(1), entry(1, 10, &[1, 2], "/p/1"), T0);
    s.insert_at(key(2), entry(2, 10, &[2], "/p/2"), T0);
    s.insert_at(key(3), entry(3, 10, &[3], "/q"), T0);
    assert_eq!(
        s.purge_tags_at(&[TagId(2)], EvictReason::Invalidation, T0 + 1),
        2
    );
    assert!(!has(&s, 1, T0 + 2).await && !has(&s, 2, T0 + 2).await);
    assert!(has(&s, 3, T0 + 2).await);
    assert_eq!(evicted(&s, EvictReason::Invalidation), 2);
    assert_eq!(s.epochs().newest(&[TagId(2)]), T0 + 1);
    assert!(s.memory.tagged(TagId(1)).is_empty(), "no dangling member");
    // A purge of nothing costs nothing and counts nothing.
    assert_eq!(s.purge_tags_at(&[TagId(99)], EvictReason::Purge, T0 + 3), 0);
    assert_eq!(evicted(&s, EvictReason::Purge), 0);
}

#[tokio::test]
async fn purge_by_prefix_spares_later_entries_and_other_targets() {
    let s = store(1 << 20);
    s.insert_at(key(1), entry(1, 10, &[], "/pools/1"), T0);
    let mut newer = entry(2, 10, &[], "/pools/2");
    newer.created_ms = T0 + 100;
    s.insert_at(key(2), newer, T0 + 100);
    s.insert_at(key(3), entry(3, 10, &[], "/sites/1"), T0);
    assert_eq!(s.purge_prefix("/pools/", T0 + 50, EvictReason::Purge), 1);
    assert!(!has(&s, 1, T0 + 200).await);
    assert!(has(&s, 2, T0 + 200).await && has(&s, 3, T0 + 200).await);
    assert_eq!(evicted(&s, EvictReason::Purge), 1);
}

#[tokio::test]
async fn hard_expiry_hides_an_entry_and_the_sweep_reclaims_it() {
    let s = store(1 << 20);
    for i in 0..200 {
        let mut e = entry(i, 10, &[5], "/e");
        e.hard_expiry_ms = T0 + 1_000 + u64::from(i % 2) * 10_000;
        s.insert_at(key(i), e, T0);
    }
    assert!(has(&s, 0, T0 + 999).await);
    assert!(!has(&s, 0, T0 + 1_000).await, "gone at its hard expiry");
    assert_eq!(evicted(&s, EvictReason::Expired), 1);
    s.tick(T0 + 1_000);
    s.tick(T0 + 1_100);
    assert_eq!(s.stats().entries, 100);
    assert_eq!(evicted(&s, EvictReason::Expired), 100);
    assert_eq!(s.memory.tagged(TagId(5)).len(), 100);
    // An entry already expired at insert is not stored.
    let mut old = entry(500, 10, &[], "/e");
    old.hard_expiry_ms = T0;
    s.insert_at(key(500), old, T0 + 1);
    assert!(s.memory.get(&key(500)).is_none());
}

#[tokio::test]
async fn purge_all_empties_memory_and_session_loss_moves_no_epoch() {
    let s = store(1 << 20);
    for i in 0..10 {
        s.insert_at(key(i), entry(i, 10, &[1], "/a"), T0);
    }
    assert_eq!(s.purge_all_at(EvictReason::SessionLoss, T0 + 1), 10);
    assert_eq!(evicted(&s, EvictReason::SessionLoss), 10);
    assert_eq!(s.epochs().newest(&[TagId(1)]), 0);
    s.insert_at(key(1), entry(1, 10, &[1], "/a"), T0 + 2);
    assert!(
        has(&s, 1, T0 + 2).await,
        "made before the loss, still valid"
    );
    assert_eq!(s.purge_all_at(EvictReason::Purge, T0 + 3), 1);
    s.insert_at(key(2), entry(2, 10, &[1], "/a"), T0 + 4);
    assert!(!has(&s, 2, T0 + 4).await, "made before the purge: refused");
    assert_eq!(s.stats().entries, 0);
}

#[tokio::test]
async fn entries_lists_by_prefix_with_ages_and_sizes() {
    let s = store(1 << 20);
    s.insert_at(key(1), entry(1, 10, &[4], "/a/1"), T0);
    s.insert_at(key(2), entry(2, 10, &[], "/b/1"), T0);
    let mut later = entry(3, 300, &[], "/a/2");
    later.created_ms = T0 + 10;
    s.insert_at(key(3), later, T0 + 10);
    let list = s.entries("/a/", 10, T0 + 20);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].target, "/a/1");
    assert_eq!((list[0].age_ms, list[0].ttl_ms), (20, 59_980));
    assert_eq!(list[0].tags, vec![4]);
    assert!(list[1].size > list[0].size);
    assert_eq!(s.entries("", 1, T0 + 20).len(), 1);
    let st = s.stats();
    assert_eq!((st.entries, st.redis_up), (3, None));
}

#[tokio::test]
async fn hits_and_misses_are_counted() {
    let s = store(1 << 20);
    s.insert_at(key(1), entry(1, 10, &[], "/a"), T0);
    assert!(has(&s, 1, T0).await);
    assert!(!has(&s, 2, T0).await);
    let st = s.stats();
    assert_eq!((st.hits, st.misses, st.l2_hits), (1, 1, 0));
}

#[tokio::test]
async fn resize_shrinks_within_the_new_bound() {
    let s = store(8 << 20);
    for i in 0..4_000 {
        s.insert_at(key(i), entry(i, 1024, &[1], "/r"), T0);
    }
    let before = s.stats().entries;
    s.resize(1 << 20);
    let st = s.stats();
    assert!(st.bytes <= 1 << 20, "{}", st.bytes);
    assert!(st.entries < before);
    assert_eq!(s.memory.tagged(TagId(1)).len() as u64, st.entries);
}

/// `max_lifetime` caps an entry whose own lifetimes run longer, and the tick forgets the
/// epochs that no entry still stored can meet (the cap plus the slack), once a minute.
#[tokio::test]
async fn max_lifetime_caps_entries_and_bounds_the_epochs_remembered() {
    let s = store(1 << 20);
    s.set_max_lifetime(10_000);
    s.epochs().set_slack(1_000);
    let mut long = entry(1, 10, &[7], "/long");
    long.hard_expiry_ms = T0 + 3_600_000;
    s.insert_at(key(1), long, T0);
    assert!(has(&s, 1, T0 + 9_999).await);
    assert!(!has(&s, 1, T0 + 10_000).await, "past max_lifetime");

    s.epochs().bump(TagId(7), T0);
    s.epochs().bump(TagId(8), T0 + 65_000);
    // At T0 + 11 s an entry made at T0 may still be stored and meet tag 7's epoch (slack 1 s):
    // kept. At T0 + 71 s nothing made before T0 + 60 s survives: tag 7 goes, tag 8 stays.
    assert_eq!(s.forget_before(T0 + 11_000), T0);
    s.tick(T0 + 11_000);
    assert_eq!(s.epochs().len(), 2);
    s.tick(T0 + 71_000);
    assert_eq!(s.epochs().len(), 1);
    assert_eq!(s.epochs().newest(&[TagId(8)]), T0 + 65_000);
    // The next forgetting waits a minute.
    s.tick(T0 + 130_000);
    assert_eq!(s.epochs().len(), 1);
    s.tick(T0 + 131_000);
    assert_eq!(s.epochs().len(), 0);
}
