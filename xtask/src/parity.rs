//! `cargo xtask parity DIR`: runs any oracle case and prints the error table.

use std::path::Path;
use std::time::Instant;

use af2_model::outputs::prediction_arrays;
use af2_tests::{
    OracleCase, case_model, compare_outputs, compare_outputs_with, format_table, reference_device,
    run_case,
};
use anyhow::{Result, bail};

/// Runs every iteration from zeros, and, when the case has a trace, the last iteration from
/// the oracle's fed state; prints one table each. Fails if any output is beyond tolerance.
pub fn run(dir: &Path) -> Result<()> {
    let device = reference_device();
    let case = OracleCase::open(dir)?;
    let start = Instant::now();
    let model = case_model(&case, &device)?;
    eprintln!(
        "loaded {} in {:.1} s",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    let modes: &[bool] = if case.trace.is_some() {
        &[false, true]
    } else {
        &[false]
    };
    let mut failures = 0;
    for &teacher_forcing in modes {
        let start = Instant::now();
        let out = run_case(&case, &model, teacher_forcing, &device)?;
        let rows = compare_outputs(&case, &prediction_arrays(&out))?;
        let mode = if teacher_forcing {
            "last iteration from the oracle's fed state"
        } else {
            "all iterations from zeros"
        };
        let title = format!(
            "{} — {} ({:.1} s)",
            dir.display(),
            mode,
            start.elapsed().as_secs_f64()
        );
        println!("{}", format_table(&title, &rows));
        failures += rows.iter().filter(|r| !r.passes()).count();
    }
    if failures > 0 {
        bail!("{failures} output(s) beyond tolerance");
    }
    Ok(())
}

/// Compares a finished `outputs.npz` (from any backend or machine) with an oracle case.
pub fn compare(dir: &Path, candidate: &Path, factor: f64) -> Result<()> {
    let case = OracleCase::open(dir)?;
    let ours = af2_io::npz::read_npz(candidate)?;
    if let Ok(d) = af2_tests::structure_difference(&ours, &case.outputs) {
        println!(
            "structure vs oracle: CA RMSD {:.3e} Å (no superposition), pLDDT |diff| max {:.3e} mean {:.3e}, pTM |diff| {}",
            d.ca_rmsd,
            d.plddt_max,
            d.plddt_mean,
            d.ptm.map_or("-".into(), |p| format!("{p:.3e}"))
        );
    }
    let ours: Vec<(String, af2_io::npz::Array)> = ours.into_iter().collect();
    let rows = compare_outputs_with(&case, &ours, factor)?;
    let title = format!(
        "{} vs {} (tolerance {factor}x noise)",
        candidate.display(),
        dir.display()
    );
    println!("{}", format_table(&title, &rows));
    let failures = rows.iter().filter(|r| !r.passes()).count();
    if failures > 0 {
        bail!("{failures} output(s) beyond tolerance");
    }
    Ok(())
}
