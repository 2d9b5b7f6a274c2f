//! Parsing, validating and rewriting an API request body before it goes upstream.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::GatewayError;
use crate::routing::Endpoint;

/// A validated request, ready to forward.
#[derive(Debug)]
pub struct PreparedRequest {
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for a usage chunk in its stream.
    pub client_wants_usage: bool,
    /// The body to send upstream: the client's bytes unchanged unless a rewrite was needed.
    pub body: Bytes,
    /// The parsed body, kept for the token estimate when the provider reports no usage.
    pub json: Value,
}

/// Parses the body as JSON and checks the fields the endpoint requires.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<Value, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(GatewayError::invalid_json)?;
    let Some(object) = value.as_object() else {
        return Err(GatewayError::invalid_request("The request body must be a JSON object."));
    };

    match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() => {}
        Some(Value::String(_)) | None | Some(Value::Null) => return Err(GatewayError::missing_parameter("model")),
        Some(_) => return Err(GatewayError::invalid_request("'model' must be a string.")),
    }
    let required = match endpoint {
        Endpoint::ChatCompletions => "messages",
        Endpoint::Completions => "prompt",
        Endpoint::Embeddings => "input",
        Endpoint::Models => return Ok(value),
    };
    match object.get(required) {
        None | Some(Value::Null) => return Err(GatewayError::missing_parameter(required)),
        Some(Value::Array(items)) if required == "messages" && items.is_empty() => {
            return Err(GatewayError::invalid_request("'messages' must contain at least one message."))
        }
        Some(Value::Array(_)) => {}
        Some(_) if required == "messages" => return Err(GatewayError::invalid_request("'messages' must be an array.")),
        Some(_) => {}
    }
    if let Some(stream) = object.get("stream") {
        if !stream.is_boolean() && !stream.is_null() {
            return Err(GatewayError::invalid_request("'stream' must be a boolean."));
        }
    }
    Ok(value)
}

/// Validates the body and prepares what goes upstream.
///
/// The body is rewritten only when needed: to send the provider's model id, and to ask a stream for
/// its usage chunk (`stream_options.include_usage`) so that streamed requests can be accounted.
/// Otherwise the client's bytes go upstream unchanged.
pub fn prepare_request(endpoint: Endpoint, body: Bytes, upstream_model: Option<&str>) -> Result<PreparedRequest, GatewayError> {
    let json = parse_request(endpoint, &body)?;
    prepare_parsed(endpoint, body, json, upstream_model)
}

/// Prepares a body that [`parse_request`] has already parsed into `json`, as [`prepare_request`]
/// does, so that the request path parses each body once.
pub fn prepare_parsed(endpoint: Endpoint, body: Bytes, mut json: Value, upstream_model: Option<&str>) -> Result<PreparedRequest, GatewayError> {
    let model = json["model"].as_str().unwrap_or_default().to_string();
    let stream = endpoint.can_stream() && json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let client_wants_usage = stream && json.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);

    let rename = upstream_model.filter(|upstream| *upstream != model);
    let add_usage = stream && !client_wants_usage;
    if rename.is_none() && !add_usage {
        return Ok(PreparedRequest { model, stream, client_wants_usage, body, json });
    }

    let mut rewritten = json.clone();
    if let Some(object) = rewritten.as_object_mut() {
        if let Some(upstream) = rename {
            object.insert("model".into(), Value::String(upstream.to_string()));
        }
        if add_usage {
            let options = object.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Some(options) = options.as_object_mut() {
                options.insert("include_usage".into(), Value::Bool(true));
            }
        }
    }
    let body = Bytes::from(serde_json::to_vec(&rewritten).map_err(|e| GatewayError::internal(e.to_string()))?);
    json = rewritten;
    Ok(PreparedRequest { model, stream, client_wants_usage, body, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<PreparedRequest, GatewayError> {
        prepare_request(Endpoint::ChatCompletions, Bytes::from(body.to_string()), None)
    }

    #[test]
    fn plain_request_forwarded_byte_for_byte() {
        let body = r#"{ "model":"m",  "messages":[{"role":"user","content":"hi"}] }"#;
        let prepared = chat(body).unwrap();
        assert_eq!(prepared.body, body.as_bytes());
        assert!(!prepared.stream);
    }

    #[test]
    fn stream_asks_upstream_for_usage() {
        let prepared = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#).unwrap();
        assert!(prepared.stream);
        assert!(!prepared.client_wants_usage);
        let sent: Value = serde_json::from_slice(&prepared.body).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
    }

    #[test]
    fn client_usage_request_kept() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let prepared = chat(body).unwrap();
        assert!(prepared.client_wants_usage);
        assert_eq!(prepared.body, body.as_bytes());
    }

    #[test]
    fn upstream_model_rewritten() {
        let prepared = prepare_request(
            Endpoint::ChatCompletions,
            Bytes::from_static(br#"{"model":"fast","messages":[{"role":"user","content":"hi"}]}"#),
            Some("vendor/fast-v2"),
        )
        .unwrap();
        assert_eq!(prepared.model, "fast");
        let sent: Value = serde_json::from_slice(&prepared.body).unwrap();
        assert_eq!(sent["model"], "vendor/fast-v2");
    }

    #[test]
    fn invalid_json_is_400_with_parser_message() {
        let err = chat("{\"model\": ").unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        assert_eq!(err.code, "invalid_json");
        assert!(err.message.contains("EOF"), "{}", err.message);
    }

    #[test]
    fn missing_fields_named() {
        let err = chat(r#"{"messages":[]}"#).unwrap_err();
        assert_eq!(err.code, "missing_required_parameter");
        assert!(err.message.contains("model"));
        let err = chat(r#"{"model":"m"}"#).unwrap_err();
        assert!(err.message.contains("messages"));
        let err = prepare_request(Endpoint::Embeddings, Bytes::from_static(br#"{"model":"m"}"#), None).unwrap_err();
        assert!(err.message.contains("input"));
    }

    #[test]
    fn embeddings_never_stream() {
        let prepared =
            prepare_request(Endpoint::Embeddings, Bytes::from_static(br#"{"model":"m","input":"x","stream":true}"#), None).unwrap();
        assert!(!prepared.stream);
    }

    #[test]
    fn non_object_rejected() {
        assert_eq!(chat("[1,2]").unwrap_err().status.as_u16(), 400);
        assert_eq!(chat(r#"{"model":"m","messages":"hi"}"#).unwrap_err().status.as_u16(), 400);
    }
}
