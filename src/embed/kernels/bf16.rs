//! The product with bf16 weights for CPUs with AVX-512: the weights are stored as bf16 and
//! widened to f32 in registers, and the inputs and sums stay f32.
//!
//! Each forward pass streams every weight matrix from L3 or memory and rereads it from L2 once
//! per block of rows. Storing the weights as bf16 halves those bytes, and widening a bf16 value
//! costs one shift or mask per 16 weights. bf16 keeps 8 significant bits, so each weight moves by
//! at most 2^-8 of its value. Over the whole model the embeddings keep a cosine of at least 0.9999
//! with candle's f32 reference on the test prompts (`tests/embed_agreement.rs`).
//!
//! AVX512_BF16's `vdpbf16ps` also rounds the inputs to bf16 and does 32 multiply-adds per
//! instruction, twice an f32 FMA. It was not used because on the Xeon this was measured on, one
//! core ran one `vdpbf16ps` per about 2 cycles against two FMAs per cycle, half the rate of f32.

// std::arch offers vector loads only as `unsafe` functions, and pulp 0.22 has no bf16 type.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512, _mm512_and_si512, _mm512_castsi512_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_set1_epi32,
    _mm512_set1_ps, _mm512_slli_epi32, _mm512_storeu_ps,
};

use super::PANEL;

/// f32 lanes in one AVX-512 register.
const LANES: usize = 16;

/// Rows per block: with two vectors of sums per row, 24 of the 32 registers hold sums.
const ROWS: usize = 12;

/// The weights of one panel for one input. Lane `i` contains the bf16 weight of output `i` in its
/// lower half and that of output `i + 16` in its upper half. A shift and a mask then widen the
/// 32 weights to two f32 vectors.
pub type WeightVector = [u32; LANES];

/// Reports whether this CPU can run [`forward`].
pub fn is_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Rounds `value` to the nearest bf16, ties to even, and returns its bits. NaN stays NaN.
pub fn to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// Packs `weight`, row-major `outputs × inputs`, into panels of [`PANEL`] outputs: panel `p`
/// contains one [`WeightVector`] per input.
pub fn pack(weight: &[f32], outputs: usize, inputs: usize) -> Vec<WeightVector> {
    let mut panels = Vec::with_capacity(outputs / PANEL * inputs);
    for panel in 0..outputs / PANEL {
        for t in 0..inputs {
            let at = |lane: usize| u32::from(to_bf16(weight[(panel * PANEL + lane) * inputs + t]));
            panels.push(std::array::from_fn(|lane| at(lane) | (at(lane + LANES) << 16)));
        }
    }
    panels
}

/// Computes `out = x · Wᵀ + b` for `x` of `rows × inputs` and `out` of `rows × outputs`, with
/// `panels` from [`pack`].
///
/// # Panics
/// If the CPU lacks AVX-512 (check [`is_available`] first) or a length does not match.
pub fn forward(panels: &[WeightVector], bias: &[f32], x: &[f32], out: &mut [f32], inputs: usize) {
    assert!(is_available(), "the bf16 product needs AVX-512");
    let outputs = bias.len();
    let rows = x.len() / inputs;
    assert_eq!(x.len(), rows * inputs, "input width");
    assert_eq!(out.len(), rows * outputs, "output shape");
    assert_eq!(outputs % PANEL, 0, "outputs must be a multiple of {PANEL}");
    assert_eq!(panels.len(), outputs / PANEL * inputs, "packed weight shape");
    // SAFETY: `is_available` confirmed above that the CPU has AVX-512F.
    unsafe { forward_avx512(panels, bias, x, out, inputs) }
}

#[target_feature(enable = "avx512f")]
fn forward_avx512(panels: &[WeightVector], bias: &[f32], x: &[f32], out: &mut [f32], inputs: usize) {
    let outputs = bias.len();
    let rows = x.len() / inputs;
    let (bias, _) = bias.as_chunks::<LANES>();
    let mut transposed = Vec::new();

    // One block of rows at a time against the whole matrix. The largest matrix of the model,
    // 1536 × 384 in bf16, takes 1.2 MB, so blocks after the first read it from L2.
    for first in (0..rows).step_by(ROWS) {
        let count = ROWS.min(rows - first);
        let xs = &x[first * inputs..][..count * inputs];
        // The block's inputs input-major, so that one step of the kernel reads `count`
        // consecutive values at fixed offsets from one pointer.
        transposed.clear();
        transposed.resize(count * inputs, 0.0);
        for (r, row) in xs.chunks_exact(inputs).enumerate() {
            for (t, &value) in row.iter().enumerate() {
                transposed[t * count + r] = value;
            }
        }
        let out = &mut out[first * outputs..][..count * outputs];
        for panel in 0..outputs / PANEL {
            let target = Block {
                weights: &panels[panel * inputs..][..inputs],
                bias: [&bias[2 * panel], &bias[2 * panel + 1]],
                transposed: &transposed,
                out: &mut *out,
                outputs,
                column: panel * PANEL,
            };
            match count {
                1 => block::<1>(target),
                2 => block::<2>(target),
                3 => block::<3>(target),
                4 => block::<4>(target),
                5 => block::<5>(target),
                6 => block::<6>(target),
                7 => block::<7>(target),
                8 => block::<8>(target),
                9 => block::<9>(target),
                10 => block::<10>(target),
                11 => block::<11>(target),
                _ => block::<ROWS>(target),
            }
        }
    }
}

/// One block of rows of one panel: the panel's weights and bias, the block's inputs
/// input-major, its output rows, the output width and the panel's first output column.
struct Block<'a> {
    weights: &'a [WeightVector],
    bias: [&'a [f32; LANES]; 2],
    transposed: &'a [f32],
    out: &'a mut [f32],
    outputs: usize,
    column: usize,
}

/// Computes `COUNT` rows (at most [`ROWS`]) of one panel's outputs.
#[target_feature(enable = "avx512f")]
#[inline]
fn block<const COUNT: usize>(target: Block<'_>) {
    let Block { weights, bias, transposed, out, outputs, column } = target;
    let (steps, _) = transposed.as_chunks::<COUNT>();
    let upper_half = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    let mut sums = [[load_f32(bias[0]), load_f32(bias[1])]; COUNT];
    for (weight, inputs) in weights.iter().zip(steps) {
        let packed = load_weights(weight);
        let low = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(packed));
        let high = _mm512_castsi512_ps(_mm512_and_si512(packed, upper_half));
        for (row_sums, &input) in sums.iter_mut().zip(inputs) {
            let value = _mm512_set1_ps(input);
            row_sums[0] = _mm512_fmadd_ps(value, low, row_sums[0]);
            row_sums[1] = _mm512_fmadd_ps(value, high, row_sums[1]);
        }
    }
    for (r, row_sums) in sums.iter().enumerate() {
        let (target, _) = out[r * outputs + column..][..PANEL].as_chunks_mut::<LANES>();
        for (destination, sum) in target.iter_mut().zip(row_sums) {
            store_f32(destination, *sum);
        }
    }
}

#[target_feature(enable = "avx512f")]
#[inline]
fn load_f32(source: &[f32; LANES]) -> __m512 {
    // SAFETY: `source` is 16 f32 values, and an unaligned load has no other requirement.
    unsafe { _mm512_loadu_ps(source.as_ptr()) }
}

#[target_feature(enable = "avx512f")]
#[inline]
fn store_f32(destination: &mut [f32; LANES], value: __m512) {
    // SAFETY: `destination` is 16 f32 values, and an unaligned store has no other requirement.
    unsafe { _mm512_storeu_ps(destination.as_mut_ptr(), value) }
}

#[target_feature(enable = "avx512f")]
#[inline]
fn load_weights(source: &WeightVector) -> std::arch::x86_64::__m512i {
    // SAFETY: `source` is 64 bytes, and an unaligned load has no other requirement.
    unsafe { _mm512_loadu_si512(source.as_ptr().cast()) }
}
