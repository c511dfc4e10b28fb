//! All-atom geometry (AlphaFold v2.3.2 `model/all_atom.py`): side-chain frames from torsion angles
//! (Jumper et al. 2021, Suppl. Alg. 24), atom placement from idealised literature positions,
//! atom14 ↔ atom37 conversion, torsion angles of atom37 structures (template features) and
//! pseudo-beta positions.
//!
//! Restype indices are AlphaFold's (0..20, 20 = UNK); larger values (21 = gap) are treated as UNK,
//! as AlphaFold does explicitly (`jnp.minimum(aatype, 20)`) or implicitly (JAX clamps
//! out-of-range gather indices).

use af2_geometry::{Rigid, constant};
use burn::tensor::{Device, Float, Int, Tensor, TensorData};

use crate::residue_constants::{self as rc, GLY_INDEX, UNK_RESTYPE_INDEX};

#[cfg(test)]
mod tests;

/// Squared-norm regulariser of the torsion-angle normalisation (AlphaFold's `1e-8`).
const TORSION_NORM_EPSILON: f32 = 1e-8;

/// A float table with 21 restype rows, flattened to `[21, K]`, uploaded once per device as the
/// constant `name`.
fn table_f32(
    name: &'static str,
    data: impl IntoIterator<Item = f32>,
    device: &Device,
) -> Tensor<2> {
    let data: Vec<f32> = data.into_iter().collect();
    let k = data.len() / 21;
    constant(name, [21, k], device, || TensorData::new(data, [21, k]))
}

/// An index table with 21 restype rows, flattened to `[21, K]`, uploaded once per device as
/// the constant `name`.
fn table_int(
    name: &'static str,
    data: impl IntoIterator<Item = usize>,
    device: &Device,
) -> Tensor<2, Int> {
    let data: Vec<i64> = data.into_iter().map(|v| v as i64).collect();
    let k = data.len() / 21;
    constant(name, [21, k], device, || TensorData::new(data, [21, k]))
}

/// Restype indices with everything above UNK mapped to UNK.
fn clamp_aatype<const D: usize>(aatype: Tensor<D, Int>) -> Tensor<D, Int> {
    aatype.clamp_max(UNK_RESTYPE_INDEX as i64)
}

/// Per-residue atom14 existence mask (`atom14_atom_exists`).
///
/// # Shapes
/// - aatype: `[N]`
/// - output: `[N, 14]`
pub fn atom14_atom_exists(aatype: Tensor<1, Int>) -> Tensor<2> {
    let device = aatype.device();
    let d = rc::derived();
    table_f32(
        "atom14_mask",
        d.atom14_mask.iter().flatten().copied(),
        &device,
    )
    .select(0, clamp_aatype(aatype))
}

/// Per-residue atom37 existence mask (`atom37_atom_exists`).
///
/// # Shapes
/// - aatype: `[N]`
/// - output: `[N, 37]`
pub fn atom37_atom_exists(aatype: Tensor<1, Int>) -> Tensor<2> {
    let device = aatype.device();
    let d = rc::derived();
    table_f32(
        "atom37_atom_exists",
        d.atom37_atom_exists.iter().flatten().copied(),
        &device,
    )
    .select(0, clamp_aatype(aatype))
}

/// Frame `g` of every residue from frames stored `[N * 8]` residue-major.
fn group(rot: &Tensor<4>, trans: &Tensor<3>, g: usize) -> Rigid {
    let [n, _, _, _] = rot.dims();
    Rigid::new(
        rot.clone().narrow(1, g, 1).reshape([n, 3, 3]),
        trans.clone().narrow(1, g, 1).reshape([n, 3]),
    )
}

/// The 8 rigid-group frames of every residue, from its backbone frame and its 7 torsion angles
/// (omega, phi, psi, chi1..chi4) as (sin, cos): Jumper et al. 2021, Suppl. Alg. 24 lines 2-10
/// (AlphaFold's `torsion_angles_to_frames`). Groups are backbone, pre-omega, phi, psi, chi1..chi4;
/// chi2..chi4 are chained through the previous chi group. Groups a residue lacks (and every group
/// of UNK) come out with a zero rotation, as in AlphaFold.
///
/// # Shapes
/// - aatype: `[N]`
/// - backbone: `[N]` frames (translations in Å)
/// - angles_sin_cos: `[N, 7, 2]`
/// - output: `[N * 8]` frames, residue-major (index `n * 8 + g`)
pub fn torsion_angles_to_frames(
    aatype: Tensor<1, Int>,
    backbone: &Rigid,
    angles_sin_cos: Tensor<3>,
) -> Rigid {
    let [n, seven, two] = angles_sin_cos.dims();
    assert_eq!((seven, two), (7, 2), "angles_sin_cos must be [N, 7, 2]");
    assert_eq!(aatype.dims()[0], n);
    assert_eq!(backbone.batch_size(), n);
    let device = angles_sin_cos.device();
    let aatype = clamp_aatype(aatype);

    // Default frames of every group, relative to the parent group: [N * 8].
    let d = rc::derived();
    let frames = &d.rigid_group_default_frame;
    let rot_table = table_f32(
        "rigid_group_default_frame rotations",
        frames
            .iter()
            .flatten()
            .flat_map(|m| (0..3).flat_map(move |i| (0..3).map(move |j| m[i][j]))),
        &device,
    );
    let trans_table = table_f32(
        "rigid_group_default_frame translations",
        frames
            .iter()
            .flatten()
            .flat_map(|m| (0..3).map(move |i| m[i][3])),
        &device,
    );
    let default_rot = rot_table.select(0, aatype.clone()).reshape([n * 8, 3, 3]);
    let default_trans = trans_table.select(0, aatype).reshape([n * 8, 3]);

    // Rotations about x by each torsion; the backbone group gets the identity.
    let sin = angles_sin_cos.clone().narrow(2, 0, 1).reshape([n, 7]);
    let cos = angles_sin_cos.narrow(2, 1, 1).reshape([n, 7]);
    let sin = Tensor::cat(vec![Tensor::zeros([n, 1], &device), sin], 1).reshape([n * 8, 1]);
    let cos = Tensor::cat(vec![Tensor::ones([n, 1], &device), cos], 1).reshape([n * 8, 1]);
    let zeros = sin.zeros_like();
    let ones = sin.ones_like();
    let rot_x = Tensor::cat(
        vec![
            ones,
            zeros.clone(),
            zeros.clone(),
            zeros.clone(),
            cos.clone(),
            sin.clone().neg(),
            zeros,
            sin,
            cos,
        ],
        1,
    )
    .reshape([n * 8, 3, 3]);

    // Each group's frame relative to its parent: default frame, then the torsion rotation.
    let local_rot = default_rot.matmul(rot_x).reshape([n, 8, 3, 3]);
    let local_trans = default_trans.reshape([n, 8, 3]);

    // Chain chi2..chi4 through the previous chi frame, so every group maps to the backbone frame.
    let mut rots = Vec::with_capacity(8);
    let mut transs = Vec::with_capacity(8);
    for g in 0..5 {
        let f = group(&local_rot, &local_trans, g);
        rots.push(f.rot);
        transs.push(f.trans);
    }
    let mut prev = group(&local_rot, &local_trans, 4);
    for g in 5..8 {
        let f = prev.compose(&group(&local_rot, &local_trans, g));
        rots.push(f.rot.clone());
        transs.push(f.trans.clone());
        prev = f;
    }
    let to_backbone = Rigid::new(
        Tensor::stack::<4>(rots, 1).reshape([n * 8, 3, 3]),
        Tensor::stack::<3>(transs, 1).reshape([n * 8, 3]),
    );

    backbone.repeat_interleave(8).compose(&to_backbone)
}

/// Atom14 positions from the rigid-group frames and the idealised literature positions of each
/// atom in its group (Jumper et al. 2021, Suppl. Alg. 24 line 11; AlphaFold's
/// `frames_and_literature_positions_to_atom14_pos`). Slots a residue lacks are zero.
///
/// # Shapes
/// - aatype: `[N]`
/// - frames: `[N * 8]` frames, residue-major, as from [`torsion_angles_to_frames`]
/// - output: `[N, 14, 3]`
pub fn frames_and_literature_positions_to_atom14_pos(
    aatype: Tensor<1, Int>,
    frames: &Rigid,
) -> Tensor<3> {
    let n = aatype.dims()[0];
    assert_eq!(frames.batch_size(), n * 8, "frames must be [N * 8]");
    let device = aatype.device();
    let aatype = clamp_aatype(aatype);
    let d = rc::derived();

    // Index of the frame that carries each atom: residue * 8 + group.
    let group_idx = table_int(
        "atom14_to_rigid_group",
        d.atom14_to_rigid_group.iter().flatten().copied(),
        &device,
    )
    .select(0, aatype.clone());
    let residue_base = constant::<1, Int>("residue index", [n], &device, || {
        TensorData::new((0..n as i64).collect::<Vec<_>>(), [n])
    })
    .mul_scalar(8)
    .unsqueeze_dim::<2>(1);
    let frame_idx = (group_idx + residue_base).reshape([n * 14]);
    let atom_frames = frames.select(frame_idx);

    let lit = table_f32(
        "atom14_rigid_group_positions",
        d.atom14_rigid_group_positions
            .iter()
            .flatten()
            .flatten()
            .copied(),
        &device,
    )
    .select(0, aatype.clone())
    .reshape([n * 14, 3]);
    let mask = table_f32(
        "atom14_mask",
        d.atom14_mask.iter().flatten().copied(),
        &device,
    )
    .select(0, aatype)
    .reshape([n * 14, 1]);

    (atom_frames.apply_vec(lit) * mask).reshape([n, 14, 3])
}

/// Atom14 → atom37 (AlphaFold's `atom14_to_atom37` followed by the `atom37_atom_exists` masking
/// the structure module applies): every atom37 slot takes its atom14 counterpart, slots the
/// residue lacks are zero.
///
/// # Shapes
/// - atom14: `[N, 14, 3]`
/// - aatype: `[N]`
/// - output: positions `[N, 37, 3]`, `atom37_atom_exists` mask `[N, 37]`
pub fn atom14_to_atom37(atom14: Tensor<3>, aatype: Tensor<1, Int>) -> (Tensor<3>, Tensor<2>) {
    let [n, fourteen, three] = atom14.dims();
    assert_eq!((fourteen, three), (14, 3), "atom14 must be [N, 14, 3]");
    assert_eq!(aatype.dims()[0], n);
    let device = atom14.device();
    let aatype = clamp_aatype(aatype);
    let d = rc::derived();

    let idx = table_int(
        "atom37_to_atom14",
        d.atom37_to_atom14.iter().flatten().copied(),
        &device,
    )
    .select(0, aatype.clone())
    .unsqueeze_dim::<3>(2)
    .repeat_dim(2, 3);
    let exists = atom37_atom_exists(aatype);
    let positions = atom14.gather(1, idx) * exists.clone().unsqueeze_dim::<3>(2);
    (positions, exists)
}

/// Torsion angles of atom37 structures, as (sin, cos) pairs.
#[derive(Debug, Clone)]
pub struct TorsionAngles {
    /// Omega (pre-omega: between this and the previous residue), phi, psi, chi1..chi4.
    /// Shape `[T, N, 7, 2]`.
    pub sin_cos: Tensor<4>,
    /// `sin_cos` with the chi angles that are pi-periodic (ASP chi2, GLU chi3, PHE/TYR chi2)
    /// shifted by pi. Shape `[T, N, 7, 2]`.
    pub alt_sin_cos: Tensor<4>,
    /// Which torsions are defined with all four atoms present. Shape `[T, N, 7]`.
    pub mask: Tensor<3>,
}

/// Atoms `start..start + len` (atom37 slots) of every residue: `[T, N, len, 3]`.
fn atoms(pos: &Tensor<4>, start: usize, len: usize) -> Tensor<4> {
    pos.clone().narrow(2, start, len)
}

/// Mask of atom37 slot `a` of every residue: `[T, N, 1]`.
fn atom_mask(mask: &Tensor<3>, a: usize) -> Tensor<3> {
    mask.clone().narrow(2, a, 1)
}

/// The 7 torsion angles of every residue (AlphaFold's `atom37_to_torsion_angles` with
/// `placeholder_for_undefined=False`, the setting of the template torsion features).
///
/// Reproduces AlphaFold's arithmetic, including values it computes for undefined torsions: the
/// residue before residue 0 is all zeros (so its pre-omega/phi use zero atoms), chi atoms a
/// structure lacks are used at their zero-filled positions, and every angle is normalised as
/// `v / sqrt(|v|² + 1e-8)`. These masked-out values are returned as computed, not replaced; the
/// caller decides what to do with them (AlphaFold feeds them to the template embedding).
///
/// # Shapes
/// - aatype: `[T, N]` (AF order; values above 20 are treated as UNK)
/// - positions: `[T, N, 37, 3]`
/// - mask: `[T, N, 37]`
pub fn atom37_to_torsion_angles(
    aatype: Tensor<2, Int>,
    positions: Tensor<4>,
    mask: Tensor<3>,
) -> TorsionAngles {
    let [t, n] = aatype.dims();
    assert_eq!(
        positions.dims(),
        [t, n, 37, 3],
        "positions must be [T, N, 37, 3]"
    );
    assert_eq!(mask.dims(), [t, n, 37], "mask must be [T, N, 37]");
    let device = positions.device();
    let aatype = clamp_aatype(aatype).reshape([t * n]);
    let d = rc::derived();

    // The previous residue of each residue; zeros before residue 0.
    let (prev_pos, prev_mask) = if n > 1 {
        (
            Tensor::cat(
                vec![
                    Tensor::zeros([t, 1, 37, 3], &device),
                    positions.clone().narrow(1, 0, n - 1),
                ],
                1,
            ),
            Tensor::cat(
                vec![
                    Tensor::zeros([t, 1, 37], &device),
                    mask.clone().narrow(1, 0, n - 1),
                ],
                1,
            ),
        )
    } else {
        (positions.zeros_like(), mask.zeros_like())
    };

    // Backbone torsions, 4 atoms each. Atom37 slots: N 0, CA 1, C 2, O 4.
    let pre_omega = Tensor::cat(vec![atoms(&prev_pos, 1, 2), atoms(&positions, 0, 2)], 2);
    let phi = Tensor::cat(vec![atoms(&prev_pos, 2, 1), atoms(&positions, 0, 3)], 2);
    let psi = Tensor::cat(vec![atoms(&positions, 0, 3), atoms(&positions, 4, 1)], 2);
    let m = |a| atom_mask(&mask, a);
    let pm = |a| atom_mask(&prev_mask, a);
    let pre_omega_mask = (pm(1) * pm(2)) * (m(0) * m(1));
    let phi_mask = pm(2) * ((m(0) * m(1)) * m(2));
    let psi_mask = ((m(0) * m(1)) * m(2)) * m(4);

    // Chi torsions: gather the 4 x 4 defining atoms of every residue.
    let chi_idx = table_int(
        "chi_atom_indices",
        d.chi_atom_indices.iter().flatten().flatten().copied(),
        &device,
    )
    .select(0, aatype.clone()); // [T * N, 16]
    let chi_pos = positions
        .clone()
        .reshape([t * n, 37, 3])
        .gather(1, chi_idx.clone().unsqueeze_dim::<3>(2).repeat_dim(2, 3))
        .reshape([t, n, 4, 4, 3]);
    let chi_atom_mask = mask
        .reshape([t * n, 37])
        .gather(1, chi_idx)
        .reshape([t * n, 4, 4]);
    let am = |k| chi_atom_mask.clone().narrow(2, k, 1).reshape([t * n, 4]);
    let chi_atoms_present = ((am(0) * am(1)) * am(2)) * am(3);
    let chi_mask = (table_f32(
        "chi_angles_mask",
        d.chi_angles_mask.iter().flatten().copied(),
        &device,
    )
    .select(0, aatype.clone())
        * chi_atoms_present)
        .reshape([t, n, 4]);

    let torsion_pos = Tensor::cat(
        vec![
            pre_omega.unsqueeze_dim::<5>(2),
            phi.unsqueeze_dim::<5>(2),
            psi.unsqueeze_dim::<5>(2),
            chi_pos,
        ],
        2,
    ); // [T, N, 7, 4, 3]
    let torsion_mask = Tensor::cat(vec![pre_omega_mask, phi_mask, psi_mask, chi_mask], 2);

    // Frame on atoms 1 (negative x axis), 2 (origin), 0 (xy plane); the fourth atom's local y and
    // z give cos and sin of the torsion.
    let b = t * n * 7;
    let torsion_pos = torsion_pos.reshape([b, 4, 3]);
    let atom = |k| torsion_pos.clone().narrow(1, k, 1).reshape([b, 3]);
    let frames = Rigid::from_3_points(atom(1), atom(2), atom(0));
    let local = frames.invert().apply_vec(atom(3));
    let y = local.clone().narrow(1, 1, 1);
    let z = local.narrow(1, 2, 1);
    let norm = (z.clone().square() + y.clone().square())
        .add_scalar(TORSION_NORM_EPSILON)
        .sqrt();
    let sin_cos = Tensor::cat(vec![z, y], 1) / norm;

    // psi was measured to O, which sits opposite to the next N: mirror it.
    let psi_mirror = constant::<1, Float>("psi mirror", [7], &device, || {
        TensorData::new(vec![1.0f32, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0], [7])
    })
    .reshape([1, 1, 7, 1]);
    let sin_cos = sin_cos.reshape([t, n, 7, 2]) * psi_mirror;

    // Alternative angles: pi-periodic chis shifted by pi.
    let periodic = table_f32(
        "CHI_PI_PERIODIC",
        rc::CHI_PI_PERIODIC.iter().flatten().copied(),
        &device,
    )
    .select(0, aatype)
    .reshape([t, n, 4]);
    let alt_mirror = Tensor::cat(
        vec![
            Tensor::ones([t, n, 3], &device),
            periodic.mul_scalar(-2.0).add_scalar(1.0),
        ],
        2,
    );
    let alt_sin_cos = sin_cos.clone() * alt_mirror.unsqueeze_dim::<4>(3);

    TorsionAngles {
        sin_cos,
        alt_sin_cos,
        mask: torsion_mask,
    }
}

/// Pseudo-beta positions: CB, or CA for glycine (AlphaFold's `modules.pseudo_beta_fn`), with the
/// matching atom mask.
///
/// Works for any leading shape `[...]` of `D` axes: `D1 = D + 1`, `D2 = D + 2`.
///
/// # Shapes
/// - aatype: `[...]` (AF order)
/// - positions: `[..., 37, 3]`
/// - mask: `[..., 37]`
/// - output: positions `[..., 3]`, mask `[...]`
pub fn pseudo_beta<const D: usize, const D1: usize, const D2: usize>(
    aatype: Tensor<D, Int>,
    positions: Tensor<D2>,
    mask: Tensor<D1>,
) -> (Tensor<D1>, Tensor<D>) {
    assert!(
        D1 == D + 1 && D2 == D + 2,
        "pseudo_beta: ranks must be D, D + 1, D + 2"
    );
    let ca = rc::atom_order("CA").expect("CA");
    let cb = rc::atom_order("CB").expect("CB");
    let is_gly = aatype.equal_elem(GLY_INDEX as i64);

    let pick = |t: Tensor<D2>, a: usize| t.narrow(D, a, 1).squeeze_dim::<D1>(D);
    let pos = pick(positions.clone(), cb).mask_where(
        is_gly.clone().unsqueeze_dim::<D1>(D).repeat_dim(D, 3),
        pick(positions, ca),
    );
    let pick_mask = |t: Tensor<D1>, a: usize| t.narrow(D, a, 1).squeeze_dim::<D>(D);
    let pos_mask = pick_mask(mask.clone(), cb).mask_where(is_gly, pick_mask(mask, ca));
    (pos, pos_mask)
}
