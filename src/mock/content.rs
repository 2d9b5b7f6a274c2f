//! Deterministic reply text, token counts and usage objects.
//!
//! A "token" here is a whitespace-separated word, so tests can compute every count by hand.
//! The numbers are not what a real tokenizer would return.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Tokens that [`chat_prompt_tokens`] adds for each message, for the role and separators.
pub(crate) const TOKENS_PER_MESSAGE: u64 = 4;

/// Number of words of the prompt that a reply quotes.
const QUOTED_WORDS: usize = 8;

/// Number of hex characters of the SHA-256 digest that a reply ends with.
const DIGEST_HEX_CHARS: usize = 12;

/// A generated reply for one choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub text: String,
    /// Number of words in `text`, reported as the completion tokens of this choice.
    pub words: u64,
    /// `"length"` when `max_tokens` cut the reply short, else `"stop"`.
    pub finish_reason: &'static str,
}

/// Token counts for a `usage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
}

impl Usage {
    /// Returns the `usage` object of a chat or legacy completion.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": { "cached_tokens": self.cached_tokens },
            "completion_tokens_details": { "reasoning_tokens": 0 },
        })
    }
}

/// One prompt of a legacy completion or one input of an embedding request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextInput {
    /// The text, or the token ids joined by spaces for a token array.
    pub text: String,
    pub tokens: u64,
    pub is_token_array: bool,
}

/// Counts the whitespace-separated words of `text`.
pub(crate) fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Returns the text of a message `content`: a string, or the `text` fields of an array of
/// content parts joined by newlines. Other content, such as images, contributes nothing.
pub(crate) fn message_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Counts the prompt tokens of a chat request: the words of every message plus
/// [`TOKENS_PER_MESSAGE`] per message.
pub(crate) fn chat_prompt_tokens(messages: &[Value]) -> u64 {
    messages
        .iter()
        .map(|message| word_count(&message_text(message.get("content"))) + TOKENS_PER_MESSAGE)
        .sum()
}

/// Builds the chat reply: "Mock reply to:", the first words of the last user message, and a
/// digest of the whole `messages` array in brackets, cut to `max_words` words.
pub(crate) fn chat_reply(messages: &[Value], max_words: Option<u64>) -> Reply {
    let last_user_text = messages
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        .map(|message| message_text(message.get("content")))
        .unwrap_or_default();
    let serialized = Value::Array(messages.to_vec()).to_string();
    build_reply(
        "Mock reply to:",
        &last_user_text,
        serialized.as_bytes(),
        max_words,
    )
}

/// Builds the legacy completion of one prompt: "Mock completion of:", the first words of the
/// prompt and a digest of it, cut to `max_words` words.
pub(crate) fn completion_reply(prompt: &TextInput, max_words: Option<u64>) -> Reply {
    build_reply(
        "Mock completion of:",
        &prompt.text,
        prompt.text.as_bytes(),
        max_words,
    )
}

fn build_reply(prefix: &str, source: &str, digest_input: &[u8], max_words: Option<u64>) -> Reply {
    let digest = format!("[{}]", short_digest(digest_input));
    let mut words: Vec<&str> = prefix.split_whitespace().collect();
    words.extend(source.split_whitespace().take(QUOTED_WORDS));
    words.push(&digest);

    let mut finish_reason = "stop";
    if let Some(max_words) = max_words {
        // A reply keeps at least one word, because an empty reply would hide the cut.
        let limit = usize::try_from(max_words).unwrap_or(usize::MAX).max(1);
        if words.len() > limit {
            words.truncate(limit);
            finish_reason = "length";
        }
    }

    Reply {
        text: words.join(" "),
        words: words.len() as u64,
        finish_reason,
    }
}

/// Returns the first [`DIGEST_HEX_CHARS`] hex characters of the SHA-256 of `bytes`.
pub(crate) fn short_digest(bytes: &[u8]) -> String {
    let mut digest = hex::encode(Sha256::digest(bytes));
    digest.truncate(DIGEST_HEX_CHARS);
    digest
}

/// Parses a legacy `prompt` or an embedding `input`: a string, an array of strings, one token
/// array, or an array of token arrays. The error message names `field`.
pub(crate) fn parse_text_inputs(
    value: Option<&Value>,
    field: &str,
) -> Result<Vec<TextInput>, String> {
    let expected = format!(
        "`{field}` must be a string, an array of strings, an array of token ids or an array of token id arrays"
    );
    let inputs = match value {
        None => return Err(format!("Missing `{field}` in the request body.")),
        Some(Value::String(text)) => vec![string_input(text)],
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(format!("`{field}` must not be an empty array."));
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) => {
            vec![token_input(items).ok_or_else(|| expected.clone())?]
        }
        Some(Value::Array(items)) => {
            let mut inputs = Vec::with_capacity(items.len());
            for item in items {
                let input = match item {
                    Value::String(text) => Some(string_input(text)),
                    Value::Array(tokens) => token_input(tokens),
                    _ => None,
                };
                inputs.push(input.ok_or_else(|| expected.clone())?);
            }
            inputs
        }
        Some(_) => return Err(format!("{expected}.")),
    };
    Ok(inputs)
}

fn string_input(text: &str) -> TextInput {
    TextInput {
        text: text.to_owned(),
        tokens: word_count(text),
        is_token_array: false,
    }
}

fn token_input(tokens: &[Value]) -> Option<TextInput> {
    let ids: Option<Vec<u64>> = tokens.iter().map(Value::as_u64).collect();
    let ids = ids?;
    let text = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    Some(TextInput {
        text,
        tokens: ids.len() as u64,
        is_token_array: true,
    })
}

/// Returns a new response id: `prefix` followed by 24 random alphanumeric characters.
pub(crate) fn response_id(prefix: &str) -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

/// Returns the current Unix time in seconds, for the `created` field.
pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_quotes_first_eight_words() {
        let messages = vec![
            json!({"role": "user", "content": "one two three four five six seven eight nine"}),
        ];
        let reply = chat_reply(&messages, None);
        assert!(reply
            .text
            .starts_with("Mock reply to: one two three four five six seven eight ["));
        assert!(!reply.text.contains("nine"));
        assert_eq!(reply.words, 12);
        assert_eq!(reply.finish_reason, "stop");
    }

    #[test]
    fn reply_digest_covers_all_messages() {
        let first = vec![
            json!({"role": "system", "content": "a"}),
            json!({"role": "user", "content": "hi"}),
        ];
        let second = vec![
            json!({"role": "system", "content": "b"}),
            json!({"role": "user", "content": "hi"}),
        ];
        assert_eq!(chat_reply(&first, None), chat_reply(&first, None));
        assert_ne!(
            chat_reply(&first, None).text,
            chat_reply(&second, None).text
        );
    }

    #[test]
    fn reply_max_words_cuts() {
        let messages = vec![json!({"role": "user", "content": "hello"})];
        let reply = chat_reply(&messages, Some(2));
        assert_eq!(reply.text, "Mock reply");
        assert_eq!(reply.words, 2);
        assert_eq!(reply.finish_reason, "length");
        assert_eq!(chat_reply(&messages, Some(0)).text, "Mock");
    }

    #[test]
    fn prompt_tokens_count_parts() {
        let messages = vec![
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": [{"type": "text", "text": "one two three"}, {"type": "image_url"}]}),
        ];
        assert_eq!(chat_prompt_tokens(&messages), 2 + 4 + 3 + 4);
    }

    #[test]
    fn text_inputs_accept_all_forms() {
        let single = parse_text_inputs(Some(&json!("a b")), "prompt").expect("string");
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].tokens, 2);

        let tokens = parse_text_inputs(Some(&json!([1, 2, 3])), "prompt").expect("token array");
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].text, "1 2 3");
        assert!(tokens[0].is_token_array);

        let nested = parse_text_inputs(Some(&json!([[1], [2, 3]])), "prompt").expect("nested");
        assert_eq!(nested.len(), 2);

        let mixed = parse_text_inputs(Some(&json!(["x", [4, 5]])), "prompt").expect("mixed");
        assert_eq!(mixed[1].tokens, 2);
    }

    #[test]
    fn text_inputs_reject_bad_forms() {
        assert!(parse_text_inputs(None, "input").is_err());
        assert!(parse_text_inputs(Some(&json!([])), "input").is_err());
        assert!(parse_text_inputs(Some(&json!(5)), "input").is_err());
        assert!(parse_text_inputs(Some(&json!([{"a": 1}])), "input").is_err());
        assert!(parse_text_inputs(Some(&json!([[1, -2]])), "input").is_err());
    }
}
