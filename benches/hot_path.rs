//! Criterion benchmarks of the pure functions on WatchLLM's request path.
//!
//! Run with `cargo bench --bench hot_path`. Each benchmark warms up for 1 s and measures for 2 s,
//! so the whole run takes about 50 seconds. docs/BENCHMARKS.md records the figures.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use watchllm::accounting::usage::count_tokens;
use watchllm::accounting::{ResponseSummary, SseScanner, Usage};
use watchllm::auth::{hash_api_key, KeyEntry, KeySnapshot};
use watchllm::config::ModelPrice;
use watchllm::proxy::request::{parse_request, prepare_parsed, prepare_request};
use watchllm::routing::Endpoint;

/// Keys in the snapshot for the authentication benchmarks.
const SNAPSHOT_KEYS: usize = 100_000;

/// Builds the events of a streamed chat completion with 5 content chunks, in OpenAI's format: the
/// role chunk, 5 content chunks, the finish chunk, the usage chunk (`choices` empty) and `[DONE]`.
/// Each event is one piece, as a provider flushes them.
fn stream_events() -> Vec<Bytes> {
    const HEADER: &str =
        r#""id":"chatcmpl-9f3c2a","object":"chat.completion.chunk","created":1733338800,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1""#;
    let chunk = |delta: &str, finish: &str| {
        format!(r#"data: {{{HEADER},"choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#) + "\n\n"
    };

    let mut events = vec![chunk(r#"{"role":"assistant","content":"","refusal":null}"#, "null")];
    for word in ["The", " capital", " of France", " is", " Paris."] {
        events.push(chunk(&format!(r#"{{"content":"{word}"}}"#), "null"));
    }
    events.push(chunk("{}", r#""stop""#));
    events.push(format!(
        r#"data: {{{HEADER},"choices":[],"usage":{{"prompt_tokens":14,"completion_tokens":7,"total_tokens":21,"prompt_tokens_details":{{"cached_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0}}}}}}"#
    ) + "\n\n");
    events.push("data: [DONE]\n\n".to_string());
    events.into_iter().map(Bytes::from).collect()
}

/// Feeds every event to a new scanner, the last one with `end_of_stream`, and returns the scanner.
fn scan_stream(events: &[Bytes], strip_usage: bool) -> SseScanner {
    let mut scanner = SseScanner::new(strip_usage);
    let last = events.len() - 1;
    for (index, event) in events.iter().enumerate() {
        black_box(scanner.feed(event, index == last));
    }
    scanner
}

fn sse_scanner(c: &mut Criterion) {
    let events = stream_events();
    let checked = scan_stream(&events, true);
    assert_eq!(checked.usage.map(|u| u.total_tokens), Some(21), "the benchmark stream must carry usage");
    assert_eq!(checked.text, "The capital of France is Paris.");

    let mut group = c.benchmark_group("sse_scanner");
    group.bench_function("feed_5_chunks_passthrough", |b| b.iter(|| scan_stream(black_box(&events), false)));
    group.bench_function("feed_5_chunks_strip_usage", |b| b.iter(|| scan_stream(black_box(&events), true)));
    group.finish();
}

fn usage_from_body(c: &mut Criterion) {
    let body = br#"{"id":"chatcmpl-9f3c2a","object":"chat.completion","created":1733338800,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"The capital of France is Paris. It has been the country's capital since the 10th century.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":20,"total_tokens":34,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"system_fingerprint":"fp_0ba0d124f1"}"#;
    assert_eq!(Usage::from_response_body(body).map(|u| u.total_tokens), Some(34));

    assert_eq!(ResponseSummary::read(body).usage.map(|u| u.total_tokens), Some(34));

    c.bench_function("usage/from_response_body", |b| b.iter(|| Usage::from_response_body(black_box(body))));
    // What `logging` runs: usage, the error field and (only without usage) the text, in one parse.
    c.bench_function("usage/response_summary", |b| b.iter(|| ResponseSummary::read(black_box(body))));
}

fn token_counts(c: &mut Criterion) {
    const PROMPT: &str = "What is the capital of France? Answer in one sentence.";
    assert_eq!(count_tokens(PROMPT), 12);
    let mut group = c.benchmark_group("tokens");
    // A text the thread counted before, as a conversation's earlier turns are.
    group.bench_function("count_remembered_12_tokens", |b| b.iter(|| count_tokens(black_box(PROMPT))));
    // A text never seen: a counter makes each one new, so every call runs the tokenizer.
    let mut n = 0u64;
    group.bench_function("count_new_text_13_to_15_tokens", |b| {
        b.iter(|| {
            n += 1;
            count_tokens(black_box(&format!("{PROMPT} {n}")))
        })
    });
    group.finish();
}

fn cost(c: &mut Criterion) {
    let price = ModelPrice { input: 0.15, cached_input: Some(0.075), output: 0.6 };
    c.bench_function("pricing/cost_usd", |b| {
        b.iter(|| black_box(price).cost_usd(black_box(1_200), black_box(256), black_box(350)))
    });
}

fn key_entry(index: usize) -> KeyEntry {
    KeyEntry {
        key_id: format!("key_{index:016x}"),
        project_id: format!("proj_{:08x}", index % 1_000),
        project_name: format!("project-{}", index % 1_000),
        plan: "pro".to_string(),
    }
}

fn authentication(c: &mut Criterion) {
    let presented: Vec<String> = (0..SNAPSHOT_KEYS).map(|i| format!("wllm_{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15)).collect();
    let snapshot = KeySnapshot::new(1, presented.iter().enumerate().map(|(i, key)| (hash_api_key(key), key_entry(i))));
    assert_eq!(snapshot.len(), SNAPSHOT_KEYS);
    let known = &presented[SNAPSHOT_KEYS / 2];
    let unknown = format!("wllm_{:064x}", u128::MAX);
    assert!(snapshot.authenticate(known).is_some());
    assert!(snapshot.authenticate(&unknown).is_none());

    let mut group = c.benchmark_group("auth");
    group.bench_function("hash_api_key", |b| b.iter(|| hash_api_key(black_box(known))));
    group.bench_function("authenticate_100k_keys_valid", |b| b.iter(|| snapshot.authenticate(black_box(known)).is_some()));
    group.bench_function("authenticate_100k_keys_unknown", |b| b.iter(|| snapshot.authenticate(black_box(&unknown)).is_none()));
    group.finish();
}

fn request_preparation(c: &mut Criterion) {
    const PLAIN: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France? Answer in one sentence."}],"temperature":0.2,"max_tokens":64}"#;
    const STREAMED: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France? Answer in one sentence."}],"temperature":0.2,"max_tokens":64,"stream":true}"#;
    let prepare = |body: &'static [u8], upstream_model: Option<&'static str>| {
        move || prepare_request(Endpoint::ChatCompletions, Bytes::from_static(black_box(body)), upstream_model).expect("benchmark body is valid")
    };
    assert_eq!(prepare(PLAIN, Some("gpt-4o-mini"))().body, PLAIN, "a plain request must go upstream unchanged");
    assert_ne!(prepare(STREAMED, Some("gpt-4o-mini"))().body, STREAMED, "a stream must be rewritten to ask for usage");

    let mut group = c.benchmark_group("prepare_request");
    // Same model upstream: the body is parsed and validated, then forwarded unchanged.
    group.bench_function("chat_unchanged", |b| b.iter(prepare(PLAIN, Some("gpt-4o-mini"))));
    // Another upstream model id: the body is parsed, rewritten and serialized again.
    group.bench_function("chat_model_renamed", |b| b.iter(prepare(PLAIN, Some("openai/gpt-4o-mini"))));
    // A stream: `stream_options.include_usage` is added, so the body is serialized again.
    group.bench_function("chat_stream_usage_added", |b| b.iter(prepare(STREAMED, Some("gpt-4o-mini"))));
    // What `request_filter` runs: `parse_request` once, its value then reused by `prepare_parsed`.
    group.bench_function("chat_parse_then_prepare", |b| {
        b.iter(|| {
            let parsed = parse_request(Endpoint::ChatCompletions, black_box(PLAIN)).expect("benchmark body is valid");
            prepare_parsed(Endpoint::ChatCompletions, Bytes::from_static(PLAIN), parsed, Some("gpt-4o-mini")).expect("benchmark body is valid")
        })
    });
    group.finish();
}

fn short_runs() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2)).sample_size(50)
}

criterion_group! {
    name = hot_path;
    config = short_runs();
    targets = sse_scanner, usage_from_body, token_counts, cost, authentication, request_preparation
}
criterion_main!(hot_path);
