//! Project API keys: generation, hashing and extraction from request headers.

use http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of every project key, so that leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "wllm_";

/// A freshly generated key. `secret` is shown once to the operator and never stored.
pub struct GeneratedKey {
    pub id: String,
    pub secret: String,
    pub hash: String,
    /// First characters of the secret, stored for display in key listings.
    pub display_prefix: String,
}

/// Generates a key with 256 random bits, its id and its SHA-256 hash.
pub fn generate_api_key() -> GeneratedKey {
    let mut secret_bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret_bytes);
    let mut id_bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id_bytes);

    let secret = format!("{KEY_PREFIX}{}", hex::encode(secret_bytes));
    GeneratedKey {
        id: format!("key_{}", hex::encode(id_bytes)),
        hash: hash_api_key(&secret),
        display_prefix: secret[..KEY_PREFIX.len() + 6].to_string(),
        secret,
    }
}

/// Returns the hex SHA-256 of a key, the only form in which keys are stored.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Finds the client's key in `Authorization: Bearer KEY` or, failing that, `x-api-key: KEY`.
pub fn extract_api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty());
    bearer.or_else(|| {
        headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|token| !token.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_matches_its_hash() {
        let key = generate_api_key();
        assert!(key.secret.starts_with(KEY_PREFIX));
        assert_eq!(key.secret.len(), KEY_PREFIX.len() + 64);
        assert_eq!(key.hash, hash_api_key(&key.secret));
        assert!(key.secret.starts_with(&key.display_prefix));
        assert_ne!(generate_api_key().secret, key.secret);
    }

    #[test]
    fn bearer_header_extracted() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer wllm_abc".parse().unwrap());
        assert_eq!(extract_api_key(&headers), Some("wllm_abc"));
    }

    #[test]
    fn x_api_key_used_without_bearer() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "wllm_xyz".parse().unwrap());
        assert_eq!(extract_api_key(&headers), Some("wllm_xyz"));
        headers.insert("authorization", "Basic Zm9v".parse().unwrap());
        assert_eq!(extract_api_key(&headers), Some("wllm_xyz"));
    }

    #[test]
    fn empty_bearer_is_missing() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(extract_api_key(&headers), None);
        assert_eq!(extract_api_key(&HeaderMap::new()), None);
    }
}
