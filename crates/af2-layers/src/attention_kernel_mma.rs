//! A tensor-core (cooperative-matrix) variant of the attention kernel for f16 heads of 32
//! channels: the triangle and MSA attentions of the Evoformer in half precision.
//!
//! One cube of 8 planes (4 where shared memory is short, fewer for short query rows) computes
//! 16 query rows a plane of one `(batch row, head)`. For each tile of 32 keys the cube stages K
//! and V (f16) in shared memory, and every plane its own `[16, 32]` stripe of the bias (f32;
//! the bias is laid out `[G, H, Q, K]` first, a copy L² · H in size, so that a stripe's rows
//! load as vectors of 4 keys: a head-strided bias fetched H times the bytes, and the triangle
//! attention reads its bias once per batch row);
//! each plane loads its bias stripe as the accumulator and adds its `16 × 32` query stripe
//! times Kᵀ with 16×16×16 f16 matrix instructions, so the scores come out with the bias added.
//! Then each lane takes one row and 16 of the tile's keys (its partner lane `l ^ 16` the other
//! 16): key mask, running max and sum in f32 (one shuffle per row), the weights written as f16
//! over the plane's query rows (its query fragments are in registers by then). The weights
//! times V (matrix instructions again) are added into the plane's f32 output fragments, which
//! stay in registers over all the key tiles: the weights are taken relative to a reference max
//! per row (the first tile's), raised only where a tile's max passes it by more than
//! [`RESCALE_MARGIN`] (the output so far is then rescaled through shared memory), so most
//! tiles need no round trip of the output. The global loads of the next tile
//! are issued into registers before the current tile is computed, so their latency overlaps
//! the computation; K and V alternate between two shared buffers, so one cube barrier a tile
//! orders the planes. Every shared-memory row is padded by 8 elements so that the 16 rows of a
//! fragment do not share banks (22-29% faster on an H200 than unpadded rows).
//!
//! Numerics against the f32 scalar kernel: scores and sums are f32 as there; the weights are
//! rounded to f16 (relative 2^-11) before they multiply V, as an f16 model's matmuls would.
//! Used only for f16 inputs, where the output is rounded to f16 anyway.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl::features::MmaConfig;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::CubeDim;
use cubecl::prelude::DeviceProperties;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::attention_kernel::{address_type, cube_count, query_major_output};
use burn_cubecl::kernel::into_contiguous;
use kernel::attention_mma_kernel;

/// Rows and columns of one matrix instruction (`16 × 16 × 16`).
const MMA: usize = 16;
/// Query and value channels the kernel takes (`C = Cv`).
pub const MMA_HEAD_DIM: usize = 32;
/// Units of a plane the kernel is written for (NVIDIA's warp, Apple's SIMD group).
const PLANE: usize = 32;
/// How far (in logits) a tile's row max may pass the row's reference max before the output
/// accumulated so far is rescaled to the new max: the weights `exp(logit - reference)` then stay
/// below `e^8 ≈ 2981`, well inside f16 (65504) with the same relative precision, and most tiles
/// need no rescale (each one is a round trip of the output through shared memory).
const RESCALE_MARGIN: f32 = 8.0;
/// Bias elements a lane loads at once (where the key count is a multiple of it).
const BIAS_VECTOR: usize = 4;
/// Tuning knobs read once: planes per cube (each takes [`MMA`] query rows; `None`: chosen per
/// device by [`default_planes`]), keys per shared-memory tile, and the fewest planes (over
/// all cubes) worth the kernel.
#[derive(Clone, Copy)]
struct Tuning {
    planes: Option<usize>,
    keys: usize,
    min_planes: usize,
    min_query_rows: usize,
    pad: bool,
}

/// [`Tuning`] from `AF2_MMA_PLANES=2|4|8`, `AF2_MMA_KEYS=32|64` (64 only up to 4 planes: 8
/// planes of 64 keys exceed the shared memory), `AF2_MMA_MIN_PLANES`,
/// `AF2_MMA_MIN_QUERY_ROWS` and `AF2_MMA_PAD=0|1` (padded shared-memory rows); defaults:
/// planes per device, 32 keys, [`MIN_PLANES`], [`MIN_QUERY_ROWS`], padded.
fn tuning() -> &'static Tuning {
    static TUNING: std::sync::OnceLock<Tuning> = std::sync::OnceLock::new();
    TUNING.get_or_init(|| {
        let knob = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|value| value.trim().parse::<usize>().ok())
        };
        let planes = knob("AF2_MMA_PLANES").filter(|planes| [2, 4, 8].contains(planes));
        let keys = knob("AF2_MMA_KEYS")
            .filter(|&keys| keys == 32 || (keys == 64 && planes.is_none_or(|p| p <= 4)))
            .unwrap_or(32);
        Tuning {
            planes,
            keys,
            min_planes: knob("AF2_MMA_MIN_PLANES").unwrap_or(MIN_PLANES),
            min_query_rows: knob("AF2_MMA_MIN_QUERY_ROWS").unwrap_or(MIN_QUERY_ROWS),
            pad: knob("AF2_MMA_PAD") != Some(0),
        }
    })
}

/// Elements added to every shared-memory row when `pad` is set, so that the rows of a 16×16
/// fragment start in different banks: 8 × 2 bytes shifts consecutive f16 rows by a 16-byte
/// group (an unpadded 64-byte row puts every other row on the same banks), 8 × 4 bytes
/// shifts consecutive f32 rows by 8 banks (an unpadded 128-byte row puts all 16 on the same).
const fn padding(pad: bool) -> usize {
    if pad { 8 } else { 0 }
}

/// Bytes of shared memory the kernel declares for `planes` planes and `keys` keys a tile: the
/// query rows (later the softmax weights), two K and two V buffers, the f32 score stripes,
/// two key-mask rows and the per-row factors.
fn shared_bytes(planes: usize, keys: usize, pad: bool) -> usize {
    let rows = planes * MMA;
    let head_row = MMA_HEAD_DIM + padding(pad);
    let key_row = keys + padding(pad);
    let half = 2;
    let single = 4;
    (rows * head_row.max(key_row) + 4 * keys * head_row) * half
        + (rows * key_row + 2 * keys + rows) * single
}

/// 8 planes (128 query rows a cube) where the device's shared memory holds their tiles (40.8
/// KiB with 32 keys, padded), else 4 (25.5 KiB; Metal allows 32 KiB). On an H200, 8 × 32 was
/// 7% faster than 4 × 32 and the fastest shape measured (docs/PERFORMANCE.md).
fn default_planes(max_shared_memory: usize, keys: usize, pad: bool) -> usize {
    if shared_bytes(8, keys, pad) <= max_shared_memory {
        8
    } else {
        4
    }
}

/// Below this many planes in all the scalar kernel, which can split the keys over cubes, takes
/// the problem. At 1024 (the earlier value) an L=128 single design's MSA row attention (2 rows
/// × 8 heads × 8 planes) ran on the scalar kernel and its combine pass, ~80 µs; on tensor cores
/// the block took 0.08 ms less (H200, `AF2_MMA_MIN_PLANES=64`, docs/PERFORMANCE.md).
const MIN_PLANES: usize = 64;

/// Fewest query rows a head must have for the tensor-core kernel, whose planes take 16 rows
/// each: the MSA column attention layer of a single-sequence design (its few MSA rows are the
/// queries) took 12-13% less time with the scalar kernel at L=256 B=8 and L=128 B=16 on an
/// H100, and no more at B=1 (docs/PERFORMANCE.md, eighteenth session).
const MIN_QUERY_ROWS: usize = 16;

/// Planes per cube for `q_len` query rows: `preferred`, or fewer where the rows fill fewer
/// (an MSA column has a few sequences), at least 2.
fn planes_for(q_len: usize, preferred: usize) -> usize {
    let needed = q_len.div_ceil(MMA).next_power_of_two().max(2);
    needed.min(preferred)
}

static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times the tensor-core kernel has been launched in this process (for tests and
/// benchmarks that need to know which path ran).
pub fn mma_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Whether `AF2_ATTENTION_MMA=0` turned the tensor-core path off.
fn disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED
        .get_or_init(|| std::env::var("AF2_ATTENTION_MMA").is_ok_and(|value| value.trim() == "0"))
}

/// Whether the device runs 16×16×16 f16 matrix instructions with f32 accumulators in planes
/// of [`PLANE`] units.
fn device_supports(q: &CubeTensor) -> bool {
    runs_f16_instructions(q.client.properties())
}

/// Whether a device runs 16×16×16 f16 matrix instructions with f32 accumulators in planes of
/// [`PLANE`] units (this kernel and the linear kernel are written for them).
pub(crate) fn runs_f16_instructions(props: &DeviceProperties) -> bool {
    let f16 = ElemType::Float(FloatKind::F16);
    let f32 = ElemType::Float(FloatKind::F32);
    let instruction = MmaConfig {
        a_type: f16,
        b_type: f16,
        cd_type: f32,
        m: MMA as u32,
        n: MMA as u32,
        k: MMA as u32,
    };
    props.hardware.plane_size_min == PLANE as u32
        && props.hardware.plane_size_max == PLANE as u32
        && props.features.matmul.cmma.contains(&instruction)
}

/// The attention core on tensor cores, or `None` where the scalar kernel takes the inputs:
/// not f16, heads other than 32 channels, fewer than [`MIN_QUERY_ROWS`] query rows a head or
/// too few planes in all to fill the GPU, no matrix instructions on the device, or
/// `AF2_ATTENTION_MMA=0`. Shapes are checked by the caller.
pub(crate) fn try_launch(
    q: &CubeTensor,
    k: &CubeTensor,
    v: &CubeTensor,
    key_mask: &CubeTensor,
    bias: Option<&CubeTensor>,
) -> Option<CubeTensor> {
    let shape = q.meta.shape();
    let (b, h, q_len, c) = (shape[0], shape[1], shape[2], shape[3]);
    let cv = v.meta.shape()[3];
    let Tuning {
        planes,
        keys,
        min_planes,
        min_query_rows,
        pad,
    } = *tuning();
    let preferred = planes.unwrap_or_else(|| {
        default_planes(
            q.client.properties().hardware.max_shared_memory_size,
            keys,
            pad,
        )
    });
    let planes = planes_for(q_len, preferred);
    let q_tiles = q_len.div_ceil(planes * MMA);
    let suitable = !disabled()
        && q.dtype == DType::F16
        && c == MMA_HEAD_DIM
        && cv == MMA_HEAD_DIM
        && q_tiles * h * b * planes >= min_planes
        && q_len >= min_query_rows
        && device_supports(q);
    if !suitable {
        return None;
    }
    let out = query_major_output(q, [b, h, q_len, cv]);
    // The bias laid out `[G, H, Q, K]` (usually a `[G, Q, K, H]` projection permuted: one
    // copy of a tensor L² · H in size), so that a plane's bias rows are contiguous and load
    // as vectors of 4 keys, instead of H-strided elements that fetch H times the bytes.
    let bias = bias.map(|bias| into_contiguous(bias.clone()));
    let bias_vector = if bias.is_some() && k.meta.shape()[2].is_multiple_of(BIAS_VECTOR) {
        BIAS_VECTOR
    } else {
        1
    };
    let address_type = address_type([q, k, v, key_mask, &out].into_iter().chain(&bias));
    let dtypes = [
        dtype_to_storage_type(q.dtype),
        dtype_to_storage_type(key_mask.dtype),
        dtype_to_storage_type(bias.as_ref().map_or(q.dtype, |t| t.dtype)),
    ];
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the caller checked the shapes; query rows past Q are zero on read and skipped on
    // write, keys past K are zero in the tiles and never read from the inputs, and the bias is
    // read only inside [Q, K].
    unsafe {
        attention_mma_kernel::launch_unchecked(
            &q.client,
            cube_count(q_tiles * h * b),
            CubeDim::new_2d(PLANE as u32, planes as u32),
            address_type,
            bias_vector,
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            key_mask.clone().into_tensor_arg(),
            bias.map(CubeTensor::into_tensor_arg).into(),
            out.clone().into_tensor_arg(),
            q_tiles,
            planes,
            keys,
            padding(pad),
            bias_vector,
            dtypes,
        );
    }
    Some(out)
}

pub(crate) mod kernel {
    use super::{MMA, MMA_HEAD_DIM as HEAD, PLANE, RESCALE_MARGIN};
    use crate::attention_kernel::kernel::{key_mask_base, masked_key_logit};
    use cubecl::cmma::{self, Matrix, MatrixIdent, MatrixLayout};
    use cubecl::prelude::*;

    /// An uninitialised 16×16×16 fragment.
    #[cube]
    pub(crate) fn fragment<T: Numeric>(
        #[comptime] ident: MatrixIdent,
        #[comptime] layout: MatrixLayout,
    ) -> Matrix<T> {
        // SAFETY: every fragment is filled or loaded before it is read.
        unsafe { Matrix::<T>::uninitialized(ident, MMA, MMA, MMA, layout) }
    }

    /// The plane's output fragments (16 rows × 32 channels, f32) written row-major over its
    /// stripe of the score tile.
    #[cube]
    fn store_output(
        pv_lo: &Matrix<f32>,
        pv_hi: &Matrix<f32>,
        s_s: &mut Shared<[f32]>,
        stripe: usize,
        stripe_end: usize,
        #[comptime] key_row: usize,
    ) {
        cmma::store(
            &mut s_s[stripe..stripe_end],
            pv_lo,
            key_row as u32,
            MatrixLayout::RowMajor,
        );
        cmma::store(
            &mut s_s[stripe + MMA..stripe_end],
            pv_hi,
            key_row as u32,
            MatrixLayout::RowMajor,
        );
    }

    /// See the module documentation. Cube `CUBE_POS = (b * H + h) * q_tiles + q_tile` computes
    /// query rows `q_tile * rows ..` of head `h`, batch row `b`; plane `UNIT_POS_Y` takes 16 of
    /// them. In the softmax lane `l` takes row `l % 16` of its plane and half `l / 16` of the
    /// tile's keys; in the output it takes channel `l` of the plane's rows.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn attention_mma_kernel<F: Float, M: Float, Bt: Float, NB: Size>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        key_mask: &Tensor<M>,
        bias: ComptimeOption<&Tensor<Vector<Bt, NB>>>,
        out: &mut Tensor<F>,
        q_tiles: usize,
        #[comptime] planes: usize,
        #[comptime] keys: usize,
        #[comptime] pad: usize,
        #[comptime] bias_vs: usize,
        #[define(F, M, Bt)] _dtypes: [ElemType; 3],
    ) {
        let threads = comptime!(PLANE * planes);
        let rows = comptime!(planes * MMA);
        let half_keys = comptime!(keys / 2);
        let parts = comptime!(keys / MMA);
        // Row lengths of the shared tiles: `HEAD` channels (Q, K, V) or `keys` keys (scores,
        // weights), each padded by `pad` elements.
        let head_row = comptime!(HEAD + pad);
        let key_row = comptime!(keys + pad);
        let qp_row = comptime!(if HEAD > keys { head_row } else { key_row });
        let kv_tile = comptime!(keys * head_row);
        let batch = q.shape(0);
        let heads = q.shape(1);
        let q_len = q.shape(2);
        let k_len = k.shape(2);
        let cube = CUBE_POS;
        if cube >= q_tiles * heads * batch {
            terminate!();
        }
        let q_tile = cube % q_tiles;
        let bh = cube / q_tiles;
        let h = bh % heads;
        let b = bh / heads;
        let lane = UNIT_POS_X as usize;
        let plane = UNIT_POS_Y as usize;
        let t = plane * PLANE + lane;
        let row0 = q_tile * rows;
        // This plane's rows in the `[rows, keys]` tiles, and the softmax lane's row and half.
        let stripe = plane * MMA * key_row;
        let stripe_end = stripe + MMA * key_row;
        let my_row = lane % MMA;
        let my_half = lane / MMA;
        // The softmax lanes read their row's keys from a rotated start, so that the 32 lanes
        // hit 32 different banks (found by enumerating the bank of every lane and key).
        let mut rotation = my_row;
        if comptime!(pad > 0) {
            rotation = 2 * (my_row / 4) + my_half;
        }

        // The query block (row `r` of plane `p` at `p * MMA * qp_row + r * head_row`); once a
        // plane has its query fragments, its stripe takes the softmax weights (rows of
        // `key_row`). K and V come in two buffers: tile `s` is read from buffer `s % 2` while
        // tile `s + 1` is stored into the other, so one cube barrier a tile suffices.
        let mut qp_s = Shared::<[F]>::new_slice(comptime!(rows * qp_row));
        let mut k_s = Shared::<[F]>::new_slice(comptime!(2 * kv_tile));
        let mut v_s = Shared::<[F]>::new_slice(comptime!(2 * kv_tile));
        // Each plane's stripe: its bias rows, then (in place) the scores, then the P·V product
        // (keys >= HEAD columns).
        let mut s_s = Shared::<[f32]>::new_slice(comptime!(rows * key_row));
        let mut fill_s = Shared::<[f32]>::new_slice(comptime!(2 * keys));
        let mut row_s = Shared::<[f32]>::new_slice(rows);

        // The query block, zero past Q.
        let q_base = b * q.stride(0) + h * q.stride(1);
        // Unrolled, so that all the loads are in flight together (a `while` loop waits for
        // each in turn).
        #[unroll]
        for i in 0..comptime!(rows * HEAD / threads) {
            let e = t + i * threads;
            let r = e / HEAD;
            let row = row0 + r;
            let mut value = F::new(0.0);
            if row < q_len {
                value = q[q_base + row * q.stride(2) + (e % HEAD) * q.stride(3)];
            }
            qp_s[(r / MMA) * comptime!(MMA * qp_row) + (r % MMA) * head_row + e % HEAD] = value;
        }
        sync_cube();
        let qp_at = plane * MMA * qp_row;
        let qp_end = qp_at + MMA * qp_row;
        let mut q_lo = fragment::<F>(MatrixIdent::A, MatrixLayout::RowMajor);
        let mut q_hi = fragment::<F>(MatrixIdent::A, MatrixLayout::RowMajor);
        cmma::load(&mut q_lo, &qp_s[qp_at..qp_end], head_row as u32);
        cmma::load(&mut q_hi, &qp_s[qp_at + MMA..qp_end], head_row as u32);

        let mut scores = fragment::<f32>(MatrixIdent::Accumulator, MatrixLayout::Undefined);
        let mut k_frag = fragment::<F>(MatrixIdent::B, MatrixLayout::ColMajor);
        let mut p_frag = fragment::<F>(MatrixIdent::A, MatrixLayout::RowMajor);
        let mut v_frag = fragment::<F>(MatrixIdent::B, MatrixLayout::RowMajor);
        // The output of the plane's 16 rows (channels 0-15 and 16-31), summed over the key tiles
        // relative to each row's reference max.
        let mut pv_lo = fragment::<f32>(MatrixIdent::Accumulator, MatrixLayout::Undefined);
        let mut pv_hi = fragment::<f32>(MatrixIdent::Accumulator, MatrixLayout::Undefined);
        cmma::fill(&mut pv_lo, 0.0f32);
        cmma::fill(&mut pv_hi, 0.0f32);

        // The softmax row's reference max (set by the first tile, raised only where a tile's
        // max passes it by more than RESCALE_MARGIN) and its sum of weights.
        let mut m_run = f32::new(-3.0e38);
        let mut l_run = f32::new(0.0);
        let mut logits = Array::<f32>::new(half_keys);

        let mask_base = key_mask_base(key_mask, b);
        // Staging roles: unit `t` loads elements `t + i * threads` of the tile's K followed by
        // its V: a tile's K is a multiple of the cube's units, so the first half of the `i`
        // read K and the second V, each 32 lanes one key's channels (7% faster at L=512 on an
        // H100 than a K and a V element at every `i`, docs/PERFORMANCE.md). Lane `l` loads
        // tile element `l + i * PLANE` of its plane's bias stripe. Offsets and strides are
        // read once, not per element.
        let tile_elements = comptime!(keys * HEAD);
        let kv_count = comptime!(2 * tile_elements / threads);
        // Bias vectors a lane loads per tile.
        let bias_count = comptime!(MMA * keys / (PLANE * bias_vs));
        let (k_row_stride, k_ch_stride) = (k.stride(2), k.stride(3));
        let (v_row_stride, v_ch_stride) = (v.stride(2), v.stride(3));
        let k_base = b * k.stride(0) + h * k.stride(1);
        let v_base = b * v.stride(0) + h * v.stride(1);
        let stripe_row0 = row0 + plane * MMA;
        // The bias is contiguous `[G, H, Q, K]` (the caller lays it out so).
        let mut bias_at = 0;
        let mut bias_row_stride = 0;
        #[comptime]
        if let ComptimeOption::Some(bias) = &bias {
            let group = b / (batch / bias.shape(0));
            bias_at = group * bias.stride(0) + h * bias.stride(1);
            bias_row_stride = bias.stride(2);
        }
        // The next tile, loaded into registers while the current one is computed.
        let mut kv_next = Array::<F>::new(kv_count);
        let mut bias_next = Array::<f32>::new(comptime!(bias_count * bias_vs));
        let mut fill_next = f32::new(0.0);

        // Step `s` issues the loads of tile `s`, computes tile `s - 1` from shared memory while
        // they are in flight, then stores tile `s` to shared memory.
        let num_tiles = k_len.div_ceil(keys);
        for step in 0..num_tiles + 1 {
            if step < num_tiles {
                let key0 = step * keys;
                // K then V, zero past K.
                #[unroll]
                for i in 0..kv_count {
                    let e = t + i * threads;
                    let r = e % tile_elements;
                    let key = key0 + r / HEAD;
                    let channel = r % HEAD;
                    let mut value = F::new(0.0);
                    if key < k_len {
                        if e < tile_elements {
                            value = k[k_base + key * k_row_stride + channel * k_ch_stride];
                        } else {
                            value = v[v_base + key * v_row_stride + channel * v_ch_stride];
                        }
                    }
                    kv_next[i] = value;
                }
                // The bias (zero outside [Q, K] and without a bias): the scores start from it.
                // Lane `l` loads elements `(l + i * PLANE) * bias_vs ..` of the `[16, keys]`
                // stripe; K is a multiple of `bias_vs`, so a vector is inside K or past it.
                #[unroll]
                for i in 0..bias_count {
                    let mut values = Vector::<Bt, NB>::new(Bt::new(0.0));
                    #[comptime]
                    if let ComptimeOption::Some(bias) = &bias {
                        let e = (lane + i * PLANE) * bias_vs;
                        let row = stripe_row0 + e / keys;
                        let key = key0 + e % keys;
                        if row < q_len && key < k_len {
                            values = bias[(bias_at + row * bias_row_stride + key) / bias_vs];
                        }
                    }
                    #[unroll]
                    for j in 0..bias_vs {
                        bias_next[i * bias_vs + j] = f32::cast_from(values.extract(j));
                    }
                }
                if t < keys {
                    fill_next = masked_key_logit(key_mask, mask_base, key0 + t, k_len);
                }
            }
            if step > 0 {
                let kv_buffer = ((step - 1) % 2) * kv_tile;
                let fill_buffer = ((step - 1) % 2) * keys;
                // Scores = bias + Q·Kᵀ for the plane's 16 rows, in two 16-key halves, in place.
                // Kᵀ as the B operand: element (c, key) at k_s[kv_buffer + key * head_row + c],
                // column-major.
                #[unroll]
                for half in 0..parts {
                    let s_at = stripe + half * MMA;
                    let k_at = kv_buffer + half * MMA * head_row;
                    let k_end = k_at + MMA * head_row;
                    cmma::load_with_layout(
                        &mut scores,
                        &s_s[s_at..stripe_end],
                        key_row as u32,
                        MatrixLayout::RowMajor,
                    );
                    cmma::load(&mut k_frag, &k_s[k_at..k_end], head_row as u32);
                    cmma::execute(&q_lo, &k_frag, &scores, &scores);
                    cmma::load(&mut k_frag, &k_s[k_at + MMA..k_end], head_row as u32);
                    cmma::execute(&q_hi, &k_frag, &scores, &scores);
                    cmma::store(
                        &mut s_s[s_at..stripe_end],
                        &scores,
                        key_row as u32,
                        MatrixLayout::RowMajor,
                    );
                }
                sync_plane();

                // Softmax step: the lane's row over its 16 keys, read in a rotated order so that
                // the 32 lanes hit 32 different banks; the partner lane (l ^ 16) has the other half.
                let row_at = stripe + my_row * key_row;
                let p_row_at = qp_at + my_row * key_row;
                let mut m_tile = f32::new(-3.0e38);
                #[unroll]
                for j in 0..half_keys {
                    let col = my_half * half_keys + (j + rotation) % half_keys;
                    let fill = fill_s[fill_buffer + col];
                    let logit = select(fill == 0.0f32, s_s[row_at + col], fill);
                    logits[j] = logit;
                    m_tile = m_tile.max(logit);
                }
                m_tile = m_tile.max(plane_shuffle_xor(m_tile, MMA as u32));
                if step == 1 {
                    // The accumulators are still zero: the first tile only sets the maxima.
                    m_run = m_tile;
                } else if plane_any(m_tile > m_run + RESCALE_MARGIN) {
                    let m_new = m_run.max(m_tile);
                    let factor = (m_run - m_new).exp();
                    l_run *= factor;
                    m_run = m_new;
                    // Through the stripe, whose scores the lanes hold in registers by now.
                    if my_half == 0 {
                        row_s[plane * MMA + my_row] = factor;
                    }
                    sync_plane();
                    store_output(&pv_lo, &pv_hi, &mut s_s, stripe, stripe_end, key_row);
                    sync_plane();
                    #[unroll]
                    for r in 0..MMA {
                        s_s[stripe + r * key_row + lane] *= row_s[plane * MMA + r];
                    }
                    sync_plane();
                    cmma::load_with_layout(
                        &mut pv_lo,
                        &s_s[stripe..stripe_end],
                        key_row as u32,
                        MatrixLayout::RowMajor,
                    );
                    cmma::load_with_layout(
                        &mut pv_hi,
                        &s_s[stripe + MMA..stripe_end],
                        key_row as u32,
                        MatrixLayout::RowMajor,
                    );
                }
                let mut sum = f32::new(0.0);
                #[unroll]
                for j in 0..half_keys {
                    let col = my_half * half_keys + (j + rotation) % half_keys;
                    let p = (logits[j] - m_run).exp();
                    sum += p;
                    qp_s[p_row_at + col] = F::cast_from(p);
                }
                l_run += sum + plane_shuffle_xor(sum, MMA as u32);
                sync_plane();

                // P·V of the tile: 16 rows × 32 channels over the tile's two 16-key halves,
                // added to the output.
                #[unroll]
                for half in 0..parts {
                    let p_at = qp_at + half * MMA;
                    cmma::load(&mut p_frag, &qp_s[p_at..qp_end], key_row as u32);
                    let v_at = kv_buffer + half * MMA * head_row;
                    let v_end = v_at + MMA * head_row;
                    cmma::load(&mut v_frag, &v_s[v_at..v_end], head_row as u32);
                    cmma::execute(&p_frag, &v_frag, &pv_lo, &pv_lo);
                    cmma::load(&mut v_frag, &v_s[v_at + MMA..v_end], head_row as u32);
                    cmma::execute(&p_frag, &v_frag, &pv_hi, &pv_hi);
                }
            }
            if step < num_tiles {
                // Buffer `step % 2` was last read for tile `step - 2`, before the previous
                // step's barrier; the stripe is the plane's own, free once its lanes have read
                // the scores (and a rescale has reloaded the output).
                let kv_buffer = (step % 2) * kv_tile;
                #[unroll]
                for i in 0..kv_count {
                    let e = t + i * threads;
                    let r = e % tile_elements;
                    let at = kv_buffer + (r / HEAD) * head_row + r % HEAD;
                    if e < tile_elements {
                        k_s[at] = kv_next[i];
                    } else {
                        v_s[at] = kv_next[i];
                    }
                }
                if t < keys {
                    fill_s[(step % 2) * keys + t] = fill_next;
                }
                // The plane's lanes last read the stripe before the barrier after the weights.
                #[unroll]
                for i in 0..bias_count {
                    let e = (lane + i * PLANE) * bias_vs;
                    #[unroll]
                    for j in 0..bias_vs {
                        s_s[stripe + (e / keys) * key_row + e % keys + j] =
                            bias_next[i * bias_vs + j];
                    }
                }
            }
            sync_cube();
        }

        store_output(&pv_lo, &pv_hi, &mut s_s, stripe, stripe_end, key_row);
        if my_half == 0 {
            row_s[plane * MMA + my_row] = l_run;
        }
        sync_plane();
        let out_base = b * out.stride(0) + h * out.stride(1) + lane * out.stride(3);
        let out_row_stride = out.stride(2);
        #[unroll]
        for r in 0..MMA {
            let row = row0 + plane * MMA + r;
            if row < q_len {
                // l >= 1: the row's largest logit contributes exp(max - reference), and the
                // reference is at most the max.
                out[out_base + row * out_row_stride] =
                    F::cast_from(s_s[stripe + r * key_row + lane] / row_s[plane * MMA + r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_shapes_fit_the_shared_memory_they_are_chosen_for() {
        assert_eq!(shared_bytes(4, 32, false), 20_992);
        assert_eq!(shared_bytes(8, 32, false), 33_536);
        assert_eq!(shared_bytes(8, 32, true), 41_728);
        assert_eq!(shared_bytes(4, 64, true), 48_896);
        // Vulkan on NVIDIA offers 48 KiB a cube, Metal 32 KiB.
        assert_eq!(default_planes(48 * 1024, 32, true), 8);
        assert_eq!(default_planes(32 * 1024, 32, true), 4);
        assert_eq!(default_planes(48 * 1024, 64, true), 4);
        assert!(shared_bytes(4, 32, true) <= 32 * 1024);
    }

    /// The softmax lanes' rotated reads of one score row hit 32 different banks at every step
    /// (4-byte banks, the padded f32 row of `keys + 8`), for both tile widths.
    #[test]
    fn softmax_reads_are_free_of_bank_conflicts() {
        for keys in [32, 64] {
            let half_keys = keys / 2;
            let key_row = keys + padding(true);
            for j in 0..half_keys {
                let mut banks: Vec<usize> = (0..PLANE)
                    .map(|lane| {
                        let (my_row, my_half) = (lane % MMA, lane / MMA);
                        let rotation = 2 * (my_row / 4) + my_half;
                        let col = my_half * half_keys + (j + rotation) % half_keys;
                        (my_row * key_row + col) % 32
                    })
                    .collect();
                banks.sort_unstable();
                banks.dedup();
                assert_eq!(banks.len(), PLANE, "keys {keys}, step {j}");
            }
        }
    }

    #[test]
    fn short_query_rows_take_fewer_planes() {
        assert_eq!(planes_for(2, 8), 2);
        assert_eq!(planes_for(40, 8), 4);
        assert_eq!(planes_for(64, 8), 4);
        assert_eq!(planes_for(65, 8), 8);
        assert_eq!(planes_for(256, 8), 8);
        assert_eq!(planes_for(256, 4), 4);
    }
}
