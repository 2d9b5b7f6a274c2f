//! The `ProxyHttp` hooks, in the order Pingora calls them.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::upstreams::peer::Peer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use tracing::{debug, info, warn};

use super::body::{check_declared_length, decode_body, parse_content_encoding};
use super::ctx::{InFlight, RequestCtx};
use super::respond::{request_id_value, send_error_with_headers, send_json, REQUEST_ID_HEADER};
use super::Gateway;
use crate::accounting::outcome::{usage_event, RequestOutcome};
use crate::accounting::{ResponseSummary, SseScanner};
use crate::auth::extract_api_key;
use crate::error::GatewayError;
use crate::metrics::RequestLabels;
use crate::routing::{classify, upstream_host, upstream_path, Endpoint};

/// Hop-by-hop and client-credential headers that never go upstream.
static STRIPPED_REQUEST_HEADERS: [HeaderName; 10] = [
    header::AUTHORIZATION,
    header::EXPECT,
    HeaderName::from_static("x-api-key"),
    header::CONTENT_ENCODING,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::UPGRADE,
];

// The headers the gateway sets on the way up and down, as statics that Pingora's maps take
// without parsing or copying the name.
static HOST: HeaderName = header::HOST;
static CONTENT_TYPE: HeaderName = header::CONTENT_TYPE;
static CONTENT_LENGTH: HeaderName = header::CONTENT_LENGTH;
static ACCEPT_ENCODING: HeaderName = header::ACCEPT_ENCODING;
static AUTHORIZATION: HeaderName = header::AUTHORIZATION;
static TRANSFER_ENCODING: HeaderName = header::TRANSFER_ENCODING;

impl Gateway {
    /// Runs the admission steps of `request_filter`. `Ok(true)` means the response was already sent.
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool, GatewayError> {
        let Some(config) = ctx.config.clone() else {
            return Err(GatewayError::internal("no config loaded"));
        };
        // Limits by client address come first, in front of authentication.
        self.check_client_ip(session, ctx, &config)?;

        // Which endpoint, before anything is read.
        let header = session.req_header();
        let endpoint = classify(&header.method, header.uri.path())?;
        ctx.endpoint = Some(endpoint);

        // Authentication against the in-memory key snapshot.
        let snapshot = self.keys.load();
        let authenticated = match extract_api_key(&header.headers) {
            None => Err(GatewayError::missing_key()),
            Some(presented) => snapshot.authenticate(presented).ok_or_else(GatewayError::invalid_key),
        };
        let entry = authenticated.inspect_err(|_| self.note_failed_auth(ctx, &config))?;
        ctx.key = Some(entry.clone());

        if endpoint == Endpoint::Models {
            let body = models_body(&config.model_names, ctx.started_at_ms / 1000);
            send_json(session, 200, &ctx.id, body).await.map_err(|e| GatewayError::internal(e.to_string()))?;
            return Ok(true);
        }

        // The whole body, within the limit, decoded.
        let limit = config.max_request_body_bytes;
        let header = session.req_header();
        let encoding = parse_content_encoding(header.headers.get("content-encoding").and_then(|v| v.to_str().ok()))?;
        check_declared_length(header.headers.get("content-length").and_then(|v| v.to_str().ok()), limit)?;
        let expects_continue = header
            .headers
            .get("expect")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects_continue {
            // The client waits for this before sending its body (curl does for large bodies).
            session.write_continue_response().await.map_err(|e| GatewayError::internal(e.to_string()))?;
        }
        let raw = read_body(session, limit).await?;
        let body = decode_body(raw, encoding, limit)?;

        // Validation and the route for the requested model.
        let parsed = super::request::parse_request(endpoint, &body)?;
        // The experiment variant and the providers to try; the body is prepared for the first one.
        let key_id = ctx.key.as_ref().map(|k| k.key_id.as_str()).unwrap_or_default();
        let headers = &session.req_header().headers;
        let (route, prepared, plan) = crate::routing::select::plan_request(&self.routing, &config, endpoint, body, parsed, headers, key_id)?;
        // Quotas and rate limits, before any upstream work.
        self.admit_limits(ctx, &config, &prepared.json, endpoint == Endpoint::Embeddings, route.price)?;
        ctx.route = Some(route);
        ctx.request = Some(prepared);
        ctx.plan = Some(plan);
        Ok(false)
    }

    fn finish_event(&self, session: &Session, error: Option<&Error>, ctx: &RequestCtx) -> Option<crate::accounting::UsageEvent> {
        let key = ctx.key.as_ref()?;
        let status = session
            .response_written()
            .map(|h| h.status.as_u16())
            .or(ctx.failure_status)
            .or(ctx.error.as_ref().map(|e| e.status.as_u16()))
            .unwrap_or(0);

        // A JSON body is parsed once, for its usage, an error field and, without usage, its text.
        let summary = match &ctx.sse {
            None if !ctx.response_body_overflow => ResponseSummary::read(&ctx.response_body),
            _ => ResponseSummary::default(),
        };
        let reported = match &ctx.sse {
            Some(scanner) => scanner.usage,
            None => summary.usage,
        };
        // The text only feeds the estimate for a response without usage.
        let completion_text = match (&ctx.sse, reported) {
            (Some(scanner), None) => scanner.text.as_str(),
            _ => summary.text.as_str(),
        };
        let error_type = error_type(ctx, error, status, summary.is_error);
        let route = ctx.route.as_ref();
        let (cache_status, cache_hit) = super::cache::cache_outcome(ctx);

        let outcome = RequestOutcome {
            id: &ctx.id,
            created_at_ms: ctx.started_at_ms,
            project_id: &key.project_id,
            key_id: &key.key_id,
            endpoint: ctx.endpoint.map(Endpoint::name).unwrap_or(""),
            model: ctx.request.as_ref().map(|r| r.model.as_str()).unwrap_or(""),
            provider: route.map(|r| r.provider.name.as_str()).unwrap_or(""),
            upstream_model: route.map(|r| r.upstream_model.as_str()).unwrap_or(""),
            status,
            stream: ctx.request.as_ref().is_some_and(|r| r.stream),
            reported,
            request: ctx.request.as_ref().map(|r| &r.json),
            completion_text,
            reached_upstream: ctx.upstream_status.is_some(),
            upstream_error: ctx.upstream_status.is_some_and(|s| s >= 400)
                || ctx.sse.as_ref().is_some_and(|s| s.error_event)
                || (ctx.sse.is_none() && reported.is_none() && summary.is_error),
            price: route.map(|r| r.price),
            latency_ms: ctx.started.elapsed().as_millis() as i64,
            ttfb_ms: ctx.ttfb.map(|t| t.as_millis() as i64),
            error_type,
            cache_status,
            cache_hit,
        };
        let mut event = usage_event(&outcome);
        if let Some(plan) = &ctx.plan {
            event.key_source = plan.key_source.to_string();
            event.variant = plan.variant.clone();
        }
        Some(event)
    }
}

/// Reads the request body, stopping with 413 as soon as it passes `limit`.
async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, GatewayError> {
    let mut buffer = BytesMut::new();
    loop {
        let chunk = session
            .read_request_body()
            .await
            .map_err(|e| GatewayError::invalid_request(format!("Failed to read the request body: {e}")))?;
        let Some(chunk) = chunk else { break };
        if buffer.len() + chunk.len() > limit {
            return Err(GatewayError::body_too_large(limit));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// Renders `GET /v1/models` for the configured model names.
fn models_body(names: &[String], created: i64) -> Vec<u8> {
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|name| serde_json::json!({"id": name, "object": "model", "created": created, "owned_by": "watchllm"}))
        .collect();
    serde_json::json!({"object": "list", "data": data}).to_string().into_bytes()
}

/// Names what went wrong, for the usage event, or returns `None` for a complete success.
/// `body_is_error` is true when a non-streamed JSON body carried an `error` field.
fn error_type(ctx: &RequestCtx, error: Option<&Error>, status: u16, body_is_error: bool) -> Option<String> {
    if let Some(gateway_error) = &ctx.error {
        return Some(gateway_error.code.to_string());
    }
    if let Some(error) = error {
        let kind = match (error.esource(), error.etype()) {
            (ErrorSource::Downstream, _) => "client_disconnected",
            (_, ErrorType::ConnectTimedout | ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError) => {
                "upstream_connect_failed"
            }
            (_, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => "upstream_timeout",
            (ErrorSource::Upstream, _) => "upstream_failed",
            _ => "internal_error",
        };
        return Some(kind.to_string());
    }
    if status < 400 && ctx.sse.is_none() && body_is_error {
        return Some("upstream_error_body".into());
    }
    if let Some(scanner) = &ctx.sse {
        if scanner.error_event {
            return Some("upstream_error_event".into());
        }
        if status == 200 && !scanner.done && scanner.finish_reason.is_none() {
            return Some("upstream_incomplete".into());
        }
    }
    (status >= 400).then(|| format!("upstream_status_{status}"))
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        crate::server::scheduling::request_short_slice_once();
        RequestCtx::new(InFlight::enter(&self.in_flight))
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.config = Some(self.config.load_full());
        match self.admit(session, ctx).await {
            Ok(true) => Ok(true),
            // Admission (authentication, the body, the limits) is complete: the response cache may serve a hit.
            Ok(false) => self.serve_from_cache(session, ctx).await,
            Err(error) => {
                // The body may be unread, so the connection cannot carry another request.
                session.set_keepalive(None);
                send_error_with_headers(session, &ctx.id, &error, &super::limits::response_headers(ctx)).await?;
                ctx.error = Some(error);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // Called again for each retry, which moves on to the next candidate provider.
        crate::routing::select::next_peer(&self.routing, ctx).await
    }

    fn fail_to_connect(&self, _session: &mut Session, peer: &HttpPeer, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
        if let Some(config) = ctx.config.clone() {
            let address = peer.address().as_inet().copied();
            crate::routing::select::on_connect_failure(&self.routing, &config, ctx, &mut e, address);
        }
        e
    }

    fn error_while_proxy(&self, peer: &HttpPeer, session: &mut Session, e: Box<Error>, ctx: &mut RequestCtx, _client_reused: bool) -> Box<Error> {
        // Replaces Pingora's policy, which never retries a POST: a retry goes to the next provider,
        // and only when the failed one cannot have acted on the request.
        let mut e = e.more_context(format!("Peer: {peer}"));
        let retry = match ctx.config.clone() {
            Some(config) => crate::routing::select::may_retry(&self.routing, &config, ctx, &e, session.response_written().is_some()),
            None => false,
        };
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(&self, _session: &mut Session, upstream: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
        let (Some(route), Some(endpoint), Some(request)) = (ctx.route.as_ref(), ctx.endpoint, ctx.request.as_ref()) else {
            return Err(Error::explain(ErrorType::InternalError, "upstream request without a route"));
        };
        let provider = &route.provider;

        for name in &STRIPPED_REQUEST_HEADERS {
            upstream.remove_header(name);
        }
        let path = upstream_path(provider, endpoint);
        let uri = path.parse().map_err(|e| Error::because(ErrorType::InternalError, "invalid upstream path", e))?;
        upstream.set_uri(uri);
        let host = HeaderValue::try_from(upstream_host(provider)).map_err(|e| Error::because(ErrorType::InternalError, "invalid provider host for the Host header", e))?;
        upstream.insert_static_header(&HOST, host);
        upstream.insert_static_header(&CONTENT_TYPE, HeaderValue::from_static("application/json"));
        upstream.insert_static_header(&CONTENT_LENGTH, HeaderValue::from(request.body.len()));
        // The scanner reads the response as it passes, so it must arrive uncompressed.
        upstream.insert_static_header(&ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        // The project's own key for this provider when it stored one, else the gateway's.
        if let Some(key) = crate::routing::select::upstream_key(ctx, provider) {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.0)).map_err(|e| Error::because(ErrorType::InternalError, "invalid provider key for the Authorization header", e))?;
            value.set_sensitive(true);
            upstream.insert_static_header(&AUTHORIZATION, value);
        }
        Ok(())
    }

    async fn request_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<()> {
        // request_filter consumed the client's body; the prepared body replaces it, on every attempt.
        *body = if end_of_stream { ctx.request.as_ref().map(|r| r.body.clone()) } else { None };
        Ok(())
    }

    async fn upstream_response_filter(&self, _session: &mut Session, upstream: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        // Without the provider's header case, every header below goes into one map instead of
        // two. Standard names still go out titled, the others in lower case.
        upstream.forget_header_case();
        // The headers added below, at most: routing 2, request id 1, cache 2, transfer-encoding 1.
        upstream.reserve_headers(6 + ctx.limit_headers.len());
        // Health, cool-downs, failover on a configured status, and the routing headers.
        if let Some(config) = ctx.config.clone() {
            crate::routing::select::on_response(&self.routing, &config, upstream, ctx)?;
        }
        ctx.upstream_status = Some(upstream.status.as_u16());
        ctx.ttfb.get_or_insert_with(|| ctx.started.elapsed());

        let is_sse = upstream
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            let strip_usage = ctx.request.as_ref().is_some_and(|r| r.stream && !r.client_wants_usage);
            if strip_usage && upstream.headers.contains_key(&CONTENT_LENGTH) {
                // Removing the usage chunk changes the length, so the body goes out chunked.
                upstream.remove_header(&CONTENT_LENGTH);
                upstream.insert_static_header(&TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            }
            ctx.sse = Some(SseScanner::new(strip_usage));
        }
        upstream.insert_static_header(&REQUEST_ID_HEADER, request_id_value(&ctx.id)?);
        crate::cache::respond::annotate(upstream, &ctx.cache);
        // Moved rather than copied: past this point only this response carries them.
        for (name, value) in std::mem::take(&mut ctx.limit_headers) {
            upstream.insert_static_header(name, value);
        }
        Ok(())
    }

    fn response_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) -> Result<Option<Duration>> {
        if let Some(piece) = body.as_ref() {
            ctx.cache.capture(piece);
        }
        match ctx.sse.as_mut() {
            Some(scanner) => {
                let piece = body.take().unwrap_or_default();
                let output = scanner.feed(&piece, end_of_stream);
                // An empty chunk would end a chunked body early, so nothing is sent instead.
                *body = (!output.is_empty()).then_some(output);
            }
            None => {
                if let Some(piece) = body.as_ref() {
                    let piece = piece.clone();
                    ctx.capture_response(&piece);
                }
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, error: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let provider = ctx.route.as_ref().map(|r| r.provider.name.clone()).unwrap_or_default();
        // Routing may have set the error already, such as a provider key that failed to decrypt.
        let routing_error = ctx.error.take();
        let gateway_error = match (error.esource(), error.etype()) {
            _ if routing_error.is_some() => routing_error,
            (ErrorSource::Downstream, _) => None,
            (_, ErrorType::HTTPStatus(code)) => Some(GatewayError::internal(format!("request failed with status {code}"))),
            (_, ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout)
                if ctx.upstream_status.is_none() =>
            {
                Some(GatewayError::upstream_timeout(&provider))
            }
            (
                _,
                ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::TLSHandshakeFailure
                | ErrorType::InvalidCert
                | ErrorType::HandshakeError,
            ) => Some(GatewayError::upstream_unreachable(&provider)),
            (ErrorSource::Upstream, _) => Some(GatewayError::upstream_failed(&provider)),
            _ => Some(GatewayError::internal("the gateway failed to proxy the request")),
        };

        // Once response headers went out, no error body can follow; the connection just ends.
        let Some(gateway_error) = gateway_error.filter(|_| session.response_written().is_none()) else {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        };
        warn!(request_id = %ctx.id, provider = %provider, error = %error, status = gateway_error.status.as_u16(), "proxy failed");
        if let Err(write_error) = send_error_with_headers(session, &ctx.id, &gateway_error, &ctx.limit_headers).await {
            debug!(request_id = %ctx.id, error = %write_error, "failed to send the error response");
        }
        let status = gateway_error.status.as_u16();
        ctx.failure_status = Some(status);
        ctx.error = Some(gateway_error);
        FailToProxy { error_code: status, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(config) = ctx.config.clone() {
            crate::routing::select::on_finish(&self.routing, &config, ctx);
        }
        let event = self.finish_event(session, error, ctx);
        self.settle_limits(ctx, event.as_ref());
        self.store_in_cache(ctx, error.is_some(), event.as_ref());
        let status = event.as_ref().map(|e| e.status).or_else(|| session.response_written().map(|h| h.status.as_u16()));
        match &event {
            Some(event) => info!(
                request_id = %ctx.id,
                project_id = %event.project_id,
                model = %event.model,
                status = event.status,
                prompt_tokens = event.prompt_tokens,
                completion_tokens = event.completion_tokens,
                estimated = event.tokens_estimated,
                cost_usd = event.cost_usd,
                latency_ms = event.latency_ms,
                error = event.error_type.as_deref().unwrap_or(""),
                "request finished"
            ),
            None => info!(
                request_id = %ctx.id,
                status = status.unwrap_or(0),
                latency_ms = ctx.started.elapsed().as_millis() as u64,
                error = ctx.error.as_ref().map(|e| e.code).unwrap_or(""),
                "request finished"
            ),
        }
        let labels = RequestLabels {
            endpoint: ctx.endpoint.map(Endpoint::name).unwrap_or("unknown"),
            model: ctx.route.as_ref().map(|r| r.name.as_str()).unwrap_or(""),
            provider: ctx.route.as_ref().map(|r| r.provider.name.as_str()).unwrap_or(""),
            status: status.unwrap_or(0),
            project: ctx.key.as_ref().map(|k| k.project_id.as_str()).unwrap_or(""),
        };
        self.metrics.observe_request(&labels, ctx.started.elapsed().as_secs_f64(), event.as_ref());
        if let Some(event) = event {
            self.usage.record(event);
        }
    }
}
