//! Global (mean-query) gated attention, AlphaFold's `GlobalAttention` (Algorithm 19, lines 2-7).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use crate::attention::project_heads;
use crate::linear::matmul_bias;
use crate::{sigmoid, softmax_mask};

/// Configuration of a [`GlobalAttention`].
#[derive(Config, Debug)]
pub struct GlobalAttentionConfig {
    /// Input channels.
    pub channels: usize,
    /// Number of heads.
    pub num_heads: usize,
    /// Channels per head of queries and (shared) keys.
    pub key_dim: usize,
    /// Channels per head of values.
    pub value_dim: usize,
    /// Output channels.
    pub output_dim: usize,
}

/// Global attention: one averaged query per batch row, keys and values shared by all heads.
#[derive(Module, Debug)]
pub struct GlobalAttention {
    /// `[c, heads, key_dim]`
    pub query_w: Param<Tensor<3>>,
    /// `[c, key_dim]`
    pub key_w: Param<Tensor<2>>,
    /// `[c, value_dim]`
    pub value_w: Param<Tensor<2>>,
    /// `[c, heads, value_dim]`
    pub gating_w: Param<Tensor<3>>,
    /// `[heads, value_dim]`
    pub gating_b: Param<Tensor<2>>,
    /// `[heads, value_dim, output_dim]`
    pub output_w: Param<Tensor<3>>,
    /// `[output_dim]`
    pub output_b: Param<Tensor<1>>,
}

impl GlobalAttentionConfig {
    /// Zero-initialised parameters of the configured shapes.
    pub fn init(&self, device: &Device) -> GlobalAttention {
        let (c, h, k, v) = (self.channels, self.num_heads, self.key_dim, self.value_dim);
        GlobalAttention {
            query_w: Param::from_tensor(Tensor::zeros([c, h, k], device)),
            key_w: Param::from_tensor(Tensor::zeros([c, k], device)),
            value_w: Param::from_tensor(Tensor::zeros([c, v], device)),
            gating_w: Param::from_tensor(Tensor::zeros([c, h, v], device)),
            gating_b: Param::from_tensor(Tensor::ones([h, v], device)),
            output_w: Param::from_tensor(Tensor::zeros([h, v, self.output_dim], device)),
            output_b: Param::from_tensor(Tensor::zeros([self.output_dim], device)),
        }
    }
}

impl GlobalAttention {
    /// # Shapes
    /// - x: `[B, N, c]` (queries and memories are the same tensor)
    /// - mask: `[B, N]`, 1 for valid positions
    /// - output: `[B, N, output_dim]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<2>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let [_, h, key_dim] = self.query_w.dims();
        let value_dim = self.value_w.dims()[1];
        let mask3 = mask.clone().reshape([b, n, 1]);

        // utils.mask_mean over the sequence axis. AlphaFold adds 1e-10 to the count, which
        // leaves a count of 1 or more unchanged in f32 and makes an empty column 0 / 1e-10 = 0;
        // in f16 1e-10 is 0 and that column 0 / 0. A floor of 1e-4 gives the same values in f32
        // (counts of 0/1 masks are whole) and 0 for an empty column in f16 too (a padded one).
        let q_avg = (x.clone() * mask3.clone()).sum_dim(1).reshape([b, c])
            / mask3.sum_dim(1).reshape([b, 1]).clamp_min(1e-4);
        let q = q_avg
            .matmul(self.query_w.val().reshape([c, h * key_dim]))
            .reshape([b, h, key_dim])
            .mul_scalar((key_dim as f64).powf(-0.5));
        let flat = x.clone().reshape([b * n, c]);
        let k = flat
            .clone()
            .matmul(self.key_w.val())
            .reshape([b, n, key_dim]);
        let v = flat.matmul(self.value_w.val()).reshape([b, n, value_dim]);

        // [B, H, C] x [B, C, N] -> [B, H, N]
        let logits = q.matmul(k.swap_dims(1, 2));
        let masked = mask.reshape([b, 1, n]).equal_elem(0.0).expand([b, h, n]);
        let fill = softmax_mask(logits.dtype());
        let weights = softmax(logits.mask_fill(masked, fill), 2);
        // [B, H, N] x [B, N, C] -> [B, H, C]
        let weighted = weights.matmul(v).reshape([b, 1, h, value_dim]);

        let gate = sigmoid(project_heads(
            x,
            self.gating_w.val(),
            Some(self.gating_b.val()),
            None,
        ));
        let out_dim = self.output_b.dims()[0];
        matmul_bias(
            (gate * weighted).reshape([b * n, h * value_dim]),
            self.output_w.val().reshape([h * value_dim, out_dim]),
            Some(self.output_b.val()),
        )
        .reshape([b, n, out_dim])
    }
}
