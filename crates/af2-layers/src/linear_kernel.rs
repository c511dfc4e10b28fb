//! A tensor-core kernel for the f16 linear layers of the pair stack (feature `cube`):
//! `y = x · W + b` for `x` `[M, K]` with `K ≤ 128` input channels (a multiple of 16) and `N` a
//! multiple of 64 output channels; optionally written transposed (`yᵀ`, `[N, M]`), as the
//! triangle multiplication's channel-major edge projections want it.
//!
//! A cube of 4 planes owns a block of up to 128 output columns; each plane keeps its 16 or 32
//! columns of the weight in registers as 16×16×16 fragments for the whole run, so the weight is
//! read once per cube, and its bias as accumulator fragments that the first product of every
//! stripe adds to. The cube walks 64-row tiles of `x`: it stages the tile in shared memory with
//! 16-byte loads, each plane multiplies its four 16-row stripes by its weight fragments, rounds
//! the f32 accumulators to f16 into a shared output tile, and the cube writes the tile out with
//! 16-byte stores (along output rows, or along output columns when transposed). Rows past `M`
//! are read as zero and not written.
//!
//! On an H100 (docs/PERFORMANCE.md) a `[262144, 128] · [128, 128]` product took 124 µs against
//! 176 µs for cubecl's matmul with the bias fused, and the triangle multiplication's four
//! projections (`N = 512`, transposed) 459 µs against 574 µs. Tried and slower there:
//! element-wise (2-byte) loads and stores (213 µs), prefetching the next tile into registers
//! (141 µs), transposed stores with consecutive units on consecutive columns (944 µs).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::{into_contiguous, untile};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use crate::attention_kernel::{address_type, cube_count};
use crate::attention_kernel_mma::runs_f16_instructions;
use kernel::linear_mma_kernel;

/// Rows and columns of one matrix instruction (`16 × 16 × 16`).
const MMA: usize = 16;
/// Units of a plane the kernel is written for.
const PLANE: usize = 32;
/// Planes per cube; each takes a quarter of the cube's columns.
const PLANES: usize = 4;
/// Rows of `x` a cube stages and computes per step (four 16-row stripes a plane).
const TILE_ROWS: usize = 64;
/// The largest input width: a plane's weight columns stay in registers (16 fragments).
pub const MAX_INPUT: usize = 128;
/// Output columns per cube at most (two accumulator fragments a plane).
const MAX_BLOCK: usize = 128;
/// f16 elements a unit moves per global load or store (16 bytes).
const VECTOR: usize = 8;
/// Cubes worth launching: beyond this a cube walks several tiles, reusing its weight
/// fragments (an H100 has 132 multiprocessors; eight cubes each).
const TARGET_CUBES: usize = 1056;

/// Linear layer as a backend operation.
#[backend_extension(Cube, Fusion)]
pub trait LinearOps: Backend {
    /// `x · weight + bias` for `x` `[M, K]`, `weight` `[K, N]`, `bias` `[N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[1] = weight[1];
        shape
    })]
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `(x · weight + bias)ᵀ` `[N, M]` for `x` `[M, K]`, `weight` `[K, N]`, `bias` `[N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[0] = weight[1];
        shape[1] = x[0];
        shape
    })]
    fn linear_rows_transposed(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x · weight` for `x` `[M, K]`, `weight` `[K, N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[1] = weight[1];
        shape
    })]
    fn linear_rows_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl LinearOps for CubeBackend {
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        launch(x, weight, Some(bias), false)
    }

    fn linear_rows_transposed(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        launch(x, weight, Some(bias), true)
    }

    fn linear_rows_unbiased(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        launch(x, weight, None, false)
    }
}

/// Whether `AF2_LINEAR_KERNEL=0` turned the kernel off.
fn disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED
        .get_or_init(|| std::env::var("AF2_LINEAR_KERNEL").is_ok_and(|value| value.trim() == "0"))
}

/// Whether `x`'s device is a cubecl device that runs 16×16×16 f16 matrix instructions with f32
/// accumulators in planes of [`PLANE`] units, and gives a cube the shared memory the kernel
/// declares for `k` inputs and `n` outputs.
fn device_supports(x: &Tensor<2>, k: usize, n: usize) -> bool {
    let device = x.device();
    #[allow(irrefutable_let_patterns)] // Only cubecl backends in some builds.
    let DispatchDevice::Cube(device) = device.as_dispatch() else {
        return false;
    };
    let client = device.client();
    let props = client.properties();
    runs_f16_instructions(props)
        && shared_bytes(k, block_width(n)) <= props.hardware.max_shared_memory_size
}

/// Bytes of shared memory the kernel declares: the input and output tiles (f16) and the bias
/// rows (f32), rows padded by 8 elements.
fn shared_bytes(k: usize, n_block: usize) -> usize {
    let (half, single, pad) = (2, 4, 8);
    TILE_ROWS * (k + pad) * half
        + TILE_ROWS * (n_block + pad) * half
        + MMA * (n_block + pad) * single
}

/// Whether [`linear_kernel`] takes `x · weight`: f16 on a device with matrix instructions,
/// `K ≤ 128` in multiples of 16 and `N` in multiples of 64 (`AF2_LINEAR_KERNEL=0` turns it
/// off).
pub fn kernel_supports(x: &Tensor<2>, weight: &Tensor<2>) -> bool {
    let [m, k] = x.dims();
    let [k_w, n] = weight.dims();
    !disabled()
        && x.dtype() == DType::F16
        && weight.dtype() == DType::F16
        && k == k_w
        && m > 0
        && k > 0
        && k % MMA == 0
        && k <= MAX_INPUT
        && n > 0
        && n % (PLANES * MMA) == 0
        && device_supports(x, k, n)
}

/// `x · weight (+ bias)` on the kernel.
///
/// # Shapes
/// - x: `[M, K]`, weight: `[K, N]`, bias: `[N]`
/// - output: `[M, N]`
///
/// # Panics
/// If [`kernel_supports`] refuses the inputs or bias is not `[N]`.
pub fn linear_kernel(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    try_linear_kernel(&x, &weight, bias.as_ref()).unwrap_or_else(|| unsupported(&x, &weight))
}

/// [`linear_kernel`] where [`kernel_supports`] takes the inputs, else `None`: one support check
/// for callers with a fallback.
///
/// # Panics
/// If bias is not `[N]`.
pub fn try_linear_kernel(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<2>> {
    if !kernel_supports(x, weight) {
        return None;
    }
    let bias = bias.map(|bias| checked_bias(bias, weight.dims()[1]));
    let (x, weight) = (x.clone().into_dispatch(), weight.clone().into_dispatch());
    let out = match bias {
        Some(bias) => Dispatch::linear_rows(x, weight, bias),
        None => Dispatch::linear_rows_unbiased(x, weight),
    };
    Some(Tensor::<2>::from_dispatch(out))
}

/// Whether [`linear_kernel_transposed`] takes `x · weight`: as [`kernel_supports`], with the
/// rows of `x` in multiples of 8 (whole 16-byte vectors in every output row).
pub fn transposed_kernel_supports(x: &Tensor<2>, weight: &Tensor<2>) -> bool {
    x.dims()[0].is_multiple_of(VECTOR) && kernel_supports(x, weight)
}

/// `(x · weight + bias)ᵀ` on the kernel: the output channel-major, as the triangle
/// multiplication's edge projections want it.
///
/// # Shapes
/// - x: `[M, K]`, weight: `[K, N]`, bias: `[N]`
/// - output: `[N, M]`
///
/// # Panics
/// If [`transposed_kernel_supports`] refuses the inputs or bias is not `[N]`.
pub fn linear_kernel_transposed(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
    try_linear_kernel_transposed(&x, &weight, &bias).unwrap_or_else(|| unsupported(&x, &weight))
}

/// [`linear_kernel_transposed`] where [`transposed_kernel_supports`] takes the inputs, else
/// `None`.
///
/// # Panics
/// If bias is not `[N]`.
pub fn try_linear_kernel_transposed(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: &Tensor<1>,
) -> Option<Tensor<2>> {
    if !transposed_kernel_supports(x, weight) {
        return None;
    }
    let bias = checked_bias(bias, weight.dims()[1]);
    let (x, weight) = (x.clone().into_dispatch(), weight.clone().into_dispatch());
    Some(Tensor::<2>::from_dispatch(
        Dispatch::linear_rows_transposed(x, weight, bias),
    ))
}

/// The bias for the backend operation, checked to be `[n]`.
fn checked_bias(bias: &Tensor<1>, n: usize) -> FloatTensor<Dispatch> {
    assert_eq!(bias.dims(), [n], "linear kernel: bias must be [{n}]");
    bias.clone().into_dispatch()
}

/// The refusal of the panicking entry points.
fn unsupported(x: &Tensor<2>, weight: &Tensor<2>) -> ! {
    panic!(
        "linear kernel: unsupported inputs (x {:?} {:?}, weight {:?})",
        x.dims(),
        x.dtype(),
        weight.dims()
    )
}

fn launch(
    x: CubeTensor,
    weight: CubeTensor,
    bias: Option<CubeTensor>,
    transposed: bool,
) -> CubeTensor {
    let x = into_contiguous(untile(x));
    let weight = into_contiguous(untile(weight));
    let bias = bias.map(untile);
    let (m, k) = (x.meta.shape()[0], x.meta.shape()[1]);
    let n = weight.meta.shape()[1];
    let client = x.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new(if transposed { [n, m] } else { [m, n] }),
        x.dtype,
    );
    let n_block = block_width(n);
    let column_blocks = n / n_block;
    let tiles = m.div_ceil(TILE_ROWS);
    let cubes_per_block = tiles.min(TARGET_CUBES.div_ceil(column_blocks)).max(1);
    let address_type = address_type([&x, &weight, &out].into_iter().chain(bias.as_ref()));
    let dtypes = [
        dtype_to_storage_type(out.dtype),
        dtype_to_storage_type(bias.as_ref().map_or(out.dtype, |b| b.dtype)),
    ];
    // SAFETY: reads of x stay below row M (checked per element) and column K, of the weight
    // inside [0, K) × [0, N) (`n_block` divides N), of the bias inside [0, N); writes of the
    // output stay below row M and column N.
    unsafe {
        linear_mma_kernel::launch_unchecked(
            &client,
            cube_count(cubes_per_block * column_blocks),
            CubeDim::new_2d(PLANE as u32, PLANES as u32),
            address_type,
            VECTOR,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.map(CubeTensor::into_tensor_arg).into(),
            out.clone().into_tensor_arg(),
            cubes_per_block,
            k,
            n_block,
            VECTOR,
            transposed,
            dtypes,
        );
    }
    out
}

/// Output columns a cube computes: [`MAX_BLOCK`] where it divides `N`, else 64 (`N` is a
/// multiple of 64).
fn block_width(n: usize) -> usize {
    if n.is_multiple_of(MAX_BLOCK) {
        MAX_BLOCK
    } else {
        PLANES * MMA
    }
}

mod kernel {
    use super::{MMA, PLANE, PLANES, TILE_ROWS};
    use crate::attention_kernel_mma::kernel::fragment;
    use cubecl::cmma::{self, Matrix, MatrixIdent, MatrixLayout};
    use cubecl::prelude::*;

    /// Padding of the shared rows (8 elements: the rows of a fragment start in different banks).
    const PAD: usize = 8;

    /// See the module documentation. Cube `c` computes output columns `(c % blocks) · n_block
    /// ..` of the 64-row tiles `c / blocks`, `c / blocks + cubes_per_block`, ...; plane `p` takes
    /// columns `p · n_block / 4 ..` of the block.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn linear_mma_kernel<F: Float, Bt: Float, N: Size>(
        x: &Tensor<Vector<F, N>>,
        weight: &Tensor<F>,
        bias: ComptimeOption<&Tensor<Bt>>,
        out: &mut Tensor<Vector<F, N>>,
        cubes_per_block: usize,
        #[comptime] k_dim: usize,
        #[comptime] n_block: usize,
        #[comptime] vs: usize,
        #[comptime] transposed: bool,
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

            // The output tile, rows below M: consecutive units write consecutive 16-byte
            // vectors of an output row, or (transposed) of an output column.
            #[unroll]
            for i in 0..comptime!(TILE_ROWS * n_block / (vs * threads)) {
                let e = t + i * threads;
                let mut v = Vector::<F, N>::empty();
                if comptime!(transposed) {
                    let (c, rv) = (e / comptime!(TILE_ROWS / vs), e % comptime!(TILE_ROWS / vs));
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
                        #[unroll]
                        for j in 0..vs {
                            v.insert(j, out_s[r * out_row + cv * vs + j]);
                        }
                        out[((row0 + r) * out_row_stride + col0) / vs + cv] = v;
                    }
                }
            }
            tile += cubes_per_block;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_shared_memory_of_vulkan_on_nvidia() {
        // 48 KiB a cube there; Metal's 32 KiB takes K = 128 only with 64-column blocks.
        assert_eq!(shared_bytes(128, 128), 43_520);
        assert!(shared_bytes(MAX_INPUT, MAX_BLOCK) <= 48 * 1024);
        assert_eq!(shared_bytes(128, 64), 31_232);
    }

    #[test]
    fn column_blocks_divide_the_output() {
        assert_eq!(block_width(128), 128);
        assert_eq!(block_width(512), 128);
        assert_eq!(block_width(64), 64);
        assert_eq!(block_width(192), 64);
    }
}
