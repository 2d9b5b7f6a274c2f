//! Webhook delivery: a JSON POST signed with HMAC-SHA256.
//!
//! The receiver verifies `X-WatchLLM-Signature: sha256=HEX`, where HEX is the lowercase hex
//! HMAC-SHA256 of the raw request body under the shared secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::settings::WebhookSettings;

pub const SIGNATURE_HEADER: &str = "x-watchllm-signature";

/// Returns `sha256=HEX`, the signature header value of `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts a key of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The result of one attempt: the status the receiver sent, or why none came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptResult {
    pub ok: bool,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// Sends one attempt. Any 2xx status is a delivery.
pub async fn post_once(client: &reqwest::Client, settings: &WebhookSettings, body: &[u8]) -> AttemptResult {
    let response = client
        .post(&settings.url)
        .timeout(settings.retry.timeout)
        .header("content-type", "application/json")
        .header("user-agent", concat!("watchllm/", env!("CARGO_PKG_VERSION")))
        .header(SIGNATURE_HEADER, sign(settings.secret.0.as_bytes(), body))
        .body(body.to_vec())
        .send()
        .await;
    match response {
        Ok(response) => {
            let status = response.status();
            AttemptResult {
                ok: status.is_success(),
                status_code: Some(i32::from(status.as_u16())),
                error: (!status.is_success()).then(|| format!("receiver answered with status {}", status.as_u16())),
            }
        }
        Err(error) => AttemptResult { ok: false, status_code: None, error: Some(error.without_url().to_string()) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_reference() {
        // RFC 4231 test case 2.
        let signature = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(signature, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
