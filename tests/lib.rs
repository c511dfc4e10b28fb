//! The parity harness: runs the model on an oracle case (DeepMind AlphaFold 2.3.2 in JAX,
//! float32, `make_golden.py`) and compares every output with the oracle's.
//!
//! Tolerances come from the oracle's own float32 noise floor: `meta.json:float64_deviation`
//! records, per output, how far the float32 oracle is from the same computation in float64.
//! A correct float32 implementation is expected within [`NOISE_FACTOR`] times that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;

use af2_io::features::feature_slice;
use af2_io::npz::{Array, read_npz};
use af2_io::weights::{LoadedWeights, load_weights};
use af2_model::features::Features;
use af2_model::model::{AlphaFold, AlphaFoldConfig, IterationOutput, Recycled};
use af2_model::outputs::prediction_arrays;
use af2_model::weights::load_module;

/// Allowed error, as a multiple of the oracle's float32 noise floor.
pub const NOISE_FACTOR: f64 = 10.0;

/// float32 machine epsilon. The noise floor of an output is never taken below the float32
/// resolution of its largest value: the oracle's float64 deviation is one draw of float32
/// rounding, and for a low-sensitivity statistic (pTM: 2.7e-11 absolute on 2.9e-3, i.e.
/// 1e-8 relative, in r0_n20) that draw can fall below what float32 arithmetic can promise.
pub const F32_EPSILON: f64 = f32::EPSILON as f64;

/// The CPU reference device (ndarray, as the design card names it; Burn 0.22 deprecates it in
/// favour of flex, which we measure beside it).
#[allow(deprecated)]
pub fn reference_device() -> Device {
    Device::ndarray()
}

/// The committed fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// One oracle case on disk.
pub struct OracleCase {
    /// Its folder.
    pub dir: PathBuf,
    /// `features.npz` (leading recycle axis).
    pub features: BTreeMap<String, Array>,
    /// `outputs.npz`.
    pub outputs: BTreeMap<String, Array>,
    /// `trace.npz`, when made with `--trace-recycles`.
    pub trace: Option<BTreeMap<String, Array>>,
    /// `meta.json`.
    pub meta: serde_json::Value,
}

impl OracleCase {
    /// Reads a case folder.
    pub fn open(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            read_npz(&dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let meta_path = dir.join("meta.json");
        let meta = serde_json::from_str(
            &std::fs::read_to_string(&meta_path)
                .with_context(|| format!("reading {}", meta_path.display()))?,
        )
        .with_context(|| format!("parsing {}", meta_path.display()))?;
        let trace_path = dir.join("trace.npz");
        Ok(Self {
            dir: dir.to_path_buf(),
            features: read("features.npz")?,
            outputs: read("outputs.npz")?,
            trace: if trace_path.exists() {
                Some(read("trace.npz")?)
            } else {
                None
            },
            meta,
        })
    }

    /// Number of iterations (`num_recycles + 1`).
    pub fn iterations(&self) -> usize {
        self.features
            .get("aatype")
            .map(|a| a.shape()[0])
            .unwrap_or(0)
    }

    /// The features fed into iteration `r`.
    pub fn iteration_features(&self, r: usize) -> Result<Features> {
        let slice = feature_slice(&self.features, r)?;
        Ok(Features::from_arrays(&slice)?)
    }

    /// The oracle's float32-vs-float64 deviation of an output, if recorded.
    pub fn noise_floor(&self, key: &str) -> Option<f64> {
        self.meta
            .get("float64_deviation")?
            .get(key)?
            .get("max_abs")?
            .as_f64()
    }

    /// The state the oracle fed into iteration `r` (teacher forcing), from `trace.npz`.
    pub fn fed_state(&self, r: usize, device: &Device) -> Result<Option<Recycled>> {
        let Some(trace) = &self.trace else {
            return Ok(None);
        };
        let get = |k: &str| -> Result<af2_io::npz::NdArray<f32>> {
            let a = trace.get(k).with_context(|| format!("trace has no {k}"))?;
            Ok(a.index_axis0(r)
                .with_context(|| format!("{k} has no index {r}"))?
                .to_f32())
        };
        use af2_model::features::to_tensor;
        Ok(Some(Recycled {
            msa_first_row: to_tensor(&get("fed_prev_msa_first_row")?, device),
            pair: to_tensor(&get("fed_prev_pair")?, device),
            positions: to_tensor(&get("fed_prev_pos")?, device),
        }))
    }
}

/// Builds the model that fits these weights and loads them.
pub fn build_model(weights: &LoadedWeights, device: &Device) -> Result<AlphaFold> {
    let mut model = AlphaFoldConfig::from_dims(&weights.dims).init(device);
    load_module(&mut model, &weights.native)
        .with_context(|| format!("loading {}", weights.source.display()))?;
    // The oracle's outputs hold the side chains of every structure-module iteration.
    model.structure_module.keep_sidechain_trajectory(true);
    Ok(model)
}

/// Loads a case's `params.npz` and builds its model.
pub fn case_model(case: &OracleCase, device: &Device) -> Result<AlphaFold> {
    let weights = load_weights(&case.dir.join("params.npz"))?;
    build_model(&weights, device)
}

/// The worst disagreement between one of our outputs and the oracle's.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Output name.
    pub key: String,
    /// Largest |ours - oracle|.
    pub max_abs: f64,
    /// Largest |ours - oracle| / max|oracle|.
    pub rel_to_absmax: f64,
    /// Flat index of the largest error, with the shape.
    pub worst_at: (usize, Vec<usize>),
    /// Allowed multiple of the noise floor.
    pub factor: f64,
    /// The oracle's float32 noise floor for this output: its float64 deviation, at least
    /// [`F32_EPSILON`] times the largest magnitude.
    pub noise: Option<f64>,
}

impl Comparison {
    /// The allowed error: `factor` times the noise floor.
    pub fn tolerance(&self) -> Option<f64> {
        self.noise.map(|n| n * self.factor)
    }

    /// Whether the error is within tolerance (true when no floor is recorded).
    pub fn passes(&self) -> bool {
        self.tolerance().is_none_or(|t| self.max_abs <= t)
    }

    fn index_string(&self) -> String {
        let (mut flat, shape) = (self.worst_at.0, &self.worst_at.1);
        let mut idx = vec![0; shape.len()];
        for (d, size) in shape.iter().enumerate().rev() {
            idx[d] = flat % size.max(&1);
            flat /= size.max(&1);
        }
        format!("{idx:?}")
    }
}

fn as_f64(a: &Array) -> Vec<f64> {
    match a {
        Array::F64(x) => x.data.clone(),
        other => other.to_f32().data.iter().map(|&v| f64::from(v)).collect(),
    }
}

/// Compares every output we produce that the oracle also has, at [`NOISE_FACTOR`].
pub fn compare_outputs(case: &OracleCase, ours: &[(String, Array)]) -> Result<Vec<Comparison>> {
    compare_outputs_with(case, ours, NOISE_FACTOR)
}

/// Compares outputs, allowing `factor` times the noise floor (100 for GPU backends, whose
/// reductions and fused kernels reorder float32 arithmetic more freely).
pub fn compare_outputs_with(
    case: &OracleCase,
    ours: &[(String, Array)],
    factor: f64,
) -> Result<Vec<Comparison>> {
    let mut rows = Vec::new();
    for (key, mine) in ours {
        let Some(theirs) = case.outputs.get(key) else {
            continue;
        };
        if mine.shape() != theirs.shape() {
            bail!(
                "{key}: our shape {:?} differs from the oracle's {:?}",
                mine.shape(),
                theirs.shape()
            );
        }
        let (a, b) = (as_f64(mine), as_f64(theirs));
        let absmax = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let (worst, max_abs) = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .enumerate()
            .fold((0, 0.0f64), |best, (i, e)| {
                if e > best.1 || e.is_nan() {
                    (i, e)
                } else {
                    best
                }
            });
        rows.push(Comparison {
            key: key.clone(),
            max_abs,
            rel_to_absmax: if absmax > 0.0 {
                max_abs / absmax
            } else {
                max_abs
            },
            worst_at: (worst, theirs.shape().to_vec()),
            factor,
            noise: case.noise_floor(key).map(|n| n.max(F32_EPSILON * absmax)),
        });
    }
    Ok(rows)
}

/// How far a prediction's structure and confidences are from another's: the measures a
/// user of half precision cares about.
#[derive(Debug, Clone, Copy)]
pub struct StructureDifference {
    /// RMSD of CA atoms in the same frame, no superposition (Å).
    pub ca_rmsd: f64,
    /// Largest |ΔpLDDT| of a residue (0-100 scale).
    pub plddt_max: f64,
    /// Mean |ΔpLDDT| (0-100 scale).
    pub plddt_mean: f64,
    /// |ΔpTM|, when both have it.
    pub ptm: Option<f64>,
}

/// [`StructureDifference`] of `ours` from `reference`, both in `outputs.npz` naming
/// (`final_atom_positions` `[N, 37, 3]`, `plddt` `[N]`, optional `ptm`).
pub fn structure_difference(
    ours: &BTreeMap<String, Array>,
    reference: &BTreeMap<String, Array>,
) -> Result<StructureDifference> {
    let get = |set: &BTreeMap<String, Array>, key: &str| -> Result<Vec<f64>> {
        set.get(key)
            .map(as_f64)
            .with_context(|| format!("no `{key}` output"))
    };
    let (a, b) = (
        get(ours, "final_atom_positions")?,
        get(reference, "final_atom_positions")?,
    );
    if a.len() != b.len() || a.len() % (37 * 3) != 0 {
        bail!("final_atom_positions: {} vs {} values", a.len(), b.len());
    }
    let n = a.len() / (37 * 3);
    const CA: usize = 1;
    let ca_sq: f64 = (0..n)
        .map(|i| {
            (0..3)
                .map(|k| (a[(i * 37 + CA) * 3 + k] - b[(i * 37 + CA) * 3 + k]).powi(2))
                .sum::<f64>()
        })
        .sum();
    let (pa, pb) = (get(ours, "plddt")?, get(reference, "plddt")?);
    let dp: Vec<f64> = pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).collect();
    let ptm = match (get(ours, "ptm"), get(reference, "ptm")) {
        (Ok(x), Ok(y)) => Some((x[0] - y[0]).abs()),
        _ => None,
    };
    Ok(StructureDifference {
        ca_rmsd: (ca_sq / n.max(1) as f64).sqrt(),
        plddt_max: dp.iter().cloned().fold(0.0, f64::max),
        plddt_mean: dp.iter().sum::<f64>() / dp.len().max(1) as f64,
        ptm,
    })
}

/// Runs a case: every iteration from zeros (`teacher_forcing = false`), or only the last
/// iteration from the oracle's fed state.
pub fn run_case(
    case: &OracleCase,
    model: &AlphaFold,
    teacher_forcing: bool,
    device: &Device,
) -> Result<IterationOutput> {
    let iterations = case.iterations();
    if iterations == 0 {
        bail!("{}: features have no iterations", case.dir.display());
    }
    if teacher_forcing {
        let last = iterations - 1;
        let state = case
            .fed_state(last, device)?
            .with_context(|| format!("{} has no trace.npz", case.dir.display()))?;
        return Ok(model.forward_iteration(&case.iteration_features(last)?, state, device));
    }
    let features: Vec<Features> = (0..iterations)
        .map(|r| case.iteration_features(r))
        .collect::<Result<_>>()?;
    Ok(model.forward_recycled(&features, None, device))
}

/// Runs a case and compares all outputs.
pub fn parity(
    case: &OracleCase,
    teacher_forcing: bool,
    device: &Device,
) -> Result<Vec<Comparison>> {
    let model = case_model(case, device)?;
    let out = run_case(case, &model, teacher_forcing, device)?;
    compare_outputs(case, &prediction_arrays(&out))
}

/// [`parity`] of every iteration (from zeros) with `extra` masked residues appended to the
/// features ([`Features::padded_to`]) and the outputs cut back to the case's residues.
pub fn parity_padded(case: &OracleCase, extra: usize, device: &Device) -> Result<Vec<Comparison>> {
    let model = case_model(case, device)?;
    let features: Vec<Features> = (0..case.iterations())
        .map(|r| case.iteration_features(r))
        .collect::<Result<_>>()?;
    let n = features
        .first()
        .with_context(|| format!("{}: features have no iterations", case.dir.display()))?
        .num_residues();
    let padded: Vec<Features> = features
        .iter()
        .map(|f| f.padded_to(n + extra).into_owned())
        .collect();
    let out = model.forward_recycled(&padded, None, device);
    compare_outputs(case, &prediction_arrays(&out.first_residues(n)))
}

/// A printable table of comparisons.
pub fn format_table(title: &str, rows: &[Comparison]) -> String {
    let mut s = format!(
        "{title}\n{:<40} {:>11} {:>11} {:>11} {:>11}  {:<5} worst at\n",
        "output", "max abs", "rel absmax", "f64 noise", "tolerance", "ok"
    );
    for r in rows {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2e}"));
        s.push_str(&format!(
            "{:<40} {:>11.3e} {:>11.3e} {:>11} {:>11}  {:<5} {}\n",
            r.key,
            r.max_abs,
            r.rel_to_absmax,
            opt(r.noise),
            opt(r.tolerance()),
            if r.passes() { "yes" } else { "NO" },
            r.index_string()
        ));
    }
    s
}
