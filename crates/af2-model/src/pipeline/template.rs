//! Template features from structure chains: atom37 positions and masks in AlphaFold's atom order,
//! `template_aatype` (AlphaFold order, 21 = gap), pseudo-beta (CB, CA for glycine) and the
//! template mask, with ColabDesign's per-segment options `rm_seq` / `rm_sc`.
//!
//! A chain is first reduced to [`ChainAtoms`] (residue by residue, atoms by atom37 name), then
//! placed on query positions by [`template_from_segments`]. Query positions no segment covers
//! get what AlphaFold gives unaligned template positions: aatype gap (21), no atoms.

use af2_io::npz::NdArray;
use af2_io::structure::{Chain, Residue};

use super::PipelineError;
use crate::features::TemplateFeatures;
use crate::residue_constants as rc;

/// Atom37 slots from this index on are side-chain atoms (after N, CA, C, CB, O) — what
/// ColabDesign masks to remove side chains.
pub const FIRST_SIDE_CHAIN_ATOM: usize = 5;

const N: usize = 0;
const CA: usize = 1;
const C: usize = 2;
const CB: usize = 3;

/// Modified residues read as their parent residue (the table ColabDesign's `pdb_to_string` uses,
/// a subset of the PDB's MODRES records). `MSE` is also AlphaFold's only built-in case.
const MODIFIED_RESIDUES: &[(&str, &str)] = &[
    ("MSE", "MET"),
    ("MLY", "LYS"),
    ("FME", "MET"),
    ("HYP", "PRO"),
    ("TPO", "THR"),
    ("CSO", "CYS"),
    ("SEP", "SER"),
    ("M3L", "LYS"),
    ("HSK", "HIS"),
    ("SAC", "SER"),
    ("PCA", "GLU"),
    ("DAL", "ALA"),
    ("CME", "CYS"),
    ("CSD", "CYS"),
    ("OCS", "CYS"),
    ("DPR", "PRO"),
    ("B3K", "LYS"),
    ("ALY", "LYS"),
    ("YCM", "CYS"),
    ("MLZ", "LYS"),
    ("4BF", "TYR"),
    ("KCX", "LYS"),
    ("B3E", "GLU"),
    ("B3D", "ASP"),
    ("HZP", "PRO"),
    ("CSX", "CYS"),
    ("BAL", "ALA"),
    ("HIC", "HIS"),
    ("DBZ", "ALA"),
    ("DCY", "CYS"),
    ("DVA", "VAL"),
    ("NLE", "LEU"),
    ("SMC", "CYS"),
    ("AGM", "ARG"),
    ("B3A", "ALA"),
    ("DAS", "ASP"),
    ("DLY", "LYS"),
    ("DSN", "SER"),
    ("DTH", "THR"),
    ("GL3", "GLY"),
    ("HY3", "PRO"),
    ("LLP", "LYS"),
    ("MGN", "GLN"),
    ("MHS", "HIS"),
    ("TRQ", "TRP"),
    ("B3Y", "TYR"),
    ("PHI", "PHE"),
    ("PTR", "TYR"),
    ("TYS", "TYR"),
    ("IAS", "ASP"),
    ("GPL", "LYS"),
    ("KYN", "TRP"),
    ("SEC", "CYS"),
];

/// The standard residue a residue name stands for (itself, or a modified residue's parent).
pub fn parent_residue(name: &str) -> Option<&'static str> {
    if let Some(i) = rc::RESNAMES[..rc::RESTYPE_NUM]
        .iter()
        .position(|&r| r == name)
    {
        return Some(rc::RESNAMES[i]);
    }
    MODIFIED_RESIDUES
        .iter()
        .find(|(modified, _)| *modified == name)
        .map(|(_, parent)| *parent)
}

/// How a structure chain is read into atom37.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainAtomsOptions {
    /// Drop residues without a backbone N (ColabDesign's `ignore_missing`).
    pub skip_missing_n: bool,
    /// Place a CB from N, CA, C where none is present (glycine included), with mask 1, as
    /// ColabDesign's `prep_pdb` (`add_cb`) does.
    pub add_virtual_cb: bool,
    /// Swap arginine NH1/NH2 when NH2 is closer to CD (AlphaFold `templates.py`).
    pub fix_arginine: bool,
    /// Put selenomethionine's SE in the SD slot (AlphaFold `templates.py`; ColabDesign drops it).
    pub selenium_as_sd: bool,
}

impl ChainAtomsOptions {
    /// As ColabDesign's `prep_pdb` reads a chain (binder protocol).
    pub fn colabdesign() -> Self {
        ChainAtomsOptions {
            skip_missing_n: true,
            add_virtual_cb: true,
            fix_arginine: false,
            selenium_as_sd: false,
        }
    }

    /// As AlphaFold's `templates.py` reads a template chain.
    pub fn alphafold() -> Self {
        ChainAtomsOptions {
            skip_missing_n: false,
            add_virtual_cb: false,
            fix_arginine: true,
            selenium_as_sd: true,
        }
    }
}

/// A structure chain in atom37, residue by residue.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainAtoms {
    /// One-letter sequence (`X` for residues that are not standard).
    pub sequence: String,
    /// `[L]` AlphaFold restype (0..=20).
    pub aatype: Vec<i64>,
    /// `[L][37]` positions (Å); zero where absent.
    pub positions: Vec<[[f32; 3]; 37]>,
    /// `[L][37]` 1 where the atom is present.
    pub masks: Vec<[f32; 37]>,
    /// `[L]` residue numbers in the file (ColabDesign uses them as the residue index).
    pub residue_numbers: Vec<i64>,
}

impl ChainAtoms {
    /// Reads a chain. Kept: polymer (`ATOM`) residues, and `HETATM` residues that are standard or
    /// known modified residues; then only residues with at least one atom37 atom (AlphaFold's
    /// `from_pdb_string`), and with an N when [`ChainAtomsOptions::skip_missing_n`] is set.
    /// Residue names that are not standard (nor modified) become `X` (20). Insertion codes are
    /// kept as separate residues with the same number.
    pub fn from_chain(chain: &Chain, options: &ChainAtomsOptions) -> Result<Self, PipelineError> {
        let mut out = ChainAtoms {
            sequence: String::new(),
            aatype: Vec::new(),
            positions: Vec::new(),
            masks: Vec::new(),
            residue_numbers: Vec::new(),
        };
        for residue in &chain.residues {
            let parent = parent_residue(&residue.name);
            if residue.hetero && parent.is_none() {
                continue;
            }
            let (positions, mask) = residue_atom37(residue, options);
            if mask.iter().all(|&m| m == 0.0) || (options.skip_missing_n && mask[N] == 0.0) {
                continue;
            }
            let letter = parent.and_then(rc::restype_3to1).unwrap_or('X');
            out.sequence.push(letter);
            out.aatype
                .push(rc::restype_order(letter).unwrap_or(rc::UNK_RESTYPE_INDEX) as i64);
            out.positions.push(positions);
            out.masks.push(mask);
            out.residue_numbers.push(residue.number);
        }
        if out.aatype.is_empty() {
            return Err(PipelineError::Invalid(format!(
                "chain '{}' has no amino-acid residue with atoms",
                chain.id
            )));
        }
        Ok(out)
    }

    /// Number of residues.
    pub fn len(&self) -> usize {
        self.aatype.len()
    }

    /// Whether the chain has no residue (never, for one built by [`ChainAtoms::from_chain`]).
    pub fn is_empty(&self) -> bool {
        self.aatype.is_empty()
    }
}

fn residue_atom37(residue: &Residue, options: &ChainAtomsOptions) -> ([[f32; 3]; 37], [f32; 37]) {
    // Coordinates stay in f64 until the end (numpy's default in both AlphaFold and ColabDesign).
    let mut pos = [[0.0f64; 3]; 37];
    let mut mask = [0.0f32; 37];
    for atom in &residue.atoms {
        let slot = match rc::atom_order(&atom.name) {
            Some(slot) => Some(slot),
            None if options.selenium_as_sd
                && residue.name == "MSE"
                && atom.name.eq_ignore_ascii_case("SE") =>
            {
                rc::atom_order("SD")
            }
            None => None,
        };
        if let Some(slot) = slot {
            pos[slot] = atom.position;
            mask[slot] = 1.0;
        }
    }
    if options.fix_arginine && parent_residue(&residue.name) == Some("ARG") {
        let (cd, nh1, nh2) = (slot("CD"), slot("NH1"), slot("NH2"));
        if mask[cd] * mask[nh1] * mask[nh2] == 1.0
            && distance(pos[nh1], pos[cd]) > distance(pos[nh2], pos[cd])
        {
            pos.swap(nh1, nh2);
        }
    }
    if options.add_virtual_cb && mask[CB] == 0.0 && mask[N] * mask[CA] * mask[C] == 1.0 {
        pos[CB] = virtual_cb(pos[N], pos[CA], pos[C]);
        mask[CB] = 1.0;
    }
    let positions = pos.map(|p| p.map(|v| v as f32));
    (positions, mask)
}

fn slot(name: &str) -> usize {
    rc::atom_order(name).expect("atom37 name")
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    sub(a, b).iter().map(|v| v * v).sum::<f64>().sqrt()
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// ColabDesign's `_np_norm` normalisation (1e-8 under the square root).
fn normalize(a: [f64; 3]) -> [f64; 3] {
    let norm = (a.iter().map(|v| v * v).sum::<f64>() + 1e-8).sqrt();
    a.map(|v| v / norm)
}

/// ColabDesign's CB placement (`_np_get_cb`): the atom at 1.522 Å from CA, angle N-CA-CB
/// 1.927 rad, dihedral C-N-CA-CB −2.143 rad.
pub fn virtual_cb(n: [f64; 3], ca: [f64; 3], c: [f64; 3]) -> [f64; 3] {
    let (length, angle, dihedral) = (1.522f64, 1.927f64, -2.143f64);
    let bc = normalize(sub(n, ca));
    let normal = normalize(cross(sub(n, c), bc));
    let m = cross(normal, bc);
    let mut d = ca;
    for k in 0..3 {
        d[k] += length * angle.cos() * bc[k]
            + length * angle.sin() * dihedral.cos() * m[k]
            + length * angle.sin() * dihedral.sin() * -normal[k];
    }
    d
}

/// One chain placed on the query.
#[derive(Debug, Clone, Copy)]
pub struct TemplateSegment<'a> {
    /// The chain's atoms.
    pub atoms: &'a ChainAtoms,
    /// Query position of the chain's first residue; residue `r` lands on `start + r`.
    pub start: usize,
    /// ColabDesign's `rm_template_seq`: aatype → gap (21), pseudo-beta from CB for every residue,
    /// and side chains removed (implies `rm_sc`).
    pub rm_seq: bool,
    /// ColabDesign's `rm_template_sc`: side-chain atoms (atom37 index ≥ 5) masked.
    pub rm_sc: bool,
}

/// One template (`T = 1`, `template_mask = 1`) of `num_residues` positions from chain segments.
/// Segments must lie inside the query and must not overlap.
pub fn template_from_segments(
    num_residues: usize,
    segments: &[TemplateSegment<'_>],
) -> Result<TemplateFeatures, PipelineError> {
    let n = num_residues;
    let mut aatype = vec![rc::GAP_INDEX as i64; n];
    let mut positions = vec![0.0f32; n * 37 * 3];
    let mut masks = vec![0.0f32; n * 37];
    let mut pseudo_beta = vec![0.0f32; n * 3];
    let mut pseudo_beta_mask = vec![0.0f32; n];
    let mut covered = vec![false; n];
    for (s, seg) in segments.iter().enumerate() {
        let end = seg.start + seg.atoms.len();
        if end > n {
            return Err(PipelineError::Invalid(format!(
                "template segment {} covers positions {}..{} of a {n}-residue query",
                s + 1,
                seg.start,
                end
            )));
        }
        let rm_sc = seg.rm_sc || seg.rm_seq;
        for r in 0..seg.atoms.len() {
            let i = seg.start + r;
            if std::mem::replace(&mut covered[i], true) {
                return Err(PipelineError::Invalid(format!(
                    "template segment {} overlaps another at query position {i}",
                    s + 1
                )));
            }
            let restype = seg.atoms.aatype[r];
            let atom_pos = &seg.atoms.positions[r];
            let atom_mask = &seg.atoms.masks[r];
            aatype[i] = if seg.rm_seq {
                rc::GAP_INDEX as i64
            } else {
                restype
            };
            for a in 0..37 {
                positions[(i * 37 + a) * 3..(i * 37 + a) * 3 + 3].copy_from_slice(&atom_pos[a]);
                let keep = !(rm_sc && a >= FIRST_SIDE_CHAIN_ATOM);
                masks[i * 37 + a] = if keep { atom_mask[a] } else { 0.0 };
            }
            // ColabDesign passes aatype 0 (not glycine) to pseudo_beta_fn under rm_seq.
            let beta = if !seg.rm_seq && restype == rc::GLY_INDEX as i64 {
                CA
            } else {
                CB
            };
            pseudo_beta[i * 3..i * 3 + 3].copy_from_slice(&atom_pos[beta]);
            pseudo_beta_mask[i] = atom_mask[beta];
        }
    }
    Ok(TemplateFeatures {
        aatype: NdArray {
            shape: vec![1, n],
            data: aatype,
        },
        all_atom_positions: NdArray {
            shape: vec![1, n, 37, 3],
            data: positions,
        },
        all_atom_masks: NdArray {
            shape: vec![1, n, 37],
            data: masks,
        },
        mask: NdArray {
            shape: vec![1],
            data: vec![1.0],
        },
        pseudo_beta: NdArray {
            shape: vec![1, n, 3],
            data: pseudo_beta,
        },
        pseudo_beta_mask: NdArray {
            shape: vec![1, n],
            data: pseudo_beta_mask,
        },
    })
}

/// AlphaFold's all-masked placeholder template (what a template model sees without templates):
/// aatype 0, no atoms, `template_mask = 0`.
pub fn placeholder_templates(num_residues: usize) -> TemplateFeatures {
    let n = num_residues;
    TemplateFeatures {
        aatype: NdArray {
            shape: vec![1, n],
            data: vec![0; n],
        },
        all_atom_positions: NdArray {
            shape: vec![1, n, 37, 3],
            data: vec![0.0; n * 37 * 3],
        },
        all_atom_masks: NdArray {
            shape: vec![1, n, 37],
            data: vec![0.0; n * 37],
        },
        mask: NdArray {
            shape: vec![1],
            data: vec![0.0],
        },
        pseudo_beta: NdArray {
            shape: vec![1, n, 3],
            data: vec![0.0; n * 3],
        },
        pseudo_beta_mask: NdArray {
            shape: vec![1, n],
            data: vec![0.0; n],
        },
    }
}

/// Stacks templates of the same query along the template axis.
pub fn stack_templates(templates: &[TemplateFeatures]) -> Result<TemplateFeatures, PipelineError> {
    let Some(first) = templates.first() else {
        return Err(PipelineError::Invalid("no template to stack".into()));
    };
    let n = first.aatype.shape[1];
    if templates.iter().any(|t| t.aatype.shape[1] != n) {
        return Err(PipelineError::Invalid(
            "templates of different lengths cannot be stacked".into(),
        ));
    }
    fn cat<T: Clone>(parts: Vec<&NdArray<T>>) -> NdArray<T> {
        let mut shape = parts[0].shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        NdArray {
            shape,
            data: parts.iter().flat_map(|p| p.data.iter().cloned()).collect(),
        }
    }
    Ok(TemplateFeatures {
        aatype: cat(templates.iter().map(|t| &t.aatype).collect()),
        all_atom_positions: cat(templates.iter().map(|t| &t.all_atom_positions).collect()),
        all_atom_masks: cat(templates.iter().map(|t| &t.all_atom_masks).collect()),
        mask: cat(templates.iter().map(|t| &t.mask).collect()),
        pseudo_beta: cat(templates.iter().map(|t| &t.pseudo_beta).collect()),
        pseudo_beta_mask: cat(templates.iter().map(|t| &t.pseudo_beta_mask).collect()),
    })
}
