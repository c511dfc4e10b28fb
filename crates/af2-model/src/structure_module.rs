//! The structure module (Jumper et al. 2021, Suppl. Alg. 20; AlphaFold's
//! `folding.StructureModule`, `generate_affines` and `FoldIteration`), for inference: no
//! dropout, no losses.

use af2_geometry::QuatAffine;
use af2_io::weights::ModelDims;
use af2_layers::{LayerNorm, LayerNormConfig, Linear, linear};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};

use crate::all_atom::atom14_to_atom37;
use crate::invariant_point_attention::{
    InvariantPointAttention, InvariantPointAttentionConfig, PairTerms,
};
use crate::model::design_slice;
use crate::sidechain::{MultiRigidSidechain, MultiRigidSidechainConfig, SidechainOutput};

/// Configuration of a [`StructureModule`].
#[derive(Config, Debug)]
pub struct StructureModuleConfig {
    /// Channels of the single representation (c_s, 384).
    pub single_channels: usize,
    /// Channels of the pair representation (c_z, 128).
    pub pair_channels: usize,
    /// Channels of the structure-module activations (`num_channel`, 384).
    pub channels: usize,
    /// Invariant point attention heads (12).
    pub ipa_heads: usize,
    /// Scalar query/key channels per IPA head (16).
    pub scalar_qk: usize,
    /// Query/key points per IPA head (4).
    pub point_qk: usize,
    /// Scalar value channels per IPA head (16).
    pub scalar_v: usize,
    /// Value points per IPA head (8).
    pub point_v: usize,
    /// Hidden channels of the side-chain angle resnet (128).
    pub sidechain_channels: usize,
    /// Iterations of the shared-weight fold iteration.
    #[config(default = 8)]
    pub num_layer: usize,
    /// Ångströms per internal unit of the backbone translations.
    #[config(default = 10.0)]
    pub position_scale: f32,
    /// Place side chains after every iteration (AlphaFold's `sidechains` trajectory, which only
    /// its training losses and raw-output comparisons read), not only after the last one.
    #[config(default = false)]
    pub sidechain_trajectory: bool,
}

impl StructureModuleConfig {
    /// The configuration matching a weight set (AlphaFold's `num_layer` and `position_scale`
    /// are not visible in the weights and keep their defaults).
    pub fn from_dims(dims: &ModelDims) -> Self {
        let s = &dims.structure;
        Self::new(
            dims.seq_channel,
            dims.pair_channel,
            s.channel,
            s.ipa_heads,
            s.scalar_qk,
            s.point_qk,
            s.scalar_v,
            s.point_v,
            s.sidechain_channel,
        )
    }

    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> StructureModule {
        let c = self.channels;
        let ipa = InvariantPointAttentionConfig::new(
            c,
            self.pair_channels,
            self.ipa_heads,
            self.scalar_qk,
            self.point_qk,
            self.scalar_v,
            self.point_v,
        );
        let sidechain =
            MultiRigidSidechainConfig::new(c, self.single_channels, self.sidechain_channels);
        StructureModule {
            single_layer_norm: LayerNormConfig::new(self.single_channels).init(device),
            initial_projection: linear(self.single_channels, c, device),
            pair_layer_norm: LayerNormConfig::new(self.pair_channels).init(device),
            fold_iteration: FoldIteration {
                invariant_point_attention: ipa.init(device),
                attention_layer_norm: LayerNormConfig::new(c).init(device),
                transition: linear(c, c, device),
                transition_1: linear(c, c, device),
                transition_2: linear(c, c, device),
                transition_layer_norm: LayerNormConfig::new(c).init(device),
                affine_update: linear(c, 6, device),
                rigid_sidechain: sidechain.init(device),
            },
            num_layer: self.num_layer,
            position_scale: self.position_scale,
            sidechain_trajectory: self.sidechain_trajectory,
        }
    }
}

/// Iteratively refines per-residue backbone frames with invariant point attention, then places
/// every atom (Algorithm 20). Parameter names follow AlphaFold.
#[derive(Module, Debug)]
pub struct StructureModule {
    /// LayerNorm of the single representation.
    pub single_layer_norm: LayerNorm,
    /// `[single_channels, channels]`
    pub initial_projection: Linear,
    /// LayerNorm of the pair representation.
    pub pair_layer_norm: LayerNorm,
    /// The iteration, applied `num_layer` times with shared weights.
    pub fold_iteration: FoldIteration,
    num_layer: usize,
    position_scale: f32,
    sidechain_trajectory: bool,
}

/// One iteration of the structure module (Algorithm 20 lines 6–14): IPA, transition, backbone
/// update (Algorithm 23) and side chains.
#[derive(Module, Debug)]
pub struct FoldIteration {
    /// Invariant point attention.
    pub invariant_point_attention: InvariantPointAttention,
    /// LayerNorm after the attention residual.
    pub attention_layer_norm: LayerNorm,
    /// Transition layer 1 of 3 (ReLU).
    pub transition: Linear,
    /// Transition layer 2 of 3 (ReLU).
    pub transition_1: Linear,
    /// Transition layer 3 of 3 (linear).
    pub transition_2: Linear,
    /// LayerNorm after the transition residual.
    pub transition_layer_norm: LayerNorm,
    /// Backbone update (Algorithm 23): `[channels, 6]` as quaternion vector part and
    /// translation.
    pub affine_update: Linear,
    /// Torsion angles and atoms.
    pub rigid_sidechain: MultiRigidSidechain,
}

/// Everything the structure module returns for one design (AlphaFold output names in
/// parentheses).
#[derive(Debug, Clone)]
pub struct StructureOutput {
    /// Backbone frames of every iteration as quaternion and translation in Å
    /// (`structure_traj`). Shape `[num_layer, N, 7]`.
    pub affines: Tensor<3>,
    /// Unit (sin, cos) torsions (`sidechains/angles_sin_cos`). Shape `[layers, N, 7, 2]`,
    /// where `layers` is `num_layer` with the side-chain trajectory kept
    /// ([`StructureModule::keep_sidechain_trajectory`]), else 1 (the last iteration); so for
    /// the three fields below.
    pub angles_sin_cos: Tensor<4>,
    /// Torsions before normalisation (`sidechains/unnormalized_angles_sin_cos`).
    /// Shape `[layers, N, 7, 2]`.
    pub unnormalized_angles_sin_cos: Tensor<4>,
    /// Rigid-group frames in flat12 layout (`sidechains/frames`). Shape `[layers, N, 8, 12]`.
    pub sidechain_frames: Tensor<4>,
    /// Atom14 positions (`sidechains/atom_pos`). Shape `[layers, N, 14, 3]`.
    pub atom14: Tensor<4>,
    /// Atom14 positions of the last iteration (`final_atom14_positions`). Shape `[N, 14, 3]`.
    pub final_atom14: Tensor<3>,
    /// Atom37 positions, zero where the residue lacks the atom (`final_atom_positions`).
    /// Shape `[N, 37, 3]`.
    pub final_atom37: Tensor<3>,
    /// Which atom37 slots exist (`final_atom_mask`). Shape `[N, 37]`.
    pub final_atom37_mask: Tensor<2>,
    /// Final single activations (`representations/structure_module`), for the pLDDT head.
    /// Shape `[N, channels]`.
    pub act: Tensor<2>,
}

/// [`StructureOutput`] of a batch of designs: every tensor with a leading design axis `B`.
#[derive(Debug, Clone)]
pub struct BatchStructureOutput {
    /// `[B, num_layer, N, 7]`
    pub affines: Tensor<4>,
    /// `[B, layers, N, 7, 2]` (`layers` as in [`StructureOutput::angles_sin_cos`])
    pub angles_sin_cos: Tensor<5>,
    /// `[B, layers, N, 7, 2]`
    pub unnormalized_angles_sin_cos: Tensor<5>,
    /// `[B, layers, N, 8, 12]`
    pub sidechain_frames: Tensor<5>,
    /// `[B, layers, N, 14, 3]`
    pub atom14: Tensor<5>,
    /// `[B, N, 14, 3]`
    pub final_atom14: Tensor<4>,
    /// `[B, N, 37, 3]`
    pub final_atom37: Tensor<4>,
    /// `[B, N, 37]`
    pub final_atom37_mask: Tensor<3>,
    /// `[B, N, channels]`
    pub act: Tensor<3>,
}

impl BatchStructureOutput {
    /// The outputs of design `d`.
    pub fn design(&self, d: usize) -> StructureOutput {
        StructureOutput {
            affines: design_slice(&self.affines, d),
            angles_sin_cos: design_slice(&self.angles_sin_cos, d),
            unnormalized_angles_sin_cos: design_slice(&self.unnormalized_angles_sin_cos, d),
            sidechain_frames: design_slice(&self.sidechain_frames, d),
            atom14: design_slice(&self.atom14, d),
            final_atom14: design_slice(&self.final_atom14, d),
            final_atom37: design_slice(&self.final_atom37, d),
            final_atom37_mask: design_slice(&self.final_atom37_mask, d),
            act: design_slice(&self.act, d),
        }
    }
}

impl StructureModule {
    /// Number of fold iterations.
    pub fn num_layer(&self) -> usize {
        self.num_layer
    }

    /// Ångströms per internal translation unit.
    pub fn position_scale(&self) -> f32 {
        self.position_scale
    }

    /// Whether side chains are placed after every iteration (see
    /// [`StructureModuleConfig::sidechain_trajectory`]).
    pub fn sidechain_trajectory(&self) -> bool {
        self.sidechain_trajectory
    }

    /// Keeps (or drops) the side-chain trajectory: with `keep`, every iteration's torsions,
    /// frames and atoms are computed and returned, as AlphaFold's raw outputs hold them;
    /// without it only the last iteration's, which is all a prediction needs (final atoms,
    /// recycling, confidences) and spares seven of eight side-chain placements.
    pub fn keep_sidechain_trajectory(&mut self, keep: bool) {
        self.sidechain_trajectory = keep;
    }

    /// Runs `num_layer` fold iterations from identity frames, then converts the final atoms to
    /// atom37, for each design of a batch. Everything but the attention works residue by
    /// residue, on the `B * N` residues of the batch at once.
    ///
    /// # Shapes
    /// - single: `[B, N, single_channels]`
    /// - pair: `[B, N, N, pair_channels]`
    /// - seq_mask: `[B, N]`
    /// - aatype: `[B, N]`
    pub fn forward(
        &self,
        single: Tensor<3>,
        pair: Tensor<4>,
        seq_mask: Tensor<2>,
        aatype: Tensor<2, Int>,
    ) -> BatchStructureOutput {
        let [b, n, _] = single.dims();
        let device = single.device();
        let aatype = aatype.reshape([b * n]);
        let initial_act = self.single_layer_norm.forward(single);
        let mut act = self.initial_projection.forward(initial_act.clone());
        let act_2d = self.pair_layer_norm.forward(pair);
        let pair_terms = self
            .fold_iteration
            .invariant_point_attention
            .pair_terms(act_2d.clone(), seq_mask);
        let mut affine = QuatAffine::identity(b * n, &device);

        let mut affines = Vec::with_capacity(self.num_layer);
        let mut angles = Vec::with_capacity(self.num_layer);
        let mut unnormalized = Vec::with_capacity(self.num_layer);
        let mut frames = Vec::with_capacity(self.num_layer);
        let mut atoms = Vec::with_capacity(self.num_layer);
        for layer in 0..self.num_layer {
            let place_sidechains = self.sidechain_trajectory || layer + 1 == self.num_layer;
            let (new_act, new_affine, scaled) = self.fold_iteration.forward(
                act,
                &affine,
                act_2d.clone(),
                &pair_terms,
                self.position_scale,
            );
            if place_sidechains {
                let sc = self.fold_iteration.sidechains(
                    &scaled,
                    new_act.clone(),
                    initial_act.clone(),
                    aatype.clone(),
                );
                angles.push(sc.angles_sin_cos.reshape([b, n, 7, 2]));
                unnormalized.push(sc.unnormalized_angles_sin_cos.reshape([b, n, 7, 2]));
                frames.push(sc.frames.to_flat12().reshape([b, n, 8, 12]));
                atoms.push(sc.atom_pos.reshape([b, n, 14, 3]));
            }
            act = new_act;
            affine = new_affine;
            affines.push(scaled.to_tensor().reshape([b, n, 7]));
        }

        let final_atom14 = atoms
            .last()
            .cloned()
            .unwrap_or_else(|| Tensor::zeros([b, n, 14, 3], &device));
        let (final_atom37, final_atom37_mask) =
            atom14_to_atom37(final_atom14.clone().reshape([b * n, 14, 3]), aatype);
        BatchStructureOutput {
            affines: Tensor::stack(affines, 1),
            angles_sin_cos: Tensor::stack(angles, 1),
            unnormalized_angles_sin_cos: Tensor::stack(unnormalized, 1),
            sidechain_frames: Tensor::stack(frames, 1),
            atom14: Tensor::stack(atoms, 1),
            final_atom14,
            final_atom37: final_atom37.reshape([b, n, 37, 3]),
            final_atom37_mask: final_atom37_mask.reshape([b, n, 37]),
            act,
        }
    }
}

impl FoldIteration {
    /// One iteration on a batch of designs, without the side chains. `affine` holds the
    /// `B * N` frames (design-major) in internal units (nanometres); returns the new
    /// activations, the updated frames in internal units, and the same frames scaled to Å.
    ///
    /// # Shapes
    /// - act: `[B, N, channels]`
    /// - act_2d: `[B, N, N, pair_channels]`; `pair_terms` from it and the sequence mask
    pub fn forward(
        &self,
        act: Tensor<3>,
        affine: &QuatAffine,
        act_2d: Tensor<4>,
        pair_terms: &PairTerms,
        position_scale: f32,
    ) -> (Tensor<3>, QuatAffine, QuatAffine) {
        let [b, n, _] = act.dims();
        let attn = self.invariant_point_attention.forward_with_terms(
            act.clone(),
            act_2d,
            pair_terms,
            affine,
        );
        let act = self.attention_layer_norm.forward(act + attn);

        let hidden = relu(self.transition.forward(act.clone()));
        let hidden = relu(self.transition_1.forward(hidden));
        let act = self
            .transition_layer_norm
            .forward(act + self.transition_2.forward(hidden));

        let affine =
            affine.pre_compose(self.affine_update.forward(act.clone()).reshape([b * n, 6]));
        let scaled = affine.scale_translation(position_scale);
        (act, affine, scaled)
    }

    /// Torsions and atoms of the `B * N` residues from an iteration's activations and its
    /// frames in Å (Algorithm 20 lines 11-14).
    ///
    /// # Shapes
    /// - act: `[B, N, channels]`, initial_act: `[B, N, single_channels]`, aatype: `[B * N]`
    pub fn sidechains(
        &self,
        scaled: &QuatAffine,
        act: Tensor<3>,
        initial_act: Tensor<3>,
        aatype: Tensor<1, Int>,
    ) -> SidechainOutput {
        let [b, n, c] = act.dims();
        let c_s = initial_act.dims()[2];
        self.rigid_sidechain.forward(
            scaled,
            act.reshape([b * n, c]),
            initial_act.reshape([b * n, c_s]),
            aatype,
        )
    }
}

#[cfg(test)]
mod tests;
