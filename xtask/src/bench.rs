//! `cargo xtask bench-cpu`: seconds per prediction on the CPU reference backend.
//!
//! The case matches the GPU issue's benchmark: single sequence plus one template, R recycles.
//! Weights come from any params file (their widths set the model); features are synthetic but
//! fully valid (every mask on), so every path is exercised. Timing is wall clock around the
//! forward pass after one warm-up pass at the smallest length.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use af2_model::features::benchmark_features;
use af2_model::outputs::to_host;
use af2_tests::{build_model, reference_device};

/// Prints seconds per prediction for each length.
pub fn run(params: &Path, lengths: &[usize], recycles: usize) -> Result<()> {
    let device = reference_device();
    let weights = af2_io::weights::load_weights(params)?;
    let model = build_model(&weights, &device)?;
    let d = &weights.dims;
    println!(
        "CPU reference (ndarray), weights {} (c_m {}, c_z {}, {} Evoformer blocks), {} recycles, {} threads",
        params.display(),
        d.msa_channel,
        d.pair_channel,
        d.evoformer_blocks,
        recycles,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let warm = benchmark_features(lengths.iter().copied().min().unwrap_or(16).min(16));
    let _ = to_host(model.forward_recycled(&[warm], None, &device).pair);
    println!("{:>6} {:>12} {:>14}", "L", "passes", "s/prediction");
    for &n in lengths {
        let features = vec![benchmark_features(n); recycles + 1];
        let start = Instant::now();
        let out = model.forward_recycled(&features, None, &device);
        let _ = to_host(out.structure.final_atom37);
        println!(
            "{n:>6} {:>12} {:>14.2}",
            recycles + 1,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
