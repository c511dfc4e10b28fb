//! Helpers shared by the integration tests (included with `mod common;`).
#![allow(dead_code)]

use std::path::PathBuf;

/// The three reference fixtures.
pub const FIXTURES: [&str; 3] = ["msa_template_n16", "r0_n20", "single_seq_n24"];

/// `tests/fixtures` of the workspace.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A file of one fixture.
pub fn fixture(name: &str, file: &str) -> PathBuf {
    fixtures_dir().join(name).join(file)
}
