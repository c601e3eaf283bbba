//! The shared conformance suite: plain async check functions that every [`Sink`] and every
//! [`Profile`] implementation calls from its own tests. Enable the `conformance` feature in
//! your dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! exportcore = { version = "0.1", features = ["conformance"] }
//! ```
//!
//! ```no_run
//! # async fn doc() {
//! use exportcore::{conformance, InMemorySink};
//! conformance::sink_suite(&InMemorySink::new()).await;
//! # }
//! ```
//!
//! The checks panic (like `assert!`) with a message naming the broken contract. This module
//! is not semver-stable: checks are added as contracts tighten.

use crate::error::{ExportError, Result};
use crate::evidence::{EvidenceItem, EvidenceKind, EvidenceSource};
use crate::hashing::Sha256Digest;
use crate::model::{RunRequest, RunStatus};
use crate::path::ArtifactPath;
use crate::profile::{CancelFlag, Profile};
use crate::run::{execute, EventFn, RunOptions};
use crate::sink::{ByteStream, FsSink, InMemorySink, Sink, SinkExt};
use bytes::Bytes;
use futures::StreamExt;
use std::io::Read;
use std::sync::{Arc, Mutex};

fn p(s: &str) -> ArtifactPath {
    ArtifactPath::parse(s).expect("valid test path")
}

fn failing_body(prefix: &'static [u8]) -> ByteStream {
    futures::stream::iter(vec![Ok(Bytes::from_static(prefix)), Err(std::io::Error::other("injected failure"))]).boxed()
}

/// Runs every sink check.
pub async fn sink_suite(sink: &dyn Sink) {
    sink_put_get_list_delete(sink).await;
    sink_put_is_atomic(sink).await;
    sink_overwrite_replaces(sink).await;
    sink_streams_large_and_empty(sink).await;
}

/// Put, get, list (sorted, prefix-filtered, segment-wise) and idempotent delete.
pub async fn sink_put_get_list_delete(sink: &dyn Sink) {
    let items = [("conf/b.txt", "bee"), ("conf/a/x.json", "{}"), ("conf/a.txt", "a"), ("confx/z", "z")];
    for (path, body) in items {
        let r = sink.put_bytes(&p(path), Bytes::from(body)).await.expect("put");
        assert_eq!(r.path.as_str(), path);
        assert_eq!(r.size, body.len() as u64, "receipt size for {path}");
        assert_eq!(r.sha256, Sha256Digest::of(body.as_bytes()), "receipt digest for {path}");
        assert_eq!(r.url, sink.url(&p(path)));
    }
    for (path, body) in items {
        assert_eq!(sink.get_bytes(&p(path)).await.expect("get"), body.as_bytes(), "content of {path}");
    }
    let listed: Vec<String> =
        sink.list(Some(&p("conf"))).await.expect("list").into_iter().map(|m| m.path.to_string()).collect();
    assert_eq!(
        listed,
        ["conf/a.txt", "conf/a/x.json", "conf/b.txt"],
        "list must be sorted and prefix-filtered segment-wise"
    );
    let all = sink.list(None).await.expect("list all");
    assert!(all.windows(2).all(|w| w[0].path < w[1].path), "list(None) must be sorted");
    assert_eq!(all.iter().find(|m| m.path.as_str() == "conf/b.txt").map(|m| m.size), Some(3));
    for (path, _) in items {
        sink.delete(&p(path)).await.expect("delete");
        sink.delete(&p(path)).await.expect("delete must be idempotent");
    }
    let err = sink.get(&p("conf/a.txt")).await.err().expect("get after delete must fail");
    assert_eq!(err.code(), "ERR_EXPORT_NOT_FOUND");
    assert!(sink.list(Some(&p("conf"))).await.expect("list").is_empty());
}

/// A body stream that fails midway leaves the previous content (or absence) untouched.
pub async fn sink_put_is_atomic(sink: &dyn Sink) {
    let path = p("atomic/obj.bin");
    sink.put_bytes(&path, Bytes::from_static(b"version-1")).await.expect("put v1");
    let err = sink.put(&path, failing_body(b"partial-v2")).await.expect_err("a failing body must fail the put");
    assert_eq!(err.code(), "ERR_EXPORT_DISTRIBUTION_FAILED");
    assert_eq!(sink.get_bytes(&path).await.expect("get"), &b"version-1"[..], "old content must survive a failed put");
    let fresh = p("atomic/new.bin");
    sink.put(&fresh, failing_body(b"partial")).await.expect_err("must fail");
    assert!(sink.get(&fresh).await.is_err(), "a failed put must not create the artifact");
    let listed: Vec<String> =
        sink.list(Some(&p("atomic"))).await.expect("list").into_iter().map(|m| m.path.to_string()).collect();
    assert_eq!(listed, ["atomic/obj.bin"], "no partial artifact may be listed");
    sink.delete(&path).await.expect("cleanup");
}

/// A second put replaces the first.
pub async fn sink_overwrite_replaces(sink: &dyn Sink) {
    let path = p("over/x");
    sink.put_bytes(&path, Bytes::from_static(b"longer first version")).await.expect("put");
    sink.put_bytes(&path, Bytes::from_static(b"short")).await.expect("put again");
    assert_eq!(sink.get_bytes(&path).await.expect("get"), &b"short"[..]);
    sink.delete(&path).await.expect("cleanup");
}

/// Empty artifacts and multi-chunk streams round-trip with correct digests.
pub async fn sink_streams_large_and_empty(sink: &dyn Sink) {
    let empty = p("big/empty");
    let r = sink.put_bytes(&empty, Bytes::new()).await.expect("put empty");
    assert_eq!(r.size, 0);
    assert_eq!(sink.get_bytes(&empty).await.expect("get empty").len(), 0);
    let chunks: Vec<std::io::Result<Bytes>> = (0..40u8).map(|i| Ok(Bytes::from(vec![i; 128 * 1024]))).collect();
    let mut expected = Vec::new();
    for i in 0..40u8 {
        expected.extend(std::iter::repeat_n(i, 128 * 1024));
    }
    let big = p("big/five-mib");
    let r = sink.put(&big, futures::stream::iter(chunks).boxed()).await.expect("put big");
    assert_eq!(r.size, expected.len() as u64);
    assert_eq!(r.sha256, Sha256Digest::of(&expected));
    assert_eq!(sink.get_bytes(&big).await.expect("get big"), expected);
    sink.delete(&empty).await.expect("cleanup");
    sink.delete(&big).await.expect("cleanup");
}

fn no_events() -> EventFn {
    Arc::new(|_| {})
}

async fn run_into(
    profile: &Arc<dyn Profile>,
    evidence: Arc<dyn EvidenceSource>,
    sink: Arc<dyn Sink>,
    request: &RunRequest,
) -> crate::Run {
    execute(Arc::clone(profile), evidence, sink, request.clone(), RunOptions::new("conformance"), no_events()).await
}

/// Runs every profile check. `evidence` must be valid input for `request` (the run succeeds).
pub async fn profile_suite(profile: Arc<dyn Profile>, evidence: Arc<dyn EvidenceSource>, request: RunRequest) {
    profile_descriptor_is_valid(&*profile);
    profile_is_deterministic(&profile, &evidence, &request).await;
    profile_outputs_verify(&profile, &evidence, &request).await;
    profile_failure_leaves_no_output(&profile, &request).await;
    profile_honours_cancel(&profile, &evidence, &request).await;
}

/// The descriptor has an id and a description; `validate` accepts a request naming it.
pub fn profile_descriptor_is_valid(profile: &dyn Profile) {
    let d = profile.descriptor();
    assert!(!d.id.trim().is_empty(), "profile id must not be empty");
    assert!(!d.description.trim().is_empty(), "profile {} needs a description", d.id);
    profile.validate(&RunRequest::new(&d.id)).expect("validate must accept a default request");
}

/// Two runs on the same input give byte-identical artifacts.
pub async fn profile_is_deterministic(
    profile: &Arc<dyn Profile>,
    evidence: &Arc<dyn EvidenceSource>,
    request: &RunRequest,
) {
    let (a, b) = (InMemorySink::new(), InMemorySink::new());
    let ra = run_into(profile, Arc::clone(evidence), Arc::new(a.clone()), request).await;
    assert_eq!(ra.status, RunStatus::Succeeded, "first run failed: {:?}", ra.errors);
    let rb = run_into(profile, Arc::clone(evidence), Arc::new(b.clone()), request).await;
    assert_eq!(rb.status, RunStatus::Succeeded, "second run failed: {:?}", rb.errors);
    let (sa, sb) = (a.snapshot(), b.snapshot());
    assert_eq!(sa.len(), sb.len(), "runs wrote different artifact sets");
    for ((pa, ba), (pb, bb)) in sa.iter().zip(sb.iter()) {
        assert_eq!(pa, pb, "runs wrote different artifact paths");
        assert!(ba == bb, "artifact {pa} differs between two runs on the same input");
    }
    let digests: Vec<_> = ra.outputs.iter().map(|o| (o.path.clone(), o.sha256)).collect();
    let digests_b: Vec<_> = rb.outputs.iter().map(|o| (o.path.clone(), o.sha256)).collect();
    assert_eq!(digests, digests_b, "run records differ in output digests");
}

/// Outputs are complete: what the run record reports matches the sink byte for byte, the
/// run manifest lists every artifact, and `verify` finds nothing wrong.
pub async fn profile_outputs_verify(
    profile: &Arc<dyn Profile>,
    evidence: &Arc<dyn EvidenceSource>,
    request: &RunRequest,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = FsSink::new(dir.path()).expect("fs sink");
    let run = run_into(profile, Arc::clone(evidence), Arc::new(sink.clone()), request).await;
    assert_eq!(run.status, RunStatus::Succeeded, "run failed: {:?}", run.errors);
    assert!(run.outputs.iter().any(|o| o.path == crate::manifest::MANIFEST_FILE), "run must output manifest.json");
    for o in &run.outputs {
        let bytes = sink.get_bytes(&p(&o.path)).await.expect("reported output must exist");
        assert_eq!(Sha256Digest::of(&bytes), o.sha256, "digest of {} in the run record", o.path);
        assert_eq!(bytes.len() as u64, o.size, "size of {} in the run record", o.path);
    }
    let report = crate::verify::verify_path(dir.path()).expect("verify");
    assert!(report.is_ok(), "verify failed on fresh output: {:?}", report.failures);
    assert!(report.verified as usize + 1 >= run.outputs.len(), "verify checked too little");
}

/// An evidence source that lists one file of every kind and fails to read it.
#[derive(Debug)]
pub struct FailingEvidence;

impl EvidenceSource for FailingEvidence {
    fn describe(&self) -> String {
        "failing".into()
    }
    fn list(&self, kind: EvidenceKind) -> Result<Vec<EvidenceItem>> {
        let path = match kind {
            EvidenceKind::Portal => "portal/index.html".to_owned(),
            other => format!("{}/broken.ndjson", other.dirs()[0]),
        };
        Ok(vec![EvidenceItem { path: ArtifactPath::parse(path)?, size: 1 << 20 }])
    }
    fn open(&self, _path: &ArtifactPath) -> Result<Box<dyn Read + Send>> {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("injected read failure"));
                }
                self.0 -= 1;
                let n = buf.len().min(1);
                buf[..n].copy_from_slice(&b"{"[..n]);
                Ok(n)
            }
        }
        Ok(Box::new(Broken(3)))
    }
}

/// When evidence cannot be read, the run fails with a code and publishes nothing.
pub async fn profile_failure_leaves_no_output(profile: &Arc<dyn Profile>, request: &RunRequest) {
    let sink = InMemorySink::new();
    let run = run_into(profile, Arc::new(FailingEvidence), Arc::new(sink.clone()), request).await;
    if run.status == RunStatus::Failed {
        assert!(run.errors.iter().all(|e| e.code.starts_with("ERR_EXPORT_")), "errors need codes: {:?}", run.errors);
        assert!(run.outputs.is_empty(), "a failed run reports no outputs");
        assert!(sink.snapshot().is_empty(), "a failed run must leave nothing in the sink");
    }
}

/// A cancelled run fails with `ERR_EXPORT_CANCELLED` and publishes nothing.
pub async fn profile_honours_cancel(
    profile: &Arc<dyn Profile>,
    evidence: &Arc<dyn EvidenceSource>,
    request: &RunRequest,
) {
    let sink = InMemorySink::new();
    let cancel = CancelFlag::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = Arc::clone(&events);
    let c2 = cancel.clone();
    // Cancel as soon as the run starts.
    let on_event: EventFn = Arc::new(move |e| {
        c2.cancel();
        ev.lock().unwrap_or_else(|p| p.into_inner()).push(e.name());
    });
    let mut opts = RunOptions::new("conformance");
    opts.cancel = cancel;
    let run =
        execute(Arc::clone(profile), Arc::clone(evidence), Arc::new(sink.clone()), request.clone(), opts, on_event)
            .await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.errors.first().map(|e| e.code.as_str()), Some(ExportError::Cancelled.code()));
    assert!(sink.snapshot().is_empty(), "a cancelled run must leave nothing in the sink");
    let names = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(names.first(), Some(&"started"));
    assert_eq!(names.last(), Some(&"failed"));
}
