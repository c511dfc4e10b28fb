//! Template embedding: the template pair stack (Algorithm 16) and template pointwise attention
//! (Algorithm 17), AlphaFold's `TemplateEmbedding` / `SingleTemplateEmbedding`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use af2_layers::{
    GatedAttention, GatedAttentionConfig, LayerNorm, LayerNormConfig, Linear, Transition,
    TriangleAttention, TriangleMultiplication, linear,
};

use crate::evoformer::{PairLayersConfig, pair_layers_of};
use crate::recycling_embedder::dgram_from_positions;

/// Template distogram bins.
pub const TEMPLATE_BINS: usize = 39;
/// Left edge of the first template bin (Å).
pub const TEMPLATE_MIN_BIN: f32 = 3.25;
/// Left edge of the last template bin (Å).
pub const TEMPLATE_MAX_BIN: f32 = 50.75;
/// Channels of the template pair features: distogram, mask, two aatype one-hots, unit vector
/// (zeros: AlphaFold 2.3's monomer config has `use_template_unit_vector = False`), mask.
pub const TEMPLATE_PAIR_FEATURES: usize = TEMPLATE_BINS + 1 + 22 + 22 + 3 + 1;

/// Widths of the template embedding.
#[derive(Config, Debug)]
pub struct TemplateEmbeddingConfig {
    /// Query pair channels (c_z).
    pub pair_channels: usize,
    /// Template pair channels (c_t).
    pub template_channels: usize,
    /// Template pair stack blocks.
    pub num_blocks: usize,
    /// Pair layers of the template pair stack.
    pub pair_layers: PairLayersConfig,
    /// Heads of the pointwise attention.
    pub pointwise_heads: usize,
    /// Key channels per head of the pointwise attention.
    pub pointwise_key_dim: usize,
    /// Value channels per head of the pointwise attention.
    pub pointwise_value_dim: usize,
}

/// One block of the template pair stack.
#[derive(Module, Debug)]
pub struct TemplatePairBlock {
    /// Algorithm 13.
    pub triangle_attention_starting_node: TriangleAttention,
    /// Algorithm 14.
    pub triangle_attention_ending_node: TriangleAttention,
    /// Algorithm 11.
    pub triangle_multiplication_outgoing: TriangleMultiplication,
    /// Algorithm 12.
    pub triangle_multiplication_incoming: TriangleMultiplication,
    /// Algorithm 15.
    pub pair_transition: Transition,
}

/// The template pair stack (Algorithm 16).
#[derive(Module, Debug)]
pub struct TemplatePairStack {
    /// The blocks.
    pub blocks: Vec<TemplatePairBlock>,
}

/// Template embedding: per-template pair stack, then attention from the query pair.
#[derive(Module, Debug)]
pub struct TemplateEmbedding {
    /// Template pair features to c_t.
    pub embedding2d: Linear,
    /// Algorithm 16.
    pub template_pair_stack: TemplatePairStack,
    /// LayerNorm of the stack output.
    pub output_layer_norm: LayerNorm,
    /// Algorithm 17 (no gating).
    pub attention: GatedAttention,
}

impl TemplateEmbeddingConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> TemplateEmbedding {
        let p = &self.pair_layers;
        let block = || {
            let layers = p.init(device);
            TemplatePairBlock {
                triangle_attention_starting_node: layers.starting_node,
                triangle_attention_ending_node: layers.ending_node,
                triangle_multiplication_outgoing: layers.outgoing,
                triangle_multiplication_incoming: layers.incoming,
                pair_transition: layers.transition,
            }
        };
        TemplateEmbedding {
            embedding2d: linear(TEMPLATE_PAIR_FEATURES, self.template_channels, device),
            template_pair_stack: TemplatePairStack {
                blocks: (0..self.num_blocks).map(|_| block()).collect(),
            },
            output_layer_norm: LayerNormConfig::new(self.template_channels).init(device),
            attention: GatedAttentionConfig::new(
                self.pair_channels,
                self.template_channels,
                self.pointwise_heads,
                self.pointwise_key_dim,
                self.pointwise_value_dim,
                self.pair_channels,
            )
            .with_gating(false)
            .init(device),
        }
    }
}

/// The features of one template slot, for each design of a batch.
#[derive(Clone, Debug)]
pub struct TemplateInputs {
    /// `[B, N, 22]` one-hot of the template aatype.
    pub aatype_one_hot: Tensor<3>,
    /// `[B, N, 3]`
    pub pseudo_beta: Tensor<3>,
    /// `[B, N]`
    pub pseudo_beta_mask: Tensor<2>,
    /// `[B, N]` product of the N, CA and C atom masks.
    pub backbone_mask: Tensor<2>,
}

/// `mask_i * mask_j`: `[B, N]` -> `[B, N, N]`.
fn outer(mask: Tensor<2>) -> Tensor<3> {
    mask.clone().unsqueeze_dim::<3>(2) * mask.unsqueeze_dim::<3>(1)
}

/// The 88 pair features of one template (AlphaFold's `SingleTemplateEmbedding`), masked by
/// the backbone mask.
///
/// # Shapes
/// - output: `[B, N, N, 88]`
pub fn template_pair_features(t: &TemplateInputs) -> Tensor<4> {
    let [b, n, c] = t.aatype_one_hot.dims();
    let device = t.pseudo_beta.device();
    let dgram = dgram_from_positions(
        t.pseudo_beta.clone(),
        TEMPLATE_BINS,
        TEMPLATE_MIN_BIN,
        TEMPLATE_MAX_BIN,
    );
    let pb_mask = outer(t.pseudo_beta_mask.clone()).unsqueeze_dim::<4>(3);
    let aatype_j = t
        .aatype_one_hot
        .clone()
        .unsqueeze_dim::<4>(1)
        .expand([b, n, n, c]);
    let aatype_i = t
        .aatype_one_hot
        .clone()
        .unsqueeze_dim::<4>(2)
        .expand([b, n, n, c]);
    let unit_vector = Tensor::<4>::zeros([b, n, n, 3], &device);
    let bb_mask = outer(t.backbone_mask.clone()).unsqueeze_dim::<4>(3);
    let act = Tensor::cat(
        vec![
            dgram,
            pb_mask,
            aatype_j,
            aatype_i,
            unit_vector,
            bb_mask.clone(),
        ],
        3,
    );
    act * bb_mask
}

impl TemplateEmbedding {
    /// Embeds one template slot of each design into `[B, N, N, c_t]`.
    pub fn embed_single(&self, template: &TemplateInputs, pair_mask: Tensor<3>) -> Tensor<4> {
        self.embed_single_masked(template, pair_mask, None)
    }

    /// [`TemplateEmbedding::embed_single`], with the 88 template pair features multiplied by
    /// `template_pair_mask` `[B, N, N]` when given: ColabDesign's `rm_template_ic` passes the
    /// same-chain mask (`asym_i == asym_j`), which zeroes every inter-chain template feature, as
    /// its `SingleTemplateEmbedding` does through `multichain_mask_2d`.
    pub fn embed_single_masked(
        &self,
        template: &TemplateInputs,
        pair_mask: Tensor<3>,
        template_pair_mask: Option<&Tensor<3>>,
    ) -> Tensor<4> {
        let mut features = template_pair_features(template);
        if let Some(mask) = template_pair_mask {
            features = features * mask.clone().unsqueeze_dim::<4>(3);
        }
        let mut act = self.embedding2d.forward(features);
        for block in &self.template_pair_stack.blocks {
            act = pair_layers_of!(block).forward_template_order(act, pair_mask.clone());
        }
        self.output_layer_norm.forward(act)
    }

    /// Returns the template update to the pair representation of each design of a batch.
    /// Template slots are embedded one at a time, each for the whole batch.
    ///
    /// # Shapes
    /// - pair: `[B, N, N, c_z]`, pair_mask: `[B, N, N]`
    /// - templates: `T` slots, each for all `B` designs
    /// - template_mask: `[B, T]`
    /// - output: `[B, N, N, c_z]`
    pub fn forward(
        &self,
        pair: Tensor<4>,
        pair_mask: Tensor<3>,
        templates: &[TemplateInputs],
        template_mask: Tensor<2>,
    ) -> Tensor<4> {
        self.forward_masked(pair, pair_mask, templates, template_mask, None)
    }

    /// [`TemplateEmbedding::forward`] with an optional `[B, N, N]` mask on the template pair
    /// features (see [`TemplateEmbedding::embed_single_masked`]).
    pub fn forward_masked(
        &self,
        pair: Tensor<4>,
        pair_mask: Tensor<3>,
        templates: &[TemplateInputs],
        template_mask: Tensor<2>,
        template_pair_mask: Option<&Tensor<3>>,
    ) -> Tensor<4> {
        let memory = self.embed_templates(pair_mask, templates, template_pair_mask);
        self.attend(pair, memory, template_mask)
    }

    /// Every template slot through the template pair stack, stacked as the pointwise
    /// attention's memory. It depends on the templates and masks only, not on the pair.
    ///
    /// # Shapes
    /// - pair_mask: `[B, N, N]`; templates: `T` slots, each for all `B` designs
    /// - output: `[B * N * N, T, c_t]`
    pub fn embed_templates(
        &self,
        pair_mask: Tensor<3>,
        templates: &[TemplateInputs],
        template_pair_mask: Option<&Tensor<3>>,
    ) -> Tensor<3> {
        let [b, n, _] = pair_mask.dims();
        let t = templates.len();
        let embedded: Vec<Tensor<4>> = templates
            .iter()
            .map(|tpl| self.embed_single_masked(tpl, pair_mask.clone(), template_pair_mask))
            .collect();
        let c_t = embedded[0].dims()[3];
        // T x [B, N, N, c_t] -> [B*N*N, T, c_t]
        Tensor::stack::<5>(embedded, 3).reshape([b * n * n, t, c_t])
    }

    /// The template update to the pair: each pair position attends over its embedded
    /// templates (Algorithm 17); zero for a design without any template. With one template slot
    /// the attention is that template's projected value
    /// ([`af2_layers::GatedAttention::forward_single_key`]).
    ///
    /// # Shapes
    /// - pair: `[B, N, N, c_z]`; memory: `[B * N * N, T, c_t]` ([`TemplateEmbedding::embed_templates`])
    /// - template_mask: `[B, T]`
    /// - output: `[B, N, N, c_z]`
    pub fn attend(
        &self,
        pair: Tensor<4>,
        memory: Tensor<3>,
        template_mask: Tensor<2>,
    ) -> Tensor<4> {
        let [b, n, _, c_z] = pair.dims();
        let t = memory.dims()[1];
        let query = pair.reshape([b * n * n, 1, c_z]);
        let any_template = template_mask
            .clone()
            .sum_dim(1)
            .greater_elem(0.0)
            .float()
            .reshape([b, 1, 1, 1]);
        if t == 1 {
            // One template (a binder's target): its softmax weight is exactly 1, so no logits.
            let embedding = self
                .attention
                .forward_single_key(query, memory)
                .reshape([b, n, n, c_z]);
            return embedding * any_template;
        }
        // One key mask per query row: each design's template mask over its N * N pairs.
        let key_mask = if b == 1 {
            template_mask
        } else {
            template_mask
                .reshape([b, 1, t])
                .expand([b, n * n, t])
                .reshape([b * n * n, t])
        };
        let embedding = self
            .attention
            .forward(query, memory, key_mask, None)
            .reshape([b, n, n, c_z]);
        embedding * any_template
    }
}
