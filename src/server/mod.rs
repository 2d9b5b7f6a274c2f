//! Assembling the running gateway: the Pingora server, its proxy service and the background
//! services for accounting, key refresh and the admin listener.

pub mod scheduling;
mod services;

use std::net::TcpListener;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use tracing::info;

use crate::accounting::journal::Journal;
use crate::accounting::writer::usage_channel;
use crate::auth::{KeyEntry, KeySnapshot};
use crate::config::LoadedConfig;
use crate::proxy::Gateway;
use crate::store::Store;
use crate::metrics::Metrics;
use services::{AccountingService, AdminService, ReloadService};

/// Loads the active keys from the store into a snapshot.
pub async fn load_key_snapshot(store: &Store) -> anyhow::Result<KeySnapshot> {
    let version = store.keys_version().await?;
    let keys = store.load_active_keys().await?;
    let entries = keys.into_iter().map(|k| {
        let entry = KeyEntry { key_id: k.key_id, project_id: k.project_id, project_name: k.project_name, plan: k.plan };
        (k.key_hash, entry)
    });
    Ok(KeySnapshot::new(version, entries))
}

/// Prepares the store (migrations, first key snapshot) on a short-lived runtime, before Pingora
/// starts its own runtimes.
fn prepare_store(database_url: &str) -> anyhow::Result<KeySnapshot> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = Store::connect(database_url).await.context("failed to connect to the database")?;
        store.migrate().await.context("failed to apply database migrations")?;
        let snapshot = load_key_snapshot(&store).await.context("failed to load API keys")?;
        store.close().await;
        Ok(snapshot)
    })
}

/// Runs the gateway until a signal stops it. Does not return.
pub fn run(loaded: LoadedConfig) -> anyhow::Result<()> {
    let config = loaded.runtime.clone();
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("failed to create the state directory {}", config.state_dir.display()))?;

    let snapshot = prepare_store(&config.database_url)?;
    info!(keys = snapshot.len(), database = %redact_url(&config.database_url), "store ready");
    std::thread::spawn(crate::accounting::usage::warm_up_tokenizer);

    let journal = Arc::new(Journal::open(&config.journal_dir()).context("failed to open the usage journal")?);
    let (sink, writer) = usage_channel(config.accounting.channel_capacity, journal.clone());
    let limiter = Arc::new(crate::limits::Limiter::default());
    let rebuilt = crate::limits::service::prepare_limits(&config.database_url, &journal, &limiter, &config)?;
    info!(projects = rebuilt.len(), "limit counters rebuilt from this month's usage events");
    let (alert_sink, alert_receiver) = crate::alerts::alert_channel();
    let metrics = Arc::new(Metrics::new(config.metrics_project_label).context("failed to register metrics")?);
    // The response cache opens before Pingora starts: a missing model fails start-up here.
    let response_cache = crate::cache::ResponseCache::start(&config.cache, &config.database_url, metrics.clone())?;
    metrics.observe_reload(true);
    let routing = crate::routing::service::prepare_routing(&config)?;
    let shared_config = Arc::new(ArcSwap::from(config.clone()));
    let keys = Arc::new(ArcSwap::from_pointee(snapshot));

    // Bind the admin address now, so that a taken port fails start-up with a clear message.
    let admin_listener = TcpListener::bind(&config.admin_listen)
        .with_context(|| format!("failed to bind the admin listener to {}", config.admin_listen))?;
    admin_listener.set_nonblocking(true)?;

    let server_conf = ServerConf {
        threads: config.threads,
        pid_file: config.state_dir.join("watchllm.pid").display().to_string(),
        upgrade_sock: config.state_dir.join("upgrade.sock").display().to_string(),
        // Pingora lets in-flight requests run for the grace period after SIGTERM, then stops its
        // runtimes. The accounting service ends the process earlier, once nothing is in flight,
        // the usage events are written and the alert deliveries have finished or had
        // `ALERT_SETTLE_LIMIT` (see `AccountingService`).
        grace_period_seconds: Some(config.shutdown_grace.as_secs() + 2 + services::ALERT_SETTLE_LIMIT.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        // Room for every provider of `failover.max_attempts` (at most 16) to be tried at each of
        // its addresses. The routing plan stops the retries before that.
        max_retries: crate::routing::MAX_PROVIDER_ATTEMPTS * crate::routing::resolve::MAX_ADDRESSES_TRIED,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    let in_flight = Arc::new(AtomicUsize::new(0));
    let gateway = Gateway {
        config: shared_config.clone(),
        keys: keys.clone(),
        usage: sink.clone(),
        metrics: metrics.clone(),
        in_flight: in_flight.clone(),
        limits: limiter.clone(),
        alerts: alert_sink.clone(),
        cache: response_cache.clone(),
        routing: routing.clone(),
    };
    let mut proxy = pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "watchllm proxy");
    proxy.add_tcp(&config.listen);
    proxy.threads = Some(config.threads);

    let accounting = AccountingService::new(writer, keys, shared_config.clone(), in_flight, alert_sink.clone());
    let admin = AdminService::new(admin_listener, shared_config.clone(), metrics.clone(), sink, journal, limiter.clone(), alert_sink.clone()).with_routing(routing.clone());
    let limits = crate::limits::service::LimitsService::new(limiter, shared_config.clone(), alert_sink, alert_receiver, rebuilt);
    let routing_service = crate::routing::service::RoutingService::new(routing.clone(), shared_config.clone());
    let reload = ReloadService::new(loaded.path.clone(), shared_config, metrics, loaded.stamps);
    server.add_service(proxy);
    server.add_service(background_service("accounting", accounting));
    server.add_service(background_service("admin", admin));
    server.add_service(background_service("reload", reload));
    server.add_service(background_service("routing", routing_service));
    if let Some(cache) = &response_cache {
        server.add_service(background_service("cache", crate::cache::service::CacheService::new(cache.clone())));
    }
    server.add_service(background_service("limits", limits));

    info!(listen = %config.listen, admin_listen = %config.admin_listen, config_version = %config.version, "watchllm starting");
    server.run_forever()
}

/// Hides the password of a database URL, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_password_redacted() {
        assert_eq!(redact_url("postgres://u:secret@db/x"), "postgres://u:***@db/x");
        assert_eq!(redact_url("sqlite://./state/w.db"), "sqlite://./state/w.db");
    }
}
