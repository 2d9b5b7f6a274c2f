//! Cache keys: the exact key of a whole chat request and the context key of a semantic lookup.
//!
//! Both are SHA-256 digests of a canonical JSON form: object keys sorted, no whitespace, and
//! numbers written one way (`1`, `1.0` and `1e0` are the same number). Fields that change only
//! the transport, not the model's output, are left out; every other field counts, so an unknown
//! new parameter makes the key differ rather than serve a wrong response.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Request fields that change how the response is delivered or billed, never its content.
const TRANSPORT_FIELDS: [&str; 5] = ["stream", "stream_options", "user", "metadata", "store"];

/// Keys of one chat request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestKeys {
    /// Digest of the project, the requested model, every message and every output parameter.
    pub exact: [u8; 32],
    /// For a semantic lookup: the digest of everything but the last user message, and that message's
    /// text. `None` when the last message is not a plain-text user message.
    pub semantic: Option<SemanticKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemanticKey {
    pub context: [u8; 32],
    pub text: String,
}

impl RequestKeys {
    /// Returns the 64-bit id of the exact key, used as the entry's key in the store and the index.
    pub fn entry_id(&self) -> u64 {
        entry_id(&self.exact)
    }
}

/// Returns the first eight bytes of a digest as a number. The stored entry keeps the whole digest,
/// so that a collision of ids is detected on lookup.
pub fn entry_id(digest: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Computes the keys of a chat request body for `project_id`. `model` is the model name the
/// client requested, which replaces the body's (possibly rewritten) `model`.
pub fn request_keys(project_id: &str, model: &str, request: &Value) -> RequestKeys {
    let mut body = request.clone();
    if let Some(object) = body.as_object_mut() {
        for field in TRANSPORT_FIELDS {
            object.remove(field);
        }
        object.insert("model".into(), Value::String(model.to_string()));
    }
    let exact = digest("exact", project_id, &body);
    let semantic = split_last_user_message(&body).map(|(context, text)| SemanticKey { context: digest("context", project_id, &context), text });
    RequestKeys { exact, semantic }
}

/// Removes the last message when it is a user message with plain text, and returns the rest of the
/// request with that text. A conversation that ends with any other message has no semantic key.
fn split_last_user_message(body: &Value) -> Option<(Value, String)> {
    let mut context = body.clone();
    let messages = context.get_mut("messages")?.as_array_mut()?;
    let last = messages.last()?;
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    // A named user or any field besides role and content makes the message more than its text.
    if last.as_object().is_some_and(|o| o.keys().any(|k| k != "role" && k != "content")) {
        return None;
    }
    let text = message_text(last.get("content")?)?;
    messages.pop();
    // The number of messages stays part of the context, so the text's position is fixed.
    Some((context, text))
}

/// Returns the text of a message content: a string, or an array made only of text parts.
fn message_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                if part.get("type").and_then(Value::as_str) != Some("text") {
                    return None;
                }
                text.push_str(part.get("text")?.as_str()?);
            }
            Some(text)
        }
        _ => None,
    }
}

fn digest(kind: &str, project_id: &str, body: &Value) -> [u8; 32] {
    let mut canonical = String::new();
    write_canonical(body, &mut canonical);
    let mut hasher = Sha256::new();
    // Lengths before each part, so that no two different inputs share one byte sequence.
    for part in [kind, project_id, canonical.as_str()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Writes `value` as canonical JSON: sorted object keys, no whitespace, one form per number.
pub fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => out.push_str(&value.to_string()),
        Value::Number(number) => out.push_str(&canonical_number(number)),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&object[key], out);
            }
            out.push('}');
        }
    }
}

fn canonical_number(number: &serde_json::Number) -> String {
    if let Some(i) = number.as_i64() {
        return i.to_string();
    }
    if let Some(u) = number.as_u64() {
        return u.to_string();
    }
    let f = number.as_f64().unwrap_or(0.0);
    // Integral floats within f64's exact range are written as integers, so 1.0 equals 1.
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        return (f as i64).to_string();
    }
    format!("{f:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(body: Value) -> RequestKeys {
        request_keys("proj_a", "gpt-4o-mini", &body)
    }

    fn chat(messages: Value) -> Value {
        json!({"model": "gpt-4o-mini", "messages": messages})
    }

    #[test]
    fn key_order_and_whitespace_ignored() {
        let a: Value = serde_json::from_str(r#"{"model":"gpt-4o-mini","temperature":1,"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let b: Value = serde_json::from_str("{ \"messages\" : [ {\"content\":\"hi\", \"role\":\"user\"} ],\n \"temperature\": 1.0, \"model\":\"gpt-4o-mini\" }").unwrap();
        assert_eq!(keys(a).exact, keys(b).exact);
    }

    #[test]
    fn transport_fields_ignored() {
        let plain = chat(json!([{"role": "user", "content": "hi"}]));
        let mut streamed = plain.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        streamed["user"] = json!("someone");
        assert_eq!(keys(plain).exact, keys(streamed).exact);
    }

    #[test]
    fn output_parameters_change_key() {
        let base = chat(json!([{"role": "user", "content": "hi"}]));
        let base_key = keys(base.clone()).exact;
        let changes = [
            ("temperature", json!(0.5)),
            ("top_p", json!(0.9)),
            ("n", json!(2)),
            ("max_tokens", json!(10)),
            ("stop", json!(["x"])),
            ("seed", json!(7)),
            ("tools", json!([{"type": "function", "function": {"name": "f"}}])),
            ("tool_choice", json!("auto")),
            ("response_format", json!({"type": "json_object"})),
            ("logit_bias", json!({"50256": -100})),
            ("some_new_parameter", json!(true)),
        ];
        for (field, value) in changes {
            let mut changed = base.clone();
            changed[field] = value;
            assert_ne!(keys(changed).exact, base_key, "{field} must change the key");
        }
    }

    #[test]
    fn project_and_model_change_key() {
        let body = chat(json!([{"role": "user", "content": "hi"}]));
        let a = request_keys("proj_a", "gpt-4o-mini", &body);
        assert_ne!(a.exact, request_keys("proj_b", "gpt-4o-mini", &body).exact);
        assert_ne!(a.exact, request_keys("proj_a", "gpt-4o", &body).exact);
        let (sa, sb) = (a.semantic.unwrap(), request_keys("proj_b", "gpt-4o-mini", &body).semantic.unwrap());
        assert_ne!(sa.context, sb.context);
    }

    #[test]
    fn context_excludes_only_last_user_message() {
        let a = keys(chat(json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"}])));
        let b = keys(chat(json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "two"}])));
        let other_system = keys(chat(json!([{"role": "system", "content": "be long"}, {"role": "user", "content": "one"}])));
        let (sa, sb) = (a.semantic.unwrap(), b.semantic.unwrap());
        assert_eq!(sa.context, sb.context);
        assert_eq!(sa.text, "one");
        assert_ne!(a.exact, b.exact);
        assert_ne!(other_system.semantic.unwrap().context, sa.context);
    }

    #[test]
    fn earlier_turns_change_context() {
        let short = keys(chat(json!([{"role": "user", "content": "q"}])));
        let long = keys(chat(json!([
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "q"}
        ])));
        assert_ne!(short.semantic.unwrap().context, long.semantic.unwrap().context);
    }

    #[test]
    fn no_semantic_key_unless_last_is_user_text() {
        let tool_last = keys(chat(json!([{"role": "user", "content": "q"}, {"role": "tool", "content": "r", "tool_call_id": "1"}])));
        assert!(tool_last.semantic.is_none());
        let image = keys(chat(json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])));
        assert!(image.semantic.is_none());
        let parts = keys(chat(json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])));
        assert_eq!(parts.semantic.unwrap().text, "ab");
    }

    #[test]
    fn numbers_canonical() {
        let mut out = String::new();
        write_canonical(&json!([1, 1.0, 0.5, -3, 12345678901234567890u64]), &mut out);
        assert_eq!(out, "[1,1,0.5,-3,12345678901234567890]");
    }
}
