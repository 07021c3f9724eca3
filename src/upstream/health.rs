//! Active health checks: every backend of an upstream with `health_check:` is probed on an
//! interval (an HTTP request or a TCP connect) off the request path; `fall` failures in a row
//! take it out of rotation and `rise` passes bring it back. An HTTP probe goes through Pingora's
//! connector, so that a TLS upstream is checked over HTTPS with its own TLS settings.
//! [`Upstream::tick`], called by the runtime's housekeeping, starts the probes that are due and
//! does the upstream's other periodic work (ejections that are over, slow-start ramps, gauges).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{CONNECTION, HOST, USER_AGENT};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use tokio::net::TcpStream;

use super::state::{BackendState, UNHEALTHY};
use super::{PeerSettings, Upstream};
use crate::metrics::METRICS;

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub start_unhealthy: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Tcp,
    Http {
        method: String,
        path: String,
        /// The Host header; the backend's address when `None`.
        host: Option<String>,
        /// Inclusive ranges of passing statuses.
        statuses: Vec<(u16, u16)>,
    },
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_RISE: u32 = 2;
    pub const DEFAULT_FALL: u32 = 3;

    /// One probe of the backend at `addr`, connected to as `settings` say (TLS or not, SNI,
    /// verification): `Ok` when it passes, the reason otherwise.
    pub async fn probe(
        &self,
        prober: &Prober,
        addr: SocketAddr,
        settings: &PeerSettings,
    ) -> Result<(), String> {
        if matches!(self.probe, Probe::Http { .. }) {
            // The connector is made on the first HTTP probe, and loading the CA roots it holds
            // takes a while (hundreds of ms in a debug build on a loaded machine): not out of the
            // probe's own timeout, which would fail a healthy backend's first check.
            prober.connector();
        }
        let probe = async {
            match &self.probe {
                Probe::Tcp => TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect: {e}")),
                Probe::Http {
                    method,
                    path,
                    host,
                    statuses,
                } => {
                    let peer = settings.peer(addr);
                    let status = prober.status(&peer, method, path, host.as_deref()).await?;
                    if statuses
                        .iter()
                        .any(|(lo, hi)| (*lo..=*hi).contains(&status))
                    {
                        Ok(())
                    } else {
                        Err(format!("status {status}"))
                    }
                }
            }
        };
        match tokio::time::timeout(self.timeout, probe).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Counts one probe result; flips the backend's health after `rise` or `fall` in a row.
    fn record(&self, upstream: &str, state: &BackendState, result: Result<(), String>) {
        match result {
            Ok(()) => {
                state.fails.store(0, Ordering::Relaxed);
                let passes = state.passes.fetch_add(1, Ordering::Relaxed) + 1;
                if passes >= self.rise && state.is(UNHEALTHY) && state.set(UNHEALTHY, false) {
                    state.rejoined();
                    log::info!(
                        "upstream {upstream}: backend {} healthy after {passes} passing checks",
                        state.addr
                    );
                }
            }
            Err(why) => {
                state.passes.store(0, Ordering::Relaxed);
                let fails = state.fails.fetch_add(1, Ordering::Relaxed) + 1;
                METRICS
                    .health_check_failures
                    .with_label_values(&[upstream])
                    .inc();
                if fails >= self.fall && state.set(UNHEALTHY, true) {
                    log::warn!(
                        "upstream {upstream}: backend {} unhealthy after {fails} failed checks: {why}",
                        state.addr
                    );
                }
            }
        }
    }
}

/// What HTTP probes connect with: Pingora's HTTP connector, with the process's CA roots
/// (`server.ca_file`, else the system's), the same the proxy verifies upstreams with. A probe
/// takes a fresh connection each time (a check must see that a new one can be made) and closes
/// it after the status line.
pub struct Prober {
    options: ConnectorOptions,
    /// Made on the first HTTP probe: loading the CA roots costs the process about 2 MB, which
    /// a gateway with no HTTP health check should not pay.
    connector: OnceLock<Connector>,
}

impl Prober {
    /// Probes connect as the proxy does (CA roots, bind addresses), with no idle pool.
    pub fn new(conf: &ServerConf) -> Prober {
        let mut options = ConnectorOptions::from_server_conf(conf);
        options.keepalive_pool_size = 1;
        Prober {
            options,
            connector: OnceLock::new(),
        }
    }

    fn connector(&self) -> &Connector {
        self.connector
            .get_or_init(|| Connector::new(Some(self.options.clone())))
    }

    /// The status `peer` answers a `method` request for `path` with, in the peer's HTTP version
    /// (over TLS when the peer says so); `host` is the Host header, the backend's address when `None`.
    async fn status(
        &self,
        peer: &HttpPeer,
        method: &str,
        path: &str,
        host: Option<&str>,
    ) -> Result<u16, String> {
        let (mut session, _) = self
            .connector()
            .get_http_session(peer)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut req = RequestHeader::build(method, path.as_bytes(), Some(3))
            .map_err(|e| format!("request: {e}"))?;
        let addr = peer._address.to_string();
        // HTTP/2 forbids `Connection` (RFC 9113 §8.2.2); its probe ends with its stream.
        let h1 = matches!(session, HttpSession::H1(_));
        let headers = [
            (HOST, host.unwrap_or(&addr)),
            (USER_AGENT, "zkgate-health-check"),
            (CONNECTION, "close"),
        ];
        for (name, value) in headers.into_iter().filter(|(n, _)| h1 || *n != CONNECTION) {
            req.insert_header(name, value)
                .map_err(|e| format!("request: {e}"))?;
        }
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| format!("write: {e}"))?;
        session
            .finish_request_body()
            .await
            .map_err(|e| format!("write: {e}"))?;
        session
            .read_response_header()
            .await
            .map_err(|e| match e.etype() {
                ErrorType::InvalidHTTPHeader => "not an HTTP response".to_owned(),
                ErrorType::ConnectionClosed => "closed before a status line".to_owned(),
                _ => format!("read: {e}"),
            })?;
        let status = session
            .response_header()
            .map(|h| h.status.as_u16())
            .ok_or("not an HTTP response")?;
        session.shutdown().await;
        Ok(status)
    }
}

impl Upstream {
    /// The housekeeping tick at `now` ([`now_ms`](crate::clock::now_ms) time): readmits
    /// backends whose ejection is over, refreshes the local zone, ramps slow starts, publishes
    /// the gauges, and starts this upstream's health checks when they are due, each probe in a
    /// task of its own, connected through `prober`.
    pub fn tick(self: &Arc<Self>, now: u64, prober: &Arc<Prober>) {
        let set = self.load();
        self.expire_ejections(&set, now);
        set.refresh_locality();
        self.ramp(&set);
        self.report(&set);
        let Some(check) = &self.policy.health else {
            return;
        };
        if now < self.next_check_ms.load(Ordering::Relaxed) {
            return;
        }
        self.next_check_ms
            .store(now + check.interval.as_millis() as u64, Ordering::Relaxed);
        for b in set.backends() {
            tokio::spawn(probe_one(prober.clone(), self.clone(), b.state.clone()));
        }
    }
}

async fn probe_one(prober: Arc<Prober>, upstream: Arc<Upstream>, state: Arc<BackendState>) {
    let Some(check) = &upstream.policy.health else {
        return;
    };
    let result = check
        .probe(&prober, state.addr, &upstream.policy.settings)
        .await;
    check.record(&upstream.name, &state, result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// One probe of a plain-HTTP backend at `addr`.
    async fn probe(check: &HealthCheck, addr: SocketAddr) -> Result<(), String> {
        let settings = PeerSettings {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            tls: None,
            protocol: crate::upstream::Protocol::Http1,
        };
        let prober = Prober::new(&ServerConf::default());
        check.probe(&prober, addr, &settings).await
    }

    fn http_check(statuses: Vec<(u16, u16)>) -> HealthCheck {
        HealthCheck {
            probe: Probe::Http {
                method: "GET".into(),
                path: "/healthz".into(),
                host: Some("svc".into()),
                statuses,
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 2,
            start_unhealthy: false,
        }
    }

    /// A one-shot server answering `reply` and handing back the request it read.
    async fn serve_once(reply: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn http_probe_checks_the_status_and_sends_the_host() {
        let check = http_check(vec![(200, 299)]);
        let (addr, req) = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(probe(&check, addr).await, Ok(()));
        let req = req.await.unwrap();
        assert!(
            req.starts_with("GET /healthz HTTP/1.1\r\nHost: svc\r\n"),
            "{req}"
        );

        let (addr, _) = serve_once("HTTP/1.1 503 Busy\r\n\r\n").await;
        assert_eq!(probe(&check, addr).await, Err("status 503".into()));
        let (addr, _) = serve_once("SSH-2.0-OpenSSH\r\n").await;
        assert_eq!(
            probe(&check, addr).await,
            Err("not an HTTP response".into())
        );
    }

    #[tokio::test]
    async fn probe_fails_on_refusal_and_silence() {
        let check = http_check(vec![(200, 399)]);
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        assert!(probe(&check, addr)
            .await
            .unwrap_err()
            .starts_with("connect"));
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = probe(&check, silent.local_addr().unwrap())
            .await
            .unwrap_err();
        assert!(err.starts_with("no answer within"), "{err}");
    }

    #[test]
    fn rise_and_fall_flip_health_once() {
        let check = http_check(vec![(200, 299)]);
        let s = BackendState::new("127.0.0.1:1".parse().unwrap(), false);
        check.record("u", &s, Err("x".into()));
        assert!(s.available(), "one failure is not enough");
        check.record("u", &s, Err("x".into()));
        assert!(!s.available());
        check.record("u", &s, Ok(()));
        assert!(!s.available(), "one pass is not enough");
        check.record("u", &s, Ok(()));
        assert!(s.available());
    }
}
