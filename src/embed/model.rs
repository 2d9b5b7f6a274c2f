//! The sentence embedding model: BERT all-MiniLM-L6-v2 on the CPU with candle, mean pooling over
//! the attention mask, L2-normalized 384-dimensional vectors.
//!
//! The model is read from a local directory holding `model.safetensors` and `tokenizer.json`
//! (and optionally `config.json`); nothing is downloaded. `scripts/install-model.sh` installs it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Encoding, Tokenizer};

/// Dimensions of an all-MiniLM-L6-v2 embedding.
pub const DIMENSIONS: usize = 384;

/// The command that installs the model, named in start-up errors.
pub const INSTALL_COMMAND: &str = "bash scripts/install-model.sh";

/// all-MiniLM-L6-v2's `config.json`, used when the model directory has none.
const DEFAULT_CONFIG: &str = r#"{"vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,"num_attention_heads":12,
"intermediate_size":1536,"hidden_act":"gelu","hidden_dropout_prob":0.1,"max_position_embeddings":512,"type_vocab_size":2,
"initializer_range":0.02,"layer_norm_eps":1e-12,"pad_token_id":0,"position_embedding_type":"absolute","use_cache":true,
"classifier_dropout":null,"model_type":"bert"}"#;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("the embedding model is missing: {missing} not found in {dir}; install it with `{INSTALL_COMMAND}` or set cache.semantic.model_dir", missing = .missing.display(), dir = .dir.display())]
    ModelMissing { dir: PathBuf, missing: PathBuf },
    #[error("failed to load the embedding model from {dir}: {reason}", dir = .dir.display())]
    Load { dir: PathBuf, reason: String },
    #[error("the text has {tokens} tokens, more than the {max} that the cache embeds")]
    TooLong { tokens: usize, max: usize },
    #[error("embedding failed: {0}")]
    Inference(String),
    #[error("the embedding pool is busy or stopped")]
    Unavailable,
}

/// A loaded model and its tokenizer. Not shared between threads: each pool worker loads its own.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    max_tokens: usize,
}

/// Returns an error naming the first required model file missing from `dir`.
pub fn check_model_dir(dir: &Path) -> Result<(), EmbedError> {
    for file in ["model.safetensors", "tokenizer.json"] {
        let path = dir.join(file);
        if !path.is_file() {
            return Err(EmbedError::ModelMissing { dir: dir.to_path_buf(), missing: path });
        }
    }
    Ok(())
}

impl Embedder {
    /// Loads the model from `dir`. Texts longer than `max_tokens` (including the two special
    /// tokens) are rejected, not cut, so that two prompts differing only past the cut cannot match.
    pub fn load(dir: &Path, max_tokens: usize) -> Result<Embedder, EmbedError> {
        check_model_dir(dir)?;
        let fail = |reason: String| EmbedError::Load { dir: dir.to_path_buf(), reason };

        let config_text = match std::fs::read_to_string(dir.join("config.json")) {
            Ok(text) => text,
            Err(_) => DEFAULT_CONFIG.to_string(),
        };
        let config: Config = serde_json::from_str(&config_text).map_err(|e| fail(format!("invalid config.json: {e}")))?;

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| fail(format!("invalid tokenizer.json: {e}")))?;
        // The shipped tokenizer pads every input to 128 tokens and cuts longer ones. Here the
        // tokenizer neither pads nor cuts: `forward` pads a batch to its longest input, and long
        // inputs are detected rather than cut.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| fail(format!("cannot turn off truncation: {e}")))?;

        let weights = std::fs::read(dir.join("model.safetensors")).map_err(|e| fail(format!("cannot read model.safetensors: {e}")))?;
        let device = Device::Cpu;
        let builder = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).map_err(|e| fail(e.to_string()))?;
        let model = BertModel::load(builder, &config).map_err(|e| fail(e.to_string()))?;
        Ok(Embedder { model, tokenizer, device, max_tokens: max_tokens.min(config.max_position_embeddings) })
    }

    /// Embeds a batch of texts. Each result is its own: a text that is too long fails alone.
    pub fn embed_batch(&self, texts: &[&str]) -> Vec<Result<Vec<f32>, EmbedError>> {
        let mut results: Vec<Option<Result<Vec<f32>, EmbedError>>> = texts.iter().map(|_| None).collect();
        let mut accepted = Vec::new();
        let mut encodings = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            match self.tokenizer.encode(*text, true) {
                Ok(encoding) if encoding.len() > self.max_tokens => {
                    results[i] = Some(Err(EmbedError::TooLong { tokens: encoding.len(), max: self.max_tokens }))
                }
                Ok(encoding) => {
                    accepted.push(i);
                    encodings.push(encoding);
                }
                Err(e) => results[i] = Some(Err(EmbedError::Inference(e.to_string()))),
            }
        }
        if !accepted.is_empty() {
            match self.forward(&encodings) {
                Ok(vectors) => {
                    for (i, vector) in accepted.iter().zip(vectors) {
                        results[*i] = Some(Ok(vector));
                    }
                }
                Err(e) => {
                    for i in &accepted {
                        results[*i] = Some(Err(EmbedError::Inference(e.to_string())));
                    }
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Err(EmbedError::Unavailable))).collect()
    }

    /// Returns the number of tokens of `text`, the two special tokens included.
    pub fn token_count(&self, text: &str) -> Result<usize, EmbedError> {
        self.tokenizer.encode(text, true).map(|encoding| encoding.len()).map_err(|e| EmbedError::Inference(e.to_string()))
    }

    /// Embeds one text.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        self.embed_batch(&[text]).pop().unwrap_or(Err(EmbedError::Unavailable))
    }

    /// Runs the model on the encodings, padded to the longest with the pad id 0 and a mask of 0.
    fn forward(&self, encodings: &[Encoding]) -> Result<Vec<Vec<f32>>, String> {
        let length = encodings.iter().map(Encoding::len).max().unwrap_or(0);
        let mut ids = vec![0u32; encodings.len() * length];
        let mut mask = vec![0u32; encodings.len() * length];
        for (row, encoding) in encodings.iter().enumerate() {
            let start = row * length;
            ids[start..start + encoding.len()].copy_from_slice(encoding.get_ids());
            mask[start..start + encoding.len()].copy_from_slice(encoding.get_attention_mask());
        }
        let shape = (encodings.len(), length);
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let input_ids = Tensor::from_vec(ids, shape, &self.device)?;
            let attention = Tensor::from_vec(mask, shape, &self.device)?;
            let token_types = input_ids.zeros_like()?;
            let hidden = self.model.forward(&input_ids, &token_types, Some(&attention))?;
            // Mean over the real tokens only, then L2 normalization.
            let weights = attention.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
            let counts = weights.sum(1)?.clamp(1e-9, f64::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            mean.broadcast_div(&norms)?.to_vec2::<f32>()
        };
        run().map_err(|e| e.to_string())
    }
}

/// Returns the cosine similarity of two L2-normalized vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
