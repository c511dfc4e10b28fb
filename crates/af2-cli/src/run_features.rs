//! `af2 run-features`: the forward pass on processed features, for checking against the oracle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use af2_io::features::feature_slice;
use af2_io::npz::{Array, read_npz, write_npz};
use af2_io::weights::load_weights;
use af2_model::features::Features;
use af2_model::model::RecycleOptions;
use af2_model::outputs::prediction_arrays;
use af2_model::padding::{padded_length, residue_multiple};

use crate::device::parse_device;

/// Arguments of `af2 run-features`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Weights: AlphaFold's params_model_*.npz or a converted .safetensors.
    #[arg(long)]
    params: PathBuf,
    /// Processed features (.npz, every array with a leading recycle axis of R+1).
    #[arg(long)]
    features: PathBuf,
    /// Where to write outputs.npz (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Number of recycles R (default: the features' leading axis minus one).
    #[arg(long)]
    recycles: Option<usize>,
    /// Stop recycling once the CA distance matrix changes by less than this many Å (RMS)
    /// between iterations, as ColabFold; off by default.
    #[arg(long)]
    recycle_early_stop_tolerance: Option<f32>,
    /// Backend: auto, cpu, ndarray, flex, wgpu, vulkan, metal.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Trunk precision: f32 (the reference) or f16.
    #[arg(long, default_value = "f32")]
    precision: af2_model::precision::Precision,
}

fn iteration_slices(
    features: &BTreeMap<String, Array>,
    iterations: usize,
    path: &std::path::Path,
) -> Result<Vec<Features>> {
    (0..iterations)
        .map(|r| {
            let slice = feature_slice(features, r).with_context(|| path.display().to_string())?;
            Features::from_arrays(&slice)
                .with_context(|| format!("{}: iteration {r}", path.display()))
        })
        .collect()
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let weights = load_weights(&args.params)?;
    let features = read_npz(&args.features)?;
    let available = features
        .get("aatype")
        .map(|a| a.shape()[0])
        .with_context(|| format!("{}: feature `aatype` is missing", args.features.display()))?;
    let iterations = match args.recycles {
        Some(r) if r + 1 > available => bail!(
            "--recycles {r} needs {} feature slices, but {} has {available}",
            r + 1,
            args.features.display()
        ),
        Some(r) => r + 1,
        None => available,
    };
    let slices = iteration_slices(&features, iterations, &args.features)?;
    check_fits(&slices[0], &weights.dims, &args.features)?;

    let mut model = crate::weights::build_model(&weights, args.precision, &device)
        .with_context(|| format!("loading {}", args.params.display()))?;
    // Raw outputs hold the side chains of every structure-module iteration, as the oracle's.
    model.structure_module.keep_sidechain_trajectory(true);
    let start = Instant::now();
    let options = RecycleOptions {
        early_stop_tolerance: args.recycle_early_stop_tolerance,
    };
    let n = slices[0].num_residues();
    let padded_n = padded_length(n, residue_multiple(&device));
    let padded: Vec<Features> = slices
        .iter()
        .map(|f| f.padded_to(padded_n).into_owned())
        .collect();
    let (out, log) = model.forward_recycled_with(&padded, None, &options, &device);
    let arrays = prediction_arrays(&out.first_residues(n));
    eprintln!(
        "{} residues{}, {} iteration(s) in {:.2} s{}",
        n,
        if padded_n > n {
            format!(" (run padded to {padded_n})")
        } else {
            String::new()
        },
        log.iterations_run,
        start.elapsed().as_secs_f64(),
        if log.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    write_npz(&args.out, &arrays)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// Refuses features whose widths cannot go through this model.
fn check_fits(
    f: &Features,
    dims: &af2_io::weights::ModelDims,
    path: &std::path::Path,
) -> Result<()> {
    if f.num_residues() == 0 {
        bail!("{}: no residues", path.display());
    }
    if f.num_msa_rows() == 0 {
        bail!("{}: `msa_feat` has no rows", path.display());
    }
    if f.templates.is_none() && dims.template.is_some() {
        eprintln!("note: the weights have a template module but the features have no templates");
    }
    Ok(())
}
