use serde_json::json;

use super::{chat_request, content_of, with_field, USER_TEXT};
use crate::mock::test_client::{post_json, start_mock};
use crate::mock::MockOptions;

const PATH: &str = "/v1/chat/completions";

#[tokio::test]
async fn chat_reply_quotes_prompt() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(address, PATH, &[], &chat_request(USER_TEXT)).await;

    assert_eq!(response.status, 200);
    let body = response.json();
    let content = content_of(&body);
    assert!(
        content.starts_with("Mock reply to: Tell me three facts about the moon right ["),
        "content = {content:?}"
    );
    assert!(content.ends_with(']'), "content = {content:?}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert!(body["created"].as_u64().expect("created") > 0);
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_reply_is_deterministic() {
    let address = start_mock(MockOptions::default()).await;
    let first = post_json(address, PATH, &[], &chat_request(USER_TEXT))
        .await
        .json();
    let again = post_json(address, PATH, &[], &chat_request(USER_TEXT))
        .await
        .json();
    let other = post_json(address, PATH, &[], &chat_request("Tell me about Mars"))
        .await
        .json();

    assert_eq!(content_of(&first), content_of(&again));
    assert_eq!(first["usage"], again["usage"]);
    assert_ne!(content_of(&first), content_of(&other));
    assert_ne!(first["id"], again["id"]);
}

#[tokio::test]
async fn chat_usage_counts_words() {
    let address = start_mock(MockOptions::default()).await;
    let body = post_json(address, PATH, &[], &chat_request(USER_TEXT))
        .await
        .json();

    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], 19);
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(usage["total_tokens"], 31);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
}

#[tokio::test]
async fn chat_cached_tokens_header() {
    let address = start_mock(MockOptions::default()).await;
    let headers = [("x-mock-cached-tokens", "7")];
    let body = post_json(address, PATH, &headers, &chat_request(USER_TEXT))
        .await
        .json();

    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 7);
    assert_eq!(body["usage"]["prompt_tokens"], 19);
}

#[tokio::test]
async fn chat_max_tokens_caps_words() {
    let address = start_mock(MockOptions::default()).await;
    let request = with_field(chat_request(USER_TEXT), "max_tokens", json!(5));
    let body = post_json(address, PATH, &[], &request).await.json();

    assert_eq!(content_of(&body), "Mock reply to: Tell me");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 5);

    let request = with_field(chat_request(USER_TEXT), "max_completion_tokens", json!(3));
    let body = post_json(address, PATH, &[], &request).await.json();
    assert_eq!(content_of(&body), "Mock reply to:");
}

#[tokio::test]
async fn chat_n_gives_choices() {
    let address = start_mock(MockOptions::default()).await;
    let request = with_field(chat_request(USER_TEXT), "n", json!(3));
    let body = post_json(address, PATH, &[], &request).await.json();

    let choices = body["choices"].as_array().expect("choices array");
    assert_eq!(choices.len(), 3);
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
        assert_eq!(
            choice["message"]["content"],
            choices[0]["message"]["content"]
        );
    }
    assert_eq!(body["usage"]["completion_tokens"], 36);
}

#[tokio::test]
async fn chat_content_parts_accepted() {
    let address = start_mock(MockOptions::default()).await;
    let request = json!({
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "alpha beta"}]}],
    });
    let body = post_json(address, PATH, &[], &request).await.json();

    assert!(content_of(&body).starts_with("Mock reply to: alpha beta ["));
    assert_eq!(body["usage"]["prompt_tokens"], 6);
}

#[tokio::test]
async fn chat_rejects_bad_requests() {
    let address = start_mock(MockOptions::default()).await;
    let cases = [
        json!({"model": "m"}),
        json!({"model": "m", "messages": "hello"}),
        with_field(chat_request(USER_TEXT), "n", json!(0)),
        with_field(chat_request(USER_TEXT), "max_tokens", json!("ten")),
        json!([1, 2]),
    ];
    for request in cases {
        let response = post_json(address, PATH, &[], &request).await;
        assert_eq!(response.status, 400, "request = {request}");
        assert_eq!(
            response.json()["error"]["type"],
            "invalid_request_error",
            "request = {request}"
        );
    }
}
