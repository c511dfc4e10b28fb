//! `af2 bench`: time predictions on any compiled backend and print one table.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;

use af2_io::weights::{ModelDims, load_weights};
use af2_model::features::{BatchFeatures, Features, benchmark_features};
use af2_model::model::{AlphaFold, AlphaFoldConfig, RecycleOptions, StageTimes};
use af2_model::outputs::to_host;
use af2_model::padding::{padded_length, residue_multiple};
use af2_model::precision::Precision;
use af2_model::predict::{PdbLabels, PredictionInputs, predict, write_prediction_pdb};

use crate::device::{describe_device, parse_device};
use crate::kernel_cache::ensure_finite;
use crate::weights::build_model;

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
    /// Designs per batched forward pass to time at every length (1 = one design at a time).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch_sizes: Vec<usize>,
    /// Length of the binder-target complex for the designs-per-hour line (0: skip it).
    #[arg(long, default_value_t = 250)]
    complex_length: usize,
    /// Recycles (passes = recycles + 1).
    #[arg(long, default_value_t = 3)]
    recycles: usize,
    /// Timed repetitions per row (after one warm-up call for that row).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Backend: auto, cpu, ndarray, flex, wgpu, vulkan, metal.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Trunk precision: f32, or f16 (template, extra-MSA and Evoformer stacks in half precision).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Skip the per-stage breakdown (four extra predictions per length: a warm-up, then the
    /// median of three).
    #[arg(long)]
    no_stages: bool,
}

fn build(args: &Args, device: &Device) -> Result<(AlphaFold, String)> {
    match &args.params {
        Some(path) => {
            let weights = load_weights(path)?;
            let model = build_model(&weights, args.precision, device)?;
            Ok((model, path.display().to_string()))
        }
        None => Ok((
            AlphaFoldConfig::from_dims(&ModelDims::model_1_ptm())
                .init(device)
                .with_precision(args.precision),
            "model_1_ptm architecture, zero parameters".to_string(),
        )),
    }
}

/// Seconds for one batched prediction of `designs` (all passes, read back to the host), and
/// whether every predicted coordinate came back finite (a NaN in a replayed or batched pass
/// would otherwise go unseen: only the first prediction is written out).
/// `designs` are padded ([`padded_benchmark_features`]); `n` is their real length.
fn batch_seconds(
    model: &AlphaFold,
    designs: &[Features],
    n: usize,
    passes: usize,
    device: &Device,
) -> (f64, bool) {
    let start = Instant::now();
    let batch = BatchFeatures::new(designs).expect("copies of one design share their shapes");
    let out = model.forward_recycled_batch(&batch, passes - 1, device);
    // Reading the result back waits for the device.
    let atoms = to_host(out.structure.final_atom37.narrow(1, 0, n));
    let seconds = start.elapsed().as_secs_f64();
    (seconds, atoms.data.iter().all(|v| v.is_finite()))
}

/// Timed predictions behind each per-stage figure (after one untimed prediction of the same
/// kind, which compiles what the synchronised path runs that the timed rows did not).
const STAGE_RUNS: usize = 3;

/// Per stage, the median over [`STAGE_RUNS`] predictions with the device synchronised after
/// every stage, after one such prediction untimed.
fn stage_seconds(model: &AlphaFold, n: usize, passes: usize, device: &Device) -> StageTimes {
    let features = padded_benchmark_features(n, device);
    let mut runs = Vec::with_capacity(STAGE_RUNS);
    for run in 0..=STAGE_RUNS {
        let mut times = StageTimes::default();
        model.forward_recycled_timed(&features, passes, device, &mut times);
        if run > 0 {
            runs.push(times);
        }
    }
    median_stage_times(&runs)
}

/// Each stage's median over `runs` (the upper median for an even count).
fn median_stage_times(runs: &[StageTimes]) -> StageTimes {
    let median = |stage: fn(&StageTimes) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(stage).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    StageTimes {
        embeddings: median(|t| t.embeddings),
        extra_msa: median(|t| t.extra_msa),
        evoformer: median(|t| t.evoformer),
        structure_module: median(|t| t.structure_module),
        heads: median(|t| t.heads),
    }
}

/// The first prediction of the process, as `af2 predict` makes it, written as a PDB. Returns
/// the seconds since `process_start` at which each pass ended (its CA read back).
fn first_pdb(
    model: &AlphaFold,
    n: usize,
    recycles: usize,
    device: &Device,
    process_start: Instant,
) -> Result<Vec<f64>> {
    let features = [benchmark_features(n)];
    let asym_id = vec![0i64; n];
    let inputs = PredictionInputs::new(&features, &asym_id);
    let mut pass_ends = Vec::new();
    let prediction = predict(
        model,
        &inputs,
        recycles,
        &RecycleOptions::default(),
        device,
        |_| pass_ends.push(process_start.elapsed().as_secs_f64()),
    );
    ensure_finite(
        &prediction,
        &format!("the first prediction (L={n})"),
        "no PDB written",
    )?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("first.pdb");
    write_prediction_pdb(
        &path,
        &prediction,
        &features[0].aatype,
        &PdbLabels::sequential(&[n]),
        &["af2 bench timing run: zero parameters, not a structure"],
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(pass_ends)
}

/// One row of the table.
struct Row {
    n: usize,
    batch: usize,
    first: f64,
    best: f64,
    mean: f64,
    /// Every prediction of the row gave finite coordinates.
    finite: bool,
}

impl Row {
    fn designs_per_hour(&self) -> f64 {
        3600.0 * self.batch as f64 / self.best
    }
}

/// The benchmark features of length `n`, padded as a prediction on `device` pads them
/// ([`af2_model::padding`]).
fn padded_benchmark_features(n: usize, device: &Device) -> Features {
    benchmark_features(n)
        .padded_to(padded_length(n, residue_multiple(device)))
        .into_owned()
}

fn time_row(model: &AlphaFold, n: usize, batch: usize, args: &Args, device: &Device) -> Row {
    let passes = args.recycles + 1;
    let designs = vec![padded_benchmark_features(n, device); batch];
    let (first, first_finite) = batch_seconds(model, &designs, n, passes, device);
    let runs: Vec<(f64, bool)> = (0..args.repeats.max(1))
        .map(|_| batch_seconds(model, &designs, n, passes, device))
        .collect();
    let times: Vec<f64> = runs.iter().map(|&(seconds, _)| seconds).collect();
    Row {
        n,
        batch,
        first,
        best: times.iter().cloned().fold(f64::INFINITY, f64::min),
        mean: times.iter().sum::<f64>() / times.len() as f64,
        finite: first_finite && runs.iter().all(|&(_, finite)| finite),
    }
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let process_start = Instant::now();
    if args.batch_sizes.contains(&0) || args.lengths.contains(&0) {
        bail!("--lengths and --batch-sizes must be positive");
    }
    let cache = crate::kernel_cache::configured_dir();
    let device = parse_device(&args.device)?;
    let (model, what) = build(args, &device)?;
    let passes = args.recycles + 1;
    println!(
        "af2 bench: {what}; device {}; precision {}; single sequence + 1 template; {passes} passes per prediction",
        describe_device(&args.device, &device),
        args.precision
    );
    match &cache {
        Some((dir, warm)) => println!(
            "kernel cache: {} ({})",
            dir.display(),
            if *warm { "warm" } else { "empty at start" }
        ),
        None => println!("kernel cache: none"),
    }

    let model_ready_s = process_start.elapsed().as_secs_f64();
    let first_n = args.lengths[0];
    let pass_ends = first_pdb(&model, first_n, args.recycles, &device, process_start)?;
    let first_pdb_s = process_start.elapsed().as_secs_f64();
    let pass_ends: Vec<String> = pass_ends.iter().map(|s| format!("{s:.1}")).collect();
    println!(
        "process start to first PDB (L={first_n}, B=1): {first_pdb_s:.1} s (model on the device at {model_ready_s:.1} s; passes ended at {} s)",
        pass_ends.join(", ")
    );

    let mut lengths = args.lengths.clone();
    if args.complex_length > 0 && !lengths.contains(&args.complex_length) {
        lengths.push(args.complex_length);
    }
    println!(
        "{:>6} {:>4} {:>10} {:>13} {:>13} {:>11}",
        "L", "B", "first s", "best s/design", "mean s/design", "designs/h"
    );
    let multiple = residue_multiple(&device);
    if multiple > 1 {
        println!(
            "(residues padded to a multiple of {multiple}, masked, as every prediction on this device)"
        );
    }
    let mut rows = Vec::new();
    for &n in &lengths {
        for &batch in &args.batch_sizes {
            let row = time_row(&model, n, batch, args, &device);
            let b = batch as f64;
            // The row's own line says when its predictions were broken, so that a copied or
            // filtered row cannot pass for a timing of working predictions.
            println!(
                "{:>6} {:>4} {:>10.3} {:>13.3} {:>13.3} {:>11.0}{}",
                row.n,
                row.batch,
                row.first,
                row.best / b,
                row.mean / b,
                row.designs_per_hour(),
                if row.finite { "" } else { "  NON-FINITE" }
            );
            // Whether the row's passes were recorded once and replayed (GPU builds; layouts
            // over the recording limit have no entry).
            let layout = format!("B={batch} N={}:", padded_length(n, multiple));
            for status in model
                .pass_recordings()
                .iter()
                .filter(|s| s.starts_with(&layout))
            {
                println!("{:>6} passes of {status}", "");
            }
            if !row.finite {
                println!(
                    "{:>6} non-finite coordinates: these timings are of broken predictions",
                    ""
                );
            }
            rows.push(row);
        }
    }
    if args.complex_length > 0 {
        let best = rows
            .iter()
            .filter(|r| r.n == args.complex_length)
            .max_by(|a, b| a.designs_per_hour().total_cmp(&b.designs_per_hour()))
            .expect("the complex length was timed");
        println!(
            "designs per hour, {}-residue complex: {:.0} (B={})",
            args.complex_length,
            best.designs_per_hour(),
            best.batch
        );
    }

    if !args.no_stages {
        println!(
            "per stage, s per prediction (B=1, device synchronised after each stage; median of \
             {STAGE_RUNS} after a warm-up):"
        );
        println!(
            "{:>6} {:>11} {:>11} {:>11} {:>11} {:>11}",
            "L", "embeddings", "extra MSA", "evoformer", "structure", "heads"
        );
        for &n in &args.lengths {
            let t = stage_seconds(&model, n, passes, &device);
            println!(
                "{n:>6} {:>11.3} {:>11.3} {:>11.3} {:>11.3} {:>11.3}",
                t.embeddings, t.extra_msa, t.evoformer, t.structure_module, t.heads
            );
        }
    }
    println!(
        "total wall time since process start: {:.1} s",
        process_start.elapsed().as_secs_f64()
    );
    let broken = rows.iter().filter(|row| !row.finite).count();
    if broken > 0 {
        let hint = crate::kernel_cache::non_finite_hint()
            .map(|hint| format!("; {hint}"))
            .unwrap_or_default();
        bail!(
            "{broken} rows of the table predicted non-finite coordinates (marked NON-FINITE){hint}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage_times(seconds: f64) -> StageTimes {
        StageTimes {
            embeddings: seconds,
            extra_msa: 2.0 * seconds,
            evoformer: 3.0 * seconds,
            structure_module: 4.0 * seconds,
            heads: 5.0 * seconds,
        }
    }

    #[test]
    fn a_slow_run_does_not_set_the_stage_figures() {
        let median = median_stage_times(&[stage_times(1.0), stage_times(100.0), stage_times(2.0)]);
        assert_eq!(median.embeddings, 2.0);
        assert_eq!(median.extra_msa, 4.0);
        assert_eq!(median.evoformer, 6.0);
        assert_eq!(median.structure_module, 8.0);
        assert_eq!(median.heads, 10.0);
    }
}
