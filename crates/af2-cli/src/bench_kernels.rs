//! `af2 bench-kernels`: the fused attention kernel against the reference attention core.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::{DType, Device, Distribution, Tensor};

use af2_layers::MAX_LOGITS_PER_CHUNK;
use af2_layers::attention::{
    attention_core, attention_core_reference, attention_core_uses_kernel, tensor_core_launches,
};

use crate::device::{describe_device, parse_device};

/// Arguments shared by `af2 bench-kernels` ([`KernelArgs`]) and `af2 bench-block`.
#[derive(clap::Args, Debug)]
#[group(id = "bench_common")]
pub struct Args {
    /// Sequence lengths L.
    #[arg(long, value_delimiter = ',', default_value = "128,256,512")]
    pub lengths: Vec<usize>,
    /// Timed repetitions per row (after the warm-up calls).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Backend: auto, cpu, ndarray, flex, wgpu, vulkan, metal.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Run in half precision (the attention kernel accumulates in f32).
    #[arg(long)]
    pub f16: bool,
}

/// Arguments of `af2 bench-kernels`.
#[derive(clap::Args, Debug)]
pub struct KernelArgs {
    #[command(flatten)]
    pub common: Args,
    /// Time the kernels alone, not the reference forms beside them (no speedup column).
    #[arg(long)]
    pub kernels_only: bool,
}

/// Rows of the linear-kernel table of `af2 bench-kernels` (with `--f16`): the pair stack's row
/// counts at L=256 B=1, L=128 B=16 and L=256 B=8.
#[cfg(feature = "wgpu")]
const LINEAR_ROWS: [usize; 3] = [65_536, 262_144, 524_288];

/// Inputs of one attention core call.
struct Problem {
    name: &'static str,
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<2>,
    bias: Tensor<4>,
}

impl Problem {
    /// `b` rows of `h` heads attending over `l` keys (C = 32), one `[1, H, L, L]` bias.
    fn new(
        name: &'static str,
        b: usize,
        h: usize,
        l: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        let c = 32;
        let normal = |shape: [usize; 4], std: f64| {
            Tensor::<4>::random(shape, Distribution::Normal(0.0, std), device).cast(dtype)
        };
        // Every 7th key of every row masked.
        let mask = Tensor::<1, burn::tensor::Int>::arange(0..(b * l) as i64, device)
            .remainder_scalar(7)
            .not_equal_elem(3)
            .float()
            .reshape([b, l])
            .cast(dtype);
        Self {
            name,
            q: normal([b, h, l, c], (c as f64).powf(-0.5)),
            k: normal([b, h, l, c], 1.0),
            v: normal([b, h, l, c], 1.0),
            mask,
            bias: normal([1, h, l, l], 1.0),
        }
    }

    fn kernel(&self) -> Tensor<4> {
        attention_core(
            self.q.clone(),
            self.k.clone(),
            self.v.clone(),
            self.mask.clone(),
            Some(self.bias.clone()),
        )
    }

    /// The reference in chunks of batch rows, so that no logits buffer exceeds
    /// [`MAX_LOGITS_PER_CHUNK`] elements (at L = 512 the triangle logits are 2 GiB whole).
    fn reference(&self) -> Tensor<4> {
        let [b, h, q_len, _] = self.q.dims();
        let k_len = self.k.dims()[2];
        let rows = (MAX_LOGITS_PER_CHUNK / (h * q_len * k_len)).clamp(1, b);
        let chunks: Vec<Tensor<4>> = (0..b)
            .step_by(rows)
            .map(|start| {
                let len = rows.min(b - start);
                attention_core_reference(
                    self.q.clone().narrow(0, start, len),
                    self.k.clone().narrow(0, start, len),
                    self.v.clone().narrow(0, start, len),
                    self.mask.clone().narrow(0, start, len),
                    Some(self.bias.clone()),
                )
            })
            .collect();
        Tensor::cat(chunks, 0)
    }
}

/// Milliseconds per call of a timed function.
pub(crate) struct Timing {
    /// Mean time per call, from the first call to the device finishing the last.
    pub total_ms: f64,
    /// Mean host time to enqueue one call: near `total_ms`, the host is the bottleneck.
    pub submit_ms: f64,
}

/// Times `f` after warm-up calls (shader compilation, autotune, fusion search), with the
/// device synchronised before the clock starts and after the last call. Burn's fusion settles
/// on its fused kernels over the first few calls, so there are four warm-ups, then the
/// faster of two timed rounds is kept.
pub(crate) fn time<T>(device: &Device, repeats: usize, f: impl Fn() -> T) -> Result<Timing> {
    for _ in 0..4 {
        drop(f());
        device.sync()?;
    }
    let first = time_round(device, repeats, &f)?;
    let second = time_round(device, repeats, &f)?;
    Ok(if first.total_ms < second.total_ms {
        first
    } else {
        second
    })
}

fn time_round<T>(device: &Device, repeats: usize, f: &impl Fn() -> T) -> Result<Timing> {
    let start = Instant::now();
    // Outputs stay alive until the device is synchronised, so none is skipped as unused.
    let outputs: Vec<T> = (0..repeats).map(|_| f()).collect();
    let submit_ms = start.elapsed().as_secs_f64() * 1e3 / repeats as f64;
    device.sync()?;
    let total_ms = start.elapsed().as_secs_f64() * 1e3 / repeats as f64;
    drop(outputs);
    Ok(Timing {
        total_ms,
        submit_ms,
    })
}

/// Runs the command.
pub fn run(kernel_args: &KernelArgs) -> Result<()> {
    let args = &kernel_args.common;
    let with_reference = !kernel_args.kernels_only;
    if args.lengths.contains(&0) || args.repeats == 0 {
        bail!("--lengths and --repeats must be positive");
    }
    let device = parse_device(&args.device)?;
    let dtype = if args.f16 { DType::F16 } else { DType::F32 };
    println!(
        "af2 bench-kernels: attention core, device {}, {dtype:?}, C = 32, bias [1, H, L, L], {} repeats",
        describe_device(&args.device, &device),
        args.repeats
    );
    #[cfg(feature = "wgpu")]
    if let Some(features) = af2_layers::describe_matrix_features(&device) {
        println!("matrix instructions: {features}");
    }
    println!(
        "{:<18} {:>5} {:>16} {:>11} {:>11} {:>8} {:>11} {:>10}",
        "shape", "L", "[B, H, Q=K, C]", "kernel ms", "ref ms", "speedup", "max|diff|", "max|ref|"
    );
    for &l in &args.lengths {
        let problems = [
            Problem::new("triangle attention", l, 4, l, dtype, &device),
            Problem::new("MSA row attention", 1, 8, l, dtype, &device),
        ];
        for problem in &problems {
            let [b, h, _, c] = problem.q.dims();
            let launches = tensor_core_launches();
            let kernel_ms = time(&device, args.repeats, || problem.kernel())?.total_ms;
            let tensor_cores = tensor_core_launches() > launches;
            let path = if tensor_cores {
                " (tensor cores)"
            } else if attention_core_uses_kernel(&problem.q, &problem.k, &problem.v) {
                ""
            } else {
                " (no kernel: reference twice)"
            };
            let shape = format!("[{b}, {h}, {l}, {c}]");
            if !with_reference {
                println!(
                    "{:<18} {l:>5} {shape:>16} {kernel_ms:>11.3} {:>11} {:>8} {:>11} {:>10}{path}",
                    problem.name, "-", "-", "-", "-"
                );
                continue;
            }
            let reference_ms = time(&device, args.repeats, || problem.reference())?.total_ms;
            let kernel = problem.kernel().cast(DType::F32);
            let reference = problem.reference().cast(DType::F32);
            let diff: f32 = (kernel - reference.clone()).abs().max().into_scalar();
            let peak: f32 = reference.abs().max().into_scalar();
            println!(
                "{:<18} {l:>5} {shape:>16} {kernel_ms:>11.3} {reference_ms:>11.3} {:>7.2}x {diff:>11.2e} {peak:>10.3}{path}",
                problem.name,
                reference_ms / kernel_ms,
            );
        }
    }
    #[cfg(feature = "wgpu")]
    if args.f16 {
        linear_table(&device, args.repeats, with_reference)?;
        triangle_sum_table(&device, &args.lengths, args.repeats)?;
    }
    Ok(())
}

/// The triangle multiplication's sums `[G, L, L] · [G, L, L]ᵀ` (G = 128 channels of one design
/// and of eight) on the tensor-core batched kernel against Burn's matmul, with the largest
/// difference between the two relative to the largest output.
#[cfg(feature = "wgpu")]
fn triangle_sum_table(device: &Device, lengths: &[usize], repeats: usize) -> Result<()> {
    use af2_layers::batched_matmul_kernel::try_batched_matmul_nt;
    println!(
        "{:<26} {:>5} {:>5} {:>11} {:>11} {:>8} {:>9} {:>10}",
        "triangle sum [G,L,L]·ᵀ",
        "G",
        "L",
        "kernel ms",
        "burn ms",
        "speedup",
        "TFLOPS",
        "max|diff|"
    );
    for &l in lengths {
        for g in [128, 1024] {
            let normal = || {
                Tensor::<3>::random([g, l, l], Distribution::Normal(0.0, 1.0), device)
                    .cast(DType::F16)
            };
            let (a, b) = (normal(), normal());
            let burn = || a.clone().matmul(b.clone().swap_dims(1, 2));
            let Some(kernel_out) = try_batched_matmul_nt(&a, &b) else {
                println!("{:<26} {g:>5} {l:>5} (kernel not offered)", "triangle sum");
                continue;
            };
            let reference = burn();
            let peak: f32 = reference.clone().abs().max().cast(DType::F32).into_scalar();
            let diff: f32 = (kernel_out - reference)
                .abs()
                .max()
                .cast(DType::F32)
                .into_scalar();
            let kernel_ms = time(device, repeats, || try_batched_matmul_nt(&a, &b))?.total_ms;
            let burn_ms = time(device, repeats, burn)?.total_ms;
            let flops = 2.0 * (g * l * l * l) as f64;
            println!(
                "{:<26} {g:>5} {l:>5} {kernel_ms:>11.3} {burn_ms:>11.3} {:>7.2}x {:>9.1} {:>10.2e}",
                "triangle sum",
                burn_ms / kernel_ms,
                flops / kernel_ms / 1e9,
                diff / peak.max(1e-30),
            );
        }
    }
    Ok(())
}

/// The f16 linear kernel (plain, transposed, gated, with a ReLU or a residual) against Burn's
/// matmul and bias add, on the pair stack's `[rows, K] · [K, N]` products.
#[cfg(feature = "wgpu")]
fn linear_table(device: &Device, repeats: usize, with_reference: bool) -> Result<()> {
    use af2_layers::activation;
    use af2_layers::linear::Epilogue;
    use af2_layers::linear_kernel::{
        EDGE_BLOCK, try_gated_edges_kernel, try_linear_kernel_transposed, try_linear_kernel_with,
    };
    println!(
        "{:<26} {:>8} {:>5} {:>5} {:>11} {:>11} {:>8} {:>9}",
        "linear [rows, K] x [K, N]", "rows", "K", "N", "kernel ms", "burn ms", "speedup", "GB/s"
    );
    let normal = |shape: [usize; 2], scale: f64| {
        Tensor::<2>::random(shape, Distribution::Normal(0.0, scale), device).cast(DType::F16)
    };
    for rows in LINEAR_ROWS {
        for (name, k, n) in [
            ("plain", 128, 128),
            ("plain", 128, 512),
            ("transposed", 128, 512),
            ("gated edges", 128, 512),
            ("relu", 128, 512),
            ("residual", 512, 128),
        ] {
            let x = normal([rows, k], 1.0);
            let w = normal([k, n], (k as f64).powf(-0.5));
            let b = normal([1, n], 1.0).reshape([n]);
            let residual = (name == "residual").then(|| normal([rows, n], 1.0));
            let epilogue = Epilogue {
                relu: name == "relu",
                residual: residual.clone(),
                ..Epilogue::default()
            };
            let mask = Tensor::<1>::ones([rows], device).cast(DType::F16);
            let kernel = || match name {
                "transposed" => try_linear_kernel_transposed(&x, &w, &b),
                "gated edges" => try_gated_edges_kernel(&x, &w, &b, &mask),
                _ => try_linear_kernel_with(&x, &w, Some(&b), &epilogue),
            };
            if kernel().is_none() {
                println!("{name:<26} {rows:>8} {k:>5} {n:>5} (kernel not offered)");
                continue;
            }
            let kernel_ms = time(device, repeats, || kernel().unwrap())?.total_ms;
            // Burn's form of each: the fallbacks the layers use.
            let burn = || match name {
                "gated edges" => {
                    let y = x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>();
                    let [projection, gate] = [0, 1].map(|half| {
                        y.clone()
                            .reshape([rows, n / EDGE_BLOCK, 2, EDGE_BLOCK / 2])
                            .narrow(2, half, 1)
                            .reshape([rows, n / 2])
                    });
                    (projection * activation::sigmoid(gate) * mask.clone().unsqueeze_dim::<2>(1))
                        .transpose()
                }
                "transposed" => {
                    w.clone().transpose().matmul(x.clone().transpose())
                        + b.clone().unsqueeze_dim::<2>(1)
                }
                "relu" => (x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>())
                    .clamp(0.0, f32::INFINITY),
                "residual" => {
                    x.clone().matmul(w.clone())
                        + b.clone().unsqueeze::<2>()
                        + residual.clone().expect("residual row")
                }
                _ => x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>(),
            };
            let (burn_ms, speedup) = if with_reference {
                let burn_ms = time(device, repeats, burn)?.total_ms;
                (
                    format!("{burn_ms:.3}"),
                    format!("{:.2}x", burn_ms / kernel_ms),
                )
            } else {
                ("-".to_string(), "-".to_string())
            };
            // f16 bytes read (x, a residual) and written (y; half of it for the gated edges).
            let written = if name == "gated edges" { n / 2 } else { n };
            let read = k + if residual.is_some() { n } else { 0 };
            let bytes = 2.0 * (rows * (read + written)) as f64;
            println!(
                "{name:<26} {rows:>8} {k:>5} {n:>5} {kernel_ms:>11.3} {burn_ms:>11} {speedup:>8} {:>9.0}",
                bytes / kernel_ms / 1e6,
            );
        }
    }
    Ok(())
}
