//! Criterion benchmarks of the game gateway's per-frame work: the client and backend codecs
//! (decode a frame out of a read buffer, encode one into a reused write buffer), the two
//! forwarding steps as a link does them (a client frame re-framed for its backend, a backend
//! frame re-framed for its client and handed to its session's queue among 100,000 sessions),
//! and the session table's lookup.
//!
//! Before criterion runs, each forwarding step is counted against the allocator over 100,000
//! frames in steady state and printed, the session queue's share apart; the bench
//! fails when a client frame's way to its link allocates, or the way back more than it does now.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
use zkgate::game::codec::{
    BackendCodec, BackendFrame, ClientCodec, ClientFrame, GateForm, Opcode, ServerId,
};
use zkgate::game::session::{Inbox, SessionHandle, SessionTable};
use zkgate::game::SessionId;

/// jemalloc, counting allocations.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { tikv_jemallocator::Jemalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { tikv_jemallocator::Jemalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { tikv_jemallocator::Jemalloc.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const PAYLOAD: usize = 64;
const SESSIONS: usize = 100_000;

fn client_bytes(n: usize) -> BytesMut {
    let mut b = BytesMut::new();
    for i in 0..n {
        let f = ClientFrame {
            msg_id: 7,
            server_id: ServerId::new(false, 3, 1, (i % 8) as u8),
            payload: Bytes::from(vec![i as u8; PAYLOAD]),
        };
        ClientCodec::encode(&f, &mut b).expect("encode");
    }
    b
}

fn backend_frame(session: i64) -> BackendFrame {
    BackendFrame {
        msg_type: 7,
        server_id: 0x0003_0100,
        object_id: session,
        opcode: Opcode::Trans,
        session_id: session,
        trace: None,
        payload: Bytes::from(vec![0x5a; PAYLOAD]),
    }
}

/// Client to backend, as a session task and its link do it: decode from the read buffer,
/// re-frame into the link's write buffer (drained as a write would).
struct Upward {
    read: BytesMut,
    wire: Bytes,
    out: BytesMut,
    client: ClientCodec,
    backend: BackendCodec,
}

impl Upward {
    fn new() -> Upward {
        Upward {
            read: BytesMut::with_capacity(64 * 1024),
            wire: client_bytes(1).freeze(),
            out: BytesMut::with_capacity(64 * 1024),
            client: ClientCodec::new(65_535),
            backend: BackendCodec::new(GateForm::Short, 1 << 20),
        }
    }

    fn step(&mut self) {
        if self.read.is_empty() {
            // A socket read lands in the same buffer again once its frames are gone.
            self.read.extend_from_slice(&self.wire);
        }
        let f = self
            .client
            .decode(&mut self.read)
            .expect("frame")
            .expect("whole");
        let b = BackendFrame {
            msg_type: i32::from(f.msg_id),
            server_id: f.server_id.0,
            object_id: 42,
            opcode: Opcode::Trans,
            session_id: 42,
            trace: None,
            payload: f.payload,
        };
        self.backend.encode(&b, &mut self.out).expect("encode");
        if self.out.len() > 32 * 1024 {
            black_box(&self.out[..]);
            self.out.clear();
        }
    }
}

/// Backend to client, as a link's reader does it: decode, re-frame into a slab, split off the
/// frame and hand it to its session's queue in a table of 100,000 sessions; the session task
/// takes it (here, at once).
struct Downward {
    read: BytesMut,
    wire: Bytes,
    slab: BytesMut,
    backend: BackendCodec,
    table: SessionTable,
    rxs: Vec<Inbox>,
    ids: Vec<SessionId>,
    next: usize,
}

impl Downward {
    fn new() -> Downward {
        let table = SessionTable::new();
        let mut rxs = Vec::new();
        let mut ids = Vec::new();
        for i in 0..SESSIONS {
            let id = SessionId((1 << 52) | (i as i64 * 4099));
            let (h, rx) = SessionHandle::new(64);
            table.insert(id, h);
            // Keep the receivers of 1,024 sessions to drain; the rest only fill the table.
            if i % (SESSIONS / 1024) == 0 {
                ids.push(id);
                rxs.push(rx);
            } else {
                std::mem::forget(rx);
            }
        }
        let backend = BackendCodec::new(GateForm::Short, 1 << 20);
        let mut wire = BytesMut::new();
        backend
            .encode(&backend_frame(0), &mut wire)
            .expect("encode");
        Downward {
            read: BytesMut::with_capacity(64 * 1024),
            wire: wire.freeze(),
            slab: BytesMut::with_capacity(64 * 1024),
            backend,
            table,
            rxs,
            ids,
            next: 0,
        }
    }

    fn step(&mut self) {
        if self.read.is_empty() {
            self.read.extend_from_slice(&self.wire);
        }
        let f = self
            .backend
            .decode(&mut self.read)
            .expect("frame")
            .expect("whole");
        let k = self.next % self.ids.len();
        self.next += 1;
        let c = ClientFrame {
            msg_id: f.msg_type as u16,
            server_id: ServerId(f.server_id),
            payload: f.payload,
        };
        if self.slab.capacity() - self.slab.len() < 1024 {
            self.slab.reserve(64 * 1024);
        }
        ClientCodec::encode(&c, &mut self.slab).expect("encode");
        let frame = self.slab.split().freeze();
        black_box(self.table.deliver(self.ids[k], frame));
        black_box(self.rxs[k].try_recv());
    }
}

/// Allocations per step over `n` steps after a warm-up.
fn allocs_per(n: u64, mut step: impl FnMut()) -> f64 {
    for _ in 0..10_000 {
        step();
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..n {
        step();
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

fn codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("game_codec");
    let client = ClientCodec::new(65_535);
    let wire = client_bytes(1).freeze();
    let mut read = BytesMut::with_capacity(64 * 1024);
    g.bench_function("client_decode_64B", |b| {
        b.iter(|| {
            if read.is_empty() {
                read.extend_from_slice(&wire);
            }
            black_box(client.decode(&mut read).expect("frame"))
        })
    });
    let frame = ClientFrame {
        msg_id: 7,
        server_id: ServerId(0x0003_0100),
        payload: Bytes::from(vec![1; PAYLOAD]),
    };
    let mut out = BytesMut::with_capacity(64 * 1024);
    g.bench_function("client_encode_64B", |b| {
        b.iter(|| {
            if out.len() > 32 * 1024 {
                out.clear();
            }
            ClientCodec::encode(black_box(&frame), &mut out).expect("encode")
        })
    });
    for (form, name) in [(GateForm::Short, "short"), (GateForm::Traced, "traced")] {
        let codec = BackendCodec::new(form, 1 << 20);
        let mut w = BytesMut::new();
        codec.encode(&backend_frame(42), &mut w).expect("encode");
        let w = w.freeze();
        let mut read = BytesMut::with_capacity(64 * 1024);
        g.bench_function(format!("backend_decode_64B_{name}"), |b| {
            b.iter(|| {
                if read.is_empty() {
                    read.extend_from_slice(&w);
                }
                black_box(codec.decode(&mut read).expect("frame"))
            })
        });
        let f = backend_frame(42);
        let mut out = BytesMut::with_capacity(64 * 1024);
        g.bench_function(format!("backend_encode_64B_{name}"), |b| {
            b.iter(|| {
                if out.len() > 32 * 1024 {
                    out.clear();
                }
                codec.encode(black_box(&f), &mut out).expect("encode")
            })
        });
    }
    g.finish();
}

fn forwarding(c: &mut Criterion) {
    let mut up = Upward::new();
    let mut down = Downward::new();
    let a_up = allocs_per(100_000, || up.step());
    let a_down = allocs_per(100_000, || down.step());
    // The session queue alone (the table's contract): it keeps its few slots once emptied, so
    // it allocates nothing in steady state; the re-framing must add nothing to it.
    let mut q = 0usize;
    let a_queue = allocs_per(100_000, || {
        q += 1;
        let k = q % down.ids.len();
        black_box(down.table.deliver(down.ids[k], Bytes::from_static(b"x")));
        black_box(down.rxs[k].try_recv());
    });
    println!(
        "allocations per frame: client->backend {a_up:.4}, backend->client {a_down:.4} \
         (of which the session queue alone {a_queue:.4})"
    );
    // The link's own path is proven allocation-free by tests/link_alloc_free.rs; here the slab
    // standing in for its re-framing buffer still costs about one allocation per 100 frames
    // (0.0103 on 2026-12-05, not the queue: that is 0), not tracked down yet. The guard keeps
    // it from growing; the upward step allocates nothing.
    assert!(
        a_up < 0.001 && a_down - a_queue < 0.02,
        "the forwarding path allocates: {a_up} / {a_down} per frame ({a_queue} in the queue)"
    );

    let mut g = c.benchmark_group("game_forward");
    g.bench_function("client_to_backend_64B", |b| b.iter(|| up.step()));
    g.bench_function("backend_to_client_64B_among_100k_sessions", |b| {
        b.iter(|| down.step())
    });
    let ids = down.ids.clone();
    let mut k = 0usize;
    g.bench_function("session_lookup_close_miss_among_100k", |b| {
        b.iter(|| {
            k += 1;
            // A close for an id no session has: the lookup alone.
            black_box(down.table.close(
                SessionId(ids[k % ids.len()].0 + 1),
                zkgate::game::CloseReason::Kicked,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, codecs, forwarding);
criterion_main!(benches);
