//! Sentence embeddings for the semantic cache: the model (`model`), its BERT encoder (`bert`)
//! and matrix products (`kernels`), and the thread pool that batches concurrent requests (`pool`).

mod bert;
mod kernels;
pub mod model;
pub mod pool;

pub use kernels::Precision;
pub use model::{check_model_dir, cosine, EmbedError, Embedder, DIMENSIONS, INSTALL_COMMAND};
pub use pool::{EmbedPool, PoolOptions};
