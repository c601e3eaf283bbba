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
