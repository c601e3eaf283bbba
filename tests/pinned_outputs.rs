//! Same inputs, same bytes, across releases: the sha256 of the outputs of every profile on the
//! bundled samples is pinned here (json:raw, json:policy, trivy:db, trivy:java-db,
//! devportal:offline, and mirror:full signed with a fixed Ed25519 test key, whose signatures
//! are deterministic). A change to any of them is a change to what users verify and must be
//! deliberate: update the digest in the same commit and say why in its message. These pins
//! are also what catches a dependency update that changes compressed bytes (zstd, zlib-rs):
//! the lock file pins the versions, this test notices when a bump changes the output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use exportcore::Profile;
use std::path::Path;

async fn digests_of(profile: impl Profile, id: &'static str) -> Vec<(String, String)> {
    digests_with(profile, id, false).await
}

async fn digests_with(profile: impl Profile, id: &'static str, signed: bool) -> Vec<(String, String)> {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence");
    common::output_digests(&samples, profile, id, signed).await
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
        "fbe06acb4a564c6118e59e59c7f95ea03728df1b2312317924ad0c2ea57a3c3a"
    );
    assert_eq!(digest(&out, "manifest.json"), "edc2f3534029078de1033a758c71f2135c472b38da4685f6edca8974779a9d80");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_policy_bytes_are_pinned() {
    let out = digests_of(exportcore_json::JsonPolicy, "json:policy").await;
    assert_eq!(digest(&out, "json-policy.tar.zst"), "5eb3b482846ddefd43042285a2de40d849ee6c187a646a1cb0312b4d0c7edfc3");
    assert_eq!(digest(&out, "manifest.json"), "857efc171a82d50517cf06063a65c4d7eca8eb120ae506edf339803b88405ce4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trivy_java_db_bytes_are_pinned() {
    let out = digests_of(exportcore_trivy::TrivyJavaDb, "trivy:java-db").await;
    assert_eq!(digest(&out, "javadb.tar.gz"), "cbbcc38d42c5ec24446a038cc5a3cf464e59cd876487dab9501a401ff61075b0");
    assert_eq!(digest(&out, "manifest.json"), "b708c4a2f280c546250cc628b223dd38adfd098732cc1ed65bce2b10c582a73b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_full_bytes_are_pinned() {
    let out = digests_with(exportcore_mirror::MirrorFull::default(), "mirror:full", true).await;
    assert_eq!(digest(&out, "mirror/export.json"), "d5e1b764c6144f3108095b8ac76a75d863bcffe8a9b3100b554bd7a4800b4557");
    // The mirror's Trivy DB is the trivy:db output of the same evidence, byte for byte.
    assert_eq!(
        digest(&out, "mirror/trivy/db.tar.gz"),
        "e65dc37c7a517c8958b544611b0e225593d17de8922d1bba5f44e64c04ae6418"
    );
    assert_eq!(digest(&out, "oci/index.json"), "4b0dadafd74d8997da1c05dc10a4fcc30428796f5c1fb3076b1c342a27e67cdc");
    assert_eq!(
        digest(&out, "tuf/metadata/timestamp.json"),
        "f1b9caa143628c986c9fdeb2bd806885eaeec27f4d3e99baa01142c3b6346001"
    );
    assert_eq!(digest(&out, "manifest.json"), "5a2618e9d79d0263051e125415a262323553ec8e53c128d29c1171406f47aea1");
}
