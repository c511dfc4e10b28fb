//! Half precision (f16 extra-MSA stack and Evoformer) against f32 on the oracle fixtures, on
//! flex, the CPU backend with f16 (ndarray has none).

use std::collections::BTreeMap;

use af2_io::npz::Array;
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
