//! A concurrent map from ids to shared counters, split into shards so that request threads
//! rarely touch the same lock.
//!
//! An id is stored as its 128-bit hash (two independently seeded 64-bit hashes), so a lookup
//! touches no string. Two of 100 million ids collide with a probability of about 1.5e-23.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};

use ahash::RandomState;

const SHARDS: usize = 32;

/// Uses the low bits of an already random 128-bit id as the table hash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

type Shard<V> = RwLock<HashMap<u128, Arc<V>, BuildHasherDefault<IdHasher>>>;

pub struct ShardedMap<V> {
    seeds: (RandomState, RandomState),
    shards: Vec<Shard<V>>,
}

impl<V> Default for ShardedMap<V> {
    fn default() -> Self {
        ShardedMap { seeds: (RandomState::new(), RandomState::new()), shards: (0..SHARDS).map(|_| RwLock::new(HashMap::default())).collect() }
    }
}

impl<V> ShardedMap<V> {
    fn id(&self, key: &str) -> u128 {
        (u128::from(self.seeds.0.hash_one(key)) << 64) | u128::from(self.seeds.1.hash_one(key))
    }

    fn shard(&self, id: u128) -> &Shard<V> {
        &self.shards[(id >> 64) as usize % SHARDS]
    }

    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        let id = self.id(key);
        self.shard(id).read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&id).cloned()
    }

    /// Returns the value of `key`, inserting `create()` first when it is missing.
    pub fn get_or_insert_with(&self, key: &str, create: impl FnOnce() -> V) -> Arc<V> {
        let id = self.id(key);
        if let Some(found) = self.shard(id).read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&id) {
            return found.clone();
        }
        let mut shard = self.shard(id).write().unwrap_or_else(|poisoned| poisoned.into_inner());
        shard.entry(id).or_insert_with(|| Arc::new(create())).clone()
    }

    /// Calls `visit` for every value, one shard at a time.
    pub fn for_each(&self, mut visit: impl FnMut(&Arc<V>)) {
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            shard.values().for_each(&mut visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_once_and_visits_all() {
        let map: ShardedMap<u32> = ShardedMap::default();
        assert_eq!(*map.get_or_insert_with("a", || 1), 1);
        assert_eq!(*map.get_or_insert_with("a", || 2), 1);
        map.get_or_insert_with("b", || 3);
        let mut seen = Vec::new();
        map.for_each(|value| seen.push(**value));
        seen.sort();
        assert_eq!(seen, vec![1, 3]);
        assert!(map.get("c").is_none());
        assert_eq!(map.get("b").map(|v| *v), Some(3));
    }
}
