//! Background services that run beside the proxy in Pingora's server.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::{error, info, warn};

use super::load_key_snapshot;
use crate::accounting::writer::{UsageWriter, WriterOptions};
use crate::admin::{router, AdminState};
use crate::auth::SharedKeys;
use crate::config::RuntimeConfig;
use crate::store::Store;

/// Writes usage events to the store and keeps the key snapshot current.
pub struct AccountingService {
    writer: Mutex<Option<UsageWriter>>,
    keys: SharedKeys,
    config: Arc<ArcSwap<RuntimeConfig>>,
}

impl AccountingService {
    pub fn new(writer: UsageWriter, keys: SharedKeys, config: Arc<ArcSwap<RuntimeConfig>>) -> Self {
        AccountingService { writer: Mutex::new(Some(writer)), keys, config }
    }
}

/// Resolves when the server starts shutting down.
async fn shutdown_signal(mut shutdown: ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Polls the store's keys version and swaps in a new snapshot when keys were created or revoked.
async fn refresh_keys(store: Store, keys: SharedKeys, config: Arc<ArcSwap<RuntimeConfig>>) {
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(config.load().auth_refresh_interval).await;
        let current = keys.load().version;
        let result = async {
            let version = store.keys_version().await?;
            if version != current {
                let snapshot = load_key_snapshot(&store).await?;
                info!(keys = snapshot.len(), version = snapshot.version, "API keys reloaded");
                keys.store(Arc::new(snapshot));
            }
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                // One line per failure streak start, then one per minute at the default interval.
                if failures == 1 || failures % 60 == 0 {
                    warn!(error = %e, failures, "failed to refresh API keys; serving the previous snapshot");
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for AccountingService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) else { return };
        let config = self.config.load_full();
        // The pool is created on this service's runtime, which lives as long as the server.
        let store = loop {
            match Store::connect(&config.database_url).await {
                Ok(store) => break store,
                Err(e) => {
                    error!(error = %e, "failed to connect to the database; usage events go to the journal until it is reachable");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = shutdown_signal(shutdown.clone()) => return,
                    }
                }
            }
        };
        let refresher = tokio::spawn(refresh_keys(store.clone(), self.keys.clone(), self.config.clone()));
        let options = WriterOptions {
            batch_size: config.accounting.batch_size,
            flush_interval: config.accounting.flush_interval,
            replay_interval: config.accounting.replay_interval,
        };
        writer.run(store.clone(), options, shutdown_signal(shutdown)).await;
        refresher.abort();
        store.close().await;
        info!("accounting stopped");
    }
}

/// Serves the admin API on its own listener.
pub struct AdminService {
    listener: Mutex<Option<std::net::TcpListener>>,
    config: Arc<ArcSwap<RuntimeConfig>>,
}

impl AdminService {
    pub fn new(listener: std::net::TcpListener, config: Arc<ArcSwap<RuntimeConfig>>) -> Self {
        AdminService { listener: Mutex::new(Some(listener)), config }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else { return };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                error!(error = %e, "failed to start the admin listener");
                return;
            }
        };
        let state = AdminState { config: self.config.clone(), started: std::time::Instant::now() };
        let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal(shutdown)).await;
        if let Err(e) = served {
            error!(error = %e, "admin listener failed");
        }
    }
}
