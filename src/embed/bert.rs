//! The BERT encoder of all-MiniLM-L6-v2, run on plain `f32` buffers.
//!
//! candle's general tensor operations spend more time packing operands and allocating than
//! multiplying at this model's size (a few dozen tokens, 384 wide). This encoder keeps one
//! buffer per stage, multiplies with weights packed once at load ([`PackedLinear`]) and fuses
//! the query, key and value projections into one product. The arithmetic is that of the model
//! with two exceptions. GELU uses its tanh form (within 5e-4 of the exact one). And the linear
//! layers run in the [`Precision`] given at load, which the embedder sets to the fastest of the
//! CPU. With AMX their weights and their inputs are rounded to bf16 (8 significant bits) and
//! summed in f32. With AVX-512 and no AMX only their weights are bf16. Sums, residuals, attention,
//! layer norm and GELU stay f32 in every precision.
//! An integration test, `tests/embed_agreement.rs`, checks the embeddings of each precision that
//! the CPU supports against candle's reference implementation.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use pulp::{Arch, Simd, WithSimd};

use super::kernels::{PackedLinear, Precision};

/// The shape of a BERT encoder, from the model's `config.json`.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub layer_norm_eps: f32,
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Layer {
    /// Query, key and value projections in one: each output row is `[q | k | v]`.
    qkv: PackedLinear,
    attention_out: PackedLinear,
    attention_norm: Norm,
    intermediate: PackedLinear,
    output: PackedLinear,
    output_norm: Norm,
}

pub struct Bert {
    shape: Shape,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

/// The tensors of a safetensors file by name, and the precision to pack the linear layers in.
struct Weights {
    tensors: HashMap<String, Tensor>,
    precision: Precision,
}

impl Weights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let tensor = self.tensors.get(name).ok_or_else(|| format!("tensor {name} is missing"))?;
        if tensor.dims() != shape {
            return Err(format!("tensor {name} has shape {:?}, expected {shape:?}", tensor.dims()));
        }
        tensor
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("tensor {name}: {e}"))
    }

    /// Reads a table of rows of `width` values, however many rows it has.
    fn rows(&self, name: &str, width: usize) -> Result<Vec<f32>, String> {
        let rows = self.tensors.get(name).and_then(|t| t.dims().first().copied()).unwrap_or(0);
        self.get(name, &[rows, width])
    }

    fn norm(&self, prefix: &str, width: usize) -> Result<Norm, String> {
        Ok(Norm { weight: self.get(&format!("{prefix}.weight"), &[width])?, bias: self.get(&format!("{prefix}.bias"), &[width])? })
    }

    fn linear(&self, prefix: &str, outputs: usize, inputs: usize) -> Result<PackedLinear, String> {
        let weight = self.get(&format!("{prefix}.weight"), &[outputs, inputs])?;
        let bias = self.get(&format!("{prefix}.bias"), &[outputs])?;
        Ok(PackedLinear::pack(self.precision, &weight, bias, outputs, inputs))
    }
}

impl Bert {
    /// Reads the encoder from the bytes of a safetensors file and packs its linear layers in
    /// `precision`, which the CPU must support. Tensor names may carry a `bert.` prefix, as some
    /// exports do.
    pub fn load(safetensors: &[u8], shape: Shape, precision: Precision) -> Result<Bert, String> {
        if !precision.is_supported() {
            return Err(format!("{precision:?} weights are not supported on this CPU; load the model with Precision::F32"));
        }
        let mut tensors = candle_core::safetensors::load_buffer(safetensors, &Device::Cpu).map_err(|e| e.to_string())?;
        if !tensors.contains_key("embeddings.word_embeddings.weight") {
            tensors = tensors.into_iter().map(|(name, t)| (name.strip_prefix("bert.").unwrap_or(&name).to_string(), t)).collect();
        }
        let weights = Weights { tensors, precision };
        let Shape { hidden, intermediate, .. } = shape;
        let word = weights.rows("embeddings.word_embeddings.weight", hidden)?;
        let position = weights.get("embeddings.position_embeddings.weight", &[shape.max_positions, hidden])?;
        let token_type = weights.rows("embeddings.token_type_embeddings.weight", hidden)?;
        let embedding_norm = weights.norm("embeddings.LayerNorm", hidden)?;

        let mut layers = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let prefix = format!("encoder.layer.{i}");
            let mut qkv_weight = Vec::with_capacity(3 * hidden * hidden);
            let mut qkv_bias = Vec::with_capacity(3 * hidden);
            for part in ["query", "key", "value"] {
                qkv_weight.extend(weights.get(&format!("{prefix}.attention.self.{part}.weight"), &[hidden, hidden])?);
                qkv_bias.extend(weights.get(&format!("{prefix}.attention.self.{part}.bias"), &[hidden])?);
            }
            layers.push(Layer {
                qkv: PackedLinear::pack(precision, &qkv_weight, qkv_bias, 3 * hidden, hidden),
                attention_out: weights.linear(&format!("{prefix}.attention.output.dense"), hidden, hidden)?,
                attention_norm: weights.norm(&format!("{prefix}.attention.output.LayerNorm"), hidden)?,
                intermediate: weights.linear(&format!("{prefix}.intermediate.dense"), intermediate, hidden)?,
                output: weights.linear(&format!("{prefix}.output.dense"), hidden, intermediate)?,
                output_norm: weights.norm(&format!("{prefix}.output.LayerNorm"), hidden)?,
            });
        }
        Ok(Bert { shape, word, position, token_type, embedding_norm, layers })
    }

    /// Returns the mean-pooled, L2-normalized embedding of each sequence of token ids. The
    /// sequences share the matrix products without padding, and attention stays within each.
    pub fn embed(&self, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        Arch::new().dispatch(EmbedPass { bert: self, sequences })
    }

    #[inline(always)]
    fn embed_with_cpu_features(&self, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        let hidden = self.shape.hidden;
        let vocabulary = self.word.len() / hidden;
        let lengths: Vec<usize> = sequences.iter().map(|ids| ids.len().min(self.shape.max_positions)).collect();
        let mut state = Vec::with_capacity(lengths.iter().sum::<usize>() * hidden);
        for (ids, &length) in sequences.iter().zip(&lengths) {
            for (position, &id) in ids.iter().take(length).enumerate() {
                let id = (id as usize).min(vocabulary.saturating_sub(1));
                let word = &self.word[id * hidden..(id + 1) * hidden];
                let place = &self.position[position * hidden..(position + 1) * hidden];
                let kind = &self.token_type[..hidden];
                state.extend((0..hidden).map(|i| word[i] + place[i] + kind[i]));
            }
        }
        layer_norm(&mut state, &self.embedding_norm, self.shape.layer_norm_eps);

        for layer in &self.layers {
            let qkv = layer.qkv.forward(&state);
            let mut context = vec![0.0f32; state.len()];
            let mut first = 0;
            for &length in &lengths {
                let rows = first..first + length;
                self.attention(&qkv[rows.start * 3 * hidden..rows.end * 3 * hidden], &mut context[rows.start * hidden..rows.end * hidden]);
                first += length;
            }
            let mut attended = layer.attention_out.forward(&context);
            add(&mut attended, &state);
            layer_norm(&mut attended, &layer.attention_norm, self.shape.layer_norm_eps);
            let mut inner = layer.intermediate.forward(&attended);
            inner.iter_mut().for_each(|x| *x = gelu(*x));
            let mut output = layer.output.forward(&inner);
            add(&mut output, &attended);
            layer_norm(&mut output, &layer.output_norm, self.shape.layer_norm_eps);
            state = output;
        }

        // Mean pooling without dividing by the length, because the L2 normalization cancels it.
        let mut first = 0;
        lengths
            .iter()
            .map(|&length| {
                let mut sum = vec![0.0f32; hidden];
                for row in state[first * hidden..(first + length) * hidden].chunks_exact(hidden) {
                    add(&mut sum, row);
                }
                first += length;
                let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                sum.iter_mut().for_each(|x| *x /= norm);
                sum
            })
            .collect()
    }

    /// Multi-head self-attention over one sequence: `qkv` contains `[q | k | v]` per token, and
    /// `context` (zeros) receives the attended values.
    #[inline(always)]
    fn attention(&self, qkv: &[f32], context: &mut [f32]) {
        let hidden = self.shape.hidden;
        let length = context.len() / hidden;
        let head_width = hidden / self.shape.heads;
        let scale = 1.0 / (head_width as f32).sqrt();
        let mut weights = vec![0.0f32; length];
        for head in 0..self.shape.heads {
            let offset = head * head_width;
            for i in 0..length {
                let query = &qkv[i * 3 * hidden + offset..][..head_width];
                let mut largest = f32::NEG_INFINITY;
                for (j, weight) in weights.iter_mut().enumerate() {
                    let key = &qkv[j * 3 * hidden + hidden + offset..][..head_width];
                    *weight = dot(query, key) * scale;
                    largest = largest.max(*weight);
                }
                // Two loops, because a running sum in the first would keep it from vectorizing.
                for weight in weights.iter_mut() {
                    *weight = exp(*weight - largest);
                }
                let total: f32 = weights.iter().sum();
                let out = &mut context[i * hidden + offset..][..head_width];
                for (j, weight) in weights.iter().enumerate() {
                    let value = &qkv[j * 3 * hidden + 2 * hidden + offset..][..head_width];
                    let share = weight / total;
                    for (o, v) in out.iter_mut().zip(value) {
                        *o += share * v;
                    }
                }
            }
        }
    }
}

/// One forward pass, which pulp compiles, with the `#[inline(always)]` helpers that it calls,
/// once per instruction set and runs with the widest that the CPU has. The loops of attention,
/// layer norm and GELU then use AVX-512 where the CPU has it, rather than the SSE2 of the x86-64
/// baseline. The matrix products choose their own code.
struct EmbedPass<'a> {
    bert: &'a Bert,
    sequences: &'a [&'a [u32]],
}

impl WithSimd for EmbedPass<'_> {
    type Output = Vec<Vec<f32>>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> Vec<Vec<f32>> {
        self.bert.embed_with_cpu_features(self.sequences)
    }
}

#[inline(always)]
fn add(target: &mut [f32], other: &[f32]) {
    for (t, o) in target.iter_mut().zip(other) {
        *t += o;
    }
}

/// Computes a dot product with eight partial sums, which the compiler turns into vector code.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// Normalizes each row of `rows` to zero mean and unit variance, then scales and shifts it.
#[inline(always)]
fn layer_norm(rows: &mut [f32], norm: &Norm, eps: f32) {
    let width = norm.weight.len();
    for row in rows.chunks_exact_mut(width) {
        let mean = row.iter().sum::<f32>() / width as f32;
        let variance = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / width as f32;
        let scale = 1.0 / (variance + eps).sqrt();
        for ((x, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *x = (*x - mean) * scale * w + b;
        }
    }
}

/// GELU in its tanh form: `x / (1 + exp(-2·√(2/π)·(x + 0.044715·x³)))`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    const TWICE_SQRT_2_OVER_PI: f32 = 1.595_769;
    x / (1.0 + exp(-TWICE_SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

/// `e^x` within 1e-6 relative error, without branches or library calls, so that loops over it
/// become vector code. Arguments beyond ±87 are clamped.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // e^x = 2^n · e^r with n = round(x / ln 2) and |r| ≤ ln 2 / 2. r is computed with ln 2 in
    // two parts (Cody and Waite) so that it stays exact for large n.
    const ROUNDING: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 87.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUNDING;
    let n = shifted - ROUNDING;
    // The low mantissa bits of `shifted` hold n, so integer subtraction recovers it without a
    // float-to-integer conversion, whose saturating form in Rust does not vectorize well.
    let n_bits = shifted.to_bits() as i32 - ROUNDING.to_bits() as i32;
    let r = (x - n * LN2_HIGH) - n * LN2_LOW;
    // Taylor series of e^r to the seventh power.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    f32::from_bits(((n_bits + 127) << 23) as u32) * p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_near_exact_form() {
        // Exact GELU values, x·Φ(x), for a few points.
        for (x, exact) in [(-3.0f32, -0.004_049_7), (-1.0, -0.158_655_25), (0.0, 0.0), (0.5, 0.345_731_14), (1.0, 0.841_344_7), (2.0, 1.954_5)] {
            assert!((gelu(x) - exact).abs() < 5e-4, "gelu({x}) = {} against {exact}", gelu(x));
        }
    }

    #[test]
    fn exp_matches_std() {
        for i in -8_000..=8_000 {
            let x = i as f32 / 100.0;
            let (got, expected) = (exp(x), x.exp());
            assert!(((got - expected) / expected).abs() < 1e-6, "exp({x}) = {got} against {expected}");
        }
        assert!(exp(-200.0) < 1e-37, "{}", exp(-200.0));
        assert!(exp(-200.0) >= 0.0, "{}", exp(-200.0));
    }

    #[test]
    fn dot_with_odd_length() {
        let a: Vec<f32> = (0..13).map(|i| i as f32).collect();
        let b = vec![2.0f32; 13];
        assert_eq!(dot(&a, &b), 156.0);
    }

    #[test]
    fn layer_norm_standardizes_rows() {
        let norm = Norm { weight: vec![1.0; 4], bias: vec![0.0; 4] };
        let mut rows = vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
        layer_norm(&mut rows, &norm, 1e-12);
        let first = &rows[..4];
        assert!(first.iter().sum::<f32>().abs() < 1e-5);
        assert!((first.iter().map(|x| x * x).sum::<f32>() / 4.0 - 1.0).abs() < 1e-4);
        assert!(rows[4..].iter().all(|x| x.abs() < 1e-3), "a constant row becomes zeros: {rows:?}");
    }
}
