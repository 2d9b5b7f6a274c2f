//! The cache directives of a request, and the request headers that set them.

use http::{HeaderMap, HeaderName};

/// Request header that turns the cache off for one request (`off`), and response header that
/// reports what the cache did.
pub static CACHE_HEADER: HeaderName = HeaderName::from_static("x-watchllm-cache");
/// Request header that raises the project's similarity threshold for one request.
pub const THRESHOLD_HEADER: &str = "x-watchllm-cache-threshold";
/// Response header with the similarity of a semantic hit.
pub static SIMILARITY_HEADER: HeaderName = HeaderName::from_static("x-watchllm-cache-similarity");

/// The cache operations allowed for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directives {
    pub lookup: bool,
    pub store: bool,
}

/// Reads `x-watchllm-cache: off` and `Cache-Control` (`no-store` forbids storing, `no-cache`
/// skips the lookup but stores the fresh response).
pub fn request_directives(headers: &HeaderMap) -> Directives {
    let off = headers
        .get_all(&CACHE_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim().eq_ignore_ascii_case("off"));
    if off {
        return Directives { lookup: false, store: false };
    }
    let mut directives = Directives { lookup: true, store: true };
    for value in headers.get_all("cache-control").iter().filter_map(|v| v.to_str().ok()) {
        for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            match directive.as_str() {
                "no-store" => directives = Directives { lookup: false, store: false },
                "no-cache" => directives.lookup = false,
                _ => {}
            }
        }
    }
    directives
}

/// Returns the similarity threshold for a request: the project's, or the header's when it is
/// higher. A lower or invalid header value is ignored, so a client can only make hits stricter.
pub fn effective_threshold(project_threshold: f32, headers: &HeaderMap) -> f32 {
    let requested = headers
        .get(THRESHOLD_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f32>().ok())
        .filter(|t| t.is_finite() && *t <= 1.0);
    match requested {
        Some(t) if t > project_threshold => t,
        _ => project_threshold,
    }
}

/// Returns the `n` of a request (1 when absent). Caching `n > 1` is off unless configured,
/// because one replayed set of choices would then stand for every later sample.
pub fn requested_choices(request: &serde_json::Value) -> u64 {
    request.get("n").and_then(serde_json::Value::as_u64).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn default_allows_both() {
        assert_eq!(request_directives(&headers(&[])), Directives { lookup: true, store: true });
    }

    #[test]
    fn header_off_disables_both() {
        assert_eq!(request_directives(&headers(&[("x-watchllm-cache", "OFF")])), Directives { lookup: false, store: false });
    }

    #[test]
    fn no_store_disables_both() {
        let found = request_directives(&headers(&[("cache-control", "max-age=0, no-store")]));
        assert_eq!(found, Directives { lookup: false, store: false });
    }

    #[test]
    fn no_cache_skips_lookup_only() {
        assert_eq!(request_directives(&headers(&[("cache-control", "No-Cache")])), Directives { lookup: false, store: true });
    }

    #[test]
    fn threshold_only_raised() {
        assert_eq!(effective_threshold(0.9, &headers(&[("x-watchllm-cache-threshold", "0.97")])), 0.97);
        assert_eq!(effective_threshold(0.9, &headers(&[("x-watchllm-cache-threshold", "0.5")])), 0.9);
        assert_eq!(effective_threshold(0.9, &headers(&[("x-watchllm-cache-threshold", "abc")])), 0.9);
        assert_eq!(effective_threshold(0.9, &headers(&[("x-watchllm-cache-threshold", "7")])), 0.9);
        assert_eq!(effective_threshold(0.9, &headers(&[])), 0.9);
    }

    #[test]
    fn choices_default_one() {
        assert_eq!(requested_choices(&serde_json::json!({})), 1);
        assert_eq!(requested_choices(&serde_json::json!({"n": 3})), 3);
    }
}
