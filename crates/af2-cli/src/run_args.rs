//! Flags shared by `af2 predict` and `af2 screen`.

use std::path::PathBuf;

/// Output, weights, models and recycling: the same meaning in every command that predicts.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Output directory.
    #[arg(short = 'o', long = "output-dir", alias = "out")]
    pub output: PathBuf,
    /// Weights directory, searched before $AF2_WEIGHTS and the cache directory.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Models to run (comma-separated numbers: the model_N_ptm weights).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub models: Vec<u32>,
    /// Recycles (passes = recycles + 1).
    #[arg(long, default_value_t = 3)]
    pub num_recycle: usize,
    /// Trunk precision: f32 (the reference), or f16 (extra-MSA stack and Evoformer in half
    /// precision, for speed on GPUs; see docs/PERFORMANCE.md for its accuracy).
    #[arg(long, default_value = "f32")]
    pub precision: af2_model::precision::Precision,
}
