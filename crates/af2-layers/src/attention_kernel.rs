//! A CubeCL kernel for [`attention_core`](crate::attention::attention_core) (feature `cube`).
//!
//! Flash-attention style: one cube computes up to 128 query rows of one `(batch row, head)`; it
//! walks the keys in tiles of 32 staged in shared memory (K, V and, with a bias, the
//! `[rows, 32]` bias tile, all converted to f32) and keeps an online softmax (running max,
//! running sum, f32 accumulators) per query row, so the `[B, H, Q, K]` logits never exist.
//!
//! Each unit owns `rows` query rows (`rows * threads` rows a cube), kept in registers with their
//! `Cv` accumulators; every shared-memory read of a key or value vector serves all of them. Keys
//! are scored 8 at a time: one running-max rescale per 8 keys, not per key. The next tile's K,
//! V, key mask and (at up to 2 rows a unit) bias are loaded into registers while the current
//! tile is computed, so their latency overlaps the computation.
//!
//! Where the query rows give too few cubes to fill the GPU (MSA row attention of one sequence:
//! `B = 1`), the keys are also split over cubes, each writing an unnormalised partial with its
//! running max and sum, and a second kernel combines them (flash-decoding).
//!
//! Reached from the `Tensor` API through Burn's backend extension: [`AttentionCoreOps`] is
//! implemented for [`CubeBackend`], and `#[backend_extension(Cube, Fusion)]` generates the lazy
//! `Fusion<CubeBackend>` implementation (an opaque custom operation in the fusion stream) and the
//! `Dispatch` routing.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, Device, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::untile;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::AddressType;
use cubecl::prelude::{Const, CubeCount, CubeDim, Vector};
use kernel::{attention_kernel, combine_kernel};

/// Keys staged in shared memory at a time.
const KEY_TILE: usize = 32;
/// The most bias values a unit loads ahead into registers (`rows * KEY_TILE`); a larger bias
/// tile share (4 rows a unit, heads of up to 16 channels) is loaded when it is stored.
const PREFETCH_BIAS: usize = 64;
/// Keys scored between two rescales of the running softmax.
const SUB: usize = 8;
/// The largest `C` and `Cv` the kernel takes; larger heads use the reference.
pub const MAX_HEAD_DIM: usize = 64;

type F4 = Vector<f32, Const<4>>;

/// The attention core as a backend operation (see [`attention_core_kernel`]).
#[backend_extension(Cube, Fusion)]
pub trait AttentionCoreOps: Backend {
    /// `softmax(q kᵀ + bias, masked) v` with a `[G, H, Q, K]` bias.
    #[fusion(dtype = q, shape = output_shape(q, v))]
    fn attention_core_biased(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_mask: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `softmax(q kᵀ, masked) v`.
    #[fusion(dtype = q, shape = output_shape(q, v))]
    fn attention_core_unbiased(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_mask: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// An output `[B, H, Q, Cv]` of q's dtype on q's device, laid out query-major (`[B, Q, H, Cv]`
/// in memory): the kernels write through its strides, and the caller's `swap_dims(1, 2)` back
/// to `[B, Q, H, Cv]` is then contiguous, so the gate and the output projection read it
/// without a transposing copy of the attended values.
pub(crate) fn query_major_output(q: &CubeTensor, [b, h, q_len, cv]: [usize; 4]) -> CubeTensor {
    let out = empty_device_contiguous_dtype(
        q.client.clone(),
        q.device.clone(),
        Shape::new([b, q_len, h, cv]),
        q.dtype,
    );
    burn_cubecl::ops::permute(out, &[0, 2, 1, 3])
}

/// `[B, H, Q, Cv]` from q `[B, H, Q, C]` and v `[B, H, K, Cv]`.
fn output_shape(q: &Shape, v: &Shape) -> Shape {
    Shape::new([q[0], q[1], q[2], v[3]])
}

impl AttentionCoreOps for CubeBackend {
    fn attention_core_biased(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_mask: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        launch(q, k, v, key_mask, Some(bias))
    }

    fn attention_core_unbiased(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        launch(q, k, v, key_mask, None)
    }
}

/// Whether [`attention_core_kernel`] takes these inputs: tensors on a cubecl device (not
/// autodiff), float dtypes the kernel reads, and `C`, `Cv` of at most [`MAX_HEAD_DIM`].
/// `AF2_ATTENTION_KERNEL=0` turns the kernel off.
pub fn kernel_supports(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> bool {
    let [_, _, q_len, c] = q.dims();
    let [_, _, k_len, cv] = v.dims();
    k.dims()[3] == c
        && k.dtype() == q.dtype()
        && v.dtype() == q.dtype()
        && kernel_supports_problem(&q.device(), q.dtype(), q_len, k_len, c, cv)
}

/// [`kernel_supports`] from the device, dtype and sizes alone.
pub fn kernel_supports_problem(
    device: &Device,
    dtype: DType,
    q_len: usize,
    k_len: usize,
    c: usize,
    cv: usize,
) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| {
        std::env::var("AF2_ATTENTION_KERNEL").map_or(true, |value| value.trim() != "0")
    });
    enabled
        && matches!(device.as_dispatch(), DispatchDevice::Cube(_))
        && matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && q_len > 0
        && k_len > 0
        && (1..=MAX_HEAD_DIM).contains(&c)
        && (1..=MAX_HEAD_DIM).contains(&cv)
}

/// The attention core on the CubeCL kernel; same contract as
/// [`attention_core`](crate::attention::attention_core), which calls it where
/// [`kernel_supports`] says so.
///
/// # Panics
/// On inputs [`kernel_supports`] refuses (including `AF2_ATTENTION_KERNEL=0`), inconsistent
/// shapes, or a bias whose group count does not divide `B`.
pub fn attention_core_kernel(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_mask: Tensor<2>,
    bias: Option<Tensor<4>>,
) -> Tensor<4> {
    check_shapes(
        &q.shape(),
        &k.shape(),
        &v.shape(),
        &key_mask.shape(),
        bias.as_ref().map(|t| t.shape()).as_ref(),
    );
    assert!(
        kernel_supports(&q, &k, &v),
        "attention kernel: unsupported inputs (device {:?}, dtypes {:?}/{:?}/{:?}, C = {}, \
         Cv = {}; the kernel takes float tensors of one dtype on a cubecl device, heads of at \
         most {MAX_HEAD_DIM} channels); use attention_core, which falls back to the reference",
        q.device(),
        q.dtype(),
        k.dtype(),
        v.dtype(),
        q.dims()[3],
        v.dims()[3],
    );
    let (q, k, v, key_mask) = (
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        key_mask.into_dispatch(),
    );
    let out = match bias {
        Some(bias) => Dispatch::attention_core_biased(q, k, v, key_mask, bias.into_dispatch()),
        None => Dispatch::attention_core_unbiased(q, k, v, key_mask),
    };
    Tensor::from_dispatch(out)
}

fn check_shapes(q: &Shape, k: &Shape, v: &Shape, mask: &Shape, bias: Option<&Shape>) {
    assert!(
        q.num_dims() == 4 && k.num_dims() == 4 && v.num_dims() == 4 && mask.num_dims() == 2,
        "attention core: q, k, v must be rank 4 and key_mask rank 2"
    );
    let (b, h, q_len, c) = (q[0], q[1], q[2], q[3]);
    let k_len = k[2];
    assert!(
        k[0] == b && k[1] == h && k[3] == c,
        "attention core: k {k:?} does not match q {q:?}"
    );
    assert!(
        v[0] == b && v[1] == h && v[2] == k_len,
        "attention core: v {v:?} does not match k {k:?}"
    );
    assert!(
        (mask[0] == b || mask[0] == 1) && mask[1] == k_len,
        "attention core: key_mask {mask:?} is not [{b} or 1, {k_len}]"
    );
    if let Some(bias) = bias {
        let groups = bias[0];
        assert!(
            bias.num_dims() == 4 && bias[1] == h && bias[2] == q_len && bias[3] == k_len,
            "attention core: bias {bias:?} is not [G, {h}, {q_len}, {k_len}]"
        );
        assert!(
            groups > 0 && b % groups == 0,
            "attention bias has {groups} groups, which does not divide {b} batch rows"
        );
    }
}

/// Units per cube and query rows per unit for the larger of `C` and `Cv`: more rows per unit
/// (more reuse of each shared-memory read) where the registers allow it. A cube takes 128 query
/// rows (64 above C = 32, to keep its shared memory under Metal's 32 KiB).
///
/// `AF2_ATTENTION_ROWS=1|2|4` overrides the rows per unit (a tuning knob; 4 only up to C = 32).
fn launch_shape(head_dim: usize) -> (usize, usize) {
    static ROWS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *ROWS.get_or_init(|| {
        std::env::var("AF2_ATTENTION_ROWS")
            .ok()
            .and_then(|value| value.trim().parse().ok())
            .filter(|rows| [1, 2, 4].contains(rows))
    });
    let block_rows = if head_dim <= 32 { 128 } else { 64 };
    let rows = match (forced, head_dim) {
        (Some(rows), 0..=32) => rows,
        (Some(rows), _) => rows.min(2),
        (None, 0..=16) => 4,
        (None, 17..=32) => 2,
        (None, _) => 1,
    };
    (block_rows / rows, rows)
}

fn launch(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    key_mask: CubeTensor,
    bias: Option<CubeTensor>,
) -> CubeTensor {
    // The kernel reads every input through its strides (swap_dims views and broadcasts need no
    // copy); only a storage-tiled layout has to be laid out as rows first.
    let (q, k, v, key_mask) = (untile(q), untile(k), untile(v), untile(key_mask));
    let bias = bias.map(untile);
    check_shapes(
        q.meta.shape(),
        k.meta.shape(),
        v.meta.shape(),
        key_mask.meta.shape(),
        bias.as_ref().map(|t| t.meta.shape()),
    );
    q.assert_is_on_same_device(&k);
    q.assert_is_on_same_device(&v);
    q.assert_is_on_same_device(&key_mask);
    let shape = q.meta.shape();
    let (b, h, q_len, c) = (shape[0], shape[1], shape[2], shape[3]);
    let cv = v.meta.shape()[3];
    let k_len = k.meta.shape()[2];
    assert!(
        c <= MAX_HEAD_DIM && cv <= MAX_HEAD_DIM,
        "attention kernel: head dims C={c}, Cv={cv} exceed {MAX_HEAD_DIM}"
    );
    assert!(
        k.dtype == q.dtype && v.dtype == q.dtype,
        "attention kernel: q, k, v dtypes differ ({:?}, {:?}, {:?})",
        q.dtype,
        k.dtype,
        v.dtype
    );

    if let Some(out) = crate::attention_kernel_mma::try_launch(&q, &k, &v, &key_mask, bias.as_ref())
    {
        return out;
    }
    if let Some(out) =
        crate::attention_kernel_few_keys::try_launch(&q, &k, &v, &key_mask, bias.as_ref())
    {
        return out;
    }

    let client = q.client.clone();
    let device = q.device.clone();
    let dtype = q.dtype;
    let out = query_major_output(&q, [b, h, q_len, cv]);

    let (threads, rows) = launch_shape(c.max(cv));
    let q_tiles = q_len.div_ceil(threads * rows);
    let (splits, tiles_per_split) = key_splits(q_tiles * h * b, k_len.div_ceil(KEY_TILE));
    let cube_dim = CubeDim::new_1d(threads as u32);
    let grid = cube_count(q_tiles * h * b * splits);

    // With split keys the cubes write unnormalised f32 partials and their running max and sum;
    // a second kernel combines them.
    let partials = (splits > 1).then(|| {
        let f32_tensor = |shape: [usize; 2]| {
            empty_device_contiguous_dtype(
                client.clone(),
                device.clone(),
                Shape::new(shape),
                DType::F32,
            )
        };
        let rows_total = splits * b * h * q_len;
        (f32_tensor([rows_total, cv]), f32_tensor([rows_total, 2]))
    });

    let address_type = address_type(
        [&q, &k, &v, &key_mask, &out]
            .into_iter()
            .chain(bias.as_ref())
            .chain(partials.iter().flat_map(|(acc, stats)| [acc, stats])),
    );
    let (target, target_dtype) = match &partials {
        Some((acc, _)) => (acc.clone(), DType::F32),
        None => (out.clone(), dtype),
    };
    let dtypes = [
        dtype_to_storage_type(dtype),
        dtype_to_storage_type(key_mask.dtype),
        dtype_to_storage_type(bias.as_ref().map_or(dtype, |t| t.dtype)),
        dtype_to_storage_type(target_dtype),
    ];
    let has_bias = bias.is_some();

    // SAFETY: every index is bounded by the shapes checked above: query rows past Q are clamped
    // on read and skipped on write; keys past K are never read (their tile slots are zeroed);
    // each split's tiles lie inside the key range.
    unsafe {
        attention_kernel::launch_unchecked(
            &client,
            grid,
            cube_dim,
            address_type,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            key_mask.into_tensor_arg(),
            bias.map(CubeTensor::into_tensor_arg).into(),
            target.into_tensor_arg(),
            partials
                .as_ref()
                .map(|(_, stats)| stats.clone().into_tensor_arg())
                .into(),
            q_tiles,
            splits,
            tiles_per_split,
            c,
            cv,
            threads,
            rows,
            has_bias,
            dtypes,
        );
    }

    if let Some((acc, stats)) = partials {
        let units = b * h * q_len;
        let threads = 256;
        // SAFETY: one unit per output row, bounded by `units` inside the kernel.
        unsafe {
            combine_kernel::launch_unchecked(
                &client,
                cube_count(units.div_ceil(threads)),
                CubeDim::new_1d(threads as u32),
                address_type,
                acc.into_tensor_arg(),
                stats.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                splits,
                dtype_to_storage_type(dtype),
            );
        }
    }
    out
}

/// Cubes the key loop aims for: enough to fill a large GPU (an H100 has 132 SMs) several times.
const TARGET_CUBES: usize = 512;

/// Key splits and key tiles per split for `cubes` cubes over `key_tiles` tiles: one split (no
/// combine pass) when the query rows alone give [`TARGET_CUBES`], else enough splits to reach it,
/// each at least two tiles long. Every split gets at least one tile.
fn key_splits(cubes: usize, key_tiles: usize) -> (usize, usize) {
    let wanted = TARGET_CUBES.div_ceil(cubes.max(1));
    let splits = wanted.min(key_tiles / 2).max(1);
    let tiles_per_split = key_tiles.div_ceil(splits);
    (key_tiles.div_ceil(tiles_per_split), tiles_per_split)
}

/// The kernel address (index) type wide enough for every one of `tensors`.
pub(crate) fn address_type<'a>(tensors: impl IntoIterator<Item = &'a CubeTensor>) -> AddressType {
    tensors
        .into_iter()
        .map(CubeTensor::required_address_type)
        .max()
        .unwrap_or_default()
}

/// `cubes` cubes as a grid whose sides stay within wgpu's default 65535 per dimension.
pub(crate) fn cube_count(cubes: usize) -> CubeCount {
    let x = cubes.clamp(1, u16::MAX as usize);
    CubeCount::Static(x as u32, cubes.div_ceil(x) as u32, 1)
}

pub(crate) mod kernel;
