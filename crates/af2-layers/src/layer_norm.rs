//! Layer normalisation as haiku computes it (two-pass variance, eps 1e-5).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{DType, Device, FloatDType, Tensor};

/// Configuration of a [`LayerNorm`].
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Size of the normalised (last) axis.
    pub d_model: usize,
    /// Added to the variance; haiku's default.
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

/// LayerNorm over the last axis with a learned scale (`gamma`) and offset (`beta`).
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale, haiku `scale`. Shape `[d_model]`.
    pub gamma: Param<Tensor<1>>,
    /// Offset, haiku `offset`. Shape `[d_model]`.
    pub beta: Param<Tensor<1>>,
    epsilon: f64,
}

impl LayerNormConfig {
    /// A LayerNorm with unit scale and zero offset.
    pub fn init(&self, device: &Device) -> LayerNorm {
        LayerNorm {
            gamma: Param::from_tensor(Tensor::ones([self.d_model], device)),
            beta: Param::from_tensor(Tensor::zeros([self.d_model], device)),
            epsilon: self.epsilon,
        }
    }
}

impl LayerNorm {
    /// Normalises the last axis: on a cubecl device (wgpu) one CubeCL kernel
    /// ([`crate::layer_norm_kernel`]; `AF2_LAYER_NORM_KERNEL=0` turns it off), elsewhere
    /// [`LayerNorm::forward_reference`].
    ///
    /// # Shapes
    /// - input: `[..., d_model]`
    /// - output: `[..., d_model]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        #[cfg(feature = "cube")]
        if crate::layer_norm_kernel::kernel_enabled()
            && crate::layer_norm_kernel::kernel_supports(&x)
        {
            return crate::layer_norm_kernel::layer_norm_kernel(
                x,
                self.gamma.val(),
                self.beta.val(),
                self.epsilon as f32,
            );
        }
        self.forward_reference(x)
    }

    /// [`LayerNorm::forward`] of `x`'s columns: a channel-major input read in place where the
    /// columns kernel takes it ([`crate::layer_norm_kernel::try_layer_norm_channel_major`]),
    /// else [`LayerNorm::forward`] of its transposed view (copied into rows on the CPU
    /// backends; the GPU's row kernel reads the strided view, slower).
    ///
    /// # Shapes
    /// - input: `[d_model, R]`
    /// - output: `[R, d_model]`
    pub fn forward_channel_major(&self, x: Tensor<2>) -> Tensor<2> {
        #[cfg(feature = "cube")]
        if let Some(out) = crate::layer_norm_kernel::try_layer_norm_channel_major(
            &x,
            &self.gamma.val(),
            &self.beta.val(),
            self.epsilon as f32,
        ) {
            return out;
        }
        let [d, rows] = x.dims();
        self.forward(x.transpose().reshape([rows, d]))
    }

    /// The normalised pairs and the attention's pair bias from them (the bias of the triangle
    /// attention, [`crate::msa_row_attention::pair_bias`] of the output): on a cubecl device
    /// one pass of the LayerNorm kernel, which projects each row as it normalises it
    /// (`AF2_FUSED_PAIR_BIAS=0` turns that off), else the two in turn.
    ///
    /// # Shapes
    /// - pairs: `[B, Q, K, d_model]`, weights: `[d_model, H]`
    /// - output: `[B, Q, K, d_model]` and `[B, H, Q, K]`
    pub fn forward_with_pair_bias(
        &self,
        pairs: Tensor<4>,
        weights: Tensor<2>,
    ) -> (Tensor<4>, Tensor<4>) {
        #[cfg(feature = "cube")]
        if let Some((Some(normed), bias)) = self.fused_pair_bias(&pairs, &weights, true) {
            return (normed, bias);
        }
        let normed = self.forward(pairs);
        let bias = crate::msa_row_attention::pair_bias(normed.clone(), weights);
        (normed, bias)
    }

    /// The pair bias of [`LayerNorm::forward_with_pair_bias`] alone, where the normalised pairs
    /// are needed for nothing else (the MSA row attention): on the kernel they are not
    /// written.
    ///
    /// # Shapes
    /// - pairs: `[B, Q, K, d_model]`, weights: `[d_model, H]`
    /// - output: `[B, H, Q, K]`
    pub fn pair_bias(&self, pairs: Tensor<4>, weights: Tensor<2>) -> Tensor<4> {
        #[cfg(feature = "cube")]
        if let Some((_, bias)) = self.fused_pair_bias(&pairs, &weights, false) {
            return bias;
        }
        crate::msa_row_attention::pair_bias(self.forward(pairs), weights)
    }

    #[cfg(feature = "cube")]
    fn fused_pair_bias(
        &self,
        pairs: &Tensor<4>,
        weights: &Tensor<2>,
        normalised: bool,
    ) -> Option<(Option<Tensor<4>>, Tensor<4>)> {
        crate::layer_norm_kernel::try_layer_norm_with_pair_bias(
            pairs,
            &self.gamma.val(),
            &self.beta.val(),
            self.epsilon as f32,
            weights,
            normalised,
        )
    }

    /// The LayerNorm in Burn tensor operations: the reference for the kernel, and the path on
    /// the CPU backends.
    ///
    /// # Shapes
    /// - input: `[..., d_model]`
    /// - output: `[..., d_model]`
    pub fn forward_reference<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        if dtype == DType::F32 {
            return self.forward_f32(x);
        }
        // Half precision: squares of activations in the hundreds overflow f16, so the
        // statistics are taken in f32 and only the result is rounded back.
        self.forward_f32(x.cast(FloatDType::F32)).cast(dtype)
    }

    fn forward_f32<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        // Two-pass variance, as jnp.var: mean of squared deviations from the mean.
        let variance = centered.clone().square().mean_dim(D - 1);
        let inv_std = (variance + self.epsilon).sqrt().recip();
        let scale = self.gamma.val().cast(FloatDType::F32).unsqueeze::<D>();
        let offset = self.beta.val().cast(FloatDType::F32).unsqueeze::<D>();
        centered * inv_std * scale + offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn normalises_to_zero_mean_unit_variance() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let norm = LayerNormConfig::new(4).init(&device);
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, -1.0, 0.0, 0.0, 1.0], [2, 4]),
            &device,
        );
        let y: Vec<f32> = norm.forward(x).into_data().try_to_vec::<f32>().unwrap();
        // Row 0: mean 2.5, variance 1.25.
        let expected0 = [-1.5f32, -0.5, 0.5, 1.5].map(|d| d / (1.25f32 + 1e-5).sqrt());
        for (a, b) in y[..4].iter().zip(expected0) {
            approx::assert_abs_diff_eq!(*a, b, epsilon = 1e-6);
        }
        let row1_mean: f32 = y[4..].iter().sum::<f32>() / 4.0;
        approx::assert_abs_diff_eq!(row1_mean, 0.0, epsilon = 1e-6);
    }
}
