//! The proxy's side of the limits: the client address check before authentication, admission
//! after the request is parsed, the response headers, and settlement when the request ends.

use http::HeaderValue;
use pingora::proxy::Session;
use serde_json::Value;

use super::ctx::RequestCtx;
use super::Gateway;
use crate::accounting::UsageEvent;
use crate::config::{ModelPrice, RuntimeConfig};
use crate::error::GatewayError;
use crate::limits::headers::{rate_limit_headers, Headers, RETRY_AFTER};
use crate::limits::ip::client_ip;
use crate::limits::quota::Totals;
use crate::limits::reservation::{counted_usage, estimate};
use crate::limits::Requester;

impl Gateway {
    /// Finds the client's address and checks the limits by address; runs before authentication.
    pub(super) fn check_client_ip(&self, session: &Session, ctx: &mut RequestCtx, config: &RuntimeConfig) -> Result<(), GatewayError> {
        let settings = &config.limits.ip;
        let Some(peer) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) else { return Ok(()) };
        let forwarded_for = session.req_header().headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        let ip = client_ip(peer, forwarded_for, &settings.trusted_proxies);
        ctx.client_ip = Some(ip);
        self.limits.ip.check(ip, settings).map_err(|rejection| {
            ctx.retry_after_s = Some(rejection.retry_after_s);
            rejection.to_error()
        })
    }

    /// Counts a missing or invalid key against the client's address.
    pub(super) fn note_failed_auth(&self, ctx: &RequestCtx, config: &RuntimeConfig) {
        if let Some(ip) = ctx.client_ip {
            self.limits.ip.record_failed_auth(ip, &config.limits.ip);
        }
    }

    /// Checks the project's and key's limits for the parsed request and reserves its estimate.
    pub(super) fn admit_limits(&self, ctx: &mut RequestCtx, config: &RuntimeConfig, request: &Value, embeddings: bool, price: ModelPrice) -> Result<(), GatewayError> {
        let Some(key) = ctx.key.as_ref() else { return Ok(()) };
        let settings = &config.limits;
        let who = Requester { project_id: &key.project_id, project_name: &key.project_name, plan: &key.plan, key_id: &key.key_id };
        let limits = settings.resolve(who.project_id, who.project_name, who.plan).limits;
        // The tokenizer runs only when a limit counts tokens or cost.
        let needs_estimate = limits.monthly_tokens.is_some() || limits.monthly_cost_usd.is_some() || limits.tokens_per_minute.is_some();
        let estimate = if needs_estimate {
            estimate(request, embeddings, settings.default_max_tokens, Some(price))
        } else {
            Totals { requests: 1, tokens: 0, cost_usd: 0.0 }
        };
        let admission = self.limits.admit(settings, who, estimate);
        ctx.limit_headers = rate_limit_headers(&admission.figures);
        match admission.result {
            Ok(reservation) => {
                ctx.reservation = Some(reservation);
                Ok(())
            }
            Err(rejection) => {
                ctx.retry_after_s = Some(rejection.retry_after_s);
                Err(rejection.to_error())
            }
        }
    }

    /// Settles the request's reservation to what its usage event counts, and raises the alerts due.
    pub(super) fn settle_limits(&self, ctx: &mut RequestCtx, event: Option<&UsageEvent>) {
        let Some(mut reservation) = ctx.reservation.take() else { return };
        let actual = event.map(counted_usage).unwrap_or_default();
        let thresholds = ctx.config.as_ref().map(|c| c.alerts.thresholds.as_slice()).unwrap_or(&[]);
        let due = reservation.settle(actual, thresholds);
        if !due.is_empty() {
            self.alerts.raise(due);
        }
    }
}

/// Returns the limit headers of a response: the `x-ratelimit-*` figures and any `Retry-After`.
pub fn response_headers(ctx: &RequestCtx) -> Headers {
    let mut headers = ctx.limit_headers.clone();
    if let Some(seconds) = ctx.retry_after_s {
        headers.push((&RETRY_AFTER, HeaderValue::from(seconds)));
    }
    headers
}
