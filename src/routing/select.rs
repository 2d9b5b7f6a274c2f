//! Upstream selection for one request: the experiment variant, the providers to try in order,
//! whose key to send, and when a failed attempt may go to the next provider.
//!
//! The proxy hooks call these functions; Pingora's retry loop re-enters `upstream_peer` when an
//! error is marked retryable, and [`next_peer`] then moves to the next candidate, or to another
//! address of the same one after a refused or timed-out connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use serde_json::Value;
use tracing::{error, warn};

use super::experiments::{Experiment, VARIANT_HEADER};
use super::health::{parse_retry_after, HealthRegistry, Observed};
use super::resolve::{is_address_failure, Resolver, MAX_ADDRESSES_TRIED};
use super::{build_peer, Endpoint};
use crate::config::runtime::SecretKey;
use crate::config::{ModelRoute, Provider, RuntimeConfig};
use crate::error::{ErrorSource as GatewayErrorSource, GatewayError};
use crate::keys::Vault;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::request::{prepare_parsed, prepare_request, PreparedRequest};

/// Response header naming whose provider key served the request: `byok` or `global`.
pub static KEY_SOURCE_HEADER: HeaderName = HeaderName::from_static("x-watchllm-key-source");

/// Shared routing state: provider health, the provider-key vault and provider addresses.
#[derive(Clone, Default)]
pub struct Routing {
    pub health: Arc<HealthRegistry>,
    pub vault: Vault,
    pub resolver: Resolver,
}

/// One provider a request may be sent to, with the model id that provider expects.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub provider: Arc<Provider>,
    pub upstream_model: String,
}

/// The routing decisions of one request, kept in its context across attempts.
#[derive(Debug)]
pub struct RoutePlan {
    /// Providers in the order they are tried.
    pub candidates: Vec<Candidate>,
    /// Index of the current candidate; meaningful once `started` is set.
    pub attempt: usize,
    pub started: bool,
    /// Connections tried to the current candidate, one per address.
    addresses_tried: usize,
    /// Set when the next attempt goes to another address of the current candidate.
    retry_address: bool,
    pub variant: Option<String>,
    /// `byok` or `global`, for the current attempt.
    pub key_source: &'static str,
    /// The project's own key for the current attempt's provider.
    pub provider_key: Option<SecretKey>,
    /// The request body after the variant's parameters, before the model id is set.
    base_body: Bytes,
    endpoint: Endpoint,
    /// Set when the current attempt's response status asked for a failover.
    failover_status: Option<u16>,
}

impl RoutePlan {
    fn has_next(&self) -> bool {
        self.attempt + 1 < self.candidates.len()
    }

    pub fn current_provider(&self) -> Option<&Arc<Provider>> {
        self.candidates.get(self.attempt).map(|c| &c.provider)
    }
}

/// Chooses the variant and the candidate providers, and prepares the body for the first one.
pub fn plan_request(
    routing: &Routing,
    config: &RuntimeConfig,
    endpoint: Endpoint,
    body: Bytes,
    parsed: Value,
    headers: &HeaderMap,
    key_id: &str,
) -> Result<(ModelRoute, PreparedRequest, RoutePlan), GatewayError> {
    let model = parsed["model"].as_str().unwrap_or_default().to_string();
    let model = model.as_str();
    let route = config.route(model).ok_or_else(|| GatewayError::model_not_found(model))?;
    let settings = &config.routing;

    // A variant with parameters rewrites the body, which is then parsed and validated again.
    // Otherwise the parsed body is reused.
    let (route, body, parsed, variant, fallback_model) = match settings.experiments.get(model) {
        Some(experiment) => {
            let (variant, body, parsed) = apply_experiment(experiment, body, parsed, headers, key_id)?;
            (variant.route.clone(), body, parsed, Some(variant.name.clone()), variant.model.clone())
        }
        None => (route.clone(), body, Some(parsed), None, model.to_string()),
    };

    let mut candidates = vec![Candidate { provider: route.provider.clone(), upstream_model: route.upstream_model.clone() }];
    for fallback in settings.fallbacks.get(&fallback_model).into_iter().flatten() {
        if !candidates.iter().any(|c| c.provider.name == fallback.provider.name) {
            candidates.push(Candidate { provider: fallback.provider.clone(), upstream_model: fallback.upstream_model.clone() });
        }
    }
    order_by_health(&mut candidates, &routing.health);
    candidates.truncate(settings.max_attempts);

    let first = &candidates[0];
    let prepared = match parsed {
        Some(parsed) => prepare_parsed(endpoint, body.clone(), parsed, Some(&first.upstream_model))?,
        None => prepare_request(endpoint, body.clone(), Some(&first.upstream_model))?,
    };
    let mut route = route;
    route.provider = first.provider.clone();
    route.upstream_model = first.upstream_model.clone();
    let plan = RoutePlan {
        candidates,
        attempt: 0,
        started: false,
        addresses_tried: 0,
        retry_address: false,
        variant,
        key_source: "global",
        provider_key: None,
        base_body: body,
        endpoint,
        failover_status: None,
    };
    Ok((route, prepared, plan))
}

/// Puts available providers first, keeping the configured order otherwise. When none is
/// available the order stays as configured, so the preferred provider is still tried.
pub fn order_by_health(candidates: &mut [Candidate], health: &HealthRegistry) {
    // A stable sort keeps the configured order within each group.
    candidates.sort_by_key(|c| !health.is_available(&c.provider.name));
}

/// Picks the variant (forced by header, or by the sticky hash) and applies its parameters. Returns
/// the body to send and, when no parameter changed it, the parsed `json` to reuse.
fn apply_experiment<'a>(
    experiment: &'a Experiment,
    body: Bytes,
    mut json: Value,
    headers: &HeaderMap,
    key_id: &str,
) -> Result<(&'a super::experiments::Variant, Bytes, Option<Value>), GatewayError> {
    let forced = headers.get(&VARIANT_HEADER).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    let variant = match forced {
        Some(name) => experiment.variant(name).ok_or_else(|| {
            let names: Vec<&str> = experiment.variants.iter().map(|v| v.name.as_str()).collect();
            GatewayError::invalid_request(format!(
                "Unknown variant {name:?} in the {VARIANT_HEADER} header; experiment {} has: {}.",
                experiment.name,
                names.join(", ")
            ))
        })?,
        None => experiment.assign(experiment.user_id(&json, headers, key_id)),
    };
    if variant.parameters.is_empty() {
        return Ok((variant, body, Some(json)));
    }
    if let Some(object) = json.as_object_mut() {
        for (name, value) in &variant.parameters {
            object.insert(name.clone(), value.clone());
        }
    }
    let rewritten = serde_json::to_vec(&json).map_err(|e| GatewayError::internal(e.to_string()))?;
    Ok((variant, Bytes::from(rewritten), None))
}

/// Builds the error for a project key that exists but cannot be used.
fn provider_key_error(provider: &str) -> GatewayError {
    GatewayError {
        status: http::StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        code: "provider_key_unavailable",
        message: format!("The project's own key for provider {provider} could not be decrypted. The gateway operator has the details in its log."),
        source: GatewayErrorSource::Gateway,
    }
}

/// Moves to the next candidate or to another address of the current one (on a retry), resolves
/// the key to send, and builds the peer.
pub async fn next_peer(routing: &Routing, ctx: &mut RequestCtx) -> pingora::Result<Box<HttpPeer>> {
    let Some(plan) = ctx.plan.as_mut() else {
        return Err(Error::explain(ErrorType::InternalError, "upstream_peer reached without a routing plan"));
    };
    if plan.started && !std::mem::take(&mut plan.retry_address) {
        plan.attempt += 1;
        plan.addresses_tried = 0;
    }
    plan.started = true;
    plan.addresses_tried += 1;
    plan.failover_status = None;
    let Some(candidate) = plan.candidates.get(plan.attempt).cloned() else {
        return Err(Error::explain(ErrorType::InternalError, "no provider left to try"));
    };

    // A previous attempt may have seen a response that was not forwarded.
    ctx.upstream_status = None;
    ctx.ttfb = None;
    ctx.sse = None;
    ctx.response_body.clear();
    ctx.response_body_overflow = false;

    if let Some(route) = ctx.route.as_mut() {
        if route.upstream_model != candidate.upstream_model {
            let prepared = prepare_request(plan.endpoint, plan.base_body.clone(), Some(&candidate.upstream_model))
                .map_err(|e| Error::explain(ErrorType::InternalError, e.message))?;
            ctx.request = Some(prepared);
        }
        route.provider = candidate.provider.clone();
        route.upstream_model = candidate.upstream_model.clone();
    }

    let project_id = ctx.key.as_ref().map(|k| k.project_id.as_str()).unwrap_or("");
    match routing.vault.resolve(project_id, &candidate.provider.name).await {
        Ok(Some(key)) => {
            plan.provider_key = Some(SecretKey(key.to_string()));
            plan.key_source = "byok";
        }
        Ok(None) => {
            plan.provider_key = None;
            plan.key_source = "global";
        }
        Err(e) => {
            error!(
                request_id = %ctx.id,
                project_id,
                provider = %candidate.provider.name,
                error = %e,
                "cannot use the project's own provider key; the request fails rather than falling back to the global key. \
                 Check the master secret, or set the key again with `watchllm provider-key set`"
            );
            ctx.error = Some(provider_key_error(&candidate.provider.name));
            return Err(Error::explain(ErrorType::InternalError, "the project's provider key could not be decrypted"));
        }
    }
    let address = match routing.resolver.address(&candidate.provider).await {
        Ok(address) => address,
        Err(e) => {
            let provider = &candidate.provider.name;
            warn!(request_id = %ctx.id, provider = %provider, host = %candidate.provider.host, error = %e, "failed to resolve the provider's address");
            if let Some(config) = ctx.config.as_ref() {
                routing.health.record_failure(provider, &config.routing.health, Observed::Request, "address lookup failed");
            }
            let has_next = ctx.plan.as_ref().is_some_and(RoutePlan::has_next);
            let mut error = Error::explain(ErrorType::ConnectNoRoute, format!("failed to resolve {}: {e}", candidate.provider.host));
            error.set_retry(has_next);
            return Err(error);
        }
    };
    Ok(Box::new(build_peer(&candidate.provider, address)))
}

/// Returns the key to send to the current provider: the project's own, else the global one.
pub fn upstream_key<'a>(ctx: &'a RequestCtx, provider: &'a Provider) -> Option<&'a SecretKey> {
    match ctx.plan.as_ref().and_then(|p| p.provider_key.as_ref()) {
        Some(key) => Some(key),
        None => provider.api_key.as_ref(),
    }
}

/// Checks an upstream response header: records health, cools a provider down on 429 with
/// `Retry-After`, requests a failover on a configured status when another provider is left,
/// and adds the routing headers.
pub fn on_response(routing: &Routing, config: &RuntimeConfig, upstream: &mut ResponseHeader, ctx: &mut RequestCtx) -> pingora::Result<()> {
    let Some(plan) = ctx.plan.as_mut() else { return Ok(()) };
    let Some(provider) = plan.current_provider().map(|p| p.name.clone()) else { return Ok(()) };
    let status = upstream.status.as_u16();
    let settings = &config.routing;

    if status >= 500 {
        routing.health.record_failure(&provider, &settings.health, Observed::Request, &format!("status {status}"));
    }
    if status == 429 {
        let retry_after = upstream.headers.get("retry-after").and_then(|v| v.to_str().ok());
        if let Some(duration) = retry_after.and_then(|v| parse_retry_after(v, settings.health.max_cooldown)) {
            routing.health.cool_down(&provider, duration);
        }
    }
    if settings.failover_statuses.contains(&status) && plan.has_next() {
        let next = &plan.candidates[plan.attempt + 1].provider.name;
        warn!(request_id = %ctx.id, provider = %provider, status, next = %next, "upstream responded with a failover status; trying the next provider");
        plan.failover_status = Some(status);
        let mut error = Error::explain(ErrorType::HTTPStatus(status), "failover status from the upstream");
        error.set_retry(true);
        return Err(error);
    }

    if let Some(variant) = &plan.variant {
        let value = HeaderValue::from_str(variant).map_err(|e| Error::because(ErrorType::InternalError, "invalid variant name for the x-watchllm-variant header", e))?;
        upstream.insert_static_header(&VARIANT_HEADER, value);
    }
    upstream.insert_static_header(&KEY_SOURCE_HEADER, HeaderValue::from_static(plan.key_source));
    Ok(())
}

/// Decides whether a failed connection to `address` may go to another address of the same
/// provider or to the next provider, and counts the failure. Nothing reached the provider, so it
/// cannot have acted on the request.
pub fn on_connect_failure(routing: &Routing, config: &RuntimeConfig, ctx: &mut RequestCtx, error: &mut Error, address: Option<SocketAddr>) {
    let Some(plan) = ctx.plan.as_mut() else { return };
    let Some(provider) = plan.candidates.get(plan.attempt).map(|c| c.provider.clone()) else { return };
    let usable = match address {
        Some(address) if is_address_failure(error.etype()) => routing.resolver.connect_failed(&provider, address),
        _ => 0,
    };
    let known = routing.resolver.address_count(&provider).min(MAX_ADDRESSES_TRIED);
    if usable > 0 && plan.addresses_tried < known {
        warn!(request_id = %ctx.id, provider = %provider.name, error = %error.etype().as_str(), "connection to a provider address failed, retrying at another address");
        plan.retry_address = true;
        error.set_retry(true);
        return;
    }
    routing.health.record_failure(&provider.name, &config.routing.health, Observed::Request, error.etype().as_str());
    if plan.has_next() {
        warn!(request_id = %ctx.id, provider = %provider.name, error = %error.etype().as_str(), "failed to connect to the upstream; trying the next provider");
        error.set_retry(true);
    } else {
        error.set_retry(false);
    }
}

/// Decides whether an error after the connection was made may go to the next provider.
///
/// Only when nothing reached the client and the provider cannot have acted on the request: the
/// attempt asked for a failover by status, or writing the request failed before the provider
/// responded. An upstream that may have read the whole body (a read error or timeout after the
/// write) is never retried.
pub fn may_retry(routing: &Routing, config: &RuntimeConfig, ctx: &mut RequestCtx, error: &Error, response_written: bool) -> bool {
    let upstream_answered = ctx.upstream_status.is_some();
    let Some(plan) = ctx.plan.as_mut() else { return false };
    let Some(provider) = plan.current_provider().map(|p| p.name.clone()) else { return false };
    let failover = plan.failover_status.take();
    if response_written || *error.esource() == ErrorSource::Downstream {
        return false;
    }
    if matches!(error.etype(), ErrorType::HTTPStatus(_)) {
        return failover.is_some() && plan.has_next();
    }
    let health = &config.routing.health;
    match error.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::WriteTimedout
        | ErrorType::WriteError
            if !upstream_answered =>
        {
            routing.health.record_failure(&provider, health, Observed::Request, error.etype().as_str());
            if plan.has_next() {
                warn!(request_id = %ctx.id, provider = %provider, error = %error.etype().as_str(), "sending the request failed; trying the next provider");
            }
            plan.has_next()
        }
        ErrorType::ReadTimedout | ErrorType::ReadError | ErrorType::ConnectionClosed | ErrorType::H1Error | ErrorType::InvalidHTTPHeader => {
            routing.health.record_failure(&provider, health, Observed::Request, error.etype().as_str());
            false
        }
        _ => false,
    }
}

/// Counts the outcome of a finished request for health: a response status below 500 is a
/// success, unless it is a stream whose first event was an error object.
pub fn on_finish(routing: &Routing, config: &RuntimeConfig, ctx: &RequestCtx) {
    let (Some(plan), Some(status)) = (ctx.plan.as_ref(), ctx.upstream_status) else { return };
    let Some(provider) = plan.current_provider() else { return };
    let health = &config.routing.health;
    if ctx.sse.as_ref().is_some_and(|s| s.error_event) {
        routing.health.record_failure(&provider.name, health, Observed::Request, "the stream's first event was an error object");
    } else if status < 500 && status != 429 {
        routing.health.record_success(&provider.name, health, Observed::Request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::settings::HealthOptions;
    use std::time::Duration;

    fn candidate(name: &str) -> Candidate {
        let experiment = crate::routing::experiments::tests::experiment(&[("a", 1.0)]);
        let mut provider = (*experiment.variants[0].route.provider).clone();
        provider.name = name.into();
        Candidate { provider: Arc::new(provider), upstream_model: "m".into() }
    }

    fn names(candidates: &[Candidate]) -> Vec<&str> {
        candidates.iter().map(|c| c.provider.name.as_str()).collect()
    }

    #[test]
    fn available_providers_first() {
        let health = HealthRegistry::default();
        let options = HealthOptions {
            enabled: true,
            path: "/models".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after: 1,
            healthy_after: 1,
            max_cooldown: Duration::from_secs(60),
        };
        let mut candidates = vec![candidate("a"), candidate("b"), candidate("c")];
        order_by_health(&mut candidates, &health);
        assert_eq!(names(&candidates), ["a", "b", "c"]);

        health.record_failure("a", &options, Observed::Probe, "down");
        health.cool_down("b", Duration::from_secs(30));
        order_by_health(&mut candidates, &health);
        assert_eq!(names(&candidates), ["c", "a", "b"]);
    }

    #[test]
    fn all_down_keeps_configured_order() {
        let health = HealthRegistry::default();
        for name in ["a", "b"] {
            health.cool_down(name, Duration::from_secs(30));
        }
        let mut candidates = vec![candidate("a"), candidate("b")];
        order_by_health(&mut candidates, &health);
        assert_eq!(names(&candidates), ["a", "b"]);
    }
}
