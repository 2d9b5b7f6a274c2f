//! Checks the gateway's BERT encoder against candle's reference implementation of the same model
//! (`candle_transformers::models::bert`, exact GELU, f32) on every prompt of the labelled set in
//! tests/data/cache_pairs.jsonl. The encoder must keep a cosine agreement of at least 0.99 with
//! the reference on each prompt, in each precision of `Precision::ALL` that the CPU supports: f32
//! everywhere, bf16 weights with AVX-512, bf16 weights and inputs on AMX tiles. `--nocapture`
//! prints the figures.
//!
//! The model must be installed (`bash scripts/install-model.sh`); `WATCHLLM_MODEL_DIR` overrides
//! its place.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use watchllm::embed::{cosine, Embedder, Precision, INSTALL_COMMAND};

fn model_dir() -> PathBuf {
    match std::env::var("WATCHLLM_MODEL_DIR") {
        Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("state/models/all-MiniLM-L6-v2"),
    }
}

fn prompts() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/cache_pairs.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut prompts: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .flat_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            [value["a"].as_str().unwrap().to_string(), value["b"].as_str().unwrap().to_string()]
        })
        .collect();
    prompts.sort();
    prompts.dedup();
    prompts
}

/// The reference: candle's BERT, mean pooling over the tokens, L2 normalization.
struct Reference {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
}

impl Reference {
    fn load(dir: &std::path::Path) -> Reference {
        let config: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
        let builder = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu).unwrap();
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).unwrap();
        Reference { model: BertModel::load(builder, &config).unwrap(), tokenizer }
    }

    fn embed(&self, text: &str) -> Vec<f32> {
        let ids = self.tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        let length = ids.len();
        let ids = Tensor::from_vec(ids, (1, length), &Device::Cpu).unwrap();
        let hidden = self.model.forward(&ids, &ids.zeros_like().unwrap(), None).unwrap();
        let mean = hidden.mean(1).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
        mean.iter().map(|x| x / norm).collect()
    }
}

#[test]
fn encoder_agrees_with_the_reference_model() {
    let dir = model_dir();
    let reference = Reference::load(&dir);
    let prompts = prompts();
    assert!(prompts.len() >= 200, "the labelled set should give at least 200 prompts, got {}", prompts.len());
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let expected: Vec<Vec<f32>> = texts.iter().map(|text| reference.embed(text)).collect();

    for precision in Precision::ALL {
        if !precision.is_supported() {
            println!("{precision:?}: skipped, this CPU does not support it");
            continue;
        }
        let embedder = Embedder::load_with_precision(&dir, 256, precision)
            .unwrap_or_else(|e| panic!("{e}; install the model with `{INSTALL_COMMAND}`"));

        // Batches of 32 prompts, as the pool sends them, so that batching is checked too.
        let ours: Vec<Vec<f32>> = texts.chunks(32).flat_map(|batch| embedder.embed_batch(batch).into_iter().map(|r| r.unwrap())).collect();
        let agreements: Vec<f32> = ours.iter().zip(&expected).map(|(vector, reference)| cosine(vector, reference)).collect();

        let lowest = agreements.iter().copied().fold(f32::INFINITY, f32::min);
        let mean = agreements.iter().sum::<f32>() / agreements.len() as f32;
        println!("{precision:?}: cosine agreement with the reference on {} prompts: mean {mean:.6}, lowest {lowest:.6}", agreements.len());
        assert!(lowest >= 0.99, "{precision:?}: lowest agreement {lowest} is below 0.99");
    }
}
