//! The background side of the limits: the rebuild at start, the reconciliation loop and the
//! alert dispatcher.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::{error, info, warn};

use super::sync::{rebuild, reconcile, seed_shared, MonthUsage};
use super::Limiter;
use crate::accounting::journal::Journal;
use crate::alerts::{run_dispatcher, AlertReceiver, AlertSink};
use crate::config::RuntimeConfig;
use crate::store::Store;

/// Replays the usage journal into the store and rebuilds this month's counters from the stored
/// usage events, on a short-lived runtime before the server starts.
pub fn prepare_limits(database_url: &str, journal: &Journal, limiter: &Limiter, config: &RuntimeConfig) -> anyhow::Result<Vec<MonthUsage>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = Store::connect(database_url).await.context("failed to connect to the database")?;
        // Events a crash left in the journal belong to the month too.
        if let Err(e) = journal.replay(&store).await {
            warn!(error = %e, "failed to replay the usage journal before rebuilding the limit counters");
        }
        let usage = rebuild(&store, limiter, &config.limits).await.context("failed to rebuild the limit counters")?;
        store.close().await;
        Ok(usage)
    })
}

/// Reconciles the counters with the shared totals and delivers alerts.
pub struct LimitsService {
    limiter: Arc<Limiter>,
    config: Arc<ArcSwap<RuntimeConfig>>,
    alerts: AlertSink,
    receiver: Mutex<Option<AlertReceiver>>,
    rebuilt: Mutex<Vec<MonthUsage>>,
}

impl LimitsService {
    pub fn new(limiter: Arc<Limiter>, config: Arc<ArcSwap<RuntimeConfig>>, alerts: AlertSink, receiver: AlertReceiver, rebuilt: Vec<MonthUsage>) -> Self {
        LimitsService { limiter, config, alerts, receiver: Mutex::new(Some(receiver)), rebuilt: Mutex::new(rebuilt) }
    }
}

async fn stopped(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl BackgroundService for LimitsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(receiver) = self.receiver.lock().ok().and_then(|mut r| r.take()) else { return };
        let url = self.config.load().database_url.clone();
        let store = loop {
            match Store::connect(&url).await {
                Ok(store) => break store,
                Err(e) => {
                    error!(error = %e, "limits: failed to connect to the database; alerts and reconciliation wait for it");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stopped(&mut shutdown) => return,
                    }
                }
            }
        };
        // The dispatcher outlives this loop, so alerts raised while the server drains are still
        // delivered. The accounting service waits for them before the process exits.
        tokio::spawn(run_dispatcher(receiver, store.clone(), self.config.clone()));

        // Alerts already due from the rebuilt usage are raised now; the store drops repeats.
        let rebuilt = self.rebuilt.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        let now_ms = self.limiter.now_ms();
        if let Err(e) = seed_shared(&store, &rebuilt, now_ms).await {
            warn!(error = %e, "failed to seed the shared limit totals");
        }
        let config = self.config.load_full();
        for project in &rebuilt {
            let due = self.limiter.apply_shared(&config.limits, &config.alerts.thresholds, (&project.project_id, &project.name, &project.plan), project.month.start_ms, project.used);
            self.alerts.raise(due);
        }

        let shared = matches!(store, Store::Postgres(_));
        if shared {
            info!(interval_ms = config.limits.sync_interval.as_millis() as u64, "limits: reconciling counters with the shared totals in PostgreSQL");
        }
        let mut read_since_ms = 0;
        let mut failures = 0u32;
        loop {
            let config = self.config.load_full();
            let interval = config.limits.sync_interval;
            let wait = if shared && !interval.is_zero() { interval } else { Duration::from_secs(1) };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(&mut shutdown) => break,
            }
            if !shared || interval.is_zero() {
                continue;
            }
            match reconcile(&store, &self.limiter, &config.limits, &config.alerts.thresholds, read_since_ms).await {
                Ok((due, next)) => {
                    read_since_ms = next;
                    failures = 0;
                    self.alerts.raise(due);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 60 == 0 {
                        warn!(error = %e, failures, "limits: failed to reconcile with the shared totals; counting locally meanwhile");
                    }
                }
            }
        }
        // A last push, so that the other nodes see this node's final usage.
        if shared {
            let config = self.config.load_full();
            if let Err(e) = reconcile(&store, &self.limiter, &config.limits, &config.alerts.thresholds, read_since_ms).await {
                warn!(error = %e, "limits: failed the final push to the shared totals");
            }
        }
    }
}
