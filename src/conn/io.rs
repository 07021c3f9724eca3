//! The IO wrapper around each accepted client stream: it notes when the first byte of a request
//! arrives (where the head deadline of a keep-alive request starts), and in an upgraded tunnel
//! when bytes last moved either way (it sees every read from the client and every write to it,
//! which carry what the backend sent), ending the tunnel when they stop for its idle timeout.
//! Everything else passes through to Pingora's stream.

use std::any::Any;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::h2::PREFACE;
use super::state::{ConnState, Phase, Silenced};
use super::{clock, ListenerConns};

pub struct Guarded {
    inner: Stream,
    state: Arc<ConnState>,
    listener: Arc<ListenerConns>,
    /// The first bytes of a new connection, read before Pingora's session exists (the first
    /// byte, and on an HTTP/2-capable connection as much of the preface as matched), handed to
    /// its first reads: `stash[stashed]` is what is still to hand over.
    stash: [u8; PREFACE.len()],
    stashed: Range<usize>,
    /// Bytes the HTTP/1 fast path read and gave back, for Pingora's session to read first
    /// (see [`Guarded::unread`]). Empty, and so unallocated, on most connections.
    pushback: Bytes,
    /// A tunnel's wake-up at the end of its silence, made at its first wait (a tunnel is rare
    /// and long: one allocation for its life, none per byte).
    silence: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .finish()
    }
}

impl Guarded {
    pub fn new(inner: Stream, state: Arc<ConnState>, listener: Arc<ListenerConns>) -> Guarded {
        Guarded {
            inner,
            state,
            listener,
            stash: [0; PREFACE.len()],
            stashed: 0..0,
            pushback: Bytes::new(),
            silence: None,
        }
    }

    /// For a tunnel's read or write that has to wait: `Ready` with the error that ends the
    /// tunnel once its silence allowance has passed, else the timer is armed to wake this task
    /// then. The timer is moved only when it fires: it may be early (bytes moved since it was
    /// armed), never late, since the end of the silence only moves later.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        if let Some(why) = self.state.silence_passed(clock::now()) {
            let text = match why {
                Silenced::Handshake => "the backend did not answer the upgrade in time",
                Silenced::Idle => "no byte moved either way for the upgrade idle_timeout",
            };
            return Poll::Ready(std::io::Error::new(std::io::ErrorKind::TimedOut, text));
        }
        let until = clock::to_tokio(self.state.silent_until());
        let timer = self
            .silence
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if timer.as_mut().poll(cx).is_ready() {
            timer.as_mut().reset(until);
            if timer.as_mut().poll(cx).is_ready() {
                // Due by tokio's coarser clock, not yet by ours: look again soon.
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }

    /// Notes bytes moved by a tunnel's read or write, or its wait (`Pending`): the error that
    /// ends it when the wait has outlasted its silence.
    #[inline]
    fn tunnel_io(&mut self, cx: &mut Context<'_>, moved: Poll<bool>) -> Option<std::io::Error> {
        match moved {
            Poll::Ready(true) => {
                self.state.on_tunnel_io(clock::now());
                None
            }
            Poll::Ready(false) => None,
            Poll::Pending => match self.poll_silence(cx) {
                Poll::Ready(e) => Some(e),
                Poll::Pending => None,
            },
        }
    }

    /// Waits for the connection's first byte and keeps it for the next read: `Ok(false)` when
    /// the client closed without sending anything.
    pub async fn first_byte(&mut self) -> std::io::Result<bool> {
        let mut b = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut self.inner, &mut b).await?;
        if n == 0 {
            return Ok(false);
        }
        self.stash[0] = b[0];
        self.stashed = 0..1;
        self.state.on_first_byte(clock::now());
        Ok(true)
    }

    /// After [`Guarded::first_byte`]: reads on while what came is the start of `prefix`, and
    /// says whether all of `prefix` came. Never reads past `prefix`'s length, and keeps every
    /// byte read for the next reads.
    pub async fn read_while_prefix_of(&mut self, prefix: &[u8]) -> std::io::Result<bool> {
        let want = prefix.len().min(self.stash.len());
        while self.stashed.end < want
            && self.stash[..self.stashed.end] == prefix[..self.stashed.end]
        {
            let end = self.stashed.end;
            let n =
                tokio::io::AsyncReadExt::read(&mut self.inner, &mut self.stash[end..want]).await?;
            if n == 0 {
                // Closed within the preface: whoever reads next sees the bytes, then the end.
                return Ok(false);
            }
            self.stashed.end += n;
        }
        Ok(self.stash[..self.stashed.end] == *prefix)
    }

    /// Gives back `bytes`, read from this stream, to be read again before anything new: what
    /// the fast path took of a request it leaves to Pingora's proxy. The first bytes kept by
    /// [`Guarded::first_byte`] were read before them, so none may still be waiting.
    pub fn unread(&mut self, bytes: Bytes) {
        debug_assert!(self.stashed.is_empty() && self.pushback.is_empty());
        self.pushback = bytes;
    }

    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    pub fn listener(&self) -> &ListenerConns {
        &self.listener
    }

    /// The wrapper of a session's stream, if it has one (HTTP/1 on a zkgate listener).
    pub fn of(stream: &Stream) -> Option<&Guarded> {
        let any: &dyn Any = (**stream).as_any();
        any.downcast_ref::<Guarded>()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.stashed.is_empty() {
            let from = self.stashed.start;
            let n = self.stashed.len().min(buf.remaining());
            buf.put_slice(&self.stash[from..from + n]);
            self.stashed.start += n;
            // And whatever else has come, without waiting for more.
            if self.stashed.is_empty() && buf.remaining() > 0 {
                if let Poll::Ready(Err(e)) = Pin::new(&mut self.inner).poll_read(cx, buf) {
                    return Poll::Ready(Err(e));
                }
            }
            return Poll::Ready(Ok(()));
        }
        if !self.pushback.is_empty() {
            let n = self.pushback.len().min(buf.remaining());
            buf.put_slice(&self.pushback[..n]);
            self.pushback.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let phase = self.state.phase();
        if phase <= Phase::Idle && matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_first_byte(clock::now());
        } else if phase.is_tunnel() {
            let moved = match &r {
                Poll::Ready(Ok(())) => Poll::Ready(buf.filled().len() > before),
                Poll::Ready(Err(_)) => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            };
            if let Some(e) = self.tunnel_io(cx, moved) {
                return Poll::Ready(Err(e));
            }
        }
        r
    }
}

impl Guarded {
    /// A write toward the client carries what the backend sent: in a tunnel it counts as bytes
    /// moving, and a write that cannot go out ends the tunnel when its silence has passed.
    #[inline]
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if self.state.phase().is_tunnel() {
            let moved = match &r {
                Poll::Ready(n) => Poll::Ready(n.as_ref().is_ok_and(|n| *n > 0)),
                Poll::Pending => Poll::Pending,
            };
            if let Some(e) = self.tunnel_io(cx, moved) {
                return Poll::Ready(Err(e));
            }
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let mut stashed = &self.stash[self.stashed.clone()];
        if stashed.is_empty() {
            stashed = &self.pushback;
        }
        if stashed.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        if stashed.len() >= buf.len() {
            buf.copy_from_slice(&stashed[..buf.len()]);
            return Ok(true);
        }
        // Part of what is asked for was read already and the rest not yet: no peek.
        Ok(false)
    }
}

/// The peer's IP address, for the per-address limit.
pub fn peer_ip(stream: &Stream) -> Option<std::net::IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|a| a.ip())
}
