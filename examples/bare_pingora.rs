//! The engine's floor for `benches/compare.sh`: a bare Pingora proxy that sends every request
//! to one fixed backend, with nothing of zkgate's on top.
//!
//! Usage: bare_pingora LISTEN BACKEND THREADS WORK_STEALING(true|false)

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(backend)) = (args.get(1), args.get(2).and_then(|b| b.parse().ok()))
    else {
        eprintln!("usage: bare_pingora LISTEN BACKEND [THREADS] [WORK_STEALING]");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1),
        work_stealing: args.get(4).is_none_or(|w| w != "false"),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_per_thread: true,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare(backend));
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
