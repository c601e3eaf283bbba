//! `verify` on a lone bundle file, attacked the way `tar` would be fooled: the genuine
//! entries (end-of-archive blocks stripped) followed by a second gzip member with replaced and
//! extra files, appended bytes, flipped checksums. `tar xzf` unpacks the attacker's files, so
//! `verify` must refuse every one of them. Each case verified OK before the strict reader.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::verify::VerifyOptions;
use exportcore::{Compression, DirEvidence, FsSink, ProfileId, RunBuilder, RunRequest, Timestamp};
use flate2::read::GzDecoder;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A tar of `files` (ustar, like ours), without its end-of-archive blocks when `open`.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *body).unwrap();
    }
    b.into_inner().unwrap()
}

/// The genuine archive's tar stream without its trailing zero blocks.
fn strip_end(mut tar: Vec<u8>) -> Vec<u8> {
    while tar.len() >= 512 && tar[tar.len() - 512..].iter().all(|b| *b == 0) {
        tar.truncate(tar.len() - 512);
    }
    tar
}

/// Every tampered variant of a genuine `.tar.gz`, named.
fn attacks(genuine: &[u8], replaced: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut second_member = gzip(&strip_end(gunzip(genuine)));
    second_member.extend(gzip(&tar_of(&[(replaced, b"<script>evil()</script>"), ("portal/evil.js", b"evil()")])));
    let mut appended = genuine.to_vec();
    appended.extend_from_slice(&[0u8; 1024]);
    appended.extend_from_slice(b"junk");
    let mut crc = genuine.to_vec();
    let n = crc.len();
    crc[n - 8] ^= 1;
    let mut isize = genuine.to_vec();
    isize[n - 1] ^= 1;
    vec![
        ("second gzip member", second_member),
        ("appended bytes", appended),
        ("flipped CRC-32", crc),
        ("flipped ISIZE", isize),
    ]
}

fn assert_refused(file: &Path, what: &str, options: &VerifyOptions) {
    let report = exportcore_devportal::verify_path_with(file, options).unwrap();
    assert!(!report.is_ok(), "{what}: verify said OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_raw_gzip_bundle_with_anything_beyond_its_entries_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut request = RunRequest::new(ProfileId::from_static("json:raw"));
    request.compression = Some(Compression::Gzip);
    request.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    RunBuilder::new(exportcore_json::JsonRaw, DirEvidence::new(samples()).unwrap(), FsSink::new(&out).unwrap())
        .execute(request)
        .await
        .unwrap();
    let bundle = out.join("json-raw.tar.gz");
    let genuine = std::fs::read(&bundle).unwrap();
    let options = VerifyOptions::default();
    assert!(exportcore_devportal::verify_path_with(&bundle, &options).unwrap().is_ok(), "the genuine bundle verifies");
    for (what, bytes) in attacks(&genuine, "manifest.json") {
        let f = tmp.path().join(format!("{}.tar.gz", what.replace(' ', "-")));
        std::fs::write(&f, bytes).unwrap();
        assert_refused(&f, what, &options);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_devportal_bundle_with_anything_beyond_its_entries_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let pair = exportcore_crypto::generate(exportcore_crypto::Algorithm::Ed25519).unwrap();
    let signer = exportcore_crypto::signer_from_pem(&pair.private_pem).unwrap();
    let verifier = exportcore_crypto::verifier_from_pem(&pair.public_pem).unwrap();
    let mut request = RunRequest::new(ProfileId::from_static("devportal:offline"));
    request.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    request.distribution =
        Some(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("test"));
    RunBuilder::new(
        exportcore_devportal::DevportalOffline::new(),
        DirEvidence::new(samples()).unwrap(),
        FsSink::new(&out).unwrap(),
    )
    .signer(signer)
    .execute(request)
    .await
    .unwrap();
    let bundle = out.join(exportcore_devportal::BUNDLE_FILE);
    let genuine = std::fs::read(&bundle).unwrap();
    let options = VerifyOptions { verifiers: vec![verifier], ..Default::default() };
    assert!(exportcore_devportal::verify_path_with(&bundle, &options).unwrap().is_ok(), "the genuine bundle verifies");
    for (what, bytes) in attacks(&genuine, "portal/index.html") {
        let f = tmp.path().join(format!("{}.tgz", what.replace(' ', "-")));
        std::fs::write(&f, bytes).unwrap();
        assert_refused(&f, what, &options);
    }
}

/// A bundle in a run directory whose digest already failed is not opened: a decompression
/// bomb swapped in for it costs nothing to reject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_nested_bundle_is_not_inflated() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut request = RunRequest::new(ProfileId::from_static("json:raw"));
    request.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    RunBuilder::new(exportcore_json::JsonRaw, DirEvidence::new(samples()).unwrap(), FsSink::new(&out).unwrap())
        .execute(request)
        .await
        .unwrap();
    // 1 GiB of zeros in a tar.gz of about 1 MiB, where the 24 KiB bundle was.
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut h = tar::Header::new_ustar();
    h.set_size(1 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "raw/advisory.ndjson", std::io::repeat(0).take(1 << 30)).unwrap();
    std::fs::write(out.join("json-raw.tar.zst"), b.into_inner().unwrap().finish().unwrap()).unwrap();
    let report = exportcore::verify::verify_path(&out).unwrap();
    assert!(!report.is_ok());
    assert!(
        report.failures.iter().any(|f| f.path == "json-raw.tar.zst" && f.problem.contains("size")),
        "{:?}",
        report.failures
    );
    // Opened, the bomb would fail inside (no manifest.json at least): nothing of it is reported.
    assert!(report.failures.iter().all(|f| !f.path.starts_with("json-raw.tar.zst!")), "{:?}", report.failures);
}

/// A signature envelope must be byte-for-byte what was written: trailing bytes (even a
/// newline) or reordered members fail `verify --key`, though the JSON still parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_with_trailing_bytes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let pair = exportcore_crypto::generate(exportcore_crypto::Algorithm::Ed25519).unwrap();
    let verifier = exportcore_crypto::verifier_from_pem(&pair.public_pem).unwrap();
    let mut request = RunRequest::new(ProfileId::from_static("json:raw"));
    request.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    request.distribution =
        Some(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("test"));
    RunBuilder::new(exportcore_json::JsonRaw, DirEvidence::new(samples()).unwrap(), FsSink::new(&out).unwrap())
        .signer(exportcore_crypto::signer_from_pem(&pair.private_pem).unwrap())
        .execute(request)
        .await
        .unwrap();
    let options = VerifyOptions { verifiers: vec![verifier], ..Default::default() };
    assert!(exportcore::verify::verify_path_with(&out, &options).unwrap().is_ok());
    for name in ["manifest.dsse.json", "provenance.dsse.json"] {
        let path = out.join(name);
        let genuine = std::fs::read(&path).unwrap();
        let mut tampered = genuine.clone();
        tampered.extend_from_slice(b"\n");
        std::fs::write(&path, &tampered).unwrap();
        let report = exportcore::verify::verify_path_with(&out, &options).unwrap();
        assert!(report.failures.iter().any(|f| f.path == name), "{name}: {:?}", report.failures);
        std::fs::write(&path, genuine).unwrap();
    }
}
