//! Server-sent event streams for `"stream": true` requests.
//!
//! A stream is built as a list of events first and then sent one event per body frame, with the
//! chunk delay between frames. Building the list up front keeps the event order testable without
//! a network.

use std::io;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde_json::{json, Value};

use super::content::{Reply, Usage};
use super::controls::Controls;
use super::errors::MockError;

/// Wait before failing a cut stream, so the server writes the frames already sent before it
/// drops the connection.
const CUT_FLUSH_WAIT: Duration = Duration::from_millis(20);

/// The SSE comment that `x-mock-keepalive` sends before the first chunk.
pub(crate) const KEEPALIVE_EVENT: &str = ": keep-alive\n\n";

/// The invalid event that `x-mock-malformed` inserts in the middle of a stream.
pub(crate) const MALFORMED_EVENT: &str = "data: {not json\n\n";

pub(crate) const DONE_EVENT: &str = "data: [DONE]\n\n";

/// Object type of the chunks: chat (`chat.completion.chunk`) or legacy (`text_completion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    Chat,
    Completion,
}

/// Everything a stream carries apart from the `x-mock-*` controls.
#[derive(Debug, Clone)]
pub(crate) struct StreamPlan {
    pub kind: StreamKind,
    pub id: String,
    pub created: u64,
    pub model: String,
    /// One reply per choice, in index order.
    pub replies: Vec<Reply>,
    /// The usage chunk, present when the request set `stream_options.include_usage` and
    /// `x-mock-no-usage` is off. Every other chunk then has `"usage": null`, as the OpenAI API
    /// reference for `stream_options` describes.
    pub usage: Option<Usage>,
}

/// The events of one stream, and whether the body ends with an error instead of its last frame.
#[derive(Debug, Clone)]
pub(crate) struct StreamEvents {
    pub events: Vec<Bytes>,
    pub cut: bool,
}

impl StreamPlan {
    /// Builds the events in order: the optional keep-alive comment, the role chunk (chat only),
    /// the content chunks, the finish chunk, the optional usage chunk and `data: [DONE]`.
    pub fn events(&self, controls: &Controls) -> StreamEvents {
        let mut events = Vec::new();
        if controls.keepalive {
            events.push(Bytes::from_static(KEEPALIVE_EVENT.as_bytes()));
        }
        if self.kind == StreamKind::Chat {
            for index in 0..self.replies.len() {
                events.push(self.chunk_event(
                    index,
                    json!({"role": "assistant", "content": ""}),
                    None,
                ));
            }
        }

        let pieces: Vec<Vec<&str>> = self
            .replies
            .iter()
            .map(|reply| split_text(&reply.text, controls.chunks))
            .collect();
        let content_total: usize = pieces.iter().map(Vec::len).sum();
        let malformed_after = (content_total as u64 / 2).max(1);
        let steps = pieces.iter().map(Vec::len).max().unwrap_or(0);

        let mut content_sent = 0_u64;
        if controls.cut_after == Some(0) {
            return StreamEvents { events, cut: true };
        }
        for step in 0..steps {
            for (index, choice_pieces) in pieces.iter().enumerate() {
                let Some(piece) = choice_pieces.get(step) else {
                    continue;
                };
                events.push(self.content_event(index, piece));
                content_sent += 1;
                if controls.malformed && content_sent == malformed_after {
                    events.push(Bytes::from_static(MALFORMED_EVENT.as_bytes()));
                }
                if controls.cut_after == Some(content_sent) {
                    return StreamEvents { events, cut: true };
                }
            }
        }

        for (index, reply) in self.replies.iter().enumerate() {
            let delta = match self.kind {
                StreamKind::Chat => json!({}),
                StreamKind::Completion => json!(""),
            };
            events.push(self.chunk_event(index, delta, Some(reply.finish_reason)));
        }
        if let Some(usage) = self.usage {
            let mut chunk = self.chunk_header();
            chunk["choices"] = json!([]);
            chunk["usage"] = usage.to_json();
            events.push(data_event(&chunk));
        }
        events.push(Bytes::from_static(DONE_EVENT.as_bytes()));
        StreamEvents { events, cut: false }
    }

    fn chunk_header(&self) -> Value {
        match self.kind {
            StreamKind::Chat => json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "fp_mock",
            }),
            StreamKind::Completion => json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
            }),
        }
    }

    fn content_event(&self, index: usize, piece: &str) -> Bytes {
        let delta = match self.kind {
            StreamKind::Chat => json!({ "content": piece }),
            StreamKind::Completion => json!(piece),
        };
        self.chunk_event(index, delta, None)
    }

    /// Builds one chunk with one choice. `delta` is the chat `delta` object or the legacy `text`.
    fn chunk_event(&self, index: usize, delta: Value, finish_reason: Option<&str>) -> Bytes {
        let choice = match self.kind {
            StreamKind::Chat => json!({
                "index": index,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
            StreamKind::Completion => json!({
                "text": delta,
                "index": index,
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        };
        let mut chunk = self.chunk_header();
        chunk["choices"] = json!([choice]);
        if self.usage.is_some() {
            chunk["usage"] = Value::Null;
        }
        data_event(&chunk)
    }
}

fn data_event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// Splits `text` into at most `parts` pieces of nearly equal character counts. Short texts get
/// one piece per character, and an empty text gets one empty piece.
pub(crate) fn split_text(text: &str, parts: u64) -> Vec<&str> {
    let mut boundaries: Vec<usize> = text.char_indices().map(|(offset, _)| offset).collect();
    boundaries.push(text.len());
    let char_count = boundaries.len() - 1;
    let parts = usize::try_from(parts)
        .unwrap_or(usize::MAX)
        .min(char_count)
        .max(1);

    (0..parts)
        .map(|part| {
            let start = boundaries[part * char_count / parts];
            let end = boundaries[(part + 1) * char_count / parts];
            &text[start..end]
        })
        .collect()
}

/// Builds the `text/event-stream` response that sends `stream.events` with `delay` between them.
/// A cut stream then fails its body, so the server closes the connection without the
/// terminating chunk of the chunked encoding.
pub(crate) fn event_stream_response(stream: StreamEvents, delay: Duration) -> Response {
    let StreamEvents { events, cut } = stream;
    let frames = async_stream::stream! {
        for (position, event) in events.into_iter().enumerate() {
            if position > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            yield Ok::<Bytes, io::Error>(event);
        }
        if cut {
            tokio::time::sleep(CUT_FLUSH_WAIT).await;
            yield Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "stream cut by the x-mock-cut-after header",
            ));
        }
    };

    let mut response = Response::new(Body::from_stream(frames));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Builds the 200 stream that `x-mock-error-in-200` requests: one `data: {"error":...}` event,
/// then the end of the body without `data: [DONE]`.
pub(crate) fn error_stream_response(error: &MockError) -> Response {
    let events = vec![data_event(&error.body())];
    event_stream_response(StreamEvents { events, cut: false }, Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_text_keeps_all_characters() {
        let text = "Mock reply to: héllo [abc]";
        for parts in [1, 2, 5, 7, 100] {
            let pieces = split_text(text, parts);
            assert_eq!(pieces.concat(), text, "parts = {parts}");
            assert!(
                pieces.iter().all(|piece| !piece.is_empty()),
                "parts = {parts}"
            );
        }
        assert_eq!(split_text(text, 5).len(), 5);
        assert_eq!(split_text("abc", 5).len(), 3);
        assert_eq!(split_text("", 5), vec![""]);
    }
}
