//! Host-side outputs of a prediction under the oracle's `outputs.npz` names.

use burn::tensor::Tensor;

use af2_io::npz::{Array, NdArray};

use crate::confidence;
use crate::model::IterationOutput;

/// Reads a tensor back to the host as an `f32` array.
pub fn to_host<const D: usize>(tensor: Tensor<D>) -> NdArray<f32> {
    let shape = tensor.dims().to_vec();
    let data = tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("float tensor data");
    NdArray { shape, data }
}

fn f64_array(shape: Vec<usize>, data: Vec<f64>) -> Array {
    Array::F64(NdArray { shape, data })
}

/// Every output of the last iteration, named as in the oracle's `outputs.npz`, with the
/// confidence metrics DeepMind's `RunModel.predict` adds (pLDDT, PAE, pTM).
pub fn prediction_arrays(out: &IterationOutput) -> Vec<(String, Array)> {
    let s = &out.structure;
    let mut arrays: Vec<(&str, NdArray<f32>)> = vec![
        ("final_atom_positions", to_host(s.final_atom37.clone())),
        ("final_atom_mask", to_host(s.final_atom37_mask.clone())),
        ("final_atom14_positions", to_host(s.final_atom14.clone())),
        ("structure_traj", to_host(s.affines.clone())),
        ("sidechain_frames", to_host(s.sidechain_frames.clone())),
        ("sidechain_atom_pos", to_host(s.atom14.clone())),
        (
            "sidechain_angles_sin_cos",
            to_host(s.angles_sin_cos.clone()),
        ),
        (
            "sidechain_unnormalized_angles_sin_cos",
            to_host(s.unnormalized_angles_sin_cos.clone()),
        ),
        ("predicted_lddt_logits", to_host(out.logits.plddt.clone())),
        ("distogram_logits", to_host(out.logits.distogram.clone())),
        ("masked_msa_logits", to_host(out.logits.masked_msa.clone())),
        (
            "experimentally_resolved_logits",
            to_host(out.logits.experimentally_resolved.clone()),
        ),
        ("repr_msa", to_host(out.msa.clone())),
        ("repr_pair", to_host(out.pair.clone())),
        ("repr_single", to_host(out.single.clone())),
        ("repr_structure_module", to_host(s.act.clone())),
    ];
    let [layers, n, _] = s.affines.dims();
    let final_affines = to_host(s.affines.clone().narrow(0, layers - 1, 1).reshape([n, 7]));
    let first_row = to_host(
        out.msa
            .clone()
            .narrow(0, 0, 1)
            .reshape([n, out.msa.dims()[2]]),
    );
    arrays.push(("final_affines", final_affines));
    arrays.push(("repr_msa_first_row", first_row));

    let mut named: Vec<(String, Array)> = arrays
        .into_iter()
        .map(|(k, v)| (k.to_string(), Array::F32(v)))
        .collect();
    let conf = confidences(out);
    let mean = conf.mean_plddt();
    named.push(("plddt".into(), f64_array(vec![n], conf.plddt)));
    named.push(("ranking_confidence".into(), f64_array(vec![], vec![mean])));
    if let (Some(pae), Some(ptm)) = (conf.pae, conf.ptm) {
        let logits = NdArray {
            shape: vec![n, n, pae.bins],
            data: pae.logits,
        };
        named.push(("predicted_aligned_error_logits".into(), Array::F32(logits)));
        named.push((
            "predicted_aligned_error".into(),
            f64_array(vec![n, n], pae.pae),
        ));
        named.push((
            "max_predicted_aligned_error".into(),
            f64_array(vec![], vec![pae.max_pae]),
        ));
        named.push(("ptm".into(), f64_array(vec![], vec![ptm])));
    }
    named
}

/// The predicted aligned error of a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct PaeOutput {
    /// `[N * N]` expected aligned error in Å, row = aligned residue.
    pub pae: Vec<f64>,
    /// The largest error the head can express (31.75 Å for 64 bins).
    pub max_pae: f64,
    /// `[N * N * bins]` logits (for TM scores).
    pub logits: Vec<f32>,
    /// Number of bins.
    pub bins: usize,
}

/// Confidences of one pass, read back to the host and computed in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Confidences {
    /// `[N]` pLDDT, 0-100.
    pub plddt: Vec<f64>,
    /// PAE, for models with a PAE head.
    pub pae: Option<PaeOutput>,
    /// pTM, for models with a PAE head.
    pub ptm: Option<f64>,
}

impl Confidences {
    /// Mean pLDDT (0-100).
    pub fn mean_plddt(&self) -> f64 {
        self.plddt.iter().sum::<f64>() / self.plddt.len().max(1) as f64
    }
}

/// pLDDT, PAE and pTM of one pass, as DeepMind's `RunModel.predict` computes them.
pub fn confidences(out: &IterationOutput) -> Confidences {
    let lddt = to_host(out.logits.plddt.clone());
    let plddt = confidence::plddt(&lddt.data, lddt.shape[1]);
    let Some(logits) = &out.logits.pae else {
        return Confidences {
            plddt,
            pae: None,
            ptm: None,
        };
    };
    let logits = to_host(logits.clone());
    let bins = logits.shape[2];
    let (pae, max_pae) = confidence::predicted_aligned_error(&logits.data, bins);
    let ptm = confidence::predicted_tm_score(&logits.data, bins, None, None, false);
    Confidences {
        plddt,
        pae: Some(PaeOutput {
            pae,
            max_pae,
            logits: logits.data,
            bins,
        }),
        ptm: Some(ptm),
    }
}
