//! End-to-end: `af2 run-features` on an oracle fixture.

use std::path::{Path, PathBuf};
use std::process::Command;

use af2_io::npz::read_npz;

fn fixture(case: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(case)
        .join(file)
}

fn af2() -> Command {
    Command::new(env!("CARGO_BIN_EXE_af2"))
}

#[test]
fn writes_outputs_that_match_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outputs.npz");
    let status = af2()
        .args(["run-features", "--device", "cpu", "--params"])
        .arg(fixture("r0_n20", "params.npz"))
        .arg("--features")
        .arg(fixture("r0_n20", "features.npz"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let ours = read_npz(&out).unwrap();
    let theirs = read_npz(&fixture("r0_n20", "outputs.npz")).unwrap();
    for key in [
        "final_atom_positions",
        "plddt",
        "predicted_aligned_error",
        "ptm",
        "repr_pair",
    ] {
        let (a, b) = (ours[key].to_f32(), theirs[key].to_f32());
        assert_eq!(a.shape, b.shape, "{key}");
        let worst = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        // Loose end-to-end check (1e-3); the parity suite holds the tight tolerances.
        assert!(worst < 1e-3, "{key}: max abs error {worst}");
    }
}

#[test]
fn features_that_do_not_fit_the_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outputs.npz");
    let output = af2()
        .args([
            "run-features",
            "--device",
            "cpu",
            "--recycles",
            "5",
            "--params",
        ])
        .arg(fixture("r0_n20", "params.npz"))
        .arg("--features")
        .arg(fixture("r0_n20", "features.npz"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--recycles 5"), "{stderr}");
    assert!(!out.exists(), "no output may be written on error");
}

#[test]
fn a_missing_weight_file_is_named() {
    let output = af2()
        .args([
            "run-features",
            "--params",
            "/nonexistent/params.npz",
            "--features",
        ])
        .arg(fixture("r0_n20", "features.npz"))
        .args(["--out", "/tmp/never.npz"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/params.npz"));
}
