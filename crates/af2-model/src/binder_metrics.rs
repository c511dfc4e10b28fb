//! The metrics of ColabDesign's binder protocol (AF2 initial guess), computed in f64 on the host
//! exactly as `colabdesign/af/loss.py` defines them, and the AF2-IG filters that PXDesign applies.
//!
//! The complex is the target chain followed by the binder chain ([`BinderLayout`]): residues
//! `0..target_len` are the target (`asym_id` 0), the last `binder_len` residues the binder
//! (`asym_id` 1).
//!
//! | metric | definition |
//! |---|---|
//! | [`plddt`](BinderMetrics::plddt) | mean pLDDT over binder residues, 0–1 |
//! | [`pae`](BinderMetrics::pae) | (P + Pᵀ)/2 / 31, mean over binder rows × all columns |
//! | [`i_pae`](BinderMetrics::i_pae) | the same over binder rows × target (or hotspot) columns; [`unscaled_i_pae`](BinderMetrics::unscaled_i_pae) = `i_pae × 31` Å |
//! | [`ptm`](BinderMetrics::ptm) | pTM of the complex, residue weights = sequence mask |
//! | [`i_ptm`](BinderMetrics::i_ptm) | the TM formula over pairs with `asym_i ≠ asym_j`, d0 from the full length |
//! | [`rmsd`](BinderMetrics::rmsd) | redesign mode: binder CA RMSD after a Kabsch superposition on the target CA |
//!
//! Masked means follow ColabDesign's `mask_loss`: `Σ x·m / (1e-8 + Σ m)`.

use crate::confidence;
use af2_io::output::{FilterCell, ScreenRow, TableSchema};
use nalgebra::{Matrix3, SVD, Vector3};
use serde::{Deserialize, Serialize};

/// ColabDesign divides PAE (in Å) by this constant for its `pae` and `i_pae` metrics.
pub const PAE_SCALE: f64 = 31.0;

/// The epsilon of ColabDesign's masked means (`mask_loss`) and weight normalisation.
const MASK_EPS: f64 = 1e-8;

/// Errors from inconsistent metric inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// An input has the wrong number of elements.
    #[error("{what}: expected {expected} values, found {found}")]
    Length {
        /// Which input.
        what: &'static str,
        /// The number required by the layout.
        expected: usize,
        /// The number given.
        found: usize,
    },
    /// A hotspot index is outside the complex.
    #[error("hotspot residue {index} is outside the complex of {len} residues")]
    Hotspot {
        /// The offending 0-based index.
        index: usize,
        /// The complex length.
        len: usize,
    },
    /// A value that must be finite is not (NaN or infinite coordinates, say).
    #[error("{what}: non-finite value")]
    NonFinite {
        /// Which input.
        what: &'static str,
    },
    /// Nothing to compute over (no residues, or every weight zero).
    #[error("{what}: no residues to compute over")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// The 3×3 SVD of the Kabsch superposition did not converge.
    #[error("Kabsch superposition: the SVD did not converge")]
    Svd,
}

/// Result alias of this module.
pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

/// How the complex is laid out: the target first, then the binder (ColabDesign's binder protocol).
#[derive(Debug, Clone, PartialEq)]
pub struct BinderLayout {
    /// Residues of the target chain (the first `target_len` residues).
    pub target_len: usize,
    /// Residues of the binder chain (the last `binder_len` residues).
    pub binder_len: usize,
    /// 0-based residue indices into the complex whose columns replace the target's in `i_pae`
    /// (ColabDesign's `hotspot`); normally target residues.
    pub hotspot: Option<Vec<usize>>,
    /// Per-residue sequence mask (ColabDesign's `seq_mask`); all ones when `None`.
    pub seq_mask: Option<Vec<f64>>,
}

impl BinderLayout {
    /// A target of `target_len` residues followed by a binder of `binder_len`, no hotspot, and
    /// every residue present.
    pub fn new(target_len: usize, binder_len: usize) -> Self {
        Self {
            target_len,
            binder_len,
            hotspot: None,
            seq_mask: None,
        }
    }

    /// Sets the hotspot residues (0-based indices into the complex).
    pub fn with_hotspot(mut self, hotspot: Vec<usize>) -> Result<Self> {
        let len = self.len();
        if let Some(&index) = hotspot.iter().find(|&&i| i >= len) {
            return Err(MetricsError::Hotspot { index, len });
        }
        self.hotspot = Some(hotspot);
        Ok(self)
    }

    /// Sets the sequence mask.
    pub fn with_seq_mask(mut self, seq_mask: Vec<f64>) -> Result<Self> {
        check_len("seq_mask", self.len(), seq_mask.len())?;
        self.seq_mask = Some(seq_mask);
        Ok(self)
    }

    /// Residues in the complex.
    pub fn len(&self) -> usize {
        self.target_len + self.binder_len
    }

    /// Whether the complex has no residues.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sequence mask (all ones unless set).
    pub fn seq_mask(&self) -> Vec<f64> {
        self.seq_mask
            .clone()
            .unwrap_or_else(|| vec![1.0; self.len()])
    }

    /// ColabDesign's `binder_id`: the sequence mask on the last `binder_len` residues, else 0.
    pub fn binder_mask(&self) -> Vec<f64> {
        let mask = self.seq_mask();
        (0..self.len())
            .map(|i| if i >= self.target_len { mask[i] } else { 0.0 })
            .collect()
    }

    /// ColabDesign's `target_id`: the sequence mask on the hotspot residues if a hotspot is set,
    /// else on the first `target_len` residues; 0 elsewhere.
    pub fn target_mask(&self) -> Vec<f64> {
        let mask = self.seq_mask();
        let mut out = vec![0.0; self.len()];
        match &self.hotspot {
            Some(hotspot) => {
                for &i in hotspot {
                    out[i] = mask[i];
                }
            }
            None => out[..self.target_len].copy_from_slice(&mask[..self.target_len]),
        }
        out
    }

    /// Chain ids: 0 for the target, 1 for the binder.
    pub fn asym_id(&self) -> Vec<i64> {
        (0..self.len())
            .map(|i| i64::from(i >= self.target_len))
            .collect()
    }

    fn check(&self) -> Result<()> {
        if let Some(mask) = &self.seq_mask {
            check_len("seq_mask", self.len(), mask.len())?;
        }
        if let Some(hotspot) = &self.hotspot {
            let len = self.len();
            if let Some(&index) = hotspot.iter().find(|&&i| i >= len) {
                return Err(MetricsError::Hotspot { index, len });
            }
        }
        Ok(())
    }
}

fn check_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(MetricsError::Length {
            what,
            expected,
            found,
        })
    }
}

/// ColabDesign's `mask_loss`: `Σ x·m / (1e-8 + Σ m)`.
pub fn masked_mean(values: &[f64], mask: &[f64]) -> f64 {
    let num: f64 = values.iter().zip(mask).map(|(x, m)| x * m).sum();
    let den: f64 = mask.iter().sum();
    num / (MASK_EPS + den)
}

/// Binder pLDDT on 0–1 from per-residue pLDDT on 0–100 ([`confidence::plddt`]'s scale), as
/// ColabDesign logs it: `1 − mask_loss(1 − plddt, binder_mask)`.
pub fn plddt(per_residue: &[f64], layout: &BinderLayout) -> Result<f64> {
    layout.check()?;
    check_len("plddt", layout.len(), per_residue.len())?;
    let loss: Vec<f64> = per_residue.iter().map(|p| 1.0 - p / 100.0).collect();
    Ok(1.0 - masked_mean(&loss, &layout.binder_mask()))
}

/// `(P + Pᵀ) / 2` of an `n × n` row-major matrix.
pub fn symmetrize(pae: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = 0.5 * (pae[i * n + j] + pae[j * n + i]);
        }
    }
    out
}

/// ColabDesign's `get_pae_loss`: the PAE (Å, `n × n` row-major, row = aligned residue) divided
/// by 31 and symmetrised, averaged with the pair mask `rows[i] · cols[j]`.
pub fn masked_pae(pae: &[f64], rows: &[f64], cols: &[f64]) -> Result<f64> {
    let n = rows.len();
    check_len("pae column mask", n, cols.len())?;
    check_len("pae", n * n, pae.len())?;
    let sym = symmetrize(pae, n);
    let mut values = Vec::with_capacity(n * n);
    let mut mask = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            values.push(sym[i * n + j] / PAE_SCALE);
            mask.push(rows[i] * cols[j]);
        }
    }
    Ok(masked_mean(&values, &mask))
}

/// `pae`: binder rows × all columns (columns weighted by the sequence mask), scaled by 1/31.
pub fn binder_pae(pae: &[f64], layout: &BinderLayout) -> Result<f64> {
    layout.check()?;
    masked_pae(pae, &layout.binder_mask(), &layout.seq_mask())
}

/// `i_pae`: binder rows × target columns (hotspot columns if set), scaled by 1/31. Multiply by
/// [`PAE_SCALE`] for PXDesign's `unscaled_i_pAE` in Å.
pub fn interface_pae(pae: &[f64], layout: &BinderLayout) -> Result<f64> {
    layout.check()?;
    masked_pae(pae, &layout.binder_mask(), &layout.target_mask())
}

fn check_logits(pae_logits: &[f32], bins: usize, layout: &BinderLayout) -> Result<()> {
    layout.check()?;
    let n = layout.len();
    check_len("pae logits", n * n * bins, pae_logits.len())?;
    if n == 0 || bins < 3 {
        return Err(MetricsError::Empty { what: "pae logits" });
    }
    Ok(())
}

/// pTM of the complex from `[N, N, bins]` PAE logits, residue weights = the sequence mask.
pub fn ptm(pae_logits: &[f32], bins: usize, layout: &BinderLayout) -> Result<f64> {
    check_logits(pae_logits, bins, layout)?;
    let weights = layout.seq_mask();
    Ok(confidence::predicted_tm_score(
        pae_logits,
        bins,
        Some(&weights),
        None,
        false,
    ))
}

/// ipTM: the TM formula over pairs of different chains, d0 from the full (masked) length, the
/// maximum over aligned residues. Defined for monomer `_ptm` models too.
pub fn i_ptm(pae_logits: &[f32], bins: usize, layout: &BinderLayout) -> Result<f64> {
    check_logits(pae_logits, bins, layout)?;
    let weights = layout.seq_mask();
    let asym = layout.asym_id();
    Ok(confidence::predicted_tm_score(
        pae_logits,
        bins,
        Some(&weights),
        Some(&asym),
        true,
    ))
}

/// A rigid superposition `x ↦ R (x − mobile_centroid) + reference_centroid`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Superposition {
    /// The proper rotation (det +1), acting on column vectors.
    pub rotation: Matrix3<f64>,
    /// The (weighted) centroid of the mobile points.
    pub mobile_centroid: Vector3<f64>,
    /// The (weighted) centroid of the reference points.
    pub reference_centroid: Vector3<f64>,
}

impl Superposition {
    /// Moves one mobile point onto the reference frame.
    pub fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        let v = self.rotation * (Vector3::from(p) - self.mobile_centroid) + self.reference_centroid;
        [v.x, v.y, v.z]
    }
}

fn weighted_centroid(points: &[[f64; 3]], weights: &[f64]) -> Vector3<f64> {
    let total: f64 = weights.iter().sum();
    points
        .iter()
        .zip(weights)
        .fold(Vector3::zeros(), |acc, (p, w)| acc + Vector3::from(*p) * *w)
        / total
}

fn check_points(what: &'static str, points: &[[f64; 3]]) -> Result<()> {
    if points.iter().flatten().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(MetricsError::NonFinite { what })
    }
}

/// The weighted least-squares superposition of `mobile` onto `reference` (Kabsch), as
/// ColabDesign's `_np_kabsch`: the SVD of the weighted covariance, with the sign of the
/// smallest singular direction flipped when needed so that the result is a proper rotation.
/// `weights` default to one; they need not be normalised but must not all be zero.
pub fn kabsch(
    mobile: &[[f64; 3]],
    reference: &[[f64; 3]],
    weights: Option<&[f64]>,
) -> Result<Superposition> {
    check_len("reference points", mobile.len(), reference.len())?;
    check_points("mobile points", mobile)?;
    check_points("reference points", reference)?;
    let ones = vec![1.0; mobile.len()];
    let weights = weights.unwrap_or(&ones);
    check_len("superposition weights", mobile.len(), weights.len())?;
    if !weights.iter().all(|w| w.is_finite()) {
        return Err(MetricsError::NonFinite {
            what: "superposition weights",
        });
    }
    if weights.iter().sum::<f64>() <= 0.0 {
        return Err(MetricsError::Empty {
            what: "superposition",
        });
    }
    let mobile_centroid = weighted_centroid(mobile, weights);
    let reference_centroid = weighted_centroid(reference, weights);
    // H = Σ w (p − p̄)(t − t̄)ᵀ, ColabDesign's `a.T @ b` with a = (P − P̄)·W, b = T − T̄.
    let mut h = Matrix3::zeros();
    for ((p, t), w) in mobile.iter().zip(reference).zip(weights) {
        let a = (Vector3::from(*p) - mobile_centroid) * *w;
        let b = Vector3::from(*t) - reference_centroid;
        h += a * b.transpose();
    }
    let svd = SVD::try_new(h, true, true, f64::EPSILON, 10_000).ok_or(MetricsError::Svd)?;
    let (mut u, v_t) = (
        svd.u.ok_or(MetricsError::Svd)?,
        svd.v_t.ok_or(MetricsError::Svd)?,
    );
    // Singular values are sorted in decreasing order: flip the last (smallest) direction.
    if (u * v_t).determinant() < 0.0 {
        u.column_mut(2).neg_mut();
    }
    // ColabDesign applies `x @ (U Vᵀ)` to row vectors; for column vectors that is (U Vᵀ)ᵀ x.
    let rotation = (u * v_t).transpose();
    Ok(Superposition {
        rotation,
        mobile_centroid,
        reference_centroid,
    })
}

fn squared_distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|k| (a[k] - b[k]).powi(2)).sum()
}

/// Plain CA RMSD after the optimal superposition of `mobile` on `reference`:
/// `sqrt(Σ m |R p + t − q|² / Σ m)`, the mask (default all ones) weighting both the
/// superposition and the deviation. Used for the bound/unbound binder RMSD.
pub fn ca_rmsd(reference: &[[f64; 3]], mobile: &[[f64; 3]], mask: Option<&[f64]>) -> Result<f64> {
    let ones = vec![1.0; mobile.len()];
    let mask = mask.unwrap_or(&ones);
    let sup = kabsch(mobile, reference, Some(mask))?;
    let msd: f64 = mobile
        .iter()
        .zip(reference)
        .zip(mask)
        .map(|((p, q), m)| m * squared_distance(sup.apply(*p), *q))
        .sum::<f64>()
        / mask.iter().sum::<f64>();
    Ok(msd.sqrt())
}

/// The redesign-mode `rmsd`, as ColabDesign's `get_rmsd_loss(L=target_len, include_L=False)`:
/// superpose the predicted CA (`pred_ca`) on the input complex's CA (`true_ca`) using the target
/// residues only, then the weighted RMSD over the binder residues, `sqrt(msd + 1e-8)`. Weights are
/// the sequence mask times `true_ca_mask` (the input structure's CA atom mask; all ones if `None`).
pub fn binder_rmsd(
    true_ca: &[[f64; 3]],
    pred_ca: &[[f64; 3]],
    true_ca_mask: Option<&[f64]>,
    layout: &BinderLayout,
) -> Result<f64> {
    layout.check()?;
    let n = layout.len();
    check_len("true CA", n, true_ca.len())?;
    check_len("predicted CA", n, pred_ca.len())?;
    let seq_mask = layout.seq_mask();
    let raw: Vec<f64> = match true_ca_mask {
        Some(m) => {
            check_len("true CA mask", n, m.len())?;
            seq_mask.iter().zip(m).map(|(a, b)| a * b).collect()
        }
        None => seq_mask,
    };
    let total: f64 = raw.iter().sum();
    let w: Vec<f64> = raw.iter().map(|x| x / (total + MASK_EPS)).collect();
    let tl = layout.target_len;
    let binder_w: f64 = w[tl..].iter().sum();
    if w[..tl].iter().sum::<f64>() <= 0.0 {
        return Err(MetricsError::Empty { what: "target CA" });
    }
    if binder_w <= 0.0 {
        return Err(MetricsError::Empty { what: "binder CA" });
    }
    check_points("predicted CA", pred_ca)?;
    check_points("true CA", true_ca)?;
    let sup = kabsch(&pred_ca[..tl], &true_ca[..tl], Some(&w[..tl]))?;
    let weighted_sd: f64 = (tl..n)
        .map(|i| w[i] * squared_distance(sup.apply(pred_ca[i]), true_ca[i]))
        .sum();
    Ok((weighted_sd / binder_w + MASK_EPS).sqrt())
}

/// Every number that the binder protocol reports for one design.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BinderMetrics {
    /// Mean pLDDT over the binder, 0–1.
    pub plddt: f64,
    /// Symmetrised PAE / 31 over binder rows × all columns.
    pub pae: f64,
    /// Symmetrised PAE / 31 over binder rows × target (or hotspot) columns.
    pub i_pae: f64,
    /// `i_pae × 31`, in Å (PXDesign's `unscaled_i_pAE`).
    pub unscaled_i_pae: f64,
    /// pTM of the complex.
    pub ptm: f64,
    /// Interface pTM (pairs of different chains, d0 from the full length).
    pub i_ptm: f64,
    /// Redesign mode: binder CA RMSD (Å) against the input complex after superposing the target.
    pub rmsd: Option<f64>,
    /// Binder CA RMSD (Å) between the binder folded alone and the binder in the complex.
    pub bound_unbound_rmsd: Option<f64>,
    /// Mean pLDDT (0–1) of the binder folded alone (PXDesign's `pLDDT_MONOMER`).
    pub plddt_monomer: Option<f64>,
}

impl BinderMetrics {
    /// The confidence metrics of one complex prediction: per-residue pLDDT on 0–100, the PAE
    /// matrix in Å (`N × N`, row = aligned residue) and the `[N, N, bins]` PAE logits (for the
    /// TM scores). The RMSD fields start empty.
    pub fn from_confidence(
        layout: &BinderLayout,
        plddt_per_residue: &[f64],
        pae_angstrom: &[f64],
        pae_logits: &[f32],
        bins: usize,
    ) -> Result<Self> {
        let i_pae = interface_pae(pae_angstrom, layout)?;
        Ok(Self {
            plddt: plddt(plddt_per_residue, layout)?,
            pae: binder_pae(pae_angstrom, layout)?,
            i_pae,
            unscaled_i_pae: i_pae * PAE_SCALE,
            ptm: ptm(pae_logits, bins, layout)?,
            i_ptm: i_ptm(pae_logits, bins, layout)?,
            rmsd: None,
            bound_unbound_rmsd: None,
            plddt_monomer: None,
        })
    }

    /// The value of one metric, `None` where it was not computed.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::Plddt => Some(self.plddt),
            Metric::Pae => Some(self.pae),
            Metric::IPae => Some(self.i_pae),
            Metric::UnscaledIPae => Some(self.unscaled_i_pae),
            Metric::Ptm => Some(self.ptm),
            Metric::IPtm => Some(self.i_ptm),
            Metric::Rmsd => self.rmsd,
            Metric::BoundUnboundRmsd => self.bound_unbound_rmsd,
            Metric::PlddtMonomer => self.plddt_monomer,
        }
    }

    /// Applies each filter.
    pub fn evaluate(&self, filters: &[Filter]) -> Vec<FilterOutcome> {
        filters.iter().map(|f| f.evaluate(self)).collect()
    }

    /// The screening-table columns for these filters: every metric of [`Metric::ALL`], then
    /// pass/fail and the failed criteria per filter.
    pub fn table_schema(filters: &[Filter]) -> TableSchema {
        TableSchema::new(
            Metric::ALL.iter().map(|m| m.name()),
            filters.iter().map(|f| f.name()),
        )
    }

    /// This design's screening-table row under [`BinderMetrics::table_schema`]`(filters)`.
    pub fn screen_row(&self, id: &str, sequence: &str, filters: &[Filter]) -> ScreenRow {
        ScreenRow {
            id: id.to_string(),
            sequence: sequence.to_string(),
            metrics: Metric::ALL.iter().map(|&m| self.get(m)).collect(),
            filters: self
                .evaluate(filters)
                .into_iter()
                .map(|o| FilterCell {
                    passed: o.passed,
                    failed: o.reasons(),
                })
                .collect(),
            error: None,
        }
    }
}

mod filters;
pub use filters::{Criterion, FailedCriterion, Filter, FilterOutcome, Metric, UnknownFilter};

#[cfg(test)]
mod tests;
