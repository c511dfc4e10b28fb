//! LayerNorm over the columns of a channel-major `[D, R]` tensor, written row-major `[R, D]`:
//! the triangle multiplication's centre norm reads the triangle product in the layout its
//! batched matmul leaves it, instead of after a copy into rows.
//!
//! A cube of 8 planes stages 16 rows (columns of `x`) in shared memory, as f32, with loads of 4
//! consecutive rows of a channel; then each plane normalises 2 of the rows with the row
//! kernel's arithmetic (shift by the row's first element, two-pass variance, plane sums; lane
//! `l` holds channels `l, l + 32, ..`, so the sums run in another order than the row kernel's
//! vectors) and writes them out along the row.

use burn::tensor::Shape;
use burn_cubecl::kernel::{into_contiguous, untile};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use super::{LANES, launch_types, planes_are_rows};
use crate::attention_kernel::cube_count;
use kernel::layer_norm_columns_kernel;

/// The most channels the kernel takes.
pub(super) const MAX_CHANNELS: usize = 128;
/// Rows a cube normalises: 16 rows of f16 are one 32-byte sector of a channel. On an H100 a
/// `[128, 524288]` f16 input took 146 µs with 16 rows a cube, 199 with 32, 300 with 64.
const TILE_ROWS: usize = 16;
/// Planes a cube (each normalises every 8th staged row).
const PLANES: usize = 8;
/// Consecutive rows of a channel a unit loads at once, where the row count allows.
const VECTOR: usize = 4;

pub(super) fn launch(
    x: CubeTensor,
    gamma: CubeTensor,
    beta: CubeTensor,
    epsilon: f32,
) -> CubeTensor {
    let (x, gamma, beta) = (into_contiguous(untile(x)), untile(gamma), untile(beta));
    let shape = x.meta.shape();
    assert_eq!(
        shape.num_dims(),
        2,
        "layer norm kernel: columns must be rank 2"
    );
    let (d, rows) = (shape[0], shape[1]);
    assert!(
        d <= MAX_CHANNELS && gamma.meta.shape()[0] == d && beta.meta.shape()[0] == d,
        "layer norm kernel: {d} channels (at most {MAX_CHANNELS}), gamma and beta [{d}]"
    );
    assert!(
        planes_are_rows(x.client.properties()),
        "layer norm kernel: the columns kernel needs planes of {LANES} units"
    );
    let client = x.client.clone();
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([rows, d]),
        dtype,
    );
    let vector = if rows.is_multiple_of(VECTOR) {
        VECTOR
    } else {
        1
    };
    let (address_type, dtypes) = launch_types([&x, &gamma, &beta, &out]);
    // SAFETY: x is contiguous [D, R]; reads stay below channel D and row R (R a multiple of
    // the vector size when vectorised), writes of the contiguous [R, D] output below row R and
    // channel D, reads of gamma and beta ([D], asserted) below D.
    unsafe {
        layer_norm_columns_kernel::launch_unchecked(
            &client,
            cube_count(rows.div_ceil(TILE_ROWS)),
            CubeDim::new_2d(LANES as u32, PLANES as u32),
            address_type,
            vector,
            x.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            epsilon,
            1.0 / d as f32,
            d,
            vector,
            TILE_ROWS,
            dtypes,
        );
    }
    out
}

mod kernel {
    use super::{LANES, PLANES};
    use cubecl::prelude::*;

    /// Rows `CUBE_POS * tile_rows ..` of the output from columns of `x`; see the module
    /// documentation.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn layer_norm_columns_kernel<F: Float, G: Float, B: Float, N: Size>(
        x: &Tensor<Vector<F, N>>,
        gamma: &Tensor<G>,
        beta: &Tensor<B>,
        out: &mut Tensor<F>,
        epsilon: f32,
        inv_d: f32,
        #[comptime] d: usize,
        #[comptime] vs: usize,
        #[comptime] tile_rows: usize,
        #[define(F, G, B)] _dtypes: [ElemType; 3],
    ) {
        let rows = x.shape(1);
        let lane = UNIT_POS_X as usize;
        let plane = UNIT_POS_Y as usize;
        let t = plane * LANES + lane;
        let threads = comptime!(LANES * PLANES);
        let row0 = CUBE_POS * tile_rows;
        // Staged row `r`, channel `c` at `r * tile_row + c` (`d + 1`: for the even channel
        // counts of the model, an odd row length, so that the column stores of consecutive rows
        // fall in different banks).
        let tile_row = comptime!(d + 1);
        let mut tile = Shared::<[f32]>::new_slice(comptime!(tile_rows * (d + 1)));

        // The lane's scale and offset (channels `lane, lane + 32, ..`), loaded before the
        // stores: a load after a store to `out` would wait for it (the buffers might alias).
        let per_lane = comptime!(d.div_ceil(LANES));
        let mut held_gamma = Array::<f32>::new(per_lane);
        let mut held_beta = Array::<f32>::new(per_lane);
        #[unroll]
        for i in 0..per_lane {
            let c = lane + i * LANES;
            let mut g = f32::new(0.0);
            let mut b = f32::new(0.0);
            if c < d {
                g = f32::cast_from(gamma[c * gamma.stride(0)]);
                b = f32::cast_from(beta[c * beta.stride(0)]);
            }
            held_gamma[i] = g;
            held_beta[i] = b;
        }

        let per_channel = comptime!(tile_rows / vs);
        #[unroll]
        for i in 0..comptime!((d * tile_rows / vs).div_ceil(LANES * PLANES)) {
            let e = t + i * threads;
            let (c, rv) = (e / per_channel, e % per_channel);
            if c < d {
                let row = row0 + rv * vs;
                let mut v = Vector::<F, N>::new(F::new(0.0));
                if row < rows {
                    v = x[(c * rows + row) / vs];
                }
                #[unroll]
                for j in 0..vs {
                    tile[(rv * vs + j) * tile_row + c] = f32::cast_from(v.extract(j));
                }
            }
        }
        sync_cube();

        // Unrolled: the plane sums of a plane's rows are independent and overlap.
        #[unroll]
        for k in 0..comptime!(tile_rows / PLANES) {
            let r = plane + k * PLANES;
            let at = r * tile_row;
            // Sums of x - x[0], as in the row kernel.
            let shift = tile[at];
            let mut held = Array::<f32>::new(per_lane);
            let mut sum = f32::new(0.0);
            #[unroll]
            for i in 0..per_lane {
                let c = lane + i * LANES;
                let mut value = f32::new(0.0);
                if c < d {
                    value = tile[at + c] - shift;
                }
                held[i] = value;
                sum += value;
            }
            let shifted_mean = plane_sum(sum) * inv_d;
            let mut squares = f32::new(0.0);
            #[unroll]
            for i in 0..per_lane {
                if lane + i * LANES < d {
                    let centered = held[i] - shifted_mean;
                    squares += centered * centered;
                }
            }
            let inv_std = 1.0f32 / (plane_sum(squares) * inv_d + epsilon).sqrt();
            let row = row0 + r;
            if row < rows {
                #[unroll]
                for i in 0..per_lane {
                    let c = lane + i * LANES;
                    if c < d {
                        let normalised = (held[i] - shifted_mean) * inv_std;
                        let scaled = normalised * held_gamma[i] + held_beta[i];
                        out[row * d + c] = F::cast_from(scaled);
                    }
                }
            }
        }
    }
}
