//! The recycling loop (Algorithm 2, the loop around lines 3-22): the passes of one design or
//! of a batch, with ColabFold's early stop on the change of the CA distance matrix.

use burn::tensor::{Device, Tensor};

use af2_io::npz::NdArray;

use super::{
    ATOM_CA, AlphaFold, BatchOutput, BatchRecycled, IterationOutput, PassInputs, Recycled,
    StageClock, TemplateMemo,
};
use crate::features::{BatchFeatures, Features};

/// What one pass of the batched recycling loop did for one design.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DesignPass {
    /// Whether the design was still recycling in this pass (it had not stopped early before);
    /// the outputs of later passes are not the design's.
    pub active: bool,
    /// RMS change of the CA distance matrix from the previous pass (Å); `None` for the first
    /// pass and for inactive designs.
    pub ca_change: Option<f32>,
}

/// What the batched recycling loop returns.
#[derive(Clone, Debug)]
pub struct BatchRecycling {
    /// The last pass run, for every design of the batch.
    pub last: BatchOutput,
    /// For each design that stopped early, its outputs of the pass where it stopped.
    pub stopped: Vec<Option<IterationOutput>>,
    /// What the loop did for each design.
    pub logs: Vec<RecycleLog>,
}

impl BatchRecycling {
    /// The outputs of design `d`: those of the pass where it stopped early, else of the last
    /// pass.
    pub fn output(&self, d: usize) -> IterationOutput {
        self.stopped[d]
            .clone()
            .unwrap_or_else(|| self.last.design(d))
    }
}

impl AlphaFold {
    /// Runs `iterations.len()` iterations (`num_recycles + 1`), feeding each the previous
    /// state; `initial` replaces the zero state of the first (an initial guess).
    ///
    /// # Panics
    /// If `iterations` is empty.
    pub fn forward_recycled(
        &self,
        iterations: &[Features],
        initial: Option<Recycled>,
        device: &Device,
    ) -> IterationOutput {
        self.forward_recycled_with(iterations, initial, &RecycleOptions::default(), device)
            .0
    }

    /// As [`AlphaFold::forward_recycled`], with options; also returns what each recycle did.
    ///
    /// # Panics
    /// If `iterations` is empty.
    pub fn forward_recycled_with(
        &self,
        iterations: &[Features],
        initial: Option<Recycled>,
        options: &RecycleOptions,
        device: &Device,
    ) -> (IterationOutput, RecycleLog) {
        self.forward_recycled_observed(iterations, initial, None, options, device, |_, _, _| {})
    }

    /// The recycling loop: one pass per element of `passes`, each fed the previous pass's state
    /// (`initial`, else zeros, for the first), stopping early as `options` says. After every
    /// pass `on_pass(r, output, ca_change)` is called (`ca_change`: RMS change of the CA
    /// distance matrix from the previous pass, `None` for the first). `template_pair_mask` is as
    /// in [`AlphaFold::forward_iteration_masked`]. Returns the last pass and what the loop did.
    /// This is [`AlphaFold::forward_recycled_batch_observed`] with a batch of one.
    ///
    /// # Panics
    /// If `passes` is empty.
    pub fn forward_recycled_observed<'f>(
        &self,
        passes: impl IntoIterator<Item = &'f Features>,
        initial: Option<Recycled>,
        template_pair_mask: Option<&Tensor<2>>,
        options: &RecycleOptions,
        device: &Device,
        mut on_pass: impl FnMut(usize, &IterationOutput, Option<f32>),
    ) -> (IterationOutput, RecycleLog) {
        let mask = template_pair_mask.map(|m| m.clone().unsqueeze::<3>());
        let mut run = self.forward_recycled_batch_observed(
            passes.into_iter().map(BatchFeatures::single),
            initial.map(|state| BatchRecycled::stack(vec![state])),
            mask.as_ref(),
            options,
            device,
            |r, out, status| on_pass(r, &out.design(0), status[0].ca_change),
        );
        let output = run.output(0);
        (output, run.logs.swap_remove(0))
    }

    /// The recycling loop for a batch of designs of one length: one pass per element of
    /// `passes`, each fed the previous pass's state (`initial`, else zeros, for the first).
    ///
    /// Early stop (`options`) is per design, as ColabFold's: a design whose CA distance matrix
    /// changed by less than the tolerance keeps the outputs of that pass (in
    /// [`BatchRecycling::stopped`]) and its log ends there; the batch runs on while any design is
    /// still active (the stopped ones are computed along, and their later outputs ignored).
    /// After every pass `on_pass(r, output, status)` is called with one [`DesignPass`] per
    /// design. `template_pair_mask` is `[B, N, N]`, as in
    /// [`AlphaFold::forward_iteration_batch`].
    ///
    /// On a GPU, passes of a layout this model has run before are replayed from a recording
    /// (see `model::graph`, off with `AF2_GRAPH=0` or an early stop): the outputs handed to
    /// `on_pass` and returned are then the recording's own tensors, which the next pass of the
    /// same layout rewrites, on this thread or another. Read (or copy) what you keep before
    /// running the model again; `predict_batch` returns host copies.
    ///
    /// # Panics
    /// If `passes` is empty, or its batches differ in size.
    pub fn forward_recycled_batch_observed<'a>(
        &self,
        passes: impl IntoIterator<Item = BatchFeatures<'a>>,
        initial: Option<BatchRecycled>,
        template_pair_mask: Option<&Tensor<3>>,
        options: &RecycleOptions,
        device: &Device,
        mut on_pass: impl FnMut(usize, &BatchOutput, &[DesignPass]),
    ) -> BatchRecycling {
        let mut passes = passes.into_iter().peekable();
        let first = passes
            .peek()
            .expect("the recycling loop needs at least one pass");
        let b = first.len();
        let seq_masks: Vec<NdArray<f32>> =
            first.designs().iter().map(|f| f.seq_mask.clone()).collect();
        let mut prev =
            initial.unwrap_or_else(|| self.zero_state_batch(b, first.num_residues(), device));
        let mut logs = vec![RecycleLog::default(); b];
        let mut stopped: Vec<Option<IterationOutput>> = vec![None; b];
        let mut prev_ca: Option<Vec<f32>> = None;
        let mut last = None;
        let mut memo = TemplateMemo::default();
        // Early stop keeps the outputs of some passes, which a replay would overwrite.
        let recorded = options.early_stop_tolerance.is_none() && self.records_passes(device);
        for (r, features) in passes.enumerate() {
            assert_eq!(features.len(), b, "every pass needs the same designs");
            let out = if recorded {
                let inputs =
                    PassInputs::prepare(self, &features, template_pair_mask, &mut memo, device);
                self.replayed_pass(&inputs, prev, device)
            } else {
                self.iteration(
                    &features,
                    prev,
                    template_pair_mask,
                    device,
                    &mut memo,
                    &mut StageClock::off(),
                )
            };
            let ca = host_ca(&out.structure.final_atom37);
            let status: Vec<DesignPass> = (0..b)
                .map(|d| {
                    let active = stopped[d].is_none();
                    let ca_change = match (&prev_ca, active) {
                        (Some(before), true) => {
                            let per = ca.len() / b;
                            Some(ca_change_host(
                                &before[d * per..(d + 1) * per],
                                &ca[d * per..(d + 1) * per],
                                &seq_masks[d].data,
                            ))
                        }
                        _ => None,
                    };
                    DesignPass { active, ca_change }
                })
                .collect();
            on_pass(r, &out, &status);
            for (d, s) in status.iter().enumerate().filter(|(_, s)| s.active) {
                let log = &mut logs[d];
                log.iterations_run += 1;
                if let Some(change) = s.ca_change {
                    log.ca_distance_change.push(change);
                    if options.early_stop_tolerance.is_some_and(|tol| change < tol) {
                        log.stopped_early = true;
                        stopped[d] = Some(out.design(d));
                    }
                }
            }
            prev = out.recycled();
            prev_ca = Some(ca);
            let all_stopped = stopped.iter().all(Option::is_some);
            last = Some(out);
            if all_stopped {
                break;
            }
        }
        BatchRecycling {
            last: last.expect("at least one pass"),
            stopped,
            logs,
        }
    }

    /// One batched prediction without early stop or callbacks, for benchmarks: `num_recycles +
    /// 1` passes on the same features from the zero state; returns the last pass.
    pub fn forward_recycled_batch(
        &self,
        f: &BatchFeatures<'_>,
        num_recycles: usize,
        device: &Device,
    ) -> BatchOutput {
        self.forward_recycled_batch_observed(
            std::iter::repeat_n(f.clone(), num_recycles + 1),
            None,
            None,
            &RecycleOptions::default(),
            device,
            |_, _, _| {},
        )
        .last
    }
}

/// Options of the recycling loop.
#[derive(Clone, Debug, Default)]
pub struct RecycleOptions {
    /// Stop once the CA distance matrix changes by less than this (Å, RMS over residue pairs)
    /// between consecutive iterations, as ColabFold's `recycle_early_stop_tolerance`. Off when
    /// `None` (DeepMind's behaviour: every recycle runs).
    pub early_stop_tolerance: Option<f32>,
}

/// What the recycling loop did.
#[derive(Clone, Debug, Default)]
pub struct RecycleLog {
    /// Iterations run (recycles + 1, fewer after an early stop).
    pub iterations_run: usize,
    /// RMS change of the CA distance matrix after each iteration but the first (Å).
    pub ca_distance_change: Vec<f32>,
    /// Whether the tolerance stopped the loop.
    pub stopped_early: bool,
}

/// RMS over valid residue pairs of the change in CA-CA distances between two atom37 sets.
pub fn ca_distance_change(before: &Tensor<3>, after: &Tensor<3>, seq_mask: &NdArray<f32>) -> f32 {
    let ca = |t: &Tensor<3>| crate::outputs::to_host(t.clone().narrow(1, ATOM_CA, 1)).data;
    ca_change_host(&ca(before), &ca(after), &seq_mask.data)
}

/// The CA positions of a batch `[B, N, 37, 3]`, on the host: `[B * N * 3]`.
fn host_ca(positions: &Tensor<4>) -> Vec<f32> {
    crate::outputs::to_host(positions.clone().narrow(2, ATOM_CA, 1)).data
}

/// [`ca_distance_change`] of host CA positions `[N * 3]` and a mask `[N]`.
fn ca_change_host(before: &[f32], after: &[f32], seq_mask: &[f32]) -> f32 {
    let points = |v: &[f32]| {
        v.chunks_exact(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect::<Vec<_>>()
    };
    let (a, b) = (points(before), points(after));
    let dist = |p: &[f32; 3], q: &[f32; 3]| {
        ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt()
    };
    let (mut sum, mut count) = (0.0f64, 0.0f64);
    for i in 0..a.len() {
        for j in 0..a.len() {
            let w = f64::from(seq_mask[i] * seq_mask[j]);
            let d = f64::from(dist(&a[i], &a[j]) - dist(&b[i], &b[j]));
            sum += w * d * d;
            count += w;
        }
    }
    if count > 0.0 {
        (sum / count).sqrt() as f32
    } else {
        0.0
    }
}
