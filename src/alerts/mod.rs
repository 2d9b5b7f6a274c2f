//! Usage alerts: when a project's usage crosses a configured fraction of a monthly limit, one
//! alert per project, month, limit and threshold is stored and sent by webhook and email.
//!
//! - `settings`: the `alerts` section of the config.
//! - `dedup`: the alerts and their delivery attempts in the store.
//! - `webhook`, `email`: the two channels, each retried with exponential backoff.

pub mod dedup;
pub mod email;
pub mod settings;
pub mod webhook;

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::RuntimeConfig;
use crate::limits::quota::AlertCandidate;
use crate::store::Store;
use dedup::{DeliveryAttempt, StoredAlert};
use settings::RetryPolicy;
use webhook::AttemptResult;

/// Alerts waiting for the dispatcher; beyond this, new ones wait for the next crossing check.
const QUEUE_CAPACITY: usize = 1024;

/// The handle that raises alerts without waiting. Cheap to clone.
#[derive(Clone)]
pub struct AlertSink(mpsc::Sender<AlertCandidate>);

/// Creates a sink and the receiver that [`run_dispatcher`] drains.
pub fn alert_channel() -> (AlertSink, mpsc::Receiver<AlertCandidate>) {
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    (AlertSink(sender), receiver)
}

impl AlertSink {
    pub fn raise(&self, alerts: Vec<AlertCandidate>) {
        for alert in alerts {
            if self.0.try_send(alert).is_err() {
                warn!("alert queue full; an alert is dropped until its limit is checked again");
            }
        }
    }
}

/// Returns the JSON body of an alert, as the webhook sends it.
pub fn payload(alert: &StoredAlert, project_name: &str) -> serde_json::Value {
    json!({
        "id": alert.id,
        "type": "usage_alert",
        "project": {"id": alert.project_id, "name": project_name},
        "limit": alert.limit,
        "threshold": alert.threshold,
        "used": alert.used,
        "limit_value": alert.limit_value,
        "period": alert.period,
        "created_at_ms": alert.created_at_ms,
    })
}

/// Stores each raised alert and, when this node stored it first, delivers it.
pub async fn run_dispatcher(mut receiver: mpsc::Receiver<AlertCandidate>, store: Store, config: Arc<ArcSwap<RuntimeConfig>>) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
    while let Some(candidate) = receiver.recv().await {
        let settings = config.load().alerts.clone();
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
        match dedup::insert_alert(&store, &alert).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                warn!(project_id = %alert.project_id, error = %error, "failed to store a usage alert; it is not sent");
                continue;
            }
        }
        info!(alert_id = %alert.id, project_id = %alert.project_id, limit = %alert.limit, threshold = alert.threshold, "usage alert raised");
        let project_name = store.find_project(&alert.project_id).await.ok().flatten().map(|p| p.name).unwrap_or_default();
        // NOTE: a node that stops while delivering leaves the alert `pending`; no node resumes it.
        tokio::spawn(deliver(client.clone(), store.clone(), settings, alert, project_name));
    }
}

/// Delivers one alert through every configured channel, recording each attempt.
async fn deliver(client: reqwest::Client, store: Store, settings: Arc<settings::AlertSettings>, alert: StoredAlert, project_name: String) {
    let body = payload(&alert, &project_name).to_string();
    let webhook = async {
        let Some(hook) = &settings.webhook else { return };
        let result = with_retries(&store, &alert.id, "webhook", hook.retry, || webhook::post_once(&client, hook, body.as_bytes())).await;
        finish(&store, &alert.id, "webhook", result).await;
    };
    let email = async {
        let Some(mail) = &settings.email else { return };
        let subject = format!("WatchLLM: project {project_name} reached {:.0}% of {}", alert.threshold * 100.0, alert.limit);
        let text = format!(
            "Project {project_name} ({}) used {} of its {} limit of {} in {} ({:.0}%).\n",
            alert.project_id, alert.used, alert.limit, alert.limit_value, alert.period, alert.threshold * 100.0
        );
        let result = with_retries(&store, &alert.id, "email", mail.retry, || email::send_once(mail, &subject, &text)).await;
        finish(&store, &alert.id, "email", result).await;
    };
    tokio::join!(webhook, email);
}

async fn finish(store: &Store, alert_id: &str, channel: &str, delivered: bool) {
    let status = if delivered { "delivered" } else { "failed" };
    if let Err(error) = dedup::set_status(store, alert_id, channel, status).await {
        warn!(alert_id, channel, error = %error, "failed to record the delivery status of an alert");
    }
    if delivered {
        info!(alert_id, channel, "usage alert delivered");
    } else {
        warn!(alert_id, channel, "usage alert not delivered; every attempt failed");
    }
}

/// Runs `attempt` until it succeeds or the policy's attempts run out, waiting the backoff
/// between attempts and recording each one. Returns whether one succeeded.
async fn with_retries<F, Fut>(store: &Store, alert_id: &str, channel: &str, policy: RetryPolicy, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = AttemptResult>,
{
    for number in 1..=policy.max_attempts {
        let result = attempt().await;
        let record = DeliveryAttempt {
            channel: channel.to_string(),
            attempt: number as i32,
            at_ms: chrono::Utc::now().timestamp_millis(),
            ok: result.ok,
            status_code: result.status_code,
            error: result.error.clone(),
        };
        if let Err(error) = dedup::record_attempt(store, alert_id, &record).await {
            warn!(alert_id, channel, error = %error, "failed to record a delivery attempt");
        }
        if result.ok {
            return true;
        }
        warn!(alert_id, channel, attempt = number, error = result.error.as_deref().unwrap_or(""), "alert delivery attempt failed");
        if number < policy.max_attempts {
            tokio::time::sleep(policy.backoff(number)).await;
        }
    }
    false
}
