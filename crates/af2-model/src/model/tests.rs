//! A batch of designs through the batched forward pass equals each design alone.
//!
//! The model is the `msa_template_n16` fixture's (seeded random parameters at small widths,
//! with a template stack); the designs are random and differ in everything a design can differ
//! in at one shape: residue types, residue numbering, sequence masks, MSA and extra-MSA values and
//! masks, templates (coordinates, residue types, template masks), the recycled state, the
//! initial guess and the template pair mask.
//!
//! Tolerance: the batch runs the same arithmetic per design; only the order of summation inside
//! a batched matmul may differ from the single call (backend blocking), which moves a float32
//! result by a few ulp. Every output is held to 1e-5 of its largest magnitude (about 100 ulp);
//! on the CPU reference the measured differences are printed (and are zero there).

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use af2_io::npz::{Array, NdArray};

use super::*;
use crate::features::TemplateFeatures;
use crate::outputs::prediction_arrays;
use crate::predict::{Prediction, PredictionInputs, predict, predict_batch};
use crate::weights::load_module;

/// Allowed difference, relative to the largest magnitude of each output.
const REL_TOL: f64 = 1e-5;

#[allow(deprecated)] // ndarray is the CPU reference backend.
fn device() -> Device {
    Device::ndarray()
}

pub(super) fn model(device: &Device) -> AlphaFold {
    let weights = af2_io::weights::load_weights(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/msa_template_n16/params.npz"),
    )
    .unwrap();
    let mut model = AlphaFoldConfig::from_dims(&weights.dims).init(device);
    load_module(&mut model, &weights.native).unwrap();
    model
}

/// A small deterministic generator (64-bit LCG).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() % (1 << 24)) as f32 / (1u64 << 24) as f32
    }

    fn below(&mut self, n: u64) -> i64 {
        (self.next() % n) as i64
    }

    fn floats(&mut self, count: usize, scale: f32) -> Vec<f32> {
        (0..count)
            .map(|_| (self.unit() * 2.0 - 1.0) * scale)
            .collect()
    }

    /// 0/1 values, mostly 1.
    fn mask(&mut self, count: usize) -> Vec<f32> {
        (0..count)
            .map(|_| f32::from(u8::from(self.unit() > 0.2)))
            .collect()
    }
}

fn arr(shape: Vec<usize>, data: Vec<f32>) -> NdArray<f32> {
    NdArray { shape, data }
}

/// A random design of `n` residues with `s` MSA rows, `se` extra rows and `t` templates.
pub(super) fn random_features(seed: u64, n: usize, s: usize, se: usize, t: usize) -> Features {
    let mut rng = Rng(seed);
    let aatype: Vec<i64> = (0..n).map(|_| rng.below(20)).collect();
    let mut target_feat = vec![0.0f32; n * 22];
    for (i, &a) in aatype.iter().enumerate() {
        target_feat[i * 22 + a as usize + 1] = 1.0;
    }
    // A chain break at a design-dependent place, as in a complex.
    let cut = 1 + rng.below(n as u64 - 2) as usize;
    let residue_index: Vec<i64> = (0..n as i64)
        .map(|i| if i as usize >= cut { i + 50 } else { i })
        .collect();
    let mut seq_mask = vec![1.0f32; n];
    seq_mask[n - 1] = f32::from(u8::from(seed.is_multiple_of(2)));
    let mut msa_mask = rng.mask(s * n);
    msa_mask[..n].fill(1.0);
    let mut extra_feat = vec![0.0f32; se * n * 25];
    for row in extra_feat.chunks_exact_mut(25) {
        row[rng.below(23) as usize] = 1.0;
        row[23] = f32::from(u8::from(rng.unit() > 0.7));
        row[24] = rng.unit();
    }
    // Templates: a noisy extended chain, random residue types (21 = gap), some atoms missing.
    let mut positions = vec![0.0f32; t * n * 37 * 3];
    for (k, p) in positions.chunks_exact_mut(3).enumerate() {
        let residue = (k / 37) % n;
        p[0] = 3.8 * residue as f32 + rng.unit() * 2.0;
        p[1] = rng.unit() * 3.0;
        p[2] = rng.unit() * 3.0;
    }
    let masks = rng.mask(t * n * 37);
    let pseudo_beta: Vec<f32> = positions
        .chunks_exact(37 * 3)
        .flat_map(|r| r[3 * 3..4 * 3].to_vec())
        .collect();
    let template_mask: Vec<f32> = (0..t)
        .map(|k| f32::from(u8::from(k == 0 || !seed.is_multiple_of(3))))
        .collect();
    Features {
        residue_index,
        seq_mask: arr(vec![n], seq_mask),
        target_feat: arr(vec![n, 22], target_feat),
        msa_feat: arr(vec![s, n, 49], rng.floats(s * n * 49, 1.0)),
        msa_mask: arr(vec![s, n], msa_mask),
        extra_feat: arr(vec![se, n, 25], extra_feat),
        extra_msa_mask: arr(vec![se, n], rng.mask(se * n)),
        templates: Some(TemplateFeatures {
            aatype: NdArray {
                shape: vec![t, n],
                data: (0..t * n).map(|_| rng.below(22)).collect(),
            },
            all_atom_positions: arr(vec![t, n, 37, 3], positions),
            all_atom_masks: arr(vec![t, n, 37], masks),
            mask: arr(vec![t], template_mask),
            pseudo_beta: arr(vec![t, n, 3], pseudo_beta),
            pseudo_beta_mask: arr(vec![t, n], rng.mask(t * n)),
        }),
        aatype,
    }
}

/// The largest difference between two runs of one output, and its largest magnitude.
struct Diff {
    name: String,
    max_abs: f64,
    absmax: f64,
}

impl Diff {
    fn of(name: &str, single: &[f32], batch: &[f32]) -> Self {
        assert_eq!(single.len(), batch.len(), "{name}: lengths");
        let max_abs = single
            .iter()
            .zip(batch)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max);
        let absmax = single
            .iter()
            .map(|a| f64::from(a.abs()))
            .fold(0.0, f64::max);
        assert!(
            single.iter().chain(batch).all(|v| v.is_finite()),
            "{name}: not finite"
        );
        Self {
            name: name.to_string(),
            max_abs,
            absmax,
        }
    }

    fn of_f64(name: &str, single: &[f64], batch: &[f64]) -> Self {
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        Self::of(name, &f(single), &f(batch))
    }

    /// Asserts the tolerance; returns the relative difference.
    fn check(&self, design: usize) -> f64 {
        let rel = self.max_abs / self.absmax.max(1e-30);
        assert!(
            self.max_abs <= REL_TOL * self.absmax,
            "design {design} {}: batched differs from single by {:.3e} (max |value| {:.3e})",
            self.name,
            self.max_abs,
            self.absmax
        );
        rel
    }
}

/// Every output of one iteration under the oracle's names (positions, pLDDT, PAE, pTM,
/// distogram, representations, ...).
fn named_outputs(out: &IterationOutput) -> Vec<(String, NdArray<f32>)> {
    prediction_arrays(out)
        .into_iter()
        .map(|(k, v): (String, Array)| (k, v.to_f32()))
        .collect()
}

fn compare_iterations(design: usize, single: &IterationOutput, batch: &IterationOutput) -> f64 {
    let (a, b) = (named_outputs(single), named_outputs(batch));
    assert_eq!(a.len(), b.len());
    let mut worst: f64 = 0.0;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.shape, y.shape, "design {design} {name}: shapes");
        worst = worst.max(Diff::of(name, &x.data, &y.data).check(design));
    }
    worst
}

fn compare_predictions(design: usize, single: &Prediction, batch: &Prediction) -> f64 {
    assert_eq!(single.log.iterations_run, batch.log.iterations_run);
    assert_eq!(single.log.stopped_early, batch.log.stopped_early);
    let mut diffs = vec![
        Diff::of(
            "atom_positions",
            &single.atom_positions.data,
            &batch.atom_positions.data,
        ),
        Diff::of(
            "ca_change",
            &single.log.ca_distance_change,
            &batch.log.ca_distance_change,
        ),
        Diff::of_f64("plddt", &single.plddt, &batch.plddt),
    ];
    assert_eq!(single.atom_mask.data, batch.atom_mask.data);
    let (p, q) = (single.pae.as_ref().unwrap(), batch.pae.as_ref().unwrap());
    diffs.push(Diff::of_f64("pae", &p.pae, &q.pae));
    diffs.push(Diff::of("pae_logits", &p.logits, &q.logits));
    diffs.push(Diff::of_f64(
        "ptm",
        &[single.ptm.unwrap()],
        &[batch.ptm.unwrap()],
    ));
    diffs.push(Diff::of_f64(
        "iptm",
        &[single.iptm.unwrap()],
        &[batch.iptm.unwrap()],
    ));
    diffs.iter().map(|d| d.check(design)).fold(0.0, f64::max)
}

const N: usize = 12;

fn designs() -> Vec<Features> {
    (0..3)
        .map(|d| random_features(11 + d, N, 3, 4, 2))
        .collect()
}

#[test]
fn batched_iteration_equals_each_design_alone() {
    let device = device();
    let model = model(&device);
    let designs = designs();
    let (c_m, c_z) = (
        model.input_embedder.preprocess_1d.weight.dims()[1],
        model.input_embedder.left_single.weight.dims()[1],
    );
    // A different recycled state per design.
    let states: Vec<Recycled> = (0..designs.len())
        .map(|d| {
            let mut rng = Rng(100 + d as u64);
            Recycled {
                msa_first_row: random_tensor([N, c_m], 1.0, &mut rng, &device),
                pair: random_tensor([N, N, c_z], 1.0, &mut rng, &device),
                positions: random_tensor([N, 37, 3], 15.0, &mut rng, &device),
            }
        })
        .collect();
    // A template pair mask on every design, different for each.
    let masks: Vec<Tensor<2>> = (0..designs.len())
        .map(|d| {
            let mut rng = Rng(200 + d as u64);
            Tensor::from_data(TensorData::new(rng.mask(N * N), [N, N]), &device)
        })
        .collect();

    let batch = BatchFeatures::new(&designs).unwrap();
    let batch_mask = Tensor::stack(masks.clone(), 0);
    let out = model.forward_iteration_batch(
        &batch,
        BatchRecycled::stack(states.clone()),
        Some(&batch_mask),
        &device,
    );
    assert_eq!(out.batch_size(), 3);
    let mut worst: f64 = 0.0;
    for (d, f) in designs.iter().enumerate() {
        let alone = model.forward_iteration_masked(f, states[d].clone(), Some(&masks[d]), &device);
        worst = worst.max(compare_iterations(d, &alone, &out.design(d)));
    }
    eprintln!("batched vs single iteration: worst difference {worst:.3e} of max |value|");
    // The designs really differ (a batch that mixed them up could not match each alone).
    let plddt = |d: usize| to_host_data(out.logits.plddt.clone().narrow(0, d, 1));
    assert_ne!(plddt(0), plddt(1));
    assert_ne!(plddt(1), plddt(2));
}

fn random_tensor<const D: usize>(
    shape: [usize; D],
    scale: f32,
    rng: &mut Rng,
    device: &Device,
) -> Tensor<D> {
    let count = shape.iter().product();
    Tensor::from_data(TensorData::new(rng.floats(count, scale), shape), device)
}

fn to_host_data<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    crate::outputs::to_host(t).data
}

#[test]
fn batched_prediction_equals_each_design_alone_with_per_design_early_stop() {
    let device = device();
    let model = model(&device);
    let designs = designs();
    let asym: Vec<i64> = (0..N).map(|i| i64::from(i >= 8)).collect();
    let same_chain = crate::predict::same_chain_mask(&asym);
    let guess: NdArray<f32> = arr(vec![N, 37, 3], Rng(300).floats(N * 37 * 3, 12.0));
    // Design 0: initial guess; design 1: template pair mask; design 2: both.
    let inputs: Vec<PredictionInputs<'_>> = designs
        .iter()
        .enumerate()
        .map(|(d, f)| PredictionInputs {
            iterations: std::slice::from_ref(f),
            asym_id: &asym,
            initial_positions: (d != 1).then_some(&guess),
            template_pair_mask: (d != 0).then_some(same_chain.as_slice()),
        })
        .collect();
    let recycles = 3;
    let run_alone = |options: &RecycleOptions| -> Vec<Prediction> {
        inputs
            .iter()
            .map(|i| predict(&model, i, recycles, options, &device, |_| {}))
            .collect()
    };

    // A tolerance at which one design stops before the last pass while another recycles on:
    // from the changes of the full runs, the passes each design would run.
    let full = run_alone(&RecycleOptions::default());
    let passes_with = |tol: f32| -> Vec<usize> {
        full.iter()
            .map(|p| {
                let changes = &p.log.ca_distance_change;
                changes
                    .iter()
                    .position(|&c| c < tol)
                    .map_or(recycles + 1, |r| r + 2)
            })
            .collect()
    };
    let mut changes: Vec<f32> = full
        .iter()
        .flat_map(|p| p.log.ca_distance_change.clone())
        .collect();
    changes.sort_by(f32::total_cmp);
    let tol = changes
        .windows(2)
        .map(|w| 0.5 * (w[0] + w[1]))
        .find(|&tol| {
            let passes = passes_with(tol);
            let (min, max) = (passes.iter().min(), passes.iter().max());
            min < Some(&(recycles + 1)) && min < max
        })
        .unwrap_or_else(|| panic!("no tolerance mixes early and late stops: {changes:?}"));
    let options = RecycleOptions {
        early_stop_tolerance: Some(tol),
    };
    let alone = run_alone(&options);
    let mut reports = vec![Vec::new(); designs.len()];
    let batch = predict_batch(&model, &inputs, recycles, &options, &device, |d, r| {
        reports[d].push(r.iteration)
    })
    .unwrap();
    let runs: Vec<usize> = alone.iter().map(|p| p.log.iterations_run).collect();
    assert_eq!(runs, passes_with(tol));
    let mut worst: f64 = 0.0;
    for (d, (a, b)) in alone.iter().zip(&batch).enumerate() {
        worst = worst.max(compare_predictions(d, a, b));
        assert_eq!(
            reports[d],
            (0..a.log.iterations_run).collect::<Vec<_>>(),
            "design {d} is reported while it recycles"
        );
    }
    eprintln!(
        "batched vs single prediction (early stop {tol:.4} Å, passes {runs:?}): worst difference \
         {worst:.3e} of max |value|"
    );
}

/// Designs of different lengths fold in one batch: each is padded with masked residues to the
/// longest, and its outputs are cut back ([`crate::padding`]). Each design equals itself alone
/// (unpadded) within [`REL_TOL`]: the masked residues contribute exact zeros, and only the
/// order of float sums can differ.
#[test]
fn designs_of_different_lengths_fold_in_one_batch_as_alone() {
    let device = device();
    let model = model(&device);
    let lengths = [N, N - 3, N - 1];
    let designs: Vec<Features> = lengths
        .iter()
        .enumerate()
        .map(|(d, &n)| {
            let mut f = random_features(31 + d as u64, n, 3, 4, 2);
            // Every residue real: a masked residue's own outputs (its fully masked attention
            // rows average every key, padded ones too) are not a prediction's.
            f.seq_mask.data.fill(1.0);
            f
        })
        .collect();
    let asym: Vec<Vec<i64>> = lengths
        .iter()
        .map(|&n| (0..n).map(|i| i64::from(i >= n - 4)).collect())
        .collect();
    let masks: Vec<Vec<f32>> = asym
        .iter()
        .map(|a| crate::predict::same_chain_mask(a))
        .collect();
    let guesses: Vec<NdArray<f32>> = lengths
        .iter()
        .map(|&n| arr(vec![n, 37, 3], Rng(n as u64).floats(n * 37 * 3, 12.0)))
        .collect();
    let inputs: Vec<PredictionInputs<'_>> = (0..designs.len())
        .map(|d| PredictionInputs {
            iterations: std::slice::from_ref(&designs[d]),
            asym_id: &asym[d],
            initial_positions: (d != 0).then_some(&guesses[d]),
            template_pair_mask: (d != 2).then_some(masks[d].as_slice()),
        })
        .collect();
    let options = RecycleOptions::default();
    let batch = predict_batch(&model, &inputs, 2, &options, &device, |_, _| {}).unwrap();
    let mut worst: f64 = 0.0;
    for (d, (i, b)) in inputs.iter().zip(&batch).enumerate() {
        assert_eq!(b.len(), lengths[d]);
        let alone = predict(&model, i, 2, &options, &device, |_| {});
        worst = worst.max(compare_predictions(d, &alone, b));
    }
    eprintln!("designs of lengths {lengths:?} in one batch vs alone: worst difference {worst:.3e}");

    // A design whose passes differ in length is refused, naming it.
    let passes = [designs[0].clone(), designs[1].clone()];
    let mixed = [inputs[0], PredictionInputs::new(&passes, &asym[0])];
    let err = predict_batch(&model, &mixed, 1, &options, &device, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("design 1") && err.contains("12 and 9"),
        "{err}"
    );
}

/// The recycling loop keeps the template embeddings from pass to pass while the templates stay
/// the same, and embeds them again when a pass brings other templates: its passes equal passes
/// run one at a time with nothing kept.
#[test]
fn recycling_loop_keeps_template_embeddings_only_while_the_templates_stay() {
    let device = device();
    let model = model(&device);
    let designs = designs();
    let others: Vec<Features> = designs
        .iter()
        .enumerate()
        .map(|(d, f)| Features {
            templates: random_features(21 + d as u64, N, 3, 4, 2).templates,
            ..f.clone()
        })
        .collect();
    let passes = [&designs, &designs, &others, &others];
    let mut rng = Rng(400);
    let pair_mask = Tensor::<3>::from_data(
        TensorData::new(rng.mask(designs.len() * N * N), [designs.len(), N, N]),
        &device,
    );

    let run = model.forward_recycled_batch_observed(
        passes.iter().map(|p| BatchFeatures::new(&p[..]).unwrap()),
        None,
        Some(&pair_mask),
        &RecycleOptions::default(),
        &device,
        |_, _, _| {},
    );
    let mut prev = model.zero_state_batch(designs.len(), N, &device);
    let plddt = |out: &BatchOutput| to_host_data(out.logits.plddt.clone());
    let mut last = None;
    for (r, p) in passes.into_iter().enumerate() {
        let pass = |features: &[Features], prev: BatchRecycled| {
            let batch = BatchFeatures::new(features).unwrap();
            model.forward_iteration_batch(&batch, prev, Some(&pair_mask), &device)
        };
        let out = pass(p, prev.clone());
        if r == 2 {
            // The other templates change the pass (kept embeddings of the first could not
            // stand in for them).
            assert_ne!(plddt(&pass(&designs, prev)), plddt(&out));
        }
        prev = out.recycled();
        last = Some(out);
    }
    let last = last.unwrap();
    let mut worst: f64 = 0.0;
    for d in 0..designs.len() {
        worst = worst.max(compare_iterations(d, &last.design(d), &run.last.design(d)));
    }
    eprintln!("recycling loop vs passes one at a time: worst difference {worst:.3e}");
    // The same operations in the same order on the CPU reference: identical.
    assert_eq!(worst, 0.0);
}

#[test]
fn batches_of_unequal_shapes_are_refused_with_the_design_and_feature() {
    let a = random_features(1, N, 3, 4, 2);
    let deeper = random_features(2, N, 5, 4, 2);
    let err = BatchFeatures::new([&a, &a, &deeper])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("design 2") && err.contains("msa_feat") && err.contains("[5, 12, 49]"),
        "{err}"
    );
    let longer = random_features(3, N + 1, 3, 4, 2);
    let err = BatchFeatures::new([&a, &longer]).unwrap_err().to_string();
    assert!(err.contains("design 1") && err.contains("aatype"), "{err}");
    let mut bare = a.clone();
    bare.templates = None;
    let err = BatchFeatures::new([&a, &bare]).unwrap_err().to_string();
    assert!(
        err.contains("design 1") && err.contains("templates"),
        "{err}"
    );
    let none: [&Features; 0] = [];
    assert!(matches!(
        BatchFeatures::new(none),
        Err(crate::features::FeatureError::EmptyBatch)
    ));
}
