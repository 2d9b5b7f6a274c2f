//! A bare Pingora reverse proxy: every request goes to one fixed HTTP/1.1 upstream, and no hook
//! does anything else. benches/load.sh runs it as the framework's own cost, the floor under
//! WatchLLM's proxy overhead.
//!
//! Usage: `passthrough LISTEN UPSTREAM`, for example `passthrough 127.0.0.1:8090 127.0.0.1:9090`.
//! It runs 1 worker thread and keeps upstream connections alive with Pingora's default pool.

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::Result;

struct Passthrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream] = args.as_slice() else {
        eprintln!("usage: passthrough LISTEN UPSTREAM (for example 127.0.0.1:8090 127.0.0.1:9090)");
        std::process::exit(2);
    };

    // Pingora waits 5 minutes after SIGTERM by default, but a benchmark tool should stop at once.
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = http_proxy_service(&server.configuration, Passthrough { upstream: upstream.clone() });
    proxy.add_tcp(listen);
    proxy.threads = Some(1);
    server.add_service(proxy);
    eprintln!("passthrough listening on {listen}, forwarding to {upstream}");
    server.run_forever()
}
