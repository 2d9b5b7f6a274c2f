//! `POST /v1/embeddings` and the model list under `GET /v1/models`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::content::{self, TextInput};
use super::errors::MockError;
use super::request::{self, MockState};

pub(crate) const EMBEDDINGS_PATH: &str = "/v1/embeddings";

/// Vector length when the request does not set `dimensions`.
pub(crate) const DEFAULT_DIMENSIONS: u64 = 8;

/// Largest `dimensions` accepted, so that one request cannot make the mock build a huge reply.
const MAX_DIMENSIONS: u64 = 8192;

/// Models that `GET /v1/models` lists. Requests may name any model, and replies echo it.
pub(crate) const MODEL_IDS: [&str; 4] = [
    "mock-gpt-4o",
    "mock-gpt-4o-mini",
    "mock-gpt-3.5-turbo-instruct",
    "mock-text-embedding-3-small",
];

/// `created` time of the listed models, a fixed Unix time so the list is deterministic.
const MODEL_CREATED: u64 = 1_700_000_000;

/// Handles `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, MockError> {
    let controls = state.begin(EMBEDDINGS_PATH, &headers, &body).await?;
    let request = request::parse_object(&body)?;

    let inputs = content::parse_text_inputs(request.get("input"), "input")
        .map_err(MockError::invalid_request)?;
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(value) => value
            .as_u64()
            .filter(|dimensions| (1..=MAX_DIMENSIONS).contains(dimensions))
            .ok_or_else(|| {
                MockError::invalid_request(format!(
                    "Invalid `dimensions`: expected an integer from 1 to {MAX_DIMENSIONS}, got {value}."
                ))
            })?,
    };
    let base64 = match request.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(MockError::invalid_request(format!(
                "Invalid `encoding_format`: expected \"float\" or \"base64\", got {other:?}."
            )));
        }
    };

    if controls.error_in_200 {
        return Ok((
            StatusCode::OK,
            Json(MockError::in_success_response().body()),
        )
            .into_response());
    }

    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(input, dimensions);
            let embedding = if base64 {
                json!(encode_base64(&vector))
            } else {
                json!(vector)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let prompt_tokens: u64 = inputs.iter().map(|input| input.tokens).sum();

    let mut body = json!({
        "object": "list",
        "data": data,
        "model": request::model_name(&request),
    });
    if !controls.no_usage {
        body["usage"] = json!({ "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens });
    }
    Ok(Json(body).into_response())
}

/// Derives a unit-length vector of `dimensions` floats from the SHA-256 of the input. Each
/// 32-bit word of the hash stream `SHA-256(seed || block number)` maps to a value in [-1, 1].
pub(crate) fn embedding_vector(input: &TextInput, dimensions: u64) -> Vec<f32> {
    let kind: &[u8] = if input.is_token_array {
        b"tokens:"
    } else {
        b"text:"
    };
    let seed = Sha256::new()
        .chain_update(kind)
        .chain_update(input.text.as_bytes())
        .finalize();

    let mut values: Vec<f64> = Vec::new();
    let mut block_number = 0_u32;
    while (values.len() as u64) < dimensions {
        let block = Sha256::new()
            .chain_update(seed)
            .chain_update(block_number.to_be_bytes())
            .finalize();
        for word in block.chunks_exact(4) {
            let raw = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            values.push(f64::from(raw) / f64::from(u32::MAX) * 2.0 - 1.0);
        }
        block_number += 1;
    }
    values.truncate(dimensions as usize);

    let norm = values.iter().map(|value| value * value).sum::<f64>().sqrt();
    if norm > 0.0 {
        for value in &mut values {
            *value /= norm;
        }
    }
    values.into_iter().map(|value| value as f32).collect()
}

/// Encodes the floats as little-endian `f32` bytes in standard base64, for
/// `"encoding_format": "base64"`. The openai-python client decodes this with numpy as `float32`.
pub(crate) fn encode_base64(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();

    let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b0 = group[0];
        let b1 = group.get(1).copied().unwrap_or(0);
        let b2 = group.get(2).copied().unwrap_or(0);
        let indices = [
            b0 >> 2,
            ((b0 & 0x03) << 4) | (b1 >> 4),
            ((b1 & 0x0f) << 2) | (b2 >> 6),
            b2 & 0x3f,
        ];
        for (position, index) in indices.into_iter().enumerate() {
            // A group of n bytes produces n + 1 characters, and '=' pads the rest.
            if position <= group.len() {
                encoded.push(char::from(ALPHABET[usize::from(index)]));
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}

/// Handles `GET /v1/models`.
pub(crate) async fn list_models() -> Json<Value> {
    let data: Vec<Value> = MODEL_IDS.iter().map(|id| model_object(id)).collect();
    Json(json!({ "object": "list", "data": data }))
}

/// Handles `GET /v1/models/{model}`: the model object for a listed id, else a 404 error.
pub(crate) async fn get_model(Path(model): Path<String>) -> Result<Json<Value>, MockError> {
    if MODEL_IDS.contains(&model.as_str()) {
        return Ok(Json(model_object(&model)));
    }
    Err(MockError::not_found(format!(
        "The model {model:?} does not exist."
    )))
}

fn model_object(id: &str) -> Value {
    json!({ "id": id, "object": "model", "created": MODEL_CREATED, "owned_by": "watchllm-mock" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> TextInput {
        TextInput {
            text: value.to_owned(),
            tokens: 1,
            is_token_array: false,
        }
    }

    #[test]
    fn vector_is_deterministic_unit_length() {
        let first = embedding_vector(&text("hello"), 8);
        assert_eq!(first, embedding_vector(&text("hello"), 8));
        assert_ne!(first, embedding_vector(&text("hello!"), 8));
        let norm: f32 = first.iter().map(|value| value * value).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm = {norm}");
        assert_eq!(embedding_vector(&text("hello"), 21).len(), 21);
    }

    #[test]
    fn base64_matches_known_values() {
        // 1.0_f32 is 00 00 80 3f in little-endian order.
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
        assert_eq!(encode_base64(&[1.0, 1.0]), "AACAPwAAgD8=");
        assert_eq!(encode_base64(&[1.0, 1.0, 1.0]), "AACAPwAAgD8AAIA/");
        assert_eq!(encode_base64(&[]), "");
    }
}
