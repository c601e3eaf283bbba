//! The bundle itself: layout, manifest contents, determinism, the fixed tar headers, the
//! shared conformance suite, and Rust verification of a fresh bundle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use exportcore::archive::{ArchiveOptions, ArchiveWriter, FileMode};
use exportcore::conformance;
use exportcore::{
    DirEvidence, EvidenceSource, ExportError, MemoryEvidence, Profile, ProfileId, RunBuilder, RunRequest, RunStatus,
    TenantId,
};
use exportcore_devportal::checksums::Checksums;
use exportcore_devportal::{
    is_bundle, read_member, root_hash, verify_bundle, verify_path_with, verify_run_output, BundleManifest,
    DevportalOffline, BUNDLE_FILE, MANIFEST_ARTIFACT, PROFILE_ID,
};
use std::process::Command;
use std::sync::Arc;

#[test]
fn layout_manifest_and_checksums() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = build_from(Arc::new(DirEvidence::new(samples()).unwrap()), &out, None);
    let mut outputs: Vec<&str> = run.outputs.iter().map(|o| o.path.as_str()).collect();
    outputs.sort_unstable();
    assert_eq!(outputs, [BUNDLE_FILE, MANIFEST_ARTIFACT, "manifest.json"]);

    let dir = tmp.path().join("x");
    extract(&out.join(BUNDLE_FILE), &dir);
    assert_eq!(
        files_of(&dir),
        [
            "changelog/CHANGELOG.md",
            "checksums.txt",
            "instructions-portable.txt",
            "manifest.json",
            "portal/assets/app.css",
            "portal/assets/app.js",
            "portal/assets/logo.svg",
            "portal/index.html",
            "sdks/dotnet/ExportCenterClient.cs",
            "sdks/dotnet/README.md",
            "sdks/python/README.md",
            "sdks/python/exportcenter_client.py",
            "specs/events.schema.json",
            "specs/export-center.openapi.yaml",
            "verify-offline.sh",
        ]
    );
    // Assets are byte-identical copies.
    for f in files_of(&dir).iter().filter(|f| f.contains('/')) {
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), std::fs::read(samples().join(f)).unwrap(), "{f}");
    }

    let bytes = std::fs::read(dir.join("manifest.json")).unwrap();
    let m = BundleManifest::parse(&bytes).unwrap();
    assert!(m.check(&bytes).is_empty(), "{:?}", m.check(&bytes));
    assert_eq!(m.version, "devportal-offline/v1");
    assert_eq!(m.generated_at.to_string(), "2025-01-01T00:00:00Z");
    assert!(m.metadata.is_empty());
    assert!(m.sources.portal_included && m.sources.specs_included && m.sources.changelog_included);
    assert_eq!(m.sources.sdk_names, ["dotnet", "python"]);
    assert_eq!(m.totals.entry_count, 11);
    assert_eq!(m.totals.total_size_bytes, 19715);
    // The example in docs/devportal.md is this manifest.
    assert_eq!(m.bundle_id, "41c19ee6-4ab4-8ab8-a52f-eda5975aba2f");
    let doc = include_str!("../../../docs/devportal.md");
    assert!(doc.contains(&format!("\"bundleId\":\"{}\"", m.bundle_id)), "docs/devportal.md shows another bundleId");
    assert!(doc.contains(r#"{"bundleFiles":{"instructions-portable.txt":"…","verify-offline.sh":"…"},"#));
    let types: Vec<(&str, &str, &str)> =
        m.entries.iter().map(|e| (e.path.as_str(), e.category.as_str(), e.content_type.as_str())).collect();
    assert_eq!(
        types,
        [
            ("changelog/CHANGELOG.md", "changelog", "text/markdown"),
            ("portal/assets/app.css", "portal", "text/css"),
            ("portal/assets/app.js", "portal", "text/javascript"),
            ("portal/assets/logo.svg", "portal", "image/svg+xml"),
            ("portal/index.html", "portal", "text/html"),
            ("sdks/dotnet/ExportCenterClient.cs", "sdk", "text/x-csharp"),
            ("sdks/dotnet/README.md", "sdk", "text/markdown"),
            ("sdks/python/README.md", "sdk", "text/markdown"),
            ("sdks/python/exportcenter_client.py", "sdk", "text/x-python"),
            ("specs/events.schema.json", "specs", "application/json"),
            ("specs/export-center.openapi.yaml", "specs", "application/yaml"),
        ]
    );
    let sizes: u64 = m.entries.iter().map(|e| e.size_bytes).sum();
    assert_eq!(m.totals.total_size_bytes, sizes);

    // checksums.txt: root first, then every other file, sorted; sha256sum -c accepts it.
    let text = std::fs::read_to_string(dir.join("checksums.txt")).unwrap();
    let c = Checksums::parse(&text).unwrap();
    let root = exportcore::Sha256Digest::of(&bytes);
    assert_eq!(c.root, root);
    let listed: Vec<&str> = c.files.iter().map(|(p, _)| p.as_str()).collect();
    let mut all = files_of(&dir);
    all.retain(|f| f != "checksums.txt");
    assert_eq!(listed, all);
    let sums = tmp.path().join("sums");
    std::fs::write(&sums, text.split_once('\n').unwrap().1).unwrap();
    let o = Command::new("sha256sum").arg("-c").arg(&sums).current_dir(&dir).output().unwrap();
    assert!(o.status.success(), "{}", text_of(&o));

    // The root is in the run record and in the published copy of the manifest.
    assert_eq!(root_hash(&run), Some(root));
    assert_eq!(std::fs::read(out.join(MANIFEST_ARTIFACT)).unwrap(), bytes);
    assert_eq!(read_member(&out.join(BUNDLE_FILE), "manifest.json").unwrap(), bytes);
    assert_eq!(read_member(&out.join(BUNDLE_FILE), "nope").unwrap_err().code(), "ERR_EXPORT_NOT_FOUND");

    // Rust verification passes on the archive, the extracted directory and the run output.
    for p in [out.join(BUNDLE_FILE), dir.clone()] {
        let r = verify_bundle(&p, &[]).unwrap();
        assert!(r.is_ok(), "{}: {:?}", p.display(), r.failures);
        assert_eq!(r.verified, 15, "root + 14 listed files");
        let r = verify_path_with(&p, &Default::default()).unwrap();
        assert!(r.is_ok(), "{:?}", r.failures);
        // An age asked of a lone bundle, which records no time source: never a silent pass.
        let aged = exportcore::verify::VerifyOptions {
            staleness: Some(exportcore::verify::StalenessPolicy {
                max_age: std::time::Duration::from_secs(1),
                max_drift: std::time::Duration::from_secs(300),
                now: exportcore::Timestamp::now(),
            }),
            ..Default::default()
        };
        let r = verify_path_with(&p, &aged).unwrap();
        assert!(r.failures.iter().any(|f| f.problem.contains("age cannot be checked")), "{:?}", r.failures);
    }
    let r = verify_run_output(&out, &Default::default()).unwrap();
    assert!(r.is_ok(), "{:?}", r.failures);
    assert!(verify_path_with(&out, &Default::default()).unwrap().is_ok());

    // Recognising bundles.
    assert!(is_bundle(&out.join(BUNDLE_FILE)) && is_bundle(&dir));
    assert!(!is_bundle(&out) && !is_bundle(&out.join(MANIFEST_ARTIFACT)) && !is_bundle(&tmp.path().join("nope")));
    let other = |entries: &[(&str, &[u8])]| {
        let mut w = ArchiveWriter::new(Vec::new(), ArchiveOptions::new(exportcore::Compression::Gzip, 0)).unwrap();
        for (p, b) in entries {
            w.append(&p.parse().unwrap(), FileMode::Regular, b.len() as u64, *b).unwrap();
        }
        let p = tmp.path().join("other.tgz");
        std::fs::write(&p, w.finish().unwrap()).unwrap();
        is_bundle(&p)
    };
    assert!(!other(&[("a.txt", b"a"), ("manifest.json", br#"{"version":"exportcore-bundle/v1"}"#)]));
    assert!(!other(&[("z.txt", b"z")]));
    assert!(other(&[("manifest.json", br#"{"version":"devportal-offline/v1"}"#)]));
}

fn text_of(o: &std::process::Output) -> String {
    text(o)
}

#[test]
fn two_builds_are_byte_identical_and_share_the_bundle_id() {
    let tmp = tempfile::tempdir().unwrap();
    let a = build_samples(&tmp.path().join("a"), None);
    let b = build_samples(&tmp.path().join("b"), None);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "two builds differ");
    let id = |p: &std::path::Path| BundleManifest::parse(&read_member(p, "manifest.json").unwrap()).unwrap().bundle_id;
    assert_eq!(id(&a), id(&b));

    // The id names the assets: another time keeps it, another asset byte changes it.
    let ev = tmp.path().join("ev");
    copy_dir(&samples().join("portal"), &ev.join("portal"));
    let mut req = request();
    req.created_at = Some(exportcore::Timestamp::parse("2030-06-01T12:00:00Z").unwrap());
    let c_out = tmp.path().join("c");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = rt
        .block_on(
            RunBuilder::new(
                DevportalOffline::new(),
                DirEvidence::new(&ev).unwrap(),
                exportcore::FsSink::new(&c_out).unwrap(),
            )
            .tenant(TenantId::parse("t").unwrap())
            .execute(req),
        )
        .unwrap_or_else(|e| panic!("the run failed: {}", e.report()))
        .run;
    assert_eq!(run.status, RunStatus::Succeeded);
    let d = build_from(Arc::new(DirEvidence::new(&ev).unwrap()), &tmp.path().join("d"), None);
    assert_eq!(run.outputs.len(), d.outputs.len());
    assert_eq!(id(&c_out.join(BUNDLE_FILE)), id(&tmp.path().join("d").join(BUNDLE_FILE)));
    assert_ne!(
        std::fs::read(c_out.join(BUNDLE_FILE)).unwrap(),
        std::fs::read(tmp.path().join("d").join(BUNDLE_FILE)).unwrap()
    );
    std::fs::write(ev.join("portal/index.html"), "changed").unwrap();
    build_from(Arc::new(DirEvidence::new(&ev).unwrap()), &tmp.path().join("e"), None);
    assert_ne!(id(&tmp.path().join("e").join(BUNDLE_FILE)), id(&tmp.path().join("d").join(BUNDLE_FILE)));
}

#[test]
fn tar_listing_shows_only_fixed_modes_owners_and_mtime() {
    let tmp = tempfile::tempdir().unwrap();
    let tgz = build_samples(&tmp.path().join("out"), None);
    let o = Command::new("tar")
        .args(["--numeric-owner", "--full-time", "-tvzf"])
        .arg(&tgz)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let listing = String::from_utf8(o.stdout).unwrap();
    let mut names = Vec::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, date, time, name) = (cols[0], cols[1], cols[3], cols[4], cols[5]);
        let want = if name.ends_with('/') {
            "drwxr-xr-x"
        } else if name.ends_with(".sh") {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, want, "{line}");
        assert_eq!(owner, "0/0", "{line}");
        assert_eq!((date, time), ("2025-01-01", "00:00:00"), "{line}");
        names.push(name.to_owned());
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries in path order");
    assert!(names.contains(&"verify-offline.sh".to_owned()) && names.contains(&"sdks/python/".to_owned()));
    // gzip header: no mtime (bytes 4..8), no file name flag, OS byte 255.
    let bytes = std::fs::read(&tgz).unwrap();
    assert_eq!(&bytes[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
    assert_eq!(bytes[9], 255);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_checks_pass() {
    let profile: Arc<dyn Profile> = Arc::new(DevportalOffline::new());
    let evidence: Arc<dyn EvidenceSource> = Arc::new(DirEvidence::new(samples()).unwrap());
    let request = RunRequest::new(ProfileId::from_static(PROFILE_ID));
    conformance::profile_descriptor_is_valid(&*profile);
    conformance::profile_is_deterministic(&profile, &evidence, &request).await;
    conformance::profile_failure_leaves_no_output(&profile, &request).await;
    conformance::profile_honours_cancel(&profile, &evidence, &request).await;
    // profile_outputs_verify, with the devportal-aware verifier (see the next test).
    let dir = tempfile::tempdir().unwrap();
    let sink = exportcore::FsSink::new(dir.path()).unwrap();
    let run = RunBuilder::from_arcs(Arc::clone(&profile), Arc::clone(&evidence), Arc::new(sink))
        .tenant(TenantId::parse("conformance").unwrap())
        .execute(request.clone())
        .await
        .unwrap_or_else(|e| panic!("the run failed: {}", e.report()))
        .run;
    assert_eq!(run.status, RunStatus::Succeeded);
    for o in &run.outputs {
        let bytes = std::fs::read(dir.path().join(o.path.as_str())).unwrap();
        assert_eq!(exportcore::Sha256Digest::of(&bytes), o.sha256, "{}", o.path);
    }
    let report = verify_run_output(dir.path(), &Default::default()).unwrap();
    assert!(report.is_ok(), "{:?}", report.failures);
    assert!(report.verified as usize + 1 >= run.outputs.len());
    // The core verifier alone checks the run and leaves the bundle's inside to this crate.
    let core = exportcore::verify::verify_path(dir.path()).unwrap();
    assert!(core.is_ok(), "{:?}", core.failures);
}

/// The whole shared suite, run as any profile runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_profile_suite_passes() {
    conformance::profile_suite(
        Arc::new(DevportalOffline::new()),
        Arc::new(DirEvidence::new(samples()).unwrap()),
        RunRequest::new(ProfileId::from_static(PROFILE_ID)),
    )
    .await;
}

#[test]
fn validate_rejects_what_it_cannot_do() {
    let p = DevportalOffline::new();
    let mut r = RunRequest::new(ProfileId::from_static(PROFILE_ID));
    r.compression = Some(exportcore::Compression::Zstd);
    let err = p.validate(&r).unwrap_err();
    assert_eq!(err.code(), "ERR_EXPORT_NOT_SUPPORTED");
    assert!(err.to_string().contains("compression"), "{err}");
    r.compression = Some(exportcore::Compression::Gzip);
    p.validate(&r).unwrap();
    r.targets = vec![exportcore::Target::Advisory];
    assert_eq!(p.validate(&r).unwrap_err().code(), "ERR_EXPORT_REQUEST_INVALID");
}

#[test]
fn metadata_and_memory_evidence() {
    let mut ev = MemoryEvidence::new();
    ev.insert("portal/index.html", "<p>hi</p>").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = rt
        .block_on(
            RunBuilder::new(
                DevportalOffline::new().with_metadata("releaseVersion", "2025.1").with_metadata("build", "b7"),
                ev,
                exportcore::FsSink::new(tmp.path()).unwrap(),
            )
            .tenant(TenantId::parse("t").unwrap())
            .execute(RunRequest::new(ProfileId::from_static(PROFILE_ID))),
        )
        .unwrap_or_else(|e| panic!("the run failed: {}", e.report()))
        .run;
    assert_eq!(run.status, RunStatus::Succeeded);
    let m = BundleManifest::parse(&read_member(&tmp.path().join(BUNDLE_FILE), "manifest.json").unwrap()).unwrap();
    assert_eq!(m.metadata.get("releaseVersion").map(String::as_str), Some("2025.1"));
    // No pinned time: the epoch, as for every exportcore profile.
    assert_eq!(m.generated_at.to_string(), "1970-01-01T00:00:00Z");
    assert_eq!(m.sources, exportcore_devportal::manifest::Sources { portal_included: true, ..Default::default() });
    assert!(verify_bundle(&tmp.path().join(BUNDLE_FILE), &[]).unwrap().is_ok());
    let _ = ExportError::Cancelled;
}

#[test]
fn signed_run_output_verifies_with_the_run_key() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let wrong = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "wrong");
    let out = tmp.path().join("out");
    build_samples(&out, Some(k.signer.clone()));
    let with =
        |v: &Keys| exportcore::verify::VerifyOptions { verifiers: vec![v.verifier.clone()], ..Default::default() };

    // The run directory: run manifest, run signatures, provenance, and the bundle's own DSSE.
    let r = verify_path_with(&out, &with(&k)).unwrap();
    assert!(r.is_ok(), "{:?}", r.failures);
    let r = verify_path_with(&out, &with(&wrong)).unwrap();
    let paths: Vec<&str> = r.failures.iter().map(|f| f.path.as_str()).collect();
    assert!(paths.contains(&"devportal-offline-bundle.tgz!manifest.dsse.json"), "{paths:?}");
    assert!(paths.contains(&"manifest.dsse.json"), "{paths:?}");

    // The lone bundle (which the core verifier refuses to check with keys).
    let tgz = out.join(BUNDLE_FILE);
    assert!(verify_path_with(&tgz, &with(&k)).unwrap().is_ok());
    assert!(!verify_path_with(&tgz, &with(&wrong)).unwrap().is_ok());

    // A swapped copy of the manifest next to the bundle no longer gives the root.
    std::fs::write(out.join(MANIFEST_ARTIFACT), b"{}").unwrap();
    let r = verify_run_output(&out, &Default::default()).unwrap();
    let problems: Vec<String> = r.failures.iter().map(|f| format!("{}: {}", f.path, f.problem)).collect();
    assert!(problems.iter().any(|p| p.starts_with("devportal-offline-manifest.json")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("is not the expected root")), "{problems:?}");
}

#[test]
fn signed_bundles_are_reproducible_with_deterministic_algorithms() {
    let tmp = tempfile::tempdir().unwrap();
    let ed = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "ed");
    let hmac: Arc<dyn exportcore::sign::Signer> = exportcore_crypto::hmac_key(b"0123456789abcdef0123").unwrap();
    for (name, signer) in [("ed25519", ed.signer.clone()), ("hmac", hmac)] {
        let a = build_samples(&tmp.path().join(format!("{name}-a")), Some(signer.clone()));
        let b = build_samples(&tmp.path().join(format!("{name}-b")), Some(signer));
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "{name}: signed builds differ");
        assert!(read_member(&a, "manifest.dsse.json").is_ok());
    }
}

/// Re-packs `tgz` with its entries unchanged, then `extra` (header, data) entries appended.
fn repack(tgz: &std::path::Path, extra: Vec<(tar::Header, Vec<u8>)>) -> Vec<u8> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(tgz).unwrap()));
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    for (mut h, data) in extra {
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A ustar entry `name` holding `body`, without end-of-archive blocks: what a smuggler hides
/// in the "data" of another entry.
fn hidden_entry(name: &str, body: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Entries our tar reader sees one way and `tar` another: a directory entry whose size hides a
/// replacement `portal/index.html` (GNU tar unpacks it), a regular file named with a trailing
/// `/`, a setuid mode, a foreign owner, a directory over a verified file. A signed lone bundle
/// carrying any of them fails `verify --key` instead of saying OK.
#[test]
fn entries_tar_would_unpack_differently_fail_a_signed_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let out = tmp.path().join("out");
    build_samples(&out, Some(k.signer.clone()));
    let tgz = out.join(BUNDLE_FILE);
    let with = exportcore::verify::VerifyOptions { verifiers: vec![k.verifier.clone()], ..Default::default() };
    assert!(verify_path_with(&tgz, &with).unwrap().is_ok());
    let same = tmp.path().join("same.tgz");
    std::fs::write(&same, repack(&tgz, Vec::new())).unwrap();
    assert!(verify_path_with(&same, &with).unwrap().is_ok(), "re-packing alone changes nothing verify sees");
    let header = |kind: tar::EntryType, name: &str, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let evil = b"<script>steal()</script>";
    let smuggled = hidden_entry("portal/index.html", evil);
    let mut setuid = header(tar::EntryType::Regular, "portal/run.sh", 2);
    setuid.set_mode(0o4755);
    let mut owned = header(tar::EntryType::Regular, "portal/owned.txt", 2);
    owned.set_uid(4242);
    type Extra = Vec<(tar::Header, Vec<u8>)>;
    let cases: Vec<(&str, Extra, &str)> = vec![
        (
            "dir-with-data",
            vec![(header(tar::EntryType::Directory, "portal/", smuggled.len() as u64), smuggled)],
            "declares",
        ),
        ("file-named-as-dir", vec![(header(tar::EntryType::Regular, "zz/", 3), b"abc".to_vec())], "ends in '/'"),
        ("setuid", vec![(setuid, b"#!".to_vec())], "setuid"),
        ("foreign-owner", vec![(owned, b"hi".to_vec())], "owner 4242"),
        (
            "dir-over-file",
            vec![(header(tar::EntryType::Directory, "portal/index.html/", 0), Vec::new())],
            "name of a file",
        ),
    ];
    for (name, extra, why) in cases {
        let path = tmp.path().join(format!("{name}.tgz"));
        std::fs::write(&path, repack(&tgz, extra)).unwrap();
        let r = verify_path_with(&path, &with).unwrap();
        assert!(!r.is_ok(), "{name}: verified");
        assert!(r.failures.iter().any(|f| f.problem.contains(why)), "{name}: {:?}", r.failures);
    }
    // The first one is a real attack: GNU tar unpacks the hidden page over the genuine one.
    let dir = tmp.path().join("unpacked");
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("tar").arg("-xzf").arg(tmp.path().join("dir-with-data.tgz")).arg("-C").arg(&dir).status();
    assert!(st.unwrap().success());
    assert_eq!(std::fs::read(dir.join("portal/index.html")).unwrap(), evil, "the smuggled entry is what tar unpacks");
}
