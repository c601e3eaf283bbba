//! Same inputs, same bytes, across releases: the sha256 of one json:raw, one trivy:db and one
//! devportal:offline output of the bundled samples is pinned here. A change to any of them is
//! a change to what users verify and must be deliberate: update the digest in the same commit
//! and say why in its message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::{DirEvidence, InMemorySink, Profile, ProfileId, RunBuilder, RunRequest, Timestamp};
use std::path::Path;

async fn digests_of(profile: impl Profile, id: &'static str) -> Vec<(String, String)> {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence");
    let mut request = RunRequest::new(ProfileId::from_static(id));
    request.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    let outcome = RunBuilder::new(profile, DirEvidence::new(samples).unwrap(), InMemorySink::new())
        .execute(request)
        .await
        .unwrap_or_else(|e| panic!("{id}: {}", e.report()));
    outcome.run.outputs.iter().map(|o| (o.path.to_string(), o.sha256.to_hex())).collect()
}

fn digest<'a>(outputs: &'a [(String, String)], path: &str) -> &'a str {
    outputs.iter().find(|(p, _)| p == path).map(|(_, d)| d.as_str()).unwrap_or_else(|| panic!("no {path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_raw_bytes_are_pinned() {
    let out = digests_of(exportcore_json::JsonRaw, "json:raw").await;
    assert_eq!(digest(&out, "json-raw.tar.zst"), "0792b62fabce8376d742bd9421f172c7d8787e010d4e43886171353fa74ef018");
    assert_eq!(digest(&out, "manifest.json"), "13dab34726f3fa51105f13a0320c5713c4568773fedc543c9cf19b114f887cc2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trivy_db_bytes_are_pinned() {
    let out = digests_of(exportcore_trivy::TrivyDb, "trivy:db").await;
    assert_eq!(digest(&out, "db.tar.gz"), "e65dc37c7a517c8958b544611b0e225593d17de8922d1bba5f44e64c04ae6418");
    assert_eq!(digest(&out, "db/trivy.db"), "f5a9730ddb8729fc57314efd69c68be366297442fc42cc56ea4ab2952a3615fe");
    assert_eq!(digest(&out, "manifest.json"), "bf2bcbac819d6d9f45e8b7be6c1999879bf1aa9d72e984af672587ad26cfb725");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devportal_bytes_are_pinned() {
    let out = digests_of(exportcore_devportal::DevportalOffline::new(), "devportal:offline").await;
    assert_eq!(
        digest(&out, "devportal-offline-bundle.tgz"),
        "f1acdc870ffb670ef0fe235069e69ffe6f1e48d4089da893f6167c4b6348ac63"
    );
    assert_eq!(digest(&out, "manifest.json"), "b7070489350dfd05ccf8198104a7e0befd08c9789afe415cf646d71c7687be8d");
}
