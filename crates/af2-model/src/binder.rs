//! ColabDesign's binder protocol, assembled: the inputs `mk_afdesign_model(protocol="binder")` +
//! `prep_inputs` build for one designed binder sequence (the target as template slot 0, the
//! `rm_*` options, the same-chain template mask, the initial guess, the residue index with a
//! gap of 50), the prediction, the binder alone (hallucination protocol: no template, no initial
//! guess), and the metrics of [`crate::binder_metrics`].
//!
//! PXDesign's AF2-IG call is [`BinderProtocol::pxdesign`]: `use_initial_guess=True,
//! rm_target_seq=True, rm_target_sc=False, rm_template_ic=True, use_binder_template=True` (the
//! binder template then keeps ColabDesign's defaults `rm_binder_seq=True, rm_binder_sc=True`).

use af2_io::npz::NdArray;
use af2_io::structure::Structure;

use crate::binder_metrics::{BinderLayout, BinderMetrics, MetricsError, binder_rmsd, ca_rmsd};
use crate::model::{AlphaFold, RecycleOptions};
use crate::padding::{padded_length, residue_multiple};
use crate::pipeline::{
    BuiltFeatures, ChainAtoms, ChainAtomsOptions, MsaConfig, MsaRows, PipelineError, Query,
    TemplateSegment, build_features, template_from_segments,
};
use crate::predict::{
    PdbLabels, Prediction, PredictionInputs, RecycleReport, atom37_of_chains, chain_letter,
    predict_batch, same_chain_mask,
};

/// Anything that stops one design (or the whole setup) from being scored.
#[derive(Debug, thiserror::Error)]
pub enum BinderError {
    /// Inputs the feature pipeline refused.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Metric inputs that do not fit.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A prediction whose named outputs hold NaN or infinities
    /// ([`Prediction::non_finite_outputs`]).
    #[error("the prediction came out non-finite ({})", .0.join(", "))]
    NonFinite(Vec<&'static str>),
    /// Anything else, in words.
    #[error("{0}")]
    Invalid(String),
}

/// The options of ColabDesign's `prep_inputs` for the binder protocol, and `use_initial_guess`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinderProtocol {
    /// Target template residues become gaps (aatype 21) and lose their side chains.
    pub rm_target_seq: bool,
    /// Target template side chains (atom37 index ≥ 5) are masked.
    pub rm_target_sc: bool,
    /// In redesign mode, the binder's own structure is part of the template.
    pub use_binder_template: bool,
    /// Binder template residues become gaps (ColabDesign's default: true).
    pub rm_binder_seq: bool,
    /// Binder template side chains are masked (ColabDesign's default: true).
    pub rm_binder_sc: bool,
    /// Template pair features between target and binder are masked out.
    pub rm_template_ic: bool,
    /// The first pass's `prev_pos` is the input complex (zeros for a binder of `binder_len`).
    pub use_initial_guess: bool,
}

impl BinderProtocol {
    /// PXDesign's AF2-IG call.
    pub fn pxdesign() -> Self {
        Self {
            rm_target_seq: true,
            rm_target_sc: false,
            use_binder_template: true,
            rm_binder_seq: true,
            rm_binder_sc: true,
            rm_template_ic: true,
            use_initial_guess: true,
        }
    }
}

impl Default for BinderProtocol {
    fn default() -> Self {
        Self::pxdesign()
    }
}

/// Which binder: a chain of the complex (redesign mode) or a length (hallucination mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinderSpec {
    /// Redesign the binder chain with this id.
    Chain(String),
    /// A new binder of this many residues.
    Length(usize),
}

/// The inputs of one complex prediction.
#[derive(Debug, Clone)]
pub struct ComplexInputs {
    /// Target then binder.
    pub query: Query,
    /// Features (single sequence, the template in slot 0).
    pub built: BuiltFeatures,
    /// ColabDesign's same-chain mask when `rm_template_ic` is set.
    pub template_pair_mask: Option<Vec<f32>>,
    /// The input complex as `[N, 37, 3]` when `use_initial_guess` is set.
    pub initial_positions: Option<NdArray<f32>>,
}

/// A target (and, in redesign mode, a binder) read from a complex, ready to score designs.
#[derive(Debug, Clone)]
pub struct BinderComplex {
    /// The target chain's id.
    pub target_chain: String,
    /// The target chain as ColabDesign's `prep_pdb` reads it.
    pub target: ChainAtoms,
    /// The binder chain's id (a free letter in hallucination mode).
    pub binder_chain: String,
    /// The binder chain (redesign mode).
    pub binder: Option<ChainAtoms>,
    /// Binder length.
    pub binder_len: usize,
    /// The options.
    pub protocol: BinderProtocol,
    /// 0-based complex indices of the hotspot residues.
    pub hotspot: Option<Vec<usize>>,
}

impl BinderComplex {
    /// Reads the target (and the binder) from a structure.
    pub fn from_structure(
        structure: &Structure,
        target_chain: &str,
        binder: &BinderSpec,
        protocol: BinderProtocol,
    ) -> Result<Self, BinderError> {
        let options = ChainAtomsOptions::colabdesign();
        let chain = structure
            .require_chain(target_chain)
            .map_err(BinderError::Invalid)?;
        let target = ChainAtoms::from_chain(chain, &options)?;
        let (binder_chain, binder_atoms, binder_len) = match binder {
            BinderSpec::Chain(id) => {
                if id == target_chain {
                    return Err(BinderError::Invalid(format!(
                        "the binder chain '{id}' is the target chain"
                    )));
                }
                let chain = structure.require_chain(id).map_err(BinderError::Invalid)?;
                let atoms = ChainAtoms::from_chain(chain, &options)?;
                let len = atoms.len();
                (id.clone(), Some(atoms), len)
            }
            BinderSpec::Length(0) => {
                return Err(BinderError::Invalid("the binder length must be > 0".into()));
            }
            BinderSpec::Length(len) => {
                let id = (0..62)
                    .map(|k| chain_letter(k).to_string())
                    .find(|c| c != target_chain)
                    .expect("a free letter");
                (id, None, *len)
            }
        };
        Ok(Self {
            target_chain: target_chain.to_string(),
            target,
            binder_chain,
            binder: binder_atoms,
            binder_len,
            protocol,
            hotspot: None,
        })
    }

    /// Target residues.
    pub fn target_len(&self) -> usize {
        self.target.len()
    }

    /// Residues of the complex.
    pub fn len(&self) -> usize {
        self.target_len() + self.binder_len
    }

    /// Whether the complex is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the hotspot from ColabDesign-style text: comma-separated residues of the input
    /// structure, each `A12` (chain and residue number), `A12-18` (a range), or a bare number
    /// or range on the target chain.
    pub fn set_hotspot(&mut self, spec: &str) -> Result<(), BinderError> {
        let mut positions = Vec::new();
        for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let split = token
                .find(|c: char| c.is_ascii_digit() || c == '-')
                .unwrap_or(token.len());
            let (chain, range) = token.split_at(split);
            let chain = if chain.is_empty() {
                self.target_chain.as_str()
            } else {
                chain
            };
            let bad = || {
                BinderError::Invalid(format!(
                    "hotspot '{token}': expected a chain id and residue number such as A12 or a range A12-18"
                ))
            };
            let (from, to) = match range.get(1..).and_then(|r| r.find('-').map(|k| k + 1)) {
                Some(k) => (range[..k].parse::<i64>(), range[k + 1..].parse::<i64>()),
                None => (range.parse::<i64>(), range.parse::<i64>()),
            };
            let (from, to) = (from.map_err(|_| bad())?, to.map_err(|_| bad())?);
            let (atoms, offset) = if chain == self.target_chain {
                (&self.target, 0)
            } else if chain == self.binder_chain && self.binder.is_some() {
                (self.binder.as_ref().expect("checked"), self.target_len())
            } else {
                return Err(BinderError::Invalid(format!(
                    "hotspot '{token}': chain '{chain}' is neither the target '{}' nor the binder",
                    self.target_chain
                )));
            };
            let found: Vec<usize> = atoms
                .residue_numbers
                .iter()
                .enumerate()
                .filter(|(_, r)| (from..=to).contains(*r))
                .map(|(i, _)| offset + i)
                .collect();
            if found.is_empty() {
                return Err(BinderError::Invalid(format!(
                    "hotspot '{token}': chain '{chain}' has no residue numbered {from}..={to}"
                )));
            }
            positions.extend(found);
        }
        if positions.is_empty() {
            return Err(BinderError::Invalid(format!("hotspot '{spec}' is empty")));
        }
        positions.sort_unstable();
        positions.dedup();
        self.hotspot = Some(positions);
        Ok(())
    }

    /// The metrics' view of the complex.
    pub fn layout(&self) -> Result<BinderLayout, BinderError> {
        let layout = BinderLayout::new(self.target_len(), self.binder_len);
        Ok(match &self.hotspot {
            Some(h) => layout.with_hotspot(h.clone())?,
            None => layout,
        })
    }

    /// Checks a design sequence against the binder; the error says what was expected.
    pub fn check_sequence(&self, sequence: &str) -> Result<(), BinderError> {
        let len = sequence.chars().count();
        if len != self.binder_len {
            let what = match &self.binder {
                Some(_) => format!("binder chain '{}'", self.binder_chain),
                None => "--binder-len".to_string(),
            };
            return Err(BinderError::Invalid(format!(
                "the sequence has {len} residues; the {what} has {}",
                self.binder_len
            )));
        }
        Ok(())
    }

    fn binder_numbers(&self) -> Vec<i64> {
        match &self.binder {
            Some(b) => b.residue_numbers.clone(),
            None => (0..self.binder_len as i64).collect(),
        }
    }

    /// The inputs of the complex with this binder sequence.
    pub fn complex_inputs(&self, sequence: &str) -> Result<ComplexInputs, BinderError> {
        self.check_sequence(sequence)?;
        let query = Query::from_numbered_chains(&[
            (
                self.target.sequence.as_str(),
                self.target.residue_numbers.clone(),
            ),
            (sequence, self.binder_numbers()),
        ])?;
        let p = &self.protocol;
        let mut segments = vec![TemplateSegment {
            atoms: &self.target,
            start: 0,
            rm_seq: p.rm_target_seq,
            rm_sc: p.rm_target_sc,
        }];
        if let (Some(binder), true) = (&self.binder, p.use_binder_template) {
            segments.push(TemplateSegment {
                atoms: binder,
                start: self.target_len(),
                rm_seq: p.rm_binder_seq,
                rm_sc: p.rm_binder_sc,
            });
        }
        let template = template_from_segments(query.len(), &segments)?;
        let built = build_features(
            &query,
            &MsaRows::single(&query),
            Some(template),
            &MsaConfig::default(),
        )?;
        let template_pair_mask = p.rm_template_ic.then(|| same_chain_mask(&query.asym_id));
        let initial_positions = p.use_initial_guess.then(|| {
            let mut chains = vec![&self.target];
            if let Some(b) = &self.binder {
                chains.push(b);
            }
            let mut a = atom37_of_chains(&chains);
            // A binder of `binder_len` has no coordinates: zeros, as ColabDesign pads them.
            a.data.resize(query.len() * 37 * 3, 0.0);
            a.shape = vec![query.len(), 37, 3];
            a
        });
        Ok(ComplexInputs {
            query,
            built,
            template_pair_mask,
            initial_positions,
        })
    }

    /// The binder alone (ColabDesign's hallucination protocol): single sequence, no template.
    pub fn monomer_inputs(&self, sequence: &str) -> Result<(Query, BuiltFeatures), BinderError> {
        self.check_sequence(sequence)?;
        let query = Query::single(sequence)?;
        let built = build_features(
            &query,
            &MsaRows::single(&query),
            None,
            &MsaConfig::default(),
        )?;
        Ok((query, built))
    }

    /// CA of the input complex and its mask (redesign mode), for the `rmsd` metric.
    pub fn true_ca(&self) -> Option<(Vec<[f64; 3]>, Vec<f64>)> {
        let binder = self.binder.as_ref()?;
        let (ca, mask) = [&self.target, binder]
            .iter()
            .flat_map(|c| c.positions.iter().zip(&c.masks))
            .map(|(p, m)| (p[1].map(f64::from), f64::from(m[1])))
            .unzip();
        Some((ca, mask))
    }

    /// PDB labels of the complex: the input's chain ids and residue numbers (a binder of
    /// `binder_len` is numbered from 1).
    pub fn pdb_labels(&self) -> PdbLabels {
        let id = |s: &str| s.chars().next().unwrap_or('A');
        let mut chain_ids = vec![id(&self.target_chain); self.target_len()];
        chain_ids.extend(std::iter::repeat_n(id(&self.binder_chain), self.binder_len));
        let mut residue_numbers = self.target.residue_numbers.clone();
        match &self.binder {
            Some(b) => residue_numbers.extend(&b.residue_numbers),
            None => residue_numbers.extend(1..=self.binder_len as i64),
        }
        PdbLabels {
            chain_ids,
            residue_numbers,
        }
    }
}

/// One scored design.
#[derive(Debug, Clone)]
pub struct ScoredDesign {
    /// The metrics (the mean over models where several are given, as ColabDesign averages).
    pub metrics: BinderMetrics,
    /// The complex prediction of the first model.
    pub complex: Prediction,
    /// The complex's query (target + design).
    pub query: Query,
    /// The binder folded alone by the first model, when asked for.
    pub monomer: Option<Prediction>,
}

/// Which pass of which fold a [`RecycleReport`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldKind {
    /// The complex (AF2-IG).
    Complex,
    /// The binder alone.
    Monomer,
}

/// Mean of the metrics of several models (ColabDesign averages `aux` over models); an optional
/// metric is averaged when every model has it.
pub fn mean_metrics(all: &[BinderMetrics]) -> Option<BinderMetrics> {
    if all.is_empty() {
        return None;
    }
    let k = all.len() as f64;
    let mean = |f: fn(&BinderMetrics) -> f64| all.iter().map(f).sum::<f64>() / k;
    let mean_opt = |f: fn(&BinderMetrics) -> Option<f64>| {
        all.iter()
            .map(f)
            .collect::<Option<Vec<f64>>>()
            .map(|v| v.iter().sum::<f64>() / k)
    };
    Some(BinderMetrics {
        plddt: mean(|m| m.plddt),
        pae: mean(|m| m.pae),
        i_pae: mean(|m| m.i_pae),
        unscaled_i_pae: mean(|m| m.unscaled_i_pae),
        ptm: mean(|m| m.ptm),
        i_ptm: mean(|m| m.i_ptm),
        rmsd: mean_opt(|m| m.rmsd),
        bound_unbound_rmsd: mean_opt(|m| m.bound_unbound_rmsd),
        plddt_monomer: mean_opt(|m| m.plddt_monomer),
    })
}

/// Scores one design: the complex with every model, and (when `fold_monomer`) the binder alone
/// with the same models, giving `plddt_monomer` and the bound/unbound binder CA RMSD. This is
/// [`score_designs`] with a batch of one.
#[allow(clippy::too_many_arguments)]
pub fn score_design(
    models: &[&AlphaFold],
    complex: &BinderComplex,
    sequence: &str,
    num_recycles: usize,
    options: &RecycleOptions,
    fold_monomer: bool,
    device: &burn::tensor::Device,
    mut on_recycle: impl FnMut(usize, FoldKind, &RecycleReport),
) -> Result<ScoredDesign, BinderError> {
    score_designs(
        models,
        complex,
        &[sequence],
        num_recycles,
        options,
        fold_monomer,
        device,
        |_, k, kind, r| on_recycle(k, kind, r),
    )
    .swap_remove(0)
}

/// [`BinderError::NonFinite`] where the prediction has outputs holding NaN or infinities.
fn require_finite(prediction: &Prediction) -> Result<(), BinderError> {
    let non_finite = prediction.non_finite_outputs();
    if non_finite.is_empty() {
        Ok(())
    } else {
        Err(BinderError::NonFinite(non_finite))
    }
}

/// One design on its way through [`score_designs`].
struct DesignRun {
    inputs: ComplexInputs,
    monomer: Option<BuiltFeatures>,
    metrics: Vec<BinderMetrics>,
    first: Option<(Prediction, Option<Prediction>)>,
}

/// The metrics of one complex prediction (without the monomer's).
fn complex_metrics(
    complex: &BinderComplex,
    prediction: &Prediction,
) -> Result<BinderMetrics, BinderError> {
    let layout = complex.layout()?;
    let pae = prediction.pae.as_ref().ok_or_else(|| {
        BinderError::Invalid(
            "the weights have no PAE head; the binder metrics need a _ptm model".into(),
        )
    })?;
    let mut metrics = BinderMetrics::from_confidence(
        &layout,
        &prediction.plddt,
        &pae.pae,
        &pae.logits,
        pae.bins,
    )?;
    if let Some((ca, mask)) = complex.true_ca() {
        metrics.rmsd = Some(binder_rmsd(&ca, &prediction.ca(), Some(&mask), &layout)?);
    }
    Ok(metrics)
}

/// [`score_design`] for several designs: designs whose lengths pad to one length
/// ([`crate::padding`]: on a GPU, lengths rounded up to a multiple of 8; on the CPU, one length)
/// are folded together, a batch per model (and a batch of binders alone), each pass of a batch
/// one batched forward pass ([`predict_batch`]). Returns one result per sequence, in order; a
/// design that fails (its sequence, its metrics) does not stop the others.
/// `on_recycle(design, model, kind, report)` reports every pass of every design.
#[allow(clippy::too_many_arguments)]
pub fn score_designs(
    models: &[&AlphaFold],
    complex: &BinderComplex,
    sequences: &[&str],
    num_recycles: usize,
    options: &RecycleOptions,
    fold_monomer: bool,
    device: &burn::tensor::Device,
    mut on_recycle: impl FnMut(usize, usize, FoldKind, &RecycleReport),
) -> Vec<Result<ScoredDesign, BinderError>> {
    if models.is_empty() {
        return sequences
            .iter()
            .map(|_| Err(BinderError::Invalid("no model to score with".into())))
            .collect();
    }
    let mut runs: Vec<Result<DesignRun, BinderError>> = sequences
        .iter()
        .map(|sequence| {
            let inputs = complex.complex_inputs(sequence)?;
            let monomer = if fold_monomer {
                Some(complex.monomer_inputs(sequence)?.1)
            } else {
                None
            };
            Ok(DesignRun {
                inputs,
                monomer,
                metrics: Vec::with_capacity(models.len()),
                first: None,
            })
        })
        .collect();
    // Designs whose lengths pad to the same length fold in one batch.
    let multiple = residue_multiple(device);
    let padded = |run: &DesignRun| padded_length(run.inputs.query.len(), multiple);
    let mut lengths: Vec<usize> = runs.iter().flatten().map(padded).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for length in lengths {
        for (k, model) in models.iter().enumerate() {
            let live = |runs: &[Result<DesignRun, BinderError>]| -> Vec<usize> {
                (0..runs.len())
                    .filter(|&d| matches!(&runs[d], Ok(r) if padded(r) == length))
                    .collect()
            };
            let batch = live(&runs);
            if batch.is_empty() {
                break;
            }
            let inputs = batch_inputs(&runs, &batch, |run| PredictionInputs {
                iterations: std::slice::from_ref(&run.inputs.built.features),
                asym_id: &run.inputs.built.asym_id,
                initial_positions: run.inputs.initial_positions.as_ref(),
                template_pair_mask: run.inputs.template_pair_mask.as_deref(),
            });
            let complexes = predict_batch(model, &inputs, num_recycles, options, device, |d, r| {
                on_recycle(batch[d], k, FoldKind::Complex, r)
            });
            let complexes = match complexes {
                Ok(c) => c,
                Err(e) => {
                    fail_all(&mut runs, &batch, &e.to_string());
                    continue;
                }
            };
            let mut scored = Vec::with_capacity(batch.len());
            for (&d, prediction) in batch.iter().zip(complexes) {
                if let Err(e) = require_finite(&prediction) {
                    runs[d] = Err(e);
                    continue;
                }
                match complex_metrics(complex, &prediction) {
                    Ok(m) => scored.push((d, m, prediction)),
                    Err(e) => runs[d] = Err(e),
                }
            }
            let with_monomer: Vec<usize> = scored.iter().map(|s| s.0).collect();
            let monomers = if fold_monomer && !with_monomer.is_empty() {
                let inputs = batch_inputs(&runs, &with_monomer, |run| {
                    let built = run.monomer.as_ref().expect("monomer features");
                    PredictionInputs::new(std::slice::from_ref(&built.features), &built.asym_id)
                });
                let monomers =
                    predict_batch(model, &inputs, num_recycles, options, device, |d, r| {
                        on_recycle(with_monomer[d], k, FoldKind::Monomer, r)
                    });
                match monomers {
                    Ok(m) => m.into_iter().map(Some).collect(),
                    Err(e) => {
                        fail_all(&mut runs, &with_monomer, &e.to_string());
                        continue;
                    }
                }
            } else {
                vec![None; scored.len()]
            };
            for ((d, mut metrics, prediction), monomer) in scored.into_iter().zip(monomers) {
                let Ok(run) = &mut runs[d] else { continue };
                if let Some(m) = &monomer {
                    if let Err(e) = require_finite(m) {
                        runs[d] = Err(e);
                        continue;
                    }
                    metrics.plddt_monomer = Some(m.mean_plddt() / 100.0);
                    let bound = &prediction.ca()[complex.target_len()..];
                    match ca_rmsd(bound, &m.ca(), None) {
                        Ok(rmsd) => metrics.bound_unbound_rmsd = Some(rmsd),
                        Err(e) => {
                            runs[d] = Err(e.into());
                            continue;
                        }
                    }
                }
                run.metrics.push(metrics);
                if run.first.is_none() {
                    run.first = Some((prediction, monomer));
                }
            }
        }
    }
    runs.into_iter()
        .map(|run| {
            let run = run?;
            let (complex_prediction, monomer) = run.first.expect("one model at least");
            Ok(ScoredDesign {
                metrics: mean_metrics(&run.metrics).expect("one model at least"),
                complex: complex_prediction,
                query: run.inputs.query,
                monomer,
            })
        })
        .collect()
}

/// The prediction inputs of the designs `batch` of `runs` (all `Ok`).
fn batch_inputs<'r>(
    runs: &'r [Result<DesignRun, BinderError>],
    batch: &[usize],
    inputs: impl Fn(&'r DesignRun) -> PredictionInputs<'r>,
) -> Vec<PredictionInputs<'r>> {
    batch
        .iter()
        .map(|&d| inputs(runs[d].as_ref().expect("a live design")))
        .collect()
}

/// Marks every design of `batch` as failed with `error` (a batch the model refused).
fn fail_all(runs: &mut [Result<DesignRun, BinderError>], batch: &[usize], error: &str) {
    for &d in batch {
        runs[d] = Err(BinderError::Invalid(error.to_string()));
    }
}

#[cfg(test)]
mod tests;
