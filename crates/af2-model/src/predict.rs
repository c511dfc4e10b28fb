//! One prediction, end to end around the model: the recycling loop (with a report after every
//! pass, an optional initial guess and an optional template pair mask), the confidences read
//! back to the host (pLDDT, PAE, pTM, ipTM), template features from a structure chain aligned
//! to the query, and the PDB of the result.
//!
//! ```no_run
//! # use af2_model::predict::*;
//! # use af2_model::pipeline::*;
//! # fn demo(model: &af2_model::model::AlphaFold, device: &burn::tensor::Device) {
//! let query = Query::single("MKVLAAGIV").unwrap();
//! let built = build_features(&query, &MsaRows::single(&query),
//!     Some(placeholder_templates(query.len())), &MsaConfig::default()).unwrap();
//! let inputs = PredictionInputs::new(std::slice::from_ref(&built.features), &built.asym_id);
//! let prediction = predict(model, &inputs, 3, &Default::default(), device, |report| {
//!     eprintln!("recycle {} pLDDT {:.1}", report.iteration, report.mean_plddt)
//! });
//! # }
//! ```

use std::borrow::Cow;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};

use af2_io::npz::NdArray;
use af2_io::output::{Atom37Structure, write_pdb};

use crate::confidence;
use crate::features::{BatchFeatures, FeatureError, Features, TemplateFeatures};
use crate::model::{AlphaFold, RecycleLog, RecycleOptions};
pub use crate::outputs::PaeOutput;
use crate::outputs::{confidences, to_host};
use crate::padding::{padded_length, residue_multiple};
use crate::pipeline::{ChainAtoms, PipelineError, Query, TemplateSegment, template_from_segments};
use crate::residue_constants as rc;

/// atom37 slot of CA.
const ATOM_CA: usize = 1;

/// What one prediction is run on.
#[derive(Debug, Clone, Copy)]
pub struct PredictionInputs<'a> {
    /// The features of each pass: pass `r` uses `iterations[min(r, len - 1)]`, so one element
    /// serves every pass (deterministic features), and one per pass resamples the MSA.
    pub iterations: &'a [Features],
    /// `[N]` chain number of each residue (for ipTM; a single chain has no ipTM).
    pub asym_id: &'a [i64],
    /// `[N, 37, 3]` atom37 positions fed to the first pass as its `prev_pos` (ColabDesign's
    /// `use_initial_guess`); zeros when `None`.
    pub initial_positions: Option<&'a NdArray<f32>>,
    /// `[N * N]` mask multiplied into the template pair features (ColabDesign's
    /// `rm_template_ic`: see [`same_chain_mask`]).
    pub template_pair_mask: Option<&'a [f32]>,
}

impl<'a> PredictionInputs<'a> {
    /// Inputs without an initial guess or template pair mask.
    pub fn new(iterations: &'a [Features], asym_id: &'a [i64]) -> Self {
        Self {
            iterations,
            asym_id,
            initial_positions: None,
            template_pair_mask: None,
        }
    }
}

/// What [`predict`] reports after each pass.
#[derive(Debug, Clone, PartialEq)]
pub struct RecycleReport {
    /// 0 for the first pass, then 1 per recycle.
    pub iteration: usize,
    /// Mean pLDDT (0-100) of this pass.
    pub mean_plddt: f64,
    /// pTM of this pass (models with a PAE head).
    pub ptm: Option<f64>,
    /// RMS change of the CA distance matrix from the previous pass (Å); `None` for the first.
    pub ca_change: Option<f32>,
    /// Wall time of this pass, confidences included (s).
    pub seconds: f64,
}

/// A finished prediction on the host.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// `[N, 37, 3]` final atom positions (Å).
    pub atom_positions: NdArray<f32>,
    /// `[N, 37]` which atom37 slots exist for each residue type.
    pub atom_mask: NdArray<f32>,
    /// `[N]` pLDDT, 0-100.
    pub plddt: Vec<f64>,
    /// PAE, for models with a PAE head (`_ptm`).
    pub pae: Option<PaeOutput>,
    /// pTM, for models with a PAE head.
    pub ptm: Option<f64>,
    /// ipTM (pairs of different chains), for a complex and a model with a PAE head.
    pub iptm: Option<f64>,
    /// What the recycling loop did.
    pub log: RecycleLog,
}

impl Prediction {
    /// Number of residues.
    pub fn len(&self) -> usize {
        self.plddt.len()
    }

    /// Whether there are no residues.
    pub fn is_empty(&self) -> bool {
        self.plddt.is_empty()
    }

    /// Mean pLDDT (0-100): ColabFold's ranking confidence for monomer models.
    pub fn mean_plddt(&self) -> f64 {
        self.plddt.iter().sum::<f64>() / self.plddt.len().max(1) as f64
    }

    /// The outputs holding a NaN or an infinity, by name ("atom positions", "pLDDT", "PAE",
    /// "pTM", "ipTM"); empty for a usable prediction. Only atoms that exist (`atom_mask`) count.
    pub fn non_finite_outputs(&self) -> Vec<&'static str> {
        let positions = self
            .atom_positions
            .data
            .chunks_exact(3)
            .zip(&self.atom_mask.data)
            .any(|(p, &exists)| exists > 0.0 && !p.iter().all(|v| v.is_finite()));
        let finite = |v: &f64| v.is_finite();
        [
            ("atom positions", positions),
            ("pLDDT", !self.plddt.iter().all(finite)),
            (
                "PAE",
                self.pae.as_ref().is_some_and(|p| !p.pae.iter().all(finite)),
            ),
            ("pTM", self.ptm.is_some_and(|v| !v.is_finite())),
            ("ipTM", self.iptm.is_some_and(|v| !v.is_finite())),
        ]
        .into_iter()
        .filter_map(|(name, bad)| bad.then_some(name))
        .collect()
    }

    /// CA positions in f64.
    pub fn ca(&self) -> Vec<[f64; 3]> {
        self.atom_positions
            .data
            .chunks_exact(37 * 3)
            .map(|r| {
                let p = &r[ATOM_CA * 3..ATOM_CA * 3 + 3];
                [f64::from(p[0]), f64::from(p[1]), f64::from(p[2])]
            })
            .collect()
    }
}

/// ColabDesign's `rm_template_ic` mask: `[N * N]`, 1 where `asym_i == asym_j`.
pub fn same_chain_mask(asym_id: &[i64]) -> Vec<f32> {
    asym_id
        .iter()
        .flat_map(|a| asym_id.iter().map(move |b| f32::from(u8::from(a == b))))
        .collect()
}

/// Runs `num_recycles + 1` passes (fewer when `options` stops early), calling `on_recycle` after
/// each, and reads the last pass back. The loop is [`AlphaFold::forward_recycled_with`]'s, with
/// the initial guess and template pair mask of `inputs`: this is [`predict_batch`] with a batch
/// of one.
///
/// # Panics
/// If `inputs.iterations` is empty, or the initial positions or mask do not fit the features.
pub fn predict(
    model: &AlphaFold,
    inputs: &PredictionInputs<'_>,
    num_recycles: usize,
    options: &RecycleOptions,
    device: &Device,
    mut on_recycle: impl FnMut(&RecycleReport),
) -> Prediction {
    predict_batch(
        model,
        std::slice::from_ref(inputs),
        num_recycles,
        options,
        device,
        |_, report| on_recycle(report),
    )
    .expect("one design is always a batch")
    .swap_remove(0)
}

/// [`predict`] for a batch of designs (of one MSA depth and template count): every pass runs
/// the whole batch in one batched forward pass
/// ([`AlphaFold::forward_recycled_batch_observed`]). Every design is padded with masked
/// residues to the longest one's length rounded up to [`residue_multiple`] (8 on a GPU, none
/// on the CPU; see [`crate::padding`]), and its outputs are cut back to its own residues.
/// `on_recycle(design, report)` is called after each pass for every design still recycling.
/// Early stop is per design: a design that stops keeps the outputs of that pass while the
/// others recycle on. Designs without an initial guess start from zeros, designs without a
/// template pair mask are unmasked, as alone.
///
/// # Errors
/// If the designs' features differ in shape other than in length; the error names the first
/// design that differs.
///
/// # Panics
/// If `inputs` is empty, a design has no features, or its initial positions or mask do not fit
/// its features.
pub fn predict_batch(
    model: &AlphaFold,
    inputs: &[PredictionInputs<'_>],
    num_recycles: usize,
    options: &RecycleOptions,
    device: &Device,
    mut on_recycle: impl FnMut(usize, &RecycleReport),
) -> Result<Vec<Prediction>, FeatureError> {
    assert!(!inputs.is_empty(), "predict_batch needs designs");
    assert!(
        inputs.iter().all(|i| !i.iterations.is_empty()),
        "predict needs features"
    );
    let lengths: Vec<usize> = inputs
        .iter()
        .map(|i| i.iterations[0].num_residues())
        .collect();
    for (d, (i, &len)) in inputs.iter().zip(&lengths).enumerate() {
        if let Some(f) = i.iterations.iter().find(|f| f.num_residues() != len) {
            return Err(FeatureError::Batch {
                design: d,
                message: format!("its passes have {len} and {} residues", f.num_residues()),
            });
        }
    }
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let (b, n) = (
        inputs.len(),
        padded_length(longest, residue_multiple(device)),
    );
    let padded: Vec<Vec<Cow<'_, Features>>> = inputs
        .iter()
        .map(|i| i.iterations.iter().map(|f| f.padded_to(n)).collect())
        .collect();
    let passes = (0..=num_recycles)
        .map(|r| BatchFeatures::new(padded.iter().map(|p| p[r.min(p.len() - 1)].as_ref())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut initial = model.zero_state_batch(b, n, device);
    if inputs.iter().any(|i| i.initial_positions.is_some()) {
        let mut positions = vec![0.0f32; b * n * 37 * 3];
        for ((i, &len), chunk) in inputs
            .iter()
            .zip(&lengths)
            .zip(positions.chunks_exact_mut(n * 37 * 3))
        {
            if let Some(p) = i.initial_positions {
                assert_eq!(p.shape, vec![len, 37, 3], "initial positions");
                chunk[..p.data.len()].copy_from_slice(&p.data);
            }
        }
        initial.positions = Tensor::from_data(TensorData::new(positions, [b, n, 37, 3]), device);
    }
    let mask = inputs
        .iter()
        .any(|i| i.template_pair_mask.is_some())
        .then(|| {
            let mut values = vec![1.0f32; b * n * n];
            for ((i, &len), chunk) in inputs
                .iter()
                .zip(&lengths)
                .zip(values.chunks_exact_mut(n * n))
            {
                if let Some(m) = i.template_pair_mask {
                    assert_eq!(m.len(), len * len, "template pair mask");
                    for (row, values) in m.chunks_exact(len).zip(chunk.chunks_exact_mut(n)) {
                        values[..len].copy_from_slice(row);
                    }
                }
            }
            Tensor::<3>::from_data(TensorData::new(values, [b, n, n]), device)
        });
    let mut pass_start = Instant::now();
    let mut last_conf = vec![None; b];
    let run = model.forward_recycled_batch_observed(
        passes,
        Some(initial),
        mask.as_ref(),
        options,
        device,
        |r, out, status| {
            let seconds = pass_start.elapsed().as_secs_f64();
            for (d, s) in status.iter().enumerate().filter(|(_, s)| s.active) {
                let conf = confidences(&out.design(d).first_residues(lengths[d]));
                on_recycle(
                    d,
                    &RecycleReport {
                        iteration: r,
                        mean_plddt: conf.mean_plddt(),
                        ptm: conf.ptm,
                        ca_change: s.ca_change,
                        seconds,
                    },
                );
                last_conf[d] = Some(conf);
            }
            pass_start = Instant::now();
        },
    );
    Ok(inputs
        .iter()
        .zip(last_conf)
        .zip(run.logs.iter())
        .enumerate()
        .map(|(d, ((i, conf), log))| {
            let conf = conf.expect("at least one pass");
            let out = run.output(d).first_residues(lengths[d]);
            let iptm = match &conf.pae {
                Some(p) if i.asym_id.iter().any(|&a| a != i.asym_id[0]) => Some(
                    confidence::predicted_tm_score(&p.logits, p.bins, None, Some(i.asym_id), true),
                ),
                _ => None,
            };
            Prediction {
                atom_positions: to_host(out.structure.final_atom37.clone()),
                atom_mask: to_host(out.structure.final_atom37_mask.clone()),
                plddt: conf.plddt,
                pae: conf.pae,
                ptm: conf.ptm,
                iptm,
                log: log.clone(),
            }
        })
        .collect())
}

/// The recycled state of an initial guess: atom37 positions `[N, 37, 3]` from chain atoms laid
/// end to end (as ColabDesign's `prev_pos`, side chains included).
pub fn atom37_of_chains(chains: &[&ChainAtoms]) -> NdArray<f32> {
    let data: Vec<f32> = chains
        .iter()
        .flat_map(|c| c.positions.iter())
        .flat_map(|r| r.iter().flatten().copied())
        .collect();
    let n = data.len() / (37 * 3);
    NdArray {
        shape: vec![n, 37, 3],
        data,
    }
}

/// How a template chain was placed on the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateAlignment {
    /// Query positions that received a template residue.
    pub aligned: usize,
    /// Of those, positions where the template residue type equals the query's.
    pub identical: usize,
    /// `(query start, template start, length)` of each gap-free block.
    pub blocks: Vec<(usize, usize, usize)>,
}

/// Global alignment of two residue-type sequences with free end gaps (match +2, mismatch -1,
/// gap -2), returned as `(query start, template start, length)` blocks without gaps.
pub fn align_blocks(query: &[i64], template: &[i64]) -> Vec<(usize, usize, usize)> {
    let (n, m) = (query.len(), template.len());
    const GAP: i32 = -2;
    let score = |a: i64, b: i64| if a == b && a < 20 { 2 } else { -1 };
    // Free end gaps: the first row and column cost nothing, and the best cell of the last
    // row or column ends the alignment.
    let mut h = vec![0i32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in 1..=n {
        for j in 1..=m {
            let diag = h[at(i - 1, j - 1)] + score(query[i - 1], template[j - 1]);
            let up = h[at(i - 1, j)] + GAP;
            let left = h[at(i, j - 1)] + GAP;
            h[at(i, j)] = diag.max(up).max(left);
        }
    }
    let (mut i, mut j) = (n, m);
    let mut best = h[at(n, m)];
    for jj in 0..=m {
        if h[at(n, jj)] > best {
            best = h[at(n, jj)];
            (i, j) = (n, jj);
        }
    }
    for ii in 0..=n {
        if h[at(ii, m)] > best {
            best = h[at(ii, m)];
            (i, j) = (ii, m);
        }
    }
    let mut pairs = Vec::new();
    while i > 0 && j > 0 {
        let here = h[at(i, j)];
        if here == h[at(i - 1, j - 1)] + score(query[i - 1], template[j - 1]) {
            pairs.push((i - 1, j - 1));
            i -= 1;
            j -= 1;
        } else if here == h[at(i - 1, j)] + GAP {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    pairs.reverse();
    let mut blocks: Vec<(usize, usize, usize)> = Vec::new();
    for (qi, ti) in pairs {
        match blocks.last_mut() {
            Some((q0, t0, len)) if *q0 + *len == qi && *t0 + *len == ti => *len += 1,
            _ => blocks.push((qi, ti, 1)),
        }
    }
    blocks
}

fn chain_slice(chain: &ChainAtoms, start: usize, len: usize) -> ChainAtoms {
    let r = start..start + len;
    ChainAtoms {
        sequence: chain.sequence.chars().skip(start).take(len).collect(),
        aatype: chain.aatype[r.clone()].to_vec(),
        positions: chain.positions[r.clone()].to_vec(),
        masks: chain.masks[r.clone()].to_vec(),
        residue_numbers: chain.residue_numbers[r].to_vec(),
    }
}

/// One template (slot 0) from a structure chain aligned to the query by [`align_blocks`], with
/// the template's own residue types and atoms, as AlphaFold featurises a hit.
pub fn template_from_chain(
    query: &Query,
    chain: &ChainAtoms,
) -> Result<(TemplateFeatures, TemplateAlignment), PipelineError> {
    let blocks = align_blocks(&query.aatype, &chain.aatype);
    if blocks.is_empty() {
        return Err(PipelineError::Invalid(
            "the template chain does not align to the query".into(),
        ));
    }
    let pieces: Vec<ChainAtoms> = blocks
        .iter()
        .map(|&(_, t, len)| chain_slice(chain, t, len))
        .collect();
    let segments: Vec<TemplateSegment<'_>> = blocks
        .iter()
        .zip(&pieces)
        .map(|(&(q, _, _), atoms)| TemplateSegment {
            atoms,
            start: q,
            rm_seq: false,
            rm_sc: false,
        })
        .collect();
    let features = template_from_segments(query.len(), &segments)?;
    let aligned = blocks.iter().map(|b| b.2).sum();
    let identical = blocks
        .iter()
        .flat_map(|&(q, t, len)| (0..len).map(move |k| (q + k, t + k)))
        .filter(|&(q, t)| query.aatype[q] == chain.aatype[t])
        .count();
    Ok((
        features,
        TemplateAlignment {
            aligned,
            identical,
            blocks,
        },
    ))
}

/// How the residues of a predicted structure are labelled in its PDB file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdbLabels {
    /// `[N]` chain id of each residue.
    pub chain_ids: Vec<char>,
    /// `[N]` residue number of each residue.
    pub residue_numbers: Vec<i64>,
}

impl PdbLabels {
    /// Chains `A`, `B`, … of the given lengths, each numbered from 1 (as ColabFold writes a
    /// complex).
    pub fn sequential(chain_lengths: &[usize]) -> Self {
        let mut chain_ids = Vec::new();
        let mut residue_numbers = Vec::new();
        for (k, &len) in chain_lengths.iter().enumerate() {
            let id = chain_letter(k);
            chain_ids.extend(std::iter::repeat_n(id, len));
            residue_numbers.extend(1..=len as i64);
        }
        Self {
            chain_ids,
            residue_numbers,
        }
    }
}

/// `A`..`Z`, then `a`..`z`, then `0`..`9`, then `A` again: a PDB chain id for chain `k`.
pub fn chain_letter(k: usize) -> char {
    const IDS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    IDS.as_bytes()[k % IDS.len()] as char
}

/// Writes a prediction as PDB (atomically), B-factor = pLDDT, `remarks` as `REMARK` lines.
/// `aatype` is the query's.
pub fn write_prediction_pdb(
    path: &std::path::Path,
    prediction: &Prediction,
    aatype: &[i64],
    labels: &PdbLabels,
    remarks: &[&str],
) -> af2_io::Result<()> {
    let names: Vec<&str> = aatype
        .iter()
        .map(|&a| rc::RESNAMES.get(a as usize).copied().unwrap_or("UNK"))
        .collect();
    write_pdb(
        path,
        &Atom37Structure {
            atom_positions: &prediction.atom_positions.data,
            atom_mask: &prediction.atom_mask.data,
            residue_names: &names,
            chain_ids: &labels.chain_ids,
            residue_numbers: &labels.residue_numbers,
            b_factors: &prediction.plddt,
        },
        remarks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_chain_mask_is_block_diagonal() {
        assert_eq!(
            same_chain_mask(&[0, 0, 1]),
            vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn alignment_finds_gapped_blocks() {
        // Identical: one block.
        assert_eq!(align_blocks(&[1, 2, 3, 4], &[1, 2, 3, 4]), vec![(0, 0, 4)]);
        // Template missing query residue 2: two blocks.
        let q = [1, 2, 3, 4, 5, 6, 7, 8];
        let t = [1, 2, 4, 5, 6, 7, 8];
        assert_eq!(align_blocks(&q, &t), vec![(0, 0, 2), (3, 2, 5)]);
        // A template covering the middle of the query, free end gaps.
        assert_eq!(align_blocks(&q, &[3, 4, 5]), vec![(2, 0, 3)]);
        // A longer template overhanging the query at both ends.
        assert_eq!(
            align_blocks(&[5, 6, 7], &[9, 9, 5, 6, 7, 9]),
            vec![(0, 2, 3)]
        );
    }

    /// Two residues, atom37, every slot existing unless `missing` is given.
    fn prediction(missing: Option<usize>) -> Prediction {
        let mut atom_mask = NdArray::new(vec![2, 37], vec![1.0f32; 74]).unwrap();
        if let Some(slot) = missing {
            atom_mask.data[slot] = 0.0;
        }
        Prediction {
            atom_positions: NdArray::new(vec![2, 37, 3], vec![1.0f32; 222]).unwrap(),
            atom_mask,
            plddt: vec![80.0, 90.0],
            pae: Some(PaeOutput {
                pae: vec![1.0; 4],
                max_pae: 31.75,
                logits: Vec::new(),
                bins: 64,
            }),
            ptm: Some(0.5),
            iptm: None,
            log: RecycleLog::default(),
        }
    }

    #[test]
    fn non_finite_outputs_are_named() {
        assert!(prediction(None).non_finite_outputs().is_empty());
        let mut p = prediction(None);
        p.atom_positions.data[5] = f32::NAN;
        p.plddt[1] = f64::NAN;
        p.ptm = Some(f64::INFINITY);
        assert_eq!(
            p.non_finite_outputs(),
            vec!["atom positions", "pLDDT", "pTM"]
        );
        let mut p = prediction(None);
        p.pae.as_mut().unwrap().pae[3] = f64::NAN;
        p.iptm = Some(f64::NAN);
        assert_eq!(p.non_finite_outputs(), vec!["PAE", "ipTM"]);
        // A NaN in an atom slot the residue does not have is not an output.
        let mut p = prediction(Some(1));
        p.atom_positions.data[3..6].fill(f32::NAN);
        assert!(p.non_finite_outputs().is_empty());
    }

    #[test]
    fn sequential_labels_restart_per_chain() {
        let l = PdbLabels::sequential(&[2, 3]);
        assert_eq!(l.chain_ids, vec!['A', 'A', 'B', 'B', 'B']);
        assert_eq!(l.residue_numbers, vec![1, 2, 1, 2, 3]);
        assert_eq!(chain_letter(26), 'a');
    }
}
