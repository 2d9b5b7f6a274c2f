//! Responses the gateway writes itself. Every gateway error reaches the client through
//! [`send_error`], so all of them share one shape.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::error::GatewayError;

/// Response header naming the request id, for matching a client's report to the gateway's log.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-watchllm-request-id");

/// Writes a complete JSON response.
pub async fn send_json(session: &mut Session, status: u16, request_id: &str, body: Vec<u8>) -> Result<()> {
    send_json_with_headers(session, status, request_id, body, &[]).await
}

/// Writes a complete JSON response with `extra` headers.
pub async fn send_json_with_headers(session: &mut Session, status: u16, request_id: &str, body: Vec<u8>, extra: &[(&'static HeaderName, HeaderValue)]) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(4 + extra.len()))?;
    add_headers(&mut header, extra);
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_static_header(&REQUEST_ID_HEADER, request_id_value(request_id)?);
    session.write_response_header(Box::new(header), false).await?;
    session.write_response_body(Some(Bytes::from(body)), true).await
}

/// Adds `extra` headers, such as the rate-limit figures and `Retry-After`, to a response.
pub fn add_headers(header: &mut ResponseHeader, extra: &[(&'static HeaderName, HeaderValue)]) {
    for (name, value) in extra {
        header.insert_static_header(name, value.clone());
    }
}

/// Returns the request id as a header value.
pub fn request_id_value(request_id: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(request_id).map_err(|e| pingora::Error::because(pingora::ErrorType::InternalError, "invalid request id for a header", e))
}

/// Writes a gateway error as an OpenAI-style JSON response.
pub async fn send_error(session: &mut Session, request_id: &str, error: &GatewayError) -> Result<()> {
    send_json(session, error.status.as_u16(), request_id, error.body()).await
}

/// Writes a gateway error with `extra` headers, such as `Retry-After`.
pub async fn send_error_with_headers(session: &mut Session, request_id: &str, error: &GatewayError, extra: &[(&'static HeaderName, HeaderValue)]) -> Result<()> {
    send_json_with_headers(session, error.status.as_u16(), request_id, error.body(), extra).await
}
