use std::time::{Duration, Instant};

use serde_json::json;

use super::{chat_request, with_field, USER_TEXT};
use crate::mock::test_client::{post_json, send, start_mock};
use crate::mock::MockOptions;

const PATH: &str = "/v1/chat/completions";

fn stream_request() -> serde_json::Value {
    let request = with_field(chat_request(USER_TEXT), "stream", json!(true));
    with_field(request, "stream_options", json!({"include_usage": true}))
}

#[tokio::test]
async fn status_header_returns_error() {
    let address = start_mock(MockOptions::default()).await;
    let headers = [("x-mock-status", "503"), ("x-mock-retry-after", "7")];
    let response = post_json(address, PATH, &headers, &chat_request(USER_TEXT)).await;

    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("7"));
    let body = response.json();
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|message| message.contains("503")));
}

#[tokio::test]
async fn status_header_on_every_post_route() {
    let address = start_mock(MockOptions::default()).await;
    let routes = [
        ("/v1/chat/completions", chat_request(USER_TEXT)),
        ("/v1/completions", json!({"model": "m", "prompt": "hi"})),
        ("/v1/embeddings", json!({"model": "m", "input": "hi"})),
    ];
    for (path, request) in routes {
        let response = post_json(address, path, &[("x-mock-status", "429")], &request).await;
        assert_eq!(response.status, 429, "path = {path}");
        assert_eq!(response.header("retry-after"), None, "path = {path}");
        assert_eq!(
            response.json()["error"]["code"],
            "rate_limit_exceeded",
            "path = {path}"
        );
    }
}

#[tokio::test]
async fn status_header_ignores_body() {
    let address = start_mock(MockOptions::default()).await;
    let response = send(
        address,
        "POST",
        PATH,
        &[("x-mock-status", "500")],
        b"{not json",
    )
    .await;
    assert_eq!(response.status, 500);
}

#[tokio::test]
async fn invalid_control_header_rejected() {
    let address = start_mock(MockOptions::default()).await;
    let cases = [
        ("x-mock-status", "abc"),
        ("x-mock-status", "99"),
        ("x-mock-status", "600"),
        ("x-mock-chunks", "-1"),
        ("x-mock-no-usage", "yes"),
    ];
    for (name, value) in cases {
        let response = post_json(address, PATH, &[(name, value)], &chat_request(USER_TEXT)).await;
        assert_eq!(response.status, 400, "{name}: {value}");
        let message = response.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(name), "{name}: {value} gave {message:?}");
    }
}

#[tokio::test]
async fn delay_header_waits() {
    let address = start_mock(MockOptions::default()).await;
    let started = Instant::now();
    let response = post_json(
        address,
        PATH,
        &[("x-mock-delay-ms", "200")],
        &chat_request(USER_TEXT),
    )
    .await;

    assert_eq!(response.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "elapsed = {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn latency_option_and_header() {
    let address = start_mock(MockOptions {
        latency_ms: 150,
        chunk_delay_ms: 0,
    })
    .await;
    let started = Instant::now();
    post_json(address, PATH, &[], &chat_request(USER_TEXT)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "elapsed = {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    post_json(
        address,
        PATH,
        &[("x-mock-latency-ms", "0")],
        &chat_request(USER_TEXT),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "elapsed = {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn cut_after_closes_stream() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(
        address,
        PATH,
        &[("x-mock-cut-after", "2")],
        &stream_request(),
    )
    .await;

    assert_eq!(response.status, 200);
    assert!(
        !response.complete,
        "the cut stream ended with a terminating chunk"
    );
    let events = response.events();
    assert!(
        !events.iter().any(|event| event == "data: [DONE]"),
        "events = {events:#?}"
    );
    let chunks = response.data_chunks();
    // The role chunk and 2 content chunks.
    assert_eq!(chunks.len(), 3, "events = {events:#?}");
    assert!(chunks
        .iter()
        .all(|chunk| chunk["choices"][0]["finish_reason"].is_null()));
}

#[tokio::test]
async fn cut_after_zero_sends_role_only() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(
        address,
        PATH,
        &[("x-mock-cut-after", "0")],
        &stream_request(),
    )
    .await;

    assert!(!response.complete);
    assert_eq!(response.data_chunks().len(), 1);
}

#[tokio::test]
async fn malformed_event_mid_stream() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(
        address,
        PATH,
        &[("x-mock-malformed", "1")],
        &stream_request(),
    )
    .await;

    assert!(response.complete);
    let events = response.events();
    let position = events.iter().position(|event| event == "data: {not json");
    // The role chunk and 2 of 5 content chunks come before the invalid event.
    assert_eq!(position, Some(3), "events = {events:#?}");
    assert_eq!(events.last().map(String::as_str), Some("data: [DONE]"));
    // All valid chunks still arrive: role, 5 content, finish, usage.
    assert_eq!(response.data_chunks().len(), 8);
}

#[tokio::test]
async fn no_usage_omits_usage() {
    let address = start_mock(MockOptions::default()).await;
    let headers = [("x-mock-no-usage", "1")];

    let body = post_json(address, PATH, &headers, &chat_request(USER_TEXT))
        .await
        .json();
    assert!(body.get("usage").is_none(), "body = {body}");
    assert!(body["choices"][0]["message"]["content"].is_string());

    let response = post_json(address, PATH, &headers, &stream_request()).await;
    let chunks = response.data_chunks();
    assert_eq!(chunks.len(), 7);
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    assert_eq!(
        response.events().last().map(String::as_str),
        Some("data: [DONE]")
    );

    let embedding = json!({"model": "m", "input": "hi"});
    let body = post_json(address, "/v1/embeddings", &headers, &embedding)
        .await
        .json();
    assert!(body.get("usage").is_none(), "body = {body}");
}

#[tokio::test]
async fn error_in_200_json() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(
        address,
        PATH,
        &[("x-mock-error-in-200", "1")],
        &chat_request(USER_TEXT),
    )
    .await;

    assert_eq!(response.status, 200);
    let body = response.json();
    assert_eq!(body["error"]["code"], "mock_error_in_200");
    assert!(body.get("choices").is_none());
}

#[tokio::test]
async fn error_in_200_stream() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(
        address,
        PATH,
        &[("x-mock-error-in-200", "1")],
        &stream_request(),
    )
    .await;

    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let events = response.events();
    assert_eq!(events.len(), 1, "events = {events:#?}");
    let chunks = response.data_chunks();
    assert_eq!(chunks[0]["error"]["code"], "mock_error_in_200");
}

#[tokio::test]
async fn invalid_json_body_rejected() {
    let address = start_mock(MockOptions::default()).await;
    let response = send(
        address,
        "POST",
        PATH,
        &[("Content-Type", "application/json")],
        b"{\"model\": ",
    )
    .await;

    assert_eq!(response.status, 400);
    let body = response.json();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|message| message.contains("not valid JSON")));
}
