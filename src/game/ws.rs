//! WebSocket clients of a game listener: the server side of the RFC 6455 handshake, answered
//! from the request head the sniffer already read, then tokio-tungstenite's framing over the
//! same stream with the bytes read past the head handed over. Binary messages carry the game's
//! 8-byte framing; a game frame may span messages and a message may hold several frames, so
//! the payloads are appended to the one buffer the client codec reads.

use std::io;

use pingora::protocols::Stream;
use ring::digest;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use base64::Engine as _;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a plain HTTP request gets: this port speaks the game protocol or WebSocket only.
pub const UPGRADE_REQUIRED: &[u8] = b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\n\
Connection: close\r\nContent-Type: text/plain\r\nContent-Length: 47\r\n\r\n\
this port speaks the game protocol or WebSocket";

/// The read buffer tungstenite grows from (its default is 128 KiB per connection).
const READ_BUFFER: usize = 4096;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// The 101 answer to an upgrade with `key`.
pub fn switching_protocols(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes()
}

/// tungstenite's limits for a listener whose game frames carry at most `max_frame` payload
/// bytes: a message may hold two whole frames at most, which bounds what one client makes the
/// gateway buffer to about what a TCP client can.
pub fn config(max_frame: usize) -> WebSocketConfig {
    let max_message = 2 * (max_frame + super::codec::CLIENT_HEADER).max(4096);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Every message is written at once: the session coalesces its queue into one message.
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Answers the upgrade with `key` on `io` and makes it a WebSocket; `rest` is what the client
/// sent after its request head (its first messages, possibly).
pub async fn accept(
    mut io: Stream,
    key: &str,
    rest: Vec<u8>,
    max_frame: usize,
) -> io::Result<WebSocketStream<Stream>> {
    io.write_all(&switching_protocols(key)).await?;
    io.flush().await?;
    Ok(WebSocketStream::from_partially_read(io, rest, Role::Server, Some(config(max_frame))).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455_s_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let answer = String::from_utf8(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(answer.starts_with("HTTP/1.1 101 "));
        assert!(answer.ends_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
    }

    #[test]
    fn the_426_answer_has_the_length_it_says() {
        let text = std::str::from_utf8(UPGRADE_REQUIRED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
