//! Torsion angles and all-atom coordinates from the single activations (Jumper et al. 2021,
//! Suppl. Alg. 20 lines 11–14 and Alg. 24; AlphaFold's `folding.MultiRigidSidechain`).

use af2_geometry::{QuatAffine, Rigid};
use af2_layers::{Linear, linear};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};

use crate::all_atom::{frames_and_literature_positions_to_atom14_pos, torsion_angles_to_frames};

/// Floor of the squared norm when normalising the (sin, cos) pairs (`l2_normalize` epsilon).
pub const ANGLE_NORM_EPSILON: f32 = 1e-12;

/// Configuration of a [`MultiRigidSidechain`].
#[derive(Config, Debug)]
pub struct MultiRigidSidechainConfig {
    /// Channels of the structure-module activations (`num_channel`, 384).
    pub channels: usize,
    /// Channels of the initial single activations (c_s, 384).
    pub single_channels: usize,
    /// Hidden channels of the angle resnet (`sidechain.num_channel`, 128).
    pub sidechain_channels: usize,
}

/// The torsion-angle resnet (Algorithm 20 lines 11–14; two residual blocks, AlphaFold's
/// `num_residual_block = 2`) and the placement of frames and atoms (Algorithm 24). Parameter
/// names follow AlphaFold: haiku
/// numbers repeated module names, so the second residual block is `resblock1_1`/`resblock2_1`.
#[derive(Module, Debug)]
pub struct MultiRigidSidechain {
    /// Projection of the current activations: `[channels, sidechain_channels]`.
    pub input_projection: Linear,
    /// Projection of the initial activations: `[single_channels, sidechain_channels]`.
    pub input_projection_1: Linear,
    /// First residual block, first layer.
    pub resblock1: Linear,
    /// First residual block, second layer.
    pub resblock2: Linear,
    /// Second residual block, first layer.
    pub resblock1_1: Linear,
    /// Second residual block, second layer.
    pub resblock2_1: Linear,
    /// Output: 7 torsions × (sin, cos): `[sidechain_channels, 14]`.
    pub unnormalized_angles: Linear,
}

/// Output of one [`MultiRigidSidechain`] call.
#[derive(Debug, Clone)]
pub struct SidechainOutput {
    /// Unit (sin, cos) of omega, phi, psi, chi1..chi4. Shape `[N, 7, 2]`.
    pub angles_sin_cos: Tensor<3>,
    /// The same before normalisation. Shape `[N, 7, 2]`.
    pub unnormalized_angles_sin_cos: Tensor<3>,
    /// The 8 rigid-group frames of every residue, in Å. `[N * 8]` frames, residue-major.
    pub frames: Rigid,
    /// Atom14 positions in Å. Shape `[N, 14, 3]`.
    pub atom_pos: Tensor<3>,
}

impl MultiRigidSidechainConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> MultiRigidSidechain {
        let sc = self.sidechain_channels;
        MultiRigidSidechain {
            input_projection: linear(self.channels, sc, device),
            input_projection_1: linear(self.single_channels, sc, device),
            resblock1: linear(sc, sc, device),
            resblock2: linear(sc, sc, device),
            resblock1_1: linear(sc, sc, device),
            resblock2_1: linear(sc, sc, device),
            unnormalized_angles: linear(sc, 14, device),
        }
    }
}

impl MultiRigidSidechain {
    /// Torsion angles (unnormalised, normalised) from the activations.
    ///
    /// # Shapes
    /// - act: `[N, channels]`
    /// - initial_act: `[N, single_channels]`
    /// - output: `([N, 7, 2], [N, 7, 2])` as (unnormalised, normalised)
    pub fn angles(&self, act: Tensor<2>, initial_act: Tensor<2>) -> (Tensor<3>, Tensor<3>) {
        let [n, _] = act.dims();
        let mut a = self.input_projection.forward(relu(act))
            + self.input_projection_1.forward(relu(initial_act));
        for (first, second) in [
            (&self.resblock1, &self.resblock2),
            (&self.resblock1_1, &self.resblock2_1),
        ] {
            let update = second.forward(relu(first.forward(relu(a.clone()))));
            a = a + update;
        }
        let unnormalized = self.unnormalized_angles.forward(relu(a)).reshape([n, 7, 2]);
        let norm = unnormalized
            .clone()
            .square()
            .sum_dim(2)
            .clamp_min(ANGLE_NORM_EPSILON)
            .sqrt();
        let normalized = unnormalized.clone() / norm;
        (unnormalized, normalized)
    }

    /// Angles, frames and atom positions (AlphaFold's `MultiRigidSidechain.__call__`).
    ///
    /// # Shapes
    /// - affine: `N` backbone frames with translations in Å (already scaled by
    ///   `position_scale`)
    /// - act: `[N, channels]`
    /// - initial_act: `[N, single_channels]`
    /// - aatype: `[N]`
    pub fn forward(
        &self,
        affine: &QuatAffine,
        act: Tensor<2>,
        initial_act: Tensor<2>,
        aatype: Tensor<1, Int>,
    ) -> SidechainOutput {
        let (unnormalized, angles) = self.angles(act, initial_act);
        let backbone = affine.to_rigid();
        let frames = torsion_angles_to_frames(aatype.clone(), &backbone, angles.clone());
        let atom_pos = frames_and_literature_positions_to_atom14_pos(aatype, &frames);
        SidechainOutput {
            angles_sin_cos: angles,
            unnormalized_angles_sin_cos: unnormalized,
            frames,
            atom_pos,
        }
    }
}
