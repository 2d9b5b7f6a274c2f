//! The product on Intel AMX tiles: bf16 weights and bf16 inputs, with f32 sums.
//!
//! One `tdpbf16ps` multiplies a 16 × 32 bf16 tile of inputs by a 32 × 16 bf16 tile of weights
//! and adds the 16 × 16 products to an f32 tile, 8192 multiply-adds per instruction. The weights
//! are packed once at load into 1 KiB blocks of 16 outputs × 32 inputs in the layout that the
//! instruction reads ([`WeightBlock`]). A product rounds its inputs to bf16 into a buffer of whole
//! tiles, padded with zeros where rows or inputs do not fill one. It then runs blocks of 2 × 2
//! tiles: two tiles of 16 rows against the two halves of one panel of [`PANEL`] outputs. The four
//! sums of a block start from the bias.
//!
//! Rounding the inputs too costs accuracy beyond that of bf16 weights alone. Each rounding moves
//! a value by at most 2^-8 of itself, so each term has a relative error of at most about 2^-7,
//! against 2^-8 with bf16 weights and f32 inputs.

// Rust 1.95 has no stable AMX intrinsics, so the tile instructions are written with `asm!`, and
// the permission to use tile data is a raw `arch_prctl` system call.
#![allow(unsafe_code)]

use std::arch::asm;
use std::cell::RefCell;
use std::sync::OnceLock;

use super::bf16::to_bf16;
use super::PANEL;

/// Rows and f32 columns of a sum tile, and rows of an input tile.
const TILE_ROWS: usize = 16;

/// Inputs per tile step: a tile row is 64 bytes, 32 bf16 values.
const STEP: usize = 32;

/// Rows rounded to bf16 at a time, a multiple of two tiles. A chunk of 1536 inputs takes
/// 384 KiB, less than the 2 MiB L2 per core of Xeons with AMX, so each weight panel reads it from
/// L2.
const CHUNK_ROWS: usize = 128;

/// The weights of 16 outputs for 32 inputs, as the B operand of `tdpbf16ps`: row `k` contains,
/// for each output `n`, its weights for inputs `2k` and `2k + 1` side by side.
#[repr(C, align(64))]
pub struct WeightBlock([[u16; STEP]; TILE_ROWS]);

/// One tile row of inputs: 32 bf16 values, aligned like a cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct InputLine([u16; STEP]);

thread_local! {
    /// The inputs of one chunk of rows in bf16, reused by the calls on this thread so that a
    /// product allocates only its output.
    static INPUTS: RefCell<Vec<InputLine>> = const { RefCell::new(Vec::new()) };
}

/// Reports whether this CPU and kernel can run [`forward`]: the CPU has AMX-TILE, AMX-BF16 and
/// AVX-512F, and Linux granted this process the use of tile data. The check runs once per process.
pub fn is_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_amx() && std::arch::is_x86_feature_detected!("avx512f") && request_tile_data())
}

/// Reads CPUID leaf 7, sub-leaf 0: EDX bit 24 is AMX-TILE and bit 22 is AMX-BF16.
fn cpu_has_amx() -> bool {
    use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};

    let (max_leaf, _) = __get_cpuid_max(0);
    if max_leaf < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << 22) != 0
}

/// Asks Linux for permission to use AMX tile data, which it grants per process since Linux 5.16.
/// Without it the first tile instruction raises SIGILL.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` takes two integers, touches no
    // memory of this process and only extends the register state that the kernel saves for it.
    let result = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    result == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// Packs `weight`, row-major `outputs × inputs`, into [`WeightBlock`]s in the order that
/// [`forward`] reads them: panel by panel of [`PANEL`] outputs, then 32 inputs at a time, then the
/// panel's two halves of 16 outputs. Inputs past `inputs` are zeros.
pub fn pack(weight: &[f32], outputs: usize, inputs: usize) -> Vec<WeightBlock> {
    let steps = inputs.div_ceil(STEP);
    let mut blocks = Vec::with_capacity(outputs / TILE_ROWS * steps);
    for panel in 0..outputs / PANEL {
        for step in 0..steps {
            for half in 0..PANEL / TILE_ROWS {
                let mut block = WeightBlock([[0; STEP]; TILE_ROWS]);
                for (pair, row) in block.0.iter_mut().enumerate() {
                    for (place, value) in row.iter_mut().enumerate() {
                        let output = panel * PANEL + half * TILE_ROWS + place / 2;
                        let input = step * STEP + 2 * pair + place % 2;
                        if input < inputs {
                            *value = to_bf16(weight[output * inputs + input]);
                        }
                    }
                }
                blocks.push(block);
            }
        }
    }
    blocks
}

/// Returns `x · Wᵀ + b` for `x` of `rows × inputs`, row-major, as `rows × outputs`, with `blocks`
/// from [`pack`].
///
/// # Panics
/// If [`is_available`] is false or a length does not match.
pub fn forward(blocks: &[WeightBlock], bias: &[f32], x: &[f32], inputs: usize) -> Vec<f32> {
    assert!(is_available(), "the AMX product needs AMX-TILE, AMX-BF16, AVX-512F and Linux's permission");
    let outputs = bias.len();
    let rows = x.len() / inputs;
    let steps = inputs.div_ceil(STEP);
    assert_eq!(x.len(), rows * inputs, "input width");
    assert_eq!(outputs % PANEL, 0, "outputs must be a multiple of {PANEL}");
    assert_eq!(blocks.len(), outputs / TILE_ROWS * steps, "packed weight shape");

    // The tiles store whole tiles of 16 rows, so the output has room for the padding rows,
    // which are cut off at the end.
    let padded_rows = rows.next_multiple_of(TILE_ROWS);
    let mut out = vec![0.0f32; padded_rows * outputs];
    INPUTS.with_borrow_mut(|lines| {
        // SAFETY: `is_available` confirmed AMX-TILE, AMX-BF16 and AVX-512F and the permission for
        // tile data, and the shapes were checked above.
        unsafe { forward_tiles(blocks, bias, x, inputs, &mut out, lines) }
    });
    out.truncate(rows * outputs);
    out
}

/// The tile configuration for palette 1: eight tiles of 16 rows of 64 bytes. Bytes 16 to 31
/// contain the bytes per row of each tile, and bytes 48 to 55 its rows.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const TILE_CONFIG: TileConfig = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        bytes[16 + 2 * tile] = 64;
        bytes[48 + tile] = TILE_ROWS as u8;
        tile += 1;
    }
    TileConfig(bytes)
};

/// Releases the tile registers when dropped, so that a panic between `ldtilecfg` and the end of a
/// product does not leave the thread's tiles configured.
struct TileRelease;

impl Drop for TileRelease {
    fn drop(&mut self) {
        // SAFETY: `tilerelease` only returns the tile registers to their initial state. It is
        // valid whether or not a configuration is loaded.
        unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
    }
}

/// Runs the product for every chunk of rows. `out` has `rows.next_multiple_of(16) × outputs`
/// values.
///
/// # Safety
/// The CPU must have AMX-TILE, AMX-BF16 and AVX-512F, this process must hold the permission for
/// tile data, and the shapes must be those checked by [`forward`].
#[target_feature(enable = "avx512f")]
unsafe fn forward_tiles(blocks: &[WeightBlock], bias: &[f32], x: &[f32], inputs: usize, out: &mut [f32], lines: &mut Vec<InputLine>) {
    let outputs = bias.len();
    let rows = x.len() / inputs;
    let steps = inputs.div_ceil(STEP);
    let padded_rows = rows.next_multiple_of(TILE_ROWS);

    // SAFETY: the caller guarantees AMX, and `TILE_CONFIG` is a valid palette 1 configuration of
    // 64 bytes that `ldtilecfg` only reads.
    unsafe { asm!("ldtilecfg [{}]", in(reg) TILE_CONFIG.0.as_ptr(), options(nostack, readonly, preserves_flags)) };
    let _release = TileRelease;

    for first in (0..padded_rows).step_by(CHUNK_ROWS) {
        let count = CHUNK_ROWS.min(padded_rows - first);
        let valid = rows.min(first + count) - first;
        lines.resize(count * steps, InputLine([0; STEP]));
        round_rows(&x[first * inputs..(first + valid) * inputs], inputs, &mut lines[..count * steps]);

        for panel in 0..outputs / PANEL {
            let panel_blocks = &blocks[panel * steps * 2..][..steps * 2];
            let panel_bias = &bias[panel * PANEL..][..PANEL];
            for tile_row in (0..count).step_by(2 * TILE_ROWS) {
                let tiles = if count - tile_row >= 2 * TILE_ROWS { 2 } else { 1 };
                let target = &mut out[(first + tile_row) * outputs + panel * PANEL..][..(tiles * TILE_ROWS - 1) * outputs + PANEL];
                let input_lines = &lines[tile_row * steps..][..tiles * TILE_ROWS * steps];
                // SAFETY: the tiles are configured above. `input_lines` contains 16 or 32 rows of
                // `steps` lines, `panel_blocks` two blocks per step, and `target` the block's rows
                // of 32 outputs at a stride of `outputs`.
                unsafe { block(panel_blocks, panel_bias, input_lines, steps, target, outputs, tiles == 2) };
            }
        }
    }
}

/// Rounds the rows of `x` to bf16 into `lines`, `inputs.div_ceil(32)` lines per row, and fills the
/// lines past the input width and the rows past those of `x` with zeros.
#[target_feature(enable = "avx512f")]
fn round_rows(x: &[f32], inputs: usize, lines: &mut [InputLine]) {
    let steps = inputs.div_ceil(STEP);
    let mut row_lines = lines.chunks_exact_mut(steps);
    for (row, target) in x.chunks_exact(inputs).zip(row_lines.by_ref()) {
        for (line, values) in target.iter_mut().zip(row.chunks(STEP)) {
            line.0 = [0; STEP];
            for (bits, &value) in line.0.iter_mut().zip(values) {
                *bits = to_bf16(value);
            }
        }
    }
    for line in row_lines.flatten() {
        line.0 = [0; STEP];
    }
}

/// Computes one block: `two_tiles` selects 32 rows, else 16, against the 32 outputs of one panel.
/// The sums start from the bias and are stored into `target` at a row stride of `outputs`.
///
/// # Safety
/// The tiles must be configured with [`TILE_CONFIG`] on this thread. `inputs` must contain 16 (or
/// 32 with `two_tiles`) rows of `steps` lines, `blocks` `2 × steps` blocks, `bias` 32 values, and
/// `target` 16 (or 32) rows of 32 values at a stride of `outputs`.
#[target_feature(enable = "avx512f")]
unsafe fn block(blocks: &[WeightBlock], bias: &[f32], inputs: &[InputLine], steps: usize, target: &mut [f32], outputs: usize, two_tiles: bool) {
    let input_stride = steps * size_of::<InputLine>();
    let output_stride = outputs * size_of::<f32>();
    let bias_low = bias.as_ptr();
    let bias_high = bias[TILE_ROWS..].as_ptr();
    // Loading the bias with a stride of 0 repeats it in each of the 16 rows. tmm0 and tmm1 hold
    // the sums of the first 16 rows for outputs 0..16 and 16..32, tmm2 and tmm3 those of the
    // next 16 rows.
    // SAFETY: each load reads 16 rows of 64 bytes from `bias` at stride 0, 16 f32 values that the
    // slice contains, and the caller configured the tiles.
    unsafe {
        asm!(
            "tileloadd tmm0, [{low} + {zero}]",
            "tileloadd tmm1, [{high} + {zero}]",
            "tileloadd tmm2, [{low} + {zero}]",
            "tileloadd tmm3, [{high} + {zero}]",
            low = in(reg) bias_low,
            high = in(reg) bias_high,
            zero = in(reg) 0usize,
            options(nostack, readonly, preserves_flags),
        )
    };

    let second_rows = if two_tiles { TILE_ROWS * steps } else { 0 };
    for (step, pair) in blocks.chunks_exact(2).enumerate() {
        let first = inputs[step..].as_ptr();
        let weights_low = pair[0].0.as_ptr();
        let weights_high = pair[1].0.as_ptr();
        if two_tiles {
            let second = inputs[second_rows + step..].as_ptr();
            // SAFETY: `first` and `second` start 16 rows of 64 bytes at a stride of
            // `input_stride` inside `inputs`, and each weight pointer a 1 KiB block.
            unsafe {
                asm!(
                    "tileloadd tmm4, [{first} + {input_stride}]",
                    "tileloadd tmm5, [{second} + {input_stride}]",
                    "tileloadd tmm6, [{low} + {block_stride}]",
                    "tileloadd tmm7, [{high} + {block_stride}]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    first = in(reg) first,
                    second = in(reg) second,
                    low = in(reg) weights_low,
                    high = in(reg) weights_high,
                    input_stride = in(reg) input_stride,
                    block_stride = in(reg) 64usize,
                    options(nostack, readonly, preserves_flags),
                )
            };
        } else {
            // SAFETY: as above, with the first 16 rows only.
            unsafe {
                asm!(
                    "tileloadd tmm4, [{first} + {input_stride}]",
                    "tileloadd tmm6, [{low} + {block_stride}]",
                    "tileloadd tmm7, [{high} + {block_stride}]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    first = in(reg) first,
                    low = in(reg) weights_low,
                    high = in(reg) weights_high,
                    input_stride = in(reg) input_stride,
                    block_stride = in(reg) 64usize,
                    options(nostack, readonly, preserves_flags),
                )
            };
        }
    }

    let low = target.as_mut_ptr();
    let high = target[TILE_ROWS..].as_mut_ptr();
    // SAFETY: each store writes 16 rows of 64 bytes at a stride of `output_stride` from `low` or
    // `high`, which `target` covers (16 rows of 32 values at a stride of `outputs`).
    unsafe {
        asm!(
            "tilestored [{low} + {stride}], tmm0",
            "tilestored [{high} + {stride}], tmm1",
            low = in(reg) low,
            high = in(reg) high,
            stride = in(reg) output_stride,
            options(nostack, preserves_flags),
        )
    };
    if two_tiles {
        let second_low = target[TILE_ROWS * outputs..].as_mut_ptr();
        let second_high = target[TILE_ROWS * outputs + TILE_ROWS..].as_mut_ptr();
        // SAFETY: as above for rows 16 to 31, which `target` covers with `two_tiles`.
        unsafe {
            asm!(
                "tilestored [{low} + {stride}], tmm2",
                "tilestored [{high} + {stride}], tmm3",
                low = in(reg) second_low,
                high = in(reg) second_high,
                stride = in(reg) output_stride,
                options(nostack, preserves_flags),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::bf16_product::rounded;
    use super::super::tests::{reference, values};
    use super::*;

    /// Returns false, with a note on stderr, where the CPU or the kernel lacks AMX.
    fn supported() -> bool {
        let supported = is_available();
        if !supported {
            eprintln!("skipped: this CPU or kernel offers no AMX tiles");
        }
        supported
    }

    /// Checks the product of `rows` rows with an `outputs × inputs` matrix against plain f64
    /// loops: over the bf16-rounded operands it must match up to f32 summation order, and over
    /// the f32 operands within bf16's rounding of both.
    fn check_shape(outputs: usize, inputs: usize, rows: usize) {
        let weight = values(outputs * inputs, 21 + inputs as u32);
        let bias = values(outputs, 22);
        let x = values(rows * inputs, 23 + rows as u32);
        let blocks = pack(&weight, outputs, inputs);
        let got = forward(&blocks, &bias, &x, inputs);

        let exact = reference(&rounded(&x), &rounded(&weight), &bias, rows, outputs, inputs);
        let unrounded = reference(&x, &weight, &bias, rows, outputs, inputs);
        let absolute_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let absolute_weight: Vec<f32> = weight.iter().map(|v| v.abs()).collect();
        let magnitudes = reference(&absolute_x, &absolute_weight, &vec![0.0; outputs], rows, outputs, inputs);
        assert_eq!(got.len(), rows * outputs, "{outputs}x{inputs}, rows {rows}: output length");
        let summation = 1e-5 * (inputs as f32).max(10.0);
        for (i, value) in got.iter().enumerate() {
            let shape = format!("{outputs}x{inputs}, rows {rows}, value {i}");
            assert!((value - exact[i]).abs() < summation, "{shape}: {value} against {} (bf16 operands)", exact[i]);
            // Rounding both factors moves each term by at most (2^-8 + 2^-8 + 2^-16) of its size.
            let bound = (2.0f32.powi(-7) + 2.0f32.powi(-16)) * magnitudes[i] + summation;
            assert!((value - unrounded[i]).abs() < bound, "{shape}: {value} against {} (f32 operands)", unrounded[i]);
        }
    }

    #[test]
    fn amx_product_matches_plain_loops() {
        if !supported() {
            return;
        }
        for outputs in [32, 384, 1536] {
            for inputs in [384, 40, 1536] {
                for rows in [1, 5, 16, 17, 33, 100] {
                    check_shape(outputs, inputs, rows);
                }
            }
        }
    }

    /// Row counts around and past a chunk of [`CHUNK_ROWS`], with an odd number of tiles in the
    /// last chunk, and input widths that end in a partial tile step.
    #[test]
    fn amx_product_across_row_chunks() {
        if !supported() {
            return;
        }
        for (outputs, inputs) in [(64, 40), (96, 384), (32, 1), (32, 33)] {
            for rows in [127, 128, 129, 144, 300] {
                check_shape(outputs, inputs, rows);
            }
        }
    }

    #[test]
    fn pack_interleaves_input_pairs() {
        let (outputs, inputs) = (32, 40);
        let weight = values(outputs * inputs, 31);
        let blocks = pack(&weight, outputs, inputs);
        assert_eq!(blocks.len(), 4, "two steps of 32 inputs, two halves of 16 outputs");
        let expected = |output: usize, input: usize| to_bf16(weight[output * inputs + input]);
        // Block 0: inputs 0..32 of outputs 0..16; block 1: outputs 16..32; blocks 2 and 3: inputs 32..64.
        assert_eq!(blocks[0].0[0][0], expected(0, 0), "output 0, input 0");
        assert_eq!(blocks[0].0[0][1], expected(0, 1), "output 0, input 1");
        assert_eq!(blocks[0].0[3][2 * 5 + 1], expected(5, 7), "output 5, input 7");
        assert_eq!(blocks[1].0[0][0], expected(16, 0), "output 16, input 0");
        assert_eq!(blocks[2].0[3][0], expected(0, 38), "output 0, input 38");
        assert_eq!(blocks[3].0[3][2 * 15 + 1], expected(31, 39), "output 31, input 39");
        assert_eq!(blocks[3].0[4][2 * 15], 0, "output 31, input 40 is padding");
        assert!(blocks[3].0[4..].iter().flatten().all(|&bits| bits == 0), "inputs 40..64 are padding");
    }
}
