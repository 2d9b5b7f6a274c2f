//! Provider addresses. A provider given by IP address, or with fixed `addresses` in its config,
//! needs no lookup. A host name is resolved with the system resolver (`getaddrinfo`, on tokio's
//! blocking pool) and its addresses are kept for [`TTL`].
//!
//! A request waits for a lookup only when its host was never resolved. Once the addresses expire,
//! requests keep using them while one background lookup refreshes them, and a failed refresh keeps
//! the old ones, so a resolver outage does not fail requests to a provider that was reached
//! before.
//!
//! A host with several addresses gets its requests in turn (round robin). An address that refused
//! or timed out a connection is skipped for [`ADDRESS_COOLDOWN`], unless every address of the
//! host is skipped, and a request whose connection failed may try the next address.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::Provider;

/// How long resolved addresses are used before a background lookup refreshes them. The system
/// resolver does not report the record's own TTL.
pub const TTL: Duration = Duration::from_secs(60);

/// How long an address whose connection failed is skipped while its host has others.
pub const ADDRESS_COOLDOWN: Duration = Duration::from_secs(30);

/// Maximum number of a provider's addresses that a request or a health probe tries before it
/// gives up on the provider. Each failed try may wait the whole connect timeout.
pub const MAX_ADDRESSES_TRIED: usize = 3;

/// Returns true for a connect failure that another address of the same host may not have: a
/// refused, timed-out or unroutable connection. A TLS or certificate error would most likely repeat
/// at every address.
pub fn is_address_failure(error: &pingora::ErrorType) -> bool {
    use pingora::ErrorType::{ConnectError, ConnectNoRoute, ConnectRefused, ConnectTimedout};
    matches!(error, ConnectRefused | ConnectTimedout | ConnectNoRoute | ConnectError)
}

type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
type Lookup = dyn Fn(String, u16) -> LookupFuture + Send + Sync;
/// Host, port, and whether the addresses are fixed by the config rather than looked up.
type EntryKey = (String, u16, bool);

/// The addresses of one host and port, with the round-robin position and the failure marks.
struct Entry {
    addresses: Vec<SocketAddr>,
    /// Per address, the time until which it is skipped, in milliseconds since the resolver's
    /// `epoch`. 0 when it is not skipped.
    skipped_until_ms: Vec<AtomicU64>,
    next: AtomicUsize,
    /// `None` for fixed addresses, which never expire.
    resolved_at: Option<Instant>,
    refreshing: AtomicBool,
}

impl Entry {
    fn new(addresses: Vec<SocketAddr>, resolved_at: Option<Instant>) -> Self {
        let skipped_until_ms = addresses.iter().map(|_| AtomicU64::new(0)).collect();
        Entry { addresses, skipped_until_ms, next: AtomicUsize::new(0), resolved_at, refreshing: AtomicBool::new(false) }
    }

    /// Returns the next address in turn that is not skipped at `now_ms`, or the next one in turn
    /// when all are skipped. The turn moves past the address returned, so the addresses after a
    /// skipped one keep equal shares. Two threads may get the same address at once.
    fn pick(&self, now_ms: u64) -> SocketAddr {
        let count = self.addresses.len();
        let start = self.next.load(Ordering::Relaxed) % count;
        let usable = (0..count).map(|offset| (start + offset) % count).find(|&i| self.skipped_until_ms[i].load(Ordering::Relaxed) <= now_ms);
        let index = usable.unwrap_or(start);
        self.next.store(index + 1, Ordering::Relaxed);
        self.addresses[index]
    }

    /// Counts the addresses that are not skipped at `now_ms`.
    fn usable(&self, now_ms: u64) -> usize {
        self.skipped_until_ms.iter().filter(|until| until.load(Ordering::Relaxed) <= now_ms).count()
    }
}

/// Resolved provider addresses by host and port, shared by requests and health probes.
#[derive(Clone)]
pub struct Resolver {
    ttl: Duration,
    lookup: Arc<Lookup>,
    epoch: Instant,
    entries: Arc<RwLock<HashMap<EntryKey, Arc<Entry>>>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new(TTL, |host, port| Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) }))
    }
}

impl Resolver {
    /// Creates a resolver that calls `lookup` for host names, such as the system resolver.
    pub fn new(ttl: Duration, lookup: impl Fn(String, u16) -> LookupFuture + Send + Sync + 'static) -> Self {
        Resolver { ttl, lookup: Arc::new(lookup), epoch: Instant::now(), entries: Arc::default() }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Returns the address to connect to for `provider`: its only address, or the next of its
    /// addresses in turn.
    pub async fn address(&self, provider: &Provider) -> io::Result<SocketAddr> {
        if let [address] = provider.addresses[..] {
            return Ok(address);
        }
        let entry = match self.cached(provider) {
            Some(entry) => entry,
            None if provider.addresses.is_empty() => self.resolve(key(provider)).await?,
            None => self.store_fixed(provider),
        };
        if entry.resolved_at.is_some_and(|at| at.elapsed() >= self.ttl) && !entry.refreshing.swap(true, Ordering::AcqRel) {
            let (resolver, expired, key) = (self.clone(), entry.clone(), key(provider));
            tokio::spawn(async move {
                if let Err(error) = resolver.resolve(key.clone()).await {
                    expired.refreshing.store(false, Ordering::Release);
                    warn!(host = %key.0, port = key.1, error = %error, "failed to refresh a provider's addresses, so the last ones stay in use");
                }
            });
        }
        Ok(entry.pick(self.now_ms()))
    }

    /// Skips `address` of `provider` for [`ADDRESS_COOLDOWN`] after a failed connection, and
    /// returns how many of the provider's addresses are left to try. A provider with one address
    /// keeps it, and has none left to try.
    pub fn connect_failed(&self, provider: &Provider, address: SocketAddr) -> usize {
        let now_ms = self.now_ms();
        // A refresh copies the marks under the write lock, so a mark stored under the read lock
        // is never lost. The warning waits for the lock's release, because it writes to stderr.
        let (marked, usable) = {
            let entries = self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            let Some(entry) = current(&entries, provider).filter(|entry| entry.addresses.len() > 1) else { return 0 };
            let index = entry.addresses.iter().position(|a| *a == address);
            if let Some(index) = index {
                let until = now_ms + ADDRESS_COOLDOWN.as_millis() as u64;
                entry.skipped_until_ms[index].store(until, Ordering::Relaxed);
            }
            (index.is_some(), entry.usable(now_ms))
        };
        if marked {
            warn!(provider = %provider.name, %address, "skipping a provider address after a failed connection");
        }
        usable
    }

    /// Returns how many addresses `provider` has, as far as they are known.
    pub fn address_count(&self, provider: &Provider) -> usize {
        match provider.addresses.len() {
            0 => self.cached(provider).map_or(0, |entry| entry.addresses.len()),
            count => count,
        }
    }

    /// Returns the stored entry of `provider`, or `None` when it has none yet.
    fn cached(&self, provider: &Provider) -> Option<Arc<Entry>> {
        current(&self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner()), provider).cloned()
    }

    /// Stores the fixed addresses of `provider`, unless another request stored the same ones
    /// first, and returns the entry in use.
    fn store_fixed(&self, provider: &Provider) -> Arc<Entry> {
        let mut entries = self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = current(&entries, provider) {
            return entry.clone();
        }
        replace(&mut entries, key(provider), Entry::new(provider.addresses.clone(), None))
    }

    /// Looks `key` up now and stores the addresses found. An address that was skipped before
    /// stays skipped until its mark ends.
    async fn resolve(&self, key: EntryKey) -> io::Result<Arc<Entry>> {
        let addresses = (self.lookup)(key.0.clone(), key.1).await?;
        if addresses.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no address found for {}", key.0)));
        }
        let mut entries = self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(replace(&mut entries, key, Entry::new(addresses, Some(Instant::now()))))
    }
}

/// Stores `entry` under `key` in place of the previous one, whose skip marks carry over to the
/// addresses that both have, and returns it. The caller holds the write lock, so no mark made
/// meanwhile is lost.
fn replace(entries: &mut HashMap<EntryKey, Arc<Entry>>, key: EntryKey, entry: Entry) -> Arc<Entry> {
    if let Some(previous) = entries.get(&key) {
        for (index, address) in entry.addresses.iter().enumerate() {
            if let Some(old) = previous.addresses.iter().position(|a| a == address) {
                let until = previous.skipped_until_ms[old].load(Ordering::Relaxed);
                entry.skipped_until_ms[index].store(until, Ordering::Relaxed);
            }
        }
    }
    let entry = Arc::new(entry);
    entries.insert(key, entry.clone());
    entry
}

/// Returns the entry of `provider` in `entries`. Fixed addresses that a reload changed count as
/// none.
fn current<'a>(entries: &'a HashMap<EntryKey, Arc<Entry>>, provider: &Provider) -> Option<&'a Arc<Entry>> {
    let entry = entries.get(&key(provider))?;
    let fixed_changed = !provider.addresses.is_empty() && entry.addresses != provider.addresses;
    (!fixed_changed).then_some(entry)
}

// NOTE: fixed addresses are keyed by host and port only, so two providers on one host and port
// with different fixed addresses replace each other's entry on every request.
fn key(provider: &Provider) -> EntryKey {
    (provider.host.clone(), provider.port, !provider.addresses.is_empty())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;

    fn provider(host: &str, addresses: Vec<SocketAddr>) -> Provider {
        Provider {
            name: "p".into(),
            tls: false,
            host: host.into(),
            port: 8000,
            addresses,
            base_path: "/v1".into(),
            sni: host.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
        }
    }

    /// A resolver whose lookups return the next of `answers` and are counted.
    fn scripted(ttl: Duration, answers: Vec<io::Result<Vec<SocketAddr>>>) -> (Resolver, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let counted = calls.clone();
        let resolver = Resolver::new(ttl, move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answers.lock().unwrap().next().expect("no lookup left in the script");
            Box::pin(async move { answer })
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
        let found = resolver.address(&provider("10.0.0.1", vec![address("10.0.0.1:8000")])).await.unwrap();
        assert_eq!(found, address("10.0.0.1:8000"));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn host_resolved_once_within_ttl() {
        let (resolver, calls) = scripted(TTL, vec![Ok(vec![address("10.0.0.2:8000")])]);
        let api = provider("api.example", vec![]);
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.2:8000"));
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.2:8000"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expired_address_served_while_refreshed() {
        let (resolver, calls) = scripted(Duration::ZERO, vec![Ok(vec![address("10.0.0.3:8000")]), Ok(vec![address("10.0.0.4:8000")])]);
        let api = provider("api.example", vec![]);
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.3:8000"));
        // Expired at once: this request gets the old address and starts one refresh.
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.3:8000"));
        wait_for_lookups(&calls, 2).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let refreshed = resolver.entries.read().unwrap().get(&("api.example".to_string(), 8000, false)).map(|e| e.addresses.clone());
        assert_eq!(refreshed, Some(vec![address("10.0.0.4:8000")]));
    }

    #[tokio::test]
    async fn failed_refresh_keeps_last_address() {
        let failure = io::Error::other("resolver down");
        let (resolver, calls) = scripted(Duration::ZERO, vec![Ok(vec![address("10.0.0.5:8000")]), Err(failure)]);
        let api = provider("api.example", vec![]);
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.5:8000"));
        assert_eq!(resolver.address(&api).await.unwrap(), address("10.0.0.5:8000"));
        wait_for_lookups(&calls, 2).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let entries = resolver.entries.read().unwrap();
        let entry = entries.get(&("api.example".to_string(), 8000, false)).unwrap();
        assert_eq!(entry.addresses, [address("10.0.0.5:8000")]);
        assert!(!entry.refreshing.load(Ordering::SeqCst), "a later request must be able to try again");
    }

    #[tokio::test]
    async fn unknown_host_is_an_error() {
        let failure = io::Error::new(io::ErrorKind::NotFound, "no such host");
        let (resolver, _) = scripted(TTL, vec![Err(failure)]);
        let error = resolver.address(&provider("provider.invalid", vec![])).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn system_resolver_finds_localhost() {
        let found = Resolver::default().address(&provider("localhost", vec![])).await.unwrap();
        assert!(found.ip().is_loopback(), "{found}");
        assert_eq!(found.port(), 8000);
    }

    fn picks(resolver: &Resolver, provider: &Provider, count: usize) -> Vec<SocketAddr> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        (0..count).map(|_| runtime.block_on(resolver.address(provider)).unwrap()).collect()
    }

    #[test]
    fn several_addresses_take_turns() {
        let (a, b) = (address("10.0.0.6:8000"), address("10.0.0.7:8000"));
        let (resolver, calls) = scripted(TTL, vec![Ok(vec![a, b])]);
        let api = provider("api.example", vec![]);
        assert_eq!(picks(&resolver, &api, 4), [a, b, a, b]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(resolver.address_count(&api), 2);
    }

    #[test]
    fn failed_address_skipped() {
        let (a, b, c) = (address("10.0.0.8:8000"), address("10.0.0.9:8000"), address("10.0.0.10:8000"));
        let (resolver, _) = scripted(TTL, vec![Ok(vec![a, b, c])]);
        let api = provider("api.example", vec![]);
        assert_eq!(picks(&resolver, &api, 1), [a]);
        assert_eq!(resolver.connect_failed(&api, b), 2);
        assert_eq!(picks(&resolver, &api, 4), [c, a, c, a]);
    }

    #[test]
    fn all_failed_still_take_turns() {
        let (a, b) = (address("10.0.0.11:8000"), address("10.0.0.12:8000"));
        let (resolver, _) = scripted(TTL, vec![Ok(vec![a, b])]);
        let api = provider("api.example", vec![]);
        assert_eq!(picks(&resolver, &api, 1), [a]);
        assert_eq!(resolver.connect_failed(&api, a), 1);
        assert_eq!(resolver.connect_failed(&api, b), 0);
        assert_eq!(picks(&resolver, &api, 3), [b, a, b]);
    }

    #[test]
    fn single_address_never_skipped() {
        let only = address("10.0.0.13:8000");
        let (resolver, _) = scripted(TTL, vec![]);
        let api = provider("10.0.0.13", vec![only]);
        assert_eq!(resolver.connect_failed(&api, only), 0);
        assert_eq!(picks(&resolver, &api, 2), [only, only]);
        assert_eq!(resolver.address_count(&api), 1);
    }

    #[test]
    fn fixed_addresses_need_no_lookup() {
        let (a, b) = (address("10.0.0.14:8000"), address("10.0.0.15:8000"));
        let (resolver, calls) = scripted(TTL, vec![]);
        let api = provider("api.example", vec![a, b]);
        assert_eq!(picks(&resolver, &api, 3), [a, b, a]);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(resolver.connect_failed(&api, a), 1);
        assert_eq!(picks(&resolver, &api, 2), [b, b]);
    }

    #[test]
    fn changed_fixed_addresses_replace_old() {
        let (a, b, c) = (address("10.0.0.16:8000"), address("10.0.0.17:8000"), address("10.0.0.18:8000"));
        let (resolver, _) = scripted(TTL, vec![]);
        assert_eq!(picks(&resolver, &provider("api.example", vec![a, b]), 1), [a]);
        // A reload gave the same host other addresses.
        assert_eq!(picks(&resolver, &provider("api.example", vec![c, b]), 2), [c, b]);
    }

    #[test]
    fn fixed_then_looked_up_apart() {
        let (fixed, looked_up) = (address("10.0.0.22:8000"), address("10.0.0.23:8000"));
        let (resolver, calls) = scripted(TTL, vec![Ok(vec![looked_up, fixed])]);
        assert_eq!(picks(&resolver, &provider("api.example", vec![fixed, fixed]), 1), [fixed]);
        // A reload removed `addresses`, or another provider names the same host without them.
        let api = provider("api.example", vec![]);
        assert_eq!(picks(&resolver, &api, 2), [looked_up, fixed]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refresh_keeps_skip_marks() {
        let (a, b, c) = (address("10.0.0.19:8000"), address("10.0.0.20:8000"), address("10.0.0.21:8000"));
        let (resolver, calls) = scripted(Duration::ZERO, vec![Ok(vec![a, b]), Ok(vec![b, a, c])]);
        let api = provider("api.example", vec![]);
        assert_eq!(resolver.address(&api).await.unwrap(), a);
        assert_eq!(resolver.connect_failed(&api, a), 1);
        // Expired at once: this request starts the refresh.
        resolver.address(&api).await.unwrap();
        wait_for_lookups(&calls, 2).await;
        let entries = resolver.entries.read().unwrap();
        let entry = entries.get(&("api.example".to_string(), 8000, false)).unwrap();
        assert_eq!(entry.addresses, [b, a, c]);
        assert_eq!(entry.usable(resolver.now_ms()), 2, "a stays skipped after the refresh");
    }

    #[test]
    fn reload_keeps_marks_of_kept_addresses() {
        let (a, b, c) = (address("10.0.0.24:8000"), address("10.0.0.25:8000"), address("10.0.0.26:8000"));
        let (resolver, _) = scripted(TTL, vec![]);
        let before = provider("api.example", vec![a, b]);
        assert_eq!(picks(&resolver, &before, 1), [a]);
        assert_eq!(resolver.connect_failed(&before, b), 1);
        // A reload replaced `a` with `c` and kept `b`, which stays skipped.
        let after = provider("api.example", vec![c, b]);
        assert_eq!(picks(&resolver, &after, 3), [c, c, c]);
    }
}
