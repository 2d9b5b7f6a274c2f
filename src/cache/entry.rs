//! A cached response and how it is built from an upstream response, JSON or streamed.
//!
//! A response is stored as its choices (role, content, tool calls, finish reason) with the response
//! id, model, creation time and usage, so that either form can be replayed from it. A JSON response
//! also keeps its original body, which a later JSON request gets byte for byte.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The form in which the upstream sent the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Form {
    Json,
    Stream,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedChoice {
    pub index: u64,
    pub role: String,
    pub content: Option<String>,
    /// The assembled `tool_calls` array, if the response called tools.
    pub tool_calls: Option<Value>,
    pub finish_reason: String,
}

/// One cached response with what is needed to check, replay and account for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedEntry {
    /// The whole exact key, so that a collision of the 64-bit entry id is detected.
    pub exact: [u8; 32],
    pub project_id: String,
    /// Context key of the semantic namespace, when the entry is in the vector index.
    pub context: Option<[u8; 32]>,
    /// Salient tokens of the prompt's last user message, for the guard of a semantic hit.
    pub salient: Option<super::guard::Salient>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub form: Form,
    pub id: String,
    pub model: String,
    pub created: i64,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<CachedChoice>,
    /// The upstream's `usage` object, replayed as it was.
    pub usage: Option<Value>,
    /// Cost that the upstream charged for this response, in US dollars.
    pub cost_usd: f64,
    /// Tokens accounted for the original response, which a hit reports again.
    pub tokens: TokenCounts,
    /// The original body of a JSON response.
    pub json_body: Option<String>,
}

/// Token counts of the original response, as its usage event recorded them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    pub prompt: i64,
    pub completion: i64,
    pub cached: i64,
    pub reasoning: i64,
    pub total: i64,
    pub estimated: bool,
}

/// The content of an entry taken from the response, before the keys and times are added.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponseContent {
    pub form: Form,
    pub id: String,
    pub model: String,
    pub created: i64,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<CachedChoice>,
    pub usage: Option<Value>,
    pub json_body: Option<String>,
}

/// Reason for not storing a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    NotJson,
    ErrorBody,
    NoChoices,
    /// A choice without a finish reason: the response was cut off.
    Unfinished,
    /// A stream that did not end with `data: [DONE]`.
    StreamNotDone,
}

/// Extracts the content to cache from a complete non-streamed response body with status 200.
pub fn content_from_json(body: &[u8]) -> Result<ResponseContent, Rejection> {
    let value: Value = serde_json::from_slice(body).map_err(|_| Rejection::NotJson)?;
    if value.get("error").is_some_and(|e| !e.is_null()) {
        return Err(Rejection::ErrorBody);
    }
    let raw_choices = value.get("choices").and_then(Value::as_array).ok_or(Rejection::NoChoices)?;
    let mut choices = Vec::with_capacity(raw_choices.len());
    for (position, choice) in raw_choices.iter().enumerate() {
        let finish_reason = choice.get("finish_reason").and_then(Value::as_str).ok_or(Rejection::Unfinished)?;
        let message = choice.get("message").ok_or(Rejection::NoChoices)?;
        choices.push(CachedChoice {
            index: choice.get("index").and_then(Value::as_u64).unwrap_or(position as u64),
            role: message.get("role").and_then(Value::as_str).unwrap_or("assistant").to_string(),
            content: message.get("content").and_then(Value::as_str).map(str::to_string),
            tool_calls: message.get("tool_calls").filter(|t| !t.is_null()).cloned(),
            finish_reason: finish_reason.to_string(),
        });
    }
    if choices.is_empty() {
        return Err(Rejection::NoChoices);
    }
    Ok(ResponseContent {
        form: Form::Json,
        id: string_field(&value, "id"),
        model: string_field(&value, "model"),
        created: value.get("created").and_then(Value::as_i64).unwrap_or(0),
        system_fingerprint: value.get("system_fingerprint").and_then(Value::as_str).map(str::to_string),
        choices,
        usage: value.get("usage").filter(|u| !u.is_null()).cloned(),
        // JSON is UTF-8, and a string encodes far smaller than an array of bytes.
        json_body: Some(String::from_utf8(body.to_vec()).map_err(|_| Rejection::NotJson)?),
    })
}

/// Extracts the content to cache from the complete bytes of a streamed response with status 200.
/// The stream must end with `data: [DONE]` and every choice must have a finish reason.
pub fn content_from_stream(bytes: &[u8]) -> Result<ResponseContent, Rejection> {
    let text = std::str::from_utf8(bytes).map_err(|_| Rejection::NotJson)?;
    let mut content = ResponseContent { form: Form::Stream, id: String::new(), model: String::new(), created: 0, system_fingerprint: None, choices: Vec::new(), usage: None, json_body: None };
    let mut tool_calls: Vec<Vec<Value>> = Vec::new();
    let mut finished: Vec<Option<String>> = Vec::new();
    let mut done = false;

    for data in sse_data_events(text) {
        if data.trim() == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).map_err(|_| Rejection::NotJson)?;
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            return Err(Rejection::ErrorBody);
        }
        if content.id.is_empty() {
            content.id = string_field(&chunk, "id");
            content.model = string_field(&chunk, "model");
            content.created = chunk.get("created").and_then(Value::as_i64).unwrap_or(0);
        }
        if let Some(fingerprint) = chunk.get("system_fingerprint").and_then(Value::as_str) {
            content.system_fingerprint = Some(fingerprint.to_string());
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            content.usage = Some(usage.clone());
        }
        for choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            while content.choices.len() <= index {
                let next = content.choices.len() as u64;
                content.choices.push(CachedChoice { index: next, role: "assistant".into(), content: None, tool_calls: None, finish_reason: String::new() });
                tool_calls.push(Vec::new());
                finished.push(None);
            }
            let delta = choice.get("delta").cloned().unwrap_or(Value::Null);
            let target = &mut content.choices[index];
            if let Some(role) = delta.get("role").and_then(Value::as_str) {
                target.role = role.to_string();
            }
            if let Some(piece) = delta.get("content").and_then(Value::as_str) {
                target.content.get_or_insert_with(String::new).push_str(piece);
            }
            for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                merge_tool_call_delta(&mut tool_calls[index], call);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                finished[index] = Some(reason.to_string());
            }
        }
    }

    if !done {
        return Err(Rejection::StreamNotDone);
    }
    if content.choices.is_empty() {
        return Err(Rejection::NoChoices);
    }
    for ((choice, calls), reason) in content.choices.iter_mut().zip(tool_calls).zip(finished) {
        choice.finish_reason = reason.ok_or(Rejection::Unfinished)?;
        if !calls.is_empty() {
            choice.tool_calls = Some(Value::Array(calls));
        }
    }
    Ok(content)
}

/// Merges one streamed tool call fragment into the calls assembled so far, by its `index`.
fn merge_tool_call_delta(calls: &mut Vec<Value>, fragment: &Value) {
    let index = fragment.get("index").and_then(Value::as_u64).unwrap_or(calls.len() as u64) as usize;
    while calls.len() <= index {
        calls.push(serde_json::json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}));
    }
    let call = &mut calls[index];
    if let Some(id) = fragment.get("id").and_then(Value::as_str) {
        call["id"] = Value::String(id.to_string());
    }
    if let Some(kind) = fragment.get("type").and_then(Value::as_str) {
        call["type"] = Value::String(kind.to_string());
    }
    for field in ["name", "arguments"] {
        if let Some(piece) = fragment.pointer(&format!("/function/{field}")).and_then(Value::as_str) {
            let joined = format!("{}{piece}", call["function"][field].as_str().unwrap_or(""));
            call["function"][field] = Value::String(joined);
        }
    }
}

/// Returns the joined `data:` lines of each event of an SSE text.
pub fn sse_data_events(text: &str) -> Vec<String> {
    let normalized = text.replace("\r\n", "\n");
    let mut events = Vec::new();
    for block in normalized.split("\n\n") {
        let lines: Vec<&str> = block
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|rest| rest.strip_prefix(' ').unwrap_or(rest))
            .collect();
        if !lines.is_empty() {
            events.push(lines.join("\n"));
        }
    }
    events
}

fn string_field(value: &Value, field: &str) -> String {
    value.get(field).and_then(Value::as_str).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answer_read() {
        let body = br#"{"id":"c1","model":"m","created":5,"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let content = content_from_json(body).unwrap();
        assert_eq!(content.choices[0].content.as_deref(), Some("hi"));
        assert_eq!(content.choices[0].finish_reason, "stop");
        assert_eq!(content.usage.unwrap()["total_tokens"], 4);
        assert_eq!(content.json_body.as_deref().map(str::as_bytes), Some(&body[..]));
    }

    #[test]
    fn json_error_body_rejected() {
        assert_eq!(content_from_json(br#"{"error":{"message":"overloaded"}}"#), Err(Rejection::ErrorBody));
        assert_eq!(content_from_json(b"not json"), Err(Rejection::NotJson));
    }

    #[test]
    fn json_without_finish_reason_rejected() {
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":null}]}"#;
        assert_eq!(content_from_json(body), Err(Rejection::Unfinished));
    }

    const STREAM: &str = concat!(
        "data: {\"id\":\"c\",\"model\":\"m\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2,\"total_tokens\":4}}\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn stream_assembled() {
        let content = content_from_stream(STREAM.as_bytes()).unwrap();
        assert_eq!(content.form, Form::Stream);
        assert_eq!(content.choices.len(), 1);
        assert_eq!(content.choices[0].content.as_deref(), Some("Hello"));
        assert_eq!(content.choices[0].finish_reason, "stop");
        assert_eq!(content.usage.unwrap()["completion_tokens"], 2);
        assert_eq!(content.model, "m");
    }

    #[test]
    fn stream_without_done_rejected() {
        let cut = STREAM.replace("data: [DONE]\n\n", "");
        assert_eq!(content_from_stream(cut.as_bytes()), Err(Rejection::StreamNotDone));
    }

    #[test]
    fn stream_without_finish_reason_rejected() {
        let cut = STREAM.replace(",\"finish_reason\":\"stop\"", "");
        assert_eq!(content_from_stream(cut.as_bytes()), Err(Rejection::Unfinished));
    }

    #[test]
    fn stream_error_event_rejected() {
        let error = "data: {\"error\":{\"message\":\"overloaded\"}}\n\ndata: [DONE]\n\n";
        assert_eq!(content_from_stream(error.as_bytes()), Err(Rejection::ErrorBody));
    }

    #[test]
    fn stream_tool_calls_merged() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,\"id\":\"t1\",\"type\":\"function\",\"function\":{\"name\":\"get\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let content = content_from_stream(stream.as_bytes()).unwrap();
        let calls = content.choices[0].tool_calls.as_ref().unwrap();
        assert_eq!(calls[0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(calls[0]["id"], "t1");
    }
}
