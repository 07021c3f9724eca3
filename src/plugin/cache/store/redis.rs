//! The Redis tier: entries shared by every replica, keys of one store in one hash slot, tags as
//! Redis sets, and a breaker that skips Redis while it is down.
//!
//! Nothing here is on a client's path except the read after a memory miss, which is bounded by
//! `timeout` and skipped while the breaker is open. Writes and purges are spawned. Every key of
//! a store is `zkgate:{<store>}:...`, so a multi-key script stays in one slot on a cluster.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};
use serde::{Deserialize, Serialize};

use super::metrics::{RedisMetrics, RedisOp};
use super::{Entry, KeyHash, StoreClass, TagId};
use crate::section::{At, ConfigErrors, Dur, Size};

/// `cache.redis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: String,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub max_object_size: Option<Size>,
    #[serde(default)]
    pub down_after: Option<u32>,
    #[serde(default)]
    pub retry_after: Option<Dur>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30);
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 1 << 20;
pub const DEFAULT_DOWN_AFTER: u32 = 3;
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The built Redis tier settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisConfig {
    pub url: String,
    /// Per command, connecting included.
    pub timeout: Duration,
    /// Larger entries stay in memory only.
    pub max_object_size: u64,
    /// Failures in a row that open the breaker.
    pub down_after: u32,
    /// How long the breaker skips Redis before trying again.
    pub retry_after: Duration,
}

impl RedisSection {
    pub fn build(&self, at: &At, errors: &mut ConfigErrors) -> Option<RedisConfig> {
        let before = errors.len();
        match self.url.as_str().into_connection_info() {
            Ok(_) if self.url.starts_with("rediss:") => errors.push(
                at.key("url"),
                "rediss:// (TLS) is not built in; use redis:// on a trusted network or a local TLS tunnel",
            ),
            Ok(_) => {}
            Err(e) => errors.push(
                at.key("url"),
                format!("not a Redis URL like redis://127.0.0.1:6379/0: {e}"),
            ),
        }
        let timeout = self.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        if timeout.is_zero() || timeout > Duration::from_secs(10) {
            errors.push(
                at.key("timeout"),
                "must be above 0 and at most 10s: a miss waits this long for Redis",
            );
        }
        let max_object_size = self
            .max_object_size
            .map_or(DEFAULT_MAX_OBJECT_SIZE, |s| s.0);
        if max_object_size == 0 || max_object_size > 512 << 20 {
            errors.push(
                at.key("max_object_size"),
                "must be above 0 and at most 512MiB (Redis's own value limit)",
            );
        }
        let down_after = self.down_after.unwrap_or(DEFAULT_DOWN_AFTER);
        if down_after == 0 {
            errors.push(at.key("down_after"), "must be at least 1");
        }
        let retry_after = self.retry_after.map_or(DEFAULT_RETRY_AFTER, |d| d.0);
        if retry_after.is_zero() {
            errors.push(at.key("retry_after"), "must be above 0");
        }
        (errors.len() == before).then(|| RedisConfig {
            url: self.url.clone(),
            timeout,
            max_object_size,
            down_after,
            retry_after,
        })
    }
}

/// Opens after `down_after` failures in a row; lets one try through every `retry_after`.
pub struct Breaker {
    fails: AtomicU32,
    open_until_ms: AtomicU64,
    down_after: u32,
    retry_after_ms: u64,
}

impl Breaker {
    pub fn new(down_after: u32, retry_after: Duration) -> Breaker {
        Breaker {
            fails: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            down_after: down_after.max(1),
            retry_after_ms: retry_after.as_millis() as u64,
        }
    }

    /// Whether a command may be sent at `now_ms`. When open and due, the first caller gets
    /// the one try and pushes the next one a `retry_after` further.
    pub fn allow(&self, now_ms: u64) -> bool {
        if self.fails.load(Ordering::Relaxed) < self.down_after {
            return true;
        }
        let until = self.open_until_ms.load(Ordering::Relaxed);
        now_ms >= until
            && self
                .open_until_ms
                .compare_exchange(
                    until,
                    now_ms + self.retry_after_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    pub fn success(&self) {
        self.fails.store(0, Ordering::Relaxed);
    }

    /// Records a failure; `true` when it opened the breaker.
    pub fn failure(&self, now_ms: u64) -> bool {
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.down_after {
            self.open_until_ms
                .fetch_max(now_ms + self.retry_after_ms, Ordering::Relaxed);
        }
        n == self.down_after
    }

    pub fn open(&self) -> bool {
        self.fails.load(Ordering::Relaxed) >= self.down_after
    }
}

/// Writes an entry: the value, the primary's newest variant, and the entry's key into each
/// tag's set (whose life is stretched to the entry's). Two members of each set are checked
/// and dropped when their entry is gone, so a set busy for ever does not grow for ever.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
local ttl = tonumber(ARGV[2])
for i = 3, #KEYS do
  for _, m in ipairs(redis.call('SRANDMEMBER', KEYS[i], 2)) do
    if redis.call('EXISTS', m) == 0 then redis.call('SREM', KEYS[i], m) end
  end
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
",
    )
});

/// Removes every entry named by the given tag sets, and the sets.
static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = 0
for i = 1, #KEYS do
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    n = n + redis.call('UNLINK', m)
  end
  redis.call('UNLINK', KEYS[i])
end
return n
",
    )
});

const FORMAT: u8 = 1;

/// Frames an entry: version, times, keys, kind, tags, target, meta, body.
pub fn encode(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + e.tags.len() * 8 + e.target.len() + e.meta.0.len() + e.meta.1.len() + e.body.len(),
    );
    out.push(FORMAT);
    out.extend_from_slice(&e.created_ms.to_be_bytes());
    out.extend_from_slice(&e.hard_expiry_ms.to_be_bytes());
    out.extend_from_slice(&e.primary);
    match &e.variance {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(v);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&e.kind.to_be_bytes());
    out.extend_from_slice(&(e.tags.len() as u16).to_be_bytes());
    for t in e.tags.iter() {
        out.extend_from_slice(&t.0.to_be_bytes());
    }
    for part in [e.target.as_bytes(), &e.meta.0, &e.meta.1] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&e.body);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn key(&mut self) -> Option<KeyHash> {
        self.take(16)?.try_into().ok()
    }
    fn part(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The head of a framed entry: what a purge by prefix needs.
pub struct Head {
    pub created_ms: u64,
    pub target: String,
}

/// Reads what `encode` wrote; `None` for anything else (another version, a truncated value).
pub fn decode(value: Bytes) -> Option<Entry> {
    let mut r = Reader(&value);
    if r.u8()? != FORMAT {
        return None;
    }
    let created_ms = r.u64()?;
    let hard_expiry_ms = r.u64()?;
    let primary = r.key()?;
    let variance = match r.u8()? {
        0 => None,
        1 => Some(r.key()?),
        _ => return None,
    };
    let kind = r.u16()?;
    let n = r.u16()? as usize;
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        tags.push(TagId(r.u64()?));
    }
    let target = std::str::from_utf8(r.part()?).ok()?.into();
    // Slices of the one value Redis returned: no copy of the meta or the body.
    let at = |r: &Reader<'_>| value.len() - r.0.len();
    let m0 = r.u32()? as usize;
    let start0 = at(&r);
    r.take(m0)?;
    let m1 = r.u32()? as usize;
    let start1 = at(&r);
    r.take(m1)?;
    let start_body = at(&r);
    let meta0 = value.slice(start0..start0 + m0);
    let meta1 = value.slice(start1..start1 + m1);
    let body = value.slice(start_body..);
    Some(Entry {
        primary,
        variance,
        meta: (meta0, meta1),
        body,
        created_ms,
        hard_expiry_ms,
        tags: tags.into_boxed_slice(),
        class: StoreClass::Shared,
        target,
        kind,
    })
}

/// Reads the head of a framed entry from its first bytes.
pub fn decode_head(value: &[u8]) -> Option<Head> {
    let mut r = Reader(value);
    if r.u8()? != FORMAT {
        return None;
    }
    let created_ms = r.u64()?;
    r.u64()?;
    r.key()?;
    if r.u8()? == 1 {
        r.key()?;
    }
    r.u16()?;
    let n = r.u16()? as usize;
    r.take(n * 8)?;
    let target = std::str::from_utf8(r.part()?).ok()?.to_owned();
    Some(Head { created_ms, target })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &[u8]) -> Option<KeyHash> {
    let mut out = [0u8; 16];
    if s.len() != 32 {
        return None;
    }
    for (i, pair) in s.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Logs at most one warning per 10 s per store, with how many were left out.
struct LogLimit {
    last_ms: AtomicU64,
    quiet: AtomicU64,
}

const LOG_EVERY_MS: u64 = 10_000;

/// The Redis tier of one store.
pub struct RedisTier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Box<str>,
    /// `zkgate:{<store>}:`
    prefix: Box<str>,
    cfg: RedisConfig,
    client: Option<redis::Client>,
    conn: OnceLock<Option<ConnectionManager>>,
    breaker: Breaker,
    metrics: RedisMetrics,
    log: LogLimit,
    probing: AtomicBool,
    up: AtomicBool,
    /// A size sample is running.
    sampling: AtomicBool,
    /// When the last size sample started (ms since the epoch; 0: never).
    sampled_ms: AtomicU64,
}

/// How often the tick samples the store's size in Redis (`stored_bytes`/`entries`, tier
/// `redis`): a walk of its entry set, in steps of `SAMPLE_STEP` keys, off the request path.
pub const SAMPLE_EVERY_MS: u64 = 30_000;
/// Keys one step of the size sample looks at: one short script, so Redis is never held long.
const SAMPLE_STEP: usize = 500;

/// One step of the size sample: the lengths of a batch of the store's entry keys (from its
/// `all` set), dropping from the set the keys that expired.
static SAMPLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local r = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local n, bytes = 0, 0
for _, m in ipairs(r[2]) do
  local len = redis.call('STRLEN', m)
  if len == 0 then redis.call('SREM', KEYS[1], m) else n = n + 1; bytes = bytes + len end
end
return {r[1], n, bytes}
",
    )
});

impl RedisTier {
    pub fn new(store: &str, cfg: &RedisConfig) -> RedisTier {
        let metrics = RedisMetrics::new(store);
        let client = match redis::Client::open(cfg.url.as_str()) {
            Ok(c) => Some(c),
            Err(e) => {
                log::warn!("cache store {store}: Redis tier off: {e}");
                None
            }
        };
        metrics.up.set(0);
        RedisTier {
            inner: Arc::new(Inner {
                store: store.into(),
                prefix: format!("zkgate:{{{store}}}:").into(),
                cfg: cfg.clone(),
                client,
                conn: OnceLock::new(),
                breaker: Breaker::new(cfg.down_after, cfg.retry_after),
                metrics,
                log: LogLimit {
                    last_ms: AtomicU64::new(0),
                    quiet: AtomicU64::new(0),
                },
                probing: AtomicBool::new(false),
                up: AtomicBool::new(false),
                sampling: AtomicBool::new(false),
                sampled_ms: AtomicU64::new(0),
            }),
        }
    }

    /// Whether the last command succeeded and the breaker is closed.
    pub fn up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// The entry under `key` (its tags and times not checked yet), or `None` on a miss, an
    /// error, a timeout or an open breaker.
    pub async fn get(&self, key: &KeyHash) -> Option<Entry> {
        let i = &self.inner;
        let value: Option<Vec<u8>> = i
            .run(
                RedisOp::Get,
                |mut c, k| async move { redis::cmd("GET").arg(k).query_async(&mut c).await },
                i.entry_key(key),
            )
            .await?;
        decode(Bytes::from(value?))
    }

    /// The newest variant stored under `primary`, with its key.
    pub async fn get_primary(&self, primary: &KeyHash) -> Option<(KeyHash, Entry)> {
        let i = &self.inner;
        let key: Option<Vec<u8>> = i
            .run(
                RedisOp::Get,
                |mut c, k| async move { redis::cmd("GET").arg(k).query_async(&mut c).await },
                i.primary_key(primary),
            )
            .await?;
        let key = unhex(&key?)?;
        Some((key, self.get(&key).await?))
    }

    /// Writes `entry` in the background (never a `MemoryOnly` one, never past the size cap).
    pub fn spawn_put(&self, key: KeyHash, entry: Arc<Entry>) {
        if entry.class != StoreClass::Shared {
            return;
        }
        let ttl = entry.hard_expiry_ms.saturating_sub(wall_ms());
        if ttl == 0 {
            return;
        }
        let value = encode(&entry);
        if value.len() as u64 > self.inner.cfg.max_object_size {
            return;
        }
        let i = self.inner.clone();
        spawn(async move {
            let mut inv = PUT.prepare_invoke();
            inv.key(i.entry_key(&key))
                .key(i.primary_key(&entry.primary));
            inv.key(i.all_key());
            for t in entry.tags.iter() {
                inv.key(i.tag_key(*t));
            }
            inv.arg(value).arg(ttl).arg(hex(&key));
            i.run(
                RedisOp::Set,
                |mut c, inv| async move { inv.invoke_async::<i64>(&mut c).await },
                inv,
            )
            .await;
        });
    }

    pub fn spawn_remove(&self, key: KeyHash) {
        let i = self.inner.clone();
        spawn(async move {
            let k = i.entry_key(&key);
            i.run(RedisOp::Purge, |mut c, k| async move {
                redis::cmd("UNLINK").arg(k).query_async::<i64>(&mut c).await
            }, k)
            .await;
        });
    }

    /// Removes every entry holding one of `tags` (`None`: every entry of the store).
    pub fn spawn_purge(&self, tags: Option<Vec<TagId>>) {
        let i = self.inner.clone();
        spawn(async move {
            let mut inv = PURGE.prepare_invoke();
            match &tags {
                Some(tags) => {
                    for t in tags {
                        inv.key(i.tag_key(*t));
                    }
                }
                None => {
                    inv.key(i.all_key());
                }
            }
            i.run(
                RedisOp::Purge,
                |mut c, inv| async move { inv.invoke_async::<i64>(&mut c).await },
                inv,
            )
            .await;
        });
    }

    /// Removes the entries whose target starts with `prefix` (is `prefix` when `exact`),
    /// created before `older_than_ms`: a scan of the store's entries, reading only their heads
    /// (an admin purge, not a hot path).
    pub fn spawn_purge_prefix(&self, prefix: String, exact: bool, older_than_ms: u64) {
        let i = self.inner.clone();
        spawn(async move {
            let Some(mut c) = i.connection() else { return };
            let pattern = format!("{}e:*", i.prefix);
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500);
                let scan = scan.query_async::<(u64, Vec<String>)>(&mut c);
                let Ok(Ok((next, keys))) = tokio::time::timeout(i.cfg.timeout * 10, scan).await
                else {
                    i.failed(RedisOp::Purge, "SCAN failed or timed out");
                    return;
                };
                for k in keys {
                    let mut head = redis::cmd("GETRANGE");
                    head.arg(&k).arg(0).arg(8191);
                    let head = head.query_async::<Vec<u8>>(&mut c);
                    let Ok(Ok(head)) = tokio::time::timeout(i.cfg.timeout, head).await else {
                        continue;
                    };
                    if let Some(h) = decode_head(&head) {
                        let hit = if exact {
                            h.target == prefix
                        } else {
                            h.target.starts_with(&prefix)
                        };
                        if hit && h.created_ms < older_than_ms {
                            let _ = tokio::time::timeout(
                                i.cfg.timeout,
                                redis::cmd("UNLINK").arg(&k).query_async::<i64>(&mut c),
                            )
                            .await;
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        });
    }

    /// The breaker's probe: while Redis is down (or never reached), one `PING` per
    /// `retry_after`, so `redis_up` recovers without waiting for traffic.
    pub fn tick(&self, now_ms: u64) {
        let i = &self.inner;
        if i.client.is_none() {
            return;
        }
        if i.up.load(Ordering::Relaxed) {
            self.sample_due(now_ms);
            return;
        }
        if i.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = now_ms;
        let inner = self.inner.clone();
        let spawned = spawn(async move {
            inner
                .run(RedisOp::Get, |mut c, ()| async move {
                    redis::cmd("PING").query_async::<String>(&mut c).await
                }, ())
                .await;
            inner.probing.store(false, Ordering::Release);
        });
        if !spawned {
            i.probing.store(false, Ordering::Release);
        }
    }
}

impl RedisTier {
    /// Starts a size sample when the last one started [`SAMPLE_EVERY_MS`] ago (or never), and
    /// none is running.
    fn sample_due(&self, now_ms: u64) {
        let i = &self.inner;
        let last = i.sampled_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < SAMPLE_EVERY_MS {
            return;
        }
        if i.sampling.swap(true, Ordering::AcqRel) {
            return;
        }
        i.sampled_ms.store(now_ms.max(1), Ordering::Relaxed);
        let inner = self.inner.clone();
        let spawned = spawn(async move {
            if let Some((entries, bytes)) = inner.sample().await {
                inner
                    .metrics
                    .entries
                    .set(i64::try_from(entries).unwrap_or(i64::MAX));
                inner
                    .metrics
                    .bytes
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            inner.sampling.store(false, Ordering::Release);
        });
        if !spawned {
            i.sampling.store(false, Ordering::Release);
        }
    }
}

/// Spawns on the current runtime; `false` outside one (nothing to write with then).
fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(f);
            true
        }
        Err(_) => false,
    }
}

impl Inner {
    fn entry_key(&self, key: &KeyHash) -> String {
        format!("{}e:{}", self.prefix, hex(key))
    }
    fn primary_key(&self, primary: &KeyHash) -> String {
        format!("{}p:{}", self.prefix, hex(primary))
    }
    fn tag_key(&self, tag: TagId) -> String {
        format!("{}t:{:016x}", self.prefix, tag.0)
    }
    fn all_key(&self) -> String {
        format!("{}all", self.prefix)
    }

    /// The connection manager, made on first use (it needs a runtime) and reconnecting by itself.
    fn connection(&self) -> Option<ConnectionManager> {
        self.conn
            .get_or_init(|| {
                let client = self.client.clone()?;
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.cfg.timeout.max(Duration::from_millis(100))))
                    .set_response_timeout(Some(self.cfg.timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(500));
                match ConnectionManager::new_lazy_with_config(client, cfg) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        log::warn!("cache store {}: Redis tier off: {e}", self.store);
                        None
                    }
                }
            })
            .clone()
    }

    /// The entries of the store in Redis and their bytes, walked in steps; `None` when a step
    /// failed (the gauges then keep the last sample).
    async fn sample(&self) -> Option<(u64, u64)> {
        let (mut entries, mut bytes) = (0u64, 0u64);
        let mut cursor = String::from("0");
        loop {
            let mut inv = SAMPLE.prepare_invoke();
            inv.key(self.all_key()).arg(&cursor).arg(SAMPLE_STEP);
            let (next, n, b): (String, u64, u64) = self
                .run(
                    RedisOp::Get,
                    |mut c, inv| async move { inv.invoke_async(&mut c).await },
                    inv,
                )
                .await?;
            entries += n;
            bytes += b;
            if next == "0" {
                return Some((entries, bytes));
            }
            cursor = next;
        }
    }

    /// Runs one command under the breaker and the timeout; `None` when skipped or failed.
    async fn run<A, T, F, Fut>(&self, op: RedisOp, f: F, arg: A) -> Option<T>
    where
        F: FnOnce(ConnectionManager, A) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow(wall_ms()) {
            return None;
        }
        let conn = self.connection()?;
        match tokio::time::timeout(self.cfg.timeout, f(conn, arg)).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                if !self.up.swap(true, Ordering::Relaxed) {
                    self.metrics.up.set(1);
                    log::info!("cache store {}: Redis tier up", self.store);
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(op, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(op, "timed out");
                None
            }
        }
    }

    fn failed(&self, op: RedisOp, why: &str) {
        let now = wall_ms();
        self.metrics.error(op);
        self.breaker.failure(now);
        if self.breaker.open() && self.up.swap(false, Ordering::Relaxed) {
            self.metrics.up.set(0);
        }
        let last = self.log.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY_MS
            && self
                .log
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let quiet = self.log.quiet.swap(0, Ordering::Relaxed);
            log::warn!(
                "cache store {}: Redis {op:?} failed: {why} ({} more failures not logged; memory and the origin serve meanwhile)",
                self.store,
                quiet
            );
        } else {
            self.log.quiet.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            primary: [1; 16],
            variance: Some([2; 16]),
            meta: (Bytes::from_static(b"m0"), Bytes::from_static(b"meta1")),
            body: Bytes::from_static(b"the body"),
            created_ms: 1_000,
            hard_expiry_ms: 9_000,
            tags: vec![TagId(7), TagId(u64::MAX)].into_boxed_slice(),
            class: StoreClass::Shared,
            target: "/a/b?c=d".into(),
            kind: 3,
        }
    }

    #[test]
    fn frames_round_trip_and_refuse_garbage() {
        let e = entry();
        let v = encode(&e);
        let d = decode(Bytes::from(v.clone())).expect("decodes");
        assert_eq!(d.primary, e.primary);
        assert_eq!(d.variance, e.variance);
        assert_eq!(d.meta, e.meta);
        assert_eq!(d.body, e.body);
        assert_eq!((d.created_ms, d.hard_expiry_ms, d.kind), (1_000, 9_000, 3));
        assert_eq!(&*d.tags, &*e.tags);
        assert_eq!(&*d.target, "/a/b?c=d");
        let h = decode_head(&v[..82]).expect("head");
        assert_eq!((h.created_ms, h.target.as_str()), (1_000, "/a/b?c=d"));
        for cut in 0..v.len() - e.body.len() {
            assert!(decode(Bytes::copy_from_slice(&v[..cut])).is_none(), "{cut}");
        }
        let mut other = v.clone();
        other[0] = 9;
        assert!(decode(Bytes::from(other)).is_none());
    }

    #[test]
    fn breaker_opens_after_down_after_and_retries_once_per_window() {
        let b = Breaker::new(2, Duration::from_millis(100));
        assert!(b.allow(0));
        assert!(!b.failure(0));
        assert!(b.allow(0));
        assert!(b.failure(10));
        assert!(!b.allow(50));
        assert!(b.allow(110), "one try when due");
        assert!(!b.allow(111), "only one");
        b.failure(111);
        assert!(!b.allow(200));
        assert!(b.allow(211));
        b.success();
        assert!(b.allow(212) && b.allow(212));
    }

    #[test]
    fn section_errors_are_located() {
        let at = At::root().key("cache").key("redis");
        let mut errors = ConfigErrors::default();
        let s = RedisSection {
            url: "nope://x".into(),
            timeout: Some(Dur(Duration::ZERO)),
            max_object_size: Some(Size(0)),
            down_after: Some(0),
            retry_after: Some(Dur(Duration::ZERO)),
        };
        assert!(s.build(&at, &mut errors).is_none());
        let paths: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
        for k in [
            "url",
            "timeout",
            "max_object_size",
            "down_after",
            "retry_after",
        ] {
            assert!(paths.iter().any(|p| p.ends_with(k)), "{k}: {paths:?}");
        }
        let ok = RedisSection {
            url: "redis://127.0.0.1:6379/0".into(),
            timeout: None,
            max_object_size: None,
            down_after: None,
            retry_after: None,
        };
        let mut errors = ConfigErrors::default();
        let c = ok.build(&at, &mut errors).expect("builds");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.down_after, DEFAULT_DOWN_AFTER);
    }
}
