//! f32 products of few rows (feature `cube`): `y = x · W + b` for `x` `[M, K]` with `M` up to
//! [`MAX_ROWS`], the shape of the structure module and the heads, which stay in f32, and
//! batched products `[batch, M, K] · [batch, K, N]` of such matrices (the invariant point
//! attention's).
//!
//! Cubecl's matmul gives such a product few cubes (one per large output tile) that each walk
//! the whole of `K`: on an H100 the structure module's `[128, 384] · [384, 384]` and
//! `[128, 2112] · [2112, 384]` layers took ~177 µs a call (CubeCL profiler, docs/PERFORMANCE.md),
//! most of an L=128 prediction's time outside the trunk. Here the output is cut into 32 × 64
//! tiles and `K` into slices, one cube per tile and slice, so that a few hundred cubes run at
//! once; each writes its f32 partial sums, and a second kernel adds the slices and the bias.
//! Every product and sum is f32 (the order of the additions differs from cubecl's).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::{into_contiguous, untile};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::attention_kernel::{address_type, cube_count};
use crate::with_cube_properties;
use kernel::{split_k_partials, split_k_sum};

/// The most rows of `x` the kernel takes; products of more rows, or of at least
/// [`TARGET_CUBES`] output tiles in all, keep cubecl's matmul, which has enough tiles to fill
/// the GPU.
pub const MAX_ROWS: usize = 4096;
/// Rows and columns of a cube's output tile.
const TILE_ROWS: usize = 32;
const TILE_COLS: usize = 64;
/// Inputs staged per step of a slice.
const K_STEP: usize = 16;
/// Units a cube (16 × 16, each 2 rows × 4 columns of the tile).
const UNITS: usize = 256;
/// Cubes worth launching: a few per multiprocessor of an H100 (132).
const TARGET_CUBES: usize = 528;

static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times the kernel has run in this process (for tests that need to know which path
/// ran).
pub fn split_k_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// The split-K products as backend operations.
#[backend_extension(Cube, Fusion)]
pub trait SplitKOps: Backend {
    /// `x · weight + bias` for `x` `[batch, M, K]`, `weight` `[batch, K, N]`, `bias` `[N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[2] = weight[2];
        shape
    })]
    fn split_k_biased(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x · weight` for `x` `[batch, M, K]`, `weight` `[batch, K, N]`.
    #[fusion(dtype = x, shape = {
        let mut shape = x.clone();
        shape[2] = weight[2];
        shape
    })]
    fn split_k(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl SplitKOps for CubeBackend {
    fn split_k_biased(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        launch(x, weight, Some(bias))
    }

    fn split_k(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        launch(x, weight, None)
    }
}

/// Whether `AF2_SPLIT_K=0` turned the kernel off.
fn disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| std::env::var("AF2_SPLIT_K").is_ok_and(|value| value.trim() == "0"))
}

/// Whether [`try_split_k_linear`] takes `x · weight`: f32 on a cubecl device whose cubes may
/// have [`UNITS`] units, `M` from 1 to [`MAX_ROWS`], `K` and `N` at least 1, fewer than
/// [`TARGET_CUBES`] output tiles of 32 × 64 (`AF2_SPLIT_K=0` turns it off).
pub fn split_k_supports(x: &Tensor<2>, weight: &Tensor<2>) -> bool {
    supports(x, weight.dtype(), 1, x.dims(), weight.dims())
}

/// [`split_k_supports`] for `batch` products `[M, K] · [K, N]` with `x`'s device, the first
/// operand `x`'s dtype and the second `weight_dtype`: also fewer than [`TARGET_CUBES`] output
/// tiles in all (more fill the GPU without slices).
fn supports<const D: usize>(
    x: &Tensor<D>,
    weight_dtype: DType,
    batch: usize,
    [m, k]: [usize; 2],
    [k_w, n]: [usize; 2],
) -> bool {
    !disabled()
        && x.dtype() == DType::F32
        && weight_dtype == DType::F32
        && k == k_w
        && (1..=MAX_ROWS).contains(&m)
        && k > 0
        && n > 0
        && batch > 0
        && batch * m.div_ceil(TILE_ROWS) * n.div_ceil(TILE_COLS) < TARGET_CUBES
        && with_cube_properties(&x.device(), |props| {
            UNITS <= props.hardware.max_units_per_cube as usize
        })
        .unwrap_or(false)
}

/// `x · weight + bias` on the kernel where [`split_k_supports`] takes the inputs and the bias
/// (if any) is f32, else `None`.
///
/// # Shapes
/// - x: `[M, K]`, weight: `[K, N]`, bias: `[N]`
/// - output: `[M, N]`
///
/// # Panics
/// If bias is not `[N]`.
pub fn try_split_k_linear(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<2>> {
    if !split_k_supports(x, weight) || bias.is_some_and(|bias| bias.dtype() != DType::F32) {
        return None;
    }
    let ([m, k], n) = (x.dims(), weight.dims()[1]);
    let x = x.clone().reshape([1, m, k]).into_dispatch();
    let weight = weight.clone().reshape([1, k, n]).into_dispatch();
    let out = match bias {
        Some(bias) => {
            assert_eq!(bias.dims(), [n], "split-K linear: bias must be [{n}]");
            Dispatch::split_k_biased(x, weight, bias.clone().into_dispatch())
        }
        None => Dispatch::split_k(x, weight),
    };
    Some(Tensor::<3>::from_dispatch(out).reshape([m, n]))
}

/// `a · b` over the last two dimensions (the leading ones equal), on the kernel where the
/// matrices are f32 of at most [`MAX_ROWS`] rows in fewer than [`TARGET_CUBES`] output tiles
/// (and `AF2_SPLIT_K` is not 0), else Burn's matmul.
///
/// # Shapes
/// - a: `[..., M, K]`, b: `[..., K, N]`
/// - output: `[..., M, N]`
pub fn split_k_matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    let (a_dims, b_dims) = (a.dims(), b.dims());
    let [m, k] = [a_dims[D - 2], a_dims[D - 1]];
    let n = b_dims[D - 1];
    let batch: usize = a_dims[..D - 2].iter().product();
    if a_dims[..D - 2] != b_dims[..D - 2]
        || !supports(&a, b.dtype(), batch, [m, k], [b_dims[D - 2], n])
    {
        return a.matmul(b);
    }
    let mut out_dims = a_dims;
    out_dims[D - 1] = n;
    let out = Dispatch::split_k(
        a.reshape([batch, m, k]).into_dispatch(),
        b.reshape([batch, k, n]).into_dispatch(),
    );
    Tensor::<3>::from_dispatch(out).reshape(out_dims)
}

/// Slices of `K` for a product of `tiles` output tiles: enough cubes to reach
/// [`TARGET_CUBES`], slices of whole [`K_STEP`]s. Returns (slices, inputs per slice).
fn k_slices(tiles: usize, k: usize) -> (usize, usize) {
    let steps = k.div_ceil(K_STEP);
    let wanted = TARGET_CUBES.div_ceil(tiles).clamp(1, steps);
    let slice = steps.div_ceil(wanted) * K_STEP;
    (k.div_ceil(slice), slice)
}

fn launch(x: CubeTensor, weight: CubeTensor, bias: Option<CubeTensor>) -> CubeTensor {
    let x = into_contiguous(untile(x));
    let weight = into_contiguous(untile(weight));
    let bias = bias.map(|bias| into_contiguous(untile(bias)));
    let [batch, m, k] = [0, 1, 2].map(|i| x.meta.shape()[i]);
    let n = weight.meta.shape()[2];
    let tiles = batch * m.div_ceil(TILE_ROWS) * n.div_ceil(TILE_COLS);
    let (slices, slice) = k_slices(tiles, k);
    let client = x.client.clone();
    let partials = empty_device_contiguous_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([slices, batch, m, n]),
        DType::F32,
    );
    let out = empty_device_contiguous_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([batch, m, n]),
        x.dtype,
    );
    let address_type = address_type([&x, &weight, &partials, &out].into_iter().chain(&bias));
    let dtype = dtype_to_storage_type(x.dtype);
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: reads of x stay inside [batch, M, K] and of the weight inside [batch, K, N]
    // (checked per element), writes of the partial sums inside [slices, batch, M, N]; the sum
    // reads those and the bias [N] and writes [batch, M, N], one unit per output element.
    unsafe {
        split_k_partials::launch_unchecked(
            &client,
            cube_count(tiles * slices),
            CubeDim::new_1d(UNITS as u32),
            address_type,
            x.clone().into_tensor_arg(),
            weight.clone().into_tensor_arg(),
            partials.clone().into_tensor_arg(),
            slice,
            dtype,
        );
        split_k_sum::launch_unchecked(
            &client,
            cube_count((batch * m * n).div_ceil(UNITS)),
            CubeDim::new_1d(UNITS as u32),
            address_type,
            partials.into_tensor_arg(),
            bias.map(CubeTensor::into_tensor_arg).into(),
            out.clone().into_tensor_arg(),
            dtype,
        );
    }
    out
}

mod kernel {
    use super::{K_STEP, TILE_COLS, TILE_ROWS, UNITS};
    use cubecl::prelude::*;

    /// Cube `c` computes output tile `c % tiles` (row-major over `[batch, ⌈M / 32⌉, ⌈N / 64⌉]`)
    /// over the inputs `(c / tiles) · slice ..` and writes it to `partials[c / tiles]`. Unit
    /// `t` takes rows `2 · (t / 16) ..` and columns `4 · (t % 16) ..` of the tile.
    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn split_k_partials<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<F>,
        partials: &mut Tensor<f32>,
        slice: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let batch = x.shape(0);
        let m = x.shape(1);
        let k = x.shape(2);
        let n = weight.shape(2);
        let col_tiles = n.div_ceil(TILE_COLS);
        let row_tiles = m.div_ceil(TILE_ROWS);
        let tiles = batch * row_tiles * col_tiles;
        let cube = CUBE_POS;
        if cube >= tiles * partials.shape(0) {
            terminate!();
        }
        let tile = cube % tiles;
        let part = cube / tiles;
        let bt = tile / (row_tiles * col_tiles);
        let row0 = ((tile / col_tiles) % row_tiles) * TILE_ROWS;
        let col0 = (tile % col_tiles) * TILE_COLS;
        let x_base = bt * x.stride(0);
        let w_base = bt * weight.stride(0);
        let k0 = part * slice;
        let k_end = (k0 + slice).min(k);
        let t = UNIT_POS as usize;
        let my_row = 2 * (t / 16);
        let my_col = 4 * (t % 16);

        let mut x_s = Shared::<[f32]>::new_slice(comptime!(TILE_ROWS * K_STEP));
        let mut w_s = Shared::<[f32]>::new_slice(comptime!(K_STEP * TILE_COLS));
        let mut acc = Array::<f32>::new(8usize);
        #[unroll]
        for i in 0..8 {
            acc[i] = 0.0f32;
        }
        let mut kk0 = k0;
        while kk0 < k_end {
            // Stage x [32, 16] (two elements a unit) and the weight [16, 64] (four), zero
            // outside [M, K] and [K, N].
            #[unroll]
            for i in 0..comptime!(TILE_ROWS * K_STEP / UNITS) {
                let e = t + i * UNITS;
                let (r, c) = (e / K_STEP, e % K_STEP);
                let mut value = f32::new(0.0);
                if row0 + r < m && kk0 + c < k_end {
                    value = f32::cast_from(
                        x[x_base + (row0 + r) * x.stride(1) + (kk0 + c) * x.stride(2)],
                    );
                }
                x_s[e] = value;
            }
            #[unroll]
            for i in 0..comptime!(K_STEP * TILE_COLS / UNITS) {
                let e = t + i * UNITS;
                let (r, c) = (e / TILE_COLS, e % TILE_COLS);
                let mut value = f32::new(0.0);
                if kk0 + r < k_end && col0 + c < n {
                    value = f32::cast_from(
                        weight
                            [w_base + (kk0 + r) * weight.stride(1) + (col0 + c) * weight.stride(2)],
                    );
                }
                w_s[e] = value;
            }
            sync_cube();
            #[unroll]
            for kk in 0..K_STEP {
                let a0 = x_s[my_row * K_STEP + kk];
                let a1 = x_s[(my_row + 1) * K_STEP + kk];
                #[unroll]
                for j in 0..4 {
                    let b = w_s[kk * TILE_COLS + my_col + j];
                    acc[j] += a0 * b;
                    acc[4 + j] += a1 * b;
                }
            }
            sync_cube();
            kk0 += K_STEP;
        }
        let base = part * partials.stride(0) + bt * partials.stride(1);
        let row_stride = partials.stride(2);
        #[unroll]
        for i in 0..2 {
            let row = row0 + my_row + i;
            #[unroll]
            for j in 0..4 {
                let col = col0 + my_col + j;
                if row < m && col < n {
                    partials[base + row * row_stride + col] = acc[i * 4 + j];
                }
            }
        }
    }

    /// `out[b, r, c] = bias[c] + Σ_s partials[s, b, r, c]` (no bias: 0), one unit per output
    /// element.
    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn split_k_sum<F: Float>(
        partials: &Tensor<f32>,
        bias: ComptimeOption<&Tensor<F>>,
        out: &mut Tensor<F>,
        #[define(F)] _dtype: ElemType,
    ) {
        let n = out.shape(2);
        let elements = out.shape(0) * out.shape(1) * n;
        let e = CUBE_POS * UNITS + UNIT_POS as usize;
        if e >= elements {
            terminate!();
        }
        let mut sum = f32::new(0.0);
        #[comptime]
        if let ComptimeOption::Some(bias) = &bias {
            sum = f32::cast_from(bias[(e % n) * bias.stride(0)]);
        }
        for s in 0..partials.shape(0) {
            sum += partials[s * partials.stride(0) + e];
        }
        out[e] = F::cast_from(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_fill_the_target_and_cover_k() {
        // The structure module's widest layer: 4 × 6 tiles, K = 2112.
        let (slices, slice) = k_slices(24, 2112);
        assert_eq!(slice % K_STEP, 0);
        assert!(slices * slice >= 2112 && (slices - 1) * slice < 2112);
        assert!(slices * 24 >= TARGET_CUBES / 2);
        // Many tiles: one slice.
        assert_eq!(k_slices(10_000, 384), (1, 384));
        // Tiny K: one step, one slice.
        assert_eq!(k_slices(1, 6), (1, 16));
    }
}
