//! Provider addresses. A provider given by IP address needs no lookup. A host name is resolved
//! with the system resolver (`getaddrinfo`, on tokio's blocking pool) and kept for [`TTL`].
//!
//! A request waits for a lookup only when its host was never resolved. Once an address expires,
//! requests keep using it while one background lookup refreshes it, and a failed refresh keeps
//! the old address, so a resolver outage does not fail requests to a provider that was reached
//! before.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::Provider;

/// How long a resolved address is used before a background lookup refreshes it. The system
/// resolver does not report the record's own TTL.
pub const TTL: Duration = Duration::from_secs(60);

type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
type Lookup = dyn Fn(String, u16) -> LookupFuture + Send + Sync;

struct Entry {
    address: SocketAddr,
    resolved_at: Instant,
    refreshing: AtomicBool,
}

/// Resolved provider addresses by host and port, shared by requests and health probes.
#[derive(Clone)]
pub struct Resolver {
    ttl: Duration,
    lookup: Arc<Lookup>,
    entries: Arc<RwLock<HashMap<(String, u16), Arc<Entry>>>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new(TTL, |host, port| Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) }))
    }
}

impl Resolver {
    /// Creates a resolver that calls `lookup` for host names, such as the system resolver.
    pub fn new(ttl: Duration, lookup: impl Fn(String, u16) -> LookupFuture + Send + Sync + 'static) -> Self {
        Resolver { ttl, lookup: Arc::new(lookup), entries: Arc::default() }
    }

    /// Returns the address to connect to for `provider`.
    pub async fn address(&self, provider: &Provider) -> io::Result<SocketAddr> {
        if let Some(address) = provider.address {
            return Ok(address);
        }
        let key = (provider.host.clone(), provider.port);
        let cached = self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&key).cloned();
        let Some(entry) = cached else {
            return self.resolve(key).await;
        };
        if entry.resolved_at.elapsed() >= self.ttl && !entry.refreshing.swap(true, Ordering::AcqRel) {
            let (resolver, expired) = (self.clone(), entry.clone());
            tokio::spawn(async move {
                if let Err(error) = resolver.resolve(key.clone()).await {
                    expired.refreshing.store(false, Ordering::Release);
                    warn!(host = %key.0, port = key.1, error = %error, "failed to refresh a provider's address; the last one stays in use");
                }
            });
        }
        Ok(entry.address)
    }

    /// Looks `key` up now and stores the first address found.
    async fn resolve(&self, key: (String, u16)) -> io::Result<SocketAddr> {
        let addresses = (self.lookup)(key.0.clone(), key.1).await?;
        let Some(&address) = addresses.first() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no address found for {}", key.0)));
        };
        let entry = Arc::new(Entry { address, resolved_at: Instant::now(), refreshing: AtomicBool::new(false) });
        self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(key, entry);
        Ok(address)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;

    fn provider(host: &str, address: Option<SocketAddr>) -> Provider {
        Provider {
            name: "p".into(),
            tls: false,
            host: host.into(),
            port: 8000,
            address,
            base_path: "/v1".into(),
            sni: host.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
        }
    }

    /// A resolver whose lookups return the next of `answers` and are counted.
    fn scripted(ttl: Duration, answers: Vec<io::Result<SocketAddr>>) -> (Resolver, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let counted = calls.clone();
        let resolver = Resolver::new(ttl, move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answers.lock().unwrap().next().expect("no lookup left in the script");
            Box::pin(async move { answer.map(|address| vec![address]) })
        });
        (resolver, calls)
    }

    /// Waits up to 0.5 s for the background refresh to make its lookup, then lets it finish.
    async fn wait_for_lookups(calls: &AtomicUsize, expected: usize) {
        for _ in 0..100 {
            if calls.load(Ordering::SeqCst) >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn ip_address_needs_no_lookup() {
        let (resolver, calls) = scripted(TTL, vec![]);
        let found = resolver.address(&provider("10.0.0.1", Some(address("10.0.0.1:8000")))).await.unwrap();
        assert_eq!(found, address("10.0.0.1:8000"));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn host_resolved_once_within_ttl() {
        let (resolver, calls) = scripted(TTL, vec![Ok(address("10.0.0.2:8000"))]);
        let api = provider("api.example", None);
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.2:8000"));
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.2:8000"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expired_address_served_while_refreshed() {
        let (resolver, calls) = scripted(Duration::ZERO, vec![Ok(address("10.0.0.3:8000")), Ok(address("10.0.0.4:8000"))]);
        let api = provider("api.example", None);
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.3:8000"));
        // Expired at once: this request gets the old address and starts one refresh.
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.3:8000"));
        wait_for_lookups(&calls, 2).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let refreshed = resolver.entries.read().unwrap().get(&("api.example".to_string(), 8000)).map(|e| e.address);
        assert_eq!(refreshed, Some(address("10.0.0.4:8000")));
    }

    #[tokio::test]
    async fn failed_refresh_keeps_last_address() {
        let failure = io::Error::other("resolver down");
        let (resolver, calls) = scripted(Duration::ZERO, vec![Ok(address("10.0.0.5:8000")), Err(failure)]);
        let api = provider("api.example", None);
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.5:8000"));
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.5:8000"));
        wait_for_lookups(&calls, 2).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let entries = resolver.entries.read().unwrap();
        let entry = entries.get(&("api.example".to_string(), 8000)).unwrap();
        assert_eq!(entry.address, address("10.0.0.5:8000"));
        assert!(!entry.refreshing.load(Ordering::SeqCst), "a later request must be able to try again");
    }

    #[tokio::test]
    async fn unknown_host_is_an_error() {
        let failure = io::Error::new(io::ErrorKind::NotFound, "no such host");
        let (resolver, _) = scripted(TTL, vec![Err(failure)]);
        let error = resolver.address(&provider("provider.invalid", None)).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn system_resolver_finds_localhost() {
        let found = Resolver::default().address(&provider("localhost", None)).await.unwrap();
        assert!(found.ip().is_loopback(), "{found}");
        assert_eq!(found.port(), 8000);
    }
}
