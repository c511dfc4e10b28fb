//! AlphaFold2 building blocks on Burn.
//!
//! Every module stores its parameters in AlphaFold's (haiku) layout: linear weights are
//! `[in, out]`, attention projections `[c, heads, head_dim]`. LayerNorm parameters are named
//! `gamma`/`beta` (haiku's `scale`/`offset`); the one mapping table from haiku names lives in
//! `af2-io`.
//!
//! Modules named after an algorithm of the AlphaFold2 supplement (Jumper et al. 2021) cite its
//! number in their doc comment.

pub mod activation;
pub mod attention;
#[cfg(feature = "cube")]
pub mod attention_kernel;
#[cfg(feature = "cube")]
pub mod attention_kernel_few_keys;
#[cfg(feature = "cube")]
pub mod attention_kernel_mma;
#[cfg(feature = "cube")]
pub mod batched_matmul_kernel;
#[cfg(feature = "cube")]
pub mod copy_into;
pub mod derived;
pub mod global_attention;
pub mod layer_norm;
#[cfg(feature = "cube")]
pub mod layer_norm_kernel;
pub mod linear;
#[cfg(feature = "cube")]
pub mod linear_kernel;
pub mod msa_column_attention;
pub mod msa_column_global_attention;
pub mod msa_row_attention;
pub mod outer_product_mean;
#[cfg(feature = "cube")]
pub mod point_logits_kernel;
#[cfg(feature = "cube")]
pub mod split_k_linear;
pub mod transition;
pub mod triangle_attention;
pub mod triangle_multiplication;

pub use activation::sigmoid;
pub use attention::{GatedAttention, GatedAttentionConfig};
pub use global_attention::{GlobalAttention, GlobalAttentionConfig};
pub use layer_norm::{LayerNorm, LayerNormConfig};
pub use linear::{Linear, linear};
pub use msa_column_attention::{MsaColumnAttention, MsaColumnAttentionConfig};
pub use msa_column_global_attention::{MsaColumnGlobalAttention, MsaColumnGlobalAttentionConfig};
pub use msa_row_attention::{MsaRowAttentionWithPairBias, MsaRowAttentionWithPairBiasConfig};
pub use outer_product_mean::{OuterProductMean, OuterProductMeanConfig};
pub use transition::{Transition, TransitionConfig};
pub use triangle_attention::{TriangleAttention, TriangleAttentionConfig};
pub use triangle_multiplication::{
    TriangleDirection, TriangleMultiplication, TriangleMultiplicationConfig,
};

/// Logit given to masked keys before the softmax, as AlphaFold 2.3.2's `jnp.where(mask, logits, -1e9)`.
pub const SOFTMAX_MASK: f32 = -1e9;

/// The masked-key logit for logits of `dtype`: [`SOFTMAX_MASK`], except in f16, whose range
/// ends at 65504: there -1e9 would round to -inf and a fully masked row would give NaN instead
/// of AlphaFold's uniform weights. `exp(-65504 - max)` is still exactly 0.
pub fn softmax_mask(dtype: burn::tensor::DType) -> f32 {
    if dtype == burn::tensor::DType::F16 {
        -65504.0
    } else {
        SOFTMAX_MASK
    }
}

/// Attention logits above this many elements are computed in chunks along the batch axis,
/// as AlphaFold's `inference_subbatch` does, so no `[B, H, Q, K]` buffer grows without bound.
pub const MAX_LOGITS_PER_CHUNK: usize = 1 << 26;

/// The device's name as its driver reports it (say `NVIDIA H200`), for benchmark reports;
/// `None` on the CPU backends, and always without the `cube` feature.
pub fn device_name(device: &burn::tensor::Device) -> Option<String> {
    #[cfg(feature = "cube")]
    if let Some(name) = with_cube_properties(device, |props| props.identity.name.clone()) {
        return (!name.is_empty()).then_some(name);
    }
    let _ = device;
    None
}

/// The GPU device for tests that need one, or `None` (after saying the test was skipped) when
/// `AF2_GPU_TESTS` is unset: Vulkan with the `vulkan` feature, else wgpu's default.
#[cfg(feature = "cube")]
#[doc(hidden)]
pub fn gpu_for_tests() -> Option<burn::tensor::Device> {
    if std::env::var_os("AF2_GPU_TESTS").is_none() {
        eprintln!("skipped: set AF2_GPU_TESTS=1 to run the GPU tests");
        return None;
    }
    #[cfg(feature = "vulkan")]
    let device = burn::tensor::Device::vulkan(Default::default());
    #[cfg(not(feature = "vulkan"))]
    let device = burn::tensor::Device::wgpu(Default::default());
    Some(device)
}

/// `f` of a cubecl device's properties; `None` for other devices.
#[cfg(feature = "cube")]
pub(crate) fn with_cube_properties<T>(
    device: &burn::tensor::Device,
    f: impl FnOnce(&cubecl::prelude::DeviceProperties) -> T,
) -> Option<T> {
    #[allow(irrefutable_let_patterns)] // Only cubecl backends in some builds.
    let burn::backend::DispatchDevice::Cube(cube) = device.as_dispatch() else {
        return None;
    };
    Some(f(cube.client().properties()))
}

/// One line on a cubecl device's matrix instructions, for benchmark headers: the plane-scope
/// configurations (what the kernels use), the cube-scope ones (`VK_NV_cooperative_matrix2` on
/// Vulkan) and whether tensor-addressed loads are offered, and the shared memory a cube may
/// declare. `None` for other devices.
#[cfg(feature = "cube")]
pub fn describe_matrix_features(device: &burn::tensor::Device) -> Option<String> {
    with_cube_properties(device, |props| {
        use cubecl::ir::{ElemType, FloatKind};
        let matmul = &props.features.matmul;
        let f16 = ElemType::Float(FloatKind::F16);
        let f32 = ElemType::Float(FloatKind::F32);
        let cube_f16 = matmul
            .cube_mma
            .iter()
            .find(|config| config.a_type == f16 && config.cd_type == f32)
            .map_or(String::new(), |c| {
                format!(
                    " (f16 -> f32: granularity {}x{}x{}, at most {}, {:?} units)",
                    c.m_granularity, c.n_granularity, c.k_granularity, c.m_max, c.units_per_block
                )
            });
        format!(
            "plane-scope MMA configurations {}, cube-scope {}{cube_f16}, tensor addressing {}, shared memory {} KiB a cube",
            matmul.cmma.len(),
            matmul.cube_mma.len(),
            if matmul.cmma_tensor_addressing {
                "yes"
            } else {
                "no"
            },
            props.hardware.max_shared_memory_size / 1024
        )
    })
}
