//! The in-memory snapshot of active keys, swapped whole when the store's keys change.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The project that a valid key belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub key_id: String,
    pub project_id: String,
    pub project_name: String,
    pub plan: String,
}

/// Active keys by SHA-256, plus the store's keys version the snapshot was built from. An entry is
/// shared, so that a request takes it without copying its strings.
#[derive(Debug, Default)]
pub struct KeySnapshot {
    keys: HashMap<[u8; 32], (Arc<KeyEntry>, [u8; 32])>,
    pub version: i64,
}

impl KeySnapshot {
    /// Builds a snapshot from (hex SHA-256, entry) pairs; pairs whose hash is not valid hex are skipped.
    pub fn new(version: i64, entries: impl IntoIterator<Item = (String, KeyEntry)>) -> Self {
        let mut keys = HashMap::new();
        for (hash_hex, entry) in entries {
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(&hash_hex, &mut hash).is_ok() {
                keys.insert(hash, (Arc::new(entry), hash));
            }
        }
        KeySnapshot { keys, version }
    }

    /// Looks a presented key up by its hash.
    ///
    /// The map finds the candidate by hash, and the stored hash is then compared in constant time,
    /// so the comparison leaks no timing about how much of a key matched.
    pub fn authenticate(&self, presented: &str) -> Option<&Arc<KeyEntry>> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let (entry, stored) = self.keys.get(&digest)?;
        bool::from(stored.ct_eq(&digest)).then_some(entry)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The snapshot shared by the proxy threads and the refresher.
pub type SharedKeys = Arc<ArcSwap<KeySnapshot>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_api_key;

    fn entry(id: &str) -> KeyEntry {
        KeyEntry { key_id: id.into(), project_id: "proj_1".into(), project_name: "demo".into(), plan: "free".into() }
    }

    #[test]
    fn known_key_authenticates() {
        let snapshot = KeySnapshot::new(1, [(hash_api_key("wllm_a"), entry("key_a"))]);
        assert_eq!(snapshot.authenticate("wllm_a").map(|e| e.key_id.as_str()), Some("key_a"));
    }

    #[test]
    fn unknown_key_rejected() {
        let snapshot = KeySnapshot::new(1, [(hash_api_key("wllm_a"), entry("key_a"))]);
        assert!(snapshot.authenticate("wllm_b").is_none());
        assert!(snapshot.authenticate("").is_none());
    }

    #[test]
    fn invalid_hash_skipped() {
        let snapshot = KeySnapshot::new(1, [("zz".to_string(), entry("key_a"))]);
        assert!(snapshot.is_empty());
    }
}
