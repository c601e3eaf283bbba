//! The real Trivy 0.76 (installed by `scripts/install-trivy.sh`, offline) scans with databases
//! we build from `samples/evidence`: exactly the expected findings on an Alpine rootfs with
//! Python and npm packages, on lockfiles (`trivy fs`), and on a jar identified only by its
//! SHA-1 through our Java DB. A DB missing a bucket, or with an advisory changed, makes the
//! comparison fail. The OCI layouts pass the OCI layout verifier and skopeo reads them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{interop_dir, interop_enabled, interop_python, samples, text, trivy};
use exportcore::{
    DirEvidence, EvidenceSource, FsSink, Profile, ProfileId, RunBuilder, RunRequest, RunStatus, Selectors, TenantId,
    Timestamp,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trivy")
}

/// Runs `profile` into `out`; panics with the error's report if the run fails.
async fn run(profile: Arc<dyn Profile>, evidence: Arc<dyn EvidenceSource>, out: &Path, req: RunRequest) {
    let outcome = RunBuilder::from_arcs(profile, evidence, Arc::new(FsSink::new(out).unwrap()))
        .tenant(TenantId::parse("t").unwrap())
        .execute(req)
        .await
        .unwrap_or_else(|e| panic!("run failed: {}", e.report()));
    assert_eq!(outcome.run.status, RunStatus::Succeeded);
}

async fn build(profile: Arc<dyn Profile>, evidence: Arc<dyn EvidenceSource>, out: &Path, id: &str) {
    let mut req = RunRequest::new(ProfileId::parse(id).unwrap());
    req.created_at = Some(Timestamp::parse("2025-06-01T00:00:00Z").unwrap());
    run(profile, evidence, out, req).await;
}

/// A Trivy cache dir holding our trivy.db (+ java-db) built from `evidence`.
async fn make_cache(tmp: &Path, name: &str, evidence: PathBuf) -> PathBuf {
    make_selected_cache(tmp, name, evidence, Selectors::default()).await
}

/// [`make_cache`] with the trivy.db built under `selectors`.
async fn make_selected_cache(tmp: &Path, name: &str, evidence: PathBuf, selectors: Selectors) -> PathBuf {
    let ev: Arc<dyn EvidenceSource> = Arc::new(DirEvidence::new(evidence).unwrap());
    let (db_out, java_out) = (tmp.join(format!("{name}-db")), tmp.join(format!("{name}-java")));
    let mut req = RunRequest::new(ProfileId::from_static("trivy:db"));
    req.created_at = Some(Timestamp::parse("2025-06-01T00:00:00Z").unwrap());
    req.selectors = selectors;
    run(Arc::new(exportcore_trivy::TrivyDb), Arc::clone(&ev), &db_out, req).await;
    build(Arc::new(exportcore_trivy::TrivyJavaDb), ev, &java_out, "trivy:java-db").await;
    let cache = tmp.join(format!("{name}-cache"));
    // Install the way an operator would: extract the tarballs Trivy downloads.
    for (tgz, dir) in
        [(db_out.join("db.tar.gz"), cache.join("db")), (java_out.join("javadb.tar.gz"), cache.join("java-db"))]
    {
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&dir).status().unwrap().success());
    }
    cache
}

fn findings(cache: &Path, mode: &str, target: &Path) -> Vec<Value> {
    let report = cache.join(format!("report-{mode}-{}.json", target.file_name().unwrap().to_string_lossy()));
    let o = Command::new(trivy())
        .arg(mode)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--skip-db-update", "--skip-java-db-update", "--offline-scan", "--scanners", "vuln", "--format", "json"])
        .arg("--output")
        .arg(&report)
        .arg(target)
        .output()
        .unwrap();
    assert!(o.status.success(), "trivy {mode} failed: {}", text(&o));
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let mut out: Vec<Value> = r["Results"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|res| res["Vulnerabilities"].as_array().cloned().unwrap_or_default())
        .map(|v| {
            let mut m = serde_json::Map::new();
            for k in ["VulnerabilityID", "PkgName", "InstalledVersion", "FixedVersion", "Severity"] {
                m.insert(k.into(), v.get(k).cloned().unwrap_or(Value::String(String::new())));
            }
            Value::Object(m)
        })
        .collect();
    out.sort_by_key(|v| (v["PkgName"].to_string(), v["VulnerabilityID"].to_string()));
    out
}

fn expected(name: &str) -> Vec<Value> {
    let mut v: Vec<Value> = serde_json::from_slice(&std::fs::read(fixtures().join(name)).unwrap()).unwrap();
    v.sort_by_key(|v| (v["PkgName"].to_string(), v["VulnerabilityID"].to_string()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trivy_scans_with_our_databases() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = make_cache(tmp.path(), "good", samples()).await;
    let rootfs = findings(&cache, "rootfs", &fixtures().join("rootfs"));
    assert_eq!(rootfs, expected("expected-rootfs.json"), "rootfs findings");
    assert!(rootfs.iter().any(|f| f["PkgName"] == "musl" || f["PkgName"] == "expat"), "an Alpine package finding");
    assert_eq!(
        findings(&cache, "fs", &fixtures().join("lockfiles")),
        expected("expected-fs.json"),
        "lockfile findings"
    );
    assert_eq!(
        findings(&cache, "rootfs", &fixtures().join("jar")),
        expected("expected-jar.json"),
        "jar by SHA-1 via the Java DB"
    );
}

/// Copies the samples without one directory, or with one advisory edited.
fn altered_samples(tmp: &Path, drop_dir: Option<&str>, edit: Option<(&str, &str, &str)>) -> PathBuf {
    let dst = tmp.join(format!("ev-{}", drop_dir.unwrap_or("edit").replace('/', "_")));
    assert!(Command::new("cp").arg("-r").arg(samples()).arg(&dst).status().unwrap().success());
    if let Some(d) = drop_dir {
        std::fs::remove_dir_all(dst.join(d)).unwrap();
    }
    if let Some((file, from, to)) = edit {
        let p = dst.join(file);
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "{file} lacks {from}");
        std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
    }
    dst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_database_fails_the_comparison() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Without the PyPI advisories the pip bucket is gone: findings no longer match.
    let ev = altered_samples(tmp.path(), Some("advisories/pypi"), None);
    let cache = make_cache(tmp.path(), "nopip", ev).await;
    let got = findings(&cache, "rootfs", &fixtures().join("rootfs"));
    assert_ne!(got, expected("expected-rootfs.json"));
    assert!(got.iter().all(|f| f["PkgName"] != "PyYAML"), "{got:?}");
    // An advisory with another fixed version changes what Trivy reports.
    let want = expected("expected-rootfs.json");
    let lodash = want.iter().find(|f| f["PkgName"] == "lodash").expect("a lodash finding in the fixture").clone();
    let fixed = lodash["FixedVersion"].as_str().unwrap().to_owned();
    let file = std::fs::read_dir(samples().join("advisories/npm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).unwrap().contains(&format!("\"fixed\": \"{fixed}\"")))
        .expect("the advisory behind the lodash finding");
    let rel = format!("advisories/npm/{}", file.file_name().unwrap().to_string_lossy());
    let ev =
        altered_samples(tmp.path(), None, Some((&rel, &format!("\"fixed\": \"{fixed}\""), "\"fixed\": \"4.17.99\"")));
    let cache = make_cache(tmp.path(), "edited", ev).await;
    let got = findings(&cache, "rootfs", &fixtures().join("rootfs"));
    assert_ne!(got, want);
    assert!(
        got.iter().any(|f| f["PkgName"] == "lodash" && f["FixedVersion"].as_str().unwrap().contains("4.17.99")),
        "{got:?}"
    );
}

/// Lowercase names of the packages the sample advisories of `ecosystem` (family) affect.
fn sample_packages(ecosystem: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![samples().join("advisories")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            for a in v["affected"].as_array().into_iter().flatten() {
                let eco = a["package"]["ecosystem"].as_str().unwrap_or_default();
                if eco.split(':').next() == Some(ecosystem) {
                    names.push(a["package"]["name"].as_str().unwrap().to_lowercase());
                }
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_db_selected_by_ecosystem_finds_only_that_ecosystem() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = make_selected_cache(tmp.path(), "pypi", samples(), Selectors::default().ecosystems(["PyPI"])).await;
    let got = findings(&cache, "rootfs", &fixtures().join("rootfs"));
    let (pypi, alpine) = (sample_packages("PyPI"), sample_packages("Alpine"));
    let name = |f: &Value| f["PkgName"].as_str().unwrap().to_lowercase();
    let want: Vec<Value> = expected("expected-rootfs.json").into_iter().filter(|f| pypi.contains(&name(f))).collect();
    assert!(!want.is_empty(), "the fixture has PyPI findings");
    assert_eq!(got, want, "exactly the PyPI findings of the full database");
    assert!(got.iter().all(|f| !alpine.contains(&name(f))), "no Alpine finding: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layouts_verify_and_skopeo_reads_them() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ev: Arc<dyn EvidenceSource> = Arc::new(DirEvidence::new(samples()).unwrap());
    for (profile, id, tag, layer) in [
        (
            Arc::new(exportcore_trivy::TrivyDb) as Arc<dyn Profile>,
            "trivy:db",
            "2",
            exportcore_trivy::DB_LAYER_MEDIA_TYPE,
        ),
        (Arc::new(exportcore_trivy::TrivyJavaDb), "trivy:java-db", "1", exportcore_trivy::JAVADB_LAYER_MEDIA_TYPE),
    ] {
        let out = tmp.path().join(id.replace(':', "-"));
        build(profile, Arc::clone(&ev), &out, id).await;
        let oci = out.join("oci");
        let o = Command::new(interop_python())
            .arg(interop_dir().join("verify_oci_layout.py"))
            .arg(&oci)
            .arg("--strict-orphans")
            .output()
            .unwrap();
        assert!(o.status.success(), "{id}: {}", text(&o));
        let o = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:{tag}", oci.display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "{id}: {}", text(&o));
        let manifest: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], layer);
        assert_eq!(manifest["config"]["mediaType"], exportcore_trivy::CONFIG_MEDIA_TYPE);
        // The layer is byte-for-byte the tarball next to it.
        let tgz = if tag == "2" { "db.tar.gz" } else { "javadb.tar.gz" };
        let digest = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(std::fs::read(out.join(tgz)).unwrap())), digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vex_not_affected_clears_a_finding() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // With targets [advisory, vex] the samples' OpenVEX statements apply: lodash 4.17.20 is
    // not_affected by CVE-2021-23337 there, so Trivy must no longer report it; the other
    // lodash finding (no VEX statement) stays.
    let out = tmp.path().join("db");
    let mut req = RunRequest::new(ProfileId::from_static("trivy:db"));
    req.targets = vec![exportcore::Target::Advisory, exportcore::Target::Vex];
    req.created_at = Some(Timestamp::parse("2025-06-01T00:00:00Z").unwrap());
    let ev: Arc<dyn EvidenceSource> = Arc::new(DirEvidence::new(samples()).unwrap());
    run(Arc::new(exportcore_trivy::TrivyDb), ev, &out, req).await;
    let report: Value = serde_json::from_slice(&std::fs::read(out.join("trivy-export.json")).unwrap()).unwrap();
    assert!(report["skipped"]["vexUnaffectedVersions"].as_u64().unwrap() >= 1, "{report}");
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(cache.join("db")).unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(out.join("db.tar.gz"))
        .arg("-C")
        .arg(cache.join("db"))
        .status()
        .unwrap()
        .success());
    let got = findings(&cache, "rootfs", &fixtures().join("rootfs"));
    let want: Vec<Value> = expected("expected-rootfs.json")
        .into_iter()
        .filter(|f| !(f["PkgName"] == "lodash" && f["VulnerabilityID"] == "CVE-2021-23337"))
        .collect();
    assert_eq!(got, want);
}
