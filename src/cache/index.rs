//! The vector index of the semantic cache: one usearch HNSW index (cosine) per namespace, where a
//! namespace is one project's context key, so a search never sees another project's or another
//! conversation's entries. Saved to one file and restored at start.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// Magic bytes and version at the start of the index file.
const FILE_MAGIC: &[u8; 8] = b"WLLMIDX1";

/// The scalar type of the vectors stored in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantization {
    F32,
    F16,
    I8,
}

impl Quantization {
    pub fn parse(name: &str) -> Option<Quantization> {
        match name {
            "f32" => Some(Quantization::F32),
            "f16" => Some(Quantization::F16),
            "i8" => Some(Quantization::I8),
            _ => None,
        }
    }

    fn scalar_kind(self) -> ScalarKind {
        match self {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::I8 => ScalarKind::I8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("vector index error: {0}")]
    Usearch(String),
    #[error("vector index file {path}: {reason}")]
    File { path: String, reason: String },
}

fn usearch_error(error: impl std::fmt::Display) -> IndexError {
    IndexError::Usearch(error.to_string())
}

/// HNSW settings of every namespace's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexSettings {
    /// Neighbours per node on the upper layers (twice as many on the base layer).
    pub connectivity: usize,
    /// Candidates kept while a vector is inserted.
    pub expansion_add: usize,
    /// Candidates kept during a search. A higher value finds the true nearest entry more often
    /// and costs more distance computations.
    pub expansion_search: usize,
}

/// usearch 2.26's defaults (16, 128 and 64). `benches/cache_index.rs` measures their latency
/// and recall at 100,000 entries; docs/BENCHMARKS.md records the figures.
pub const INDEX_SETTINGS: IndexSettings = IndexSettings { connectivity: 16, expansion_add: 128, expansion_search: 64 };

pub struct VectorIndex {
    dimensions: usize,
    quantization: Quantization,
    /// Search expansion of every namespace: [`INDEX_SETTINGS`]' value until `set_expansion_search`.
    expansion_search: AtomicUsize,
    namespaces: RwLock<HashMap<[u8; 32], Index>>,
}

impl VectorIndex {
    pub fn new(dimensions: usize, quantization: Quantization) -> VectorIndex {
        VectorIndex {
            dimensions,
            quantization,
            expansion_search: AtomicUsize::new(INDEX_SETTINGS.expansion_search),
            namespaces: RwLock::new(HashMap::new()),
        }
    }

    fn options(&self) -> IndexOptions {
        IndexOptions {
            dimensions: self.dimensions,
            metric: MetricKind::Cos,
            quantization: self.quantization.scalar_kind(),
            connectivity: INDEX_SETTINGS.connectivity,
            expansion_add: INDEX_SETTINGS.expansion_add,
            expansion_search: self.expansion_search.load(Ordering::Relaxed),
            multi: false,
        }
    }

    /// Adds (or replaces) the vector of entry `id` in `namespace`.
    pub fn add(&self, namespace: &[u8; 32], id: u64, vector: &[f32]) -> Result<(), IndexError> {
        let mut namespaces = self.namespaces.write().map_err(|_| IndexError::Usearch("lock poisoned".into()))?;
        if !namespaces.contains_key(namespace) {
            namespaces.insert(*namespace, Index::new(&self.options()).map_err(usearch_error)?);
        }
        let Some(index) = namespaces.get(namespace) else { return Err(IndexError::Usearch("namespace vanished".into())) };
        if index.contains(id) {
            index.remove(id).map_err(usearch_error)?;
        }
        if index.size() + 1 > index.capacity() {
            index.reserve((index.capacity() * 2).max(16)).map_err(usearch_error)?;
        }
        index.add(id, vector).map_err(usearch_error)
    }

    /// Returns up to `count` nearest entries of `namespace` as (id, cosine similarity), closest first.
    pub fn search(&self, namespace: &[u8; 32], vector: &[f32], count: usize) -> Result<Vec<(u64, f32)>, IndexError> {
        let namespaces = self.namespaces.read().map_err(|_| IndexError::Usearch("lock poisoned".into()))?;
        let Some(index) = namespaces.get(namespace) else { return Ok(Vec::new()) };
        if index.size() == 0 {
            return Ok(Vec::new());
        }
        let matches = index.search(vector, count).map_err(usearch_error)?;
        Ok(matches.keys.into_iter().zip(matches.distances).map(|(id, distance)| (id, 1.0 - distance)).collect())
    }

    /// Removes entry `id` from `namespace`; a namespace left empty is dropped.
    pub fn remove(&self, namespace: &[u8; 32], id: u64) -> Result<(), IndexError> {
        let mut namespaces = self.namespaces.write().map_err(|_| IndexError::Usearch("lock poisoned".into()))?;
        let Some(index) = namespaces.get(namespace) else { return Ok(()) };
        index.remove(id).map_err(usearch_error)?;
        if index.size() == 0 {
            namespaces.remove(namespace);
        }
        Ok(())
    }

    /// Changes the search expansion of every namespace, present and later (the setting
    /// `cache.semantic.expansion_search`). The index benchmark uses it to compare latency and
    /// recall.
    pub fn set_expansion_search(&self, expansion: usize) {
        self.expansion_search.store(expansion.max(1), Ordering::Relaxed);
        if let Ok(namespaces) = self.namespaces.write() {
            namespaces.values().for_each(|index| index.change_expansion_search(expansion));
        }
    }

    /// Returns the number of vectors and the bytes of memory the index uses.
    pub fn stats(&self) -> (usize, usize) {
        let Ok(namespaces) = self.namespaces.read() else { return (0, 0) };
        namespaces.values().fold((0, 0), |(count, bytes), index| (count + index.size(), bytes + index.memory_usage()))
    }

    /// Writes every namespace to `path`, through a temporary file renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), IndexError> {
        let file_error = |reason: String| IndexError::File { path: path.display().to_string(), reason };
        let mut buffer = Vec::new();
        buffer.extend_from_slice(FILE_MAGIC);
        {
            let namespaces = self.namespaces.read().map_err(|_| IndexError::Usearch("lock poisoned".into()))?;
            buffer.extend_from_slice(&(namespaces.len() as u64).to_le_bytes());
            for (namespace, index) in namespaces.iter() {
                let mut serialized = vec![0u8; index.serialized_length()];
                index.save_to_buffer(&mut serialized).map_err(usearch_error)?;
                buffer.extend_from_slice(namespace);
                buffer.extend_from_slice(&(serialized.len() as u64).to_le_bytes());
                buffer.extend_from_slice(&serialized);
            }
        }
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary).map_err(|e| file_error(e.to_string()))?;
        file.write_all(&buffer).and_then(|_| file.sync_all()).map_err(|e| file_error(e.to_string()))?;
        std::fs::rename(&temporary, path).map_err(|e| file_error(e.to_string()))
    }

    /// Reads the namespaces saved at `path`. A missing file is an empty index.
    pub fn load(dimensions: usize, quantization: Quantization, path: &Path) -> Result<VectorIndex, IndexError> {
        let index = VectorIndex::new(dimensions, quantization);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(index),
            Err(e) => return Err(IndexError::File { path: path.display().to_string(), reason: e.to_string() }),
        };
        let invalid = |reason: &str| IndexError::File { path: path.display().to_string(), reason: reason.to_string() };
        let mut reader = Reader { bytes: &bytes, position: 0 };
        if reader.take(8).ok_or_else(|| invalid("truncated"))? != FILE_MAGIC {
            return Err(invalid("not a WatchLLM vector index file"));
        }
        let count = reader.u64().ok_or_else(|| invalid("truncated"))?;
        let mut namespaces = HashMap::new();
        for _ in 0..count {
            let mut namespace = [0u8; 32];
            namespace.copy_from_slice(reader.take(32).ok_or_else(|| invalid("truncated"))?);
            let length = reader.u64().ok_or_else(|| invalid("truncated"))? as usize;
            let serialized = reader.take(length).ok_or_else(|| invalid("truncated"))?;
            let restored = Index::new(&index.options()).map_err(usearch_error)?;
            restored.load_from_buffer(serialized).map_err(usearch_error)?;
            // The file's header does not carry the expansion settings.
            restored.change_expansion_add(INDEX_SETTINGS.expansion_add);
            restored.change_expansion_search(index.expansion_search.load(Ordering::Relaxed));
            namespaces.insert(namespace, restored);
        }
        *index.namespaces.write().map_err(|_| IndexError::Usearch("lock poisoned".into()))? = namespaces;
        Ok(index)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(length)?;
        let slice = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }

    fn u64(&mut self) -> Option<u64> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut v: Vec<f32> = (0..16)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / u32::MAX as f32) - 0.25
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    #[test]
    fn namespaces_isolated() {
        let index = VectorIndex::new(16, Quantization::F32);
        index.add(&[1; 32], 10, &unit(1)).unwrap();
        index.add(&[2; 32], 20, &unit(1)).unwrap();
        let found = index.search(&[1; 32], &unit(1), 5).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 10);
        assert!(found[0].1 > 0.999, "{found:?}");
        assert!(index.search(&[3; 32], &unit(1), 5).unwrap().is_empty());
    }

    #[test]
    fn remove_drops_entry() {
        let index = VectorIndex::new(16, Quantization::F32);
        index.add(&[1; 32], 10, &unit(1)).unwrap();
        index.add(&[1; 32], 11, &unit(2)).unwrap();
        index.remove(&[1; 32], 10).unwrap();
        let found = index.search(&[1; 32], &unit(1), 5).unwrap();
        assert!(found.iter().all(|(id, _)| *id != 10), "{found:?}");
        assert_eq!(index.stats().0, 1);
    }

    #[test]
    fn saved_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vectors.idx");
        for quantization in [Quantization::F32, Quantization::F16, Quantization::I8] {
            let index = VectorIndex::new(16, quantization);
            for id in 0..50 {
                index.add(&[(id % 3) as u8; 32], id, &unit(id)).unwrap();
            }
            index.save(&path).unwrap();
            let restored = VectorIndex::load(16, quantization, &path).unwrap();
            assert_eq!(restored.stats().0, 50);
            let found = restored.search(&[1; 32], &unit(4), 1).unwrap();
            assert_eq!(found[0].0, 4, "{quantization:?}");
            let namespaces = restored.namespaces.read().unwrap();
            for index in namespaces.values() {
                assert_eq!(index.expansion_search(), INDEX_SETTINGS.expansion_search);
                assert_eq!(index.connectivity(), INDEX_SETTINGS.connectivity);
            }
        }
    }

    #[test]
    fn restored_after_quantization_change() {
        // A restart with another `cache.semantic.quantization` still finds the saved entries, and
        // new entries of the same namespaces join them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vectors.idx");
        let saved = VectorIndex::new(16, Quantization::F32);
        for id in 0..50 {
            saved.add(&[(id % 3) as u8; 32], id, &unit(id)).unwrap();
        }
        saved.save(&path).unwrap();
        let restored = VectorIndex::load(16, Quantization::I8, &path).unwrap();
        assert_eq!(restored.stats().0, 50);
        assert_eq!(restored.search(&[1; 32], &unit(4), 1).unwrap()[0].0, 4);
        restored.add(&[1; 32], 100, &unit(30)).unwrap();
        restored.add(&[3; 32], 101, &unit(31)).unwrap();
        assert_eq!(restored.search(&[1; 32], &unit(30), 1).unwrap()[0].0, 100);
        assert_eq!(restored.search(&[3; 32], &unit(31), 1).unwrap()[0].0, 101);
    }

    #[test]
    fn search_expansion_applies_to_present_and_later_namespaces() {
        let index = VectorIndex::new(16, Quantization::I8);
        index.add(&[1; 32], 1, &unit(1)).unwrap();
        index.set_expansion_search(24);
        index.add(&[2; 32], 2, &unit(2)).unwrap();
        let expansions: Vec<usize> = index.namespaces.read().unwrap().values().map(|i| i.expansion_search()).collect();
        assert_eq!(expansions, vec![24, 24]);
        assert_eq!(index.search(&[2; 32], &unit(2), 1).unwrap()[0].0, 2);
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let index = VectorIndex::load(16, Quantization::F32, &dir.path().join("none")).unwrap();
        assert_eq!(index.stats(), (0, 0));
    }
}
