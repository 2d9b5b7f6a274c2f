//! The routing background service: health probes of every provider, and the refresh of the
//! provider-key records from the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::{info, warn};

use super::health::{redact_url, Observed};
use super::select::Routing;
use super::resolve::{is_address_failure, Resolver, MAX_ADDRESSES_TRIED};
use super::{build_peer, upstream_host};
use crate::config::{Provider, RuntimeConfig};
use crate::keys::{MasterSecret, MasterSecretSource, RecordSnapshot, Vault};
use crate::store::Store;

/// Probes providers and keeps the provider-key records current.
pub struct RoutingService {
    routing: Routing,
    config: Arc<ArcSwap<RuntimeConfig>>,
}

impl RoutingService {
    pub fn new(routing: Routing, config: Arc<ArcSwap<RuntimeConfig>>) -> Self {
        RoutingService { routing, config }
    }
}

/// Returns the URL a probe requests, for messages.
pub fn probe_url(provider: &Provider, path: &str) -> String {
    let scheme = if provider.tls { "https" } else { "http" };
    format!("{scheme}://{}{}{}", upstream_host(provider), provider.base_path, path)
}

/// Sends one probe: `GET {base_url}{path}` with the provider's global key. A status below 500
/// other than 429 counts as up, because an authentication or not-found response still shows a live server.
/// A failed connection moves on to another of the provider's addresses, within `timeout` for all.
async fn probe(connector: &Connector, resolver: &Resolver, provider: &Provider, path: &str, timeout: Duration) -> Result<u16, String> {
    let attempts = async {
        let mut tried = 0;
        loop {
            let address = resolver.address(provider).await.map_err(|e| format!("address lookup failed: {e}"))?;
            tried += 1;
            let limit = resolver.address_count(provider).clamp(1, MAX_ADDRESSES_TRIED);
            // Each address gets a share of the connect time, so one that drops packets leaves
            // time for the next.
            let connect_timeout = timeout / limit as u32;
            match probe_address(connector, provider, address, path, connect_timeout, timeout).await {
                Err(ProbeFailure::Connect(message)) => {
                    let usable = resolver.connect_failed(provider, address);
                    if usable == 0 || tried >= limit {
                        return Err(message);
                    }
                }
                Err(ProbeFailure::Exchange(message)) => return Err(message),
                Ok(status) => return Ok(status),
            }
        }
    };
    match tokio::time::timeout(timeout, attempts).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
    }
}

/// Why a probe of one address failed: a connection that another address may not fail, or
/// anything else, such as a TLS error or an error after connecting.
enum ProbeFailure {
    Connect(String),
    Exchange(String),
}

async fn probe_address(
    connector: &Connector,
    provider: &Provider,
    address: SocketAddr,
    path: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<u16, ProbeFailure> {
    let mut peer = build_peer(provider, address);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    peer.options.connection_timeout = Some(connect_timeout);
    peer.options.total_connection_timeout = Some(connect_timeout);
    let (mut session, _reused) = connector.get_http_session(&peer).await.map_err(|e| {
        let message = e.etype().as_str().to_string();
        if is_address_failure(e.etype()) {
            ProbeFailure::Connect(message)
        } else {
            ProbeFailure::Exchange(message)
        }
    })?;
    let full_path = format!("{}{}", provider.base_path, path);
    let mut request = RequestHeader::build("GET", full_path.as_bytes(), None).map_err(|e| ProbeFailure::Exchange(e.to_string()))?;
    request.insert_header("host", upstream_host(provider)).map_err(|e| ProbeFailure::Exchange(e.to_string()))?;
    request.insert_header("user-agent", concat!("watchllm-health/", env!("CARGO_PKG_VERSION"))).map_err(|e| ProbeFailure::Exchange(e.to_string()))?;
    if let Some(key) = &provider.api_key {
        request.insert_header("authorization", format!("Bearer {}", key.0)).map_err(|_| ProbeFailure::Exchange("invalid provider key header".to_string()))?;
    }
    session.write_request_header(Box::new(request)).await.map_err(|e| ProbeFailure::Exchange(e.etype().as_str().to_string()))?;
    session.finish_request_body().await.map_err(|e| ProbeFailure::Exchange(e.etype().as_str().to_string()))?;
    session.read_response_header().await.map_err(|e| ProbeFailure::Exchange(e.etype().as_str().to_string()))?;
    let status = session.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
    session.shutdown().await;
    Ok(status)
}

/// Probes every configured provider once, concurrently.
async fn probe_all(routing: &Routing, connector: &Connector, config: &RuntimeConfig) {
    let options = &config.routing.health;
    let probes = config.routing.providers.iter().map(|provider| async move {
        let started = Instant::now();
        let outcome = probe(connector, &routing.resolver, provider, &options.path, options.timeout).await;
        let latency = started.elapsed();
        let url = redact_url(&probe_url(provider, &options.path));
        match outcome {
            Ok(status) if status < 500 && status != 429 => {
                routing.health.record_probe(&provider.name, latency, true);
                routing.health.record_success(&provider.name, options, Observed::Probe);
            }
            Ok(status) => {
                routing.health.record_probe(&provider.name, latency, false);
                routing.health.record_failure(&provider.name, options, Observed::Probe, &format!("GET {url}: status {status}"));
            }
            Err(error) => {
                routing.health.record_probe(&provider.name, latency, false);
                routing.health.record_failure(&provider.name, options, Observed::Probe, &format!("GET {url}: {error}"));
            }
        }
    });
    futures::future::join_all(probes).await;
}

/// Reads the master secret from its source again. Returns it when the source's content changed
/// since `last_read` and differs from the secret in use, so that a rotation made by another
/// process applies here once the operator writes the new secret to the configured file.
/// Comparing with the last read keeps a rotation through this gateway's admin API in force while
/// the file still contains the old secret. A source that yields nothing keeps the secret in use.
fn changed_master(vault: &Vault, source: &MasterSecretSource, last_read: &mut Option<MasterSecret>) -> anyhow::Result<Option<MasterSecret>> {
    let Some(read) = source.load_from_process()? else { return Ok(None) };
    if last_read.as_ref().is_some_and(|last| last.expose() == read.expose()) {
        return Ok(None);
    }
    *last_read = Some(read.clone());
    match vault.master() {
        Some(current) if current.expose() == read.expose() => Ok(None),
        _ => Ok(Some(read)),
    }
}

/// Reloads the provider-key records when the store's version changed and the master secret when
/// its source changed, in one swap when both changed. Then derives the new ciphers on a blocking
/// thread. An unreadable secret is reported after the records are refreshed, so that a bad file
/// does not hold back the records.
async fn refresh_provider_keys(
    routing: &Routing,
    store: &Store,
    source: &MasterSecretSource,
    last_read: &mut Option<MasterSecret>,
) -> anyhow::Result<()> {
    use anyhow::Context;

    let (master, master_error) = match changed_master(&routing.vault, source, last_read) {
        Ok(master) => (master, None),
        Err(e) => (None, Some(e.context(format!("failed to read the master secret from the {}", source.describe())))),
    };
    let version = store.provider_keys_version().await?;
    let records_changed = version != routing.vault.snapshot().version;
    if records_changed {
        let records = store.load_provider_keys().await.context("failed to load the provider keys")?;
        let snapshot = RecordSnapshot::new(version, records);
        info!(records = snapshot.len(), version, master_secret_changed = master.is_some(), "provider keys reloaded");
        match master {
            Some(master) => routing.vault.replace_all(master, snapshot),
            None => routing.vault.replace_snapshot(snapshot),
        }
        let stored = routing.vault.snapshot().len();
        if stored > 0 && !routing.vault.has_master() {
            warn!(records = stored, "provider keys are stored but no master secret is configured; requests of those projects fail until it is set");
        }
    } else if let Some(master) = master {
        info!(source = %source.describe(), "master secret changed; provider keys are decrypted with the new one");
        routing.vault.set_master(Some(master));
    } else {
        return master_error.map_or(Ok(()), Err);
    }
    let vault = routing.vault.clone();
    let derived = tokio::task::spawn_blocking(move || vault.warm_up()).await.unwrap_or(0);
    if derived > 0 {
        info!(derived, "derived the encryption keys of the provider keys");
    }
    master_error.map_or(Ok(()), Err)
}

async fn shutdown_requested(mut shutdown: ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl BackgroundService for RoutingService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let connector = Connector::new(None);
        let mut store: Option<Store> = None;
        let mut key_failures = 0u32;
        // `prepare_routing` read the source before the proxy started.
        let mut last_read = self.routing.vault.master();
        let mut next_probe = Instant::now();
        let mut next_refresh = Instant::now();
        let stop = shutdown_requested(shutdown);
        tokio::pin!(stop);

        loop {
            let config = self.config.load_full();
            let now = Instant::now();
            if config.routing.health.enabled && now >= next_probe {
                probe_all(&self.routing, &connector, &config).await;
                next_probe = Instant::now() + config.routing.health.interval;
            }
            if now >= next_refresh {
                if store.is_none() {
                    store = Store::connect(&config.database_url).await.ok();
                }
                let result = match &store {
                    Some(store) => refresh_provider_keys(&self.routing, store, &config.routing.master_secret, &mut last_read).await,
                    None => Err(anyhow::anyhow!("no database connection")),
                };
                match result {
                    Ok(()) => key_failures = 0,
                    Err(e) => {
                        key_failures += 1;
                        if key_failures == 1 || key_failures % 60 == 0 {
                            warn!(error = %format!("{e:#}"), failures = key_failures, "failed to refresh provider keys; serving the previous records");
                        }
                    }
                }
                next_refresh = Instant::now() + config.routing.provider_keys_refresh;
            }
            let wake = if config.routing.health.enabled { next_probe.min(next_refresh) } else { next_refresh };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
        }
    }
}

/// Reads the master secret and the stored provider keys before the proxy starts, so that no
/// request of a project with its own key is served with the global key. Runs on a short-lived
/// runtime, like the other start-up steps.
pub fn prepare_routing(config: &RuntimeConfig) -> anyhow::Result<Routing> {
    use anyhow::Context;

    let routing = Routing::default();
    let source = &config.routing.master_secret;
    let master = source.load_from_process().with_context(|| format!("failed to read the master secret from the {}", source.describe()))?;
    let has_master = master.is_some();
    routing.vault.set_master(master);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let snapshot = runtime.block_on(async {
        let store = Store::connect(&config.database_url).await.context("failed to connect to the database")?;
        let version = store.provider_keys_version().await?;
        let records = store.load_provider_keys().await?;
        store.close().await;
        anyhow::Ok(RecordSnapshot::new(version, records))
    })?;
    if !snapshot.is_empty() && !has_master {
        warn!(records = snapshot.len(), source = %source.describe(), "provider keys are stored but no master secret is configured; requests of those projects fail until it is set");
    }
    info!(provider_keys = snapshot.len(), master_secret = has_master, "provider keys loaded");
    routing.vault.replace_snapshot(snapshot);
    Ok(routing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> MasterSecret {
        MasterSecret::new(text.as_bytes().to_vec()).expect("long enough")
    }

    /// Writes `contents` to a secret file in a new temporary folder and returns the folder, which
    /// deletes the file when dropped, the file's path and a source that reads it.
    fn secret_file(contents: &str) -> (tempfile::TempDir, std::path::PathBuf, MasterSecretSource) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("master.key");
        std::fs::write(&path, contents).expect("write secret");
        let source = MasterSecretSource { env: String::new(), file: path.display().to_string() };
        (dir, path, source)
    }

    #[test]
    fn master_file_change_is_picked_up() {
        let (_dir, path, source) = secret_file("first-master-secret-0001\n");
        let vault = Vault::new(Some(secret("first-master-secret-0001")));
        let mut last_read = vault.master();

        assert!(changed_master(&vault, &source, &mut last_read).expect("readable").is_none(), "same secret, trailing newline aside");

        std::fs::write(&path, "second-master-secret-002").expect("write secret");
        let changed = changed_master(&vault, &source, &mut last_read).expect("readable").expect("a new secret");
        assert_eq!(changed.expose(), b"second-master-secret-002");
        vault.set_master(Some(changed));
        assert!(changed_master(&vault, &source, &mut last_read).expect("readable").is_none(), "reported once");

        std::fs::remove_file(&path).expect("remove secret");
        let error = changed_master(&vault, &source, &mut last_read).expect_err("a configured file that is gone is an error");
        assert!(!format!("{error:#}").contains("second-master"), "no secret in the message: {error:#}");
    }

    #[test]
    fn master_admin_rotation_survives_old_file() {
        let (_dir, path, source) = secret_file("first-master-secret-0001");
        let vault = Vault::new(Some(secret("first-master-secret-0001")));
        let mut last_read = vault.master();

        // What the admin API's rotation does.
        vault.set_master(Some(secret("rotated-by-admin-api-0001")));
        assert!(changed_master(&vault, &source, &mut last_read).expect("readable").is_none());

        // The operator then writes the new secret to the file: nothing to swap either.
        std::fs::write(&path, "rotated-by-admin-api-0001").expect("write secret");
        assert!(changed_master(&vault, &source, &mut last_read).expect("readable").is_none());
        assert_eq!(vault.master().expect("a master").expose(), b"rotated-by-admin-api-0001");
    }

    #[test]
    fn master_empty_source_keeps_secret() {
        let source = MasterSecretSource { env: "WATCHLLM_TEST_UNSET_MASTER_VARIABLE".into(), file: String::new() };
        let vault = Vault::new(Some(secret("kept-master-secret-00001")));
        let mut last_read = None;
        assert!(changed_master(&vault, &source, &mut last_read).expect("nothing to read is not an error").is_none());
        assert!(vault.has_master());
    }
}
