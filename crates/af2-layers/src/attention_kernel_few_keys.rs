//! The attention core for heads of a few keys (feature `cube`): one unit a query row, every
//! logit in registers, no shared memory. The MSA column attention of a shallow MSA attends over
//! the MSA's rows (2 for a single-sequence design with one template: the sequence and the
//! template's torsion row), where the cube-per-query-tile kernels leave almost every unit idle:
//! on an H100 the scalar kernel took 36 µs for that layer's 4,096 query rows of 2 keys at L=256
//! (CubeCL profiler, docs/PERFORMANCE.md).
//!
//! Same arithmetic as the other kernels: scores in f32 from the inputs' dtype, a masked key's
//! logit replaced by -1e9 (AlphaFold's value: a fully masked row averages its values
//! uniformly), the softmax and the weighted sum of values in f32, rounded once to the output.

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use crate::attention_kernel::{address_type, cube_count, query_major_output};
use kernel::few_keys_kernel;

/// The most keys a head may have for this kernel.
pub const FEW_KEYS: usize = 16;
/// Units per cube, one query row each.
const UNITS: usize = 128;

static LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times this kernel has run in this process (for tests that need to know which path
/// ran).
pub fn few_keys_launches() -> usize {
    LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// `softmax(q kᵀ, masked) v` `[B, H, Q, Cv]` on this kernel where the heads have at most
/// [`FEW_KEYS`] keys and no bias, else `None`. Inputs are read through their strides.
pub(crate) fn try_launch(
    q: &CubeTensor,
    k: &CubeTensor,
    v: &CubeTensor,
    key_mask: &CubeTensor,
    bias: Option<&CubeTensor>,
) -> Option<CubeTensor> {
    let shape = q.meta.shape();
    let (b, h, q_len, c) = (shape[0], shape[1], shape[2], shape[3]);
    let (k_len, cv) = (k.meta.shape()[2], v.meta.shape()[3]);
    if bias.is_some() || k_len > FEW_KEYS || disabled() {
        return None;
    }
    let out = query_major_output(q, [b, h, q_len, cv]);
    let rows = b * h * q_len;
    LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client = q.client.clone();
    let address = address_type([q, k, v, key_mask, &out]);
    let dtypes = [
        dtype_to_storage_type(q.dtype),
        dtype_to_storage_type(key_mask.dtype),
    ];
    // SAFETY: the shapes were checked by the caller (`check_shapes`: q, k, v of one batch and
    // head count, a `[B or 1, K]` mask); every read goes through the tensors' own strides inside
    // their shapes, and units past `rows` touch nothing.
    unsafe {
        few_keys_kernel::launch_unchecked(
            &client,
            cube_count(rows.div_ceil(UNITS)),
            CubeDim::new_1d(UNITS as u32),
            address,
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            key_mask.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            c,
            cv,
            dtypes,
        );
    }
    Some(out)
}

/// Whether `AF2_FEW_KEYS=0` turned the kernel off (the other kernels then take such heads).
fn disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| std::env::var("AF2_FEW_KEYS").is_ok_and(|value| value.trim() == "0"))
}

mod kernel {
    use super::{FEW_KEYS, UNITS};
    use crate::attention_kernel::kernel::{key_mask_base, masked_key_logit};
    use cubecl::prelude::*;

    /// Unit `CUBE_POS * UNITS + UNIT_POS` computes query row `row = (b * H + h) * Q + i`.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch_unchecked, address_type = "dynamic")]
    pub(super) fn few_keys_kernel<F: Float, M: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        key_mask: &Tensor<M>,
        out: &mut Tensor<F>,
        rows: usize,
        #[comptime] c_dim: usize,
        #[comptime] cv_dim: usize,
        #[define(F, M)] _dtypes: [ElemType; 2],
    ) {
        let row = CUBE_POS * UNITS + UNIT_POS as usize;
        if row < rows {
            let (heads, q_len, k_len) = (q.shape(1), q.shape(2), k.shape(2));
            let i = row % q_len;
            let h = (row / q_len) % heads;
            let b = row / (q_len * heads);
            let q_at = b * q.stride(0) + h * q.stride(1) + i * q.stride(2);
            let k_at = b * k.stride(0) + h * k.stride(1);
            let v_at = b * v.stride(0) + h * v.stride(1);
            let mask_base = key_mask_base(key_mask, b);

            let mut query = Array::<f32>::new(c_dim);
            #[unroll]
            for ch in 0..c_dim {
                query[ch] = f32::cast_from(q[q_at + ch * q.stride(3)]);
            }
            // Logits (past K: -3e38, weight 0) and their max.
            let mut logits = Array::<f32>::new(FEW_KEYS);
            let mut max = f32::new(-3.0e38);
            #[unroll]
            for key in 0..FEW_KEYS {
                let fill = masked_key_logit(key_mask, mask_base, key, k_len);
                let mut logit = fill;
                if fill == 0.0f32 {
                    let at = k_at + key * k.stride(2);
                    let mut dot = f32::new(0.0);
                    #[unroll]
                    for ch in 0..c_dim {
                        dot += query[ch] * f32::cast_from(k[at + ch * k.stride(3)]);
                    }
                    logit = dot;
                }
                logits[key] = logit;
                max = max.max(logit);
            }
            let mut sum = f32::new(0.0);
            let mut acc = Array::<f32>::new(cv_dim);
            #[unroll]
            for ch in 0..cv_dim {
                acc[ch] = 0.0f32;
            }
            #[unroll]
            for key in 0..FEW_KEYS {
                if key < k_len {
                    let weight = (logits[key] - max).exp();
                    sum += weight;
                    let at = v_at + key * v.stride(2);
                    #[unroll]
                    for ch in 0..cv_dim {
                        acc[ch] += weight * f32::cast_from(v[at + ch * v.stride(3)]);
                    }
                }
            }
            let o_at = b * out.stride(0) + h * out.stride(1) + i * out.stride(2);
            let o_stride = out.stride(3);
            #[unroll]
            for ch in 0..cv_dim {
                out[o_at + ch * o_stride] = F::cast_from(acc[ch] / sum);
            }
        }
    }
}
