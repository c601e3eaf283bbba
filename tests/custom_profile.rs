//! The third-party profile of `examples/custom_profile.rs` passes the conformance suite, using
//! nothing but the public API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../examples/custom_profile.rs"]
mod custom_profile;

use exportcore::{conformance, DirEvidence, RunRequest};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_profile_conforms() {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence");
    conformance::profile_suite(
        Arc::new(custom_profile::CsvAdvisories),
        Arc::new(DirEvidence::new(samples).unwrap()),
        RunRequest::new("csv:advisories"),
    )
    .await;
}
