//! Email delivery through SMTP with lettre.

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::settings::{EmailSettings, SmtpSecurity};
use super::webhook::AttemptResult;

/// Builds the transport for the configured server.
fn transport(settings: &EmailSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let builder = match settings.security {
        SmtpSecurity::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host).map_err(|e| e.to_string())?,
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host).map_err(|e| e.to_string())?,
        SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host),
    };
    let mut builder = builder.port(settings.port).timeout(Some(settings.retry.timeout));
    if let Some((user, password)) = &settings.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.0.clone()));
    }
    Ok(builder.build())
}

/// Builds the message to every configured recipient.
pub fn message(settings: &EmailSettings, subject: &str, text: &str) -> Result<Message, String> {
    let from: Mailbox = settings.from.parse().map_err(|e| format!("invalid sender address: {e}"))?;
    let mut builder = Message::builder().from(from).subject(subject).header(ContentType::TEXT_PLAIN);
    for to in &settings.to {
        builder = builder.to(to.parse().map_err(|e| format!("invalid recipient address {to:?}: {e}"))?);
    }
    builder.body(text.to_string()).map_err(|e| e.to_string())
}

/// Sends one attempt.
pub async fn send_once(settings: &EmailSettings, subject: &str, text: &str) -> AttemptResult {
    let sent = async {
        let message = message(settings, subject, text)?;
        let transport = transport(settings)?;
        transport.send(message).await.map_err(|e| e.to_string())
    }
    .await;
    match sent {
        Ok(response) => AttemptResult { ok: response.is_positive(), status_code: Some(i32::from(u16::from(response.code()))), error: None },
        Err(error) => AttemptResult { ok: false, status_code: None, error: Some(error) },
    }
}
