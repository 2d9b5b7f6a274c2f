use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{chat_request, content_of, with_field, USER_TEXT};
use crate::mock::test_client::{post_json, start_mock, RawResponse};
use crate::mock::MockOptions;

const PATH: &str = "/v1/chat/completions";

fn stream_request(include_usage: Option<bool>) -> Value {
    let mut request = with_field(chat_request(USER_TEXT), "stream", json!(true));
    if let Some(include_usage) = include_usage {
        request["stream_options"] = json!({"include_usage": include_usage});
    }
    request
}

/// Joins the `delta.content` of every chunk of choice 0.
fn streamed_content(response: &RawResponse) -> String {
    response
        .data_chunks()
        .iter()
        .filter_map(|chunk| chunk["choices"].get(0))
        .filter_map(|choice| choice["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn stream_events_in_order() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(address, PATH, &[], &stream_request(None)).await;

    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert!(
        response.complete,
        "the chunked body lacks its terminating chunk"
    );
    let events = response.events();
    assert_eq!(events.len(), 8, "events = {events:#?}");
    assert_eq!(events.last().map(String::as_str), Some("data: [DONE]"));

    let chunks = response.data_chunks();
    assert_eq!(chunks.len(), 7);
    assert!(chunks
        .iter()
        .all(|chunk| chunk["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    assert!(chunks.iter().all(|chunk| chunk["id"] == chunks[0]["id"]));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for chunk in &chunks[1..6] {
        assert!(chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|piece| !piece.is_empty()));
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
    }
    assert_eq!(chunks[6]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn stream_content_matches_json_reply() {
    let address = start_mock(MockOptions::default()).await;
    let json_reply = post_json(address, PATH, &[], &chat_request(USER_TEXT))
        .await
        .json();
    let streamed = post_json(address, PATH, &[], &stream_request(None)).await;

    assert_eq!(streamed_content(&streamed), content_of(&json_reply));
}

#[tokio::test]
async fn stream_include_usage_adds_chunk() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(address, PATH, &[], &stream_request(Some(true))).await;

    let events = response.events();
    assert_eq!(events.last().map(String::as_str), Some("data: [DONE]"));
    let chunks = response.data_chunks();
    assert_eq!(chunks.len(), 8);
    let usage_chunk = &chunks[7];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 19);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 12);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 31);
    for chunk in &chunks[..7] {
        assert_eq!(chunk.get("usage"), Some(&Value::Null), "chunk = {chunk}");
    }
}

#[tokio::test]
async fn stream_include_usage_false() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(address, PATH, &[], &stream_request(Some(false))).await;

    let chunks = response.data_chunks();
    assert_eq!(chunks.len(), 7);
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
}

#[tokio::test]
async fn stream_chunks_header_sets_count() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(
        address,
        PATH,
        &[("x-mock-chunks", "3")],
        &stream_request(None),
    )
    .await;

    // Role chunk, 3 content chunks, finish chunk.
    assert_eq!(response.data_chunks().len(), 5);
    assert_eq!(response.events().len(), 6);
}

#[tokio::test]
async fn stream_keepalive_comes_first() {
    let address = start_mock(MockOptions::default()).await;
    let response = post_json(
        address,
        PATH,
        &[("x-mock-keepalive", "1")],
        &stream_request(None),
    )
    .await;

    let events = response.events();
    assert_eq!(events[0], ": keep-alive");
    assert!(events[1].starts_with("data: {"));
    assert_eq!(events.len(), 9);
}

#[tokio::test]
async fn stream_n_interleaves_choices() {
    let address = start_mock(MockOptions::default()).await;
    let request = with_field(stream_request(Some(true)), "n", json!(2));
    let response = post_json(address, PATH, &[], &request).await;

    let chunks = response.data_chunks();
    // 2 role chunks, 2 x 5 content chunks, 2 finish chunks and the usage chunk.
    assert_eq!(chunks.len(), 15);
    assert_eq!(chunks[0]["choices"][0]["index"], 0);
    assert_eq!(chunks[1]["choices"][0]["index"], 1);
    assert_eq!(chunks[14]["usage"]["completion_tokens"], 24);
}

#[tokio::test]
async fn stream_chunk_delay_spaces_events() {
    let address = start_mock(MockOptions {
        latency_ms: 0,
        chunk_delay_ms: 30,
    })
    .await;
    let started = Instant::now();
    let response = post_json(address, PATH, &[], &stream_request(None)).await;

    // 8 events have 7 gaps of 30 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(210),
        "elapsed = {:?}",
        started.elapsed()
    );
    assert!(response.complete);

    let started = Instant::now();
    let response = post_json(
        address,
        PATH,
        &[("x-mock-chunk-delay-ms", "0")],
        &stream_request(None),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(210),
        "elapsed = {:?}",
        started.elapsed()
    );
    assert!(response.complete);
}

#[tokio::test]
async fn legacy_stream_uses_text_completion() {
    let address = start_mock(MockOptions::default()).await;
    let request = json!({"model": "m", "prompt": "Once upon a time", "stream": true, "stream_options": {"include_usage": true}});
    let response = post_json(address, "/v1/completions", &[], &request).await;

    assert_eq!(
        response.events().last().map(String::as_str),
        Some("data: [DONE]")
    );
    let chunks = response.data_chunks();
    // 5 content chunks, the finish chunk and the usage chunk; legacy streams have no role chunk.
    assert_eq!(chunks.len(), 7);
    assert!(chunks
        .iter()
        .all(|chunk| chunk["object"] == "text_completion"));
    let text: String = chunks[..5]
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["text"].as_str())
        .collect();
    assert!(
        text.starts_with("Mock completion of: Once upon a time ["),
        "text = {text:?}"
    );
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["usage"]["prompt_tokens"], 4);
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 8);
}
