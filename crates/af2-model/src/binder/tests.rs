//! Tests of the parent module.

use super::*;
use crate::model::AlphaFoldConfig;
use crate::outputs::to_host;
use crate::weights::load_module;
use af2_io::structure::read_structure;
use burn::tensor::{Device, Tensor, TensorData};
use std::path::Path;

/// The two-chain geometry fixture of the CLI tests (chain A: 10 residues `MKELLEKAIE`,
/// chain B: 6 residues `SWGYLR`, numbered from 1).
fn fixture() -> Structure {
    read_structure(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../af2-cli/tests/fixtures/binder/complex.pdb"),
    )
    .unwrap()
}

fn redesign(protocol: BinderProtocol) -> BinderComplex {
    BinderComplex::from_structure(&fixture(), "A", &BinderSpec::Chain("B".into()), protocol)
        .unwrap()
}

#[test]
fn complex_inputs_follow_colabdesign() {
    let complex = redesign(BinderProtocol::pxdesign());
    assert_eq!((complex.target_len(), complex.binder_len), (10, 6));
    let inputs = complex.complex_inputs("AKLLEA").unwrap();
    let f = &inputs.built.features;
    // PDB numbering 1..=10, then the binder's 1..=6 shifted by the target's last + 50.
    let expected: Vec<i64> = (1..=10).chain(61..=66).collect();
    assert_eq!(f.residue_index, expected);
    assert_eq!(inputs.built.asym_id, [vec![0; 10], vec![1; 6]].concat());
    assert_eq!(inputs.query.sequence, "MKELLEKAIEAKLLEA");
    // Template slot 0: every residue a gap (rm_target_seq, rm_binder_seq), no side chains,
    // backbone and CB kept; glycine B3 gets ColabDesign's virtual CB.
    let t = f.templates.as_ref().unwrap();
    assert!(t.aatype.data.iter().all(|&a| a == 21));
    assert_eq!(t.mask.data, vec![1.0]);
    for (i, m) in t.all_atom_masks.data.chunks(37).enumerate() {
        assert_eq!(&m[..5], &[1.0; 5], "residue {i}");
        assert!(m[5..].iter().all(|&v| v == 0.0), "residue {i}");
    }
    assert!(t.pseudo_beta_mask.data.iter().all(|&v| v == 1.0));
    // The same-chain mask and the initial guess (the input's CA, for example).
    let mask = inputs.template_pair_mask.as_ref().unwrap();
    assert_eq!(mask[9], 1.0); // (0, 9): both target
    assert_eq!(mask[10], 0.0); // (0, 10): target, binder
    assert_eq!(mask[15 * 16 + 10], 1.0);
    let guess = inputs.initial_positions.as_ref().unwrap();
    let ca_b1 = &guess.data[(10 * 37 + 1) * 3..(10 * 37 + 1) * 3 + 3];
    let atom = fixture().chains[1].residues[0].atom("CA").unwrap().position;
    for k in 0..3 {
        assert!((f64::from(ca_b1[k]) - atom[k]).abs() < 1e-4);
    }
    // The binder alone: single sequence, no template.
    let (query, built) = complex.monomer_inputs("AKLLEA").unwrap();
    assert_eq!(query.len(), 6);
    assert!(built.features.templates.is_none());
    // Wrong length: refused with both lengths.
    let err = complex.complex_inputs("AKL").unwrap_err().to_string();
    assert!(err.contains("3 residues") && err.contains("has 6"), "{err}");
}

#[test]
fn options_change_the_template() {
    let protocol = BinderProtocol {
        use_binder_template: false,
        rm_target_seq: false,
        rm_template_ic: false,
        use_initial_guess: false,
        ..BinderProtocol::pxdesign()
    };
    let inputs = redesign(protocol).complex_inputs("AKLLEA").unwrap();
    let t = inputs.built.features.templates.unwrap();
    // Target residue types kept (M K E L ...), side chains (none in the file) not masked by
    // rm_target_sc = false; no binder template.
    assert_eq!(&t.aatype.data[..3], &[12, 11, 6]);
    assert!(t.aatype.data[10..].iter().all(|&a| a == 21));
    assert!(t.all_atom_masks.data[10 * 37..].iter().all(|&m| m == 0.0));
    assert!(inputs.template_pair_mask.is_none());
    assert!(inputs.initial_positions.is_none());

    // Hallucination mode: binder numbered from the target's last + 50, no coordinates.
    let complex = BinderComplex::from_structure(
        &fixture(),
        "A",
        &BinderSpec::Length(4),
        BinderProtocol::pxdesign(),
    )
    .unwrap();
    assert_eq!(complex.binder_chain, "B");
    let inputs = complex.complex_inputs("GGGG").unwrap();
    assert_eq!(
        &inputs.built.features.residue_index[10..],
        &[60, 61, 62, 63]
    );
    let guess = inputs.initial_positions.unwrap();
    assert_eq!(guess.shape, vec![14, 37, 3]);
    assert!(guess.data[10 * 111..].iter().all(|&v| v == 0.0));
    assert!(complex.true_ca().is_none());
}

#[test]
fn hotspots_name_residues_of_the_input() {
    let mut complex = redesign(BinderProtocol::pxdesign());
    complex.set_hotspot("A3-5, A8").unwrap();
    assert_eq!(complex.hotspot, Some(vec![2, 3, 4, 7]));
    complex.set_hotspot("2,B2").unwrap();
    assert_eq!(complex.hotspot, Some(vec![1, 11]));
    for (bad, needle) in [
        ("C1", "chain 'C'"),
        ("A99", "no residue numbered 99"),
        ("Ax", "expected a chain id"),
        (",", "empty"),
    ] {
        let err = complex.set_hotspot(bad).unwrap_err().to_string();
        assert!(err.contains(needle), "{bad}: {err}");
    }
    let layout = complex.layout().unwrap();
    assert_eq!(layout.len(), 16);
}

#[test]
fn mean_over_models() {
    let m = |x: f64, rmsd: Option<f64>| BinderMetrics {
        plddt: x,
        pae: x,
        i_pae: x,
        unscaled_i_pae: 31.0 * x,
        ptm: x,
        i_ptm: x,
        rmsd,
        bound_unbound_rmsd: None,
        plddt_monomer: Some(x),
    };
    let mean = mean_metrics(&[m(0.2, Some(1.0)), m(0.4, Some(3.0))]).unwrap();
    assert!((mean.plddt - 0.3).abs() < 1e-12);
    assert!((mean.unscaled_i_pae - 9.3).abs() < 1e-12);
    assert_eq!(mean.rmsd, Some(2.0));
    assert_eq!(mean.bound_unbound_rmsd, None);
    assert!(
        mean_metrics(&[m(0.2, Some(1.0)), m(0.4, None)])
            .unwrap()
            .rmsd
            .is_none()
    );
    assert!(mean_metrics(&[]).is_none());
}

/// rm_template_ic through the model: an all-ones mask is the unmasked model exactly, the
/// same-chain mask changes the prediction, and in the template embedding it hides exactly
/// the inter-chain template features: moving the binder's template coordinates away from the
/// target changes nothing with the mask and changes the embedding without it. (The whole
/// model still sees such a move through the template torsion features of the binder's first
/// residue, whose phi and omega use the previous residue, as in AlphaFold and ColabDesign.)
#[test]
#[allow(deprecated)]
fn same_chain_mask_hides_inter_chain_template_features() {
    let device = Device::ndarray();
    let weights = af2_io::weights::load_weights(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/msa_template_n16/params.npz"),
    )
    .unwrap();
    let mut model = AlphaFoldConfig::from_dims(&weights.dims).init(&device);
    load_module(&mut model, &weights.native).unwrap();
    let (c_m, c_z) = (weights.dims.msa_channel, weights.dims.pair_channel);

    let inputs = redesign(BinderProtocol::pxdesign())
        .complex_inputs("AKLLEA")
        .unwrap();
    let f = inputs.built.features.clone();
    let n = 16;
    let tensor = |m: &[f32]| Tensor::<2>::from_data(TensorData::new(m.to_vec(), [n, n]), &device);
    let same_chain = tensor(inputs.template_pair_mask.as_ref().unwrap());
    let ones = tensor(&vec![1.0; n * n]);
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };

    let run = |mask: Option<&Tensor<2>>| {
        let prev = crate::model::Recycled::zeros(n, c_m, c_z, &device);
        to_host(model.forward_iteration_masked(&f, prev, mask, &device).pair).data
    };
    let plain = run(None);
    assert_eq!(plain, run(Some(&ones)), "an all-ones mask changes nothing");
    assert!(
        max_diff(&plain, &run(Some(&same_chain))) > 1e-3,
        "the mask acts"
    );

    // The template embedding alone, on the template as is and with the binder moved 40 Å.
    let template = |shift: f32| {
        let t = f.templates.as_ref().unwrap();
        let mut pseudo_beta = t.pseudo_beta.data.clone();
        for v in &mut pseudo_beta[10 * 3..] {
            *v += shift;
        }
        let one_hot: Vec<f32> = t
            .aatype
            .data
            .iter()
            .flat_map(|&a| (0..22).map(move |c| f32::from(u8::from(c == a as usize))))
            .collect();
        let backbone: Vec<f32> = t
            .all_atom_masks
            .data
            .chunks(37)
            .map(|m| m[0] * m[1] * m[2])
            .collect();
        crate::template_embedding::TemplateInputs {
            aatype_one_hot: Tensor::from_data(TensorData::new(one_hot, [1, n, 22]), &device),
            pseudo_beta: Tensor::from_data(TensorData::new(pseudo_beta, [1, n, 3]), &device),
            pseudo_beta_mask: Tensor::from_data(
                TensorData::new(t.pseudo_beta_mask.data.clone(), [1, n]),
                &device,
            ),
            backbone_mask: Tensor::from_data(TensorData::new(backbone, [1, n]), &device),
        }
    };
    let embedding = model.template_embedding.as_ref().unwrap();
    let embed = |shift: f32, mask: Option<&Tensor<3>>| {
        let pair = Tensor::<4>::zeros([1, n, n, c_z], &device);
        let pair_mask = Tensor::<3>::ones([1, n, n], &device);
        let template_mask = Tensor::<2>::ones([1, 1], &device);
        let out =
            embedding.forward_masked(pair, pair_mask, &[template(shift)], template_mask, mask);
        to_host(out).data
    };
    let same_chain = same_chain.unsqueeze::<3>();
    let masked = embed(0.0, Some(&same_chain));
    let masked_moved = embed(40.0, Some(&same_chain));
    assert!(
        max_diff(&masked, &masked_moved) < 1e-5,
        "masked: {}",
        max_diff(&masked, &masked_moved)
    );
    assert!(
        max_diff(&embed(0.0, None), &embed(40.0, None)) > 1e-3,
        "unmasked: the move shows"
    );
}
