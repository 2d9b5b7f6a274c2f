//! The sentence embedding model: BERT all-MiniLM-L6-v2 on the CPU (the encoder in `bert`), mean
//! pooling over the tokens, L2-normalized 384-dimensional vectors.
//!
//! The model is read from a local directory holding `model.safetensors` and `tokenizer.json`
//! (and optionally `config.json`); nothing is downloaded. `scripts/install-model.sh` installs it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::Tokenizer;

use super::bert::{Bert, Shape};
use super::kernels::Precision;

/// Dimensions of an all-MiniLM-L6-v2 embedding.
pub const DIMENSIONS: usize = 384;

/// The command that installs the model, named in start-up errors.
pub const INSTALL_COMMAND: &str = "bash scripts/install-model.sh";

/// all-MiniLM-L6-v2's `config.json`, used when the model directory has none.
const DEFAULT_CONFIG: &str = r#"{"vocab_size":30522,"hidden_size":384,"num_hidden_layers":6,"num_attention_heads":12,
"intermediate_size":1536,"hidden_act":"gelu","hidden_dropout_prob":0.1,"max_position_embeddings":512,"type_vocab_size":2,
"initializer_range":0.02,"layer_norm_eps":1e-12,"pad_token_id":0,"position_embedding_type":"absolute","use_cache":true,
"classifier_dropout":null,"model_type":"bert"}"#;

/// The fields of a BERT `config.json` that the encoder needs.
#[derive(Deserialize)]
struct Config {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    layer_norm_eps: f64,
    hidden_act: String,
}

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
    model: Bert,
    precision: Precision,
    tokenizer: Tokenizer,
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
    /// Loads the model from `dir`, with the fastest precision of this CPU
    /// ([`Precision::fastest`]). Texts longer than `max_tokens` (including the two special tokens)
    /// are rejected, not cut, so that two prompts differing only past the cut cannot match.
    pub fn load(dir: &Path, max_tokens: usize) -> Result<Embedder, EmbedError> {
        Embedder::load_with_precision(dir, max_tokens, Precision::fastest())
    }

    /// Loads the model like [`Embedder::load`], with its linear layers' weights in `precision`.
    /// Fails if the CPU does not support `precision`.
    pub fn load_with_precision(dir: &Path, max_tokens: usize, precision: Precision) -> Result<Embedder, EmbedError> {
        check_model_dir(dir)?;
        let fail = |reason: String| EmbedError::Load { dir: dir.to_path_buf(), reason };

        let config_text = match std::fs::read_to_string(dir.join("config.json")) {
            Ok(text) => text,
            Err(_) => DEFAULT_CONFIG.to_string(),
        };
        let config: Config = serde_json::from_str(&config_text).map_err(|e| fail(format!("invalid config.json: {e}")))?;
        if !matches!(config.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
            return Err(fail(format!("config.json: hidden_act {:?} is not supported; the encoder computes GELU", config.hidden_act)));
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(fail("config.json: hidden_size must be a multiple of num_attention_heads".into()));
        }

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| fail(format!("invalid tokenizer.json: {e}")))?;
        // The shipped tokenizer pads every input to 128 tokens and cuts longer ones. Here the
        // tokenizer neither pads nor cuts: the encoder takes sequences of any length, and long
        // inputs are detected rather than cut.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| fail(format!("cannot turn off truncation: {e}")))?;

        let weights = std::fs::read(dir.join("model.safetensors")).map_err(|e| fail(format!("cannot read model.safetensors: {e}")))?;
        let shape = Shape {
            hidden: config.hidden_size,
            layers: config.num_hidden_layers,
            heads: config.num_attention_heads,
            intermediate: config.intermediate_size,
            max_positions: config.max_position_embeddings,
            layer_norm_eps: config.layer_norm_eps as f32,
        };
        let model = Bert::load(&weights, shape, precision).map_err(fail)?;
        Ok(Embedder { model, precision, tokenizer, max_tokens: max_tokens.min(config.max_position_embeddings) })
    }

    /// Returns the precision of the weights of the model's linear layers.
    pub fn precision(&self) -> Precision {
        self.precision
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
            let sequences: Vec<&[u32]> = encodings.iter().map(|encoding| encoding.get_ids()).collect();
            for (i, vector) in accepted.iter().zip(self.model.embed(&sequences)) {
                results[*i] = Some(Ok(vector));
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
}

/// Returns the cosine similarity of two L2-normalized vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
