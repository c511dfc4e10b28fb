//! Tests of the all-atom geometry: self-consistency (round trips through the torsion angles) and
//! parity with AlphaFold v2.3.2's outputs stored in the golden fixtures.
//!
//! Tolerances. The oracle is float32 JAX; our float32 evaluation order differs in places (matmul
//! accumulation, quaternion renormalisation of the stored trajectory), so agreement is to a few
//! float32 ulps of the magnitudes involved, not bitwise:
//! - coordinates (|x| <= ~20 Å in the fixtures, ulp ~2e-6; observed <= 2e-6): 2e-5 Å;
//! - rotation entries and unit (sin, cos) pairs: 1e-5 (~100 ulp at 1.0; observed <= 1.3e-6);
//! - masks: exact.

use super::*;
use af2_geometry::QuatAffine;
use npyz::npz::NpzArchive;
use std::path::PathBuf;

const COORD_TOL: f32 = 2e-5;
const UNIT_TOL: f32 = 1e-5;

#[allow(deprecated)]
fn device() -> Device {
    Device::ndarray()
}

fn fixture_dir(case: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(case)
}

/// An array from an npz file: shape and data as f32 (ints converted).
struct Arr {
    shape: Vec<usize>,
    data: Vec<f32>,
}

fn read(case: &str, file: &str, key: &str) -> Arr {
    let path = fixture_dir(case).join(file);
    let mut npz = NpzArchive::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npz
        .by_name(key)
        .unwrap()
        .unwrap_or_else(|| panic!("{key} missing in {}", path.display()));
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    let data = match npy.dtype().descr().trim_matches('\'') {
        "<f4" => npy.into_vec::<f32>().unwrap(),
        "<i4" => npy
            .into_vec::<i32>()
            .unwrap()
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        "<i8" => npy
            .into_vec::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        other => panic!("{key}: unexpected dtype {other}"),
    };
    Arr { shape, data }
}

impl Arr {
    /// Slice `i` of the leading axis.
    fn index0(&self, i: usize) -> Arr {
        let inner: usize = self.shape[1..].iter().product();
        Arr {
            shape: self.shape[1..].to_vec(),
            data: self.data[i * inner..(i + 1) * inner].to_vec(),
        }
    }

    fn float<const D: usize>(&self) -> Tensor<D> {
        let shape: [usize; D] = self.shape.clone().try_into().unwrap();
        Tensor::from_data(TensorData::new(self.data.clone(), shape), &device())
    }

    fn int<const D: usize>(&self) -> Tensor<D, Int> {
        let shape: [usize; D] = self.shape.clone().try_into().unwrap();
        let data: Vec<i64> = self.data.iter().map(|&v| v as i64).collect();
        Tensor::from_data(TensorData::new(data, shape), &device())
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

/// Largest absolute difference, asserting equal lengths.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const CASES: [&str; 3] = ["msa_template_n16", "single_seq_n24", "r0_n20"];

/// Backbone frames of structure-module layer `l` from the stored trajectory (quaternion `w, x, y,
/// z` renormalised as AlphaFold does, translation already in Å).
fn backbone(traj: &Arr, l: usize) -> Rigid {
    let t: Tensor<2> = traj.index0(l).float();
    QuatAffine::new(t.clone().narrow(1, 0, 4), t.narrow(1, 4, 3)).to_rigid()
}

#[test]
fn side_chains_match_oracle() {
    for case in CASES {
        let aatype_arr = read(case, "features.npz", "aatype").index0(0);
        let n = aatype_arr.shape[0];
        let aatype: Tensor<1, Int> = aatype_arr.int();
        let traj = read(case, "outputs.npz", "structure_traj");
        let angles = read(case, "outputs.npz", "sidechain_angles_sin_cos");
        let frames_ref = read(case, "outputs.npz", "sidechain_frames");
        let atoms_ref = read(case, "outputs.npz", "sidechain_atom_pos");
        let layers = traj.shape[0];
        assert_eq!(layers, 8);

        let (mut worst_rot, mut worst_trans, mut worst_atom14) = (0f32, 0f32, 0f32);
        let mut last_atom14 = None;
        for l in 0..layers {
            let bb = backbone(&traj, l);
            let frames = torsion_angles_to_frames(aatype.clone(), &bb, angles.index0(l).float());
            assert_eq!(frames.batch_size(), n * 8);
            let flat = values(frames.to_flat12());
            let expect = frames_ref.index0(l).data;
            for (got, want) in flat.chunks(12).zip(expect.chunks(12)) {
                worst_rot = worst_rot.max(max_abs_diff(&got[..9], &want[..9]));
                worst_trans = worst_trans.max(max_abs_diff(&got[9..], &want[9..]));
            }
            let atom14 = frames_and_literature_positions_to_atom14_pos(aatype.clone(), &frames);
            assert_eq!(atom14.dims(), [n, 14, 3]);
            let got = values(atom14.clone());
            worst_atom14 = worst_atom14.max(max_abs_diff(&got, &atoms_ref.index0(l).data));
            last_atom14 = Some(atom14);
        }
        let atom14 = last_atom14.unwrap();
        let final14 = read(case, "outputs.npz", "final_atom14_positions");
        let err_final14 = max_abs_diff(&values(atom14.clone()), &final14.data);
        let (atom37, mask37) = atom14_to_atom37(atom14, aatype.clone());
        let err37 = max_abs_diff(
            &values(atom37),
            &read(case, "outputs.npz", "final_atom_positions").data,
        );
        let mask_ref = read(case, "outputs.npz", "final_atom_mask").data;
        assert_eq!(values(mask37), mask_ref, "{case}: final_atom_mask");
        let mask14_ref = read(case, "outputs.npz", "final_atom14_mask").data;
        assert_eq!(
            values(atom14_atom_exists(aatype.clone())),
            mask14_ref,
            "{case}"
        );
        let exists37 = read(case, "features.npz", "atom37_atom_exists")
            .index0(0)
            .data;
        assert_eq!(values(atom37_atom_exists(aatype)), exists37, "{case}");

        eprintln!(
            "{case}: sidechain_frames rot {worst_rot:.2e}, trans {worst_trans:.2e} Å; \
             sidechain_atom_pos {worst_atom14:.2e} Å; final_atom14_positions {err_final14:.2e} Å; \
             final_atom_positions {err37:.2e} Å"
        );
        assert!(worst_rot <= UNIT_TOL, "{case}: rotation error {worst_rot}");
        assert!(
            worst_trans <= COORD_TOL,
            "{case}: translation error {worst_trans}"
        );
        assert!(
            worst_atom14 <= COORD_TOL,
            "{case}: atom14 error {worst_atom14}"
        );
        assert!(
            err_final14 <= COORD_TOL,
            "{case}: final atom14 error {err_final14}"
        );
        assert!(err37 <= COORD_TOL, "{case}: atom37 error {err37}");
    }
}

#[test]
fn template_torsions_match_oracle() {
    for case in CASES {
        let aatype = read(case, "features.npz", "template_aatype").index0(0);
        let pos = read(case, "features.npz", "template_all_atom_positions").index0(0);
        let mask = read(case, "features.npz", "template_all_atom_masks").index0(0);
        let got = atom37_to_torsion_angles(aatype.int(), pos.float(), mask.float());
        let sc = read(case, "outputs.npz", "template_torsion_angles_sin_cos");
        let alt = read(case, "outputs.npz", "template_alt_torsion_angles_sin_cos");
        let tmask = read(case, "outputs.npz", "template_torsion_angles_mask");
        assert_eq!(got.sin_cos.dims().to_vec(), sc.shape);
        assert_eq!(values(got.mask), tmask.data, "{case}: torsion mask");
        let err = max_abs_diff(&values(got.sin_cos), &sc.data);
        let err_alt = max_abs_diff(&values(got.alt_sin_cos), &alt.data);
        eprintln!("{case}: template torsion sin/cos {err:.2e}, alt {err_alt:.2e}");
        assert!(err <= UNIT_TOL, "{case}: sin/cos error {err}");
        assert!(err_alt <= UNIT_TOL, "{case}: alt sin/cos error {err_alt}");
    }
}

#[test]
fn template_pseudo_beta_matches_features() {
    for case in CASES {
        let aatype = read(case, "features.npz", "template_aatype").index0(0);
        let pos = read(case, "features.npz", "template_all_atom_positions").index0(0);
        let mask = read(case, "features.npz", "template_all_atom_masks").index0(0);
        let (pb, pb_mask) = pseudo_beta(aatype.int::<2>(), pos.float::<4>(), mask.float::<3>());
        let want = read(case, "features.npz", "template_pseudo_beta").index0(0);
        let want_mask = read(case, "features.npz", "template_pseudo_beta_mask").index0(0);
        assert_eq!(values(pb), want.data, "{case}");
        assert_eq!(values(pb_mask), want_mask.data, "{case}");
    }
}

fn t1i(v: &[i64]) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &device())
}

/// Residues of all 20 types plus UNK with identity backbones and zero torsions (sin 0, cos 1):
/// every group frame equals its chained default frame, atoms sit at their literature positions.
#[test]
fn zero_torsions_give_literature_geometry() {
    let n = 21;
    let aatype = t1i(&(0..21).collect::<Vec<_>>());
    let bb = Rigid::identity(n, &device());
    let mut angles = vec![0f32; n * 14];
    for k in 0..n * 7 {
        angles[2 * k + 1] = 1.0;
    }
    let angles = Tensor::from_data(TensorData::new(angles, [n, 7, 2]), &device());
    let frames = torsion_angles_to_frames(aatype.clone(), &bb, angles);
    let atom14 = values(frames_and_literature_positions_to_atom14_pos(
        aatype, &frames,
    ));
    let flat = values(frames.to_flat12());
    let d = rc::derived();
    for rt in 0..21 {
        // Backbone and psi frames are the default frames themselves.
        for g in [0, 3] {
            let m = d.rigid_group_default_frame[rt][g];
            let f = &flat[(rt * 8 + g) * 12..(rt * 8 + g + 1) * 12];
            for i in 0..3 {
                assert_eq!(&f[3 * i..3 * i + 3], &m[i][..3], "rt {rt} g {g}");
                assert_eq!(f[9 + i], m[i][3]);
            }
        }
        // Backbone-group atoms keep their literature positions.
        for a in 0..14 {
            let want = if d.atom14_to_rigid_group[rt][a] == 0 {
                d.atom14_rigid_group_positions[rt][a].map(|v| v * d.atom14_mask[rt][a])
            } else {
                continue;
            };
            assert_eq!(&atom14[(rt * 14 + a) * 3..(rt * 14 + a + 1) * 3], &want);
        }
    }
    // UNK: everything zero except the identity backbone's translation (zero too).
    assert!(flat[20 * 96..].iter().all(|&v| v == 0.0));
}

/// Build residues from random torsions, convert to atom37 and measure the torsions again: psi and
/// the chis come back (phi and omega need a real previous residue), and the mask marks exactly
/// the chis each residue has.
#[test]
fn torsions_round_trip_through_atoms() {
    let n = 20;
    let aatype = t1i(&(0..20).collect::<Vec<_>>());
    // Arbitrary backbone frames: rotations from quaternions, translations spread out.
    let mut quat = Vec::new();
    let mut trans = Vec::new();
    let mut want = Vec::new();
    for i in 0..n {
        let f = i as f32;
        quat.extend([1.0 + 0.1 * f, (0.3 * f).sin(), (0.7 * f).cos(), 0.2]);
        trans.extend([3.8 * f, (f * 0.5).sin() * 4.0, (f * 0.9).cos() * 4.0]);
        for k in 0..7 {
            let angle = 0.37 * (i * 7 + k) as f32 + 0.2;
            want.extend([angle.sin(), angle.cos()]);
        }
    }
    let bb = QuatAffine::new(
        Tensor::from_data(TensorData::new(quat, [n, 4]), &device()),
        Tensor::from_data(TensorData::new(trans, [n, 3]), &device()),
    )
    .to_rigid();
    let angles = Tensor::from_data(TensorData::new(want.clone(), [n, 7, 2]), &device());
    let frames = torsion_angles_to_frames(aatype.clone(), &bb, angles);
    let atom14 = frames_and_literature_positions_to_atom14_pos(aatype.clone(), &frames);
    let (atom37, mask37) = atom14_to_atom37(atom14, aatype.clone());
    let got = atom37_to_torsion_angles(
        aatype.reshape([1, n]),
        atom37.reshape([1, n, 37, 3]),
        mask37.reshape([1, n, 37]),
    );
    let sc = values(got.sin_cos);
    let alt = values(got.alt_sin_cos);
    let mask = values(got.mask);
    let d = rc::derived();
    for rt in 0..n {
        // psi (index 2) and the chis that exist.
        assert_eq!(mask[rt * 7 + 2], 1.0);
        assert_eq!(mask[rt * 7 + 1], if rt == 0 { 0.0 } else { 1.0 });
        for k in 2..7 {
            let present = k == 2 || d.chi_angles_mask[rt][k - 3] == 1.0;
            assert_eq!(mask[rt * 7 + k], if present { 1.0 } else { 0.0 });
            if !present {
                continue;
            }
            let i = (rt * 7 + k) * 2;
            assert!(
                max_abs_diff(&sc[i..i + 2], &want[i..i + 2]) < 1e-5,
                "rt {rt} torsion {k}: {:?} vs {:?}",
                &sc[i..i + 2],
                &want[i..i + 2]
            );
            let sign = if k >= 3 && rc::CHI_PI_PERIODIC[rt][k - 3] == 1.0 {
                -1.0
            } else {
                1.0
            };
            assert_eq!([alt[i], alt[i + 1]], [sign * sc[i], sign * sc[i + 1]]);
        }
    }
}

#[test]
fn atom14_to_atom37_places_every_atom() {
    let n = 21;
    let aatype = t1i(&(0..21).collect::<Vec<_>>());
    // Give every atom14 slot a distinct value.
    let atom14: Vec<f32> = (0..n * 14 * 3).map(|v| v as f32 + 1.0).collect();
    let atom14_t = Tensor::from_data(TensorData::new(atom14.clone(), [n, 14, 3]), &device());
    let (atom37, mask) = atom14_to_atom37(atom14_t, aatype);
    let atom37 = values(atom37);
    let mask = values(mask);
    let d = rc::derived();
    for rt in 0..n {
        for a37 in 0..37 {
            let p = &atom37[(rt * 37 + a37) * 3..(rt * 37 + a37 + 1) * 3];
            if mask[rt * 37 + a37] == 1.0 {
                let a14 = d.atom37_to_atom14[rt][a37];
                assert_eq!(p, &atom14[(rt * 14 + a14) * 3..(rt * 14 + a14 + 1) * 3]);
                assert_eq!(rc::RESTYPE_ATOM14_NAMES[rt][a14], rc::ATOM_TYPES[a37]);
            } else {
                assert_eq!(p, &[0.0; 3]);
            }
        }
    }
}

#[test]
fn pseudo_beta_picks_ca_for_glycine() {
    let aatype = t1i(&[7, 0, 21]);
    let pos: Vec<f32> = (0..3 * 37 * 3).map(|v| v as f32).collect();
    let mut mask = vec![0f32; 3 * 37];
    mask[1] = 1.0; // GLY CA
    mask[37 + 3] = 1.0; // ALA CB
    let (pb, pm) = pseudo_beta(
        aatype,
        Tensor::<3>::from_data(TensorData::new(pos, [3, 37, 3]), &device()),
        Tensor::<2>::from_data(TensorData::new(mask, [3, 37]), &device()),
    );
    let ca = |r: usize| (0..3).map(move |c| ((r * 37 + 1) * 3 + c) as f32);
    let cb = |r: usize| (0..3).map(move |c| ((r * 37 + 3) * 3 + c) as f32);
    let want: Vec<f32> = ca(0).chain(cb(1)).chain(cb(2)).collect();
    assert_eq!(values(pb), want);
    assert_eq!(values(pm), vec![1.0, 1.0, 0.0]);
}
