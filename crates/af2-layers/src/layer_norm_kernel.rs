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
//! [`try_layer_norm_with_pair_bias`] also projects each normalised pair onto the attention's
//! bias weights as it goes (the triangle and MSA row attentions' pair bias, `[B, H, Q, K]`):
//! one pass over the pairs instead of a LayerNorm and a matmul that reads them again (at
//! L=256 on an H100, 28-37 µs a call at B=1 against 19 + 26 µs, 145-210 µs at B=8 against
//! 136-224 + 120 µs and a copy).
//!
//! Same arithmetic as [`LayerNorm::forward_reference`](crate::LayerNorm::forward_reference):
//! mean, then the mean of squared deviations (two-pass, as `jnp.var`), `1/sqrt(var + eps)`,
//! scale and offset. The sums run in another order (sequential per unit, the mean's over
//! `x - x[0]`).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::{into_contiguous, untile};
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

    /// [`LayerNormOps::layer_norm_rows`] of `x` `[B, Q, K, D]` and the projection of each
    /// normalised row onto the columns of `weights` `[D, H]`, as `[B, H, Q, K]`.
    #[fusion(meta = |x, _gamma, _beta, weights, _epsilon| {
        (x.clone(), projection_spec(x, weights))
    })]
    fn layer_norm_rows_projected(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The projection of [`LayerNormOps::layer_norm_rows_projected`] alone (the normalised
    /// rows are not written).
    #[fusion(meta = |x, _gamma, _beta, weights, _epsilon| projection_spec(x, weights))]
    fn layer_norm_projection(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self>;
}

/// `[B, H, Q, K]` for rows `x` `[B, Q, K, D]` and weights `[D, H]`, in `x`'s dtype.
fn projection_spec(
    x: &burn::backend::fusion::custom::TensorSpec,
    weights: &burn::backend::fusion::custom::TensorSpec,
) -> burn::backend::fusion::custom::TensorSpec {
    let shape = projection_shape(&x.shape, &weights.shape);
    burn::backend::fusion::custom::TensorSpec::new(shape, x.dtype)
}

fn projection_shape(x: &Shape, weights: &Shape) -> Shape {
    Shape::new([x[0], weights[1], x[1], x[2]])
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

    fn layer_norm_rows_projected(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        epsilon: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, projected) = launch_rows(x, gamma, beta, epsilon, Some((weights, true)));
        (out, projected.expect("a projection was asked for"))
    }

    fn layer_norm_projection(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        epsilon: f32,
    ) -> FloatTensor<Self> {
        let (_, projected) = launch_rows(x, gamma, beta, epsilon, Some((weights, false)));
        projected.expect("a projection was asked for")
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

/// Rows a plane normalises and projects in the fused pair-bias form: its lanes load their
/// weights once for all of them. On an H100 (seventeenth session, docs/PERFORMANCE.md), with
/// the weights still loaded element by element, 1 row a plane took 300-830 µs a call at L=256
/// B=1 against 36-52 µs for 8; with vector loads 2, 4 and 8 rows were within 0.5% at block
/// level, 4 the fastest.
const PROJECTED_ROWS_PER_PLANE: usize = 4;

/// Rows a plane normalises in the plain form, all loaded before the first is written (a load
/// after a store to the output would wait for it: the buffers might alias). On an H200
/// (twenty-third session, docs/PERFORMANCE.md) a `[8, 256, 256, 128]` f16 LayerNorm took 0.107
/// ms with 4 rows a plane against 0.197 ms with 1; an L=256 B=8 block 11.82-11.84 ms with 4,
/// 11.87-11.89 with 8, 12.03-12.04 with 1.
const PLAIN_ROWS_PER_PLANE: usize = 4;

/// Most heads the fused pair-bias projection takes (a lane holds its columns' weights of every
/// head in registers; the attentions have 4 or 8).
const MAX_PROJECTED_HEADS: usize = 16;

/// Whether `AF2_FUSED_PAIR_BIAS=0` turned the pair bias inside the LayerNorm kernel off.
fn fused_pair_bias_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var("AF2_FUSED_PAIR_BIAS").map_or(true, |value| value.trim() != "0")
    })
}

/// The LayerNorm of pairs `x` `[B, Q, K, D]` and the attention's pair bias from it,
/// `Σ_c norm(x)[b, q, k, c] · weights[c, h]` as `[B, H, Q, K]`, from one pass of the rows
/// kernel; the normalised pairs only where `normalised` asks for them. `None` where the kernel
/// does not take the inputs (not a cubecl device whose planes are rows, weights of another
/// dtype or more than [`MAX_PROJECTED_HEADS`] heads, `AF2_LAYER_NORM_KERNEL=0` or
/// `AF2_FUSED_PAIR_BIAS=0`).
///
/// # Panics
/// If gamma or beta is not `[D]` or the weights have not `D` rows.
pub fn try_layer_norm_with_pair_bias(
    x: &Tensor<4>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    epsilon: f32,
    weights: &Tensor<2>,
    normalised: bool,
) -> Option<(Option<Tensor<4>>, Tensor<4>)> {
    let d = x.dims()[3];
    let [w_rows, heads] = weights.dims();
    assert!(
        gamma.dims() == [d] && beta.dims() == [d] && w_rows == d,
        "layer norm kernel: gamma {:?}, beta {:?} and weights {:?} must be [{d}], [{d}], [{d}, H]",
        gamma.dims(),
        beta.dims(),
        weights.dims()
    );
    let offered = kernel_enabled()
        && fused_pair_bias_enabled()
        && kernel_supports(x)
        && x.dims()[0] > 0
        && weights.dtype() == x.dtype()
        && (1..=MAX_PROJECTED_HEADS).contains(&heads)
        && with_cube_properties(&x.device(), planes_are_rows).unwrap_or(false);
    if !offered {
        return None;
    }
    let (x, gamma, beta, weights) = (
        x.clone().into_dispatch(),
        gamma.clone().into_dispatch(),
        beta.clone().into_dispatch(),
        weights.clone().into_dispatch(),
    );
    Some(if normalised {
        let (out, bias) = Dispatch::layer_norm_rows_projected(x, gamma, beta, weights, epsilon);
        (
            Some(Tensor::<4>::from_dispatch(out)),
            Tensor::<4>::from_dispatch(bias),
        )
    } else {
        let bias = Dispatch::layer_norm_projection(x, gamma, beta, weights, epsilon);
        (None, Tensor::<4>::from_dispatch(bias))
    })
}

fn launch(x: CubeTensor, gamma: CubeTensor, beta: CubeTensor, epsilon: f32) -> CubeTensor {
    launch_rows(x, gamma, beta, epsilon, None).0
}

/// The rows kernel on `x`; with `projection` (`weights` `[D, H]` and whether the normalised
/// rows are wanted too) also their projection `[B, H, Q, K]` (x `[B, Q, K, D]`). Without the
/// normalised rows the first result is a one-vector placeholder.
fn launch_rows(
    x: CubeTensor,
    gamma: CubeTensor,
    beta: CubeTensor,
    epsilon: f32,
    projection: Option<(CubeTensor, bool)>,
) -> (CubeTensor, Option<CubeTensor>) {
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
    let vector = vector_size(&x, &gamma, &beta);
    let write_normalised = projection.as_ref().is_none_or(|(_, wanted)| *wanted);
    let out_shape = if write_normalised {
        shape.clone()
    } else {
        Shape::new([vector])
    };
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), out_shape, dtype);
    let projected = projection.as_ref().map(|(weights, _)| {
        let shape = projection_shape(&shape, weights.meta.shape());
        empty_device_contiguous_dtype(client.clone(), x.device.clone(), shape, dtype)
    });
    let heads = projection
        .as_ref()
        .map_or(0, |(weights, _)| weights.meta.shape()[1]);
    let rows_per_batch = rows / shape[0].max(1);
    // A projecting cube takes several rows a plane, so that its lanes load their weights once
    // for all of them.
    let rows_per_plane = if heads > 0 {
        PROJECTED_ROWS_PER_PLANE
    } else {
        PLAIN_ROWS_PER_PLANE
    };
    let (address_type, dtypes) = launch_types([&x, &gamma, &beta, &out]);
    let plane_reduce = planes_are_rows(x.client.properties());
    assert!(
        projection.is_none() || plane_reduce,
        "layer norm kernel: the projection needs planes of {LANES} units"
    );
    // SAFETY: rows past R are neither read nor written, a row's offset comes from its
    // coordinates and x's strides; columns stay below D, the shared last dimension of x, out,
    // gamma, beta and the weights (checked by the callers), and the projection's heads below
    // H; a projection is written at `(b · H + h) · P + p` inside its `[B, H, P]`.
    unsafe {
        layer_norm_rows_kernel::launch_unchecked(
            &client,
            cube_count(rows.div_ceil(ROWS_PER_CUBE * rows_per_plane)),
            CubeDim::new_2d(LANES as u32, ROWS_PER_CUBE as u32),
            address_type,
            vector,
            x.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            projection
                .map(|(weights, _)| into_contiguous(weights).into_tensor_arg())
                .into(),
            projected.clone().map(CubeTensor::into_tensor_arg).into(),
            RowLayoutLaunch::new(rows, n1, n2, s0, s1, s2, step, d),
            rows_per_batch,
            epsilon,
            1.0 / d as f32,
            (d / vector).div_ceil(LANES),
            vector,
            even_rows,
            plane_reduce,
            heads,
            rows_per_plane,
            write_normalised,
            dtypes,
        );
    }
    (out, projected)
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

mod kernel;

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
