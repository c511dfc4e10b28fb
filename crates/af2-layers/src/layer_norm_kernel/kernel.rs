//! The CubeCL source of the LayerNorm row kernels; see the parent module's documentation.

use super::{LANES, ROWS_PER_CUBE};
use cubecl::prelude::*;

/// Every lane's `value` summed over the lanes of row slot `slot`, every lane getting the
/// total: a plane sum where a plane is the row (`plane_reduce`), else lane 0 adds the 32
/// partials from shared memory in order.
#[cube]
fn lane_sum(
    partial: &mut Shared<[f32]>,
    value: f32,
    slot: usize,
    lane: usize,
    #[comptime] plane_reduce: bool,
) -> f32 {
    if comptime!(plane_reduce) {
        plane_sum(value)
    } else {
        partial[slot * LANES + lane] = value;
        sync_cube();
        if lane == 0 {
            let mut sum = f32::new(0.0);
            #[unroll]
            for other in 0..LANES {
                sum += partial[slot * LANES + other];
            }
            partial[slot * LANES] = sum;
        }
        sync_cube();
        let total = partial[slot * LANES];
        // Everyone has read the total before the buffer is reused.
        sync_cube();
        total
    }
}

/// Where the rows of `x` are: `rows` of them, row `r` at coordinates `(r / (n1 · n2),
/// r / n2 % n1, r % n2)` with strides `s0, s1, s2` (evenly strided rows: at `r · s2`); `d`
/// columns `step` apart.
#[derive(CubeLaunch, CubeType)]
pub(super) struct RowLayout {
    rows: usize,
    n1: usize,
    n2: usize,
    s0: usize,
    s1: usize,
    s2: usize,
    step: usize,
    d: usize,
}

/// Rows `(CUBE_POS · rows_per_plane + i) · ROWS_PER_CUBE + UNIT_POS_Y` of `x` (`i` below
/// `rows_per_plane`), normalised into `out` by the `LANES` units `UNIT_POS_X`; lane `l`
/// holds the vectors of `vs` columns `l, l + LANES, ..` (`per_unit` of them). With `vs > 1`
/// the rows, gamma and beta are contiguous.
///
/// With `weights` `[d, heads]`, each normalised row (rounded to `F`, as `out` holds it) is
/// also projected onto the weights' columns, written to `projected` `[B, heads, P]` for row
/// `b · P + p` (P = `rows_per_batch`): the attention's pair bias, laid out as the attention
/// reads it. A lane keeps the weights of its columns in registers for all its rows; the
/// heads' sums are reduced across the plane by halving exchanges (see [`heads_plane_sum`]);
/// the cube gathers its rows' sums in shared memory and writes each head's as one run (on an
/// H200 the MSA row attention of an L=256 B=8 block took 0.307-0.310 ms against 0.320-0.326
/// with one 2-byte store a row and head, docs/PERFORMANCE.md). Only offered where planes are
/// rows. `write_normalised` off: only the projection is written (`out` unused).
// Comptime and runtime conditions stay apart; cube code has no `is_multiple_of`.
#[allow(
    clippy::too_many_arguments,
    clippy::collapsible_if,
    clippy::manual_is_multiple_of
)]
#[cube(launch_unchecked, address_type = "dynamic")]
pub(super) fn layer_norm_rows_kernel<F: Float, G: Float, B: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    gamma: &Tensor<Vector<G, N>>,
    beta: &Tensor<Vector<B, N>>,
    out: &mut Tensor<Vector<F, N>>,
    weights: ComptimeOption<&Tensor<Vector<F, N>>>,
    mut projected: ComptimeOption<&mut Tensor<F>>,
    layout: RowLayout,
    rows_per_batch: usize,
    epsilon: f32,
    inv_d: f32,
    #[comptime] per_unit: usize,
    #[comptime] vs: usize,
    #[comptime] even_rows: bool,
    #[comptime] plane_reduce: bool,
    #[comptime] heads: usize,
    #[comptime] rows_per_plane: usize,
    #[comptime] write_normalised: bool,
    #[define(F, G, B)] _dtypes: [ElemType; 3],
) {
    let (rows, d, step) = (layout.rows, layout.d, layout.step);
    let lane = UNIT_POS_X as usize;
    let slot = UNIT_POS_Y as usize;
    let mut partial = Shared::<[f32]>::new_slice(comptime!(ROWS_PER_CUBE * LANES));
    // The cube's rows are consecutive: row `(CUBE_POS · rows_per_plane + r) · ROWS_PER_CUBE +
    // slot` is the cube's row `r · ROWS_PER_CUBE + slot`. Their projections, head-major, are
    // gathered here and written out together, each head's rows as one run.
    let cube_rows = comptime!(rows_per_plane * ROWS_PER_CUBE);
    let mut projected_s = Shared::<[F]>::new_slice(comptime!(heads.max(1) * cube_rows));
    // The lane's weights: column `(lane + i * LANES) * vs + j`, head `h` at
    // `(i * vs + j) * heads + h`. The weights are contiguous `[d, heads]`, so a lane's `vs`
    // columns are `heads` whole vectors, and a plane's loads are contiguous.
    let mut held_weights = Array::<f32>::new(comptime!((per_unit * vs * heads).max(1)));
    #[comptime]
    if let ComptimeOption::Some(weights) = &weights {
        #[unroll]
        for i in 0..per_unit {
            let c = (lane + i * LANES) * vs;
            #[unroll]
            for k in 0..heads {
                let mut v = Vector::<F, N>::new(F::new(0.0));
                if c < d {
                    v = weights[(lane + i * LANES) * heads + k];
                }
                #[unroll]
                for j in 0..vs {
                    held_weights[(i * vs) * heads + k * vs + j] = f32::cast_from(v.extract(j));
                }
            }
        }
    }

    // The lane's scale and offset, the same for all its rows.
    let mut held_gamma = Array::<f32>::new(comptime!(per_unit * vs));
    let mut held_beta = Array::<f32>::new(comptime!(per_unit * vs));
    #[unroll]
    for i in 0..per_unit {
        let c = (lane + i * LANES) * vs;
        let mut gamma_v = Vector::<G, N>::new(G::new(0.0));
        let mut beta_v = Vector::<B, N>::new(B::new(0.0));
        if c < d {
            gamma_v = gamma[c * gamma.stride(0) / vs];
            beta_v = beta[c * beta.stride(0) / vs];
        }
        #[unroll]
        for j in 0..vs {
            held_gamma[i * vs + j] = f32::cast_from(gamma_v.extract(j));
            held_beta[i * vs + j] = f32::cast_from(beta_v.extract(j));
        }
    }

    // Every row's loads first, all in flight together: a load placed after a store to `out`
    // would wait for that store (the buffers might alias), one memory latency per row.
    let row_values = comptime!(per_unit * vs);
    let mut held = Array::<f32>::new(comptime!(rows_per_plane * per_unit * vs));
    let mut sums = Array::<f32>::new(rows_per_plane);
    #[unroll]
    for r in 0..rows_per_plane {
        let row = (CUBE_POS * rows_per_plane + r) * ROWS_PER_CUBE + slot;
        let mut safe_row = row;
        if row >= rows {
            safe_row = 0;
        }
        let mut base = safe_row * layout.s2;
        if comptime!(!even_rows) {
            let i2 = safe_row % layout.n2;
            let i1 = (safe_row / layout.n2) % layout.n1;
            let i0 = safe_row / (layout.n2 * layout.n1);
            base = i0 * layout.s0 + i1 * layout.s1 + i2 * layout.s2;
        }
        // Sums of x - x[0]: a row's common offset (residual streams carry large ones)
        // would otherwise dominate the sum and cost the mean its low digits.
        let shift = f32::cast_from(x[base / vs].extract(0usize));
        let mut sum = f32::new(0.0);
        #[unroll]
        for i in 0..per_unit {
            let c = (lane + i * LANES) * vs;
            let mut v = Vector::<F, N>::new(F::new(0.0));
            if c < d {
                v = x[(base + c * step) / vs];
            }
            #[unroll]
            for j in 0..vs {
                let mut value = f32::new(0.0);
                if c < d {
                    value = f32::cast_from(v.extract(j)) - shift;
                }
                held[r * row_values + i * vs + j] = value;
                sum += value;
            }
        }
        sums[r] = sum;
    }

    #[unroll]
    for r in 0..rows_per_plane {
        let row = (CUBE_POS * rows_per_plane + r) * ROWS_PER_CUBE + slot;
        // No early return: every unit takes part in the cube's synchronisations.
        let valid = row < rows;
        let held_at = r * row_values;
        let sum = sums[r];
        let shifted_mean = lane_sum(&mut partial, sum, slot, lane, plane_reduce) * inv_d;

        let mut squares = f32::new(0.0);
        #[unroll]
        for i in 0..per_unit {
            let c = (lane + i * LANES) * vs;
            if c < d {
                #[unroll]
                for j in 0..vs {
                    let centered = held[held_at + i * vs + j] - shifted_mean;
                    squares += centered * centered;
                }
            }
        }
        let inv_std = 1.0f32
            / (lane_sum(&mut partial, squares, slot, lane, plane_reduce) * inv_d + epsilon).sqrt();

        // The output is contiguous, its rows in x's logical order.
        let out_base = row * d;
        // The heads' partial sums, zero up to the next power of two (see heads_plane_sum).
        let mut dots = Array::<f32>::new(comptime!(heads.next_power_of_two()));
        #[unroll]
        for h in 0..comptime!(heads.next_power_of_two()) {
            dots[h] = 0.0f32;
        }
        #[unroll]
        for i in 0..per_unit {
            let c = (lane + i * LANES) * vs;
            if c < d {
                let mut v = Vector::<F, N>::empty();
                #[unroll]
                for j in 0..vs {
                    let normalised = (held[held_at + i * vs + j] - shifted_mean) * inv_std;
                    let scaled = normalised * held_gamma[i * vs + j] + held_beta[i * vs + j];
                    v.insert(j, F::cast_from(scaled));
                }
                if comptime!(write_normalised) {
                    if valid {
                        out[(out_base + c) / vs] = v;
                    }
                }
                #[unroll]
                for j in 0..vs {
                    let value = f32::cast_from(v.extract(j));
                    #[unroll]
                    for h in 0..heads {
                        dots[h] += value * held_weights[(i * vs + j) * heads + h];
                    }
                }
            }
        }
        if comptime!(projected.is_some()) {
            // Plane-uniform: every lane of the row's plane takes part.
            let (total, h) = heads_plane_sum(&mut dots, lane, heads);
            if h < comptime!(heads) && lane % comptime!(LANES / heads.next_power_of_two()) == 0 {
                projected_s[h * cube_rows + r * ROWS_PER_CUBE + slot] = F::cast_from(total);
            }
        }
    }
    #[comptime]
    if let ComptimeOption::Some(projected) = &mut projected {
        // Consecutive units write consecutive rows of one head: a plane's 32 stores are one
        // contiguous run (a cube's rows are as many as a plane's units; more runs where they
        // cross batch rows), not one element a row in each of the heads' planes of the output.
        sync_cube();
        let first_row = CUBE_POS * cube_rows;
        let t = slot * LANES + lane;
        let threads = comptime!(ROWS_PER_CUBE * LANES);
        #[unroll]
        for i in 0..comptime!((heads * cube_rows).div_ceil(ROWS_PER_CUBE * LANES)) {
            let e = t + i * threads;
            let (h, cube_row) = (e / cube_rows, e % cube_rows);
            let row = first_row + cube_row;
            if e < comptime!(heads * cube_rows) && row < rows {
                let batch = row / rows_per_batch;
                let at = (batch * comptime!(heads) + h) * rows_per_batch + row % rows_per_batch;
                projected[at] = projected_s[e];
            }
        }
    }
}

/// The plane sums of `values` (every lane's partials of `heads` heads, zero up to the next
/// power of two), one head a lane: at each of the first `log2` exchanges (lane offsets 16,
/// 8, ..) a lane keeps half of its values and adds its partner's partials of that half,
/// then whole sums over the remaining offsets. Returns the lane's total and its head (lanes
/// of the padding heads get an index of `heads` or more). 6 exchanges for 4 heads, 9 for 8,
/// instead of 5 a head.
#[cube]
fn heads_plane_sum(values: &mut Array<f32>, lane: usize, #[comptime] heads: usize) -> (f32, usize) {
    let padded = comptime!(heads.next_power_of_two());
    let halvings = comptime!(padded.trailing_zeros() as usize);
    let mut head = 0usize;
    #[unroll]
    for s in 0..halvings {
        let offset = comptime!(LANES >> (s + 1));
        let half = comptime!(padded >> (s + 1));
        let upper = (lane & offset) != 0;
        if upper {
            head += half;
        }
        #[unroll]
        for i in 0..half {
            let (low, high) = (values[i], values[i + half]);
            let keep = select(upper, high, low);
            let send = select(upper, low, high);
            values[i] = keep + plane_shuffle_xor(send, offset as u32);
        }
    }
    let mut total = values[0];
    #[unroll]
    for s in halvings..comptime!(LANES.trailing_zeros() as usize) {
        total += plane_shuffle_xor(total, comptime!((LANES >> (s + 1)) as u32));
    }
    (total, head)
}
