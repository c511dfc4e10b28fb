//! Triangular multiplicative update using outgoing edges (Algorithm 11) and incoming edges
//! (Algorithm 12), in the unfused monomer parameter layout.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use crate::{LayerNorm, LayerNormConfig, Linear, linear};

/// Which edges the update multiplies.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum TriangleDirection {
    /// `z_ij += sum_k a_ik * b_jk` (Algorithm 11).
    Outgoing,
    /// `z_ij += sum_k a_ki * b_kj` (Algorithm 12).
    Incoming,
}

/// Configuration of [`TriangleMultiplication`].
#[derive(Config, Debug)]
pub struct TriangleMultiplicationConfig {
    /// Pair channels.
    pub pair_channels: usize,
    /// Channels of the left/right projections.
    pub intermediate_channels: usize,
    /// Outgoing or incoming.
    pub direction: TriangleDirection,
}

/// Triangle multiplicative update.
#[derive(Module, Debug)]
pub struct TriangleMultiplication {
    /// LayerNorm of the input pair.
    pub layer_norm_input: LayerNorm,
    /// Left projection.
    pub left_projection: Linear,
    /// Right projection.
    pub right_projection: Linear,
    /// Left gate.
    pub left_gate: Linear,
    /// Right gate.
    pub right_gate: Linear,
    /// LayerNorm of the product.
    pub center_layer_norm: LayerNorm,
    /// Output projection.
    pub output_projection: Linear,
    /// Output gate, from the normalised input.
    pub gating_linear: Linear,
    incoming: bool,
}

impl TriangleMultiplicationConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> TriangleMultiplication {
        let (c, m) = (self.pair_channels, self.intermediate_channels);
        TriangleMultiplication {
            layer_norm_input: LayerNormConfig::new(c).init(device),
            left_projection: linear(c, m, device),
            right_projection: linear(c, m, device),
            left_gate: linear(c, m, device),
            right_gate: linear(c, m, device),
            center_layer_norm: LayerNormConfig::new(m).init(device),
            output_projection: linear(m, c, device),
            gating_linear: linear(c, c, device),
            incoming: self.direction == TriangleDirection::Incoming,
        }
    }
}

impl TriangleMultiplication {
    /// Returns the update to the pair representation of each pair of a batch.
    ///
    /// # Shapes
    /// - pair: `[B, N, N, c_z]`, pair_mask: `[B, N, N]`
    /// - output: `[B, N, N, c_z]`
    pub fn forward(&self, pair: Tensor<4>, pair_mask: Tensor<3>) -> Tensor<4> {
        let [_, n, _, _] = pair.dims();
        let mask = pair_mask.unsqueeze_dim::<4>(3);
        let act = self.layer_norm_input.forward(pair);
        let left = mask.clone()
            * self.left_projection.forward(act.clone())
            * sigmoid(self.left_gate.forward(act.clone()));
        let right = mask
            * self.right_projection.forward(act.clone())
            * sigmoid(self.right_gate.forward(act.clone()));
        let [b, _, _, m] = left.dims();
        // Channel-major and contiguous, so that the triangle sum is one rank-3 batched matmul
        // over (pair, channel): the permuted rank-4 form was 5x slower on the H100 at L=512.
        let channel_major = |x: Tensor<4>| x.permute([0, 3, 1, 2]).reshape([b * m, n, n]);
        let (left, right) = (channel_major(left), channel_major(right));
        let product = if self.incoming {
            // 'kjc,kic->ijc': out[c,i,j] = sum_k right[c,k,i] * left[c,k,j]
            right.swap_dims(1, 2).matmul(left)
        } else {
            // 'ikc,jkc->ijc': out[c,i,j] = sum_k left[c,i,k] * right[c,j,k]
            left.matmul(right.swap_dims(1, 2))
        };
        let product = product.reshape([b, m, n, n]).permute([0, 2, 3, 1]);
        let update = self
            .output_projection
            .forward(self.center_layer_norm.forward(product));
        update * sigmoid(self.gating_linear.forward(act))
    }
}
