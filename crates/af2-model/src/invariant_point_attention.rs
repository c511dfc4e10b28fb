//! Invariant point attention (Jumper et al. 2021, Suppl. Alg. 22; AlphaFold's
//! `folding.InvariantPointAttention`).

use af2_geometry::QuatAffine;
use af2_layers::linear::batched_matmul;
use af2_layers::{Linear, MAX_LOGITS_PER_CHUNK, linear};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::{softmax, softplus};
use burn::tensor::{Device, Tensor};

/// Subtracted from the logits of pairs with a masked residue. IPA masks additively
/// (`logits - 1e5 * (1 - mask_i * mask_j)`), unlike the Evoformer attentions.
pub const IPA_MASK_PENALTY: f32 = 1e5;

/// Added under the square root of the norms of the output points (`dist_epsilon`).
pub const IPA_DIST_EPSILON: f32 = 1e-8;

/// Scalar, point and pair terms share the logits with equal variance.
const NUM_LOGIT_TERMS: f64 = 3.0;

/// Configuration of an [`InvariantPointAttention`].
#[derive(Config, Debug)]
pub struct InvariantPointAttentionConfig {
    /// Channels of the single activations, input and output (`num_channel`, 384).
    pub channels: usize,
    /// Channels of the pair activations (c_z, 128).
    pub pair_channels: usize,
    /// Attention heads (12).
    pub heads: usize,
    /// Scalar query/key channels per head (16).
    pub scalar_qk: usize,
    /// Query/key points per head (4).
    pub point_qk: usize,
    /// Scalar value channels per head (16).
    pub scalar_v: usize,
    /// Value points per head (8).
    pub point_v: usize,
}

/// Attention over residues whose logits combine scalar products, distances between points
/// placed in each residue's frame, and a pair bias (Algorithm 22). Parameter names follow
/// AlphaFold.
#[derive(Module, Debug)]
pub struct InvariantPointAttention {
    /// `[channels, heads * scalar_qk]`
    pub q_scalar: Linear,
    /// `[channels, heads * (scalar_qk + scalar_v)]`
    pub kv_scalar: Linear,
    /// `[channels, 3 * heads * point_qk]`, x block, then y, then z.
    pub q_point_local: Linear,
    /// `[channels, 3 * heads * (point_qk + point_v)]`, x block, then y, then z.
    pub kv_point_local: Linear,
    /// Per-head weight of the point term before softplus. Shape `[heads]`.
    pub trainable_point_weights: Param<Tensor<1>>,
    /// Pair bias: `[pair_channels, heads]`.
    pub attention_2d: Linear,
    /// `[heads * (scalar_v + 4 * point_v + pair_channels), channels]`
    pub output_projection: Linear,
    heads: usize,
    scalar_qk: usize,
    point_qk: usize,
    scalar_v: usize,
    point_v: usize,
}

impl InvariantPointAttentionConfig {
    /// Zero-initialised module (`trainable_point_weights` at softplus⁻¹(1), AlphaFold's init).
    pub fn init(&self, device: &Device) -> InvariantPointAttention {
        let h = self.heads;
        let out_in = h * (self.scalar_v + 4 * self.point_v + self.pair_channels);
        InvariantPointAttention {
            q_scalar: linear(self.channels, h * self.scalar_qk, device),
            kv_scalar: linear(self.channels, h * (self.scalar_qk + self.scalar_v), device),
            q_point_local: linear(self.channels, 3 * h * self.point_qk, device),
            kv_point_local: linear(
                self.channels,
                3 * h * (self.point_qk + self.point_v),
                device,
            ),
            trainable_point_weights: Param::from_tensor(Tensor::full(
                [h],
                (1.0f64.exp() - 1.0).ln(),
                device,
            )),
            attention_2d: linear(self.pair_channels, h, device),
            output_projection: linear(out_in, self.channels, device),
            heads: h,
            scalar_qk: self.scalar_qk,
            point_qk: self.point_qk,
            scalar_v: self.scalar_v,
            point_v: self.point_v,
        }
    }
}

/// The logit terms of an [`InvariantPointAttention`] that depend only on the pair activations,
/// the mask and the weights: the same in every fold iteration, so the structure module computes
/// them once ([`InvariantPointAttention::pair_terms`]) for its eight iterations.
#[derive(Clone, Debug)]
pub struct PairTerms {
    /// Weighted pair bias `[B, H, N, N]`.
    logits_2d: Tensor<4>,
    /// `IPA_MASK_PENALTY` where either residue is masked, `[B, 1, N, N]`.
    penalty: Tensor<4>,
    /// Softplus point weights times the point-term scale, one per (design, head): `[B * H]`.
    point_weights: Tensor<1>,
}

impl InvariantPointAttention {
    /// The iteration-independent logit terms (see [`PairTerms`]).
    ///
    /// # Shapes
    /// - act_2d: `[B, N, N, pair_channels]`, mask: `[B, N]`
    pub fn pair_terms(&self, act_2d: Tensor<4>, mask: Tensor<2>) -> PairTerms {
        let b = act_2d.dims()[0];
        let h = self.heads;
        // Logit weights: equal variance for the scalar, point and pair terms.
        let point_variance = self.point_qk.max(1) as f64 * 9.0 / 2.0;
        let point_weight = (1.0 / (NUM_LOGIT_TERMS * point_variance)).sqrt();
        let attention_2d_weight = (1.0 / NUM_LOGIT_TERMS).sqrt();
        let point_weights = softplus(self.trainable_point_weights.val(), 1.0)
            .mul_scalar(point_weight)
            .unsqueeze::<2>()
            .repeat_dim(0, b)
            .reshape([b * h]);
        let logits_2d = self
            .attention_2d
            .forward(act_2d)
            .permute([0, 3, 1, 2])
            .mul_scalar(attention_2d_weight);
        let mask_2d = mask.clone().unsqueeze_dim::<3>(2) * mask.unsqueeze_dim::<3>(1);
        let penalty = mask_2d
            .neg()
            .add_scalar(1.0)
            .mul_scalar(IPA_MASK_PENALTY)
            .unsqueeze_dim::<4>(1);
        PairTerms {
            logits_2d,
            penalty,
            point_weights,
        }
    }

    /// Attention update of the single activations of each design of a batch (no residual, no
    /// LayerNorm).
    ///
    /// `affine` holds the backbone frames in the structure module's internal units (translations
    /// in nanometres, i.e. Å / `position_scale`), design-major (frame `b * N + i`). `mask` is 1
    /// for residues that take part.
    ///
    /// # Shapes
    /// - act: `[B, N, channels]`
    /// - act_2d: `[B, N, N, pair_channels]` (the pair activations after `pair_layer_norm`)
    /// - mask: `[B, N]`
    /// - affine: `B * N` frames
    /// - output: `[B, N, channels]`
    pub fn forward(
        &self,
        act: Tensor<3>,
        act_2d: Tensor<4>,
        mask: Tensor<2>,
        affine: &QuatAffine,
    ) -> Tensor<3> {
        let terms = self.pair_terms(act_2d.clone(), mask);
        self.forward_with_terms(act, act_2d, &terms, affine)
    }

    /// [`InvariantPointAttention::forward`] with the iteration-independent terms computed
    /// already (from the same `act_2d` and mask).
    ///
    /// # Shapes
    /// - as [`InvariantPointAttention::forward`]
    pub fn forward_with_terms(
        &self,
        act: Tensor<3>,
        act_2d: Tensor<4>,
        terms: &PairTerms,
        affine: &QuatAffine,
    ) -> Tensor<3> {
        let [b, n, _] = act.dims();
        let (h, sqk, pqk, sv, pv) = (
            self.heads,
            self.scalar_qk,
            self.point_qk,
            self.scalar_v,
            self.point_v,
        );

        // Scalar queries, keys and values: [B, H, N, C].
        let q_scalar = self
            .q_scalar
            .forward(act.clone())
            .reshape([b, n, h, sqk])
            .swap_dims(1, 2);
        let kv_scalar = self
            .kv_scalar
            .forward(act.clone())
            .reshape([b, n, h, sqk + sv])
            .swap_dims(1, 2);
        let k_scalar = kv_scalar.clone().narrow(3, 0, sqk);
        let v_scalar = kv_scalar.narrow(3, sqk, sv);

        // Points: the projection holds all x coordinates, then all y, then all z. Local points
        // [B * N, H * P, 3] are mapped to the global frame and split per head:
        // [B, H, N, P, 3].
        let global_points = |x: Tensor<3>, p: usize| {
            let local = x.reshape([b * n, 3, h * p]).swap_dims(1, 2);
            affine
                .apply_to_point(local)
                .reshape([b, n, h, p, 3])
                .swap_dims(1, 2)
        };
        let q_point = global_points(self.q_point_local.forward(act.clone()), pqk);
        let kv_point = global_points(self.kv_point_local.forward(act), pqk + pv);
        let k_point = kv_point.clone().narrow(3, 0, pqk);
        let v_point = kv_point.narrow(3, pqk, pv);

        let scalar_weight = (1.0 / (NUM_LOGIT_TERMS * sqk.max(1) as f64)).sqrt();

        // [B, H, N, N]
        let logits_scalar =
            batched_matmul(q_scalar.mul_scalar(scalar_weight), k_scalar.swap_dims(2, 3));
        let logits_point = point_logits(
            q_point.reshape([b * h, n, pqk, 3]),
            k_point.reshape([b * h, n, pqk, 3]),
            terms.point_weights.clone(),
        )
        .reshape([b, h, n, n]);
        let attn = softmax(
            logits_scalar + logits_point + terms.logits_2d.clone() - terms.penalty.clone(),
            3,
        );

        // Scalar values: [B, H, N, Sv] -> [B, N, H * Sv].
        let result_scalar = batched_matmul(attn.clone(), v_scalar)
            .swap_dims(1, 2)
            .reshape([b, n, h * sv]);

        // Point values, attended in the global frame, then mapped to each query's frame.
        let v_point = v_point.reshape([b, h, n, pv * 3]);
        let result_point_global = batched_matmul(attn.clone(), v_point)
            .reshape([b, h, n, pv, 3])
            .swap_dims(1, 2)
            .reshape([b * n, h * pv, 3]);
        let result_point_local = affine.invert_point(result_point_global);
        let sq = result_point_local.clone().square();
        let c = |i| sq.clone().narrow(2, i, 1);
        let result_point_norm = (c(0).add_scalar(IPA_DIST_EPSILON) + c(1) + c(2))
            .sqrt()
            .reshape([b, n, h * pv]);
        // x of every point, then y, then z: [B, N, 3 * H * Pv].
        let result_point_xyz = result_point_local
            .swap_dims(1, 2)
            .reshape([b, n, 3 * h * pv]);

        // Pair values: attn [B, H, i, j] with act_2d [B, i, j, c] -> [B, i, H, c].
        let [_, _, _, cz] = act_2d.dims();
        let result_2d = batched_matmul(attn.swap_dims(1, 2), act_2d).reshape([b, n, h * cz]);

        let features = Tensor::cat(
            vec![
                result_scalar,
                result_point_xyz,
                result_point_norm,
                result_2d,
            ],
            2,
        );
        self.output_projection.forward(features)
    }
}

/// `-0.5 * Σ_p w_h |q_hip - k_hjp|²` computed as differences (not by expanding the square, which
/// loses precision far from the origin): on a cubecl device one kernel, each logit summed by one
/// unit (`af2_layers::point_logits_kernel`); elsewhere as Burn operations, in chunks of query
/// residues so that the `[H, Q, K, P, 3]` buffer stays below [`MAX_LOGITS_PER_CHUNK`] elements.
///
/// # Shapes
/// - q: `[H, N, P, 3]`
/// - k: `[H, N, P, 3]`
/// - weights: `[H]`
/// - output: `[H, N, N]`
fn point_logits(q: Tensor<4>, k: Tensor<4>, weights: Tensor<1>) -> Tensor<3> {
    #[cfg(feature = "wgpu")]
    if let Some(logits) = af2_layers::point_logits_kernel::try_point_logits(&q, &k, &weights) {
        return logits;
    }
    let [h, n, p, _] = q.dims();
    let k = k.unsqueeze_dim::<5>(1);
    let weights = weights.reshape([h, 1, 1, 1]);
    let rows = (MAX_LOGITS_PER_CHUNK / (h * n * p * 3).max(1)).clamp(1, n.max(1));
    let chunks: Vec<Tensor<3>> = (0..n)
        .step_by(rows)
        .map(|start| {
            let len = rows.min(n - start);
            let qc = q.clone().narrow(1, start, len).unsqueeze_dim::<5>(2);
            let dist2 = (qc - k.clone()).square().sum_dim(4).reshape([h, len, n, p]);
            (dist2 * weights.clone())
                .sum_dim(3)
                .reshape([h, len, n])
                .mul_scalar(-0.5)
        })
        .collect();
    Tensor::cat(chunks, 1)
}
