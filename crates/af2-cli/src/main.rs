//! `af2`: AlphaFold2 inference in Rust.

mod bench;
mod device;
mod run_features;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// AlphaFold2 inference on Burn (CPU reference: ndarray; GPU: wgpu).
#[derive(Parser, Debug)]
#[command(name = "af2", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the model on processed features (the oracle's features.npz) and write outputs.npz.
    RunFeatures(run_features::Args),
    /// Time predictions (single sequence + one template) on a backend.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::RunFeatures(args) => run_features::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
