//! Macromolecular structures from PDB and mmCIF files (read with `pdbtbx`), reduced to what the
//! feature pipeline needs: the first model's chains, their residues (name, number, insertion
//! code) and each residue's atoms by name with coordinates.
//!
//! Names only: nothing here knows AlphaFold's residue or atom tables (`af2-model` maps names to
//! restypes and atom37 slots).
//!
//! Alternative locations: for each residue the atoms without an alternate-location label and
//! those of the first label met are kept, and of two atoms with the same name the first is kept
//! (as ColabDesign's `pdb_to_string` keeps the first placement). mmCIF chains and residue numbers
//! are the author's (`auth_asym_id`, `auth_seq_id`), as in PDB files.

use std::path::Path;

use pdbtbx::{Context, Format, PDBError, ReadOptions, StrictnessLevel};

use crate::sequence::{InputError, InputResult, read_text};

/// One atom.
#[derive(Debug, Clone, PartialEq)]
pub struct Atom {
    /// Atom name, as in the file (`CA`, `OXT`, ...).
    pub name: String,
    /// Element symbol, when known.
    pub element: Option<String>,
    /// Coordinates (Å).
    pub position: [f64; 3],
    /// Occupancy.
    pub occupancy: f64,
    /// B-factor.
    pub b_factor: f64,
}

/// One residue.
#[derive(Debug, Clone, PartialEq)]
pub struct Residue {
    /// Residue name (`ALA`, `MSE`, `HOH`, ...).
    pub name: String,
    /// Residue number (PDB `resSeq`, mmCIF `auth_seq_id`).
    pub number: i64,
    /// Insertion code, if any.
    pub insertion_code: Option<String>,
    /// Whether its atoms are `HETATM` records.
    pub hetero: bool,
    /// Atoms in file order, unique by name.
    pub atoms: Vec<Atom>,
}

impl Residue {
    /// The atom called `name`, if present.
    pub fn atom(&self, name: &str) -> Option<&Atom> {
        self.atoms.iter().find(|a| a.name == name)
    }
}

/// One chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// Chain identifier (PDB chain id, mmCIF `auth_asym_id`).
    pub id: String,
    /// Residues in file order.
    pub residues: Vec<Residue>,
}

/// The first model of a structure file.
#[derive(Debug, Clone, PartialEq)]
pub struct Structure {
    /// Chains in file order.
    pub chains: Vec<Chain>,
}

impl Structure {
    /// The chain with identifier `id`.
    pub fn chain(&self, id: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.id == id)
    }

    /// The chain with identifier `id`, or an error that lists the chains present.
    pub fn require_chain(&self, id: &str) -> Result<&Chain, String> {
        self.chain(id).ok_or_else(|| {
            format!(
                "no chain '{id}' in the structure; chains present: {}",
                self.chain_ids().join(", ")
            )
        })
    }

    /// Identifiers of all chains, in file order.
    pub fn chain_ids(&self) -> Vec<&str> {
        self.chains.iter().map(|c| c.id.as_str()).collect()
    }
}

/// File format of a structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StructureFormat {
    /// PDB (fixed columns).
    Pdb,
    /// mmCIF / PDBx.
    Mmcif,
}

impl StructureFormat {
    /// Guesses the format from the file name (`.pdb`, `.ent`, `.pdb1`; `.cif`, `.mmcif`), or
    /// else from the text (an mmCIF starts with a `data_` block).
    pub fn guess(path: &Path, text: &str) -> StructureFormat {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("cif" | "mmcif") => StructureFormat::Mmcif,
            Some("pdb" | "ent" | "pdb1") => StructureFormat::Pdb,
            _ => {
                let first = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'));
                if first.is_some_and(|l| l.starts_with("data_")) {
                    StructureFormat::Mmcif
                } else {
                    StructureFormat::Pdb
                }
            }
        }
    }
}

/// Reads the first model of a PDB or mmCIF file (`.gz` compressed too: `.pdb.gz`, `.cif.gz`).
/// Errors name the file and, where the parser gives one, the line.
pub fn read_structure(path: &Path) -> InputResult<Structure> {
    let source = path.display().to_string();
    let is_gz = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let result = if is_gz {
        if !path.exists() {
            return Err(InputError::Io(crate::IoError::NotFound {
                path: path.to_path_buf(),
            }));
        }
        let name = path.to_string_lossy().to_string();
        options().guess_format(&name).read(&name)
    } else {
        let text = read_text(path)?;
        let format = StructureFormat::guess(path, &text);
        return parse_structure(&text, format, &source);
    };
    convert(result, &source)
}

/// Parses structure text in the given format; `source_name` names it in errors.
pub fn parse_structure(
    text: &str,
    format: StructureFormat,
    source_name: &str,
) -> InputResult<Structure> {
    let mut opts = options();
    opts.set_format(match format {
        StructureFormat::Pdb => Format::Pdb,
        StructureFormat::Mmcif => Format::Mmcif,
    });
    let result = opts.read_raw(std::io::BufReader::new(text.as_bytes()));
    convert(result, source_name)
}

fn options() -> ReadOptions {
    let mut opts = ReadOptions::new();
    opts.set_level(StrictnessLevel::Loose)
        .set_only_first_model(true);
    opts
}

/// Turns pdbtbx's result into our structure, or its first breaking error into an [`InputError`].
fn convert(
    result: Result<(pdbtbx::PDB, Vec<PDBError>), Vec<PDBError>>,
    source: &str,
) -> InputResult<Structure> {
    let pdb = match result {
        Ok((pdb, _warnings)) => pdb,
        Err(errors) => {
            let first = errors
                .iter()
                .find(|e| e.fails(StrictnessLevel::Loose))
                .or(errors.first());
            return Err(match first {
                Some(e) => pdb_error(e, source),
                None => InputError::parse(source, 0, "cannot read the structure"),
            });
        }
    };
    let Some(model) = pdb.model(0) else {
        return Err(InputError::parse(
            source,
            0,
            "no atoms: expected ATOM/HETATM records (PDB) or an _atom_site loop (mmCIF)",
        ));
    };
    let chains = model
        .chains()
        .map(|chain| Chain {
            id: chain.id().to_string(),
            residues: chain.residues().filter_map(convert_residue).collect(),
        })
        .collect();
    Ok(Structure { chains })
}

fn convert_residue(residue: &pdbtbx::Residue) -> Option<Residue> {
    let first = residue.conformers().next()?;
    let mut atoms: Vec<Atom> = Vec::new();
    let mut chosen_alt: Option<String> = None;
    let mut hetero = false;
    for conformer in residue.conformers() {
        if let Some(alt) = conformer.alternative_location() {
            match &chosen_alt {
                None => chosen_alt = Some(alt.to_string()),
                Some(chosen) if chosen != alt => continue,
                Some(_) => {}
            }
        }
        for atom in conformer.atoms() {
            hetero |= atom.hetero();
            if atoms.iter().any(|a| a.name == atom.name()) {
                continue;
            }
            let (x, y, z) = atom.pos();
            atoms.push(Atom {
                name: atom.name().to_string(),
                element: atom.element().map(|e| e.symbol().to_string()),
                position: [x, y, z],
                occupancy: atom.occupancy(),
                b_factor: atom.b_factor(),
            });
        }
    }
    Some(Residue {
        name: first.name().to_string(),
        number: residue.serial_number() as i64,
        insertion_code: residue.insertion_code().map(str::to_string),
        hetero,
        atoms,
    })
}

fn pdb_error(error: &PDBError, source: &str) -> InputError {
    let (line, text) = match error.context() {
        Context::FullLine { linenumber, line }
        | Context::Line {
            linenumber, line, ..
        } => (*linenumber, Some(line.clone())),
        Context::Range {
            start_linenumber,
            lines,
            ..
        } => (*start_linenumber, lines.first().cloned()),
        _ => (0, None),
    };
    let mut message = format!(
        "{}: {}",
        error.short_description(),
        error.long_description()
    );
    if let Some(text) = text {
        message.push_str(&format!(" (line: {:?})", text.trim_end()));
    }
    InputError::parse(source, line, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const TWO_CHAINS_PDB: &str = "\
HEADER    TEST
ATOM      1  N   GLY A   1      -1.000   0.500   0.000  1.00 10.00           N
ATOM      2  CA  GLY A   1       0.000   0.000   0.000  1.00 11.00           C
ATOM      3  C   GLY A   1       1.200   0.800   0.000  1.00 12.00           C
ATOM      4  O   GLY A   1       1.300   2.000   0.000  1.00 13.00           O
ATOM      5  N   SER A   2       2.200   0.000   0.100  1.00 10.00           N
ATOM      6  CA ASER A   2       3.500   0.500   0.200  0.60 10.00           C
ATOM      7  CA BSER A   2       3.600   0.600   0.300  0.40 10.00           C
ATOM      8  OG ASER A   2       4.000   1.000   1.000  0.60 10.00           O
ATOM      9  OG BSER A   2       4.100   1.100   1.100  0.40 10.00           O
ATOM     10  C   SER A   2       4.500   0.000   0.000  1.00 10.00           C
HETATM   11  N   MSE A   3       5.000   1.000   0.000  1.00 10.00           N
HETATM   12 SE   MSE A   3       6.000   2.000   1.000  1.00 10.00          SE
TER
ATOM     13  N   ALA B  10      10.000   0.000   0.000  1.00 10.00           N
ATOM     14  CA  ALA B  10      11.000   0.000   0.000  1.00 10.00           C
ATOM     15  N   ALA B  10A     12.000   0.000   0.000  1.00 10.00           N
HETATM   16  O   HOH B 101      20.000   0.000   0.000  1.00 10.00           O
END
";

    #[test]
    fn pdb_chains_residues_atoms() {
        let s = parse_structure(TWO_CHAINS_PDB, StructureFormat::Pdb, "t.pdb").unwrap();
        assert_eq!(s.chain_ids(), vec!["A", "B"]);
        let a = s.chain("A").unwrap();
        let names: Vec<&str> = a.residues.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["GLY", "SER", "MSE"]);
        assert_eq!(a.residues[1].number, 2);
        // Alt loc A kept, B dropped; the common atoms too.
        let ser = &a.residues[1];
        let atom_names: Vec<&str> = ser.atoms.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(atom_names.len(), 4, "{atom_names:?}");
        assert_eq!(ser.atom("CA").unwrap().position, [3.5, 0.5, 0.2]);
        assert_eq!(ser.atom("OG").unwrap().position, [4.0, 1.0, 1.0]);
        assert!(ser.atom("N").is_some() && ser.atom("C").is_some());
        assert!(!ser.hetero);
        assert!(a.residues[2].hetero);
        assert_eq!(a.residues[2].atom("SE").unwrap().position, [6.0, 2.0, 1.0]);
        assert_eq!(a.residues[0].atom("CA").unwrap().b_factor, 11.0);
        let b = s.chain("B").unwrap();
        let ids: Vec<(i64, Option<&str>)> = b
            .residues
            .iter()
            .map(|r| (r.number, r.insertion_code.as_deref()))
            .collect();
        assert_eq!(ids, vec![(10, None), (10, Some("A")), (101, None)]);
        assert!(s.chain("C").is_none());
        let err = s.require_chain("C").unwrap_err();
        assert!(err.contains("A, B"), "{err}");
    }

    #[test]
    fn mmcif_uses_author_ids() {
        let cif = "\
data_test
loop_
_atom_site.group_PDB
_atom_site.id
_atom_site.type_symbol
_atom_site.label_atom_id
_atom_site.label_alt_id
_atom_site.label_comp_id
_atom_site.label_asym_id
_atom_site.label_seq_id
_atom_site.pdbx_PDB_ins_code
_atom_site.Cartn_x
_atom_site.Cartn_y
_atom_site.Cartn_z
_atom_site.occupancy
_atom_site.B_iso_or_equiv
_atom_site.auth_seq_id
_atom_site.auth_asym_id
_atom_site.pdbx_PDB_model_num
ATOM 1 N N . GLY A 1 ? 1.123456 2.0 3.0 1.0 5.0 7 X 1
ATOM 2 C CA . GLY A 1 ? 2.0 2.0 3.0 1.0 5.0 7 X 1
ATOM 3 N N . ALA A 2 ? 3.0 2.0 3.0 1.0 5.0 8 X 1
ATOM 4 N N . ALA B 1 ? 9.0 2.0 3.0 1.0 5.0 1 Y 1
#
";
        let s = parse_structure(cif, StructureFormat::Mmcif, "t.cif").unwrap();
        assert_eq!(s.chain_ids(), vec!["X", "Y"]);
        let x = s.chain("X").unwrap();
        assert_eq!(x.residues.len(), 2);
        assert_eq!((x.residues[0].number, x.residues[1].number), (7, 8));
        assert_eq!(
            x.residues[0].atom("N").unwrap().position,
            [1.123456, 2.0, 3.0]
        );
    }

    #[test]
    fn files_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model");
        std::fs::write(&path, TWO_CHAINS_PDB).unwrap();
        // No extension: sniffed as PDB.
        assert_eq!(read_structure(&path).unwrap().chains.len(), 2);
        let missing = dir.path().join("missing.pdb");
        let err = read_structure(&missing).unwrap_err().to_string();
        assert!(
            err.contains("missing.pdb") && err.contains("not found"),
            "{err}"
        );
        let bad = dir.path().join("bad.pdb");
        std::fs::write(
            &bad,
            "ATOM      1  N   GLY A   1      -1.000   0.500   0.000  1.00 10.00           N\n\
             ATOM      2  CA  GLY A   1      xx.000   0.000   0.000  1.00 11.00           C\n",
        )
        .unwrap();
        let err = read_structure(&bad).unwrap_err();
        match &err {
            InputError::Parse { line, .. } => assert_eq!(*line, 2, "{err}"),
            other => panic!("expected a parse error, got {other:?}"),
        }
        assert!(err.to_string().contains("bad.pdb"), "{err}");
        assert_eq!(
            StructureFormat::guess(Path::new("x"), "\n# c\ndata_1\n"),
            StructureFormat::Mmcif
        );
    }
}
