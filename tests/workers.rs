//! Outputs do not depend on the number of threads an export uses: every profile on a
//! generated evidence set large enough for several parallel gzip blocks and record batches
//! (about 6 MiB), built with 1, 2 and 5 worker threads (`parallel::set_default_workers`,
//! which `exportctl serve --export-threads` sets; it also sizes the parallel gzip and the
//! ordered maps), gives the same bytes. The setting is process-wide, so this file holds one
//! test and runs the builds one after another.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use exportcore::Profile;
use std::path::Path;

async fn outputs(evidence: &Path, profile: impl Profile, id: &'static str) -> Vec<(String, String)> {
    let mut out = common::output_digests(evidence, profile, id, true).await;
    out.sort();
    out
}

async fn all_profiles(ev: &Path) -> Vec<Vec<(String, String)>> {
    vec![
        outputs(ev, exportcore_json::JsonRaw, "json:raw").await,
        outputs(ev, exportcore_json::JsonPolicy, "json:policy").await,
        outputs(ev, exportcore_trivy::TrivyDb, "trivy:db").await,
        outputs(ev, exportcore_trivy::TrivyJavaDb, "trivy:java-db").await,
        outputs(ev, exportcore_devportal::DevportalOffline::new(), "devportal:offline").await,
        outputs(ev, exportcore_mirror::MirrorFull::default(), "mirror:full").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_gives_the_same_bytes_with_any_worker_count() {
    let tmp = tempfile::tempdir().unwrap();
    let ev = tmp.path().join("evidence");
    let options =
        evidence_gen::GenOptions { advisories: 8000, findings: 2000, java_entries: 20_000, ..Default::default() };
    evidence_gen::generate(&ev, &options).unwrap();
    // devportal:offline needs a portal site, and the mirror carries blobs: the samples' own.
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence");
    for dir in ["portal", "specs", "sdks", "changelog", "blobs"] {
        let status = std::process::Command::new("cp").arg("-r").arg(samples.join(dir)).arg(&ev).status().unwrap();
        assert!(status.success(), "cp {dir}");
    }
    exportcore::parallel::set_default_workers(1);
    let one = all_profiles(&ev).await;
    assert!(one.iter().all(|o| o.len() > 1), "a profile wrote nothing: {one:?}");
    for workers in [2, 5] {
        exportcore::parallel::set_default_workers(workers);
        let other = all_profiles(&ev).await;
        for (a, b) in one.iter().zip(&other) {
            assert_eq!(a, b, "the outputs differ between 1 and {workers} worker threads");
        }
    }
    exportcore::parallel::set_default_workers(0);
}
