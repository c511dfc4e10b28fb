//! `af2 bench-block`: where the time of one Evoformer block goes, layer by layer, plus the
//! primitives those layers are made of, each timed alone on the device.

use af2_layers::sigmoid;
use anyhow::{Result, bail};
use burn::tensor::{Device, Distribution, FloatDType, Tensor};

use af2_io::weights::ModelDims;
use af2_model::evoformer::{EvoformerBlock, EvoformerBlockConfig, MsaPairBlock};
use af2_model::model::AlphaFoldConfig;
use af2_model::precision::cast_module;

use crate::bench_kernels::{Timing, time};
use crate::device::{describe_device, parse_device};

/// Arguments of `af2 bench-block`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    common: crate::bench_kernels::Args,
    /// MSA rows (single sequence plus one template row: 2).
    #[arg(long, default_value_t = 2)]
    msa_rows: usize,
    /// Designs per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Time only the rows whose name contains this text (e.g. "layer norm").
    #[arg(long)]
    only: Option<String>,
    /// Record every row once as a graph and time its replays: the device's time for the row's
    /// kernels without the host's recording and fusion (what a replayed prediction pays).
    #[arg(long)]
    graph: bool,
}

/// The released model_1_ptm block widths.
fn model_block() -> EvoformerBlockConfig {
    AlphaFoldConfig::from_dims(&ModelDims::model_1_ptm())
        .evoformer
        .block
}

/// Inputs of one block at one length.
struct Inputs {
    msa: Tensor<4>,
    msa_mask: Tensor<3>,
    pair: Tensor<4>,
    pair_mask: Tensor<3>,
}

impl Inputs {
    fn new(
        args: &Args,
        widths: &EvoformerBlockConfig,
        l: usize,
        dtype: FloatDType,
        device: &Device,
    ) -> Self {
        let b = args.batch;
        let normal = |shape: [usize; 4]| {
            Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device).cast(dtype)
        };
        Self {
            msa: normal([b, args.msa_rows, l, widths.msa_channels]),
            msa_mask: Tensor::<3>::ones([b, args.msa_rows, l], device).cast(dtype),
            pair: normal([b, l, l, widths.pair_channels]),
            pair_mask: Tensor::<3>::ones([b, l, l], device).cast(dtype),
        }
    }
}

/// One timed row: a name and what it runs.
type Row<'a> = (&'static str, Box<dyn Fn() -> Tensor<4> + 'a>);

/// The block's layers, each alone (the pair layers with their residual add, as the block runs
/// them since the seventh session), then the whole block.
fn layer_rows<'a>(block: &'a EvoformerBlock, x: &'a Inputs) -> Vec<Row<'a>> {
    let pair = || x.pair.clone();
    let msa = || x.msa.clone();
    vec![
        (
            "msa row attention",
            Box::new(move || {
                block
                    .msa_row_attention_with_pair_bias
                    .forward(msa(), x.msa_mask.clone(), pair())
            }),
        ),
        (
            "msa column attention",
            Box::new(move || {
                block
                    .msa_column_attention
                    .forward(msa(), x.msa_mask.clone())
            }),
        ),
        (
            "msa transition",
            Box::new(move || block.msa_transition.forward_residual(msa())),
        ),
        (
            "outer product mean",
            Box::new(move || block.outer_product_mean.forward(msa(), x.msa_mask.clone())),
        ),
        (
            "tri mult outgoing",
            Box::new(move || {
                block
                    .triangle_multiplication_outgoing
                    .forward_residual(pair(), x.pair_mask.clone())
            }),
        ),
        (
            "tri mult incoming",
            Box::new(move || {
                block
                    .triangle_multiplication_incoming
                    .forward_residual(pair(), x.pair_mask.clone())
            }),
        ),
        (
            "tri att starting",
            Box::new(move || {
                block
                    .triangle_attention_starting_node
                    .forward_residual(pair(), x.pair_mask.clone())
            }),
        ),
        (
            "tri att ending",
            Box::new(move || {
                block
                    .triangle_attention_ending_node
                    .forward_residual(pair(), x.pair_mask.clone())
            }),
        ),
        (
            "pair transition",
            Box::new(move || block.pair_transition.forward_residual(pair())),
        ),
        ("whole block", Box::new(move || whole_block(block, x))),
    ]
}

/// One block on the inputs, its two outputs folded into one tensor so that neither is dropped.
fn whole_block(block: &EvoformerBlock, x: &Inputs) -> Tensor<4> {
    let (msa, pair) = block.forward(
        x.msa.clone(),
        x.msa_mask.clone(),
        x.pair.clone(),
        x.pair_mask.clone(),
    );
    pair + msa.sum().reshape([1, 1, 1, 1])
}

/// The whole block recorded once as a graph and replayed: the host enqueues the recorded
/// launches instead of recording and fusing every operation again. Also prints the largest
/// difference between the replayed output and a fresh run of the block.
fn print_graph_replay(
    args: &Args,
    device: &Device,
    l: usize,
    block: &EvoformerBlock,
    x: &Inputs,
) -> Result<()> {
    let graph = std::cell::RefCell::new(burn::tensor::capture(device, || whole_block(block, x)));
    let Timing {
        total_ms,
        submit_ms,
    } = time(device, args.common.repeats, || {
        // Safety: every tensor the block reads (its parameters and `x`) outlives `graph`,
        // and nothing else runs on the device meanwhile.
        unsafe { graph.borrow_mut().replay() };
    })?;
    let graph = graph.into_inner();
    let fresh = whole_block(block, x);
    let diff: f32 = (graph.output().clone() - fresh)
        .abs()
        .max()
        .cast(FloatDType::F32)
        .into_scalar();
    let name = if graph.is_hardware() {
        "whole block, graph"
    } else {
        "whole block, no graph"
    };
    println!(
        "{name:<26} {l:>5} {total_ms:>10.3} {submit_ms:>10.3}   max|replay - fresh| {diff:.3e}"
    );
    Ok(())
}

/// Primitives of the pair layers, in the forms the layers use and in alternatives.
fn primitive_rows<'a>(block: &'a EvoformerBlock, x: &'a Inputs) -> Vec<Row<'a>> {
    let tri = &block.triangle_multiplication_outgoing;
    let pair = || x.pair.clone();
    let [b, l, _, c] = x.pair.dims();
    vec![
        (
            "layer norm [B,L,L,128]",
            Box::new(move || tri.layer_norm_input.forward(pair())),
        ),
        (
            "linear 128x128 rank 4",
            Box::new(move || tri.left_projection.forward(pair())),
        ),
        (
            "linear 128x128 rank 2",
            Box::new(move || {
                tri.left_projection
                    .forward(pair().reshape([b * l * l, c]))
                    .reshape([b, l, l, c])
            }),
        ),
        (
            "sigmoid gate a*sig(b)*m",
            Box::new(move || {
                pair() * sigmoid(pair() * 0.5) * x.pair_mask.clone().unsqueeze_dim::<4>(3)
            }),
        ),
        (
            "tri core permuted",
            Box::new(move || {
                let a = pair().permute([0, 3, 1, 2]);
                let bt = (pair() * 0.5).permute([0, 3, 1, 2]).swap_dims(2, 3);
                a.matmul(bt).permute([0, 2, 3, 1])
            }),
        ),
        (
            "tri core rank 3",
            Box::new(move || {
                let a = pair().permute([0, 3, 1, 2]).reshape([b * c, l, l]);
                let bm = (pair() * 0.5).permute([0, 3, 1, 2]).reshape([b * c, l, l]);
                a.matmul(bm.swap_dims(1, 2))
                    .reshape([b, c, l, l])
                    .permute([0, 2, 3, 1])
            }),
        ),
        (
            "pair transition whole",
            Box::new(move || {
                block
                    .pair_transition
                    .forward_chunked(pair(), usize::MAX, true)
            }),
        ),
        ("copy (x + 1)", Box::new(move || pair() + 1.0)),
        (
            "20 tiny matmuls (floor)",
            Box::new(move || {
                let n = l.min(16);
                let w = x.pair.clone().slice([0..1, 0..1, 0..n, 0..n]);
                (0..20).fold(w.clone(), |acc, _| acc.matmul(w.clone()))
            }),
        ),
    ]
}

fn print_rows(args: &Args, device: &Device, l: usize, rows: Vec<Row<'_>>) -> Result<()> {
    let repeats = args.common.repeats;
    let wanted = |name: &str| args.only.as_deref().is_none_or(|only| name.contains(only));
    for (name, f) in rows.into_iter().filter(|(name, _)| wanted(name)) {
        let Timing {
            total_ms,
            submit_ms,
        } = if args.graph {
            time_replayed(device, repeats, f)?
        } else {
            time(device, repeats, f)?
        };
        println!("{name:<26} {l:>5} {total_ms:>10.3} {submit_ms:>10.3}");
    }
    Ok(())
}

/// Times the replays of `f` recorded once as a graph (or of `f` itself where the device
/// records no graph; a warning says so).
fn time_replayed(device: &Device, repeats: usize, f: impl Fn() -> Tensor<4>) -> Result<Timing> {
    let graph = std::cell::RefCell::new(burn::tensor::capture(device, f));
    if !graph.borrow().is_hardware() {
        eprintln!("warning: this device records no graph; the row runs as usual");
    }
    time(device, repeats, || {
        // Safety: every tensor the row reads (parameters and inputs) outlives `graph`, and
        // nothing else runs on the device meanwhile.
        unsafe { graph.borrow_mut().replay() };
    })
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    if args.common.lengths.contains(&0)
        || args.common.repeats == 0
        || args.batch == 0
        || args.msa_rows == 0
    {
        bail!("--lengths, --repeats, --batch and --msa-rows must be positive");
    }
    let device = parse_device(&args.common.device)?;
    let dtype = if args.common.f16 {
        FloatDType::F16
    } else {
        FloatDType::F32
    };
    let widths = model_block();
    let block = cast_module(widths.init(&device), dtype);
    println!(
        "af2 bench-block: one model_1_ptm Evoformer block, device {}, {dtype:?}, B = {}, S = {}, {} repeats",
        describe_device(&args.common.device, &device),
        args.batch,
        args.msa_rows,
        args.common.repeats
    );
    println!("(ms per call, device synchronised; `submit` is the host time to enqueue the calls)");
    println!(
        "{:<26} {:>5} {:>10} {:>10}",
        "layer", "L", "ms", "submit ms"
    );
    for &l in &args.common.lengths {
        let inputs = Inputs::new(args, &widths, l, dtype, &device);
        print_rows(args, &device, l, layer_rows(&block, &inputs))?;
        if !args.graph
            && args
                .only
                .as_deref()
                .is_none_or(|only| "whole block, graph".contains(only))
        {
            print_graph_replay(args, &device, l, &block, &inputs)?;
        }
        print_rows(args, &device, l, primitive_rows(&block, &inputs))?;
    }
    Ok(())
}
