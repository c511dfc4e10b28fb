//! Transition layers: the MSA transition (Algorithm 9) and the pair transition (Algorithm 15).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::linear::{Epilogue, matmul_bias_with};
use crate::{LayerNorm, LayerNormConfig, Linear, linear};

/// The largest hidden activation a transition computes at once: 512 MiB, the pair
/// transition's whole hidden layer for 8 designs of 256 residues in f16 (`[8 · 256², 512]`),
/// under wgpu's buffer limit (a 2 GiB buffer failed on the H100). Chunked there, the chunks'
/// outputs had to be joined by a copy of the pair (0.10 ms an Evoformer block at L=256 B=8 on
/// an H200, 1% of it; docs/PERFORMANCE.md, twenty-third session).
pub const MAX_HIDDEN_BYTES: usize = 1 << 29;

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
    /// [`MAX_HIDDEN_BYTES`]: at L=1024 the pair transition's whole hidden layer (`[L, L, 4 *
    /// 128]`, f32) would be a 2 GiB buffer, over wgpu's buffer limit.
    ///
    /// # Shapes
    /// - x: `[..., channels]`
    /// - output: `[..., channels]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let max_rows = self.max_rows(&x);
        self.forward_chunked(x, max_rows, false)
    }

    /// `x + self.forward(x)`, the residual added in the projection back's output stage where the
    /// linear kernel takes it (one pass over the output fewer).
    ///
    /// # Shapes
    /// - x: `[..., channels]`
    /// - output: `[..., channels]`
    pub fn forward_residual<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let max_rows = self.max_rows(&x);
        self.forward_chunked(x, max_rows, true)
    }

    /// Rows per chunk: a hidden activation of at most [`MAX_HIDDEN_BYTES`].
    fn max_rows<const D: usize>(&self, x: &Tensor<D>) -> usize {
        let hidden = self.transition1.weight.dims()[1];
        (MAX_HIDDEN_BYTES / (hidden * x.dtype().size()).max(1)).max(1)
    }

    /// [`Transition::forward`] (with `residual`, [`Transition::forward_residual`]) on at most
    /// `max_rows` rows (all leading axes flattened) at a time.
    pub fn forward_chunked<const D: usize>(
        &self,
        x: Tensor<D>,
        max_rows: usize,
        residual: bool,
    ) -> Tensor<D> {
        let shape = x.dims();
        let channels = shape[D - 1];
        let rows: usize = shape[..D - 1].iter().product();
        let flat = x.reshape([rows, channels]);
        let out = if rows <= max_rows {
            self.forward_rows(flat, residual)
        } else {
            let chunks = (0..rows)
                .step_by(max_rows)
                .map(|start| {
                    let chunk = flat.clone().narrow(0, start, max_rows.min(rows - start));
                    self.forward_rows(chunk, residual)
                })
                .collect();
            Tensor::cat(chunks, 0)
        };
        out.reshape(shape)
    }

    /// The transition on rows: the LayerNorm and both linear layers see one 2-D tensor.
    fn forward_rows(&self, x: Tensor<2>, residual: bool) -> Tensor<2> {
        let normed = self.input_layer_norm.forward(x.clone());
        let relu = Epilogue {
            relu: true,
            ..Epilogue::default()
        };
        let hidden = matmul_bias_with(
            normed,
            self.transition1.weight.val(),
            self.transition1.bias.as_ref().map(|b| b.val()),
            relu,
        );
        let back = Epilogue {
            residual: residual.then_some(x),
            ..Epilogue::default()
        };
        matmul_bias_with(
            hidden,
            self.transition2.weight.val(),
            self.transition2.bias.as_ref().map(|b| b.val()),
            back,
        )
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
        let with_residual = transition.forward_residual(x.clone());
        let diff: f32 = (x.clone() + whole.clone() - with_residual.clone())
            .abs()
            .max()
            .into_scalar();
        assert_eq!(diff, 0.0, "forward_residual is x + forward");
        for max_rows in [1, 4, 7, 15] {
            let chunked = transition.forward_chunked(x.clone(), max_rows, false);
            let diff: f32 = (whole.clone() - chunked).abs().max().into_scalar();
            assert_eq!(diff, 0.0, "chunks of {max_rows} rows");
            let chunked = transition.forward_chunked(x.clone(), max_rows, true);
            let diff: f32 = (with_residual.clone() - chunked).abs().max().into_scalar();
            assert_eq!(diff, 0.0, "chunks of {max_rows} rows with the residual");
        }
    }
}
