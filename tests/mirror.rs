//! mirror:full through the run API: the fixed layout, byte-identical rebuilds, a whole-mirror
//! verification (run manifest, OCI digests, TUF chain at a chosen time), and what an attacker
//! or a careless operator can do to a mirror on the way across the gap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{keys, samples, Keys};
use exportcore::verify::{VerifyOptions, VerifyReport};
use exportcore::{DirEvidence, FsSink, RunBuilder, RunId, RunRequest, Timestamp};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CREATED: &str = "2025-06-01T00:00:00Z";

fn t(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

async fn build_mirror(out: &Path, k: &Keys, run_id: &str) {
    let req = RunRequest::builder("mirror:full")
        .created_at(t(CREATED))
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    RunBuilder::new(
        exportcore_mirror::MirrorFull::default(),
        DirEvidence::new(samples()).unwrap(),
        FsSink::new(out).unwrap(),
    )
    .signer(Arc::clone(&k.signer))
    .run_id(RunId::parse(run_id).unwrap())
    .execute(req)
    .await
    .unwrap_or_else(|e| panic!("mirror:full failed: {}", e.report()));
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn verify(dir: &Path, k: &Keys, now: &str) -> VerifyReport {
    let options = VerifyOptions { verifiers: vec![Arc::clone(&k.verifier)], ..Default::default() };
    exportcore_mirror::verify_path_with(dir, &options, t(now)).unwrap()
}

fn no_keys() -> VerifyOptions {
    VerifyOptions::default()
}

fn with_key(k: &Keys) -> VerifyOptions {
    VerifyOptions { verifiers: vec![Arc::clone(&k.verifier)], ..Default::default() }
}

fn copy(from: &Path, to: &Path) -> PathBuf {
    assert!(std::process::Command::new("cp").arg("-r").arg(from).arg(to).status().unwrap().success());
    to.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixed_layout_rebuilds_byte_identically_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build_mirror(&a, &k, "mirror-run-1").await;
    build_mirror(&b, &k, "mirror-run-1").await;
    let (ta, tb) = (tree(&a), tree(&b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (path, bytes) in &ta {
        assert!(bytes == &tb[path], "{path} differs between two builds");
    }
    for required in [
        "mirror/export.json",
        "mirror/provenance.json",
        "mirror/README.md",
        "mirror/indexes/advisories.index.json",
        "mirror/indexes/vex.index.json",
        "mirror/indexes/findings.index.json",
        "mirror/data/raw/advisories/pypi.jsonl.zst",
        "mirror/data/raw/vex/openvex.jsonl.zst",
        "mirror/data/policy/findings.jsonl.zst",
        "mirror/trivy/db.tar.gz",
        "mirror/trivy/javadb.tar.gz",
        "mirror/indexes/blobs.index.json",
        "mirror/data/blobs/layers/alpine-3.19-base.tar.gz",
        "mirror/data/blobs/sboms/alpine-3.19.cdx.json.gz",
        "oci/oci-layout",
        "oci/index.json",
        "tuf/metadata/1.root.json",
        "tuf/metadata/root.json",
        "tuf/metadata/1.targets.json",
        "tuf/metadata/1.snapshot.json",
        "tuf/metadata/timestamp.json",
        "manifest.json",
        "manifest.dsse.json",
        "provenance.dsse.json",
    ] {
        assert!(ta.contains_key(required), "{required} missing");
    }
    // Every TUF target is stored under its hash-prefixed name.
    let export: Value = serde_json::from_slice(&ta["mirror/export.json"]).unwrap();
    assert_eq!(export["counts"]["advisory"], 75);
    for f in export["files"].as_array().unwrap() {
        let (path, sha) = (f["path"].as_str().unwrap(), f["sha256"].as_str().unwrap());
        let hashed = match path.rsplit_once('/') {
            Some((dir, base)) => format!("tuf/targets/{dir}/{sha}.{base}"),
            None => format!("tuf/targets/{sha}.{path}"),
        };
        assert!(ta.contains_key(&hashed), "{hashed} missing");
    }
    // The Trivy DB in oci/ is the tarball in mirror/trivy/ (a blob, by digest).
    let db_sha = exportcore::Sha256Digest::of(&ta["mirror/trivy/db.tar.gz"]);
    assert!(ta.contains_key(&format!("oci/blobs/sha256/{db_sha}")));
    // Records are canonical JSON, and the index names each one's digest.
    let pypi = zstd_lines(&ta["mirror/data/raw/advisories/pypi.jsonl.zst"]);
    assert_eq!(pypi.len(), 10);
    let index: Value = serde_json::from_slice(&ta["mirror/indexes/advisories.index.json"]).unwrap();
    let entry = index["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["file"] == "data/raw/advisories/pypi.jsonl.zst" && e["line"] == 1)
        .unwrap();
    assert_eq!(entry["sha256"], exportcore::Sha256Digest::of(pypi[0].as_bytes()).to_hex());
    // Blobs travel byte for byte, listed with their digest and media type, and are layers of
    // the `mirror` image.
    assert_eq!(export["counts"]["blob"], 2);
    let layer = std::fs::read(samples().join("blobs/layers/alpine-3.19-base.tar.gz")).unwrap();
    assert_eq!(ta["mirror/data/blobs/layers/alpine-3.19-base.tar.gz"], layer);
    let blobs: Value = serde_json::from_slice(&ta["mirror/indexes/blobs.index.json"]).unwrap();
    assert_eq!(
        blobs["entries"][0],
        serde_json::json!({"file": "data/blobs/layers/alpine-3.19-base.tar.gz", "mediaType": "application/gzip",
            "sha256": exportcore::Sha256Digest::of(&layer).to_hex(), "size": layer.len()})
    );
    assert!(ta.contains_key(&format!("oci/blobs/sha256/{}", exportcore::Sha256Digest::of(&layer))));

    let report = verify(&a, &k, "2025-06-02T00:00:00Z");
    assert!(report.is_ok(), "{:?}", report.failures);
    assert_eq!(report.signatures, exportcore::verify::Signatures::Valid);
}

fn zstd_lines(bytes: &[u8]) -> Vec<String> {
    let out = String::from_utf8(zstd::decode_all(bytes).unwrap()).unwrap();
    out.lines().map(str::to_owned).collect()
}

fn failures(r: &VerifyReport) -> String {
    r.failures.iter().map(|f| format!("{} {}: {}", f.code, f.path, f.problem)).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_expiry_and_foreign_keys_fail_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::EcdsaP256, tmp.path(), "k");
    let good = tmp.path().join("good");
    build_mirror(&good, &k, "mirror-run-2").await;
    let now = "2025-06-02T00:00:00Z";
    assert!(verify(&good, &k, now).is_ok(), "{}", failures(&verify(&good, &k, now)));

    // Expired: the timestamp role lives 90 days, the others a year.
    let r = verify(&good, &k, "2025-09-15T00:00:00Z");
    assert!(
        r.failures.iter().any(|f| f.code == "ERR_EXPORT_STALE" && f.path.ends_with("timestamp.json")),
        "{}",
        failures(&r)
    );
    let r = verify(&good, &k, "2026-06-02T00:00:00Z");
    assert!(r.failures.iter().any(|f| f.code == "ERR_EXPORT_STALE"), "{}", failures(&r));

    // A TUF target swapped for other bytes of the same length.
    let dir = copy(&good, &tmp.path().join("swapped"));
    let export: Value = serde_json::from_slice(&std::fs::read(dir.join("mirror/export.json")).unwrap()).unwrap();
    let pypi =
        export["files"].as_array().unwrap().iter().find(|f| f["path"] == "data/raw/advisories/pypi.jsonl.zst").unwrap();
    let target =
        dir.join(format!("tuf/targets/data/raw/advisories/{}.pypi.jsonl.zst", pypi["sha256"].as_str().unwrap()));
    let mut bytes = std::fs::read(&target).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&target, &bytes).unwrap();
    let r = verify(&dir, &k, now);
    assert!(r.failures.iter().any(|f| f.path.contains("pypi.jsonl.zst")), "{}", failures(&r));

    // An OCI blob replaced (the run manifest is also out of date: both must say so).
    let dir = copy(&good, &tmp.path().join("oci-blob"));
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("oci/index.json")).unwrap()).unwrap();
    let manifest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    std::fs::write(dir.join(format!("oci/blobs/sha256/{manifest}")), b"{}").unwrap();
    let r = verify(&dir, &k, now);
    assert!(
        r.failures.iter().any(|f| f.path.starts_with("oci/blobs/") && f.problem.contains("descriptor")),
        "{}",
        failures(&r)
    );

    // The whole tuf/ tree re-made with another key: the run signature still holds for the old
    // bytes, so the manifest fails; and the TUF root is no trusted key.
    let other = keys(exportcore_crypto::Algorithm::EcdsaP256, tmp.path(), "other");
    let foreign = tmp.path().join("foreign");
    build_mirror(&foreign, &other, "mirror-run-2").await;
    let dir = copy(&good, &tmp.path().join("retufed"));
    std::fs::remove_dir_all(dir.join("tuf")).unwrap();
    copy(&foreign.join("tuf"), &dir.join("tuf"));
    let r = verify(&dir, &k, now);
    assert!(r.failures.iter().any(|f| f.path.starts_with("tuf/metadata")), "{}", failures(&r));
    assert!(r.failures.iter().any(|f| f.problem.contains("trusted key")), "{}", failures(&r));

    // A file appended to mirror/ is extra to every list.
    let dir = copy(&good, &tmp.path().join("extra"));
    std::fs::write(dir.join("mirror/data/raw/advisories/evil.jsonl.zst"), b"x").unwrap();
    let r = verify(&dir, &k, now);
    assert!(r.failures.iter().any(|f| f.path.contains("evil")), "{}", failures(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_mirror_warns_and_does_not_verify_as_tuf() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let o = RunBuilder::new(
        exportcore_mirror::MirrorFull::default(),
        DirEvidence::new(samples()).unwrap(),
        FsSink::new(&out).unwrap(),
    )
    .execute(RunRequest::builder("mirror:full").created_at(t(CREATED)).build().unwrap())
    .await
    .unwrap();
    assert!(o.run.warnings.iter().any(|w| w.code == "WARN_MIRROR_TUF_UNSIGNED"), "{:?}", o.run.warnings);
    let r = exportcore_mirror::verify_path_with(&out, &VerifyOptions::default(), t("2025-06-02T00:00:00Z")).unwrap();
    assert!(r.failures.iter().any(|f| f.problem.contains("signed by 0/1")), "{}", failures(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sm2_keys_cannot_sign_tuf() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Sm2, tmp.path(), "k");
    let req = RunRequest::builder("mirror:full")
        .created_at(t(CREATED))
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    let e = RunBuilder::new(
        exportcore_mirror::MirrorFull::default(),
        DirEvidence::new(samples()).unwrap(),
        FsSink::new(tmp.path().join("m")).unwrap(),
    )
    .signer(Arc::clone(&k.signer))
    .execute(req)
    .await
    .unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_NOT_SUPPORTED", "{e}");
    assert!(e.to_string().contains("TUF"), "{e}");
}

/// The samples with one advisory removed, one changed and one added, one blob changed and
/// one added.
fn changed_samples(tmp: &Path) -> PathBuf {
    let ev = copy(&samples(), &tmp.join("ev2"));
    std::fs::write(ev.join("blobs/sboms/alpine-3.19.cdx.json.gz"), b"not the same bytes").unwrap();
    std::fs::write(ev.join("blobs/sboms/alpine-3.20.cdx.json.gz"), b"a new blob").unwrap();
    std::fs::remove_file(ev.join("advisories/pypi/GHSA-r3xc-prgr-mg9p.json")).unwrap();
    let go = ev.join("advisories/go/GO-2024-2611.json");
    let text = std::fs::read_to_string(&go).unwrap();
    let added = text.replace("\"GO-2024-2611\"", "\"GO-2099-0001\"");
    assert_ne!(added, text);
    std::fs::write(ev.join("advisories/go/GO-2099-0001.json"), added).unwrap();
    let mut npm: Vec<PathBuf> =
        std::fs::read_dir(ev.join("advisories/npm")).unwrap().map(|e| e.unwrap().path()).collect();
    npm.sort();
    let mut edited: Value = serde_json::from_slice(&std::fs::read(&npm[0]).unwrap()).unwrap();
    edited["modified"] = Value::String("2025-06-10T00:00:00Z".into());
    std::fs::write(&npm[0], serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    ev
}

async fn run_profile(
    profile: impl exportcore::Profile,
    ev: &Path,
    out: &Path,
    k: Option<&Keys>,
    created: &str,
) -> exportcore::Run {
    let mut req = RunRequest::builder(profile.descriptor().id.as_str()).created_at(t(created));
    if k.is_some() {
        req =
            req.distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"));
    }
    let mut b = RunBuilder::new(profile, DirEvidence::new(ev).unwrap(), FsSink::new(out).unwrap())
        .run_id(RunId::parse("delta-run").unwrap());
    if let Some(k) = k {
        b = b.signer(Arc::clone(&k.signer));
    }
    b.execute(req.build().unwrap()).await.unwrap_or_else(|e| panic!("run failed: {}", e.report())).run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_applied_to_its_base_is_the_full_build_of_the_new_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let old = tmp.path().join("old");
    build_mirror(&old, &k, "mirror-run-3").await;
    let ev2 = changed_samples(tmp.path());
    let (delta, delta_b) = (tmp.path().join("delta"), tmp.path().join("delta-b"));
    let new_created = "2025-06-11T00:00:00Z";
    for d in [&delta, &delta_b] {
        run_profile(exportcore_mirror::MirrorDelta::new(&old), &ev2, d, Some(&k), new_created).await;
    }
    assert_eq!(tree(&delta), tree(&delta_b), "two delta builds of the same inputs differ");
    let diff: Value = serde_json::from_slice(&std::fs::read(delta.join("delta/manifest.diff.json")).unwrap()).unwrap();
    assert_eq!(diff["counts"]["records"]["advisory"], serde_json::json!({"added": 1, "changed": 1, "removed": 1}));
    let changed: Vec<&str> = diff["changed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(changed.contains(&"mirror/data/raw/advisories/pypi.jsonl.zst"), "{changed:?}");
    assert!(!delta.join("mirror/data/raw/advisories/alpine.jsonl.zst").exists(), "an unchanged file travelled");
    assert!(changed.contains(&"mirror/data/blobs/sboms/alpine-3.19.cdx.json.gz"), "{changed:?}");
    // Changed shards and indexes travel as patches of the base's copies; nothing else does.
    let patched: Vec<&str> = diff["patches"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert!(patched.contains(&"mirror/data/raw/advisories/npm.jsonl.zst"), "{patched:?}");
    assert!(patched.contains(&"mirror/indexes/advisories.index.json"), "{patched:?}");
    assert!(patched.iter().all(|p| changed.contains(p)), "{patched:?}");
    assert!(!delta.join("mirror/data/raw/advisories/npm.jsonl.zst").exists(), "a patched shard travelled whole");
    assert!(delta.join("delta/patches/mirror/data/raw/advisories/npm.jsonl.zst.patch").is_file());
    assert!(delta.join("mirror/data/blobs/sboms/alpine-3.19.cdx.json.gz").is_file(), "a changed blob travels whole");
    // The Trivy DB changed, and is built again from the new records where the delta is applied.
    assert!(changed.contains(&"mirror/trivy/db.tar.gz"), "{changed:?}");
    assert_eq!(diff["derived"]["files"]["mirror/trivy/db.tar.gz"], "db.tar.gz");
    assert_eq!(diff["derived"]["request"]["profileId"], "trivy:db");
    assert!(!delta.join("mirror/trivy/db.tar.gz").exists(), "the Trivy DB travelled");
    let db_sha = diff["files"].as_array().unwrap().iter().find(|f| f["path"] == "mirror/trivy/db.tar.gz").unwrap()
        ["sha256"]
        .as_str()
        .unwrap();
    assert!(!delta.join(format!("oci/blobs/sha256/{db_sha}")).exists(), "the Trivy DB's OCI blob travelled");
    let added: Vec<&str> = diff["added"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(added.contains(&"mirror/data/blobs/sboms/alpine-3.20.cdx.json.gz"), "{added:?}");
    assert!(!delta.join("mirror/data/blobs/layers/alpine-3.19-base.tar.gz").exists(), "an unchanged blob travelled");
    assert!(!delta.join("tuf/metadata/1.root.json").exists(), "the root did not change");
    assert!(delta.join("tuf/metadata/2.targets.json").exists());
    let removed = diff["removed"].as_array().unwrap();
    assert_eq!(removed.len(), diff["tombstones"].as_array().unwrap().len());
    assert!(removed.iter().any(|p| p == "tuf/metadata/1.targets.json"));

    let new = tmp.path().join("new");
    let applied = exportcore_mirror::apply(&old, &delta, &new, &with_key(&k)).unwrap();
    assert_eq!(applied.export_id, diff["exportId"].as_str().unwrap());
    let full = tmp.path().join("full");
    run_profile(exportcore_mirror::MirrorFull::default(), &ev2, &full, Some(&k), new_created).await;
    let (tn, tf) = (tree(&new.join("mirror")), tree(&full.join("mirror")));
    assert_eq!(tn.keys().collect::<Vec<_>>(), tf.keys().collect::<Vec<_>>());
    for (p, b) in &tn {
        assert!(b == &tf[p], "mirror/{p}: applied delta and full build differ");
    }
    let r = verify(&new, &k, "2025-06-12T00:00:00Z");
    assert!(r.is_ok(), "{}", failures(&r));
    assert_eq!(r.signatures, exportcore::verify::Signatures::Valid);
    let log = std::fs::read_to_string(new.join("appliedExportIds.log")).unwrap();
    assert_eq!(log.trim(), diff["exportId"].as_str().unwrap());
    // NEW shares no file with the delta (it came from outside: whoever can still write it
    // cannot change the applied mirror after its check); it links the base's unchanged files.
    use std::os::unix::fs::MetadataExt;
    let inodes = |dir: &Path| -> std::collections::BTreeSet<(u64, u64)> {
        tree(dir).keys().map(|p| std::fs::metadata(dir.join(p)).map(|m| (m.dev(), m.ino())).unwrap()).collect()
    };
    assert!(inodes(&new).is_disjoint(&inodes(&delta)), "the applied mirror hard-links a file of the delta");
    assert!(!inodes(&new).is_disjoint(&inodes(&old)), "the base's unchanged files are linked");
}

/// A signed `mirror:delta` run of `ev` against `base` into `out` at `created`.
async fn try_delta(
    base: PathBuf,
    ev: &Path,
    out: &Path,
    k: &Keys,
    created: &str,
) -> exportcore::Result<exportcore::RunOutcome> {
    let req = RunRequest::builder("mirror:delta")
        .created_at(t(created))
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    RunBuilder::new(exportcore_mirror::MirrorDelta::new(base), DirEvidence::new(ev).unwrap(), FsSink::new(out).unwrap())
        .signer(Arc::clone(&k.signer))
        .run_id(RunId::parse("delta-run").unwrap())
        .execute(req)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bases_and_deltas_are_typed_errors_that_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let old = tmp.path().join("old");
    build_mirror(&old, &k, "mirror-run-4").await;
    let ev2 = changed_samples(tmp.path());
    let created = "2025-06-11T00:00:00Z";
    let fails = |e: exportcore::ExportError, code: &str, naming: &str| {
        assert_eq!(e.code(), code, "{e}");
        assert!(e.to_string().contains(naming), "{e} should name {naming}");
    };
    let delta_run = |base: PathBuf, out: PathBuf| {
        let (ev2, k) = (ev2.clone(), &k);
        async move { try_delta(base, &ev2, &out, k, created).await }
    };
    // Not a mirror.
    let raw = tmp.path().join("raw");
    run_profile(exportcore_json::JsonRaw, &samples(), &raw, None, CREATED).await;
    fails(delta_run(raw.clone(), tmp.path().join("d1")).await.unwrap_err(), "ERR_EXPORT_BASE_MISSING", "not a mirror");
    // Missing.
    fails(
        delta_run(tmp.path().join("nope"), tmp.path().join("d2")).await.unwrap_err(),
        "ERR_EXPORT_BASE_MISSING",
        "nope",
    );
    // A corrupted base file, and an OCI blob gone.
    let bad = copy(&old, &tmp.path().join("corrupt"));
    std::fs::write(bad.join("mirror/data/raw/advisories/npm.jsonl.zst"), b"garbage").unwrap();
    fails(delta_run(bad, tmp.path().join("d3")).await.unwrap_err(), "ERR_EXPORT_BASE_MISSING", "npm.jsonl.zst");
    let bad = copy(&old, &tmp.path().join("noblob"));
    let blob = std::fs::read_dir(bad.join("oci/blobs/sha256")).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_file(&blob).unwrap();
    let name = blob.file_name().unwrap().to_string_lossy().into_owned();
    fails(delta_run(bad, tmp.path().join("d4")).await.unwrap_err(), "ERR_EXPORT_BASE_MISSING", &name);
    // mirror:delta without a base.
    let e = RunBuilder::new(
        exportcore_mirror::MirrorDelta::default(),
        DirEvidence::new(&ev2).unwrap(),
        FsSink::new(tmp.path().join("d5")).unwrap(),
    )
    .execute(RunRequest::builder("mirror:delta").build().unwrap())
    .await
    .unwrap_err();
    fails(e, "ERR_EXPORT_REQUEST_INVALID", "base");

    // Apply: twice, out of order, to another base, with inconsistent tombstones.
    let delta = tmp.path().join("delta");
    delta_run(old.clone(), delta.clone()).await.unwrap();
    let new = tmp.path().join("new");
    exportcore_mirror::apply(&old, &delta, &new, &with_key(&k)).unwrap();
    let out = tmp.path().join("out1");
    fails(
        exportcore_mirror::apply(&new, &delta, &out, &no_keys()).unwrap_err(),
        "ERR_EXPORT_BASE_MISSING",
        "already applied",
    );
    assert!(!out.exists(), "a failed apply left {}", out.display());
    let delta2 = tmp.path().join("delta2");
    run_profile(exportcore_mirror::MirrorDelta::new(&new), &samples(), &delta2, Some(&k), "2025-06-12T00:00:00Z").await;
    // An unsigned delta of a signed base would need a key rotation.
    let e = RunBuilder::new(
        exportcore_mirror::MirrorDelta::new(&old),
        DirEvidence::new(&ev2).unwrap(),
        FsSink::new(tmp.path().join("d6")).unwrap(),
    )
    .execute(RunRequest::builder("mirror:delta").created_at(t(created)).build().unwrap())
    .await
    .unwrap_err();
    fails(e, "ERR_EXPORT_NOT_SUPPORTED", "key rotation");
    fails(
        exportcore_mirror::apply(&old, &delta2, &out, &no_keys()).unwrap_err(),
        "ERR_EXPORT_BASE_MISSING",
        "baseManifestHash",
    );
    assert!(!out.exists());
    let other = tmp.path().join("other");
    run_profile(exportcore_mirror::MirrorFull::default(), &ev2, &other, Some(&k), CREATED).await;
    fails(
        exportcore_mirror::apply(&other, &delta, &out, &no_keys()).unwrap_err(),
        "ERR_EXPORT_BASE_MISSING",
        "baseManifestHash",
    );
    // Tombstones that disagree with `removed`, in a delta whose manifest was made to match.
    let bent = remade_delta(&delta, &tmp.path().join("bent"), |diff, _| {
        diff["tombstones"].as_array_mut().unwrap().pop();
    });
    fails(
        exportcore_mirror::apply(&old, &bent, &out, &no_keys()).unwrap_err(),
        "ERR_EXPORT_VERIFY_FAILED",
        "tombstones",
    );
    assert!(!out.exists());
    // With the producer's key, an unsigned delta is refused before anything else.
    fails(exportcore_mirror::apply(&old, &bent, &out, &with_key(&k)).unwrap_err(), "ERR_EXPORT_VERIFY_FAILED", "dsse");
    assert!(!out.exists());
    // A tampered delta file.
    let torn = copy(&delta, &tmp.path().join("torn"));
    std::fs::write(torn.join("mirror/export.json"), b"{}").unwrap();
    fails(
        exportcore_mirror::apply(&old, &torn, &out, &no_keys()).unwrap_err(),
        "ERR_EXPORT_VERIFY_FAILED",
        "export.json",
    );
    assert!(!out.exists());
}

async fn encrypted_build(out: &Path, k: &Keys, recipient: &str, seed: &[u8]) -> exportcore::Run {
    let req = RunRequest::builder("mirror:full")
        .created_at(t(CREATED))
        .encryption(exportcore::Encryption::new(recipient))
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    let profile = exportcore_mirror::MirrorFull::default()
        .entropy(Arc::new(exportcore_mirror::encryption::SeededEntropy::new(seed)));
    RunBuilder::new(profile, DirEvidence::new(samples()).unwrap(), FsSink::new(out).unwrap())
        .signer(Arc::clone(&k.signer))
        .run_id(RunId::parse("enc-run").unwrap())
        .execute(req)
        .await
        .unwrap_or_else(|e| panic!("encrypted mirror failed: {}", e.report()))
        .run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_mirror_verifies_sealed_and_decrypts_to_the_plain_one() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let (id_a, id_b) = (age::x25519::Identity::generate(), age::x25519::Identity::generate());
    let id_c = id_a.clone();
    // Two recipients, given in either order.
    let recipients = format!("{},age:{}", id_b.to_public(), id_a.to_public());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let run = encrypted_build(&a, &k, &recipients, b"seed").await;
    let partly = run.warnings.iter().find(|w| w.code == "WARN_MIRROR_PARTLY_CLEAR").expect("the warning");
    assert!(partly.message.contains("Trivy DBs") && partly.message.contains("indexes"), "{}", partly.message);
    encrypted_build(&b, &k, &recipients, b"seed").await;
    let (ta, tb) = (tree(&a), tree(&b));
    // The injected entropy pins the data key and nonces: every sealed file repeats; only the
    // age-wrapped keys (age draws its own randomness) and what lists them differ.
    let pypi = "mirror/data/raw/advisories/pypi.jsonl.zst";
    assert_eq!(ta[pypi], tb[pypi], "sealed bytes differ with the same entropy");
    assert!(zstd::decode_all(&ta[pypi][..]).is_err(), "data left in the clear");
    let export: Value = serde_json::from_slice(&ta["mirror/export.json"]).unwrap();
    let enc = &export["encryption"];
    assert_eq!(enc["mode"], "age");
    assert_eq!(enc["aadFormat"], "{runId}:{relativePath}");
    assert_eq!(enc["runId"], "enc-run");
    let listed: Vec<&str> =
        enc["recipients"].as_array().unwrap().iter().map(|r| r["recipient"].as_str().unwrap()).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "recipients are recorded sorted");
    assert!(enc["files"].as_array().unwrap().iter().all(|f| f.as_str().unwrap().starts_with("data/")));
    // Blobs are sealed too (streamed, one GCM message each), and repeat with the same entropy.
    let blob = "data/blobs/layers/alpine-3.19-base.tar.gz";
    assert!(enc["files"].as_array().unwrap().iter().any(|f| f == blob), "{blob} not sealed");
    assert_eq!(ta[&format!("mirror/{blob}")], tb[&format!("mirror/{blob}")]);
    assert_ne!(
        ta[&format!("mirror/{blob}")],
        std::fs::read(samples().join("blobs/layers/alpine-3.19-base.tar.gz")).unwrap()
    );
    let prov: Value = serde_json::from_slice(&ta["mirror/provenance.json"]).unwrap();
    assert_eq!(prov["predicate"]["buildDefinition"]["internalParameters"]["encryption"], *enc);
    // The manifest and TUF cover the ciphertext: it verifies without any key to open it.
    let r = verify(&a, &k, "2025-06-02T00:00:00Z");
    assert!(r.is_ok(), "{}", failures(&r));

    // Either recipient restores the plain tree, equal to an unencrypted build's.
    let plain_build = tmp.path().join("plain-build");
    build_mirror(&plain_build, &k, "enc-run").await;
    for (i, id) in [id_a, id_b].into_iter().enumerate() {
        let identities: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
        let plain = tmp.path().join(format!("plain-{i}"));
        let n = exportcore_mirror::encryption::decrypt(&a, &identities, &plain, &with_key(&k)).unwrap();
        assert_eq!(n, enc["files"].as_array().unwrap().len());
        let got = tree(&plain);
        for (path, bytes) in tree(&plain_build.join("mirror")) {
            if path.starts_with("data/") {
                assert!(got[&path] == bytes, "{path}: decrypted bytes differ from the plain build");
            }
        }
    }
    // A foreign identity, a sealed file changed by one byte.
    let stranger: Vec<Box<dyn age::Identity>> = vec![Box::new(age::x25519::Identity::generate())];
    let e = exportcore_mirror::encryption::decrypt(&a, &stranger, &tmp.path().join("x"), &no_keys()).unwrap_err();
    assert!(e.to_string().contains("--identity"), "{e}");
    assert!(!tmp.path().join("x").exists());
    let bent = copy(&a, &tmp.path().join("bent"));
    let mut bytes = std::fs::read(bent.join(pypi)).unwrap();
    bytes[20] ^= 1;
    std::fs::write(bent.join(pypi), bytes).unwrap();
    assert!(!verify(&bent, &k, "2025-06-02T00:00:00Z").is_ok(), "a changed sealed file verified");

    // decrypt opens nothing of a mirror that does not verify: an extra plaintext file, a
    // sealed file swapped for plaintext, a link to a file outside, a FIFO (no hang).
    let identities = || -> Vec<Box<dyn age::Identity>> { vec![Box::new(id_c.clone())] };
    type Tamper = Box<dyn Fn(&Path)>;
    let tampers: Vec<(&str, Tamper)> = vec![
        (
            "extra",
            Box::new(|m: &Path| std::fs::write(m.join("mirror/data/raw/advisories/evil.jsonl.zst"), "x").unwrap()),
        ),
        ("swapped", Box::new(move |m: &Path| std::fs::write(m.join(pypi), "{\"id\":\"EVIL\"}\n").unwrap())),
        ("link", Box::new(|m: &Path| std::os::unix::fs::symlink("/etc/hostname", m.join("mirror/data/etc")).unwrap())),
        (
            "fifo",
            Box::new(|m: &Path| {
                let o = std::process::Command::new("mkfifo")
                    .arg(m.join("mirror/data/raw/advisories/zz.jsonl.zst"))
                    .status();
                assert!(o.unwrap().success());
            }),
        ),
    ];
    for (name, tamper) in tampers {
        let m = copy(&a, &tmp.path().join(format!("tampered-{name}")));
        tamper(&m);
        let plain = tmp.path().join(format!("plain-{name}"));
        let e = exportcore_mirror::encryption::decrypt(&m, &identities(), &plain, &no_keys()).unwrap_err();
        assert_eq!(e.code(), "ERR_EXPORT_VERIFY_FAILED", "{name}: {e}");
        assert!(e.to_string().contains("does not verify"), "{name}: {e}");
        assert!(!plain.exists(), "{name}");
    }
    // Whoever carries the mirror rewrites what is unsigned without a key: a sealed shard
    // replaced by plaintext and struck from export.json's encrypted files, the run manifest
    // made to match, the signatures dropped. It verifies without a key, but decrypt refuses a
    // file of mirror/data/ in the clear.
    let m = copy(&a, &tmp.path().join("tampered-unsealed"));
    std::fs::write(m.join(pypi), "{\"id\":\"EVIL\"}\n").unwrap();
    let export_path = m.join("mirror/export.json");
    let mut export: Value = serde_json::from_slice(&std::fs::read(&export_path).unwrap()).unwrap();
    let rel = pypi.strip_prefix("mirror/").unwrap();
    export["encryption"]["files"].as_array_mut().unwrap().retain(|f| f != rel);
    std::fs::write(&export_path, exportcore::canonical::to_vec(&export).unwrap()).unwrap();
    rewrite_unsigned_manifest(&m);
    assert!(verify_unsigned(&m).is_ok(), "{}", failures(&verify_unsigned(&m)));
    let plain = tmp.path().join("plain-unsealed");
    let e = exportcore_mirror::encryption::decrypt(&m, &identities(), &plain, &no_keys()).unwrap_err();
    assert!(e.to_string().contains("not among export.json's encrypted files"), "{e}");
    assert!(!plain.exists());
    // An output inside the mirror is refused.
    let e = exportcore_mirror::encryption::decrypt(&a, &identities(), &a.join("plain"), &no_keys()).unwrap_err();
    assert!(e.to_string().contains("lies inside"), "{e}");
    assert!(std::fs::read_dir(tmp.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".mirror-")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_recipients_and_unencrypting_profiles_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    for (bad, says) in [("age1notakey", "encryption.kmsKey"), ("kms:alias/export", "no key resolver")] {
        let out = tmp.path().join(format!("m{}", bad.len()));
        let req = RunRequest::builder("mirror:full").encryption(exportcore::Encryption::new(bad)).build().unwrap();
        let e = RunBuilder::new(
            exportcore_mirror::MirrorFull::default(),
            DirEvidence::new(samples()).unwrap(),
            FsSink::new(&out).unwrap(),
        )
        .signer(Arc::clone(&k.signer))
        .execute(req)
        .await
        .unwrap_err();
        assert_eq!(e.code(), "ERR_EXPORT_REQUEST_INVALID", "{e}");
        assert!(e.to_string().contains(says), "{e}");
        assert_eq!(std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0), 0, "partial output");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_role_keys_and_thresholds_through_the_library() {
    use exportcore_mirror::{Role, TufOptions};
    let tmp = tempfile::tempdir().unwrap();
    let run_key = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "run");
    let (t1, t2) = (
        keys(exportcore_crypto::Algorithm::EcdsaP256, tmp.path(), "t1"),
        keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "t2"),
    );
    let tuf = TufOptions::default()
        .role_keys(Role::Timestamp, vec![Arc::clone(&t1.signer), Arc::clone(&t2.signer)], 2)
        .expires_days(Role::Timestamp, 7);
    let out = tmp.path().join("m");
    let req = RunRequest::builder("mirror:full")
        .created_at(t(CREATED))
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    RunBuilder::new(
        exportcore_mirror::MirrorFull::default().tuf(tuf),
        DirEvidence::new(samples()).unwrap(),
        FsSink::new(&out).unwrap(),
    )
    .signer(Arc::clone(&run_key.signer))
    .execute(req)
    .await
    .unwrap();
    let root: Value = serde_json::from_slice(&std::fs::read(out.join("tuf/metadata/root.json")).unwrap()).unwrap();
    assert_eq!(root["signed"]["roles"]["timestamp"]["threshold"], 2);
    assert_eq!(root["signed"]["roles"]["timestamp"]["keyids"].as_array().unwrap().len(), 2);
    assert_eq!(root["signed"]["roles"]["root"]["keyids"].as_array().unwrap().len(), 1);
    let ts: Value = serde_json::from_slice(&std::fs::read(out.join("tuf/metadata/timestamp.json")).unwrap()).unwrap();
    assert_eq!(ts["signatures"].as_array().unwrap().len(), 2);
    assert_eq!(ts["signed"]["expires"], "2025-06-08T00:00:00Z");
    let r = verify(&out, &run_key, "2025-06-02T00:00:00Z");
    assert!(r.is_ok(), "{}", failures(&r));
    // One of the two timestamp signatures dropped: below the threshold. (The run manifest
    // fails too: the file changed.)
    let mut one = ts;
    one["signatures"].as_array_mut().unwrap().pop();
    std::fs::write(out.join("tuf/metadata/timestamp.json"), exportcore::canonical::to_vec(&one).unwrap()).unwrap();
    let r = verify(&out, &run_key, "2025-06-02T00:00:00Z");
    assert!(r.failures.iter().any(|f| f.problem.contains("timestamp was signed by 1/2 keys")), "{}", failures(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_of_another_tenant_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let old = tmp.path().join("old");
    build_mirror(&old, &k, "mirror-run-5").await;
    let req = RunRequest::builder("mirror:delta")
        .created_at(t("2025-06-11T00:00:00Z"))
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    let e = RunBuilder::new(
        exportcore_mirror::MirrorDelta::new(&old),
        DirEvidence::new(samples()).unwrap(),
        FsSink::new(tmp.path().join("d")).unwrap(),
    )
    .tenant(exportcore::TenantId::parse("other-tenant").unwrap())
    .signer(Arc::clone(&k.signer))
    .execute(req)
    .await
    .unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_BASE_MISSING", "{e}");
    assert!(e.to_string().contains("belongs to tenant"), "{e}");
}

/// A mirror's file, its OCI blob and its TUF target are one file under three names, read once
/// by `verify`; a name that is made a file of its own is read on its own, and only it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_names_are_read_once_and_a_name_made_its_own_file_is_caught() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let good = tmp.path().join("good");
    build_mirror(&good, &k, "mirror-run-links").await;
    let now = "2025-06-02T00:00:00Z";
    let rel = "data/blobs/layers/alpine-3.19-base.tar.gz";
    let bytes = std::fs::read(good.join("mirror").join(rel)).unwrap();
    let sha = exportcore::Sha256Digest::of(&bytes);
    let names = [
        format!("mirror/{rel}"),
        format!("oci/blobs/sha256/{sha}"),
        format!("tuf/targets/data/blobs/layers/{sha}.alpine-3.19-base.tar.gz"),
    ];
    let ino = |dir: &Path, n: &str| std::fs::metadata(dir.join(n)).unwrap().ino();
    assert!(names.iter().all(|n| ino(&good, n) == ino(&good, &names[0])), "the three names are not one file");
    let r = verify(&good, &k, now);
    assert!(r.is_ok(), "{}", failures(&r));
    for (i, name) in names.iter().enumerate() {
        let dir = tmp.path().join(format!("unlinked-{i}"));
        assert!(std::process::Command::new("cp").arg("-a").arg(&good).arg(&dir).status().unwrap().success());
        let others: Vec<&String> = names.iter().filter(|n| *n != name).collect();
        assert!(others.iter().all(|n| ino(&dir, n) == ino(&dir, &names[0])), "cp -a kept the links");
        // Same bytes plus one appended: a separate file now.
        std::fs::remove_file(dir.join(name)).unwrap();
        std::fs::write(dir.join(name), [&bytes[..], b"!"].concat()).unwrap();
        let r = verify(&dir, &k, now);
        assert!(r.failures.iter().any(|f| f.path.contains(name.as_str())), "{name}: {}", failures(&r));
        for other in others {
            assert!(!r.failures.iter().any(|f| f.path == *other), "{other} blamed: {}", failures(&r));
        }
    }
}

/// The mirror builds its Trivy DB from its own canonical shards (so a delta's applier can
/// build it again); it is the very DB `trivy:db` builds from the evidence itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_db_built_from_the_shards_is_the_db_built_from_the_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, t) = (tmp.path().join("m"), tmp.path().join("t"));
    let created = "2025-06-01T00:00:00Z";
    run_profile(exportcore_mirror::MirrorFull::default(), &samples(), &m, None, created).await;
    run_profile(exportcore_trivy::TrivyDb, &samples(), &t, None, created).await;
    assert!(
        std::fs::read(m.join("mirror/trivy/db.tar.gz")).unwrap() == std::fs::read(t.join("db.tar.gz")).unwrap(),
        "the mirror's Trivy DB differs from trivy:db's"
    );
    let report = |p: PathBuf| serde_json::from_slice::<Value>(&std::fs::read(p).unwrap()).unwrap();
    assert_eq!(report(m.join("mirror/trivy/db.report.json")), report(t.join("trivy-export.json")));
}

/// A copy of `delta` that `edit` changed (its diff, or any file), re-made by someone without
/// the key: the run manifest lists what is there now, the signatures are gone.
fn remade_delta(delta: &Path, to: &Path, edit: impl FnOnce(&mut Value, &Path)) -> PathBuf {
    let bent = copy(delta, to);
    for f in ["manifest.dsse.json", "provenance.dsse.json"] {
        let _ = std::fs::remove_file(bent.join(f));
    }
    let diff_path = bent.join("delta/manifest.diff.json");
    let mut diff: Value = serde_json::from_slice(&std::fs::read(&diff_path).unwrap()).unwrap();
    edit(&mut diff, &bent);
    std::fs::write(&diff_path, exportcore::canonical::to_vec(&diff).unwrap()).unwrap();
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(bent.join("manifest.json")).unwrap()).unwrap();
    let mut total = 0;
    for e in manifest["entries"].as_array_mut().unwrap() {
        let bytes = std::fs::read(bent.join(e["path"].as_str().unwrap())).unwrap();
        e["size"] = bytes.len().into();
        e["sha256"] = exportcore::Sha256Digest::of(&bytes).to_hex().into();
        total += bytes.len() as u64;
    }
    manifest["totals"]["bytes"] = total.into();
    std::fs::write(bent.join("manifest.json"), exportcore::canonical::to_vec(&manifest).unwrap()).unwrap();
    bent
}

/// Deltas re-made to climb out of the tree, to patch another base file, to carry a patch that
/// does not fit its base, or to derive with another profile: typed errors, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remade_deltas_that_escape_or_bend_patches_and_derivations_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let old = tmp.path().join("old");
    build_mirror(&old, &k, "mirror-run-remade").await;
    let ev2 = changed_samples(tmp.path());
    let delta = tmp.path().join("delta");
    run_profile(exportcore_mirror::MirrorDelta::new(&old), &ev2, &delta, Some(&k), "2025-06-11T00:00:00Z").await;
    let out = tmp.path().join("out");
    let zero = "0".repeat(64);
    let old_manifest = std::fs::read(old.join("manifest.json")).unwrap();
    type Edit = Box<dyn FnOnce(&mut Value, &Path)>;
    let cases: Vec<(&str, Edit, &str, &str)> = vec![
        (
            "escape",
            Box::new(|d: &mut Value, _: &Path| {
                d["files"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"path": "../escaped", "size": 1, "sha256": "0".repeat(64)}))
            }),
            "ERR_EXPORT_VERIFY_FAILED",
            "..",
        ),
        (
            "foreign-base",
            Box::new(move |d: &mut Value, _: &Path| d["patches"][0]["baseSha256"] = zero.into()),
            "ERR_EXPORT_BASE_MISSING",
            "patch was made against",
        ),
        (
            "bent-patch",
            Box::new(|d: &mut Value, dir: &Path| {
                let patch = dir.join(d["patches"][0]["patch"].as_str().unwrap());
                let ops = zstd::encode_all(&b"exportcore-mirror-patch/v1\nI 3\nabc"[..], 3).unwrap();
                std::fs::write(patch, ops).unwrap();
            }),
            "ERR_EXPORT_VERIFY_FAILED",
            "unaccounted",
        ),
        (
            "other-profile",
            Box::new(|d: &mut Value, _: &Path| d["derived"]["request"]["profileId"] = "json:raw".into()),
            "ERR_EXPORT_VERIFY_FAILED",
            "trivy:db",
        ),
        (
            // The base's own run manifest listed as a file of the new tree: linked from the
            // base, then written over, it would change the base.
            "reserved",
            Box::new(move |d: &mut Value, _: &Path| {
                d["files"].as_array_mut().unwrap().push(serde_json::json!(
                    {"path": "manifest.json", "size": old_manifest.len(), "sha256": exportcore::Sha256Digest::of(&old_manifest).to_hex()}
                ))
            }),
            "ERR_EXPORT_VERIFY_FAILED",
            "manifest.json",
        ),
        (
            "unlisted",
            Box::new(|d: &mut Value, _: &Path| {
                let first = d["files"][0].clone();
                let mut extra = first.clone();
                extra["path"] = format!("{}.copy", first["path"].as_str().unwrap()).into();
                d["files"].as_array_mut().unwrap().push(extra);
            }),
            "ERR_EXPORT_VERIFY_FAILED",
            "differs from the new tree's manifest",
        ),
        (
            "endless-operation",
            Box::new(|d: &mut Value, dir: &Path| {
                let patch = dir.join(d["patches"][0]["patch"].as_str().unwrap());
                let mut ops = b"exportcore-mirror-patch/v1\nC ".to_vec();
                ops.resize(ops.len() + (8 << 20), b'7');
                std::fs::write(patch, zstd::encode_all(&ops[..], 3).unwrap()).unwrap();
            }),
            "ERR_EXPORT_VERIFY_FAILED",
            "longer than 64 bytes",
        ),
    ];
    let base_before = tree(&old);
    for (name, edit, code, naming) in cases {
        let bent = remade_delta(&delta, &tmp.path().join(name), edit);
        let e = exportcore_mirror::apply(&old, &bent, &out, &no_keys()).unwrap_err();
        assert_eq!(e.code(), code, "{name}: {e}");
        assert!(e.to_string().contains(naming), "{name}: {e}");
        assert!(!out.exists(), "{name}: a failed apply left {}", out.display());
    }
    assert!(!tmp.path().join("escaped").exists());
    assert!(tree(&old) == base_before, "a refused delta changed the base");
    // An output inside the base or the delta is refused before anything is written.
    for inside in [old.join("mirror/new"), delta.join("new")] {
        let e = exportcore_mirror::apply(&old, &delta, &inside, &no_keys()).unwrap_err();
        assert!(e.code() == "ERR_EXPORT_REQUEST_INVALID" && e.to_string().contains("lies inside"), "{e}");
        assert!(!inside.exists());
    }
    // A base whose applied-delta log is not a list of export ids is refused, not copied on.
    let bad_log = copy(&old, &tmp.path().join("bad-log"));
    std::fs::write(bad_log.join("appliedExportIds.log"), "sha256:0\n\u{1b}[31mred\n").unwrap();
    let e = exportcore_mirror::apply(&bad_log, &delta, &out, &no_keys()).unwrap_err();
    assert!(e.to_string().contains("appliedExportIds.log") && e.to_string().contains("not an export id"), "{e}");
    assert!(!out.exists());
    assert!(tree(&old) == base_before);
    assert!(std::fs::read_dir(tmp.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".mirror-")));
}

/// The manifest (or index) `d` names in the layout under `oci`.
fn oci_doc(oci: &Path, d: &Value) -> Value {
    let hex = d["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
    serde_json::from_slice(&std::fs::read(oci.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_of_more_files_than_a_manifest_lists_is_an_index_of_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let parts = || exportcore_mirror::MirrorFull::default().oci_max_layers(4);
    let (a, b, one) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("one"));
    for out in [&a, &b] {
        run_profile(parts(), &samples(), out, Some(&k), CREATED).await;
    }
    assert_eq!(tree(&a), tree(&b), "two builds with parts differ");
    let r = verify(&a, &k, "2025-06-02T00:00:00Z");
    assert!(r.is_ok(), "{}", failures(&r));
    assert!(exportcore_mirror::check_layout(&a.join("oci")).is_empty());

    let index: Value = serde_json::from_slice(&std::fs::read(a.join("oci/index.json")).unwrap()).unwrap();
    let entry = |index: &Value, tag: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()
            .clone()
    };
    let mirror = entry(&index, "mirror");
    assert_eq!(mirror["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(mirror["artifactType"], exportcore_mirror::MIRROR_ARTIFACT_TYPE);
    let parts_index = oci_doc(&a.join("oci"), &mirror);
    assert_eq!(parts_index["artifactType"], exportcore_mirror::MIRROR_ARTIFACT_TYPE);
    assert_eq!(parts_index["annotations"]["org.opencontainers.image.created"], CREATED);
    let list = parts_index["manifests"].as_array().unwrap();
    let mut titles = Vec::new();
    for (i, part) in list.iter().enumerate() {
        assert_eq!(
            part["annotations"]["org.opencontainers.image.title"],
            format!("mirror part {} of {}", i + 1, list.len()).as_str()
        );
        let m = oci_doc(&a.join("oci"), part);
        let layers = m["layers"].as_array().unwrap();
        assert!((1..=4).contains(&layers.len()), "part {i} has {} layers", layers.len());
        titles.extend(layers.iter().map(|l| l["annotations"]["org.opencontainers.image.title"].clone()));
    }
    // The parts list every file of mirror/ once.
    let export: Value = serde_json::from_slice(&std::fs::read(a.join("mirror/export.json")).unwrap()).unwrap();
    let mut want: Vec<Value> = export["files"].as_array().unwrap().iter().map(|f| f["path"].clone()).collect();
    want.extend([Value::from("export.json"), Value::from("provenance.json")]);
    let key = |v: &Value| v.as_str().unwrap().to_owned();
    want.sort_by_key(key);
    titles.sort_by_key(key);
    assert_eq!(titles, want);
    assert!(list.len() >= 7, "{} parts for {} files", list.len(), want.len());
    // The Trivy images have one layer: plain manifests still.
    assert_eq!(entry(&index, "trivy-db")["mediaType"], "application/vnd.oci.image.manifest.v1+json");

    // By default the same evidence gives one manifest, and the same mirror/.
    run_profile(exportcore_mirror::MirrorFull::default(), &samples(), &one, Some(&k), CREATED).await;
    let index_one: Value = serde_json::from_slice(&std::fs::read(one.join("oci/index.json")).unwrap()).unwrap();
    let m = entry(&index_one, "mirror");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(oci_doc(&one.join("oci"), &m)["layers"].as_array().unwrap().len(), want.len());
    assert_eq!(tree(&a.join("mirror")), tree(&one.join("mirror")));

    // A delta built with parts, applied, is the full build with parts, oci/ included.
    let ev2 = changed_samples(tmp.path());
    let (delta, new, full) = (tmp.path().join("delta"), tmp.path().join("new"), tmp.path().join("full"));
    let new_created = "2025-06-11T00:00:00Z";
    run_profile(exportcore_mirror::MirrorDelta::new(&a).oci_max_layers(4), &ev2, &delta, Some(&k), new_created).await;
    exportcore_mirror::apply(&a, &delta, &new, &with_key(&k)).unwrap();
    run_profile(parts(), &ev2, &full, Some(&k), new_created).await;
    assert_eq!(tree(&new.join("oci")), tree(&full.join("oci")));
    let r = verify(&new, &k, "2025-06-12T00:00:00Z");
    assert!(r.is_ok(), "{}", failures(&r));

    // A part manifest with one byte changed fails verification, naming its blob.
    let part = list[1]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
    let path = a.join("oci/blobs/sha256").join(part);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let r = verify(&a, &k, "2025-06-02T00:00:00Z");
    assert!(!r.is_ok());
    assert!(r.failures.iter().any(|f| f.path.contains(part)), "{}", failures(&r));
    assert!(!exportcore_mirror::check_layout(&a.join("oci")).is_empty());
}

/// A name that is not UTF-8 shows as a listed name with U+FFFD once made lossy: verify must
/// report it, and check the listed file's own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_name_that_is_not_utf8_never_stands_in_for_a_listed_one() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let ev = copy(&samples(), &tmp.path().join("ev"));
    std::fs::write(ev.join("blobs/layers/x\u{FFFD}.bin"), b"GOOD CONTENT\n").unwrap();
    let out = tmp.path().join("out");
    run_profile(exportcore_mirror::MirrorFull::default(), &ev, &out, Some(&k), CREATED).await;
    assert!(verify(&out, &k, "2025-06-02T00:00:00Z").is_ok());
    let dir = out.join("mirror/data/blobs/layers");
    let listed = dir.join("x\u{FFFD}.bin");
    let raw = dir.join(std::ffi::OsStr::from_bytes(b"x\xff.bin"));
    std::fs::copy(&listed, &raw).unwrap();
    std::fs::remove_file(&listed).unwrap();
    std::fs::write(&listed, b"EVIL CONTENT\n").unwrap();
    let r = verify(&out, &k, "2025-06-02T00:00:00Z");
    assert!(!r.is_ok(), "verify passed a listed file holding other bytes");
    let f = failures(&r);
    assert!(f.contains("not UTF-8"), "{f}");
    assert!(
        r.failures.iter().any(|x| x.path == "mirror/data/blobs/layers/x\u{FFFD}.bin" && x.problem.contains("sha256")),
        "{f}"
    );
}

/// A delta that would change nothing, and a plain delta of an encrypted base, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_of_nothing_and_a_plain_delta_of_a_sealed_base_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let delta = |base: PathBuf, ev: PathBuf, out: PathBuf, created: &'static str| {
        let k = &k;
        async move { try_delta(base, &ev, &out, k, created).await.map(|_| ()) }
    };
    let old = tmp.path().join("old");
    run_profile(exportcore_mirror::MirrorFull::default(), &samples(), &old, Some(&k), CREATED).await;
    let e = delta(old.clone(), samples(), tmp.path().join("d0"), CREATED).await.unwrap_err();
    assert!(e.code() == "ERR_EXPORT_REQUEST_INVALID" && e.to_string().contains("nothing changed"), "{e}");
    // A later time renews the TUF metadata: that delta applies.
    let d1 = tmp.path().join("d1");
    delta(old.clone(), samples(), d1.clone(), "2025-06-20T00:00:00Z").await.unwrap();
    exportcore_mirror::apply(&old, &d1, &tmp.path().join("new"), &with_key(&k)).unwrap();

    let id = age::x25519::Identity::generate();
    let sealed = tmp.path().join("sealed");
    encrypted_build(&sealed, &k, &id.to_public().to_string(), b"seed").await;
    let ev2 = changed_samples(tmp.path());
    let e = delta(sealed, ev2, tmp.path().join("d2"), "2025-06-20T00:00:00Z").await.unwrap_err();
    assert!(e.code() == "ERR_EXPORT_REQUEST_INVALID" && e.to_string().contains("encrypted"), "{e}");
    assert!(!tmp.path().join("d2").join("mirror").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_of_many_files_delegates_its_targets_to_hashed_bins() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let tuf = || exportcore_mirror::TufOptions::default().max_targets_per_role(4);
    let old = tmp.path().join("old");
    run_profile(exportcore_mirror::MirrorFull::default().tuf(tuf()), &samples(), &old, Some(&k), CREATED).await;
    let metadata = tree(&old.join("tuf/metadata"));
    let bins: Vec<&String> = metadata.keys().filter(|f| f.starts_with("1.bins-")).collect();
    assert!(bins.len() >= 16, "{:?}", metadata.keys());
    let r = verify(&old, &k, "2025-06-02T00:00:00Z");
    assert!(r.is_ok(), "{}", failures(&r));
    // Every file of mirror/ is a target, reached through its bin.
    let listed = tree(&old.join("mirror")).len() as u64;
    assert!(r.verified >= listed, "{} < {listed}", r.verified);

    // A bin swapped for another bin's bytes (empty bins are alike: one that lists targets):
    // the run manifest and the TUF chain both see it.
    let full_bin = bins.iter().find(|b| metadata[**b] != metadata[bins[0]]).unwrap();
    let copy_of = copy(&old, &tmp.path().join("swapped"));
    std::fs::copy(copy_of.join("tuf/metadata").join(full_bin), copy_of.join("tuf/metadata").join(bins[0])).unwrap();
    let r = verify(&copy_of, &k, "2025-06-02T00:00:00Z");
    let swapped = format!("tuf/metadata/{}", bins[0]);
    assert!(r.failures.iter().filter(|f| f.path == swapped).count() >= 2, "{}", failures(&r));

    // A delta continues the bins at the next version, and the applied mirror verifies.
    let ev2 = changed_samples(tmp.path());
    let delta = tmp.path().join("delta");
    let new_created = "2025-06-11T00:00:00Z";
    run_profile(exportcore_mirror::MirrorDelta::new(&old).tuf(tuf()), &ev2, &delta, Some(&k), new_created).await;
    let new = tmp.path().join("new");
    exportcore_mirror::apply(&old, &delta, &new, &with_key(&k)).unwrap();
    let r = verify(&new, &k, "2025-06-12T00:00:00Z");
    assert!(r.is_ok(), "{}", failures(&r));
    let metadata = tree(&new.join("tuf/metadata"));
    assert!(metadata.keys().any(|f| f.starts_with("2.bins-")), "{:?}", metadata.keys());
    assert!(!metadata.keys().any(|f| f.starts_with("1.bins-")), "{:?}", metadata.keys());
    let full = tmp.path().join("full");
    run_profile(exportcore_mirror::MirrorFull::default().tuf(tuf()), &ev2, &full, Some(&k), new_created).await;
    assert_eq!(tree(&new.join("mirror")), tree(&full.join("mirror")));
}

/// Each ecosystem family is a shard with an open file and compressor until the end: evidence
/// that makes up an ecosystem per advisory stops at the bound with a typed error naming one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_of_too_many_ecosystems_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let ev = tmp.path().join("ev");
    std::fs::create_dir_all(ev.join("advisories")).unwrap();
    let mut lines = String::new();
    for i in 0..=exportcore_mirror::MAX_SHARDS {
        lines.push_str(&format!(
            r#"{{"schema_version":"1.6.0","id":"X-{i:04}","modified":"2025-01-01T00:00:00Z","affected":[{{"package":{{"ecosystem":"Made-Up-{i}","name":"p"}}}}]}}"#
        ));
        lines.push('\n');
    }
    std::fs::write(ev.join("advisories/many.ndjson"), lines).unwrap();
    let out = tmp.path().join("out");
    let err = RunBuilder::new(
        exportcore_mirror::MirrorFull::default(),
        DirEvidence::new(&ev).unwrap(),
        FsSink::new(&out).unwrap(),
    )
    .execute(RunRequest::builder("mirror:full").created_at(t("2025-06-01T00:00:00Z")).build().unwrap())
    .await
    .unwrap_err();
    assert_eq!(err.code(), "ERR_EXPORT_EVIDENCE_INVALID", "{}", err.report());
    assert!(err.report().contains("at most 256"), "{}", err.report());
    assert!(std::fs::read_dir(&out).map_or(true, |mut d| d.next().is_none()), "nothing published");
}

/// The base's TUF metadata are checked before a delta's key signs the versions after
/// them: a base whose timestamp was edited (its version pushed to the end of the range, so
/// the key holder would sign a version clients can never move past), with its unsigned run
/// manifest rewritten to match and its signatures dropped, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_with_edited_tuf_versions_is_refused_before_anything_is_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let old = tmp.path().join("old");
    build_mirror(&old, &k, "mirror-run-v").await;
    let ts_path = old.join("tuf/metadata/timestamp.json");
    let mut ts: Value = serde_json::from_slice(&std::fs::read(&ts_path).unwrap()).unwrap();
    ts["signed"]["version"] = serde_json::json!(u64::MAX - 1);
    std::fs::write(&ts_path, exportcore::canonical::to_vec(&ts).unwrap()).unwrap();
    rewrite_unsigned_manifest(&old);
    let out = tmp.path().join("delta");
    let e = try_delta(old, &changed_samples(tmp.path()), &out, &k, "2025-06-11T00:00:00Z").await.unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_BASE_MISSING", "{}", e.report());
    assert!(e.to_string().contains("TUF metadata do not verify") && e.to_string().contains("timestamp.json"), "{e}");
    assert!(!out.join("tuf").exists(), "a delta was written");
}

/// A root that would expire before the new timestamp is renewed by the delta (same keys,
/// version 2, signed by them), and so is a root whose other roles change keys: a client that
/// trusts version 1 follows to version 2. The root role's own keys cannot change (that needs
/// the old keys' signatures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tuf_root_is_renewed_before_it_expires_and_when_role_keys_change() {
    use exportcore_mirror::{Role, TufOptions};
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let old = tmp.path().join("old");
    build_mirror(&old, &k, "mirror-run-r").await;
    let root1: Value = serde_json::from_slice(&std::fs::read(old.join("tuf/metadata/root.json")).unwrap()).unwrap();
    assert_eq!(root1["signed"]["expires"], "2026-06-01T00:00:00Z");
    let ev2 = changed_samples(tmp.path());
    // A year and two weeks later: the base's root has expired.
    let late = "2026-06-15T00:00:00Z";
    let delta = tmp.path().join("delta");
    run_profile(exportcore_mirror::MirrorDelta::new(&old), &ev2, &delta, Some(&k), late).await;
    let root2: Value = serde_json::from_slice(&std::fs::read(delta.join("tuf/metadata/2.root.json")).unwrap()).unwrap();
    assert_eq!(root2["signed"]["version"], 2);
    assert_eq!(root2["signed"]["expires"], "2027-06-15T00:00:00Z");
    assert_eq!(root2["signed"]["keys"], root1["signed"]["keys"]);
    assert_eq!(
        std::fs::read(delta.join("tuf/metadata/root.json")).unwrap(),
        std::fs::read(delta.join("tuf/metadata/2.root.json")).unwrap()
    );
    let new = tmp.path().join("new");
    exportcore_mirror::apply(&old, &delta, &new, &with_key(&k)).unwrap();
    assert!(new.join("tuf/metadata/1.root.json").is_file(), "the chain starts at the first root");
    let r = verify(&new, &k, "2026-06-15T12:00:00Z");
    assert!(r.is_ok(), "{}", failures(&r));
    // root.json must be the newest root.
    let stale = tmp.path().join("stale");
    copy(&new, &stale);
    std::fs::copy(stale.join("tuf/metadata/1.root.json"), stale.join("tuf/metadata/root.json")).unwrap();
    let r = verify(&stale, &k, "2026-06-15T12:00:00Z");
    assert!(r.failures.iter().any(|f| f.problem.contains("differs from the newest")), "{}", failures(&r));

    // Within the root's life, new timestamp keys make a new root version too.
    let other = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "other");
    let tuf = TufOptions::default().role_keys(Role::Timestamp, vec![Arc::clone(&other.signer)], 1);
    let rotated = tmp.path().join("rotated");
    run_profile(exportcore_mirror::MirrorDelta::new(&old).tuf(tuf), &ev2, &rotated, Some(&k), "2025-06-11T00:00:00Z")
        .await;
    let root2: Value =
        serde_json::from_slice(&std::fs::read(rotated.join("tuf/metadata/2.root.json")).unwrap()).unwrap();
    assert_ne!(root2["signed"]["roles"]["timestamp"], root1["signed"]["roles"]["timestamp"]);
    assert_eq!(root2["signed"]["expires"], "2026-06-11T00:00:00Z");
    let new2 = tmp.path().join("new2");
    exportcore_mirror::apply(&old, &rotated, &new2, &with_key(&k)).unwrap();
    let r = verify(&new2, &k, "2025-06-11T12:00:00Z");
    assert!(r.is_ok(), "{}", failures(&r));
    // Another root key: refused, naming root key rotation.
    let tuf = TufOptions::default().role_keys(Role::Root, vec![Arc::clone(&other.signer)], 1);
    let refused = tmp.path().join("refused");
    let req = RunRequest::builder("mirror:delta")
        .created_at(t("2025-06-11T00:00:00Z"))
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    let e = RunBuilder::new(
        exportcore_mirror::MirrorDelta::new(&old).tuf(tuf),
        DirEvidence::new(&ev2).unwrap(),
        FsSink::new(&refused).unwrap(),
    )
    .signer(Arc::clone(&k.signer))
    .execute(req)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("root key rotation"), "{}", e.report());
}

/// Rewrites a run manifest to match the files now in `dir` (sizes, digests, total) and drops
/// its signatures: what an attacker without the key can do to a mirror.
fn rewrite_unsigned_manifest(dir: &Path) {
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut total = 0u64;
    for e in manifest["entries"].as_array_mut().unwrap() {
        let bytes = std::fs::read(dir.join(e["path"].as_str().unwrap())).unwrap();
        total += bytes.len() as u64;
        e["size"] = serde_json::json!(bytes.len());
        e["sha256"] = serde_json::json!(exportcore::Sha256Digest::of(&bytes).to_hex());
    }
    manifest["totals"]["bytes"] = serde_json::json!(total);
    std::fs::write(dir.join("manifest.json"), exportcore::canonical::to_vec(&manifest).unwrap()).unwrap();
    for f in ["manifest.dsse.json", "provenance.dsse.json"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// The run manifest of `dir` checked without keys (no TUF chain: an attacker cannot re-sign it).
fn verify_unsigned(dir: &Path) -> VerifyReport {
    exportcore::verify::verify_path_with(dir, &no_keys()).unwrap()
}
