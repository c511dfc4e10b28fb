//! Transition layers: the MSA transition (Algorithm 9) and the pair transition (Algorithm 15).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::{LayerNorm, LayerNormConfig, Linear, linear};

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
    /// # Shapes
    /// - x: `[..., channels]`
    /// - output: `[..., channels]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = self.input_layer_norm.forward(x);
        self.transition2.forward(relu(self.transition1.forward(x)))
    }
}
