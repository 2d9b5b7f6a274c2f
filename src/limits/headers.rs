//! The `x-ratelimit-*` response headers, named as OpenAI's API names them.
//!
//! The `requests` headers report the key's requests per minute when the plan sets them, else the
//! project's monthly requests. The `tokens` headers report tokens per minute in the same way, else
//! monthly tokens. The remaining requests count the request itself. The remaining tokens are
//! those left when the request was admitted, because its own usage is known only when it ends.

use super::Figures;

pub const LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
pub const REMAINING_REQUESTS: &str = "x-ratelimit-remaining-requests";
pub const RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
pub const LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";
pub const REMAINING_TOKENS: &str = "x-ratelimit-remaining-tokens";
pub const RESET_TOKENS: &str = "x-ratelimit-reset-tokens";

/// Returns the headers for `figures`; a limit that is not set has none.
pub fn rate_limit_headers(figures: &Figures) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(6);
    if let Some(figure) = figures.requests {
        headers.push((LIMIT_REQUESTS, figure.limit.to_string()));
        headers.push((REMAINING_REQUESTS, figure.remaining.to_string()));
        headers.push((RESET_REQUESTS, format_duration(figure.reset_s)));
    }
    if let Some(figure) = figures.tokens {
        headers.push((LIMIT_TOKENS, figure.limit.to_string()));
        headers.push((REMAINING_TOKENS, figure.remaining.to_string()));
        headers.push((RESET_TOKENS, format_duration(figure.reset_s)));
    }
    headers
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
        assert_eq!(headers, vec![(LIMIT_TOKENS, "1000".into()), (REMAINING_TOKENS, "700".into()), (RESET_TOKENS, "30s".into())]);
    }
}
