//! Embedding latency of the semantic cache's model (all-MiniLM-L6-v2, CPU).
//!
//! Run with `cargo bench --bench cache_embed`; the model must be installed
//! (`bash scripts/install-model.sh`, or `WATCHLLM_MODEL_DIR`). Criterion measures one 30-token
//! prompt and a batch of 32 in each precision that the CPU supports (`single_30_tokens/Amx`,
//! `batch_32/F32`, ...). It also runs the same prompt through candle's own BERT implementation, the
//! reference in the same run. Then 64 concurrent requesters drive the embedding pool to measure
//! prompts per second with batching, printed as `pool: ...`: with 1 and 2 workers in the fastest
//! precision, and with 2 workers in each other supported precision
//! (`WATCHLLM_BENCH_EMBED_POOL=0` skips the pool). docs/BENCHMARKS.md records the figures.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use watchllm::embed::{EmbedPool, Embedder, PoolOptions, Precision};

/// A prompt of 30 tokens with the two special tokens (checked below).
const PROMPT: &str = "How can I configure my home router so that the guest network cannot reach the printer but still gets fast internet access at night";

fn model_dir() -> PathBuf {
    match std::env::var("WATCHLLM_MODEL_DIR") {
        Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("state/models/all-MiniLM-L6-v2"),
    }
}

fn prompts(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{PROMPT} {i}")).collect()
}

fn supported_precisions() -> Vec<Precision> {
    Precision::ALL.into_iter().filter(|precision| precision.is_supported()).collect()
}

fn embedding(c: &mut Criterion) {
    let embedders: Vec<Embedder> = supported_precisions()
        .into_iter()
        .map(|precision| Embedder::load_with_precision(&model_dir(), 256, precision).expect("install the model with bash scripts/install-model.sh"))
        .collect();
    assert_eq!(embedders[0].token_count(PROMPT).expect("tokens"), 30, "the benchmark prompt should have 30 tokens");
    println!("embedding: candle sees {} thread(s) (RAYON_NUM_THREADS or the CPUs available)", candle_core::utils::get_num_threads());
    println!("embedding: precisions of this CPU, fastest first: {:?}", supported_precisions());
    let mut group = c.benchmark_group("embedding");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));

    group.throughput(Throughput::Elements(1));
    for embedder in &embedders {
        let id = BenchmarkId::new("single_30_tokens", format!("{:?}", embedder.precision()));
        group.bench_function(id, |b| b.iter(|| black_box(embedder.embed(black_box(PROMPT)).unwrap())));
    }
    let reference = CandleBert::load(&model_dir());
    group.bench_function("single_30_tokens_candle_reference", |b| b.iter(|| black_box(reference.embed(black_box(PROMPT)))));

    let batch = prompts(32);
    let texts: Vec<&str> = batch.iter().map(String::as_str).collect();
    group.throughput(Throughput::Elements(32));
    for embedder in &embedders {
        let id = BenchmarkId::new("batch_32", format!("{:?}", embedder.precision()));
        group.bench_function(id, |b| b.iter(|| black_box(embedder.embed_batch(black_box(&texts)))));
    }
    group.finish();
}

/// candle-transformers' BERT on the same weights, without the pooling: the reference.
struct CandleBert {
    model: candle_transformers::models::bert::BertModel,
    tokenizer: tokenizers::Tokenizer,
}

impl CandleBert {
    fn load(dir: &std::path::Path) -> CandleBert {
        let config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config.json")).expect("config");
        let weights = std::fs::read(dir.join("model.safetensors")).expect("weights");
        let device = candle_core::Device::Cpu;
        let builder = candle_nn::VarBuilder::from_buffered_safetensors(weights, candle_core::DType::F32, &device).expect("weights");
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
        tokenizer.with_padding(None);
        CandleBert { model: candle_transformers::models::bert::BertModel::load(builder, &config).expect("model"), tokenizer }
    }

    fn embed(&self, text: &str) -> candle_core::Tensor {
        let ids = self.tokenizer.encode(text, true).expect("tokens").get_ids().to_vec();
        let length = ids.len();
        let ids = candle_core::Tensor::from_vec(ids, (1, length), &candle_core::Device::Cpu).expect("ids");
        self.model.forward(&ids, &ids.zeros_like().expect("types"), None).expect("forward")
    }
}

/// Prompts per second through the pool with `requesters` concurrent tasks, `threads` workers and
/// products in `precision`.
fn pool_throughput(precision: Precision, threads: usize, requesters: usize, per_requester: usize) -> f64 {
    let embedder = Embedder::load_with_precision(&model_dir(), 256, precision).expect("model");
    let pool = EmbedPool::start(embedder, PoolOptions { threads, max_batch: 32, queue_capacity: 1024 }).expect("pool");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for r in 0..requesters {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_requester {
                    pool.embed(format!("{PROMPT} {r} {i}")).await.expect("embedding");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        (requesters * per_requester) as f64 / started.elapsed().as_secs_f64()
    })
}

fn pool(_: &mut Criterion) {
    if std::env::var("WATCHLLM_BENCH_EMBED_POOL").is_ok_and(|v| v == "0") {
        return;
    }
    let precisions = supported_precisions();
    let fastest = precisions[0];
    let rate = pool_throughput(fastest, 1, 64, 16);
    println!("pool: 1 worker thread(s), {fastest:?} precision, 64 concurrent requesters: {rate:.0} prompts/s");
    for precision in precisions {
        let rate = pool_throughput(precision, 2, 64, 16);
        println!("pool: 2 worker thread(s), {precision:?} precision, 64 concurrent requesters: {rate:.0} prompts/s");
    }
}

criterion_group!(benches, embedding, pool);
criterion_main!(benches);
