//! A game link forwards frames without an allocation per frame: a session's frame goes to a
//! backend and the backend's answer back to the session's queue, round trip after round
//! trip, on one thread whose allocations are counted (link tasks and the backend included).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zkgate::game::codec::{ClientFrame, GateForm, ServerId};
use zkgate::game::link::{Links, SessionOpen};
use zkgate::game::metrics::GameMetrics;
use zkgate::game::rules::{BackendProtocol, LinkMode};
use zkgate::game::session::{SessionHandle, SessionTable};
use zkgate::game::{ClientProtocol, SessionId};
use zkgate::upstream::config::UpstreamSection;
use zkgate::upstream::{PeerSettings, Protocol, Upstream, UpstreamPolicy};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

fn upstream() -> Arc<Upstream> {
    let definition: UpstreamSection = serde_yaml::from_str("name: alloc").expect("section");
    let policy = UpstreamPolicy::plain(PeerSettings {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(1),
        tls: None,
        protocol: Protocol::Http1,
    });
    Arc::new(Upstream::new(definition, policy, None, Vec::new(), None))
}

/// A backend that sends back every byte it reads: a Trans frame comes back as the same
/// Trans frame, to the same session.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn forwarding_a_frame_both_ways_does_not_allocate_per_frame() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let table = Arc::new(SessionTable::new());
    let links = Links::new(table.clone(), Arc::new(GameMetrics::new("alloc")));
    let up = upstream();
    let proto = BackendProtocol {
        link: LinkMode::Multiplexed,
        links: 1,
        gate: GateForm::Short,
        events: true,
        max_frame: 1 << 20,
    };
    let id = SessionId(42);
    let (handle, rx) = SessionHandle::new(64);
    table.insert(id, handle);
    let frame = ClientFrame {
        msg_id: 9,
        server_id: ServerId::new(false, 1, 2, 3),
        payload: Bytes::from_static(&[5; 64]),
    };
    let attached = rt.block_on(async {
        let addr = echo_backend().await;
        let open = SessionOpen {
            id,
            client: "127.0.0.1:5000".parse().expect("addr"),
            protocol: ClientProtocol::Tcp,
            server_id: frame.server_id,
            gateway_id: 1,
        };
        links.attach(&up, addr, proto, &open).await.expect("attach")
    });
    let round_trips = |n: usize| {
        rt.block_on(async {
            for _ in 0..n {
                attached.send(&frame).await.expect("send");
                let got = rx.recv().await;
                assert_eq!(&got[..4], &[64, 0, 9, 0], "length and msg id");
                assert_eq!(&got[8..], &frame.payload[..]);
            }
        })
    };
    // Warm up: buffers reach their working size, the runtime its steady state.
    round_trips(2_000);
    const N: usize = 5_000;
    let allocations = counting_alloc::allocations(|| round_trips(N));
    assert!(
        allocations <= N / 50,
        "{allocations} allocations for {N} round trips"
    );
    println!("{allocations} allocations for {N} round trips");
}
