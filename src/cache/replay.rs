//! Rendering a cached response for a hit: as a JSON body, or as a stream of
//! `chat.completion.chunk` events that ends with the finish reason, an optional usage chunk and
//! `data: [DONE]`.

use serde_json::{json, Map, Value};

use super::entry::{CachedEntry, Form};

/// Characters of content per replayed chunk; a word is never split.
const CHUNK_CHARS: usize = 24;

/// Returns the body of a JSON response for the entry: the original body when the entry was stored
/// from JSON, otherwise a `chat.completion` object assembled from the stream.
pub fn json_body(entry: &CachedEntry) -> Vec<u8> {
    if let (Form::Json, Some(body)) = (entry.form, &entry.json_body) {
        return body.clone().into_bytes();
    }
    let choices: Vec<Value> = entry
        .choices
        .iter()
        .map(|choice| {
            let mut message = Map::new();
            message.insert("role".into(), Value::String(choice.role.clone()));
            message.insert("content".into(), choice.content.clone().map(Value::String).unwrap_or(Value::Null));
            if let Some(calls) = &choice.tool_calls {
                message.insert("tool_calls".into(), calls.clone());
            }
            json!({"index": choice.index, "message": message, "logprobs": null, "finish_reason": choice.finish_reason})
        })
        .collect();
    let mut body = json!({
        "id": entry.id,
        "object": "chat.completion",
        "created": entry.created,
        "model": entry.model,
        "choices": choices,
    });
    if let Some(fingerprint) = &entry.system_fingerprint {
        body["system_fingerprint"] = Value::String(fingerprint.clone());
    }
    if let Some(usage) = &entry.usage {
        body["usage"] = usage.clone();
    }
    body.to_string().into_bytes()
}

/// Returns the SSE events of a streamed response for the entry, each a complete `data: ...\n\n`
/// block. The usage chunk is included only when `include_usage` is set.
pub fn stream_events(entry: &CachedEntry, include_usage: bool) -> Vec<String> {
    let mut events = Vec::new();
    for choice in &entry.choices {
        events.push(chunk(entry, choice.index, json!({"role": choice.role, "content": ""}), None));
        if let Some(content) = &choice.content {
            for piece in split_content(content) {
                events.push(chunk(entry, choice.index, json!({"content": piece}), None));
            }
        }
        if let Some(Value::Array(calls)) = &choice.tool_calls {
            let indexed: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    call["index"] = json!(i);
                    call
                })
                .collect();
            events.push(chunk(entry, choice.index, json!({"tool_calls": indexed}), None));
        }
        events.push(chunk(entry, choice.index, json!({}), Some(&choice.finish_reason)));
    }
    if include_usage {
        if let Some(usage) = &entry.usage {
            let mut body = chunk_base(entry);
            body["choices"] = json!([]);
            body["usage"] = usage.clone();
            events.push(format!("data: {body}\n\n"));
        }
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

fn chunk_base(entry: &CachedEntry) -> Value {
    let mut body = json!({"id": entry.id, "object": "chat.completion.chunk", "created": entry.created, "model": entry.model});
    if let Some(fingerprint) = &entry.system_fingerprint {
        body["system_fingerprint"] = Value::String(fingerprint.clone());
    }
    body
}

fn chunk(entry: &CachedEntry, index: u64, delta: Value, finish_reason: Option<&str>) -> String {
    let mut body = chunk_base(entry);
    body["choices"] = json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]);
    format!("data: {body}\n\n")
}

/// Splits content into pieces of about `CHUNK_CHARS` characters at word ends. Joined, the pieces
/// are the content exactly.
pub fn split_content(content: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (offset, character) in content.char_indices() {
        count += 1;
        if count >= CHUNK_CHARS && character.is_whitespace() {
            let end = offset + character.len_utf8();
            pieces.push(&content[start..end]);
            start = end;
            count = 0;
        }
    }
    if start < content.len() {
        pieces.push(&content[start..]);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::CachedChoice;

    fn entry(form: Form, content: &str) -> CachedEntry {
        CachedEntry {
            exact: [0; 32],
            project_id: "p".into(),
            context: None,
            salient: None,
            created_at_ms: 0,
            expires_at_ms: 0,
            form,
            id: "chatcmpl-1".into(),
            model: "m".into(),
            created: 7,
            system_fingerprint: None,
            choices: vec![CachedChoice { index: 0, role: "assistant".into(), content: Some(content.into()), tool_calls: None, finish_reason: "stop".into() }],
            usage: Some(json!({"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12})),
            cost_usd: 0.0,
            tokens: Default::default(),
            json_body: None,
        }
    }

    const TEXT: &str = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest.";

    #[test]
    fn split_rejoins_exactly() {
        let pieces = split_content(TEXT);
        assert!(pieces.len() >= 3, "{pieces:?}");
        assert_eq!(pieces.concat(), TEXT);
        assert_eq!(split_content("").len(), 0);
        assert_eq!(split_content("żółw żółw żółw żółw żółw żółw żółw").concat(), "żółw żółw żółw żółw żółw żółw żółw");
    }

    #[test]
    fn stream_replay_has_chunks_finish_and_done() {
        let events = stream_events(&entry(Form::Json, TEXT), false);
        assert!(events.len() >= 5);
        assert_eq!(events.last().unwrap(), "data: [DONE]\n\n");
        let mut joined = String::new();
        let mut finish = None;
        for event in &events[..events.len() - 1] {
            let value: Value = serde_json::from_str(event.trim_start_matches("data: ").trim()).unwrap();
            assert_eq!(value["object"], "chat.completion.chunk");
            assert!(value.get("usage").is_none());
            if let Some(piece) = value["choices"][0]["delta"]["content"].as_str() {
                joined.push_str(piece);
            }
            if let Some(reason) = value["choices"][0]["finish_reason"].as_str() {
                finish = Some(reason.to_string());
            }
        }
        assert_eq!(joined, TEXT);
        assert_eq!(finish.as_deref(), Some("stop"));
    }

    #[test]
    fn usage_chunk_only_when_asked() {
        let events = stream_events(&entry(Form::Stream, TEXT), true);
        let usage_event = &events[events.len() - 2];
        let value: Value = serde_json::from_str(usage_event.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(value["usage"]["total_tokens"], 12);
        assert_eq!(value["choices"], json!([]));
    }

    #[test]
    fn json_from_stream_entry() {
        let body: Value = serde_json::from_slice(&json_body(&entry(Form::Stream, TEXT))).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["content"], TEXT);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["prompt_tokens"], 3);
    }

    #[test]
    fn json_entry_served_byte_for_byte() {
        let mut cached = entry(Form::Json, TEXT);
        cached.json_body = Some("{\"original\":true}".to_string());
        assert_eq!(json_body(&cached), b"{\"original\":true}");
    }
}
