//! The Evoformer stack (Algorithm 6) and its single-representation projection.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use af2_layers::{
    Linear, MsaColumnAttention, MsaColumnAttentionConfig, MsaRowAttentionWithPairBias,
    MsaRowAttentionWithPairBiasConfig, OuterProductMean, OuterProductMeanConfig, Transition,
    TransitionConfig, TriangleAttention, TriangleAttentionConfig, TriangleDirection,
    TriangleMultiplication, TriangleMultiplicationConfig, linear,
};

/// Widths and head counts of one Evoformer-style block.
#[derive(Config, Debug)]
pub struct EvoformerBlockConfig {
    /// MSA channels.
    pub msa_channels: usize,
    /// Pair channels.
    pub pair_channels: usize,
    /// Heads of the row attention.
    pub msa_row_heads: usize,
    /// Channels per head of the row attention.
    pub msa_row_head_dim: usize,
    /// Heads of the column attention.
    pub msa_col_heads: usize,
    /// Channels per head of the column attention.
    pub msa_col_head_dim: usize,
    /// Hidden channels of the MSA transition.
    pub msa_transition_hidden: usize,
    /// Channels of the outer product mean projections.
    pub opm_channels: usize,
    /// Channels of the triangle multiplication projections.
    pub tri_mul_channels: usize,
    /// Heads of the triangle attention.
    pub tri_att_heads: usize,
    /// Channels per head of the triangle attention.
    pub tri_att_head_dim: usize,
    /// Hidden channels of the pair transition.
    pub pair_transition_hidden: usize,
}

/// The pair layers of a block, borrowed: triangle updates, triangle attention and the pair
/// transition (Algorithm 6 lines 6-10; the template pair stack, Algorithm 16, uses the same
/// layers in another order).
pub struct PairLayers<'a> {
    /// Algorithm 11.
    pub outgoing: &'a TriangleMultiplication,
    /// Algorithm 12.
    pub incoming: &'a TriangleMultiplication,
    /// Algorithm 13.
    pub starting_node: &'a TriangleAttention,
    /// Algorithm 14.
    pub ending_node: &'a TriangleAttention,
    /// Algorithm 15.
    pub transition: &'a Transition,
}

/// Widths of the pair layers of a block.
#[derive(Config, Debug)]
pub struct PairLayersConfig {
    /// Pair channels.
    pub pair_channels: usize,
    /// Channels of the triangle multiplication projections.
    pub tri_mul_channels: usize,
    /// Heads of the triangle attention.
    pub tri_att_heads: usize,
    /// Channels per head of the triangle attention.
    pub tri_att_head_dim: usize,
    /// Hidden channels of the pair transition.
    pub transition_hidden: usize,
}

/// Freshly built pair layers, to move into a block's fields.
pub struct PairLayerSet {
    /// Algorithm 11.
    pub outgoing: TriangleMultiplication,
    /// Algorithm 12.
    pub incoming: TriangleMultiplication,
    /// Algorithm 13.
    pub starting_node: TriangleAttention,
    /// Algorithm 14.
    pub ending_node: TriangleAttention,
    /// Algorithm 15.
    pub transition: Transition,
}

/// Borrows the pair layers of a block whose fields carry AlphaFold's names.
macro_rules! pair_layers_of {
    ($block:expr) => {
        $crate::evoformer::PairLayers {
            outgoing: &$block.triangle_multiplication_outgoing,
            incoming: &$block.triangle_multiplication_incoming,
            starting_node: &$block.triangle_attention_starting_node,
            ending_node: &$block.triangle_attention_ending_node,
            transition: &$block.pair_transition,
        }
    };
}
pub(crate) use pair_layers_of;

/// The MSA half of an Evoformer or extra-MSA block (Algorithm 6 lines 2-5): row attention with
/// pair bias, a column attention (`column`), the MSA transition, then the outer product mean
/// into the pair, which divides by `counts` ([`OuterProductMean::pair_counts`] of `msa_mask`).
/// Returns `(msa, pair)`.
pub(crate) fn msa_half(
    row: &MsaRowAttentionWithPairBias,
    column: impl FnOnce(Tensor<4>, Tensor<3>) -> Tensor<4>,
    transition: &Transition,
    outer_product_mean: &OuterProductMean,
    (msa, msa_mask, counts): (Tensor<4>, Tensor<3>, Tensor<4>),
    pair: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let msa = row.forward_residual(msa, msa_mask.clone(), pair.clone());
    let msa = msa.clone() + column(msa, msa_mask.clone());
    let msa = transition.forward_residual(msa);
    let pair = outer_product_mean.forward_residual_with_counts(msa.clone(), msa_mask, counts, pair);
    (msa, pair)
}

impl PairLayersConfig {
    /// All five pair layers, zero-initialised.
    pub fn init(&self, device: &Device) -> PairLayerSet {
        PairLayerSet {
            outgoing: self.triangle_multiplication(TriangleDirection::Outgoing, device),
            incoming: self.triangle_multiplication(TriangleDirection::Incoming, device),
            starting_node: self.triangle_attention(false, device),
            ending_node: self.triangle_attention(true, device),
            transition: self.transition(device),
        }
    }

    /// A zero-initialised triangle multiplication.
    pub fn triangle_multiplication(
        &self,
        direction: TriangleDirection,
        device: &Device,
    ) -> TriangleMultiplication {
        TriangleMultiplicationConfig::new(self.pair_channels, self.tri_mul_channels, direction)
            .init(device)
    }

    /// A zero-initialised triangle attention.
    pub fn triangle_attention(&self, ending_node: bool, device: &Device) -> TriangleAttention {
        TriangleAttentionConfig::new(
            self.pair_channels,
            self.tri_att_heads,
            self.tri_att_head_dim,
            ending_node,
        )
        .init(device)
    }

    /// A zero-initialised pair transition.
    pub fn transition(&self, device: &Device) -> Transition {
        TransitionConfig::new(self.pair_channels, self.transition_hidden).init(device)
    }
}

impl PairLayers<'_> {
    /// Evoformer order: multiplications, then attentions, then transition.
    ///
    /// # Shapes
    /// - pair: `[B, N, N, c_z]`, mask: `[B, N, N]` -> `[B, N, N, c_z]`
    pub fn forward_evoformer_order(&self, pair: Tensor<4>, mask: Tensor<3>) -> Tensor<4> {
        let pair = self.outgoing.forward_residual(pair, mask.clone());
        let pair = self.incoming.forward_residual(pair, mask.clone());
        let pair = self.starting_node.forward_residual(pair, mask.clone());
        let pair = self.ending_node.forward_residual(pair, mask);
        self.transition.forward_residual(pair)
    }

    /// Template pair stack order (Algorithm 16): attentions first, then multiplications.
    ///
    /// # Shapes
    /// - pair: `[B, N, N, c_t]`, mask: `[B, N, N]` -> `[B, N, N, c_t]`
    pub fn forward_template_order(&self, pair: Tensor<4>, mask: Tensor<3>) -> Tensor<4> {
        let pair = self.starting_node.forward_residual(pair, mask.clone());
        let pair = self.ending_node.forward_residual(pair, mask.clone());
        let pair = self.outgoing.forward_residual(pair, mask.clone());
        let pair = self.incoming.forward_residual(pair, mask);
        self.transition.forward_residual(pair)
    }
}

/// One Evoformer block (Algorithm 6 lines 2-10).
#[derive(Module, Debug)]
pub struct EvoformerBlock {
    /// Algorithm 7.
    pub msa_row_attention_with_pair_bias: MsaRowAttentionWithPairBias,
    /// Algorithm 8.
    pub msa_column_attention: MsaColumnAttention,
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

impl EvoformerBlockConfig {
    /// Zero-initialised Evoformer block.
    pub fn init(&self, device: &Device) -> EvoformerBlock {
        let p = self.pair_layers().init(device);
        EvoformerBlock {
            msa_row_attention_with_pair_bias: self.row_attention().init(device),
            msa_column_attention: MsaColumnAttentionConfig::new(
                self.msa_channels,
                self.msa_col_heads,
                self.msa_col_head_dim,
            )
            .init(device),
            msa_transition: self.msa_transition().init(device),
            outer_product_mean: self.outer_product_mean().init(device),
            triangle_multiplication_outgoing: p.outgoing,
            triangle_multiplication_incoming: p.incoming,
            triangle_attention_starting_node: p.starting_node,
            triangle_attention_ending_node: p.ending_node,
            pair_transition: p.transition,
        }
    }

    /// Row attention configuration (shared with the extra-MSA block).
    pub fn row_attention(&self) -> MsaRowAttentionWithPairBiasConfig {
        MsaRowAttentionWithPairBiasConfig::new(
            self.msa_channels,
            self.pair_channels,
            self.msa_row_heads,
            self.msa_row_head_dim,
        )
    }

    /// MSA transition configuration.
    pub fn msa_transition(&self) -> TransitionConfig {
        TransitionConfig::new(self.msa_channels, self.msa_transition_hidden)
    }

    /// Outer product mean configuration.
    pub fn outer_product_mean(&self) -> OuterProductMeanConfig {
        OuterProductMeanConfig::new(self.msa_channels, self.opm_channels, self.pair_channels)
    }

    /// Widths of the pair layers.
    pub fn pair_layers(&self) -> PairLayersConfig {
        PairLayersConfig::new(
            self.pair_channels,
            self.tri_mul_channels,
            self.tri_att_heads,
            self.tri_att_head_dim,
            self.pair_transition_hidden,
        )
    }
}

/// A block of an MSA half and a pair half (an Evoformer or extra-MSA block), with the outer
/// product mean's divisor of the MSA mask ([`OuterProductMean::pair_counts`]) given, so that a
/// stack computes it once rather than once a block.
pub trait MsaPairBlock {
    /// The block on `(msa, msa_mask, counts)`, counts the divisor of `msa_mask`.
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c]`, msa_mask: `[B, S, N]`, counts: `[B, N, N, 1]`
    /// - pair: `[B, N, N, c_z]`, pair_mask: `[B, N, N]`
    /// - returns `(msa, pair)` of the same shapes
    fn forward_with_counts(
        &self,
        msa: (Tensor<4>, Tensor<3>, Tensor<4>),
        pair: Tensor<4>,
        pair_mask: Tensor<3>,
    ) -> (Tensor<4>, Tensor<4>);

    /// [`MsaPairBlock::forward_with_counts`] with the divisor computed from `msa_mask`.
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c]`, msa_mask: `[B, S, N]`
    /// - pair: `[B, N, N, c_z]`, pair_mask: `[B, N, N]`
    /// - returns `(msa, pair)` of the same shapes
    fn forward(
        &self,
        msa: Tensor<4>,
        msa_mask: Tensor<3>,
        pair: Tensor<4>,
        pair_mask: Tensor<3>,
    ) -> (Tensor<4>, Tensor<4>) {
        let counts = OuterProductMean::pair_counts_masked(msa_mask.clone(), pair_mask.clone());
        self.forward_with_counts((msa, msa_mask, counts), pair, pair_mask)
    }
}

impl MsaPairBlock for EvoformerBlock {
    fn forward_with_counts(
        &self,
        msa: (Tensor<4>, Tensor<3>, Tensor<4>),
        pair: Tensor<4>,
        pair_mask: Tensor<3>,
    ) -> (Tensor<4>, Tensor<4>) {
        let (msa, pair) = msa_half(
            &self.msa_row_attention_with_pair_bias,
            |m, mask| self.msa_column_attention.forward(m, mask),
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

/// The 48-block (configurable) Evoformer stack and the single projection.
#[derive(Module, Debug)]
pub struct EvoformerStack {
    /// The blocks.
    pub blocks: Vec<EvoformerBlock>,
    /// Projection of the first MSA row to the single representation.
    pub single_activations: Linear,
}

/// Configuration of [`EvoformerStack`].
#[derive(Config, Debug)]
pub struct EvoformerStackConfig {
    /// Block widths.
    pub block: EvoformerBlockConfig,
    /// Number of blocks.
    pub num_blocks: usize,
    /// Single representation channels.
    pub seq_channels: usize,
}

impl EvoformerStackConfig {
    /// Zero-initialised stack.
    pub fn init(&self, device: &Device) -> EvoformerStack {
        EvoformerStack {
            blocks: (0..self.num_blocks)
                .map(|_| self.block.init(device))
                .collect(),
            single_activations: linear(self.block.msa_channels, self.seq_channels, device),
        }
    }
}

impl EvoformerStack {
    /// Runs every block, then projects the first MSA row to the single representation.
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c_m]`, msa_mask: `[B, S, N]`, pair: `[B, N, N, c_z]`,
    ///   pair_mask: `[B, N, N]`
    /// - returns `(msa [B, S, N, c_m], pair [B, N, N, c_z], single [B, N, c_s])`
    pub fn forward(
        &self,
        mut msa: Tensor<4>,
        msa_mask: Tensor<3>,
        mut pair: Tensor<4>,
        pair_mask: Tensor<3>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<3>) {
        let counts = OuterProductMean::pair_counts_masked(msa_mask.clone(), pair_mask.clone());
        for block in &self.blocks {
            let masked_msa = (msa, msa_mask.clone(), counts.clone());
            (msa, pair) = block.forward_with_counts(masked_msa, pair, pair_mask.clone());
        }
        let [b, _, n, c] = msa.dims();
        let first_row = msa.clone().narrow(1, 0, 1).reshape([b, n, c]);
        let single = self.single_activations.forward(first_row);
        (msa, pair, single)
    }
}
