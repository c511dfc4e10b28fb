//! Triangular multiplicative update using outgoing edges (Algorithm 11) and incoming edges
//! (Algorithm 12), in the unfused monomer parameter layout.

use burn::config::Config;
use burn::module::{Module, ParamId};
use burn::tensor::{Device, Tensor};

use crate::derived::Derived;
use crate::linear::{Epilogue, matmul_bias_with};
use crate::{LayerNorm, LayerNormConfig, Linear, linear, sigmoid};

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
    /// The four edge projections side by side (see [`EdgeProjections`]).
    #[module(skip)]
    edge_projections: Derived<EdgeProjections>,
    /// The same, projections and gates interleaved for the gated edges kernel.
    #[module(skip)]
    interleaved_edges: Derived<EdgeProjections>,
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
            edge_projections: Derived::default(),
            interleaved_edges: Derived::default(),
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
        self.apply(pair, pair_mask, false)
    }

    /// `pair + forward(pair)`: the residual update, the add done by the output projection's
    /// kernel where it runs (f16 on a GPU with matrix instructions).
    ///
    /// # Shapes
    /// - pair: `[B, N, N, c_z]`, pair_mask: `[B, N, N]`
    /// - output: `[B, N, N, c_z]`
    pub fn forward_residual(&self, pair: Tensor<4>, pair_mask: Tensor<3>) -> Tensor<4> {
        self.apply(pair, pair_mask, true)
    }

    fn apply(&self, pair: Tensor<4>, pair_mask: Tensor<3>, add_input: bool) -> Tensor<4> {
        let [b, n, _, c] = pair.dims();
        let rows = b * n * n;
        // Pairs as rows throughout: the LayerNorms and linear layers then record no reshapes.
        let pair = pair.reshape([rows, c]);
        let act = self.layer_norm_input.forward(pair.clone());
        // The triangle sum as one batched matmul over (channel, pair) with the summed index k
        // contiguous in both operands, the layout Burn's matmul is fastest with. Incoming edges
        // sum over the first index of a pair: where the tensor-core kernel sums over it in
        // place, their projections are taken from the pairs as they are; elsewhere from the
        // pairs in transposed order ((i, k) rows hold pair (k, i)): one row-permuting copy of
        // the normalised pairs (and of the mask), where transposing the two channel-major
        // projections took two element-transposing copies.
        let m = self.left_projection.weight.dims()[1];
        let sum_first_index = self.incoming && sums_first_index_in_place(&act, [b, n], m);
        let (edge_act, edge_mask) = if self.incoming && !sum_first_index {
            (
                transpose_pairs(act.clone(), [b, n]),
                pair_mask.swap_dims(1, 2),
            )
        } else {
            (act.clone(), pair_mask)
        };
        let [left, right] = self.gated_projections_channel_major(edge_act, edge_mask, [b, n]);
        // Outgoing 'ikc,jkc->ijc': out[c,i,j] = sum_k left[c,i,k] * right[c,j,k]. Incoming
        // 'kjc,kic->ijc': out[c,i,j] = sum_k right[c,k,i] * left[c,k,j], which from the
        // transposed pairs is sum_k right[c,i,k] * left[c,j,k].
        let (rows_of_out, columns_of_out) = if self.incoming {
            (right, left)
        } else {
            (left, right)
        };
        let product = if sum_first_index {
            first_index_sum(rows_of_out, columns_of_out)
        } else {
            triangle_sum(rows_of_out, columns_of_out)
        };
        let matrices = product.dims()[0];
        // Channel-major [m, rows] as the matmul leaves it; the centre norm writes rows.
        let normed = self
            .center_layer_norm
            .forward_channel_major(product.reshape([matrices / b, rows]));
        let finish = Epilogue {
            gate: Some(self.gating_linear.forward(act)),
            residual: add_input.then_some(pair),
            ..Epilogue::default()
        };
        matmul_bias_with(
            normed,
            self.output_projection.weight.val(),
            self.output_projection.bias.as_ref().map(|b| b.val()),
            finish,
        )
        .reshape([b, n, n, c])
    }

    /// `mask * projection(act) * sigmoid(gate(act))` for the left and right edges, the four
    /// projections as one matmul whose output is channel-major, so the triangle sum needs no
    /// transposing copy. On the f16 linear kernel the mask and gates are applied as it writes.
    ///
    /// # Shapes
    /// - act: `[B * N * N, c_z]`, pair_mask: `[B, N, N]`
    /// - output: two `[m * B, N, N]`, channel-major (`[m, B, N, N]` flattened)
    fn gated_projections_channel_major(
        &self,
        act: Tensor<2>,
        pair_mask: Tensor<3>,
        [b, n]: [usize; 2],
    ) -> [Tensor<3>; 2] {
        let rows = act.dims()[0];
        let m = self.left_projection.weight.dims()[1];
        #[cfg(feature = "cube")]
        if let Some(gated) = self.gated_edges_on_kernel(&act, &pair_mask) {
            let side = |i: usize| gated.clone().narrow(0, i * m, m).reshape([m * b, n, n]);
            return [side(0), side(1)];
        }
        let projected = channel_major_projection(act, self.edge_projections());
        let mask = pair_mask.reshape([1, rows]);
        let part = |i: usize| projected.clone().narrow(0, i * m, m);
        let left = mask.clone() * part(0) * sigmoid(part(2));
        let right = mask * part(1) * sigmoid(part(3));
        [left, right].map(|x| x.reshape([m * b, n, n]))
    }

    /// The gated edges `[2m, rows]` (left channels, then right) from the linear kernel's gated
    /// form, where it takes the inputs; nothing is prepared where it does not.
    #[cfg(feature = "cube")]
    fn gated_edges_on_kernel(&self, act: &Tensor<2>, pair_mask: &Tensor<3>) -> Option<Tensor<2>> {
        use crate::linear_kernel::{EDGE_BLOCK, gated_edges_supported, try_gated_edges_kernel};
        let m = self.left_projection.weight.dims()[1];
        let side_by_side = self.edge_projections();
        if !m.is_multiple_of(EDGE_BLOCK / 2) || !gated_edges_supported(act, &side_by_side.weight) {
            return None;
        }
        let rows = act.dims()[0];
        let mut mask = pair_mask.clone().reshape([rows]);
        if mask.dtype() != act.dtype() {
            mask = mask.cast(act.dtype());
        }
        let layer = self.interleaved_edge_projections(&side_by_side);
        try_gated_edges_kernel(act, &layer.weight, &layer.bias, &mask)
    }

    /// The edge projections for the gated edges kernel
    /// ([`crate::linear_kernel::try_gated_edges_kernel`]) from their side-by-side form, built
    /// once for these parameters.
    #[cfg(feature = "cube")]
    fn interleaved_edge_projections(&self, side_by_side: &EdgeProjections) -> EdgeProjections {
        let first = side_by_side.weight.clone();
        self.interleaved_edges.get_or_compute(
            self.edge_parameter_ids(),
            first.dtype(),
            first.device(),
            || side_by_side.interleaved(crate::linear_kernel::EDGE_BLOCK / 2),
        )
    }

    /// The left and right projections and gates side by side, built once for these parameters.
    fn edge_projections(&self) -> EdgeProjections {
        let layers = self.edge_layers();
        let first = self.left_projection.weight.val();
        self.edge_projections.get_or_compute(
            self.edge_parameter_ids(),
            first.dtype(),
            first.device(),
            || {
                let m = first.dims()[1];
                let device = first.device();
                let weight = Tensor::cat(layers.iter().map(|l| l.weight.val()).collect(), 1);
                let bias = Tensor::cat(
                    layers
                        .iter()
                        .map(|l| match &l.bias {
                            Some(bias) => bias.val(),
                            None => Tensor::<1>::zeros([m], &device).cast(first.dtype()),
                        })
                        .collect(),
                    0,
                );
                EdgeProjections { weight, bias }
            },
        )
    }

    /// Left projection, right projection, left gate, right gate.
    fn edge_layers(&self) -> [&Linear; 4] {
        [
            &self.left_projection,
            &self.right_projection,
            &self.left_gate,
            &self.right_gate,
        ]
    }

    /// The ids of the edge layers' parameters, the key of their kept forms.
    fn edge_parameter_ids(&self) -> Vec<ParamId> {
        self.edge_layers()
            .iter()
            .flat_map(|l| std::iter::once(l.weight.id).chain(l.bias.as_ref().map(|b| b.id)))
            .collect()
    }
}

/// The left and right projections and gates of a [`TriangleMultiplication`] as one layer.
#[derive(Clone, Debug)]
struct EdgeProjections {
    /// `[c_z, 4m]`: left, right, left gate, right gate.
    weight: Tensor<2>,
    /// `[4m]`, a missing bias as zeros.
    bias: Tensor<1>,
}

impl EdgeProjections {
    /// Per side (left, then right), per group of `group` channels, the projection's columns and
    /// then its gate's: the layout of the gated edges kernel, whose column blocks of
    /// `2 * group` are written as `group` gated channels.
    ///
    /// # Panics
    /// If `group` does not divide the channels of a side.
    #[cfg_attr(not(feature = "cube"), allow(dead_code))] // Used by the kernel path and tests.
    fn interleaved(&self, group: usize) -> EdgeProjections {
        let m = self.weight.dims()[1] / 4;
        assert!(
            m.is_multiple_of(group),
            "{m} edge channels are not groups of {group}"
        );
        // Column ranges of `[left, right, left gate, right gate]`, in kernel order.
        let starts: Vec<_> = (0..2)
            .flat_map(|side| {
                (0..m / group).flat_map(move |g| [side * m + g * group, (side + 2) * m + g * group])
            })
            .collect();
        let pick = |t: &Tensor<2>, axis: usize| {
            let parts = starts.iter().map(|&s| t.clone().narrow(axis, s, group));
            Tensor::cat(parts.collect(), axis)
        };
        EdgeProjections {
            weight: pick(&self.weight, 1),
            bias: pick(&self.bias.clone().unsqueeze::<2>(), 1).reshape([4 * m]),
        }
    }
}

/// `rows · columnsᵀ` for every channel matrix: the triangle sum, on the tensor-core kernel
/// where it takes the inputs (f16 on a GPU with matrix instructions), else Burn's matmul.
///
/// # Shapes
/// - rows: `[G, N, N]`, columns: `[G, N, N]`, the summed index last in both
/// - output: `[G, N, N]`
fn triangle_sum(rows: Tensor<3>, columns: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "cube")]
    if let Some(sum) = crate::batched_matmul_kernel::try_batched_matmul_nt(&rows, &columns) {
        return sum;
    }
    rows.matmul(columns.swap_dims(1, 2))
}

/// Whether the incoming sum `Σ_k rows[g, k, i] · columns[g, k, j]` runs on the tensor-core
/// kernel in place ([`crate::batched_matmul_kernel::try_batched_matmul_tn`]) for `m` channels
/// of pairs like `act` `[B * N * N, c]`: then neither the pairs nor the mask are transposed
/// first (a row-permuting copy of the pairs and one of the mask).
fn sums_first_index_in_place(act: &Tensor<2>, [b, n]: [usize; 2], m: usize) -> bool {
    #[cfg(feature = "cube")]
    {
        crate::batched_matmul_kernel::batched_matmul_tn_offered(
            act.dtype(),
            &act.device(),
            [m * b, n, n, n],
        )
    }
    #[cfg(not(feature = "cube"))]
    {
        let _ = (act, b, n, m);
        false
    }
}

/// `rowsᵀ · columns` for every channel matrix (the incoming sum over the first index) on the
/// tensor-core kernel; only called where [`sums_first_index_in_place`] said it runs.
///
/// # Shapes
/// - rows: `[G, N, N]`, columns: `[G, N, N]`, the summed index first in both
/// - output: `[G, N, N]`
fn first_index_sum(rows: Tensor<3>, columns: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "cube")]
    if let Some(sum) = crate::batched_matmul_kernel::try_batched_matmul_tn(&rows, &columns) {
        return sum;
    }
    rows.swap_dims(1, 2).matmul(columns)
}

/// Pair rows `[B * N * N, c]` in transposed order: row `(b, i, k)` of the result is row
/// `(b, k, i)` of `rows` (a copy that moves whole rows).
fn transpose_pairs(rows: Tensor<2>, [b, n]: [usize; 2]) -> Tensor<2> {
    let c = rows.dims()[1];
    rows.reshape([b, n, n, c])
        .swap_dims(1, 2)
        .reshape([b * n * n, c])
}

/// `(act · weight + bias)ᵀ` `[4m, rows]` for `act` `[rows, c]`: the tensor-core kernel where it
/// applies, else `weightᵀ · actᵀ` with both transposed operands read column-major in place.
fn channel_major_projection(act: Tensor<2>, layer: EdgeProjections) -> Tensor<2> {
    #[cfg(feature = "cube")]
    if let Some(projected) =
        crate::linear_kernel::try_linear_kernel_transposed(&act, &layer.weight, &layer.bias)
    {
        return projected;
    }
    layer.weight.transpose().matmul(act.transpose()) + layer.bias.unsqueeze_dim::<2>(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::{Distribution, TensorData};

    fn random_linear(d_input: usize, d_output: usize, device: &Device) -> Linear {
        let normal = |shape: [usize; 2]| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 1.0),
                device,
            ))
        };
        Linear {
            weight: normal([d_input, d_output]),
            bias: Some(Param::from_tensor(
                normal([1, d_output]).val().reshape([d_output]),
            )),
        }
    }

    fn random_module(direction: TriangleDirection, device: &Device) -> TriangleMultiplication {
        let (c, m) = (4, 3);
        let mut tri = TriangleMultiplicationConfig::new(c, m, direction).init(device);
        tri.left_projection = random_linear(c, m, device);
        tri.right_projection = random_linear(c, m, device);
        tri.left_gate = random_linear(c, m, device);
        tri.right_gate = random_linear(c, m, device);
        tri.output_projection = random_linear(m, c, device);
        tri.gating_linear = random_linear(c, c, device);
        tri
    }

    /// The update with the triangle sum written out as AlphaFold's einsum, element by element
    /// on the host: outgoing `'ikc,jkc->ijc'`, incoming `'kjc,kic->ijc'` (left, right).
    fn reference(tri: &TriangleMultiplication, pair: Tensor<4>, mask: Tensor<3>) -> Tensor<4> {
        let [b, n, _, _] = pair.dims();
        let device = pair.device();
        let mask = mask.unsqueeze_dim::<4>(3);
        let act = tri.layer_norm_input.forward(pair);
        let gated = |projection: &Linear, gate: &Linear| {
            (mask.clone() * projection.forward(act.clone()) * sigmoid(gate.forward(act.clone())))
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let left = gated(&tri.left_projection, &tri.left_gate);
        let right = gated(&tri.right_projection, &tri.right_gate);
        let m = tri.left_projection.weight.dims()[1];
        let at =
            |x: &[f32], d: usize, i: usize, j: usize, c: usize| x[((d * n + i) * n + j) * m + c];
        let mut product = vec![0.0f32; b * n * n * m];
        for d in 0..b {
            for i in 0..n {
                for j in 0..n {
                    for c in 0..m {
                        product[((d * n + i) * n + j) * m + c] = (0..n)
                            .map(|k| {
                                if tri.incoming {
                                    at(&left, d, k, j, c) * at(&right, d, k, i, c)
                                } else {
                                    at(&left, d, i, k, c) * at(&right, d, j, k, c)
                                }
                            })
                            .sum();
                    }
                }
            }
        }
        let product = Tensor::<4>::from_data(TensorData::new(product, [b, n, n, m]), &device);
        let update = tri
            .output_projection
            .forward(tri.center_layer_norm.forward(product));
        update * sigmoid(tri.gating_linear.forward(act))
    }

    #[test]
    fn both_directions_match_the_einsum() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let pair = Tensor::<4>::random([2, 5, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        // Some pairs masked out, so that a mask applied on the wrong axis shows.
        let mask = Tensor::<3>::random([2, 5, 5], Distribution::Uniform(0.0, 1.0), &device)
            .greater_elem(0.3)
            .float();
        for direction in [TriangleDirection::Outgoing, TriangleDirection::Incoming] {
            let mut tri = random_module(direction, &device);
            for round in ["first call", "a gate replaced after a forward pass"] {
                let ours = tri.forward(pair.clone(), mask.clone());
                let expected = reference(&tri, pair.clone(), mask.clone());
                let scale: f32 = expected.clone().abs().max().into_scalar();
                let diff: f32 = (ours - expected).abs().max().into_scalar();
                // f32 sums of 5 products in a different order: a few ulps of the largest value.
                assert!(
                    diff <= 1e-5 * scale,
                    "{direction:?}, {round}: differs by {diff} (scale {scale})"
                );
                // The residual form is the input plus the same update.
                let update = tri.forward(pair.clone(), mask.clone());
                let residual = tri.forward_residual(pair.clone(), mask.clone());
                let diff: f32 = (residual - pair.clone() - update).abs().max().into_scalar();
                assert!(
                    diff <= 1e-6,
                    "{direction:?}, {round}: residual form off by {diff}"
                );
                tri.right_gate = random_linear(4, 3, &device);
            }
        }
    }

    #[test]
    fn interleaved_edges_put_each_gate_after_its_projection() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        // m = 4 channels a side in groups of 2; column j of row r holds 100 r + j.
        let (c, m) = (3, 4);
        let weight: Vec<f32> = (0..c * 4 * m)
            .map(|i| (100 * (i / (4 * m)) + i % (4 * m)) as f32)
            .collect();
        let side_by_side = EdgeProjections {
            weight: Tensor::from_data(TensorData::new(weight, [c, 4 * m]), &device),
            bias: Tensor::from_data(
                TensorData::new((0..4 * m).map(|j| j as f32).collect(), [4 * m]),
                &device,
            ),
        };
        let interleaved = side_by_side.interleaved(2);
        // Left projection 0-3, right 4-7, left gate 8-11, right gate 12-15.
        let order = [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15];
        let bias = interleaved.bias.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(bias, order.map(|j| j as f32));
        let weight = interleaved.weight.into_data().try_to_vec::<f32>().unwrap();
        for r in 0..c {
            let row = &weight[r * 4 * m..(r + 1) * 4 * m];
            assert_eq!(row, order.map(|j| (100 * r + j) as f32), "row {r}");
        }
    }
}
