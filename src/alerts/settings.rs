//! The `alerts` section of the config file. Every value reloads live.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::runtime::SecretKey;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAlerts {
    /// Fractions of each monthly limit at which an alert is sent.
    pub thresholds: Vec<f64>,
    pub webhook: RawWebhook,
    pub email: RawEmail,
}

impl Default for RawAlerts {
    fn default() -> Self {
        RawAlerts { thresholds: vec![0.8, 1.0], webhook: RawWebhook::default(), email: RawEmail::default() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhook {
    /// URL that receives each alert as a JSON POST; empty sends no webhook.
    pub url: String,
    /// Environment variable holding the HMAC-SHA256 signing secret; required with a URL.
    pub secret_env: String,
    /// Attempts per alert, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt in milliseconds; it doubles for each further attempt.
    pub initial_backoff_ms: u64,
    /// Maximum wait for the receiver's response, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RawWebhook {
    fn default() -> Self {
        RawWebhook { url: String::new(), secret_env: "WATCHLLM_WEBHOOK_SECRET".into(), max_attempts: 5, initial_backoff_ms: 1000, timeout_ms: 5000 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEmail {
    /// SMTP server host; empty sends no email.
    pub smtp_host: String,
    pub smtp_port: u16,
    /// `starttls`, `tls` (implicit TLS) or `none` (plain text, for a relay on the same host).
    pub tls: String,
    /// Environment variables holding the SMTP user name and password; empty sends no login.
    pub username_env: String,
    pub password_env: String,
    pub from: String,
    pub to: Vec<String>,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub timeout_ms: u64,
}

impl Default for RawEmail {
    fn default() -> Self {
        RawEmail {
            smtp_host: String::new(),
            smtp_port: 587,
            tls: "starttls".into(),
            username_env: String::new(),
            password_env: String::new(),
            from: String::new(),
            to: Vec::new(),
            max_attempts: 3,
            initial_backoff_ms: 1000,
            timeout_ms: 10_000,
        }
    }
}

/// How often and how patiently a channel delivers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub timeout: Duration,
}

impl RetryPolicy {
    /// Returns the wait after failed attempt `attempt` (1-based): the initial backoff, doubled
    /// for each attempt after the first.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
    }
}

#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: SecretKey,
    pub retry: RetryPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    StartTls,
    Tls,
    None,
}

#[derive(Clone, Debug)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub credentials: Option<(String, SecretKey)>,
    pub from: String,
    pub to: Vec<String>,
    pub retry: RetryPolicy,
}

/// The validated `alerts` section.
#[derive(Clone, Debug)]
pub struct AlertSettings {
    pub thresholds: Vec<f64>,
    pub webhook: Option<WebhookSettings>,
    pub email: Option<EmailSettings>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings { thresholds: vec![0.8, 1.0], webhook: None, email: None }
    }
}

/// Validates the `alerts` section; each problem is pushed as (dotted path, message).
pub fn parse_alerts(raw: &RawAlerts, env: &HashMap<String, String>, problems: &mut Vec<(String, String)>) -> AlertSettings {
    let mut thresholds = raw.thresholds.clone();
    if thresholds.iter().any(|t| !t.is_finite() || *t <= 0.0) || thresholds.len() > 16 {
        problems.push(("alerts.thresholds".into(), "expected at most 16 fractions above 0, such as [0.8, 1.0]".into()));
    }
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();

    let webhook = (!raw.webhook.url.is_empty()).then(|| {
        let hook = &raw.webhook;
        match url::Url::parse(&hook.url) {
            Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {}
            _ => problems.push(("alerts.webhook.url".into(), format!("invalid URL {:?}; expected http:// or https://", hook.url))),
        }
        let secret = env.get(&hook.secret_env).filter(|s| !s.is_empty()).cloned();
        if secret.is_none() {
            problems.push(("alerts.webhook.secret_env".into(), format!("environment variable {} is not set; the webhook needs a signing secret", hook.secret_env)));
        }
        WebhookSettings { url: hook.url.clone(), secret: SecretKey(secret.unwrap_or_default()), retry: retry(hook.max_attempts, hook.initial_backoff_ms, hook.timeout_ms) }
    });

    let email = (!raw.email.smtp_host.is_empty()).then(|| {
        let mail = &raw.email;
        let security = match mail.tls.as_str() {
            "starttls" => SmtpSecurity::StartTls,
            "tls" => SmtpSecurity::Tls,
            "none" => SmtpSecurity::None,
            other => {
                problems.push(("alerts.email.tls".into(), format!("invalid value {other:?}; expected starttls, tls or none")));
                SmtpSecurity::StartTls
            }
        };
        if mail.from.parse::<lettre::message::Mailbox>().is_err() {
            problems.push(("alerts.email.from".into(), format!("invalid address {:?}", mail.from)));
        }
        if mail.to.is_empty() {
            problems.push(("alerts.email.to".into(), "must list at least one address".into()));
        }
        for (index, to) in mail.to.iter().enumerate() {
            if to.parse::<lettre::message::Mailbox>().is_err() {
                problems.push((format!("alerts.email.to[{index}]"), format!("invalid address {to:?}")));
            }
        }
        let credentials = (!mail.username_env.is_empty()).then(|| {
            let user = env.get(&mail.username_env).cloned().unwrap_or_default();
            let password = env.get(&mail.password_env).cloned().unwrap_or_default();
            if user.is_empty() {
                problems.push(("alerts.email.username_env".into(), format!("environment variable {} is not set", mail.username_env)));
            }
            (user, SecretKey(password))
        });
        EmailSettings {
            host: mail.smtp_host.clone(),
            port: mail.smtp_port,
            security,
            credentials,
            from: mail.from.clone(),
            to: mail.to.clone(),
            retry: retry(mail.max_attempts, mail.initial_backoff_ms, mail.timeout_ms),
        }
    });

    AlertSettings { thresholds, webhook, email }
}

fn retry(max_attempts: u32, initial_backoff_ms: u64, timeout_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_attempts: max_attempts.clamp(1, 20),
        initial_backoff: Duration::from_millis(initial_backoff_ms),
        timeout: Duration::from_millis(timeout_ms.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles() {
        let policy = retry(5, 100, 1000);
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(4), Duration::from_millis(800));
    }

    #[test]
    fn webhook_needs_secret() {
        let raw: RawAlerts = serde_yaml_ng::from_str("webhook: {url: 'http://127.0.0.1:1/hook'}").unwrap();
        let mut problems = Vec::new();
        parse_alerts(&raw, &HashMap::new(), &mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "alerts.webhook.secret_env");
    }

    #[test]
    fn thresholds_sorted_and_checked() {
        let raw: RawAlerts = serde_yaml_ng::from_str("thresholds: [1.0, 0.5, 0.5]").unwrap();
        let mut problems = Vec::new();
        assert_eq!(parse_alerts(&raw, &HashMap::new(), &mut problems).thresholds, vec![0.5, 1.0]);
        let raw: RawAlerts = serde_yaml_ng::from_str("thresholds: [0]").unwrap();
        parse_alerts(&raw, &HashMap::new(), &mut problems);
        assert_eq!(problems[0].0, "alerts.thresholds");
    }
}
