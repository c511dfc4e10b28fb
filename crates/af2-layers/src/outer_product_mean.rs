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

/// Residues `i` per chunk, so that the `[i, N, outer^2]` intermediate stays bounded.
const MAX_OUTER_ELEMENTS: usize = 1 << 26;

impl OuterProductMean {
    /// Returns the update to the pair representation. The mean divides by `1e-3 + n` where
    /// `n` counts the MSA rows valid at both residues, as AlphaFold does.
    ///
    /// # Shapes
    /// - msa: `[S, N, c_m]`, msa_mask: `[S, N]`
    /// - output: `[N, N, c_z]`
    pub fn forward(&self, msa: Tensor<3>, msa_mask: Tensor<2>) -> Tensor<3> {
        self.forward_chunked(msa, msa_mask, MAX_OUTER_ELEMENTS)
    }

    /// [`OuterProductMean::forward`] with at most `max_elements` elements of the
    /// `[i, N, outer^2]` intermediate at a time (at least one residue `i` per chunk).
    pub fn forward_chunked(
        &self,
        msa: Tensor<3>,
        msa_mask: Tensor<2>,
        max_elements: usize,
    ) -> Tensor<3> {
        let [s, n, _] = msa.dims();
        let mask = msa_mask.clone().unsqueeze_dim::<3>(2);
        let act = self.layer_norm_input.forward(msa);
        let left = mask.clone() * self.left_projection.forward(act.clone());
        let right = mask * self.right_projection.forward(act);
        let o = left.dims()[2];
        // right as [S, N*o]
        let right = right.reshape([s, n * o]);
        let rows = (max_elements / (n * o * o).max(1)).clamp(1, n);
        let chunks: Vec<Tensor<3>> = (0..n)
            .step_by(rows)
            .map(|start| {
                let len = rows.min(n - start);
                let left = left.clone().narrow(1, start, len).reshape([s, len * o]);
                self.project_outer(left, right.clone(), len, n, o)
            })
            .collect();
        let act = Tensor::cat(chunks, 0);
        let norm = msa_mask
            .clone()
            .swap_dims(0, 1)
            .matmul(msa_mask)
            .unsqueeze_dim::<3>(2);
        act / (norm + 1e-3)
    }

    /// `sum_s left[s,i,c] right[s,j,e]` contracted with `output_w[c,e,f]`, plus `output_b`.
    fn project_outer(
        &self,
        left: Tensor<2>,
        right: Tensor<2>,
        rows: usize,
        n: usize,
        o: usize,
    ) -> Tensor<3> {
        let c_z = self.output_b.dims()[0];
        // [i*c, S] x [S, j*e] -> [i, c, j, e] -> [i, j, c, e]
        let outer = left
            .swap_dims(0, 1)
            .matmul(right)
            .reshape([rows, o, n, o])
            .swap_dims(1, 2)
            .reshape([rows * n, o * o]);
        outer
            .matmul(self.output_w.val().reshape([o * o, c_z]))
            .reshape([rows, n, c_z])
            + self.output_b.val().unsqueeze::<3>()
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
        let msa = Tensor::<3>::random([4, 7, 5], Distribution::Normal(0.0, 1.0), &device);
        let mask = Tensor::<2>::ones([4, 7], &device);
        let whole = opm.forward(msa.clone(), mask.clone());
        let chunked = opm.forward_chunked(msa, mask, 1);
        let diff: f32 = (whole - chunked).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }
}
