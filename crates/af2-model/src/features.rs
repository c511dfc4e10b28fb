//! The processed features of one recycling iteration, as AlphaFold's data pipeline produces
//! them (the oracle's `features.npz`, one slice of its leading recycle axis), checked for shape
//! and moved to a device.

use std::collections::BTreeMap;

use burn::tensor::{Device, Int, Tensor, TensorData};

use af2_io::npz::{Array, NdArray};

use crate::extra_msa_stack::EXTRA_MSA_FEATURES;
use crate::input_embedder::{MSA_FEAT, TARGET_FEAT, relative_position_classes};

/// A feature that is missing or has the wrong shape.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// The key is absent.
    #[error("feature `{0}` is missing")]
    Missing(String),
    /// The shape does not fit.
    #[error("feature `{key}` has shape {found:?}, expected {expected}")]
    Shape {
        /// Feature name.
        key: String,
        /// Expected shape, in words.
        expected: String,
        /// Found shape.
        found: Vec<usize>,
    },
    /// An integer feature holds a non-integral or out-of-range value.
    #[error("feature `{key}`: {message}")]
    Value {
        /// Feature name.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A design of a batch does not fit the first design's shapes.
    #[error(
        "design {design} of the batch: {message} (a batch needs designs of one length, one MSA \
         depth and one template count)"
    )]
    Batch {
        /// Index of the design in the batch.
        design: usize,
        /// What differs.
        message: String,
    },
    /// A batch without designs.
    #[error("a batch needs at least one design")]
    EmptyBatch,
}

/// Template features of one iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateFeatures {
    /// `[T, N]` AlphaFold residue order, 21 = gap.
    pub aatype: NdArray<i64>,
    /// `[T, N, 37, 3]`
    pub all_atom_positions: NdArray<f32>,
    /// `[T, N, 37]`
    pub all_atom_masks: NdArray<f32>,
    /// `[T]`
    pub mask: NdArray<f32>,
    /// `[T, N, 3]`
    pub pseudo_beta: NdArray<f32>,
    /// `[T, N]`
    pub pseudo_beta_mask: NdArray<f32>,
}

/// The model inputs of one iteration, on the host.
#[derive(Clone, Debug)]
pub struct Features {
    /// `[N]` AlphaFold residue order (0..20).
    pub aatype: Vec<i64>,
    /// `[N]`
    pub residue_index: Vec<i64>,
    /// `[N]`
    pub seq_mask: NdArray<f32>,
    /// `[N, 22]`
    pub target_feat: NdArray<f32>,
    /// `[S, N, 49]`
    pub msa_feat: NdArray<f32>,
    /// `[S, N]`
    pub msa_mask: NdArray<f32>,
    /// `[Se, N, 25]`: one-hot extra MSA (23), has-deletion, deletion value.
    pub extra_feat: NdArray<f32>,
    /// `[Se, N]`
    pub extra_msa_mask: NdArray<f32>,
    /// Templates, when the features have them.
    pub templates: Option<TemplateFeatures>,
}

struct Reader<'a> {
    arrays: &'a BTreeMap<String, Array>,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Result<&Array, FeatureError> {
        self.arrays
            .get(key)
            .ok_or_else(|| FeatureError::Missing(key.to_string()))
    }

    fn f32(&self, key: &str, expected: &[Option<usize>]) -> Result<NdArray<f32>, FeatureError> {
        let array = self.get(key)?.to_f32();
        check_shape(key, &array.shape, expected)?;
        Ok(array)
    }

    fn i64(&self, key: &str, expected: &[Option<usize>]) -> Result<NdArray<i64>, FeatureError> {
        let array = self.get(key)?.to_i64().map_err(|e| FeatureError::Value {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        check_shape(key, &array.shape, expected)?;
        Ok(array)
    }
}

fn check_shape(key: &str, found: &[usize], expected: &[Option<usize>]) -> Result<(), FeatureError> {
    let fits = found.len() == expected.len()
        && found
            .iter()
            .zip(expected)
            .all(|(f, e)| e.is_none_or(|e| e == *f));
    if fits {
        return Ok(());
    }
    let words: Vec<String> = expected
        .iter()
        .map(|e| e.map_or("_".to_string(), |v| v.to_string()))
        .collect();
    Err(FeatureError::Shape {
        key: key.to_string(),
        expected: format!("[{}]", words.join(", ")),
        found: found.to_vec(),
    })
}

fn check_range(key: &str, values: &[i64], max: i64) -> Result<(), FeatureError> {
    match values.iter().find(|&&v| !(0..=max).contains(&v)) {
        Some(v) => Err(FeatureError::Value {
            key: key.to_string(),
            message: format!("value {v} outside 0..={max}"),
        }),
        None => Ok(()),
    }
}

impl Features {
    /// Reads the features of one iteration (arrays without the recycle axis).
    pub fn from_arrays(arrays: &BTreeMap<String, Array>) -> Result<Self, FeatureError> {
        let r = Reader { arrays };
        let aatype = r.i64("aatype", &[None])?;
        let n = aatype.shape[0];
        check_range("aatype", &aatype.data, 20)?;
        let msa_feat = r.f32("msa_feat", &[None, Some(n), Some(MSA_FEAT)])?;
        let s = msa_feat.shape[0];
        let extra_msa = r.i64("extra_msa", &[None, Some(n)])?;
        check_range("extra_msa", &extra_msa.data, 22)?;
        let se = extra_msa.shape[0];
        let extra_has_deletion = r.f32("extra_has_deletion", &[Some(se), Some(n)])?;
        let extra_deletion_value = r.f32("extra_deletion_value", &[Some(se), Some(n)])?;
        Ok(Features {
            residue_index: r.i64("residue_index", &[Some(n)])?.data,
            seq_mask: r.f32("seq_mask", &[Some(n)])?,
            target_feat: r.f32("target_feat", &[Some(n), Some(TARGET_FEAT)])?,
            msa_mask: r.f32("msa_mask", &[Some(s), Some(n)])?,
            msa_feat,
            extra_feat: extra_msa_features(&extra_msa, &extra_has_deletion, &extra_deletion_value),
            extra_msa_mask: r.f32("extra_msa_mask", &[Some(se), Some(n)])?,
            templates: Self::templates(&r, n)?,
            aatype: aatype.data,
        })
    }

    fn templates(r: &Reader<'_>, n: usize) -> Result<Option<TemplateFeatures>, FeatureError> {
        if !r.arrays.contains_key("template_aatype") {
            return Ok(None);
        }
        let aatype = r.i64("template_aatype", &[None, Some(n)])?;
        check_range("template_aatype", &aatype.data, 21)?;
        let t = Some(aatype.shape[0]);
        Ok(Some(TemplateFeatures {
            all_atom_positions: r.f32(
                "template_all_atom_positions",
                &[t, Some(n), Some(37), Some(3)],
            )?,
            all_atom_masks: r.f32("template_all_atom_masks", &[t, Some(n), Some(37)])?,
            mask: r.f32("template_mask", &[t])?,
            pseudo_beta: r.f32("template_pseudo_beta", &[t, Some(n), Some(3)])?,
            pseudo_beta_mask: r.f32("template_pseudo_beta_mask", &[t, Some(n)])?,
            aatype,
        }))
    }

    /// Number of residues.
    pub fn num_residues(&self) -> usize {
        self.aatype.len()
    }

    /// Number of MSA cluster rows.
    pub fn num_msa_rows(&self) -> usize {
        self.msa_feat.shape[0]
    }
}

/// The features of one pass for a batch of designs of equal shapes (one length, one MSA depth,
/// one extra-MSA depth, one template count), borrowed. The model stacks them into tensors with
/// a leading design axis.
#[derive(Clone, Debug)]
pub struct BatchFeatures<'a> {
    designs: Vec<&'a Features>,
}

/// Every array of a [`Features`] whose shape must agree across a batch, by feature name.
fn shaped_arrays(f: &Features) -> Vec<(&'static str, Vec<usize>)> {
    let mut shapes = vec![
        ("aatype", vec![f.aatype.len()]),
        ("residue_index", vec![f.residue_index.len()]),
        ("seq_mask", f.seq_mask.shape.clone()),
        ("target_feat", f.target_feat.shape.clone()),
        ("msa_feat", f.msa_feat.shape.clone()),
        ("msa_mask", f.msa_mask.shape.clone()),
        ("extra_feat", f.extra_feat.shape.clone()),
        ("extra_msa_mask", f.extra_msa_mask.shape.clone()),
    ];
    if let Some(t) = &f.templates {
        shapes.extend([
            ("template_aatype", t.aatype.shape.clone()),
            (
                "template_all_atom_positions",
                t.all_atom_positions.shape.clone(),
            ),
            ("template_all_atom_masks", t.all_atom_masks.shape.clone()),
            ("template_mask", t.mask.shape.clone()),
            ("template_pseudo_beta", t.pseudo_beta.shape.clone()),
            (
                "template_pseudo_beta_mask",
                t.pseudo_beta_mask.shape.clone(),
            ),
        ]);
    }
    shapes
}

impl<'a> BatchFeatures<'a> {
    /// A batch of designs; every design must have the first one's shapes, and either all or none
    /// have templates. The error names the first design and feature that differ.
    pub fn new(designs: impl IntoIterator<Item = &'a Features>) -> Result<Self, FeatureError> {
        let designs: Vec<&Features> = designs.into_iter().collect();
        let first = designs.first().ok_or(FeatureError::EmptyBatch)?;
        let expected = shaped_arrays(first);
        for (d, f) in designs.iter().enumerate().skip(1) {
            if f.templates.is_some() != first.templates.is_some() {
                let has = |f: &Features| {
                    if f.templates.is_some() {
                        "has"
                    } else {
                        "has no"
                    }
                };
                return Err(FeatureError::Batch {
                    design: d,
                    message: format!("it {} templates; design 0 {}", has(f), has(first)),
                });
            }
            for ((key, want), (_, found)) in expected.iter().zip(shaped_arrays(f)) {
                if *want != found {
                    return Err(FeatureError::Batch {
                        design: d,
                        message: format!(
                            "feature `{key}` has shape {found:?}; design 0 has {want:?}"
                        ),
                    });
                }
            }
        }
        Ok(Self { designs })
    }

    /// A batch of one design (nothing to check).
    pub fn single(features: &'a Features) -> Self {
        Self {
            designs: vec![features],
        }
    }

    /// The designs.
    pub fn designs(&self) -> &[&'a Features] {
        &self.designs
    }

    /// Number of designs `B`.
    pub fn len(&self) -> usize {
        self.designs.len()
    }

    /// Whether there are no designs (never: construction refuses an empty batch).
    pub fn is_empty(&self) -> bool {
        self.designs.is_empty()
    }

    /// Number of residues of every design.
    pub fn num_residues(&self) -> usize {
        self.designs[0].num_residues()
    }

    /// Number of MSA cluster rows of every design.
    pub fn num_msa_rows(&self) -> usize {
        self.designs[0].num_msa_rows()
    }

    /// Number of templates of every design, when they have templates.
    pub fn num_templates(&self) -> Option<usize> {
        self.designs[0]
            .templates
            .as_ref()
            .map(|t| t.aatype.shape[0])
    }

    /// The residue types of every design, design after design: `[B * N]`.
    pub fn aatype(&self) -> Vec<i64> {
        self.designs
            .iter()
            .flat_map(|f| f.aatype.iter().copied())
            .collect()
    }

    /// One host array of every design stacked on a new leading axis and uploaded: an array of
    /// rank `D - 1` gives a tensor of rank `D`.
    pub fn stacked<const D: usize>(
        &self,
        array: impl Fn(&Features) -> &NdArray<f32>,
        device: &Device,
    ) -> Tensor<D> {
        let first = array(self.designs[0]);
        let mut shape = vec![self.len()];
        shape.extend(&first.shape);
        let data: Vec<f32> = self
            .designs
            .iter()
            .flat_map(|f| array(f).data.iter().copied())
            .collect();
        Tensor::from_data(TensorData::new(data, shape), device)
    }

    /// [`BatchFeatures::stacked`] for a template array.
    ///
    /// # Panics
    /// If the designs have no templates.
    pub fn stacked_templates<const D: usize>(
        &self,
        array: impl Fn(&TemplateFeatures) -> &NdArray<f32>,
        device: &Device,
    ) -> Tensor<D> {
        self.stacked(
            |f| array(f.templates.as_ref().expect("the batch has templates")),
            device,
        )
    }

    /// The relative-position classes of every design `[B, N, N]` on a device.
    pub fn relpos_classes(&self, device: &Device) -> Tensor<3, Int> {
        let n = self.num_residues();
        let classes: Vec<i64> = self
            .designs
            .iter()
            .flat_map(|f| relative_position_classes(&f.residue_index))
            .collect();
        Tensor::from_data(TensorData::new(classes, [self.len(), n, n]), device)
    }
}

/// AlphaFold's `create_extra_msa_feature`: one-hot (23) + has_deletion + deletion_value.
fn extra_msa_features(
    msa: &NdArray<i64>,
    has_deletion: &NdArray<f32>,
    deletion_value: &NdArray<f32>,
) -> NdArray<f32> {
    let count = msa.data.len();
    let mut data = vec![0.0f32; count * EXTRA_MSA_FEATURES];
    for (k, &token) in msa.data.iter().enumerate() {
        let row = &mut data[k * EXTRA_MSA_FEATURES..(k + 1) * EXTRA_MSA_FEATURES];
        row[token as usize] = 1.0;
        row[23] = has_deletion.data[k];
        row[24] = deletion_value.data[k];
    }
    let mut shape = msa.shape.clone();
    shape.push(EXTRA_MSA_FEATURES);
    NdArray { shape, data }
}

/// Uploads a host array as a float tensor of rank `D`.
pub fn to_tensor<const D: usize>(array: &NdArray<f32>, device: &Device) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(array.data.clone(), array.shape.clone()),
        device,
    )
}

/// Uploads integers as an `Int` tensor of rank `D`.
pub fn to_int_tensor<const D: usize>(
    data: &[i64],
    shape: Vec<usize>,
    device: &Device,
) -> Tensor<D, Int> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
}

fn arr(shape: Vec<usize>, data: Vec<f32>) -> NdArray<f32> {
    NdArray { shape, data }
}

/// A valid single-sequence, one-template feature set of length `n` for benchmarks: a fixed
/// pseudo-random sequence, an extended backbone as the template, every mask on.
pub fn benchmark_features(n: usize) -> Features {
    let aatype: Vec<i64> = (0..n).map(|i| (i * 7 % 20) as i64).collect();
    let mut target_feat = vec![0.0f32; n * 22];
    let mut msa_feat = vec![0.0f32; n * 49];
    for (i, &a) in aatype.iter().enumerate() {
        target_feat[i * 22 + a as usize + 1] = 1.0;
        msa_feat[i * 49 + a as usize] = 1.0;
        msa_feat[i * 49 + 25 + a as usize] = 1.0;
    }
    let mut positions = vec![0.0f32; n * 37 * 3];
    let mut masks = vec![0.0f32; n * 37];
    for i in 0..n {
        for atom in 0..5 {
            let p = &mut positions[(i * 37 + atom) * 3..(i * 37 + atom) * 3 + 3];
            p[0] = 3.8 * i as f32 + 0.5 * atom as f32;
            p[1] = (atom as f32 * 1.3).sin() * 1.4;
            p[2] = (atom as f32 * 0.7).cos() * 1.4 + 4.0;
            masks[i * 37 + atom] = 1.0;
        }
    }
    let pseudo_beta: Vec<f32> = (0..n)
        .flat_map(|i| positions[(i * 37 + 3) * 3..(i * 37 + 3) * 3 + 3].to_vec())
        .collect();
    Features {
        aatype: aatype.clone(),
        residue_index: (0..n as i64).collect(),
        seq_mask: arr(vec![n], vec![1.0; n]),
        target_feat: arr(vec![n, 22], target_feat),
        msa_feat: arr(vec![1, n, 49], msa_feat),
        msa_mask: arr(vec![1, n], vec![1.0; n]),
        extra_feat: arr(vec![1, n, 25], vec![0.0; n * 25]),
        extra_msa_mask: arr(vec![1, n], vec![0.0; n]),
        templates: Some(TemplateFeatures {
            aatype: NdArray {
                shape: vec![1, n],
                data: aatype,
            },
            all_atom_positions: arr(vec![1, n, 37, 3], positions),
            all_atom_masks: arr(vec![1, n, 37], masks),
            mask: arr(vec![1], vec![1.0]),
            pseudo_beta: arr(vec![1, n, 3], pseudo_beta),
            pseudo_beta_mask: arr(vec![1, n], vec![1.0; n]),
        }),
    }
}
