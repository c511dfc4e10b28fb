//! One AlphaFold iteration (Algorithm 2, lines 3-22) and the recycling loop around it.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use af2_io::npz::NdArray;
use af2_io::weights::ModelDims;

use crate::all_atom::atom37_to_torsion_angles;
use crate::evoformer::{
    EvoformerBlockConfig, EvoformerStack, EvoformerStackConfig, PairLayersConfig,
};
use crate::extra_msa_stack::{ExtraMsaStack, ExtraMsaStackConfig};
use crate::features::{Features, TemplateFeatures, relpos_tensor, to_int_tensor, to_tensor};
use crate::heads::{HeadLogits, Heads, HeadsConfig};
use crate::input_embedder::{InputEmbedder, InputEmbedderConfig};
use crate::recycling_embedder::{RecyclingEmbedder, RecyclingEmbedderConfig};
use crate::structure_module::{StructureModule, StructureModuleConfig, StructureOutput};
use crate::template_embedding::{TemplateEmbedding, TemplateEmbeddingConfig, TemplateInputs};
use crate::template_torsion_embedding::{TemplateTorsionEmbedding, TemplateTorsionEmbeddingConfig};

/// Residue type of glycine in AlphaFold order; its pseudo-beta is CA.
const GLYCINE: i64 = 7;
/// atom37 indices.
const ATOM_N: usize = 0;
const ATOM_CA: usize = 1;
const ATOM_C: usize = 2;
const ATOM_CB: usize = 3;

/// Configuration of the whole monomer model.
#[derive(Config, Debug)]
pub struct AlphaFoldConfig {
    /// Input embedding.
    pub input_embedder: InputEmbedderConfig,
    /// Recycling embedding.
    pub recycling_embedder: RecyclingEmbedderConfig,
    /// Template embedding (model_1/2 only).
    pub template_embedding: Option<TemplateEmbeddingConfig>,
    /// Extra-MSA stack.
    pub extra_msa_stack: ExtraMsaStackConfig,
    /// Evoformer stack.
    pub evoformer: EvoformerStackConfig,
    /// Structure module.
    pub structure_module: StructureModuleConfig,
    /// Heads.
    pub heads: HeadsConfig,
}

fn block_config(
    msa_channels: usize,
    pair_channels: usize,
    s: &af2_io::weights::StackDims,
) -> EvoformerBlockConfig {
    EvoformerBlockConfig::new(
        msa_channels,
        pair_channels,
        s.msa_row_heads,
        s.msa_row_head_dim,
        s.msa_col_heads,
        s.msa_col_head_dim,
        s.msa_transition_hidden,
        s.opm_channel,
        s.tri_mul_channel,
        s.tri_att_heads,
        s.tri_att_head_dim,
        s.pair_transition_hidden,
    )
}

impl AlphaFoldConfig {
    /// The configuration that fits weights of these dimensions.
    pub fn from_dims(d: &ModelDims) -> Self {
        let (m, z) = (d.msa_channel, d.pair_channel);
        let template_embedding = d.template.as_ref().map(|t| {
            TemplateEmbeddingConfig::new(
                z,
                t.channel,
                t.blocks,
                PairLayersConfig::new(
                    t.channel,
                    t.tri_mul_channel,
                    t.tri_att_heads,
                    t.tri_att_head_dim,
                    t.transition_hidden,
                ),
                t.pointwise_heads,
                t.pointwise_key_dim,
                t.pointwise_value_dim,
            )
        });
        Self {
            input_embedder: InputEmbedderConfig::new(m, z),
            recycling_embedder: RecyclingEmbedderConfig::new(m, z),
            extra_msa_stack: ExtraMsaStackConfig::new(
                block_config(d.extra_msa_channel, z, &d.extra_msa),
                d.extra_msa_blocks,
            ),
            evoformer: EvoformerStackConfig::new(
                block_config(m, z, &d.evoformer),
                d.evoformer_blocks,
                d.seq_channel,
            ),
            structure_module: StructureModuleConfig::from_dims(d),
            template_embedding,
            heads: HeadsConfig::new(
                m,
                z,
                d.seq_channel,
                d.structure.channel,
                d.plddt_channel,
                d.plddt_bins,
                d.distogram_bins,
                d.masked_msa_classes,
            )
            .with_pae_bins(d.pae_bins),
        }
    }

    /// A zero-initialised model.
    pub fn init(&self, device: &Device) -> AlphaFold {
        let m = self.input_embedder.msa_channels;
        AlphaFold {
            input_embedder: self.input_embedder.init(device),
            recycling_embedder: self.recycling_embedder.init(device),
            template_embedding: self.template_embedding.as_ref().map(|c| c.init(device)),
            template_torsion_embedding: self
                .template_embedding
                .as_ref()
                .map(|_| TemplateTorsionEmbeddingConfig::new(m).init(device)),
            extra_msa_stack: self.extra_msa_stack.init(device),
            evoformer: self.evoformer.init(device),
            structure_module: self.structure_module.init(device),
            heads: self.heads.init(device),
        }
    }
}

/// The AlphaFold2 monomer model.
#[derive(Module, Debug)]
pub struct AlphaFold {
    /// Algorithms 3 and 4.
    pub input_embedder: InputEmbedder,
    /// Algorithm 32.
    pub recycling_embedder: RecyclingEmbedder,
    /// Algorithms 16 and 17.
    pub template_embedding: Option<TemplateEmbedding>,
    /// Template torsion angles as MSA rows.
    pub template_torsion_embedding: Option<TemplateTorsionEmbedding>,
    /// Algorithm 18.
    pub extra_msa_stack: ExtraMsaStack,
    /// Algorithm 6.
    pub evoformer: EvoformerStack,
    /// Algorithm 20.
    pub structure_module: StructureModule,
    /// Output heads.
    pub heads: Heads,
}

/// The state carried from one iteration to the next.
#[derive(Clone, Debug)]
pub struct Recycled {
    /// `[N, c_m]`
    pub msa_first_row: Tensor<2>,
    /// `[N, N, c_z]`
    pub pair: Tensor<3>,
    /// `[N, 37, 3]` atom37 positions (Å).
    pub positions: Tensor<3>,
}

impl Recycled {
    /// The all-zero state fed into the first iteration.
    pub fn zeros(n: usize, msa_channels: usize, pair_channels: usize, device: &Device) -> Self {
        Self {
            msa_first_row: Tensor::zeros([n, msa_channels], device),
            pair: Tensor::zeros([n, n, pair_channels], device),
            positions: Tensor::zeros([n, 37, 3], device),
        }
    }
}

/// Everything one iteration produces.
#[derive(Clone, Debug)]
pub struct IterationOutput {
    /// Cluster rows of the final MSA representation `[S, N, c_m]`.
    pub msa: Tensor<3>,
    /// `[N, N, c_z]`
    pub pair: Tensor<3>,
    /// `[N, c_s]`
    pub single: Tensor<2>,
    /// Structure module outputs.
    pub structure: StructureOutput,
    /// Head logits.
    pub logits: HeadLogits,
}

impl IterationOutput {
    /// The state to feed into the next iteration.
    pub fn recycled(&self) -> Recycled {
        let [_, n, c] = self.msa.dims();
        Recycled {
            msa_first_row: self.msa.clone().narrow(0, 0, 1).reshape([n, c]),
            pair: self.pair.clone(),
            positions: self.structure.final_atom37.clone(),
        }
    }
}

/// Pseudo-beta positions: CB, or CA for glycine (`pseudo_beta_fn`).
///
/// # Shapes
/// - positions: `[N, 37, 3]` -> `[N, 3]`
pub fn pseudo_beta(aatype: &[i64], positions: Tensor<3>) -> Tensor<2> {
    let [n, _, _] = positions.dims();
    let device = positions.device();
    let is_gly: Vec<f32> = aatype
        .iter()
        .map(|&a| f32::from(u8::from(a == GLYCINE)))
        .collect();
    let gly = Tensor::<2>::from_data(TensorData::new(is_gly, [n, 1]), &device);
    let ca = positions.clone().narrow(1, ATOM_CA, 1).reshape([n, 3]);
    let cb = positions.narrow(1, ATOM_CB, 1).reshape([n, 3]);
    ca * gly.clone() + cb * (gly.neg() + 1.0)
}

fn one_hot_rows(values: &[i64], classes: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len() * classes];
    for (k, &v) in values.iter().enumerate() {
        out[k * classes + v as usize] = 1.0;
    }
    out
}

fn template_inputs(t: &TemplateFeatures, index: usize, device: &Device) -> TemplateInputs {
    let n = t.aatype.shape[1];
    let slice =
        |a: &NdArray<f32>, per: usize| a.data[index * n * per..(index + 1) * n * per].to_vec();
    let masks = slice(&t.all_atom_masks, 37);
    let backbone: Vec<f32> = masks
        .chunks_exact(37)
        .map(|m| m[ATOM_N] * m[ATOM_CA] * m[ATOM_C])
        .collect();
    let aatype = &t.aatype.data[index * n..(index + 1) * n];
    TemplateInputs {
        aatype_one_hot: Tensor::from_data(
            TensorData::new(one_hot_rows(aatype, 22), [n, 22]),
            device,
        ),
        pseudo_beta: Tensor::from_data(TensorData::new(slice(&t.pseudo_beta, 3), [n, 3]), device),
        pseudo_beta_mask: Tensor::from_data(
            TensorData::new(slice(&t.pseudo_beta_mask, 1), [n]),
            device,
        ),
        backbone_mask: Tensor::from_data(TensorData::new(backbone, [n]), device),
    }
}

/// Template torsion features `[T, N, 57]` and the psi mask `[T, N]` that masks their MSA rows.
fn template_torsion_features(t: &TemplateFeatures, device: &Device) -> (Tensor<3>, Tensor<2>) {
    let [tn, n] = [t.aatype.shape[0], t.aatype.shape[1]];
    let aatype = to_int_tensor::<2>(&t.aatype.data, t.aatype.shape.clone(), device);
    let torsions = atom37_to_torsion_angles(
        aatype,
        to_tensor::<4>(&t.all_atom_positions, device),
        to_tensor::<3>(&t.all_atom_masks, device),
    );
    let one_hot = Tensor::<3>::from_data(
        TensorData::new(one_hot_rows(&t.aatype.data, 22), [tn, n, 22]),
        device,
    );
    let features = Tensor::cat(
        vec![
            one_hot,
            torsions.sin_cos.reshape([tn, n, 14]),
            torsions.alt_sin_cos.reshape([tn, n, 14]),
            torsions.mask.clone(),
        ],
        2,
    );
    let psi_mask = torsions.mask.narrow(2, 2, 1).reshape([tn, n]);
    (features, psi_mask)
}

impl AlphaFold {
    /// Runs one iteration on the features of that iteration and the recycled state.
    pub fn forward_iteration(
        &self,
        f: &Features,
        prev: Recycled,
        device: &Device,
    ) -> IterationOutput {
        self.forward_iteration_masked(f, prev, None, device)
    }

    /// [`AlphaFold::forward_iteration`] with an optional `[N, N]` mask multiplied into the
    /// template pair features: ColabDesign's `rm_template_ic` passes the same-chain mask so that
    /// the chains of one template act as independent templates.
    pub fn forward_iteration_masked(
        &self,
        f: &Features,
        prev: Recycled,
        template_pair_mask: Option<&Tensor<2>>,
        device: &Device,
    ) -> IterationOutput {
        self.iteration(f, prev, template_pair_mask, device, &mut StageClock::off())
    }

    /// [`AlphaFold::forward_iteration`] that also adds each stage's wall time to `times`,
    /// synchronising the device after every stage (for benchmarks: the synchronisation itself
    /// removes overlap between stages).
    pub fn forward_iteration_timed(
        &self,
        f: &Features,
        prev: Recycled,
        device: &Device,
        times: &mut StageTimes,
    ) -> IterationOutput {
        let mut clock = StageClock::on(device, times);
        self.iteration(f, prev, None, device, &mut clock)
    }

    fn iteration(
        &self,
        f: &Features,
        prev: Recycled,
        template_pair_mask: Option<&Tensor<2>>,
        device: &Device,
        clock: &mut StageClock<'_>,
    ) -> IterationOutput {
        let n = f.num_residues();
        let num_clusters = f.num_msa_rows();
        let seq_mask = to_tensor::<1>(&f.seq_mask, device);
        let pair_mask =
            seq_mask.clone().unsqueeze_dim::<2>(1) * seq_mask.clone().unsqueeze_dim::<2>(0);

        let (msa, pair) = self.input_embedder.forward(
            to_tensor(&f.target_feat, device),
            to_tensor(&f.msa_feat, device),
            relpos_tensor(&f.residue_index, device),
        );
        let (row_update, pair_update) = self.recycling_embedder.forward(
            prev.msa_first_row,
            prev.pair,
            pseudo_beta(&f.aatype, prev.positions),
        );
        let c_m = msa.dims()[2];
        let first = msa.clone().narrow(0, 0, 1) + row_update.reshape([1, n, c_m]);
        let mut msa = if num_clusters > 1 {
            Tensor::cat(vec![first, msa.narrow(0, 1, num_clusters - 1)], 0)
        } else {
            first
        };
        let mut pair = pair + pair_update;
        let mut msa_mask = to_tensor::<2>(&f.msa_mask, device);

        if let (Some(embedding), Some(t)) = (&self.template_embedding, &f.templates) {
            let templates: Vec<TemplateInputs> = (0..t.aatype.shape[0])
                .map(|i| template_inputs(t, i, device))
                .collect();
            let mask = to_tensor::<1>(&t.mask, device);
            pair = pair.clone()
                + embedding.forward_masked(
                    pair,
                    pair_mask.clone(),
                    &templates,
                    mask,
                    template_pair_mask,
                );
        }
        clock.lap(|t| &mut t.embeddings);
        pair = self.extra_msa_stack.forward(
            to_tensor(&f.extra_feat, device),
            to_tensor(&f.extra_msa_mask, device),
            pair,
            pair_mask.clone(),
        );
        clock.lap(|t| &mut t.extra_msa);
        if let (Some(torsion), Some(t)) = (&self.template_torsion_embedding, &f.templates) {
            let (features, psi_mask) = template_torsion_features(t, device);
            msa = Tensor::cat(vec![msa, torsion.forward(features)], 0);
            msa_mask = Tensor::cat(vec![msa_mask, psi_mask], 0);
        }
        let (msa, pair, single) = self.evoformer.forward(msa, msa_mask, pair, pair_mask);
        let msa = msa.narrow(0, 0, num_clusters);
        clock.lap(|t| &mut t.evoformer);

        let aatype = to_int_tensor::<1>(&f.aatype, vec![n], device);
        let structure =
            self.structure_module
                .forward(single.clone(), pair.clone(), seq_mask, aatype);
        clock.lap(|t| &mut t.structure_module);
        let logits = self.heads.forward(
            msa.clone(),
            pair.clone(),
            single.clone(),
            structure.act.clone(),
        );
        clock.lap(|t| &mut t.heads);
        IterationOutput {
            msa,
            pair,
            single,
            structure,
            logits,
        }
    }

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
        let mut passes = passes.into_iter().peekable();
        let first = passes
            .peek()
            .expect("the recycling loop needs at least one pass");
        let mut prev = initial.unwrap_or_else(|| self.zero_state(first.num_residues(), device));
        let mut log = RecycleLog::default();
        let mut output = None;
        for (r, features) in passes.enumerate() {
            let out =
                self.forward_iteration_masked(features, prev.clone(), template_pair_mask, device);
            let next = out.recycled();
            log.iterations_run += 1;
            let change = (r > 0).then(|| {
                let change =
                    ca_distance_change(&prev.positions, &next.positions, &features.seq_mask);
                log.ca_distance_change.push(change);
                change
            });
            on_pass(r, &out, change);
            output = Some(out);
            if change.is_some_and(|c| options.early_stop_tolerance.is_some_and(|tol| c < tol)) {
                log.stopped_early = true;
                break;
            }
            prev = next;
        }
        (output.expect("at least one pass"), log)
    }

    /// The all-zero recycled state for `n` residues at this model's widths.
    pub fn zero_state(&self, n: usize, device: &Device) -> Recycled {
        let c_m = self.input_embedder.preprocess_1d.weight.dims()[1];
        let c_z = self.input_embedder.left_single.weight.dims()[1];
        Recycled::zeros(n, c_m, c_z, device)
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
    let ca = |t: &Tensor<3>| {
        let v = crate::outputs::to_host(t.clone().narrow(1, ATOM_CA, 1)).data;
        v.chunks_exact(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect::<Vec<_>>()
    };
    let (a, b) = (ca(before), ca(after));
    let dist = |p: &[f32; 3], q: &[f32; 3]| {
        ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt()
    };
    let (mut sum, mut count) = (0.0f64, 0.0f64);
    for i in 0..a.len() {
        for j in 0..a.len() {
            let w = f64::from(seq_mask.data[i] * seq_mask.data[j]);
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

/// Wall time per stage of an iteration, in seconds, summed over the iterations timed.
#[derive(Clone, Debug, Default)]
pub struct StageTimes {
    /// Input, recycling and template embeddings (and the template torsion features' upload).
    pub embeddings: f64,
    /// The extra-MSA stack.
    pub extra_msa: f64,
    /// Template torsion rows and the Evoformer stack.
    pub evoformer: f64,
    /// The structure module.
    pub structure_module: f64,
    /// The heads.
    pub heads: f64,
}

/// Times stages when on; does nothing (no synchronisation) when off.
struct StageClock<'a> {
    state: Option<(&'a Device, &'a mut StageTimes, std::time::Instant)>,
}

impl<'a> StageClock<'a> {
    fn off() -> Self {
        Self { state: None }
    }

    fn on(device: &'a Device, times: &'a mut StageTimes) -> Self {
        let _ = device.sync();
        Self {
            state: Some((device, times, std::time::Instant::now())),
        }
    }

    /// Waits for the device, then adds the time since the last lap to one stage.
    fn lap(&mut self, stage: impl FnOnce(&mut StageTimes) -> &mut f64) {
        if let Some((device, times, last)) = &mut self.state {
            let _ = device.sync();
            *stage(times) += last.elapsed().as_secs_f64();
            *last = std::time::Instant::now();
        }
    }
}
