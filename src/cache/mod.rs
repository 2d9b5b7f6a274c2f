//! The response cache: exact hits on a normalized request key, semantic hits on the embedding of
//! the last user message within the same context, and the storing of complete responses.
//!
//! `key`, `policy`, `entry`, `replay` and `guard` are plain functions; `store` holds the entries
//! and the vector index; `flow` runs a lookup and a store for the proxy hooks; `respond` writes a
//! hit to the client.

pub mod config;
pub mod entry;
pub mod flow;
pub mod guard;
pub mod index;
pub mod key;
pub mod overrides;
pub mod policy;
pub mod replay;
pub mod respond;
pub mod service;
pub mod state;
pub mod store;

use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use crate::embed::{check_model_dir, EmbedPool, Embedder, PoolOptions, DIMENSIONS, INSTALL_COMMAND};
use crate::metrics::Metrics;
pub use config::{CacheSettings, ProjectCache};
pub use state::{CacheState, CacheStatus};
use overrides::SharedOverrides;
use store::{CacheStore, StoreOptions};

/// The running cache: its store, the embedding pool when the semantic cache is on, the
/// per-project overrides from the database, and the runtime on which the store's disk work, the
/// index saves and the overrides' reload run.
pub struct ResponseCache {
    store: Arc<CacheStore>,
    embed: Option<EmbedPool>,
    overrides: SharedOverrides,
    runtime: tokio::runtime::Runtime,
    metrics: Arc<Metrics>,
}

impl ResponseCache {
    /// Opens the cache at start-up, or returns `None` when `cache.enabled` is off. Fails when the
    /// semantic cache is on and the model is missing, naming the directory and the install command,
    /// or when the per-project overrides cannot be read from the database at `database_url`.
    pub fn start(settings: &CacheSettings, database_url: &str, metrics: Arc<Metrics>) -> anyhow::Result<Option<Arc<ResponseCache>>> {
        if !settings.enabled {
            return Ok(None);
        }
        let embedder = if settings.semantic_enabled {
            check_model_dir(&settings.model_dir).with_context(|| {
                format!(
                    "the semantic cache is enabled but its model is not installed in {}; run `{INSTALL_COMMAND} {}` or set cache.semantic.enabled: false",
                    settings.model_dir.display(),
                    settings.model_dir.display()
                )
            })?;
            Some(Embedder::load(&settings.model_dir, settings.max_tokens)?)
        } else {
            None
        };

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("watchllm-cache")
            .enable_all()
            .build()
            .context("failed to start the cache runtime")?;
        let options = StoreOptions {
            dir: settings.dir.clone(),
            memory_bytes: settings.memory_bytes,
            disk_bytes: settings.disk_bytes,
            quantization: settings.quantization,
            dimensions: DIMENSIONS,
            expansion_search: settings.expansion_search,
        };
        let store = runtime
            .block_on(CacheStore::open(&options, runtime.handle().clone()))
            .with_context(|| format!("failed to open the response cache in {}", settings.dir.display()))?;
        let store = Arc::new(store);
        runtime.spawn(maintain(store.clone(), metrics.clone(), settings.index_save_interval));

        // The overrides are read before the proxy serves, so that no request is served with the
        // config's settings alone, and then polled.
        let overrides = SharedOverrides::default();
        let database = runtime
            .block_on(async {
                let database = crate::store::Store::connect(database_url).await?;
                overrides::refresh(&database, &overrides).await?;
                anyhow::Ok(database)
            })
            .context("failed to load the per-project cache settings from the database")?;
        runtime.spawn(overrides::keep_current(database, overrides.clone()));

        let embed = match embedder {
            Some(embedder) => {
                let options = PoolOptions { threads: settings.threads, max_batch: settings.max_batch, queue_capacity: settings.queue_capacity };
                Some(EmbedPool::start(embedder, options).context("failed to start the embedding threads")?)
            }
            None => None,
        };
        let stats = store.stats();
        info!(dir = %settings.dir.display(), vectors = stats.vectors, semantic = embed.is_some(), overrides = overrides.load().len(), "response cache ready");
        Ok(Some(Arc::new(ResponseCache { store, embed, overrides, runtime, metrics })))
    }

    /// Saves the index and closes the store; called once at shutdown.
    pub async fn close(&self) {
        let store = self.store.clone();
        // The store's disk work runs on the cache runtime, which stays up while this waits.
        let closing = self.runtime.spawn(async move { store.close().await });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), closing).await;
    }
}

/// Saves the index when it changed and refreshes the tier gauges, every `interval`.
async fn maintain(store: Arc<CacheStore>, metrics: Arc<Metrics>, interval: std::time::Duration) {
    loop {
        tokio::time::sleep(interval).await;
        store.save_index();
        let stats = store.stats();
        let gauges = &metrics.cache;
        gauges.tier_bytes.with_label_values(&["memory"]).set(stats.memory_bytes as i64);
        gauges.tier_bytes.with_label_values(&["disk"]).set(stats.disk_bytes as i64);
        gauges.tier_bytes.with_label_values(&["index"]).set(stats.index_bytes as i64);
        gauges.tier_entries.with_label_values(&["index"]).set(stats.vectors as i64);
    }
}
