//! The one place zkgate calls `pingora::cache`, whose API is marked unstable: enabling the
//! cache with our storage and lock, keys, metas, and the storage traits over `store::Store`.
//!
//! What an entry needs besides Pingora's meta (its tags, target, kind, class, hard expiry, the
//! time its request was sent, whether to synthesize an `ETag`) travels from the response
//! filter to the miss handler in the meta's extensions, which Pingora hands to
//! [`Storage::get_miss_handler`] untouched.

use std::any::Any;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, ETAG, SET_COOKIE, TRANSFER_ENCODING, UPGRADE};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::storage::{HandleHit, HandleMiss, MissFinishType};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HitHandler,
    MissHandler, NoCacheReason, PurgeOutcome, PurgeTarget, PurgeType, RespCacheable, Storage,
};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::policy::Admission;
use super::status::CacheOutcome;
use super::store::{Entry, EvictReason, KeyHash, StoreClass, TagId};
use super::Shared;
use crate::plugin::Resources;

/// The cache lock of one store and how long readers wait on it.
#[derive(Clone, Copy)]
pub struct LockOptions {
    lock: &'static CacheKeyLockImpl,
    wait: Duration,
}

/// The lock of the store `store`, made the first time with writers timing out after `age`
/// (a process-lifetime value, as Pingora wants it `'static`: it survives reloads, so a new
/// `age` applies from the next process).
pub fn lock_for(resources: &Resources, store: &str, age: Duration, wait: Duration) -> LockOptions {
    let lock: &'static CacheLock = resources.get_or_init(store, || CacheLock::new(age));
    LockOptions { lock, wait }
}

/// Our storage as Pingora sees it: a leaked wrapper around the store of one name.
pub struct StoreBackend {
    shared: &'static Shared,
}

/// The storage of `shared`, made once per store name.
fn storage(resources: &Resources, shared: &'static Shared) -> &'static StoreBackend {
    resources.get_or_init(&shared.name, || StoreBackend { shared })
}

/// The adapter's handle on one store: its storage and its lock, ready for [`enable`].
#[derive(Clone, Copy)]
pub struct Enabler {
    storage: &'static StoreBackend,
    lock: Option<LockOptions>,
}

impl Enabler {
    pub fn new(resources: &Resources, shared: &'static Shared, lock: Option<LockOptions>) -> Self {
        Enabler {
            storage: storage(resources, shared),
            lock,
        }
    }
}

/// Turns the cache on for this request, with our storage and the store's lock.
pub fn enable(session: &mut Session, e: &Enabler) {
    let (lock, overrides) = match e.lock {
        Some(l) => {
            let mut o = CacheOptionOverrides::default();
            o.wait_timeout = Some(l.wait);
            // One wait, then the reader goes to the origin itself (nginx's
            // proxy_cache_lock_timeout): a stuck writer never queues readers twice.
            o.max_lock_retries = Some(1);
            (Some(l.lock), Some(o))
        }
        None => (None, None),
    };
    session.cache.enable(e.storage, None, None, lock, overrides);
}

/// The cache key: the route's namespace (a digest of what shapes its upstream's answers, so a
/// reload that changes them starts that route cold) framed before the primary bytes.
pub fn key(primary: &[u8], namespace: &[u8; 16]) -> CacheKey {
    let mut bytes = Vec::with_capacity(namespace.len() + primary.len());
    bytes.extend_from_slice(namespace);
    bytes.extend_from_slice(primary);
    CacheKey::new(bytes, "")
}

/// What an entry carries besides the meta, from the response filter to the miss handler.
#[derive(Clone, Debug)]
pub struct EntryFacts {
    pub tags: Box<[TagId]>,
    pub class: StoreClass,
    pub target: Box<str>,
    pub kind: u16,
    /// When the upstream request went out (ms since the epoch).
    pub created_ms: u64,
    /// The latest the entry may live to: freshness, stale windows and the token's `exp`.
    pub hard_expiry_ms: u64,
    pub synth_etag: bool,
    /// Bodies larger than this are streamed to the client and not stored.
    pub max_object_size: u64,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and `Set-Cookie` never enter the store: a stored head
/// is replayed to HTTP/2 clients too, which reset streams that carry them.
fn strip_for_storage(resp: &mut ResponseHeader) {
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE, SET_COOKIE] {
        resp.remove_header(&name);
    }
    for name in ["keep-alive", "proxy-connection", "proxy-authenticate"] {
        resp.remove_header(name);
    }
}

/// The meta of an admitted response, with `facts` for the store.
pub fn cacheable(
    adm: &Admission,
    resp: &ResponseHeader,
    now: SystemTime,
    facts: EntryFacts,
) -> RespCacheable {
    let mut header = resp.clone();
    strip_for_storage(&mut header);
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let mut meta = CacheMeta::new(
        now + adm.fresh,
        now,
        secs(adm.stale_while_revalidate),
        secs(adm.stale_if_error),
        header,
    );
    meta.extensions_mut().insert(facts);
    RespCacheable::Cacheable(meta)
}

/// Whether the declared length is over `max`: such an answer streams through unstored.
pub fn too_large(resp: &ResponseHeader, max: u64) -> bool {
    resp.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > max)
}

/// An uncacheable answer, for `reason`.
pub fn uncacheable(reason: &'static str) -> RespCacheable {
    RespCacheable::Uncacheable(NoCacheReason::Custom(reason))
}

/// The answer "too large to store", which keeps streaming.
pub fn uncacheable_too_large() -> RespCacheable {
    RespCacheable::Uncacheable(NoCacheReason::ResponseTooLarge)
}

/// A hit to be treated as a miss (the requester's token expired since the entry was stored).
pub fn force_miss() -> ForcedFreshness {
    ForcedFreshness::ForceMiss
}

/// A hit taken out of freshness at `expired_at`, its stale windows kept (degraded mode).
pub fn force_stale(expired_at: SystemTime) -> ForcedFreshness {
    ForcedFreshness::ForceExpiredServeStale {
        expired_at: Some(expired_at),
    }
}

/// When the entry of `meta` was stored.
pub fn created(meta: &CacheMeta) -> SystemTime {
    meta.created()
}

/// The `Vary` names of a stored response, for the variance.
pub fn vary_names<'m>(meta: &'m CacheMeta, out: &mut smallvec::SmallVec<[&'m str; 4]>) {
    for v in meta.headers().get_all(http::header::VARY) {
        let Ok(v) = v.to_str() else { continue };
        out.extend(v.split(',').map(str::trim).filter(|n| !n.is_empty()));
    }
}

/// The variance as Pingora wants it.
pub fn variance(hash: Option<[u8; 16]>) -> Option<HashBinary> {
    hash
}

/// What the cache did, from Pingora's phase of the request, once the answer's head is known.
/// `waited` tells a hit that waited on the lock.
pub fn outcome(session: &Session) -> CacheOutcome {
    match session.cache.phase() {
        CachePhase::Hit => {
            if session.cache.lock_duration().is_some() {
                CacheOutcome::Collapsed
            } else {
                CacheOutcome::Hit
            }
        }
        CachePhase::Stale | CachePhase::StaleUpdating => CacheOutcome::Stale,
        CachePhase::Miss => CacheOutcome::Miss,
        CachePhase::Expired => CacheOutcome::Expired,
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => CacheOutcome::Revalidated,
        CachePhase::Disabled(reason) => match reason {
            NoCacheReason::CacheLockTimeout | NoCacheReason::CacheLockRetryLimit => {
                CacheOutcome::LockTimeout
            }
            NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => {
                CacheOutcome::Uncacheable("too-large")
            }
            NoCacheReason::Custom(why) => CacheOutcome::Uncacheable(why),
            NoCacheReason::NeverEnabled => CacheOutcome::None,
            _ => CacheOutcome::Uncacheable("origin"),
        },
        CachePhase::Bypass => CacheOutcome::Uncacheable("bypass"),
        CachePhase::Uninit | CachePhase::CacheKey => CacheOutcome::None,
    }
}

/// Whether the lookup found an entry for the URI but not for the request's variant: Pingora set
/// the variance on the key only then (it keeps none for a primary slot that matched). Call it
/// from `cache_miss`, or once a lock wait gave up: by the time an origin answer is admitted,
/// Pingora has set the variance it is stored under.
pub fn vary_miss(session: &Session) -> bool {
    session
        .cache
        .maybe_cache_key()
        .is_some_and(|k| k.variance_bin().is_some())
}

/// Whether the request waited on the lock and then went to the origin on its own.
pub fn lock_timed_out(session: &Session) -> bool {
    matches!(
        session.cache.phase(),
        CachePhase::Disabled(NoCacheReason::CacheLockTimeout | NoCacheReason::CacheLockRetryLimit)
    )
}

/// Seconds of freshness left of the entry being served (negative once stale).
pub fn ttl(session: &Session, now: SystemTime) -> i64 {
    let Some(meta) = session.cache.maybe_cache_meta() else {
        return 0;
    };
    let until = meta.fresh_until();
    match until.duration_since(now) {
        Ok(left) => left.as_secs() as i64,
        Err(past) => -(past.duration().as_secs() as i64) - 1,
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn storage_error(context: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, context)
}

#[async_trait]
impl Storage for StoreBackend {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> pingora::Result<Option<(CacheMeta, HitHandler)>> {
        let now = super::store::wall_ms();
        let store = &self.shared.store;
        // Pingora's slots: the first lookup (no variance) reads the primary slot, where the
        // first variant stored lives and tells the `Vary` names; another variant lives under
        // the combined hash, which Pingora asks for next. `get_primary` (the newest variant of
        // any slot) would answer the first lookup with a variant that is not in its slot.
        let found = store.get(&key.combined_bin(), now).await;
        let Some((entry, _tier)) = found else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&entry.meta.0, &entry.meta.1)?;
        let hit = Hit {
            body: entry.body.clone(),
            done: false,
            range: None,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> pingora::Result<MissHandler> {
        let facts = meta
            .extensions()
            .get::<EntryFacts>()
            .cloned()
            .ok_or_else(|| storage_error("cache meta without entry facts"))?;
        let (internal, header) = meta.serialize()?;
        Ok(Box::new(Miss {
            shared: self.shared,
            key: key.combined_bin(),
            primary: key.primary_bin(),
            variance: key.variance_bin(),
            meta: (internal, header),
            body: BytesMut::new(),
            too_large: false,
            facts,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> pingora::Result<PurgeOutcome> {
        let removed = self
            .shared
            .store
            .remove(&target.key().combined_bin(), EvictReason::Purge);
        Ok(if removed {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    /// After a 304, the entry gets the merged head and new freshness; its body stays.
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> pingora::Result<bool> {
        let now = super::store::wall_ms();
        let hash = key.combined_bin();
        let Some((old, _)) = self.shared.store.get(&hash, now).await else {
            return Ok(false);
        };
        let (internal, header) = meta.serialize()?;
        let lifetime = old.hard_expiry_ms.saturating_sub(old.created_ms);
        let entry = Entry {
            primary: old.primary,
            variance: old.variance,
            meta: (internal.into(), header.into()),
            body: old.body.clone(),
            created_ms: now,
            hard_expiry_ms: now.saturating_add(lifetime),
            tags: old.tags.clone(),
            class: old.class,
            target: old.target.clone(),
            kind: old.kind,
        };
        self.shared.store.insert(hash, entry);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A stored body being served.
struct Hit {
    body: Bytes,
    done: bool,
    range: Option<(usize, usize)>,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> pingora::Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(match self.range {
            Some((start, end)) => self.body.slice(start..end),
            None => self.body.clone(),
        }))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> pingora::Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> pingora::Result<()> {
        let len = self.body.len();
        let end = end.map_or(len, |e| e.min(len));
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "range outside the body");
        }
        self.range = Some((start, end));
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// An origin body being stored as it streams to the client.
struct Miss {
    shared: &'static Shared,
    key: KeyHash,
    primary: KeyHash,
    variance: Option<KeyHash>,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
    /// Past `max_object_size`: the bytes are dropped, the client still gets them (trap 7).
    too_large: bool,
    facts: EntryFacts,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> pingora::Result<()> {
        if self.too_large {
            return Ok(());
        }
        if (self.body.len() + data.len()) as u64 > self.facts.max_object_size {
            self.too_large = true;
            self.body = BytesMut::new();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    /// Stores the entry. A body that outgrew `max_object_size` fails here only: Pingora logs
    /// it and releases the lock, and the client has had its whole answer.
    async fn finish(self: Box<Self>) -> pingora::Result<MissFinishType> {
        if self.too_large {
            return Error::e_explain(
                ErrorType::InternalError,
                "body over cache.max_object_size: streamed, not stored",
            );
        }
        let body = self.body.freeze();
        let meta = stored_meta(&self.meta, &body, self.facts.synth_etag)?;
        let size = body.len();
        let f = self.facts;
        let entry = Entry {
            primary: self.primary,
            variance: self.variance,
            meta,
            body,
            created_ms: f.created_ms,
            hard_expiry_ms: f.hard_expiry_ms,
            tags: f.tags,
            class: f.class,
            target: f.target,
            kind: f.kind,
        };
        self.shared.store.insert(self.key, entry);
        Ok(MissFinishType::Created(size))
    }
}

/// The meta as stored: the length of the whole body known, and the synthesized `ETag` (trap
/// 10: the answer that filled the entry went out without it, the hits after it carry it).
fn stored_meta(
    (internal, header): &(Vec<u8>, Vec<u8>),
    body: &Bytes,
    synth_etag: bool,
) -> pingora::Result<(Bytes, Bytes)> {
    let mut meta = CacheMeta::deserialize(internal, header)?;
    let head = meta.response_header_mut();
    head.insert_header(CONTENT_LENGTH, body.len())?;
    if synth_etag && !head.headers.contains_key(ETAG) {
        head.insert_header(ETAG, super::status::synthesized_etag(body))?;
    }
    let (internal, header) = meta.serialize()?;
    Ok((internal.into(), header.into()))
}

/// The instant of `ms` since the epoch.
pub fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Milliseconds since the epoch of `t`.
pub fn to_ms(t: SystemTime) -> u64 {
    ms(t)
}

/// Stores `body` under `key` the way the miss handler stores an origin's answer (the same
/// meta, synthesized `ETag` and bounds): the warm-up's way into the store. `meta` is what
/// [`cacheable`] made; `variance`, the request's variance when the response varies, is kept in
/// the meta and the entry takes the primary slot, as Pingora admits a first variant. `false`
/// for an uncacheable `meta`; a body over the entry's `max_object_size` is an error.
pub async fn admit(
    e: &Enabler,
    key: &CacheKey,
    meta: RespCacheable,
    variance: Option<[u8; 16]>,
    body: Bytes,
) -> pingora::Result<bool> {
    let RespCacheable::Cacheable(mut meta) = meta else {
        return Ok(false);
    };
    if let Some(v) = variance {
        meta.set_variance_key(v);
    }
    let span = pingora::cache::trace::Span::inactive().handle();
    let mut miss = e.storage.get_miss_handler(key, &meta, &span).await?;
    miss.write_body(body, true).await?;
    miss.finish().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::cache::store::StoreConfig;

    fn shared(name: &str) -> &'static Shared {
        let cfg = StoreConfig {
            name: name.into(),
            memory: 64 << 20,
            redis: None,
        };
        super::super::shared(&Resources::default(), &cfg)
    }

    fn facts(max: u64, synth_etag: bool) -> EntryFacts {
        let now = super::super::store::wall_ms();
        EntryFacts {
            tags: Box::new([]),
            class: StoreClass::MemoryOnly,
            target: "/x".into(),
            kind: 0,
            created_ms: now,
            hard_expiry_ms: now + 60_000,
            synth_etag,
            max_object_size: max,
        }
    }

    fn meta(facts: EntryFacts, etag: Option<&str>) -> CacheMeta {
        let mut resp = ResponseHeader::build(200, None).expect("head");
        resp.insert_header("transfer-encoding", "chunked")
            .expect("te");
        resp.insert_header("connection", "keep-alive")
            .expect("conn");
        if let Some(e) = etag {
            resp.insert_header(ETAG, e).expect("etag");
        }
        let adm = Admission {
            fresh: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(300),
            class: StoreClass::MemoryOnly,
            synth_etag: facts.synth_etag,
        };
        match cacheable(&adm, &resp, SystemTime::now(), facts) {
            RespCacheable::Cacheable(m) => m,
            RespCacheable::Uncacheable(r) => panic!("uncacheable: {r:?}"),
        }
    }

    async fn fill(
        storage: &'static StoreBackend,
        key: &CacheKey,
        meta: &CacheMeta,
        chunks: &[&'static [u8]],
    ) -> pingora::Result<MissFinishType> {
        let span = pingora::cache::trace::Span::inactive().handle();
        let mut miss = storage.get_miss_handler(key, meta, &span).await?;
        for (i, c) in chunks.iter().enumerate() {
            miss.write_body(Bytes::from_static(c), i + 1 == chunks.len())
                .await?;
        }
        miss.finish().await
    }

    async fn read_all(
        storage: &'static StoreBackend,
        key: &CacheKey,
    ) -> Option<(CacheMeta, Vec<u8>)> {
        let (meta, mut hit) = storage
            .lookup(key, &pingora::cache::trace::Span::inactive().handle())
            .await
            .ok()??;
        let mut body = Vec::new();
        while let Some(b) = hit.read_body().await.ok()? {
            body.extend_from_slice(&b);
        }
        Some((meta, body))
    }

    #[tokio::test]
    async fn a_stored_answer_gets_its_length_a_strong_etag_and_no_hop_by_hop_headers() {
        let shared = shared("adapter-etag");
        let storage = storage(&Resources::default(), shared);
        let key = key(b"GET /x", &[1; 16]);
        let m = meta(facts(1024, true), None);
        fill(storage, &key, &m, &[b"hello ", b"world"])
            .await
            .expect("stored");
        let (stored, body) = read_all(storage, &key).await.expect("a hit");
        assert_eq!(body, b"hello world");
        let h = stored.headers();
        assert_eq!(
            h.get(CONTENT_LENGTH).map(|v| v.as_bytes()),
            Some(&b"11"[..])
        );
        let etag = super::super::status::synthesized_etag(b"hello world");
        assert_eq!(h.get(ETAG).map(|v| v.as_bytes()), Some(etag.as_bytes()));
        assert!(h.get(TRANSFER_ENCODING).is_none() && h.get(CONNECTION).is_none());
    }

    #[tokio::test]
    async fn the_origins_etag_is_kept() {
        let shared = shared("adapter-origin-etag");
        let storage = storage(&Resources::default(), shared);
        let key = key(b"GET /y", &[1; 16]);
        let m = meta(facts(1024, true), Some("\"v1\""));
        fill(storage, &key, &m, &[b"body"]).await.expect("stored");
        let (stored, _) = read_all(storage, &key).await.expect("a hit");
        assert_eq!(
            stored.headers().get(ETAG).map(|v| v.as_bytes()),
            Some(&b"\"v1\""[..])
        );
    }

    /// Trap 7: past max_object_size the miss handler keeps accepting (the client gets every
    /// byte), stores nothing, and fails only at finish.
    #[tokio::test]
    async fn a_body_over_the_bound_is_accepted_and_not_stored() {
        let shared = shared("adapter-too-large");
        let storage = storage(&Resources::default(), shared);
        let key = key(b"GET /big", &[1; 16]);
        let m = meta(facts(8, false), None);
        let span = pingora::cache::trace::Span::inactive().handle();
        let mut miss = storage
            .get_miss_handler(&key, &m, &span)
            .await
            .expect("handler");
        for chunk in [&b"12345"[..], b"67890", b"more"] {
            miss.write_body(Bytes::from_static(chunk), false)
                .await
                .expect("accepted");
        }
        assert!(miss.finish().await.is_err(), "fails at finish only");
        assert!(read_all(storage, &key).await.is_none(), "nothing stored");
    }

    #[tokio::test]
    async fn a_hit_serves_a_range_of_its_body() {
        let mut hit = Hit {
            body: Bytes::from_static(b"0123456789"),
            done: false,
            range: None,
        };
        assert!(hit.can_seek());
        hit.seek(2, Some(5)).expect("in range");
        assert_eq!(
            hit.read_body().await.expect("read").as_deref(),
            Some(&b"234"[..])
        );
        assert_eq!(hit.read_body().await.expect("read"), None);
        assert!(hit.seek(8, Some(3)).is_err());
    }

    /// The warm-up's way in: what `admit` stores reads back as a miss handler's entry would,
    /// its variance kept in the meta for Pingora's variant check.
    #[tokio::test]
    async fn an_admitted_answer_reads_back_like_a_stored_miss() {
        let shared = shared("adapter-admit");
        let e = Enabler::new(&Resources::default(), shared, None);
        let warm = key(b"GET /warm", &[1; 16]);
        let m = RespCacheable::Cacheable(meta(facts(1024, true), None));
        let body = Bytes::from_static(b"warm");
        assert!(admit(&e, &warm, m, Some([7; 16]), body)
            .await
            .expect("admitted"));
        let (stored, body) = read_all(e.storage, &warm).await.expect("a hit");
        assert_eq!(body, b"warm");
        assert_eq!(stored.variance(), Some([7; 16]));
        let etag = super::super::status::synthesized_etag(b"warm");
        assert_eq!(
            stored.headers().get(ETAG).map(|v| v.as_bytes()),
            Some(etag.as_bytes())
        );
        let other = key(b"GET /cold", &[1; 16]);
        let refused = admit(&e, &other, uncacheable("status"), None, Bytes::new()).await;
        assert!(!refused.expect("no error"));
        assert!(read_all(e.storage, &other).await.is_none());
    }

    #[test]
    fn keys_of_two_routes_differ_for_the_same_request() {
        let a = key(b"GET host /p", &[1; 16]);
        let b = key(b"GET host /p", &[2; 16]);
        assert_ne!(a.primary_bin(), b.primary_bin());
        assert_eq!(a.primary_bin(), key(b"GET host /p", &[1; 16]).primary_bin());
    }
}
