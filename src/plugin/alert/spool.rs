//! The on-disk spool of messages a destination did not take: what lets the gateway acknowledge
//! a webhook without losing it. One file per message, written under a temporary name, synced,
//! linked into place and the directory synced before `push` returns (as Postfix queues mail),
//! deleted once delivered. A crash leaves every pushed message either whole or absent, never torn:
//! a leftover temporary file was never acknowledged and is removed when the spool opens.
//!
//! Two processes may share a directory for a while: during an upgrade the old gateway drains its
//! connections while the new one serves. A file is therefore linked into place, never renamed
//! over another (an id taken meanwhile by the other process moves on to the next); the directory
//! is scanned again every few seconds for files the other process left; a file that vanished was
//! delivered by it; and a lock file lets one process replay at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use crate::clock::now_ms;

/// The first bytes of every spooled file, and its format version.
const MAGIC: &[u8; 6] = b"ZKSP1\n";
const HEADER: usize = MAGIC.len() + 4;
const SUFFIX: &str = "msg";
const TEMP_SUFFIX: &str = "tmp";
/// A temporary file older than this belongs to a push that will never finish.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(600);
/// Where a file that fails its checksum is moved: kept for a human, never replayed or deleted.
const BAD_SUFFIX: &str = "bad";
/// Held (with an OS file lock) by the process that replays the directory.
const REPLAY_LOCK: &str = "replay.lock";
/// How often the directory is scanned for files another process wrote.
const RESCAN: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum SpoolError {
    /// Taking the message would pass the spool's size bound.
    Full {
        bytes: u64,
        max: u64,
    },
    Io(io::Error),
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Full { bytes, max } => {
                write!(f, "the spool is full ({bytes} of {max} bytes)")
            }
            SpoolError::Io(e) => write!(f, "spool: {e}"),
        }
    }
}

impl std::error::Error for SpoolError {}

impl From<io::Error> for SpoolError {
    fn from(e: io::Error) -> Self {
        SpoolError::Io(e)
    }
}

/// A durable FIFO of opaque records in one directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Someone replays it: one at a time, or messages would go out twice and out of order.
    replaying: AtomicBool,
    /// The locked [`REPLAY_LOCK`] while this process replays.
    replay_lock: Mutex<Option<File>>,
    /// When the directory was last scanned, in [`now_ms`] time.
    scanned_ms: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    max_bytes: u64,
    next: u64,
    /// Bytes held, counting the pushes under way.
    bytes: u64,
    /// Id to file size, in arrival order.
    held: BTreeMap<u64, u64>,
    /// Ids of pushes under way: on disk perhaps, not yet in `held`, and not to be adopted.
    pending: BTreeSet<u64>,
}

/// Every spool the process has open, by directory: a reload that keeps a destination's
/// directory gets the same spool, so that two objects never write or replay one directory.
static OPEN: LazyLock<Mutex<HashMap<PathBuf, Weak<Spool>>>> = LazyLock::new(Default::default);

impl Spool {
    /// The spool in `dir` (created if missing), with what an earlier run left in it. If the
    /// process has it open already, that spool, with its bound set to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Arc<Spool>> {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| s.strong_count() > 0);
        if let Some(spool) = open.get(dir).and_then(Weak::upgrade) {
            spool.lock().max_bytes = max_bytes;
            return Ok(spool);
        }
        let spool = Arc::new(Spool::recover(dir, max_bytes)?);
        open.insert(dir.to_path_buf(), Arc::downgrade(&spool));
        Ok(spool)
    }

    fn recover(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir).map_err(|e| context(e, "cannot create", dir))?;
        let mut held = BTreeMap::new();
        // New ids start above every id in the directory, set-aside and temporary files too,
        // so that a new file never meets an old one's name.
        let mut last = 0;
        for entry in fs::read_dir(dir).map_err(|e| context(e, "cannot list", dir))? {
            let entry = entry?;
            let path = entry.path();
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok());
            last = last.max(id.unwrap_or(0));
            match (id, path.extension().and_then(|e| e.to_str())) {
                (Some(_), Some(TEMP_SUFFIX)) => {
                    // Never acknowledged: the push that wrote it did not return. A young one
                    // may be a push under way in a running gateway (this may be `zkgate
                    // check`), so only old ones are cleared; none is ever replayed.
                    let age = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
                    if age > STALE_TEMP {
                        fs::remove_file(&path).map_err(|e| context(e, "cannot remove", &path))?;
                    }
                }
                (Some(id), Some(SUFFIX)) => {
                    held.insert(id, entry.metadata()?.len());
                }
                _ => {}
            }
        }
        let next = last + 1;
        Ok(Spool {
            replaying: AtomicBool::new(false),
            replay_lock: Mutex::new(None),
            scanned_ms: AtomicU64::new(now_ms()),
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                max_bytes,
                next,
                bytes: held.values().sum(),
                held,
                pending: BTreeSet::new(),
            }),
        })
    }

    /// Whether [`Spool::adopt`] is due.
    pub fn rescan_due(&self) -> bool {
        now_ms().saturating_sub(self.scanned_ms.load(Ordering::Relaxed))
            >= RESCAN.as_millis() as u64
    }

    /// Takes in the messages another process sharing the directory spooled (or an operator put
    /// back by renaming a set-aside file to `.msg`), and moves new ids past every file there.
    /// Returns how many it took. Blocking.
    pub fn adopt(&self) -> io::Result<usize> {
        self.scanned_ms.store(now_ms(), Ordering::Relaxed);
        let mut found = Vec::new();
        let mut last = 0;
        for entry in fs::read_dir(&self.dir).map_err(|e| context(e, "cannot list", &self.dir))? {
            let entry = entry?;
            let path = entry.path();
            let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            last = last.max(id);
            if path.extension().and_then(|e| e.to_str()) == Some(SUFFIX) {
                // Gone already (delivered by the other process) is simply not found.
                if let Ok(meta) = entry.metadata() {
                    found.push((id, meta.len()));
                }
            }
        }
        let mut inner = self.lock();
        inner.next = inner.next.max(last + 1);
        let mut taken = 0;
        for (id, size) in found {
            if inner.held.contains_key(&id) || inner.pending.contains(&id) {
                continue;
            }
            inner.held.insert(id, size);
            inner.bytes += size;
            taken += 1;
        }
        Ok(taken)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `true` if the caller now owns the replay, until [`Spool::release_replay`]: no other
    /// replay runs in this process, nor, by the lock file, in another.
    pub fn claim_replay(&self) -> bool {
        if self.replaying.swap(true, Ordering::AcqRel) {
            return false;
        }
        let path = self.dir.join(REPLAY_LOCK);
        let locked = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|f| f.try_lock().map(|()| f).map_err(io::Error::from));
        match locked {
            Ok(f) => {
                *self.replay_lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
                true
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    log::warn!(
                        "spool {}: cannot lock {REPLAY_LOCK}: {e}",
                        self.dir.display()
                    );
                }
                self.replaying.store(false, Ordering::Release);
                false
            }
        }
    }

    pub fn release_replay(&self) {
        // Closing the file releases the lock.
        self.replay_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.replaying.store(false, Ordering::Release);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `record` durably: when this returns `Ok`, a crash or power cut does not lose it.
    /// Blocking (it waits for the disk); call it off the async workers.
    pub fn push(&self, record: &[u8]) -> Result<u64, SpoolError> {
        let size = (HEADER + record.len()) as u64;
        let id = {
            let mut inner = self.lock();
            if inner.bytes + size > inner.max_bytes {
                return Err(SpoolError::Full {
                    bytes: inner.bytes,
                    max: inner.max_bytes,
                });
            }
            inner.bytes += size;
            take_id(&mut inner)
        };
        let written = self.write(id, record);
        let mut inner = self.lock();
        inner.pending.remove(&id);
        match written {
            Ok(placed) => {
                inner.pending.remove(&placed);
                inner.held.insert(placed, size);
                Ok(placed)
            }
            Err(e) => {
                inner.bytes -= size;
                Err(SpoolError::Io(e))
            }
        }
    }

    /// Writes `record` under a temporary name, then links it into place under `id` or, if
    /// another process took that id, the next free one; returns the id it got.
    fn write(&self, mut id: u64, record: &[u8]) -> io::Result<u64> {
        let (mut f, temp) = loop {
            let temp = self.path(id, TEMP_SUFFIX);
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(f) => break (f, temp),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => id = self.skip(id),
                Err(e) => return Err(context(e, "cannot write to", &self.dir)),
            }
        };
        let result = (|| {
            f.write_all(MAGIC)?;
            f.write_all(&crc32fast::hash(record).to_le_bytes())?;
            f.write_all(record)?;
            f.sync_all()?;
            let placed = self.place(&temp, id)?;
            // The new name is durable only once the directory is.
            File::open(&self.dir)?.sync_all()?;
            Ok(placed)
        })();
        let _ = fs::remove_file(&temp);
        result.map_err(|e| context(e, "cannot write to", &self.dir))
    }

    /// Gives the file at `temp` its queue name, never replacing another file.
    fn place(&self, temp: &Path, mut id: u64) -> io::Result<u64> {
        loop {
            let target = self.path(id, SUFFIX);
            match fs::hard_link(temp, &target) {
                Ok(()) => return Ok(id),
                // A file system without hard links: a rename, checked first (not atomically).
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists && !target.exists() => {
                    fs::rename(temp, &target)?;
                    return Ok(id);
                }
                Err(_) => id = self.skip(id),
            }
        }
    }

    /// Another process has a file under `id`: the next id past it, for this push. That file
    /// is for [`Spool::adopt`] to take in.
    fn skip(&self, id: u64) -> u64 {
        let mut inner = self.lock();
        inner.pending.remove(&id);
        inner.next = inner.next.max(id + 1);
        take_id(&mut inner)
    }

    /// The ids of the oldest `n` records.
    pub fn oldest(&self, n: usize) -> Vec<u64> {
        self.lock().held.keys().take(n).copied().collect()
    }

    /// Record `id`, checked against its checksum. A damaged file is moved aside (to `.bad`)
    /// and reported as an error, so that it is neither replayed nor lost.
    /// A file that is gone (delivered or set aside by another process sharing the directory)
    /// is forgotten and reported as `NotFound`.
    pub fn read(&self, id: u64) -> io::Result<Vec<u8>> {
        let path = self.path(id, SUFFIX);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound {
                    self.forget(id);
                }
                return Err(context(e, "cannot read", &path));
            }
        };
        let intact = data.len() >= HEADER
            && &data[..MAGIC.len()] == MAGIC
            && data[MAGIC.len()..HEADER] == crc32fast::hash(&data[HEADER..]).to_le_bytes();
        if intact {
            return Ok(data[HEADER..].to_vec());
        }
        let aside = self.set_aside(id, BAD_SUFFIX)?;
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} failed its checksum and was moved to {}",
                path.display(),
                aside.display()
            ),
        ))
    }

    /// Moves record `id` out of the queue to a file with the suffix `why` (`bad`,
    /// `rejected`), kept for a human: neither replayed nor deleted.
    pub fn set_aside(&self, id: u64, why: &str) -> io::Result<PathBuf> {
        let (path, aside) = (self.path(id, SUFFIX), self.path(id, why));
        fs::rename(&path, &aside).map_err(|e| context(e, "cannot move aside", &path))?;
        self.forget(id);
        Ok(aside)
    }

    /// Deletes record `id`, delivered. A crash before the deletion reaches the disk delivers it
    /// again after the restart: at least once.
    pub fn remove(&self, id: u64) -> io::Result<()> {
        let path = self.path(id, SUFFIX);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(context(e, "cannot remove", &path)),
        }
        self.forget(id);
        Ok(())
    }

    fn forget(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(size) = inner.held.remove(&id) {
            inner.bytes -= size;
        }
    }

    /// Records held and their bytes on disk.
    pub fn depth(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.held.len(), inner.bytes)
    }

    fn path(&self, id: u64, suffix: &str) -> PathBuf {
        // Zero-padded so that a directory listing is in arrival order too.
        self.dir.join(format!("{id:020}.{suffix}"))
    }
}

/// The next id, marked as a push under way.
fn take_id(inner: &mut Inner) -> u64 {
    let id = inner.next;
    inner.next += 1;
    inner.pending.insert(id);
    id
}

/// A spool opened on first use rather than when the config is built, so that `zkgate check`
/// and a reload that is then rejected touch no disk.
#[derive(Debug)]
pub struct LazySpool {
    dir: PathBuf,
    max_bytes: u64,
    opened: std::sync::OnceLock<Arc<Spool>>,
}

impl LazySpool {
    /// Checks what can be checked without writing: the directory, or the nearest of its
    /// ancestors that exists, must be a directory.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Result<LazySpool, String> {
        let existing = dir.ancestors().find(|a| a.exists());
        match existing {
            Some(a) if !a.is_dir() => Err(format!("{} is not a directory", a.display())),
            _ => Ok(LazySpool {
                dir,
                max_bytes,
                opened: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The spool, opened now if it was not yet. Blocking the first time (it reads the
    /// directory); an error is tried again on the next call.
    pub fn get(&self) -> io::Result<&Arc<Spool>> {
        if let Some(s) = self.opened.get() {
            return Ok(s);
        }
        let spool = Spool::open(&self.dir, self.max_bytes)?;
        Ok(self.opened.get_or_init(|| spool))
    }

    /// The spool if it is open already.
    pub fn opened(&self) -> Option<&Arc<Spool>> {
        self.opened.get()
    }
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(max: u64) -> (tempfile::TempDir, Arc<Spool>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::recover(dir.path(), max).map(Arc::new).expect("open");
        (dir, spool)
    }

    #[test]
    fn records_survive_a_reopen_in_order_and_leave_when_removed() {
        let (dir, spool) = fresh(1 << 20);
        let a = spool.push(b"first").unwrap();
        let b = spool.push(b"second").unwrap();
        spool.push(b"third").unwrap();
        spool.remove(b).unwrap();
        drop(spool);

        let again = Spool::recover(dir.path(), 1 << 20).unwrap();
        let ids = again.oldest(10);
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], a);
        assert_eq!(again.read(ids[0]).unwrap(), b"first");
        assert_eq!(again.read(ids[1]).unwrap(), b"third");
        assert_eq!(again.depth(), (2, 2 * HEADER as u64 + 10));
        // New ids continue after the old ones, so that order holds across restarts.
        assert!(again.push(b"fourth").unwrap() > ids[1]);
    }

    /// Two gateways on one directory, as during an upgrade: neither overwrites the other's
    /// files, each takes in what the other left, a file one delivered is forgotten by the
    /// other, and one replays at a time.
    #[test]
    fn two_processes_share_a_directory_without_losing_a_message() {
        let (dir, old) = fresh(1 << 20);
        old.push(b"before").unwrap();
        // The new process opens the directory; both now count from the same next id.
        let new = Spool::recover(dir.path(), 1 << 20).map(Arc::new).unwrap();
        let a = old.push(b"old-1").unwrap();
        let b = new.push(b"new-1").unwrap();
        let c = new.push(b"new-2").unwrap();
        let d = old.push(b"old-2").unwrap();
        let ids = BTreeSet::from([a, b, c, d]);
        assert_eq!(
            ids.len(),
            4,
            "an id taken by the other moves on: {a} {b} {c} {d}"
        );
        let on_disk = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .and_then(|x| x.to_str())
                    == Some(SUFFIX)
            })
            .count();
        assert_eq!(on_disk, 5, "nothing was overwritten");

        // The new process takes in what the old one wrote after it opened.
        assert!(old.lock().pending.is_empty() && new.lock().pending.is_empty());
        assert_eq!(new.adopt().unwrap(), 2);
        assert_eq!(new.depth().0, 5);
        assert_eq!(new.adopt().unwrap(), 0, "a second scan takes nothing twice");
        let records: Vec<Vec<u8>> = new
            .oldest(10)
            .iter()
            .map(|&i| new.read(i).unwrap())
            .collect();
        let mut records: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        records.sort();
        assert_eq!(
            records,
            [&b"before"[..], b"new-1", b"new-2", b"old-1", b"old-2"]
        );
        assert!(new.push(b"later").unwrap() > *ids.last().unwrap());

        // One replays at a time, across processes too.
        assert!(old.claim_replay());
        assert!(!new.claim_replay());
        // What the old one delivers, the new one forgets when it finds it gone.
        old.remove(a).unwrap();
        old.release_replay();
        assert!(new.claim_replay());
        let gone = new.read(a).expect_err("delivered by the other");
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert_eq!(new.depth().0, 5);
        assert!(!new.oldest(10).contains(&a));
        new.release_replay();
    }

    #[test]
    fn a_push_that_never_returned_is_not_replayed() {
        let (dir, spool) = fresh(1 << 20);
        spool.push(b"kept").unwrap();
        let (old, young) = (
            dir.path().join(format!("{:020}.tmp", 98)),
            dir.path().join(format!("{:020}.tmp", 99)),
        );
        for t in [&old, &young] {
            fs::write(t, b"ZKSP1\nhalf").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - 2 * STALE_TEMP;
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        drop(spool);
        let again = Spool::recover(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.depth().0, 1, "neither is replayed");
        assert!(!old.exists(), "an abandoned push is cleared");
        assert!(young.exists(), "a push that may be under way is left alone");
    }

    #[test]
    fn a_damaged_record_is_moved_aside_not_replayed_or_lost() {
        let (dir, spool) = fresh(1 << 20);
        let id = spool.push(b"payload").unwrap();
        let path = dir.path().join(format!("{id:020}.msg"));
        let mut data = fs::read(&path).unwrap();
        *data.last_mut().unwrap() ^= 1;
        fs::write(&path, data).unwrap();
        let err = spool.read(id).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(dir.path().join(format!("{id:020}.bad")).exists());
        assert_eq!(spool.depth(), (0, 0));
    }

    #[test]
    fn a_record_set_aside_before_a_restart_is_never_overwritten() {
        let (dir, spool) = fresh(1 << 20);
        let refused = spool.push(b"refused before the restart").unwrap();
        spool.set_aside(refused, "rejected").unwrap();
        drop(spool);
        // Nothing is queued any more, but the file kept for a human still holds its id.
        let again = Spool::recover(dir.path(), 1 << 20).unwrap();
        let later = again.push(b"refused after it").unwrap();
        assert!(later > refused, "id {later} reused");
        again.set_aside(later, "rejected").unwrap();
        let kept = fs::read(dir.path().join(format!("{refused:020}.rejected"))).unwrap();
        assert!(kept.ends_with(b"refused before the restart"));
    }

    #[test]
    fn the_bound_refuses_rather_than_drops_and_frees_with_removals() {
        let (_dir, spool) = fresh(3 * (HEADER as u64 + 100));
        let ids: Vec<u64> = (0..3).map(|_| spool.push(&[7; 100]).unwrap()).collect();
        match spool.push(&[7; 100]) {
            Err(SpoolError::Full { bytes, max }) => assert_eq!(bytes, max),
            other => panic!("{other:?}"),
        }
        assert_eq!(spool.depth().0, 3, "nothing was dropped to make room");
        spool.remove(ids[0]).unwrap();
        spool.push(&[7; 100]).unwrap();
    }

    #[test]
    fn one_directory_is_one_spool_in_a_process() {
        let dir = tempfile::tempdir().unwrap();
        let a = Spool::open(dir.path(), 100).unwrap();
        let b = Spool::open(dir.path(), 1000).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.lock().max_bytes, 1000, "the newer bound applies");
    }

    #[test]
    fn concurrent_pushes_get_distinct_ids() {
        let (_dir, spool) = fresh(1 << 30);
        let ids: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    let spool = &spool;
                    s.spawn(move || {
                        (0..25)
                            .map(|i| spool.push(format!("{t}-{i}").as_bytes()).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 100);
        assert_eq!(spool.oldest(1000), unique);
    }

    #[tokio::test(start_paused = true)]
    async fn the_directory_is_scanned_again_every_rescan_period() {
        let pass = |ms| tokio::time::advance(Duration::from_millis(ms));
        let (_dir, spool) = fresh(1 << 20);
        let rescan = RESCAN.as_millis() as u64;
        assert!(!spool.rescan_due(), "opening scanned it");
        pass(rescan - 1).await;
        assert!(!spool.rescan_due());
        pass(1).await;
        assert!(spool.rescan_due());
        // A scan, whenever it happens, starts the period again.
        pass(3_000).await;
        assert!(spool.rescan_due());
        spool.adopt().unwrap();
        assert!(!spool.rescan_due());
        pass(rescan - 1).await;
        assert!(!spool.rescan_due());
        pass(1).await;
        assert!(spool.rescan_due());
    }
}
