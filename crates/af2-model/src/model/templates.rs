//! The template inputs of a batch (pair features, torsion rows), and the memo that keeps
//! their embeddings from one pass of the recycling loop to the next.

use burn::tensor::{Device, Tensor, TensorData};

use af2_io::npz::NdArray;

use super::{ATOM_C, ATOM_CA, ATOM_N, one_hot_rows};
use crate::all_atom::atom37_to_torsion_angles;
use crate::features::{BatchFeatures, TemplateFeatures, to_int_tensor};
use crate::template_embedding::TemplateInputs;

/// The template embeddings of the last pass and the inputs they came from.
///
/// In the monomer model neither the template pair stack (Algorithm 16) nor the template
/// torsion rows see the recycled state: they depend on the template features, the sequence
/// mask and the template pair mask only. A pass whose designs have the same templates and
/// sequence masks as the last pass's reuses them; the recycling loop gives every pass the same
/// templates, so the stack runs once a prediction instead of once a pass. One memo serves one
/// recycling loop (one model, one template pair mask). A stack output larger than
/// [`MAX_KEPT_ELEMENTS`] is not kept: holding it through the Evoformer would raise the peak
/// memory of long sequences, where the stack is a small part of the pass anyway.
pub(super) struct TemplateMemo {
    /// Each design's templates and sequence mask, as of the kept embeddings.
    inputs: Vec<(TemplateFeatures, NdArray<f32>)>,
    /// The template stack's output, the pointwise attention's memory `[B * N * N, T, c_t]`.
    pair_memory: Option<Tensor<3>>,
    /// The torsion MSA rows `[B, T, N, c_m]` and their mask `[B, T, N]`.
    torsion_rows: Option<(Tensor<4>, Tensor<3>)>,
    /// The largest pair memory kept, in elements.
    max_kept_elements: usize,
}

/// The largest template stack output kept between passes: 64 Mi elements (128 MiB in f16),
/// `B · N² · T` rows of 64 channels up to one template at L = 1024 or four at L = 512.
pub(super) const MAX_KEPT_ELEMENTS: usize = 1 << 26;

impl Default for TemplateMemo {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            pair_memory: None,
            torsion_rows: None,
            max_kept_elements: MAX_KEPT_ELEMENTS,
        }
    }
}

impl TemplateMemo {
    /// Forgets the kept embeddings unless the designs of `f` have the templates and sequence
    /// masks they were computed from.
    ///
    /// # Panics
    /// If the designs have no templates.
    pub(super) fn keep_if_same_inputs(&mut self, f: &BatchFeatures<'_>) {
        let same = self.inputs.len() == f.len()
            && f.designs()
                .iter()
                .zip(&self.inputs)
                .all(|(d, (templates, seq_mask))| {
                    d.templates.as_ref() == Some(templates) && d.seq_mask == *seq_mask
                });
        if !same {
            self.inputs = f
                .designs()
                .iter()
                .map(|d| {
                    let templates = d.templates.clone().expect("the batch has templates");
                    (templates, d.seq_mask.clone())
                })
                .collect();
            self.pair_memory = None;
            self.torsion_rows = None;
        }
    }

    /// The kept template stack output, else `embed()`'s, kept unless it is larger than the
    /// memo keeps.
    pub(super) fn pair_memory(&mut self, embed: impl FnOnce() -> Tensor<3>) -> Tensor<3> {
        if let Some(memory) = &self.pair_memory {
            return memory.clone();
        }
        let memory = embed();
        if memory.shape().num_elements() <= self.max_kept_elements {
            self.pair_memory = Some(memory.clone());
        }
        memory
    }

    /// The kept torsion rows and mask, else `embed()`'s, kept.
    pub(super) fn torsion_rows(
        &mut self,
        embed: impl FnOnce() -> (Tensor<4>, Tensor<3>),
    ) -> (Tensor<4>, Tensor<3>) {
        self.torsion_rows.get_or_insert_with(embed).clone()
    }
}

/// Template slot `index` of every design of a batch.
pub(super) fn template_inputs(
    f: &BatchFeatures<'_>,
    index: usize,
    device: &Device,
) -> TemplateInputs {
    let (b, n) = (f.len(), f.num_residues());
    let templates = || {
        f.designs()
            .iter()
            .map(|d| d.templates.as_ref().expect("the batch has templates"))
    };
    // The rows of slot `index` of one template array, design after design.
    let slot = |array: fn(&TemplateFeatures) -> &NdArray<f32>, per: usize| -> Vec<f32> {
        templates()
            .flat_map(|t| array(t).data[index * n * per..(index + 1) * n * per].to_vec())
            .collect()
    };
    let backbone: Vec<f32> = slot(|t| &t.all_atom_masks, 37)
        .chunks_exact(37)
        .map(|m| m[ATOM_N] * m[ATOM_CA] * m[ATOM_C])
        .collect();
    let aatype: Vec<i64> = templates()
        .flat_map(|t| t.aatype.data[index * n..(index + 1) * n].to_vec())
        .collect();
    let upload = |data: Vec<f32>, shape: Vec<usize>| TensorData::new(data, shape);
    TemplateInputs {
        aatype_one_hot: Tensor::from_data(
            upload(one_hot_rows(&aatype, 22), vec![b, n, 22]),
            device,
        ),
        pseudo_beta: Tensor::from_data(upload(slot(|t| &t.pseudo_beta, 3), vec![b, n, 3]), device),
        pseudo_beta_mask: Tensor::from_data(
            upload(slot(|t| &t.pseudo_beta_mask, 1), vec![b, n]),
            device,
        ),
        backbone_mask: Tensor::from_data(upload(backbone, vec![b, n]), device),
    }
}

/// Template torsion features `[B, T, N, 57]` and the psi mask `[B, T, N]` that masks their MSA
/// rows, for every design of a batch (the `B * T` templates in one call).
pub(super) fn template_torsion_features(
    f: &BatchFeatures<'_>,
    device: &Device,
) -> (Tensor<4>, Tensor<3>) {
    let (b, n) = (f.len(), f.num_residues());
    let tn = f.num_templates().expect("the batch has templates");
    let aatype: Vec<i64> = f
        .designs()
        .iter()
        .flat_map(|d| {
            let t = d.templates.as_ref().expect("the batch has templates");
            t.aatype.data.iter().copied()
        })
        .collect();
    let positions: Tensor<5> = f.stacked_templates(|t| &t.all_atom_positions, device);
    let masks: Tensor<4> = f.stacked_templates(|t| &t.all_atom_masks, device);
    let torsions = atom37_to_torsion_angles(
        to_int_tensor::<2>(&aatype, vec![b * tn, n], device),
        positions.reshape([b * tn, n, 37, 3]),
        masks.reshape([b * tn, n, 37]),
    );
    let one_hot = Tensor::<3>::from_data(
        TensorData::new(one_hot_rows(&aatype, 22), [b * tn, n, 22]),
        device,
    );
    let features = Tensor::cat(
        vec![
            one_hot,
            torsions.sin_cos.reshape([b * tn, n, 14]),
            torsions.alt_sin_cos.reshape([b * tn, n, 14]),
            torsions.mask.clone(),
        ],
        2,
    );
    let psi_mask = torsions.mask.narrow(2, 2, 1).reshape([b, tn, n]);
    (features.reshape([b, tn, n, 57]), psi_mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Features;
    use crate::model::tests::random_features;

    #[allow(deprecated)] // ndarray is the CPU reference backend.
    fn marker(value: f32) -> Tensor<3> {
        Tensor::full([1, 1, 1], value, &Device::ndarray())
    }

    fn value(t: Tensor<3>) -> f32 {
        t.into_scalar()
    }

    /// Whether a pass with `f` reuses the kept pair memory (else it keeps a new one).
    fn reused(memo: &mut TemplateMemo, f: &Features) -> bool {
        memo.keep_if_same_inputs(&BatchFeatures::single(f));
        let mut embedded = false;
        memo.pair_memory(|| {
            embedded = true;
            marker(2.0)
        });
        !embedded
    }

    #[test]
    fn embeddings_are_kept_only_for_the_same_templates_and_sequence_masks() {
        let f = random_features(5, 8, 2, 2, 2);
        let mut memo = TemplateMemo::default();
        memo.keep_if_same_inputs(&BatchFeatures::single(&f));
        assert_eq!(value(memo.pair_memory(|| marker(1.0))), 1.0);
        assert_eq!(
            value(
                memo.torsion_rows(|| (marker(1.0).unsqueeze(), marker(1.0)))
                    .1
            ),
            1.0
        );
        // An equal copy of the features keeps both.
        let copy = f.clone();
        memo.keep_if_same_inputs(&BatchFeatures::single(&copy));
        assert_eq!(value(memo.pair_memory(|| marker(2.0))), 1.0);
        assert_eq!(
            value(
                memo.torsion_rows(|| (marker(2.0).unsqueeze(), marker(2.0)))
                    .1
            ),
            1.0
        );

        let mut moved = f.clone();
        let templates = moved.templates.as_mut().unwrap();
        templates.all_atom_positions.data[40] += 0.5;
        assert!(!reused(&mut memo, &moved), "a moved template atom");
        let mut masked = f.clone();
        masked.seq_mask.data[3] = 0.0;
        memo = TemplateMemo::default();
        memo.keep_if_same_inputs(&BatchFeatures::single(&f));
        memo.pair_memory(|| marker(1.0));
        assert!(!reused(&mut memo, &masked), "another sequence mask");
        let mut retyped = f.clone();
        retyped.templates.as_mut().unwrap().aatype.data[0] ^= 1;
        memo = TemplateMemo::default();
        memo.keep_if_same_inputs(&BatchFeatures::single(&f));
        memo.pair_memory(|| marker(1.0));
        assert!(
            !reused(&mut memo, &retyped),
            "another template residue type"
        );
        assert!(reused(&mut memo, &retyped), "the same again");
    }

    #[test]
    fn a_stack_output_above_the_limit_is_not_kept() {
        let f = random_features(6, 8, 2, 2, 2);
        let limited = || TemplateMemo {
            max_kept_elements: 1,
            ..TemplateMemo::default()
        };
        let mut memo = limited();
        memo.keep_if_same_inputs(&BatchFeatures::single(&f));
        memo.pair_memory(|| marker(1.0));
        assert!(reused(&mut memo, &f), "one element is kept");
        let mut memo = limited();
        memo.keep_if_same_inputs(&BatchFeatures::single(&f));
        memo.pair_memory(|| Tensor::<3>::zeros([1, 1, 2], &marker(0.0).device()));
        assert!(!reused(&mut memo, &f), "two elements are not");
    }
}
