//! `af2 bench`: time predictions on any compiled backend.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::Device;

use af2_io::weights::{ModelDims, load_weights};
use af2_model::features::benchmark_features;
use af2_model::model::{AlphaFold, AlphaFoldConfig, StageTimes};
use af2_model::outputs::to_host;
use af2_model::weights::load_module;

use crate::device::parse_device;

/// Arguments of `af2 bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Weights to time (npz or safetensors). Without it, the released model_1_ptm architecture
    /// with unloaded (zero) parameters: the same arithmetic, no weight file needed.
    #[arg(long)]
    params: Option<std::path::PathBuf>,
    /// Sequence lengths.
    #[arg(long, value_delimiter = ',', default_value = "128,256,512")]
    lengths: Vec<usize>,
    /// Recycles (passes = recycles + 1).
    #[arg(long, default_value_t = 3)]
    recycles: usize,
    /// Timed repetitions per length (after one warm-up at that length).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Backend: auto, cpu, ndarray, flex, wgpu, vulkan, metal.
    #[arg(long, default_value = "auto")]
    device: String,
}

fn build(args: &Args, device: &Device) -> Result<(AlphaFold, String)> {
    match &args.params {
        Some(path) => {
            let weights = load_weights(path)?;
            let mut model = AlphaFoldConfig::from_dims(&weights.dims).init(device);
            load_module(&mut model, &weights.native)?;
            Ok((model, path.display().to_string()))
        }
        None => {
            let dims = ModelDims::model_1_ptm();
            Ok((
                AlphaFoldConfig::from_dims(&dims).init(device),
                "model_1_ptm architecture, zero parameters".into(),
            ))
        }
    }
}

fn predict_seconds(model: &AlphaFold, n: usize, passes: usize, device: &Device) -> f64 {
    let features = vec![benchmark_features(n); passes];
    let start = Instant::now();
    let out = model.forward_recycled(&features, None, device);
    // Reading the result back waits for the device.
    let _ = to_host(out.structure.final_atom37);
    start.elapsed().as_secs_f64()
}

/// One prediction with the device synchronised after every stage.
fn stage_seconds(model: &AlphaFold, n: usize, passes: usize, device: &Device) -> StageTimes {
    let features = benchmark_features(n);
    let mut prev = model.zero_state(n, device);
    let mut times = StageTimes::default();
    for _ in 0..passes {
        prev = model
            .forward_iteration_timed(&features, prev, device, &mut times)
            .recycled();
    }
    times
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let process_start = Instant::now();
    let device = parse_device(&args.device)?;
    let (model, what) = build(args, &device)?;
    let passes = args.recycles + 1;
    println!(
        "af2 bench: {what}; device {}; {passes} passes per prediction",
        args.device
    );
    println!(
        "{:>6} {:>12} {:>12} {:>12}",
        "L", "first s", "best s", "mean s"
    );
    let mut stages = Vec::new();
    for &n in &args.lengths {
        let first = predict_seconds(&model, n, passes, &device);
        let times: Vec<f64> = (0..args.repeats.max(1))
            .map(|_| predict_seconds(&model, n, passes, &device))
            .collect();
        let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!("{n:>6} {first:>12.3} {best:>12.3} {mean:>12.3}");
        stages.push((n, stage_seconds(&model, n, passes, &device)));
    }
    println!("per stage, s per prediction (device synchronised after each stage):");
    println!(
        "{:>6} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "L", "embeddings", "extra MSA", "evoformer", "structure", "heads"
    );
    for (n, t) in &stages {
        println!(
            "{n:>6} {:>11.3} {:>11.3} {:>11.3} {:>11.3} {:>11.3}",
            t.embeddings, t.extra_msa, t.evoformer, t.structure_module, t.heads
        );
    }
    println!(
        "total wall time since process start: {:.1} s",
        process_start.elapsed().as_secs_f64()
    );
    Ok(())
}
