//! Residue and atom constants of AlphaFold v2.3.2 (`alphafold/common/residue_constants.py`) and the
//! lookup tables AlphaFold derives from them at import time.
//!
//! Restype indices follow AlphaFold's order `ARNDCQEGHILKMFPSTWYV`, with 20 = `X`/UNK and (in
//! MSA-style features) 21 = gap. Atom37 slots follow [`ATOM_TYPES`]; atom14 slots are per restype
//! ([`RESTYPE_ATOM14_NAMES`]).
//!
//! The derived tables ([`derived`]) are built the way `_make_rigid_group_constants` and
//! `data_transforms.make_atom14_masks` build them: the default frames in f64 (numpy's default for
//! Python-float inputs) and then rounded once to f32 when stored, exactly as numpy stores into the
//! f32 array.

use std::sync::LazyLock;

mod tables;

pub use tables::{
    CHI_ANGLES_ATOMS, CHI_ANGLES_MASK, CHI_PI_PERIODIC, GroupAtom, RESIDUE_ATOMS,
    RESTYPE_ATOM14_NAMES, RIGID_GROUP_ATOM_POSITIONS,
};

/// Ideal CA-CA distance between consecutive residues (Å).
pub const CA_CA: f64 = 3.80209737096;

/// The 20 standard residues, one-letter codes, in AlphaFold's order.
pub const RESTYPES: [char; 20] = [
    'A', 'R', 'N', 'D', 'C', 'Q', 'E', 'G', 'H', 'I', 'L', 'K', 'M', 'F', 'P', 'S', 'T', 'W', 'Y',
    'V',
];
/// [`RESTYPES`] followed by `X` (index 20).
pub const RESTYPES_WITH_X: [char; 21] = [
    'A', 'R', 'N', 'D', 'C', 'Q', 'E', 'G', 'H', 'I', 'L', 'K', 'M', 'F', 'P', 'S', 'T', 'W', 'Y',
    'V', 'X',
];
/// Number of standard residue types.
pub const RESTYPE_NUM: usize = 20;
/// Index of the unknown residue type (`X` / `UNK`).
pub const UNK_RESTYPE_INDEX: usize = RESTYPE_NUM;
/// Index of a gap in MSA-style aatype features (HHblits `-` mapped to AF order).
pub const GAP_INDEX: usize = 21;
/// Restype index of glycine.
pub const GLY_INDEX: usize = 7;

/// Three-letter names in restype order, plus `UNK` at index 20.
pub const RESNAMES: [&str; 21] = [
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS", "MET",
    "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL", "UNK",
];

/// The 37 atom types of the atom37 representation.
pub const ATOM_TYPES: [&str; 37] = [
    "N", "CA", "C", "CB", "O", "CG", "CG1", "CG2", "OG", "OG1", "SG", "CD", "CD1", "CD2", "ND1",
    "ND2", "OD1", "OD2", "SD", "CE", "CE1", "CE2", "CE3", "NE", "NE1", "NE2", "OE1", "OE2", "CH2",
    "NH1", "NH2", "OH", "CZ", "CZ2", "CZ3", "NZ", "OXT",
];
/// Number of atom37 slots.
pub const ATOM_TYPE_NUM: usize = 37;

/// Atom names whose labels are swapped by a 180° rotation of the last chi group.
pub const RESIDUE_ATOM_RENAMING_SWAPS: [(&str, &[(&str, &str)]); 4] = [
    ("ASP", &[("OD1", "OD2")]),
    ("GLU", &[("OE1", "OE2")]),
    ("PHE", &[("CD1", "CD2"), ("CE1", "CE2")]),
    ("TYR", &[("CD1", "CD2"), ("CE1", "CE2")]),
];

/// Van der Waals radius (Å) by element (first letter of the atom name).
pub fn van_der_waals_radius(element: char) -> Option<f64> {
    match element {
        'C' => Some(1.7),
        'N' => Some(1.55),
        'O' => Some(1.52),
        'S' => Some(1.8),
        _ => None,
    }
}

/// HHblits alphabet index of each one-letter code (`HHBLITS_AA_TO_ID`), including the ambiguity
/// codes B, J, O, U, Z and the gap `-`.
pub fn hhblits_aa_to_id(aa: char) -> Option<usize> {
    Some(match aa {
        'A' => 0,
        'B' => 2,
        'C' => 1,
        'D' => 2,
        'E' => 3,
        'F' => 4,
        'G' => 5,
        'H' => 6,
        'I' => 7,
        'J' => 20,
        'K' => 8,
        'L' => 9,
        'M' => 10,
        'N' => 11,
        'O' => 20,
        'P' => 12,
        'Q' => 13,
        'R' => 14,
        'S' => 15,
        'T' => 16,
        'U' => 1,
        'V' => 17,
        'W' => 18,
        'X' => 20,
        'Y' => 19,
        'Z' => 3,
        '-' => 21,
        _ => return None,
    })
}

/// One-letter code of each HHblits index (`ID_TO_HHBLITS_AA`).
pub const ID_TO_HHBLITS_AA: [char; 22] = [
    'A', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'K', 'L', 'M', 'N', 'P', 'Q', 'R', 'S', 'T', 'V', 'W',
    'Y', 'X', '-',
];

/// HHblits index → AlphaFold restype index (21 = gap).
pub const MAP_HHBLITS_AATYPE_TO_OUR_AATYPE: [usize; 22] = [
    0, 4, 3, 6, 13, 7, 8, 9, 11, 10, 12, 2, 14, 5, 1, 15, 16, 19, 17, 18, 20, 21,
];

/// Restype index of a one-letter code among the 20 standard residues (`restype_order`).
pub fn restype_order(aa: char) -> Option<usize> {
    RESTYPES.iter().position(|&c| c == aa)
}

/// Restype index with `X` = 20 (`restype_order_with_x`).
pub fn restype_order_with_x(aa: char) -> Option<usize> {
    RESTYPES_WITH_X.iter().position(|&c| c == aa)
}

/// Three-letter name of a standard one-letter code (`restype_1to3`).
pub fn restype_1to3(aa: char) -> Option<&'static str> {
    restype_order(aa).map(|i| RESNAMES[i])
}

/// One-letter code of a standard three-letter name (`restype_3to1`).
pub fn restype_3to1(name: &str) -> Option<char> {
    RESNAMES[..RESTYPE_NUM]
        .iter()
        .position(|&n| n == name)
        .map(|i| RESTYPES[i])
}

/// Atom37 slot of an atom name (`atom_order`).
pub fn atom_order(name: &str) -> Option<usize> {
    ATOM_TYPES.iter().position(|&n| n == name)
}

fn atom_index(name: &str) -> usize {
    atom_order(name).unwrap_or_else(|| panic!("unknown atom name {name}"))
}

/// Tables AlphaFold computes from the literal constants. All arrays have 21 restype rows; row 20
/// (UNK) is all zeros, as in AlphaFold (including its default frames: no identity for UNK).
#[derive(Debug, Clone)]
pub struct Derived {
    /// Rigid group of each atom37 slot (`restype_atom37_to_rigid_group`).
    pub atom37_to_rigid_group: [[usize; 37]; 21],
    /// `restype_atom37_mask` (atoms with a literature position).
    pub atom37_mask: [[f32; 37]; 21],
    /// `restype_atom37_rigid_group_positions` (Å, in the atom's group frame).
    pub atom37_rigid_group_positions: [[[f32; 3]; 37]; 21],
    /// `restype_atom14_to_rigid_group`.
    pub atom14_to_rigid_group: [[usize; 14]; 21],
    /// `restype_atom14_mask`.
    pub atom14_mask: [[f32; 14]; 21],
    /// `restype_atom14_rigid_group_positions`.
    pub atom14_rigid_group_positions: [[[f32; 3]; 14]; 21],
    /// `restype_rigid_group_default_frame` [21, 8, 4, 4]: homogeneous transform from each group's
    /// frame to its parent (backbone for groups 0..=4, previous chi group for 5..=7).
    pub rigid_group_default_frame: [[[[f32; 4]; 4]; 8]; 21],
    /// `restype_atom14_to_atom37` (0 for empty slots), as in `make_atom14_masks`.
    pub atom14_to_atom37: [[usize; 14]; 21],
    /// `restype_atom37_to_atom14` (0 for atoms the restype lacks).
    pub atom37_to_atom14: [[usize; 37]; 21],
    /// `atom37_atom_exists` per restype (from `residue_atoms`; equals `STANDARD_ATOM_MASK`).
    pub atom37_atom_exists: [[f32; 37]; 21],
    /// Atom37 indices of the 4 atoms of each chi angle, `[0; 4]` where undefined
    /// (`all_atom.get_chi_atom_indices`).
    pub chi_atom_indices: [[[usize; 4]; 4]; 21],
    /// [`CHI_ANGLES_MASK`] with a zero row for UNK.
    pub chi_angles_mask: [[f32; 4]; 21],
}

/// The derived tables, computed once on first use.
pub fn derived() -> &'static Derived {
    static DERIVED: LazyLock<Derived> = LazyLock::new(make_derived);
    &DERIVED
}

fn sub3(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot3(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// `_make_rigid_transformation_4x4`: Gram-Schmidt frame with x along `ex`, y in the (ex, ey) plane,
/// origin at `translation`; computed in f64 and rounded to f32.
fn rigid_transformation_4x4(ex: [f64; 3], ey: [f64; 3], translation: [f64; 3]) -> [[f32; 4]; 4] {
    let nx = dot3(ex, ex).sqrt();
    let exn = ex.map(|v| v / nx);
    let d = dot3(ey, exn);
    let mut eyn = [ey[0] - d * exn[0], ey[1] - d * exn[1], ey[2] - d * exn[2]];
    let ny = dot3(eyn, eyn).sqrt();
    eyn = eyn.map(|v| v / ny);
    let ezn = [
        exn[1] * eyn[2] - exn[2] * eyn[1],
        exn[2] * eyn[0] - exn[0] * eyn[2],
        exn[0] * eyn[1] - exn[1] * eyn[0],
    ];
    let mut m = [[0f32; 4]; 4];
    for r in 0..3 {
        m[r] = [
            exn[r] as f32,
            eyn[r] as f32,
            ezn[r] as f32,
            translation[r] as f32,
        ];
    }
    m[3] = [0.0, 0.0, 0.0, 1.0];
    m
}

fn identity4() -> [[f32; 4]; 4] {
    let mut m = [[0f32; 4]; 4];
    for (i, row) in m.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    m
}

fn make_derived() -> Derived {
    let mut d = Derived {
        atom37_to_rigid_group: [[0; 37]; 21],
        atom37_mask: [[0.0; 37]; 21],
        atom37_rigid_group_positions: [[[0.0; 3]; 37]; 21],
        atom14_to_rigid_group: [[0; 14]; 21],
        atom14_mask: [[0.0; 14]; 21],
        atom14_rigid_group_positions: [[[0.0; 3]; 14]; 21],
        rigid_group_default_frame: [[[[0.0; 4]; 4]; 8]; 21],
        atom14_to_atom37: [[0; 14]; 21],
        atom37_to_atom14: [[0; 37]; 21],
        atom37_atom_exists: [[0.0; 37]; 21],
        chi_atom_indices: [[[0; 4]; 4]; 21],
        chi_angles_mask: [[0.0; 4]; 21],
    };

    for rt in 0..RESTYPE_NUM {
        let names14 = &RESTYPE_ATOM14_NAMES[rt];
        for &(name, group, pos) in RIGID_GROUP_ATOM_POSITIONS[rt] {
            let a37 = atom_index(name);
            let pos32 = pos.map(|v| v as f32);
            d.atom37_to_rigid_group[rt][a37] = group;
            d.atom37_mask[rt][a37] = 1.0;
            d.atom37_rigid_group_positions[rt][a37] = pos32;
            let a14 = names14
                .iter()
                .position(|&n| n == name)
                .unwrap_or_else(|| panic!("{name} not in atom14 names of {}", RESNAMES[rt]));
            d.atom14_to_rigid_group[rt][a14] = group;
            d.atom14_mask[rt][a14] = 1.0;
            d.atom14_rigid_group_positions[rt][a14] = pos32;
        }

        let lit = |name: &str| -> [f64; 3] {
            RIGID_GROUP_ATOM_POSITIONS[rt]
                .iter()
                .find(|a| a.0 == name)
                .map(|a| a.2)
                .unwrap_or_else(|| panic!("{name} has no position in {}", RESNAMES[rt]))
        };
        let frames = &mut d.rigid_group_default_frame[rt];
        // 0: backbone, 1: pre-omega (identity).
        frames[0] = identity4();
        frames[1] = identity4();
        // 2: phi, about the N-CA bond.
        frames[2] = rigid_transformation_4x4(sub3(lit("N"), lit("CA")), [1.0, 0.0, 0.0], lit("N"));
        // 3: psi, about the CA-C bond.
        frames[3] = rigid_transformation_4x4(
            sub3(lit("C"), lit("CA")),
            sub3(lit("CA"), lit("N")),
            lit("C"),
        );
        // 4: chi1, relative to the backbone.
        if CHI_ANGLES_MASK[rt][0] != 0.0 {
            let a = CHI_ANGLES_ATOMS[rt][0].map(lit);
            frames[4] = rigid_transformation_4x4(sub3(a[2], a[1]), sub3(a[0], a[1]), a[2]);
        }
        // 5..=7: chi2..chi4, relative to the previous chi group (whose x axis runs along the bond).
        for chi in 1..4 {
            if CHI_ANGLES_MASK[rt][chi] != 0.0 {
                let end = lit(CHI_ANGLES_ATOMS[rt][chi][2]);
                frames[4 + chi] = rigid_transformation_4x4(end, [-1.0, 0.0, 0.0], end);
            }
        }

        for (a14, &name) in names14.iter().enumerate() {
            if !name.is_empty() {
                let a37 = atom_index(name);
                d.atom14_to_atom37[rt][a14] = a37;
                d.atom37_to_atom14[rt][a37] = a14;
            }
        }
        for &name in RESIDUE_ATOMS[rt] {
            d.atom37_atom_exists[rt][atom_index(name)] = 1.0;
        }
        for (chi, atoms) in CHI_ANGLES_ATOMS[rt].iter().enumerate() {
            d.chi_atom_indices[rt][chi] = atoms.map(atom_index);
        }
        d.chi_angles_mask[rt] = CHI_ANGLES_MASK[rt];
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_and_orders() {
        assert_eq!(RESTYPES.len(), 20);
        assert_eq!(ATOM_TYPES.len(), ATOM_TYPE_NUM);
        assert_eq!(RESTYPE_ATOM14_NAMES.len(), 21);
        assert_eq!(restype_order('A'), Some(0));
        assert_eq!(restype_order('V'), Some(19));
        assert_eq!(restype_order('X'), None);
        assert_eq!(restype_order_with_x('X'), Some(20));
        assert_eq!(restype_order('G'), Some(GLY_INDEX));
        assert_eq!(restype_1to3('W'), Some("TRP"));
        assert_eq!(restype_3to1("TYR"), Some('Y'));
        assert_eq!(atom_order("CA"), Some(1));
        assert_eq!(atom_order("CB"), Some(3));
        assert_eq!(atom_order("O"), Some(4));
        assert_eq!(atom_order("OXT"), Some(36));
        // Every residue's literature atoms are exactly its heavy atoms.
        for rt in 0..20 {
            let mut lit: Vec<_> = RIGID_GROUP_ATOM_POSITIONS[rt].iter().map(|a| a.0).collect();
            let mut res: Vec<_> = RESIDUE_ATOMS[rt].to_vec();
            let mut a14: Vec<_> = RESTYPE_ATOM14_NAMES[rt]
                .iter()
                .copied()
                .filter(|n| !n.is_empty())
                .collect();
            lit.sort();
            res.sort();
            a14.sort();
            assert_eq!(lit, res, "{}", RESNAMES[rt]);
            assert_eq!(lit, a14, "{}", RESNAMES[rt]);
            assert_eq!(
                CHI_ANGLES_ATOMS[rt].len(),
                CHI_ANGLES_MASK[rt].iter().filter(|&&m| m == 1.0).count()
            );
        }
    }

    #[test]
    fn hhblits_mapping_is_consistent() {
        for (hh, &aa) in ID_TO_HHBLITS_AA.iter().enumerate() {
            assert_eq!(hhblits_aa_to_id(aa), Some(hh));
            let ours = MAP_HHBLITS_AATYPE_TO_OUR_AATYPE[hh];
            let expect = if aa == '-' {
                GAP_INDEX
            } else {
                restype_order_with_x(aa).unwrap()
            };
            assert_eq!(ours, expect, "{aa}");
        }
    }

    #[test]
    fn known_entries() {
        let d = derived();
        let ala = 0;
        // ALA CB: atom14 slot 4, backbone group, literature position.
        assert_eq!(d.atom14_to_atom37[ala][4], 3);
        assert_eq!(d.atom14_to_rigid_group[ala][4], 0);
        assert_eq!(
            d.atom14_rigid_group_positions[ala][4],
            [-0.529, -0.774, -1.205]
        );
        assert_eq!(
            d.atom37_rigid_group_positions[ala][3],
            [-0.529, -0.774, -1.205]
        );
        // O sits in the psi group.
        assert_eq!(d.atom14_to_rigid_group[ala][3], 3);
        assert_eq!(
            d.atom14_mask[ala],
            [1., 1., 1., 1., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0.]
        );
        // ARG CZ is atom14 slot 8 but literature group 7 (chi4).
        assert_eq!(d.atom14_to_rigid_group[1][8], 7);
        // TRP uses all 14 slots.
        assert!(d.atom14_mask[17].iter().all(|&m| m == 1.0));
        // UNK is all zeros.
        assert!(d.atom14_mask[20].iter().all(|&m| m == 0.0));
        assert!(d.atom37_atom_exists[20].iter().all(|&m| m == 0.0));
        assert_eq!(d.rigid_group_default_frame[20], [[[0.0; 4]; 4]; 8]);

        // GLY default frames: identity backbone and pre-omega, phi frame, psi frame at C, no chi.
        let gly = &d.rigid_group_default_frame[GLY_INDEX];
        assert_eq!(gly[0], identity4());
        assert_eq!(gly[1], identity4());
        // phi: x along N-CA bond (N - CA = (-0.572, 1.337, 0)), origin at N.
        let n = (0.572f64 * 0.572 + 1.337 * 1.337).sqrt();
        approx::assert_abs_diff_eq!(gly[2][0][0], (-0.572 / n) as f32, epsilon = 1e-7);
        approx::assert_abs_diff_eq!(gly[2][1][0], (1.337 / n) as f32, epsilon = 1e-7);
        assert_eq!(gly[2][2][2], -1.0);
        assert_eq!(
            [gly[2][0][3], gly[2][1][3], gly[2][2][3]],
            [-0.572, 1.337, 0.0]
        );
        // psi: x along CA->C, origin at C; y flips.
        assert_eq!(gly[3][0], [1.0, 0.0, -0.0, 1.517]);
        assert_eq!(gly[3][1][1], -1.0);
        assert_eq!(gly[3][2][2], -1.0);
        for frame in &gly[4..8] {
            assert_eq!(*frame, [[0.0; 4]; 4]);
        }
        // Every defined frame is a proper rotation.
        for (rt, frames) in d.rigid_group_default_frame.iter().enumerate().take(20) {
            for (g, m) in frames.iter().enumerate() {
                let defined = g < 4 || CHI_ANGLES_MASK[rt][g - 4] == 1.0;
                if !defined {
                    continue;
                }
                let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                    - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                    + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
                approx::assert_abs_diff_eq!(det, 1.0, epsilon = 1e-6);
            }
        }
        // chi atom indices: ARG chi4 = CG, CD, NE, CZ.
        assert_eq!(d.chi_atom_indices[1][3], [5, 11, 23, 32]);
        assert_eq!(d.chi_atom_indices[0], [[0; 4]; 4]);
    }

    #[test]
    fn atom14_atom37_round_trip() {
        let d = derived();
        for rt in 0..21 {
            for a14 in 0..14 {
                if d.atom14_mask[rt][a14] == 1.0 {
                    let a37 = d.atom14_to_atom37[rt][a14];
                    assert_eq!(d.atom37_to_atom14[rt][a37], a14);
                    assert_eq!(d.atom37_atom_exists[rt][a37], 1.0);
                    assert_eq!(
                        d.atom37_rigid_group_positions[rt][a37],
                        d.atom14_rigid_group_positions[rt][a14]
                    );
                    assert_eq!(
                        d.atom37_to_rigid_group[rt][a37],
                        d.atom14_to_rigid_group[rt][a14]
                    );
                }
            }
            let n14 = d.atom14_mask[rt].iter().sum::<f32>();
            let n37 = d.atom37_atom_exists[rt].iter().sum::<f32>();
            assert_eq!(n14, n37);
            assert_eq!(d.atom37_mask[rt], d.atom37_atom_exists[rt]);
        }
    }
}
