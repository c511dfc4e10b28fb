//! Input embedding (Algorithm 3) with relative position encoding (Algorithm 4).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use af2_layers::{Linear, linear};

/// Channels of `target_feat`: 20 amino acids, unknown, and the "has break" flag.
pub const TARGET_FEAT: usize = 22;
/// Channels of `msa_feat`.
pub const MSA_FEAT: usize = 49;
/// Relative positions are clipped to `[-32, 32]`.
pub const MAX_RELATIVE_FEATURE: i64 = 32;
/// Classes of the relative position one-hot.
pub const RELPOS_CLASSES: usize = 2 * MAX_RELATIVE_FEATURE as usize + 1;

/// Configuration of [`InputEmbedder`].
#[derive(Config, Debug)]
pub struct InputEmbedderConfig {
    /// MSA channels.
    pub msa_channels: usize,
    /// Pair channels.
    pub pair_channels: usize,
}

/// Embeds the target and MSA features into the initial MSA and pair representations.
#[derive(Module, Debug)]
pub struct InputEmbedder {
    /// `target_feat` to MSA channels.
    pub preprocess_1d: Linear,
    /// `msa_feat` to MSA channels.
    pub preprocess_msa: Linear,
    /// `target_feat` to pair channels, rows.
    pub left_single: Linear,
    /// `target_feat` to pair channels, columns.
    pub right_single: Linear,
    /// Relative position one-hot to pair channels (AlphaFold's name, typo included).
    pub pair_activiations: Linear,
}

impl InputEmbedderConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> InputEmbedder {
        let (m, z) = (self.msa_channels, self.pair_channels);
        InputEmbedder {
            preprocess_1d: linear(TARGET_FEAT, m, device),
            preprocess_msa: linear(MSA_FEAT, m, device),
            left_single: linear(TARGET_FEAT, z, device),
            right_single: linear(TARGET_FEAT, z, device),
            pair_activiations: linear(RELPOS_CLASSES, z, device),
        }
    }
}

/// The relative-position class `clip(r_i - r_j + 32, 0, 64)` of every residue pair `[N * N]`,
/// computed on the host (integer arithmetic).
pub fn relative_position_classes(residue_index: &[i64]) -> Vec<i64> {
    residue_index
        .iter()
        .flat_map(|ri| {
            residue_index
                .iter()
                .map(move |rj| (ri - rj + MAX_RELATIVE_FEATURE).clamp(0, 2 * MAX_RELATIVE_FEATURE))
        })
        .collect()
}

/// One-hot `[N * N * 65]` of [`relative_position_classes`].
pub fn relative_position_one_hot(residue_index: &[i64]) -> Vec<f32> {
    let classes = relative_position_classes(residue_index);
    let mut out = vec![0.0f32; classes.len() * RELPOS_CLASSES];
    for (k, &class) in classes.iter().enumerate() {
        out[k * RELPOS_CLASSES + class as usize] = 1.0;
    }
    out
}

impl InputEmbedder {
    /// Embeds a batch of designs.
    ///
    /// The relative positions come as class indices: the one-hot times `pair_activiations` is
    /// exactly the row of the weight that the class selects, so the `[B, N, N, 65]` one-hot is
    /// never built.
    ///
    /// # Shapes
    /// - target_feat: `[B, N, 22]`, msa_feat: `[B, S, N, 49]`
    /// - relpos_classes: `[B, N, N]` in `0..65` (see [`relative_position_classes`])
    /// - returns `(msa [B, S, N, c_m], pair [B, N, N, c_z])`
    pub fn forward(
        &self,
        target_feat: Tensor<3>,
        msa_feat: Tensor<4>,
        relpos_classes: Tensor<3, Int>,
    ) -> (Tensor<4>, Tensor<4>) {
        let msa = self.preprocess_msa.forward(msa_feat)
            + self
                .preprocess_1d
                .forward(target_feat.clone())
                .unsqueeze_dim::<4>(1);
        let left = self
            .left_single
            .forward(target_feat.clone())
            .unsqueeze_dim::<4>(2);
        let right = self.right_single.forward(target_feat).unsqueeze_dim::<4>(1);
        let [b, n, _] = relpos_classes.dims();
        let relpos = &self.pair_activiations;
        let c_z = relpos.weight.dims()[1];
        let mut relpos_act = relpos
            .weight
            .val()
            .select(0, relpos_classes.reshape([b * n * n]))
            .reshape([b, n, n, c_z]);
        if let Some(bias) = &relpos.bias {
            relpos_act = relpos_act + bias.val().unsqueeze::<4>();
        }
        let pair = left + right + relpos_act;
        (msa, pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_positions_clip_at_32() {
        let one_hot = relative_position_one_hot(&[0, 1, 100]);
        let class = |i: usize, j: usize| {
            let start = (i * 3 + j) * RELPOS_CLASSES;
            one_hot[start..start + RELPOS_CLASSES]
                .iter()
                .position(|&v| v == 1.0)
                .unwrap()
        };
        assert_eq!(class(0, 0), 32);
        assert_eq!(class(1, 0), 33);
        assert_eq!(class(0, 1), 31);
        assert_eq!(class(2, 0), 64);
        assert_eq!(class(0, 2), 0);
    }
}
