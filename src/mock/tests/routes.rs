use serde_json::json;
use sha2::{Digest, Sha256};

use super::{chat_request, USER_TEXT};
use crate::mock::test_client::{get, post_json, send, start_mock};
use crate::mock::MockOptions;

#[tokio::test]
async fn completions_json_reply() {
    let address = start_mock(MockOptions::default()).await;
    let request = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time"});
    let body = post_json(address, "/v1/completions", &[], &request)
        .await
        .json();

    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "gpt-3.5-turbo-instruct");
    assert!(body["id"].as_str().expect("id").starts_with("cmpl-"));
    let text = body["choices"][0]["text"].as_str().expect("text");
    assert!(
        text.starts_with("Mock completion of: Once upon a time ["),
        "text = {text:?}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(body["usage"]["completion_tokens"], 8);
    assert_eq!(body["usage"]["total_tokens"], 12);
}

#[tokio::test]
async fn completions_prompt_array() {
    let address = start_mock(MockOptions::default()).await;
    let request = json!({"model": "m", "prompt": ["first prompt", [11, 22, 33]], "n": 2});
    let body = post_json(address, "/v1/completions", &[], &request)
        .await
        .json();

    let choices = body["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 4);
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
    }
    assert_eq!(choices[0]["text"], choices[1]["text"]);
    assert_ne!(choices[1]["text"], choices[2]["text"]);
    assert!(choices[2]["text"]
        .as_str()
        .expect("text")
        .starts_with("Mock completion of: 11 22 33 ["));
    assert_eq!(body["usage"]["prompt_tokens"], 5);
}

#[tokio::test]
async fn embeddings_default_dimension() {
    let address = start_mock(MockOptions::default()).await;
    let request = json!({"model": "text-embedding-3-small", "input": "hello world"});
    let body = post_json(address, "/v1/embeddings", &[], &request)
        .await
        .json();

    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["index"], 0);
    assert_eq!(
        body["data"][0]["embedding"]
            .as_array()
            .expect("vector")
            .len(),
        8
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 2, "total_tokens": 2})
    );

    let again = post_json(address, "/v1/embeddings", &[], &request)
        .await
        .json();
    assert_eq!(body["data"], again["data"]);
}

#[tokio::test]
async fn embeddings_array_and_dimensions() {
    let address = start_mock(MockOptions::default()).await;
    let request =
        json!({"model": "m", "input": ["alpha", "beta gamma", [1, 2, 3]], "dimensions": 16});
    let body = post_json(address, "/v1/embeddings", &[], &request)
        .await
        .json();

    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["index"], index);
        assert_eq!(item["embedding"].as_array().expect("vector").len(), 16);
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(body["usage"]["prompt_tokens"], 6);
}

#[tokio::test]
async fn embeddings_base64_encoding() {
    let address = start_mock(MockOptions::default()).await;
    let request = json!({"model": "m", "input": "hello", "encoding_format": "base64"});
    let body = post_json(address, "/v1/embeddings", &[], &request)
        .await
        .json();

    let encoded = body["data"][0]["embedding"]
        .as_str()
        .expect("base64 string");
    // 8 floats of 4 bytes are 32 bytes, which base64 encodes in 44 characters.
    assert_eq!(encoded.len(), 44);
    assert!(encoded.ends_with('='));

    let bad = json!({"model": "m", "input": "hello", "encoding_format": "hex"});
    assert_eq!(
        post_json(address, "/v1/embeddings", &[], &bad).await.status,
        400
    );
    let bad = json!({"model": "m", "input": "hello", "dimensions": 0});
    assert_eq!(
        post_json(address, "/v1/embeddings", &[], &bad).await.status,
        400
    );
}

#[tokio::test]
async fn models_list_and_lookup() {
    let address = start_mock(MockOptions::default()).await;
    let body = get(address, "/v1/models").await.json();

    assert_eq!(body["object"], "list");
    let models = body["data"].as_array().expect("data");
    assert!(models.len() >= 2);
    assert!(models.iter().all(|model| model["object"] == "model"));

    let id = models[0]["id"].as_str().expect("id");
    let model = get(address, &format!("/v1/models/{id}")).await;
    assert_eq!(model.status, 200);
    assert_eq!(model.json()["id"], id);
    assert_eq!(get(address, "/v1/models/no-such-model").await.status, 404);
}

#[tokio::test]
async fn unknown_path_not_found() {
    let address = start_mock(MockOptions::default()).await;
    let response = get(address, "/v2/anything").await;

    assert_eq!(response.status, 404);
    assert_eq!(response.json()["error"]["code"], "not_found");
}

#[tokio::test]
async fn last_request_records_post() {
    let address = start_mock(MockOptions::default()).await;
    assert_eq!(get(address, "/mock/last-request").await.status, 404);
    assert_eq!(
        get(address, "/mock/requests").await.json(),
        json!({"count": 0})
    );

    let request = chat_request(USER_TEXT);
    let headers = [("Authorization", "Bearer provider-key"), ("X-Custom", "a")];
    post_json(address, "/v1/chat/completions", &headers, &request).await;
    post_json(
        address,
        "/v1/chat/completions",
        &[("x-mock-status", "500")],
        &request,
    )
    .await;

    assert_eq!(
        get(address, "/mock/requests").await.json(),
        json!({"count": 2})
    );
    let last = get(address, "/mock/last-request").await.json();
    assert_eq!(last["path"], "/v1/chat/completions");
    assert_eq!(last["headers"]["x-mock-status"], "500");
    assert!(last["headers"].get("authorization").is_none());

    post_json(address, "/v1/chat/completions", &headers, &request).await;
    let last = get(address, "/mock/last-request").await.json();
    let body = request.to_string();
    assert_eq!(last["headers"]["authorization"], "Bearer provider-key");
    assert_eq!(last["headers"]["x-custom"], "a");
    assert_eq!(last["body"], body.as_str());
    assert_eq!(last["body_len"], body.len());
    assert_eq!(
        last["body_sha256"],
        hex::encode(Sha256::digest(body.as_bytes()))
    );
}

#[tokio::test]
async fn large_body_arrives_intact() {
    let address = start_mock(MockOptions::default()).await;
    for size in [1024 * 1024, 16 * 1024 * 1024] {
        let padding: String = (0..size)
            .map(|index| char::from(b'a' + (index % 26) as u8))
            .collect();
        let request = json!({
            "model": "m",
            "messages": [{"role": "user", "content": padding}],
        });
        let body = request.to_string();
        let response = post_json(address, "/v1/chat/completions", &[], &request).await;
        assert_eq!(response.status, 200, "size = {size}");

        let last = get(address, "/mock/last-request").await.json();
        assert_eq!(last["body_len"], body.len(), "size = {size}");
        assert_eq!(
            last["body_sha256"],
            hex::encode(Sha256::digest(body.as_bytes())),
            "size = {size}"
        );
        assert!(last["body"].is_null(), "size = {size}");
    }
}

#[tokio::test]
async fn oversized_body_rejected() {
    let address = start_mock(MockOptions::default()).await;
    let body = vec![b' '; crate::mock::MAX_BODY_BYTES + 1];
    let response = send(address, "POST", "/v1/chat/completions", &[], &body).await;
    assert_eq!(response.status, 413);
}
