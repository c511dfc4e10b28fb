//! End-to-end: `af2 weights fetch` from a tar served once on loopback, `convert` and `check` on
//! local files.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{af2, listing, oracle_params, run, stderr};

/// A tar holding the fixture weights as `params/params_model_1_ptm.npz`, a multimer-named copy
/// that must be skipped, and a licence file.
fn params_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let params = std::fs::read(oracle_params()).unwrap();
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    };
    add("LICENSE", b"test licence\n");
    add("params_model_1_ptm.npz", &params);
    add("params_model_1_multimer_v3.npz", &params);
    builder.into_inner().unwrap()
}

/// Serves one HTTP response on 127.0.0.1 to one connection, then stops. Returns the URL and the
/// thread, which yields the request line.
fn serve_once(status: &'static str, body: Vec<u8>) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/alphafold_params_test.tar",
        listener.local_addr().unwrap()
    );
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request = String::new();
        reader.read_line(&mut request).unwrap();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
        }
        let mut stream = stream;
        // The client may hang up early (on an error status): write errors are not ours to check.
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(&body);
        let _ = stream.flush();
        request
    });
    (url, handle)
}

#[test]
fn fetch_downloads_extracts_converts_and_checks() {
    let cache = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let (url, server) = serve_once("200 OK", params_tar());
    let output = run(af2(cache.path())
        .args(["weights", "fetch", "--url", &url, "--dest"])
        .arg(dest.path()));
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /alphafold_params_test.tar HTTP/1.1"),
        "{request}"
    );
    assert!(output.status.success());
    // Only the monomer pTM model, converted; no npz, no download, no temporary file left.
    assert_eq!(listing(dest.path()), vec!["model_1_ptm.safetensors"]);
    let log = stderr(&output);
    assert!(log.contains("params_model_1_ptm.npz ->"), "{log}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok "));

    // The converted weights are found through $AF2_WEIGHTS and pass `check`.
    let check = run(af2(cache.path())
        .env("AF2_WEIGHTS", dest.path())
        .args(["weights", "check", "--models", "1"]));
    assert!(check.status.success());
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains("model_1_ptm.safetensors") && stdout.contains("PAE head yes"),
        "{stdout}"
    );
}

#[test]
fn fetch_reports_http_errors_and_writes_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let (url, server) = serve_once("404 Not Found", b"no such file".to_vec());
    let output = run(af2(cache.path())
        .args(["weights", "fetch", "--url", &url, "--dest"])
        .arg(dest.path()));
    server.join().unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains(&url) && err.contains("404"), "{err}");
    assert!(listing(dest.path()).is_empty());
}

#[test]
fn fetch_refuses_a_tar_without_parameters() {
    let cache = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_cksum();
    builder
        .append_data(&mut header, "README", &b"hi\n"[..])
        .unwrap();
    let (url, server) = serve_once("200 OK", builder.into_inner().unwrap());
    let output = run(af2(cache.path())
        .args(["weights", "fetch", "--url", &url, "--dest"])
        .arg(dest.path()));
    server.join().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("no monomer parameter files"));
    assert!(listing(dest.path()).is_empty());
}

#[test]
fn convert_and_check_local_files() {
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let npz = work.path().join("params_model_3_ptm.npz");
    std::fs::copy(oracle_params(), &npz).unwrap();
    let out = work.path().join("converted");
    let output = run(af2(cache.path())
        .args(["weights", "convert"])
        .arg(&npz)
        .arg("-o")
        .arg(&out));
    assert!(output.status.success());
    let converted = out.join("model_3_ptm.safetensors");
    assert!(converted.is_file());
    assert!(String::from_utf8_lossy(&output.stdout).contains("verified bit for bit"));

    let check = run(af2(cache.path())
        .args(["weights", "check"])
        .arg(&converted)
        .arg(&npz));
    assert!(check.status.success());
    assert_eq!(
        String::from_utf8_lossy(&check.stdout)
            .matches("ok ")
            .count(),
        2
    );

    // A file that is not weights: the check fails and names it.
    let junk = work.path().join("junk.safetensors");
    std::fs::write(&junk, b"not weights at all").unwrap();
    let bad = run(af2(cache.path()).args(["weights", "check"]).arg(&junk));
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("junk.safetensors"));
    assert_eq!(listing(&out), vec!["model_3_ptm.safetensors"]);
}
