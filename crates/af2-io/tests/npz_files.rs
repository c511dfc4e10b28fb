//! npz reading/writing on the fixtures, corrupt inputs, and feature slicing.

mod common;

use af2_io::features::{feature_slice, num_recycle_slices, read_features};
use af2_io::npz::{Array, read_npz, write_npz};
use af2_io::weights::{load_weights, read_haiku_npz};
use common::{FIXTURES, fixture};
use std::path::Path;

#[test]
fn reads_mixed_dtypes() {
    let features = read_features(&fixture("msa_template_n16", "features.npz")).unwrap();
    assert!(matches!(features["aatype"], Array::I32(_)));
    assert!(matches!(features["msa_feat"], Array::F32(_)));
    assert_eq!(features["msa_feat"].shape(), &[2, 8, 16, 49]);
    let outputs = read_npz(&fixture("msa_template_n16", "outputs.npz")).unwrap();
    assert!(matches!(outputs["plddt"], Array::F64(_)));
    assert_eq!(outputs["ptm"].shape(), &[] as &[usize]);
    assert_eq!(outputs["final_atom_positions"].shape(), &[16, 37, 3]);
}

#[test]
fn write_npz_roundtrips_fixture_files() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        for file in ["features.npz", "outputs.npz"] {
            let original = read_npz(&fixture(name, file)).unwrap();
            let arrays: Vec<(String, Array)> = original.clone().into_iter().collect();
            let path = dir.path().join(format!("{name}_{file}"));
            write_npz(&path, &arrays).unwrap();
            assert_eq!(read_npz(&path).unwrap(), original, "{name}/{file}");
        }
    }
}

#[test]
fn write_npz_replaces_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npz");
    std::fs::write(&path, b"old contents").unwrap();
    let a = Array::I64(af2_io::NdArray::new(vec![2], vec![1, 2]).unwrap());
    write_npz(&path, &[("a".to_string(), a.clone())]).unwrap();
    assert_eq!(read_npz(&path).unwrap()["a"], a);
}

#[test]
fn reads_deflated_members() {
    // Build a savez_compressed-style archive with the zip crate that npyz re-exports.
    use npyz::zip::{CompressionMethod, ZipWriter, write::FileOptions};
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let stored = dir.path().join("stored.npz");
    let values: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
    let a = Array::F32(af2_io::NdArray::new(vec![10, 100], values).unwrap());
    write_npz(&stored, &[("x".into(), a.clone())]).unwrap();
    // Re-pack the member deflated.
    let mut archive = npyz::zip::ZipArchive::new(std::fs::File::open(&stored).unwrap()).unwrap();
    let mut member = archive.by_name("x.npy").unwrap();
    let mut npy = Vec::new();
    std::io::Read::read_to_end(&mut member, &mut npy).unwrap();
    let deflated = dir.path().join("deflated.npz");
    let mut zip = ZipWriter::new(std::fs::File::create(&deflated).unwrap());
    let options = FileOptions::default().compression_method(CompressionMethod::Deflated);
    zip.start_file("x.npy", options).unwrap();
    zip.write_all(&npy).unwrap();
    zip.finish().unwrap();
    assert!(
        std::fs::metadata(&deflated).unwrap().len() < std::fs::metadata(&stored).unwrap().len()
    );
    assert_eq!(read_npz(&deflated).unwrap()["x"], a);
}

/// Asserts that reading `path` fails (no panic) with a message naming the file.
fn assert_read_fails(path: &Path) {
    let name = path.file_name().unwrap().to_str().unwrap();
    let err = read_npz(path)
        .expect_err("corrupt npz must not read")
        .to_string();
    assert!(err.contains(name), "{err}");
    let err = load_weights(path)
        .expect_err("corrupt weights must not load")
        .to_string();
    assert!(err.contains(name), "{err}");
}

#[test]
fn truncated_params_give_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("msa_template_n16", "params.npz")).unwrap();
    let half = dir.path().join("half.npz");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    assert_read_fails(&half);
    assert!(read_haiku_npz(&half).is_err());
    for fraction in [1, 10, 50, 90, 99] {
        let path = dir.path().join(format!("trunc{fraction}.npz"));
        std::fs::write(&path, &bytes[..bytes.len() * fraction / 100]).unwrap();
        assert_read_fails(&path);
    }
    let empty = dir.path().join("empty.npz");
    std::fs::write(&empty, b"").unwrap();
    assert!(read_npz(&empty).is_err());
    assert!(load_weights(&empty).is_err());
}

#[test]
fn garbage_files_give_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.npz");
    let noise: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&garbage, &noise).unwrap();
    assert_read_fails(&garbage);
    let text = dir.path().join("text.npz");
    std::fs::write(&text, b"this is not a zip file at all").unwrap();
    assert_read_fails(&text);
    // Looks like a zip, is not.
    let fake_zip = dir.path().join("fake.npz");
    std::fs::write(&fake_zip, b"PK\x03\x04 garbage garbage garbage").unwrap();
    assert_read_fails(&fake_zip);
    // Looks like safetensors, is not.
    let fake_st = dir.path().join("fake.safetensors");
    let mut st = 1_000_000u64.to_le_bytes().to_vec();
    st.extend(b"{\"a\": 1}");
    std::fs::write(&fake_st, &st).unwrap();
    let err = load_weights(&fake_st).unwrap_err().to_string();
    assert!(err.contains("fake.safetensors"), "{err}");
}

#[test]
fn corrupted_bytes_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("single_seq_n24", "features.npz")).unwrap();
    let step = bytes.len() / 97;
    for (n, pos) in (0..bytes.len()).step_by(step.max(1)).enumerate() {
        let mut corrupt = bytes.clone();
        corrupt[pos] ^= 0x5a;
        let path = dir.path().join(format!("corrupt{n}.npz"));
        std::fs::write(&path, &corrupt).unwrap();
        // Either an error or (if the flipped byte is in unchecked padding) a successful read;
        // never a panic.
        let _ = read_npz(&path);
    }
}

#[test]
fn flipped_data_byte_fails_the_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("msa_template_n16", "params.npz")).unwrap();
    let n = bytes.len();
    bytes[n / 3] ^= 1;
    let path = dir.path().join("flipped.npz");
    std::fs::write(&path, &bytes).unwrap();
    let err = read_npz(&path).unwrap_err().to_string();
    assert!(
        err.contains("flipped.npz") && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn feature_slices_take_the_recycle_axis() {
    let features = read_features(&fixture("msa_template_n16", "features.npz")).unwrap();
    assert_eq!(num_recycle_slices(&features).unwrap(), 2);
    let r1 = feature_slice(&features, 1).unwrap();
    assert_eq!(r1.len(), features.len());
    assert_eq!(r1["msa_feat"].shape(), &[8, 16, 49]);
    assert_eq!(r1["seq_length"].shape(), &[] as &[usize]);
    let (Array::F32(full), Array::F32(slice)) = (&features["msa_feat"], &r1["msa_feat"]) else {
        panic!("msa_feat is float32");
    };
    assert_eq!(slice.data[..], full.data[slice.data.len()..]);
    let err = feature_slice(&features, 2).unwrap_err().to_string();
    assert!(
        err.contains("aatype") && err.contains("recycle slice 2"),
        "{err}"
    );
}

#[test]
fn features_convert_to_i64_and_f32() {
    let features = read_features(&fixture("single_seq_n24", "features.npz")).unwrap();
    let aatype = features["aatype"].to_i64().unwrap();
    assert!(aatype.data.iter().all(|&a| (0..=21).contains(&a)));
    let mask = features["seq_mask"].to_f32();
    assert_eq!(mask.shape, features["seq_mask"].shape());
    // Float masks that hold integers convert to i64 too.
    assert!(features["seq_mask"].to_i64().is_ok());
    assert!(
        features["msa_feat"].to_i64().is_err()
            || features["msa_feat"]
                .to_f32()
                .data
                .iter()
                .all(|v| v.fract() == 0.0)
    );
}

#[test]
fn missing_features_file_names_the_path() {
    let err = read_features(Path::new("/no/such/features.npz"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/no/such/features.npz") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn write_into_missing_directory_fails_cleanly() {
    let path = Path::new("/nonexistent-dir-af2/out.npz");
    let a = Array::Bool(af2_io::NdArray::new(vec![1], vec![true]).unwrap());
    let err = write_npz(path, &[("a".into(), a)]).unwrap_err().to_string();
    assert!(err.contains("/nonexistent-dir-af2/out.npz"), "{err}");
}
