//! The query: residue types, residue index, chains, and the per-residue features AlphaFold's
//! `make_sequence_features` + `make_msa_feat` derive from them (`aatype`, `target_feat`,
//! `seq_mask`).

use std::ops::Range;

use af2_io::npz::NdArray;

use super::PipelineError;
use crate::input_embedder::TARGET_FEAT;
use crate::residue_constants as rc;

/// Residue-index gap between consecutive chains of a complex (ColabDesign's `+ 50`).
pub const CHAIN_BREAK_OFFSET: i64 = 50;

/// AlphaFold restype indices of a sequence (`residue_constants.sequence_to_onehot` with
/// `restype_order_with_x` and `map_unknown_to_x=True`, then argmax): the 20 standard letters in
/// AlphaFold's order, any other upper-case letter → 20 (`X`). Anything else (lower case, `-`,
/// digits, ...) is an error, as in AlphaFold.
pub fn sequence_to_aatype(sequence: &str) -> Result<Vec<i64>, PipelineError> {
    sequence
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_uppercase() {
                Ok(rc::restype_order(c).unwrap_or(rc::UNK_RESTYPE_INDEX) as i64)
            } else {
                Err(PipelineError::InvalidResidue {
                    position: i + 1,
                    letter: c,
                })
            }
        })
        .collect()
}

/// `target_feat [N, 22]`: channel 0 is AlphaFold's `has_break` (`between_segment_residues`,
/// always 0 for a monomer pipeline, chains included: breaks are expressed by the residue index),
/// channels 1..22 the one-hot `aatype` over 21 classes (`make_msa_feat`).
pub fn target_feat(aatype: &[i64]) -> NdArray<f32> {
    let mut data = vec![0.0f32; aatype.len() * TARGET_FEAT];
    for (i, &a) in aatype.iter().enumerate() {
        data[i * TARGET_FEAT + 1 + a as usize] = 1.0;
    }
    NdArray {
        shape: vec![aatype.len(), TARGET_FEAT],
        data,
    }
}

/// `seq_mask [N]`: all ones (AlphaFold's `make_seq_mask`; padding is never added here).
pub fn seq_mask(num_residues: usize) -> NdArray<f32> {
    NdArray {
        shape: vec![num_residues],
        data: vec![1.0; num_residues],
    }
}

/// Joins per-chain residue numbers as ColabDesign's `prep_pdb` does: the first chain keeps its
/// numbers; each next chain's numbers are shifted by (the previous chain's last shifted index
/// + [`CHAIN_BREAK_OFFSET`]). Chains numbered from 0 thus continue at `last + 50`.
pub fn join_residue_index(chains: &[Vec<i64>]) -> Vec<i64> {
    let mut out = Vec::with_capacity(chains.iter().map(Vec::len).sum());
    let mut offset = 0i64;
    for chain in chains {
        let start = out.len();
        out.extend(chain.iter().map(|&r| r + offset));
        if out.len() > start {
            offset = out[out.len() - 1] + CHAIN_BREAK_OFFSET;
        }
    }
    out
}

/// The query of a prediction: one or more chains, concatenated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The chains' sequences concatenated (upper-case one-letter codes).
    pub sequence: String,
    /// `[N]` AlphaFold restype indices (0..=20).
    pub aatype: Vec<i64>,
    /// `[N]` residue index, with [`CHAIN_BREAK_OFFSET`] gaps between chains.
    pub residue_index: Vec<i64>,
    /// `[N]` chain number of each residue (0, 1, ...), ColabDesign's `asym_id`.
    pub asym_id: Vec<i64>,
    /// Length of each chain.
    pub chain_lengths: Vec<usize>,
}

impl Query {
    /// A single chain numbered 0..N.
    pub fn single(sequence: &str) -> Result<Self, PipelineError> {
        Self::from_chains(&[sequence])
    }

    /// Several chains, each numbered from 0, joined by [`join_residue_index`].
    pub fn from_chains<S: AsRef<str>>(chains: &[S]) -> Result<Self, PipelineError> {
        let numbered: Vec<(&str, Vec<i64>)> = chains
            .iter()
            .map(|c| {
                let c = c.as_ref();
                (c, (0..c.chars().count() as i64).collect())
            })
            .collect();
        Self::from_numbered_chains(&numbered)
    }

    /// Several chains with their own residue numbers (for example a structure's, as ColabDesign
    /// keeps the PDB numbering of the target), joined by [`join_residue_index`].
    pub fn from_numbered_chains(chains: &[(&str, Vec<i64>)]) -> Result<Self, PipelineError> {
        if chains.is_empty() {
            return Err(PipelineError::Invalid("the query has no chain".into()));
        }
        let mut sequence = String::new();
        let mut aatype = Vec::new();
        let mut asym_id = Vec::new();
        let mut chain_lengths = Vec::new();
        for (k, (seq, numbers)) in chains.iter().enumerate() {
            let chain_aatype = sequence_to_aatype(seq).map_err(|e| e.in_chain(k))?;
            if chain_aatype.is_empty() {
                return Err(PipelineError::Invalid(format!("chain {} is empty", k + 1)));
            }
            if numbers.len() != chain_aatype.len() {
                return Err(PipelineError::Invalid(format!(
                    "chain {} has {} residues but {} residue numbers",
                    k + 1,
                    chain_aatype.len(),
                    numbers.len()
                )));
            }
            sequence.push_str(seq);
            asym_id.extend(std::iter::repeat_n(k as i64, chain_aatype.len()));
            chain_lengths.push(chain_aatype.len());
            aatype.extend(chain_aatype);
        }
        let numbers: Vec<Vec<i64>> = chains.iter().map(|(_, n)| n.clone()).collect();
        Ok(Query {
            sequence,
            aatype,
            residue_index: join_residue_index(&numbers),
            asym_id,
            chain_lengths,
        })
    }

    /// Number of residues.
    pub fn len(&self) -> usize {
        self.aatype.len()
    }

    /// Whether the query is empty (never, for a query built by the constructors).
    pub fn is_empty(&self) -> bool {
        self.aatype.is_empty()
    }

    /// Residue range of chain `k`.
    pub fn chain_range(&self, k: usize) -> Range<usize> {
        let start: usize = self.chain_lengths[..k].iter().sum();
        start..start + self.chain_lengths[k]
    }

    /// The sequence of chain `k`.
    pub fn chain_sequence(&self, k: usize) -> &str {
        &self.sequence[self.chain_range(k)]
    }

    /// `target_feat [N, 22]`.
    pub fn target_feat(&self) -> NdArray<f32> {
        target_feat(&self.aatype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aatype_follows_alphafold_order() {
        assert_eq!(
            sequence_to_aatype("ARNDCQEGHILKMFPSTWYVXBZUO").unwrap(),
            vec![
                0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 20, 20,
                20, 20
            ]
        );
        match sequence_to_aatype("AC-D") {
            Err(PipelineError::InvalidResidue { position, letter }) => {
                assert_eq!((position, letter), (3, '-'))
            }
            other => panic!("{other:?}"),
        }
        assert!(sequence_to_aatype("ac").is_err());
    }

    #[test]
    fn target_feat_layout() {
        let t = target_feat(&[0, 19, 20]);
        assert_eq!(t.shape, vec![3, 22]);
        let hot: Vec<usize> = t
            .data
            .chunks(22)
            .map(|r| r.iter().position(|&v| v == 1.0).unwrap())
            .collect();
        assert_eq!(hot, vec![1, 20, 21]);
        assert_eq!(t.data.iter().sum::<f32>(), 3.0);
    }

    #[test]
    fn chains_join_with_gap_50() {
        let q = Query::from_chains(&["ACD", "EF", "G"]).unwrap();
        assert_eq!(q.residue_index, vec![0, 1, 2, 52, 53, 103]);
        assert_eq!(q.asym_id, vec![0, 0, 0, 1, 1, 2]);
        assert_eq!(q.chain_lengths, vec![3, 2, 1]);
        assert_eq!(q.chain_sequence(1), "EF");
        assert_eq!(q.chain_range(2), 5..6);
        // PDB numbering (ColabDesign): gaps inside a chain are kept, the next chain is shifted by
        // the last index + 50.
        let q = Query::from_numbered_chains(&[("AC", vec![5, 9]), ("DE", vec![1, 2])]).unwrap();
        assert_eq!(q.residue_index, vec![5, 9, 60, 61]);
        match Query::from_chains(&["AC", "x"]) {
            Err(e) => assert!(e.to_string().contains("chain 2"), "{e}"),
            Ok(q) => panic!("{q:?}"),
        }
        assert!(Query::from_chains(&["AC", ""]).is_err());
    }
}
