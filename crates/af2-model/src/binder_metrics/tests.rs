//! Tests of the parent module.

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
            let f = |c: f64| 3.8 * (0.9 * k + 1.7 * c).cos() + if c == 0.0 { 2.0 * k } else { 0.0 };
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
    let m = BinderMetrics::from_confidence(&layout, &per_residue, &pae_a, &pae_logits, 64).unwrap();
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
    let m =
        BinderMetrics::from_confidence(&layout, &[10.0, 50.0, 70.0], &pae3(), &logits, 64).unwrap();
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
        af2_io::output::ScreenTable::open(&path, af2_io::output::TableFormat::Csv, schema).unwrap();
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
