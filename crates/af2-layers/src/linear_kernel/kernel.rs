//! The CubeCL source of the linear kernel; see the parent module's documentation.

use super::{MMA, PLANE, PLANES, TILE_ROWS};
use crate::attention_kernel_mma::kernel::fragment;
use cubecl::cmma::{self, Matrix, MatrixIdent, MatrixLayout};
use cubecl::prelude::*;

/// Padding of the shared rows (8 elements: the rows of a fragment start in different banks).
const PAD: usize = 8;

/// `1 / (1 + exp(-x))` in f32.
#[cube]
fn sigmoid(x: f32) -> f32 {
    1.0f32 / (1.0f32 + (-x).exp())
}

/// See the module documentation. Cube `c` computes output columns `(c % blocks) · n_block ..`
/// of the 64-row tiles `c / blocks`, `c / blocks + cubes_per_block`, ...; plane `p` takes
/// columns `p · n_block / 4 ..` of the block.
///
/// The output stage, per element `y` (the f32 accumulator rounded to `F`), in f32 and rounded
/// once: `max(y, 0)` with `relu`, `y · sigmoid(gate)` with a gate, `+ residual` with a residual
/// (gate and residual `[M, N]` like the output, contiguous). With a mask the output is
/// transposed and gated from the cube's own columns: the first half of each column block holds
/// projections, the second half their gates, and the cube writes `mask[row] · projection ·
/// sigmoid(gate)` as `n_block / 2` output rows `(c % blocks) · n_block / 2 ..` of an
/// `[N / 2, M]` output.
#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked, address_type = "dynamic")]
pub(super) fn linear_mma_kernel<F: Float, Bt: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    weight: &Tensor<F>,
    bias: ComptimeOption<&Tensor<Bt>>,
    gate: ComptimeOption<&Tensor<Vector<F, N>>>,
    residual: ComptimeOption<&Tensor<Vector<F, N>>>,
    mask: ComptimeOption<&Tensor<Vector<F, N>>>,
    out: &mut Tensor<Vector<F, N>>,
    cubes_per_block: usize,
    #[comptime] k_dim: usize,
    #[comptime] n_block: usize,
    #[comptime] vs: usize,
    #[comptime] transposed: bool,
    #[comptime] relu: bool,
    #[define(F, Bt)] _dtypes: [ElemType; 2],
) {
    let threads = comptime!(PLANE * PLANES);
    let k_steps = comptime!(k_dim / MMA);
    let plane_cols = comptime!(n_block / PLANES);
    let n_frags = comptime!(plane_cols / MMA);
    let x_row = comptime!(k_dim + PAD);
    let out_row = comptime!(n_block + PAD);
    let m = x.shape(0);
    let n = weight.shape(1);
    let blocks = n / n_block;
    let block = CUBE_POS % blocks;
    let first_tile = CUBE_POS / blocks;
    let col0 = block * n_block;
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let t = plane * PLANE + lane;
    let plane_col0 = plane * plane_cols;
    let gated = comptime!(gate.is_some());
    let with_residual = comptime!(residual.is_some());
    let epilogue = comptime!(relu || gated || with_residual);

    let mut x_s = Shared::<[F]>::new_slice(comptime!(TILE_ROWS * (k_dim + PAD)));
    let mut out_s = Shared::<[F]>::new_slice(comptime!(TILE_ROWS * (n_block + PAD)));
    // The bias as 16 identical rows, the accumulators' starting value.
    let mut bias_s = Shared::<[f32]>::new_slice(comptime!(MMA * (n_block + PAD)));
    #[unroll]
    for i in 0..comptime!((MMA * n_block).div_ceil(PLANE * PLANES)) {
        let e = t + i * threads;
        if e < comptime!(MMA * n_block) {
            let (r, c) = (e / n_block, e % n_block);
            let mut value = f32::new(0.0);
            #[comptime]
            if let ComptimeOption::Some(bias) = &bias {
                value = f32::cast_from(bias[(col0 + c) * bias.stride(0)]);
            }
            bias_s[r * out_row + c] = value;
        }
    }

    // The plane's weight columns, fragment (kk, nn) at `kk * n_frags + nn`, read once.
    let mut w_frags = Sequence::<Matrix<F>>::new();
    let w_row_stride = weight.stride(0);
    let w_len = weight.shape(0) * w_row_stride;
    #[unroll]
    for kk in 0..k_steps {
        #[unroll]
        for nn in 0..n_frags {
            let mut frag = fragment::<F>(MatrixIdent::B, MatrixLayout::RowMajor);
            let at = kk * MMA * w_row_stride + col0 + plane_col0 + nn * MMA;
            cmma::load(&mut frag, &weight[at..w_len], w_row_stride as u32);
            w_frags.push(frag);
        }
    }
    let mut a_frag = fragment::<F>(MatrixIdent::A, MatrixLayout::RowMajor);
    let mut acc = Sequence::<Matrix<f32>>::new();
    #[unroll]
    for _ in 0..n_frags {
        acc.push(fragment::<f32>(
            MatrixIdent::Accumulator,
            MatrixLayout::Undefined,
        ));
    }
    sync_cube();
    // The bias of the plane's columns as accumulator fragments: the first product of every
    // stripe adds to them.
    let mut bias_frags = Sequence::<Matrix<f32>>::new();
    #[unroll]
    for nn in 0..n_frags {
        let mut frag = fragment::<f32>(MatrixIdent::Accumulator, MatrixLayout::Undefined);
        cmma::load_with_layout(
            &mut frag,
            &bias_s[plane_col0 + nn * MMA..comptime!(MMA * (n_block + PAD))],
            out_row as u32,
            MatrixLayout::RowMajor,
        );
        bias_frags.push(frag);
    }

    let x_row_stride = x.stride(0);
    let out_row_stride = out.stride(0);
    let tiles = m.div_ceil(TILE_ROWS);
    let mut tile = first_tile;
    while tile < tiles {
        let row0 = tile * TILE_ROWS;
        // The 64-row tile of x, zero past M: consecutive units read consecutive 16-byte
        // vectors.
        #[unroll]
        for i in 0..comptime!(TILE_ROWS * k_dim / (vs * threads)) {
            let e = t + i * threads;
            let (r, cv) = (e / comptime!(k_dim / vs), e % comptime!(k_dim / vs));
            let mut v = Vector::<F, N>::new(F::new(0.0));
            if row0 + r < m {
                v = x[(row0 + r) * x_row_stride / vs + cv];
            }
            #[unroll]
            for j in 0..vs {
                x_s[r * x_row + cv * vs + j] = v.extract(j);
            }
        }
        sync_cube();

        #[unroll]
        for stripe in 0..comptime!(TILE_ROWS / MMA) {
            let x_at = stripe * MMA * x_row;
            #[unroll]
            for kk in 0..k_steps {
                cmma::load(
                    &mut a_frag,
                    &x_s[x_at + kk * MMA..comptime!(TILE_ROWS * (k_dim + PAD))],
                    x_row as u32,
                );
                #[unroll]
                for nn in 0..n_frags {
                    if comptime!(kk == 0) {
                        cmma::execute(
                            &a_frag,
                            w_frags.index(nn),
                            bias_frags.index(nn),
                            acc.index(nn),
                        );
                    } else {
                        cmma::execute(
                            &a_frag,
                            w_frags.index(kk * n_frags + nn),
                            acc.index(nn),
                            acc.index(nn),
                        );
                    }
                }
            }
            let out_at = stripe * MMA * out_row + plane_col0;
            #[unroll]
            for nn in 0..n_frags {
                let rounded = cmma::cast::<f32, F, _>(acc.index(nn));
                cmma::store(
                    &mut out_s[out_at + nn * MMA..comptime!(TILE_ROWS * (n_block + PAD))],
                    &rounded,
                    out_row as u32,
                    MatrixLayout::RowMajor,
                );
            }
        }
        sync_cube();

        // The output tile, rows below M: consecutive units write consecutive 16-byte vectors
        // of an output row, or (transposed) of an output column.
        #[comptime]
        match mask {
            ComptimeOption::Some(mask) => {
                let half = comptime!(n_block / 2);
                #[unroll]
                for i in 0..comptime!(TILE_ROWS * n_block / (2 * vs * threads)) {
                    let e = t + i * threads;
                    let (c, rv) = (e / comptime!(TILE_ROWS / vs), e % comptime!(TILE_ROWS / vs));
                    if row0 + rv * vs < m {
                        let mask_v = mask[row0 / vs + rv];
                        let mut v = Vector::<F, N>::empty();
                        #[unroll]
                        for j in 0..vs {
                            let at = (rv * vs + j) * out_row + c;
                            let projection = f32::cast_from(out_s[at]);
                            let gate_value = sigmoid(f32::cast_from(out_s[at + half]));
                            let masked = f32::cast_from(mask_v.extract(j)) * projection;
                            v.insert(j, F::cast_from(masked * gate_value));
                        }
                        out[((block * half + c) * out_row_stride + row0) / vs + rv] = v;
                    }
                }
            }
            ComptimeOption::None => {
                #[unroll]
                for i in 0..comptime!(TILE_ROWS * n_block / (vs * threads)) {
                    let e = t + i * threads;
                    let mut v = Vector::<F, N>::empty();
                    if comptime!(transposed) {
                        let (c, rv) =
                            (e / comptime!(TILE_ROWS / vs), e % comptime!(TILE_ROWS / vs));
                        if row0 + rv * vs < m {
                            #[unroll]
                            for j in 0..vs {
                                v.insert(j, out_s[(rv * vs + j) * out_row + c]);
                            }
                            out[((col0 + c) * out_row_stride + row0) / vs + rv] = v;
                        }
                    } else {
                        let (r, cv) = (e / comptime!(n_block / vs), e % comptime!(n_block / vs));
                        if row0 + r < m {
                            let at = ((row0 + r) * out_row_stride + col0) / vs + cv;
                            #[unroll]
                            for j in 0..vs {
                                v.insert(j, out_s[r * out_row + cv * vs + j]);
                            }
                            if comptime!(epilogue) {
                                // The gate's and residual's vectors at this position (zeros where absent).
                                let mut gate_v = Vector::<F, N>::new(F::new(0.0));
                                let mut residual_v = Vector::<F, N>::new(F::new(0.0));
                                #[comptime]
                                if let ComptimeOption::Some(gate) = &gate {
                                    gate_v = gate[at];
                                }
                                #[comptime]
                                if let ComptimeOption::Some(residual) = &residual {
                                    residual_v = residual[at];
                                }
                                #[unroll]
                                for j in 0..vs {
                                    let mut y = f32::cast_from(v.extract(j));
                                    if comptime!(relu) {
                                        y = y.max(0.0f32);
                                    }
                                    if comptime!(gated) {
                                        y *= sigmoid(f32::cast_from(gate_v.extract(j)));
                                    }
                                    if comptime!(with_residual) {
                                        y += f32::cast_from(residual_v.extract(j));
                                    }
                                    v.insert(j, F::cast_from(y));
                                }
                            }
                            out[at] = v;
                        }
                    }
                }
            }
        }
        tile += cubes_per_block;
    }
}
