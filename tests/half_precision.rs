//! Half precision (f16 extra-MSA stack and Evoformer) against f32 on the oracle fixtures, on
//! flex, the CPU backend with f16 (ndarray has none).

use std::collections::BTreeMap;

use af2_io::npz::Array;
use af2_model::features::Features;
use af2_model::model::IterationOutput;
use af2_model::outputs::prediction_arrays;
use af2_model::precision::Precision;
use af2_tests::{OracleCase, case_model, fixtures_dir, run_case, structure_difference};
use burn::tensor::Device;

/// What a designer screening binders can ignore: CA atoms within 0.5 Å (a fraction of the
/// ~1 Å that separates two predictions of one design by different seeds) and pLDDT within 1
/// point (the filters use thresholds like pLDDT > 80). Chosen from that use, not from the
/// errors seen.
const MAX_CA_RMSD: f64 = 0.5;
const MAX_PLDDT_DIFF: f64 = 1.0;

fn outputs(out: &IterationOutput) -> BTreeMap<String, Array> {
    prediction_arrays(out).into_iter().collect()
}

#[test]
fn f16_trunk_stays_close_to_f32_on_every_fixture() {
    let device = Device::flex();
    for name in ["r0_n20", "msa_template_n16", "single_seq_n24"] {
        let case = OracleCase::open(&fixtures_dir().join(name)).unwrap();
        let model = case_model(&case, &device).unwrap();
        let full = outputs(&run_case(&case, &model, false, &device).unwrap());
        let half_model = model.with_precision(Precision::F16);
        assert_eq!(half_model.precision(), Precision::F16);
        let half = outputs(&run_case(&case, &half_model, false, &device).unwrap());
        let d = structure_difference(&half, &full).unwrap();
        println!(
            "{name}: f16 vs f32: CA RMSD {:.3e} Å, pLDDT |diff| max {:.3e} mean {:.3e}, pTM |diff| {:?}",
            d.ca_rmsd, d.plddt_max, d.plddt_mean, d.ptm
        );
        // f16 really ran: its rounding must show.
        assert!(d.ca_rmsd > 0.0, "{name}: f16 output identical to f32");
        assert!(d.ca_rmsd < MAX_CA_RMSD, "{name}: CA RMSD {}", d.ca_rmsd);
        assert!(
            d.plddt_max < MAX_PLDDT_DIFF,
            "{name}: pLDDT {}",
            d.plddt_max
        );
    }
}

/// Padded residues are masked in every MSA row, so AlphaFold's outer product mean divides
/// their pairs' bias by 1e-3: with a bias of 80 in the Evoformer that is 80,000 a block, past
/// f16's 65,504, and the infinity reached every real output through `0 * inf` (all of them NaN
/// with the unmasked divisor). The model divides such pairs by at least 1
/// (`OuterProductMean::pair_counts_masked`): the padded f16 run stays finite and within the
/// designer-level bounds above of the unpadded one (on flex: identical).
#[test]
fn padded_f16_run_stays_finite_with_a_large_outer_product_bias() {
    let device = Device::flex();
    let case = OracleCase::open(&fixtures_dir().join("r0_n20")).unwrap();
    let mut model = case_model(&case, &device).unwrap();
    let large = |opm: &mut af2_layers::outer_product_mean::OuterProductMean| {
        let dims = opm.output_b.dims();
        opm.output_b =
            burn::module::Param::from_tensor(burn::tensor::Tensor::full(dims, 80.0, &device));
    };
    for block in &mut model.evoformer.blocks {
        large(&mut block.outer_product_mean);
    }
    let model = model.with_precision(Precision::F16);
    let features: Vec<Features> = (0..case.iterations())
        .map(|r| case.iteration_features(r).unwrap())
        .collect();
    let n = features[0].num_residues();
    let padded: Vec<Features> = features
        .iter()
        .map(|f| f.padded_to(n + 4).into_owned())
        .collect();
    let plain = outputs(&model.forward_recycled(&features, None, &device));
    let out = model.forward_recycled(&padded, None, &device);
    let padded_out = outputs(&out.first_residues(n));
    for (key, array) in &padded_out {
        let values = array.to_f32().data;
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{key}: non-finite values in the padded f16 run"
        );
    }
    let d = structure_difference(&padded_out, &plain).unwrap();
    println!(
        "r0_n20 f16, output bias 80: padded vs unpadded CA RMSD {:.3e} Å, pLDDT |diff| max {:.3e}",
        d.ca_rmsd, d.plddt_max
    );
    assert!(d.ca_rmsd < MAX_CA_RMSD, "CA RMSD {}", d.ca_rmsd);
    assert!(d.plddt_max < MAX_PLDDT_DIFF, "pLDDT {}", d.plddt_max);
}
