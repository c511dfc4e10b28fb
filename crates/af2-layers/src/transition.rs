//! Transition layers: the MSA transition (Algorithm 9) and the pair transition (Algorithm 15).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::linear::{Epilogue, matmul_bias_with};
use crate::{LayerNorm, LayerNormConfig, Linear, MAX_LOGITS_PER_CHUNK, linear};

/// Configuration of a [`Transition`].
#[derive(Config, Debug)]
pub struct TransitionConfig {
    /// Input and output channels.
    pub channels: usize,
    /// Hidden channels (channels times AlphaFold's `num_intermediate_factor`).
    pub hidden: usize,
}

/// LayerNorm, a widening linear layer with ReLU, and a projection back.
#[derive(Module, Debug)]
pub struct Transition {
    /// LayerNorm of the input.
    pub input_layer_norm: LayerNorm,
    /// Widening layer.
    pub transition1: Linear,
    /// Projection back.
    pub transition2: Linear,
}

impl TransitionConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> Transition {
        Transition {
            input_layer_norm: LayerNormConfig::new(self.channels).init(device),
            transition1: linear(self.channels, self.hidden, device),
            transition2: linear(self.hidden, self.channels, device),
        }
    }
}

impl Transition {
    /// Returns the update (the residual is added by the caller).
    ///
    /// Rows are processed in chunks so that the widened hidden activation never exceeds
    /// [`MAX_LOGITS_PER_CHUNK`] elements: at L=1024 the pair transition's whole hidden layer
    /// (`[L, L, 4 * 128]`) would be a 2 GiB buffer, over wgpu's buffer limit.
    ///
    /// # Shapes
    /// - x: `[..., channels]`
    /// - output: `[..., channels]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let hidden = self.transition1.weight.dims()[1];
        self.forward_chunked(x, (MAX_LOGITS_PER_CHUNK / hidden.max(1)).max(1))
    }

    /// [`Transition::forward`] on at most `max_rows` rows (all leading axes flattened) at a
    /// time.
    pub fn forward_chunked<const D: usize>(&self, x: Tensor<D>, max_rows: usize) -> Tensor<D> {
        let shape = x.dims();
        let channels = shape[D - 1];
        let rows: usize = shape[..D - 1].iter().product();
        if rows <= max_rows {
            return self.forward_rows(x);
        }
        let flat = x.reshape([rows, channels]);
        let chunks = (0..rows)
            .step_by(max_rows)
            .map(|start| {
                self.forward_rows(flat.clone().narrow(0, start, max_rows.min(rows - start)))
            })
            .collect();
        Tensor::cat(chunks, 0).reshape(shape)
    }

    /// The transition on `x` flattened to rows: the LayerNorm and both linear layers see one
    /// 2-D tensor, and only the two outer reshapes are recorded.
    fn forward_rows<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let shape = x.dims();
        let rows = shape[..D - 1].iter().product();
        let x = self
            .input_layer_norm
            .forward(x.reshape([rows, shape[D - 1]]));
        let relu = Epilogue {
            relu: true,
            ..Epilogue::default()
        };
        let hidden = matmul_bias_with(
            x,
            self.transition1.weight.val(),
            self.transition1.bias.as_ref().map(|b| b.val()),
            relu,
        );
        self.transition2.forward(hidden).reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::Distribution;

    #[test]
    fn chunked_transition_equals_unchunked() {
        #[allow(deprecated)] // ndarray is the CPU reference backend.
        let device = Device::ndarray();
        let mut transition = TransitionConfig::new(4, 8).init(&device);
        let random = |shape: [usize; 2]| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 0.5),
                &device,
            ))
        };
        transition.transition1.weight = random([4, 8]);
        transition.transition2.weight = random([8, 4]);
        let x = Tensor::<3>::random([3, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let whole = transition.forward(x.clone());
        for max_rows in [1, 4, 7, 15] {
            let chunked = transition.forward_chunked(x.clone(), max_rows);
            let diff: f32 = (whole.clone() - chunked).abs().max().into_scalar();
            assert_eq!(diff, 0.0, "chunks of {max_rows} rows");
        }
    }
}
