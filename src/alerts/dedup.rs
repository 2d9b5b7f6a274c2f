//! Alerts in the store. The unique key (project, month, limit, threshold) of `usage_alerts`
//! makes the first insert win, so one alert is sent however many nodes and restarts see the
//! same crossing.

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::Row;

use crate::store::{with_pool, Store};

/// An alert as stored and listed by the admin API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredAlert {
    pub id: String,
    pub project_id: String,
    /// The month as `YYYY-MM` in the project's time zone.
    pub period: String,
    pub limit: String,
    pub threshold: f64,
    pub used: f64,
    pub limit_value: f64,
    pub created_at_ms: i64,
    pub webhook_status: String,
    pub email_status: String,
    pub deliveries: Vec<DeliveryAttempt>,
}

/// One attempt to deliver an alert through one channel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeliveryAttempt {
    pub channel: String,
    pub attempt: i32,
    pub at_ms: i64,
    pub ok: bool,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// Converts a threshold fraction to the basis points of the unique key.
pub fn threshold_bp(threshold: f64) -> i32 {
    (threshold * 10_000.0).round() as i32
}

/// Inserts the alert unless the same project, month, limit and threshold is stored; returns
/// whether this call inserted it, and so owns its delivery.
pub async fn insert_alert(store: &Store, alert: &StoredAlert) -> Result<bool> {
    const SQL: &str = "INSERT INTO usage_alerts (id, project_id, period, limit_name, threshold_bp, used, limit_value, \
                       created_at_ms, webhook_status, email_status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                       ON CONFLICT (project_id, period, limit_name, threshold_bp) DO NOTHING";
    let inserted = with_pool!(store, pool => {
        sqlx::query(SQL)
            .bind(&alert.id)
            .bind(&alert.project_id)
            .bind(&alert.period)
            .bind(&alert.limit)
            .bind(threshold_bp(alert.threshold))
            .bind(alert.used)
            .bind(alert.limit_value)
            .bind(alert.created_at_ms)
            .bind(&alert.webhook_status)
            .bind(&alert.email_status)
            .execute(pool)
            .await
            .with_context(|| format!("failed to insert the alert of project {}", alert.project_id))?
            .rows_affected()
    });
    Ok(inserted == 1)
}

/// Records one delivery attempt.
pub async fn record_attempt(store: &Store, alert_id: &str, attempt: &DeliveryAttempt) -> Result<()> {
    const SQL: &str = "INSERT INTO alert_deliveries (id, alert_id, channel, attempt, at_ms, ok, status_code, error) \
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    with_pool!(store, pool => {
        sqlx::query(SQL)
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(alert_id)
            .bind(&attempt.channel)
            .bind(attempt.attempt)
            .bind(attempt.at_ms)
            .bind(attempt.ok)
            .bind(attempt.status_code)
            .bind(attempt.error.as_deref())
            .execute(pool)
            .await
            .with_context(|| format!("failed to record a delivery attempt of alert {alert_id}"))?;
    });
    Ok(())
}

/// Sets the delivery status of one channel (`webhook` or `email`).
pub async fn set_status(store: &Store, alert_id: &str, channel: &str, status: &str) -> Result<()> {
    let sql = match channel {
        "webhook" => "UPDATE usage_alerts SET webhook_status = $1 WHERE id = $2",
        _ => "UPDATE usage_alerts SET email_status = $1 WHERE id = $2",
    };
    with_pool!(store, pool => {
        sqlx::query(sql).bind(status).bind(alert_id).execute(pool).await.with_context(|| format!("failed to update alert {alert_id}"))?;
    });
    Ok(())
}

/// Returns a project's alerts, newest first, each with its delivery attempts in order.
pub async fn list_alerts(store: &Store, project_id: &str) -> Result<Vec<StoredAlert>> {
    const ALERTS: &str = "SELECT id, project_id, period, limit_name, threshold_bp, used, limit_value, created_at_ms, \
                          webhook_status, email_status FROM usage_alerts WHERE project_id = $1 ORDER BY created_at_ms DESC, id";
    const ATTEMPTS: &str = "SELECT d.alert_id, d.channel, d.attempt, d.at_ms, d.ok, d.status_code, d.error \
                            FROM alert_deliveries d JOIN usage_alerts a ON a.id = d.alert_id \
                            WHERE a.project_id = $1 ORDER BY d.at_ms, d.attempt";
    let mut alerts = Vec::new();
    with_pool!(store, pool => {
        let rows = sqlx::query(ALERTS).bind(project_id).fetch_all(pool).await.context("failed to list alerts")?;
        for row in &rows {
            let threshold_bp: i32 = row.try_get("threshold_bp")?;
            alerts.push(StoredAlert {
                id: row.try_get("id")?,
                project_id: row.try_get("project_id")?,
                period: row.try_get("period")?,
                limit: row.try_get("limit_name")?,
                threshold: f64::from(threshold_bp) / 10_000.0,
                used: row.try_get("used")?,
                limit_value: row.try_get("limit_value")?,
                created_at_ms: row.try_get("created_at_ms")?,
                webhook_status: row.try_get("webhook_status")?,
                email_status: row.try_get("email_status")?,
                deliveries: Vec::new(),
            });
        }
        let rows = sqlx::query(ATTEMPTS).bind(project_id).fetch_all(pool).await.context("failed to list alert deliveries")?;
        for row in &rows {
            let alert_id: String = row.try_get("alert_id")?;
            let attempt = DeliveryAttempt {
                channel: row.try_get("channel")?,
                attempt: row.try_get("attempt")?,
                at_ms: row.try_get("at_ms")?,
                ok: row.try_get("ok")?,
                status_code: row.try_get("status_code")?,
                error: row.try_get("error")?,
            };
            if let Some(alert) = alerts.iter_mut().find(|a| a.id == alert_id) {
                alert.deliveries.push(attempt);
            }
        }
    });
    Ok(alerts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str) -> StoredAlert {
        StoredAlert {
            id: id.into(),
            project_id: "proj_1".into(),
            period: "2026-07".into(),
            limit: "monthly_tokens".into(),
            threshold: 0.8,
            used: 800.0,
            limit_value: 1000.0,
            created_at_ms: 1,
            webhook_status: "pending".into(),
            email_status: "disabled".into(),
            deliveries: Vec::new(),
        }
    }

    #[tokio::test]
    async fn second_insert_of_same_alert_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/t.db", dir.path().display())).await.unwrap();
        store.migrate().await.unwrap();
        assert!(insert_alert(&store, &alert("a1")).await.unwrap());
        assert!(!insert_alert(&store, &alert("a2")).await.unwrap());

        let attempt = DeliveryAttempt { channel: "webhook".into(), attempt: 1, at_ms: 5, ok: false, status_code: Some(500), error: None };
        record_attempt(&store, "a1", &attempt).await.unwrap();
        set_status(&store, "a1", "webhook", "failed").await.unwrap();
        let listed = list_alerts(&store, "proj_1").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].webhook_status, "failed");
        assert_eq!(listed[0].deliveries, vec![attempt]);
        assert_eq!(listed[0].threshold, 0.8);
    }
}
