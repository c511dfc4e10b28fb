//! End-to-end: `af2 predict` on FASTA and A3M inputs, with tiny random weights (outputs are
//! numbers to check the plumbing with, not structures).

mod common;

use std::path::Path;

use af2_io::structure::read_structure;
use common::{af2, fixture, listing, run, stderr, weights_dir};
use serde_json::Value;

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// `af2 predict INPUT -o OUT --weights WEIGHTS`, isolated from the user's cache.
fn predict(cache: &Path, weights: &Path, input: &Path, out: &Path) -> std::process::Command {
    let mut c = af2(cache);
    c.arg("predict")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--weights")
        .arg(weights);
    c
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn mean(values: &[Value]) -> f64 {
    values.iter().map(|v| v.as_f64().unwrap()).sum::<f64>() / values.len() as f64
}

/// Checks one model's files: the PDB parses with the chains and residue counts, its B-factors are
/// the scores' pLDDT, the scores have an N×N PAE; returns the mean pLDDT.
fn check_model(out: &Path, job: &str, tag: &str, chains: &[(&str, usize)], complex: bool) -> f64 {
    let n: usize = chains.iter().map(|c| c.1).sum();
    let pdb = out.join(format!("{job}_unrelaxed_{tag}.pdb"));
    let structure = read_structure(&pdb).unwrap();
    let found: Vec<(String, usize)> = structure
        .chains
        .iter()
        .map(|c| (c.id.clone(), c.residues.len()))
        .collect();
    let expected: Vec<(String, usize)> = chains.iter().map(|(c, l)| (c.to_string(), *l)).collect();
    assert_eq!(found, expected, "{}", pdb.display());

    let scores = json(&out.join(format!("{job}_scores_{tag}.json")));
    let plddt = scores["plddt"].as_array().unwrap();
    assert_eq!(plddt.len(), n);
    let pae = scores["pae"].as_array().unwrap();
    assert_eq!(pae.len(), n);
    assert!(pae.iter().all(|r| r.as_array().unwrap().len() == n));
    let ptm = scores["ptm"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ptm), "ptm {ptm}");
    assert!(scores["max_pae"].as_f64().unwrap() > 31.0);
    assert_eq!(
        scores.get("iptm").is_some(),
        complex,
        "iptm only for complexes"
    );

    // B-factor = pLDDT (both rounded to 2 decimals).
    let b: Vec<f64> = structure
        .chains
        .iter()
        .flat_map(|c| c.residues.iter().map(|r| r.atoms[0].b_factor))
        .collect();
    for (x, y) in b.iter().zip(plddt) {
        assert!((x - y.as_f64().unwrap()).abs() < 0.011, "{x} vs {y}");
    }

    let afdb = json(&out.join(format!("{job}_predicted_aligned_error_{tag}.json")));
    assert_eq!(
        afdb[0]["predicted_aligned_error"].as_array().unwrap().len(),
        n
    );
    for png in [
        format!("{job}_pae_{tag}.png"),
        format!("{job}_plddt_{tag}.png"),
    ] {
        let bytes = std::fs::read(out.join(&png)).unwrap();
        assert!(bytes.starts_with(PNG_MAGIC), "{png}");
    }
    mean(plddt)
}

#[test]
fn fasta_jobs_are_predicted_ranked_and_resumed() {
    let weights = weights_dir();
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let fasta = work.path().join("queries.fasta");
    std::fs::write(
        &fasta,
        ">mono some description\nMKVLAAGIVKELLEKA\n>pair\nMKELLEKAIE:\nSWGYLR\n",
    )
    .unwrap();
    let out = work.path().join("out");
    let output = run(predict(cache.path(), weights.path(), &fasta, &out)
        .args(["--num-recycle", "2", "--num-seeds", "2", "--msa-sampling"])
        .args(["--device", "cpu"]));
    assert!(output.status.success());
    let log = stderr(&output);
    // A log line per pass: 2 jobs × 2 seeds × 3 passes.
    assert_eq!(log.matches(" recycle=").count(), 12, "{log}");
    assert!(log.contains("mono alphafold2_ptm_model_1_seed_001 recycle=2"));

    for (job, chains, complex) in [
        ("mono", vec![("A", 16)], false),
        ("pair", vec![("A", 10), ("B", 6)], true),
    ] {
        // Two seeds, ranked by mean pLDDT.
        let names = listing(&out);
        let ranked: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with(&format!("{job}_unrelaxed_rank_")))
            .collect();
        assert_eq!(ranked.len(), 2, "{names:?}");
        let mut means = Vec::new();
        for rank in 1..=2 {
            let prefix = format!("{job}_unrelaxed_rank_{rank:03}_alphafold2_ptm_model_1_seed_");
            let name = ranked.iter().find(|n| n.starts_with(&prefix)).unwrap();
            let tag = name
                .strip_prefix(&format!("{job}_unrelaxed_"))
                .unwrap()
                .strip_suffix(".pdb")
                .unwrap();
            means.push(check_model(&out, job, tag, &chains, complex));
        }
        assert!(means[0] + 0.011 >= means[1], "rank order {means:?}");
        // ColabFold's job-level files.
        let v1 = json(&out.join(format!("{job}_predicted_aligned_error_v1.json")));
        assert!(v1[0]["max_predicted_aligned_error"].as_f64().unwrap() > 31.0);
        for png in [format!("{job}_pae.png"), format!("{job}_plddt.png")] {
            assert!(std::fs::read(out.join(png)).unwrap().starts_with(PNG_MAGIC));
        }
        assert!(out.join(format!("{job}.done.txt")).exists());
    }
    // No temporary file is left behind.
    assert!(listing(&out).iter().all(|n| !n.starts_with('.')));

    // A second run skips finished jobs.
    let before =
        std::fs::read(out.join("mono_scores_rank_001_alphafold2_ptm_model_1_seed_000.json"))
            .or_else(|_| {
                std::fs::read(out.join("mono_scores_rank_001_alphafold2_ptm_model_1_seed_001.json"))
            })
            .unwrap();
    let again = run(predict(cache.path(), weights.path(), &fasta, &out).args(["--device", "cpu"]));
    assert!(again.status.success());
    let log = stderr(&again);
    assert_eq!(log.matches("skipped").count(), 2, "{log}");
    assert!(!log.contains("recycle="), "{log}");
    let after =
        std::fs::read(out.join("mono_scores_rank_001_alphafold2_ptm_model_1_seed_000.json"))
            .or_else(|_| {
                std::fs::read(out.join("mono_scores_rank_001_alphafold2_ptm_model_1_seed_001.json"))
            })
            .unwrap();
    assert_eq!(before, after);
}

#[test]
fn a3m_with_template_and_early_stop() {
    let weights = weights_dir();
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let a3m = work.path().join("target.a3m");
    // Query of 10 residues (chain A of the binder fixture), insertions in lower case.
    std::fs::write(
        &a3m,
        "#10\t1\n>query\nMKELLEKAIE\n>hit1\nMKELaaLEKAIE\n>hit2\n--ELLEKVIE\n>hit3\nMRELLEKAID\n",
    )
    .unwrap();
    let out = work.path().join("out");
    let output = run(predict(cache.path(), weights.path(), &a3m, &out)
        .arg("--template-pdb")
        .arg(fixture("binder/complex.pdb"))
        .args(["--template-chain", "A"])
        .args([
            "--num-recycle",
            "3",
            "--recycle-early-stop-tolerance",
            "1e9",
        ])
        .args(["--device", "cpu"]));
    assert!(output.status.success());
    let log = stderr(&output);
    // hit1 aligns to the query exactly (its insertions are not columns): dropped as a duplicate,
    // as AlphaFold does.
    assert!(log.contains("MSA depth 3"), "{log}");
    assert!(
        log.contains("template covers 10 of 10 residues (10 identical)"),
        "{log}"
    );
    // The tolerance stops the loop after the first recycle: two passes.
    assert_eq!(log.matches(" recycle=").count(), 2, "{log}");
    assert!(log.contains("stopped early after 1 recycle"), "{log}");
    check_model(
        &out,
        "target",
        "rank_001_alphafold2_ptm_model_1_seed_000",
        &[("A", 10)],
        false,
    );
}

#[test]
fn initial_guess_must_fit_the_query() {
    let weights = weights_dir();
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let fasta = work.path().join("q.fasta");
    let out = work.path().join("out");

    // Chains A + B of the fixture: 16 residues, as the query.
    std::fs::write(&fasta, ">ig\nMKELLEKAIE:SWGYLR\n").unwrap();
    let ok = run(predict(cache.path(), weights.path(), &fasta, &out)
        .arg("--initial-guess")
        .arg(fixture("binder/complex.pdb"))
        .args(["--num-recycle", "0", "--device", "cpu"]));
    assert!(ok.status.success());
    assert!(out.join("ig.done.txt").exists());

    // 12 residues: refused before anything runs or is written.
    std::fs::write(&fasta, ">short\nMKELLEKAIESW\n").unwrap();
    let out2 = work.path().join("out2");
    let bad = run(predict(cache.path(), weights.path(), &fasta, &out2)
        .arg("--initial-guess")
        .arg(fixture("binder/complex.pdb"))
        .args(["--device", "cpu"]));
    assert!(!bad.status.success());
    let err = stderr(&bad);
    assert!(
        err.contains("complex.pdb") && err.contains("16 residues") && err.contains("has 12"),
        "{err}"
    );
    assert!(!out2.exists());
}

#[test]
fn bad_input_is_located_and_nothing_is_written() {
    let weights = weights_dir();
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let fasta = work.path().join("bad.fasta");
    std::fs::write(&fasta, ">ok\nMKV\n>broken\nMK1V\n").unwrap();
    let out = work.path().join("out");
    let output = run(&mut predict(cache.path(), weights.path(), &fasta, &out));
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("bad.fasta:4"), "{err}");
    assert!(!out.exists());
}

#[test]
fn missing_weights_name_the_directories_the_url_and_the_command() {
    let cache = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let fasta = work.path().join("q.fasta");
    std::fs::write(&fasta, ">q\nMKV\n").unwrap();
    let out = work.path().join("out");
    let output = run(af2(cache.path())
        .env("AF2_WEIGHTS", work.path())
        .arg("predict")
        .arg(&fasta)
        .arg("-o")
        .arg(&out)
        .arg("--weights")
        .arg(empty.path())
        .args(["--models", "2"]));
    assert!(!output.status.success());
    let err = stderr(&output);
    for needle in [
        "model_2_ptm.safetensors",
        "params_model_2_ptm.npz",
        &empty.path().display().to_string(),
        &work.path().display().to_string(),
        &cache.path().join("af2/weights").display().to_string(),
        "https://storage.googleapis.com/alphafold/alphafold_params_2022-12-06.tar",
        "af2 weights fetch",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    assert!(!out.exists());
}
