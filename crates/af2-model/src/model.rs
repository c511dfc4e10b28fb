//! One AlphaFold iteration (Algorithm 2, lines 3-22) and the recycling loop around it.
//!
//! Every stage runs on a batch of designs of one length (a leading design axis `B` on every
//! tensor: [`AlphaFold::forward_iteration_batch`], [`AlphaFold::forward_recycled_batch_observed`]);
//! the single-design methods are thin wrappers that run a batch of one.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, FloatDType, Tensor};

use af2_io::weights::ModelDims;

use crate::evoformer::{
    EvoformerBlockConfig, EvoformerStack, EvoformerStackConfig, PairLayersConfig,
};
use crate::extra_msa_stack::{ExtraMsaStack, ExtraMsaStackConfig};
use crate::features::{BatchFeatures, Features};
use crate::heads::{BatchHeadLogits, HeadLogits, Heads, HeadsConfig};
use crate::input_embedder::{InputEmbedder, InputEmbedderConfig};
use crate::precision::module_dtype;
use crate::recycling_embedder::{RecyclingEmbedder, RecyclingEmbedderConfig};
use crate::structure_module::{
    BatchStructureOutput, StructureModule, StructureModuleConfig, StructureOutput,
};
use crate::template_embedding::{TemplateEmbedding, TemplateEmbeddingConfig};
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
            pass_graph: Default::default(),
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
    /// The recorded passes of the last input layouts (GPU builds), kept between predictions.
    #[module(skip)]
    pass_graph: PassGraphSlot,
}

/// Without the `wgpu` feature nothing is recorded.
#[cfg(not(feature = "wgpu"))]
#[derive(Clone, Debug, Default)]
struct PassGraphSlot;

/// Design `d` of a tensor with a leading design axis: `[B, ...]` -> `[...]` (rank `E = D - 1`).
pub fn design_slice<const D: usize, const E: usize>(t: &Tensor<D>, d: usize) -> Tensor<E> {
    t.clone().narrow(0, d, 1).squeeze_dim::<E>(0)
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

/// [`Recycled`] of a batch of designs: every tensor with a leading design axis `B`.
#[derive(Clone, Debug)]
pub struct BatchRecycled {
    /// `[B, N, c_m]`
    pub msa_first_row: Tensor<3>,
    /// `[B, N, N, c_z]`
    pub pair: Tensor<4>,
    /// `[B, N, 37, 3]` atom37 positions (Å).
    pub positions: Tensor<4>,
}

impl BatchRecycled {
    /// The all-zero state of `b` designs.
    pub fn zeros(
        b: usize,
        n: usize,
        msa_channels: usize,
        pair_channels: usize,
        device: &Device,
    ) -> Self {
        Self {
            msa_first_row: Tensor::zeros([b, n, msa_channels], device),
            pair: Tensor::zeros([b, n, n, pair_channels], device),
            positions: Tensor::zeros([b, n, 37, 3], device),
        }
    }

    /// The states of several designs (of one length) as one batch.
    ///
    /// # Panics
    /// If `states` is empty.
    pub fn stack(states: Vec<Recycled>) -> Self {
        let mut rows = Vec::with_capacity(states.len());
        let mut pairs = Vec::with_capacity(states.len());
        let mut positions = Vec::with_capacity(states.len());
        for s in states {
            rows.push(s.msa_first_row);
            pairs.push(s.pair);
            positions.push(s.positions);
        }
        Self {
            msa_first_row: Tensor::stack(rows, 0),
            pair: Tensor::stack(pairs, 0),
            positions: Tensor::stack(positions, 0),
        }
    }

    /// The state of design `d`.
    pub fn design(&self, d: usize) -> Recycled {
        Recycled {
            msa_first_row: design_slice(&self.msa_first_row, d),
            pair: design_slice(&self.pair, d),
            positions: design_slice(&self.positions, d),
        }
    }
}

/// Everything one iteration produces for one design.
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

/// [`IterationOutput`] of a batch of designs: every tensor with a leading design axis `B`.
#[derive(Clone, Debug)]
pub struct BatchOutput {
    /// `[B, S, N, c_m]`
    pub msa: Tensor<4>,
    /// `[B, N, N, c_z]`
    pub pair: Tensor<4>,
    /// `[B, N, c_s]`
    pub single: Tensor<3>,
    /// Structure module outputs.
    pub structure: BatchStructureOutput,
    /// Head logits.
    pub logits: BatchHeadLogits,
}

impl BatchOutput {
    /// Number of designs `B`.
    pub fn batch_size(&self) -> usize {
        self.msa.dims()[0]
    }

    /// The outputs of design `d` (views of the batch's tensors).
    pub fn design(&self, d: usize) -> IterationOutput {
        IterationOutput {
            msa: design_slice(&self.msa, d),
            pair: design_slice(&self.pair, d),
            single: design_slice(&self.single, d),
            structure: self.structure.design(d),
            logits: self.logits.design(d),
        }
    }

    /// The state to feed into the next iteration.
    pub fn recycled(&self) -> BatchRecycled {
        let [b, _, n, c] = self.msa.dims();
        BatchRecycled {
            msa_first_row: self.msa.clone().narrow(1, 0, 1).reshape([b, n, c]),
            pair: self.pair.clone(),
            positions: self.structure.final_atom37.clone(),
        }
    }
}

/// Pseudo-beta positions: CB, or CA for glycine (`pseudo_beta_fn`), of a batch of designs.
///
/// # Shapes
/// - is_glycine: `[B, N, 1]`, 1 for glycine, else 0
/// - positions: `[B, N, 37, 3]` -> `[B, N, 3]`
pub fn pseudo_beta(is_glycine: Tensor<3>, positions: Tensor<4>) -> Tensor<3> {
    let [b, n, _, _] = positions.dims();
    let ca = positions.clone().narrow(2, ATOM_CA, 1).reshape([b, n, 3]);
    let cb = positions.narrow(2, ATOM_CB, 1).reshape([b, n, 3]);
    ca * is_glycine.clone() + cb * (is_glycine.neg() + 1.0)
}

fn one_hot_rows(values: &[i64], classes: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len() * classes];
    for (k, &v) in values.iter().enumerate() {
        out[k * classes + v as usize] = 1.0;
    }
    out
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
        let mask = template_pair_mask.map(|m| m.clone().unsqueeze::<3>());
        self.forward_iteration_batch(
            &BatchFeatures::single(f),
            BatchRecycled::stack(vec![prev]),
            mask.as_ref(),
            device,
        )
        .design(0)
    }

    /// `passes` passes of the recycling loop on one design's features from the zero state,
    /// adding each stage's wall time to `times`, synchronising the device after every stage
    /// (for benchmarks: the synchronisation itself removes overlap between stages). Returns the
    /// last pass.
    ///
    /// # Panics
    /// If `passes` is 0.
    pub fn forward_recycled_timed(
        &self,
        f: &Features,
        passes: usize,
        device: &Device,
        times: &mut StageTimes,
    ) -> IterationOutput {
        assert!(passes > 0, "the recycling loop needs at least one pass");
        let batch = BatchFeatures::single(f);
        let mut prev = self.zero_state_batch(1, f.num_residues(), device);
        let mut memo = TemplateMemo::default();
        let mut clock = StageClock::on(device, times);
        for _ in 1..passes {
            prev = self
                .iteration(&batch, prev, None, device, &mut memo, &mut clock)
                .recycled();
        }
        self.iteration(&batch, prev, None, device, &mut memo, &mut clock)
            .design(0)
    }

    /// One iteration for a batch of designs of one length, every stage on the whole batch:
    /// the single-design methods are this with a batch of one. `template_pair_mask` is
    /// `[B, N, N]` (see [`AlphaFold::forward_iteration_masked`]).
    pub fn forward_iteration_batch(
        &self,
        f: &BatchFeatures<'_>,
        prev: BatchRecycled,
        template_pair_mask: Option<&Tensor<3>>,
        device: &Device,
    ) -> BatchOutput {
        self.iteration(
            f,
            prev,
            template_pair_mask,
            device,
            &mut TemplateMemo::default(),
            &mut StageClock::off(),
        )
    }

    fn iteration(
        &self,
        f: &BatchFeatures<'_>,
        prev: BatchRecycled,
        template_pair_mask: Option<&Tensor<3>>,
        device: &Device,
        memo: &mut TemplateMemo,
        clock: &mut StageClock<'_>,
    ) -> BatchOutput {
        let inputs = PassInputs::prepare(self, f, template_pair_mask, memo, device);
        self.pass(&inputs, prev, clock)
    }

    /// One pass on inputs already on the device (Algorithm 2, lines 3-22). It uploads
    /// nothing, so that it can be recorded as a graph and replayed.
    fn pass(&self, x: &PassInputs, prev: BatchRecycled, clock: &mut StageClock<'_>) -> BatchOutput {
        let [b, n] = x.seq_mask.dims();
        let num_clusters = x.msa_feat.dims()[1];
        let seq_mask = x.seq_mask.clone();
        let pair_mask =
            seq_mask.clone().unsqueeze_dim::<3>(2) * seq_mask.clone().unsqueeze_dim::<3>(1);

        let (msa, pair) = self.input_embedder.forward(
            x.target_feat.clone(),
            x.msa_feat.clone(),
            x.relpos.clone(),
        );
        let (row_update, pair_update) = self.recycling_embedder.forward(
            prev.msa_first_row,
            prev.pair,
            pseudo_beta(x.is_glycine.clone(), prev.positions),
        );
        let c_m = msa.dims()[3];
        let first = msa.clone().narrow(1, 0, 1) + row_update.reshape([b, 1, n, c_m]);
        let mut msa = if num_clusters > 1 {
            Tensor::cat(vec![first, msa.narrow(1, 1, num_clusters - 1)], 1)
        } else {
            first
        };
        let mut pair = pair + pair_update;
        let mut msa_mask = x.msa_mask.clone();
        let template_memory = x
            .templates
            .as_ref()
            .and_then(|t| Some((t.pair_memory.clone()?, t.mask.clone())));
        if let (Some(embedding), Some((memory, mask))) = (&self.template_embedding, template_memory)
        {
            pair = pair.clone() + embedding.attend(pair, memory, mask);
        }
        clock.lap(|t| &mut t.embeddings);
        // The stacks compute in their parameters' dtype (f16 in half precision).
        let extra_dtype = module_dtype(&self.extra_msa_stack);
        pair = self.extra_msa_stack.forward(
            x.extra_feat.clone().cast(extra_dtype),
            x.extra_msa_mask.clone().cast(extra_dtype),
            pair.cast(extra_dtype),
            pair_mask.clone().cast(extra_dtype),
        );
        clock.lap(|t| &mut t.extra_msa);
        if let Some((rows, psi_mask)) = x.templates.as_ref().and_then(|t| t.torsion_rows.as_ref()) {
            msa = Tensor::cat(vec![msa, rows.clone()], 1);
            msa_mask = Tensor::cat(vec![msa_mask, psi_mask.clone()], 1);
        }
        let trunk = module_dtype(&self.evoformer);
        let (msa, pair, single) = self.evoformer.forward(
            msa.cast(trunk),
            msa_mask.cast(trunk),
            pair.cast(trunk),
            pair_mask.cast(trunk),
        );
        let f32 = FloatDType::F32;
        let (msa, pair, single) = (msa.cast(f32), pair.cast(f32), single.cast(f32));
        let msa = msa.narrow(1, 0, num_clusters);
        clock.lap(|t| &mut t.evoformer);

        let structure =
            self.structure_module
                .forward(single.clone(), pair.clone(), seq_mask, x.aatype.clone());
        clock.lap(|t| &mut t.structure_module);
        let logits = self.heads.forward(
            msa.clone(),
            pair.clone(),
            single.clone(),
            structure.act.clone(),
        );
        clock.lap(|t| &mut t.heads);
        BatchOutput {
            msa,
            pair,
            single,
            structure,
            logits,
        }
    }

    /// Whether the recycling loop records its passes as a graph and replays them on `device`
    /// (see `model::graph`): on cubecl devices in GPU builds, unless `AF2_GRAPH=0`.
    fn records_passes(&self, device: &Device) -> bool {
        #[cfg(feature = "wgpu")]
        return graph::graphs_enabled(device);
        #[cfg(not(feature = "wgpu"))]
        {
            let _ = device;
            false
        }
    }

    /// One pass through the recorded graph of its layout where [`AlphaFold::records_passes`].
    fn replayed_pass(&self, x: &PassInputs, prev: BatchRecycled, device: &Device) -> BatchOutput {
        #[cfg(feature = "wgpu")]
        return self.pass_recorded(x, prev, device);
        #[cfg(not(feature = "wgpu"))]
        {
            let _ = device;
            self.pass(x, prev, &mut StageClock::off())
        }
    }

    /// How the passes of each input layout run on this model (see `model::graph`), for
    /// reports; empty where nothing was recorded or tried.
    #[cfg(not(feature = "wgpu"))]
    pub fn pass_recordings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Drops the recorded passes (GPU builds): call it after giving the model other parameter
    /// values by any means but [`crate::weights::load_module`] or
    /// [`AlphaFold::with_precision`] (which do), since a recording reads the parameters'
    /// buffers as they were when it was made.
    pub fn forget_recordings(&mut self) {
        self.pass_graph = Default::default();
    }

    /// The all-zero recycled state for `n` residues at this model's widths.
    pub fn zero_state(&self, n: usize, device: &Device) -> Recycled {
        self.zero_state_batch(1, n, device).design(0)
    }

    /// The all-zero recycled state of `b` designs of `n` residues.
    pub fn zero_state_batch(&self, b: usize, n: usize, device: &Device) -> BatchRecycled {
        let c_m = self.input_embedder.preprocess_1d.weight.dims()[1];
        let c_z = self.input_embedder.left_single.weight.dims()[1];
        BatchRecycled::zeros(b, n, c_m, c_z, device)
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

pub use recycle_loop::{
    BatchRecycling, DesignPass, RecycleLog, RecycleOptions, ca_distance_change,
};

#[cfg(test)]
mod tests;

#[cfg(feature = "wgpu")]
mod graph;
mod pass_inputs;
mod recycle_loop;
mod templates;
#[cfg(feature = "wgpu")]
use graph::PassGraphSlot;
use pass_inputs::PassInputs;
use templates::TemplateMemo;
