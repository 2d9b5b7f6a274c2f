//! The dense products of the embedding model, written for its shapes: a few dozen token rows
//! against fixed weight matrices of 384 to 1536 columns.
//!
//! A general matrix product packs both operands on every call. With so few rows that packing
//! costs about as much as the arithmetic, so here the weights are packed once, when the model
//! loads, into panels of [`PANEL`] output columns whose values for one input index lie side by
//! side. A product then streams each panel once per block of rows and keeps the block's sums in
//! registers. `pulp` picks AVX-512, AVX2 or plain code at run time.

use pulp::{Arch, Simd, WithSimd};

/// Output columns per packed panel.
pub const PANEL: usize = 32;

/// Input rows per pass over the weights: a multiple of every block size used below.
const CHUNK_ROWS: usize = 96;

/// A weight matrix of `outputs × inputs` (PyTorch's layout for a linear layer), packed into
/// panels, with its bias.
pub struct PackedLinear {
    inputs: usize,
    outputs: usize,
    /// Panel `p` contains, for each input index `t`, the weights of outputs `p * PANEL ..` for `t`.
    panels: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedLinear {
    /// Packs `weight`, row-major `outputs × inputs`. `outputs` must be a multiple of [`PANEL`].
    pub fn pack(weight: &[f32], bias: Vec<f32>, outputs: usize, inputs: usize) -> PackedLinear {
        assert_eq!(weight.len(), outputs * inputs, "weight shape");
        assert_eq!(bias.len(), outputs, "bias length");
        assert_eq!(outputs % PANEL, 0, "outputs must be a multiple of {PANEL}");
        let mut panels = vec![0.0; outputs * inputs];
        for panel in 0..outputs / PANEL {
            let base = panel * PANEL * inputs;
            for t in 0..inputs {
                for c in 0..PANEL {
                    panels[base + t * PANEL + c] = weight[(panel * PANEL + c) * inputs + t];
                }
            }
        }
        PackedLinear { inputs, outputs, panels, bias }
    }

    /// Returns `x · Wᵀ + b` for `x` of `rows × inputs`, row-major, as `rows × outputs`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len() % self.inputs, 0, "input width");
        let rows = x.len() / self.inputs;
        let mut out = vec![0.0; rows * self.outputs];
        Arch::new().dispatch(Product { layer: self, x, out: &mut out, rows });
        out
    }
}

struct Product<'a> {
    layer: &'a PackedLinear,
    x: &'a [f32],
    out: &'a mut [f32],
    rows: usize,
}

impl WithSimd for Product<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // Row blocks sized so that the sums (rows × PANEL / lanes registers) stay in registers.
        match S::F32_LANES {
            16 => self.run::<S, 8, 2>(simd),
            8 => self.run::<S, 3, 4>(simd),
            4 => self.run::<S, 2, 8>(simd),
            _ => self.run::<S, 1, { PANEL }>(simd),
        }
    }
}

impl Product<'_> {
    #[inline(always)]
    fn run<S: Simd, const ROWS: usize, const VECTORS: usize>(self, simd: S) {
        debug_assert_eq!(VECTORS * S::F32_LANES, PANEL);
        let Product { layer, x, out, rows } = self;
        let inputs = layer.inputs;
        // Rows in chunks that stay in the core's cache together with one panel, so that a large
        // batch reads its input once per chunk rather than once per panel.
        for chunk_start in (0..rows).step_by(CHUNK_ROWS) {
            let chunk_end = (chunk_start + CHUNK_ROWS).min(rows);
            // Blocks of ROWS rows and one smaller last block.
            let blocks: Vec<(usize, usize)> =
                (chunk_start..chunk_end).step_by(ROWS).map(|first| (first, ROWS.min(chunk_end - first))).collect();
            for panel in 0..layer.outputs / PANEL {
                let weights = &layer.panels[panel * PANEL * inputs..(panel + 1) * PANEL * inputs];
                let bias = &layer.bias[panel * PANEL..(panel + 1) * PANEL];
                for &(first, count) in &blocks {
                    let xs = &x[first * inputs..][..count * inputs];
                    let out = &mut out[first * layer.outputs..][..count * layer.outputs];
                    let args = (weights, bias, xs, out, layer.outputs, panel);
                    match count {
                        1 => block::<S, 1, VECTORS>(simd, args),
                        2 => block::<S, 2, VECTORS>(simd, args),
                        3 => block::<S, 3, VECTORS>(simd, args),
                        4 => block::<S, 4, VECTORS>(simd, args),
                        5 => block::<S, 5, VECTORS>(simd, args),
                        6 => block::<S, 6, VECTORS>(simd, args),
                        7 => block::<S, 7, VECTORS>(simd, args),
                        _ => block::<S, ROWS, VECTORS>(simd, args),
                    }
                }
            }
        }
    }
}

/// A block's operands: the panel's weights and bias, the block's rows of the input and of the
/// output, the output's width and the panel's number.
type BlockArgs<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a mut [f32], usize, usize);

/// Computes one block of `ROWS` rows (at most 8) of one panel's outputs.
#[inline(always)]
fn block<S: Simd, const ROWS: usize, const VECTORS: usize>(simd: S, args: BlockArgs<'_>) {
    let (weights, bias, xs, out, outputs, panel) = args;
    let (weights, _) = S::as_simd_f32s(weights);
    let (bias, _) = S::as_simd_f32s(bias);
    let mut sums = [[simd.splat_f32s(0.0); VECTORS]; ROWS];
    for sums_row in sums.iter_mut() {
        sums_row.copy_from_slice(&bias[..VECTORS]);
    }
    let inputs = xs.len() / ROWS;
    let rows: [&[f32]; ROWS] = std::array::from_fn(|r| &xs[r * inputs..][..inputs]);
    for (t, step) in weights.chunks_exact(VECTORS).enumerate() {
        for r in 0..ROWS {
            let value = simd.splat_f32s(rows[r][t]);
            for v in 0..VECTORS {
                sums[r][v] = simd.mul_add_f32s(value, step[v], sums[r][v]);
            }
        }
    }
    for (r, sums_row) in sums.iter().enumerate() {
        let start = r * outputs + panel * PANEL;
        let (target, _) = S::as_mut_simd_f32s(&mut out[start..start + PANEL]);
        target.copy_from_slice(sums_row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], weight: &[f32], bias: &[f32], rows: usize, outputs: usize, inputs: usize) -> Vec<f32> {
        let mut out = vec![0.0; rows * outputs];
        for r in 0..rows {
            for o in 0..outputs {
                let dot: f64 = (0..inputs).map(|t| x[r * inputs + t] as f64 * weight[o * inputs + t] as f64).sum();
                out[r * outputs + o] = dot as f32 + bias[o];
            }
        }
        out
    }

    /// Deterministic values in [-1, 1).
    fn values(count: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn product_matches_plain_loops() {
        let (outputs, inputs) = (64, 40);
        let weight = values(outputs * inputs, 1);
        let bias = values(outputs, 2);
        let layer = PackedLinear::pack(&weight, bias.clone(), outputs, inputs);
        for rows in [1, 2, 5, 6, 7, 13, 26] {
            let x = values(rows * inputs, 3 + rows as u32);
            let expected = reference(&x, &weight, &bias, rows, outputs, inputs);
            let got = layer.forward(&x);
            assert_eq!(got.len(), expected.len());
            for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
                assert!((a - b).abs() < 1e-4, "rows {rows}, value {i}: {a} against {b}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "multiple of")]
    fn pack_rejects_partial_panel() {
        PackedLinear::pack(&[0.0; 20], vec![0.0; 10], 10, 2);
    }
}
