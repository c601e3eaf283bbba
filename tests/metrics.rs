//! The engine reports its metrics through the `metrics` facade under the documented names
//! (`docs/operations.md`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::engine::{Exporter, Submission};
use exportcore::{InMemorySink, MemoryEvidence, ProfileId, RunRequest, TenantId};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_emits_documented_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder of this test binary");
    let mut evidence = MemoryEvidence::new();
    evidence.insert("advisories/a.json", r#"{"id":"GHSA-1","modified":"2024-01-01T00:00:00Z"}"#).unwrap();
    let ex = Exporter::builder()
        .profiles(exportcore_json::profiles())
        .sink(InMemorySink::new())
        .evidence(evidence)
        .build()
        .unwrap();
    let tenant = TenantId::parse("t").unwrap();
    ex.submit(Submission::new(tenant.clone(), RunRequest::new(ProfileId::from_static("json:raw")))).await.unwrap();
    let mut bad = RunRequest::new(ProfileId::from_static("json:raw"));
    bad.targets = vec![exportcore::Target::Vex]; // no VEX evidence: fails
    ex.submit(Submission::new(tenant, bad)).await.unwrap();
    ex.run_until_idle().await;
    let snap = snapshotter.snapshot().into_vec();
    let find = |name: &str, label: Option<(&str, &str)>| {
        snap.iter()
            .find(|(k, _, _, _)| {
                k.key().name() == name
                    && label.is_none_or(|(l, v)| k.key().labels().any(|x| x.key() == l && x.value() == v))
            })
            .map(|(_, _, _, v)| v)
    };
    match find("exporter_runs_total", Some(("status", "succeeded"))) {
        Some(DebugValue::Counter(n)) => assert_eq!(*n, 1),
        other => panic!("exporter_runs_total{{status=succeeded}}: {other:?}"),
    }
    match find("exporter_run_failures_total", Some(("error_code", "ERR_EXPORT_EVIDENCE_EMPTY"))) {
        Some(DebugValue::Counter(n)) => assert_eq!(*n, 1),
        other => panic!("exporter_run_failures_total: {other:?}"),
    }
    match find("exporter_run_duration_seconds", Some(("profile_kind", "json:raw"))) {
        Some(DebugValue::Histogram(v)) => assert_eq!(v.len(), 2),
        other => panic!("exporter_run_duration_seconds: {other:?}"),
    }
    match find("exporter_run_bytes_total", Some(("profile_kind", "json:raw"))) {
        Some(DebugValue::Counter(n)) => assert!(*n > 100, "{n}"),
        other => panic!("exporter_run_bytes_total: {other:?}"),
    }
}
