//! The CubeCL attention kernel against the reference attention core, on a GPU.
//!
//! Compiled only with the `cube` feature (`vulkan` pins the Vulkan adapter). The tests run only
//! when `AF2_GPU_TESTS` is set; without it they print that they were skipped and pass, so a CPU
//! machine can build them. With it, a missing adapter fails them.
//!
//! The reference runs on the CPU (ndarray, exact f32) from the same inputs: it is the definition
//! of the result, and it keeps the GPU's own matmul precision out of the comparison.
#![cfg(feature = "cube")]

mod common;

use af2_layers::attention::{attention_core, attention_core_reference};
use af2_layers::attention_kernel::{attention_core_kernel, kernel_supports};
use af2_layers::attention_kernel_few_keys::few_keys_launches;
use af2_layers::attention_kernel_mma::mma_launches;
use af2_layers::{GatedAttention, GatedAttentionConfig};
use burn::module::Param;
use burn::tensor::{DType, Device, Tensor, TensorData};
use common::{cpu, gpu, relative_error, through_f16, values};

#[derive(Clone, Debug)]
struct Case {
    b: usize,
    h: usize,
    q: usize,
    k: usize,
    c: usize,
    cv: usize,
    /// Bias groups `G`, or no bias.
    groups: Option<usize>,
    /// A key mask `[1, K]` shared by all rows instead of `[B, K]`.
    shared_mask: bool,
    /// q, k, v as `swap_dims(1, 2)` views of `[B, Q, H, C]` tensors, as GatedAttention passes them.
    swapped: bool,
    /// Every input a view at an offset into a larger buffer (`narrow` on the first axis; taken
    /// before the swap, so that a swapped view keeps its strides).
    offset: bool,
    /// q, k, v as views of rows one channel wider (a row stride of C + 1: K and V cannot load
    /// as vectors of channels).
    odd_stride: bool,
}

impl Case {
    fn new(b: usize, h: usize, q: usize, k: usize, c: usize, groups: Option<usize>) -> Self {
        Self {
            b,
            h,
            q,
            k,
            c,
            cv: c,
            groups,
            shared_mask: false,
            swapped: false,
            offset: false,
            odd_stride: false,
        }
    }
}

/// The inputs of a case as data: q (scaled), k, v, key_mask, bias.
struct Inputs {
    q: TensorData,
    k: TensorData,
    v: TensorData,
    mask: TensorData,
    bias: Option<TensorData>,
}

impl Inputs {
    /// The inputs as the kernel sees them in f16, for the f32 reference.
    fn through_f16(&self) -> Self {
        Self {
            q: through_f16(&self.q),
            k: through_f16(&self.k),
            v: through_f16(&self.v),
            mask: self.mask.clone(),
            bias: self.bias.as_ref().map(through_f16),
        }
    }
}

fn inputs(case: &Case, seed: u64) -> Inputs {
    let Case {
        b, h, q, k, c, cv, ..
    } = *case;
    let scale = (c as f32).powf(-0.5);
    // Logits of a few units: softmax rows far from uniform and far from one-hot.
    let qv = values(b * h * q * c, seed, 2.0 * scale);
    let kv = values(b * h * k * c, seed + 1, 2.0);
    let vv = values(b * h * k * cv, seed + 2, 1.0);
    let mask_rows = if case.shared_mask { 1 } else { b };
    let mut mask = values(mask_rows * k, seed + 3, 1.0)
        .into_iter()
        .map(|x| if x < -0.6 { 0.0 } else { 1.0 })
        .collect::<Vec<f32>>();
    // Row 0 keeps key 0; the last row (when separate) is fully masked.
    mask[0] = 1.0;
    if mask_rows > 1 {
        mask[(mask_rows - 1) * k..].fill(0.0);
    }
    let bias = case
        .groups
        .map(|g| TensorData::new(values(g * h * q * k, seed + 4, 2.0), [g, h, q, k]));
    let (qs, ks, vs) = if case.swapped {
        ([b, q, h, c], [b, k, h, c], [b, k, h, cv])
    } else {
        ([b, h, q, c], [b, h, k, c], [b, h, k, cv])
    };
    Inputs {
        q: TensorData::new(qv, qs),
        k: TensorData::new(kv, ks),
        v: TensorData::new(vv, vs),
        mask: TensorData::new(mask, [mask_rows, k]),
        bias,
    }
}

type Core = fn(Tensor<4>, Tensor<4>, Tensor<4>, Tensor<2>, Option<Tensor<4>>) -> Tensor<4>;

fn run(core: Core, inputs: &Inputs, case: &Case, device: &Device, dtype: DType) -> Vec<f32> {
    let at_offset = |t: Tensor<4>| {
        if !case.offset {
            return t;
        }
        let [a, b, c, d] = t.dims();
        Tensor::cat(vec![Tensor::zeros([1, b, c, d], (device, dtype)), t], 0).narrow(0, 1, a)
    };
    let load4 = |data: &TensorData| {
        let mut t = Tensor::<4>::from_data(data.clone(), (device, DType::F32)).cast(dtype);
        if case.odd_stride {
            let [a, b, c, d] = t.dims();
            let wider = Tensor::cat(vec![t, Tensor::zeros([a, b, c, 1], (device, dtype))], 3);
            t = wider.narrow(3, 0, d);
        }
        let t = at_offset(t);
        if case.swapped { t.swap_dims(1, 2) } else { t }
    };
    let mask = Tensor::<2>::from_data(inputs.mask.clone(), (device, DType::F32)).cast(dtype);
    let bias = inputs.bias.as_ref().map(|data| {
        at_offset(Tensor::<4>::from_data(data.clone(), (device, DType::F32)).cast(dtype))
    });
    let out = core(
        load4(&inputs.q),
        load4(&inputs.k),
        load4(&inputs.v),
        mask,
        bias,
    );
    out.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn check(case: &Case, device: &Device) {
    let data = inputs(case, 17 + case.q as u64 * 31 + case.k as u64);
    let kernel = run(attention_core_kernel, &data, case, device, DType::F32);
    let reference = run(attention_core_reference, &data, case, &cpu(), DType::F32);
    // f32 on both sides; the kernel sums in another order (online softmax over key tiles,
    // 4-wide partial dot products) and the GPU's exp differs by a few ulp, so the outputs agree
    // to a few f32 ulp of their scale (~1e-6), not bit for bit.
    let error = relative_error(&kernel, &reference);
    println!("{case:?}: relative error {error:.2e}");
    assert!(error <= 1e-5, "{case:?}: relative error {error:.3e}");
}

#[test]
fn kernel_matches_reference_f32() {
    let Some(device) = gpu() else { return };
    let mut cases = vec![
        // Triangle attention: one bias for all rows; odd Q and K.
        Case::new(3, 4, 37, 37, 32, Some(1)),
        Case::new(2, 4, 129, 129, 32, Some(1)),
        // MSA row attention with pair bias, per-row bias (G = B), groups (1 < G < B).
        Case::new(4, 8, 33, 65, 16, Some(4)),
        Case::new(6, 2, 40, 71, 8, Some(3)),
        // No bias: MSA column attention; C = 8, Q != K.
        Case::new(5, 8, 129, 37, 8, None),
        // Largest head, multi-tile queries and keys.
        Case::new(2, 2, 300, 257, 64, Some(2)),
        // Odd head dims and one query / one key.
        Case::new(2, 3, 1, 1, 5, Some(1)),
        Case::new(2, 3, 19, 3, 3, None),
        // Few query rows, many keys: the keys split over cubes and a combine pass (with the
        // fully masked row, and with K not a multiple of the split).
        Case::new(1, 1, 5, 1000, 32, Some(1)),
        Case::new(2, 2, 20, 300, 16, Some(2)),
        Case::new(2, 8, 64, 517, 8, None),
    ];
    let mut mixed = Case::new(3, 2, 50, 45, 8, Some(1));
    mixed.cv = 16;
    cases.push(mixed);
    let mut shared = Case::new(4, 4, 37, 129, 32, Some(2));
    shared.shared_mask = true;
    cases.push(shared);
    let mut swapped = Case::new(3, 4, 129, 129, 32, Some(1));
    swapped.swapped = true;
    cases.push(swapped);
    let mut swapped = Case::new(4, 8, 37, 61, 8, None);
    swapped.swapped = true;
    cases.push(swapped);
    let mut offset = Case::new(4, 4, 37, 45, 16, Some(2));
    offset.offset = true;
    cases.push(offset.clone());
    offset.swapped = true;
    cases.push(offset);
    for case in &cases {
        check(case, &device);
    }
}

/// Heads of at most 16 keys without a bias, on the one-unit-a-row kernel: the single-sequence
/// MSA column attention (2 rows, 8 heads of 32, swapped views as GatedAttention passes them),
/// the most keys and the widest heads, one key, a shared mask with other value widths, views
/// at an offset; in f32 and in f16.
#[test]
fn few_keys_kernel_matches_reference() {
    let Some(device) = gpu() else { return };
    let mut column = Case::new(256, 8, 2, 2, 32, None);
    column.swapped = true;
    let mut shared = Case::new(6, 3, 9, 5, 16, None);
    shared.shared_mask = true;
    shared.cv = 8;
    let mut offset = Case::new(4, 2, 16, 16, 8, None);
    offset.offset = true;
    offset.swapped = true;
    let cases = [
        column,
        Case::new(3, 4, 16, 16, 64, None),
        Case::new(5, 2, 7, 1, 8, None),
        shared,
        offset,
    ];
    for case in &cases {
        let before = few_keys_launches();
        check(case, &device);
        assert!(
            few_keys_launches() > before,
            "{case:?}: the kernel did not run"
        );
        let data = inputs(case, 9);
        let kernel = run(attention_core_kernel, &data, case, &device, DType::F16);
        let reference = reference_of_f16_inputs(&data, case);
        // As `kernel_matches_reference_f16`: f32 arithmetic, the output rounded to f16.
        let error = relative_error(&kernel, &reference);
        println!("f16 {case:?}: relative error {error:.2e}");
        assert!(error <= 2e-3, "f16 {case:?}: relative error {error:.3e}");
    }
}

/// The f32 reference on the CPU from the inputs the kernel sees in f16.
fn reference_of_f16_inputs(data: &Inputs, case: &Case) -> Vec<f32> {
    run(
        attention_core_reference,
        &data.through_f16(),
        case,
        &cpu(),
        DType::F32,
    )
}

#[test]
fn kernel_matches_reference_f16() {
    let Some(device) = gpu() else { return };
    if !device.supports_dtype(DType::F16) {
        panic!("the GPU adapter has no f16 support");
    }
    for case in [
        Case::new(3, 4, 37, 129, 32, Some(1)),
        Case::new(4, 8, 65, 33, 8, None),
    ] {
        let data = inputs(&case, 5);
        let kernel = run(attention_core_kernel, &data, &case, &device, DType::F16);
        let reference = reference_of_f16_inputs(&data, &case);
        // Same f16 inputs on both sides; the kernel accumulates in f32 and rounds its output to
        // f16 (relative step 2^-11 ~ 4.9e-4).
        let error = relative_error(&kernel, &reference);
        println!("f16 {case:?}: relative error {error:.2e}");
        assert!(error <= 2e-3, "f16 {case:?}: relative error {error:.3e}");
    }
}

/// The tensor-core path (f16, 32-channel heads, enough query rows) against the f32 reference
/// from the same f16-rounded inputs. It runs where the device has f16 matrix instructions;
/// `AF2_EXPECT_MMA=1` makes its absence a failure (set it on NVIDIA GPUs).
#[test]
fn tensor_core_kernel_matches_reference_f16() {
    let Some(device) = gpu() else { return };
    // (case, slope of the logits along the keys in every other query row).
    let mut cases = vec![
        // Triangle attention: partial query and key tiles, one bias for all rows.
        (Case::new(64, 4, 70, 70, 32, Some(1)), None),
        // Per-design bias groups, fully masked last row, K a multiple of the key tile.
        (Case::new(128, 4, 33, 64, 32, Some(4)), None),
        // No bias (MSA column attention), Q != K.
        (Case::new(96, 8, 21, 100, 32, None), None),
        // A bias loaded 4 keys at a time (K a multiple of 4) over a partial last key tile.
        (Case::new(64, 4, 36, 100, 32, Some(2)), None),
        // Whole query and key tiles, as at L = 256.
        (Case::new(16, 4, 256, 256, 32, Some(1)), None),
    ];
    // Swapped views at an offset, as GatedAttention passes them: K not a multiple of 4 (single
    // channels for K and V), then a multiple of 4 (vectors of 4 channels through the views'
    // strides).
    for k in [45, 48] {
        let mut views = Case::new(64, 4, k, k, 32, Some(2));
        views.swapped = true;
        views.offset = true;
        views.shared_mask = true;
        cases.push((views, None));
    }
    // K and V of an odd row stride without a bias: single channels, 2 planes a cube.
    let mut strided = Case::new(64, 8, 24, 40, 32, None);
    strided.odd_stride = true;
    cases.push((strided, None));
    // Logits rising along the keys in every other query row: the max moves on later key
    // tiles, in some rows of a plane and not in others. At 0.6 a key (~19 a tile) the output
    // accumulated so far is rescaled at every tile; at 0.2 (~6.4 a tile, below the kernel's
    // rescale margin of 8) at every other tile, the weights in between above 1.
    for slope in [0.6, 0.2] {
        cases.push((Case::new(64, 4, 40, 150, 32, Some(1)), Some(slope)));
        // Over 64 query rows: cubes of 8 planes (the other case takes 4), the last plane's
        // rows partial, so the rescale runs in planes of whole, partial and empty rows.
        cases.push((Case::new(16, 4, 100, 150, 32, Some(1)), Some(slope)));
    }
    for (case, slope) in cases {
        let mut data = inputs(&case, 9);
        if let Some(slope) = slope {
            data.bias = data.bias.map(|bias| rising_along_keys(bias, &case, slope));
        }
        let before = mma_launches();
        let kernel = run(attention_core_kernel, &data, &case, &device, DType::F16);
        let on_tensor_cores = mma_launches() > before;
        if !on_tensor_cores {
            assert!(
                std::env::var_os("AF2_EXPECT_MMA").is_none(),
                "{case:?}: the tensor-core path did not run"
            );
            println!("no f16 matrix instructions on this device: tensor-core path not tested");
            return;
        }
        let reference = reference_of_f16_inputs(&data, &case);
        // Same f16 inputs on both sides; the weights are rounded to f16 before they multiply V
        // and the output is rounded to f16 (each a relative step of 2^-11 ~ 4.9e-4).
        let error = relative_error(&kernel, &reference);
        println!("tensor cores {case:?} slope {slope:?}: relative error {error:.2e}");
        assert!(
            error <= 2e-3,
            "tensor cores {case:?}: relative error {error:.3e}"
        );
    }
}

/// `bias` plus `slope × key` in the even query rows.
fn rising_along_keys(bias: TensorData, case: &Case, slope: f32) -> TensorData {
    let shape = bias.shape().to_vec();
    let values: Vec<f32> = bias.try_to_vec::<f32>().unwrap();
    let rising = values
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let (key, query) = (i % case.k, (i / case.k) % case.q);
            if query % 2 == 0 {
                x + slope * key as f32
            } else {
                x
            }
        })
        .collect::<Vec<f32>>();
    TensorData::new(rising, shape)
}

/// Large logits: the online softmax must not overflow where the reference's max-shift doesn't.
#[test]
fn kernel_handles_large_logits() {
    let Some(device) = gpu() else { return };
    let case = Case::new(2, 2, 40, 100, 16, Some(1));
    let mut data = inputs(&case, 9);
    let bias: Vec<f32> = data.bias.as_ref().unwrap().try_to_vec::<f32>().unwrap();
    data.bias = Some(TensorData::new(
        bias.into_iter().map(|x| x * 200.0).collect::<Vec<f32>>(),
        [1, 2, 40, 100],
    ));
    let kernel = run(attention_core_kernel, &data, &case, &device, DType::F32);
    let reference = run(attention_core_reference, &data, &case, &cpu(), DType::F32);
    let error = relative_error(&kernel, &reference);
    assert!(error <= 1e-5, "relative error {error:.3e}");
}

/// The public entry point takes the kernel on the GPU and the reference on the CPU.
#[test]
fn attention_core_dispatches_to_the_kernel() {
    let Some(device) = gpu() else { return };
    let q = Tensor::<4>::zeros([1, 1, 4, 8], &device);
    assert!(kernel_supports(&q, &q, &q));
    assert!(!kernel_supports(
        &Tensor::<4>::zeros([1, 1, 4, 8], &cpu()),
        &Tensor::<4>::zeros([1, 1, 4, 8], &cpu()),
        &Tensor::<4>::zeros([1, 1, 4, 8], &cpu()),
    ));
    let wide = Tensor::<4>::zeros([1, 1, 4, 65], &device);
    assert!(!kernel_supports(&wide, &wide, &wide));

    let case = Case::new(3, 4, 37, 37, 16, Some(3));
    let data = inputs(&case, 3);
    let via_entry = run(attention_core, &data, &case, &device, DType::F32);
    let kernel = run(attention_core_kernel, &data, &case, &device, DType::F32);
    assert_eq!(via_entry, kernel);
}

/// GatedAttention (projections, swap_dims views, gating, grouped bias, chunking) on the GPU
/// against the CPU.
#[test]
fn gated_attention_matches_cpu() {
    let Some(device) = gpu() else { return };
    let (b, n, channels, heads, head_dim) = (6, 45, 24, 4, 8);
    let cpu = cpu();
    let build = |device: &Device| {
        let mut attention =
            GatedAttentionConfig::new(channels, channels, heads, head_dim, head_dim, channels)
                .init(device);
        let param3 = |shape: [usize; 3], seed| {
            let data = TensorData::new(values(shape.iter().product(), seed, 0.3), shape);
            Param::from_tensor(Tensor::<3>::from_data(data, device))
        };
        attention.query_w = param3([channels, heads, head_dim], 1);
        attention.key_w = param3([channels, heads, head_dim], 2);
        attention.value_w = param3([channels, heads, head_dim], 3);
        attention.gating_w = Some(param3([channels, heads, head_dim], 4));
        attention.output_w = param3([heads, head_dim, channels], 5);
        attention
    };
    let forward = |attention: &GatedAttention, device: &Device, max_logits: usize| {
        let x = Tensor::<3>::from_data(
            TensorData::new(values(b * n * channels, 6, 1.0), [b, n, channels]),
            device,
        );
        let mask = Tensor::<2>::from_data(
            TensorData::new(
                values(b * n, 7, 1.0)
                    .into_iter()
                    .map(|x| if x < -0.5 { 0.0 } else { 1.0 })
                    .collect::<Vec<f32>>(),
                [b, n],
            ),
            device,
        );
        let bias = Tensor::<4>::from_data(
            TensorData::new(values(3 * heads * n * n, 8, 1.0), [3, heads, n, n]),
            device,
        );
        attention
            .forward_chunked(x.clone(), x, mask, Some(bias), max_logits)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let reference = forward(&build(&cpu), &cpu, usize::MAX);
    for max_logits in [usize::MAX, heads * n * n] {
        let gpu_out = forward(&build(&device), &device, max_logits);
        let error = relative_error(&gpu_out, &reference);
        println!("gated attention (max_logits {max_logits}): relative error {error:.2e}");
        // The projections run on the GPU's matmul, which may round differently from ndarray.
        assert!(error <= 1e-4, "relative error {error:.3e}");
    }
}
