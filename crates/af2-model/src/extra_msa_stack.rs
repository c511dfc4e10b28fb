//! The extra-MSA stack (Algorithm 18), with global column attention (Algorithm 19).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use af2_layers::{
    Linear, MsaColumnGlobalAttention, MsaColumnGlobalAttentionConfig, MsaRowAttentionWithPairBias,
    OuterProductMean, Transition, TriangleAttention, TriangleMultiplication, linear,
};

use crate::evoformer::{EvoformerBlockConfig, MsaPairBlock, msa_half, pair_layers_of};

/// Number of extra-MSA input features: 23-way one-hot, has-deletion, deletion value.
pub const EXTRA_MSA_FEATURES: usize = 25;

/// One extra-MSA block: an Evoformer block with global column attention.
#[derive(Module, Debug)]
pub struct ExtraMsaBlock {
    /// Algorithm 7.
    pub msa_row_attention_with_pair_bias: MsaRowAttentionWithPairBias,
    /// Algorithm 19.
    pub msa_column_global_attention: MsaColumnGlobalAttention,
    /// Algorithm 9.
    pub msa_transition: Transition,
    /// Algorithm 10.
    pub outer_product_mean: OuterProductMean,
    /// Algorithm 11.
    pub triangle_multiplication_outgoing: TriangleMultiplication,
    /// Algorithm 12.
    pub triangle_multiplication_incoming: TriangleMultiplication,
    /// Algorithm 13.
    pub triangle_attention_starting_node: TriangleAttention,
    /// Algorithm 14.
    pub triangle_attention_ending_node: TriangleAttention,
    /// Algorithm 15.
    pub pair_transition: Transition,
}

/// Configuration of [`ExtraMsaStack`].
#[derive(Config, Debug)]
pub struct ExtraMsaStackConfig {
    /// Block widths (`msa_channels` is the extra-MSA width).
    pub block: EvoformerBlockConfig,
    /// Number of blocks.
    pub num_blocks: usize,
}

/// The extra-MSA embedding and its stack.
#[derive(Module, Debug)]
pub struct ExtraMsaStack {
    /// Embeds the 25 extra-MSA features.
    pub extra_msa_activations: Linear,
    /// The blocks.
    pub blocks: Vec<ExtraMsaBlock>,
}

impl ExtraMsaStackConfig {
    /// Zero-initialised stack.
    pub fn init(&self, device: &Device) -> ExtraMsaStack {
        ExtraMsaStack {
            extra_msa_activations: linear(EXTRA_MSA_FEATURES, self.block.msa_channels, device),
            blocks: (0..self.num_blocks)
                .map(|_| self.block_init(device))
                .collect(),
        }
    }

    fn block_init(&self, device: &Device) -> ExtraMsaBlock {
        let b = &self.block;
        let p = b.pair_layers().init(device);
        ExtraMsaBlock {
            msa_row_attention_with_pair_bias: b.row_attention().init(device),
            msa_column_global_attention: MsaColumnGlobalAttentionConfig::new(
                b.msa_channels,
                b.msa_col_heads,
                b.msa_col_head_dim,
            )
            .init(device),
            msa_transition: b.msa_transition().init(device),
            outer_product_mean: b.outer_product_mean().init(device),
            triangle_multiplication_outgoing: p.outgoing,
            triangle_multiplication_incoming: p.incoming,
            triangle_attention_starting_node: p.starting_node,
            triangle_attention_ending_node: p.ending_node,
            pair_transition: p.transition,
        }
    }
}

impl MsaPairBlock for ExtraMsaBlock {
    fn forward_with_counts(
        &self,
        msa: (Tensor<4>, Tensor<3>, Tensor<4>),
        pair: Tensor<4>,
        pair_mask: Tensor<3>,
    ) -> (Tensor<4>, Tensor<4>) {
        let (msa, pair) = msa_half(
            &self.msa_row_attention_with_pair_bias,
            |m, mask| self.msa_column_global_attention.forward(m, mask),
            &self.msa_transition,
            &self.outer_product_mean,
            msa,
            pair,
        );
        (
            msa,
            pair_layers_of!(self).forward_evoformer_order(pair, pair_mask),
        )
    }
}

impl ExtraMsaStack {
    /// Embeds the extra MSA and returns the updated pair representation of each design.
    ///
    /// # Shapes
    /// - extra_feat: `[B, Se, N, 25]`, extra_mask: `[B, Se, N]`
    /// - pair: `[B, N, N, c_z]`, pair_mask: `[B, N, N]` -> `[B, N, N, c_z]`
    pub fn forward(
        &self,
        extra_feat: Tensor<4>,
        extra_mask: Tensor<3>,
        mut pair: Tensor<4>,
        pair_mask: Tensor<3>,
    ) -> Tensor<4> {
        let mut msa = self.extra_msa_activations.forward(extra_feat);
        let counts = OuterProductMean::pair_counts_masked(extra_mask.clone(), pair_mask.clone());
        for block in &self.blocks {
            let masked_msa = (msa, extra_mask.clone(), counts.clone());
            (msa, pair) = block.forward_with_counts(masked_msa, pair, pair_mask.clone());
        }
        pair
    }
}
