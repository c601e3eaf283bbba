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

/// A json:raw run of the samples, gzip-compressed, into `out`; returns its bundle.
async fn json_raw_gzip(out: &Path) -> PathBuf {
    let mut request = RunRequest::new(ProfileId::from_static("json:raw"));
    request.compression = Some(Compression::Gzip);
    request.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    RunBuilder::new(exportcore_json::JsonRaw, DirEvidence::new(samples()).unwrap(), FsSink::new(out).unwrap())
        .execute(request)
        .await
        .unwrap();
    out.join("json-raw.tar.gz")
}

fn assert_refused(file: &Path, what: &str, options: &VerifyOptions) {
    let report = exportcore_devportal::verify_path_with(file, options).unwrap();
    assert!(!report.is_ok(), "{what}: verify said OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_raw_gzip_bundle_with_anything_beyond_its_entries_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = json_raw_gzip(&tmp.path().join("out")).await;
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

/// The genuine tar stream with each entry re-appended; `pax` puts a PAX extended header (a
/// benign `path`, the entry's own name) before the entry named `at`.
fn with_pax_before(tar: &[u8], at: &str) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    let mut ar = tar::Archive::new(tar);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let mut h = e.header().clone();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        if name == at {
            out.append_pax_extensions([("path", name.as_bytes())]).unwrap();
        }
        out.append_data(&mut h, &name, &body[..]).unwrap();
    }
    out.into_inner().unwrap()
}

/// Tar readers disagree on names given by PAX headers (and GNU long names beside them) and
/// on the `prefix` field of pre-POSIX ustar headers: `tar` unpacked other files under the
/// names `verify` had checked. Only POSIX ustar headers without PAX pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_whose_names_tar_readers_disagree_on_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = gunzip(&std::fs::read(json_raw_gzip(&tmp.path().join("out")).await).unwrap());
    let options = VerifyOptions::default();
    let plain = tmp.path().join("plain.tar.gz");
    std::fs::write(&plain, gzip(&with_pax_before(&tar, "no-such-entry"))).unwrap();
    assert!(exportcore_devportal::verify_path_with(&plain, &options).unwrap().is_ok(), "re-appended as is: verifies");
    // A PAX header, even one repeating the entry's own name.
    let pax = tmp.path().join("pax.tar.gz");
    std::fs::write(&pax, gzip(&with_pax_before(&tar, "manifest.json"))).unwrap();
    let r = exportcore_devportal::verify_path_with(&pax, &options).unwrap();
    assert!(r.failures.iter().any(|f| f.problem.contains("PAX")), "{:?}", r.failures);
    // A ustar magic with another version: GNU tar joins `prefix` to the name, the crate not.
    let mut old = tar;
    assert_eq!(&old[257..265], b"ustar\x0000");
    old[263..265].copy_from_slice(b"  ");
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(&old[..512]);
    h.set_cksum();
    old[..512].copy_from_slice(h.as_bytes());
    let pre = tmp.path().join("pre-posix.tar.gz");
    std::fs::write(&pre, gzip(&old)).unwrap();
    let r = exportcore_devportal::verify_path_with(&pre, &options).unwrap();
    assert!(r.failures.iter().any(|f| f.problem.contains("ustar")), "{:?}", r.failures);
}

/// Rewrites `dir`'s run manifest so every entry matches the file now there (what an attacker
/// who also swaps the unsigned manifest does).
fn remanifest(dir: &Path) {
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    for e in manifest["entries"].as_array_mut().unwrap() {
        let bytes = std::fs::read(dir.join(e["path"].as_str().unwrap())).unwrap();
        e["size"] = bytes.len().into();
        e["sha256"] = exportcore::Sha256Digest::of(&bytes).to_hex().into();
    }
    let total: u64 = manifest["entries"].as_array().unwrap().iter().map(|e| e["size"].as_u64().unwrap()).sum();
    manifest["totals"]["bytes"] = total.into();
    std::fs::write(dir.join("manifest.json"), exportcore::canonical::to_vec(&manifest).unwrap()).unwrap();
}

/// A tar with a symlink out of the tree beside `files`.
fn tar_with_link(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *body).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "z-link", "/etc/passwd").unwrap();
    b.into_inner().unwrap()
}

/// `verify DIR` without a key opens every archive of the run: a nested bundle claiming a
/// foreign manifest, and a Trivy DB tarball, still may not hold links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_in_an_unsigned_run_are_opened_whatever_they_claim_to_be() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |profile: &'static str, out: PathBuf| async move {
        let mut request = RunRequest::new(ProfileId::from_static(profile));
        request.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
        let mut all = exportcore_json::profiles();
        all.extend(exportcore_trivy::profiles());
        RunBuilder::from_arcs(
            all.get(profile).unwrap(),
            std::sync::Arc::new(DirEvidence::new(samples()).unwrap()),
            std::sync::Arc::new(FsSink::new(&out).unwrap()),
        )
        .execute(request)
        .await
        .unwrap();
        out
    };
    let options = VerifyOptions::default();
    let raw = run("json:raw", tmp.path().join("raw")).await;
    let foreign = br#"{"version":"evil/v1"}"#;
    let bundle = zstd::encode_all(&tar_with_link(&[("manifest.json", foreign)])[..], 3).unwrap();
    std::fs::write(raw.join("json-raw.tar.zst"), bundle).unwrap();
    remanifest(&raw);
    let r = exportcore::verify::verify_path_with(&raw, &options).unwrap();
    assert!(r.failures.iter().any(|f| f.path.ends_with("!z-link")), "{:?}", r.failures);

    let db = run("trivy:db", tmp.path().join("db")).await;
    let good = exportcore::verify::verify_path_with(&db, &options).unwrap();
    assert!(good.is_ok(), "the genuine DB tarball passes: {:?}", good.failures);
    std::fs::write(db.join("db.tar.gz"), gzip(&tar_with_link(&[("metadata.json", b"{}")]))).unwrap();
    remanifest(&db);
    let r = exportcore::verify::verify_path_with(&db, &options).unwrap();
    assert!(r.failures.iter().any(|f| f.path == "db.tar.gz!z-link"), "{:?}", r.failures);

    // A blob a mirror carries as it is (an image layer holds links) is its digest's business.
    let ev = tmp.path().join("ev");
    assert!(std::process::Command::new("cp").arg("-r").arg(samples()).arg(&ev).status().unwrap().success());
    std::fs::write(ev.join("blobs/layers/with-link.tar.gz"), gzip(&tar_with_link(&[("etc/os-release", b"x")])))
        .unwrap();
    let out = tmp.path().join("mirror");
    let mut request = RunRequest::new(ProfileId::from_static("mirror:full"));
    request.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    RunBuilder::new(
        exportcore_mirror::MirrorFull::default(),
        DirEvidence::new(&ev).unwrap(),
        FsSink::new(&out).unwrap(),
    )
    .execute(request)
    .await
    .unwrap();
    let r = exportcore::verify::verify_path_with(&out, &options).unwrap();
    assert!(r.is_ok(), "a genuine mirror with a layer holding links: {:?}", r.failures);
}

/// A caller acting on a verified directory reads through the report: the bytes the
/// verification read, or an error once a file changed after it (a swap between the check and
/// the use: `decrypt` and `mirror apply` read their export.json, diff and manifests this way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_swapped_after_verification_is_not_read_as_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    json_raw_gzip(&out).await;
    let report = exportcore::verify::verify_path_with(&out, &VerifyOptions::default()).unwrap();
    assert!(report.is_ok(), "{:?}", report.failures);
    let genuine = std::fs::read(out.join("manifest.json")).unwrap();
    assert_eq!(report.read_verified(&out, "manifest.json").unwrap(), genuine);
    let mut swapped = genuine;
    swapped.push(b' ');
    std::fs::write(out.join("manifest.json"), &swapped).unwrap();
    let e = report.read_verified(&out, "manifest.json").unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_VERIFY_FAILED");
    assert!(e.to_string().contains("changed since it was verified"), "{e}");
    std::fs::write(out.join("late.json"), b"{}").unwrap();
    let e = report.read_verified(&out, "late.json").unwrap_err();
    assert!(e.to_string().contains("not among the files"), "{e}");
}

/// A `file://` push builds beside its target and renames it into place: two pushes to one
/// target at once leave one whole, verifying copy (the other fails), and no staging behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_pushes_to_one_target_never_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    json_raw_gzip(&out).await;
    let target = tmp.path().join("deliveries/run-1");
    let (a, b) = tokio::join!(
        exportcore_distribution::push_dir(&out, &target),
        exportcore_distribution::push_dir(&out, &target)
    );
    assert!(a.is_ok() != b.is_ok(), "exactly one push wins: {:?} / {:?}", a.as_ref().err(), b.as_ref().err());
    let report = exportcore::verify::verify_path_with(&target, &VerifyOptions::default()).unwrap();
    assert!(report.is_ok(), "{:?}", report.failures);
    let left: Vec<String> = std::fs::read_dir(tmp.path().join("deliveries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["run-1"], "no staging directory left");
}

/// A source that changes while it is verified (a FUSE or NFS mount the attacker serves): the
/// manifest is swapped between a genuine signed one and a forged one as fast as the attacker
/// can. Whenever `verify --key` says OK, the manifest it vouches for (what `read_verified`
/// hands `decrypt` and `mirror apply`) is the genuine one: the bytes whose signature was
/// checked are the bytes whose digest was recorded. Before, the tree walk's read and the
/// signature check's read were two reads, so OK could vouch for the forged bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_swapped_during_verification_is_never_vouched_for() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let pair = exportcore_crypto::generate(exportcore_crypto::Algorithm::Ed25519).unwrap();
    let mut request = RunRequest::new(ProfileId::from_static("json:raw"));
    request.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    request.distribution =
        Some(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"));
    RunBuilder::new(exportcore_json::JsonRaw, DirEvidence::new(samples()).unwrap(), FsSink::new(&out).unwrap())
        .signer(exportcore_crypto::signer_from_pem(&pair.private_pem).unwrap())
        .execute(request)
        .await
        .unwrap();
    let options = VerifyOptions {
        verifiers: vec![exportcore_crypto::verifier_from_pem(&pair.public_pem).unwrap()],
        ..Default::default()
    };
    let genuine = std::fs::read(out.join("manifest.json")).unwrap();
    let genuine_sha = exportcore::Sha256Digest::of(&genuine);
    let mut forged = genuine.clone();
    forged.extend_from_slice(b"\n");
    let (g, f) = (tmp.path().join("genuine.json"), tmp.path().join("forged.json"));
    std::fs::write(&g, &genuine).unwrap();
    std::fs::write(&f, &forged).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, target, tmp) = (std::sync::Arc::clone(&stop), out.join("manifest.json"), tmp.path().to_path_buf());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (src, next) =
                    (tmp.join(if n.is_multiple_of(2) { "forged.json" } else { "genuine.json" }), tmp.join("next"));
                std::fs::copy(&src, &next).unwrap();
                std::fs::rename(&next, &target).unwrap();
                n += 1;
            }
        })
    };
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..400 {
        match exportcore::verify::verify_path_with(&out, &options) {
            Ok(report) if report.is_ok() => {
                ok += 1;
                let (_, sha) = report.digests["manifest.json"];
                assert_eq!(sha, genuine_sha, "verify said OK and vouched for the forged manifest");
            }
            _ => refused += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    eprintln!("{ok} verified, {refused} refused while the manifest was being swapped");
    assert!(refused > 0, "the swapper never won a race: the test checked nothing");
}
