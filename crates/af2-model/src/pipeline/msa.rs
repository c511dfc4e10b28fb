//! MSA features as AlphaFold's monomer pipeline makes them (`pipeline.make_msa_features`, then
//! `data_transforms`: `correct_msa_restypes`, `sample_msa`, `make_masked_msa`,
//! `nearest_neighbor_clusters`, `summarize_clusters`, `crop_extra_msa`, `make_msa_feat`).
//!
//! Deterministic by default: the cluster rows are the first `K = min(depth, max_msa_clusters)`
//! rows in order (the query first), the extra MSA the remaining rows in order, cut to
//! `max_extra_msa`, and no BERT masking (ColabDesign does none either). AlphaFold instead shuffles
//! rows 1.. and masks 15% of the cluster positions, with TensorFlow's random streams; with
//! [`MsaSampling`] this module does the same computation with its own seeded generator (same
//! distribution, not TensorFlow's draws). Call it once per recycling iteration with
//! [`MsaSampling::for_iteration`] to resample per recycle, as AlphaFold does.

use af2_io::npz::NdArray;
use af2_io::sequence::Msa;

use super::PipelineError;
use super::query::Query;
use crate::extra_msa_stack::EXTRA_MSA_FEATURES;
use crate::input_embedder::MSA_FEAT;
use crate::residue_constants as rc;

/// One-hot classes of an MSA token: 20 residues, X, gap, BERT mask.
pub const MSA_CLASSES: usize = 23;
/// Token of a gap (`-`) in AlphaFold order.
pub const GAP_TOKEN: u8 = rc::GAP_INDEX as u8;
/// Token of the BERT mask.
pub const MASK_TOKEN: u8 = 22;

/// AlphaFold's default number of cluster rows: `max_msa_clusters` 512 less `max_templates` 4
/// (`reduce_msa_clusters_by_max_templates`).
pub const DEFAULT_MAX_MSA_CLUSTERS: usize = 508;
/// AlphaFold's default extra-MSA depth (`max_extra_msa` of `model_1`/`model_2`; 1024 for the
/// others).
pub const DEFAULT_MAX_EXTRA_MSA: usize = 5120;

/// MSA token (AlphaFold order, 0..=21) of an aligned A3M letter: HHblits' alphabet
/// (`HHBLITS_AA_TO_ID`, which also maps B→D, Z→E, U→C, J/O→X) then
/// `MAP_HHBLITS_AATYPE_TO_OUR_AATYPE`.
pub fn msa_token(letter: char) -> Option<u8> {
    rc::hhblits_aa_to_id(letter).map(|id| rc::MAP_HHBLITS_AATYPE_TO_OUR_AATYPE[id] as u8)
}

/// MSA rows as tokens, before sampling: AlphaFold's raw `msa` (after `correct_msa_restypes`) and
/// `deletion_matrix`. Row 0 is the query.
#[derive(Debug, Clone, PartialEq)]
pub struct MsaRows {
    /// `[D][N]` tokens, AlphaFold order (0..=21).
    pub tokens: Vec<Vec<u8>>,
    /// `[D][N]` deletion counts.
    pub deletions: Vec<Vec<f32>>,
}

impl MsaRows {
    /// The single-sequence MSA of a query: one row, its residues, no deletions.
    pub fn single(query: &Query) -> Self {
        let tokens = query
            .sequence
            .chars()
            .map(|c| msa_token(c).unwrap_or(rc::UNK_RESTYPE_INDEX as u8))
            .collect::<Vec<_>>();
        let n = tokens.len();
        MsaRows {
            tokens: vec![tokens],
            deletions: vec![vec![0.0; n]],
        }
    }

    /// Rows of parsed alignments, as `pipeline.make_msa_features` takes them: concatenated in
    /// order, dropping any row whose aligned sequence was seen before (the first copy is kept,
    /// with its deletions). The first alignment's first row is the query.
    pub fn from_msas(msas: &[&Msa]) -> Result<Self, PipelineError> {
        let Some(first) = msas.first() else {
            return Err(PipelineError::Invalid("no MSA given".into()));
        };
        let width = first.width();
        let mut seen = std::collections::HashSet::new();
        let mut rows = MsaRows {
            tokens: Vec::new(),
            deletions: Vec::new(),
        };
        for (m, msa) in msas.iter().enumerate() {
            for (i, sequence) in msa.sequences.iter().enumerate() {
                if !seen.insert(sequence.as_str()) {
                    continue;
                }
                let row_error = |message: String| {
                    PipelineError::Invalid(format!(
                        "MSA {} row {} ('{}', line {}): {message}",
                        m + 1,
                        i + 1,
                        msa.descriptions.get(i).map_or("", String::as_str),
                        msa.lines.get(i).copied().unwrap_or(0)
                    ))
                };
                if sequence.len() != width {
                    return Err(row_error(format!(
                        "{} aligned columns, expected {width}",
                        sequence.len()
                    )));
                }
                let tokens = sequence
                    .chars()
                    .map(|c| msa_token(c).ok_or_else(|| row_error(format!("invalid letter {c:?}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                let deletions = msa.deletion_matrix[i].iter().map(|&d| d as f32).collect();
                rows.tokens.push(tokens);
                rows.deletions.push(deletions);
            }
        }
        Ok(rows)
    }

    /// Rows of one parsed A3M (see [`MsaRows::from_msas`]).
    pub fn from_a3m(msa: &Msa) -> Result<Self, PipelineError> {
        Self::from_msas(&[msa])
    }

    /// The MSA of a complex from one MSA per chain, unpaired, as ColabFold pads them for
    /// monomer models: row 0 is the whole query, then each chain's rows 1.. with gaps (and no
    /// deletions) over the other chains' columns.
    pub fn block_diagonal(query: &Query, per_chain: &[MsaRows]) -> Result<Self, PipelineError> {
        if per_chain.len() != query.chain_lengths.len() {
            return Err(PipelineError::Invalid(format!(
                "{} MSAs for {} chains",
                per_chain.len(),
                query.chain_lengths.len()
            )));
        }
        let n = query.len();
        let mut rows = MsaRows::single(query);
        for (k, chain_rows) in per_chain.iter().enumerate() {
            let range = query.chain_range(k);
            if chain_rows.width() != range.len() {
                return Err(PipelineError::Invalid(format!(
                    "the MSA of chain {} is {} columns wide; the chain has {} residues",
                    k + 1,
                    chain_rows.width(),
                    range.len()
                )));
            }
            for (tokens, deletions) in chain_rows.tokens.iter().zip(&chain_rows.deletions).skip(1) {
                let mut t = vec![GAP_TOKEN; n];
                let mut d = vec![0.0; n];
                t[range.clone()].copy_from_slice(tokens);
                d[range.clone()].copy_from_slice(deletions);
                rows.tokens.push(t);
                rows.deletions.push(d);
            }
        }
        Ok(rows)
    }

    /// Number of rows.
    pub fn depth(&self) -> usize {
        self.tokens.len()
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.tokens.first().map_or(0, Vec::len)
    }
}

/// AlphaFold's random MSA sampling, with our own seeded generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MsaSampling {
    /// Seed of the generator.
    pub seed: u64,
    /// Fraction of cluster positions chosen for BERT masking (AlphaFold: 0.15; 0 = none).
    pub replace_fraction: f32,
    /// Probability mass of a uniform residue (AlphaFold: 0.1).
    pub uniform_prob: f32,
    /// Probability mass of the MSA profile (AlphaFold: 0.1).
    pub profile_prob: f32,
    /// Probability mass of keeping the residue (AlphaFold: 0.1). The rest (0.7) is the mask token.
    pub same_prob: f32,
}

impl MsaSampling {
    /// AlphaFold's eval settings with the given seed.
    pub fn alphafold(seed: u64) -> Self {
        MsaSampling {
            seed,
            replace_fraction: 0.15,
            uniform_prob: 0.1,
            profile_prob: 0.1,
            same_prob: 0.1,
        }
    }

    /// The sampling of recycling iteration `iteration` (a distinct stream per iteration).
    pub fn for_iteration(&self, iteration: usize) -> Self {
        let mut s = *self;
        s.seed = splitmix(self.seed ^ (iteration as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        s
    }
}

/// How the MSA becomes cluster and extra rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MsaConfig {
    /// Most cluster rows (`max_msa_clusters`, less the template slots as AlphaFold does).
    pub max_msa_clusters: usize,
    /// Most extra-MSA rows.
    pub max_extra_msa: usize,
    /// `None`: deterministic (first rows, no BERT masking). `Some`: AlphaFold's sampling.
    pub sampling: Option<MsaSampling>,
}

impl Default for MsaConfig {
    fn default() -> Self {
        MsaConfig {
            max_msa_clusters: DEFAULT_MAX_MSA_CLUSTERS,
            max_extra_msa: DEFAULT_MAX_EXTRA_MSA,
            sampling: None,
        }
    }
}

/// The MSA inputs of one iteration, plus what they were made from.
#[derive(Debug, Clone, PartialEq)]
pub struct MsaFeatures {
    /// `[S, N, 49]`
    pub msa_feat: NdArray<f32>,
    /// `[S, N]`
    pub msa_mask: NdArray<f32>,
    /// `[Se, N, 25]`: one-hot extra MSA (23), has-deletion, deletion value.
    pub extra_feat: NdArray<f32>,
    /// `[Se, N]`
    pub extra_msa_mask: NdArray<f32>,
    /// Input rows that became the clusters, in cluster order.
    pub cluster_rows: Vec<usize>,
    /// Input rows that became the extra MSA, in order (empty: one all-masked dummy row).
    pub extra_rows: Vec<usize>,
    /// `[S, N]` AlphaFold's `bert_mask` (1 where the cluster token was resampled).
    pub bert_mask: NdArray<f32>,
    /// `[S][N]` cluster tokens before masking (AlphaFold's `true_msa`).
    pub true_msa: Vec<Vec<u8>>,
}

/// `2/π·atan(d/3)` in float32, as `make_msa_feat` computes it.
pub fn deletion_value(d: f32) -> f32 {
    (d / 3.0).atan() * (2.0 / std::f64::consts::PI) as f32
}

/// Builds the MSA features of one iteration (see the module documentation).
pub fn make_msa_features(rows: &MsaRows, config: &MsaConfig) -> Result<MsaFeatures, PipelineError> {
    let depth = rows.depth();
    let n = rows.width();
    if depth == 0 || n == 0 {
        return Err(PipelineError::Invalid("the MSA is empty".into()));
    }
    if rows.deletions.len() != depth
        || rows.tokens.iter().any(|r| r.len() != n)
        || rows.deletions.iter().any(|r| r.len() != n)
    {
        return Err(PipelineError::Invalid(
            "MSA rows and deletion rows must all be as wide as the query".into(),
        ));
    }
    if let Some((i, _)) = rows
        .tokens
        .iter()
        .enumerate()
        .find(|(_, r)| r.iter().any(|&t| t > GAP_TOKEN))
    {
        return Err(PipelineError::Invalid(format!(
            "MSA row {i} has a token above 21"
        )));
    }
    if config.max_msa_clusters == 0 {
        return Err(PipelineError::Invalid(
            "max_msa_clusters must be at least 1".into(),
        ));
    }
    let mut rng = config.sampling.map(|s| Rng(s.seed));

    // sample_msa: the query first, then rows 1.. (shuffled when sampling).
    let mut order: Vec<usize> = (0..depth).collect();
    if let Some(rng) = rng.as_mut() {
        for i in (2..depth).rev() {
            let j = 1 + rng.below((i - 1) as u64) as usize;
            order.swap(i, j);
        }
    }
    let num_clusters = depth.min(config.max_msa_clusters);
    let cluster_rows = order[..num_clusters].to_vec();
    let all_extra = &order[num_clusters..];

    let true_msa: Vec<Vec<u8>> = cluster_rows
        .iter()
        .map(|&r| rows.tokens[r].clone())
        .collect();
    let mut msa = true_msa.clone();
    let mut bert_mask = vec![0.0f32; num_clusters * n];
    if let (Some(sampling), Some(rng)) = (config.sampling, rng.as_mut()) {
        bert_masking(rows, &sampling, rng, &mut msa, &mut bert_mask);
    }

    // nearest_neighbor_clusters + summarize_clusters over all extra rows (before the crop).
    let mut profile_sum = vec![0.0f32; num_clusters * n * MSA_CLASSES];
    let mut count = vec![0.0f32; num_clusters * n];
    let mut deletion_sum = vec![0.0f32; num_clusters * n];
    for &e in all_extra {
        let extra = &rows.tokens[e];
        let c = nearest_cluster(extra, &msa);
        for j in 0..n {
            let k = c * n + j;
            profile_sum[k * MSA_CLASSES + extra[j] as usize] += 1.0;
            count[k] += 1.0;
            deletion_sum[k] += rows.deletions[e][j];
        }
    }

    let mut msa_feat = vec![0.0f32; num_clusters * n * MSA_FEAT];
    for (c, (&r, cluster)) in cluster_rows.iter().zip(&msa).enumerate() {
        for (j, &token) in cluster.iter().enumerate() {
            let token = token as usize;
            let k = c * n + j;
            let f = &mut msa_feat[k * MSA_FEAT..(k + 1) * MSA_FEAT];
            let d = rows.deletions[r][j];
            f[token] = 1.0;
            f[23] = d.clamp(0.0, 1.0);
            f[24] = deletion_value(d);
            // mask_counts = 1e-6 + msa_mask + csum(extra_mask), in float32 and in this order.
            let mask_count = (1e-6f32 + 1.0) + count[k];
            let mut sums = [0.0f32; MSA_CLASSES];
            sums.copy_from_slice(&profile_sum[k * MSA_CLASSES..(k + 1) * MSA_CLASSES]);
            sums[token] += 1.0;
            for (out, s) in f[25..25 + MSA_CLASSES].iter_mut().zip(sums) {
                *out = s / mask_count;
            }
            f[48] = deletion_value((deletion_sum[k] + d) / mask_count);
        }
    }

    // crop_extra_msa: the first rows (already in random order when sampling).
    let extra_rows: Vec<usize> = all_extra
        .iter()
        .copied()
        .take(config.max_extra_msa)
        .collect();
    let (extra_feat, extra_msa_mask) = extra_features(rows, &extra_rows, n);

    Ok(MsaFeatures {
        msa_feat: NdArray {
            shape: vec![num_clusters, n, MSA_FEAT],
            data: msa_feat,
        },
        msa_mask: NdArray {
            shape: vec![num_clusters, n],
            data: vec![1.0; num_clusters * n],
        },
        extra_feat,
        extra_msa_mask,
        cluster_rows,
        extra_rows,
        bert_mask: NdArray {
            shape: vec![num_clusters, n],
            data: bert_mask,
        },
        true_msa,
    })
}

/// AlphaFold's `nearest_neighbor_clusters`: the cluster whose row agrees with `extra` at the
/// most positions, counting only residue tokens 0..=20 (gap and mask agreements weigh 0); ties
/// go to the lowest cluster index (`argmax`).
pub fn nearest_cluster(extra: &[u8], clusters: &[Vec<u8>]) -> usize {
    let mut best = (0usize, -1i64);
    for (c, row) in clusters.iter().enumerate() {
        let agreement = extra
            .iter()
            .zip(row)
            .filter(|&(&a, &b)| a == b && (a as usize) < rc::GAP_INDEX)
            .count() as i64;
        if agreement > best.1 {
            best = (c, agreement);
        }
    }
    best.0
}

/// The extra-MSA features of the chosen rows, or one all-masked dummy row (token 0, mask 0) when
/// there is none, as AlphaFold's zero padding and ColabDesign's inputs have it.
fn extra_features(rows: &MsaRows, extra_rows: &[usize], n: usize) -> (NdArray<f32>, NdArray<f32>) {
    let se = extra_rows.len().max(1);
    let mut feat = vec![0.0f32; se * n * EXTRA_MSA_FEATURES];
    let mut mask = vec![0.0f32; se * n];
    if extra_rows.is_empty() {
        for j in 0..n {
            feat[j * EXTRA_MSA_FEATURES] = 1.0;
        }
    }
    for (e, &r) in extra_rows.iter().enumerate() {
        for j in 0..n {
            let k = e * n + j;
            let f = &mut feat[k * EXTRA_MSA_FEATURES..(k + 1) * EXTRA_MSA_FEATURES];
            let d = rows.deletions[r][j];
            f[rows.tokens[r][j] as usize] = 1.0;
            f[23] = d.clamp(0.0, 1.0);
            f[24] = deletion_value(d);
            mask[k] = 1.0;
        }
    }
    (
        NdArray {
            shape: vec![se, n, EXTRA_MSA_FEATURES],
            data: feat,
        },
        NdArray {
            shape: vec![se, n],
            data: mask,
        },
    )
}

/// AlphaFold's `make_masked_msa` on the cluster rows: each position is chosen with probability
/// `replace_fraction` and replaced by a draw from `uniform_prob·U(20 residues) + profile_prob·
/// profile + same_prob·one_hot(token)`, the remaining mass on the mask token. The profile is the
/// mean one-hot (22 classes) over all input rows (`make_hhblits_profile`).
fn bert_masking(
    rows: &MsaRows,
    sampling: &MsaSampling,
    rng: &mut Rng,
    msa: &mut [Vec<u8>],
    bert_mask: &mut [f32],
) {
    let n = rows.width();
    let depth = rows.depth() as f32;
    let mut profile = vec![0.0f32; n * 22];
    for row in &rows.tokens {
        for (j, &t) in row.iter().enumerate() {
            profile[j * 22 + t as usize] += 1.0;
        }
    }
    profile.iter_mut().for_each(|p| *p /= depth);
    let mask_prob =
        (1.0 - sampling.uniform_prob - sampling.profile_prob - sampling.same_prob).max(0.0);
    for (c, row) in msa.iter_mut().enumerate() {
        for j in 0..n {
            if rng.uniform() >= sampling.replace_fraction {
                continue;
            }
            let mut probs = [0.0f32; MSA_CLASSES];
            for (k, p) in probs.iter_mut().enumerate().take(22) {
                let uniform = if k < 20 { 0.05 } else { 0.0 };
                *p = sampling.uniform_prob * uniform + sampling.profile_prob * profile[j * 22 + k];
            }
            probs[row[j] as usize] += sampling.same_prob;
            probs[MASK_TOKEN as usize] = mask_prob;
            let total: f32 = probs.iter().sum();
            let mut draw = rng.uniform() * total;
            let mut chosen = MASK_TOKEN;
            for (k, &p) in probs.iter().enumerate() {
                if draw < p {
                    chosen = k as u8;
                    break;
                }
                draw -= p;
            }
            row[j] = chosen;
            bert_mask[c * n + j] = 1.0;
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small seeded generator (SplitMix64): reproducible across platforms.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform integer in [0, bound] (inclusive).
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % (bound + 1)
    }
}
