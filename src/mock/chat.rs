//! `POST /v1/chat/completions` and the legacy `POST /v1/completions`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::content::{self, Reply, Usage};
use super::controls::Controls;
use super::errors::MockError;
use super::request::{self, MockState};
use super::sse::{self, StreamKind, StreamPlan};

pub(crate) const CHAT_PATH: &str = "/v1/chat/completions";
pub(crate) const COMPLETIONS_PATH: &str = "/v1/completions";

/// Handles `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, MockError> {
    let controls = state.begin(CHAT_PATH, &headers, &body).await?;
    let request = request::parse_object(&body)?;

    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            MockError::invalid_request("Missing `messages` array in the request body.")
        })?;
    let choices = request::choice_count(&request)?;
    let max_words = request::max_words(&request, &["max_completion_tokens", "max_tokens"])?;

    let reply = content::chat_reply(messages, max_words);
    let replies = vec![reply; choices as usize];
    let prompt_tokens = content::chat_prompt_tokens(messages);
    tracing::debug!(
        path = CHAT_PATH,
        prompt_tokens,
        choices,
        "mock upstream chat request"
    );

    let generated = Generated {
        kind: StreamKind::Chat,
        id: content::response_id("chatcmpl-"),
        model: request::model_name(&request),
        usage: usage_for(&replies, prompt_tokens, &controls),
        replies,
    };
    Ok(respond(generated, &request, &controls))
}

/// Handles `POST /v1/completions`. Each prompt gets `n` choices, indexed prompt by prompt as
/// OpenAI does.
pub(crate) async fn completions(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, MockError> {
    let controls = state.begin(COMPLETIONS_PATH, &headers, &body).await?;
    let request = request::parse_object(&body)?;

    let prompts = content::parse_text_inputs(request.get("prompt"), "prompt")
        .map_err(MockError::invalid_request)?;
    let choices = request::choice_count(&request)?;
    let max_words = request::max_words(&request, &["max_tokens"])?;

    let mut replies = Vec::new();
    for prompt in &prompts {
        let reply = content::completion_reply(prompt, max_words);
        replies.extend(std::iter::repeat_n(reply, choices as usize));
    }
    let prompt_tokens = prompts.iter().map(|prompt| prompt.tokens).sum();
    tracing::debug!(
        path = COMPLETIONS_PATH,
        prompt_tokens,
        prompts = prompts.len(),
        choices,
        "mock upstream completion request"
    );

    let generated = Generated {
        kind: StreamKind::Completion,
        id: content::response_id("cmpl-"),
        model: request::model_name(&request),
        usage: usage_for(&replies, prompt_tokens, &controls),
        replies,
    };
    Ok(respond(generated, &request, &controls))
}

/// A generated completion, before it becomes a JSON body or a stream.
struct Generated {
    kind: StreamKind,
    id: String,
    model: String,
    replies: Vec<Reply>,
    /// `None` when `x-mock-no-usage` is on.
    usage: Option<Usage>,
}

fn usage_for(replies: &[Reply], prompt_tokens: u64, controls: &Controls) -> Option<Usage> {
    if controls.no_usage {
        return None;
    }
    Some(Usage {
        prompt_tokens,
        completion_tokens: replies.iter().map(|reply| reply.words).sum(),
        // NOTE: the header value is reported as given, even when it exceeds prompt_tokens.
        cached_tokens: controls.cached_tokens,
    })
}

/// Sends `generated` as a JSON body or, for `"stream": true`, as server-sent events.
fn respond(generated: Generated, request: &Map<String, Value>, controls: &Controls) -> Response {
    let stream = request::wants_stream(request);
    if controls.error_in_200 {
        let error = MockError::in_success_response();
        if stream {
            return sse::error_stream_response(&error);
        }
        return (StatusCode::OK, Json(error.body())).into_response();
    }

    let created = content::unix_seconds();
    if stream {
        let usage = generated
            .usage
            .filter(|_| request::wants_stream_usage(request));
        let plan = StreamPlan {
            kind: generated.kind,
            id: generated.id,
            created,
            model: generated.model,
            replies: generated.replies,
            usage,
        };
        return sse::event_stream_response(plan.events(controls), controls.chunk_delay);
    }

    Json(completion_body(generated, created)).into_response()
}

fn completion_body(generated: Generated, created: u64) -> Value {
    let choices: Vec<Value> = generated
        .replies
        .iter()
        .enumerate()
        .map(|(index, reply)| match generated.kind {
            StreamKind::Chat => json!({
                "index": index,
                "message": { "role": "assistant", "content": reply.text, "refusal": null },
                "logprobs": null,
                "finish_reason": reply.finish_reason,
            }),
            StreamKind::Completion => json!({
                "text": reply.text,
                "index": index,
                "logprobs": null,
                "finish_reason": reply.finish_reason,
            }),
        })
        .collect();

    let mut body = match generated.kind {
        StreamKind::Chat => json!({
            "id": generated.id,
            "object": "chat.completion",
            "created": created,
            "model": generated.model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        }),
        StreamKind::Completion => json!({
            "id": generated.id,
            "object": "text_completion",
            "created": created,
            "model": generated.model,
            "choices": choices,
        }),
    };
    if let Some(usage) = generated.usage {
        body["usage"] = usage.to_json();
    }
    body
}
