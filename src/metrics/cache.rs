//! Response cache metrics: lookups by result, dollars saved, lookup and embedding latency, and the
//! size of each tier.

use prometheus::{Counter, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Buckets in seconds from 50 microseconds to 1 second: lookups and embeddings are fast.
const CACHE_BUCKETS: [f64; 14] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

pub struct CacheMetrics {
    /// Lookups by result: `hit-exact`, `hit-semantic`, `miss`, `bypass`.
    pub lookups: IntCounterVec,
    /// Semantic candidates above the threshold that the guard rejected, by the kind of token.
    pub guard_rejections: IntCounterVec,
    /// Responses stored, and responses not stored by reason.
    pub stores: IntCounterVec,
    pub saved_usd: Counter,
    pub lookup_seconds: Histogram,
    pub embedding_seconds: Histogram,
    /// Entries and bytes per tier (`memory`, `disk`, `index`).
    pub tier_bytes: IntGaugeVec,
    pub tier_entries: IntGaugeVec,
}

impl CacheMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<CacheMetrics> {
        let lookups = IntCounterVec::new(Opts::new("watchllm_cache_lookups_total", "Cache lookups by result: hit-exact, hit-semantic, miss, bypass."), &["result"])?;
        let guard_rejections = IntCounterVec::new(
            Opts::new("watchllm_cache_guard_rejections_total", "Semantic matches above the threshold rejected because numbers, entities, negations or units differ."),
            &["kind"],
        )?;
        let stores = IntCounterVec::new(Opts::new("watchllm_cache_stores_total", "Responses stored in the cache, and responses not stored, by outcome."), &["outcome"])?;
        let saved_usd = Counter::new("watchllm_cache_saved_usd_total", "US dollars that cache hits saved: what the upstream charged for the cached answers.")?;
        let lookup_seconds = Histogram::with_opts(
            HistogramOpts::new("watchllm_cache_lookup_seconds", "Time of a cache lookup, embedding included.").buckets(CACHE_BUCKETS.to_vec()),
        )?;
        let embedding_seconds = Histogram::with_opts(
            HistogramOpts::new("watchllm_cache_embedding_seconds", "Time to embed a prompt, queueing in the embedding pool included.").buckets(CACHE_BUCKETS.to_vec()),
        )?;
        let tier_bytes = IntGaugeVec::new(Opts::new("watchllm_cache_bytes", "Bytes used by each cache tier: memory, disk, index."), &["tier"])?;
        let tier_entries = IntGaugeVec::new(Opts::new("watchllm_cache_entries", "Entries in the vector index (tier index)."), &["tier"])?;

        registry.register(Box::new(lookups.clone()))?;
        registry.register(Box::new(guard_rejections.clone()))?;
        registry.register(Box::new(stores.clone()))?;
        registry.register(Box::new(saved_usd.clone()))?;
        registry.register(Box::new(lookup_seconds.clone()))?;
        registry.register(Box::new(embedding_seconds.clone()))?;
        registry.register(Box::new(tier_bytes.clone()))?;
        registry.register(Box::new(tier_entries.clone()))?;
        for result in ["hit-exact", "hit-semantic", "miss", "bypass"] {
            lookups.with_label_values(&[result]);
        }
        Ok(CacheMetrics { lookups, guard_rejections, stores, saved_usd, lookup_seconds, embedding_seconds, tier_bytes, tier_entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn lookups_rendered_by_result() {
        let registry = Registry::new();
        let metrics = CacheMetrics::register(&registry).unwrap();
        metrics.lookups.with_label_values(&["hit-exact"]).inc();
        metrics.saved_usd.inc_by(0.25);
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut buffer).unwrap();
        let text = String::from_utf8(buffer).unwrap();
        assert!(text.contains(r#"watchllm_cache_lookups_total{result="hit-exact"} 1"#), "{text}");
        assert!(text.contains(r#"watchllm_cache_lookups_total{result="miss"} 0"#), "{text}");
        assert!(text.contains("watchllm_cache_saved_usd_total 0.25"), "{text}");
    }
}
