//! The one error type of the request path. Every error the gateway itself produces becomes an
//! OpenAI-style JSON body (`{"error":{"message","type","code"}}`) in [`GatewayError::body`];
//! errors from a provider pass through untouched and never become a `GatewayError`.

use http::StatusCode;
use serde_json::json;

/// Which side caused the error, for logs and the usage event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    Client,
    Upstream,
    Gateway,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError {
    pub status: StatusCode,
    /// OpenAI error `type`, such as `invalid_request_error`.
    pub kind: &'static str,
    /// OpenAI error `code`, such as `model_not_found`; also the low-cardinality label for metrics.
    pub code: &'static str,
    pub message: String,
    pub source: ErrorSource,
}

impl GatewayError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, source: ErrorSource, message: impl Into<String>) -> Self {
        GatewayError { status, kind, code, message: message.into(), source }
    }

    pub fn missing_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            ErrorSource::Client,
            "No API key provided. Send it as 'Authorization: Bearer KEY' or in the 'x-api-key' header.",
        )
    }

    pub fn invalid_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            ErrorSource::Client,
            "Invalid API key: the key is unknown or has been revoked.",
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            ErrorSource::Client,
            format!("Unknown request URL: {path}. Supported: POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, GET /v1/models."),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            ErrorSource::Client,
            format!("Method {method} is not allowed on {path}."),
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            ErrorSource::Client,
            format!("Request body exceeds the gateway's limit of {limit} bytes."),
        )
    }

    pub fn unsupported_encoding(encoding: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_content_encoding",
            ErrorSource::Client,
            format!("Unsupported Content-Encoding {encoding:?}; send identity or gzip."),
        )
    }

    pub fn corrupt_body(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_body_encoding",
            ErrorSource::Client,
            format!("Failed to decode the gzip request body: {reason}"),
        )
    }

    pub fn invalid_json(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            ErrorSource::Client,
            format!("Invalid JSON in request body: {reason}"),
        )
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", ErrorSource::Client, message)
    }

    pub fn missing_parameter(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_required_parameter",
            ErrorSource::Client,
            format!("Missing required parameter: '{name}'."),
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            ErrorSource::Client,
            format!("The model '{model}' does not exist on this gateway. GET /v1/models lists the available models."),
        )
    }

    pub fn upstream_unreachable(provider: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "upstream_connect_failed",
            ErrorSource::Upstream,
            format!("Failed to connect to provider '{provider}'."),
        )
    }

    pub fn upstream_timeout(provider: &str) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "upstream_timeout",
            ErrorSource::Upstream,
            format!("Provider '{provider}' timed out."),
        )
    }

    pub fn upstream_failed(provider: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "upstream_failed",
            ErrorSource::Upstream,
            format!("Provider '{provider}' closed the connection or sent an invalid response."),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", ErrorSource::Gateway, message)
    }

    /// Renders the OpenAI-style JSON body.
    pub fn body(&self) -> Vec<u8> {
        let body = json!({ "error": { "message": self.message, "type": self.kind, "code": self.code, "param": null } });
        body.to_string().into_bytes()
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let err = GatewayError::model_not_found("gpt-x");
        let value: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        assert_eq!(value["error"]["code"], "model_not_found");
        assert_eq!(value["error"]["type"], "invalid_request_error");
        assert!(value["error"]["message"].as_str().unwrap().contains("gpt-x"));
        assert_eq!(err.status, StatusCode::NOT_FOUND);
    }
}
