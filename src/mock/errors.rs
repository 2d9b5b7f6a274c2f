//! OpenAI-style error bodies, for rejected requests and for failures injected by `x-mock-*` headers.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// An error response with an OpenAI-style body: `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone)]
pub(crate) struct MockError {
    pub status: StatusCode,
    pub message: String,
    pub error_type: &'static str,
    pub code: &'static str,
    /// Value of the `Retry-After` response header, if any.
    pub retry_after: Option<HeaderValue>,
}

impl MockError {
    /// Builds a 400 `invalid_request_error`, for a body or header the mock cannot use.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            error_type: "invalid_request_error",
            code: "invalid_request",
            retry_after: None,
        }
    }

    /// Builds a 404 for a path the mock does not serve.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            error_type: "invalid_request_error",
            code: "not_found",
            retry_after: None,
        }
    }

    /// Builds the failure that the `x-mock-status` header requests, with the error type and code
    /// that OpenAI uses for that status where there is a usual one.
    pub fn injected(status: StatusCode, retry_after: Option<HeaderValue>) -> Self {
        let (error_type, code) = match status.as_u16() {
            400 => ("invalid_request_error", "invalid_request"),
            401 => ("invalid_request_error", "invalid_api_key"),
            403 => ("permission_error", "permission_denied"),
            404 => ("invalid_request_error", "model_not_found"),
            408 => ("timeout_error", "timeout"),
            413 => ("invalid_request_error", "request_too_large"),
            429 => ("requests", "rate_limit_exceeded"),
            503 => ("server_error", "service_unavailable"),
            _ if status.is_server_error() => ("server_error", "server_error"),
            _ if status.is_client_error() => ("invalid_request_error", "mock_status"),
            _ => ("mock_error", "mock_status"),
        };
        Self {
            status,
            message: format!(
                "Mock upstream failure with status {} because the request set the x-mock-status header.",
                status.as_u16()
            ),
            error_type,
            code,
            retry_after,
        }
    }

    /// Builds the error that `x-mock-error-in-200` places in a 200 response.
    pub fn in_success_response() -> Self {
        Self {
            status: StatusCode::OK,
            message: "Mock upstream error inside a 200 response because the request set the x-mock-error-in-200 header.".to_owned(),
            error_type: "server_error",
            code: "mock_error_in_200",
            retry_after: None,
        }
    }

    /// Returns the OpenAI-style JSON body of this error.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": null,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for MockError {
    fn into_response(self) -> Response {
        tracing::debug!(
            status = self.status.as_u16(),
            code = self.code,
            "mock upstream returns an error response"
        );
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(value) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
