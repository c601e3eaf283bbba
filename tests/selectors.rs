//! Scope selectors through the run API: every bundled profile and a third-party one honour
//! them without code of their own; the selection is recorded in the manifest and the
//! provenance; the same selectors in any order give the same bytes; a selection of nothing is
//! a valid, empty, verifiable run with a warning; bad selectors are typed errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[allow(dead_code)]
#[path = "../examples/custom_profile.rs"]
mod custom_profile;

use common::{keys, samples, signed_request};
use exportcore::verify::VerifyOptions;
use exportcore::{
    DirEvidence, FsSink, Limits, Profile, RunBuilder, RunOutcome, RunRequest, Selection, Selectors, Sha256Digest,
    Timestamp,
};
use exportcore_devportal::verify_path_with;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

fn t(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

fn request(profile: &str, selectors: Selectors) -> RunRequest {
    RunRequest::builder(profile).created_at(t("2025-01-01T00:00:00Z")).selectors(selectors).build().unwrap()
}

fn profile(id: &str) -> Arc<dyn Profile> {
    match id {
        "json:raw" => Arc::new(exportcore_json::JsonRaw),
        "json:policy" => Arc::new(exportcore_json::JsonPolicy),
        "trivy:db" => Arc::new(exportcore_trivy::TrivyDb),
        "trivy:java-db" => Arc::new(exportcore_trivy::TrivyJavaDb),
        "devportal:offline" => Arc::new(exportcore_devportal::DevportalOffline::default()),
        "csv:advisories" => Arc::new(custom_profile::CsvAdvisories),
        other => panic!("unknown profile {other}"),
    }
}

async fn run_into(out: &Path, req: RunRequest) -> RunOutcome {
    let id = req.profile_id.to_string();
    RunBuilder::from_arcs(
        profile(&id),
        Arc::new(DirEvidence::new(samples()).unwrap()),
        Arc::new(FsSink::new(out).unwrap()),
    )
    .execute(req)
    .await
    .unwrap_or_else(|e| panic!("{id}: {}", e.report()))
}

fn verify_path(dir: &Path) -> exportcore::Result<exportcore::verify::VerifyReport> {
    verify_path_with(dir, &VerifyOptions::default())
}

fn digests(o: &RunOutcome) -> Vec<(String, Sha256Digest)> {
    o.run.outputs.iter().map(|o| (o.path.to_string(), o.sha256)).collect()
}

fn manifest_selection(out: &Path) -> Option<Selection> {
    let m: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    m["metadata"].get("selection").map(|s| serde_json::from_value(s.clone()).unwrap())
}

/// The records of `raw/<kind>.ndjson` inside a json:raw bundle.
fn raw_records(out: &Path, kind: &str) -> Vec<Value> {
    let f = std::fs::File::open(out.join("json-raw.tar.zst")).unwrap();
    let mut tar = exportcore::archive::open_archive(f).unwrap();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(&format!("raw/{kind}.ndjson")) {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
            return s.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        }
    }
    panic!("raw/{kind}.ndjson missing");
}

fn ecosystems(advisory: &Value) -> Vec<String> {
    advisory["affected"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["package"]["ecosystem"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_with_and_without_selectors() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("json:raw", Selectors::default().ecosystems(["PyPI"]), Some("advisory")),
        ("json:policy", Selectors::default().ecosystems(["PyPI"]), Some("policy")),
        ("trivy:db", Selectors::default().ecosystems(["PyPI"]), Some("advisory")),
        ("trivy:java-db", Selectors::default().packages(["pkg:maven/org.yaml/"]), Some("java")),
        ("csv:advisories", Selectors::default().ids(["CVE-2024-3094", "GHSA-j8r2-6x86-q33q"]), Some("advisory")),
        // Portal assets are not records: the selection has nothing to act on.
        ("devportal:offline", Selectors::default().ecosystems(["PyPI"]), None),
    ];
    for (id, selectors, kind) in cases {
        let all_dir = tmp.path().join(format!("{id}-all").replace(':', "_"));
        let sel_dir = tmp.path().join(format!("{id}-sel").replace(':', "_"));
        let all = run_into(&all_dir, request(id, Selectors::default())).await;
        let sel = run_into(&sel_dir, request(id, selectors.clone())).await;
        assert!(manifest_selection(&all_dir).is_none(), "{id}: no selectors, no selection recorded");
        let selection = manifest_selection(&sel_dir).expect("the selection is in the run manifest");
        assert_eq!(selection.selectors, selectors.normalized(), "{id}");
        for dir in [&all_dir, &sel_dir] {
            let report = verify_path(dir).unwrap();
            assert!(report.is_ok(), "{id}: {:?}", report.failures);
        }
        assert_eq!(verify_path(&sel_dir).unwrap().selection, Some(selection.clone()), "verify reports it");
        match kind {
            Some(kind) => {
                let c = selection.counts[kind];
                assert!(0 < c.selected && c.selected < c.seen, "{id}: {kind} {c:?}");
                assert_ne!(digests(&all), digests(&sel), "{id}: the selection changed nothing");
                assert!(sel.run.warnings.iter().all(|w| w.code != "WARN_EXPORT_SELECTION_EMPTY"));
            }
            None => {
                assert_eq!(selection.seen(), 0, "{id}");
                let data =
                    |o: &RunOutcome| digests(o).into_iter().filter(|(p, _)| p != "manifest.json").collect::<Vec<_>>();
                assert_eq!(data(&all), data(&sel), "{id}: assets are never filtered");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_raw_holds_exactly_the_selected_records() {
    let tmp = tempfile::tempdir().unwrap();
    let all = tmp.path().join("all");
    run_into(&all, request("json:raw", Selectors::default())).await;
    let out = tmp.path().join("pypi");
    run_into(&out, request("json:raw", Selectors::default().ecosystems(["pypi"]))).await;
    let want: Vec<Value> =
        raw_records(&all, "advisory").into_iter().filter(|a| ecosystems(a).iter().any(|e| e == "PyPI")).collect();
    let got = raw_records(&out, "advisory");
    assert!(!want.is_empty());
    assert_eq!(got, want, "exactly the PyPI advisories, in the unselected order");
    let selection = manifest_selection(&out).unwrap();
    assert_eq!(selection.counts["advisory"].selected, got.len() as u64);
    assert_eq!(selection.counts["advisory"].seen, raw_records(&all, "advisory").len() as u64);

    // A window: every record's own time lies inside it.
    let (since, until) = (t("2024-01-01T00:00:00Z"), t("2024-07-01T00:00:00Z"));
    let out = tmp.path().join("window");
    run_into(&out, request("json:raw", Selectors::default().modified_since(since).modified_until(until))).await;
    let got = raw_records(&out, "advisory");
    assert!(!got.is_empty());
    for a in &got {
        let m = t(a["modified"].as_str().unwrap());
        assert!(since <= m && m < until, "{m} outside the window");
    }
    let outside = raw_records(&all, "advisory")
        .into_iter()
        .filter(|a| {
            let m = t(a["modified"].as_str().unwrap());
            since <= m && m < until
        })
        .count();
    assert_eq!(got.len(), outside);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_order_does_not_change_a_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Selectors::default().ecosystems(["PyPI", "npm", "Alpine"]);
    let b = Selectors::default().ecosystems(["Alpine", "PyPI", "npm", "PyPI"]);
    for id in ["json:raw", "trivy:db"] {
        let x = run_into(&tmp.path().join(format!("{id}-a").replace(':', "_")), request(id, a.clone())).await;
        let y = run_into(&tmp.path().join(format!("{id}-b").replace(':', "_")), request(id, b.clone())).await;
        assert_eq!(digests(&x), digests(&y), "{id}");
        assert!(x.run.warnings.iter().all(|w| w.code != "WARN_EXPORT_SELECTION_EMPTY"), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_of_nothing_is_an_empty_verifiable_run_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let nothing = Selectors::default().modified_since(t("2099-01-01T00:00:00Z"));
    for id in ["json:raw", "json:policy", "trivy:db", "trivy:java-db"] {
        let selectors = if id == "trivy:java-db" { Selectors::default().ecosystems(["npm"]) } else { nothing.clone() };
        let out = tmp.path().join(id.replace(':', "_"));
        let o = run_into(&out, request(id, selectors)).await;
        let w = o.run.warnings.iter().find(|w| w.code == "WARN_EXPORT_SELECTION_EMPTY");
        assert!(w.is_some(), "{id}: {:?}", o.run.warnings);
        let sel = manifest_selection(&out).unwrap();
        assert!(sel.seen() > 0 && sel.selected() == 0, "{id}: {sel:?}");
        let report = verify_path(&out).unwrap();
        assert!(report.is_ok(), "{id}: {:?}", report.failures);
    }
    assert!(raw_records(&tmp.path().join("json_raw"), "advisory").is_empty());
    // Evidence that holds nothing is still an error, selectors or not.
    let empty = tempfile::tempdir().unwrap();
    let e = RunBuilder::new(
        exportcore_json::JsonRaw,
        DirEvidence::new(empty.path()).unwrap(),
        FsSink::new(tmp.path().join("e")).unwrap(),
    )
    .execute(request("json:raw", nothing))
    .await
    .unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_EVIDENCE_EMPTY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_provenance_records_the_selection() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let mut req = signed_request("json:raw");
    req.selectors = Selectors::default().ecosystems(["PyPI"]);
    let out = tmp.path().join("out");
    RunBuilder::new(exportcore_json::JsonRaw, DirEvidence::new(samples()).unwrap(), FsSink::new(&out).unwrap())
        .signer(Arc::clone(&k.signer))
        .execute(req)
        .await
        .unwrap();
    let mut options = VerifyOptions::default();
    options.verifiers.push(Arc::clone(&k.verifier));
    let report = verify_path_with(&out, &options).unwrap();
    assert!(report.is_ok(), "{:?}", report.failures);
    let env: Value = serde_json::from_slice(&std::fs::read(out.join("provenance.dsse.json")).unwrap()).unwrap();
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
    let statement: Value = serde_json::from_slice(&payload).unwrap();
    let build = &statement["predicate"]["buildDefinition"];
    let recorded: Selection = serde_json::from_value(build["internalParameters"]["selection"].clone()).unwrap();
    assert_eq!(Some(recorded), manifest_selection(&out));
    assert_eq!(build["externalParameters"]["selectors"]["ecosystems"], serde_json::json!(["PyPI"]));
}

#[test]
fn bad_selectors_are_typed_errors_naming_the_field() {
    let cases = [
        (r#"{"ecosystem":["PyPI"]}"#, "ecosystem"),
        (r#"{"packages":["django"]}"#, "selectors.packages[0]"),
        (r#"{"packages":["pkg:pypi/django@4.2"]}"#, "selectors.packages[0]"),
        (r#"{"ids":[""]}"#, "selectors.ids[0]"),
        (
            r#"{"modifiedSince":"2024-02-01T00:00:00Z","modifiedUntil":"2024-01-01T00:00:00Z"}"#,
            "selectors.modifiedUntil",
        ),
        (r#"{"modifiedSince":"last week"}"#, "selectors.modifiedSince"),
        (r#"{"ecosystems":"PyPI"}"#, "selectors.ecosystems"),
    ];
    for (selectors, field) in cases {
        let body = format!(r#"{{"profileId":"json:raw","selectors":{selectors}}}"#);
        let e = RunRequest::from_json(body.as_bytes(), &Limits::default()).unwrap_err();
        assert_eq!(e.code(), "ERR_EXPORT_REQUEST_INVALID", "{selectors}");
        assert!(e.to_string().contains(field), "{selectors}: {e}");
    }
    let many: Vec<String> = (0..5000).map(|i| format!("\"CVE-{i}\"")).collect();
    let body = format!(r#"{{"profileId":"json:raw","selectors":{{"ids":[{}]}}}}"#, many.join(","));
    let mut limits = Limits::default();
    limits.max_body_bytes = 1 << 20;
    let e = RunRequest::from_json(body.as_bytes(), &limits).unwrap_err();
    assert!(e.to_string().contains("at most 4096"), "{e}");
    // A saved profile's defaults may be narrowed, not widened.
    let defaults = Selectors::default().ecosystems(["PyPI"]);
    let e = defaults.narrow(&Selectors::default().ecosystems(["npm"])).unwrap_err();
    assert!(e.to_string().contains("selectors.ecosystems[0]"), "{e}");
}
