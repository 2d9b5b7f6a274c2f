//! The dense products of the embedding model, written for its shapes: a few dozen token rows
//! against fixed weight matrices of 384 to 1536 columns.
//!
//! A general matrix product packs both operands on every call. With so few rows that packing
//! costs about as much as the arithmetic, so here the weights are packed once, when the model
//! loads, into panels of [`PANEL`] output columns whose values for one input index lie side by
//! side. A product then streams each panel once per block of rows and keeps the block's sums in
//! registers.
//!
//! The weights come in three precisions ([`Precision`]). On CPUs with AMX, the products run on
//! its tiles with bf16 weights and inputs rounded to bf16, and sum in f32 (module `amx`). On CPUs
//! with AVX-512 the weights can be stored as bf16 and widened to f32 in registers (module
//! `bf16`), which halves the bytes that each product reads, while inputs and sums stay f32.
//! Elsewhere, or on request, the weights stay f32, and `pulp` picks AVX-512, AVX2 or plain code at
//! run time.

use pulp::{Arch, Simd, WithSimd};

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod bf16;

/// Output columns per packed panel.
pub const PANEL: usize = 32;

/// Input rows per pass over the weights: a multiple of every block size used below.
const CHUNK_ROWS: usize = 96;

/// The number formats of a product's packed weights and of its inputs. Outputs are f32 in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights, inputs and sums, on any CPU.
    F32,
    /// bf16 weights with f32 inputs and sums, on x86-64 CPUs with AVX-512F.
    Bf16,
    /// bf16 weights and bf16 inputs with f32 sums, on x86-64 CPUs with AMX-TILE and AMX-BF16
    /// under Linux.
    Amx,
}

impl Precision {
    /// Every precision, in the order that [`Precision::fastest`] prefers them.
    pub const ALL: [Precision; 3] = [Precision::Amx, Precision::Bf16, Precision::F32];

    /// Returns the first precision of [`Precision::ALL`] that the CPU supports: AMX, then bf16,
    /// then f32.
    pub fn fastest() -> Precision {
        Precision::ALL.into_iter().find(|precision| precision.is_supported()).unwrap_or(Precision::F32)
    }

    /// Reports whether this CPU can run products in this precision.
    pub fn is_supported(self) -> bool {
        match self {
            Precision::F32 => true,
            #[cfg(target_arch = "x86_64")]
            Precision::Bf16 => bf16::is_available(),
            #[cfg(target_arch = "x86_64")]
            Precision::Amx => amx::is_available(),
            #[cfg(not(target_arch = "x86_64"))]
            Precision::Bf16 | Precision::Amx => false,
        }
    }
}

/// A weight matrix of `outputs × inputs` (PyTorch's layout for a linear layer), packed into
/// panels, with its bias.
pub struct PackedLinear {
    inputs: usize,
    outputs: usize,
    panels: Panels,
    bias: Vec<f32>,
}

enum Panels {
    /// Panel `p` contains, for each input index `t`, the weights of outputs `p * PANEL ..` for `t`.
    F32(Vec<f32>),
    /// The same panels in bf16, with outputs `c` and `c + 16` of one input in one 32-bit lane
    /// (`bf16::WeightVector`).
    #[cfg(target_arch = "x86_64")]
    Bf16(Vec<bf16::WeightVector>),
    /// bf16 blocks of 16 outputs × 32 inputs in the layout of AMX's `tdpbf16ps`
    /// (`amx::WeightBlock`).
    #[cfg(target_arch = "x86_64")]
    Amx(Vec<amx::WeightBlock>),
}

impl PackedLinear {
    /// Packs `weight`, row-major `outputs × inputs`, in `precision`. `outputs` must be a multiple
    /// of [`PANEL`].
    ///
    /// # Panics
    /// If the CPU does not support `precision`, or a shape does not match.
    pub fn pack(precision: Precision, weight: &[f32], bias: Vec<f32>, outputs: usize, inputs: usize) -> PackedLinear {
        assert_eq!(weight.len(), outputs * inputs, "weight shape");
        assert_eq!(bias.len(), outputs, "bias length");
        assert_eq!(outputs % PANEL, 0, "outputs must be a multiple of {PANEL}");
        assert!(precision.is_supported(), "this CPU cannot run {precision:?} products");
        let panels = match precision {
            Precision::F32 => Panels::F32(pack_f32(weight, outputs, inputs)),
            #[cfg(target_arch = "x86_64")]
            Precision::Bf16 => Panels::Bf16(bf16::pack(weight, outputs, inputs)),
            #[cfg(target_arch = "x86_64")]
            Precision::Amx => Panels::Amx(amx::pack(weight, outputs, inputs)),
            #[cfg(not(target_arch = "x86_64"))]
            Precision::Bf16 | Precision::Amx => unreachable!("{precision:?} is not supported off x86-64"),
        };
        PackedLinear { inputs, outputs, panels, bias }
    }

    /// Returns `x · Wᵀ + b` for `x` of `rows × inputs`, row-major, as `rows × outputs`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len() % self.inputs, 0, "input width");
        let rows = x.len() / self.inputs;
        match &self.panels {
            Panels::F32(panels) => {
                let mut out = vec![0.0; rows * self.outputs];
                Arch::new().dispatch(Product { layer: self, panels, x, out: &mut out, rows });
                out
            }
            #[cfg(target_arch = "x86_64")]
            Panels::Bf16(panels) => {
                let mut out = vec![0.0; rows * self.outputs];
                bf16::forward(panels, &self.bias, x, &mut out, self.inputs);
                out
            }
            // The tiles store whole tiles of 16 rows, so this path sizes its own output.
            #[cfg(target_arch = "x86_64")]
            Panels::Amx(blocks) => amx::forward(blocks, &self.bias, x, self.inputs),
        }
    }
}

fn pack_f32(weight: &[f32], outputs: usize, inputs: usize) -> Vec<f32> {
    let mut panels = vec![0.0; outputs * inputs];
    for panel in 0..outputs / PANEL {
        let base = panel * PANEL * inputs;
        for t in 0..inputs {
            for c in 0..PANEL {
                panels[base + t * PANEL + c] = weight[(panel * PANEL + c) * inputs + t];
            }
        }
    }
    panels
}

/// The f32 product: `pulp` runs it with the widest vectors of the CPU.
struct Product<'a> {
    layer: &'a PackedLinear,
    panels: &'a [f32],
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
        let Product { layer, panels, x, out, rows } = self;
        let inputs = layer.inputs;
        // Rows in chunks that stay in the core's cache together with one panel, so that a large
        // batch reads its input once per chunk rather than once per panel.
        for chunk_start in (0..rows).step_by(CHUNK_ROWS) {
            let chunk_end = (chunk_start + CHUNK_ROWS).min(rows);
            // Blocks of ROWS rows and one smaller last block.
            let blocks: Vec<(usize, usize)> =
                (chunk_start..chunk_end).step_by(ROWS).map(|first| (first, ROWS.min(chunk_end - first))).collect();
            for panel in 0..layer.outputs / PANEL {
                let weights = &panels[panel * PANEL * inputs..(panel + 1) * PANEL * inputs];
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

    pub(super) fn reference(x: &[f32], weight: &[f32], bias: &[f32], rows: usize, outputs: usize, inputs: usize) -> Vec<f32> {
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
    pub(super) fn values(count: usize, seed: u32) -> Vec<f32> {
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
        let layer = PackedLinear::pack(Precision::F32, &weight, bias.clone(), outputs, inputs);
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

    /// Shapes with every remainder: odd input widths and widths that are not a multiple of 32,
    /// an odd number of panels, row counts below, at and above a block, and above `CHUNK_ROWS`.
    const ODD_SHAPES: [(usize, usize); 5] = [(32, 1), (96, 37), (64, 45), (32, 100), (96, 384)];
    const ROW_COUNTS: [usize; 12] = [1, 2, 3, 7, 8, 9, 11, 12, 13, 30, 97, 200];

    #[test]
    fn f32_product_with_odd_sizes() {
        for (outputs, inputs) in ODD_SHAPES {
            let weight = values(outputs * inputs, 5);
            let bias = values(outputs, 6);
            let layer = PackedLinear::pack(Precision::F32, &weight, bias.clone(), outputs, inputs);
            for rows in ROW_COUNTS {
                let x = values(rows * inputs, 7 + rows as u32);
                let expected = reference(&x, &weight, &bias, rows, outputs, inputs);
                let got = layer.forward(&x);
                assert_eq!(got.len(), expected.len());
                for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
                    let tolerance = 1e-5 * (inputs as f32).max(10.0);
                    assert!((a - b).abs() < tolerance, "{outputs}x{inputs}, rows {rows}, value {i}: {a} against {b}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "multiple of")]
    fn pack_rejects_partial_panel() {
        PackedLinear::pack(Precision::F32, &[0.0; 20], vec![0.0; 10], 10, 2);
    }

    #[test]
    fn fastest_precision_is_supported() {
        assert!(Precision::fastest().is_supported());
        assert!(Precision::F32.is_supported());
    }

    #[test]
    fn fastest_precision_prefers_amx() {
        let first_supported = Precision::ALL.into_iter().find(|precision| precision.is_supported());
        assert_eq!(Some(Precision::fastest()), first_supported);
        if Precision::Amx.is_supported() {
            assert_eq!(Precision::fastest(), Precision::Amx);
        }
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) mod bf16_product {
        use super::super::bf16::to_bf16;
        use super::*;

        fn from_bf16(bits: u16) -> f32 {
            f32::from_bits(u32::from(bits) << 16)
        }

        /// Returns `values` rounded to the nearest bf16, as f32.
        pub(in crate::embed::kernels) fn rounded(values: &[f32]) -> Vec<f32> {
            values.iter().map(|&v| from_bf16(to_bf16(v))).collect()
        }

        /// Returns false, with a note on stderr, where the CPU lacks AVX-512.
        fn supported() -> bool {
            let supported = Precision::Bf16.is_supported();
            if !supported {
                eprintln!("skipped: this CPU lacks AVX-512");
            }
            supported
        }

        #[test]
        fn to_bf16_rounds_to_nearest_even() {
            assert_eq!(to_bf16(1.0), 0x3f80);
            assert_eq!(to_bf16(-2.0), 0xc000);
            // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7, and the even neighbour is 1.
            assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
            // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6, and the even one is above.
            assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
            assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
            assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
            assert_eq!(to_bf16(f32::MAX), 0x7f80, "the largest f32 rounds up to infinity");
            assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        }

        /// Compares with plain loops over the bf16-rounded weights, which the kernel must match up
        /// to f32 summation order, and over the f32 weights, within bf16's rounding error.
        #[test]
        fn bf16_product_matches_plain_loops() {
            if !supported() {
                return;
            }
            for (outputs, inputs) in ODD_SHAPES {
                let weight = values(outputs * inputs, 11);
                let bias = values(outputs, 12);
                let layer = PackedLinear::pack(Precision::Bf16, &weight, bias.clone(), outputs, inputs);
                for rows in ROW_COUNTS {
                    let x = values(rows * inputs, 13 + rows as u32);
                    let got = layer.forward(&x);
                    let exact = reference(&x, &rounded(&weight), &bias, rows, outputs, inputs);
                    let unrounded = reference(&x, &weight, &bias, rows, outputs, inputs);
                    assert_eq!(got.len(), exact.len());
                    for (i, ((a, b), c)) in got.iter().zip(&exact).zip(&unrounded).enumerate() {
                        let tolerance = 1e-5 * (inputs as f32).max(10.0);
                        assert!((a - b).abs() < tolerance, "{outputs}x{inputs}, rows {rows}, value {i}: {a} against {b} (bf16 weights)");
                        // Each term has a relative error of at most 2^-8 and a magnitude below 1.
                        let bound = inputs as f32 * 2.0f32.powi(-8);
                        assert!((a - c).abs() < bound, "{outputs}x{inputs}, rows {rows}, value {i}: {a} against {c} (f32 weights)");
                    }
                }
            }
        }
    }
}
