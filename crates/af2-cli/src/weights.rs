//! Finding weight files, and `af2 weights fetch|convert|check`.
//!
//! Weights are looked up in `--weights DIR`, then `$AF2_WEIGHTS`, then the cache directory
//! (`$XDG_CACHE_HOME/af2/weights`, else `~/.cache/af2/weights`), as `model_{m}_ptm.safetensors`
//! (our converted format) and then `params_model_{m}_ptm.npz` (the released file).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use af2_io::weights::{
    LoadedWeights, convert_npz_to_safetensors, converted_file_name, load_weights,
};
use af2_model::model::{AlphaFold, AlphaFoldConfig};
use af2_model::precision::Precision;
use af2_model::weights::load_module;
use burn::tensor::Device;

use crate::progress::{Progress, human_bytes};

/// DeepMind's released AlphaFold 2.3 parameters.
pub const DEFAULT_URL: &str =
    "https://storage.googleapis.com/alphafold/alphafold_params_2022-12-06.tar";

/// The environment variable naming a weights directory.
pub const WEIGHTS_ENV: &str = "AF2_WEIGHTS";

/// af2's cache directory: `$XDG_CACHE_HOME/af2` or `~/.cache/af2`.
pub fn af2_cache_dir() -> Option<PathBuf> {
    let nonempty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").and_then(nonempty) {
        return Some(xdg.join("af2"));
    }
    std::env::var_os("HOME")
        .and_then(nonempty)
        .map(|home| home.join(".cache").join("af2"))
}

/// The weights cache directory: `$XDG_CACHE_HOME/af2/weights` or `~/.cache/af2/weights`.
pub fn cache_dir() -> Option<PathBuf> {
    af2_cache_dir().map(|dir| dir.join("weights"))
}

/// The directories searched for weights, in order, each with where it came from.
pub fn search_dirs(flag: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    let mut dirs = Vec::new();
    if let Some(dir) = flag {
        dirs.push((dir.to_path_buf(), "--weights"));
    }
    if let Some(env) = std::env::var_os(WEIGHTS_ENV).filter(|v| !v.is_empty()) {
        dirs.push((PathBuf::from(env), "$AF2_WEIGHTS"));
    }
    if let Some(cache) = cache_dir() {
        dirs.push((cache, "cache"));
    }
    dirs
}

/// The directory `fetch` writes to by default: `$AF2_WEIGHTS`, else the cache directory.
fn default_dest() -> Result<PathBuf> {
    search_dirs(None)
        .into_iter()
        .next()
        .map(|(d, _)| d)
        .context("no destination: set --dest, $AF2_WEIGHTS or $HOME")
}

/// The file names tried for model `m`, in order.
pub fn candidate_names(model: u32) -> [String; 2] {
    [
        format!("model_{model}_ptm.safetensors"),
        format!("params_model_{model}_ptm.npz"),
    ]
}

/// Finds the weight file of model `m` (`model_{m}_ptm`).
pub fn find_model(flag: Option<&Path>, model: u32) -> Result<PathBuf> {
    let dirs = search_dirs(flag);
    let names = candidate_names(model);
    for (dir, _) in &dirs {
        for name in &names {
            let path = dir.join(name);
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    let searched: Vec<String> = dirs
        .iter()
        .map(|(d, from)| format!("  {} ({from})", d.display()))
        .collect();
    bail!(
        "no weights for model_{model}_ptm: looked for {} in\n{}\n\
         Download and convert the released parameters ({DEFAULT_URL}) with\n  \
         af2 weights fetch{}\nor pass --weights DIR (or set ${WEIGHTS_ENV}) to a directory that has them.",
        names.join(" or "),
        if searched.is_empty() {
            "  (no directory: pass --weights DIR)".to_string()
        } else {
            searched.join("\n")
        },
        flag.map(|d| format!(" --dest {}", d.display()))
            .unwrap_or_default()
    )
}

/// A model ready to run, with its name and file.
pub struct LoadedModel {
    /// 1..=5.
    pub number: u32,
    /// The model.
    pub model: AlphaFold,
    /// Whether the weights include the template stack (model_1 and model_2).
    pub has_templates: bool,
}

/// Finds the weight file of every model (checking the model numbers).
pub fn find_models(flag: Option<&Path>, models: &[u32]) -> Result<Vec<PathBuf>> {
    if models.is_empty() {
        bail!("--models: give at least one model number (1 to 5)");
    }
    if let Some(&m) = models.iter().find(|&&m| !(1..=5).contains(&m)) {
        bail!("--models: model {m} does not exist; AlphaFold has models 1 to 5");
    }
    models.iter().map(|&m| find_model(flag, m)).collect()
}

/// Finds and loads the models; every file is found before any is loaded, so a missing one is
/// reported at once.
pub fn load_models(
    flag: Option<&Path>,
    models: &[u32],
    precision: Precision,
    device: &Device,
) -> Result<Vec<LoadedModel>> {
    let paths = find_models(flag, models)?;
    models
        .iter()
        .zip(paths)
        .map(|(&number, path)| {
            let weights = load_weights(&path)
                .with_context(|| format!("loading weights {}", path.display()))?;
            let model = build_model(&weights, precision, device)
                .with_context(|| format!("loading weights {}", path.display()))?;
            eprintln!("model_{number}_ptm: {}", path.display());
            Ok(LoadedModel {
                number,
                has_templates: weights.dims.template.is_some(),
                model,
            })
        })
        .collect()
}

/// The model of these weights on `device`, its trunk in `precision`.
pub fn build_model(
    weights: &LoadedWeights,
    precision: Precision,
    device: &Device,
) -> Result<AlphaFold> {
    let mut model = AlphaFoldConfig::from_dims(&weights.dims).init(device);
    load_module(&mut model, &weights.native)?;
    Ok(model.with_precision(precision))
}

/// Arguments of `af2 weights`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: WeightsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum WeightsCommand {
    /// Download the released parameters, extract the monomer pTM models and convert them.
    Fetch(FetchArgs),
    /// Convert released params_model_*.npz files to safetensors, verified bit for bit.
    Convert(ConvertArgs),
    /// Load weight files (or the models found in the weights directories) and check their layout.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
struct FetchArgs {
    /// The tarball to download.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// Where the converted weights go [default: $AF2_WEIGHTS, else the cache directory].
    #[arg(long)]
    dest: Option<PathBuf>,
    /// Also convert the models without the pTM head (params_model_N.npz).
    #[arg(long)]
    all_monomer: bool,
    /// Keep the released .npz files next to the converted ones.
    #[arg(long)]
    keep_npz: bool,
}

#[derive(clap::Args, Debug)]
struct ConvertArgs {
    /// Released weights, e.g. params_model_1_ptm.npz.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output directory [default: next to each input]; each file is named
    /// model_*.safetensors.
    #[arg(long, short = 'o')]
    dest: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Weight files (npz or safetensors). Without any, the models of --models are looked up in
    /// the weights directories.
    files: Vec<PathBuf>,
    /// Weights directory searched first.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Models to look up when no file is given.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    models: Vec<u32>,
}

/// Runs `af2 weights …`.
pub fn run(args: &Args) -> Result<()> {
    match &args.command {
        WeightsCommand::Fetch(a) => fetch(a),
        WeightsCommand::Convert(a) => convert(a),
        WeightsCommand::Check(a) => check(a),
    }
}

/// Whether an archive member is a monomer parameter file we convert.
fn wanted_member(name: &str, all_monomer: bool) -> bool {
    let Some(rest) = name.strip_prefix("params_model_") else {
        return false;
    };
    let Some(stem) = rest.strip_suffix(".npz") else {
        return false;
    };
    let (number, suffix) = stem.split_at(stem.find('_').unwrap_or(stem.len()));
    let is_model = matches!(number, "1" | "2" | "3" | "4" | "5");
    is_model && (suffix == "_ptm" || (all_monomer && suffix.is_empty()))
}

fn fetch(args: &FetchArgs) -> Result<()> {
    let dest = match &args.dest {
        Some(d) => d.clone(),
        None => default_dest()?,
    };
    std::fs::create_dir_all(&dest)
        .with_context(|| format!("creating the destination {}", dest.display()))?;
    let download = download(&args.url, &dest)?;
    eprintln!("extracting monomer parameters");
    let file = File::open(download.path())
        .with_context(|| format!("reopening the download {}", download.path().display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut converted = Vec::new();
    let entries = archive
        .entries()
        .with_context(|| format!("{} is not a tar archive", args.url))?;
    for entry in entries {
        let mut entry =
            entry.with_context(|| format!("reading the tar archive from {}", args.url))?;
        let member = entry.path()?.to_path_buf();
        let Some(name) = member
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !entry.header().entry_type().is_file() || !wanted_member(&name, args.all_monomer) {
            continue;
        }
        let mut npz = tempfile::Builder::new()
            .prefix(".af2-extract-")
            .suffix(".npz")
            .tempfile_in(&dest)
            .with_context(|| format!("creating a temporary file in {}", dest.display()))?;
        std::io::copy(&mut entry, npz.as_file_mut())
            .with_context(|| format!("extracting {name}"))?;
        npz.as_file().sync_all()?;
        let output = dest.join(converted_file_name(Path::new(&name)).expect("npz name"));
        let summary = convert_npz_to_safetensors(npz.path(), &output)
            .with_context(|| format!("converting {name} from {}", args.url))?;
        eprintln!(
            "{name} -> {} ({} tensors, verified)",
            output.display(),
            summary.native_tensors
        );
        if args.keep_npz {
            let kept = dest.join(&name);
            npz.persist(&kept)
                .with_context(|| format!("keeping {}", kept.display()))?;
        }
        converted.push(output);
    }
    if converted.is_empty() {
        bail!(
            "{} has no monomer parameter files (params_model_N_ptm.npz{}); is it the AlphaFold parameters tarball?",
            args.url,
            if args.all_monomer {
                " or params_model_N.npz"
            } else {
                ""
            }
        );
    }
    for path in &converted {
        check_file(path)?;
    }
    println!(
        "{} model(s) in {}; predict with `af2 predict … --weights {}`",
        converted.len(),
        dest.display(),
        dest.display()
    );
    Ok(())
}

/// Downloads `url` into a temporary file in `dir` (removed when dropped), with progress, and
/// checks the length against `Content-Length`.
fn download(url: &str, dir: &Path) -> Result<tempfile::NamedTempFile> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .build()
        .into();
    eprintln!("downloading {url}");
    let response = agent
        .get(url)
        .call()
        .with_context(|| format!("downloading {url}"))?;
    let (_, body) = response.into_parts();
    let expected = body.content_length();
    let mut reader = body.into_reader();
    let mut file = tempfile::Builder::new()
        .prefix(".af2-download-")
        .suffix(".tar")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut progress = Progress::bytes(expected, "download");
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let start = Instant::now();
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "downloading {url}: the transfer broke off after {}",
                        human_bytes(total)
                    )
                });
            }
        };
        file.write_all(&buffer[..n])
            .with_context(|| format!("writing the download to {}", file.path().display()))?;
        total += n as u64;
        progress.set(total);
    }
    progress.finish();
    file.flush()?;
    if let Some(expected) = expected
        && expected != total
    {
        bail!("downloading {url}: received {total} bytes, the server announced {expected}");
    }
    if total == 0 {
        bail!("downloading {url}: the response was empty");
    }
    eprintln!(
        "downloaded {} in {:.1} s",
        human_bytes(total),
        start.elapsed().as_secs_f64()
    );
    Ok(file)
}

fn convert(args: &ConvertArgs) -> Result<()> {
    for input in &args.inputs {
        let name = converted_file_name(input)
            .with_context(|| format!("cannot derive an output name from {}", input.display()))?;
        let dir = match &args.dest {
            Some(d) => d.clone(),
            None => input
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        };
        let output = dir.join(name);
        let summary = convert_npz_to_safetensors(input, &output)
            .with_context(|| format!("converting {}", input.display()))?;
        println!(
            "{} -> {} ({} tensors, {} floats, verified bit for bit)",
            input.display(),
            output.display(),
            summary.native_tensors,
            summary.floats
        );
    }
    Ok(())
}

fn check_file(path: &Path) -> Result<LoadedWeights> {
    let weights = load_weights(path).with_context(|| format!("checking {}", path.display()))?;
    let d = &weights.dims;
    println!(
        "ok {}: {} tensors; msa {} pair {} single {}; {} Evoformer blocks, {} extra-MSA blocks; templates {}; PAE head {}",
        path.display(),
        weights.native.len(),
        d.msa_channel,
        d.pair_channel,
        d.seq_channel,
        d.evoformer_blocks,
        d.extra_msa_blocks,
        if d.template.is_some() { "yes" } else { "no" },
        if d.pae_bins.is_some() { "yes" } else { "no" },
    );
    Ok(weights)
}

fn check(args: &CheckArgs) -> Result<()> {
    let files: Vec<PathBuf> = if args.files.is_empty() {
        args.models
            .iter()
            .map(|&m| find_model(args.weights.as_deref(), m))
            .collect::<Result<_>>()?
    } else {
        args.files.clone()
    };
    for path in &files {
        check_file(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_we_convert() {
        assert!(wanted_member("params_model_1_ptm.npz", false));
        assert!(wanted_member("params_model_5_ptm.npz", false));
        assert!(!wanted_member("params_model_1.npz", false));
        assert!(wanted_member("params_model_1.npz", true));
        assert!(!wanted_member("params_model_1_multimer_v3.npz", true));
        assert!(!wanted_member("params_model_6_ptm.npz", true));
        assert!(!wanted_member("LICENSE", true));
    }
}
