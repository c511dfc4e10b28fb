//! PDB files from atom37 coordinates, laid out exactly as AlphaFold's `protein.to_pdb` writes
//! them (and so ColabFold): `MODEL 1`, one `ATOM` line per present atom37 slot in atom37 order,
//! a `TER` line closing each chain, `ENDMDL`, `END`, every line padded to 80 columns. The
//! B-factor column holds the residue's pLDDT (0–100).

use super::ATOM37_NAMES;
use crate::atomic::write_atomically;
use crate::error::{IoError, Result};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// One predicted structure in atom37 form. All slices are per residue, `N` residues.
#[derive(Debug, Clone, Copy)]
pub struct Atom37Structure<'a> {
    /// `[N, 37, 3]` atom positions in Å, row-major.
    pub atom_positions: &'a [f32],
    /// `[N, 37]` atom mask; atoms with mask < 0.5 are not written.
    pub atom_mask: &'a [f32],
    /// `[N]` three-letter residue names (`"ALA"`, …, `"UNK"`).
    pub residue_names: &'a [&'a str],
    /// `[N]` one-character chain ids.
    pub chain_ids: &'a [char],
    /// `[N]` residue numbers as written (AlphaFold writes `residue_index + 1`).
    pub residue_numbers: &'a [i64],
    /// `[N]` B-factors, the per-residue pLDDT on 0–100.
    pub b_factors: &'a [f64],
}

impl Atom37Structure<'_> {
    /// Number of residues.
    pub fn len(&self) -> usize {
        self.residue_names.len()
    }

    /// Whether there are no residues.
    pub fn is_empty(&self) -> bool {
        self.residue_names.is_empty()
    }

    fn check(&self) -> Result<()> {
        let n = self.len();
        let expect = |key: &str, found: usize, expected: usize| -> Result<()> {
            if found == expected {
                Ok(())
            } else {
                Err(IoError::invalid(
                    key,
                    format!("expected {expected} values for {n} residues, found {found}"),
                ))
            }
        };
        if n == 0 {
            return Err(IoError::invalid("residue_names", "no residues to write"));
        }
        expect("atom_positions", self.atom_positions.len(), n * 37 * 3)?;
        expect("atom_mask", self.atom_mask.len(), n * 37)?;
        expect("chain_ids", self.chain_ids.len(), n)?;
        expect("residue_numbers", self.residue_numbers.len(), n)?;
        expect("b_factors", self.b_factors.len(), n)?;
        for (i, name) in self.residue_names.iter().enumerate() {
            if name.is_empty() || name.len() > 3 || !name.chars().all(|c| c.is_ascii_graphic()) {
                return Err(IoError::invalid(
                    "residue_names",
                    format!("residue {i}: '{name}' is not a residue name of 1 to 3 characters"),
                ));
            }
        }
        for (i, c) in self.chain_ids.iter().enumerate() {
            if !c.is_ascii_graphic() {
                return Err(IoError::invalid(
                    "chain_ids",
                    format!("residue {i}: chain id {c:?} is not one printable ASCII character"),
                ));
            }
        }
        for (i, r) in self.residue_numbers.iter().enumerate() {
            if !(-999..=9999).contains(r) {
                return Err(IoError::invalid(
                    "residue_numbers",
                    format!("residue {i}: number {r} does not fit the 4 PDB columns"),
                ));
            }
        }
        for (i, b) in self.b_factors.iter().enumerate() {
            if !b.is_finite() || !(-99.99..=999.99).contains(b) {
                return Err(IoError::invalid(
                    "b_factors",
                    format!("residue {i}: B-factor {b} does not fit the 6 PDB columns"),
                ));
            }
        }
        for (k, v) in self.atom_positions.iter().enumerate() {
            if !v.is_finite() || !(-999.999..=9999.999).contains(v) {
                return Err(IoError::invalid(
                    "atom_positions",
                    format!(
                        "residue {}, atom {}: coordinate {v} does not fit the 8 PDB columns",
                        k / 111,
                        ATOM37_NAMES[(k / 3) % 37]
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The atom name in columns 13–16: names shorter than 4 characters start in column 14.
fn padded_atom_name(name: &str) -> String {
    if name.len() == 4 {
        name.to_string()
    } else {
        format!(" {name:<3}")
    }
}

fn ter_line(serial: usize, res_name: &str, chain: char, res_num: i64) -> String {
    format!(
        "{:<6}{serial:>5}      {res_name:>3} {chain:>1}{res_num:>4}",
        "TER"
    )
}

/// The PDB text. `remarks` are written first as `REMARK` lines (each up to 70 characters).
pub fn pdb_string(structure: &Atom37Structure<'_>, remarks: &[&str]) -> Result<String> {
    structure.check()?;
    let mut lines: Vec<String> = Vec::new();
    for remark in remarks {
        if remark.len() > 70 || remark.contains(['\n', '\r']) {
            return Err(IoError::invalid(
                "remarks",
                format!("remark '{remark}' is not one line of at most 70 characters"),
            ));
        }
        lines.push(format!("REMARK {remark}"));
    }
    lines.push("MODEL     1".to_string());
    let s = structure;
    let mut serial = 1usize;
    for i in 0..s.len() {
        if i > 0 && s.chain_ids[i] != s.chain_ids[i - 1] {
            lines.push(ter_line(
                serial,
                s.residue_names[i - 1],
                s.chain_ids[i - 1],
                s.residue_numbers[i - 1],
            ));
            serial += 1;
        }
        for (a, atom_name) in ATOM37_NAMES.iter().enumerate() {
            if s.atom_mask[i * 37 + a] < 0.5 {
                continue;
            }
            if serial > 99_999 {
                return Err(IoError::invalid(
                    "atom_positions",
                    "more than 99999 atoms do not fit the PDB serial column",
                ));
            }
            let p = &s.atom_positions[(i * 37 + a) * 3..(i * 37 + a) * 3 + 3];
            let element = &atom_name[..1];
            let mut line = String::with_capacity(80);
            write!(
                line,
                "{:<6}{serial:>5} {:<4}{:>1}{:>3} {:>1}{:>4}{:>1}   {:>8.3}{:>8.3}{:>8.3}{:>6.2}{:>6.2}          {element:>2}{:>2}",
                "ATOM",
                padded_atom_name(atom_name),
                "",
                s.residue_names[i],
                s.chain_ids[i],
                s.residue_numbers[i],
                "",
                p[0],
                p[1],
                p[2],
                1.0f64,
                s.b_factors[i],
                "",
            )
            .expect("formatting into a String cannot fail");
            lines.push(line);
            serial += 1;
        }
    }
    let last = s.len() - 1;
    lines.push(ter_line(
        serial,
        s.residue_names[last],
        s.chain_ids[last],
        s.residue_numbers[last],
    ));
    lines.push("ENDMDL".to_string());
    lines.push("END".to_string());
    let mut out = String::with_capacity(lines.len() * 81);
    for line in lines {
        let _ = writeln!(out, "{line:<80}");
    }
    Ok(out)
}

/// Writes [`pdb_string`] to `path` atomically (temporary file in the same directory, then
/// rename). Nothing is written when the structure is invalid.
pub fn write_pdb(path: &Path, structure: &Atom37Structure<'_>, remarks: &[&str]) -> Result<()> {
    let text = pdb_string(structure, remarks).map_err(|e| e.in_file(path))?;
    write_atomically(path, |mut file| file.write_all(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two residues: GLY (N, CA, C, O) on chain A, ALA (N, CA, C, CB, O) on chain B.
    fn two_chains() -> (Vec<f32>, Vec<f32>) {
        let mut pos = vec![0f32; 2 * 37 * 3];
        let mut mask = vec![0f32; 2 * 37];
        let present: [&[usize]; 2] = [&[0, 1, 2, 4], &[0, 1, 2, 3, 4]];
        for (i, atoms) in present.iter().enumerate() {
            for &a in *atoms {
                mask[i * 37 + a] = 1.0;
                for k in 0..3 {
                    pos[(i * 37 + a) * 3 + k] = (i * 100 + a * 10 + k) as f32 * 0.125 - 3.0;
                }
            }
        }
        (pos, mask)
    }

    fn structure<'a>(pos: &'a [f32], mask: &'a [f32]) -> Atom37Structure<'a> {
        Atom37Structure {
            atom_positions: pos,
            atom_mask: mask,
            residue_names: &["GLY", "ALA"],
            chain_ids: &['A', 'B'],
            residue_numbers: &[1, 52],
            b_factors: &[87.654, 42.0],
        }
    }

    #[test]
    fn lines_follow_the_pdb_columns() {
        let (pos, mask) = two_chains();
        let text = pdb_string(&structure(&pos, &mask), &["af2 test"]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| l.len() == 80), "{text}");
        assert_eq!(lines[0].trim_end(), "REMARK af2 test");
        assert_eq!(lines[1].trim_end(), "MODEL     1");
        let atoms: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("ATOM"))
            .collect();
        assert_eq!(atoms.len(), 9);
        // AlphaFold's exact layout for the first atom.
        assert_eq!(
            atoms[0],
            format!(
                "{:<80}",
                "ATOM      1  N   GLY A   1      -3.000  -2.875  -2.750  1.00 87.65           N"
            )
        );
        // Column positions (1-based, inclusive) of the PDB format.
        let col = |l: &str, a: usize, b: usize| l[a - 1..b].to_string();
        let cb = atoms[7];
        assert_eq!(col(cb, 1, 6), "ATOM  ");
        assert_eq!(col(cb, 7, 11), "    9"); // serial: the TER after chain A took number 5
        assert_eq!(col(cb, 13, 16), " CB ");
        assert_eq!(col(cb, 18, 20), "ALA");
        assert_eq!(col(cb, 22, 22), "B");
        assert_eq!(col(cb, 23, 26), "  52");
        let x: f64 = col(cb, 31, 38).trim().parse().unwrap();
        let y: f64 = col(cb, 39, 46).trim().parse().unwrap();
        let z: f64 = col(cb, 47, 54).trim().parse().unwrap();
        let expect = |k: usize| ((100 + 30 + k) as f64) * 0.125 - 3.0;
        assert_eq!((x, y, z), (expect(0), expect(1), expect(2)));
        assert_eq!(col(cb, 55, 60), "  1.00");
        assert_eq!(col(cb, 61, 66), " 42.00");
        assert_eq!(col(cb, 77, 78), " C");
        // TER lines close each chain, then ENDMDL and END.
        let ter: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("TER"))
            .collect();
        assert_eq!(ter[0].trim_end(), "TER       5      GLY A   1");
        assert_eq!(ter[1].trim_end(), "TER      11      ALA B  52");
        assert_eq!(lines[lines.len() - 2].trim_end(), "ENDMDL");
        assert_eq!(lines[lines.len() - 1].trim_end(), "END");
        // Atoms are written in atom37 order (CB before O), as AlphaFold does.
        assert_eq!(col(atoms[8], 13, 16), " O  ");
    }

    #[test]
    fn written_file_parses_back_with_pdbtbx() {
        use pdbtbx::{
            ContainsAtomConformer, ContainsAtomConformerResidue, ContainsAtomConformerResidueChain,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.pdb");
        let (pos, mask) = two_chains();
        write_pdb(&path, &structure(&pos, &mask), &[]).unwrap();
        let (pdb, _warnings) = pdbtbx::ReadOptions::default()
            .set_format(pdbtbx::Format::Pdb)
            .set_level(pdbtbx::StrictnessLevel::Loose)
            .read(path.to_str().unwrap())
            .unwrap();
        assert_eq!(pdb.chain_count(), 2);
        assert_eq!(pdb.atom_count(), 9);
        let ca = pdb
            .atoms_with_hierarchy()
            .find(|h| h.atom().name() == "CA" && h.chain().id() == "B")
            .unwrap();
        assert_eq!(ca.residue().name(), Some("ALA"));
        assert_eq!(ca.residue().serial_number(), 52);
        assert!((ca.atom().b_factor() - 42.0).abs() < 1e-9);
        let expected = (100.0 + 10.0) * 0.125 - 3.0;
        assert!((ca.atom().x() - expected).abs() < 1e-9);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn invalid_input_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.pdb");
        let (mut pos, mask) = two_chains();
        pos[3] = f32::NAN;
        let err = write_pdb(&path, &structure(&pos, &mask), &[]).unwrap_err();
        assert!(err.to_string().contains("model.pdb"), "{err}");
        assert!(err.to_string().contains("atom CA"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let (pos, mask) = two_chains();
        let mut s = structure(&pos, &mask);
        s.b_factors = &[1.0];
        assert!(pdb_string(&s, &[]).is_err());
        s.b_factors = &[1.0, 2.0];
        s.chain_ids = &['A', 'é'];
        assert!(pdb_string(&s, &[]).is_err());
    }

    #[test]
    fn four_letter_names_start_in_column_13() {
        assert_eq!(padded_atom_name("CA"), " CA ");
        assert_eq!(padded_atom_name("OXT"), " OXT");
        assert_eq!(padded_atom_name("HD21"), "HD21");
    }
}
