//! Building both databases from the samples: deterministic bytes, the right files, a BoltDB
//! file an independent reader (bbolt-rs, read-only) walks completely, a Java DB with Trivy's
//! schema, the shared conformance suite, and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::{
    conformance, DirEvidence, EvidenceSource, ExportError, FsSink, MemoryEvidence, Profile, ProfileId, RunBuilder,
    RunRequest, RunStatus, TenantId, Timestamp,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn samples() -> Arc<dyn EvidenceSource> {
    Arc::new(DirEvidence::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence")).unwrap())
}

fn request(profile: &'static str) -> RunRequest {
    RunRequest::new(ProfileId::from_static(profile))
}

fn pinned(profile: &'static str) -> RunRequest {
    let mut r = request(profile);
    r.created_at = Some(Timestamp::parse("2025-06-01T00:00:00Z").unwrap());
    r
}

async fn run(
    profile: Arc<dyn Profile>,
    ev: Arc<dyn EvidenceSource>,
    out: &Path,
    req: RunRequest,
) -> exportcore::Result<exportcore::Run> {
    RunBuilder::from_arcs(profile, ev, Arc::new(FsSink::new(out).unwrap()))
        .tenant(TenantId::parse("t").unwrap())
        .execute(req)
        .await
        .map(|o| o.run)
}

/// A run that must succeed.
async fn build(profile: Arc<dyn Profile>, ev: Arc<dyn EvidenceSource>, out: &Path, req: RunRequest) -> exportcore::Run {
    run(profile, ev, out, req).await.unwrap_or_else(|e| panic!("run failed: {}", e.report()))
}

/// A run that must fail: its error.
async fn build_err(profile: Arc<dyn Profile>, ev: Arc<dyn EvidenceSource>, out: &Path, req: RunRequest) -> ExportError {
    run(profile, ev, out, req).await.expect_err("the run must fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trivy_db_from_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for out in [&a, &b] {
        let run = build(Arc::new(exportcore_trivy::TrivyDb), samples(), out, pinned("trivy:db")).await;
        assert_eq!(run.status, RunStatus::Succeeded);
    }
    for f in [
        "db/trivy.db",
        "db/metadata.json",
        "db.tar.gz",
        "oci/index.json",
        "oci/oci-layout",
        "trivy-export.json",
        "manifest.json",
    ] {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f} differs between two builds");
    }
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("db/metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["Version"], 2);
    assert_eq!(meta["UpdatedAt"], "2025-06-01T00:00:00Z");
    assert_eq!(meta["NextUpdate"], "2025-06-02T00:00:00Z");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("trivy-export.json")).unwrap()).unwrap();
    assert_eq!(report["skipped"]["withdrawn"], 1, "{report}");
    let buckets: Vec<&str> = report["buckets"].as_array().unwrap().iter().map(|b| b.as_str().unwrap()).collect();
    for want in [
        "alpine 3.19",
        "debian 12",
        "pip::OSV PyPI",
        "npm::OSV npm",
        "maven::OSV Maven",
        "go::OSV Go",
        "cargo::OSV crates.io",
        "rubygems::OSV RubyGems",
        "nuget::OSV NuGet",
        "composer::OSV Packagist",
    ] {
        assert!(buckets.contains(&want), "missing bucket {want}: {buckets:?}");
    }
    assert!(exportcore::verify::verify_path(&a).unwrap().is_ok());
    // An independent reader (bbolt-rs) finds a consistent file holding what the report counts.
    let (nested, vulns, sources) = walk_with_bbolt_rs(&a.join("db/trivy.db"));
    assert_eq!(nested, report["advisoryEntries"].as_u64().unwrap(), "{report}");
    assert_eq!(vulns, report["vulnerabilities"].as_u64().unwrap(), "{report}");
    assert_eq!(sources, buckets.len() as u64, "one data-source entry per advisory bucket");
    // The tarball holds exactly trivy.db and metadata.json at its root.
    let listing = std::process::Command::new("tar").arg("-tzf").arg(a.join("db.tar.gz")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listing.stdout), "metadata.json\ntrivy.db\n");
}

/// Runs bbolt-rs' consistency check on `db` and walks it: (entries in nested buckets,
/// `vulnerability` entries, `data-source` entries).
fn walk_with_bbolt_rs(db: &Path) -> (u64, u64, u64) {
    use bbolt_rs::{BoltOptions, BucketApi, DbApi, TxApi, TxCheck};
    let bolt = BoltOptions::builder().preload_freelist().build().open_ro(db).unwrap();
    let mut counts = (0, 0, 0);
    bolt.view(|tx| {
        let errors = tx.check();
        assert!(errors.is_empty(), "bbolt-rs check: {errors:?}");
        for (name, _) in tx.iter_buckets() {
            let b = tx.bucket(name).unwrap();
            match name {
                b"vulnerability" => counts.1 += b.iter_entries().count() as u64,
                b"data-source" => counts.2 += b.iter_entries().count() as u64,
                _ => {
                    assert_eq!(b.iter_entries().count(), 0, "advisory buckets hold only package buckets");
                    for (pkg, _) in b.iter_buckets() {
                        counts.0 += b.bucket(pkg).unwrap().iter_entries().count() as u64;
                    }
                }
            }
        }
        Ok(())
    })
    .unwrap();
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_conform() {
    let mut java = MemoryEvidence::new();
    java.insert("java/index.ndjson", "{\"groupId\":\"g\",\"artifactId\":\"a\",\"version\":\"1\",\"sha1\":\"0123456789abcdef0123456789abcdef01234567\"}\n").unwrap();
    conformance::profile_suite(Arc::new(exportcore_trivy::TrivyDb), samples(), pinned("trivy:db")).await;
    conformance::profile_suite(Arc::new(exportcore_trivy::TrivyJavaDb), samples(), pinned("trivy:java-db")).await;
    conformance::profile_suite(Arc::new(exportcore_trivy::TrivyJavaDb), Arc::new(java), request("trivy:java-db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_db_schema_and_determinism() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for out in [&a, &b] {
        let run = build(Arc::new(exportcore_trivy::TrivyJavaDb), samples(), out, pinned("trivy:java-db")).await;
        assert_eq!(run.status, RunStatus::Succeeded);
    }
    assert_eq!(
        std::fs::read(a.join("java-db/trivy-java.db")).unwrap(),
        std::fs::read(b.join("java-db/trivy-java.db")).unwrap()
    );
    assert_eq!(std::fs::read(a.join("javadb.tar.gz")).unwrap(), std::fs::read(b.join("javadb.tar.gz")).unwrap());
    let conn = rusqlite::Connection::open(a.join("java-db/trivy-java.db")).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM indices", [], |r| r.get(0)).unwrap();
    assert!(n >= 30, "{n}");
    let len: i64 = conn.query_row("SELECT length(sha1) FROM indices LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(len, 20, "sha1 is stored as 20 raw bytes");
    let idx: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(idx, ["artifacts_idx", "indices_artifact_idx", "indices_sha1_idx"]);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("java-db/metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["Version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    // Unknown ecosystems and GIT ranges are counted skips; nothing usable is an error.
    let mut ev = MemoryEvidence::new();
    ev.insert("advisories/x.json", r#"{"id":"X-1","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"Hex","name":"plug"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]}]}"#).unwrap();
    let err = build_err(
        Arc::new(exportcore_trivy::TrivyDb),
        Arc::new(ev.clone()),
        &tmp.path().join("x"),
        request("trivy:db"),
    )
    .await;
    assert!(matches!(err, ExportError::EvidenceEmpty { .. }), "{err:?}");
    ev.insert("advisories/y.json", r#"{"id":"Y-1","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"a"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.0.0"}]}]}]}"#).unwrap();
    let out = tmp.path().join("y");
    let run = build(Arc::new(exportcore_trivy::TrivyDb), Arc::new(ev), &out, request("trivy:db")).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("trivy-export.json")).unwrap()).unwrap();
    assert_eq!(report["skipped"]["unknownEcosystem"], 1);
    // The skip is a counted warning in the run record; a strict request makes it an error.
    assert_eq!(run.warnings.len(), 1, "{:?}", run.warnings);
    assert_eq!(run.warnings[0].code, "WARN_TRIVY_UNKNOWN_ECOSYSTEM");
    let mut strict = request("trivy:db");
    strict.strict = true;
    let mut ev = MemoryEvidence::new();
    ev.insert("advisories/x.json", r#"{"id":"X-1","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"Hex","name":"plug"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]}]}"#).unwrap();
    ev.insert("advisories/y.json", r#"{"id":"Y-1","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"a"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.0.0"}]}]}]}"#).unwrap();
    let err = build_err(Arc::new(exportcore_trivy::TrivyDb), Arc::new(ev), &tmp.path().join("strict"), strict).await;
    assert!(matches!(err, ExportError::EvidenceInvalid { .. }), "{err:?}");
    let msg = &err.report();
    assert!(msg.contains("advisories/x.json") && msg.contains("strict"), "{msg}");
    // Invalid ranges: a typed error naming the file.
    let mut ev = MemoryEvidence::new();
    ev.insert("advisories/bad.json", r#"{"id":"B-1","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"a"},"ranges":[{"type":"SEMVER","events":[]}]}]}"#).unwrap();
    let err =
        build_err(Arc::new(exportcore_trivy::TrivyDb), Arc::new(ev), &tmp.path().join("b"), request("trivy:db")).await;
    assert!(matches!(err, ExportError::EvidenceInvalid { .. }), "{err:?}");
    assert!(err.report().contains("advisories/bad.json"), "{}", err.report());
    // A NUL in a package name cannot become a bucket key; invalid UTF-8, even in a field
    // trivy:db does not use, is malformed JSON here as in every profile.
    let good = r#"{"id":"Y-1","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"a"},"versions":["1"]}]}"#;
    let nul = good.replace(r#""name":"a""#, r#""name":"a\u0000b""#);
    let mut bad_utf8 = good.replace(r#""id":"Y-1""#, r#""credits":"XX","id":"Y-1""#).into_bytes();
    let at = bad_utf8.windows(2).position(|w| w == b"XX").unwrap();
    bad_utf8[at] = 0xff;
    for (name, body, says) in [("nul.ndjson", nul.into_bytes(), "NUL"), ("utf8.ndjson", bad_utf8, "malformed JSON")] {
        let mut ev = MemoryEvidence::new();
        ev.insert(&format!("advisories/{name}"), [good.as_bytes(), b"\n", &body, b"\n"].concat()).unwrap();
        let err =
            build_err(Arc::new(exportcore_trivy::TrivyDb), Arc::new(ev), &tmp.path().join(name), request("trivy:db"))
                .await;
        assert_eq!(err.code(), "ERR_EXPORT_EVIDENCE_INVALID", "{name}");
        let msg = &err.report();
        assert!(msg.contains(&format!("advisories/{name}:2")) && msg.contains(says), "{msg}");
    }
    // A Maven entry with a bad sha1.
    let mut ev = MemoryEvidence::new();
    ev.insert("java/i.ndjson", "{\"groupId\":\"g\",\"artifactId\":\"a\",\"version\":\"1\",\"sha1\":\"xyz\"}\n")
        .unwrap();
    let err = build_err(
        Arc::new(exportcore_trivy::TrivyJavaDb),
        Arc::new(ev),
        &tmp.path().join("j"),
        request("trivy:java-db"),
    )
    .await;
    assert_eq!(err.code(), "ERR_EXPORT_EVIDENCE_INVALID");
    assert!(err.report().contains("java/i.ndjson:1"), "{}", err.report());
    // Targets other than advisories are refused up front.
    let mut r = request("trivy:db");
    r.targets = vec![exportcore::Target::Policy];
    assert_eq!(exportcore_trivy::TrivyDb.validate(&r).unwrap_err().code(), "ERR_EXPORT_REQUEST_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_merge_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let adv = |modified: &str, fixed: &str| {
        format!(
            r#"{{"id":"GHSA-d","aliases":["CVE-2024-9"],"modified":"{modified}","summary":"s {fixed}","affected":[{{"package":{{"ecosystem":"npm","name":"dup"}},"ranges":[{{"type":"SEMVER","events":[{{"introduced":"0"}},{{"fixed":"{fixed}"}}]}}]}}]}}"#
        )
    };
    let mut one = MemoryEvidence::new();
    one.insert("advisories/1.json", adv("2024-01-01T00:00:00Z", "1.0.0")).unwrap();
    one.insert("advisories/2.json", adv("2024-06-01T00:00:00Z", "2.0.0")).unwrap();
    let mut two = MemoryEvidence::new();
    two.insert("advisories/1.json", adv("2024-06-01T00:00:00Z", "2.0.0")).unwrap();
    two.insert("advisories/2.json", adv("2024-01-01T00:00:00Z", "1.0.0")).unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert_eq!(
        build(Arc::new(exportcore_trivy::TrivyDb), Arc::new(one), &a, pinned("trivy:db")).await.status,
        RunStatus::Succeeded
    );
    assert_eq!(
        build(Arc::new(exportcore_trivy::TrivyDb), Arc::new(two), &b, pinned("trivy:db")).await.status,
        RunStatus::Succeeded
    );
    assert_eq!(
        std::fs::read(a.join("db/trivy.db")).unwrap(),
        std::fs::read(b.join("db/trivy.db")).unwrap(),
        "input order must not matter"
    );
}
