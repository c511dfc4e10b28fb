//! A tensor-core batched product `A · Bᵀ` of f16 matrices whose summed index is contiguous in
//! both operands: the triangle multiplication's sums (Algorithms 11 and 12), `out[g, i, j] =
//! Σ_k a[g, i, k] · b[g, j, k]` over the `G = B · c` channel matrices of a batch (feature
//! `cube`); and, in a summed-index-major form ([`try_batched_matmul_tn`]), `aᵀ · b` of
//! `[G, K, M]` and `[G, K, N]`, the incoming edges' sum over the first index of their pairs.
//!
//! A cube of 8 planes computes one 128 × 128 output tile of one matrix, each plane 32 × 64 of
//! it (two by four 16×16 accumulator fragments). It walks the summed index 32 at a time: each
//! step's rows of `a` and `b` are staged in shared memory with 16-byte loads (lengths that are
//! multiples of 8; others stay on Burn's matmul, see [`batched_matmul_nt_supports`]), and the
//! staging loads run two steps ahead of the products, in two register sets that alternate, so
//! that a load has a whole step to arrive; the two step buffers alternate too, so one cube
//! barrier a step orders the planes. Accumulators are f32; the tile is rounded to f16 into
//! shared memory once and written out as vectors. Rows and columns past the matrices read as
//! zero and are not written.
//!
//! Offered from [`MIN_CUBES`] tiles (one design at L=256, four at L=128). On an H200 (sixteenth
//! session, docs/PERFORMANCE.md) it took `[1024, 256, 256]` in 0.374 ms against 0.438 for
//! Burn's autotuned matmul, and an Evoformer block 0.6% (L=256 B=8) to 1.9% (L=128 B=16) less
//! time. With the loads one step ahead instead of two the same product took 0.46 ms; without
//! any global loads (a timing ablation) 0.21 ms, so the loads are still the larger part.
//! 64 × 64 tiles (4 planes), which one design at L=128 would need to fill the GPU, left that
//! block 1% slower than Burn's matmul although the product alone was faster.

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
use crate::attention_kernel_mma::runs_f16_instructions;
use crate::with_cube_properties;
use kernel::batched_matmul_kernel;

/// Rows and columns of one matrix instruction (`16 × 16 × 16`).
const MMA: usize = 16;
/// Units of a plane the kernel is written for.
const PLANE: usize = 32;
/// Planes of a cube along the tile's rows and along its columns.
const PLANES_M: usize = 4;
const PLANES_N: usize = 2;
/// Accumulator fragments of a plane along rows and along columns.
const FRAGS_M: usize = 2;
const FRAGS_N: usize = 4;
/// Rows and columns of a cube's output tile.
const TILE: usize = PLANES_M * FRAGS_M * MMA;
const _: () = assert!(TILE == PLANES_N * FRAGS_N * MMA);
/// Units of a cube.
const THREADS: usize = PLANE * PLANES_M * PLANES_N;
/// Summed indices staged a step (two fragments).
const K_STEP: usize = 32;
/// f16 elements a unit moves per global load or store (16 bytes).
const VECTOR: usize = 8;
/// Padding of the shared rows (8 elements: the rows of a fragment start in different banks).
const PAD: usize = 8;
/// Fewest output tiles for which the kernel is offered (about four cubes a multiprocessor of
/// an H100 or H200).
const MIN_CUBES: usize = 512;

/// Output tiles of `g` products of `m × n`: the cubes launched.
fn tiles([g, m, n]: [usize; 3]) -> usize {
    g * m.div_ceil(TILE) * n.div_ceil(TILE)
}

/// A staged row: `K_STEP` summed indices and the padding (elements).
const ROW: usize = K_STEP + PAD;
/// Elements of one step's `a` rows; its `b` rows follow.
const A_LEN: usize = TILE * ROW;
/// Elements of one step buffer.
const BUFFER: usize = 2 * TILE * ROW;
/// Elements of an output row in shared memory.
const OUT_ROW: usize = TILE + PAD;
/// The summed-index-major form ([`try_batched_matmul_tn`]): a step's rows are `K_STEP` summed
/// indices of `TILE` rows (or columns) and the padding; `a`'s rows, then `b`'s.
const ROW_T: usize = TILE + PAD;
const A_LEN_T: usize = K_STEP * ROW_T;
const BUFFER_T: usize = 2 * A_LEN_T;
const _: () = assert!(BUFFER_T <= BUFFER);
/// Elements of the shared array: the two step buffers, or the output tile.
const SHARED_LEN: usize = if 2 * BUFFER > TILE * OUT_ROW {
    2 * BUFFER
} else {
    TILE * OUT_ROW
};

/// Bytes of shared memory the kernel declares (f16 elements).
const fn shared_bytes() -> usize {
    SHARED_LEN * 2
}

static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times the kernel has been launched in this process (for tests and benchmarks that
/// need to know which path ran).
pub fn batched_matmul_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Whether `AF2_TRI_SUM_KERNEL=0` turned the kernel off.
fn disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED
        .get_or_init(|| std::env::var("AF2_TRI_SUM_KERNEL").is_ok_and(|value| value.trim() == "0"))
}

/// Batched `A · Bᵀ` as a backend operation.
#[backend_extension(Cube, Fusion)]
pub trait BatchedMatmulOps: Backend {
    /// `a · bᵀ` for `a` `[G, M, K]`, `b` `[G, N, K]`: `[G, M, N]`.
    #[fusion(dtype = a, shape = {
        let mut shape = a.clone();
        shape[2] = b[1];
        shape
    })]
    fn batched_matmul_nt(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `aᵀ · b` for `a` `[G, K, M]`, `b` `[G, K, N]`: `[G, M, N]`.
    #[fusion(dtype = a, shape = {
        let mut shape = a.clone();
        shape[1] = a[2];
        shape[2] = b[2];
        shape
    })]
    fn batched_matmul_tn(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl BatchedMatmulOps for CubeBackend {
    fn batched_matmul_nt(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        launch(a, b, false)
    }

    fn batched_matmul_tn(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        launch(a, b, true)
    }
}

/// Whether [`try_batched_matmul_nt`] takes `a · bᵀ`: f16 operands of one batch and summed
/// length, the summed and column lengths multiples of 8 (rows of whole 16-byte vectors), at
/// least [`MIN_CUBES`] output tiles, on a device with 16×16×16 f16 matrix instructions and the
/// kernel's shared memory (`AF2_TRI_SUM_KERNEL=0` turns it off).
///
/// Other lengths stay on Burn's matmul: zero-padding them to multiples of 8 with Burn's `pad`
/// first made a 250-residue complex's Evoformer block 6% slower on an H200 (13.15 -> 13.98 ms
/// at B=8; the padded product 4.4 ms against 0.51 for Burn's matmul, sixteenth session).
pub fn batched_matmul_nt_supports(a: &Tensor<3>, b: &Tensor<3>) -> bool {
    let ([g, m, k], [g_b, n, k_b]) = (a.dims(), b.dims());
    g == g_b
        && k == k_b
        && k.is_multiple_of(VECTOR)
        && n.is_multiple_of(VECTOR)
        && offered(a.dtype(), b.dtype(), &a.device(), [g, k, m, n])
}

/// Whether [`try_batched_matmul_tn`] takes `aᵀ · b`: as [`batched_matmul_nt_supports`], with
/// the rows of both operands (lengths M and N, the summed index first) in whole 16-byte vectors.
pub fn batched_matmul_tn_supports(a: &Tensor<3>, b: &Tensor<3>) -> bool {
    let ([g, k, m], [g_b, k_b, n]) = (a.dims(), b.dims());
    g == g_b && k == k_b && batched_matmul_tn_offered(a.dtype(), &a.device(), [g, k, m, n])
}

/// [`batched_matmul_tn_supports`] for operands `[G, K, M]` and `[G, K, N]` of `dtype` on
/// `device`, before they exist (a caller choosing the layout it computes them in).
pub fn batched_matmul_tn_offered(
    dtype: DType,
    device: &burn::tensor::Device,
    [g, k, m, n]: [usize; 4],
) -> bool {
    m.is_multiple_of(VECTOR)
        && n.is_multiple_of(VECTOR)
        && offered(dtype, dtype, device, [g, k, m, n])
}

/// What both forms ask of the operands and the device (see [`batched_matmul_nt_supports`]).
fn offered(a: DType, b: DType, device: &burn::tensor::Device, [g, k, m, n]: [usize; 4]) -> bool {
    !disabled()
        && a == DType::F16
        && b == DType::F16
        && k > 0
        && tiles([g, m, n]) >= MIN_CUBES
        && with_cube_properties(device, |props| {
            runs_f16_instructions(props)
                && shared_bytes() <= props.hardware.max_shared_memory_size
                && THREADS <= props.hardware.max_units_per_cube as usize
        })
        .unwrap_or(false)
}

/// `a · bᵀ` on the kernel where [`batched_matmul_nt_supports`] takes the inputs, else `None`.
///
/// # Shapes
/// - a: `[G, M, K]`, b: `[G, N, K]`
/// - output: `[G, M, N]`
pub fn try_batched_matmul_nt(a: &Tensor<3>, b: &Tensor<3>) -> Option<Tensor<3>> {
    batched_matmul_nt_supports(a, b).then(|| {
        Tensor::<3>::from_dispatch(Dispatch::batched_matmul_nt(
            a.clone().into_dispatch(),
            b.clone().into_dispatch(),
        ))
    })
}

/// `aᵀ · b` on the kernel where [`batched_matmul_tn_supports`] takes the inputs, else `None`.
///
/// # Shapes
/// - a: `[G, K, M]`, b: `[G, K, N]`
/// - output: `[G, M, N]`
pub fn try_batched_matmul_tn(a: &Tensor<3>, b: &Tensor<3>) -> Option<Tensor<3>> {
    batched_matmul_tn_supports(a, b).then(|| {
        Tensor::<3>::from_dispatch(Dispatch::batched_matmul_tn(
            a.clone().into_dispatch(),
            b.clone().into_dispatch(),
        ))
    })
}

/// The kernel on `a · bᵀ` (`a` `[G, M, K]`, `b` `[G, N, K]`) or, `k_major`, on `aᵀ · b` (`a`
/// `[G, K, M]`, `b` `[G, K, N]`).
fn launch(a: CubeTensor, b: CubeTensor, k_major: bool) -> CubeTensor {
    let a = into_contiguous(untile(a));
    let b = into_contiguous(untile(b));
    let ([g, a1, a2], [g_b, b1, b2]) = (dims(&a), dims(&b));
    let ([m, k], [n, k_b]) = if k_major {
        ([a2, a1], [b2, b1])
    } else {
        ([a1, a2], [b1, b2])
    };
    // The backend operation is public: the kernel's unchecked reads and writes rest on these:
    // every operand row a whole number of vectors.
    assert!(
        g == g_b && k == k_b && a2.is_multiple_of(VECTOR) && b2.is_multiple_of(VECTOR),
        "batched matmul: a [{g}, {a1}, {a2}] and b [{g_b}, {b1}, {b2}] do not match or are not \
         in rows of whole 16-byte vectors"
    );
    let client = a.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        a.device.clone(),
        Shape::new([g, m, n]),
        a.dtype,
    );
    let address_type = address_type([&a, &b, &out]);
    let dtype = dtype_to_storage_type(out.dtype);
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: all three are contiguous `[G, ·, ·]`, every operand row a whole number of
    // vectors (asserted above; so N too, a row length of either form); reads stay inside rows
    // M or N and K of their matrix (checked per vector), writes below row M and column N.
    unsafe {
        batched_matmul_kernel::launch_unchecked(
            &client,
            cube_count(tiles([g, m, n])),
            CubeDim::new_2d(PLANE as u32, (PLANES_M * PLANES_N) as u32),
            address_type,
            VECTOR,
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            VECTOR,
            k_major,
            dtype,
        );
    }
    out
}

fn dims(t: &CubeTensor) -> [usize; 3] {
    let shape = t.meta.shape();
    [shape[0], shape[1], shape[2]]
}

mod kernel {
    use super::{
        A_LEN, A_LEN_T, BUFFER, BUFFER_T, FRAGS_M, FRAGS_N, K_STEP, MMA, OUT_ROW, PLANE, PLANES_N,
        ROW, ROW_T, SHARED_LEN, THREADS, TILE,
    };
    use crate::attention_kernel_mma::kernel::fragment;
    use cubecl::cmma::{self, Matrix, MatrixIdent, MatrixLayout};
    use cubecl::prelude::*;

    /// See the module documentation. Cube `(g · tiles_m + tile_m) · tiles_n + tile_n` computes
    /// one output tile; plane `p` takes fragment rows `(p / PLANES_N) · FRAGS_M ..` and
    /// columns `(p % PLANES_N) · FRAGS_N ..` of it. Step `s` issues the loads of step `s + 2`
    /// into the register set of its parity, multiplies step `s` from its buffer (`s % 2`),
    /// then stores step `s + 1` (loaded during step `s - 1`) from the other set into the
    /// other buffer, whose last reader was step `s - 1`, before the previous barrier.
    ///
    /// `k_major`: the operands are `[G, K, M]` and `[G, K, N]` (the product `aᵀ · b`); a step
    /// stages `K_STEP` rows of the summed index, each `TILE` rows (columns) wide, and the A
    /// fragments read them column-major, the B fragments row-major.
    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn batched_matmul_kernel<F: Float, N: Size>(
        a: &Tensor<Vector<F, N>>,
        b: &Tensor<Vector<F, N>>,
        out: &mut Tensor<Vector<F, N>>,
        #[comptime] vs: usize,
        #[comptime] k_major: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let (m, k, n) = operand_dims(a, b, k_major);
        let tiles_m = m.div_ceil(TILE);
        let tiles_n = n.div_ceil(TILE);
        let cube = CUBE_POS;
        if cube >= a.shape(0) * tiles_m * tiles_n {
            terminate!();
        }
        let g = cube / (tiles_n * tiles_m);
        let plane = UNIT_POS_Y as usize;
        let at = Staging {
            a_base: g * a.stride(0),
            a_row_stride: a.stride(1),
            b_base: g * b.stride(0),
            b_row_stride: b.stride(1),
            row0: ((cube / tiles_n) % tiles_m) * TILE,
            col0: (cube % tiles_n) * TILE,
            t: plane * PLANE + UNIT_POS_X as usize,
        };
        let plane_row0 = (plane / PLANES_N) * comptime!(FRAGS_M * MMA);
        let plane_col0 = (plane % PLANES_N) * comptime!(FRAGS_N * MMA);

        let mut tiles = Shared::<[Vector<F, N>]>::new_slice(comptime!(SHARED_LEN / vs));
        let mut acc = Sequence::<Matrix<f32>>::new();
        #[unroll]
        for _ in 0..comptime!(FRAGS_M * FRAGS_N) {
            let mut frag = fragment::<f32>(MatrixIdent::Accumulator, MatrixLayout::Undefined);
            cmma::fill(&mut frag, 0.0f32);
            acc.push(frag);
        }
        let a_layout = comptime!(if k_major {
            MatrixLayout::ColMajor
        } else {
            MatrixLayout::RowMajor
        });
        let mut a_frags = Sequence::<Matrix<F>>::new();
        #[unroll]
        for _ in 0..FRAGS_M {
            a_frags.push(fragment::<F>(MatrixIdent::A, a_layout));
        }
        let buffer = comptime!(if k_major { BUFFER_T } else { BUFFER });

        let count = comptime!(TILE * K_STEP / (vs * THREADS));
        let mut a_even = Array::<Vector<F, N>>::new(count);
        let mut b_even = Array::<Vector<F, N>>::new(count);
        let mut a_odd = Array::<Vector<F, N>>::new(count);
        let mut b_odd = Array::<Vector<F, N>>::new(count);
        let steps = k.div_ceil(K_STEP);
        load_step(a, b, &mut a_even, &mut b_even, &at, 0, vs, k_major);
        load_step(a, b, &mut a_odd, &mut b_odd, &at, 1, vs, k_major);
        store_step(&mut tiles, &a_even, &b_even, 0, at.t, vs, k_major);
        sync_cube();
        for step in 0..steps {
            // The buffer offsets as constants in each branch (a runtime `(step % 2) · BUFFER`
            // made the kernel 43-63% slower on an H200).
            let stores_next = step + 1 < steps;
            if step % 2 == 0 {
                load_step(a, b, &mut a_even, &mut b_even, &at, step + 2, vs, k_major);
                multiply_step(
                    &tiles,
                    &mut a_frags,
                    &acc,
                    0,
                    plane_row0,
                    plane_col0,
                    vs,
                    k_major,
                );
                if stores_next {
                    store_step(&mut tiles, &a_odd, &b_odd, buffer, at.t, vs, k_major);
                }
            } else {
                load_step(a, b, &mut a_odd, &mut b_odd, &at, step + 2, vs, k_major);
                multiply_step(
                    &tiles,
                    &mut a_frags,
                    &acc,
                    buffer,
                    plane_row0,
                    plane_col0,
                    vs,
                    k_major,
                );
                if stores_next {
                    store_step(&mut tiles, &a_even, &b_even, 0, at.t, vs, k_major);
                }
            }
            sync_cube();
        }

        // The last barrier ended every read of the step buffers: the rounded output tile goes
        // over them.
        #[unroll]
        for fm in 0..FRAGS_M {
            #[unroll]
            for fn_ in 0..FRAGS_N {
                let rounded = cmma::cast::<f32, F, _>(acc.index(fm * FRAGS_N + fn_));
                let to = (plane_row0 + fm * MMA) * OUT_ROW + plane_col0 + fn_ * MMA;
                cmma::store(
                    &mut tiles[to / vs..comptime!(SHARED_LEN / vs)],
                    &rounded,
                    OUT_ROW as u32,
                    MatrixLayout::RowMajor,
                );
            }
        }
        sync_cube();
        let out_base = g * out.stride(0);
        let out_row_stride = out.stride(1);
        let row_vectors = comptime!(TILE / vs);
        #[unroll]
        for i in 0..comptime!(TILE * TILE / (vs * THREADS)) {
            let e = at.t + i * THREADS;
            let (r, cv) = (e / row_vectors, e % row_vectors);
            let col = at.col0 + cv * vs;
            if at.row0 + r < m && col < n {
                out[(out_base + (at.row0 + r) * out_row_stride + col) / vs] =
                    tiles[r * comptime!(OUT_ROW / vs) + cv];
            }
        }
    }

    /// Where a unit's staging loads come from: the matrix's offsets and row strides in `a` and
    /// `b` (elements), the tile's first row and column, the unit.
    #[derive(CubeType)]
    pub(super) struct Staging {
        a_base: usize,
        a_row_stride: usize,
        b_base: usize,
        b_row_stride: usize,
        row0: usize,
        col0: usize,
        t: usize,
    }

    /// `(M, K, N)` of the product: `a` `[G, M, K]` and `b` `[G, N, K]`, or `k_major` `a`
    /// `[G, K, M]` and `b` `[G, K, N]`.
    #[cube]
    fn operand_dims<F: Float, N: Size>(
        a: &Tensor<Vector<F, N>>,
        b: &Tensor<Vector<F, N>>,
        #[comptime] k_major: bool,
    ) -> (usize, usize, usize) {
        let mut dims = (a.shape(1), a.shape(2), b.shape(1));
        if comptime!(k_major) {
            dims = (a.shape(2), a.shape(1), b.shape(2));
        }
        dims
    }

    /// Where staged vector `e` of a step comes from in its operand: `(row, column, inside)` of
    /// the operand's own `[rows, columns]` storage, for the tile's rows (or columns) from
    /// `first` of `len` and the step's summed indices from `k0` of `k`. Rows of `K_STEP`
    /// summed indices, or `k_major` rows of `TILE` tile rows.
    #[allow(clippy::too_many_arguments)]
    #[cube]
    fn staged_vector(
        e: usize,
        first: usize,
        len: usize,
        k0: usize,
        k: usize,
        #[comptime] vs: usize,
        #[comptime] k_major: bool,
    ) -> (usize, usize, bool) {
        let row_v = comptime!(if k_major { TILE / vs } else { K_STEP / vs });
        let (r, c) = (e / row_v, (e % row_v) * vs);
        let mut place = (first + r, k0 + c, first + r < len && k0 + c < k);
        if comptime!(k_major) {
            place = (k0 + r, first + c, k0 + r < k && first + c < len);
        }
        place
    }

    /// Loads the unit's vectors of step `step` into registers: consecutive units read
    /// consecutive vectors of a row; zero past the matrices and past the last step.
    #[allow(clippy::too_many_arguments)]
    #[cube]
    fn load_step<F: Float, N: Size>(
        a: &Tensor<Vector<F, N>>,
        b: &Tensor<Vector<F, N>>,
        a_regs: &mut Array<Vector<F, N>>,
        b_regs: &mut Array<Vector<F, N>>,
        at: &Staging,
        step: usize,
        #[comptime] vs: usize,
        #[comptime] k_major: bool,
    ) {
        let (m, k, n) = operand_dims(a, b, k_major);
        let k0 = step * K_STEP;
        let count = comptime!(TILE * K_STEP / (vs * THREADS));
        #[unroll]
        for i in 0..count {
            let (row, col, inside) =
                staged_vector(at.t + i * THREADS, at.row0, m, k0, k, vs, k_major);
            let mut v = Vector::<F, N>::new(F::new(0.0));
            if inside {
                v = a[(at.a_base + row * at.a_row_stride + col) / vs];
            }
            a_regs[i] = v;
        }
        #[unroll]
        for i in 0..count {
            let (row, col, inside) =
                staged_vector(at.t + i * THREADS, at.col0, n, k0, k, vs, k_major);
            let mut v = Vector::<F, N>::new(F::new(0.0));
            if inside {
                v = b[(at.b_base + row * at.b_row_stride + col) / vs];
            }
            b_regs[i] = v;
        }
    }

    /// Stores a step's registers into the step buffer at element `at`: `a`'s rows, then `b`'s.
    #[cube]
    fn store_step<F: Float, N: Size>(
        tiles: &mut Shared<[Vector<F, N>]>,
        a_regs: &Array<Vector<F, N>>,
        b_regs: &Array<Vector<F, N>>,
        at: usize,
        t: usize,
        #[comptime] vs: usize,
        #[comptime] k_major: bool,
    ) {
        let row_v = comptime!(if k_major { TILE / vs } else { K_STEP / vs });
        let row = comptime!(if k_major { ROW_T } else { ROW });
        let a_len = comptime!(if k_major { A_LEN_T } else { A_LEN });
        let count = comptime!(TILE * K_STEP / (vs * THREADS));
        let at_v = at / vs;
        #[unroll]
        for i in 0..count {
            let e = t + i * THREADS;
            tiles[at_v + (e / row_v) * comptime!(row / vs) + e % row_v] = a_regs[i];
        }
        #[unroll]
        for i in 0..count {
            let e = t + i * THREADS;
            tiles[at_v + comptime!(a_len / vs) + (e / row_v) * comptime!(row / vs) + e % row_v] =
                b_regs[i];
        }
    }

    /// Adds the step staged at element `at` to the plane's accumulators. `b`'s rows are the
    /// product's columns: the B operand, column-major (`k_major`: `a`'s rows are the summed
    /// index, the A operand column-major, and `b`'s the B operand row-major).
    #[allow(clippy::too_many_arguments)]
    #[cube]
    fn multiply_step<F: Float, N: Size>(
        tiles: &Shared<[Vector<F, N>]>,
        a_frags: &mut Sequence<Matrix<F>>,
        acc: &Sequence<Matrix<f32>>,
        at: usize,
        plane_row0: usize,
        plane_col0: usize,
        #[comptime] vs: usize,
        #[comptime] k_major: bool,
    ) {
        let end = comptime!(SHARED_LEN / vs);
        let b_layout = comptime!(if k_major {
            MatrixLayout::RowMajor
        } else {
            MatrixLayout::ColMajor
        });
        let row = comptime!(if k_major { ROW_T } else { ROW });
        let a_len = comptime!(if k_major { A_LEN_T } else { A_LEN });
        // Element offsets of a fragment's first row (column) and of its summed indices.
        let (tile_step, k_step) = comptime!(if k_major {
            (1, MMA * ROW_T)
        } else {
            (ROW, MMA)
        });
        let mut b_frag = fragment::<F>(MatrixIdent::B, b_layout);
        #[unroll]
        for kk in 0..comptime!(K_STEP / MMA) {
            #[unroll]
            for fm in 0..FRAGS_M {
                let from = at + (plane_row0 + fm * MMA) * tile_step + kk * k_step;
                cmma::load(a_frags.index_mut(fm), &tiles[from / vs..end], row as u32);
            }
            #[unroll]
            for fn_ in 0..FRAGS_N {
                let from = at + a_len + (plane_col0 + fn_ * MMA) * tile_step + kk * k_step;
                cmma::load(&mut b_frag, &tiles[from / vs..end], row as u32);
                #[unroll]
                for fm in 0..FRAGS_M {
                    let d = acc.index(fm * FRAGS_N + fn_);
                    cmma::execute(a_frags.index(fm), &b_frag, d, d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_shared_memory_of_vulkan_on_nvidia() {
        // Two steps of 256 rows of 40 f16; the output tile (128 rows of 136) reuses them.
        assert_eq!(shared_bytes(), 40_960);
        assert!(shared_bytes() <= 48 * 1024);
        assert_eq!(TILE, 128);
        assert_eq!(THREADS, 256);
    }

    #[test]
    fn staging_divides_among_the_units() {
        assert_eq!(TILE * (K_STEP / VECTOR) % THREADS, 0);
        assert_eq!(TILE * TILE % (VECTOR * THREADS), 0);
    }

    #[test]
    fn offered_from_enough_tiles() {
        // One design at L=256 (128 channels, 4 tiles each) is enough; at L=128 it is not.
        assert_eq!(tiles([128, 256, 256]), MIN_CUBES);
        assert_eq!(tiles([128, 128, 128]), 128);
        assert_eq!(tiles([1024, 250, 250]), 4096);
        assert_eq!(tiles([2, 129, 1]), 4);
    }
}
