//! Confidence JSON files: ColabFold's `*_scores_rank_*.json` and the AlphaFold-DB-style
//! predicted-aligned-error JSON.

use crate::atomic::write_atomically;
use crate::error::{IoError, Result};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::Path;

/// `np.around(x, 2)`: round half to even at two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// The contents of ColabFold's `*_scores_rank_*.json`. ColabFold rounds `plddt`, `pae`, `ptm`
/// and `iptm` to two decimals (`np.around(…, 2)`) and keeps `max_pae` as is; [`Scores::new`]
/// does the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// The largest PAE the head can express (31.75 Å for 64 bins).
    pub max_pae: f64,
    /// `N × N` PAE in Å, row = aligned residue.
    pub pae: Vec<Vec<f64>>,
    /// Per-residue pLDDT, 0–100.
    pub plddt: Vec<f64>,
    /// pTM.
    pub ptm: f64,
    /// ipTM, for complexes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iptm: Option<f64>,
}

/// Checks that `pae` holds `n × n` values for `n = plddt.len()`.
fn check_square(pae: &[f64], n: usize) -> Result<()> {
    if n == 0 {
        return Err(IoError::invalid("plddt", "no residues"));
    }
    if pae.len() != n * n {
        return Err(IoError::invalid(
            "pae",
            format!(
                "expected {n}×{n} = {} values for {n} residues, found {}",
                n * n,
                pae.len()
            ),
        ));
    }
    Ok(())
}

fn rows(pae: &[f64], n: usize, round: impl Fn(f64) -> f64) -> Vec<Vec<f64>> {
    pae.chunks_exact(n)
        .map(|r| r.iter().map(|&v| round(v)).collect())
        .collect()
}

impl Scores {
    /// Rounds as ColabFold does. `pae` is `N × N` row-major for `N = plddt.len()`.
    pub fn new(
        plddt: &[f64],
        pae: &[f64],
        max_pae: f64,
        ptm: f64,
        iptm: Option<f64>,
    ) -> Result<Self> {
        let n = plddt.len();
        check_square(pae, n)?;
        Ok(Self {
            max_pae,
            pae: rows(pae, n, round2),
            plddt: plddt.iter().map(|&v| round2(v)).collect(),
            ptm: round2(ptm),
            iptm: iptm.map(round2),
        })
    }

    /// The JSON text (compact, as `json.dump` without indent writes it, keys in ColabFold's
    /// order: `max_pae`, `pae`, `plddt`, `ptm`, `iptm`).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| IoError::invalid("scores", e.to_string()))
    }

    /// Writes the JSON atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = self.to_json().map_err(|e| e.in_file(path))?;
        write_atomically(path, |mut f| f.write_all(text.as_bytes()))
    }
}

/// One entry of the AlphaFold-DB PAE JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaeEntry {
    /// `N × N` PAE in Å, rounded to two decimals.
    pub predicted_aligned_error: Vec<Vec<f64>>,
    /// The largest PAE the head can express.
    pub max_predicted_aligned_error: f64,
}

/// The AlphaFold-DB PAE JSON text, as AlphaFold's `confidence.pae_json`:
/// `[{"predicted_aligned_error": [[…]], "max_predicted_aligned_error": x}]`, compact, errors
/// rounded to two decimals.
pub fn pae_json(pae: &[f64], n: usize, max_pae: f64) -> Result<String> {
    check_square(pae, n)?;
    let entry = [PaeEntry {
        predicted_aligned_error: rows(pae, n, round2),
        max_predicted_aligned_error: max_pae,
    }];
    serde_json::to_string(&entry).map_err(|e| IoError::invalid("pae", e.to_string()))
}

/// Writes [`pae_json`] atomically.
pub fn write_pae_json(path: &Path, pae: &[f64], n: usize, max_pae: f64) -> Result<()> {
    let text = pae_json(pae, n, max_pae).map_err(|e| e.in_file(path))?;
    write_atomically(path, |mut f| f.write_all(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_numpy_around() {
        // np.around uses round-half-to-even on x * 100.
        assert_eq!(round2(1.234), 1.23);
        assert_eq!(round2(1.236), 1.24);
        assert_eq!(round2(0.125), 0.12);
        assert_eq!(round2(0.375), 0.38);
        assert_eq!(round2(-2.5), -2.5);
        assert_eq!(round2(31.75), 31.75);
    }

    #[test]
    fn scores_json_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("x_scores_rank_001_alphafold2_ptm_model_1_seed_000.json");
        let pae = [0.25, 3.13789, 12.0, 0.333];
        let s = Scores::new(&[91.237, 55.0], &pae, 31.75, 0.81234, Some(0.4567)).unwrap();
        s.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"max_pae\":31.75,\"pae\":[[0.25,3.14],[12.0,0.33]]"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["plddt"], serde_json::json!([91.24, 55.0]));
        assert_eq!(v["ptm"], 0.81);
        assert_eq!(v["iptm"], 0.46);
        assert_eq!(v["max_pae"], 31.75);
        let back: Scores = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        // No ipTM for a monomer: the key is absent.
        let mono = Scores::new(&[91.2, 55.0], &pae, 31.75, 0.8, None).unwrap();
        assert!(!mono.to_json().unwrap().contains("iptm"));
    }

    #[test]
    fn pae_json_is_afdb_shaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x_predicted_aligned_error_v1.json");
        write_pae_json(&path, &[0.0, 1.005, 2.499, 3.0], 2, 31.75).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 1);
        assert_eq!(arr[0]["max_predicted_aligned_error"], 31.75);
        let pae = &arr[0]["predicted_aligned_error"];
        assert_eq!(pae.as_array().unwrap().len(), 2);
        assert_eq!(pae[1], serde_json::json!([2.5, 3.0]));
        let back: Vec<PaeEntry> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back[0].predicted_aligned_error[0].len(), 2);
    }

    #[test]
    fn wrong_shape_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pae.json");
        let err = write_pae_json(&path, &[0.0; 3], 2, 31.75).unwrap_err();
        assert!(err.to_string().contains("pae.json"), "{err}");
        assert!(Scores::new(&[1.0, 2.0], &[0.0; 5], 31.75, 0.5, None).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
