//! Alerts and their delivery by webhook and email. Two kinds travel through one channel. A
//! usage-limit alert is raised when a project's usage crosses a configured fraction of a monthly
//! limit, once per project, month, limit and threshold. The spend forecast raises the
//! `projected_budget_exceeded` alert once per project and month.
//!
//! - `settings`: the `alerts` section of the config.
//! - `dedup`: the usage-limit alerts and their delivery attempts in the store.
//! - `message`: the webhook body and the email of each kind of alert.
//! - `webhook`, `email`: the two channels, each retried with exponential backoff.

pub mod dedup;
pub mod email;
pub mod message;
pub mod settings;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::analytics::alert::{ProjectedBudgetAlert, BUDGET_ALERT_KIND};
use crate::config::RuntimeConfig;
use crate::limits::quota::AlertCandidate;
use crate::store::Store;
use dedup::{DeliveryAttempt, StoredAlert};
use message::AlertMessage;
use settings::RetryPolicy;
use webhook::AttemptResult;

/// Alerts waiting for the dispatcher; beyond this, new ones are dropped with a warning.
const QUEUE_CAPACITY: usize = 1024;

/// An alert on its way to the dispatcher.
#[derive(Clone, Debug)]
pub enum Alert {
    /// Usage reached a threshold of a monthly limit. The dispatcher stores it in `usage_alerts`,
    /// whose unique key lets only the first of its copies through.
    UsageThreshold(AlertCandidate),
    /// The month-end spend forecast exceeds the budget. The forecast stored it in
    /// `analytics_alerts` before raising it, so it arrives once per project and month.
    ProjectedBudgetExceeded(ProjectedBudgetAlert),
}

/// An alert in the queue, with the token that counts it as unfinished until its delivery ends.
type Queued = (Alert, TaskTrackerToken);

/// The receiving end of the alert channel, drained by [`run_dispatcher`].
pub struct AlertReceiver(mpsc::Receiver<Queued>);

impl AlertReceiver {
    /// Takes the next queued alert without waiting, and counts it as finished.
    pub fn try_recv(&mut self) -> Option<Alert> {
        self.0.try_recv().ok().map(|(alert, _token)| alert)
    }
}

/// The handle that raises alerts without waiting. Cheap to clone.
#[derive(Clone)]
pub struct AlertSink {
    queue: mpsc::Sender<Queued>,
    /// Counts every alert from its raising until its last channel has finished.
    unfinished: TaskTracker,
}

/// Creates a sink and the receiver that [`run_dispatcher`] drains.
pub fn alert_channel() -> (AlertSink, AlertReceiver) {
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    (AlertSink { queue: sender, unfinished: TaskTracker::new() }, AlertReceiver(receiver))
}

impl AlertSink {
    /// Raises usage-limit alerts.
    pub fn raise(&self, alerts: Vec<AlertCandidate>) {
        for alert in alerts {
            self.send(Alert::UsageThreshold(alert));
        }
    }

    /// Queues one alert for the dispatcher, or drops it with a warning when the queue is full.
    // NOTE: a dropped usage-limit alert is raised again only after a restart rebuilds the
    // counters; a dropped budget alert stays stored and undelivered.
    pub fn send(&self, alert: Alert) {
        let project_id = match &alert {
            Alert::UsageThreshold(candidate) => candidate.project_id.clone(),
            Alert::ProjectedBudgetExceeded(budget) => budget.project_id.clone(),
        };
        if self.queue.try_send((alert, self.unfinished.token())).is_err() {
            warn!(project_id = %project_id, "alert queue full or closed; an alert is dropped");
        }
    }

    /// Waits until every alert raised so far, and every one raised meanwhile, has been stored and
    /// delivered or has used up its attempts, or until `limit` has passed. Returns how many
    /// alerts were still unfinished. Shutdown calls it after the last usage events are written.
    pub async fn settle(&self, limit: Duration) -> usize {
        self.unfinished.close();
        match tokio::time::timeout(limit, self.unfinished.wait()).await {
            Ok(()) => 0,
            Err(_) => self.unfinished.len(),
        }
    }
}

/// The stored row that records the outcome of a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ledger {
    /// A row of `usage_alerts` by id: a status per channel, and one `alert_deliveries` row per attempt.
    UsageAlert(String),
    /// A row of `analytics_alerts` by dedup key: `delivered_at_ms` is set by the first channel
    /// that delivers it. Attempts are only logged.
    AnalyticsAlert(String),
}

impl Ledger {
    fn alert_id(&self) -> &str {
        match self {
            Ledger::UsageAlert(id) | Ledger::AnalyticsAlert(id) => id,
        }
    }
}

/// An alert ready for delivery.
struct Outgoing {
    kind: &'static str,
    project_id: String,
    ledger: Ledger,
    message: AlertMessage,
}

/// Stores each raised usage-limit alert, and delivers every alert that this node raised first.
pub async fn run_dispatcher(receiver: AlertReceiver, store: Store, config: Arc<ArcSwap<RuntimeConfig>>) {
    let AlertReceiver(mut receiver) = receiver;
    let client = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
    // The token of an alert ends with its delivery, or here when the store already had it.
    while let Some((alert, token)) = receiver.recv().await {
        let settings = config.load().alerts.clone();
        let outgoing = match alert {
            Alert::UsageThreshold(candidate) => match store_usage_alert(&store, &settings, &candidate).await {
                Some(outgoing) => outgoing,
                None => continue,
            },
            Alert::ProjectedBudgetExceeded(budget) => {
                let project_name = project_name(&store, &budget.project_id).await;
                info!(alert_id = %budget.id, project_id = %budget.project_id, "projected budget alert raised");
                Outgoing {
                    kind: BUDGET_ALERT_KIND,
                    project_id: budget.project_id.clone(),
                    ledger: Ledger::AnalyticsAlert(budget.id.clone()),
                    message: message::budget_message(&budget, &project_name),
                }
            }
        };
        // NOTE: shutdown waits a few seconds for deliveries (see `AlertSink::settle`). No node
        // resumes an alert still undelivered after that, or one cut off by a killed process.
        let delivery = deliver(client.clone(), store.clone(), settings, outgoing);
        tokio::spawn(async move {
            delivery.await;
            drop(token);
        });
    }
}

/// Returns the project's name, or "" when the store cannot find it.
async fn project_name(store: &Store, project_id: &str) -> String {
    store.find_project(project_id).await.ok().flatten().map(|project| project.name).unwrap_or_default()
}

/// Inserts a usage-limit alert into `usage_alerts`. Returns it ready for delivery when this node
/// inserted it first, and None when it was stored before or the insert failed.
async fn store_usage_alert(store: &Store, settings: &settings::AlertSettings, candidate: &AlertCandidate) -> Option<Outgoing> {
    let alert = StoredAlert {
        id: format!("alert_{}", uuid::Uuid::new_v4().simple()),
        project_id: candidate.project_id.clone(),
        period: candidate.month.label(),
        limit: candidate.kind.name().to_string(),
        threshold: candidate.threshold,
        used: candidate.used,
        limit_value: candidate.limit,
        created_at_ms: chrono::Utc::now().timestamp_millis(),
        webhook_status: if settings.webhook.is_some() { "pending" } else { "disabled" }.into(),
        email_status: if settings.email.is_some() { "pending" } else { "disabled" }.into(),
        deliveries: Vec::new(),
    };
    match dedup::insert_alert(store, &alert).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(error) => {
            warn!(project_id = %alert.project_id, error = %error, "failed to store a usage alert; it is not sent");
            return None;
        }
    }
    info!(alert_id = %alert.id, project_id = %alert.project_id, limit = %alert.limit, threshold = alert.threshold, "usage alert raised");
    let project_name = project_name(store, &alert.project_id).await;
    Some(Outgoing {
        kind: "usage_alert",
        project_id: alert.project_id.clone(),
        ledger: Ledger::UsageAlert(alert.id.clone()),
        message: message::usage_message(&alert, &project_name),
    })
}

/// Delivers one alert through every configured channel, recording each attempt.
async fn deliver(client: reqwest::Client, store: Store, settings: Arc<settings::AlertSettings>, alert: Outgoing) {
    let webhook = async {
        let Some(hook) = &settings.webhook else { return };
        let body = alert.message.body.as_bytes();
        let result = with_retries(&store, &alert.ledger, "webhook", hook.retry, || webhook::post_once(&client, hook, body)).await;
        finish(&store, &alert, "webhook", result).await;
    };
    let email = async {
        let Some(mail) = &settings.email else { return };
        let result = with_retries(&store, &alert.ledger, "email", mail.retry, || email::send_once(mail, &alert.message.subject, &alert.message.text)).await;
        finish(&store, &alert, "email", result).await;
    };
    tokio::join!(webhook, email);
}

/// Records the outcome of one channel and logs it.
async fn finish(store: &Store, alert: &Outgoing, channel: &str, delivered: bool) {
    let alert_id = alert.ledger.alert_id();
    let recorded = match &alert.ledger {
        Ledger::UsageAlert(id) => dedup::set_status(store, id, channel, if delivered { "delivered" } else { "failed" }).await,
        Ledger::AnalyticsAlert(key) if delivered => store.mark_alert_delivered(key, chrono::Utc::now().timestamp_millis()).await,
        Ledger::AnalyticsAlert(_) => Ok(()),
    };
    if let Err(error) = recorded {
        warn!(alert_id, channel, error = %error, "failed to record the delivery status of an alert");
    }
    if delivered {
        info!(alert_id, kind = alert.kind, project_id = %alert.project_id, channel, "alert delivered");
    } else {
        warn!(alert_id, kind = alert.kind, project_id = %alert.project_id, channel, "alert not delivered; every attempt failed");
    }
}

/// Runs `attempt` until it succeeds or the policy's attempts run out, waiting the backoff
/// between attempts. Each attempt of a usage-limit alert is stored in `alert_deliveries`, and
/// each failed attempt is logged. Returns whether one succeeded.
async fn with_retries<F, Fut>(store: &Store, ledger: &Ledger, channel: &str, policy: RetryPolicy, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = AttemptResult>,
{
    let alert_id = ledger.alert_id();
    for number in 1..=policy.max_attempts {
        let result = attempt().await;
        if let Ledger::UsageAlert(id) = ledger {
            let record = DeliveryAttempt {
                channel: channel.to_string(),
                attempt: number as i32,
                at_ms: chrono::Utc::now().timestamp_millis(),
                ok: result.ok,
                status_code: result.status_code,
                error: result.error.clone(),
            };
            if let Err(error) = dedup::record_attempt(store, id, &record).await {
                warn!(alert_id, channel, error = %error, "failed to record a delivery attempt");
            }
        }
        if result.ok {
            return true;
        }
        warn!(alert_id, channel, attempt = number, status_code = result.status_code, error = result.error.as_deref().unwrap_or(""), "alert delivery attempt failed");
        if number < policy.max_attempts {
            tokio::time::sleep(policy.backoff(number)).await;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::limits::clock::Month;
    use crate::limits::LimitKind;

    fn candidate() -> AlertCandidate {
        let month = Month::containing(1_780_000_000_000, chrono_tz::Tz::UTC);
        AlertCandidate { project_id: "proj_a".into(), kind: LimitKind::MonthlyRequests, threshold: 0.8, used: 8.0, limit: 10.0, month }
    }

    #[tokio::test]
    async fn settle_waits_for_deliveries() {
        let (sink, AlertReceiver(mut queue)) = alert_channel();
        sink.raise(vec![candidate()]);
        // In place of the dispatcher, this task takes the alert late and then holds its token.
        let dispatcher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (_alert, token) = queue.recv().await.expect("a queued alert");
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(token);
            queue
        });
        let started = Instant::now();
        assert_eq!(sink.settle(Duration::from_secs(5)).await, 0);
        assert!(started.elapsed() >= Duration::from_millis(200), "settled after {:?}", started.elapsed());
        dispatcher.await.expect("dispatcher stand-in");
    }

    #[tokio::test]
    async fn settle_stops_at_limit() {
        let (sink, mut receiver) = alert_channel();
        sink.raise(vec![candidate(), candidate()]);
        assert_eq!(sink.settle(Duration::from_millis(50)).await, 2);
        // An alert raised during shutdown is counted too, and taking it off the queue finishes it.
        sink.raise(vec![candidate()]);
        assert_eq!(sink.settle(Duration::from_millis(10)).await, 3);
        while receiver.try_recv().is_some() {}
        assert_eq!(sink.settle(Duration::from_millis(10)).await, 0);
    }
}
