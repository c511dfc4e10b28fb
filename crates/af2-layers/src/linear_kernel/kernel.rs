//! The CubeCL source of the linear kernel; see the parent module's documentation.

use super::staging::{load_rows, stage_rows, store_rows, unit_vectors};
use super::{MAX_INPUT, MMA, PLANE, TILE_ROWS};
use crate::attention_kernel_mma::kernel::fragment;
use cubecl::cmma::{self, Matrix, MatrixIdent, MatrixLayout};
use cubecl::prelude::*;

/// Padding of the shared rows (8 elements: the rows of a fragment start in different banks).
pub(super) const PAD: usize = 8;

/// `1 / (1 + exp(-x))` in f32.
#[cube]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0f32 / (1.0f32 + (-x).exp())
}

/// See the module documentation. Cube `c` computes output columns `(c % blocks) · n_block ..`
/// of the 64-row tiles `c / blocks`, `c / blocks + cubes_per_block`, ...; the `planes` form
/// `row_groups` groups of `planes / row_groups`: plane `p` takes columns
/// `(p % (planes / row_groups)) · plane_cols ..` of the block and stripes
/// `(p / (planes / row_groups)) · 4 / row_groups ..` of the tile (`plane_cols` = `n_block` over the
/// planes of a group).
///
/// The output stage, per element `y` (the f32 accumulator rounded to `F`), in f32 and rounded
/// once: `y · scale` in the first `scaled_cols` columns with `scaled`, `max(y, 0)` with `relu`,
/// `y · sigmoid(gate)` with a gate, `/ divisor[row, c % blocks]` with a divisor (one per row and
/// column block), `+ residual` with a residual (gate and residual `[M, N]` like the output,
/// contiguous). With `periodic` the bias is read at column `col % bias_period` (a bias repeated
/// along the row). With a mask the output is
/// transposed and gated from the cube's own columns: the first half of each column block holds
/// projections, the second half their gates, and the cube writes `mask[row] · projection ·
/// sigmoid(gate)` as `n_block / 2` output rows `(c % blocks) · n_block / 2 ..` of an
/// `[N / 2, M]` output.
#[allow(clippy::too_many_arguments, clippy::collapsible_if)] // comptime and runtime conditions stay apart
#[cube(launch_unchecked, address_type = "dynamic")]
pub(super) fn linear_mma_kernel<F: Float, Bt: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    weight: &Tensor<F>,
    bias: ComptimeOption<&Tensor<Bt>>,
    gate: ComptimeOption<&Tensor<Vector<F, N>>>,
    residual: ComptimeOption<&Tensor<Vector<F, N>>>,
    mask: ComptimeOption<&Tensor<Vector<F, N>>>,
    input_gate: ComptimeOption<&Tensor<Vector<F, N>>>,
    divisor: ComptimeOption<&Tensor<F>>,
    out: &mut Tensor<Vector<F, N>>,
    cubes_per_block: usize,
    scale: f32,
    scaled_cols: usize,
    gate_col0: usize,
    bias_period: usize,
    #[comptime] k_dim: usize,
    #[comptime] n_block: usize,
    #[comptime] planes: usize,
    #[comptime] vs: usize,
    #[comptime] transposed: bool,
    #[comptime] relu: bool,
    #[comptime] scaled: bool,
    #[comptime] row_groups: usize,
    #[comptime] periodic: bool,
    #[define(F, Bt)] _dtypes: [ElemType; 2],
) {
    let threads = comptime!(PLANE * planes);
    // Inputs wider than MAX_INPUT are taken in MAX_INPUT-wide chunks: each chunk of the tile
    // is staged in turn and its weight fragments are read again for every tile (from L2),
    // while the plane's stripes' accumulators stay in registers across the chunks.
    let chunked = comptime!(k_dim > MAX_INPUT);
    let k_chunk = comptime!(if chunked { MAX_INPUT } else { k_dim });
    let chunks = comptime!(k_dim / k_chunk);
    let k_steps = comptime!(k_chunk / MMA);
    // Planes `p` and `p + col_planes` share columns and split the tile's stripes.
    let col_planes = comptime!(planes / row_groups);
    let my_stripes = comptime!(TILE_ROWS / MMA / row_groups);
    let plane_cols = comptime!(n_block / col_planes);
    let n_frags = comptime!(plane_cols / MMA);
    let x_row = comptime!(k_chunk + PAD);
    let out_row = comptime!(n_block + PAD);
    // The transposed forms keep the output tile column-major (`out_col` per column), so that
    // their stores along output columns read whole vectors.
    let out_col = comptime!(TILE_ROWS + PAD);
    let column_major = comptime!(transposed || mask.is_some());
    let out_len = comptime!(if column_major {
        n_block * (TILE_ROWS + PAD)
    } else {
        TILE_ROWS * (n_block + PAD)
    });
    let x_len = comptime!(TILE_ROWS * (k_chunk + PAD));
    let m = x.shape(0);
    let n = weight.shape(1);
    let blocks = n / n_block;
    let block = CUBE_POS % blocks;
    let first_tile = CUBE_POS / blocks;
    let col0 = block * n_block;
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let t = plane * PLANE + lane;
    let plane_col0 = (plane % col_planes) * plane_cols;
    let stripe0 = (plane / col_planes) * my_stripes;
    let gated = comptime!(gate.is_some());
    let with_residual = comptime!(residual.is_some());
    let divided = comptime!(divisor.is_some());
    let epilogue = comptime!(relu || gated || with_residual || scaled || divided);

    // Both tiles hold whole vectors, so that staging and writing out move 16 bytes a unit
    // instead of eight 2-byte accesses; the matrix loads and stores address them in elements.
    let mut x_s = Shared::<[Vector<F, N>]>::new_slice(comptime!(x_len / vs));
    let mut out_s = Shared::<[Vector<F, N>]>::new_slice(comptime!(out_len / vs));
    // The bias as 16 identical rows, the accumulators' starting value.
    let mut bias_s = Shared::<[f32]>::new_slice(comptime!(MMA * (n_block + PAD)));
    #[unroll]
    for i in 0..comptime!((MMA * n_block).div_ceil(threads)) {
        let e = t + i * threads;
        if e < comptime!(MMA * n_block) {
            let (r, c) = (e / n_block, e % n_block);
            let mut value = f32::new(0.0);
            #[comptime]
            if let ComptimeOption::Some(bias) = &bias {
                let mut col = col0 + c;
                if comptime!(periodic) {
                    col %= bias_period;
                }
                value = f32::cast_from(bias[col * bias.stride(0)]);
            }
            bias_s[r * out_row + c] = value;
        }
    }

    // The plane's weight columns of one chunk, fragment (kk, nn) at `kk * n_frags + nn`: read
    // once where the input is one chunk, else per chunk of every tile.
    let mut w_frags = Sequence::<Matrix<F>>::new();
    let w_row_stride = weight.stride(0);
    let w_len = weight.shape(0) * w_row_stride;
    #[unroll]
    for kk in 0..k_steps {
        #[unroll]
        for nn in 0..n_frags {
            let mut frag = fragment::<F>(MatrixIdent::B, MatrixLayout::RowMajor);
            if comptime!(!chunked) {
                let at = kk * MMA * w_row_stride + col0 + plane_col0 + nn * MMA;
                cmma::load(&mut frag, &weight[at..w_len], w_row_stride as u32);
            }
            w_frags.push(frag);
        }
    }
    let mut a_frag = fragment::<F>(MatrixIdent::A, MatrixLayout::RowMajor);
    // One accumulator per column fragment, reused stripe after stripe; chunked, one per stripe
    // and column fragment (stripe-major), kept over the chunks.
    let mut acc = Sequence::<Matrix<f32>>::new();
    #[unroll]
    for _ in 0..comptime!(if chunked {
        my_stripes * n_frags
    } else {
        n_frags
    }) {
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

    let out_row_stride = out.stride(0);
    let tiles = m.div_ceil(TILE_ROWS);
    // Single-chunk inputs load the next tile into registers between the product and the
    // write-out of the current one, so that its loads are in flight while the output is
    // written (and are not issued right behind the output's stores).
    let prefetch = comptime!(!chunked);
    let mut next_rows = Array::<Vector<F, N>>::new(comptime!(if prefetch {
        unit_vectors(k_chunk, vs, threads)
    } else {
        1
    }));
    if comptime!(prefetch) {
        stage_rows(
            x,
            input_gate,
            gate_col0,
            &mut x_s,
            first_tile * TILE_ROWS,
            0,
            t,
            k_chunk,
            threads,
            vs,
        );
    }
    let mut tile = first_tile;
    while tile < tiles {
        let row0 = tile * TILE_ROWS;
        if comptime!(chunked) {
            // Every stripe's accumulators start from the bias rows.
            #[unroll]
            for i in 0..comptime!(my_stripes * n_frags) {
                cmma::load_with_layout(
                    acc.index_mut(i),
                    &bias_s[plane_col0 + (i % n_frags) * MMA..comptime!(MMA * (n_block + PAD))],
                    out_row as u32,
                    MatrixLayout::RowMajor,
                );
            }
            for chunk in 0..chunks {
                stage_rows(
                    x,
                    input_gate,
                    gate_col0,
                    &mut x_s,
                    row0,
                    chunk * k_chunk,
                    t,
                    k_chunk,
                    threads,
                    vs,
                );
                #[unroll]
                for kk in 0..k_steps {
                    #[unroll]
                    for nn in 0..n_frags {
                        let at = (chunk * k_chunk + kk * MMA) * w_row_stride
                            + col0
                            + plane_col0
                            + nn * MMA;
                        cmma::load(
                            w_frags.index_mut(kk * n_frags + nn),
                            &weight[at..w_len],
                            w_row_stride as u32,
                        );
                    }
                }
                sync_cube();
                #[unroll]
                for si in 0..my_stripes {
                    let stripe = stripe0 + si;
                    #[unroll]
                    for kk in 0..k_steps {
                        cmma::load(
                            &mut a_frag,
                            &x_s[(stripe * MMA * x_row + kk * MMA) / vs..comptime!(x_len / vs)],
                            x_row as u32,
                        );
                        #[unroll]
                        for nn in 0..n_frags {
                            let d = acc.index(si * n_frags + nn);
                            cmma::execute(&a_frag, w_frags.index(kk * n_frags + nn), d, d);
                        }
                    }
                }
                // The next chunk overwrites the staged one.
                sync_cube();
            }
            #[unroll]
            for si in 0..my_stripes {
                let stripe = stripe0 + si;
                #[unroll]
                for nn in 0..n_frags {
                    let d = acc.index(si * n_frags + nn);
                    store_rounded(
                        &mut out_s,
                        d,
                        plane_col0 + nn * MMA,
                        stripe,
                        n_block,
                        column_major,
                        vs,
                    );
                }
            }
        } else {
            // The tile was staged before the loop or at the end of the previous step.
            sync_cube();
            #[unroll]
            for si in 0..my_stripes {
                let stripe = stripe0 + si;
                let x_at = stripe * MMA * x_row;
                #[unroll]
                for kk in 0..k_steps {
                    cmma::load(
                        &mut a_frag,
                        &x_s[(x_at + kk * MMA) / vs..comptime!(x_len / vs)],
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
                #[unroll]
                for nn in 0..n_frags {
                    store_rounded(
                        &mut out_s,
                        acc.index(nn),
                        plane_col0 + nn * MMA,
                        stripe,
                        n_block,
                        column_major,
                        vs,
                    );
                }
            }
        }
        if comptime!(prefetch) {
            load_rows(
                x,
                input_gate,
                gate_col0,
                &mut next_rows,
                row0 + cubes_per_block * TILE_ROWS,
                0,
                t,
                k_chunk,
                threads,
                vs,
            );
        }
        // The output stage's own inputs at this unit's positions, loaded before the barrier and
        // all in flight together: a load placed after a store to the output would wait for
        // that store (the buffers might alias), one memory latency per vector.
        let out_vectors = comptime!(TILE_ROWS * n_block / (vs * threads));
        // Each sized 1 where its stage is off. With the divisor's array at full size in every
        // variant and the bias index always taken modulo its length, every product of the
        // kernel took 2-5% longer on an H200 (docs/PERFORMANCE.md, twentieth session).
        let mut gate_in =
            Array::<Vector<F, N>>::new(comptime!(if gated { out_vectors } else { 1 }));
        let mut residual_in =
            Array::<Vector<F, N>>::new(comptime!(if with_residual { out_vectors } else { 1 }));
        let mut divisor_in = Array::<f32>::new(comptime!(if divided { out_vectors } else { 1 }));
        if comptime!(gated || with_residual || divided) {
            #[unroll]
            for i in 0..out_vectors {
                let e = t + i * threads;
                let (r, cv) = (e / comptime!(n_block / vs), e % comptime!(n_block / vs));
                let mut gate_v = Vector::<F, N>::new(F::new(0.0));
                let mut residual_v = Vector::<F, N>::new(F::new(0.0));
                let mut divisor_v = 1.0f32;
                if row0 + r < m {
                    let at = ((row0 + r) * out_row_stride + col0) / vs + cv;
                    #[comptime]
                    if let ComptimeOption::Some(gate) = &gate {
                        gate_v = gate[at];
                    }
                    #[comptime]
                    if let ComptimeOption::Some(residual) = &residual {
                        residual_v = residual[at];
                    }
                    #[comptime]
                    if let ComptimeOption::Some(divisor) = &divisor {
                        divisor_v = f32::cast_from(
                            divisor[(row0 + r) * divisor.stride(0) + block * divisor.stride(1)],
                        );
                    }
                }
                if comptime!(gated) {
                    gate_in[i] = gate_v;
                }
                if comptime!(with_residual) {
                    residual_in[i] = residual_v;
                }
                if comptime!(divided) {
                    divisor_in[i] = divisor_v;
                }
            }
        }
        // The gated edges' mask: every unit writes the same eight rows at each step.
        let mask_rows = comptime!(TILE_ROWS / vs);
        let mut mask_v = Vector::<F, N>::new(F::new(0.0));
        #[comptime]
        if let ComptimeOption::Some(mask) = &mask {
            if row0 + (t % mask_rows) * vs < m {
                mask_v = mask[row0 / vs + t % mask_rows];
            }
        }
        sync_cube();

        // The output tile, rows below M: consecutive units write consecutive 16-byte vectors
        // of an output row, or (transposed) of an output column.
        #[comptime]
        match mask {
            ComptimeOption::Some(_) => {
                let half = comptime!(n_block / 2);
                #[unroll]
                for i in 0..comptime!(TILE_ROWS * n_block / (2 * vs * threads)) {
                    let e = t + i * threads;
                    let (c, rv) = (e / comptime!(TILE_ROWS / vs), e % comptime!(TILE_ROWS / vs));
                    if row0 + rv * vs < m {
                        let projection_v = out_s[comptime!(out_col / vs) * c + rv];
                        let gate_v = out_s[comptime!(out_col / vs) * (c + half) + rv];
                        let mut v = Vector::<F, N>::empty();
                        #[unroll]
                        for j in 0..vs {
                            let projection = f32::cast_from(projection_v.extract(j));
                            let gate_value = sigmoid(f32::cast_from(gate_v.extract(j)));
                            let masked = f32::cast_from(mask_v.extract(j)) * projection;
                            v.insert(j, F::cast_from(masked * gate_value));
                        }
                        out[((block * half + c) * out_row_stride + row0) / vs + rv] = v;
                    }
                }
            }
            ComptimeOption::None =>
            {
                #[unroll]
                for i in 0..comptime!(TILE_ROWS * n_block / (vs * threads)) {
                    let e = t + i * threads;
                    if comptime!(transposed) {
                        let (c, rv) =
                            (e / comptime!(TILE_ROWS / vs), e % comptime!(TILE_ROWS / vs));
                        if row0 + rv * vs < m {
                            out[((col0 + c) * out_row_stride + row0) / vs + rv] =
                                out_s[comptime!(out_col / vs) * c + rv];
                        }
                    } else {
                        let (r, cv) = (e / comptime!(n_block / vs), e % comptime!(n_block / vs));
                        if row0 + r < m {
                            let at = ((row0 + r) * out_row_stride + col0) / vs + cv;
                            let mut v = out_s[comptime!(out_row / vs) * r + cv];
                            if comptime!(epilogue) {
                                #[unroll]
                                for j in 0..vs {
                                    let mut y = f32::cast_from(v.extract(j));
                                    if comptime!(scaled) {
                                        if col0 + cv * vs < scaled_cols {
                                            y *= scale;
                                        }
                                    }
                                    if comptime!(relu) {
                                        y = y.max(0.0f32);
                                    }
                                    if comptime!(gated) {
                                        y *= sigmoid(f32::cast_from(gate_in[i].extract(j)));
                                    }
                                    if comptime!(divided) {
                                        y /= divisor_in[i];
                                    }
                                    if comptime!(with_residual) {
                                        y += f32::cast_from(residual_in[i].extract(j));
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
        if comptime!(prefetch) {
            // Every plane has read the staged tile before the barrier ahead of the write-out.
            store_rows(&next_rows, &mut x_s, t, k_chunk, threads, vs);
        }
        tile += cubes_per_block;
    }
}

/// Rounds an accumulator (rows `stripe · 16 ..` of the tile, columns `col ..`) to `F` into the
/// shared output tile: row-major, or column-major for the transposed forms.
#[cube]
fn store_rounded<F: Float, N: Size>(
    out_s: &mut Shared<[Vector<F, N>]>,
    acc: &Matrix<f32>,
    col: usize,
    stripe: usize,
    #[comptime] n_block: usize,
    #[comptime] column_major: bool,
    #[comptime] vs: usize,
) {
    let rounded = cmma::cast::<f32, F, _>(acc);
    if comptime!(column_major) {
        let out_col = comptime!(TILE_ROWS + PAD);
        let len = comptime!(n_block * (TILE_ROWS + PAD) / vs);
        cmma::store(
            &mut out_s[(col * out_col + stripe * MMA) / vs..len],
            &rounded,
            out_col as u32,
            MatrixLayout::ColMajor,
        );
    } else {
        let out_row = comptime!(n_block + PAD);
        let len = comptime!(TILE_ROWS * (n_block + PAD) / vs);
        cmma::store(
            &mut out_s[(stripe * MMA * out_row + col) / vs..len],
            &rounded,
            out_row as u32,
            MatrixLayout::RowMajor,
        );
    }
}
