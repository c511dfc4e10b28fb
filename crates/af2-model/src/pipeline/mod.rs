//! The feature pipeline in Rust: from a query (one or more chains), an MSA and template chains to
//! the model's [`Features`] of one iteration, as AlphaFold v2.3.2's monomer pipeline
//! (`data/pipeline.py` + `model/tf/data_transforms.py`) and ColabDesign's inputs build them.
//!
//! - [`query`]: `aatype`, `residue_index` (chains joined with a gap of 50, `asym_id`),
//!   `target_feat`, `seq_mask`.
//! - [`msa`]: `msa_feat` (49 channels), `msa_mask`, the extra MSA; deterministic by default.
//! - [`template`]: template features from structure chains, with `rm_seq` / `rm_sc`.
//!
//! ```no_run
//! # use af2_model::pipeline::*;
//! let query = Query::single("MKVLAAGIV").unwrap();
//! let built = build_features(
//!     &query,
//!     &MsaRows::single(&query),
//!     Some(placeholder_templates(query.len())),
//!     &MsaConfig::default(),
//! )
//! .unwrap();
//! assert_eq!(built.features.msa_feat.shape, vec![1, 9, 49]);
//! ```

pub mod msa;
pub mod query;
pub mod template;

#[cfg(test)]
mod tests;

pub use msa::{MsaConfig, MsaFeatures, MsaRows, MsaSampling, make_msa_features};
pub use query::{CHAIN_BREAK_OFFSET, Query, sequence_to_aatype, target_feat};
pub use template::{
    ChainAtoms, ChainAtomsOptions, TemplateSegment, placeholder_templates, stack_templates,
    template_from_segments,
};

use crate::features::{Features, TemplateFeatures};

/// Input that the pipeline cannot turn into features.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A sequence character that is not an upper-case letter.
    #[error("invalid residue {letter:?} at position {position}; expected an upper-case letter")]
    InvalidResidue {
        /// 1-based position in the sequence.
        position: usize,
        /// The character.
        letter: char,
    },
    /// An error in one chain of the query.
    #[error("chain {chain}: {source}")]
    InChain {
        /// 1-based chain number.
        chain: usize,
        /// The error.
        source: Box<PipelineError>,
    },
    /// Inconsistent inputs.
    #[error("{0}")]
    Invalid(String),
}

impl PipelineError {
    /// Attributes the error to chain `k` (0-based).
    pub fn in_chain(self, k: usize) -> Self {
        PipelineError::InChain {
            chain: k + 1,
            source: Box::new(self),
        }
    }
}

/// The features of one iteration and what goes with them.
#[derive(Debug, Clone)]
pub struct BuiltFeatures {
    /// The model inputs.
    pub features: Features,
    /// `[N]` chain number of each residue (not a model input of the monomer model; the
    /// interface metrics need it).
    pub asym_id: Vec<i64>,
    /// The MSA rows chosen as clusters and extra rows, and the BERT mask.
    pub msa: MsaFeatures,
}

/// Builds the features of one iteration. The MSA's first row must be the query (its letters read
/// through the HHblits alphabet, as AlphaFold reads the MSA). `templates`: `None` leaves the
/// model's template stack off; AlphaFold's template models (`model_1`, `model_2`) always see at
/// least one template, so pass [`placeholder_templates`] to match them without templates.
pub fn build_features(
    query: &Query,
    msa_rows: &MsaRows,
    templates: Option<TemplateFeatures>,
    config: &MsaConfig,
) -> Result<BuiltFeatures, PipelineError> {
    let n = query.len();
    if msa_rows.width() != n {
        return Err(PipelineError::Invalid(format!(
            "the MSA has {} columns; the query has {n} residues",
            msa_rows.width()
        )));
    }
    let query_row = MsaRows::single(query);
    if msa_rows.tokens.first() != query_row.tokens.first() {
        return Err(PipelineError::Invalid(
            "the first MSA row is not the query sequence".into(),
        ));
    }
    if let Some(t) = &templates
        && t.aatype.shape.get(1) != Some(&n)
    {
        return Err(PipelineError::Invalid(format!(
            "the templates have {:?} positions; the query has {n} residues",
            t.aatype.shape.get(1)
        )));
    }
    let msa = make_msa_features(msa_rows, config)?;
    let features = Features {
        aatype: query.aatype.clone(),
        residue_index: query.residue_index.clone(),
        seq_mask: query::seq_mask(n),
        target_feat: query.target_feat(),
        msa_feat: msa.msa_feat.clone(),
        msa_mask: msa.msa_mask.clone(),
        extra_feat: msa.extra_feat.clone(),
        extra_msa_mask: msa.extra_msa_mask.clone(),
        templates,
    };
    Ok(BuiltFeatures {
        features,
        asym_id: query.asym_id.clone(),
        msa,
    })
}
