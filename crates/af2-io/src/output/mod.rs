//! Prediction outputs, written atomically (a temporary file in the same directory, then a
//! rename) so that no partial file is ever left under a final name:
//!
//! - [`pdb`]: PDB files from atom37 coordinates, B-factor = pLDDT;
//! - [`scores`]: ColabFold's scores JSON and the AlphaFold-DB PAE JSON;
//! - [`plots`]: PNG plots of PAE and pLDDT;
//! - [`table`]: the screening table (CSV or JSONL), appended durably and resumable;
//! - file names as ColabFold gives them ([`ColabFoldName`]).
//!
//! Inputs are plain slices (positions, masks, residue names as `&str`), so this module does not
//! depend on the model crate.

pub mod pdb;
pub mod plots;
pub mod scores;
pub mod table;

pub use pdb::{Atom37Structure, pdb_string, write_pdb};
pub use plots::{pae_png, plddt_png, write_pae_png, write_plddt_png};
pub use scores::{PaeEntry, Scores, pae_json, write_pae_json};
pub use table::{FilterCell, ScreenRow, ScreenTable, TableFormat, TableSchema};

/// The 37 atom names of AlphaFold's atom37 representation, in slot order.
pub const ATOM37_NAMES: [&str; 37] = [
    "N", "CA", "C", "CB", "O", "CG", "CG1", "CG2", "OG", "OG1", "SG", "CD", "CD1", "CD2", "ND1",
    "ND2", "OD1", "OD2", "SD", "CE", "CE1", "CE2", "CE3", "NE", "NE1", "NE2", "OE1", "OE2", "CH2",
    "NH1", "NH2", "OH", "CZ", "CZ2", "CZ3", "NZ", "OXT",
];

/// ColabFold's `safe_filename`: every character that is not alphanumeric, `_`, `.` or `-`
/// becomes `_`.
pub fn safe_filename(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The names ColabFold gives one model's files, e.g.
/// `{job}_unrelaxed_rank_001_alphafold2_ptm_model_1_seed_000.pdb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColabFoldName {
    /// The job name, made safe with [`safe_filename`].
    pub job: String,
    /// 1-based rank among the job's models.
    pub rank: usize,
    /// The model type: `alphafold2_ptm` (monomer pTM weights), `alphafold2`, or
    /// `alphafold2_multimer_v3`.
    pub model_type: String,
    /// The 1-based model number (`model_1` … `model_5`).
    pub model: usize,
    /// The random seed.
    pub seed: u64,
}

impl ColabFoldName {
    /// The names of one model's files.
    pub fn new(job: &str, rank: usize, model_type: &str, model: usize, seed: u64) -> Self {
        Self {
            job: safe_filename(job),
            rank,
            model_type: model_type.to_string(),
            model,
            seed,
        }
    }

    /// `rank_001_alphafold2_ptm_model_1_seed_000`.
    pub fn tag(&self) -> String {
        format!(
            "rank_{:03}_{}_model_{}_seed_{:03}",
            self.rank, self.model_type, self.model, self.seed
        )
    }

    /// `{job}_unrelaxed_{tag}.pdb` (or `_relaxed_`).
    pub fn pdb(&self, relaxed: bool) -> String {
        let kind = if relaxed { "relaxed" } else { "unrelaxed" };
        format!("{}_{kind}_{}.pdb", self.job, self.tag())
    }

    /// `{job}_scores_{tag}.json`.
    pub fn scores_json(&self) -> String {
        format!("{}_scores_{}.json", self.job, self.tag())
    }
}

/// `{job}_predicted_aligned_error_v1.json` (ColabFold writes it for the rank-1 model).
pub fn pae_json_name(job: &str) -> String {
    format!("{}_predicted_aligned_error_v1.json", safe_filename(job))
}

/// `{job}_pae.png`.
pub fn pae_png_name(job: &str) -> String {
    format!("{}_pae.png", safe_filename(job))
}

/// `{job}_plddt.png`.
pub fn plddt_png_name(job: &str) -> String {
    format!("{}_plddt.png", safe_filename(job))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_colabfold() {
        let n = ColabFoldName::new("my job/1", 1, "alphafold2_ptm", 1, 0);
        assert_eq!(
            n.pdb(false),
            "my_job_1_unrelaxed_rank_001_alphafold2_ptm_model_1_seed_000.pdb"
        );
        assert_eq!(
            n.scores_json(),
            "my_job_1_scores_rank_001_alphafold2_ptm_model_1_seed_000.json"
        );
        let n = ColabFoldName::new("x", 12, "alphafold2_ptm", 3, 7);
        assert_eq!(
            n.pdb(true),
            "x_relaxed_rank_012_alphafold2_ptm_model_3_seed_007.pdb"
        );
        assert_eq!(pae_json_name("x"), "x_predicted_aligned_error_v1.json");
        assert_eq!(pae_png_name("a.b"), "a.b_pae.png");
        assert_eq!(plddt_png_name("a b"), "a_b_plddt.png");
    }

    #[test]
    fn failed_writes_leave_no_temporary_file() {
        // The atomic helper removes its temporary file when the writer fails.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        std::fs::write(&path, b"old").unwrap();
        let err = crate::atomic::write_atomically(&path, |mut f| {
            use std::io::Write as _;
            f.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["out.json"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
