//! `af2 predict`: structures from a FASTA, an A3M or a directory of them, written the way
//! colabfold_batch writes them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use af2_io::npz::NdArray;
use af2_io::output::{
    ColabFoldName, Scores, pae_json_name, pae_png_name, plddt_png_name, safe_filename,
    write_pae_json, write_pae_png, write_plddt_png,
};
use af2_io::sequence::{read_a3m, read_fasta};
use af2_io::structure::read_structure;
use af2_model::features::{Features, TemplateFeatures};
use af2_model::model::RecycleOptions;
use af2_model::pipeline::{
    ChainAtoms, ChainAtomsOptions, MsaConfig, MsaRows, MsaSampling, Query, build_features,
    placeholder_templates,
};
use af2_model::predict::{
    PdbLabels, Prediction, PredictionInputs, atom37_of_chains, predict, template_from_chain,
    write_prediction_pdb,
};

use crate::device::parse_device;
use crate::kernel_cache::ensure_finite;
use crate::run_args::RunArgs;
use crate::weights::{LoadedModel, load_models};

/// ColabFold's name for monomer pTM weights.
const MODEL_TYPE: &str = "alphafold2_ptm";

/// Arguments of `af2 predict`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// A FASTA file (chains of a complex separated by ':'), an A3M alignment (first row = query),
    /// or a directory of .fasta/.fa/.faa/.a3m files.
    input: PathBuf,
    /// Stop recycling once the CA distance matrix changes by less than this (Å RMS), as
    /// ColabFold's --recycle-early-stop-tolerance; off by default.
    #[arg(long)]
    recycle_early_stop_tolerance: Option<f32>,
    /// Seeds per model (seeds random-seed .. random-seed + num-seeds - 1). Seeds only change the
    /// result with --msa-sampling: inference is otherwise deterministic.
    #[arg(long, default_value_t = 1)]
    num_seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    random_seed: u64,
    /// Sample the MSA as AlphaFold does (shuffled clusters, BERT masking, resampled each
    /// recycle) from each seed; without it the MSA features are deterministic.
    #[arg(long)]
    msa_sampling: bool,
    /// Most MSA cluster rows [default: AlphaFold's 508].
    #[arg(long)]
    max_msa_clusters: Option<usize>,
    /// Most extra-MSA rows [default: AlphaFold's 5120].
    #[arg(long)]
    max_extra_msa: Option<usize>,
    /// A structure (PDB or mmCIF) whose chain is used as the template (models 1 and 2), aligned
    /// to the query.
    #[arg(long)]
    template_pdb: Option<PathBuf>,
    /// The template chain [default: the first chain].
    #[arg(long, requires = "template_pdb")]
    template_chain: Option<String>,
    /// A structure (PDB or mmCIF) fed to the first pass as the previous structure (AF2 initial
    /// guess); its chains, laid end to end, must have as many residues as the query.
    #[arg(long)]
    initial_guess: Option<PathBuf>,
    /// Chains of --initial-guess to use, in query order (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',', requires = "initial_guess")]
    initial_guess_chains: Vec<String>,
    /// Backend: auto, cpu, ndarray, flex, wgpu, vulkan, metal.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Predict again jobs whose `{job}.done.txt` marker exists.
    #[arg(long)]
    overwrite_existing_results: bool,
}

/// One query to predict.
struct Job {
    name: String,
    query: Query,
    msa: MsaRows,
    /// Where it came from, for messages (`file:line`).
    origin: String,
}

fn is_input_file(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    matches!(
        ext.as_deref(),
        Some("fasta" | "fa" | "faa" | "fas" | "fsa" | "a3m")
    )
}

fn is_a3m(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("a3m"))
}

/// Reads every job of the input before anything runs, so that a bad file stops the run at once.
fn read_jobs(input: &Path) -> Result<Vec<Job>> {
    let files: Vec<PathBuf> = if input.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(input)
            .with_context(|| format!("listing {}", input.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_input_file(p))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!(
                "{}: no input files (expected .fasta, .fa, .faa or .a3m files)",
                input.display()
            );
        }
        files
    } else if input.is_file() {
        vec![input.to_path_buf()]
    } else {
        bail!("{}: no such file or directory", input.display());
    };
    let mut jobs = Vec::new();
    for file in &files {
        if is_a3m(file) {
            let msa = read_a3m(file)?;
            let origin = format!("{}:1", file.display());
            let query = Query::single(msa.query())
                .with_context(|| format!("{origin}: the query (first row) of the alignment"))?;
            let rows = MsaRows::from_a3m(&msa).with_context(|| format!("{}", file.display()))?;
            let name = file
                .file_stem()
                .map_or("job".into(), |s| s.to_string_lossy().into_owned());
            jobs.push(Job {
                name,
                query,
                msa: rows,
                origin,
            });
        } else {
            for (k, record) in read_fasta(file)?.into_iter().enumerate() {
                let origin = format!("{}:{}", file.display(), record.line);
                let query = Query::from_chains(&record.chains)
                    .with_context(|| format!("{origin}: record '{}'", record.description))?;
                let name = match record.id() {
                    "" => format!("job_{}", k + 1),
                    id => id.to_string(),
                };
                let msa = MsaRows::single(&query);
                jobs.push(Job {
                    name,
                    query,
                    msa,
                    origin,
                });
            }
        }
    }
    // Job names become file names: make them safe and unique.
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for job in &mut jobs {
        let base = safe_filename(&job.name);
        let count = seen.entry(base.clone()).or_insert(0);
        *count += 1;
        job.name = if *count == 1 {
            base
        } else {
            format!("{base}_{count}")
        };
    }
    Ok(jobs)
}

/// The template chain of `--template-pdb`, read once.
fn read_template_chain(args: &Args) -> Result<Option<ChainAtoms>> {
    let Some(path) = &args.template_pdb else {
        return Ok(None);
    };
    let structure = read_structure(path)?;
    let chain = match &args.template_chain {
        Some(id) => structure
            .require_chain(id)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        None => structure
            .chains
            .first()
            .with_context(|| format!("{}: no chains", path.display()))?,
    };
    let atoms = ChainAtoms::from_chain(chain, &ChainAtomsOptions::alphafold())
        .with_context(|| format!("{}", path.display()))?;
    Ok(Some(atoms))
}

/// The atoms of `--initial-guess`, read once.
fn read_initial_guess(args: &Args) -> Result<Option<Vec<ChainAtoms>>> {
    let Some(path) = &args.initial_guess else {
        return Ok(None);
    };
    let structure = read_structure(path)?;
    let ids: Vec<String> = if args.initial_guess_chains.is_empty() {
        structure
            .chain_ids()
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.initial_guess_chains.clone()
    };
    let chains = ids
        .iter()
        .map(|id| {
            let chain = structure
                .require_chain(id)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            ChainAtoms::from_chain(chain, &ChainAtomsOptions::colabdesign())
                .with_context(|| format!("{}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(chains))
}

fn initial_positions(job: &Job, chains: &[ChainAtoms], path: &Path) -> Result<NdArray<f32>> {
    let total: usize = chains.iter().map(ChainAtoms::len).sum();
    if total != job.query.len() {
        bail!(
            "{}: its chains have {total} residues (with N atoms) but query '{}' has {}",
            path.display(),
            job.name,
            job.query.len()
        );
    }
    let refs: Vec<&ChainAtoms> = chains.iter().collect();
    Ok(atom37_of_chains(&refs))
}

/// The template features one model sees for one job.
fn templates_for(
    job: &Job,
    model: &LoadedModel,
    template: Option<&ChainAtoms>,
) -> Result<Option<TemplateFeatures>> {
    if !model.has_templates {
        return Ok(None);
    }
    match template {
        Some(chain) => {
            let (features, alignment) = template_from_chain(&job.query, chain)
                .with_context(|| format!("placing the template on query '{}'", job.name))?;
            eprintln!(
                "{}: template covers {} of {} residues ({} identical)",
                job.name,
                alignment.aligned,
                job.query.len(),
                alignment.identical
            );
            Ok(Some(features))
        }
        None => Ok(Some(placeholder_templates(job.query.len()))),
    }
}

/// One finished model/seed of a job.
struct Done {
    model: u32,
    seed: u64,
    prediction: Prediction,
}

fn format_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Runs the command.
pub fn run(args: &Args) -> Result<()> {
    let jobs = read_jobs(&args.input)?;
    let template = read_template_chain(args)?;
    let guess = read_initial_guess(args)?;
    if let (Some(chains), Some(path)) = (&guess, &args.initial_guess) {
        for job in &jobs {
            initial_positions(job, chains, path)?;
        }
    }
    if args.num_seeds == 0 {
        bail!("--num-seeds must be at least 1");
    }
    if args.num_seeds > 1 && !args.msa_sampling {
        eprintln!(
            "note: without --msa-sampling inference is deterministic: all {} seeds give the same prediction",
            args.num_seeds
        );
    }
    let device = parse_device(&args.device)?;
    let models = load_models(
        args.run.weights.as_deref(),
        &args.run.models,
        args.run.precision,
        &device,
    )?;
    std::fs::create_dir_all(&args.run.output).with_context(|| {
        format!(
            "creating the output directory {}",
            args.run.output.display()
        )
    })?;
    let mut msa_config = MsaConfig::default();
    if let Some(c) = args.max_msa_clusters {
        msa_config.max_msa_clusters = c.max(1);
    }
    if let Some(e) = args.max_extra_msa {
        msa_config.max_extra_msa = e;
    }
    let options = RecycleOptions {
        early_stop_tolerance: args.recycle_early_stop_tolerance,
    };
    let mut failures = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let done_marker = args.run.output.join(format!("{}.done.txt", job.name));
        if done_marker.exists() && !args.overwrite_existing_results {
            eprintln!(
                "{}: done already ({}), skipped; --overwrite-existing-results predicts it again",
                job.name,
                done_marker.display()
            );
            continue;
        }
        eprintln!(
            "[{}/{}] {} ({}): {} residues in {} chain(s), MSA depth {}",
            j + 1,
            jobs.len(),
            job.name,
            job.origin,
            job.query.len(),
            job.query.chain_lengths.len(),
            job.msa.depth()
        );
        let result = run_job(
            args,
            job,
            &models,
            template.as_ref(),
            guess.as_deref(),
            &msa_config,
            &options,
            &device,
        );
        match result {
            Ok(()) => {
                std::fs::write(&done_marker, b"")
                    .with_context(|| format!("writing {}", done_marker.display()))?;
            }
            Err(e) => {
                eprintln!("error: {}: {e:#}", job.name);
                failures.push(job.name.clone());
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} job(s) failed: {}",
            failures.len(),
            jobs.len(),
            failures.join(", ")
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_job(
    args: &Args,
    job: &Job,
    models: &[LoadedModel],
    template: Option<&ChainAtoms>,
    guess: Option<&[ChainAtoms]>,
    msa_config: &MsaConfig,
    options: &RecycleOptions,
    device: &burn::tensor::Device,
) -> Result<()> {
    let initial = match (guess, &args.initial_guess) {
        (Some(chains), Some(path)) => Some(initial_positions(job, chains, path)?),
        _ => None,
    };
    let mut results = Vec::new();
    for model in models {
        let templates = templates_for(job, model, template)?;
        for seed in args.random_seed..args.random_seed + args.num_seeds {
            let start = Instant::now();
            let passes = if args.msa_sampling {
                args.run.num_recycle + 1
            } else {
                1
            };
            let mut asym_id = Vec::new();
            let iterations: Vec<Features> = (0..passes)
                .map(|r| {
                    let mut config = *msa_config;
                    if args.msa_sampling {
                        config.sampling = Some(MsaSampling::alphafold(seed).for_iteration(r));
                    }
                    let built = build_features(&job.query, &job.msa, templates.clone(), &config)
                        .with_context(|| format!("building the features of '{}'", job.name))?;
                    asym_id = built.asym_id;
                    Ok(built.features)
                })
                .collect::<Result<_>>()?;
            let inputs = PredictionInputs {
                iterations: &iterations,
                asym_id: &asym_id,
                initial_positions: initial.as_ref(),
                template_pair_mask: None,
            };
            let tag = format!("{MODEL_TYPE}_model_{}_seed_{seed:03}", model.number);
            let mut prediction = predict(
                &model.model,
                &inputs,
                args.run.num_recycle,
                options,
                device,
                |r| {
                    let tol = r
                        .ca_change
                        .map(|c| format!(" tol={c:.3}"))
                        .unwrap_or_default();
                    eprintln!(
                        "{} {tag} recycle={} pLDDT={:.3} pTM={}{tol} ({:.1} s)",
                        job.name,
                        r.iteration,
                        r.mean_plddt,
                        format_opt(r.ptm, 3),
                        r.seconds
                    );
                },
            );
            ensure_finite(
                &prediction,
                &format!("{} {tag}", job.name),
                "none of this job's predictions are written",
            )?;
            if prediction.log.stopped_early {
                eprintln!(
                    "{} {tag}: stopped early after {} recycle(s)",
                    job.name,
                    prediction.log.iterations_run - 1
                );
            }
            // The logits are only needed for pTM/ipTM, computed by now.
            if let Some(p) = prediction.pae.as_mut() {
                p.logits = Vec::new();
            }
            eprintln!(
                "{} {tag} took {:.1} s: pLDDT={:.3} pTM={} ipTM={}",
                job.name,
                start.elapsed().as_secs_f64(),
                prediction.mean_plddt(),
                format_opt(prediction.ptm, 3),
                format_opt(prediction.iptm, 3)
            );
            results.push(Done {
                model: model.number,
                seed,
                prediction,
            });
        }
    }
    write_job(args, job, results)
}

/// Ranks by mean pLDDT (ColabFold's ranking for monomer models) and writes every file.
fn write_job(args: &Args, job: &Job, mut results: Vec<Done>) -> Result<()> {
    results.sort_by(|a, b| {
        b.prediction
            .mean_plddt()
            .total_cmp(&a.prediction.mean_plddt())
    });
    let out = &args.run.output;
    let labels = PdbLabels::sequential(&job.query.chain_lengths);
    let chain_starts: Vec<usize> = (0..job.query.chain_lengths.len())
        .map(|k| job.query.chain_range(k).start)
        .collect();
    let n = job.query.len();
    for (k, done) in results.iter().enumerate() {
        let rank = k + 1;
        let name = ColabFoldName::new(&job.name, rank, MODEL_TYPE, done.model as usize, done.seed);
        let p = &done.prediction;
        write_prediction_pdb(
            &out.join(name.pdb(false)),
            p,
            &job.query.aatype,
            &labels,
            &[],
        )?;
        write_plddt_png(
            &out.join(format!("{}_plddt_{}.png", name.job, name.tag())),
            &p.plddt,
            &chain_starts,
        )?;
        if rank == 1 {
            write_plddt_png(
                &out.join(plddt_png_name(&job.name)),
                &p.plddt,
                &chain_starts,
            )?;
        }
        if let (Some(pae), Some(ptm)) = (&p.pae, p.ptm) {
            Scores::new(&p.plddt, &pae.pae, pae.max_pae, ptm, p.iptm)?
                .write(&out.join(name.scores_json()))?;
            write_pae_json(
                &out.join(format!(
                    "{}_predicted_aligned_error_{}.json",
                    name.job,
                    name.tag()
                )),
                &pae.pae,
                n,
                pae.max_pae,
            )?;
            write_pae_png(
                &out.join(format!("{}_pae_{}.png", name.job, name.tag())),
                &pae.pae,
                n,
                pae.max_pae,
            )?;
            if rank == 1 {
                write_pae_json(
                    &out.join(pae_json_name(&job.name)),
                    &pae.pae,
                    n,
                    pae.max_pae,
                )?;
                write_pae_png(&out.join(pae_png_name(&job.name)), &pae.pae, n, pae.max_pae)?;
            }
        }
        println!(
            "{} rank_{rank:03} model_{} seed_{:03}: pLDDT {:.2} pTM {} ipTM {} -> {}",
            job.name,
            done.model,
            done.seed,
            p.mean_plddt(),
            format_opt(p.ptm, 3),
            format_opt(p.iptm, 3),
            out.join(name.pdb(false)).display()
        );
    }
    Ok(())
}
