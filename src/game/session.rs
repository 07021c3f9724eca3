//! The sessions of one game listener: a sharded table from [`SessionId`] to the handle through
//! which a backend link reaches the session's task, and that handle's bounded outbound queue.
//!
//! A link's reader never waits on a client: [`SessionTable::deliver`] only tries to enqueue,
//! and a session whose queue is full is kicked ([`CloseReason::SlowClient`]) so that the link
//! keeps flowing for every other session on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::{CloseReason, SessionId};

/// Shards of the table: enough that 2 to 16 worker threads rarely meet on one lock.
const SHARDS: usize = 64;

/// What a session's task gets told besides its frames: why it must end. Set once (the first
/// reason wins), then the task is woken.
#[derive(Debug, Default)]
pub struct Control {
    reason: AtomicU8,
    wake: Notify,
}

impl Control {
    /// Asks the session to end for `reason`; `false` when an earlier reason stands.
    pub fn close(&self, reason: CloseReason) -> bool {
        let set = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if set {
            // `notify_one` keeps a permit when the task is not waiting yet.
            self.wake.notify_one();
        }
        set
    }

    /// The reason the session was asked to end, if it was.
    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Resolves once [`Control::close`] was called (at once if it already was).
    pub async fn closed(&self) -> CloseReason {
        loop {
            if let Some(r) = self.reason() {
                return r;
            }
            self.wake.notified().await;
        }
    }
}

/// How the rest of the gateway reaches one session's task.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Encoded client frames (header and payload in one buffer), bounded by the listener's
    /// `queue` setting.
    pub out: mpsc::Sender<Bytes>,
    pub control: Arc<Control>,
}

impl SessionHandle {
    /// A handle and the receiving end of its queue of `capacity` frames.
    pub fn new(capacity: usize) -> (SessionHandle, mpsc::Receiver<Bytes>) {
        let (out, rx) = mpsc::channel(capacity.max(1));
        (
            SessionHandle {
                out,
                control: Arc::new(Control::default()),
            },
            rx,
        )
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
        // Under the shard's lock: `try_send` never waits, and a cloned handle would cost two
        // atomic updates of the channel's sender count per frame.
        let shard = Self::lock(self.shard(id));
        let Some(h) = shard.get(&id.0) else {
            return Delivery::Unknown;
        };
        match h.out.try_send(frame) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                h.control.close(CloseReason::SlowClient);
                Delivery::Overflow
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Unknown,
        }
    }

    /// Asks session `id` to end for `reason`; `false` when there is no such session.
    pub fn close(&self, id: SessionId, reason: CloseReason) -> bool {
        let control = Self::lock(self.shard(id))
            .get(&id.0)
            .map(|h| h.control.clone());
        control.is_some_and(|c| {
            c.close(reason);
            true
        })
    }

    /// Every session's control, to tell them all something (a drain's go-away). A copy, so no
    /// shard stays locked while the caller acts.
    pub fn controls(&self) -> Vec<(SessionId, SessionHandle)> {
        let mut all = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            all.extend(
                Self::lock(shard)
                    .iter()
                    .map(|(id, h)| (SessionId(*id), h.clone())),
            );
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_kicks_its_session_only() {
        let table = SessionTable::new();
        let (slow, _slow_rx) = SessionHandle::new(2);
        let (fast, mut fast_rx) = SessionHandle::new(2);
        let (a, b) = (SessionId(1), SessionId(2));
        table.insert(a, slow.clone());
        table.insert(b, fast.clone());
        assert_eq!(table.len(), 2);
        let f = Bytes::from_static(b"frame");
        assert_eq!(table.deliver(a, f.clone()), Delivery::Queued);
        assert_eq!(table.deliver(a, f.clone()), Delivery::Queued);
        assert_eq!(table.deliver(a, f.clone()), Delivery::Overflow);
        assert_eq!(slow.control.closed().await, CloseReason::SlowClient);
        for _ in 0..10 {
            assert_eq!(table.deliver(b, f.clone()), Delivery::Queued);
            assert_eq!(fast_rx.recv().await.as_deref(), Some(&b"frame"[..]));
        }
        assert_eq!(fast.control.reason(), None);
        table.remove(a);
        assert_eq!(table.deliver(a, f), Delivery::Unknown);
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn the_first_reason_to_close_stands() {
        let table = SessionTable::new();
        let (h, _rx) = SessionHandle::new(1);
        table.insert(SessionId(7), h.clone());
        assert!(table.close(SessionId(7), CloseReason::Kicked));
        assert!(!h.control.close(CloseReason::Shutdown));
        assert_eq!(h.control.closed().await, CloseReason::Kicked);
        assert!(!table.close(SessionId(8), CloseReason::Kicked));
        assert_eq!(table.controls().len(), 1);
    }
}
