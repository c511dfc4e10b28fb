//! A CubeCL kernel for [`LayerNorm`](crate::LayerNorm) (feature `cube`): 32 units per row, each
//! holding every 32nd element of it in registers (coalesced loads, one read of the row; on rows
//! contiguous in memory every 32nd vector of up to 4 elements, so that one load instruction of
//! a plane covers 128 elements of a 128-wide row), the
//! two sums reduced across the row's plane (or in shared memory where planes are not 32 units
//! wide), the statistics in f32 whatever the input dtype. A LayerNorm is then one kernel
//! instead of Burn's two reductions and their elementwise parts. Rows are read through the
//! strides of up to three leading dimensions, so a swapped view (the ending-node triangle
//! attention's pair) is normalised in place, without a copy. [`try_layer_norm_channel_major`]
//! normalises the columns of a channel-major `[D, R]` tensor into rows (the triangle
//! multiplication's centre norm, on its product as the matmul leaves it).
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
use cubecl::ir::{AddressType, ElemType};
use cubecl::prelude::{CubeDim, DeviceProperties};
use kernel::{RowLayoutLaunch, layer_norm_rows_kernel};

use crate::attention_kernel::{address_type, cube_count};
use crate::with_cube_properties;

/// Units sharing one row.
const LANES: usize = 32;
/// Rows per cube.
const ROWS_PER_CUBE: usize = 8;

/// LayerNorm over the last axis as a backend operation.
#[backend_extension(Cube, Fusion)]
pub trait LayerNormOps: Backend {
    /// `(x - mean) / sqrt(var + epsilon) * gamma + beta` over the rows of `x` `[..., D]` (rank
    /// 4 at most; the rows read through their strides).
    #[fusion(dtype = x, shape = x)]
    fn layer_norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self>;

    /// The same over the columns of a channel-major `x` `[D, R]`, written row-major `[R, D]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[0] = x[1];
        shape[1] = x[0];
        shape
    })]
    fn layer_norm_columns(
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

    fn layer_norm_columns(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self> {
        columns::launch(x, gamma, beta, epsilon)
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
    // Up to three leading dimensions are read through their strides (a swapped view needs no
    // copy); more are merged first.
    if D > 4 {
        let rows = dims[..D - 1].iter().product();
        return layer_norm_kernel(x.reshape([rows, d]), gamma, beta, epsilon).reshape(dims);
    }
    let out = Dispatch::layer_norm_rows(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    );
    Tensor::<D>::from_dispatch(out)
}

/// The rows of `shape` (all but the last dimension, at most three) as `[n0, n1, n2]` with
/// their strides, leading ones of size 1 where there are fewer; or, where they are one evenly
/// strided run (row `r` at `r · step`), `Some(step)`, so that the kernel need not split row
/// indices.
fn row_layout(shape: &[usize], strides: &[usize]) -> ([usize; 3], [usize; 3], Option<usize>) {
    let lead = shape.len() - 1;
    assert!(lead <= 3, "layer norm kernel: at most three row dimensions");
    let (mut dims, mut steps) = ([1; 3], [0; 3]);
    dims[3 - lead..].copy_from_slice(&shape[..lead]);
    steps[3 - lead..].copy_from_slice(&strides[..lead]);
    // Size-1 dimensions do not move a row, whatever their stride.
    let kept: Vec<(usize, usize)> = dims
        .iter()
        .zip(steps)
        .filter(|(n, _)| **n > 1)
        .map(|(&n, s)| (n, s))
        .collect();
    let even = kept.windows(2).all(|w| w[0].1 == w[1].1 * w[1].0);
    (dims, steps, even.then(|| kept.last().map_or(0, |k| k.1)))
}

/// LayerNorm of the columns of a channel-major `x` on the kernel of [`columns`], or `None`
/// where it does not take them (not a cubecl device with 32-unit planes, `D` over
/// [`columns::MAX_CHANNELS`], another dtype, or `AF2_LAYER_NORM_KERNEL=0`): the caller then
/// transposes first.
///
/// # Shapes
/// - x: `[D, R]`, gamma and beta: `[D]`
/// - output: `[R, D]`
///
/// # Panics
/// If gamma or beta is not `[D]`.
pub fn try_layer_norm_channel_major(
    x: &Tensor<2>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    epsilon: f32,
) -> Option<Tensor<2>> {
    let [d, _] = x.dims();
    assert!(
        gamma.dims() == [d] && beta.dims() == [d],
        "layer norm kernel: gamma {:?} and beta {:?} must be [{d}]",
        gamma.dims(),
        beta.dims()
    );
    // `kernel_supports` refuses R = 0 (its last axis) and devices other than cubecl's.
    let offered = kernel_enabled()
        && kernel_supports(x)
        && (1..=columns::MAX_CHANNELS).contains(&d)
        && with_cube_properties(&x.device(), planes_are_rows).unwrap_or(false);
    if !offered {
        return None;
    }
    Some(Tensor::<2>::from_dispatch(Dispatch::layer_norm_columns(
        x.clone().into_dispatch(),
        gamma.clone().into_dispatch(),
        beta.clone().into_dispatch(),
        epsilon,
    )))
}

fn launch(x: CubeTensor, gamma: CubeTensor, beta: CubeTensor, epsilon: f32) -> CubeTensor {
    let (x, gamma, beta) = (untile(x), untile(gamma), untile(beta));
    let shape = x.meta.shape().clone();
    let rank = shape.num_dims();
    let d = shape[rank - 1];
    let ([_, n1, n2], [s0, s1, s2], even) = row_layout(&shape[..], &x.meta.strides()[..]);
    // Evenly strided rows are read at `row · s2`.
    let (even_rows, s2) = (even.is_some(), even.unwrap_or(s2));
    let rows = shape[..rank - 1].iter().product::<usize>();
    let step = x.meta.strides()[rank - 1];
    let client = x.client.clone();
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), shape, dtype);
    let (address_type, dtypes) = launch_types([&x, &gamma, &beta, &out]);
    let plane_reduce = planes_are_rows(x.client.properties());
    let vector = vector_size(&x, &gamma, &beta);
    // SAFETY: rows past R are neither read nor written, a row's offset comes from its
    // coordinates and x's strides; columns stay below D, the shared last dimension of x, out,
    // gamma and beta (checked by `layer_norm_kernel`).
    unsafe {
        layer_norm_rows_kernel::launch_unchecked(
            &client,
            cube_count(rows.div_ceil(ROWS_PER_CUBE)),
            CubeDim::new_2d(LANES as u32, ROWS_PER_CUBE as u32),
            address_type,
            vector,
            x.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            RowLayoutLaunch::new(rows, n1, n2, s0, s1, s2, step, d),
            epsilon,
            1.0 / d as f32,
            (d / vector).div_ceil(LANES),
            vector,
            even_rows,
            plane_reduce,
            dtypes,
        );
    }
    out
}

/// Elements a unit loads at once: 4 (or 2) where each row is contiguous, its width and the
/// stride of every row dimension (of more than one row) are multiples of it, and gamma and beta
/// are contiguous; else 1 (strided views).
fn vector_size(x: &CubeTensor, gamma: &CubeTensor, beta: &CubeTensor) -> usize {
    let unit_stride = |t: &CubeTensor| t.meta.strides()[0] == 1;
    let (shape, strides) = (x.meta.shape(), x.meta.strides());
    let last = shape.num_dims() - 1;
    if !(unit_stride(gamma) && unit_stride(beta)) || strides[last] != 1 {
        return 1;
    }
    let fits = |vs: usize| {
        shape[last].is_multiple_of(vs)
            && (0..last).all(|i| shape[i] == 1 || strides[i].is_multiple_of(vs))
    };
    [4, 2].into_iter().find(|&vs| fits(vs)).unwrap_or(1)
}

/// The address type of a launch over `tensors` and the dtypes of the kernels' `x`, gamma and
/// beta (the first three).
fn launch_types(tensors: [&CubeTensor; 4]) -> (AddressType, [ElemType; 3]) {
    let dtypes = [0, 1, 2].map(|i| dtype_to_storage_type(tensors[i].dtype));
    (address_type(tensors), dtypes)
}

/// Whether the device's planes are exactly one row's [`LANES`] units and support plane sums,
/// so that a row reduces in registers instead of through shared memory and three barriers
/// (on an H200 a `[4·256², 128]` f16 LayerNorm took 92 µs with the shared-memory sums).
fn planes_are_rows(props: &DeviceProperties) -> bool {
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

    /// Row `CUBE_POS * ROWS_PER_CUBE + UNIT_POS_Y` of `x`, normalised into `out` by the
    /// `LANES` units `UNIT_POS_X`; lane `l` holds the vectors of `vs` columns `l, l + LANES, ..`
    /// (`per_unit` of them). With `vs > 1` the rows, gamma and beta are contiguous.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn layer_norm_rows_kernel<F: Float, G: Float, B: Float, N: Size>(
        x: &Tensor<Vector<F, N>>,
        gamma: &Tensor<Vector<G, N>>,
        beta: &Tensor<Vector<B, N>>,
        out: &mut Tensor<Vector<F, N>>,
        layout: RowLayout,
        epsilon: f32,
        inv_d: f32,
        #[comptime] per_unit: usize,
        #[comptime] vs: usize,
        #[comptime] even_rows: bool,
        #[comptime] plane_reduce: bool,
        #[define(F, G, B)] _dtypes: [ElemType; 3],
    ) {
        let (rows, d, step) = (layout.rows, layout.d, layout.step);
        let lane = UNIT_POS_X as usize;
        let slot = UNIT_POS_Y as usize;
        let row = CUBE_POS * ROWS_PER_CUBE + slot;
        // No early return: every unit takes part in the cube's synchronisations.
        let valid = row < rows;
        let mut safe_row = row;
        if !valid {
            safe_row = 0;
        }
        let mut base = safe_row * layout.s2;
        if comptime!(!even_rows) {
            let i2 = safe_row % layout.n2;
            let i1 = (safe_row / layout.n2) % layout.n1;
            let i0 = safe_row / (layout.n2 * layout.n1);
            base = i0 * layout.s0 + i1 * layout.s1 + i2 * layout.s2;
        }
        let mut partial = Shared::<[f32]>::new_slice(comptime!(ROWS_PER_CUBE * LANES));

        // Sums of x - x[0]: a row's common offset (residual streams carry large ones) would
        // otherwise dominate the sum and cost the mean its low digits.
        let shift = f32::cast_from(x[base / vs].extract(0usize));
        let mut held = Array::<f32>::new(comptime!(per_unit * vs));
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
                held[i * vs + j] = value;
                sum += value;
            }
        }
        let shifted_mean = lane_sum(&mut partial, sum, slot, lane, plane_reduce) * inv_d;

        let mut squares = f32::new(0.0);
        #[unroll]
        for i in 0..per_unit {
            let c = (lane + i * LANES) * vs;
            if c < d {
                #[unroll]
                for j in 0..vs {
                    let centered = held[i * vs + j] - shifted_mean;
                    squares += centered * centered;
                }
            }
        }
        let inv_std = 1.0f32
            / (lane_sum(&mut partial, squares, slot, lane, plane_reduce) * inv_d + epsilon).sqrt();

        if valid {
            // The output is contiguous, its rows in x's logical order.
            let out_base = row * d;
            #[unroll]
            for i in 0..per_unit {
                let c = (lane + i * LANES) * vs;
                if c < d {
                    let gamma_v = gamma[c * gamma.stride(0) / vs];
                    let beta_v = beta[c * beta.stride(0) / vs];
                    let mut v = Vector::<F, N>::empty();
                    #[unroll]
                    for j in 0..vs {
                        let normalised = (held[i * vs + j] - shifted_mean) * inv_std;
                        let scaled = normalised * f32::cast_from(gamma_v.extract(j))
                            + f32::cast_from(beta_v.extract(j));
                        v.insert(j, F::cast_from(scaled));
                    }
                    out[(out_base + c) / vs] = v;
                }
            }
        }
    }
}

mod columns;

#[cfg(test)]
mod tests {
    use super::row_layout;

    #[test]
    fn evenly_strided_rows_are_recognised() {
        // Contiguous [2, 3, 4, 8]: row r at 8 r.
        assert_eq!(row_layout(&[2, 3, 4, 8], &[96, 32, 8, 1]).2, Some(8));
        // Rows of a matrix, and a single row.
        assert_eq!(row_layout(&[5, 8], &[8, 1]).2, Some(8));
        assert_eq!(row_layout(&[8], &[1]).2, Some(0));
        // A size-1 dimension with any stride moves no row.
        assert_eq!(row_layout(&[2, 1, 4, 8], &[32, 7, 8, 1]).2, Some(8));
        assert_eq!(row_layout(&[2, 3, 1, 8], &[24, 8, 5, 1]).2, Some(8));
        // [b, n, n, c] with the two n swapped: rows must be split into coordinates.
        let (dims, steps, even) = row_layout(&[1, 4, 4, 8], &[128, 8, 32, 1]);
        assert_eq!((dims, steps, even), ([1, 4, 4], [128, 8, 32], None));
    }
}
