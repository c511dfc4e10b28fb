//! Template torsion-angle features embedded as extra MSA rows (Algorithm 2, line 7).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use af2_layers::{Linear, linear};

/// Features per template residue: aatype one-hot (22), torsion sin/cos (14), alternative
/// sin/cos (14) and torsion masks (7).
pub const TEMPLATE_SINGLE_FEATURES: usize = 22 + 14 + 14 + 7;

/// Configuration of [`TemplateTorsionEmbedding`].
#[derive(Config, Debug)]
pub struct TemplateTorsionEmbeddingConfig {
    /// MSA channels.
    pub msa_channels: usize,
}

/// Two-layer MLP from template torsion features to MSA rows.
#[derive(Module, Debug)]
pub struct TemplateTorsionEmbedding {
    /// First layer (followed by ReLU).
    pub template_single_embedding: Linear,
    /// Second layer.
    pub template_projection: Linear,
}

impl TemplateTorsionEmbeddingConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> TemplateTorsionEmbedding {
        TemplateTorsionEmbedding {
            template_single_embedding: linear(TEMPLATE_SINGLE_FEATURES, self.msa_channels, device),
            template_projection: linear(self.msa_channels, self.msa_channels, device),
        }
    }
}

impl TemplateTorsionEmbedding {
    /// # Shapes
    /// - features: `[B, T, N, 57]` -> `[B, T, N, c_m]`
    pub fn forward(&self, features: Tensor<4>) -> Tensor<4> {
        let act = relu(self.template_single_embedding.forward(features));
        self.template_projection.forward(act)
    }
}
