//! The sessions of one game listener: a sharded table from [`SessionId`] to the handle through
//! which a backend link reaches the session's task, and that handle's bounded outbound queue.
//!
//! A link's reader never waits on a client: [`SessionTable::deliver`] only tries to enqueue,
//! and a session whose queue is full is kicked ([`CloseReason::SlowClient`]) so that the link
//! keeps flowing for every other session on it.
//!
//! The queue and the reason to close share one small allocation and one waker, not a tokio
//! channel and a `Notify`: only the session's own task ever waits on them, and an idle session
//! then holds about a hundred bytes here where the channel's first block of 32 slots alone was
//! a kilobyte.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;

use super::{CloseReason, SessionId};

/// Shards of the table: enough that 2 to 16 worker threads rarely meet on one lock.
const SHARDS: usize = 64;
/// Queue slots kept by a session whose queue emptied: a burst's larger allocation is let go.
const KEEP_SLOTS: usize = 8;

/// What one session shares with the gateway: its queue of frames and why it must end.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// The reason the session was asked to end (0: none yet). Set once: the first one wins.
    reason: AtomicU8,
    /// The session's task, woken by a frame or a reason to end.
    waker: AtomicWaker,
}

#[derive(Debug)]
struct Queue {
    /// Encoded client frames (header and payload in one buffer).
    frames: VecDeque<Bytes>,
    capacity: usize,
    /// Whether frames are still taken: the session's end stops it.
    open: bool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a queue that is still consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }
}

/// How the rest of the gateway reaches one session's task: cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionHandle(Arc<Shared>);

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its `capacity` of frames.
    Full,
    /// The session is ending and takes no more frames.
    Closed,
}

impl SessionHandle {
    /// A handle and the session task's end of its queue of `capacity` frames.
    pub fn new(capacity: usize) -> (SessionHandle, Inbox) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                capacity: capacity.max(1),
                open: true,
            }),
            reason: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        });
        (SessionHandle(shared.clone()), Inbox(shared))
    }

    /// Queues `frame` for the client without waiting.
    pub fn try_push(&self, frame: Bytes) -> Result<(), PushError> {
        {
            let mut q = self.0.queue();
            if !q.open {
                return Err(PushError::Closed);
            }
            if q.frames.len() >= q.capacity {
                return Err(PushError::Full);
            }
            q.frames.push_back(frame);
        }
        self.0.waker.wake();
        Ok(())
    }

    /// Asks the session to end for `reason`; `false` when an earlier reason stands.
    pub fn close(&self, reason: CloseReason) -> bool {
        let set = self
            .0
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if set {
            self.0.waker.wake();
        }
        set
    }

    /// The reason the session was asked to end, if it was.
    pub fn reason(&self) -> Option<CloseReason> {
        self.0.reason()
    }
}

/// The session task's end of its handle: the frames for its client and the reason to end. Only
/// this task waits on it (one waker serves both).
#[derive(Debug)]
pub struct Inbox(Arc<Shared>);

impl Inbox {
    /// The next queued frame, or Pending (the task is woken by the next one).
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Bytes> {
        if let Some(f) = self.try_recv() {
            return Poll::Ready(f);
        }
        self.0.waker.register(cx.waker());
        // A frame queued between the look and the registration found no waker to wake.
        self.try_recv().map_or(Poll::Pending, Poll::Ready)
    }

    /// The next queued frame, if there is one.
    pub fn try_recv(&self) -> Option<Bytes> {
        let mut q = self.0.queue();
        let f = q.frames.pop_front();
        if q.frames.is_empty() && q.frames.capacity() > KEEP_SLOTS {
            q.frames = VecDeque::new();
        }
        f
    }

    /// The next queued frame, waiting for it.
    pub async fn recv(&self) -> Bytes {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes no more frames: what is queued stays to be read.
    pub fn close(&self) {
        self.0.queue().open = false;
    }

    /// Ready once the session was asked to end, with the reason.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if let Some(r) = self.0.reason() {
            return Poll::Ready(r);
        }
        self.0.waker.register(cx.waker());
        self.0.reason().map_or(Poll::Pending, Poll::Ready)
    }

    /// Resolves once the session was asked to end (at once if it already was).
    pub async fn closed(&self) -> CloseReason {
        poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// The handle of this session, for the table.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle(self.0.clone())
    }
}

/// What became of a frame handed to [`SessionTable::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// No such session (it ended, or never came through this gateway): the frame is dropped.
    Unknown,
    /// The session's queue was full: it was kicked and the frame dropped.
    Overflow,
}

#[derive(Debug)]
pub struct SessionTable {
    shards: Box<[Mutex<HashMap<i64, SessionHandle>>]>,
    len: AtomicUsize,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable::new()
    }
}

impl SessionTable {
    pub fn new() -> SessionTable {
        SessionTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            len: AtomicUsize::new(0),
        }
    }

    fn shard(&self, id: SessionId) -> &Mutex<HashMap<i64, SessionHandle>> {
        // The low bits of a snowflake id are its sequence: they spread well.
        &self.shards[(id.0 as u64 as usize) % SHARDS]
    }

    fn lock(
        m: &Mutex<HashMap<i64, SessionHandle>>,
    ) -> std::sync::MutexGuard<'_, HashMap<i64, SessionHandle>> {
        // A panic while holding a shard leaves a map that is still consistent.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: SessionId, handle: SessionHandle) {
        if Self::lock(self.shard(id)).insert(id.0, handle).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn remove(&self, id: SessionId) {
        if Self::lock(self.shard(id)).remove(&id.0).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sessions in the table.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Enqueues `frame` for session `id` without waiting: a full queue kicks the session.
    pub fn deliver(&self, id: SessionId, frame: Bytes) -> Delivery {
        // Under the shard's lock: `try_push` never waits, and a cloned handle would cost two
        // atomic updates of its count per frame.
        let shard = Self::lock(self.shard(id));
        let Some(h) = shard.get(&id.0) else {
            return Delivery::Unknown;
        };
        match h.try_push(frame) {
            Ok(()) => Delivery::Queued,
            Err(PushError::Full) => {
                h.close(CloseReason::SlowClient);
                Delivery::Overflow
            }
            Err(PushError::Closed) => Delivery::Unknown,
        }
    }

    /// Asks session `id` to end for `reason`; `false` when there is no such session.
    pub fn close(&self, id: SessionId, reason: CloseReason) -> bool {
        Self::lock(self.shard(id)).get(&id.0).is_some_and(|h| {
            h.close(reason);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_kicks_its_session_only() {
        let table = SessionTable::new();
        let (slow, slow_rx) = SessionHandle::new(2);
        let (fast, fast_rx) = SessionHandle::new(2);
        let (a, b) = (SessionId(1), SessionId(2));
        table.insert(a, slow.clone());
        table.insert(b, fast.clone());
        assert_eq!(table.len(), 2);
        let f = Bytes::from_static(b"frame");
        assert_eq!(table.deliver(a, f.clone()), Delivery::Queued);
        assert_eq!(table.deliver(a, f.clone()), Delivery::Queued);
        assert_eq!(table.deliver(a, f.clone()), Delivery::Overflow);
        assert_eq!(slow_rx.closed().await, CloseReason::SlowClient);
        for _ in 0..10 {
            assert_eq!(table.deliver(b, f.clone()), Delivery::Queued);
            assert_eq!(&fast_rx.recv().await[..], b"frame");
        }
        assert_eq!(fast.reason(), None);
        table.remove(a);
        assert_eq!(table.deliver(a, f), Delivery::Unknown);
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn the_first_reason_to_close_stands() {
        let table = SessionTable::new();
        let (h, rx) = SessionHandle::new(1);
        table.insert(SessionId(7), h.clone());
        assert!(table.close(SessionId(7), CloseReason::Kicked));
        assert!(!h.close(CloseReason::Shutdown));
        assert_eq!(rx.closed().await, CloseReason::Kicked);
        assert!(!table.close(SessionId(8), CloseReason::Kicked));
    }

    #[tokio::test]
    async fn a_waiting_session_is_woken_by_a_frame_and_by_a_reason_to_end() {
        let (h, rx) = SessionHandle::new(4);
        let waiting = tokio::spawn(async move {
            let frame = rx.recv().await;
            (frame, rx.closed().await)
        });
        tokio::task::yield_now().await;
        h.try_push(Bytes::from_static(b"late")).expect("room");
        tokio::task::yield_now().await;
        h.close(CloseReason::BackendGone);
        let (frame, reason) = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(&frame[..], b"late");
        assert_eq!(reason, CloseReason::BackendGone);
    }

    #[test]
    fn an_ending_session_takes_no_more_frames_and_keeps_what_was_queued() {
        let (h, rx) = SessionHandle::new(4);
        h.try_push(Bytes::from_static(b"one")).expect("room");
        rx.close();
        assert_eq!(
            h.try_push(Bytes::from_static(b"two")),
            Err(PushError::Closed)
        );
        assert_eq!(rx.try_recv().as_deref(), Some(&b"one"[..]));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn an_emptied_queue_lets_a_burst_go() {
        let (h, rx) = SessionHandle::new(256);
        for _ in 0..100 {
            h.try_push(Bytes::from_static(b"f")).expect("room");
        }
        while rx.try_recv().is_some() {}
        assert!(rx.0.queue().frames.capacity() <= KEEP_SLOTS);
    }
}
