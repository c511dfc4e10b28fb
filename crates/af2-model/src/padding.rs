//! Residue padding: a prediction's length rounded up to a multiple that the GPU kernels take on
//! their aligned paths, the added residues masked out (`seq_mask`, MSA and template masks 0, as
//! AlphaFold's own fixed-size padding), and the outputs cut back to the real residues.
//!
//! Masked residues change nothing for the real ones: every attention gives their keys AlphaFold's
//! -1e9 logit, the triangle multiplications multiply their edges by a zero mask, the outer
//! product mean counts only unmasked pairs, and the invariant point attention subtracts 1e5
//! from their logits. The one departure from AlphaFold's arithmetic is for the added residues'
//! own pairs: no MSA row covers them, and the outer product mean divides them by at least 1
//! rather than 1e-3 (`OuterProductMean::pair_counts_masked`), which keeps them inside f16's
//! range. What differs for the real residues is the order of float sums: the parity tests run the oracle
//! fixtures padded (`tests/parity.rs`), and `model::tests` batches designs of different lengths
//! against each alone. A residue masked in its own input (`seq_mask` 0) is not covered: its
//! fully masked attention rows average every key, the added ones too, as AlphaFold's do.

use std::borrow::Cow;

use burn::tensor::{Device, Tensor};

use af2_io::npz::NdArray;

use crate::features::{Features, TemplateFeatures};
use crate::heads::HeadLogits;
use crate::model::IterationOutput;
use crate::structure_module::StructureOutput;

/// The residue multiple on a GPU: the tensor-core triangle sums need lengths that are multiples
/// of 8 (a 250-residue block ran 7% slower than a 256-residue one on an H200,
/// docs/PERFORMANCE.md, twenty-second session).
pub const GPU_RESIDUE_MULTIPLE: usize = 8;

/// The multiple residue counts are padded to on `device`: `AF2_PAD_RESIDUES` when set to a
/// number (0 or 1: no padding), else [`GPU_RESIDUE_MULTIPLE`] on a GPU and 1 (no padding, the
/// exact reference computation) on the CPU.
pub fn residue_multiple(device: &Device) -> usize {
    static OVERRIDE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let chosen = *OVERRIDE.get_or_init(|| {
        std::env::var("AF2_PAD_RESIDUES")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    chosen.unwrap_or_else(|| {
        if on_gpu(device) {
            GPU_RESIDUE_MULTIPLE
        } else {
            1
        }
    })
}

fn on_gpu(device: &Device) -> bool {
    #[cfg(feature = "wgpu")]
    return af2_layers::copy_into::supported(device);
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = device;
        false
    }
}

/// `n` rounded up to a multiple of `multiple` (0 and 1: `n` itself).
pub fn padded_length(n: usize, multiple: usize) -> usize {
    n.div_ceil(multiple.max(1)) * multiple.max(1)
}

/// `array` with axis `axis` extended to `len` by `fill` (the axis's existing values first).
///
/// # Panics
/// If `len` is shorter than the axis.
pub fn pad_axis<T: Clone>(array: &NdArray<T>, axis: usize, len: usize, fill: T) -> NdArray<T> {
    let old = array.shape[axis];
    assert!(len >= old, "padding axis {axis} of {old} to {len}");
    let outer: usize = array.shape[..axis].iter().product();
    let inner: usize = array.shape[axis + 1..].iter().product();
    let mut shape = array.shape.clone();
    shape[axis] = len;
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        data.extend_from_slice(&array.data[o * old * inner..(o + 1) * old * inner]);
        data.extend(std::iter::repeat_n(fill.clone(), (len - old) * inner));
    }
    NdArray { shape, data }
}

impl Features {
    /// These features with masked residues appended up to `n` (unchanged, borrowed, when they
    /// have `n` already): residue type 0 and zeros in every feature and mask, residue numbers
    /// counting on.
    ///
    /// # Panics
    /// If the features have more than `n` residues.
    pub fn padded_to(&self, n: usize) -> Cow<'_, Features> {
        if self.num_residues() == n {
            return Cow::Borrowed(self);
        }
        let len = self.num_residues();
        assert!(n >= len, "padding {len} residues to {n}");
        let mut aatype = self.aatype.clone();
        aatype.resize(n, 0);
        let next = self.residue_index.last().map_or(0, |&r| r + 1);
        let added = next..next + (n - len) as i64;
        Cow::Owned(Features {
            aatype,
            residue_index: self.residue_index.iter().copied().chain(added).collect(),
            seq_mask: pad_axis(&self.seq_mask, 0, n, 0.0),
            target_feat: pad_axis(&self.target_feat, 0, n, 0.0),
            msa_feat: pad_axis(&self.msa_feat, 1, n, 0.0),
            msa_mask: pad_axis(&self.msa_mask, 1, n, 0.0),
            extra_feat: pad_axis(&self.extra_feat, 1, n, 0.0),
            extra_msa_mask: pad_axis(&self.extra_msa_mask, 1, n, 0.0),
            templates: self.templates.as_ref().map(|t| TemplateFeatures {
                aatype: pad_axis(&t.aatype, 1, n, 0),
                all_atom_positions: pad_axis(&t.all_atom_positions, 1, n, 0.0),
                all_atom_masks: pad_axis(&t.all_atom_masks, 1, n, 0.0),
                mask: t.mask.clone(),
                pseudo_beta: pad_axis(&t.pseudo_beta, 1, n, 0.0),
                pseudo_beta_mask: pad_axis(&t.pseudo_beta_mask, 1, n, 0.0),
            }),
        })
    }
}

/// The first `n` entries of axis `axis` (a view).
fn cut<const D: usize>(t: &Tensor<D>, axis: usize, n: usize) -> Tensor<D> {
    t.clone().narrow(axis, 0, n)
}

/// The first `n` entries of the two leading (residue-pair) axes.
fn cut_pairs(t: &Tensor<3>, n: usize) -> Tensor<3> {
    cut(&cut(t, 0, n), 1, n)
}

impl StructureOutput {
    /// The outputs of the first `n` residues (views).
    pub fn first_residues(&self, n: usize) -> StructureOutput {
        StructureOutput {
            affines: cut(&self.affines, 1, n),
            angles_sin_cos: cut(&self.angles_sin_cos, 1, n),
            unnormalized_angles_sin_cos: cut(&self.unnormalized_angles_sin_cos, 1, n),
            sidechain_frames: cut(&self.sidechain_frames, 1, n),
            atom14: cut(&self.atom14, 1, n),
            final_atom14: cut(&self.final_atom14, 0, n),
            final_atom37: cut(&self.final_atom37, 0, n),
            final_atom37_mask: cut(&self.final_atom37_mask, 0, n),
            act: cut(&self.act, 0, n),
        }
    }
}

impl HeadLogits {
    /// The logits of the first `n` residues (views).
    pub fn first_residues(&self, n: usize) -> HeadLogits {
        HeadLogits {
            plddt: cut(&self.plddt, 0, n),
            pae: self.pae.as_ref().map(|p| cut_pairs(p, n)),
            distogram: cut_pairs(&self.distogram, n),
            masked_msa: cut(&self.masked_msa, 1, n),
            experimentally_resolved: cut(&self.experimentally_resolved, 0, n),
        }
    }
}

impl IterationOutput {
    /// The outputs of the first `n` residues (views): a padded prediction's own outputs.
    pub fn first_residues(&self, n: usize) -> IterationOutput {
        if self.single.dims()[0] == n {
            return self.clone();
        }
        IterationOutput {
            msa: cut(&self.msa, 1, n),
            pair: cut_pairs(&self.pair, n),
            single: cut(&self.single, 0, n),
            structure: self.structure.first_residues(n),
            logits: self.logits.first_residues(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::benchmark_features;

    #[test]
    fn lengths_round_up_to_the_multiple() {
        assert_eq!(padded_length(250, 8), 256);
        assert_eq!(padded_length(256, 8), 256);
        assert_eq!(padded_length(1, 8), 8);
        assert_eq!(padded_length(250, 1), 250);
        assert_eq!(padded_length(250, 0), 250);
    }

    #[test]
    fn pad_axis_appends_fill_along_the_axis() {
        let a = NdArray {
            shape: vec![2, 2, 3],
            data: (0..12).collect::<Vec<i64>>(),
        };
        let p = pad_axis(&a, 1, 3, -1);
        assert_eq!(p.shape, vec![2, 3, 3]);
        assert_eq!(
            p.data,
            vec![0, 1, 2, 3, 4, 5, -1, -1, -1, 6, 7, 8, 9, 10, 11, -1, -1, -1]
        );
        assert_eq!(pad_axis(&a, 2, 4, 0).data[..8], [0, 1, 2, 0, 3, 4, 5, 0]);
    }

    #[test]
    fn padded_features_mask_the_added_residues() {
        let f = benchmark_features(5);
        assert!(matches!(f.padded_to(5), Cow::Borrowed(_)));
        let p = f.padded_to(8).into_owned();
        assert_eq!(p.num_residues(), 8);
        assert_eq!(p.seq_mask.data, [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(p.msa_mask.data[5..], [0.0; 3]);
        assert_eq!(p.residue_index, (0..8).collect::<Vec<i64>>());
        assert_eq!(p.aatype[..5], f.aatype[..]);
        assert_eq!(p.msa_feat.shape, vec![1, 8, 49]);
        assert_eq!(p.msa_feat.data[..5 * 49], f.msa_feat.data[..]);
        assert!(p.msa_feat.data[5 * 49..].iter().all(|&v| v == 0.0));
        let t = p.templates.expect("templates");
        assert_eq!(t.pseudo_beta_mask.data[5..], [0.0; 3]);
        assert!(t.all_atom_masks.data[5 * 37..].iter().all(|&v| v == 0.0));
        assert_eq!(t.mask.data, [1.0]);
    }
}
