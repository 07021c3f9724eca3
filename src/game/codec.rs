//! The game gateway's wire format, bit-exact with the seed (notes/game-router.md §1.1), all
//! little-endian. No I/O: a decoder takes what is buffered and yields whole frames.
//!
//! - A client frame is an 8-byte header (u16 payload length, u16 message id, u32 ServerID)
//!   and its payload. ServerID packs the zip flag (bit 31), worldId (bits 16-30), serverType
//!   (bits 8-15) and instId (bits 0-7).
//! - A backend frame is the 20-byte server header (i32 length, i32 type, u32 ServerID,
//!   i64 ObjectID), then the GateMsgHeader (u8 opcode, i64 SessionID, and in the traced form a
//!   16-byte trace id and an 8-byte span id), then the payload. The length counts the gate
//!   header and the payload. Which gate-header form a backend speaks is configured: nothing in
//!   the bytes says so.
//!
//! Where the seed truncated (a backend payload over 65,535 bytes re-framed for a client) or
//! misread (a negative length), these are errors: the caller closes that connection only.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The client header's size.
pub const CLIENT_HEADER: usize = 8;
/// The server header's size (the seed's comments say 16; the code writes 20).
pub const SERVER_HEADER: usize = 20;
/// The gate header's size in the seed's short form.
pub const GATE_SHORT: usize = 9;
/// The gate header's size with the trace and span ids.
pub const GATE_TRACED: usize = 33;
/// The largest client payload the u16 length can say.
pub const MAX_CLIENT_PAYLOAD: usize = u16::MAX as usize;

/// A client frame's ServerID: where the client wants the message to go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServerId(pub u32);

impl ServerId {
    const ZIP: u32 = 1 << 31;

    /// Packs the parts; `world` keeps its low 15 bits.
    pub fn new(zip: bool, world: u16, server_type: u8, inst: u8) -> ServerId {
        let zip = if zip { Self::ZIP } else { 0 };
        ServerId(
            zip | (u32::from(world & 0x7fff) << 16)
                | (u32::from(server_type) << 8)
                | u32::from(inst),
        )
    }

    /// Whether the payload is compressed (passed through, never acted on).
    pub fn zip(self) -> bool {
        self.0 & Self::ZIP != 0
    }

    /// The world (15 bits); 0 in a routing rule is a wildcard.
    pub fn world(self) -> u16 {
        ((self.0 >> 16) & 0x7fff) as u16
    }

    pub fn server_type(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// The instance, for rules that route by it.
    pub fn inst(self) -> u8 {
        self.0 as u8
    }
}

/// One frame between a client and the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFrame {
    pub msg_id: u16,
    pub server_id: ServerId,
    pub payload: Bytes,
}

/// The GateMsgHeader opcodes. The seed defines only `Trans`; the others are zkgate's documented
/// extension for backends configured to receive session events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// A client message (the seed's only opcode).
    Trans,
    /// Any other value: carried as is, for the layer above to accept or refuse.
    Other(u8),
}

impl Opcode {
    pub fn from_u8(b: u8) -> Opcode {
        match b {
            1 => Opcode::Trans,
            other => Opcode::Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Opcode::Trans => 1,
            Opcode::Other(b) => b,
        }
    }
}

/// The gate header's trace context (the traced form only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// Which gate-header form a backend speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GateForm {
    /// 9 bytes: opcode and SessionID.
    #[default]
    Short,
    /// 33 bytes: with a trace id and a span id.
    Traced,
}

impl GateForm {
    /// The header's size in bytes.
    pub fn size(self) -> usize {
        match self {
            GateForm::Short => GATE_SHORT,
            GateForm::Traced => GATE_TRACED,
        }
    }
}

/// One frame between the gateway and a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendFrame {
    /// The message type: a client's message id, widened.
    pub msg_type: i32,
    pub server_id: u32,
    /// The seed sends the SessionID here as well.
    pub object_id: i64,
    pub opcode: Opcode,
    pub session_id: i64,
    /// Present in the traced form (zeros are written when a traced backend gets none).
    pub trace: Option<Trace>,
    pub payload: Bytes,
}

/// Why bytes are not a frame. The connection they came on is closed; nothing else is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A length over the configured bound (or, toward a client, over 65,535).
    TooLarge { len: usize, max: usize },
    /// A backend length below the gate header's size, or negative.
    BadLength(i64),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes, over the bound of {max}")
            }
            FrameError::BadLength(n) => write!(f, "frame length {n} cannot hold its headers"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Client frames, with the payload bounded by `max_payload` (at most 65,535).
#[derive(Clone, Copy, Debug)]
pub struct ClientCodec {
    max_payload: usize,
}

impl ClientCodec {
    pub fn new(max_payload: usize) -> ClientCodec {
        ClientCodec {
            max_payload: max_payload.min(MAX_CLIENT_PAYLOAD),
        }
    }

    /// The next whole frame of `buf` (taken out of it), `None` until one is there.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<ClientFrame>, FrameError> {
        let Some(head) = buf.get(..CLIENT_HEADER) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_le_bytes([head[0], head[1]]));
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        if buf.len() < CLIENT_HEADER + len {
            buf.reserve(CLIENT_HEADER + len - buf.len());
            return Ok(None);
        }
        let mut head = buf.split_to(CLIENT_HEADER);
        head.advance(2);
        let msg_id = head.get_u16_le();
        let server_id = ServerId(head.get_u32_le());
        let payload = buf.split_to(len).freeze();
        Ok(Some(ClientFrame {
            msg_id,
            server_id,
            payload,
        }))
    }

    /// Appends `frame` to `out`; a payload over 65,535 bytes is an error, never truncated.
    pub fn encode(frame: &ClientFrame, out: &mut BytesMut) -> Result<(), FrameError> {
        let len = frame.payload.len();
        let Ok(len16) = u16::try_from(len) else {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_CLIENT_PAYLOAD,
            });
        };
        out.reserve(CLIENT_HEADER + len);
        out.put_u16_le(len16);
        out.put_u16_le(frame.msg_id);
        out.put_u32_le(frame.server_id.0);
        out.put_slice(&frame.payload);
        Ok(())
    }
}

/// Backend frames of one gate-header form, with the length (gate header and payload) bounded.
#[derive(Clone, Copy, Debug)]
pub struct BackendCodec {
    form: GateForm,
    max_len: usize,
}

impl BackendCodec {
    pub fn new(form: GateForm, max_len: usize) -> BackendCodec {
        BackendCodec {
            form,
            max_len: max_len.min(i32::MAX as usize),
        }
    }

    pub fn form(&self) -> GateForm {
        self.form
    }

    /// The next whole frame of `buf` (taken out of it), `None` until one is there.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<BackendFrame>, FrameError> {
        let Some(head) = buf.get(..SERVER_HEADER) else {
            return Ok(None);
        };
        let raw = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let gate = self.form.size();
        let len = match usize::try_from(raw) {
            Ok(n) if n >= gate => n,
            _ => return Err(FrameError::BadLength(raw.into())),
        };
        if len > self.max_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        if buf.len() < SERVER_HEADER + len {
            buf.reserve(SERVER_HEADER + len - buf.len());
            return Ok(None);
        }
        let mut head = buf.split_to(SERVER_HEADER + gate);
        head.advance(4);
        let msg_type = head.get_i32_le();
        let server_id = head.get_u32_le();
        let object_id = head.get_i64_le();
        let opcode = Opcode::from_u8(head.get_u8());
        let session_id = head.get_i64_le();
        let trace = match self.form {
            GateForm::Short => None,
            GateForm::Traced => {
                let mut t = Trace::default();
                head.copy_to_slice(&mut t.trace_id);
                head.copy_to_slice(&mut t.span_id);
                Some(t)
            }
        };
        let payload = buf.split_to(len - gate).freeze();
        Ok(Some(BackendFrame {
            msg_type,
            server_id,
            object_id,
            opcode,
            session_id,
            trace,
            payload,
        }))
    }

    /// Appends `frame` in this codec's form to `out`.
    pub fn encode(&self, frame: &BackendFrame, out: &mut BytesMut) -> Result<(), FrameError> {
        let gate = self.form.size();
        let len = gate + frame.payload.len();
        if len > self.max_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        out.reserve(SERVER_HEADER + len);
        // `max_len` is at most i32::MAX.
        out.put_i32_le(len as i32);
        out.put_i32_le(frame.msg_type);
        out.put_u32_le(frame.server_id);
        out.put_i64_le(frame.object_id);
        out.put_u8(frame.opcode.as_u8());
        out.put_i64_le(frame.session_id);
        if self.form == GateForm::Traced {
            let t = frame.trace.unwrap_or_default();
            out.put_slice(&t.trace_id);
            out.put_slice(&t.span_id);
        }
        out.put_slice(&frame.payload);
        Ok(())
    }
}

/// Every frame both decoders find in `data`, fed in pieces of varying size; never panics
/// (the fuzz target), and what decodes re-encodes to the same bytes.
pub fn exercise(data: &[u8]) {
    let client = ClientCodec::new(MAX_CLIENT_PAYLOAD);
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match client.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(ClientCodec::encode(&f, &mut out).is_ok(), "{f:?}");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let consumed = data.len() - buf.len();
    assert_eq!(
        &out[..],
        &data[..consumed],
        "client frames re-encode as read"
    );
    for form in [GateForm::Short, GateForm::Traced] {
        let codec = BackendCodec::new(form, 1 << 20);
        let mut buf = BytesMut::from(data);
        let mut out = BytesMut::new();
        while let Ok(Some(f)) = codec.decode(&mut buf) {
            assert!(codec.encode(&f, &mut out).is_ok(), "{f:?}");
        }
        assert_eq!(&out[..], &data[..data.len() - buf.len()], "{form:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_id_packs_as_the_seed_does() {
        // zip, world 0x1234, type 7, inst 9: the seed's ExtractServerIDInfo shifts and masks.
        let id = ServerId::new(true, 0x1234, 7, 9);
        assert_eq!(id.0, 0x8000_0000 | 0x1234 << 16 | 7 << 8 | 9);
        assert!(id.zip());
        assert_eq!((id.world(), id.server_type(), id.inst()), (0x1234, 7, 9));
        // The world keeps 15 bits; the 16th is the zip flag's.
        let id = ServerId::new(false, 0xffff, 255, 255);
        assert!(!id.zip());
        assert_eq!(id.world(), 0x7fff);
    }

    #[test]
    fn a_client_frame_has_the_seeds_bytes() {
        let f = ClientFrame {
            msg_id: 0x0102,
            server_id: ServerId(0x8003_0405),
            payload: Bytes::from_static(b"hi"),
        };
        let mut out = BytesMut::new();
        ClientCodec::encode(&f, &mut out).unwrap();
        assert_eq!(&out[..], b"\x02\x00\x02\x01\x05\x04\x03\x80hi");
        let got = ClientCodec::new(1024).decode(&mut out).unwrap();
        assert_eq!(got, Some(f));
        assert!(out.is_empty());
    }

    #[test]
    fn a_backend_frame_has_the_seeds_bytes_in_both_forms() {
        let f = BackendFrame {
            msg_type: 7,
            server_id: 0,
            object_id: 42,
            opcode: Opcode::Trans,
            session_id: 42,
            trace: None,
            payload: Bytes::from_static(b"xyz"),
        };
        let short = BackendCodec::new(GateForm::Short, 1 << 16);
        let mut out = BytesMut::new();
        short.encode(&f, &mut out).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&12i32.to_le_bytes()); // 9 + 3
        want.extend_from_slice(&7i32.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(&42i64.to_le_bytes());
        want.push(1);
        want.extend_from_slice(&42i64.to_le_bytes());
        want.extend_from_slice(b"xyz");
        assert_eq!(&out[..], &want[..]);
        assert_eq!(short.decode(&mut out).unwrap(), Some(f.clone()));

        let traced = BackendCodec::new(GateForm::Traced, 1 << 16);
        let t = Trace {
            trace_id: [3; 16],
            span_id: [4; 8],
        };
        let f = BackendFrame {
            trace: Some(t),
            ..f
        };
        traced.encode(&f, &mut out).unwrap();
        assert_eq!(out.len(), SERVER_HEADER + GATE_TRACED + 3);
        assert_eq!(&out[..4], &36i32.to_le_bytes());
        assert_eq!(traced.decode(&mut out).unwrap(), Some(f));
    }

    #[test]
    fn frames_arrive_in_any_pieces() {
        let codec = ClientCodec::new(MAX_CLIENT_PAYLOAD);
        let mut wire = BytesMut::new();
        let mut sent = Vec::new();
        for i in 0..50u16 {
            let f = ClientFrame {
                msg_id: i,
                server_id: ServerId::new(i % 2 == 0, i, i as u8, 1),
                payload: Bytes::from(vec![i as u8; usize::from(i) * 37]),
            };
            ClientCodec::encode(&f, &mut wire).unwrap();
            sent.push(f);
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        let mut n = 1;
        while !rest.is_empty() {
            let take = n.min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            n = n * 7 % 97 + 1;
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, sent);
    }

    #[test]
    fn bad_lengths_are_errors_not_truncations() {
        // Toward a client, 65,536 bytes cannot be said.
        let big = ClientFrame {
            msg_id: 1,
            server_id: ServerId(0),
            payload: Bytes::from(vec![0; MAX_CLIENT_PAYLOAD + 1]),
        };
        assert!(matches!(
            ClientCodec::encode(&big, &mut BytesMut::new()),
            Err(FrameError::TooLarge { .. })
        ));
        // A client payload over the configured bound is refused from its header alone.
        let mut buf = BytesMut::from(&b"\x00\x10\x01\x00\x00\x00\x00\x00"[..]);
        assert_eq!(
            ClientCodec::new(1024).decode(&mut buf),
            Err(FrameError::TooLarge {
                len: 4096,
                max: 1024
            })
        );
        // A backend length that is negative or cannot hold the gate header.
        let short = BackendCodec::new(GateForm::Short, 1 << 16);
        let mut head = BytesMut::from(&(-1i32).to_le_bytes()[..]);
        head.extend_from_slice(&[0; 16]);
        assert_eq!(short.decode(&mut head), Err(FrameError::BadLength(-1)));
        let mut head = BytesMut::from(&8i32.to_le_bytes()[..]);
        head.extend_from_slice(&[0; 16]);
        assert_eq!(short.decode(&mut head), Err(FrameError::BadLength(8)));
        // The seed's 9-byte reader would misread a traced frame: the traced codec refuses a
        // length that cannot hold 33 bytes.
        let traced = BackendCodec::new(GateForm::Traced, 1 << 16);
        let mut head = BytesMut::from(&20i32.to_le_bytes()[..]);
        head.extend_from_slice(&[0; 16]);
        assert_eq!(traced.decode(&mut head), Err(FrameError::BadLength(20)));
        let mut head = BytesMut::from(&(1i32 << 20).to_le_bytes()[..]);
        head.extend_from_slice(&[0; 16]);
        assert!(matches!(
            short.decode(&mut head),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic_and_frames_round_trip() {
        let mut rng = fastrand::Rng::with_seed(15);
        for _ in 0..2_000 {
            let len = rng.usize(0..300);
            let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            exercise(&data);
        }
    }
}
