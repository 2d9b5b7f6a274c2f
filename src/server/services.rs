//! Background services that run beside the proxy in Pingora's server.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use super::load_key_snapshot;
use crate::accounting::journal::Journal;
use crate::accounting::writer::{UsageSink, UsageWriter, WriterOptions};
use crate::metrics::Metrics;
use crate::admin::{router, AdminState};
use crate::auth::SharedKeys;
use crate::config::reload::{merge_reloaded, restart_only_changes};
use crate::config::{load_config, modified, FileStamps, RuntimeConfig};

/// Wait after a file change is seen before it is read, so that a write in progress can finish.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(250);
use crate::store::Store;

/// Writes usage events to the store and keeps the key snapshot current.
///
/// At shutdown it waits for the requests in flight (up to `shutdown_grace_seconds`), writes the
/// remaining usage events, waits for the alerts still being delivered (up to
/// `ALERT_SETTLE_LIMIT`), and then ends the process, because Pingora would otherwise sleep
/// through its whole grace period even when nothing is left to do.
pub struct AccountingService {
    writer: Mutex<Option<UsageWriter>>,
    keys: SharedKeys,
    config: Arc<ArcSwap<RuntimeConfig>>,
    in_flight: Arc<AtomicUsize>,
    alerts: crate::alerts::AlertSink,
}

/// How long shutdown waits for alert deliveries after the last usage events are written.
/// Pingora's grace period leaves room for it (see `run` in `server/mod.rs`).
pub(super) const ALERT_SETTLE_LIMIT: Duration = Duration::from_secs(5);

impl AccountingService {
    pub fn new(writer: UsageWriter, keys: SharedKeys, config: Arc<ArcSwap<RuntimeConfig>>, in_flight: Arc<AtomicUsize>, alerts: crate::alerts::AlertSink) -> Self {
        AccountingService { writer: Mutex::new(Some(writer)), keys, config, in_flight, alerts }
    }
}

/// Resolves when shutdown has started and the requests in flight have ended, or `grace` passed.
async fn drained(shutdown: ShutdownWatch, in_flight: Arc<AtomicUsize>, grace: Duration) {
    shutdown_signal(shutdown).await;
    let deadline = tokio::time::Instant::now() + grace;
    let mut logged = false;
    while in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        if !logged {
            info!(in_flight = in_flight.load(Ordering::SeqCst), "shutting down: waiting for requests in flight");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = in_flight.load(Ordering::SeqCst);
    if left > 0 {
        warn!(in_flight = left, "shutdown grace period over; unfinished requests are cut and their usage goes to the journal");
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
        // This service's runtime has one thread, and the writer inserts its rows on it.
        match crate::accounting::priority::lower_current_thread(config.accounting.writer_nice) {
            Ok(nice) => info!(nice, "usage writer thread priority set"),
            Err(e) => warn!(error = %e, "failed to lower the usage writer's thread priority, so it keeps the process's priority"),
        }
        // The pool is created on this service's runtime, which lives as long as the server.
        let store = loop {
            match Store::connect(&config.database_url).await {
                Ok(store) => break store,
                Err(e) => {
                    error!(error = %e, "failed to connect to the database; usage events go to the journal until it is reachable");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        // NOTE: events still queued in the channel at this point are lost; the
                        // writer needs a store to start, and this path ends without one.
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
        let grace = config.shutdown_grace;
        writer.run(store.clone(), options, drained(shutdown, self.in_flight.clone(), grace)).await;
        refresher.abort();
        let unfinished = self.alerts.settle(ALERT_SETTLE_LIMIT).await;
        if unfinished > 0 {
            warn!(unfinished, "alerts still being delivered are cut at shutdown and stay undelivered");
        }
        store.close().await;
        info!("accounting stopped; usage events written, exiting");
        std::process::exit(0);
    }
}

/// Serves the admin API on its own listener.
pub struct AdminService {
    listener: Mutex<Option<std::net::TcpListener>>,
    config: Arc<ArcSwap<RuntimeConfig>>,
    metrics: Arc<Metrics>,
    usage: UsageSink,
    journal: Arc<Journal>,
    limits: Arc<crate::limits::Limiter>,
    alerts: crate::alerts::AlertSink,
    routing: crate::routing::Routing,
}

impl AdminService {
    pub fn new(
        listener: std::net::TcpListener,
        config: Arc<ArcSwap<RuntimeConfig>>,
        metrics: Arc<Metrics>,
        usage: UsageSink,
        journal: Arc<Journal>,
        limits: Arc<crate::limits::Limiter>,
        alerts: crate::alerts::AlertSink,
    ) -> Self {
        AdminService { listener: Mutex::new(Some(listener)), config, metrics, usage, journal, limits, alerts, routing: Default::default() }
    }

    /// Gives the admin routes the proxy's routing state (provider health and keys).
    pub fn with_routing(mut self, routing: crate::routing::Routing) -> Self {
        self.routing = routing;
        self
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
        // Readiness reports the store as unreachable rather than delaying the listener for it.
        let store = match Store::connect(&self.config.load().database_url).await {
            Ok(store) => Some(store),
            Err(e) => {
                warn!(error = %e, "admin listener has no database connection; /health/ready reports not ready");
                None
            }
        };
        let state = AdminState {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            usage: self.usage.clone(),
            journal: self.journal.clone(),
            limits: self.limits.clone(),
            alerts: self.alerts.clone(),
            routing: self.routing.clone(),
            store,
            started: std::time::Instant::now(),
        };
        // Forecasts every project's month-end spend, for the projected-spend gauge and the budget alert.
        let forecasts = state.store.clone().map(|store| tokio::spawn(crate::analytics::alert::run_forecasts(store, self.config.clone(), self.metrics.clone(), self.alerts.clone(), crate::analytics::alert::FORECAST_INTERVAL)));
        // Serve /health only once the proxy accepts connections, so that a supervisor or a test
        // that waits for /health can send traffic right away. Bounded: after 10 s the admin API
        // starts anyway, and /health/ready keeps reporting the proxy's state.
        for _ in 0..200 {
            if crate::admin::proxy_accepts(&self.config.load().listen).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal(shutdown)).await;
        if let Some(task) = forecasts {
            task.abort();
        }
        if let Err(e) = served {
            error!(error = %e, "admin listener failed");
        }
    }
}

/// Reloads the config on SIGHUP and when the config or pricing file changes.
pub struct ReloadService {
    path: PathBuf,
    config: Arc<ArcSwap<RuntimeConfig>>,
    metrics: Arc<Metrics>,
    /// The files' modification times when the running config was read from them.
    loaded_stamps: FileStamps,
}

impl ReloadService {
    /// Watches the config file at `path`, whose running version was read at `loaded_stamps`.
    pub fn new(path: PathBuf, config: Arc<ArcSwap<RuntimeConfig>>, metrics: Arc<Metrics>, loaded_stamps: FileStamps) -> Self {
        ReloadService { path, config, metrics, loaded_stamps }
    }

    /// Loads the file and swaps it in whole; on any problem the running config stays. Returns
    /// the modification times that the next check compares with: those taken before the files
    /// were read, so that a change written during the reload triggers another one.
    fn reload(&self, trigger: &str) -> FileStamps {
        let attempted = file_stamps(&self.path, &self.config.load().pricing_path);
        match load_config(&self.path) {
            Ok(loaded) => {
                let running = self.config.load_full();
                let restart_only = restart_only_changes(&running, &loaded.runtime);
                if !restart_only.is_empty() {
                    warn!(settings = ?restart_only, "changed settings apply only after a restart; they keep their running values");
                }
                let merged = merge_reloaded(&running, &loaded.runtime);
                info!(trigger, version = %merged.version, models = merged.models.len(), "config reloaded");
                self.config.store(Arc::new(merged));
                self.metrics.observe_reload(true);
                loaded.stamps
            }
            Err(e) => {
                for problem in &e.problems {
                    error!(trigger, file = %e.file.display(), path = %problem.path, reason = %problem.message, "config reload rejected; the running config stays");
                }
                self.metrics.observe_reload(false);
                attempted
            }
        }
    }
}

/// Returns the modification times of the config file and its pricing file.
fn file_stamps(config_path: &Path, pricing_path: &Path) -> FileStamps {
    (modified(config_path), modified(pricing_path))
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(stream) => Some(stream),
            Err(e) => {
                error!(error = %e, "failed to listen for SIGHUP; only file changes reload the config");
                None
            }
        };
        // Compared with the times at which the running config was read, not with the times when
        // this service first runs: a change written while the gateway starts reloads it.
        let mut stamps = self.loaded_stamps;
        let stop = shutdown_signal(shutdown);
        tokio::pin!(stop);

        loop {
            let interval = self.config.load().reload_watch_interval;
            let poll = if interval.is_zero() { Duration::from_secs(3600) } else { interval };
            tokio::select! {
                _ = &mut stop => return,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    stamps = self.reload("SIGHUP");
                }
                _ = tokio::time::sleep(poll) => {
                    if interval.is_zero() {
                        continue;
                    }
                    let now = file_stamps(&self.path, &self.config.load().pricing_path);
                    if now != stamps {
                        // Let an editor finish writing before reading the file.
                        tokio::time::sleep(RELOAD_DEBOUNCE).await;
                        stamps = self.reload("file change");
                    }
                }
            }
        }
    }
}
