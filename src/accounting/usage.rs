//! Token usage as providers report it, and the gateway's estimate when they do not.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use ahash::RandomState;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Part of `prompt_tokens`.
    pub cached_tokens: i64,
    /// Part of `completion_tokens`.
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
}

impl Usage {
    /// Builds the usage from a `usage` object's fields: prompt, completion, total, cached and
    /// reasoning tokens, in that order. A missing or negative count is 0, and a missing total is
    /// the sum of the prompt and completion tokens.
    pub fn from_counts(counts: [Option<i64>; 5]) -> Usage {
        let [prompt_tokens, completion_tokens, total, cached_tokens, reasoning_tokens] = counts.map(|count| count.unwrap_or(0).max(0));
        Usage {
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            reasoning_tokens,
            total_tokens: if total > 0 { total } else { prompt_tokens + completion_tokens },
        }
    }

    /// Reads an OpenAI `usage` object. Returns `None` when `value` is not an object. A count
    /// that is not an integer counts as missing.
    pub fn from_value(value: &Value) -> Option<Usage> {
        if !value.is_object() {
            return None;
        }
        let pointers = ["/prompt_tokens", "/completion_tokens", "/total_tokens", "/prompt_tokens_details/cached_tokens", "/completion_tokens_details/reasoning_tokens"];
        Some(Usage::from_counts(pointers.map(|pointer| value.pointer(pointer).and_then(Value::as_i64))))
    }

    /// Reads the `usage` field of a complete (non-streamed) response body.
    pub fn from_response_body(body: &[u8]) -> Option<Usage> {
        let value: Value = serde_json::from_slice(body).ok()?;
        Usage::from_value(value.get("usage")?)
    }
}

fn tokenizer() -> &'static CoreBPE {
    static TOKENIZER: OnceLock<CoreBPE> = OnceLock::new();
    // The o200k vocabulary is compiled into tiktoken-rs, so loading it cannot fail at run time.
    TOKENIZER.get_or_init(|| tiktoken_rs::o200k_base().expect("o200k_base vocabulary is embedded in tiktoken-rs"))
}

/// Loads the tokenizer ahead of the first request that needs it; it takes a few hundred milliseconds.
pub fn warm_up_tokenizer() {
    let _ = tokenizer();
}

/// Texts whose counts each thread remembers. A chat client sends its system prompt and every earlier
/// turn again with each request, so most texts of a request were counted before.
const REMEMBERED_COUNTS: usize = 4096;

thread_local! {
    /// Token counts by a keyed hash of the text. Emptied when full: simpler than an LRU, and a
    /// conversation's texts come back within a few requests.
    static COUNTS: RefCell<(RandomState, HashMap<u64, i64, RandomState>)> = RefCell::new((RandomState::new(), HashMap::default()));
}

/// Counts the tokens of `text` with OpenAI's o200k tokenizer, remembering recent counts.
pub fn count_tokens(text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    COUNTS.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (hasher, counts) = &mut *guard;
        let key = hasher.hash_one(text);
        if let Some(count) = counts.get(&key) {
            return *count;
        }
        let count = tokenizer().encode_ordinary(text).len() as i64;
        if counts.len() >= REMEMBERED_COUNTS {
            counts.clear();
        }
        counts.insert(key, count);
        count
    })
}

/// Estimates the prompt tokens of a request body from its messages, prompt or input.
///
/// Chat messages add 3 tokens each for their framing and 3 for the reply's priming, as OpenAI's
/// cookbook counts them for current chat models.
pub fn estimate_prompt_tokens(request: &Value) -> i64 {
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        let mut total = 3;
        for message in messages {
            total += 3;
            // One pass over the message's fields costs less than a lookup of each.
            for (field, value) in message.as_object().into_iter().flatten() {
                match (field.as_str(), value) {
                    ("role", Value::String(role)) => total += count_tokens(role),
                    ("content", content) => total += text_tokens(content),
                    ("name", Value::String(name)) => total += count_tokens(name) + 1,
                    _ => {}
                }
            }
        }
        return total;
    }
    let input = request.get("prompt").or_else(|| request.get("input")).unwrap_or(&Value::Null);
    text_tokens(input)
}

/// Counts the tokens of a content value: a string, an array of strings or of content parts, or a
/// token array (whose length is its token count).
fn text_tokens(value: &Value) -> i64 {
    match value {
        Value::String(text) => count_tokens(text),
        Value::Array(items) if items.iter().all(Value::is_number) => items.len() as i64,
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Object(part) => part.get("text").map(text_tokens).unwrap_or(0),
                other => text_tokens(other),
            })
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_read_with_details() {
        let usage = Usage::from_value(&json!({
            "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 64},
            "completion_tokens_details": {"reasoning_tokens": 5}
        }))
        .unwrap();
        assert_eq!(usage, Usage { prompt_tokens: 100, completion_tokens: 20, cached_tokens: 64, reasoning_tokens: 5, total_tokens: 120 });
    }

    #[test]
    fn embeddings_usage_has_no_completion() {
        let usage = Usage::from_value(&json!({"prompt_tokens": 8, "total_tokens": 8})).unwrap();
        assert_eq!(usage.completion_tokens, 0);
        assert_eq!(usage.total_tokens, 8);
    }

    #[test]
    fn missing_total_is_summed() {
        let usage = Usage::from_value(&json!({"prompt_tokens": 3, "completion_tokens": 4})).unwrap();
        assert_eq!(usage.total_tokens, 7);
    }

    #[test]
    fn null_usage_is_none() {
        assert!(Usage::from_value(&Value::Null).is_none());
        assert!(Usage::from_response_body(b"{\"usage\":null}").is_none());
        assert!(Usage::from_response_body(b"not json").is_none());
    }

    #[test]
    fn token_count_is_real() {
        assert_eq!(count_tokens("hello world"), 2);
        assert_eq!(count_tokens(""), 0);
    }

    #[test]
    fn remembered_counts_match_fresh_ones() {
        let texts: Vec<String> = (0..REMEMBERED_COUNTS + 10).map(|n| format!("message number {n} of a long chat")).collect();
        let fresh: Vec<i64> = texts.iter().map(|t| tokenizer().encode_ordinary(t).len() as i64).collect();
        // Twice over, so that the second pass reads remembered counts and the cache fills and empties.
        for _ in 0..2 {
            let counted: Vec<i64> = texts.iter().map(|t| count_tokens(t)).collect();
            assert_eq!(counted, fresh);
        }
        assert_eq!(count_tokens("hello world"), 2);
        assert!(COUNTS.with(|c| c.borrow().1.len()) <= REMEMBERED_COUNTS);
    }

    #[test]
    fn chat_prompt_estimate_counts_framing() {
        let request = json!({"messages": [{"role": "user", "content": "hello world"}]});
        // 3 (reply priming) + 3 (message framing) + 1 ("user") + 2 ("hello world").
        assert_eq!(estimate_prompt_tokens(&request), 9);
    }

    #[test]
    fn message_name_counted_with_its_separator() {
        let named = json!({"messages": [{"name": "hello", "content": "hello world", "role": "user"}, "not an object"]});
        // The unnamed estimate (9), the name (1) and its separator (1), and 3 for the second
        // entry, which has no fields to count.
        assert_eq!(estimate_prompt_tokens(&named), 9 + 2 + 3);
    }

    #[test]
    fn content_parts_and_token_arrays_counted() {
        let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]});
        assert_eq!(estimate_prompt_tokens(&parts), 9);
        assert_eq!(estimate_prompt_tokens(&json!({"input": [1, 2, 3]})), 3);
        assert_eq!(estimate_prompt_tokens(&json!({"prompt": ["hello world", "hello"]})), 3);
    }
}
