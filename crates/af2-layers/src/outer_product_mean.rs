//! Outer product mean, the MSA-to-pair communication (Algorithm 10).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::{LayerNorm, LayerNormConfig, Linear, linear};

/// Configuration of [`OuterProductMean`].
#[derive(Config, Debug)]
pub struct OuterProductMeanConfig {
    /// MSA channels.
    pub msa_channels: usize,
    /// Channels of the left/right projections.
    pub outer_channels: usize,
    /// Pair channels (output).
    pub pair_channels: usize,
}

/// Outer product mean over the MSA rows.
#[derive(Module, Debug)]
pub struct OuterProductMean {
    /// LayerNorm of the MSA.
    pub layer_norm_input: LayerNorm,
    /// Left projection.
    pub left_projection: Linear,
    /// Right projection.
    pub right_projection: Linear,
    /// `[outer, outer, c_z]`
    pub output_w: Param<Tensor<3>>,
    /// `[c_z]`
    pub output_b: Param<Tensor<1>>,
}

impl OuterProductMeanConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> OuterProductMean {
        let (c, o) = (self.msa_channels, self.outer_channels);
        OuterProductMean {
            layer_norm_input: LayerNormConfig::new(c).init(device),
            left_projection: linear(c, o, device),
            right_projection: linear(c, o, device),
            output_w: Param::from_tensor(Tensor::zeros([o, o, self.pair_channels], device)),
            output_b: Param::from_tensor(Tensor::zeros([self.pair_channels], device)),
        }
    }
}

/// Residues `i` per chunk, so that the `[B, i, N, outer^2]` intermediate stays bounded.
const MAX_OUTER_ELEMENTS: usize = 1 << 26;

impl OuterProductMean {
    /// Returns the update to the pair representation of each member of a batch. The mean
    /// divides by `1e-3 + n` where `n` counts the MSA rows valid at both residues, as AlphaFold
    /// does.
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c_m]`, msa_mask: `[B, S, N]`
    /// - output: `[B, N, N, c_z]`
    pub fn forward(&self, msa: Tensor<4>, msa_mask: Tensor<3>) -> Tensor<4> {
        self.forward_chunked(msa, msa_mask, MAX_OUTER_ELEMENTS)
    }

    /// [`OuterProductMean::forward`] with at most `max_elements` elements of the
    /// `[B, i, N, outer^2]` intermediate at a time (at least one residue `i` per chunk).
    pub fn forward_chunked(
        &self,
        msa: Tensor<4>,
        msa_mask: Tensor<3>,
        max_elements: usize,
    ) -> Tensor<4> {
        let [b, s, n, _] = msa.dims();
        let mask = msa_mask.clone().unsqueeze_dim::<4>(3);
        let act = self.layer_norm_input.forward(msa);
        let left = mask.clone() * self.left_projection.forward(act.clone());
        let right = mask * self.right_projection.forward(act);
        let o = left.dims()[3];
        // right as [B, S, N*o]
        let right = right.reshape([b, s, n * o]);
        let rows = (max_elements / (b * n * o * o).max(1)).clamp(1, n);
        let chunks: Vec<Tensor<4>> = (0..n)
            .step_by(rows)
            .map(|start| {
                let len = rows.min(n - start);
                let left = left.clone().narrow(2, start, len).reshape([b, s, len * o]);
                self.project_outer(left, right.clone(), len, n, o)
            })
            .collect();
        let act = Tensor::cat(chunks, 1);
        let norm = msa_mask
            .clone()
            .swap_dims(1, 2)
            .matmul(msa_mask)
            .unsqueeze_dim::<4>(3);
        act / (norm + 1e-3)
    }

    /// `sum_s left[b,s,i,c] right[b,s,j,e]` contracted with `output_w[c,e,f]`, plus `output_b`.
    fn project_outer(
        &self,
        left: Tensor<3>,
        right: Tensor<3>,
        rows: usize,
        n: usize,
        o: usize,
    ) -> Tensor<4> {
        let b = left.dims()[0];
        let c_z = self.output_b.dims()[0];
        // [B, i*c, S] x [B, S, j*e] -> [B, i, c, j, e] -> [B, i, j, c, e]
        let outer = left
            .swap_dims(1, 2)
            .matmul(right)
            .reshape([b, rows, o, n, o])
            .swap_dims(2, 3)
            .reshape([b * rows * n, o * o]);
        outer
            .matmul(self.output_w.val().reshape([o * o, c_z]))
            .reshape([b, rows, n, c_z])
            + self.output_b.val().unsqueeze::<4>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn chunked_outer_product_mean_equals_unchunked() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let mut opm = OuterProductMeanConfig::new(5, 3, 4).init(&device);
        opm.output_w = Param::from_tensor(Tensor::random(
            [3, 3, 4],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        opm.left_projection.weight = Param::from_tensor(Tensor::random(
            [5, 3],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        opm.right_projection.weight = Param::from_tensor(Tensor::random(
            [5, 3],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        let msa = Tensor::<4>::random([2, 4, 7, 5], Distribution::Normal(0.0, 1.0), &device);
        let mask = Tensor::<3>::ones([2, 4, 7], &device);
        let whole = opm.forward(msa.clone(), mask.clone());
        let chunked = opm.forward_chunked(msa, mask, 1);
        let diff: f32 = (whole - chunked).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }
}
