//! Vector index search at 100,000 entries in one namespace (384 dimensions, cosine, the HNSW
//! settings of `VectorIndex`), with recall@1 against an exact f32 search.
//!
//! Run with `cargo bench --bench cache_index`. It prints one `index:` line per data set,
//! quantization and search expansion with the p50 and p99 of 1,000 timed searches and recall@1.
//! docs/BENCHMARKS.md records the figures. Environment variables:
//!
//! - `WATCHLLM_BENCH_INDEX_DATA`: `clustered` (default), `uniform` or `clustered,uniform`;
//! - `WATCHLLM_BENCH_INDEX_QUANTIZATIONS`: default `f32,i8`; `f16` is also accepted;
//! - `WATCHLLM_BENCH_INDEX_EXPANSIONS`: the search expansions to compare, default `16,32,64`;
//! - `WATCHLLM_BENCH_INDEX_ENTRIES`: default 100000.
//!
//! Built indexes are saved under `target/bench-data/` and reused by later runs, because one
//! build takes minutes on a small machine.
//!
//! "clustered" vectors imitate sentence embeddings: every vector shares a common direction (so
//! unrelated entries have a cosine of about 0.1), belongs to one of 300 topics (cosine about 0.5
//! within a topic), and has its own noise. Half of the queries are
//! rewordings of a stored entry (cosine about 0.9 to it), the other half new prompts on a known
//! topic. "uniform" vectors are uniformly random on the sphere, the hardest case for HNSW because
//! nothing clusters; its queries are random too.
//! NOTE: the clustered model is an assumption about real prompts, not a measurement of them.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use watchllm::cache::index::{Quantization, VectorIndex, INDEX_SETTINGS};

const DIMENSIONS: usize = 384;
const TOPICS: usize = 300;
const QUERIES: usize = 1_000;
const WARM_UP_QUERIES: usize = 200;
const NAMESPACE: [u8; 32] = [7; 32];

/// A xorshift generator: deterministic data without a dependency.
struct Random(u64);

impl Random {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal, by the Box-Muller transform.
    fn normal(&mut self) -> f32 {
        let u = self.uniform().max(f64::MIN_POSITIVE);
        let v = self.uniform();
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    /// Returns a random direction with a norm of about 1.
    fn direction(&mut self) -> Vec<f32> {
        let scale = 1.0 / (DIMENSIONS as f32).sqrt();
        (0..DIMENSIONS).map(|_| self.normal() * scale).collect()
    }
}

fn normalized(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}

/// Returns `sum(weight * part)`, normalized.
fn mix(parts: &[(f32, &[f32])]) -> Vec<f32> {
    let mut out = vec![0.0; DIMENSIONS];
    for (weight, part) in parts {
        out.iter_mut().zip(part.iter()).for_each(|(o, p)| *o += weight * p);
    }
    normalized(out)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Data {
    Clustered,
    Uniform,
}

/// The stored vectors and the queries of one data set.
struct DataSet {
    entries: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    warm_up: Vec<Vec<f32>>,
}

fn data_set(data: Data, count: usize) -> DataSet {
    let mut random = Random(0x9E37_79B9_7F4A_7C15);
    match data {
        Data::Uniform => {
            let mut sample = || normalized(random.direction());
            DataSet {
                entries: (0..count).map(|_| sample()).collect(),
                queries: (0..QUERIES).map(|_| sample()).collect(),
                warm_up: (0..WARM_UP_QUERIES).map(|_| sample()).collect(),
            }
        }
        Data::Clustered => {
            // Squared weights 0.1 (shared), 0.4 (topic) and 0.5 (own): cosine about 0.1 across
            // topics and 0.5 within one.
            let common = normalized(random.direction());
            let topics: Vec<Vec<f32>> = (0..TOPICS).map(|_| normalized(random.direction())).collect();
            let sample = |random: &mut Random| {
                let topic = &topics[(random.next_u64() % TOPICS as u64) as usize];
                let own = random.direction();
                mix(&[(0.1f32.sqrt(), &common), (0.4f32.sqrt(), topic), (0.5f32.sqrt(), &own)])
            };
            let entries: Vec<Vec<f32>> = (0..count).map(|_| sample(&mut random)).collect();
            let query = |random: &mut Random, i: usize| {
                if i % 2 == 0 {
                    // A rewording: cosine about 0.9 to a stored entry.
                    let stored = &entries[(random.next_u64() % count as u64) as usize];
                    let noise = random.direction();
                    mix(&[(1.0, stored), (0.33, &noise)])
                } else {
                    sample(random)
                }
            };
            let queries = (0..QUERIES).map(|i| query(&mut random, i)).collect();
            let warm_up = (0..WARM_UP_QUERIES).map(|i| query(&mut random, i)).collect();
            DataSet { entries, queries, warm_up }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight accumulators let the compiler vectorize the sum.
    let mut sums = [0.0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for lane in 0..8 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum()
}

/// Returns the id of the exact nearest entry of each query, on two threads.
fn exact_nearest(entries: &[Vec<f32>], queries: &[Vec<f32>]) -> Vec<u64> {
    let nearest = |query: &Vec<f32>| {
        let mut best = (0u64, f32::MIN);
        for (id, entry) in entries.iter().enumerate() {
            let similarity = dot(query, entry);
            if similarity > best.1 {
                best = (id as u64, similarity);
            }
        }
        best.0
    };
    let half = queries.len() / 2;
    std::thread::scope(|scope| {
        let first = scope.spawn(|| queries[..half].iter().map(nearest).collect::<Vec<_>>());
        let mut ids: Vec<u64> = queries[half..].iter().map(nearest).collect();
        let mut all = first.join().expect("exact search thread");
        all.append(&mut ids);
        all
    })
}

fn cached_index_path(data: Data, quantization: Quantization, count: usize) -> PathBuf {
    let settings = INDEX_SETTINGS;
    let name = format!("index-{data:?}-{quantization:?}-{count}-m{}-ea{}.idx", settings.connectivity, settings.expansion_add).to_lowercase();
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data").join(name)
}

fn build_or_load(data: Data, quantization: Quantization, entries: &[Vec<f32>]) -> VectorIndex {
    let path = cached_index_path(data, quantization, entries.len());
    if let Ok(index) = VectorIndex::load(DIMENSIONS, quantization, &path) {
        if index.stats().0 == entries.len() {
            println!("index: {data:?} {quantization:?}: loaded {} from {}", entries.len(), path.display());
            return index;
        }
    }
    let index = VectorIndex::new(DIMENSIONS, quantization);
    let started = Instant::now();
    for (id, vector) in entries.iter().enumerate() {
        index.add(&NAMESPACE, id as u64, vector).expect("add");
    }
    println!("index: {data:?} {quantization:?}: built {} entries in {:.1} s", entries.len(), started.elapsed().as_secs_f64());
    if std::fs::create_dir_all(path.parent().expect("parent")).is_ok() {
        index.save(&path).expect("save the built index");
    }
    index
}

fn measure(data: Data, quantization: Quantization, set: &DataSet, exact: &[u64]) {
    let index = build_or_load(data, quantization, &set.entries);
    for expansion in list("WATCHLLM_BENCH_INDEX_EXPANSIONS", "16,32,64") {
        let expansion: usize = expansion.parse().unwrap_or_else(|_| panic!("invalid expansion {expansion:?}"));
        index.set_expansion_search(expansion);
        measure_searches(&index, &format!("{data:?} {quantization:?} expansion_search {expansion}"), data, set, exact);
    }
}

fn measure_searches(index: &VectorIndex, label: &str, data: Data, set: &DataSet, exact: &[u64]) {
    for query in &set.warm_up {
        black_box(index.search(&NAMESPACE, query, 4).expect("search"));
    }

    let mut times = Vec::with_capacity(set.queries.len());
    let mut found: Vec<Vec<u64>> = Vec::with_capacity(set.queries.len());
    for query in &set.queries {
        let started = Instant::now();
        let matches = black_box(index.search(&NAMESPACE, query, 4).expect("search"));
        times.push(started.elapsed());
        found.push(matches.iter().map(|m| m.0).collect());
    }

    // recall@1: the first match is the exact nearest entry. The lookup reads all 4 matches, so
    // the share of searches whose 4 matches contain the exact nearest is printed too.
    let recall = |step: usize, offset: usize| {
        let picked: Vec<usize> = (offset..exact.len()).step_by(step).collect();
        let correct = picked.iter().filter(|&&i| found[i].first() == Some(&exact[i])).count();
        correct as f64 / picked.len() as f64
    };
    let in_four = (0..exact.len()).filter(|&i| found[i].contains(&exact[i])).count() as f64 / exact.len() as f64;
    times.sort();
    let percentile = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    let detail = match data {
        Data::Clustered => format!(" (rewordings {:.3}, new prompts {:.3})", recall(2, 0), recall(2, 1)),
        Data::Uniform => String::new(),
    };
    println!(
        "index: {label}: search p50 {:.0} us, p99 {:.0} us, mean {:.0} us, max {:.0} us; recall@1 {:.3}{detail}, nearest in 4 matches {in_four:.3}; memory {} MiB",
        micros(percentile(0.50)),
        micros(percentile(0.99)),
        micros(mean),
        micros(percentile(1.0)),
        recall(1, 0),
        index.stats().1 / (1024 * 1024),
    );
}

fn list(variable: &str, default: &str) -> Vec<String> {
    let value = std::env::var(variable).unwrap_or_else(|_| default.to_string());
    value.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()).collect()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and then a smoke run of
    // 2,000 entries checks that the benchmark still works.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let default_count = if benchmarking { 100_000 } else { 2_000 };
    let count: usize = std::env::var("WATCHLLM_BENCH_INDEX_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_count);
    let settings = INDEX_SETTINGS;
    println!(
        "index: usearch {}, SIMD available {}, connectivity {}, expansion_add {}, expansion_search {}",
        usearch::version(),
        usearch::hardware_acceleration_available(),
        settings.connectivity,
        settings.expansion_add,
        settings.expansion_search
    );

    for name in list("WATCHLLM_BENCH_INDEX_DATA", "clustered") {
        let data = match name.as_str() {
            "clustered" => Data::Clustered,
            "uniform" => Data::Uniform,
            other => panic!("unknown data set {other:?}; expected clustered or uniform"),
        };
        let set = data_set(data, count);
        let started = Instant::now();
        let exact = exact_nearest(&set.entries, &set.queries);
        println!("index: {data:?}: exact search of {} queries in {:.1} s", set.queries.len(), started.elapsed().as_secs_f64());
        for quantization in list("WATCHLLM_BENCH_INDEX_QUANTIZATIONS", "f32,i8") {
            let quantization = Quantization::parse(&quantization).unwrap_or_else(|| panic!("unknown quantization {quantization:?}"));
            measure(data, quantization, &set, &exact);
        }
    }
}
