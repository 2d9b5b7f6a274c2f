//! Tests that run the mock on a loopback port and talk to it over HTTP/1.1.

mod chat;
mod failures;
mod routes;
mod stream;

use serde_json::{json, Value};

/// Builds a chat request with one system and one user message, worth 2 + 4 + 9 + 4 = 19 prompt
/// tokens when `user_text` is [`USER_TEXT`].
fn chat_request(user_text: &str) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": user_text},
        ],
    })
}

const USER_TEXT: &str = "Tell me three facts about the moon right now";

fn with_field(mut request: Value, field: &str, value: Value) -> Value {
    request[field] = value;
    request
}

fn content_of(response: &Value) -> String {
    response["choices"][0]["message"]["content"]
        .as_str()
        .expect("choices[0].message.content is a string")
        .to_owned()
}
