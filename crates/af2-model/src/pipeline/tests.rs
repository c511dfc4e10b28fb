//! Feature-pipeline tests: against the oracle's features (DeepMind AlphaFold 2.3.2's TF pipeline,
//! `tests/fixtures/*/features.npz`) where they are deterministic, and against hand-worked values.
//!
//! The oracle's pipeline samples: it shuffles MSA rows 1.. into the clusters and BERT-masks 15% of
//! cluster positions (`bert_mask`). The fixtures are small enough that every row is a cluster
//! (there is no extra row: the oracle's extra MSA is one all-zero padding row), so cluster rows
//! are matched to ours by `true_msa` (rows are unique after de-duplication), and the BERT-dependent
//! channels (the one-hot 0..23 and the cluster profile 25..48) are compared where `bert_mask == 0`.
//! Deletion channels (23, 24, 48) are compared everywhere.
//!
//! Tolerances: integer, one-hot, mask, profile and position values must be bitwise equal (they
//! are the same float32 operations on the same inputs). Deletion values go through `atan`, whose
//! float32 result may differ by an ulp between Rust's libm and TensorFlow's Eigen kernel: 2e-7
//! absolute (values are in [0, 1), ulp 6e-8). Template positions read back from a PDB file
//! (3 decimals) are within 5e-4 Å of the oracle's float32 values, plus float32 rounding: 5.1e-4.

use std::collections::BTreeMap;
use std::path::PathBuf;

use af2_io::features::{feature_slice, num_recycle_slices, read_features};
use af2_io::npz::{Array, NdArray};
use af2_io::sequence::parse_a3m;
use af2_io::structure::{Atom, Chain, Residue, StructureFormat, parse_structure};

use super::msa::{deletion_value, nearest_cluster};
use super::*;
use crate::features::{Features, TemplateFeatures};
use crate::residue_constants as rc;

const DELETION_TOL: f32 = 2e-7;
const PDB_TOL: f32 = 5.1e-4;

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(case)
}

/// The first string value of `"key": "..."` in a JSON text (meta.json is plain enough).
fn json_string(text: &str, key: &str) -> String {
    let at = text.find(&format!("\"{key}\":")).expect(key) + key.len() + 3;
    let rest = text[at..].trim_start();
    let rest = rest.strip_prefix('"').expect("string value");
    rest[..rest.find('"').unwrap()].to_string()
}

/// The first list of strings `"key": ["...", ...]`.
fn json_string_list(text: &str, key: &str) -> Vec<String> {
    let at = text.find(&format!("\"{key}\":")).expect(key);
    let start = at + text[at..].find('[').unwrap() + 1;
    let end = start + text[start..].find(']').unwrap();
    text[start..end]
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect()
}

struct Oracle {
    query: String,
    msa_sequences: Vec<String>,
    template_sequence: Option<String>,
    /// Per recycle: the model features and the raw arrays.
    slices: Vec<(Features, BTreeMap<String, Array>)>,
}

fn oracle(case: &str) -> Oracle {
    let dir = fixture(case);
    let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap();
    let arrays = read_features(&dir.join("features.npz")).unwrap();
    let slices = (0..num_recycle_slices(&arrays).unwrap())
        .map(|r| {
            let slice = feature_slice(&arrays, r).unwrap();
            (Features::from_arrays(&slice).unwrap(), slice)
        })
        .collect();
    let template_sequence = meta
        .contains("\"template_sequence\": \"")
        .then(|| json_string(&meta, "template_sequence"));
    Oracle {
        query: json_string(&meta, "query_sequence"),
        msa_sequences: json_string_list(&meta, "msa_sequences"),
        template_sequence,
        slices,
    }
}

fn i64s(arrays: &BTreeMap<String, Array>, key: &str) -> NdArray<i64> {
    arrays[key].to_i64().unwrap()
}

fn assert_exact<T: PartialEq + std::fmt::Debug>(
    what: &str,
    ours: &NdArray<T>,
    theirs: &NdArray<T>,
) {
    assert_eq!(ours.shape, theirs.shape, "{what}: shape");
    let bad = ours.data.iter().zip(&theirs.data).position(|(a, b)| a != b);
    if let Some(i) = bad {
        panic!(
            "{what}: element {i} differs: ours {:?}, oracle {:?}",
            ours.data[i], theirs.data[i]
        );
    }
}

fn assert_templates_exact(ours: &TemplateFeatures, theirs: &TemplateFeatures) {
    assert_exact("template_aatype", &ours.aatype, &theirs.aatype);
    assert_exact(
        "template_all_atom_positions",
        &ours.all_atom_positions,
        &theirs.all_atom_positions,
    );
    assert_exact(
        "template_all_atom_masks",
        &ours.all_atom_masks,
        &theirs.all_atom_masks,
    );
    assert_exact("template_mask", &ours.mask, &theirs.mask);
    assert_exact(
        "template_pseudo_beta",
        &ours.pseudo_beta,
        &theirs.pseudo_beta,
    );
    assert_exact(
        "template_pseudo_beta_mask",
        &ours.pseudo_beta_mask,
        &theirs.pseudo_beta_mask,
    );
}

/// Compares everything but the templates; returns the largest deletion-channel difference.
fn compare_with_oracle(built: &BuiltFeatures, oracle: &Oracle) -> f32 {
    let ours = &built.features;
    let n = ours.num_residues();
    let mut worst = 0.0f32;
    for (r, (theirs, arrays)) in oracle.slices.iter().enumerate() {
        assert_eq!(ours.aatype, theirs.aatype, "aatype (recycle {r})");
        assert_eq!(ours.residue_index, theirs.residue_index, "residue_index");
        assert_exact("seq_mask", &ours.seq_mask, &theirs.seq_mask);
        assert_exact("target_feat", &ours.target_feat, &theirs.target_feat);
        assert_exact("msa_mask", &ours.msa_mask, &theirs.msa_mask);
        assert_exact("extra_feat", &ours.extra_feat, &theirs.extra_feat);
        assert_exact(
            "extra_msa_mask",
            &ours.extra_msa_mask,
            &theirs.extra_msa_mask,
        );

        // Cluster rows: match by true_msa, then compare channel by channel.
        let true_msa = i64s(arrays, "true_msa");
        let bert = arrays["bert_mask"].to_f32();
        let s = theirs.num_msa_rows();
        assert_eq!(ours.num_msa_rows(), s, "number of cluster rows");
        let mut used = vec![false; s];
        let (mut compared, mut masked) = (0usize, 0usize);
        for row in 0..s {
            let want: Vec<u8> = true_msa.data[row * n..(row + 1) * n]
                .iter()
                .map(|&t| t as u8)
                .collect();
            let mine = built
                .msa
                .true_msa
                .iter()
                .position(|t| *t == want)
                .unwrap_or_else(|| panic!("oracle cluster row {row} {want:?} is not one of ours"));
            assert!(
                !std::mem::replace(&mut used[mine], true),
                "row matched twice"
            );
            if row == 0 {
                assert_eq!(mine, 0, "the query must be cluster row 0");
            }
            for j in 0..n {
                let a = &ours.msa_feat.data[(mine * n + j) * 49..(mine * n + j + 1) * 49];
                let b = &theirs.msa_feat.data[(row * n + j) * 49..(row * n + j + 1) * 49];
                for ch in [23, 24, 48] {
                    let d = (a[ch] - b[ch]).abs();
                    worst = worst.max(d);
                    assert!(
                        d <= DELETION_TOL,
                        "msa_feat row {row} res {j} ch {ch}: {} vs {}",
                        a[ch],
                        b[ch]
                    );
                }
                if bert.data[row * n + j] == 0.0 {
                    compared += 1;
                    assert_eq!(&a[..23], &b[..23], "one-hot, row {row} res {j}");
                    assert_eq!(&a[25..48], &b[25..48], "profile, row {row} res {j}");
                } else {
                    masked += 1;
                    // The oracle's masked position still holds one token (sanity of the layout).
                    assert_eq!(b[..23].iter().sum::<f32>(), 1.0);
                }
            }
        }
        assert!(
            compared > 2 * masked,
            "too few unmasked positions: {compared} vs {masked}"
        );
    }
    worst
}

#[test]
fn single_sequence_matches_oracle() {
    let oracle = oracle("single_seq_n24");
    assert_eq!(oracle.msa_sequences, vec![oracle.query.clone()]);
    let query = Query::single(&oracle.query).unwrap();
    let n = query.len();
    let built = build_features(
        &query,
        &MsaRows::single(&query),
        Some(placeholder_templates(n)),
        &MsaConfig::default(),
    )
    .unwrap();
    assert_eq!(built.asym_id, vec![0; n]);
    assert_eq!(built.msa.extra_rows, Vec::<usize>::new());
    let worst = compare_with_oracle(&built, &oracle);
    assert_eq!(worst, 0.0);
    for (theirs, _) in &oracle.slices {
        assert_templates_exact(
            built.features.templates.as_ref().unwrap(),
            theirs.templates.as_ref().unwrap(),
        );
    }
}

/// Deletions of the oracle's MSAs, from `raw_features.npz:deletion_matrix_int` (that file also
/// holds string arrays, which our npz reader rejects): `(row, column, count)`.
fn oracle_deletions(case: &str) -> &'static [(usize, usize, u32)] {
    match case {
        "msa_template_n16" => &[
            (1, 0, 1),
            (1, 15, 3),
            (2, 1, 2),
            (3, 8, 4),
            (6, 2, 2),
            (6, 5, 1),
        ],
        "r0_n20" => &[
            (1, 8, 5),
            (2, 12, 7),
            (2, 15, 7),
            (4, 0, 6),
            (4, 7, 3),
            (5, 6, 5),
            (5, 8, 3),
            (6, 19, 7),
            (7, 8, 6),
            (7, 11, 5),
            (7, 14, 2),
            (8, 0, 5),
            (10, 1, 2),
            (11, 0, 3),
        ],
        _ => &[],
    }
}

/// An A3M of the oracle's MSA: insertions (lower-case `x`) before the aligned columns.
fn oracle_a3m(oracle: &Oracle, case: &str) -> String {
    let mut text = String::from("#oracle\n");
    for (i, seq) in oracle.msa_sequences.iter().enumerate() {
        text.push_str(&format!(">row{i}\n"));
        for (j, c) in seq.chars().enumerate() {
            for &(_, _, d) in oracle_deletions(case)
                .iter()
                .filter(|&&(row, col, _)| row == i && col == j)
            {
                text.push_str(&"x".repeat(d as usize));
            }
            text.push(c);
        }
        text.push('\n');
    }
    text
}

/// The oracle's template as a structure chain: residues named after `template_sequence`, atoms
/// named by atom37 slot where the mask is set.
fn oracle_template_chain(oracle: &Oracle) -> Chain {
    let t = oracle.slices[0].0.templates.as_ref().unwrap();
    let seq = oracle.template_sequence.as_ref().unwrap();
    let residues = seq
        .chars()
        .enumerate()
        .map(|(i, c)| Residue {
            name: rc::restype_1to3(c).unwrap().to_string(),
            number: i as i64 + 1,
            insertion_code: None,
            hetero: false,
            atoms: (0..37)
                .filter(|&a| t.all_atom_masks.data[i * 37 + a] == 1.0)
                .map(|a| {
                    let p = &t.all_atom_positions.data[(i * 37 + a) * 3..(i * 37 + a) * 3 + 3];
                    Atom {
                        name: rc::ATOM_TYPES[a].to_string(),
                        element: None,
                        position: [p[0] as f64, p[1] as f64, p[2] as f64],
                        occupancy: 1.0,
                        b_factor: 0.0,
                    }
                })
                .collect(),
        })
        .collect();
    Chain {
        id: "A".into(),
        residues,
    }
}

fn to_pdb(chain: &Chain) -> String {
    let mut out = String::new();
    let mut serial = 1;
    for r in &chain.residues {
        for a in &r.atoms {
            let name = if a.name.len() < 4 {
                format!(" {:<3}", a.name)
            } else {
                a.name.clone()
            };
            out.push_str(&format!(
                "ATOM  {serial:>5} {name} {:>3} {}{:>4}    {:>8.3}{:>8.3}{:>8.3}  1.00  0.00           {}\n",
                r.name,
                chain.id,
                r.number,
                a.position[0],
                a.position[1],
                a.position[2],
                &a.name[..1]
            ));
            serial += 1;
        }
    }
    out.push_str("END\n");
    out
}

fn template_for(oracle: &Oracle) -> TemplateFeatures {
    let chain = oracle_template_chain(oracle);
    let atoms = ChainAtoms::from_chain(&chain, &ChainAtomsOptions::alphafold()).unwrap();
    assert_eq!(&atoms.sequence, oracle.template_sequence.as_ref().unwrap());
    let segment = TemplateSegment {
        atoms: &atoms,
        start: 0,
        rm_seq: false,
        rm_sc: false,
    };
    template_from_segments(oracle.query.len(), &[segment]).unwrap()
}

fn msa_case_matches_oracle(case: &str) {
    let oracle = oracle(case);
    let msa = parse_a3m(&oracle_a3m(&oracle, case), case).unwrap();
    let rows = MsaRows::from_a3m(&msa).unwrap();
    assert_eq!(rows.depth(), oracle.msa_sequences.len());
    let query = Query::single(&oracle.query).unwrap();
    let templates = template_for(&oracle);
    let built = build_features(&query, &rows, Some(templates), &MsaConfig::default()).unwrap();
    let worst = compare_with_oracle(&built, &oracle);
    for (theirs, _) in &oracle.slices {
        assert_templates_exact(
            built.features.templates.as_ref().unwrap(),
            theirs.templates.as_ref().unwrap(),
        );
    }
    eprintln!("{case}: worst deletion-channel difference {worst:e}");
}

#[test]
fn msa_and_template_match_oracle_n16() {
    msa_case_matches_oracle("msa_template_n16");
}

#[test]
fn msa_and_template_match_oracle_n20() {
    msa_case_matches_oracle("r0_n20");
}

#[test]
fn template_through_a_pdb_file_matches_oracle() {
    for case in ["msa_template_n16", "r0_n20"] {
        let oracle = oracle(case);
        let pdb = to_pdb(&oracle_template_chain(&oracle));
        let structure = parse_structure(&pdb, StructureFormat::Pdb, "template.pdb").unwrap();
        let chain = structure.chain("A").unwrap();
        let atoms = ChainAtoms::from_chain(chain, &ChainAtomsOptions::alphafold()).unwrap();
        let segment = TemplateSegment {
            atoms: &atoms,
            start: 0,
            rm_seq: false,
            rm_sc: false,
        };
        let ours = template_from_segments(oracle.query.len(), &[segment]).unwrap();
        let theirs = oracle.slices[0].0.templates.as_ref().unwrap();
        assert_exact("template_aatype", &ours.aatype, &theirs.aatype);
        assert_exact(
            "template_all_atom_masks",
            &ours.all_atom_masks,
            &theirs.all_atom_masks,
        );
        assert_exact(
            "template_pseudo_beta_mask",
            &ours.pseudo_beta_mask,
            &theirs.pseudo_beta_mask,
        );
        let mut worst = 0.0f32;
        for (a, b) in ours
            .all_atom_positions
            .data
            .iter()
            .zip(&theirs.all_atom_positions.data)
            .chain(ours.pseudo_beta.data.iter().zip(&theirs.pseudo_beta.data))
        {
            worst = worst.max((a - b).abs());
        }
        assert!(worst <= PDB_TOL, "{case}: positions differ by {worst}");
        eprintln!("{case}: PDB round trip, worst position difference {worst:e} Å");
    }
}

/// Hand-worked: clusters = first 3 rows, the rest assigned by agreement (ties to the lower
/// cluster, gaps not counted), profiles over all extra rows although only 2 are kept.
#[test]
fn clustering_and_profiles_by_hand() {
    let a3m = ">q\nACDE\n>1\nACFF\n>2\nWWDE\n>3\nACcc--\n>4\nWW-E\n>5\n----\n";
    let rows = MsaRows::from_a3m(&parse_a3m(a3m, "t").unwrap()).unwrap();
    assert_eq!(rows.deletions[3], vec![0.0, 0.0, 2.0, 0.0]);
    let config = MsaConfig {
        max_msa_clusters: 3,
        max_extra_msa: 2,
        sampling: None,
    };
    let m = make_msa_features(&rows, &config).unwrap();
    assert_eq!(m.cluster_rows, vec![0, 1, 2]);
    assert_eq!(m.extra_rows, vec![3, 4]);
    let clusters = &m.true_msa;
    assert_eq!(nearest_cluster(&rows.tokens[3], clusters), 0); // tie 2-2 with cluster 1
    assert_eq!(nearest_cluster(&rows.tokens[4], clusters), 2);
    assert_eq!(nearest_cluster(&rows.tokens[5], clusters), 0); // no agreement at all

    let tok = |c: char| msa::msa_token(c).unwrap() as usize;
    let feat = |c: usize, j: usize| &m.msa_feat.data[(c * 4 + j) * 49..(c * 4 + j + 1) * 49];
    let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-6;
    // Cluster 0: ACDE + AC(cc)-- + ----: three rows.
    let c0 = 1.0 + 1e-6 + 2.0;
    let expect0 = [
        [('A', 2.0), ('-', 1.0)],
        [('C', 2.0), ('-', 1.0)],
        [('D', 1.0), ('-', 2.0)],
        [('E', 1.0), ('-', 2.0)],
    ];
    for (j, entries) in expect0.iter().enumerate() {
        let f = feat(0, j);
        for &(c, count) in entries {
            assert!(
                close(f[25 + tok(c)], count / c0),
                "cluster 0 res {j} {c}: {}",
                f[25 + tok(c)]
            );
        }
        assert!(close(f[25..48].iter().sum(), 3.0 / c0));
    }
    // Deletion mean of cluster 0 at column 2: (0 + 2 + 0) / 3.
    let dv = |x: f64| 2.0 / std::f64::consts::PI * (x / 3.0).atan();
    assert!(close(feat(0, 2)[48], dv(2.0 / c0)));
    assert_eq!(feat(0, 1)[48], 0.0);
    // Cluster 1 alone.
    assert!(close(feat(1, 2)[25 + tok('F')], 1.0 / (1.0 + 1e-6)));
    // Cluster 2: WWDE + WW-E.
    let c2 = 1.0 + 1e-6 + 1.0;
    assert!(close(feat(2, 0)[25 + tok('W')], 2.0 / c2));
    assert!(close(feat(2, 2)[25 + tok('D')], 1.0 / c2));
    assert!(close(feat(2, 2)[25 + tok('-')], 1.0 / c2));
    assert!(close(feat(2, 3)[25 + tok('E')], 2.0 / c2));
    // Own one-hot and deletions of the cluster rows.
    assert_eq!(feat(1, 3)[tok('F')], 1.0);
    assert_eq!(feat(0, 2)[23], 0.0);
    // Extra rows 3 and 4: one-hot, has_deletion, deletion value; mask 1.
    let extra = |e: usize, j: usize| &m.extra_feat.data[(e * 4 + j) * 25..(e * 4 + j + 1) * 25];
    assert_eq!(extra(0, 2)[tok('-')], 1.0);
    assert_eq!(extra(0, 2)[23], 1.0);
    assert!(close(extra(0, 2)[24], dv(2.0)));
    assert_eq!(extra(1, 0)[tok('W')], 1.0);
    assert_eq!(m.extra_feat.shape, vec![2, 4, 25]);
    assert_eq!(m.extra_msa_mask.data, vec![1.0; 8]);
    assert_eq!(m.bert_mask.data, vec![0.0; 12]);
}

#[test]
fn deletion_value_formula() {
    for d in [0.0f32, 1.0, 2.0, 3.0, 7.0, 100.0] {
        let want = 2.0 / std::f64::consts::PI * (d as f64 / 3.0).atan();
        assert!((deletion_value(d) as f64 - want).abs() < 1e-7, "{d}");
    }
}

#[test]
fn a3m_rows_are_deduplicated_and_mapped() {
    // Row 3 repeats row 1 (other deletions): dropped, as make_msa_features does.
    let a3m = ">q\nMBZUO\n>a\nM-Z-X\n>b\nMMMMM\n>c\nMa-Z-X\n";
    let msa = parse_a3m(a3m, "t").unwrap();
    let rows = MsaRows::from_a3m(&msa).unwrap();
    assert_eq!(rows.depth(), 3);
    // HHblits alphabet: B→D, Z→E, U→C, O→X.
    let af = |s: &str| {
        s.chars()
            .map(|c| rc::restype_order_with_x(c).unwrap() as u8)
            .collect::<Vec<_>>()
    };
    assert_eq!(rows.tokens[0], af("MDECX"));
    assert_eq!(rows.tokens[1], [12, 21, 6, 21, 20]);
    // The query's aatype maps the same letters to X, as AlphaFold's sequence features do.
    assert_eq!(
        sequence_to_aatype("MBZUO").unwrap(),
        vec![12, 20, 20, 20, 20]
    );
    // A first row that is not the query is refused.
    let q = Query::single("MKKKK").unwrap();
    assert!(build_features(&q, &rows, None, &MsaConfig::default()).is_err());
}

#[test]
fn block_diagonal_msa_of_a_complex() {
    let query = Query::from_chains(&["ACD", "EF"]).unwrap();
    let a = MsaRows::from_a3m(&parse_a3m(">q\nACD\n>1\nAkC-\n", "a").unwrap()).unwrap();
    let b = MsaRows::from_a3m(&parse_a3m(">q\nEF\n>1\nWF\n>2\nE-\n", "b").unwrap()).unwrap();
    let rows = MsaRows::block_diagonal(&query, &[a, b]).unwrap();
    let gap = msa::GAP_TOKEN;
    assert_eq!(rows.depth(), 4);
    assert_eq!(rows.tokens[0], MsaRows::single(&query).tokens[0]);
    assert_eq!(rows.tokens[1][3..], [gap, gap]);
    assert_eq!(rows.deletions[1], vec![0.0, 1.0, 0.0, 0.0, 0.0]);
    assert_eq!(rows.tokens[2][..3], [gap, gap, gap]);
    assert_eq!(rows.tokens[3][3..], [tok('E'), gap]);
    let built = build_features(&query, &rows, None, &MsaConfig::default()).unwrap();
    assert_eq!(built.features.residue_index, vec![0, 1, 2, 52, 53]);
    assert_eq!(built.asym_id, vec![0, 0, 0, 1, 1]);
    assert!(built.features.templates.is_none());

    fn tok(c: char) -> u8 {
        msa::msa_token(c).unwrap()
    }
}

#[test]
fn sampling_is_seeded_and_keeps_the_query_first() {
    // 40 distinct rows of 30 residues.
    let n = 30;
    let mut a3m = String::new();
    for i in 0..40u64 {
        a3m.push_str(&format!(">r{i}\n"));
        for j in 0..n as u64 {
            let hash = ((i * 31 + j + 1).wrapping_mul(2_654_435_761) >> 7) % 20;
            a3m.push(rc::RESTYPES[hash as usize]);
        }
        a3m.push('\n');
    }
    let rows = MsaRows::from_a3m(&parse_a3m(&a3m, "t").unwrap()).unwrap();
    assert_eq!(rows.depth(), 40);
    let config = |seed| MsaConfig {
        max_msa_clusters: 10,
        max_extra_msa: 100,
        sampling: Some(MsaSampling::alphafold(seed)),
    };
    let a = make_msa_features(&rows, &config(1)).unwrap();
    let b = make_msa_features(&rows, &config(1)).unwrap();
    let c = make_msa_features(&rows, &config(2)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.cluster_rows, c.cluster_rows);
    assert_eq!(a.cluster_rows[0], 0);
    let mut all: Vec<usize> = a
        .cluster_rows
        .iter()
        .chain(&a.extra_rows)
        .copied()
        .collect();
    all.sort();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    assert_ne!(a.cluster_rows, (0..10).collect::<Vec<_>>());
    // BERT: about 15% of the 300 cluster positions, each a valid token, the rest untouched.
    let masked = a.bert_mask.data.iter().filter(|&&v| v == 1.0).count();
    assert!((20..=75).contains(&masked), "{masked} masked positions");
    for (c, row) in a.true_msa.iter().enumerate() {
        for (j, &true_token) in row.iter().enumerate() {
            let f = &a.msa_feat.data[(c * n + j) * 49..(c * n + j + 1) * 49];
            let token = f[..23].iter().position(|&v| v == 1.0).unwrap();
            if a.bert_mask.data[c * n + j] == 0.0 {
                assert_eq!(token, true_token as usize);
            }
        }
    }
    let iter1 = MsaSampling::alphafold(1).for_iteration(1);
    assert_ne!(iter1.seed, 1);
}

fn residue(name: &str, number: i64, atoms: &[(&str, [f64; 3])]) -> Residue {
    Residue {
        name: name.into(),
        number,
        insertion_code: None,
        hetero: false,
        atoms: atoms
            .iter()
            .map(|&(n, p)| Atom {
                name: n.into(),
                element: None,
                position: p,
                occupancy: 1.0,
                b_factor: 0.0,
            })
            .collect(),
    }
}

/// Ideal alanine and glycine backbones (AlphaFold's rigid-group literature positions).
fn small_chain() -> Chain {
    let n = [-0.525, 1.363, 0.0];
    let ca = [0.0, 0.0, 0.0];
    let c = [1.526, 0.0, 0.0];
    let shift = |p: [f64; 3], dx: f64| [p[0] + dx, p[1], p[2]];
    Chain {
        id: "T".into(),
        residues: vec![
            residue(
                "ALA",
                10,
                &[
                    ("N", n),
                    ("CA", ca),
                    ("C", c),
                    ("CB", [-0.529, -0.774, -1.205]),
                    ("O", [2.0, 1.0, 0.0]),
                ],
            ),
            residue(
                "GLY",
                11,
                &[
                    ("N", shift(n, 4.0)),
                    ("CA", shift(ca, 4.0)),
                    ("C", shift(c, 4.0)),
                ],
            ),
            residue(
                "SER",
                13,
                &[
                    ("N", shift(n, 8.0)),
                    ("CA", shift(ca, 8.0)),
                    ("C", shift(c, 8.0)),
                    ("CB", [7.5, -0.8, -1.2]),
                    ("OG", [7.0, -1.5, -2.0]),
                ],
            ),
            Residue {
                hetero: true,
                ..residue("HOH", 100, &[("O", [0.0, 9.0, 9.0])])
            },
            residue("ALA", 14, &[("CA", [12.0, 0.0, 0.0])]),
        ],
    }
}

#[test]
fn chain_atoms_follow_the_options() {
    let chain = small_chain();
    let af = ChainAtoms::from_chain(&chain, &ChainAtomsOptions::alphafold()).unwrap();
    assert_eq!(af.sequence, "AGSA");
    assert_eq!(af.residue_numbers, vec![10, 11, 13, 14]);
    assert_eq!(af.masks[1][3], 0.0, "no CB on glycine");
    let cd = ChainAtoms::from_chain(&chain, &ChainAtomsOptions::colabdesign()).unwrap();
    assert_eq!(cd.sequence, "AGS", "the residue without N is dropped");
    assert_eq!(cd.masks[1][3], 1.0, "virtual CB on glycine");
    // The virtual CB of the ideal alanine backbone lands on its ideal CB.
    let cb = cd.positions[0][3];
    let ideal = [-0.529f32, -0.774, -1.205];
    assert_eq!(
        cd.positions[0][3], af.positions[0][3],
        "an existing CB is kept"
    );
    let virt = template::virtual_cb([-0.525, 1.363, 0.0], [0.0; 3], [1.526, 0.0, 0.0]);
    let dist = (0..3)
        .map(|k| (virt[k] as f32 - ideal[k]).powi(2))
        .sum::<f32>()
        .sqrt();
    assert!(
        dist < 0.02,
        "virtual CB {virt:?} is {dist} Å from the ideal CB {cb:?}"
    );
    let len = (0..3).map(|k| virt[k] * virt[k]).sum::<f64>().sqrt();
    assert!((len - 1.522).abs() < 1e-6, "CA-CB {len}");
}

#[test]
fn rm_seq_and_rm_sc_per_segment() {
    let chain = small_chain();
    let atoms = ChainAtoms::from_chain(&chain, &ChainAtomsOptions::colabdesign()).unwrap();
    let plain = ChainAtoms::from_chain(&chain, &ChainAtomsOptions::alphafold()).unwrap();
    let seg = |atoms, start, rm_seq, rm_sc| TemplateSegment {
        atoms,
        start,
        rm_seq,
        rm_sc,
    };
    // Query of 3 + 1 + 4 residues: segment A (rm_seq), one uncovered position, segment B (rm_sc).
    let t = template_from_segments(
        8,
        &[seg(&atoms, 0, true, false), seg(&plain, 4, false, true)],
    )
    .unwrap();
    let aatype = &t.aatype.data;
    assert_eq!(aatype, &vec![21, 21, 21, 21, 0, 7, 15, 0]);
    let mask = |i: usize, a: usize| t.all_atom_masks.data[i * 37 + a];
    let og = rc::atom_order("OG").unwrap();
    assert_eq!(mask(2, og), 0.0, "rm_seq removes side chains");
    assert_eq!(mask(6, og), 0.0, "rm_sc removes side chains");
    assert_eq!(mask(2, 3), 1.0, "CB is kept");
    assert_eq!(mask(6, 4), 0.0, "SER has no O here");
    assert_eq!(mask(4, 4), 1.0, "O kept");
    // Pseudo-beta: rm_seq takes the (virtual) CB of glycine; otherwise glycine takes CA.
    let pb = |i: usize| &t.pseudo_beta.data[i * 3..i * 3 + 3];
    assert_eq!(pb(1), &atoms.positions[1][3][..]);
    assert_eq!(pb(5), &plain.positions[1][1][..]);
    assert_eq!(
        t.pseudo_beta_mask.data,
        vec![1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    );
    // The uncovered position.
    assert!(
        t.all_atom_masks.data[3 * 37..4 * 37]
            .iter()
            .all(|&m| m == 0.0)
    );
    assert_eq!(t.mask.data, vec![1.0]);
    // Overlaps and overflows are refused.
    assert!(
        template_from_segments(
            8,
            &[seg(&atoms, 0, false, false), seg(&plain, 2, false, false)]
        )
        .is_err()
    );
    assert!(template_from_segments(5, &[seg(&plain, 2, false, false)]).is_err());
    let both = stack_templates(&[t.clone(), placeholder_templates(8)]).unwrap();
    assert_eq!(both.aatype.shape, vec![2, 8]);
    assert_eq!(both.mask.data, vec![1.0, 0.0]);
}

/// Our pseudo-beta agrees with the model's tensor version (`all_atom::pseudo_beta`).
#[test]
fn pseudo_beta_agrees_with_all_atom() {
    use burn::tensor::{Int, Tensor, TensorData};
    #[allow(deprecated)]
    let device = burn::tensor::Device::ndarray();
    let chain = small_chain();
    let atoms = ChainAtoms::from_chain(&chain, &ChainAtomsOptions::alphafold()).unwrap();
    let n = atoms.len();
    let t = template_from_segments(
        n,
        &[TemplateSegment {
            atoms: &atoms,
            start: 0,
            rm_seq: false,
            rm_sc: false,
        }],
    )
    .unwrap();
    let aatype = Tensor::<1, Int>::from_data(TensorData::new(t.aatype.data.clone(), [n]), &device);
    let pos = Tensor::<3>::from_data(
        TensorData::new(t.all_atom_positions.data.clone(), [n, 37, 3]),
        &device,
    );
    let mask = Tensor::<2>::from_data(
        TensorData::new(t.all_atom_masks.data.clone(), [n, 37]),
        &device,
    );
    let (pb, pbm) = crate::all_atom::pseudo_beta::<1, 2, 3>(aatype, pos, mask);
    assert_eq!(
        pb.into_data().try_to_vec::<f32>().unwrap(),
        t.pseudo_beta.data
    );
    assert_eq!(
        pbm.into_data().try_to_vec::<f32>().unwrap(),
        t.pseudo_beta_mask.data
    );
}
