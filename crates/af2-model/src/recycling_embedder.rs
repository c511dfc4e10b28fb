//! Embedding of the previous iteration's outputs (Algorithm 32).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Float, Tensor, TensorData};

use af2_geometry::constant;
use af2_layers::{LayerNorm, LayerNormConfig, Linear, linear};

/// Distogram bins of the recycled pseudo-beta positions.
pub const RECYCLE_BINS: usize = 15;
/// Left edge of the first recycling bin (Å).
pub const RECYCLE_MIN_BIN: f32 = 3.25;
/// Left edge of the last recycling bin (Å).
pub const RECYCLE_MAX_BIN: f32 = 20.75;

/// Configuration of [`RecyclingEmbedder`].
#[derive(Config, Debug)]
pub struct RecyclingEmbedderConfig {
    /// MSA channels.
    pub msa_channels: usize,
    /// Pair channels.
    pub pair_channels: usize,
}

/// Adds the recycled first MSA row, pair and pseudo-beta distogram.
#[derive(Module, Debug)]
pub struct RecyclingEmbedder {
    /// Distogram to pair channels.
    pub prev_pos_linear: Linear,
    /// LayerNorm of the previous first MSA row.
    pub prev_msa_first_row_norm: LayerNorm,
    /// LayerNorm of the previous pair.
    pub prev_pair_norm: LayerNorm,
}

impl RecyclingEmbedderConfig {
    /// Zero-initialised module.
    pub fn init(&self, device: &Device) -> RecyclingEmbedder {
        RecyclingEmbedder {
            prev_pos_linear: linear(RECYCLE_BINS, self.pair_channels, device),
            prev_msa_first_row_norm: LayerNormConfig::new(self.msa_channels).init(device),
            prev_pair_norm: LayerNormConfig::new(self.pair_channels).init(device),
        }
    }
}

/// Hard-binned distogram of positions, as AlphaFold's `dgram_from_positions`: a pair falls in
/// bin b when `lower_b^2 < d^2 < upper_b^2`, the last bin open-ended (upper 1e8).
///
/// # Shapes
/// - positions: `[B, N, 3]` -> `[B, N, N, num_bins]`
pub fn dgram_from_positions(
    positions: Tensor<3>,
    num_bins: usize,
    min_bin: f32,
    max_bin: f32,
) -> Tensor<4> {
    let [b, n, _] = positions.dims();
    let device = positions.device();
    let (min_bin, max_bin) = (f64::from(min_bin), f64::from(max_bin));
    let lower: Vec<f32> = (0..num_bins)
        .map(|b| {
            let edge = (min_bin + (max_bin - min_bin) * b as f64 / (num_bins - 1) as f64) as f32;
            edge * edge
        })
        .collect();
    let upper: Vec<f32> = lower[1..].iter().copied().chain([1e8f32]).collect();
    let as_bins = |name: &str, v: Vec<f32>| {
        let name = format!("recycling distogram {name} edges {min_bin} {max_bin}");
        constant::<1, Float>(&name, [num_bins], &device, || {
            TensorData::new(v, [num_bins])
        })
        .reshape([1, 1, 1, num_bins])
        .expand([b, n, n, num_bins])
    };
    let diff = positions.clone().unsqueeze_dim::<4>(2) - positions.unsqueeze_dim::<4>(1);
    let dist2 = diff.square().sum_dim(3).expand([b, n, n, num_bins]);
    let above = dist2.clone().greater(as_bins("lower", lower)).float();
    let below = dist2.lower(as_bins("upper", upper)).float();
    above * below
}

impl RecyclingEmbedder {
    /// Returns the updates to the first MSA row and to the pair of each design of a batch.
    ///
    /// # Shapes
    /// - prev_msa_first_row: `[B, N, c_m]`, prev_pair: `[B, N, N, c_z]`,
    ///   prev_pseudo_beta: `[B, N, 3]`
    /// - returns `(first_row_update [B, N, c_m], pair_update [B, N, N, c_z])`
    pub fn forward(
        &self,
        prev_msa_first_row: Tensor<3>,
        prev_pair: Tensor<4>,
        prev_pseudo_beta: Tensor<3>,
    ) -> (Tensor<3>, Tensor<4>) {
        let dgram = dgram_from_positions(
            prev_pseudo_beta,
            RECYCLE_BINS,
            RECYCLE_MIN_BIN,
            RECYCLE_MAX_BIN,
        );
        let pair_update =
            self.prev_pos_linear.forward(dgram) + self.prev_pair_norm.forward(prev_pair);
        let row_update = self.prev_msa_first_row_norm.forward(prev_msa_first_row);
        (row_update, pair_update)
    }
}
