//! The test game server (`examples/game_server.rs`) spoken to as a gateway would: the commands
//! the game e2e tests rely on do what the contract says, on one link carrying several sessions,
//! in both gate-header forms.

// The whole file is a test: clippy.toml's allow-unwrap-in-tests reaches only `#[test]` fns.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::game::*;
use zkgate::game::codec::{BackendCodec, BackendFrame, GateForm, Opcode};

/// A gateway's side of one link.
struct Link {
    s: TcpStream,
    codec: BackendCodec,
    buf: BytesMut,
}

impl Link {
    fn open(server: &GameServer, form: GateForm) -> Link {
        let s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Link {
            s,
            codec: BackendCodec::new(form, 1 << 20),
            buf: BytesMut::new(),
        }
    }

    fn send(&mut self, op: u8, session: i64, msg: i32, server_id: u32, payload: &[u8]) {
        let f = BackendFrame {
            msg_type: msg,
            server_id,
            object_id: session,
            opcode: Opcode::from_u8(op),
            session_id: session,
            trace: None,
            payload: Bytes::copy_from_slice(payload),
        };
        let mut out = BytesMut::new();
        self.codec.encode(&f, &mut out).unwrap();
        self.s.write_all(&out).unwrap();
    }

    fn recv(&mut self) -> Option<BackendFrame> {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn open_payload(port: u16) -> Vec<u8> {
    let mut p = BytesMut::new();
    p.put_u8(1);
    p.put_u8(4);
    p.put_slice(&[127, 0, 0, 9]);
    p.put_u16_le(port);
    p.put_u16_le(7);
    p.to_vec()
}

#[test]
fn the_test_server_answers_each_session_on_its_link_in_both_gate_forms() {
    for (form, arg) in [(GateForm::Short, "short"), (GateForm::Traced, "traced")] {
        let server = GameServer::start("alpha", &["--events", "--gate", arg]);
        let mut link = Link::open(&server, form);
        link.send(2, 11, 0, sid(3, 1, 0), &open_payload(4242));
        // Two sessions interleaved on one link: each answer carries its own session.
        link.send(1, 11, 77, sid(3, 1, 0), b"from 11");
        link.send(1, 12, 77, sid(3, 1, 5) | 1 << 31, b"from 12");
        for (session, body, id) in [
            (11, &b"from 11"[..], sid(3, 1, 0)),
            (12, b"from 12", sid(3, 1, 5) | 1 << 31),
        ] {
            let f = link.recv().unwrap();
            assert_eq!(
                (f.session_id, f.msg_type, f.server_id, &f.payload[..]),
                (session, 77, id, body)
            );
            assert_eq!(f.trace.is_some(), form == GateForm::Traced);
        }
        link.send(1, 11, i32::from(WHOAMI), 0, b"");
        assert_eq!(&link.recv().unwrap().payload[..], b"alpha");
        link.send(1, 11, i32::from(HELLO), 0, b"");
        assert_eq!(
            &link.recv().unwrap().payload[..],
            b"alpha proto=1 ip=127.0.0.9 port=4242 gateway=7"
        );
        link.send(1, 12, i32::from(HELLO), 0, b"");
        assert_eq!(&link.recv().unwrap().payload[..], b"alpha -");
        // Kick: a SessionClose from the server for that session.
        link.send(1, 12, i32::from(KICK), 0, b"");
        let f = link.recv().unwrap();
        assert_eq!((f.opcode, f.session_id), (Opcode::Other(3), 12));
        // Broadcast: one frame listing both sessions, then the payload.
        link.send(1, 11, i32::from(BROADCAST), 0, b"all");
        let f = link.recv().unwrap();
        assert_eq!(f.opcode, Opcode::Other(4));
        let count = u16::from_le_bytes([f.payload[0], f.payload[1]]) as usize;
        let mut ids: Vec<i64> = (0..count)
            .map(|i| i64::from_le_bytes(f.payload[2 + 8 * i..10 + 8 * i].try_into().unwrap()))
            .collect();
        ids.sort();
        assert_eq!(ids, [11, 12]);
        assert_eq!(&f.payload[2 + 8 * count..], b"all");
        // Flood: n frames of 1 KiB to that session.
        link.send(1, 12, i32::from(FLOOD), 0, &3u32.to_le_bytes());
        for _ in 0..3 {
            let f = link.recv().unwrap();
            assert_eq!((f.session_id, f.payload.len()), (12, 1024));
        }
        // Session events are counted.
        link.send(3, 12, 0, 0, &6u16.to_le_bytes());
        link.send(1, 11, i32::from(CLOSES), 0, b"");
        assert_eq!(
            &link.recv().unwrap().payload[..],
            b"opened=1 closed=1 reasons=6"
        );
    }
}

#[test]
fn the_test_server_without_events_closes_the_link_to_kick_and_dies_on_command() {
    let mut server = GameServer::start("beta", &[]);
    let mut link = Link::open(&server, GateForm::Short);
    link.send(1, 5, i32::from(KICK), 0, b"");
    assert!(link.recv().is_none(), "a per-session link closes on kick");
    let mut link = Link::open(&server, GateForm::Short);
    link.send(1, 6, i32::from(BROADCAST), 0, b"hi");
    let f = link.recv().unwrap();
    assert_eq!(
        (f.opcode, f.session_id, &f.payload[..]),
        (Opcode::Trans, 6, &b"hi"[..])
    );
    link.send(1, 6, i32::from(DIE), 0, b"");
    assert!(link.recv().is_none());
    assert!(common::eventually(Duration::from_secs(5), || !server.running()));
}
