//! Request routing: the API endpoint a request names, the provider path it maps to, and the peer that
//! Pingora connects to.

pub mod experiments;
pub mod health;
pub mod resolve;
pub mod select;
pub mod service;
pub mod settings;
pub mod stats;

pub use select::Routing;

/// Maximum of `failover.max_attempts`: providers one request may try.
pub const MAX_PROVIDER_ATTEMPTS: usize = 16;

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use pingora::upstreams::peer::{HttpPeer, ALPN};

use crate::config::Provider;
use crate::error::GatewayError;

/// The OpenAI API endpoints the gateway serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
}

impl Endpoint {
    /// Returns the name recorded on usage events and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
        }
    }

    /// Path under the provider's base URL.
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Models => "/models",
        }
    }

    /// Returns whether the endpoint can stream its response as server-sent events.
    pub fn can_stream(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

/// Maps a request line to an endpoint. A trailing slash and a query string are ignored.
pub fn classify(method: &Method, path: &str) -> Result<Endpoint, GatewayError> {
    let trimmed = path.split('?').next().unwrap_or("").trim_end_matches('/');
    let (endpoint, expected) = match trimmed {
        "/v1/chat/completions" => (Endpoint::ChatCompletions, Method::POST),
        "/v1/completions" => (Endpoint::Completions, Method::POST),
        "/v1/embeddings" => (Endpoint::Embeddings, Method::POST),
        "/v1/models" => (Endpoint::Models, Method::GET),
        _ => return Err(GatewayError::not_found(trimmed)),
    };
    if *method != expected {
        return Err(GatewayError::method_not_allowed(method.as_str(), trimmed));
    }
    Ok(endpoint)
}

/// Returns the request path sent to the provider, such as `/api/v1/chat/completions`.
pub fn upstream_path(provider: &Provider, endpoint: Endpoint) -> String {
    format!("{}{}", provider.base_path, endpoint.upstream_suffix())
}

/// Returns the value of the Host header sent to the provider.
pub fn upstream_host(provider: &Provider) -> String {
    let default_port = if provider.tls { 443 } else { 80 };
    if provider.port == default_port {
        provider.sni.clone()
    } else {
        format!("{}:{}", provider.sni, provider.port)
    }
}

/// Builds the Pingora peer for a provider at its resolved `address`: HTTP/1.1, with TLS and SNI
/// for `https` base URLs.
pub fn build_peer(provider: &Provider, address: SocketAddr) -> HttpPeer {
    let mut peer = HttpPeer::new(address, provider.tls, provider.sni.clone());
    peer.options.alpn = ALPN::H1;
    peer.options.connection_timeout = Some(provider.connect_timeout);
    peer.options.total_connection_timeout = Some(provider.connect_timeout + Duration::from_millis(500));
    peer.options.read_timeout = Some(provider.read_timeout);
    peer.options.write_timeout = Some(provider.write_timeout);
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(tls: bool, port: u16) -> Provider {
        Provider {
            name: "p".into(),
            tls,
            host: "api.example".into(),
            port,
            addresses: vec![],
            base_path: "/api/v1".into(),
            sni: "api.example".into(),
            api_key: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn endpoints_classified() {
        assert_eq!(classify(&Method::POST, "/v1/chat/completions").unwrap(), Endpoint::ChatCompletions);
        assert_eq!(classify(&Method::POST, "/v1/completions/").unwrap(), Endpoint::Completions);
        assert_eq!(classify(&Method::POST, "/v1/embeddings?x=1").unwrap(), Endpoint::Embeddings);
        assert_eq!(classify(&Method::GET, "/v1/models").unwrap(), Endpoint::Models);
    }

    #[test]
    fn unknown_path_is_404() {
        let err = classify(&Method::POST, "/v2/chat").unwrap_err();
        assert_eq!(err.status.as_u16(), 404);
        assert_eq!(err.code, "unknown_url");
    }

    #[test]
    fn wrong_method_is_405() {
        let err = classify(&Method::GET, "/v1/chat/completions").unwrap_err();
        assert_eq!(err.status.as_u16(), 405);
    }

    #[test]
    fn upstream_path_keeps_base_path() {
        assert_eq!(upstream_path(&provider(true, 443), Endpoint::ChatCompletions), "/api/v1/chat/completions");
    }

    #[test]
    fn host_header_omits_default_port() {
        assert_eq!(upstream_host(&provider(true, 443)), "api.example");
        assert_eq!(upstream_host(&provider(false, 8000)), "api.example:8000");
    }
}
