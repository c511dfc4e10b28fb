//! A CubeCL kernel for [`LayerNorm`](crate::LayerNorm) (feature `cube`): 32 units per row, each
//! holding every 32nd element of it in registers (coalesced loads, one read of the row), the
//! two sums reduced across the row's plane (or in shared memory where planes are not 32 units
//! wide), the statistics in f32 whatever the input dtype. A LayerNorm is then one kernel
//! instead of Burn's two reductions and their elementwise parts.
//!
//! Same arithmetic as [`LayerNorm::forward_reference`](crate::LayerNorm::forward_reference):
//! mean, then the mean of squared deviations (two-pass, as `jnp.var`), `1/sqrt(var + eps)`,
//! scale and offset. The sums run in another order (sequential per unit, the mean's over
//! `x - x[0]`).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::untile;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;
use kernel::layer_norm_rows_kernel;

use crate::attention_kernel::{address_type, cube_count};

/// Units sharing one row.
const LANES: usize = 32;
/// Rows per cube.
const ROWS_PER_CUBE: usize = 8;

/// LayerNorm over the last axis as a backend operation.
#[backend_extension(Cube, Fusion)]
pub trait LayerNormOps: Backend {
    /// `(x - mean) / sqrt(var + epsilon) * gamma + beta` over the rows of `x` `[R, D]`.
    #[fusion(dtype = x, shape = x)]
    fn layer_norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self>;
}

impl LayerNormOps for CubeBackend {
    fn layer_norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self> {
        launch(x, gamma, beta, epsilon)
    }
}

/// Whether [`LayerNorm::forward`](crate::LayerNorm::forward) uses the kernel on cubecl devices:
/// yes unless `AF2_LAYER_NORM_KERNEL=0` (on an H200 it took 0.095 / 0.275 ms for a
/// `[1, L, L, 128]` pair at L = 256 / 512 against Burn's 0.279 / 0.534 ms).
pub fn kernel_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var("AF2_LAYER_NORM_KERNEL").map_or(true, |value| value.trim() != "0")
    })
}

/// Whether [`layer_norm_kernel`] takes `x`: a float tensor on a cubecl device.
pub fn kernel_supports<const D: usize>(x: &Tensor<D>) -> bool {
    matches!(x.device().as_dispatch(), DispatchDevice::Cube(_))
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && x.dims()[D - 1] > 0
}

/// LayerNorm of `x` over its last axis on the kernel; the output has `x`'s dtype.
///
/// # Shapes
/// - x: `[..., d]`, gamma and beta: `[d]`
/// - output: `[..., d]`
///
/// # Panics
/// If [`kernel_supports`] refuses `x` or gamma/beta are not `[d]`.
pub fn layer_norm_kernel<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f32,
) -> Tensor<D> {
    assert!(
        kernel_supports(&x),
        "layer norm kernel: unsupported input (device {:?}, dtype {:?})",
        x.device(),
        x.dtype()
    );
    let dims = x.dims();
    let d = dims[D - 1];
    assert!(
        gamma.dims() == [d] && beta.dims() == [d],
        "layer norm kernel: gamma {:?} and beta {:?} must be [{d}]",
        gamma.dims(),
        beta.dims()
    );
    let rows = dims[..D - 1].iter().product();
    let out = Dispatch::layer_norm_rows(
        x.reshape([rows, d]).into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    );
    Tensor::<2>::from_dispatch(out).reshape(dims)
}

fn launch(x: CubeTensor, gamma: CubeTensor, beta: CubeTensor, epsilon: f32) -> CubeTensor {
    let (x, gamma, beta) = (untile(x), untile(gamma), untile(beta));
    let shape = x.meta.shape().clone();
    assert_eq!(
        shape.num_dims(),
        2,
        "layer norm kernel: rows must be rank 2"
    );
    let (rows, d) = (shape[0], shape[1]);
    let client = x.client.clone();
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), shape, dtype);
    let address_type = address_type([&x, &gamma, &beta, &out]);
    let dtypes = [
        dtype_to_storage_type(dtype),
        dtype_to_storage_type(gamma.dtype),
        dtype_to_storage_type(beta.dtype),
    ];
    let plane_reduce = rows_are_planes(&x);
    // SAFETY: rows past R are neither read nor written; columns stay below D, the shared last
    // dimension of x, out, gamma and beta (checked by `layer_norm_kernel`).
    unsafe {
        layer_norm_rows_kernel::launch_unchecked(
            &client,
            cube_count(rows.div_ceil(ROWS_PER_CUBE)),
            CubeDim::new_2d(LANES as u32, ROWS_PER_CUBE as u32),
            address_type,
            x.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            epsilon,
            1.0 / d as f32,
            d.div_ceil(LANES),
            plane_reduce,
            dtypes,
        );
    }
    out
}

/// Whether the device's planes are exactly one row's [`LANES`] units and support plane sums,
/// so that a row reduces in registers instead of through shared memory and three barriers
/// (on an H200 a `[4·256², 128]` f16 LayerNorm took 92 µs with the shared-memory sums).
fn rows_are_planes(x: &CubeTensor) -> bool {
    let props = x.client.properties();
    props.hardware.plane_size_min == LANES as u32
        && props.hardware.plane_size_max == LANES as u32
        && props
            .features
            .plane
            .contains(cubecl::ir::features::Plane::Ops)
}

mod kernel {
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

    /// Row `CUBE_POS * ROWS_PER_CUBE + UNIT_POS_Y` of `x`, normalised into `out` by the
    /// `LANES` units `UNIT_POS_X`; lane `l` holds columns `l, l + LANES, ..` (`per_unit` of them).
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn layer_norm_rows_kernel<F: Float, G: Float, B: Float>(
        x: &Tensor<F>,
        gamma: &Tensor<G>,
        beta: &Tensor<B>,
        out: &mut Tensor<F>,
        epsilon: f32,
        inv_d: f32,
        #[comptime] per_unit: usize,
        #[comptime] plane_reduce: bool,
        #[define(F, G, B)] _dtypes: [ElemType; 3],
    ) {
        let rows = x.shape(0);
        let d = x.shape(1);
        let lane = UNIT_POS_X as usize;
        let slot = UNIT_POS_Y as usize;
        let row = CUBE_POS * ROWS_PER_CUBE + slot;
        // No early return: every unit takes part in the cube's synchronisations.
        let valid = row < rows;
        let mut safe_row = row;
        if !valid {
            safe_row = 0;
        }
        let base = safe_row * x.stride(0);
        let step = x.stride(1);
        let mut partial = Shared::<[f32]>::new_slice(comptime!(ROWS_PER_CUBE * LANES));

        // Sums of x - x[0]: a row's common offset (residual streams carry large ones) would
        // otherwise dominate the sum and cost the mean its low digits.
        let shift = f32::cast_from(x[base]);
        let mut held = Array::<f32>::new(per_unit);
        let mut sum = f32::new(0.0);
        #[unroll]
        for i in 0..per_unit {
            let c = lane + i * LANES;
            let mut value = f32::new(0.0);
            if c < d {
                value = f32::cast_from(x[base + c * step]) - shift;
            }
            held[i] = value;
            sum += value;
        }
        let shifted_mean = lane_sum(&mut partial, sum, slot, lane, plane_reduce) * inv_d;

        let mut squares = f32::new(0.0);
        #[unroll]
        for i in 0..per_unit {
            let c = lane + i * LANES;
            if c < d {
                let centered = held[i] - shifted_mean;
                squares += centered * centered;
            }
        }
        let inv_std = 1.0f32
            / (lane_sum(&mut partial, squares, slot, lane, plane_reduce) * inv_d + epsilon).sqrt();

        if valid {
            let out_base = row * out.stride(0);
            let out_step = out.stride(1);
            #[unroll]
            for i in 0..per_unit {
                let c = lane + i * LANES;
                if c < d {
                    let normalised = (held[i] - shifted_mean) * inv_std;
                    let scaled = normalised * f32::cast_from(gamma[c * gamma.stride(0)])
                        + f32::cast_from(beta[c * beta.stride(0)]);
                    out[out_base + c * out_step] = F::cast_from(scaled);
                }
            }
        }
    }
}
