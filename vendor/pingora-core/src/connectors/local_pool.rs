// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A per-thread keep-alive pool of idle upstream streams, the opt-in alternative to the shared
//! [pingora_pool::ConnectionPool] (see [super::ConnectorOptions::keepalive_pool_per_thread]).
//!
//! The shared pool watches every idle stream with a task of its own, spawned on each release,
//! and the next request must wait for that task to hand the stream back. Here a release pushes
//! the stream on its thread's list and a take pops it: no task, lock wait or allocation per
//! request once the list has grown to its working size. Closed and expired streams are found
//! lazily instead:
//! - a take skips every stream past its idle timeout, and the caller tests the one it gets
//!   with `test_reusable_stream`, so a peer's FIN/RST or stray bytes still make it unusable;
//! - one sweeper task per thread, running only while that thread's list holds streams, wakes
//!   every [SWEEP_INTERVAL] and closes the streams past their idle timeout or readable (closed
//!   by the peer, or with stray bytes). A stream the peer closed therefore stays open on this
//!   side for at most [SWEEP_INTERVAL], and a stream is closed at most [SWEEP_INTERVAL] after
//!   its idle timeout (it is never reused after it).
//!
//! A stream is reused only by the thread that released it. The bound is per thread: a thread
//! keeps at most `per_thread` idle streams and drops its least recently released one to make
//! room, as the shared pool's LRU does.

use super::{PoolCallback, Stream};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use thread_local::ThreadLocal;

/// How often a thread's sweeper closes its idle streams that expired or were closed by the
/// peer: the longest such a stream stays open after its idle timeout or the peer's FIN.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Keys are already hashes ([crate::upstreams::peer::Peer::reuse_hash]), so hashing them again
/// would only cost time.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // only u64 keys are hashed; keep a correct fallback anyway
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

struct Idle {
    stream: Stream,
    since: Instant,
    /// `None`: no idle timeout
    expires: Option<Instant>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// One thread's idle streams, by reuse key, oldest first in each queue.
#[derive(Default)]
pub(crate) struct IdleList {
    by_key: HashMap<u64, VecDeque<Idle>, BuildHasherDefault<KeyHasher>>,
    len: usize,
    /// a sweeper task is running for this list
    sweeping: bool,
}

impl IdleList {
    /// Add `stream`; when that makes more than `cap` streams, the least recently released
    /// one is removed and returned with the time it was released.
    fn put(
        &mut self,
        key: u64,
        stream: Stream,
        idle_timeout: Option<Duration>,
        now: Instant,
        cap: usize,
    ) -> Option<(Stream, Instant)> {
        let expires = idle_timeout.map(|t| now + t);
        self.by_key.entry(key).or_default().push_back(Idle {
            stream,
            since: now,
            expires,
        });
        self.len += 1;
        if self.len > cap {
            self.pop_oldest()
        } else {
            None
        }
    }

    fn pop_oldest(&mut self) -> Option<(Stream, Instant)> {
        // O(number of keys), only when the list is full
        let key = self
            .by_key
            .iter()
            .filter_map(|(k, q)| q.front().map(|i| (*k, i.since)))
            .min_by_key(|(_, since)| *since)?
            .0;
        let idle = self.by_key.get_mut(&key)?.pop_front()?;
        self.len -= 1;
        Some((idle.stream, idle.since))
    }

    /// The most recently released stream of `key` that has not expired; the expired ones met
    /// on the way are dropped (closed).
    fn take(&mut self, key: u64, now: Instant) -> Option<Stream> {
        let queue = self.by_key.get_mut(&key)?;
        while let Some(idle) = queue.pop_back() {
            self.len -= 1;
            if !idle.expired(now) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Close the streams past their idle timeout at `now` and those `usable` rejects, and
    /// forget the keys left with no stream.
    fn sweep(&mut self, now: Instant, mut usable: impl FnMut(&mut Stream) -> bool) {
        let mut len = 0;
        self.by_key.retain(|_, queue| {
            queue.retain_mut(|idle| !idle.expired(now) && usable(&mut idle.stream));
            len += queue.len();
            !queue.is_empty()
        });
        self.len = len;
    }
}

/// The per-thread lists of one connector.
pub(crate) struct LocalPool {
    lists: ThreadLocal<Arc<Mutex<IdleList>>>,
    per_thread: usize,
    callback: Option<PoolCallback>,
}

impl LocalPool {
    pub(crate) fn new(per_thread: usize, callback: Option<PoolCallback>) -> Self {
        LocalPool {
            lists: ThreadLocal::new(),
            per_thread,
            callback,
        }
    }

    fn list(&self) -> &Arc<Mutex<IdleList>> {
        self.lists.get_or_default()
    }

    /// Keep `stream` (already tested reusable) for the next take of `key` on this thread.
    pub(crate) fn put(&self, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        if self.per_thread == 0 || idle_timeout.is_some_and(|t| t.is_zero()) {
            return; // nothing may be kept: dropping closes it
        }
        // The sweeper needs a runtime; without one the stream is closed, never left unwatched.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let list = self.list();
        let (evicted, start_sweeper) = {
            let mut l = list.lock();
            let evicted = l.put(key, stream, idle_timeout, Instant::now(), self.per_thread);
            let start = !l.sweeping;
            l.sweeping = true;
            (evicted, start)
        };
        if start_sweeper {
            rt.spawn(sweeper(Arc::downgrade(list)));
        }
        if let Some((stream, since)) = evicted {
            drop(stream);
            if let Some(callback) = &self.callback {
                callback(since.elapsed());
            }
        }
    }

    /// The most recently released unexpired stream of `key` on this thread, if any. The caller
    /// still has to test it (`test_reusable_stream`).
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        // no list yet on this thread: nothing to take, and nothing to allocate for it
        let list = self.lists.get()?;
        let mut l = list.lock();
        l.take(key, Instant::now())
    }
}

/// Disarmed when the sweeper ends on its own; otherwise (its runtime dropped the task) it
/// lets the next put start a new sweeper.
struct SweeperRunning {
    list: Weak<Mutex<IdleList>>,
    armed: bool,
}

impl Drop for SweeperRunning {
    fn drop(&mut self) {
        if self.armed {
            if let Some(list) = self.list.upgrade() {
                list.lock().sweeping = false;
            }
        }
    }
}

async fn sweeper(list: Weak<Mutex<IdleList>>) {
    let mut running = SweeperRunning {
        list: list.clone(),
        armed: true,
    };
    // stray bytes found here are not counted as `unexpected_data_connection_count`, as the
    // shared pool's idle watcher does not count those it reads
    let not_counted = AtomicU64::new(0);
    loop {
        pingora_timeout::sleep(SWEEP_INTERVAL).await;
        let Some(list) = list.upgrade() else {
            return; // the connector is gone, and its streams with it
        };
        let mut l = list.lock();
        l.sweep(Instant::now(), |s| {
            super::test_reusable_stream(s, &not_counted)
        });
        if l.len == 0 {
            // decided under the lock, so a put that sees `sweeping` false starts a new one
            l.sweeping = false;
            running.armed = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};

    fn pair() -> (Stream, DuplexStream) {
        let (client, server) = duplex(64);
        (Box::new(client), server)
    }

    /// The other end of the pair was dropped (closed).
    async fn closed(peer: &mut DuplexStream) -> bool {
        let mut buf = [0u8; 1];
        tokio::io::AsyncReadExt::read(peer, &mut buf).await.unwrap() == 0
    }

    fn usable(s: &mut Stream) -> bool {
        super::super::test_reusable_stream(s, &AtomicU64::new(0))
    }

    const MIN: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_released_stream_is_taken_back_last_in_first_out_by_key() {
        let mut l = IdleList::default();
        let now = Instant::now();
        let (a, _sa) = pair();
        let (b, _sb) = pair();
        let (c, _sc) = pair();
        let a_id = format!("{a:?}");
        let b_id = format!("{b:?}");
        assert!(l.put(1, a, Some(MIN), now, 8).is_none());
        assert!(l.put(1, b, Some(MIN), now, 8).is_none());
        assert!(l.put(2, c, Some(MIN), now, 8).is_none());
        assert_eq!(l.len, 3);
        assert_eq!(format!("{:?}", l.take(1, now).unwrap()), b_id);
        assert_eq!(format!("{:?}", l.take(1, now).unwrap()), a_id);
        assert!(l.take(1, now).is_none(), "key 1 is empty");
        assert!(l.take(3, now).is_none(), "key 3 was never released");
        assert!(l.take(2, now).is_some());
        assert_eq!(l.len, 0);
    }

    #[tokio::test]
    async fn a_stream_is_never_taken_after_its_idle_timeout() {
        let mut l = IdleList::default();
        let now = Instant::now();
        let (a, _sa) = pair();
        let (b, _sb) = pair();
        l.put(1, a, Some(MIN), now, 8);
        l.put(1, b, None, now, 8);
        let later = now + MIN;
        // the newest (no timeout) is still there
        assert!(l.take(1, later).is_some());
        // the older one expired at exactly `later`
        assert!(l.take(1, later).is_none());
        assert_eq!(l.len, 0);
    }

    #[tokio::test]
    async fn the_sweep_closes_expired_streams_and_forgets_empty_keys() {
        let mut l = IdleList::default();
        let now = Instant::now();
        let (a, mut sa) = pair();
        let (b, _sb) = pair();
        l.put(1, a, Some(MIN), now, 8);
        l.put(2, b, Some(MIN * 2), now, 8);
        l.sweep(now + MIN, usable);
        assert_eq!(l.len, 1);
        assert!(
            !l.by_key.contains_key(&1),
            "key 1 had only the expired stream"
        );
        // the expired stream was dropped, so its peer sees EOF
        assert!(closed(&mut sa).await);
        assert!(l.take(2, now + MIN).is_some());
    }

    #[tokio::test]
    async fn the_sweep_closes_a_stream_the_peer_closed_or_wrote_to() {
        let mut l = IdleList::default();
        let now = Instant::now();
        let (a, sa) = pair();
        let (b, mut sb) = pair();
        let (c, _sc) = pair();
        l.put(1, a, Some(MIN), now, 8);
        l.put(1, b, Some(MIN), now, 8);
        l.put(1, c, Some(MIN), now, 8);
        drop(sa); // FIN
        sb.write_all(b"HTTP/1.1 408").await.unwrap(); // stray bytes
        l.sweep(now, usable);
        assert_eq!(l.len, 1, "only the untouched stream is left");
        let mut left = l.take(1, now).unwrap();
        assert!(usable(&mut left));
    }

    #[tokio::test]
    async fn a_full_list_drops_its_least_recently_released_stream() {
        let mut l = IdleList::default();
        let now = Instant::now();
        let (a, mut sa) = pair();
        let (b, _sb) = pair();
        let (c, _sc) = pair();
        assert!(l.put(1, a, None, now, 2).is_none());
        assert!(l.put(2, b, None, now + MIN, 2).is_none());
        let (evicted, since) = l.put(1, c, None, now + MIN * 2, 2).unwrap();
        assert_eq!(since, now, "the oldest release, across keys, goes");
        drop(evicted);
        assert_eq!(l.len, 2);
        assert!(closed(&mut sa).await);
        assert!(l.take(1, now).is_some());
        assert!(l.take(2, now).is_some());
        assert!(l.take(1, now).is_none());
    }

    #[tokio::test]
    async fn the_pool_keeps_per_thread_and_reports_capacity_evictions() {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let callback: PoolCallback = Arc::new(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let pool = Arc::new(LocalPool::new(1, Some(callback)));
        let (a, _sa) = pair();
        let (b, _sb) = pair();
        pool.put(7, a, None);
        pool.put(7, b, None);
        assert_eq!(evictions.load(std::sync::atomic::Ordering::Relaxed), 1);
        // another thread has its own, empty, list
        let other = pool.clone();
        let elsewhere = std::thread::spawn(move || other.take(7).is_none())
            .join()
            .unwrap();
        assert!(elsewhere);
        assert!(pool.take(7).is_some());
        assert!(pool.take(7).is_none());
    }

    #[tokio::test]
    async fn a_pool_of_size_zero_keeps_nothing() {
        let pool = LocalPool::new(0, None);
        let (a, mut sa) = pair();
        pool.put(7, a, None);
        assert!(pool.take(7).is_none());
        assert!(closed(&mut sa).await);
    }

    #[tokio::test]
    async fn a_zero_idle_timeout_keeps_nothing() {
        let pool = LocalPool::new(4, None);
        let (a, _sa) = pair();
        pool.put(7, a, Some(Duration::ZERO));
        assert!(pool.take(7).is_none());
        assert!(pool.lists.get().is_none(), "nothing was even listed");
    }

    #[tokio::test]
    async fn one_sweeper_runs_while_the_list_holds_streams() {
        let pool = LocalPool::new(4, None);
        let (a, _sa) = pair();
        let (b, _sb) = pair();
        pool.put(7, a, None);
        assert!(pool.list().lock().sweeping);
        pool.put(7, b, None);
        // the sweeper ending with its runtime lets the next put start another
        let list = Arc::downgrade(pool.list());
        drop(SweeperRunning { list, armed: true });
        assert!(!pool.list().lock().sweeping);
    }

    #[tokio::test]
    async fn the_connector_reuses_a_released_stream_until_the_peer_closes_it() {
        use crate::connectors::{ConnectorOptions, TransportConnector};
        use crate::upstreams::peer::{BasicPeer, Peer};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = BasicPeer::new(&listener.local_addr().unwrap().to_string());
        let key = peer.reuse_hash();
        let mut options = ConnectorOptions::new(4);
        options.keepalive_pool_per_thread = Some(4);
        let connector = TransportConnector::new(Some(options));

        let stream = connector.new_stream(&peer).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let id = stream.id();
        connector.release_stream(stream, key, None);
        let stream = connector.reused_stream(&peer).await.expect("reused");
        assert_eq!(stream.id(), id, "the same connection came back");
        assert!(
            connector.reused_stream(&peer).await.is_none(),
            "and only once"
        );

        connector.release_stream(stream, key, None);
        drop(server); // FIN
                      // Once the runtime has seen the FIN the stream is refused, at release or at take.
        let mut refused = false;
        for _ in 0..1000 {
            tokio::task::yield_now().await;
            match connector.reused_stream(&peer).await {
                Some(s) => connector.release_stream(s, key, None),
                None => {
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "a stream the peer closed kept being reused");
    }

    #[tokio::test]
    async fn a_stream_released_under_another_peers_key_is_not_taken() {
        use crate::connectors::{ConnectorOptions, TransportConnector};
        use crate::upstreams::peer::{BasicPeer, Peer};

        let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_a = BasicPeer::new(&a.local_addr().unwrap().to_string());
        let peer_b = BasicPeer::new(&b.local_addr().unwrap().to_string());
        let mut options = ConnectorOptions::new(4);
        options.keepalive_pool_per_thread = Some(4);
        let connector = TransportConnector::new(Some(options));

        // A stream to A filed under B's key, as a reuse-hash collision would file it.
        let stream = connector.new_stream(&peer_a).await.unwrap();
        let _server = a.accept().await.unwrap();
        connector.release_stream(stream, peer_b.reuse_hash(), None);
        assert!(
            connector.reused_stream(&peer_b).await.is_none(),
            "a stream connected to another address was handed out"
        );
    }
}
