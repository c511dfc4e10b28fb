//! Gated multi-head attention with an optional pair bias (AlphaFold's `Attention`, used by
//! Algorithms 7, 8, 13, 14 and 17).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use crate::derived::Derived;
use crate::linear::{Epilogue, matmul_bias, matmul_bias_with};
use crate::{MAX_LOGITS_PER_CHUNK, softmax_mask};

/// Configuration of a [`GatedAttention`].
#[derive(Config, Debug)]
pub struct GatedAttentionConfig {
    /// Channels of the query input.
    pub q_channels: usize,
    /// Channels of the key/value input.
    pub m_channels: usize,
    /// Number of heads.
    pub num_heads: usize,
    /// Channels per head of queries and keys.
    pub key_dim: usize,
    /// Channels per head of values.
    pub value_dim: usize,
    /// Output channels.
    pub output_dim: usize,
    /// Whether a sigmoid gate multiplies the attended values (`gating_w`, `gating_b`).
    #[config(default = true)]
    pub gating: bool,
}

/// Multi-head attention in haiku layout; parameter names follow AlphaFold.
#[derive(Module, Debug)]
pub struct GatedAttention {
    /// `[q_channels, heads, key_dim]`
    pub query_w: Param<Tensor<3>>,
    /// `[m_channels, heads, key_dim]`
    pub key_w: Param<Tensor<3>>,
    /// `[m_channels, heads, value_dim]`
    pub value_w: Param<Tensor<3>>,
    /// `[q_channels, heads, value_dim]`
    pub gating_w: Option<Param<Tensor<3>>>,
    /// `[heads, value_dim]`
    pub gating_b: Option<Param<Tensor<2>>>,
    /// `[heads, value_dim, output_dim]`
    pub output_w: Param<Tensor<3>>,
    /// `[output_dim]`
    pub output_b: Param<Tensor<1>>,
    /// `output_w` as `[H * value_dim, output_dim]`, built once for these parameters.
    #[module(skip)]
    output_weight: Derived<Tensor<2>>,
    /// The input projections side by side for [`GatedAttention::forward_self`].
    #[module(skip)]
    shared_projection: Derived<SharedProjection>,
}

impl GatedAttentionConfig {
    /// Zero-initialised parameters of the configured shapes.
    pub fn init(&self, device: &Device) -> GatedAttention {
        let zeros3 = |a, b, c| Param::from_tensor(Tensor::zeros([a, b, c], device));
        let (h, k, v) = (self.num_heads, self.key_dim, self.value_dim);
        GatedAttention {
            query_w: zeros3(self.q_channels, h, k),
            key_w: zeros3(self.m_channels, h, k),
            value_w: zeros3(self.m_channels, h, v),
            gating_w: self.gating.then(|| zeros3(self.q_channels, h, v)),
            gating_b: self
                .gating
                .then(|| Param::from_tensor(Tensor::ones([h, v], device))),
            output_w: zeros3(h, v, self.output_dim),
            output_b: Param::from_tensor(Tensor::zeros([self.output_dim], device)),
            output_weight: Derived::default(),
            shared_projection: Derived::default(),
        }
    }
}

/// Rows `start..start + len` of the batch axis, or the tensor itself when that axis is a
/// broadcast axis of size 1.
fn batch_rows<const D: usize>(t: Tensor<D>, start: usize, len: usize) -> Tensor<D> {
    if t.dims()[0] == 1 {
        t
    } else {
        t.narrow(0, start, len)
    }
}

/// Row ranges `(start, len)` of at most `rows` rows covering `0..b`, none straddling a boundary
/// between two of `groups` equal bias groups unless it covers whole groups.
fn chunk_ranges(b: usize, groups: usize, rows: usize) -> Vec<(usize, usize)> {
    let per_group = b / groups.max(1);
    let (step, limit) = if groups <= 1 || rows >= per_group {
        let aligned = if groups <= 1 {
            rows
        } else {
            rows / per_group * per_group
        };
        (aligned, b)
    } else {
        (rows, per_group)
    };
    let mut ranges = Vec::new();
    for group_start in (0..b).step_by(limit) {
        for start in (group_start..group_start + limit).step_by(step) {
            ranges.push((start, step.min(group_start + limit - start)));
        }
    }
    ranges
}

/// The bias groups that serve rows `start..start + len` of `b` (see [`attention_core`]).
fn bias_groups(bias: Tensor<4>, b: usize, start: usize, len: usize) -> Tensor<4> {
    let groups = bias.dims()[0];
    if groups == 1 {
        return bias;
    }
    let per_group = b / groups;
    let first = start / per_group;
    let last = (start + len - 1) / per_group;
    bias.narrow(0, first, last - first + 1)
}

/// Projects `[B, N, A]` with a `[A, H, C]` weight to `[B, N, H, C]`, adding a `[H, C]` bias
/// or multiplying by `scale`, either right after the matmul (see [`matmul_bias`]: on Burn's
/// matmul, fusion folds them into it; on the f16 linear kernel the bias is in its accumulators
/// and the scale a separate elementwise pass).
pub fn project_heads(
    x: Tensor<3>,
    weight: Tensor<3>,
    bias: Option<Tensor<2>>,
    scale: Option<f64>,
) -> Tensor<4> {
    let [b, n, a] = x.dims();
    let [_, h, c] = weight.dims();
    let weight = weight.reshape([a, h * c]);
    let bias = bias.map(|bias| bias.reshape([h * c]));
    let mut projected = matmul_bias(x.reshape([b * n, a]), weight, bias);
    if let Some(scale) = scale {
        projected = projected.mul_scalar(scale);
    }
    projected.reshape([b, n, h, c])
}

impl GatedAttention {
    /// Attends from `q_data` to `m_data`.
    ///
    /// `key_mask` is 1 for valid keys and 0 for masked ones; a masked logit becomes -1e9 before
    /// the softmax, exactly as AlphaFold 2.3.2. `bias` is added to the logits (a pair bias shared
    /// by every batch row when its first axis is 1).
    ///
    /// # Shapes
    /// - q_data: `[B, Q, q_channels]`
    /// - m_data: `[B, K, m_channels]`
    /// - key_mask: `[B or 1, K]`
    /// - bias: `[B or 1, H, Q, K]`
    /// - output: `[B, Q, output_dim]`
    pub fn forward(
        &self,
        q_data: Tensor<3>,
        m_data: Tensor<3>,
        key_mask: Tensor<2>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        self.forward_chunked(q_data, m_data, key_mask, bias, MAX_LOGITS_PER_CHUNK)
    }

    /// [`GatedAttention::forward`] computing at most `max_logits` logits at a time (whole
    /// batch rows; at least one row per chunk).
    pub fn forward_chunked(
        &self,
        q_data: Tensor<3>,
        m_data: Tensor<3>,
        key_mask: Tensor<2>,
        bias: Option<Tensor<4>>,
        max_logits: usize,
    ) -> Tensor<3> {
        let inputs = Inputs {
            q_data,
            m_data: Some(m_data),
        };
        self.attend_in_chunks(inputs, key_mask, bias, max_logits, None)
    }

    /// Self-attention: [`GatedAttention::forward`] with `x` as both queries and keys, its four
    /// input projections as one matmul (needs `q_channels == m_channels`).
    ///
    /// # Shapes
    /// - x: `[B, N, q_channels]`
    /// - key_mask: `[B or 1, N]`
    /// - bias: `[B or 1, H, N, N]`
    /// - output: `[B, N, output_dim]`
    pub fn forward_self(
        &self,
        x: Tensor<3>,
        key_mask: Tensor<2>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        self.forward_self_chunked(x, key_mask, bias, MAX_LOGITS_PER_CHUNK)
    }

    /// [`GatedAttention::forward_self`] computing at most `max_logits` logits at a time.
    pub fn forward_self_chunked(
        &self,
        x: Tensor<3>,
        key_mask: Tensor<2>,
        bias: Option<Tensor<4>>,
        max_logits: usize,
    ) -> Tensor<3> {
        self.attend_self(x, key_mask, bias, None, max_logits)
    }

    /// `residual + forward_self(x, ..)` where a residual is given (the add done by the output
    /// projection's kernel where it runs: f16 on a GPU with matrix instructions), else
    /// `forward_self(x, ..)`.
    ///
    /// # Shapes
    /// - x: `[B, N, q_channels]`
    /// - key_mask: `[B or 1, N]`
    /// - bias: `[B or 1, H, N, N]`
    /// - residual, output: `[B, N, output_dim]`
    pub fn forward_self_plus(
        &self,
        x: Tensor<3>,
        key_mask: Tensor<2>,
        bias: Option<Tensor<4>>,
        residual: Option<Tensor<3>>,
    ) -> Tensor<3> {
        self.attend_self(x, key_mask, bias, residual, MAX_LOGITS_PER_CHUNK)
    }

    /// Self-attention of `x` plus `residual` where given, at most `max_logits` logits at a time.
    fn attend_self(
        &self,
        x: Tensor<3>,
        key_mask: Tensor<2>,
        bias: Option<Tensor<4>>,
        residual: Option<Tensor<3>>,
        max_logits: usize,
    ) -> Tensor<3> {
        let inputs = Inputs {
            q_data: x,
            m_data: None,
        };
        self.attend_in_chunks(inputs, key_mask, bias, max_logits, residual)
    }

    fn attend_in_chunks(
        &self,
        inputs: Inputs,
        key_mask: Tensor<2>,
        bias: Option<Tensor<4>>,
        max_logits: usize,
        residual: Option<Tensor<3>>,
    ) -> Tensor<3> {
        let (q_data, m_data) = inputs.queries_and_keys();
        let [b, q, _] = q_data.dims();
        let [_, k, _] = m_data.dims();
        let h = self.query_w.dims()[1];
        let rows = (max_logits / (h * q * k).max(1)).max(1);
        // The fused kernel computes no logits buffer: one call for all rows.
        if rows >= b || self.uses_kernel(q_data, k) {
            return self.forward_chunk(inputs, key_mask, bias, residual);
        }
        let groups = bias.as_ref().map_or(1, |t| t.dims()[0]);
        let chunks = chunk_ranges(b, groups, rows)
            .into_iter()
            .map(|(start, len)| {
                self.forward_chunk(
                    inputs.narrow(start, len),
                    batch_rows(key_mask.clone(), start, len),
                    bias.clone().map(|t| bias_groups(t, b, start, len)),
                    None,
                )
            })
            .collect();
        let out = Tensor::cat(chunks, 0);
        match residual {
            Some(residual) => residual + out,
            None => out,
        }
    }

    /// Whether [`attention_core`] will run this layer's heads on the fused kernel.
    fn uses_kernel(&self, q_data: &Tensor<3>, k_len: usize) -> bool {
        #[cfg(feature = "cube")]
        {
            let [_, q_len, _] = q_data.dims();
            crate::attention_kernel::kernel_supports_problem(
                &q_data.device(),
                q_data.dtype(),
                q_len,
                k_len,
                self.query_w.dims()[2],
                self.value_w.dims()[2],
            )
        }
        #[cfg(not(feature = "cube"))]
        {
            let _ = (q_data, k_len);
            false
        }
    }

    fn forward_chunk(
        &self,
        inputs: Inputs,
        key_mask: Tensor<2>,
        bias: Option<Tensor<4>>,
        residual: Option<Tensor<3>>,
    ) -> Tensor<3> {
        let [b, q_len, _] = inputs.queries_and_keys().0.dims();
        let [_, h, _] = self.query_w.dims();
        let value_dim = self.value_w.dims()[2];
        let Projected { q, k, v, gate } = match inputs.m_data {
            Some(m_data) => self.project_separately(inputs.q_data, m_data),
            None => self.project_shared(inputs.q_data),
        };
        let weighted = attention_core(
            q.swap_dims(1, 2),
            k.swap_dims(1, 2),
            v.swap_dims(1, 2),
            key_mask,
            bias,
        )
        .swap_dims(1, 2)
        .reshape([b * q_len, h * value_dim]);
        self.project_output(weighted, gate, residual, [b, q_len])
    }

    /// The output projection of the attended values `[B * Q, H * value_dim]`, gated by `gate`
    /// (see [`Projected::gate`]) on their way in (in the linear kernel's staging where it runs,
    /// else as a Burn operation), plus `residual` `[B, Q, output_dim]`: `[B, Q, output_dim]`.
    fn project_output(
        &self,
        weighted: Tensor<2>,
        gate: Option<(Tensor<2>, usize)>,
        residual: Option<Tensor<3>>,
        [b, q_len]: [usize; 2],
    ) -> Tensor<3> {
        let out_dim = self.output_b.dims()[0];
        let finish = Epilogue {
            residual: residual.map(|r| r.reshape([b * q_len, out_dim])),
            input_gate: gate,
            ..Epilogue::default()
        };
        matmul_bias_with(
            weighted,
            self.output_weight(),
            Some(self.output_b.val()),
            finish,
        )
        .reshape([b, q_len, out_dim])
    }

    /// [`GatedAttention::forward`] where every query row attends to a single key (`m_data`
    /// `[B, 1, C]`), whatever its mask: the softmax of one logit is exactly 1 (AlphaFold's -1e9
    /// mask fill shifts the logit and its max alike), so each row's output is its key's
    /// projected value, gated by the query where the layer has a gate. No queries, keys or
    /// logits are computed: the template pointwise attention of a single template.
    ///
    /// # Shapes
    /// - q_data: `[B, Q, q_channels]`, m_data: `[B, 1, m_channels]`
    /// - output: `[B, Q, output_dim]`
    pub fn forward_single_key(&self, q_data: Tensor<3>, m_data: Tensor<3>) -> Tensor<3> {
        let [b, q_len, _] = q_data.dims();
        let [_, h, value_dim] = self.value_w.dims();
        let v = project_heads(m_data, self.value_w.val(), None, None)
            .reshape([b, 1, h * value_dim])
            .expand([b, q_len, h * value_dim])
            .reshape([b * q_len, h * value_dim]);
        let gate = self.project_gate(q_data);
        self.project_output(v, gate, None, [b, q_len])
    }

    /// The gate's pre-activation `[B * Q, H * value_dim]` from `q_data` `[B, Q, q_channels]`,
    /// where the layer has a gate, as [`Projected::gate`] takes it (from column 0).
    fn project_gate(&self, q_data: Tensor<3>) -> Option<(Tensor<2>, usize)> {
        self.gate().map(|(gw, gb)| {
            let gate = project_heads(q_data, gw.val(), Some(gb.val()), None);
            let [b, n, h, v] = gate.dims();
            (gate.reshape([b * n, h * v]), 0)
        })
    }

    /// Queries (scaled by `1/sqrt(key_dim)`), keys, values and gate, one projection each.
    fn project_separately(&self, q_data: Tensor<3>, m_data: Tensor<3>) -> Projected {
        let gate = self.project_gate(q_data.clone());
        Projected {
            q: project_heads(q_data, self.query_w.val(), None, Some(self.query_scale())),
            k: project_heads(m_data.clone(), self.key_w.val(), None, None),
            v: project_heads(m_data, self.value_w.val(), None, None),
            gate,
        }
    }

    /// [`Self::project_separately`] for `q_data = m_data = x`, as one matmul with the
    /// prepared side-by-side weight.
    fn project_shared(&self, x: Tensor<3>) -> Projected {
        let [b, n, c] = x.dims();
        let [_, h, key_dim] = self.query_w.dims();
        let value_dim = self.value_w.dims()[2];
        let shared = self.shared_projection();
        let (keys, values) = (h * key_dim, h * value_dim);
        let x = x.reshape([b * n, c]);
        // Scaled after the projection, as AlphaFold does: folded into an f16 weight, the scale
        // would add a rounding of every query weight. The linear kernel scales the query
        // columns as it writes them; elsewhere the queries are scaled after the projection.
        let scale = self.query_scale();
        let (projected, queries_scaled) =
            match shared_projection_scaled(&x, &shared, keys, scale as f32) {
                Some(projected) => (projected, true),
                None => (matmul_bias(x, shared.weight, shared.bias), false),
            };
        let part = |offset: usize, width: usize| {
            projected
                .clone()
                .narrow(1, offset, h * width)
                .reshape([b, n, h, width])
        };
        let q = part(0, key_dim);
        Projected {
            q: if queries_scaled {
                q
            } else {
                q.mul_scalar(scale)
            },
            k: part(keys, key_dim),
            v: part(2 * keys, value_dim),
            gate: self.gate().map(|_| (projected.clone(), 2 * keys + values)),
        }
    }

    /// `1/sqrt(key_dim)`, the scale of the queries.
    fn query_scale(&self) -> f64 {
        (self.query_w.dims()[2] as f64).powf(-0.5)
    }

    /// The gate's weight and bias, where the layer has both.
    fn gate(&self) -> Option<(&Param<Tensor<3>>, &Param<Tensor<2>>)> {
        self.gating_w.as_ref().zip(self.gating_b.as_ref())
    }

    /// `output_w` as `[H * value_dim, output_dim]`, built once for these parameters.
    fn output_weight(&self) -> Tensor<2> {
        let w = self.output_w.val();
        self.output_weight
            .get_or_compute(vec![self.output_w.id], w.dtype(), w.device(), || {
                let [h, value_dim, out_dim] = w.dims();
                w.reshape([h * value_dim, out_dim])
            })
    }

    /// The query, key, value and gate weights side by side, with the gate's bias after zeros,
    /// built once for these parameters.
    ///
    /// # Panics
    /// If queries and keys have different widths (`q_channels != m_channels`).
    fn shared_projection(&self) -> SharedProjection {
        let [q_channels, h, key_dim] = self.query_w.dims();
        let [m_channels, _, value_dim] = self.value_w.dims();
        assert_eq!(
            q_channels, m_channels,
            "self-attention needs queries and keys of one width"
        );
        let first = self.query_w.val();
        let mut params = vec![self.query_w.id, self.key_w.id, self.value_w.id];
        if let Some((gw, gb)) = self.gate() {
            params.extend([gw.id, gb.id]);
        }
        let compute = || {
            let flat = |w: Tensor<3>| {
                let [a, h, d] = w.dims();
                w.reshape([a, h * d])
            };
            let mut weights = vec![
                flat(self.query_w.val()),
                flat(self.key_w.val()),
                flat(self.value_w.val()),
            ];
            let mut bias = None;
            if let Some((gw, gb)) = self.gate() {
                weights.push(flat(gw.val()));
                let gb = gb.val();
                let zeros = Tensor::<1>::zeros([h * (2 * key_dim + value_dim)], &gb.device())
                    .cast(gb.dtype());
                bias = Some(Tensor::cat(vec![zeros, gb.reshape([h * value_dim])], 0));
            }
            SharedProjection {
                weight: Tensor::cat(weights, 1),
                bias,
            }
        };
        self.shared_projection
            .get_or_compute(params, first.dtype(), first.device(), compute)
    }
}

/// What a [`GatedAttention`] attends with: queries, and keys and values from `m_data` or, where
/// it is `None`, from the queries' input.
struct Inputs {
    q_data: Tensor<3>,
    m_data: Option<Tensor<3>>,
}

impl Inputs {
    fn queries_and_keys(&self) -> (&Tensor<3>, &Tensor<3>) {
        (&self.q_data, self.m_data.as_ref().unwrap_or(&self.q_data))
    }

    /// Batch rows `start..start + len`.
    fn narrow(&self, start: usize, len: usize) -> Self {
        Self {
            q_data: self.q_data.clone().narrow(0, start, len),
            m_data: self.m_data.clone().map(|m| m.narrow(0, start, len)),
        }
    }
}

/// Projected heads, each `[B, N, H, C]`.
struct Projected {
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    /// `(gates, first)`: the gate of row `r` in `gates[r, first ..]`, `[rows, H * value_dim]`
    /// wide (see [`Epilogue::input_gate`]).
    gate: Option<(Tensor<2>, usize)>,
}

/// The shared projection with its first `queries` columns scaled, on the linear kernel where
/// it takes them (f16 on a GPU with matrix instructions, a bias present), else `None`.
#[cfg_attr(not(feature = "cube"), allow(unused_variables))]
fn shared_projection_scaled(
    x: &Tensor<2>,
    shared: &SharedProjection,
    queries: usize,
    scale: f32,
) -> Option<Tensor<2>> {
    #[cfg(feature = "cube")]
    {
        let epilogue = Epilogue {
            scale_columns: Some((queries, scale)),
            ..Epilogue::default()
        };
        crate::linear_kernel::try_linear_kernel_with(
            x,
            &shared.weight,
            shared.bias.as_ref(),
            &epilogue,
        )
    }
    #[cfg(not(feature = "cube"))]
    None
}

/// Query, key, value and gate projections side by side, `[c, H * (2 key_dim + 2 value_dim)]`
/// (without the gate where the layer has none), with the gate's bias after zeros.
#[derive(Clone, Debug)]
struct SharedProjection {
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
}

/// The attention core `softmax(q kᵀ + bias, masked) v` of every head, without projections.
///
/// `q` must already carry the `1/sqrt(key_dim)` scale. Batch rows come in `G` equal groups
/// that share one bias: row `b` takes bias `b / (B / G)` (`G = 1`: one bias for every row;
/// `G = B`: one bias per row; `G = designs`: one pair bias per design of a batch).
///
/// # Shapes
/// - q: `[B, H, Q, C]`
/// - k: `[B, H, K, C]`
/// - v: `[B, H, K, Cv]`
/// - key_mask: `[B or 1, K]`, 1 for valid keys
/// - bias: `[G, H, Q, K]`, `G` dividing `B`
/// - output: `[B, H, Q, Cv]`
///
/// With the `cube` feature, tensors on a cubecl device (wgpu: Vulkan, Metal) go to the fused
/// kernel of [`crate::attention_kernel`], which never materialises the logits; everything else
/// (and `AF2_ATTENTION_KERNEL=0`) takes [`attention_core_reference`].
pub fn attention_core(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_mask: Tensor<2>,
    bias: Option<Tensor<4>>,
) -> Tensor<4> {
    #[cfg(feature = "cube")]
    if crate::attention_kernel::kernel_supports(&q, &k, &v) {
        return crate::attention_kernel::attention_core_kernel(q, k, v, key_mask, bias);
    }
    attention_core_reference(q, k, v, key_mask, bias)
}

/// Whether [`attention_core`] runs these inputs on the fused kernel (always `false` without the
/// `cube` feature).
pub fn attention_core_uses_kernel(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> bool {
    #[cfg(feature = "cube")]
    return crate::attention_kernel::kernel_supports(q, k, v);
    #[cfg(not(feature = "cube"))]
    {
        let _ = (q, k, v);
        false
    }
}

/// How many attention cores have run on the tensor-core kernel in this process (always 0
/// without the `cube` feature).
pub fn tensor_core_launches() -> usize {
    #[cfg(feature = "cube")]
    return crate::attention_kernel_mma::mma_launches();
    #[cfg(not(feature = "cube"))]
    0
}

/// [`attention_core`] in plain Burn tensor operations, materialising the `[B, H, Q, K]` logits:
/// the reference of the kernel, and the path of every backend without it.
pub fn attention_core_reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_mask: Tensor<2>,
    bias: Option<Tensor<4>>,
) -> Tensor<4> {
    let [b, h, q_len, _] = q.dims();
    let k_len = k.dims()[2];
    let mut logits = q.matmul(k.swap_dims(2, 3));
    if let Some(bias) = bias {
        logits = add_grouped_bias(logits, bias);
    }
    let mask_batch = key_mask.dims()[0];
    let masked = key_mask
        .reshape([mask_batch, 1, 1, k_len])
        .equal_elem(0.0)
        .expand([b, h, q_len, k_len]);
    let fill = softmax_mask(logits.dtype());
    softmax(logits.mask_fill(masked, fill), 3).matmul(v)
}

/// Adds a `[G, H, Q, K]` bias to `[B, H, Q, K]` logits, group `g` serving rows
/// `g * B/G .. (g + 1) * B/G`.
fn add_grouped_bias(logits: Tensor<4>, bias: Tensor<4>) -> Tensor<4> {
    let [b, h, q_len, k_len] = logits.dims();
    let groups = bias.dims()[0];
    assert!(
        groups > 0 && b % groups == 0,
        "attention bias has {groups} groups, which does not divide {b} batch rows"
    );
    if groups == 1 || groups == b {
        return logits + bias;
    }
    (logits.reshape([groups, b / groups, h, q_len, k_len]) + bias.unsqueeze_dim::<5>(1))
        .reshape([b, h, q_len, k_len])
}

/// `attention` with its projections (not the gate's bias) drawn from N(0, 0.5), the shapes kept:
/// for tests of the layers built on it.
#[cfg(test)]
pub(crate) fn randomized(mut attention: GatedAttention) -> GatedAttention {
    use burn::tensor::Distribution;
    let redraw = |param: &Param<Tensor<3>>| {
        let value = param.val();
        let device = value.device();
        Param::from_tensor(Tensor::random(
            value.dims(),
            Distribution::Normal(0.0, 0.5),
            &device,
        ))
    };
    attention.query_w = redraw(&attention.query_w);
    attention.key_w = redraw(&attention.key_w);
    attention.value_w = redraw(&attention.value_w);
    attention.gating_w = attention.gating_w.as_ref().map(redraw);
    attention.output_w = redraw(&attention.output_w);
    attention
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn single_key_attention_is_the_gated_projected_value() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        for gating in [true, false] {
            let config = GatedAttentionConfig::new(6, 5, 2, 3, 4, 7).with_gating(gating);
            let mut attention = randomized(config.init(&device));
            attention.gating_b = attention.gating_b.map(|_| {
                Param::from_tensor(Tensor::random(
                    [2, 4],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                ))
            });
            attention.output_b =
                Param::from_tensor(Tensor::random([7], Distribution::Normal(0.0, 1.0), &device));
            let q = Tensor::<3>::random([4, 3, 6], Distribution::Normal(0.0, 1.0), &device);
            let m = Tensor::<3>::random([4, 1, 5], Distribution::Normal(0.0, 1.0), &device);
            // Rows 1 and 3 have their only key masked: AlphaFold's softmax still gives it 1.
            let mask = Tensor::<2>::from_data(
                burn::tensor::TensorData::new(vec![1.0f32, 0.0, 1.0, 0.0], [4, 1]),
                &device,
            );
            let full = attention.forward(q.clone(), m.clone(), mask, None);
            let single = attention.forward_single_key(q, m);
            let peak: f32 = full.clone().abs().max().into_scalar();
            let diff: f32 = (full - single).abs().max().into_scalar();
            // The full path multiplies the value by a softmax weight of exactly 1 and sums one
            // term: the same products, so f32 rounding of the projections alone.
            assert!(
                diff <= 1e-6 * peak.max(1.0),
                "gating {gating}: differs by {diff} (peak {peak})"
            );
            assert!(peak > 0.1, "the test must produce a non-trivial output");
        }
    }

    #[test]
    fn chunked_attention_equals_unchunked() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let mut attention = GatedAttentionConfig::new(6, 6, 2, 3, 3, 6).init(&device);
        let random = |shape: [usize; 3]| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 0.5),
                &device,
            ))
        };
        attention.query_w = random([6, 2, 3]);
        attention.key_w = random([6, 2, 3]);
        attention.value_w = random([6, 2, 3]);
        attention.output_w = random([2, 3, 6]);
        let x = Tensor::<3>::random([5, 4, 6], Distribution::Normal(0.0, 1.0), &device);
        let mut mask_values = vec![1.0f32; 20];
        mask_values[3] = 0.0;
        mask_values[17] = 0.0;
        let mask =
            Tensor::<2>::from_data(burn::tensor::TensorData::new(mask_values, [5, 4]), &device);
        let bias = Tensor::<4>::random([1, 2, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let whole = attention.forward(x.clone(), x.clone(), mask.clone(), Some(bias.clone()));
        // One batch row per chunk.
        let chunked =
            attention.forward_chunked(x.clone(), x.clone(), mask.clone(), Some(bias.clone()), 1);
        let diff: f32 = (whole - chunked).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
        // The residual form of self-attention, whole and one row per chunk.
        let residual = Tensor::<3>::random([5, 4, 6], Distribution::Normal(0.0, 1.0), &device);
        let expected =
            residual.clone() + attention.forward_self(x.clone(), mask.clone(), Some(bias.clone()));
        for max_logits in [usize::MAX, 1] {
            let ours = attention.attend_self(
                x.clone(),
                mask.clone(),
                Some(bias.clone()),
                Some(residual.clone()),
                max_logits,
            );
            let diff: f32 = (ours - expected.clone()).abs().max().into_scalar();
            assert_eq!(diff, 0.0, "residual form, chunks of {max_logits} logits");
        }
    }

    #[test]
    fn self_attention_equals_attending_to_itself() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        // Values wider than keys, so the side-by-side weight's parts have two widths.
        let mut attention = GatedAttentionConfig::new(6, 6, 2, 3, 4, 5).init(&device);
        let random = |shape: [usize; 3]| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 0.5),
                &device,
            ))
        };
        attention.query_w = random([6, 2, 3]);
        attention.key_w = random([6, 2, 3]);
        attention.value_w = random([6, 2, 4]);
        attention.gating_w = Some(random([6, 2, 4]));
        attention.output_w = random([2, 4, 5]);
        attention.gating_b = Some(Param::from_tensor(Tensor::random(
            [2, 4],
            Distribution::Normal(0.0, 1.0),
            &device,
        )));
        let x = Tensor::<3>::random([5, 4, 6], Distribution::Normal(0.0, 1.0), &device);
        let mut mask_values = vec![1.0f32; 20];
        mask_values[6] = 0.0;
        let mask =
            Tensor::<2>::from_data(burn::tensor::TensorData::new(mask_values, [5, 4]), &device);
        let bias = Tensor::<4>::random([5, 2, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let compare = |attention: &GatedAttention, what: &str| {
            // A clone starts without kept weights: it builds them from the current values.
            let fresh = attention.clone();
            let separate = fresh.forward(x.clone(), x.clone(), mask.clone(), Some(bias.clone()));
            let scale: f32 = separate.clone().abs().max().into_scalar();
            for max_logits in [usize::MAX, 1] {
                let shared = attention.forward_self_chunked(
                    x.clone(),
                    mask.clone(),
                    Some(bias.clone()),
                    max_logits,
                );
                let diff: f32 = (separate.clone() - shared).abs().max().into_scalar();
                // One wide matmul instead of four narrow ones may sum in another order.
                assert!(
                    diff <= 1e-5 * scale,
                    "{what}, chunks of {max_logits} logits: differs by {diff} (scale {scale})"
                );
            }
        };
        compare(&attention, "first call");
        // Parameters replaced after a forward pass: the kept weights are rebuilt.
        attention.value_w = random([6, 2, 4]);
        compare(&attention, "new values");
        attention.output_w = random([2, 4, 5]);
        compare(&attention, "new output weight");
        attention.gating_b = Some(Param::from_tensor(Tensor::zeros([2, 4], &device)));
        compare(&attention, "new gate bias");
        attention.gating_w = None;
        attention.gating_b = None;
        compare(&attention, "no gate");
    }

    #[test]
    fn grouped_bias_matches_per_row_bias_and_chunks() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let mut attention = GatedAttentionConfig::new(6, 6, 2, 3, 3, 6).init(&device);
        attention.query_w = Param::from_tensor(Tensor::random(
            [6, 2, 3],
            Distribution::Normal(0.0, 0.5),
            &device,
        ));
        attention.key_w = attention.query_w.clone();
        attention.value_w = attention.query_w.clone();
        attention.output_w = Param::from_tensor(Tensor::random(
            [2, 3, 6],
            Distribution::Normal(0.0, 0.5),
            &device,
        ));
        // 3 designs x 2 rows each; one bias per design.
        let x = Tensor::<3>::random([6, 4, 6], Distribution::Normal(0.0, 1.0), &device);
        let mask = Tensor::<2>::ones([6, 4], &device);
        let bias = Tensor::<4>::random([3, 2, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let per_row = bias
            .clone()
            .unsqueeze_dim::<5>(1)
            .repeat_dim(1, 2)
            .reshape([6, 2, 4, 4]);
        let grouped = attention.forward(x.clone(), x.clone(), mask.clone(), Some(bias.clone()));
        let explicit = attention.forward(x.clone(), x.clone(), mask.clone(), Some(per_row));
        let diff: f32 = (grouped.clone() - explicit).abs().max().into_scalar();
        assert!(diff < 1e-6, "grouped vs per-row bias differ by {diff}");
        // Chunks of 1, 2, 4 and 5 rows: inside a group, whole groups, and uneven tails.
        for rows in [1, 2, 4, 5] {
            let chunked = attention.forward_chunked(
                x.clone(),
                x.clone(),
                mask.clone(),
                Some(bias.clone()),
                rows * 2 * 4 * 4,
            );
            let diff: f32 = (grouped.clone() - chunked).abs().max().into_scalar();
            assert_eq!(diff, 0.0, "chunks of {rows} rows");
        }
    }

    #[test]
    fn chunk_ranges_respect_groups() {
        assert_eq!(chunk_ranges(6, 3, 1).len(), 6);
        assert_eq!(chunk_ranges(6, 3, 5), vec![(0, 4), (4, 2)]);
        assert_eq!(chunk_ranges(6, 1, 4), vec![(0, 4), (4, 2)]);
        assert_eq!(chunk_ranges(6, 2, 2), vec![(0, 2), (2, 1), (3, 2), (5, 1)]);
    }

    /// On the CPU the entry point is the reference; a fully masked row averages the values
    /// uniformly (AlphaFold's -1e9 fill), a partly masked one ignores its masked keys.
    #[test]
    fn attention_core_is_the_reference_on_cpu_and_masks_like_alphafold() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let normal =
            |shape: [usize; 4]| Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (
            normal([2, 3, 5, 4]),
            normal([2, 3, 6, 4]),
            normal([2, 3, 6, 4]),
        );
        let bias = normal([1, 3, 5, 6]);
        let mask = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(
                vec![
                    1.0f32, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                ],
                [2, 6],
            ),
            &device,
        );
        assert!(!attention_core_uses_kernel(&q, &k, &v));
        let out = attention_core(
            q.clone(),
            k.clone(),
            v.clone(),
            mask.clone(),
            Some(bias.clone()),
        );
        let reference = attention_core_reference(
            q.clone(),
            k.clone(),
            v.clone(),
            mask.clone(),
            Some(bias.clone()),
        );
        let diff: f32 = (out.clone() - reference).abs().max().into_scalar();
        assert_eq!(diff, 0.0);

        let uniform = v.clone().narrow(0, 1, 1).mean_dim(2).expand([1, 3, 5, 4]);
        let diff: f32 = (out.clone().narrow(0, 1, 1) - uniform)
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-6, "fully masked row: {diff}");

        // Row 0 without its masked keys 2 and 5.
        let keep = |t: Tensor<4>| {
            Tensor::cat(
                vec![t.clone().narrow(2, 0, 2), t.clone().narrow(2, 3, 2)],
                2,
            )
        };
        let bias_kept = Tensor::cat(vec![bias.clone().narrow(3, 0, 2), bias.narrow(3, 3, 2)], 3);
        let unmasked = attention_core_reference(
            q.narrow(0, 0, 1),
            keep(k.narrow(0, 0, 1)),
            keep(v.narrow(0, 0, 1)),
            Tensor::ones([1, 4], &device),
            Some(bias_kept),
        );
        let diff: f32 = (out.narrow(0, 0, 1) - unmasked).abs().max().into_scalar();
        assert!(diff < 1e-6, "partly masked row: {diff}");
    }
}
