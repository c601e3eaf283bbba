//! Signed runs: every algorithm signs the run manifest and the provenance; verification with
//! the right key passes and fails on every kind of tampering; signing is deterministic where
//! the algorithm is; staleness is refused with its own code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use exportcore::verify::{verify_path_with, StalenessPolicy, VerifyOptions};
use exportcore::{ExportError, Timestamp};
use exportcore_crypto::Algorithm;
use std::time::Duration;

fn opts(keys: &Keys) -> VerifyOptions {
    VerifyOptions { verifiers: vec![keys.verifier.clone()], ..Default::default() }
}

fn problems(dir: &std::path::Path, o: &VerifyOptions) -> Vec<String> {
    verify_path_with(dir, o).unwrap().failures.iter().map(|f| format!("{} {}: {}", f.code, f.path, f.problem)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_signs_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, alg) in [Algorithm::Ed25519, Algorithm::EcdsaP256, Algorithm::Sm2].into_iter().enumerate() {
        let k = keys(alg, tmp.path(), &format!("k{i}"));
        let out = tmp.path().join(format!("out{i}"));
        let run = signed_run(&out, k.signer.clone(), "json:policy").await;
        let names: Vec<&str> = run.outputs.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(names, ["json-policy.tar.zst", "provenance.dsse.json", "manifest.dsse.json", "manifest.json"]);
        assert!(problems(&out, &opts(&k)).is_empty(), "{alg:?}: {:?}", problems(&out, &opts(&k)));
        // Digest-only verification still passes and accepts the sidecars.
        assert!(problems(&out, &VerifyOptions::default()).is_empty());
        // Another key of the same algorithm is refused.
        let other = keys(alg, tmp.path(), &format!("other{i}"));
        let p = problems(&out, &opts(&other));
        assert!(p.iter().any(|p| p.contains("manifest.dsse.json") && p.contains("no valid signature")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("provenance.dsse.json")), "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(Algorithm::Ed25519, tmp.path(), "k");
    let fresh = |name: &str| {
        let out = tmp.path().join(name);
        (out.clone(), signed_run_blocking(&out, &k))
    };
    // Edited manifest.json that is still canonical: the signature catches it.
    let (out, _) = fresh("edit");
    let m = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    std::fs::write(out.join("manifest.json"), m.replace("\"json:policy\"", "\"json:raw\"")).unwrap();
    let p = problems(&out, &opts(&k));
    assert!(p.iter().any(|p| p.contains("signed payload differs from manifest.json")), "{p:?}");
    // A signed manifest with its payload swapped.
    let (out, _) = fresh("payload");
    let env = std::fs::read_to_string(out.join("manifest.dsse.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&env).unwrap();
    v["payload"] = serde_json::Value::String("e30=".into());
    std::fs::write(out.join("manifest.dsse.json"), v.to_string()).unwrap();
    assert!(!problems(&out, &opts(&k)).is_empty());
    // Truncated signature.
    let (out, _) = fresh("trunc");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.dsse.json")).unwrap()).unwrap();
    let sig = v["signatures"][0]["sig"].as_str().unwrap().to_owned();
    v["signatures"][0]["sig"] = serde_json::Value::String(sig[..sig.len() - 8].to_owned());
    std::fs::write(out.join("manifest.dsse.json"), v.to_string()).unwrap();
    assert!(problems(&out, &opts(&k)).iter().any(|p| p.contains("manifest.dsse.json")));
    // No signatures at all.
    let (out, _) = fresh("nosig");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.dsse.json")).unwrap()).unwrap();
    v["signatures"] = serde_json::json!([]);
    std::fs::write(out.join("manifest.dsse.json"), v.to_string()).unwrap();
    assert!(problems(&out, &opts(&k)).iter().any(|p| p.contains("no signatures")));
    // Missing provenance with a key required.
    let (out, _) = fresh("noprov");
    std::fs::remove_file(out.join("provenance.dsse.json")).unwrap();
    assert!(problems(&out, &opts(&k)).iter().any(|p| p.contains("provenance.dsse.json: missing")));
    // Unsigned output verified with a key.
    let unsigned = tmp.path().join("unsigned");
    let run = exportcore::RunBuilder::from_arcs(
        exportcore_json::profiles().get("json:raw").unwrap(),
        std::sync::Arc::new(exportcore::DirEvidence::new(samples()).unwrap()),
        std::sync::Arc::new(exportcore::FsSink::new(&unsigned).unwrap()),
    )
    .tenant(exportcore::TenantId::parse("t").unwrap())
    .execute(exportcore::RunRequest::new(exportcore::ProfileId::from_static("json:raw")))
    .await
    .unwrap_or_else(|e| panic!("unsigned run failed: {}", e.report()))
    .run;
    assert_eq!(run.status, exportcore::RunStatus::Succeeded);
    assert!(problems(&unsigned, &opts(&k)).iter().any(|p| p.contains("manifest.dsse.json: missing")));
    // A FIFO or a directory where an envelope was: a failed check (exit 1), no hang, no error.
    for (i, make) in ["mkfifo", "mkdir"].iter().enumerate() {
        let out = unsigned.parent().unwrap().join(format!("odd-{i}"));
        assert!(std::process::Command::new("cp").arg("-r").arg(&unsigned).arg(&out).status().unwrap().success());
        assert!(std::process::Command::new(make).arg(out.join("manifest.dsse.json")).status().unwrap().success());
        let p = problems(&out, &opts(&k));
        assert!(
            p.iter().any(|p| p.contains("manifest.dsse.json") && p.contains("ERR_EXPORT_VERIFY_FAILED")),
            "{make}: {p:?}"
        );
    }
}

fn signed_run_blocking(out: &std::path::Path, k: &Keys) -> exportcore::Run {
    let out = out.to_path_buf();
    let signer = k.signer.clone();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(signed_run(&out, signer, "json:policy"))
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_is_deterministic_where_the_algorithm_is() {
    let tmp = tempfile::tempdir().unwrap();
    for alg in [Algorithm::Ed25519, Algorithm::EcdsaP256, Algorithm::Sm2] {
        let k = keys(alg, tmp.path(), "d");
        let (a, b) = (tmp.path().join(format!("{alg:?}-a")), tmp.path().join(format!("{alg:?}-b")));
        signed_run(&a, k.signer.clone(), "json:raw").await;
        signed_run(&b, k.signer.clone(), "json:raw").await;
        let read = |d: &std::path::Path, f: &str| std::fs::read(d.join(f)).unwrap();
        // The signed payload (manifest) is always identical.
        assert_eq!(read(&a, "manifest.json"), read(&b, "manifest.json"));
        let payload = |d: &std::path::Path| {
            let v: serde_json::Value = serde_json::from_slice(&read(d, "manifest.dsse.json")).unwrap();
            v["payload"].as_str().unwrap().to_owned()
        };
        assert_eq!(payload(&a), payload(&b));
        // Ed25519 and RFC 6979 ECDSA signatures are identical too.
        if alg != Algorithm::Sm2 {
            assert_eq!(read(&a, "manifest.dsse.json"), read(&b, "manifest.dsse.json"), "{alg:?}");
        }
        std::fs::remove_file(tmp.path().join("d.pub")).unwrap();
        std::fs::remove_file(tmp.path().join("d.key")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(Algorithm::Ed25519, tmp.path(), "k");
    let out = tmp.path().join("out");
    signed_run(&out, k.signer.clone(), "json:raw").await; // createdAt 2025-01-01T00:00:00Z
    let policy = |now: &str, age_days: u64, drift_s: u64| VerifyOptions {
        verifiers: vec![k.verifier.clone()],
        staleness: Some(StalenessPolicy {
            max_age: Duration::from_secs(age_days * 86_400),
            max_drift: Duration::from_secs(drift_s),
            now: Timestamp::parse(now).unwrap(),
        }),
        ..Default::default()
    };
    assert!(problems(&out, &policy("2025-01-20T00:00:00Z", 30, 60)).is_empty());
    let stale = verify_path_with(&out, &policy("2025-03-01T00:00:00Z", 30, 60)).unwrap();
    assert_eq!(stale.failures.len(), 1);
    assert_eq!(stale.failures[0].code, "ERR_EXPORT_STALE");
    assert!(matches!(stale.into_result(), Err(ExportError::Stale { .. })));
    // Dated in the future beyond the drift: refused; within it: fine.
    let future = verify_path_with(&out, &policy("2024-12-31T23:00:00Z", 30, 60)).unwrap();
    assert_eq!(future.failures[0].code, "ERR_EXPORT_STALE");
    assert!(problems(&out, &policy("2024-12-31T23:59:30Z", 30, 60)).is_empty());
}

#[tokio::test]
async fn signing_without_a_signer_is_a_request_error() {
    let sink = exportcore::InMemorySink::new();
    let err = exportcore::RunBuilder::from_arcs(
        exportcore_json::profiles().get("json:raw").unwrap(),
        std::sync::Arc::new(exportcore::DirEvidence::new(samples()).unwrap()),
        std::sync::Arc::new(sink.clone()),
    )
    .tenant(exportcore::TenantId::parse("t").unwrap())
    .execute(signed_request("json:raw"))
    .await
    .expect_err("signing without a signer must fail");
    assert_eq!(err.code(), "ERR_EXPORT_REQUEST_INVALID");
    assert!(
        matches!(&err, ExportError::RequestInvalid { field, .. } if field == "distribution.signing.keyRef"),
        "{err:?}"
    );
    assert!(err.to_string().contains("distribution.signing.keyRef"), "{err}");
    assert!(sink.snapshot().is_empty(), "a failed run publishes nothing");
}
