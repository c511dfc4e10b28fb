//! I/O for AlphaFold2 inference: numpy `.npz` archives, the released haiku weights and their
//! mapping to our native parameter names, inferred model dimensions, our safetensors weight
//! format, and input features.

mod atomic;
pub mod designs;
pub mod error;
pub mod features;
pub mod npz;
pub mod output;
pub mod sequence;
pub mod structure;
pub mod weights;

pub use error::{IoError, LayoutProblem, Result};
pub use npz::{Array, NdArray};
