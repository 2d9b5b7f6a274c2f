//! A cache lookup before the upstream and the store after it, for the proxy hooks.

use std::time::Instant;

use http::HeaderMap;
use serde_json::Value;
use tracing::debug;

use super::entry::{content_from_json, content_from_stream, ResponseContent, CachedEntry, Rejection, TokenCounts};
use super::guard::{salient, Salient};
use super::key::request_keys;
use super::overrides::resolve;
use super::policy::{effective_threshold, request_directives, requested_choices};
use super::state::{CacheState, CacheStatus, HitRecord};
use super::store::SemanticOutcome;
use super::{CacheSettings, ResponseCache};
use crate::accounting::UsageEvent;

/// The request, as the lookup needs it.
pub struct LookupRequest<'a> {
    pub headers: &'a HeaderMap,
    pub project_id: &'a str,
    pub project_name: &'a str,
    /// Only chat completions are cached.
    pub chat: bool,
    /// The model name the client requested.
    pub model: &'a str,
    pub body: &'a Value,
    pub settings: &'a CacheSettings,
}

/// The finished exchange, as the store needs it.
pub struct StoreRequest<'a> {
    pub upstream_status: Option<u16>,
    /// Whether the proxy or the client connection failed.
    pub failed: bool,
    pub stream: bool,
    pub event: &'a UsageEvent,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl ResponseCache {
    /// Looks the request up and fills `state`. Returns the entry to serve on a hit.
    pub async fn lookup(&self, request: &LookupRequest<'_>, state: &mut CacheState) -> Option<CachedEntry> {
        if !request.chat {
            return None;
        }
        let overrides = self.overrides.load();
        let project = resolve(request.settings, overrides.get(request.project_id), request.project_name, request.project_id);
        if !project.enabled {
            return None;
        }
        state.project = Some(project);
        state.max_entry_bytes = request.settings.max_entry_bytes;

        let directives = request_directives(request.headers);
        let multiple = requested_choices(request.body) > 1 && !request.settings.cache_multiple_choices;
        state.store = directives.store && !multiple;
        if !directives.lookup || multiple {
            state.status = CacheStatus::Bypass;
            self.metrics.cache.lookups.with_label_values(&["bypass"]).inc();
            if state.store {
                state.keys = Some(request_keys(request.project_id, request.model, request.body));
            }
            return None;
        }

        let started = Instant::now();
        let keys = request_keys(request.project_id, request.model, request.body);
        let now = now_ms();
        let exact = self.store.exact(&keys.exact, keys.entry_id(), request.project_id, now).await;
        state.keys = Some(keys);
        if let Some(entry) = exact {
            return Some(self.record_hit(state, entry, None, started));
        }

        let semantic = state.keys.as_ref().and_then(|k| k.semantic.clone());
        if let (true, Some(pool), Some(semantic)) = (project.semantic, self.embed.as_ref(), semantic) {
            let embed_started = Instant::now();
            match pool.embed(semantic.text.clone()).await {
                Ok(vector) => {
                    self.metrics.cache.embedding_seconds.observe(embed_started.elapsed().as_secs_f64());
                    state.vector = Some(vector);
                }
                // The text is not logged; the error names only its length or the pool state.
                Err(e) => debug!(error = %e, "semantic lookup skipped"),
            }
            let found = salient(&semantic.text);
            if let Some(vector) = &state.vector {
                let threshold = effective_threshold(project.threshold, request.headers);
                let guard = request.settings.guard;
                match self.store.semantic(&semantic.context, vector, threshold, &found, guard, request.project_id, now).await {
                    SemanticOutcome::Hit(entry, similarity) => return Some(self.record_hit(state, *entry, Some(similarity), started)),
                    SemanticOutcome::Guarded(mismatch, _) => {
                        self.metrics.cache.guard_rejections.with_label_values(&[mismatch.name()]).inc();
                    }
                    SemanticOutcome::Miss => {}
                }
            }
            state.salient = Some(found);
        }

        state.status = CacheStatus::Miss;
        self.metrics.cache.lookups.with_label_values(&["miss"]).inc();
        self.metrics.cache.lookup_seconds.observe(started.elapsed().as_secs_f64());
        None
    }

    fn record_hit(&self, state: &mut CacheState, entry: CachedEntry, similarity: Option<f32>, started: Instant) -> CachedEntry {
        let status = if similarity.is_some() { CacheStatus::HitSemantic } else { CacheStatus::HitExact };
        state.status = status;
        state.store = false;
        state.hit = Some(HitRecord { tokens: entry.tokens, original_cost_usd: entry.cost_usd, similarity });
        self.metrics.cache.lookups.with_label_values(&[status.name()]).inc();
        self.metrics.cache.saved_usd.inc_by(entry.cost_usd.max(0.0));
        self.metrics.cache.lookup_seconds.observe(started.elapsed().as_secs_f64());
        entry
    }

    /// Stores the response of a finished request when it may be stored and is complete. Embedding,
    /// when the lookup did not already do it, runs in a spawned task.
    pub fn store_response(&self, state: &mut CacheState, request: &StoreRequest<'_>) {
        let (Some(keys), Some(project)) = (state.keys.take(), state.project) else { return };
        if !state.store || !matches!(state.status, CacheStatus::Miss | CacheStatus::Bypass) {
            return;
        }
        let outcome = |name: &str| self.metrics.cache.stores.with_label_values(&[name]).inc();
        if request.upstream_status != Some(200) {
            return outcome("skipped_status");
        }
        if request.failed || request.event.error_type.is_some() {
            return outcome("skipped_failed");
        }
        if state.capture_overflow {
            return outcome("skipped_too_large");
        }
        let captured = std::mem::take(&mut state.captured);
        let content = if request.stream { content_from_stream(&captured) } else { content_from_json(&captured) };
        let content = match content {
            Ok(content) => content,
            Err(rejection) => return outcome(rejection_name(rejection)),
        };

        let now = now_ms();
        let event = request.event;
        let tokens = TokenCounts {
            prompt: event.prompt_tokens,
            completion: event.completion_tokens,
            cached: event.cached_tokens,
            reasoning: event.reasoning_tokens,
            total: event.total_tokens,
            estimated: event.tokens_estimated,
        };
        let ttl_ms = i64::try_from(project.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut entry = build_entry(content, keys.exact, event, tokens, now, now.saturating_add(ttl_ms));
        let id = keys.entry_id();

        let semantic = keys.semantic.filter(|_| project.semantic);
        match (semantic, self.embed.clone(), state.vector.take()) {
            (Some(semantic), _, Some(vector)) => {
                entry.context = Some(semantic.context);
                entry.salient = Some(state.salient.take().unwrap_or_else(|| salient(&semantic.text)));
                self.store.insert(id, &entry, Some(&vector));
            }
            (Some(semantic), Some(pool), None) => {
                let store = self.store.clone();
                let entry_salient: Salient = salient(&semantic.text);
                tokio::spawn(async move {
                    match pool.embed(semantic.text).await {
                        Ok(vector) => {
                            entry.context = Some(semantic.context);
                            entry.salient = Some(entry_salient);
                            store.insert(id, &entry, Some(&vector));
                        }
                        Err(_) => store.insert(id, &entry, None),
                    }
                });
            }
            _ => self.store.insert(id, &entry, None),
        }
        outcome("stored");
    }
}

fn build_entry(content: ResponseContent, exact: [u8; 32], event: &UsageEvent, tokens: TokenCounts, now: i64, expires: i64) -> CachedEntry {
    CachedEntry {
        exact,
        project_id: event.project_id.clone(),
        context: None,
        salient: None,
        created_at_ms: now,
        expires_at_ms: expires,
        form: content.form,
        id: content.id,
        model: content.model,
        created: content.created,
        system_fingerprint: content.system_fingerprint,
        choices: content.choices,
        usage: content.usage,
        cost_usd: event.cost_usd,
        tokens,
        json_body: content.json_body,
    }
}

fn rejection_name(rejection: Rejection) -> &'static str {
    match rejection {
        Rejection::NotJson => "skipped_invalid",
        Rejection::ErrorBody => "skipped_error_body",
        Rejection::NoChoices => "skipped_no_choices",
        Rejection::Unfinished => "skipped_unfinished",
        Rejection::StreamNotDone => "skipped_unfinished",
    }
}
