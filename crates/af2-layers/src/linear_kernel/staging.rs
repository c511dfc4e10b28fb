//! The linear kernel's row staging: a 64-row tile of the input, loaded into registers and
//! stored to the shared tile (the kernel itself: `kernel.rs`).

use super::TILE_ROWS;
use super::kernel::{PAD, sigmoid};
use cubecl::prelude::*;

/// Vectors of a staged `k_chunk`-wide tile one of `threads` units loads.
pub(super) const fn unit_vectors(k_chunk: usize, vs: usize, threads: usize) -> usize {
    (TILE_ROWS * k_chunk / vs).div_ceil(threads)
}

/// Stages columns `col0 .. col0 + k_chunk` of the 64-row tile of `x` from `row0` into `x_s`
/// (rows of `k_chunk + PAD` elements), zero past M: [`load_rows`] then [`store_rows`].
#[allow(clippy::too_many_arguments)]
#[cube]
pub(super) fn stage_rows<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    input_gate: ComptimeOption<&Tensor<Vector<F, N>>>,
    gate_col0: usize,
    x_s: &mut Shared<[Vector<F, N>]>,
    row0: usize,
    col0: usize,
    t: usize,
    #[comptime] k_chunk: usize,
    #[comptime] threads: usize,
    #[comptime] vs: usize,
) {
    let mut held = Array::<Vector<F, N>>::new(comptime!(unit_vectors(k_chunk, vs, threads)));
    load_rows(
        x, input_gate, gate_col0, &mut held, row0, col0, t, k_chunk, threads, vs,
    );
    store_rows(&held, x_s, t, k_chunk, threads, vs);
}

/// Loads this unit's vectors of columns `col0 .. col0 + k_chunk` of the 64-row tile of `x`
/// from `row0` into `held` (vector `i` is tile vector `t + i · threads`), zero past M:
/// consecutive units read consecutive 16-byte vectors. With an input gate each element is
/// first multiplied, in f32 and rounded once, by the sigmoid of the gate's element
/// `gate_col0` columns further right in its row.
#[allow(clippy::too_many_arguments)]
#[cube]
pub(super) fn load_rows<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    input_gate: ComptimeOption<&Tensor<Vector<F, N>>>,
    gate_col0: usize,
    held: &mut Array<Vector<F, N>>,
    row0: usize,
    col0: usize,
    t: usize,
    #[comptime] k_chunk: usize,
    #[comptime] threads: usize,
    #[comptime] vs: usize,
) {
    let m = x.shape(0);
    let x_row_stride = x.stride(0);
    let vectors = comptime!(TILE_ROWS * k_chunk / vs);
    #[unroll]
    for i in 0..comptime!(vectors.div_ceil(threads)) {
        let e = t + i * threads;
        let (r, cv) = (e / comptime!(k_chunk / vs), e % comptime!(k_chunk / vs));
        let mut v = Vector::<F, N>::new(F::new(0.0));
        // Vectors a tile need not be a multiple of the cube's units (K = 16 or 48 with 8
        // planes): the last pass is partial.
        let mut inside = true;
        if comptime!(!vectors.is_multiple_of(threads)) {
            inside = e < vectors;
        }
        if row0 + r < m && inside {
            v = x[((row0 + r) * x_row_stride + col0) / vs + cv];
            #[comptime]
            if let ComptimeOption::Some(gates) = &input_gate {
                let g = gates[((row0 + r) * gates.stride(0) + gate_col0 + col0) / vs + cv];
                #[unroll]
                for j in 0..vs {
                    let gated =
                        f32::cast_from(v.extract(j)) * sigmoid(f32::cast_from(g.extract(j)));
                    v.insert(j, F::cast_from(gated));
                }
            }
        }
        held[i] = v;
    }
}

/// Stores the vectors [`load_rows`] loaded into the shared tile `x_s` (rows of `k_chunk + PAD`
/// elements).
#[cube]
pub(super) fn store_rows<F: Float, N: Size>(
    held: &Array<Vector<F, N>>,
    x_s: &mut Shared<[Vector<F, N>]>,
    t: usize,
    #[comptime] k_chunk: usize,
    #[comptime] threads: usize,
    #[comptime] vs: usize,
) {
    let vectors = comptime!(TILE_ROWS * k_chunk / vs);
    #[unroll]
    for i in 0..comptime!(vectors.div_ceil(threads)) {
        let e = t + i * threads;
        let mut inside = true;
        if comptime!(!vectors.is_multiple_of(threads)) {
            inside = e < vectors;
        }
        if inside {
            let (r, cv) = (e / comptime!(k_chunk / vs), e % comptime!(k_chunk / vs));
            x_s[comptime!((k_chunk + PAD) / vs) * r + cv] = held[i];
        }
    }
}
