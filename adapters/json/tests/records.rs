//! What the json profiles write: bundle layout, canonical records, stable order, counts,
//! the overlay's verdicts on the samples, and the empty-evidence error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::archive::open_archive;
use exportcore::{
    ExportError, Format, InMemorySink, Manifest, MemoryEvidence, ProfileId, RunBuilder, RunError, RunRequest,
    RunStatus, SinkExt, Target, TenantId, Timestamp,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

fn request(profile: &'static str) -> RunRequest {
    RunRequest::new(ProfileId::from_static(profile))
}

async fn run_into(
    profile: Arc<dyn exportcore::Profile>,
    ev: MemoryEvidence,
    req: RunRequest,
    sink: &InMemorySink,
) -> exportcore::Result<exportcore::Run> {
    RunBuilder::from_arcs(profile, Arc::new(ev), Arc::new(sink.clone()))
        .tenant(TenantId::parse("t").unwrap())
        .execute(req)
        .await
        .map(|o| o.run)
}

/// A run that must fail: its error; nothing may be left in the sink.
async fn run_error(profile: Arc<dyn exportcore::Profile>, ev: MemoryEvidence, req: RunRequest) -> ExportError {
    let sink = InMemorySink::new();
    let err = run_into(profile, ev, req, &sink).await.expect_err("the run must fail");
    assert!(sink.snapshot().is_empty(), "a failed run publishes nothing");
    err
}

/// A run that must succeed: its record and the files of its bundle.
async fn bundle_files(
    profile: Arc<dyn exportcore::Profile>,
    ev: MemoryEvidence,
    req: RunRequest,
) -> (exportcore::Run, BTreeMap<String, Vec<u8>>) {
    let sink = InMemorySink::new();
    let run = run_into(profile, ev, req, &sink).await.unwrap_or_else(|e| panic!("run failed: {}", e.report()));
    let mut files = BTreeMap::new();
    if let Some(bundle) = run.outputs.iter().find(|o| o.path.as_str().contains(".tar")) {
        let bytes = sink.get_bytes(&bundle.path).await.unwrap();
        let mut ar = open_archive(std::io::Cursor::new(bytes.to_vec())).unwrap();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.header().entry_type().is_file() {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf).unwrap();
                files.insert(e.path().unwrap().display().to_string(), buf);
            }
        }
    }
    (run, files)
}

fn osv(id: &str, modified: &str) -> String {
    format!("{{\n  \"modified\": \"{modified}\",\n  \"id\": \"{id}\",\n  \"summary\": \"x\"\n}}")
}

#[tokio::test]
async fn raw_records_are_canonical_in_path_order_with_counts() {
    let mut ev = MemoryEvidence::new();
    ev.insert("advisories/b/2.json", osv("B2", "2024-03-01T00:00:00Z")).unwrap();
    ev.insert(
        "advisories/a.ndjson",
        format!(
            "{}\n{}\n",
            osv("A1", "2024-01-01T00:00:00Z").replace('\n', ""),
            osv("A2", "2024-06-01T00:00:00Z").replace('\n', "")
        ),
    )
    .unwrap();
    let mut req = request("json:raw");
    req.targets = vec![Target::Advisory];
    req.formats = vec![Format::Ndjson, Format::Json];
    let (run, files) = bundle_files(Arc::new(exportcore_json::JsonRaw), ev, req).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    let nd = String::from_utf8(files["raw/advisory.ndjson"].clone()).unwrap();
    assert_eq!(
        nd,
        "{\"id\":\"A1\",\"modified\":\"2024-01-01T00:00:00Z\",\"summary\":\"x\"}\n\
         {\"id\":\"A2\",\"modified\":\"2024-06-01T00:00:00Z\",\"summary\":\"x\"}\n\
         {\"id\":\"B2\",\"modified\":\"2024-03-01T00:00:00Z\",\"summary\":\"x\"}\n"
    );
    let js: Value = serde_json::from_slice(&files["raw/advisory.json"]).unwrap();
    assert_eq!(js.as_array().unwrap().len(), 3);
    let m = Manifest::parse(&files["manifest.json"]).unwrap();
    assert_eq!(m.entry("raw/advisory.ndjson").unwrap().records, Some(3));
    assert_eq!(m.entry("raw/advisory.ndjson").unwrap().media_type, "application/x-ndjson");
    assert_eq!(m.totals.records, 6);
    // No pinned time: the newest evidence timestamp is used and recorded.
    assert_eq!(m.created_at, Timestamp::parse("2024-06-01T00:00:00Z").unwrap());
    assert_eq!(serde_json::to_value(m.created_at_source).unwrap(), "evidence");
}

/// Canonical lines are copied (fast path), anything else is parsed and re-serialised (slow
/// path): both give the same bytes, and a canonical line that breaks the schema fails exactly
/// as a pretty-printed one does.
#[tokio::test]
async fn canonical_input_takes_the_copy_path_with_identical_results() {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence");
    let dir = exportcore::DirEvidence::new(samples).unwrap();
    let mut canonical_lines = String::new();
    let mut pretty = MemoryEvidence::new();
    for (i, rec) in exportcore::Records::new(&dir, exportcore::EvidenceKind::Advisory).unwrap().enumerate() {
        let d = rec.unwrap().value;
        let line = String::from_utf8(exportcore::canonical::to_vec(&d).unwrap()).unwrap();
        assert!(exportcore::canonical::is_canonical(line.as_bytes()));
        canonical_lines.push_str(&line);
        canonical_lines.push('\n');
        pretty.insert(&format!("advisories/{i:04}.json"), serde_json::to_string_pretty(&d).unwrap()).unwrap();
    }
    assert!(canonical_lines.lines().count() >= 50);
    let mut fast = MemoryEvidence::new();
    fast.insert("advisories/all.ndjson", canonical_lines.clone()).unwrap();
    let mut req = request("json:raw");
    req.targets = vec![Target::Advisory];
    req.created_at = Timestamp::parse("2025-01-01T00:00:00Z").ok();
    let (a, fa) = bundle_files(Arc::new(exportcore_json::JsonRaw), fast, req.clone()).await;
    let (b, fb) = bundle_files(Arc::new(exportcore_json::JsonRaw), pretty, req.clone()).await;
    assert_eq!(a.status, RunStatus::Succeeded);
    assert_eq!(fa["raw/advisory.ndjson"], canonical_lines.as_bytes(), "copied verbatim");
    assert_eq!(fa, fb, "fast and slow paths write the same bundle");
    assert_eq!(a.outputs[0].sha256, b.outputs[0].sha256);

    // A canonical line with a schema error: the same typed error either way.
    let bad = r#"{"affected":[{"package":{"ecosystem":"npm","name":"x"},"ranges":[{"events":[],"type":"SEMVER"}]}],"id":"BAD-1","modified":"2024-01-01T00:00:00Z"}"#;
    assert!(exportcore::canonical::is_canonical(bad.as_bytes()));
    let mut errs = Vec::new();
    for body in [bad.to_owned(), serde_json::to_string_pretty(&serde_json::from_str::<Value>(bad).unwrap()).unwrap()] {
        let mut ev = MemoryEvidence::new();
        ev.insert(
            "advisories/bad.ndjson",
            format!("{}\n{}\n", canonical_lines.lines().next().unwrap(), body.replace('\n', "")),
        )
        .unwrap();
        let err = run_error(Arc::new(exportcore_json::JsonRaw), ev, req.clone()).await;
        assert!(matches!(err, ExportError::EvidenceInvalid { .. }), "{err:?}");
        errs.push(RunError::from(&err));
    }
    assert_eq!(errs[0].code, "ERR_EXPORT_EVIDENCE_INVALID");
    assert_eq!(errs[0].message, errs[1].message);
    assert!(errs[0].message.contains("advisories/bad.ndjson:2") && errs[0].message.contains("events"), "{:?}", errs[0]);
}

#[tokio::test]
async fn request_order_does_not_change_bytes() {
    let ev = || {
        let mut ev = MemoryEvidence::new();
        ev.insert("advisories/a.json", osv("A", "2024-01-01T00:00:00Z")).unwrap();
        ev
    };
    let mut r1 = request("json:raw");
    r1.targets = vec![Target::Advisory, Target::Vex];
    r1.formats = vec![Format::Json, Format::Ndjson];
    let mut r2 = r1.clone();
    r2.targets.reverse();
    r2.formats.reverse();
    let (a, fa) = bundle_files(Arc::new(exportcore_json::JsonRaw), ev(), r1).await;
    let (b, fb) = bundle_files(Arc::new(exportcore_json::JsonRaw), ev(), r2).await;
    assert_eq!(fa, fb);
    assert_eq!(a.outputs[0].sha256, b.outputs[0].sha256);
}

#[tokio::test]
async fn empty_evidence_is_a_typed_error() {
    for profile in
        [Arc::new(exportcore_json::JsonRaw) as Arc<dyn exportcore::Profile>, Arc::new(exportcore_json::JsonPolicy)]
    {
        let err = run_error(profile, MemoryEvidence::new(), request("x")).await;
        assert!(matches!(err, ExportError::EvidenceEmpty { .. }), "{err:?}");
        assert_eq!(err.code(), "ERR_EXPORT_EVIDENCE_EMPTY");
    }
}

#[tokio::test]
async fn overlay_on_samples() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence");
    let sink = InMemorySink::new();
    let run = RunBuilder::new(exportcore_json::JsonPolicy, exportcore::DirEvidence::new(dir).unwrap(), sink.clone())
        .tenant(TenantId::parse("t").unwrap())
        .execute(request("json:policy"))
        .await
        .unwrap_or_else(|e| panic!("run failed: {}", e.report()))
        .run;
    assert_eq!(run.status, RunStatus::Succeeded);
    let bytes = sink.get_bytes(&exportcore::ArtifactPath::parse("json-policy.tar.zst").unwrap()).await.unwrap();
    let mut ar = open_archive(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut overlay = String::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("policy/overlay.ndjson") {
            e.read_to_string(&mut overlay).unwrap();
        }
    }
    let recs: Vec<Value> = overlay.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(recs.len() >= 20);
    let by_id = |id: &str| recs.iter().find(|r| r["findingId"] == id).unwrap().clone();
    // log4j: denied by policy, VEX not_affected -> allow.
    let f1 = by_id("F-0001");
    assert_eq!((f1["decision"].as_str(), f1["verdict"].as_str()), (Some("deny"), Some("allow")));
    assert_eq!(f1["vex"]["status"], "not_affected");
    // Two VEX documents disagree on CVE-2023-44487 for x/net; the later one (not_affected) wins.
    let f5 = by_id("F-0005");
    assert_eq!(f5["vex"]["status"], "not_affected");
    assert!(f5["vex"]["document"].as_str().unwrap().contains("2025-q1"), "{f5}");
    // Withdrawn advisory.
    let f20 = by_id("F-0020");
    assert_eq!(f20["verdict"], "allow");
    // No advisory in the set.
    let f21 = by_id("F-0021");
    assert_eq!(f21["advisory"], Value::Null);
    assert_eq!(f21["verdict"], f21["decision"]);
    // Every status appears, every record has reasons.
    for status in ["not_affected", "affected", "fixed", "under_investigation"] {
        assert!(recs.iter().any(|r| r["vex"]["status"] == status), "{status}");
    }
    assert!(recs.iter().all(|r| !r["reasons"].as_array().unwrap().is_empty()));
}
