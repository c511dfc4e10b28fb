//! End-to-end: `af2 screen` (AF2 initial guess) on the two-chain binder fixture with tiny random
//! weights: metrics rows, bad rows, resume, hallucination mode, hotspots.

mod common;

use std::path::{Path, PathBuf};

use af2_io::structure::read_structure;
use common::{af2, fixture, run, stderr, weights_dir};

fn rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

fn column(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

/// Tiny weights, an isolated cache and a work folder holding `designs.csv`: one test's setup.
struct Setup {
    weights: tempfile::TempDir,
    cache: tempfile::TempDir,
    work: tempfile::TempDir,
    designs: PathBuf,
}

impl Setup {
    fn new(designs_csv: &str) -> Self {
        let work = tempfile::tempdir().unwrap();
        let designs = work.path().join("designs.csv");
        std::fs::write(&designs, designs_csv).unwrap();
        Self {
            weights: weights_dir(),
            cache: tempfile::tempdir().unwrap(),
            work,
            designs,
        }
    }

    /// A path in the work folder.
    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// `af2 screen designs.csv` against the binder fixture, writing to `out`, on the CPU.
    fn screen(&self, out: &Path) -> std::process::Command {
        let mut c = af2(self.cache.path());
        c.arg("screen")
            .arg(&self.designs)
            .arg("--target")
            .arg(fixture("binder/complex.pdb"))
            .arg("-o")
            .arg(out)
            .arg("--weights")
            .arg(self.weights.path())
            .args(["--num-recycle", "1", "--device", "cpu"]);
        c
    }
}

#[test]
fn redesign_screen_scores_reports_bad_rows_and_resumes() {
    let setup = Setup::new("id,sequence\nd1,SWGYLR\nshort,SWGY\nd2,aklleA\nbad,SWG1LR\n");
    let out = setup.path("out");
    let output = run(setup
        .screen(&out)
        .args(["--target-chain", "A", "--binder-chain", "B"]));
    assert!(output.status.success());
    let log = stderr(&output);
    assert!(log.contains("redesign mode"), "{log}");

    let table = rows(&out.join("scores.csv"));
    let header = &table[0];
    assert_eq!(table.len(), 5, "header + 4 rows: {table:?}");
    let error = column(header, "error");
    let by_id = |id: &str| table.iter().find(|r| r[0] == id).unwrap().clone();

    for (id, sequence) in [("d1", "SWGYLR"), ("d2", "AKLLEA")] {
        let row = by_id(id);
        assert_eq!(row[1], sequence);
        assert_eq!(row[error], "", "{row:?}");
        let value = |name: &str| -> f64 { row[column(header, name)].parse().unwrap() };
        for name in ["plddt", "i_ptm", "ptm", "plddt_monomer", "pae", "i_pae"] {
            let v = value(name);
            assert!((0.0..=1.05).contains(&v), "{id} {name} = {v}");
        }
        assert!((value("unscaled_i_pae") - 31.0 * value("i_pae")).abs() < 1e-6);
        assert!(value("rmsd") >= 0.0 && value("bound_unbound_rmsd") >= 0.0);
        for filter in ["af2ig_easy_pass", "af2ig_strict_pass"] {
            assert!(["true", "false"].contains(&row[column(header, filter)].as_str()));
        }
        // The complex PDB: target chain A (10 residues, numbered as the input), binder chain B.
        let pdb = read_structure(&out.join("pdb").join(format!("{id}.pdb"))).unwrap();
        let chains: Vec<(String, usize)> = pdb
            .chains
            .iter()
            .map(|c| (c.id.clone(), c.residues.len()))
            .collect();
        assert_eq!(chains, vec![("A".into(), 10), ("B".into(), 6)]);
        let binder_names: Vec<&str> = pdb.chains[1]
            .residues
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        let expected: Vec<&str> = match id {
            "d1" => vec!["SER", "TRP", "GLY", "TYR", "LEU", "ARG"],
            _ => vec!["ALA", "LYS", "LEU", "LEU", "GLU", "ALA"],
        };
        assert_eq!(binder_names, expected);
    }
    // Different sequences, different metrics.
    assert_ne!(by_id("d1")[2..error], by_id("d2")[2..error]);

    let short = by_id("short");
    assert!(
        short[error].contains("4 residues") && short[error].contains("has 6"),
        "{short:?}"
    );
    assert!(short[error].contains("designs.csv:3"), "{short:?}");
    assert_eq!(short[column(header, "plddt")], "");
    let bad = by_id("bad");
    assert!(bad[error].contains("invalid residue '1'"), "{bad:?}");
    assert!(!out.join("pdb/short.pdb").exists() && !out.join("pdb/bad.pdb").exists());

    // Resume: a new design is scored, nothing else is run or written again.
    let first_run = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    std::fs::write(
        &setup.designs,
        "id,sequence\nd1,SWGYLR\nshort,SWGY\nd2,aklleA\nbad,SWG1LR\nd3,LLLLLL\n",
    )
    .unwrap();
    let again = run(setup
        .screen(&out)
        .args(["--target-chain", "A", "--binder-chain", "B"]));
    assert!(again.status.success());
    let log = stderr(&again);
    assert!(log.contains("1 to score, 3 already in"), "{log}");
    let second_run = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    assert!(
        second_run.starts_with(&first_run),
        "rows before the resume are kept as they were"
    );
    let table = rows(&out.join("scores.csv"));
    assert_eq!(table.len(), 6, "{table:?}");
    assert_eq!(table[5][0], "d3");
    assert_eq!(table.iter().filter(|r| r[0] == "d1").count(), 1);

    // A third run has nothing to do and loads no model.
    let third = run(setup.screen(&out).args(["--binder-chain", "B"]));
    assert!(third.status.success());
    assert!(String::from_utf8_lossy(&third.stdout).contains("nothing to do"));
    assert_eq!(
        std::fs::read_to_string(out.join("scores.csv")).unwrap(),
        second_run
    );
}

/// `--batch-size 2` folds two designs per batched forward pass; the table (the same rows in
/// the same order, error rows included) and the PDBs equal `--batch-size 1`'s. The batch runs
/// the same float32 arithmetic per design, so every score agrees to float32 rounding: within
/// 1e-5 of max(1, |value|) (on the CPU reference they are equal).
#[test]
fn batched_screen_equals_one_design_at_a_time() {
    // Batches of 2: [d1, short] (a design that fails beside one that scores), [d2, d3].
    let setup = Setup::new("id,sequence\nd1,SWGYLR\nshort,SWGY\nd2,AKLLEA\nd3,LLKAEW\n");
    let screen_with = |batch: &str| {
        let out = setup.path(&format!("batch{batch}"));
        let output = run(setup
            .screen(&out)
            .args(["--binder-chain", "B", "--batch-size", batch]));
        assert!(output.status.success(), "--batch-size {batch}");
        out
    };
    let (one, two) = (screen_with("1"), screen_with("2"));
    let (a, b) = (rows(&one.join("scores.csv")), rows(&two.join("scores.csv")));
    assert_eq!(a.len(), 5, "{a:?}");
    assert_eq!(a.len(), b.len());
    let header = &a[0];
    let error = column(header, "error");
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!(ra.len(), rb.len());
        for (k, (x, y)) in ra.iter().zip(rb).enumerate() {
            match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(x), Ok(y)) => assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "{} {}: {x} vs {y}",
                    ra[0],
                    header[k]
                ),
                _ => assert_eq!(x, y, "{} {}", ra[0], header[k]),
            }
        }
    }
    let short = b.iter().find(|r| r[0] == "short").unwrap();
    assert!(short[error].contains("4 residues"), "{short:?}");
    for id in ["d1", "d2", "d3"] {
        let row = b.iter().find(|r| r[0] == id).unwrap();
        assert_eq!(row[error], "", "{row:?}");
        let coords = |dir: &Path| -> Vec<f64> {
            read_structure(&dir.join("pdb").join(format!("{id}.pdb")))
                .unwrap()
                .chains
                .iter()
                .flat_map(|c| c.residues.iter())
                .flat_map(|r| r.atoms.iter().flat_map(|a| a.position))
                .collect()
        };
        let (x, y) = (coords(&one), coords(&two));
        assert_eq!(x.len(), y.len());
        // PDB coordinates have 3 decimals: equal up to one rounding step.
        assert!(
            x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= 1.01e-3),
            "{id}"
        );
    }
    // Different designs, different scores (the batch did not mix them up).
    let by_id = |id: &str| b.iter().find(|r| r[0] == id).unwrap()[2..error].to_vec();
    assert_ne!(by_id("d1"), by_id("d2"));
    assert_ne!(by_id("d2"), by_id("d3"));
}

#[test]
fn hallucination_mode_jsonl_and_hotspot() {
    let setup = Setup::new("sequence,id\nSWGYLRKE,h1\n");
    let read = |out: &Path| -> serde_json::Value {
        let text = std::fs::read_to_string(out.join("scores.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        serde_json::from_str(lines[0]).unwrap()
    };

    let plain = setup.path("plain");
    let output = run(setup
        .screen(&plain)
        .args([
            "--binder-len",
            "8",
            "--format",
            "jsonl",
            "--filters",
            "strict",
        ])
        .arg("--no-monomer"));
    assert!(output.status.success());
    let row = read(&plain);
    assert_eq!(row["id"], "h1");
    assert!(row["error"].is_null(), "{row}");
    assert!(
        row["rmsd"].is_null(),
        "no rmsd without a binder chain: {row}"
    );
    assert!(row["plddt_monomer"].is_null());
    assert_eq!(row["af2ig_strict_pass"], false, "rmsd is missing: {row}");
    assert!(row.get("af2ig_easy_pass").is_none());
    let pdb = read_structure(&plain.join("pdb/h1.pdb")).unwrap();
    assert_eq!(pdb.chains[1].id, "B");
    assert_eq!(pdb.chains[1].residues.len(), 8);

    // The same design with a hotspot: only i_pae (its columns) changes.
    let hot = setup.path("hot");
    let output = run(setup
        .screen(&hot)
        .args([
            "--binder-len",
            "8",
            "--format",
            "jsonl",
            "--filters",
            "strict",
        ])
        .args(["--no-monomer", "--hotspot", "A3-5,A8"]));
    assert!(output.status.success());
    let with_hotspot = read(&hot);
    assert_eq!(with_hotspot["plddt"], row["plddt"]);
    assert_eq!(with_hotspot["i_ptm"], row["i_ptm"]);
    assert_ne!(with_hotspot["i_pae"], row["i_pae"]);
}

#[test]
fn setup_errors_are_clear() {
    let setup = Setup::new("id,sequence\nd1,SWGYLR\n");
    let cases: [(&[&str], &str); 3] = [
        (&["--binder-chain", "C"], "no chain 'C'"),
        (
            &["--binder-chain", "B", "--hotspot", "A99"],
            "no residue numbered 99",
        ),
        (
            &["--binder-chain", "B", "--target-chain", "B"],
            "is the target chain",
        ),
    ];
    for (args, needle) in cases {
        let out = setup.path("out");
        let output = run(setup.screen(&out).args(args));
        assert!(!output.status.success(), "{args:?}");
        let err = stderr(&output);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "nothing written for {args:?}");
    }
    // Neither --binder-chain nor --binder-len.
    let output = run(&mut setup.screen(&setup.path("o")));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--binder-chain"));
}

#[test]
fn a_table_another_screen_is_writing_is_refused() {
    let setup = Setup::new("id,sequence\nd1,SWGYLR\n");
    let out = setup.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let table = out.join("scores.csv");
    std::fs::write(&table, "").unwrap();
    // This test process plays the other screen: it holds the table's lock.
    let held = std::fs::File::open(&table).unwrap();
    held.try_lock().unwrap();
    let output = run(setup.screen(&out).args(["--binder-chain", "B"]));
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("another process is writing"), "{err}");
    assert!(err.contains("scores.csv"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&table).unwrap(),
        "",
        "the table is untouched"
    );
    drop(held);
    let output = run(setup.screen(&out).args(["--binder-chain", "B"]));
    assert!(output.status.success(), "runs once the lock is released");
}
