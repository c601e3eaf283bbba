//! json:raw and json:policy run the shared profile conformance suite on the bundled samples
//! and on a generated evidence set, with several request shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::{
    conformance, Compression, DirEvidence, EvidenceSource, Format, Profile, ProfileId, RunRequest, Target, Timestamp,
};
use std::path::PathBuf;
use std::sync::Arc;

fn samples() -> Arc<dyn EvidenceSource> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence");
    Arc::new(DirEvidence::new(dir).expect("samples exist"))
}

fn requests(profile: &ProfileId) -> Vec<RunRequest> {
    let default = RunRequest::new(profile.clone());
    let mut pinned = RunRequest::new(profile.clone());
    pinned.formats = vec![Format::Json, Format::Ndjson];
    pinned.compression = Some(Compression::Gzip);
    pinned.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").expect("time"));
    let mut narrow = RunRequest::new(profile.clone());
    narrow.targets = vec![Target::Vex, Target::Advisory];
    narrow.formats = vec![Format::Json];
    narrow.compression = Some(Compression::None);
    vec![default, pinned, narrow]
}

async fn suite(profile: Arc<dyn Profile>) {
    let id = profile.descriptor().id;
    for req in requests(&id) {
        conformance::profile_suite(Arc::clone(&profile), samples(), req).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_raw_conforms() {
    suite(Arc::new(exportcore_json::JsonRaw)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_policy_conforms() {
    suite(Arc::new(exportcore_json::JsonPolicy)).await;
}
