//! Layers whose f16 GPU path finishes in the linear kernel's output stage (the triangle
//! multiplication's gated edges, gate and residual; the starting-node triangle attention's
//! residual; the outer product mean's bias, division and residual; the transition's ReLU)
//! against the same layers in f32 on the CPU, from the same f16-rounded parameters and inputs
//! (`AF2_GPU_TESTS=1`; without it the tests say they were skipped and pass).
#![cfg(feature = "cube")]

mod common;

use af2_layers::batched_matmul_kernel::batched_matmul_launches;
use af2_layers::linear_kernel::{fused_stage_launches, kernel_supports};
use af2_layers::{
    OuterProductMean, OuterProductMeanConfig, TransitionConfig, TriangleAttentionConfig,
    TriangleDirection, TriangleMultiplicationConfig,
};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};
use common::{cpu, gpu, offered, relative_error, tensor_in, through_f16, values};

/// Every float parameter replaced by deterministic values of scale `1/sqrt(first axis)`,
/// rounded through f16, on `device` in `dtype`.
struct Randomise {
    device: Device,
    dtype: DType,
    seed: u64,
}

impl ModuleMapper for Randomise {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.seed += 1;
        let (device, dtype, seed) = (self.device.clone(), self.dtype, self.seed);
        param.map(|t| {
            let shape = t.dims();
            let n = shape.iter().product();
            let scale = (shape[0] as f32).powf(-0.5);
            let data = TensorData::new(values(n, seed, scale), shape);
            tensor_in::<D>(&through_f16(&data), &device, dtype)
        })
    }
}

/// The same random module on the CPU in f32 and on the GPU in f16.
fn both<M: Module>(init: impl Fn(&Device) -> M, gpu: &Device) -> (M, M) {
    let make = |device: &Device, dtype| {
        init(device).map(&mut Randomise {
            device: device.clone(),
            dtype,
            seed: 0,
        })
    };
    (make(&cpu(), DType::F32), make(gpu, DType::F16))
}

/// A `[1, n, n, c]` pair (rounded through f16) and a mask with about a third of the pairs off.
fn pair_and_mask(n: usize, c: usize) -> (TensorData, TensorData) {
    let pair = TensorData::new(values(n * n * c, 77, 0.25), [1, n, n, c]);
    let mask: Vec<f32> = values(n * n, 78, 1.0)
        .into_iter()
        .map(|v| if v < -0.3 { 0.0 } else { 1.0 })
        .collect();
    (through_f16(&pair), TensorData::new(mask, [1, n, n]))
}

/// `max |gpu - cpu| / max |cpu - input|`: the difference of two outputs relative to the
/// largest update (the output less its input, whose residual would otherwise dominate).
fn compare(gpu: Tensor<4>, cpu: Tensor<4>, input: &TensorData) -> f32 {
    let gpu: Vec<f32> = gpu.cast(DType::F32).into_data().try_to_vec().unwrap();
    let cpu: Vec<f32> = cpu.into_data().try_to_vec().unwrap();
    let input: Vec<f32> = input.clone().try_to_vec().unwrap();
    let update = |out: &[f32]| -> Vec<f32> { out.iter().zip(&input).map(|(o, x)| o - x).collect() };
    relative_error(&update(&gpu), &update(&cpu))
}

/// Whether the f16 linear kernel runs `[rows, c] · [c, c]` here (skipping, or failing with
/// `AF2_EXPECT_MMA`, where not).
fn kernel_here(device: &Device, rows: usize, c: usize) -> bool {
    let x = Tensor::<2>::zeros([rows, c], (device, DType::F16));
    let supported = kernel_supports(&x, &x.clone().reshape([c, rows]).narrow(1, 0, c));
    offered(supported, "fused layers")
}

// f16 activations through a LayerNorm, two projections, a sum over 64 products and a second
// LayerNorm, and an output rounded to f16 beside a residual of up to 0.25: a few 1e-3 of the
// largest update; 1e-2 leaves room, while a misplaced gate, mask or residual is an error of
// order one.
const F16_LAYER: f32 = 1e-2;

/// The pair layer `init` builds, run by `forward` (`pair`, `mask`) on the CPU in f32 and on
/// the GPU in f16 from the same random parameters: the relative error of the GPU's update.
/// With `fused`, the GPU run must have taken a fused output stage (see
/// [`expect_fused_stages`]).
fn residual_error<M: Module>(
    device: &Device,
    init: impl Fn(&Device) -> M,
    forward: impl Fn(&M, Tensor<4>, Tensor<3>) -> Tensor<4>,
    (pair, mask): (&TensorData, &TensorData),
    fused: bool,
) -> f32 {
    let (on_cpu, on_gpu) = both(init, device);
    let run = |module: &M, device: &Device, dtype| {
        forward(
            module,
            tensor_in(pair, device, dtype),
            tensor_in(mask, device, dtype),
        )
    };
    let cpu_out = run(&on_cpu, &cpu(), DType::F32);
    let launches = fused_stage_launches();
    let gpu_out = run(&on_gpu, device, DType::F16);
    let error = compare(gpu_out, cpu_out, pair);
    if fused {
        expect_fused_stages(launches);
    }
    error
}

/// With `AF2_EXPECT_MMA` set, fails unless the kernel ran a fused output stage since `before`
/// launches (a layer that fell back to Burn's elementwise passes would pass the comparison).
fn expect_fused_stages(before: usize) {
    if std::env::var_os("AF2_EXPECT_MMA").is_some() {
        assert!(
            fused_stage_launches() > before,
            "the layer ran without the linear kernel's fused output stages"
        );
    }
}

/// At L=64 the sums stay on Burn's matmul; at L=256 they take the tensor-core kernel, and
/// incoming edges then sum over the first index in place (neither the pairs nor the mask
/// transposed first).
#[test]
fn triangle_multiplication_residual_f16_matches_f32() {
    let Some(device) = gpu() else { return };
    let c = 128;
    for n in [64, 256] {
        if !kernel_here(&device, n * n, c) {
            return;
        }
        let (pair, mask) = pair_and_mask(n, c);
        for direction in [TriangleDirection::Outgoing, TriangleDirection::Incoming] {
            let config = TriangleMultiplicationConfig::new(c, c, direction);
            let launches = batched_matmul_launches();
            let error = residual_error(
                &device,
                |d| config.init(d),
                |layer, pair, mask| layer.forward_residual(pair, mask),
                (&pair, &mask),
                true,
            );
            if n == 256 && std::env::var_os("AF2_EXPECT_MMA").is_some() {
                assert_eq!(
                    batched_matmul_launches(),
                    launches + 1,
                    "{direction:?}: sum kernel"
                );
            }
            println!("triangle multiplication {direction:?}, L={n}: relative error {error:.2e}");
            assert!(
                error <= F16_LAYER,
                "{direction:?}, L={n}: relative error {error:.3e}"
            );
        }
    }
}

#[test]
fn triangle_attention_residual_f16_matches_f32() {
    let Some(device) = gpu() else { return };
    let (n, c) = (64, 128);
    if !kernel_here(&device, n * n, c) {
        return;
    }
    let (pair, mask) = pair_and_mask(n, c);
    for ending_node in [false, true] {
        let config = TriangleAttentionConfig::new(c, 4, 32, ending_node);
        let error = residual_error(
            &device,
            |d| config.init(d),
            |layer, pair, mask| layer.forward_residual(pair, mask),
            (&pair, &mask),
            // Around the ending node the residual stays a separate add.
            !ending_node,
        );
        println!("triangle attention, ending node {ending_node}: relative error {error:.2e}");
        assert!(
            error <= F16_LAYER,
            "ending node {ending_node}: relative error {error:.3e}"
        );
    }
}

#[test]
fn transition_f16_matches_f32() {
    let Some(device) = gpu() else { return };
    let (n, c) = (64, 128);
    if !kernel_here(&device, n * n, c) {
        return;
    }
    let (pair, _) = pair_and_mask(n, c);
    let config = TransitionConfig::new(c, 4 * c);
    let (on_cpu, on_gpu) = both(|d| config.init(d), &device);
    let cpu_out = on_cpu.forward(tensor_in::<4>(&pair, &cpu(), DType::F32));
    let launches = fused_stage_launches();
    let gpu_out = on_gpu.forward(tensor_in::<4>(&pair, &device, DType::F16));
    // The transition returns the update alone: compare against a zero input.
    let zeros = TensorData::new(vec![0f32; n * n * c], [1, n, n, c]);
    let error = compare(gpu_out, cpu_out, &zeros);
    expect_fused_stages(launches);
    println!("pair transition: relative error {error:.2e}");
    assert!(error <= F16_LAYER, "relative error {error:.3e}");
}

/// A `[1, s, n, c]` MSA (rounded through f16) and its `[1, s, n]` mask with about a third of
/// the entries off (the first row kept whole, so that every pair has a count).
fn msa_and_mask(s: usize, n: usize, c: usize) -> (TensorData, TensorData) {
    let msa = TensorData::new(values(s * n * c, 91, 1.0), [1, s, n, c]);
    let mask: Vec<f32> = values(s * n, 92, 1.0)
        .into_iter()
        .enumerate()
        .map(|(i, v)| if i >= n && v < -0.3 { 0.0 } else { 1.0 })
        .collect();
    (through_f16(&msa), TensorData::new(mask, [1, s, n]))
}

/// One design's outer product mean in the contracted order: its last product with the bias,
/// the per-pair division and the residual in one linear-kernel pass.
#[test]
fn outer_product_mean_residual_f16_matches_f32() {
    let Some(device) = gpu() else { return };
    let (s, n, c_m, c_z) = (2, 64, 256, 128);
    if !kernel_here(&device, n * n, s * 32) {
        return;
    }
    let (msa, mask) = msa_and_mask(s, n, c_m);
    let (pair, _) = pair_and_mask(n, c_z);
    let config = OuterProductMeanConfig::new(c_m, 32, c_z);
    let (on_cpu, on_gpu) = both(|d| config.init(d), &device);
    let run = |opm: &OuterProductMean, device: &Device, dtype| {
        let mask = tensor_in::<3>(&mask, device, dtype);
        let counts = OuterProductMean::pair_counts(mask.clone());
        let (msa, pair) = (
            tensor_in(&msa, device, dtype),
            tensor_in(&pair, device, dtype),
        );
        opm.forward_residual_with_counts(msa, mask, counts, pair)
    };
    let cpu_out = run(&on_cpu, &cpu(), DType::F32);
    let launches = fused_stage_launches();
    let gpu_out = run(&on_gpu, &device, DType::F16);
    // Comparing reads the output back, so the kernels have run before the count is checked.
    let error = compare(gpu_out, cpu_out, &pair);
    expect_fused_stages(launches);
    println!("outer product mean, S={s}: relative error {error:.2e}");
    assert!(error <= F16_LAYER, "relative error {error:.3e}");
}
