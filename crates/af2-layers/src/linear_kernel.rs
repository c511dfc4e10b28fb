//! A tensor-core kernel for the f16 linear layers of the trunk (feature `cube`): `y = x · W + b`
//! for `x` `[M, K]` with `K ≤ 128` input channels (a multiple of 16) or up to 2048 in multiples
//! of 128, and `N` a multiple of 64 output channels; optionally written transposed (`yᵀ`,
//! `[N, M]`), as the triangle multiplication's channel-major edge projections want it.
//!
//! A cube of 8 planes (4 for a 64-column block) owns a block of up to 128 output columns; each
//! plane keeps its 16 columns of the weight in registers as 16×16×16 fragments for the whole
//! run, so the weight is read once per cube, and its bias as accumulator fragments that the
//! first product of every stripe adds to (inputs of at most 128 channels; wider ones below).
//! The cube walks 64-row tiles of `x`: it stages the tile in shared memory with 16-byte loads and stores (the shared
//! tiles hold vectors; the matrix loads address them in elements; single-chunk inputs load the
//! next tile into registers after the current tile's product and store it to shared memory after
//! its write-out, so that those loads are in flight while the output is written, and are not
//! issued right behind the output's stores), each plane multiplies its four 16-row stripes by
//! its weight fragments (large products of at most 128 inputs: two groups of planes, each
//! taking two of the stripes, see [`row_groups`]), rounds the f32 accumulators to f16 into a
//! shared output tile (column-major in the transposed forms), and the cube writes the tile out with
//! 16-byte vectors read whole from it (along output rows, or along output columns when
//! transposed). An output stage's own inputs (gate, residual, mask) are loaded before the tile's
//! barrier, all in flight together. Rows past `M` are read as zero and not written. Inputs
//! wider than 128 channels (the MSA stack's 256, the transitions' 512 and 1024) are taken in
//! 128-wide chunks: each chunk of a tile is staged in turn and its weight fragments are loaded
//! again (from L2) for every tile, while the four stripes' accumulators stay in registers.
//!
//! The output stage can finish a layer on the way out ([`Epilogue`]; in f32 from the f16-rounded
//! product, rounded once more): a ReLU (the transitions), a sigmoid gate and a residual add (the
//! triangle multiplication's output), a residual add alone, a scale of the first columns (the
//! queries of an attention's shared projection), or a division by one value a row and column
//! block followed by a residual add, with a bias shorter than the row repeated along it (the
//! outer product mean's last product for one design, `[N, S·32] · [S·32, N·c_z]`: each pair's
//! `c_z` channels divided by its count, the pair added); and the transposed form can gate
//! its own columns ([`try_gated_edges_kernel`]: the triangle multiplication's masked, gated
//! edges). It can also gate its input as it stages it (`Epilogue::input_gate`: the attentions'
//! `sigmoid(gate)` on their output, read from the columns of the shared projection that hold
//! it). Where it runs, those elementwise passes over the pair are no kernels of their own.
//!
//! On an H100 (docs/PERFORMANCE.md) a `[262144, 128] · [128, 128]` product took 124 µs against
//! 176 µs for cubecl's matmul with the bias fused, and the triangle multiplication's four
//! projections (`N = 512`, transposed) 459 µs against 574 µs. Tried and slower there:
//! element-wise (2-byte) loads and stores (213 µs), prefetching the next tile into registers
//! before the current tile's product (141 µs), transposed stores with consecutive units on
//! consecutive columns (944 µs). On an H200 (twenty-third session) the loads, the products and
//! the write-out each took about a third of a `[524288, 128] · [128, 512]` product (0.65 ms;
//! 0.43, 0.47 and 0.42 ms with each left out), consistent with little overlap. Loading the next
//! tile between the product and the write-out took it from 0.643 to 0.497 ms (same call) and an
//! L=256 B=8 Evoformer block from 11.62 to 10.72 ms. Whole
//! vectors in shared memory took the triangle multiplication's gated edges from 890 to 803 µs
//! (`[524288, 128] · [128, 512]`, in a block); 32-row tiles were slower than 64. Eight planes of
//! 16 columns instead of four of 32 took an Evoformer block 4-6% less time (eleventh session).
//! Slower or no better there: a cube-scope (`VK_NV_cooperative_matrix2`) product loaded straight
//! from global memory (0.57 against 0.38 ms for `[262144, 128] · [128, 512]`), half or double
//! the number of cubes.

use burn::backend::Dispatch;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Tensor};

use crate::attention_kernel_mma::runs_f16_instructions;
use crate::linear::Epilogue;
use crate::with_cube_properties;
pub use ops::LinearOps;

/// Rows and columns of one matrix instruction (`16 × 16 × 16`).
const MMA: usize = 16;
/// Units of a plane the kernel is written for.
const PLANE: usize = 32;
/// Planes per cube of a 64-column block (16 columns a plane); see [`planes_for`].
const PLANES: usize = 4;
/// Rows of `x` a cube stages and computes per step (four 16-row stripes a plane).
const TILE_ROWS: usize = 64;
/// The widest input whose weight columns stay in a plane's registers (8 fragments of a
/// 16-column plane) for the whole run; wider inputs, in multiples of it up to [`MAX_CHUNKED_INPUT`], are taken in chunks
/// of this width whose weight fragments are read again for every tile.
pub const MAX_INPUT: usize = 128;
/// The widest input the kernel takes in chunks (the Evoformer's widest layer has 1,024: the
/// MSA transition's projection back and the outer product mean's output).
pub const MAX_CHUNKED_INPUT: usize = 2048;
/// Output columns per cube at most.
const MAX_BLOCK: usize = 128;
/// Columns of one block of the gated edges kernel's weight ([`try_gated_edges_kernel`]): the
/// first half projections, the second half their gates, channel for channel.
pub const EDGE_BLOCK: usize = MAX_BLOCK;
/// f16 elements a unit moves per global load or store (16 bytes).
const VECTOR: usize = 8;
/// Cubes worth launching (`AF2_LINEAR_CUBES` overrides it): beyond this a cube walks several tiles, reusing its weight
/// fragments and its bias rows. Two a multiprocessor of an H100 (132): the kernel's registers
/// let one or two cubes run on one at a time, so more cubes only queue up, each paying its
/// start (weight fragments, bias rows, a barrier) again. On an H100 (docs/PERFORMANCE.md,
/// twenty-first session) 264 cubes instead of 1,056 took an L=256 Evoformer block of one design
/// from 2.06 to 2.01 ms and a prediction from 0.441-0.443 to 0.433-0.435 s; 132 and 396-528 were
/// within 1% of 264, 2,112 slower.
const TARGET_CUBES: usize = 264;

/// Whether `AF2_LINEAR_KERNEL=0` turned the kernel off.
fn disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED
        .get_or_init(|| std::env::var("AF2_LINEAR_KERNEL").is_ok_and(|value| value.trim() == "0"))
}

/// Launches with a fused output stage (an [`Epilogue`] operation or gated edges).
static FUSED_LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times the kernel has run with a fused output stage in this process (for tests and
/// benchmarks that need to know which path ran).
pub fn fused_stage_launches() -> usize {
    FUSED_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `AF2_LINEAR_EPILOGUE=0` turned the fused output stages off (the plain kernel stays):
/// the layers then finish with Burn's elementwise operations, as before the fused stages.
fn epilogues_disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED
        .get_or_init(|| std::env::var("AF2_LINEAR_EPILOGUE").is_ok_and(|value| value.trim() == "0"))
}

/// Whether `x`'s device is a cubecl device that runs 16×16×16 f16 matrix instructions with f32
/// accumulators in planes of [`PLANE`] units, and gives a cube the shared memory the kernel
/// declares for `k` inputs and `n` outputs.
fn device_supports(x: &Tensor<2>, k: usize, n: usize) -> bool {
    with_cube_properties(&x.device(), |props| {
        let units = PLANE * planes_for(block_width(n));
        runs_f16_instructions(props)
            && shared_bytes(k, block_width(n)) <= props.hardware.max_shared_memory_size
            && units <= props.hardware.max_units_per_cube as usize
    })
    .unwrap_or(false)
}

/// Bytes of shared memory the kernel declares: the input and output tiles (f16) and the bias
/// rows (f32), rows padded by 8 elements; the output tile is column-major in the transposed
/// forms, its columns padded (the larger of the two layouts counts).
fn shared_bytes(k: usize, n_block: usize) -> usize {
    let (half, single, pad) = (2, 4, 8);
    let k = k.min(MAX_INPUT);
    let out_tile = (TILE_ROWS * (n_block + pad)).max(n_block * (TILE_ROWS + pad));
    TILE_ROWS * (k + pad) * half + out_tile * half + MMA * (n_block + pad) * single
}

/// Input widths the kernel takes: up to [`MAX_INPUT`] in multiples of 16 (weights held in
/// registers), beyond it up to [`MAX_CHUNKED_INPUT`] in multiples of [`MAX_INPUT`] (chunks).
fn input_width_supported(k: usize) -> bool {
    if k <= MAX_INPUT {
        k.is_multiple_of(MMA)
    } else {
        k <= chunked_input_limit() && k.is_multiple_of(MAX_INPUT)
    }
}

/// [`MAX_CHUNKED_INPUT`], or `AF2_LINEAR_MAX_INPUT` where set lower (128: no chunked inputs).
fn chunked_input_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        count_knob("AF2_LINEAR_MAX_INPUT")
            .map_or(MAX_CHUNKED_INPUT, |limit| limit.min(MAX_CHUNKED_INPUT))
    })
}

/// A count from the environment variable `name`, if it holds one (a tuning knob).
fn count_knob(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
}

/// [`TARGET_CUBES`], or `AF2_LINEAR_CUBES` (a tuning knob for other GPUs).
fn target_cubes() -> usize {
    static CUBES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CUBES.get_or_init(|| {
        count_knob("AF2_LINEAR_CUBES")
            .filter(|&cubes| cubes > 0)
            .unwrap_or(TARGET_CUBES)
    })
}

/// [`SPLIT_STRIPES_MIN_ROWS`], or `AF2_LINEAR_SPLIT_ROWS` (a tuning knob: 1 splits every
/// product of at most 128 inputs).
fn split_stripes_min_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| count_knob("AF2_LINEAR_SPLIT_ROWS").unwrap_or(SPLIT_STRIPES_MIN_ROWS))
}

/// Whether [`linear_kernel`] takes `x · weight`: f16 on a device with matrix instructions,
/// `K ≤ 128` in multiples of 16 or `K ≤ 2048` in multiples of 128, and `N` in multiples of 64
/// (`AF2_LINEAR_KERNEL=0` turns it off).
pub fn kernel_supports(x: &Tensor<2>, weight: &Tensor<2>) -> bool {
    let [m, k] = x.dims();
    let [k_w, n] = weight.dims();
    !disabled()
        && x.dtype() == DType::F16
        && weight.dtype() == DType::F16
        && k == k_w
        && m > 0
        && k > 0
        && input_width_supported(k)
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
    try_linear_kernel_with(x, weight, bias, &Epilogue::default())
}

/// Whether the kernel has this epilogue combination: a bias with a ReLU alone, a gate with a
/// residual, a residual alone, scaled columns alone, an input gate alone or with a residual,
/// or a divisor with a residual; without a bias, none of them (`AF2_LINEAR_EPILOGUE=0`: none).
fn offered(epilogue: &Epilogue, biased: bool) -> bool {
    let others = epilogue.relu || epilogue.gate.is_some() || epilogue.scale_columns.is_some();
    if epilogue.divisor.is_some() {
        // With a residual, nothing else.
        let alone = !others && epilogue.input_gate.is_none();
        return alone && epilogue.residual.is_some() && biased && !epilogues_disabled();
    }
    if epilogue.input_gate.is_some() {
        // With a residual or alone.
        return !others && biased && !epilogues_disabled();
    }
    match (
        epilogue.relu,
        epilogue.gate.is_some(),
        epilogue.residual.is_some(),
        epilogue.scale_columns.is_some(),
    ) {
        (false, false, false, false) => true,
        (true, false, false, false)
        | (false, true, true, false)
        | (false, false, true, false)
        | (false, false, false, true) => biased && !epilogues_disabled(),
        _ => false,
    }
}

/// `x · weight + bias` finished by `epilogue` on the kernel, where [`kernel_supports`] takes the
/// inputs, the epilogue's tensors are f16 like `x`, and the kernel has the epilogue's
/// combination (see [`Epilogue`]; `AF2_LINEAR_EPILOGUE=0` offers none); else `None`.
///
/// # Shapes
/// - x: `[M, K]`, weight: `[K, N]`, bias: `[N]`, gate and residual: `[M, N]`
/// - output: `[M, N]`
///
/// # Panics
/// If bias is not `[N]` or a gate or residual is not `[M, N]`.
pub fn try_linear_kernel_with(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    epilogue: &Epilogue,
) -> Option<Tensor<2>> {
    let shape = [x.dims()[0], weight.dims()[1]];
    let extras = [&epilogue.gate, &epilogue.residual];
    let extras_fit = extras.iter().all(|extra| {
        extra.as_ref().is_none_or(|t| {
            assert_eq!(
                t.dims(),
                shape,
                "linear kernel: epilogue tensors must be {shape:?}"
            );
            t.dtype() == x.dtype()
        })
    });
    // Scaled columns come in whole 16-byte vectors of the output's rows.
    let scale_fits = epilogue
        .scale_columns
        .is_none_or(|(columns, _)| columns.is_multiple_of(VECTOR) && columns <= shape[1]);
    // The divisor's blocks are the kernel's column blocks.
    let divisor_fits = epilogue.divisor.as_ref().is_none_or(|(divisor, width)| {
        let blocks = shape[1] / width;
        assert_eq!(
            divisor.dims(),
            [shape[0], blocks],
            "linear kernel: the divisor must be [{}, {blocks}]",
            shape[0]
        );
        divisor.dtype() == x.dtype() && *width == block_width(shape[1])
    });
    if !extras_fit
        || !scale_fits
        || !divisor_fits
        || !input_gate_fits(epilogue, x)
        || !offered(epilogue, bias.is_some())
        || !kernel_supports(x, weight)
    {
        return None;
    }
    let bias = bias.map(|bias| checked_bias(bias, weight.dims()[1]));
    let (x, weight) = (x.clone().into_dispatch(), weight.clone().into_dispatch());
    let extra = |t: &Option<Tensor<2>>| t.clone().map(Tensor::into_dispatch);
    let Some(bias) = bias else {
        return Some(Tensor::<2>::from_dispatch(Dispatch::linear_rows_unbiased(
            x, weight,
        )));
    };
    if let Some((divisor, _)) = &epilogue.divisor {
        let divisor = divisor.clone().into_dispatch();
        let residual = extra(&epilogue.residual).expect("offered only with a residual");
        return Some(Tensor::<2>::from_dispatch(
            Dispatch::linear_rows_divided_residual(x, weight, bias, divisor, residual),
        ));
    }
    if let Some((gates, first)) = &epilogue.input_gate {
        let gates = gates.clone().into_dispatch();
        let out = match extra(&epilogue.residual) {
            Some(residual) => {
                Dispatch::linear_rows_input_gated_residual(x, weight, bias, gates, *first, residual)
            }
            None => Dispatch::linear_rows_input_gated(x, weight, bias, gates, *first),
        };
        return Some(Tensor::<2>::from_dispatch(out));
    }
    let out = match (
        epilogue.scale_columns,
        extra(&epilogue.gate),
        extra(&epilogue.residual),
    ) {
        (Some((columns, scale)), _, _) => {
            Dispatch::linear_rows_scaled(x, weight, bias, scale, columns)
        }
        (None, None, None) => Dispatch::linear_rows(x, weight, bias, epilogue.relu),
        (None, Some(gate), Some(residual)) => {
            Dispatch::linear_rows_gated_residual(x, weight, bias, gate, residual)
        }
        (None, None, Some(residual)) => Dispatch::linear_rows_residual(x, weight, bias, residual),
        (None, Some(_), None) => unreachable!("a gate without a residual is not offered"),
    };
    Some(Tensor::<2>::from_dispatch(out))
}

/// Whether the epilogue's input gate, if any, fits the kernel: f16 like `x`, the same rows,
/// `K` columns from `first` inside it, and `first` and the row length in whole 16-byte vectors.
fn input_gate_fits(epilogue: &Epilogue, x: &Tensor<2>) -> bool {
    let [m, k] = x.dims();
    epilogue.input_gate.as_ref().is_none_or(|(gates, first)| {
        let [rows, width] = gates.dims();
        gates.dtype() == x.dtype()
            && rows == m
            && first + k <= width
            && first.is_multiple_of(VECTOR)
            && width.is_multiple_of(VECTOR)
    })
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

/// `mask · projection · sigmoid(gate)`, transposed, from one projection `y = x · weight + bias`
/// whose [`EDGE_BLOCK`]-column blocks hold projections in their first half and the matching
/// gates in their second: block `j` gives output rows `j · EDGE_BLOCK / 2 ..`. `None` where
/// [`transposed_kernel_supports`] refuses the inputs, `N` is not a multiple of [`EDGE_BLOCK`]
/// or the mask is not f16 like `x` (or `AF2_LINEAR_EPILOGUE=0`).
///
/// # Shapes
/// - x: `[M, K]`, weight: `[K, N]`, bias: `[N]`, mask: `[M]`
/// - output: `[N / 2, M]`
///
/// # Panics
/// If bias is not `[N]` or mask is not `[M]`.
pub fn try_gated_edges_kernel(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: &Tensor<1>,
    mask: &Tensor<1>,
) -> Option<Tensor<2>> {
    let [m, _] = x.dims();
    assert_eq!(mask.dims(), [m], "linear kernel: the mask must be [{m}]");
    if mask.dtype() != x.dtype() || !gated_edges_supported(x, weight) {
        return None;
    }
    let bias = checked_bias(bias, weight.dims()[1]);
    let (x, weight) = (x.clone().into_dispatch(), weight.clone().into_dispatch());
    let mask = mask.clone().into_dispatch();
    Some(Tensor::<2>::from_dispatch(Dispatch::linear_edges_gated(
        x, weight, bias, mask,
    )))
}

/// Whether [`try_gated_edges_kernel`] takes `x` and a weight of `weight`'s shape and dtype (the
/// mask aside): [`transposed_kernel_supports`], `N` a multiple of [`EDGE_BLOCK`], and the fused
/// stages on. Callers that prepare the interleaved weight ask this first.
pub fn gated_edges_supported(x: &Tensor<2>, weight: &Tensor<2>) -> bool {
    weight.dims()[1].is_multiple_of(EDGE_BLOCK)
        && !epilogues_disabled()
        && transposed_kernel_supports(x, weight)
}

/// The bias for the backend operation, checked to be `[n]`, or `[p]` with `p` dividing `n`
/// (repeated along the row).
fn checked_bias(bias: &Tensor<1>, n: usize) -> FloatTensor<Dispatch> {
    let [p] = bias.dims();
    assert!(
        p > 0 && n.is_multiple_of(p),
        "linear kernel: bias must be [{n}] or divide it, got [{p}]"
    );
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

/// Planes per cube for a block of `n_block` columns: 16 columns a plane, so 8 planes for a
/// 128-column block (4 with `AF2_LINEAR_PLANE_COLS=32`, 32 columns a plane: the layout before
/// the eleventh session) and 4 for a 64-column block. On an H100, 8 planes took an Evoformer
/// block 4-6% less time than 4 (docs/PERFORMANCE.md): each plane holds half the weight
/// fragments, and twice the planes share a staged tile.
fn planes_for(n_block: usize) -> usize {
    static WIDE_PLANES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let wide = *WIDE_PLANES.get_or_init(|| {
        std::env::var("AF2_LINEAR_PLANE_COLS").is_ok_and(|value| value.trim() == "32")
    });
    planes_with(n_block, wide)
}

/// [`planes_for`] with the knob's choice given: `wide_planes` for 32 columns a plane in
/// 128-column blocks.
fn planes_with(n_block: usize, wide_planes: bool) -> usize {
    if n_block == MAX_BLOCK && !wide_planes {
        2 * PLANES
    } else {
        PLANES
    }
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

mod kernel;
mod ops;
mod staging;

/// Fewest rows at which [`row_groups`] splits a tile's stripes over two plane groups: one
/// design at L=256.
const SPLIT_STRIPES_MIN_ROWS: usize = 1 << 16;

/// Plane groups sharing a tile (each takes half its stripes): 2 for inputs held in registers
/// (`K ≤ 128`; row-major or transposed outputs alike) from `min_rows` rows
/// ([`split_stripes_min_rows`]), where the device allows a cube of twice the `units`; else 1.
/// NVIDIA's driver gave the 256-unit kernel 169-179 registers a unit (one cube, 8 planes, a
/// multiprocessor); a cube of 512 units gets at most 128, so 16 planes run on a multiprocessor.
/// On an H100 an L=256 B=8 Evoformer block took 3% less time with two groups; with every
/// product split, L=128 B=1 took 6% more (small products), the pair transition's chunked
/// 512 -> 128 product 15% more (docs/PERFORMANCE.md, fourteenth session). With at most 264
/// cubes (twenty-first session) two groups from 16,384 rows made an L=256 B=1 prediction 4%
/// faster on an H200 (65,536 rows) but an L=128 B=1 one (16,384 rows) 6% slower
/// (twenty-second session). The transposed forms gained nothing from two groups in the
/// fourteenth session (H100, before the next tile loaded during the write-out); on an H200 in
/// the twenty-sixth they did: the gated edges `[524288, 128] · [128, 512]` took 0.505 ms
/// against 0.538, an L=256 B=8 block 10.87 against 10.93 ms.
fn row_groups(m: usize, k: usize, units: usize, max_units: usize, min_rows: usize) -> usize {
    if k <= MAX_INPUT && m >= min_rows && 2 * units <= max_units {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_shared_memory_of_vulkan_on_nvidia() {
        // 48 KiB a cube there; Metal's 32 KiB takes K = 128 only with 64-column blocks.
        assert_eq!(shared_bytes(128, 128), 44_544);
        assert!(shared_bytes(MAX_INPUT, MAX_BLOCK) <= 48 * 1024);
        assert_eq!(shared_bytes(128, 64), 31_232);
    }

    #[test]
    fn wide_blocks_take_eight_planes_of_sixteen_columns() {
        assert_eq!(planes_with(MAX_BLOCK, false), 8);
        assert_eq!(planes_with(64, false), PLANES);
        for n_block in [64, MAX_BLOCK] {
            assert_eq!(n_block / planes_with(n_block, false), MMA);
        }
        // AF2_LINEAR_PLANE_COLS=32: the earlier four planes of 32 columns.
        assert_eq!(MAX_BLOCK / planes_with(MAX_BLOCK, true), 2 * MMA);
        assert_eq!(planes_with(64, true), PLANES);
    }

    #[test]
    fn column_blocks_divide_the_output() {
        assert_eq!(block_width(128), 128);
        assert_eq!(block_width(512), 128);
        assert_eq!(block_width(64), 64);
        assert_eq!(block_width(192), 64);
    }

    #[test]
    fn large_products_split_their_stripes() {
        let rows = SPLIT_STRIPES_MIN_ROWS;
        let groups = |m, k, max_units| row_groups(m, k, 256, max_units, rows);
        assert_eq!(groups(rows, 128, 1024), 2);
        assert_eq!(groups(rows - 1, 128, 1024), 1);
        // Chunked inputs keep one group.
        assert_eq!(groups(rows, 512, 1024), 1);
        // A device without 512-unit cubes.
        assert_eq!(groups(rows, 128, 256), 1);
        // AF2_LINEAR_SPLIT_ROWS=1: every product of at most 128 inputs.
        assert_eq!(row_groups(64, 128, 256, 1024, 1), 2);
    }
}
