//! A tensor-core (cooperative-matrix) variant of the attention kernel for f16 heads of 32
//! channels: the triangle and MSA attentions of the Evoformer in half precision.
//!
//! One cube of 8 planes (4 where shared memory is short, fewer for short query rows) computes
//! 16 query rows a plane of one `(batch row, head)`. For each tile of 32 keys the cube stages K
//! and V (f16, as vectors of 4 channels where their layout allows: an L=256 B=8 triangle
//! attention took 7% less time on an H200 than with one channel a load, docs/PERFORMANCE.md)
//! in shared memory, and every plane its own `[16, 32]` stripe of the bias (f32;
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
/// Elements of one load: the bias's keys (where the key count is a multiple of it) and K's
/// and V's channels (where their layout allows, [`channels_vectorise`]); one vector width
/// serves both (the kernel has one vector size), so where either cannot take it both load
/// single elements (the Evoformer's key counts, padded to multiples of 8, always can).
const LOAD_VECTOR: usize = 4;
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
    // One vector width for the bias (keys) and for K and V (channels).
    let bias_fits = bias.is_none() || k.meta.shape()[2].is_multiple_of(LOAD_VECTOR);
    let vector = if bias_fits && channels_vectorise(k) && channels_vectorise(v) {
        LOAD_VECTOR
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
            vector,
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
            vector,
            dtypes,
        );
    }
    Some(out)
}

/// Whether `t` `[B, H, K, C]` loads as vectors of [`LOAD_VECTOR`] channels: channels
/// contiguous, the strides of the other dimensions (of more than one entry) and the view's
/// offset in its buffer multiples of the vector (the self-attentions' K and V are column
/// ranges of one projection whose widths are multiples of 32, or tensors of their own).
fn channels_vectorise(t: &CubeTensor) -> bool {
    let (shape, strides) = (t.meta.shape(), t.meta.strides());
    let vector_bytes = (LOAD_VECTOR * t.dtype.size()) as u64;
    strides[3] == 1
        && (0..3).all(|i| shape[i] == 1 || strides[i].is_multiple_of(LOAD_VECTOR))
        && t.handle
            .offset_start
            .unwrap_or(0)
            .is_multiple_of(vector_bytes)
}

pub(crate) mod kernel;

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

    /// Every shape the host launches stages K and V in whole vectors: a head's channels and a
    /// padded shared row hold whole vectors, and each tile's vectors split evenly over the
    /// cube's units, K's before V's (the kernel sizes its loops by these quotients).
    #[test]
    fn key_and_value_vectors_tile_the_shared_rows_exactly() {
        for vector in [1, LOAD_VECTOR] {
            for pad in [false, true] {
                for keys in [32, 64] {
                    for planes in [2, 4, 8] {
                        let threads = PLANE * planes;
                        let head_row = MMA_HEAD_DIM + padding(pad);
                        let tile_vectors = keys * MMA_HEAD_DIM / vector;
                        let what = format!("vector {vector} pad {pad} keys {keys} planes {planes}");
                        assert_eq!(MMA_HEAD_DIM % vector, 0, "{what}");
                        assert_eq!(head_row % vector, 0, "{what}");
                        assert_eq!(tile_vectors % threads, 0, "{what}");
                        assert_eq!(keys % vector, 0, "{what}: bias vectors");
                    }
                }
            }
        }
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
