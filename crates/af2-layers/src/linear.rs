//! Linear layers in haiku layout: Burn's `Linear` already stores its weight as `[in, out]`.

use burn::nn::{Initializer, LinearConfig};
use burn::tensor::Device;

pub use burn::nn::Linear;

/// A linear layer `[d_input] -> [d_output]` with a bias, zero-initialised (weights are loaded).
pub fn linear(d_input: usize, d_output: usize, device: &Device) -> Linear {
    LinearConfig::new(d_input, d_output)
        .with_initializer(Initializer::Zeros)
        .init(device)
}
