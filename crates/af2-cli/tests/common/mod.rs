//! Shared helpers of the end-to-end tests: the binary, tiny random weights, fixture paths.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace's oracle fixture (random weights in the released model_1_ptm layout).
pub fn oracle_params() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/msa_template_n16/params.npz")
}

/// This crate's fixtures.
pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// A weights directory holding the random fixture weights as `params_model_1_ptm.npz`.
pub fn weights_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(oracle_params(), dir.path().join("params_model_1_ptm.npz")).unwrap();
    dir
}

/// The binary, isolated from the user's weights and cache, without progress bars.
pub fn af2(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_af2"));
    c.env_remove("AF2_WEIGHTS")
        .env("XDG_CACHE_HOME", cache)
        .env("AF2_NO_PROGRESS", "1");
    for v in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        c.env_remove(v);
    }
    c
}

/// Runs a command and returns its output, printing stderr for the test log.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Names of the files in a directory, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
