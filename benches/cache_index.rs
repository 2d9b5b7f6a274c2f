//! Vector index search at 100,000 entries in one namespace (384 dimensions, cosine, HNSW with
//! usearch's default connectivity), for each quantization.
//!
//! Run with `cargo bench --bench cache_index`. Criterion reports the mean; the p50 and p99 of
//! 2,000 timed searches are printed as `index: ...`. The vectors are random unit vectors, not
//! embeddings, so the recall of real prompts is not measured here.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use watchllm::cache::index::{Quantization, VectorIndex};

const ENTRIES: u64 = 100_000;
const DIMENSIONS: usize = 384;

fn unit_vector(seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let mut vector: Vec<f32> = (0..DIMENSIONS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}

fn search(c: &mut Criterion) {
    let namespace = [7u8; 32];
    let mut group = c.benchmark_group("index_search_100k");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for quantization in [Quantization::F32, Quantization::F16, Quantization::I8] {
        let index = VectorIndex::new(DIMENSIONS, quantization);
        let started = Instant::now();
        for id in 0..ENTRIES {
            index.add(&namespace, id, &unit_vector(id)).expect("add");
        }
        println!("index: {quantization:?}: built {ENTRIES} entries in {:.1} s", started.elapsed().as_secs_f64());

        let queries: Vec<Vec<f32>> = (0..2_000).map(|i| unit_vector(ENTRIES + i)).collect();
        let mut times: Vec<Duration> = queries
            .iter()
            .map(|query| {
                let started = Instant::now();
                black_box(index.search(&namespace, query, 4).expect("search"));
                started.elapsed()
            })
            .collect();
        times.sort();
        let percentile = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_micros();
        println!("index: {quantization:?}: search p50 {} us, p99 {} us", percentile(0.50), percentile(0.99));

        let query = unit_vector(u64::MAX / 3);
        group.bench_function(format!("{quantization:?}"), |b| b.iter(|| black_box(index.search(&namespace, black_box(&query), 4).expect("search"))));
    }
    group.finish();
}

criterion_group!(benches, search);
criterion_main!(benches);
