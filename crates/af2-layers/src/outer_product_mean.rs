//! Outer product mean, the MSA-to-pair communication (Algorithm 10).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::derived::Derived;
use crate::linear::matmul_bias;
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
    /// `output_w` in the shapes the two orders multiply with (see [`OutputWeights`]).
    #[module(skip)]
    output_weights: Derived<OutputWeights>,
}

/// The parameters in the shapes the two orders of the sum multiply with.
#[derive(Clone, Debug)]
struct OutputWeights {
    /// `output_w[c, e, f]` as `[c * e, f]`: outer products first.
    outer: Tensor<2>,
    /// The left and right projections side by side, `[c_m, 2 * outer]` and `[2 * outer]`:
    /// the contracted order takes both in one product.
    joint_weight: Tensor<2>,
    joint_bias: Tensor<1>,
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
            output_weights: Derived::default(),
        }
    }
}

/// Residues `i` per chunk, so that the `[B, i, N, outer^2]` intermediate stays bounded; also the
/// largest `[B, S, N, outer, c_z]` intermediate of the contracted form.
const MAX_OUTER_ELEMENTS: usize = 1 << 26;

impl OuterProductMean {
    /// Returns the update to the pair representation of each member of a batch. The mean
    /// divides by `1e-3 + n` where `n` counts the MSA rows valid at both residues, as AlphaFold
    /// does.
    ///
    /// Of the two orders of the same sum it takes the one with fewer multiplications: for a
    /// shallow MSA (fewer than about 40 rows, as in single-sequence binder screening), the
    /// right projection is contracted with the output weights first
    /// ([`OuterProductMean::forward_contracted`]), else the outer products are formed first as
    /// AlphaFold does ([`OuterProductMean::forward_outer`]).
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c_m]`, msa_mask: `[B, S, N]`
    /// - output: `[B, N, N, c_z]`
    pub fn forward(&self, msa: Tensor<4>, msa_mask: Tensor<3>) -> Tensor<4> {
        let counts = Self::pair_counts(msa_mask.clone());
        self.sum_orders(msa, msa_mask, counts, None)
    }

    /// `pair + forward(msa, msa_mask)`, with the divisor [`OuterProductMean::pair_counts`] of
    /// this `msa_mask` given (a stack whose blocks share one MSA mask computes it once). For one
    /// design in the contracted order the last product, its bias, the division and the add run
    /// as one pass of the linear kernel where it takes them (f16 on a GPU with matrix
    /// instructions).
    ///
    /// # Shapes
    /// - msa: `[B, S, N, c_m]`, msa_mask: `[B, S, N]`, counts: `[B, N, N, 1]`
    /// - pair, output: `[B, N, N, c_z]`
    pub fn forward_residual_with_counts(
        &self,
        msa: Tensor<4>,
        msa_mask: Tensor<3>,
        counts: Tensor<4>,
        pair: Tensor<4>,
    ) -> Tensor<4> {
        self.sum_orders(msa, msa_mask, counts, Some(pair))
    }

    /// The cheaper order of the sum (see [`OuterProductMean::forward`]), plus `pair` where given.
    fn sum_orders(
        &self,
        msa: Tensor<4>,
        msa_mask: Tensor<3>,
        counts: Tensor<4>,
        pair: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let [b, s, n, _] = msa.dims();
        let [o, _, c_z] = self.output_w.dims();
        // Multiplications per pair (i, j): contracted S*o*c_z; outer products first o*o*(S + c_z).
        let contracted_is_cheaper = s * o * c_z < o * o * (s + c_z);
        if contracted_is_cheaper && b * s * n * o * c_z <= MAX_OUTER_ELEMENTS {
            return self.contracted(msa, msa_mask, counts, pair);
        }
        plus(pair, self.outer(msa, msa_mask, counts, MAX_OUTER_ELEMENTS))
    }

    /// AlphaFold's order: the `[i, j, outer, outer]` outer products, then their projection to
    /// `c_z`, with at most `max_elements` elements of the `[B, i, N, outer^2]` intermediate at a
    /// time (at least one residue `i` per chunk).
    pub fn forward_outer(
        &self,
        msa: Tensor<4>,
        msa_mask: Tensor<3>,
        max_elements: usize,
    ) -> Tensor<4> {
        let counts = Self::pair_counts(msa_mask.clone());
        self.outer(msa, msa_mask, counts, max_elements)
    }

    fn outer(
        &self,
        msa: Tensor<4>,
        msa_mask: Tensor<3>,
        counts: Tensor<4>,
        max_elements: usize,
    ) -> Tensor<4> {
        let [b, s, n, _] = msa.dims();
        let (left, right) = self.projections(msa, msa_mask);
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
        Tensor::cat(chunks, 1) / counts
    }

    /// The same sum in the other order: `t[s,c,j,f] = sum_e right[s,j,e] w[c,e,f]` first (one
    /// product per row `s` and left channel `c`, written in the order the next product reads),
    /// then `sum_{s,c} left[s,i,c] t[s,c,j,f]` as one matmul. `S*o*c_z` multiplications per pair
    /// instead of `o*o*(S + c_z)`, and no `[N, N, o*o]` intermediate. The per-pair counts are
    /// recorded before the products, so that the bias and the division follow the last matmul
    /// directly (Burn's fusion takes them, and a caller's residual add, in one pass).
    pub fn forward_contracted(&self, msa: Tensor<4>, msa_mask: Tensor<3>) -> Tensor<4> {
        let counts = Self::pair_counts(msa_mask.clone());
        self.contracted(msa, msa_mask, counts, None)
    }

    /// The contracted order, plus `pair` where given.
    fn contracted(
        &self,
        msa: Tensor<4>,
        msa_mask: Tensor<3>,
        counts: Tensor<4>,
        pair: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let [b, s, n, _] = msa.dims();
        let [o, _, c_z] = self.output_w.dims();
        let (left, right) = self.joint_projections(msa, msa_mask);
        // [B*S, 1, N_j, e] x [1, c, e, f] -> [B*S, c, N_j, f], read as [B, S*c, N_j*f]
        let t = right
            .reshape([b * s, 1, n, o])
            .matmul(self.output_w.val().unsqueeze::<4>())
            .reshape([b, s * o, n * c_z]);
        // left as [B, N_i, S*c]
        let left = left.permute([0, 2, 1, 3]).reshape([b, n, s * o]);
        #[cfg(feature = "cube")]
        if let (1, Some(pair)) = (b, &pair) {
            // One design: `left · t` is a linear layer of N_i rows with t as its weight; the
            // bias (repeated for every j), the division by the pair's count and the add of the
            // pair finish it in the kernel's output stage.
            let finish = crate::linear::Epilogue {
                divisor: Some((counts.clone().reshape([n, n]), c_z)),
                residual: Some(pair.clone().reshape([n, n * c_z])),
                ..Default::default()
            };
            let out = crate::linear_kernel::try_linear_kernel_with(
                &left.clone().reshape([n, s * o]),
                &t.clone().reshape([s * o, n * c_z]),
                Some(&self.output_b.val()),
                &finish,
            );
            if let Some(out) = out {
                return out.reshape([1, n, n, c_z]);
            }
        }
        let act = left.matmul(t).reshape([b, n, n, c_z]);
        plus(pair, (act + self.output_b.val().unsqueeze::<4>()) / counts)
    }

    /// The parameters reshaped for both orders, built once for these parameters.
    fn output_weights(&self) -> OutputWeights {
        let w = self.output_w.val();
        let (left, right) = (&self.left_projection, &self.right_projection);
        let params = [&self.output_w.id, &left.weight.id, &right.weight.id]
            .into_iter()
            .chain(left.bias.iter().map(|bias| &bias.id))
            .chain(right.bias.iter().map(|bias| &bias.id))
            .copied()
            .collect();
        self.output_weights
            .get_or_compute(params, w.dtype(), w.device(), || {
                let [o, _, c_z] = w.dims();
                let bias = |projection: &Linear| match &projection.bias {
                    Some(bias) => bias.val(),
                    None => Tensor::<1>::zeros([o], &w.device()).cast(w.dtype()),
                };
                OutputWeights {
                    outer: w.clone().reshape([o * o, c_z]),
                    joint_weight: Tensor::cat(vec![left.weight.val(), right.weight.val()], 1),
                    joint_bias: Tensor::cat(vec![bias(left), bias(right)], 0),
                }
            })
    }

    /// [`OuterProductMean::projections`] as one product with both projections' weights side
    /// by side: `[B, S, N, o]` each.
    fn joint_projections(&self, msa: Tensor<4>, msa_mask: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        let [b, s, n, c_m] = msa.dims();
        let o = self.output_w.dims()[0];
        let weights = self.output_weights();
        let act = self.layer_norm_input.forward(msa).reshape([b * s * n, c_m]);
        let both = matmul_bias(act, weights.joint_weight, Some(weights.joint_bias)).reshape([
            b,
            s,
            n,
            2 * o,
        ]);
        let mask = msa_mask.unsqueeze_dim::<4>(3);
        let left = both.clone().narrow(3, 0, o) * mask.clone();
        let right = both.narrow(3, o, o) * mask;
        (left, right)
    }

    /// Masked left and right projections of the normalised MSA, `[B, S, N, o]` each.
    fn projections(&self, msa: Tensor<4>, msa_mask: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        let mask = msa_mask.unsqueeze_dim::<4>(3);
        let act = self.layer_norm_input.forward(msa);
        let left = mask.clone() * self.left_projection.forward(act.clone());
        let right = mask * self.right_projection.forward(act);
        (left, right)
    }

    /// The mean's divisor: `1e-3 +` the number of rows valid at both residues.
    ///
    /// # Shapes
    /// - msa_mask: `[B, S, N]`
    /// - output: `[B, N, N, 1]`
    pub fn pair_counts(msa_mask: Tensor<3>) -> Tensor<4> {
        let norm = msa_mask
            .clone()
            .swap_dims(1, 2)
            .matmul(msa_mask)
            .unsqueeze_dim::<4>(3);
        norm + 1e-3
    }

    /// [`OuterProductMean::pair_counts`] with 1 added where `pair_mask` is 0 (a pair holding a
    /// masked residue, such as the padding of `af2_model::padding`).
    ///
    /// Such a residue's MSA rows are all masked, so AlphaFold's divisor there is 1e-3 and every
    /// block adds the output bias times 1000 to its pairs: in f16 that can overflow, and an
    /// infinity in a masked pair reaches the real pairs through `0 * inf` (the triangle
    /// multiplication's masked edges, an attention's zero weight on its value). Pairs of
    /// unmasked residues keep AlphaFold's divisor exactly; masked pairs never reach them.
    ///
    /// # Shapes
    /// - msa_mask: `[B, S, N]`, pair_mask: `[B, N, N]`
    /// - output: `[B, N, N, 1]`
    pub fn pair_counts_masked(msa_mask: Tensor<3>, pair_mask: Tensor<3>) -> Tensor<4> {
        Self::pair_counts(msa_mask) + (pair_mask.neg() + 1.0).unsqueeze_dim::<4>(3)
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
        matmul_bias(
            outer,
            self.output_weights().outer,
            Some(self.output_b.val()),
        )
        .reshape([b, rows, n, c_z])
    }
}

/// `pair + update` where a pair is given, else the update.
fn plus(pair: Option<Tensor<4>>, update: Tensor<4>) -> Tensor<4> {
    match pair {
        Some(pair) => pair + update,
        None => update,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn random_opm(device: &Device) -> OuterProductMean {
        let normal = |shape: [usize; 2]| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 1.0),
                device,
            ))
        };
        let mut opm = OuterProductMeanConfig::new(5, 3, 4).init(device);
        opm.output_w = Param::from_tensor(Tensor::random(
            [3, 3, 4],
            Distribution::Normal(0.0, 1.0),
            device,
        ));
        opm.output_b = Param::from_tensor(normal([1, 4]).val().reshape([4]));
        opm.left_projection.weight = normal([5, 3]);
        opm.right_projection.weight = normal([5, 3]);
        opm.left_projection.bias = Some(Param::from_tensor(normal([1, 3]).val().reshape([3])));
        opm.right_projection.bias = Some(Param::from_tensor(normal([1, 3]).val().reshape([3])));
        opm
    }

    /// Masked pairs divide by at least 1 (no bias times 1000 to overflow f16); the others keep
    /// AlphaFold's divisor to the bit.
    #[test]
    fn masked_pairs_divide_by_at_least_one() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        // Two rows; residue 2 is padding (masked in every row), residue 1 masked in row 1.
        let msa_mask = Tensor::<3>::from_data(
            burn::tensor::TensorData::new(vec![1.0f32, 1.0, 0.0, 1.0, 0.0, 0.0], [1, 2, 3]),
            &device,
        );
        let seq_mask = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(vec![1.0f32, 1.0, 0.0], [1, 3]),
            &device,
        );
        let pair_mask = seq_mask.clone().unsqueeze_dim::<3>(2) * seq_mask.unsqueeze_dim::<3>(1);
        let plain: Vec<f32> = OuterProductMean::pair_counts(msa_mask.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let masked: Vec<f32> = OuterProductMean::pair_counts_masked(msa_mask, pair_mask)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (k, (p, m)) in plain.iter().zip(&masked).enumerate() {
            let (i, j) = (k / 3, k % 3);
            if i == 2 || j == 2 {
                assert_eq!(*p, 1e-3, "pair {i},{j}: AlphaFold's divisor");
                assert_eq!(*m, 1.0 + 1e-3, "pair {i},{j}");
            } else {
                assert_eq!(p.to_bits(), m.to_bits(), "pair {i},{j}");
            }
        }
        assert_eq!(plain[0], 2.0 + 1e-3);
        assert_eq!(plain[4], 1.0 + 1e-3);
    }

    #[test]
    fn chunked_outer_product_mean_equals_unchunked() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let opm = random_opm(&device);
        let msa = Tensor::<4>::random([2, 4, 7, 5], Distribution::Normal(0.0, 1.0), &device);
        let mask = Tensor::<3>::ones([2, 4, 7], &device);
        let whole = opm.forward_outer(msa.clone(), mask.clone(), usize::MAX);
        let chunked = opm.forward_outer(msa, mask, 1);
        let diff: f32 = (whole - chunked).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn contracted_order_equals_outer_products_first() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let opm = random_opm(&device);
        let msa = Tensor::<4>::random([2, 3, 7, 5], Distribution::Normal(0.0, 1.0), &device);
        // Some rows masked at some residues, so the per-pair counts differ.
        let mask = Tensor::<3>::random([2, 3, 7], Distribution::Uniform(0.0, 1.0), &device)
            .greater_elem(0.3)
            .float();
        let outer = opm.forward_outer(msa.clone(), mask.clone(), usize::MAX);
        let contracted = opm.forward_contracted(msa, mask);
        let peak: f32 = outer.clone().abs().max().into_scalar();
        let diff: f32 = (outer - contracted).abs().max().into_scalar();
        // Same products summed in another order: f32 rounding only (~1e-7 relative per term).
        assert!(
            diff <= 1e-5 * peak.max(1.0),
            "differs by {diff} (peak {peak})"
        );
        assert!(peak > 0.1, "the test must produce a non-trivial update");
    }
}
