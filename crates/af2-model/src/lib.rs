//! The AlphaFold2 monomer model on Burn: embeddings, templates, the extra-MSA stack, the
//! Evoformer, the structure module, the heads and recycling.
//!
//! Model code is backend-agnostic: tensors carry no backend type, and the [`burn::tensor::Device`]
//! chosen at run time picks the backend compiled in by the cargo features (`ndarray`, `flex`,
//! `wgpu`, `vulkan`, `metal`). Widths and depths are read from the weights
//! ([`af2_io::weights::ModelDims`]), so the released parameters and small test parameters load
//! through the same code.

pub mod all_atom;
pub mod binder;
pub mod binder_metrics;
pub mod confidence;
pub mod evoformer;
pub mod extra_msa_stack;
pub mod features;
pub mod heads;
pub mod input_embedder;
pub mod invariant_point_attention;
pub mod model;
pub mod outputs;
pub mod padding;
pub mod pipeline;
pub mod precision;
pub mod predict;
pub mod recycling_embedder;
pub mod residue_constants;
pub mod sidechain;
pub mod structure_module;
pub mod template_embedding;
pub mod template_torsion_embedding;
pub mod weights;
