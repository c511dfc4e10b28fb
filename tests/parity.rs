//! Parity of the whole forward pass against the oracle fixtures in `tests/fixtures`
//! (DeepMind AlphaFold 2.3.2, float32, seeded random weights in the released layout).
//!
//! Tolerance: 10x the oracle's own float32-vs-float64 deviation per output
//! (`meta.json:float64_deviation`, made with `make_golden.py --x64-compare`).

use af2_tests::{
    Comparison, OracleCase, fixtures_dir, format_table, parity, parity_padded, reference_device,
};

fn check(case: &str, teacher_forcing: bool) {
    let device = reference_device();
    let case = OracleCase::open(&fixtures_dir().join(case)).expect("fixture");
    let rows = parity(&case, teacher_forcing, &device).expect("forward pass");
    let title = format!(
        "{} ({})",
        case.dir.display(),
        if teacher_forcing {
            "last iteration from the oracle's fed state"
        } else {
            "all iterations"
        }
    );
    assert_within_tolerance(&title, &rows);
}

/// A run padded with `extra` masked residues (as the GPU pads lengths to a multiple of 8),
/// cut back, against the oracle's unpadded run at the same tolerance.
fn check_padded(case: &str, extra: usize) {
    let device = reference_device();
    let case = OracleCase::open(&fixtures_dir().join(case)).expect("fixture");
    let rows = parity_padded(&case, extra, &device).expect("forward pass");
    let title = format!(
        "{} (all iterations, {extra} masked residues appended)",
        case.dir.display()
    );
    assert_within_tolerance(&title, &rows);
}

fn assert_within_tolerance(title: &str, rows: &[Comparison]) {
    println!("{}", format_table(title, rows));
    assert!(rows.len() >= 20, "too few outputs compared: {}", rows.len());
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| !r.passes())
        .map(|r| r.key.as_str())
        .collect();
    assert!(failed.is_empty(), "outputs beyond tolerance: {failed:?}");
}

#[test]
fn r0_n20_single_pass_matches_oracle() {
    check("r0_n20", false);
}

#[test]
fn msa_template_n16_last_iteration_matches_oracle() {
    check("msa_template_n16", true);
}

#[test]
fn msa_template_n16_recycled_matches_oracle() {
    check("msa_template_n16", false);
}

#[test]
fn r0_n20_padded_matches_oracle() {
    check_padded("r0_n20", 7);
}

#[test]
fn msa_template_n16_padded_recycled_matches_oracle() {
    check_padded("msa_template_n16", 5);
}

#[test]
fn single_seq_n24_last_iteration_matches_oracle() {
    check("single_seq_n24", true);
}
