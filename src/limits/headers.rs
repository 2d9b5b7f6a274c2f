//! The `x-ratelimit-*` response headers, named as OpenAI's API names them.
//!
//! The `requests` headers report the key's requests per minute when the plan sets them, else the
//! project's monthly requests. The `tokens` headers report tokens per minute in the same way, else
//! monthly tokens. The remaining requests count the request itself. The remaining tokens are
//! those left when the request was admitted, because its own usage is known only when it ends.

use bytes::BytesMut;
use http::{HeaderName, HeaderValue};

use super::Figures;

pub static LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
pub static REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
pub static RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
pub static LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
pub static REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
pub static RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
pub static RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;

/// Response headers by name. The names are statics so that Pingora's header maps take them
/// without parsing or copying them.
pub type Headers = Vec<(&'static HeaderName, HeaderValue)>;

/// Returns the headers for `figures`. A limit that is not set has none. Every proxied response
/// carries them, so the values are written once into one buffer and each header value is a
/// slice of it: two allocations for all six instead of one per value and per formatted string.
pub fn rate_limit_headers(figures: &Figures) -> Headers {
    let sets = [(figures.requests, [&LIMIT_REQUESTS, &REMAINING_REQUESTS, &RESET_REQUESTS]), (figures.tokens, [&LIMIT_TOKENS, &REMAINING_TOKENS, &RESET_TOKENS])];
    let mut text = BytesMut::with_capacity(96);
    let mut spans: Vec<(&'static HeaderName, usize, usize)> = Vec::with_capacity(6);
    for (figure, [limit, remaining, reset]) in sets {
        let Some(figure) = figure else { continue };
        for (name, write) in [(limit, Value::Count(figure.limit)), (remaining, Value::Count(figure.remaining)), (reset, Value::Duration(figure.reset_s))] {
            let start = text.len();
            write.write_to(&mut text);
            spans.push((name, start, text.len()));
        }
    }
    let text = text.freeze();
    spans
        .into_iter()
        .map(|(name, start, end)| (name, HeaderValue::from_maybe_shared(text.slice(start..end)).expect("digits and the letters h, m and s are valid in a header")))
        .collect()
}

/// One header value before it is written.
enum Value {
    Count(i64),
    /// Seconds, written as OpenAI's reset headers write them, such as `45s`, `6m0s` or `27h3m0s`.
    Duration(u64),
}

impl Value {
    fn write_to(self, text: &mut BytesMut) {
        let mut digits = itoa::Buffer::new();
        match self {
            Value::Count(count) => text.extend_from_slice(digits.format(count).as_bytes()),
            Value::Duration(seconds) => {
                let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
                if hours > 0 {
                    text.extend_from_slice(digits.format(hours).as_bytes());
                    text.extend_from_slice(b"h");
                }
                if hours > 0 || minutes > 0 {
                    text.extend_from_slice(digits.format(minutes).as_bytes());
                    text.extend_from_slice(b"m");
                }
                text.extend_from_slice(digits.format(seconds).as_bytes());
                text.extend_from_slice(b"s");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Figure;

    fn format_duration(seconds: u64) -> String {
        let mut text = BytesMut::new();
        Value::Duration(seconds).write_to(&mut text);
        String::from_utf8(text.to_vec()).unwrap()
    }

    #[test]
    fn durations_formatted_like_openai() {
        assert_eq!(format_duration(45), "45s");
        assert_eq!(format_duration(360), "6m0s");
        assert_eq!(format_duration(97_380), "27h3m0s");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(3600), "1h0m0s");
        assert_eq!(format_duration(3661), "1h1m1s");
    }

    #[test]
    fn every_value_written_in_its_own_slice() {
        let figures = Figures {
            requests: Some(Figure { limit: 60, remaining: 0, reset_s: 1 }),
            tokens: Some(Figure { limit: -1, remaining: 9_007_199_254_740_993, reset_s: 97_380 }),
        };
        let headers = rate_limit_headers(&figures);
        let found: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (name.as_str(), value.to_str().unwrap())).collect();
        assert_eq!(
            found,
            [
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-limit-tokens", "-1"),
                ("x-ratelimit-remaining-tokens", "9007199254740993"),
                ("x-ratelimit-reset-tokens", "27h3m0s"),
            ]
        );
    }

    #[test]
    fn only_set_limits_get_headers() {
        let figures = Figures { requests: None, tokens: Some(Figure { limit: 1000, remaining: 700, reset_s: 30 }) };
        let headers = rate_limit_headers(&figures);
        let expected = [(&LIMIT_TOKENS, "1000"), (&REMAINING_TOKENS, "700"), (&RESET_TOKENS, "30s")];
        assert_eq!(headers.len(), expected.len());
        for ((name, value), (expected_name, expected_value)) in headers.iter().zip(expected) {
            assert_eq!((*name, value.to_str().unwrap()), (expected_name, expected_value));
        }
    }

    #[test]
    fn provider_limit_headers_replaced() {
        // An upstream such as OpenAI sends its own x-ratelimit-* headers, in its own case.
        let mut response = pingora::http::ResponseHeader::build(200, Some(2)).unwrap();
        response.insert_header("Content-Type", "application/json").unwrap();
        response.insert_header("X-RateLimit-Limit-Requests", "5000").unwrap();
        response.reserve_headers(6);
        insert_request_limits(&mut response);

        let lines = wire_lines(&response);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines.contains(&"Content-Type: application/json".to_string()), "{lines:?}");
        assert_request_limits(&lines);
        assert_eq!(response.headers.get_all(&LIMIT_REQUESTS).iter().count(), 1);
    }

    #[test]
    fn headers_without_provider_case() {
        // The gateway drops the provider's header case before it adds its own headers.
        let mut response = pingora::http::ResponseHeader::build(200, Some(3)).unwrap();
        response.insert_header("Content-Type", "application/json").unwrap();
        response.insert_header("OpenAI-Processing-Ms", "12").unwrap();
        response.insert_header("X-RateLimit-Remaining-Requests", "4999").unwrap();
        response.forget_header_case();
        insert_request_limits(&mut response);

        let lines = wire_lines(&response);
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(lines.contains(&"Content-Type: application/json".to_string()), "{lines:?}");
        assert!(lines.contains(&"openai-processing-ms: 12".to_string()), "{lines:?}");
        assert_request_limits(&lines);
    }

    /// Inserts the headers of a 60-per-minute request limit with 59 left, as the gateway does.
    fn insert_request_limits(response: &mut pingora::http::ResponseHeader) {
        let figures = Figures { requests: Some(Figure { limit: 60, remaining: 59, reset_s: 1 }), tokens: None };
        for (name, value) in rate_limit_headers(&figures) {
            response.insert_static_header(name, value);
        }
    }

    /// Returns the header lines of `response` as they go out on the wire.
    fn wire_lines(response: &pingora::http::ResponseHeader) -> Vec<String> {
        let mut wire = Vec::new();
        response.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        wire.split("\r\n").filter(|line| !line.is_empty()).map(str::to_string).collect()
    }

    /// Checks the three request-limit lines for a limit of 60 with 59 left and a reset in 1 s.
    fn assert_request_limits(lines: &[String]) {
        for expected in ["x-ratelimit-limit-requests: 60", "x-ratelimit-remaining-requests: 59", "x-ratelimit-reset-requests: 1s"] {
            assert!(lines.iter().any(|line| line == expected), "{expected} missing from {lines:?}");
        }
    }
}
