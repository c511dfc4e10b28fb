//! `af2 screen`: batch AF2 initial guess (PXDesign's call of ColabDesign's binder protocol) over a
//! table of designed binder sequences, one durable, resumable row per design.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use af2_io::designs::read_designs;
use af2_io::output::{ScreenRow, ScreenTable, TableFormat, safe_filename};
use af2_io::structure::read_structure;
use af2_model::binder::{
    BinderComplex, BinderError, BinderProtocol, BinderSpec, FoldKind, score_designs,
};
use af2_model::binder_metrics::{BinderMetrics, Filter};
use af2_model::model::{AlphaFold, RecycleOptions};
use af2_model::predict::write_prediction_pdb;

use crate::device::{compiled_backends, parse_device};
use crate::progress::{Progress, bars_enabled, human_duration};
use crate::run_args::RunArgs;
use crate::weights::{find_models, load_models};

/// The screening table's format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `scores.csv`, with a header row.
    Csv,
    /// `scores.jsonl`, one JSON object per line.
    Jsonl,
}

/// Arguments of `af2 screen`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("binder").required(true).args(["binder_chain", "binder_len"])))]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Designs: a CSV file with a header naming the columns `id` and `sequence`.
    designs: PathBuf,
    /// The complex (PDB or mmCIF): the target, and in redesign mode the binder it was designed as.
    #[arg(long)]
    target: PathBuf,
    /// The target chain.
    #[arg(long, default_value = "A")]
    target_chain: String,
    /// Redesign mode: the binder chain of --target (its backbone is the binder template and the
    /// initial guess; the `rmsd` metric compares the prediction with it).
    #[arg(long)]
    binder_chain: Option<String>,
    /// Hallucination mode: the binder length (no binder template or coordinates).
    #[arg(long)]
    binder_len: Option<usize>,
    /// Filters whose pass/fail columns the table gets: easy (AF2-IG-easy), strict (AF2-IG
    /// strict).
    #[arg(long, value_delimiter = ',', default_value = "easy,strict")]
    filters: Vec<Filter>,
    /// Hotspot residues of the target for i_pae, e.g. A12,A15 or A20-25.
    #[arg(long)]
    hotspot: Option<String>,
    /// Table format.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Skip folding the binder alone (no plddt_monomer or bound/unbound RMSD: the AF2-IG-easy
    /// filter then fails).
    #[arg(long)]
    no_monomer: bool,
    /// Score again designs whose earlier row is an error.
    #[arg(long)]
    retry_failed: bool,
    /// Backend: auto, cpu, ndarray, flex, wgpu, vulkan, metal.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Designs folded together, each pass one batched forward pass over them (the table and
    /// PDBs are the same as one at a time; an interrupted run redoes the batch it was in)
    /// [default: 1 on the CPU; on a GPU 8 x (256 / L)^2, between 1 and 16].
    #[arg(long)]
    batch_size: Option<usize>,
}

/// Whether `--device NAME` runs on the CPU (`auto` is the first compiled backend).
fn is_cpu_device(name: &str) -> bool {
    let resolved = match name {
        "auto" => compiled_backends().first().copied().unwrap_or("ndarray"),
        other => other,
    };
    matches!(resolved, "cpu" | "ndarray" | "flex")
}

/// The default `--batch-size`: one design at a time on the CPU (batching saves no work there);
/// on a GPU a batch whose pair representations hold as many residue pairs as 8 designs of 256
/// residues (`B x L^2 <= 8 x 256^2`, about 270 MB per pair tensor at c_z = 128), between 1 and
/// 16 (on an H200, f16: 0.153 s per design with B = 16 at L = 128, 0.935 s with B = 1).
fn default_batch_size(cpu: bool, residues: usize) -> usize {
    if cpu {
        1
    } else {
        (8 * 256 * 256 / residues.max(1).pow(2)).clamp(1, 16)
    }
}

fn format_metric(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

fn summary(m: &BinderMetrics) -> String {
    format!(
        "plddt={:.3} i_ptm={:.3} i_pae={:.3} rmsd={} bound_unbound_rmsd={} plddt_monomer={}",
        m.plddt,
        m.i_ptm,
        m.i_pae,
        format_metric(m.rmsd),
        format_metric(m.bound_unbound_rmsd),
        format_metric(m.plddt_monomer)
    )
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    if args.filters.is_empty() {
        bail!("--filters: name at least one filter (easy, strict)");
    }
    if args.batch_size == Some(0) {
        bail!("--batch-size: at least 1");
    }
    let structure = read_structure(&args.target)?;
    let spec = match (&args.binder_chain, args.binder_len) {
        (Some(chain), _) => BinderSpec::Chain(chain.clone()),
        (None, Some(len)) => BinderSpec::Length(len),
        (None, None) => bail!("give --binder-chain or --binder-len"),
    };
    let mut complex = BinderComplex::from_structure(
        &structure,
        &args.target_chain,
        &spec,
        BinderProtocol::pxdesign(),
    )
    .with_context(|| format!("{}", args.target.display()))?;
    if let Some(hotspot) = &args.hotspot {
        complex
            .set_hotspot(hotspot)
            .with_context(|| format!("--hotspot {hotspot} on {}", args.target.display()))?;
    }
    let table_designs = read_designs(&args.designs)?;
    // A missing weight file stops the run before anything is written.
    find_models(args.run.weights.as_deref(), &args.run.models)?;

    std::fs::create_dir_all(args.run.output.join("pdb")).with_context(|| {
        format!(
            "creating the output directory {}",
            args.run.output.display()
        )
    })?;
    let (file, format) = match args.format {
        Format::Csv => ("scores.csv", TableFormat::Csv),
        Format::Jsonl => ("scores.jsonl", TableFormat::Jsonl),
    };
    let table_path = args.run.output.join(file);
    let mut table = ScreenTable::open(
        &table_path,
        format,
        BinderMetrics::table_schema(&args.filters),
    )?;
    if table.dropped_partial_row() {
        eprintln!(
            "note: {}: dropped a last row cut off by an interrupted run",
            table_path.display()
        );
    }

    // Rows the designs file itself rejects: error rows, once.
    let valid_ids: HashSet<&str> = table_designs
        .designs
        .iter()
        .map(|d| d.id.as_str())
        .collect();
    let mut bad_rows = 0usize;
    for error in &table_designs.errors {
        let id = match &error.id {
            Some(id) if !valid_ids.contains(id.as_str()) => id.clone(),
            _ => format!("line_{}", error.line),
        };
        let message = format!(
            "{}:{}: {}",
            args.designs.display(),
            error.line,
            error.reason
        );
        eprintln!("bad row: {message}");
        bad_rows += 1;
        if !table.contains(&id) {
            table.append(&ScreenRow::failed(&id, "", message))?;
        }
    }

    let skip = |table: &ScreenTable, id: &str| {
        table.is_scored(id) || (table.contains(id) && !args.retry_failed)
    };
    let todo: Vec<_> = table_designs
        .designs
        .iter()
        .filter(|d| !skip(&table, &d.id))
        .collect();
    let skipped = table_designs.designs.len() - todo.len();
    eprintln!(
        "target {} chain {} ({} residues), binder {} ({} residues{}); {} design(s): {} to score, {} already in {}",
        args.target.display(),
        complex.target_chain,
        complex.target_len(),
        complex.binder_chain,
        complex.binder_len,
        if complex.binder.is_some() {
            ", redesign mode"
        } else {
            ", hallucination mode"
        },
        table_designs.designs.len(),
        todo.len(),
        skipped,
        table_path.display()
    );
    if todo.is_empty() {
        println!("nothing to do: every design is in {}", table_path.display());
        return Ok(());
    }

    let device = parse_device(&args.device)?;
    let loaded = load_models(
        args.run.weights.as_deref(),
        &args.run.models,
        args.run.precision,
        &device,
    )?;
    if let Some(m) = loaded.iter().find(|m| !m.has_templates) {
        eprintln!(
            "note: model_{}_ptm has no template stack; AF2-IG uses the target as a template (models 1 and 2 have one)",
            m.number
        );
    }
    let models: Vec<&AlphaFold> = loaded.iter().map(|m| &m.model).collect();
    let options = RecycleOptions::default();
    let batch_size = args
        .batch_size
        .unwrap_or_else(|| default_batch_size(is_cpu_device(&args.device), complex.len()));
    if batch_size > 1 {
        eprintln!("folding up to {batch_size} designs per batch");
    }
    let mut progress = Progress::items(todo.len() as u64, "screen");
    let verbose_recycles = !bars_enabled();
    let (mut scored, mut failed, mut non_finite) = (0usize, 0usize, 0usize);
    let mut passed = vec![0usize; args.filters.len()];
    for batch in todo.chunks(batch_size) {
        let start = Instant::now();
        progress.message(&match batch {
            [one] => one.id.clone(),
            [first, rest @ ..] => format!("{} +{}", first.id, rest.len()),
            [] => String::new(),
        });
        let sequences: Vec<&str> = batch.iter().map(|d| d.sequence.as_str()).collect();
        let results = score_designs(
            &models,
            &complex,
            &sequences,
            args.run.num_recycle,
            &options,
            !args.no_monomer,
            &device,
            |d, k, kind, r| {
                if verbose_recycles {
                    let what = match kind {
                        FoldKind::Complex => "complex",
                        FoldKind::Monomer => "binder alone",
                    };
                    eprintln!(
                        "  {} model_{}_ptm {what} recycle={} pLDDT={:.2} ({:.1} s)",
                        batch[d].id, args.run.models[k], r.iteration, r.mean_plddt, r.seconds
                    );
                }
            },
        );
        let seconds = start.elapsed().as_secs_f64();
        let timing = if batch.len() > 1 {
            format!(
                "{:.1} s per design, batch of {}",
                seconds / batch.len() as f64,
                batch.len()
            )
        } else {
            format!("{seconds:.1} s")
        };
        for (design, result) in batch.iter().zip(results) {
            let row = match result {
                Ok(scored_design) => {
                    let pdb = args
                        .run
                        .output
                        .join("pdb")
                        .join(format!("{}.pdb", safe_filename(&design.id)));
                    write_prediction_pdb(
                        &pdb,
                        &scored_design.complex,
                        &scored_design.query.aatype,
                        &complex.pdb_labels(),
                        &[],
                    )?;
                    let m = &scored_design.metrics;
                    let row = m.screen_row(&design.id, &design.sequence, &args.filters);
                    for (count, cell) in passed.iter_mut().zip(&row.filters) {
                        *count += usize::from(cell.passed);
                    }
                    scored += 1;
                    progress.inc();
                    progress.log(&format!(
                        "{} {}: {} ({timing})",
                        progress.counter(),
                        design.id,
                        summary(m),
                    ));
                    row
                }
                Err(e) => {
                    failed += 1;
                    non_finite += usize::from(matches!(e, BinderError::NonFinite(_)));
                    progress.inc();
                    let message = format!("{}:{}: {e}", args.designs.display(), design.line);
                    progress.log(&format!(
                        "{} {}: error: {message}",
                        progress.counter(),
                        design.id
                    ));
                    ScreenRow::failed(&design.id, &design.sequence, message)
                }
            };
            table
                .append(&row)
                .with_context(|| format!("appending to {}", table_path.display()))?;
        }
    }
    progress.finish();
    if non_finite > 0
        && let Some(hint) = crate::kernel_cache::non_finite_hint()
    {
        eprintln!("{non_finite} design(s) came out non-finite: {hint}");
    }
    let filters: Vec<String> = args
        .filters
        .iter()
        .zip(&passed)
        .map(|(f, n)| format!("{n} passed {f}"))
        .collect();
    println!(
        "{scored} scored, {failed} failed, {bad_rows} bad row(s) in {}, {skipped} skipped (already in the table); {}; table {} ({})",
        args.designs.display(),
        filters.join(", "),
        table_path.display(),
        human_duration(progress.elapsed())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::default_batch_size;

    #[test]
    fn default_batch_keeps_the_pair_budget_of_eight_256_residue_designs() {
        assert_eq!(default_batch_size(true, 128), 1);
        assert_eq!(default_batch_size(false, 100), 16);
        assert_eq!(default_batch_size(false, 128), 16);
        assert_eq!(default_batch_size(false, 181), 16);
        assert_eq!(default_batch_size(false, 256), 8);
        assert_eq!(default_batch_size(false, 512), 2);
        assert_eq!(default_batch_size(false, 1024), 1);
    }
}
