//! A server-sent events scanner for streamed completions.
//!
//! It reads the stream as it passes, without holding it back: it finds the usage chunk (even after
//! blank lines, comments and keep-alives), the finish reason, the `[DONE]` marker and an error sent
//! as the first event, and keeps the streamed text for a token estimate when no usage arrives. When
//! the client did not ask for usage, it removes the usage chunk that the gateway requested for itself.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::usage::Usage;

/// Most streamed text kept for the token estimate, in bytes.
const MAX_CAPTURED_TEXT: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct SseScanner {
    /// Bytes of an event whose end has not arrived yet.
    pending: BytesMut,
    strip_usage: bool,
    pub usage: Option<Usage>,
    pub done: bool,
    pub finish_reason: Option<String>,
    /// True when the first data event was an error object rather than a chunk.
    pub error_event: bool,
    pub data_events: usize,
    pub malformed_events: usize,
    /// Text of the streamed deltas, capped at `MAX_CAPTURED_TEXT`; used only to estimate tokens.
    pub text: String,
}

/// Returns the length of the first complete event in `buf` including its blank-line terminator.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => return Some(i + 2),
            b'\n' if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            b'\r' if buf.get(i + 1) == Some(&b'\n') && buf.get(i + 2) == Some(&b'\r') && buf.get(i + 3) == Some(&b'\n') => {
                return Some(i + 4)
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Joins the `data:` lines of one event, as the SSE specification defines.
fn event_data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data: Option<String> = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("data:") else { continue };
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        match &mut data {
            Some(joined) => {
                joined.push('\n');
                joined.push_str(rest);
            }
            None => data = Some(rest.to_string()),
        }
    }
    data
}

impl SseScanner {
    /// `strip_usage` removes usage chunks from the output, for clients that did not ask for them.
    pub fn new(strip_usage: bool) -> Self {
        SseScanner { strip_usage, ..Default::default() }
    }

    /// Scans one piece of the stream and returns what to send to the client.
    ///
    /// Without stripping, the piece is returned unchanged at once. With stripping, complete events are
    /// returned as they finish and an incomplete tail waits for its end, so nothing waits longer than
    /// its own event. At `end_of_stream` the unfinished tail is scanned and returned as it is.
    pub fn feed(&mut self, piece: &[u8], end_of_stream: bool) -> Bytes {
        self.pending.extend_from_slice(piece);
        let mut output = BytesMut::new();

        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            let keep = self.scan_event(&event);
            if self.strip_usage {
                match keep {
                    Keep::Whole => output.extend_from_slice(&event),
                    Keep::Rewritten(text) => output.extend_from_slice(text.as_bytes()),
                    Keep::Drop => {}
                }
            }
        }
        if end_of_stream && !self.pending.is_empty() {
            let tail = self.pending.split();
            self.scan_event(&tail);
            if self.strip_usage {
                output.extend_from_slice(&tail);
            }
        }

        if self.strip_usage {
            output.freeze()
        } else {
            Bytes::copy_from_slice(piece)
        }
    }

    fn scan_event(&mut self, event: &[u8]) -> Keep {
        let Some(data) = event_data(event) else { return Keep::Whole };
        if data.trim() == "[DONE]" {
            self.done = true;
            return Keep::Whole;
        }
        self.data_events += 1;
        let Ok(mut value) = serde_json::from_str::<Value>(&data) else {
            self.malformed_events += 1;
            return Keep::Whole;
        };
        if self.data_events == 1 && value.get("error").is_some_and(|e| !e.is_null()) {
            self.error_event = true;
        }
        self.read_choices(&value);

        let usage = value.get("usage").and_then(Usage::from_value);
        let Some(usage) = usage else { return Keep::Whole };
        self.usage = Some(usage);
        if !self.strip_usage {
            return Keep::Whole;
        }
        let has_choices = value.get("choices").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
        if !has_choices {
            return Keep::Drop;
        }
        if let Some(object) = value.as_object_mut() {
            object.remove("usage");
        }
        Keep::Rewritten(format!("data: {value}\n\n"))
    }

    fn read_choices(&mut self, value: &Value) {
        let Some(choices) = value.get("choices").and_then(Value::as_array) else { return };
        for choice in choices {
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(reason.to_string());
            }
            let text = choice
                .pointer("/delta/content")
                .or_else(|| choice.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !text.is_empty() && self.text.len() + text.len() <= MAX_CAPTURED_TEXT {
                self.text.push_str(text);
            }
        }
    }
}

enum Keep {
    Whole,
    Rewritten(String),
    Drop,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    const FINISH: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn stream() -> String {
        format!("{CHUNK}{FINISH}{USAGE}{DONE}")
    }

    #[test]
    fn passthrough_returns_input_unchanged() {
        let mut scanner = SseScanner::new(false);
        let out = scanner.feed(stream().as_bytes(), true);
        assert_eq!(out, stream().as_bytes());
        assert_eq!(scanner.usage.unwrap().total_tokens, 10);
        assert_eq!(scanner.finish_reason.as_deref(), Some("stop"));
        assert!(scanner.done);
        assert_eq!(scanner.text, "Hi");
    }

    #[test]
    fn strip_removes_usage_chunk_only() {
        let mut scanner = SseScanner::new(true);
        let out = scanner.feed(stream().as_bytes(), true);
        assert_eq!(out, format!("{CHUNK}{FINISH}{DONE}").as_bytes());
        assert_eq!(scanner.usage.unwrap().prompt_tokens, 7);
    }

    #[test]
    fn usage_found_across_split_pieces() {
        let text = stream();
        for split in 1..text.len() {
            let mut scanner = SseScanner::new(true);
            let mut out = scanner.feed(&text.as_bytes()[..split], false).to_vec();
            out.extend_from_slice(&scanner.feed(&text.as_bytes()[split..], true));
            assert_eq!(scanner.usage.map(|u| u.total_tokens), Some(10), "split at {split}");
            assert_eq!(out, format!("{CHUNK}{FINISH}{DONE}").as_bytes(), "split at {split}");
        }
    }

    #[test]
    fn usage_found_after_comments_and_crlf() {
        let text = ": keep-alive\r\n\r\n\r\n".to_string() + &USAGE.replace("\n\n", "\r\n\r\n") + ": ping\n\n" + DONE;
        let mut scanner = SseScanner::new(false);
        scanner.feed(text.as_bytes(), true);
        assert_eq!(scanner.usage.map(|u| u.completion_tokens), Some(3));
        assert!(scanner.done);
    }

    #[test]
    fn usage_on_choice_chunk_is_removed_not_dropped() {
        let text = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
        let mut scanner = SseScanner::new(true);
        let out = scanner.feed(text.as_bytes(), true);
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(out.contains("finish_reason"), "{out}");
        assert!(!out.contains("usage"), "{out}");
        assert_eq!(scanner.usage.unwrap().total_tokens, 2);
    }

    #[test]
    fn first_event_error_detected() {
        let mut scanner = SseScanner::new(false);
        scanner.feed(b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n", true);
        assert!(scanner.error_event);
    }

    #[test]
    fn malformed_event_passes_and_is_counted() {
        let text = format!("data: {{not json\n\n{CHUNK}");
        let mut scanner = SseScanner::new(true);
        let out = scanner.feed(text.as_bytes(), true);
        assert_eq!(out, text.as_bytes());
        assert_eq!(scanner.malformed_events, 1);
    }

    #[test]
    fn unfinished_tail_flushed_at_end() {
        let mut scanner = SseScanner::new(true);
        let out = scanner.feed(b"data: {\"choices\":[]", false);
        assert!(out.is_empty());
        let out = scanner.feed(b"}", true);
        assert_eq!(out, &b"data: {\"choices\":[]}"[..]);
    }
}
