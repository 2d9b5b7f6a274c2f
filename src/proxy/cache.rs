//! The proxy's calls into the response cache: the lookup after admission, and the store after
//! the response. The cache logic itself is in `crate::cache`.

use pingora::proxy::Session;
use pingora::Result;
use tracing::debug;

use super::ctx::RequestCtx;
use super::Gateway;
use crate::accounting::outcome::CacheHit;
use crate::accounting::{Usage, UsageEvent};
use crate::cache::flow::{LookupRequest, StoreRequest};
use crate::cache::respond::send_hit;
use crate::routing::Endpoint;

impl Gateway {
    /// Looks the admitted request up in the response cache and serves a hit. `Ok(true)` means the
    /// response was sent.
    pub(super) async fn serve_from_cache(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let (Some(cache), Some(config), Some(key), Some(request)) = (self.cache.as_ref(), ctx.config.clone(), ctx.key.as_ref(), ctx.request.as_ref())
        else {
            return Ok(false);
        };
        let lookup = LookupRequest {
            headers: &session.req_header().headers,
            project_id: &key.project_id,
            project_name: &key.project_name,
            chat: ctx.endpoint == Some(Endpoint::ChatCompletions),
            model: &request.model,
            body: &request.json,
            settings: &config.cache,
        };
        let Some(entry) = cache.lookup(&lookup, &mut ctx.cache).await else { return Ok(false) };
        let (stream, include_usage) = (request.stream, request.client_wants_usage);
        send_hit(session, &ctx.id, &entry, &ctx.cache, stream, include_usage, &ctx.limit_headers).await?;
        Ok(true)
    }

    /// Stores the response of a finished request when the cache may keep it.
    pub(super) fn store_in_cache(&self, ctx: &mut RequestCtx, failed: bool, event: Option<&UsageEvent>) {
        let (Some(cache), Some(event)) = (self.cache.as_ref(), event) else { return };
        let request = StoreRequest {
            upstream_status: ctx.upstream_status,
            failed,
            stream: ctx.request.as_ref().is_some_and(|r| r.stream),
            event,
        };
        cache.store_response(&mut ctx.cache, &request);
        debug!(request_id = %ctx.id, status = ctx.cache.status.name(), "cache updated");
    }
}

/// Returns the cache status and hit of a request for its usage event.
pub(super) fn cache_outcome(ctx: &RequestCtx) -> (Option<&'static str>, Option<CacheHit>) {
    let state = &ctx.cache;
    let hit = state.hit.map(|hit| CacheHit {
        usage: Usage {
            prompt_tokens: hit.tokens.prompt,
            completion_tokens: hit.tokens.completion,
            cached_tokens: hit.tokens.cached,
            reasoning_tokens: hit.tokens.reasoning,
            total_tokens: hit.tokens.total,
        },
        estimated: hit.tokens.estimated,
        original_cost_usd: hit.original_cost_usd,
        // Four decimals, as in the response header, rather than the f32's binary expansion.
        similarity: hit.similarity.map(|s| (f64::from(s) * 10_000.0).round() / 10_000.0),
    });
    (Some(state.status.name()), hit)
}
