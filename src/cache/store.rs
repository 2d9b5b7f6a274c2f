//! The storage of cached responses: entries in foyer's hybrid cache (a memory tier over a disk tier,
//! both bounded in bytes) and their vectors in the namespaced index.
//!
//! The entry is the source of truth. An index match whose entry foyer has evicted, that expired,
//! or that belongs to another namespace is never served, and is removed from the index when found.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foyer::{BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCachePolicy, RecoverMode};
use tracing::{debug, warn};

use super::entry::CachedEntry;
use super::guard::{compare, Mismatch, Salient};
use super::index::{Quantization, VectorIndex};

/// Nearest neighbours read per semantic lookup; more than one so that a stale or guarded
/// neighbour does not hide a valid one behind it.
const SEARCH_WIDTH: usize = 4;

/// Sizes and places of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub dir: PathBuf,
    pub memory_bytes: usize,
    pub disk_bytes: usize,
    pub quantization: Quantization,
    pub dimensions: usize,
    /// The vector index's search expansion.
    pub expansion_search: usize,
}

/// A semantic match that passed the threshold, with the reason it was refused if it was.
#[derive(Debug)]
pub enum SemanticOutcome {
    Hit(Box<CachedEntry>, f32),
    /// The closest entry above the threshold was refused by the guard.
    Guarded(Mismatch, f32),
    Miss,
}

pub struct CacheStore {
    entries: HybridCache<u64, Vec<u8>>,
    index: Arc<VectorIndex>,
    index_path: PathBuf,
    index_dirty: Arc<AtomicBool>,
    disk_dir: PathBuf,
}

impl CacheStore {
    /// Opens (or creates) the store under `options.dir`, recovering the entries on disk and the
    /// saved index. Foyer's background work runs on `runtime`, which must outlive the store.
    pub async fn open(options: &StoreOptions, runtime: tokio::runtime::Handle) -> anyhow::Result<CacheStore> {
        let disk_dir = options.dir.join("entries");
        std::fs::create_dir_all(&disk_dir)?;
        let device = FsDeviceBuilder::new(&disk_dir).with_capacity(options.disk_bytes).build()?;
        let entries: HybridCache<u64, Vec<u8>> = HybridCacheBuilder::new()
            .with_name("watchllm-cache")
            // Every entry goes to disk when inserted, so entries survive a restart or a crash.
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .memory(options.memory_bytes)
            .with_weighter(|_key: &u64, value: &Vec<u8>| value.len() + 8)
            .storage()
            .with_engine_config(BlockEngineConfig::new(device).with_block_size(4 * 1024 * 1024))
            .with_recover_mode(RecoverMode::Quiet)
            .with_spawner(runtime.into())
            .build()
            .await?;

        let index_path = options.dir.join("vectors.idx");
        let index = match VectorIndex::load(options.dimensions, options.quantization, &index_path) {
            Ok(index) => index,
            Err(e) => {
                // Losing the index loses only semantic hits; the entries still serve exact hits.
                warn!(error = %e, "failed to restore the vector index; starting with an empty one");
                VectorIndex::new(options.dimensions, options.quantization)
            }
        };
        index.set_expansion_search(options.expansion_search);
        Ok(CacheStore { entries, index: Arc::new(index), index_path, index_dirty: Arc::new(AtomicBool::new(false)), disk_dir })
    }

    /// Returns the entry `id` if it is stored, unexpired and of `project_id`. An expired entry is removed.
    pub async fn get(&self, id: u64, project_id: &str, now_ms: i64) -> Option<CachedEntry> {
        let found = match self.entries.get(&id).await {
            Ok(found) => found?,
            Err(e) => {
                warn!(error = %e, "failed to read a cache entry");
                return None;
            }
        };
        let entry: CachedEntry = match serde_json::from_slice(found.value()) {
            Ok(entry) => entry,
            Err(e) => {
                warn!(error = %e, "invalid cache entry removed");
                self.entries.remove(&id);
                return None;
            }
        };
        if entry.expires_at_ms <= now_ms {
            self.remove(id, &entry);
            return None;
        }
        (entry.project_id == project_id).then_some(entry)
    }

    /// Returns the exact entry for the key digest, checking the whole digest.
    pub async fn exact(&self, exact: &[u8; 32], id: u64, project_id: &str, now_ms: i64) -> Option<CachedEntry> {
        self.get(id, project_id, now_ms).await.filter(|entry| &entry.exact == exact)
    }

    /// Searches the namespace `context` for the closest entry at or above `threshold` whose salient
    /// tokens match `salient`; `guard` off skips that comparison.
    pub async fn semantic(
        &self,
        context: &[u8; 32],
        vector: &[f32],
        threshold: f32,
        salient: &Salient,
        guard: bool,
        project_id: &str,
        now_ms: i64,
    ) -> SemanticOutcome {
        let candidates = match self.index.search(context, vector, SEARCH_WIDTH) {
            Ok(candidates) => candidates,
            Err(e) => {
                warn!(error = %e, "vector search failed");
                return SemanticOutcome::Miss;
            }
        };
        let mut guarded = None;
        for (id, similarity) in candidates {
            if similarity < threshold {
                break;
            }
            let Some(entry) = self.get(id, project_id, now_ms).await else {
                // Evicted or expired: the index must not keep pointing at it.
                self.drop_vector(context, id);
                continue;
            };
            if entry.context.as_ref() != Some(context) {
                continue;
            }
            if guard {
                let cached = entry.salient.clone().unwrap_or_default();
                if let Err(mismatch) = compare(salient, &cached) {
                    guarded.get_or_insert((mismatch, similarity));
                    continue;
                }
            }
            return SemanticOutcome::Hit(Box::new(entry), similarity);
        }
        match guarded {
            Some((mismatch, similarity)) => SemanticOutcome::Guarded(mismatch, similarity),
            None => SemanticOutcome::Miss,
        }
    }

    /// Stores an entry, and its vector when the entry has a context.
    pub fn insert(&self, id: u64, entry: &CachedEntry, vector: Option<&[f32]>) {
        let bytes = match serde_json::to_vec(entry) {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(error = %e, "failed to encode a cache entry");
                return;
            }
        };
        self.entries.insert(id, bytes);
        if let (Some(context), Some(vector)) = (entry.context.as_ref(), vector) {
            match self.index.add(context, id, vector) {
                Ok(()) => self.index_dirty.store(true, Ordering::Release),
                Err(e) => warn!(error = %e, "failed to index a cache entry"),
            }
        }
    }

    fn remove(&self, id: u64, entry: &CachedEntry) {
        self.entries.remove(&id);
        if let Some(context) = &entry.context {
            self.drop_vector(context, id);
        }
    }

    fn drop_vector(&self, context: &[u8; 32], id: u64) {
        match self.index.remove(context, id) {
            Ok(()) => self.index_dirty.store(true, Ordering::Release),
            Err(e) => debug!(error = %e, "failed to remove a stale vector"),
        }
    }

    /// Saves the index if it changed since the last save.
    pub fn save_index(&self) {
        if self.index_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.index.save(&self.index_path) {
                self.index_dirty.store(true, Ordering::Release);
                warn!(error = %e, "failed to save the vector index");
            }
        }
    }

    /// Saves the index and writes the memory tier's pending entries to disk.
    pub async fn close(&self) {
        self.save_index();
        if let Err(e) = self.entries.close().await {
            warn!(error = %e, "failed to close the cache store");
        }
    }

    /// Returns (memory tier bytes, disk tier bytes, vectors in the index, index bytes).
    pub fn stats(&self) -> TierStats {
        let (vectors, index_bytes) = self.index.stats();
        TierStats { memory_bytes: self.entries.memory().usage(), disk_bytes: disk_usage(&self.disk_dir), vectors, index_bytes }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    pub memory_bytes: usize,
    /// Bytes allocated on disk by the disk tier's files.
    pub disk_bytes: u64,
    pub vectors: usize,
    pub index_bytes: usize,
}

/// Returns the bytes allocated by the files of `dir`, which a sparse file keeps below its length.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(listing) = std::fs::read_dir(dir) else { return 0 };
    listing.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum()
}

/// Saves the index every `interval` while it changes.
pub async fn save_index_periodically(store: Arc<CacheStore>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        store.save_index();
    }
}
