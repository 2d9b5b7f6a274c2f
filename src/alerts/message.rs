//! The content of each kind of alert: the webhook's JSON body and the email's subject and text.

use serde_json::{json, Value};

use super::dedup::StoredAlert;
use crate::analytics::alert::{ProjectedBudgetAlert, BUDGET_ALERT_KIND};

/// The content of one alert, the same on every attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertMessage {
    /// The webhook's JSON body.
    pub body: String,
    pub subject: String,
    pub text: String,
}

/// Returns the JSON body of a usage-limit alert, as the webhook sends it.
pub fn usage_payload(alert: &StoredAlert, project_name: &str) -> Value {
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

/// Builds the message of a usage-limit alert.
pub fn usage_message(alert: &StoredAlert, project_name: &str) -> AlertMessage {
    let percent = alert.threshold * 100.0;
    AlertMessage {
        body: usage_payload(alert, project_name).to_string(),
        subject: format!("WatchLLM: project {project_name} reached {percent:.0}% of {}", alert.limit),
        text: format!(
            "Project {project_name} ({}) used {} of its {} limit of {} in {} ({percent:.0}%).\n",
            alert.project_id, alert.used, alert.limit, alert.limit_value, alert.period
        ),
    }
}

/// Returns the JSON body of a `projected_budget_exceeded` alert, as the webhook sends it.
pub fn budget_payload(alert: &ProjectedBudgetAlert, project_name: &str) -> Value {
    json!({
        "id": alert.id,
        "type": BUDGET_ALERT_KIND,
        "project": {"id": alert.project_id, "name": project_name},
        "period": alert.month,
        "time_zone": alert.time_zone,
        "budget_usd": alert.budget_usd,
        "spend_so_far_usd": alert.spend_so_far_usd,
        "projected_month_end_usd": alert.projected_month_end_usd,
        "interval": alert.interval,
        "projected_budget_exhaustion_date": alert.projected_budget_exhaustion_date,
        "created_at_ms": alert.created_at_ms,
    })
}

/// Builds the message of a `projected_budget_exceeded` alert.
pub fn budget_message(alert: &ProjectedBudgetAlert, project_name: &str) -> AlertMessage {
    let exhaustion = match &alert.projected_budget_exhaustion_date {
        Some(date) => format!("At this pace the budget runs out on {date}."),
        None => "The budget is not projected to run out before the month ends.".to_string(),
    };
    AlertMessage {
        body: budget_payload(alert, project_name).to_string(),
        subject: format!("WatchLLM: project {project_name} is projected to exceed its budget of ${:.2} in {}", alert.budget_usd, alert.month),
        text: format!(
            "Project {project_name} ({}) spent ${:.2} of its ${:.2} budget in {} ({}). The forecast projects ${:.2} at the month's end, \
             with an 80% interval of ${:.2} to ${:.2}. {exhaustion}\n",
            alert.project_id,
            alert.spend_so_far_usd,
            alert.budget_usd,
            alert.month,
            alert.time_zone,
            alert.projected_month_end_usd,
            alert.interval.lower_usd,
            alert.interval.upper_usd,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::month::Interval;

    fn budget_alert() -> ProjectedBudgetAlert {
        ProjectedBudgetAlert {
            id: "projected_budget_exceeded:proj_1:2026-12".into(),
            project_id: "proj_1".into(),
            month: "2026-12".into(),
            time_zone: "Asia/Tokyo".into(),
            budget_usd: 50.0,
            spend_so_far_usd: 30.0,
            projected_month_end_usd: 95.5,
            interval: Interval { level: 0.8, lower_usd: 80.0, upper_usd: 111.0 },
            projected_budget_exhaustion_date: Some("2026-12-16".into()),
            created_at_ms: 7,
        }
    }

    #[test]
    fn budget_payload_has_forecast_figures() {
        let payload = budget_payload(&budget_alert(), "shop");
        assert_eq!(payload["type"], "projected_budget_exceeded");
        assert_eq!(payload["id"], "projected_budget_exceeded:proj_1:2026-12");
        assert_eq!(payload["project"], json!({"id": "proj_1", "name": "shop"}));
        assert_eq!(payload["period"], "2026-12");
        assert_eq!(payload["time_zone"], "Asia/Tokyo");
        assert_eq!(payload["budget_usd"], 50.0);
        assert_eq!(payload["projected_month_end_usd"], 95.5);
        assert_eq!(payload["interval"], json!({"level": 0.8, "lower_usd": 80.0, "upper_usd": 111.0}));
        assert_eq!(payload["projected_budget_exhaustion_date"], "2026-12-16");
    }

    #[test]
    fn budget_email_names_budget_and_date() {
        let message = budget_message(&budget_alert(), "shop");
        assert_eq!(message.subject, "WatchLLM: project shop is projected to exceed its budget of $50.00 in 2026-12");
        assert!(message.text.starts_with("Project shop (proj_1) spent $30.00 of its $50.00 budget in 2026-12 (Asia/Tokyo)."), "{}", message.text);
        assert!(message.text.contains("projects $95.50 at the month's end, with an 80% interval of $80.00 to $111.00"), "{}", message.text);
        assert!(message.text.contains("runs out on 2026-12-16"), "{}", message.text);
        let body: Value = serde_json::from_str(&message.body).expect("JSON body");
        assert_eq!(body, budget_payload(&budget_alert(), "shop"));
    }

    #[test]
    fn usage_message_keeps_its_format() {
        let alert = StoredAlert {
            id: "alert_1".into(),
            project_id: "proj_1".into(),
            period: "2026-07".into(),
            limit: "monthly_requests".into(),
            threshold: 0.8,
            used: 8.0,
            limit_value: 10.0,
            created_at_ms: 1,
            webhook_status: "pending".into(),
            email_status: "disabled".into(),
            deliveries: Vec::new(),
        };
        let message = usage_message(&alert, "demo");
        assert_eq!(message.subject, "WatchLLM: project demo reached 80% of monthly_requests");
        assert_eq!(message.text, "Project demo (proj_1) used 8 of its monthly_requests limit of 10 in 2026-07 (80%).\n");
        let body: Value = serde_json::from_str(&message.body).expect("JSON body");
        assert_eq!(body["type"], "usage_alert");
        assert_eq!(body["threshold"], 0.8);
    }
}
