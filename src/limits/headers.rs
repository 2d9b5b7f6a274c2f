//! The `x-ratelimit-*` response headers, named as OpenAI's API names them.
//!
//! The `requests` headers report the key's requests per minute when the plan sets them, else the
//! project's monthly requests. The `tokens` headers report tokens per minute in the same way, else
//! monthly tokens. The remaining requests count the request itself. The remaining tokens are
//! those left when the request was admitted, because its own usage is known only when it ends.

use http::HeaderValue;

use super::Figures;

pub const LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
pub const REMAINING_REQUESTS: &str = "x-ratelimit-remaining-requests";
pub const RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
pub const LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";
pub const REMAINING_TOKENS: &str = "x-ratelimit-remaining-tokens";
pub const RESET_TOKENS: &str = "x-ratelimit-reset-tokens";

/// Response headers by name, as Pingora's header maps take them without another copy.
pub type Headers = Vec<(&'static str, HeaderValue)>;

/// Returns the headers for `figures`. A limit that is not set has none. The values are built as
/// `HeaderValue`s here, once, because every proxied response carries them.
pub fn rate_limit_headers(figures: &Figures) -> Headers {
    let mut headers = Vec::with_capacity(7);
    let sets = [(figures.requests, [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS]), (figures.tokens, [LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS])];
    for (figure, [limit, remaining, reset]) in sets {
        let Some(figure) = figure else { continue };
        headers.push((limit, HeaderValue::from(figure.limit)));
        headers.push((remaining, HeaderValue::from(figure.remaining)));
        headers.push((reset, duration_value(figure.reset_s)));
    }
    headers
}

fn duration_value(seconds: u64) -> HeaderValue {
    HeaderValue::try_from(format_duration(seconds)).expect("digits and the letters h, m and s are valid in a header")
}

/// Formats seconds as OpenAI's reset headers do, such as `45s`, `6m0s` or `27h3m0s`.
pub fn format_duration(seconds: u64) -> String {
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Figure;

    #[test]
    fn durations_formatted_like_openai() {
        assert_eq!(format_duration(45), "45s");
        assert_eq!(format_duration(360), "6m0s");
        assert_eq!(format_duration(97_380), "27h3m0s");
    }

    #[test]
    fn only_set_limits_get_headers() {
        let figures = Figures { requests: None, tokens: Some(Figure { limit: 1000, remaining: 700, reset_s: 30 }) };
        let headers = rate_limit_headers(&figures);
        let expected = [(LIMIT_TOKENS, "1000"), (REMAINING_TOKENS, "700"), (RESET_TOKENS, "30s")];
        assert_eq!(headers.len(), expected.len());
        for ((name, value), (expected_name, expected_value)) in headers.iter().zip(expected) {
            assert_eq!((*name, value.to_str().unwrap()), (expected_name, expected_value));
        }
    }
}
