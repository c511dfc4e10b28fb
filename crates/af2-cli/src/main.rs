//! `af2`: AlphaFold2 inference in Rust.

mod bench;
mod bench_block;
mod bench_kernels;
mod device;
mod kernel_cache;
mod predict;
mod progress;
mod run_args;
mod run_features;
mod screen;
mod weights;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// AlphaFold2 inference on Burn (CPU reference: ndarray; GPU: wgpu).
///
/// Weights are found in --weights DIR, then $AF2_WEIGHTS, then ~/.cache/af2/weights
/// ($XDG_CACHE_HOME/af2/weights); `af2 weights fetch` downloads and converts them.
#[derive(Parser, Debug)]
#[command(name = "af2", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Predict structures from a FASTA, an A3M or a directory of them (as colabfold_batch).
    Predict(predict::Args),
    /// Screen designed binders with AF2 initial guess (ColabDesign's binder protocol, as PXDesign).
    ///
    /// Writes one row per design to OUTPUT/scores.csv (or scores.jsonl) and the complex to
    /// OUTPUT/pdb/<id>.pdb. With several models the metrics are their mean, as ColabDesign
    /// averages them, and the PDB is the first model's.
    Screen(screen::Args),
    /// Download, convert and check weights.
    Weights(weights::Args),
    /// Run the model on processed features (the oracle's features.npz) and write outputs.npz.
    RunFeatures(run_features::Args),
    /// Time predictions (single sequence + one template) on a backend.
    Bench(bench::Args),
    /// Time the fused attention kernel against the reference attention core.
    BenchKernels(bench_kernels::KernelArgs),
    /// Time one Evoformer block layer by layer, and the primitives the layers use.
    BenchBlock(bench_block::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kernel_cache::configure();
    let result = match cli.command {
        Command::Predict(args) => predict::run(&args),
        Command::Screen(args) => screen::run(&args),
        Command::Weights(args) => weights::run(&args),
        Command::RunFeatures(args) => run_features::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::BenchKernels(args) => bench_kernels::run(&args),
        Command::BenchBlock(args) => bench_block::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
