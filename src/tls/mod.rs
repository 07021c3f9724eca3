//! TLS termination on the HTTP listeners, with rustls: certificates chosen by SNI, client
//! certificates (mTLS), the facts of each connection ([`TlsInfo`]) and the TLS metrics.
//!
//! A listener's [`ListenerTls`] is built with its config and lives in the snapshot, so a
//! reload that changes certificates (or versions, or client auth) hands new connections the
//! new acceptor while open ones keep the one they were handshaken with.

pub mod config;
pub mod info;
pub mod metrics;
pub mod names;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::Stream;

pub use self::config::TlsSection;
pub use self::info::{client_cert_headers, ClientCert, TlsInfo};
use self::metrics::HandshakeMetrics;

/// One listener's TLS, ready to handshake.
pub struct ListenerTls {
    listener: String,
    acceptor: Acceptor,
    certificates: Vec<Certificate>,
    metrics: HandshakeMetrics,
}

/// What the expiry gauge says of one configured certificate.
#[derive(Debug, Clone)]
struct Certificate {
    /// Its first name (`certificates[i]` when it has none).
    name: String,
    /// Unix seconds.
    not_after: i64,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("listener", &self.listener)
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

/// Every TLS setting applies on reload (new connections get the new acceptor), so two TLS
/// setups of a listener are equal for the "takes effect on restart" comparison; whether a
/// listener has TLS at all is the `Option` around this, and that does need a restart.
impl PartialEq for ListenerTls {
    fn eq(&self, _: &ListenerTls) -> bool {
        true
    }
}

/// Where a listener's connections get the TLS they are handshaken with: the one of the
/// serving config, read once per connection.
pub type TlsSource = Arc<dyn Fn() -> Arc<ListenerTls> + Send + Sync>;

/// Why a handshake gave no stream.
#[derive(Debug)]
pub enum Refused {
    /// Not done by the deadline.
    Timeout,
    /// The client or the handshake failed (logged at debug: scanners do this all day).
    Failed,
}

/// Handshakes `io` under `deadline`, counting the result.
pub async fn handshake(
    tls: &ListenerTls,
    io: Stream,
    deadline: tokio::time::Instant,
) -> Result<Stream, Refused> {
    let start = Instant::now();
    let m = &tls.metrics;
    match tokio::time::timeout_at(deadline, tls.acceptor.tls_handshake(stream::Raw(io))).await {
        Err(_) => {
            m.timeout.inc();
            Err(Refused::Timeout)
        }
        Ok(Err(e)) => {
            m.failed.inc();
            log::debug!("listener {}: TLS handshake failed: {e}", tls.listener);
            Err(Refused::Failed)
        }
        Ok(Ok(stream)) => {
            m.duration.observe(start.elapsed().as_secs_f64());
            let version = stream
                .ssl_digest()
                .and_then(|d| d.extension.get::<TlsInfo>().map(|i| i.version));
            if version == Some("TLSv1.2") {
                m.ok_12.inc();
            } else {
                m.ok_13.inc();
            }
            Ok(Box::new(stream))
        }
    }
}

/// Sets the certificate expiry gauges to the certificates of `listeners` (the TLS of every
/// listener of the serving config), removing those of certificates no longer configured.
pub fn publish_certificates<'a>(listeners: impl IntoIterator<Item = &'a ListenerTls>) {
    metrics::publish_expiry(listeners.into_iter().flat_map(|l| {
        l.certificates
            .iter()
            .map(|c| (l.listener.as_str(), c.name.as_str(), c.not_after))
    }));
}
