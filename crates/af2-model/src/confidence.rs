//! Confidence metrics from head logits, computed in f64 on the host as DeepMind's numpy
//! `alphafold.common.confidence` does: pLDDT, expected and maximum PAE, pTM and ipTM.

/// PAE bins are uniform on `[0, 31]` Å; the last bin is open-ended.
pub const MAX_ERROR_BIN: f64 = 31.0;

fn softmax_rows(logits: &[f32], bins: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(bins) {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let exp: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        out.extend(exp.into_iter().map(|e| e / sum));
    }
    out
}

/// Per-residue pLDDT in [0, 100] from `[N, bins]` logits (bin centres `(b + 0.5) / bins`).
pub fn plddt(logits: &[f32], bins: usize) -> Vec<f64> {
    let width = 1.0 / bins as f64;
    softmax_rows(logits, bins)
        .chunks_exact(bins)
        .map(|p| {
            100.0
                * p.iter()
                    .enumerate()
                    .map(|(b, pb)| pb * (b as f64 + 0.5) * width)
                    .sum::<f64>()
        })
        .collect()
}

/// The breaks between PAE bins: `linspace(0, 31, bins - 1)`.
pub fn pae_breaks(bins: usize) -> Vec<f64> {
    (0..bins - 1)
        .map(|b| MAX_ERROR_BIN * b as f64 / (bins - 2) as f64)
        .collect()
}

/// Bin centres: each break plus half a step, and one more step past the last break.
pub fn pae_bin_centers(bins: usize) -> Vec<f64> {
    let breaks = pae_breaks(bins);
    let step = breaks[1] - breaks[0];
    let mut centers: Vec<f64> = breaks.iter().map(|b| b + step / 2.0).collect();
    centers.push(centers[centers.len() - 1] + step);
    centers
}

/// Expected aligned error `[N*N]` and the maximum representable error.
pub fn predicted_aligned_error(logits: &[f32], bins: usize) -> (Vec<f64>, f64) {
    let centers = pae_bin_centers(bins);
    let pae = softmax_rows(logits, bins)
        .chunks_exact(bins)
        .map(|p| p.iter().zip(&centers).map(|(a, b)| a * b).sum())
        .collect();
    (pae, centers[bins - 1])
}

/// pTM (`interface = false`) or ipTM (`interface = true`, pairs of different chains only)
/// from `[N, N, bins]` PAE logits, as `confidence.predicted_tm_score`: residue weights all one
/// unless `residue_weights` is given, d0 from the number of residues (at least 19).
pub fn predicted_tm_score(
    logits: &[f32],
    bins: usize,
    residue_weights: Option<&[f64]>,
    asym_id: Option<&[i64]>,
    interface: bool,
) -> f64 {
    let n = ((logits.len() / bins) as f64).sqrt().round() as usize;
    let ones = vec![1.0; n];
    let weights = residue_weights.unwrap_or(&ones);
    let clipped_num_res = weights.iter().sum::<f64>().max(19.0);
    let d0 = 1.24 * (clipped_num_res - 15.0).cbrt() - 1.8;
    let tm_per_bin: Vec<f64> = pae_bin_centers(bins)
        .iter()
        .map(|c| 1.0 / (1.0 + (c / d0).powi(2)))
        .collect();
    let probs = softmax_rows(logits, bins);
    let term = |i: usize, j: usize| -> f64 {
        let p = &probs[(i * n + j) * bins..(i * n + j + 1) * bins];
        p.iter().zip(&tm_per_bin).map(|(a, b)| a * b).sum()
    };
    let pair_on = |i: usize, j: usize| match (interface, asym_id) {
        (true, Some(asym)) => asym[i] != asym[j],
        _ => true,
    };
    let mut best = (f64::NEG_INFINITY, 0.0);
    for i in 0..n {
        let pair_w: Vec<f64> = (0..n)
            .map(|j| {
                if pair_on(i, j) {
                    weights[i] * weights[j]
                } else {
                    0.0
                }
            })
            .collect();
        let norm = 1e-8 + pair_w.iter().sum::<f64>();
        let per_alignment: f64 = (0..n).map(|j| term(i, j) * pair_w[j] / norm).sum();
        let weighted = per_alignment * weights[i];
        if weighted > best.0 {
            best = (weighted, per_alignment);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_midpoint_plddt() {
        let p = plddt(&[0.0; 50], 50);
        approx::assert_abs_diff_eq!(p[0], 50.0, epsilon = 1e-9);
    }

    #[test]
    fn pae_centres_match_alphafold() {
        let c = pae_bin_centers(64);
        approx::assert_abs_diff_eq!(c[0], 0.25, epsilon = 1e-12);
        approx::assert_abs_diff_eq!(c[63], 31.75, epsilon = 1e-12);
    }

    #[test]
    fn certain_zero_error_gives_high_ptm() {
        // All mass on the first bin (0.25 Å): TM term 1/(1+(0.25/d0)^2) for every pair.
        let n = 30;
        let mut logits = vec![-1e4f32; n * n * 64];
        for k in 0..n * n {
            logits[k * 64] = 0.0;
        }
        let d0 = 1.24 * (30.0f64 - 15.0).cbrt() - 1.8;
        let expected = 1.0 / (1.0 + (0.25 / d0).powi(2));
        approx::assert_abs_diff_eq!(
            predicted_tm_score(&logits, 64, None, None, false),
            expected,
            epsilon = 1e-9
        );
    }
}
