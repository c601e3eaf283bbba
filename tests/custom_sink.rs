//! The third-party sink of `examples/custom_sink.rs` passes the sink conformance suite and
//! takes a whole run, using nothing but the public API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../examples/custom_sink.rs"]
mod custom_sink;

use exportcore::{conformance, DirEvidence, RunBuilder, RunRequest, Sink, SinkExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_sink_conforms() {
    conformance::sink_suite(&custom_sink::DedupSink::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_sink_takes_a_run_and_stores_equal_bytes_once() {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence");
    let sink = custom_sink::DedupSink::default();
    let request = RunRequest::builder("json:raw").build().unwrap();
    let outcome = RunBuilder::new(exportcore_json::JsonRaw, DirEvidence::new(&samples).unwrap(), sink.clone())
        .execute(request)
        .await
        .unwrap();
    for o in outcome.outputs() {
        let bytes = sink.get_bytes(&o.path).await.unwrap();
        assert_eq!(exportcore::Sha256Digest::of(&bytes), o.sha256, "{}", o.path);
    }
    // The same bytes under a second path add no blob.
    let before = sink.blob_count();
    let first = &outcome.outputs()[0];
    let copy = exportcore::ArtifactPath::parse("copy/of-first").unwrap();
    sink.put_bytes(&copy, sink.get_bytes(&first.path).await.unwrap()).await.unwrap();
    assert_eq!(sink.blob_count(), before);
    sink.delete(&copy).await.unwrap();
    assert_eq!(sink.blob_count(), before, "the blob is still named by the original path");
}
