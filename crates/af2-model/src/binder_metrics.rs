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
use std::fmt;
use std::str::FromStr;

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

/// One field of [`BinderMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// [`BinderMetrics::plddt`].
    Plddt,
    /// [`BinderMetrics::pae`].
    Pae,
    /// [`BinderMetrics::i_pae`].
    IPae,
    /// [`BinderMetrics::unscaled_i_pae`].
    UnscaledIPae,
    /// [`BinderMetrics::ptm`].
    Ptm,
    /// [`BinderMetrics::i_ptm`].
    IPtm,
    /// [`BinderMetrics::rmsd`].
    Rmsd,
    /// [`BinderMetrics::bound_unbound_rmsd`].
    BoundUnboundRmsd,
    /// [`BinderMetrics::plddt_monomer`].
    PlddtMonomer,
}

impl Metric {
    /// Every metric, in the order of [`BinderMetrics`]'s fields.
    pub const ALL: [Metric; 9] = [
        Metric::Plddt,
        Metric::Pae,
        Metric::IPae,
        Metric::UnscaledIPae,
        Metric::Ptm,
        Metric::IPtm,
        Metric::Rmsd,
        Metric::BoundUnboundRmsd,
        Metric::PlddtMonomer,
    ];

    /// The field name (also the serialised key).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Plddt => "plddt",
            Metric::Pae => "pae",
            Metric::IPae => "i_pae",
            Metric::UnscaledIPae => "unscaled_i_pae",
            Metric::Ptm => "ptm",
            Metric::IPtm => "i_ptm",
            Metric::Rmsd => "rmsd",
            Metric::BoundUnboundRmsd => "bound_unbound_rmsd",
            Metric::PlddtMonomer => "plddt_monomer",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A strict inequality on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    /// The metric tested.
    pub metric: Metric,
    /// `true`: the metric must exceed `threshold`; `false`: it must be below it.
    pub greater: bool,
    /// The bound (excluded).
    pub threshold: f64,
}

impl Criterion {
    const fn above(metric: Metric, threshold: f64) -> Self {
        Self {
            metric,
            greater: true,
            threshold,
        }
    }

    const fn below(metric: Metric, threshold: f64) -> Self {
        Self {
            metric,
            greater: false,
            threshold,
        }
    }

    /// Whether `value` satisfies the criterion (NaN never does).
    pub fn holds(&self, value: f64) -> bool {
        if self.greater {
            value > self.threshold
        } else {
            value < self.threshold
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.greater { '>' } else { '<' };
        write!(f, "{} {op} {}", self.metric, self.threshold)
    }
}

/// The AF2-IG filters that PXDesign applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// pLDDT > 0.8, i_pTM > 0.5, i_pAE < 0.35, bound/unbound RMSD < 3.5 Å.
    Af2IgEasy,
    /// pLDDT > 0.9, unscaled i_pAE < 7 Å, binder RMSD (prediction vs design) < 1.5 Å.
    Af2IgStrict,
}

const EASY: [Criterion; 4] = [
    Criterion::above(Metric::Plddt, 0.8),
    Criterion::above(Metric::IPtm, 0.5),
    Criterion::below(Metric::IPae, 0.35),
    Criterion::below(Metric::BoundUnboundRmsd, 3.5),
];

const STRICT: [Criterion; 3] = [
    Criterion::above(Metric::Plddt, 0.9),
    Criterion::below(Metric::UnscaledIPae, 7.0),
    Criterion::below(Metric::Rmsd, 1.5),
];

impl Filter {
    /// Both filters.
    pub const ALL: [Filter; 2] = [Filter::Af2IgEasy, Filter::Af2IgStrict];

    /// The filter's name, as used in table columns and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Filter::Af2IgEasy => "af2ig_easy",
            Filter::Af2IgStrict => "af2ig_strict",
        }
    }

    /// The criteria, all of which must hold.
    pub fn criteria(self) -> &'static [Criterion] {
        match self {
            Filter::Af2IgEasy => &EASY,
            Filter::Af2IgStrict => &STRICT,
        }
    }

    /// Tests every criterion; a metric that was not computed fails its criterion.
    pub fn evaluate(self, metrics: &BinderMetrics) -> FilterOutcome {
        let failed: Vec<FailedCriterion> = self
            .criteria()
            .iter()
            .filter_map(|c| {
                let value = metrics.get(c.metric);
                match value {
                    Some(v) if c.holds(v) => None,
                    _ => Some(FailedCriterion {
                        criterion: *c,
                        value,
                    }),
                }
            })
            .collect();
        FilterOutcome {
            filter: self,
            passed: failed.is_empty(),
            failed,
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown filter name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown filter '{0}' (expected af2ig-easy or af2ig-strict)")]
pub struct UnknownFilter(pub String);

impl FromStr for Filter {
    type Err = UnknownFilter;

    /// Accepts `af2ig_easy`, `af2ig-easy`, `AF2-IG-easy`, `easy` (and the same for strict),
    /// case-insensitively.
    fn from_str(s: &str) -> Result<Self, UnknownFilter> {
        let key: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match key.as_str() {
            "af2igeasy" | "easy" => Ok(Filter::Af2IgEasy),
            "af2igstrict" | "af2ig" | "strict" => Ok(Filter::Af2IgStrict),
            _ => Err(UnknownFilter(s.to_string())),
        }
    }
}

/// A criterion that did not hold, with the value found (`None`: the metric was not computed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FailedCriterion {
    /// The criterion.
    pub criterion: Criterion,
    /// The metric's value.
    pub value: Option<f64>,
}

impl fmt::Display for FailedCriterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(v) => write!(
                f,
                "{} = {v:.4} (needs {})",
                self.criterion.metric, self.criterion
            ),
            None => write!(
                f,
                "{} missing (needs {})",
                self.criterion.metric, self.criterion
            ),
        }
    }
}

/// The verdict of one filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterOutcome {
    /// Which filter.
    pub filter: Filter,
    /// Whether every criterion held.
    pub passed: bool,
    /// The criteria that failed, in the filter's order.
    pub failed: Vec<FailedCriterion>,
}

impl FilterOutcome {
    /// The failed criteria as one line, e.g. `"i_ptm = 0.4200 (needs i_ptm > 0.5); rmsd missing
    /// (needs rmsd < 1.5)"`; empty when the filter passed.
    pub fn reasons(&self) -> String {
        self.failed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    // ---- pLDDT -------------------------------------------------------------------------------

    #[test]
    fn plddt_is_the_binder_mean_on_zero_to_one() {
        // Target residues (10, 20) must not count; binder (50, 70, 90) → 0.7.
        let layout = BinderLayout::new(2, 3);
        let p = plddt(&[10.0, 20.0, 50.0, 70.0, 90.0], &layout).unwrap();
        assert_abs_diff_eq!(p, 0.7, epsilon = 1e-8);
        // Masking the last binder residue out of the sequence: (50 + 70) / 2.
        let layout = layout.with_seq_mask(vec![1.0, 1.0, 1.0, 1.0, 0.0]).unwrap();
        let p = plddt(&[10.0, 20.0, 50.0, 70.0, 90.0], &layout).unwrap();
        assert_abs_diff_eq!(p, 0.6, epsilon = 1e-8);
    }

    #[test]
    fn plddt_checks_lengths() {
        let layout = BinderLayout::new(2, 3);
        assert!(matches!(
            plddt(&[1.0; 4], &layout),
            Err(MetricsError::Length { found: 4, .. })
        ));
    }

    // ---- PAE ---------------------------------------------------------------------------------

    /// P[i][j] = 3i + j + 1 (Å): rows 1 2 3 / 4 5 6 / 7 8 9. Its symmetrisation is
    /// 1 3 5 / 3 5 7 / 5 7 9.
    fn pae3() -> Vec<f64> {
        (0..9).map(|k| k as f64 + 1.0).collect()
    }

    #[test]
    fn symmetrize_by_hand() {
        assert_eq!(
            symmetrize(&pae3(), 3),
            vec![1.0, 3.0, 5.0, 3.0, 5.0, 7.0, 5.0, 7.0, 9.0]
        );
    }

    // Masked means divide by `1e-8 + Σ mask`, as ColabDesign does: values come out short by a
    // relative ~1e-8, hence tolerances of 1e-7.

    #[test]
    fn pae_uses_binder_rows_all_columns_symmetrised() {
        // Target = residue 0, binder = residues 1, 2.
        let layout = BinderLayout::new(1, 2);
        // Symmetrised rows 1, 2: (3 + 5 + 7 + 5 + 7 + 9) / 6 = 6 Å. Unsymmetrised it would be 6.5.
        let v = binder_pae(&pae3(), &layout).unwrap();
        assert_abs_diff_eq!(v, 6.0 / 31.0, epsilon = 1e-7);
    }

    #[test]
    fn i_pae_uses_binder_rows_target_columns_symmetrised() {
        let layout = BinderLayout::new(1, 2);
        // Symmetrised S[1][0], S[2][0] = 3, 5 → 4 Å. Unsymmetrised rows would give (4 + 7) / 2 =
        // 5.5, unsymmetrised columns (2 + 3) / 2 = 2.5.
        let v = interface_pae(&pae3(), &layout).unwrap();
        assert_abs_diff_eq!(v, 4.0 / 31.0, epsilon = 1e-7);
        assert_abs_diff_eq!(v * PAE_SCALE, 4.0, epsilon = 1e-6);
    }

    #[test]
    fn i_pae_hotspot_columns_replace_the_target() {
        // 4 residues: target 0..3, binder 3. P[i][j] = 4i + j (Å), asymmetric.
        let pae: Vec<f64> = (0..16).map(|k| k as f64).collect();
        // Symmetrised S[3][j] = (P[3][j] + P[j][3]) / 2 = ((12 + j) + (4j + 3)) / 2.
        // j = 0: 7.5, j = 1: 10, j = 2: 12.5.
        let all = BinderLayout::new(3, 1);
        assert_abs_diff_eq!(
            interface_pae(&pae, &all).unwrap(),
            (7.5 + 10.0 + 12.5) / 3.0 / 31.0,
            epsilon = 1e-7
        );
        let hot = BinderLayout::new(3, 1).with_hotspot(vec![0, 2]).unwrap();
        assert_abs_diff_eq!(
            interface_pae(&pae, &hot).unwrap(),
            (7.5 + 12.5) / 2.0 / 31.0,
            epsilon = 1e-7
        );
        // pae over all columns: (7.5 + 10 + 12.5 + 15) / 4.
        assert_abs_diff_eq!(
            binder_pae(&pae, &hot).unwrap(),
            45.0 / 4.0 / 31.0,
            epsilon = 1e-7
        );
        assert!(matches!(
            BinderLayout::new(3, 1).with_hotspot(vec![4]),
            Err(MetricsError::Hotspot { index: 4, len: 4 })
        ));
    }

    // ---- pTM / ipTM --------------------------------------------------------------------------

    /// `[N, N, 64]` logits with all mass in bin `bin(i, j)`.
    fn one_hot_logits(n: usize, bin: impl Fn(usize, usize) -> usize) -> Vec<f32> {
        let mut logits = vec![-1e4f32; n * n * 64];
        for i in 0..n {
            for j in 0..n {
                logits[(i * n + j) * 64 + bin(i, j)] = 0.0;
            }
        }
        logits
    }

    #[test]
    fn iptm_differs_from_ptm_and_matches_hand_values() {
        // Target 0..3, binder 3..5 (n = 5, d0 from 19 residues: 1.24·∛4 − 1.8).
        // Same-chain pairs: bin 0 (centre 0.25 Å). Cross-chain pairs: bin 10 (5.25 Å) when the
        // aligned residue is 0, bin 20 (10.25 Å) otherwise.
        let n = 5;
        let layout = BinderLayout::new(3, 2);
        let asym = layout.asym_id();
        let logits = one_hot_logits(n, |i, j| {
            if asym[i] == asym[j] {
                0
            } else if i == 0 {
                10
            } else {
                20
            }
        });
        // d0 = 1.24 · 4^(1/3) − 1.8 = 0.168377304...
        let d0 = 1.24 * 4f64.powf(1.0 / 3.0) - 1.8;
        assert_abs_diff_eq!(d0, 0.168_377_304_6, epsilon = 1e-9);
        let tm = |d: f64| 1.0 / (1.0 + (d / d0) * (d / d0));
        let (same, near, far) = (tm(0.25), tm(5.25), tm(10.25));
        // pTM: row 0 sees 3 same-chain pairs and 2 "near" pairs, the best row:
        // (3·same + 2·near) / 5. Rows 3, 4 see 2 same + 3 far, rows 1, 2 3 same + 2 far.
        let ptm_v = ptm(&logits, 64, &layout).unwrap();
        assert_abs_diff_eq!(ptm_v, (3.0 * same + 2.0 * near) / 5.0, epsilon = 1e-9);
        // ipTM: cross pairs only; row 0 averages two "near" pairs.
        let iptm_v = i_ptm(&logits, 64, &layout).unwrap();
        assert_abs_diff_eq!(iptm_v, near, epsilon = 1e-9);
        // Numbers worked out by hand: tm(0.25) = 1 / (1 + (0.25/0.1683773)²) = 0.3120598,
        // tm(5.25) = 0.00102755.
        assert_abs_diff_eq!(same, 0.312_059_8, epsilon = 1e-7);
        assert_abs_diff_eq!(near, 0.001_027_55, epsilon = 1e-8);
        assert_abs_diff_eq!(ptm_v, 0.187_646_9, epsilon = 1e-7);
        assert!((ptm_v - iptm_v).abs() > 0.1);
        // The other rows score lower: the maximum is over aligned residues.
        assert!((3.0 * same + 2.0 * far) / 5.0 < ptm_v);
        assert!((2.0 * same + 3.0 * far) / 5.0 < ptm_v);
    }

    #[test]
    fn iptm_of_larger_complex_uses_full_length_d0() {
        // 30 residues (target 20, binder 10): every pair in bin 4 (2.25 Å). d0 from 30 residues,
        // not from either chain, so pTM = ipTM = tm(2.25) with d0 = 1.24·∛15 − 1.8.
        let layout = BinderLayout::new(20, 10);
        let logits = one_hot_logits(30, |_, _| 4);
        let d0 = 1.24 * 15f64.powf(1.0 / 3.0) - 1.8;
        let expected = 1.0 / (1.0 + (2.25 / d0).powi(2));
        assert_abs_diff_eq!(ptm(&logits, 64, &layout).unwrap(), expected, epsilon = 1e-9);
        assert_abs_diff_eq!(
            i_ptm(&logits, 64, &layout).unwrap(),
            expected,
            epsilon = 1e-9
        );
    }

    // ---- Kabsch and RMSD ---------------------------------------------------------------------

    fn points() -> Vec<[f64; 3]> {
        vec![
            [0.0, 0.0, 0.0],
            [3.8, 0.0, 0.0],
            [5.0, 3.6, 0.2],
            [4.1, 5.9, 2.9],
            [1.0, 6.5, 4.4],
            [-1.7, 4.2, 5.8],
            [-2.3, 1.1, 7.9],
        ]
    }

    /// A rotation of 1 radian about (1, 2, 3)/|…| then a shift of (10, −5, 2.5).
    fn move_rigidly(p: &[[f64; 3]]) -> Vec<[f64; 3]> {
        let axis = nalgebra::Unit::new_normalize(Vector3::new(1.0, 2.0, 3.0));
        let r = nalgebra::Rotation3::from_axis_angle(&axis, 1.0);
        let t = Vector3::new(10.0, -5.0, 2.5);
        p.iter()
            .map(|x| {
                let v = r * Vector3::from(*x) + t;
                [v.x, v.y, v.z]
            })
            .collect()
    }

    #[test]
    fn rigid_copy_has_zero_rmsd_and_kabsch_recovers_it() {
        let a = points();
        let b = move_rigidly(&a);
        assert_abs_diff_eq!(ca_rmsd(&a, &b, None).unwrap(), 0.0, epsilon = 1e-10);
        let sup = kabsch(&b, &a, None).unwrap();
        assert_abs_diff_eq!(sup.rotation.determinant(), 1.0, epsilon = 1e-12);
        for (p, q) in b.iter().zip(&a) {
            let moved = sup.apply(*p);
            for k in 0..3 {
                assert_abs_diff_eq!(moved[k], q[k], epsilon = 1e-10);
            }
        }
    }

    #[test]
    fn known_rmsd_after_superposition() {
        // Two points ±1 on x against ±2 on x: centred, the best rotation is the identity and each
        // point is 1 Å off → RMSD 1.
        let a = [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]];
        let b = [[-2.0, 5.0, 5.0], [2.0, 5.0, 5.0]];
        assert_abs_diff_eq!(ca_rmsd(&a, &b, None).unwrap(), 1.0, epsilon = 1e-12);
    }

    #[test]
    fn mirror_image_is_not_superposable() {
        // A chiral set and its mirror image: a proper rotation cannot match them.
        let a = points();
        let mirrored: Vec<[f64; 3]> = a.iter().map(|p| [-p[0], p[1], p[2]]).collect();
        let rmsd = ca_rmsd(&a, &mirrored, None).unwrap();
        assert!(rmsd > 0.5, "{rmsd}");
        let sup = kabsch(&mirrored, &a, None).unwrap();
        assert_abs_diff_eq!(sup.rotation.determinant(), 1.0, epsilon = 1e-12);
    }

    #[test]
    fn mask_excludes_points_from_rmsd() {
        let a = points();
        let mut b = move_rigidly(&a);
        b[6][0] += 50.0;
        let mask = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        assert_abs_diff_eq!(ca_rmsd(&a, &b, Some(&mask)).unwrap(), 0.0, epsilon = 1e-9);
        assert!(ca_rmsd(&a, &b, None).unwrap() > 1.0);
    }

    #[test]
    fn binder_rmsd_superposes_on_the_target_only() {
        // Target = 5 residues, binder = 2. The prediction is a rigid copy of the complex with the
        // binder displaced by (0, 0, 1.5): superposing on the target undoes the rigid motion, and
        // the binder is 1.5 Å off → sqrt(1.5² + 1e-8).
        let layout = BinderLayout::new(5, 2);
        let truth = points();
        let mut displaced = truth.clone();
        for p in &mut displaced[5..] {
            p[2] += 1.5;
        }
        let pred = move_rigidly(&displaced);
        let r = binder_rmsd(&truth, &pred, None, &layout).unwrap();
        assert_abs_diff_eq!(r, (2.25f64 + 1e-8).sqrt(), epsilon = 1e-9);
        // A plain superposition on all residues would partly absorb the displacement.
        assert!(ca_rmsd(&truth, &pred, None).unwrap() < 1.4);
    }

    #[test]
    fn binder_rmsd_known_displacements_and_ca_mask() {
        // Binder residues moved by 1, 2 and 3 Å: sqrt((1 + 4 + 9) / 3).
        let layout = BinderLayout::new(4, 3);
        let truth = points();
        let mut displaced = truth.clone();
        displaced[4][0] += 1.0;
        displaced[5][1] -= 2.0;
        displaced[6][2] += 3.0;
        let pred = move_rigidly(&displaced);
        let r = binder_rmsd(&truth, &pred, None, &layout).unwrap();
        assert_abs_diff_eq!(r, (14.0f64 / 3.0 + 1e-8).sqrt(), epsilon = 1e-9);
        // Without the CA of residue 6 (mask 0): sqrt((1 + 4) / 2).
        let mask = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let r = binder_rmsd(&truth, &pred, Some(&mask), &layout).unwrap();
        assert_abs_diff_eq!(r, (2.5f64 + 1e-8).sqrt(), epsilon = 1e-9);
    }

    #[test]
    fn rmsd_rejects_bad_input() {
        let layout = BinderLayout::new(4, 3);
        let truth = points();
        let mut bad = truth.clone();
        bad[1][1] = f64::NAN;
        assert!(matches!(
            binder_rmsd(&truth, &bad, None, &layout),
            Err(MetricsError::NonFinite { .. })
        ));
        assert!(matches!(
            binder_rmsd(&truth[..6], &truth, None, &layout),
            Err(MetricsError::Length { .. })
        ));
        assert!(matches!(
            ca_rmsd(&truth, &truth, Some(&[0.0; 7])),
            Err(MetricsError::Empty { .. })
        ));
    }

    // ---- Against a NumPy port of ColabDesign's loss.py ---------------------------------------

    /// Expected values from a NumPy transcription of ColabDesign's `get_plddt`, `get_pae`,
    /// `get_pae_loss`, `mask_loss`, `predicted_tm_score` and `_get_rmsd_loss` (with
    /// `np.linalg.svd` for the Kabsch step), run on the same generated inputs:
    /// n = 7, target 4, binder 3, hotspot [1, 3],
    /// pae_logits[i,j,b] = f32(3 sin(0.7i + 0.3j + 0.37b)), plddt_logits[i,b] = f32(2 cos(1.3i + 0.21b)),
    /// true_ca[k,c] = 3.8 cos(0.9k + 1.7c) + 2k·[c = 0], pred = true + 0.6 sin(1.1k(c + 1)),
    /// CA mask [1, 1, 0, 1, 1, 1, 0].
    #[test]
    fn matches_a_numpy_port_of_colabdesign() {
        let (n, tl) = (7usize, 4usize);
        let mut pae_logits = Vec::with_capacity(n * n * 64);
        for i in 0..n {
            for j in 0..n {
                for b in 0..64 {
                    let x = 0.7 * i as f64 + 0.3 * j as f64 + 0.37 * b as f64;
                    pae_logits.push((3.0 * x.sin()) as f32);
                }
            }
        }
        let mut plddt_logits = Vec::with_capacity(n * 50);
        for i in 0..n {
            for b in 0..50 {
                plddt_logits.push((2.0 * (1.3 * i as f64 + 0.21 * b as f64).cos()) as f32);
            }
        }
        let true_ca: Vec<[f64; 3]> = (0..n)
            .map(|k| {
                let k = k as f64;
                let f =
                    |c: f64| 3.8 * (0.9 * k + 1.7 * c).cos() + if c == 0.0 { 2.0 * k } else { 0.0 };
                [f(0.0), f(1.0), f(2.0)]
            })
            .collect();
        let pred_ca: Vec<[f64; 3]> = true_ca
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let d = |c: f64| 0.6 * (1.1 * k as f64 * (c + 1.0)).sin();
                [p[0] + d(0.0), p[1] + d(1.0), p[2] + d(2.0)]
            })
            .collect();
        let ca_mask = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0];

        let layout = BinderLayout::new(tl, n - tl);
        let per_residue = confidence::plddt(&plddt_logits, 50);
        let (pae_a, _) = confidence::predicted_aligned_error(&pae_logits, 64);
        let m =
            BinderMetrics::from_confidence(&layout, &per_residue, &pae_a, &pae_logits, 64).unwrap();
        let hot = layout.clone().with_hotspot(vec![1, 3]).unwrap();
        let rmsd = binder_rmsd(&true_ca, &pred_ca, Some(&ca_mask), &layout).unwrap();

        assert_abs_diff_eq!(m.plddt, 0.463_103_640_949_922_3, epsilon = 1e-12);
        assert_abs_diff_eq!(m.pae, 0.540_305_571_806_532_6, epsilon = 1e-12);
        assert_abs_diff_eq!(m.i_pae, 0.539_942_775_288_563_4, epsilon = 1e-12);
        assert_abs_diff_eq!(
            interface_pae(&pae_a, &hot).unwrap(),
            0.548_140_643_514_431_7,
            epsilon = 1e-12
        );
        assert_abs_diff_eq!(m.ptm, 0.016_632_765_342_965_79, epsilon = 1e-12);
        assert_abs_diff_eq!(m.i_ptm, 0.022_436_396_374_710_864, epsilon = 1e-12);
        assert_abs_diff_eq!(rmsd, 1.696_603_387_800_555, epsilon = 1e-10);
    }

    // ---- BinderMetrics and filters -----------------------------------------------------------

    fn metrics() -> BinderMetrics {
        BinderMetrics {
            plddt: 0.95,
            pae: 0.2,
            i_pae: 0.15,
            unscaled_i_pae: 0.15 * 31.0,
            ptm: 0.8,
            i_ptm: 0.7,
            rmsd: Some(1.0),
            bound_unbound_rmsd: Some(2.0),
            plddt_monomer: Some(0.9),
        }
    }

    #[test]
    fn from_confidence_combines_the_metrics() {
        let layout = BinderLayout::new(1, 2);
        let logits = one_hot_logits(3, |_, _| 0);
        let m = BinderMetrics::from_confidence(&layout, &[10.0, 50.0, 70.0], &pae3(), &logits, 64)
            .unwrap();
        assert_abs_diff_eq!(m.plddt, 0.6, epsilon = 1e-8);
        assert_abs_diff_eq!(m.pae, 6.0 / 31.0, epsilon = 1e-7);
        assert_abs_diff_eq!(m.i_pae, 4.0 / 31.0, epsilon = 1e-7);
        assert_abs_diff_eq!(m.unscaled_i_pae, 4.0, epsilon = 1e-6);
        assert_abs_diff_eq!(m.ptm, m.i_ptm, epsilon = 1e-8);
        assert_eq!(m.rmsd, None);
        let json = serde_json::to_value(m).unwrap();
        assert_eq!(json["unscaled_i_pae"].as_f64(), Some(m.unscaled_i_pae));
        assert!(json["rmsd"].is_null());
        let back: BinderMetrics = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
        for metric in Metric::ALL {
            assert!(
                serde_json::to_value(m)
                    .unwrap()
                    .get(metric.name())
                    .is_some(),
                "{metric}"
            );
        }
    }

    #[test]
    fn filters_pass_and_name_failed_criteria() {
        let m = metrics();
        let outcomes = m.evaluate(&Filter::ALL);
        assert!(outcomes.iter().all(|o| o.passed), "{outcomes:?}");

        let mut worse = m;
        worse.i_ptm = 0.42;
        worse.plddt = 0.85;
        worse.rmsd = None;
        let easy = Filter::Af2IgEasy.evaluate(&worse);
        assert!(!easy.passed);
        assert_eq!(easy.failed.len(), 1);
        assert_eq!(easy.failed[0].criterion.metric, Metric::IPtm);
        let strict = Filter::Af2IgStrict.evaluate(&worse);
        let failed: Vec<Metric> = strict.failed.iter().map(|f| f.criterion.metric).collect();
        assert_eq!(failed, vec![Metric::Plddt, Metric::Rmsd]);
        assert_eq!(
            strict.reasons(),
            "plddt = 0.8500 (needs plddt > 0.9); rmsd missing (needs rmsd < 1.5)"
        );
    }

    #[test]
    fn filter_thresholds_are_strict_and_nan_fails() {
        let mut m = metrics();
        m.plddt = 0.8; // not > 0.8
        m.i_pae = 0.35; // not < 0.35
        m.bound_unbound_rmsd = Some(f64::NAN);
        let easy = Filter::Af2IgEasy.evaluate(&m);
        let failed: Vec<Metric> = easy.failed.iter().map(|f| f.criterion.metric).collect();
        assert_eq!(
            failed,
            vec![Metric::Plddt, Metric::IPae, Metric::BoundUnboundRmsd]
        );
        let mut m = metrics();
        m.unscaled_i_pae = 7.0;
        m.rmsd = Some(1.49);
        let strict = Filter::Af2IgStrict.evaluate(&m);
        assert_eq!(strict.failed.len(), 1);
        assert_eq!(strict.failed[0].criterion.metric, Metric::UnscaledIPae);
    }

    #[test]
    fn screen_rows_fit_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("screen.csv");
        let filters = Filter::ALL;
        let schema = BinderMetrics::table_schema(&filters);
        let mut table =
            af2_io::output::ScreenTable::open(&path, af2_io::output::TableFormat::Csv, schema)
                .unwrap();
        let mut m = metrics();
        m.rmsd = None;
        table.append(&m.screen_row("d1", "ACDE", &filters)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "id,sequence,plddt,pae,i_pae,unscaled_i_pae,ptm,i_ptm,rmsd,bound_unbound_rmsd,\
             plddt_monomer,af2ig_easy_pass,af2ig_easy_failed,af2ig_strict_pass,\
             af2ig_strict_failed,error"
        );
        assert_eq!(
            lines.next().unwrap(),
            "d1,ACDE,0.95,0.2,0.15,4.6499999999999995,0.8,0.7,,2,0.9,true,,false,\
             rmsd missing (needs rmsd < 1.5),"
        );
    }

    #[test]
    fn filter_names_parse() {
        for s in ["af2ig_easy", "AF2-IG-easy", "easy", "af2ig-easy"] {
            assert_eq!(s.parse::<Filter>().unwrap(), Filter::Af2IgEasy);
        }
        for s in ["af2ig_strict", "AF2-IG strict", "strict", "AF2-IG"] {
            assert_eq!(s.parse::<Filter>().unwrap(), Filter::Af2IgStrict);
        }
        assert!("loose".parse::<Filter>().is_err());
        for f in Filter::ALL {
            assert_eq!(f.name().parse::<Filter>().unwrap(), f);
        }
    }
}
