//! The entry points of the fuzz targets under `fuzz/`, here so that `tests/fuzz_corpora.rs`
//! replays every corpus file through exactly what the fuzzer ran: a crash found once stays a
//! failing test until it is fixed. Each takes arbitrary bytes and panics only on a defect.

/// A config's text through the size and nesting bounds, the YAML parser, validation and the
/// build (templates compiled and trial-rendered), as `zkgate check` and every reload run them;
/// see [`crate::config::parse::load_offline`] for what is left out to stay off the network.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::parse::load_offline(text);
    }
}

/// A webhook body through Alertmanager's payload parser and every ready-made template.
pub fn alert_payload(data: &[u8]) {
    crate::plugin::alert::exercise::parse_and_render_all(data);
}

/// A ZooKeeper instance node through discovery's `parse_instance`: the bytes up to the first
/// newline are the node's name (lossily UTF-8), the rest its data.
pub fn zk_instance(data: &[u8]) {
    let (name, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&data[..i]), &data[i + 1..]),
        None => ("".into(), data),
    };
    if let Ok(i) = zkgate_discovery::parse_instance(&name, body) {
        // What the gateway relies on once an instance is accepted.
        assert!(!i.host.is_empty() && i.port != 0, "{i:?} from {name:?}");
    }
}

/// A request target through the path normalizer, checked for normal form, idempotence and a
/// decoding backend seeing the segments the routes matched ([`crate::route::path::check_invariants`]).
pub fn path(data: &[u8]) {
    if let Err(e) = crate::route::path::check_invariants(data) {
        panic!("{e}");
    }
}

/// A connection's first bytes through the PROXY protocol reader and parser, checked for never
/// reading past a header and for taking whole every header `ppp` accepts
/// ([`crate::conn::proxy_protocol::exercise`]).
pub fn proxy_protocol(data: &[u8]) {
    crate::conn::proxy_protocol::exercise(data);
}

/// An O2 IMS notification body through the dialect parser and the eviction mapping, checked
/// for answering only 400 or 413 to what it refuses and for evicting something exactly when it
/// accepts ([`crate::plugin::cache::o2::dialect::parse`], [`crate::plugin::cache::o2::mapping::map`]).
pub fn notification(data: &[u8]) {
    use crate::plugin::cache::o2::{dialect, mapping};
    match dialect::parse(data) {
        Err(r) => assert!(matches!(r.status, 400 | 413), "{r:?}"),
        Ok(n) => {
            let mut out = crate::plugin::cache::store::TagSet::new();
            let m = mapping::map(&n, "fuzz", &mut out);
            assert_eq!(
                m == mapping::Mapped::Unknown,
                out.is_empty(),
                "{m:?} {out:?}"
            );
        }
    }
}

/// A byte stream through the game router's client and backend frame decoders, fed in pieces,
/// checked for re-encoding every decoded frame to the bytes it came from
/// ([`crate::game::codec::exercise`]); and as a connection's first bytes through the sniffer
/// and the request-head reader ([`crate::game::sniff::exercise`]).
pub fn game_frames(data: &[u8]) {
    crate::game::codec::exercise(data);
    crate::game::sniff::exercise(data);
}

/// Bytes through the HTTP/1 fast path's head parsers and editors and its chunked-body scanner
/// ([`crate::proxy::fast::head::exercise`]).
pub fn fast_head(data: &[u8]) {
    crate::proxy::fast::head::exercise(data);
}

/// A value read from the cache's Redis tier through the entry decoder and, when it decodes, its
/// meta through Pingora's `CacheMeta::deserialize`, as a hit reads it: a Redis that holds
/// anything costs a miss, never a panic. Checked: the head decoder (purges by prefix) reads
/// what the entry decoder reads, and a decoded entry encodes back to the same bytes.
pub fn redis_entry(data: &[u8]) {
    use crate::plugin::cache::store::redis;
    let head = redis::decode_head(data);
    let Some(entry) = redis::decode(bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    let head = head.expect("decode_head reads every value decode reads");
    assert_eq!(
        (head.created_ms, head.target.as_str()),
        (entry.created_ms, &*entry.target)
    );
    assert!(
        redis::encode(&entry) == data,
        "decode then encode changed the value"
    );
    let _ = pingora::cache::CacheMeta::deserialize(&entry.meta.0, &entry.meta.1);
}
