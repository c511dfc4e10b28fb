//! Project maintenance tasks: `cargo xtask <command>`.

use af2_io::weights::convert_npz_to_safetensors;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

mod bench;
mod kernel_stats;
mod parity;

/// Project maintenance tasks.
#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Project maintenance tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert released AlphaFold weights (params_model_*.npz) to our safetensors format,
    /// then load the result back and verify every tensor bit for bit.
    ConvertWeights {
        /// The released weights, e.g. params_model_1_ptm.npz.
        input: PathBuf,
        /// Output file [default: weights/<name without "params_">.safetensors in the workspace].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Run an oracle case (make_golden.py output folder) and print max abs/rel error per output.
    Parity {
        /// The case folder (params.npz, features.npz, outputs.npz, meta.json[, trace.npz]).
        dir: PathBuf,
    },
    /// Compare a finished outputs.npz (any backend) with an oracle case.
    Compare {
        /// The case folder.
        dir: PathBuf,
        /// Our outputs.npz.
        candidate: PathBuf,
        /// Allowed multiple of the oracle's noise floor (10 on the CPU; 100 for GPUs).
        #[arg(long, default_value_t = 10.0)]
        factor: f64,
    },
    /// Time the forward pass on the CPU reference backend (single sequence + one template).
    BenchCpu {
        /// Weights (npz or safetensors); their widths set the model.
        #[arg(long)]
        params: PathBuf,
        /// Sequence lengths.
        #[arg(long, value_delimiter = ',', default_value = "64,128")]
        lengths: Vec<usize>,
        /// Recycles (passes = recycles + 1).
        #[arg(long, default_value_t = 3)]
        recycles: usize,
    },
    /// Print the Vulkan driver's statistics (registers per thread, binary size, shared memory...)
    /// for SPIR-V compute shaders, e.g. the kernels an af2 `kernel-dump` build writes out.
    KernelStats {
        /// SPIR-V files, or directories searched recursively for *.spv.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also print statistic descriptions, enabled extensions, features and bindings.
        #[arg(short, long)]
        verbose: bool,
        /// Create the device with robustBufferAccess off [default: as the device reports it].
        #[arg(long)]
        no_robust_buffer_access: bool,
        /// Only parse the SPIR-V and print the derived layout (no Vulkan, no GPU needed).
        #[arg(long)]
        reflect_only: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::ConvertWeights { input, output } => {
            let output = match output {
                Some(path) => path,
                None => default_output(&input)?,
            };
            convert_weights(&input, &output)
        }
        Command::Parity { dir } => parity::run(&dir),
        Command::Compare {
            dir,
            candidate,
            factor,
        } => parity::compare(&dir, &candidate, factor),
        Command::BenchCpu {
            params,
            lengths,
            recycles,
        } => bench::run(&params, &lengths, recycles),
        Command::KernelStats {
            paths,
            verbose,
            no_robust_buffer_access,
            reflect_only,
        } => kernel_stats::run(
            &paths,
            &kernel_stats::Options {
                verbose,
                no_robust_buffer_access,
                reflect_only,
            },
        ),
    }
}

/// `weights/<stem without the params_ prefix>.safetensors` under the workspace root.
fn default_output(input: &Path) -> Result<PathBuf> {
    let stem = input
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| format!("cannot derive an output name from {}", input.display()))?;
    let name = stem.strip_prefix("params_").unwrap_or(stem);
    Ok(workspace_root()
        .join("weights")
        .join(format!("{name}.safetensors")))
}

/// The workspace root (the parent of this crate's directory).
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

/// Reads, checks, converts, writes and verifies (`af2_io::weights::convert_npz_to_safetensors`).
fn convert_weights(input: &Path, output: &Path) -> Result<()> {
    let summary = convert_npz_to_safetensors(input, output)
        .with_context(|| format!("converting {}", input.display()))?;
    println!("read {}", input.display());
    println!(
        "inferred dims:\n{}",
        serde_json::to_string_pretty(&summary.dims).context("formatting dims")?
    );
    println!("{} arrays (haiku layout)", summary.haiku_arrays);
    println!("wrote {}", output.display());
    println!(
        "verified: {} tensors, {} floats bitwise equal",
        summary.native_tensors, summary.floats
    );
    Ok(())
}
