//! Measures the semantic cache on the labelled prompt pairs in tests/data/cache_pairs.jsonl with
//! the real all-MiniLM-L6-v2 model. It reports the hit rate on paraphrases and the false-hit rate
//! on near misses (other numbers, entities, negations, units, or opposite words) at the default
//! threshold, with and without the guard. It fails when false hits with the guard exceed 1%.
//!
//! The model must be installed (`bash scripts/install-model.sh`); `WATCHLLM_MODEL_DIR` overrides
//! its place. Run with `--nocapture` to see the table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use watchllm::cache::config::DEFAULT_THRESHOLD;
use watchllm::cache::guard;
use watchllm::cache::index::{Quantization, VectorIndex};
use watchllm::embed::{cosine, Embedder, DIMENSIONS, INSTALL_COMMAND};

struct Pair {
    a: String,
    b: String,
    paraphrase: bool,
    kind: String,
}

fn model_dir() -> PathBuf {
    match std::env::var("WATCHLLM_MODEL_DIR") {
        Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("state/models/all-MiniLM-L6-v2"),
    }
}

fn load_embedder() -> Embedder {
    let dir = model_dir();
    Embedder::load(&dir, 256).unwrap_or_else(|e| panic!("{e}; install the model with `{INSTALL_COMMAND}`"))
}

fn pairs() -> Vec<Pair> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/cache_pairs.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            Pair {
                a: value["a"].as_str().unwrap().to_string(),
                b: value["b"].as_str().unwrap().to_string(),
                paraphrase: value["label"] == "paraphrase",
                kind: value["kind"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

fn embed_all(embedder: &Embedder, texts: &[&str]) -> Vec<Vec<f32>> {
    texts.chunks(32).flat_map(|batch| embedder.embed_batch(batch).into_iter().map(|r| r.unwrap())).collect()
}

#[test]
fn known_similarities_reproduced() {
    let embedder = load_embedder();
    // Cosine similarities of all-MiniLM-L6-v2 measured with the reference (PyTorch) model.
    let cases = [
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", 0.993),
        ("Convert 5 miles to kilometers", "Convert 8 miles to kilometers", 0.849),
        ("How do I reset my password?", "How can I change my password if I forgot it?", 0.866),
    ];
    for (a, b, expected) in cases {
        let vectors = embed_all(&embedder, &[a, b]);
        let similarity = cosine(&vectors[0], &vectors[1]);
        assert!((similarity - expected).abs() < 0.01, "{a} / {b}: {similarity} instead of {expected}");
        let norm: f32 = vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalized: {norm}");
    }
}

#[test]
fn batched_equals_single() {
    let embedder = load_embedder();
    let texts = ["short", "a somewhat longer sentence with more tokens in it", "mid length text"];
    let batched = embed_all(&embedder, &texts);
    for (text, vector) in texts.iter().zip(&batched) {
        let single = embedder.embed(text).unwrap();
        assert!(cosine(&single, vector) > 0.9999, "padding changed the embedding of {text:?}");
    }
}

#[test]
fn guard_keeps_false_hits_below_one_percent() {
    let embedder = load_embedder();
    let pairs = pairs();
    assert!(pairs.len() >= 200, "the labelled set has {} pairs", pairs.len());
    let firsts: Vec<&str> = pairs.iter().map(|p| p.a.as_str()).collect();
    let seconds: Vec<&str> = pairs.iter().map(|p| p.b.as_str()).collect();
    let (va, vb) = (embed_all(&embedder, &firsts), embed_all(&embedder, &seconds));

    // kind -> (pairs, hits without guard, hits with guard)
    let mut table: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let threshold = DEFAULT_THRESHOLD;
    for ((pair, a), b) in pairs.iter().zip(&va).zip(&vb) {
        let similarity = cosine(a, b);
        let above = similarity >= threshold;
        let guarded = above && guard::check(&pair.a, &pair.b).is_ok();
        let row = table.entry(pair.kind.clone()).or_default();
        row.0 += 1;
        row.1 += usize::from(above);
        row.2 += usize::from(guarded);
        if pair.paraphrase && !guarded {
            println!("missed paraphrase ({similarity:.3}): {} / {}", pair.a, pair.b);
        }
        if !pair.paraphrase && guarded {
            println!("FALSE HIT ({similarity:.3}, {}): {} / {}", pair.kind, pair.a, pair.b);
        }
    }

    let total = |paraphrase: bool| {
        pairs.iter().zip(&va).zip(&vb).filter(|((p, _), _)| p.paraphrase == paraphrase).fold((0, 0, 0), |acc, ((p, a), b)| {
            let above = cosine(a, b) >= threshold;
            let guarded = above && guard::check(&p.a, &p.b).is_ok();
            (acc.0 + 1, acc.1 + usize::from(above), acc.2 + usize::from(guarded))
        })
    };
    let (paraphrases, hits_plain, hits_guarded) = total(true);
    let (near_misses, false_plain, false_guarded) = total(false);
    let percent = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
    println!("threshold {threshold}: {} pairs", pairs.len());
    println!("kind        pairs  above threshold  with guard");
    for (kind, (count, plain, guarded)) in &table {
        println!("{kind:<11} {count:>5}  {plain:>15}  {guarded:>10}");
    }
    println!(
        "paraphrase hit rate: {:.1}% without the guard, {:.1}% with it ({paraphrases} pairs)",
        percent(hits_plain, paraphrases),
        percent(hits_guarded, paraphrases)
    );
    println!(
        "near-miss false-hit rate: {:.1}% without the guard, {:.1}% with it ({near_misses} pairs)",
        percent(false_plain, near_misses),
        percent(false_guarded, near_misses)
    );
    assert!(percent(false_guarded, near_misses) <= 1.0, "false-hit rate with the guard is {:.1}%", percent(false_guarded, near_misses));
}

#[test]
fn quantized_index_agrees_with_f32() {
    let embedder = load_embedder();
    let pairs = pairs();
    let texts: Vec<&str> = pairs.iter().map(|p| p.a.as_str()).collect();
    let vectors = embed_all(&embedder, &texts);
    for quantization in [Quantization::F16, Quantization::I8] {
        let mut worst = 1.0f32;
        for (i, vector) in vectors.iter().enumerate() {
            // The similarity of a vector to its own stored (quantized) copy is their cosine agreement.
            let index = VectorIndex::new(DIMENSIONS, quantization);
            index.add(&[0; 32], i as u64, vector).unwrap();
            let found = index.search(&[0; 32], vector, 1).unwrap();
            worst = worst.min(found[0].1);
        }
        println!("{quantization:?}: worst cosine agreement with f32 {worst:.5}");
        assert!(worst >= 0.99, "{quantization:?} agreement {worst}");
    }
}
