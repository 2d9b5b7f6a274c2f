//! API key authentication: key format, hashing, extraction from headers, and the in-memory snapshot
//! of active keys that the proxy checks on every request.

pub mod keys;
pub mod snapshot;

pub use keys::{extract_api_key, generate_api_key, hash_api_key, GeneratedKey};
pub use snapshot::{KeyEntry, KeySnapshot, SharedKeys};
