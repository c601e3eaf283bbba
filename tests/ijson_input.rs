//! I-JSON input (RFC 7493, which RFC 8785 requires): a duplicate member name or a number that
//! would not survive as a double is refused with a typed error naming the file, the line and
//! the member, by every profile, instead of silently exporting the last duplicate or another
//! number.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::{ExportError, InMemorySink, MemoryEvidence, Profile, ProfileId, RunBuilder, RunRequest, Timestamp};

async fn run_with(profile: impl Profile, id: &'static str, path: &str, body: &str) -> ExportError {
    let mut ev = MemoryEvidence::new();
    ev.insert(path, body.to_owned()).unwrap();
    let mut r = RunRequest::new(ProfileId::from_static(id));
    r.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    let sink = InMemorySink::new();
    let err = RunBuilder::new(profile, ev, sink.clone()).execute(r).await.expect_err("must be refused");
    assert!(sink.snapshot().is_empty());
    err
}

fn assert_names(err: &ExportError, path: &str, line: u64, what: &str) {
    match err {
        ExportError::EvidenceInvalid { location, reason } => {
            assert_eq!((location.path.as_str(), location.line), (path, Some(line)), "{err}");
            assert!(reason.contains(what), "{reason}");
        }
        other => panic!("expected EvidenceInvalid, got {other:?}"),
    }
}

const DUP_ID: &str = r#"{"id":"GHSA-real","modified":"2025-01-01T00:00:00Z","id":"GHSA-forged"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_member_names_are_refused_by_every_profile() {
    let e = run_with(exportcore_json::JsonRaw, "json:raw", "advisories/a.json", DUP_ID).await;
    assert_names(&e, "advisories/a.json", 1, r#"duplicate member name "id""#);
    let ndjson = format!("{}\n{DUP_ID}\n", r#"{"id":"GHSA-ok","modified":"2025-01-01T00:00:00Z"}"#);
    let e = run_with(exportcore_trivy::TrivyDb, "trivy:db", "advisories/a.ndjson", &ndjson).await;
    assert_names(&e, "advisories/a.ndjson", 2, r#"duplicate member name "id""#);
    let vex = r#"{
  "@context": "https://openvex.dev/ns/v0.2.0", "@id": "x", "author": "a", "timestamp": "2025-01-01T00:00:00Z", "version": 1,
  "statements": [{"vulnerability": {"name": "CVE-1"}, "products": [{"@id": "pkg:npm/a@1"}],
                  "status": "affected", "status": "not_affected", "justification": "component_not_present"}]
}"#;
    let e = run_with(exportcore_json::JsonPolicy, "json:policy", "vex/v.json", vex).await;
    assert_names(&e, "vex/v.json", 4, r#"duplicate member name "status""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_that_would_change_are_refused() {
    for (n, why) in
        [("9007199254740993", "beyond ±2^53"), ("18446744073709551616", "beyond ±2^53"), ("1e-400", "underflows")]
    {
        let body = format!(r#"{{"id":"A","modified":"2025-01-01T00:00:00Z","database_specific":{{"score":{n}}}}}"#);
        let e = run_with(exportcore_json::JsonRaw, "json:raw", "advisories/a.json", &body).await;
        assert_names(&e, "advisories/a.json", 1, why);
        assert!(e.to_string().contains(r#"member "score""#), "{e}");
    }
}
