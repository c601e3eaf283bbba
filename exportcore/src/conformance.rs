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
use crate::profile::{CancelFlag, ExportContext, Profile};
use crate::run::{RunBuilder, RunOutcome};
use crate::sink::{ByteStream, FsSink, InMemorySink, PutReceipt, Sink, SinkExt};
use bytes::Bytes;
use futures::StreamExt;
use std::io::Read;
use std::sync::Arc;

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
    sink_put_file(sink).await;
    sink_put_files(sink).await;
    sink_delete_prefix(sink).await;
}

/// `delete_prefix` removes what lies under the prefix (segment-wise) and nothing else, and
/// counts what it removed; an absent prefix is no error.
pub async fn sink_delete_prefix(sink: &dyn Sink) {
    for path in ["dp/run1/a.json", "dp/run1/sub/b.bin", "dp/run10/c", "dp/run2/d"] {
        sink.put_bytes(&p(path), Bytes::from_static(b"x")).await.expect("put");
    }
    assert_eq!(sink.delete_prefix(&p("dp/run1")).await.expect("delete_prefix"), 2);
    let left: Vec<String> =
        sink.list(Some(&p("dp"))).await.expect("list").into_iter().map(|o| o.path.to_string()).collect();
    assert_eq!(left, ["dp/run10/c", "dp/run2/d"], "only dp/run1 went");
    assert_eq!(sink.delete_prefix(&p("dp/run1")).await.expect("again"), 0);
    assert_eq!(sink.delete_prefix(&p("dp/absent/x")).await.expect("absent"), 0);
    assert_eq!(sink.delete_prefix(&p("dp")).await.expect("the rest"), 2);
    assert!(sink.list(Some(&p("dp"))).await.expect("list").is_empty());
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
    assert!(matches!(err, ExportError::NotFound { .. }), "get of a missing path must be NotFound, got {err:?}");
    assert!(sink.list(Some(&p("conf"))).await.expect("list").is_empty());
}

/// A body stream that fails midway leaves the previous content (or absence) untouched.
pub async fn sink_put_is_atomic(sink: &dyn Sink) {
    let path = p("atomic/obj.bin");
    sink.put_bytes(&path, Bytes::from_static(b"version-1")).await.expect("put v1");
    let err = sink.put(&path, failing_body(b"partial-v2")).await.expect_err("a failing body must fail the put");
    assert!(
        matches!(err, ExportError::DistributionFailed { .. }),
        "a failed body must become ExportError::distribution_failed, got {err:?}"
    );
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

/// `put_file` stores a local file (twice under two names, as an aliased artifact is), leaves
/// the source untouched, replaces an existing artifact, and fails cleanly on a missing file.
pub async fn sink_put_file(sink: &dyn Sink) {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("source.bin");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &body).expect("write source");
    sink.put_bytes(&p("file/b.bin"), Bytes::from_static(b"old")).await.expect("put");
    for path in ["file/a.bin", "file/b.bin"] {
        let r = sink.put_file(&p(path), &local).await.expect("put_file");
        assert_eq!((r.size, r.sha256), (body.len() as u64, Sha256Digest::of(&body)), "receipt of {path}");
        assert_eq!(sink.get_bytes(&p(path)).await.expect("get"), body, "content of {path}");
    }
    assert_eq!(std::fs::read(&local).expect("source"), body, "put_file must not change its source");
    let missing = dir.path().join("missing.bin");
    assert!(sink.put_file(&p("file/c.bin"), &missing).await.is_err(), "a missing source must fail");
    let listed: Vec<String> =
        sink.list(Some(&p("file"))).await.expect("list").into_iter().map(|m| m.path.to_string()).collect();
    assert_eq!(listed, ["file/a.bin", "file/b.bin"], "a failed put_file must not create the artifact");
    for path in ["file/a.bin", "file/b.bin"] {
        sink.delete(&p(path)).await.expect("cleanup");
    }
}

/// `put_files`: receipts in order, each file stored whole; a batch with a bad entry fails.
pub async fn sink_put_files(sink: &dyn Sink) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bodies: [&[u8]; 3] = [b"", b"one", &[7u8; 70_000]];
    let paths = ["batch/x/a.bin", "batch/b.bin", "batch/x/y/c.bin"];
    let mut files = Vec::new();
    for (i, (path, body)) in paths.iter().zip(bodies).enumerate() {
        let local = dir.path().join(format!("src-{i}"));
        std::fs::write(&local, body).expect("write source");
        files.push((p(path), local));
    }
    let results = sink.put_files(&files).await;
    assert_eq!(results.len(), 3, "one result a file");
    let receipts: Vec<PutReceipt> = results.into_iter().map(|r| r.expect("put_files")).collect();
    for ((r, path), body) in receipts.iter().zip(paths).zip(bodies) {
        assert_eq!(r.path.as_str(), path, "receipts in order");
        assert_eq!((r.size, r.sha256), (body.len() as u64, Sha256Digest::of(body)), "receipt of {path}");
        assert_eq!(sink.get_bytes(&p(path)).await.expect("get"), body, "content of {path}");
    }
    // A missing source fails its file; a file the batch reports no result for was not
    // stored (a sink may stop at the first error or finish the ones it had started).
    let bad = vec![
        (p("batch/b.bin"), files[1].1.clone()),
        (p("batch/d.bin"), dir.path().join("missing.bin")),
        (p("batch/e.bin"), files[1].1.clone()),
    ];
    let results = sink.put_files(&bad).await;
    assert!(results.len() >= 2 && results[0].is_ok() && results[1].is_err(), "{results:?}");
    if results.len() == 2 {
        assert!(sink.get_bytes(&p("batch/e.bin")).await.is_err(), "a file with no result was stored");
    } else {
        assert!(results[2].is_ok(), "{results:?}");
        sink.delete(&p("batch/e.bin")).await.expect("cleanup");
    }
    assert!(sink.put_files(&[]).await.is_empty(), "an empty batch");
    for path in paths {
        sink.delete(&p(path)).await.expect("cleanup");
    }
    let listed = sink.list(Some(&p("batch"))).await.expect("list");
    assert!(listed.is_empty(), "{listed:?}");
}

async fn run_into(
    profile: &Arc<dyn Profile>,
    evidence: Arc<dyn EvidenceSource>,
    sink: Arc<dyn Sink>,
    request: &RunRequest,
) -> Result<RunOutcome> {
    let tenant = crate::TenantId::parse("conformance")?;
    RunBuilder::from_arcs(Arc::clone(profile), evidence, sink).tenant(tenant).execute(request.clone()).await
}

fn succeeded(result: Result<RunOutcome>, what: &str) -> crate::Run {
    match result {
        Ok(o) => {
            assert_eq!(o.run.status, RunStatus::Succeeded, "{what}");
            o.run
        }
        Err(e) => panic!("{what} failed: {}", e.report()),
    }
}

/// Runs every profile check. `evidence` must be valid input for `request` (the run succeeds).
pub async fn profile_suite(profile: Arc<dyn Profile>, evidence: Arc<dyn EvidenceSource>, request: RunRequest) {
    profile_descriptor_is_valid(&*profile);
    profile_is_deterministic(&profile, &evidence, &request).await;
    profile_outputs_verify(&profile, &evidence, &request).await;
    profile_anchors_time(&profile, &evidence, &request).await;
    profile_failure_leaves_no_output(&profile, &request).await;
    profile_honours_cancel(&profile, &evidence, &request).await;
    profile_progress_moves_forward(&profile, &evidence, &request).await;
}

/// The run's progress events never go back and stay within 0..=100 (a profile that runs
/// another inside it, counting its own 0..100, included).
pub async fn profile_progress_moves_forward(
    profile: &Arc<dyn Profile>,
    evidence: &Arc<dyn EvidenceSource>,
    request: &RunRequest,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = RunBuilder::from_arcs(Arc::clone(profile), Arc::clone(evidence), Arc::new(InMemorySink::new()))
        .events(tx)
        .execute(request.clone())
        .await;
    succeeded(result, "a run with events");
    let mut last = 0;
    while let Ok(e) = rx.try_recv() {
        if let crate::RunEvent::Progress { progress, .. } = e {
            assert!(progress.percent >= last && progress.percent <= 100, "progress {last}% then {}%", progress.percent);
            last = progress.percent;
        }
    }
}

/// The descriptor has an id and a description; `validate` accepts a request naming it.
pub fn profile_descriptor_is_valid(profile: &dyn Profile) {
    let d = profile.descriptor();
    assert!(!d.description.trim().is_empty(), "profile {} needs a description", d.id);
    profile.validate(&RunRequest::new(d.id)).expect("validate must accept a default request");
}

/// Without a pinned time the profile fixes the run's time anchor itself (from its evidence,
/// through [`ExportContext::time_anchor`]); a profile that never does would date its run
/// manifest 1970, which the engine reports as `WARN_EXPORT_TIME_UNANCHORED`.
pub async fn profile_anchors_time(
    profile: &Arc<dyn Profile>,
    evidence: &Arc<dyn EvidenceSource>,
    request: &RunRequest,
) {
    let mut unpinned = request.clone();
    unpinned.created_at = None;
    let run = succeeded(
        run_into(profile, Arc::clone(evidence), Arc::new(InMemorySink::new()), &unpinned).await,
        "a run without createdAt",
    );
    assert!(
        run.warnings.iter().all(|w| w.code != "WARN_EXPORT_TIME_UNANCHORED"),
        "the profile never called ExportContext::time_anchor: {:?}",
        run.warnings
    );
}

/// Two runs on the same input give byte-identical artifacts.
pub async fn profile_is_deterministic(
    profile: &Arc<dyn Profile>,
    evidence: &Arc<dyn EvidenceSource>,
    request: &RunRequest,
) {
    let (a, b) = (InMemorySink::new(), InMemorySink::new());
    let ra = succeeded(run_into(profile, Arc::clone(evidence), Arc::new(a.clone()), request).await, "first run");
    let rb = succeeded(run_into(profile, Arc::clone(evidence), Arc::new(b.clone()), request).await, "second run");
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
    let run = succeeded(run_into(profile, Arc::clone(evidence), Arc::new(sink.clone()), request).await, "run");
    assert!(run.outputs.iter().any(|o| o.path == p(crate::manifest::MANIFEST_FILE)), "run must output manifest.json");
    for o in &run.outputs {
        let bytes = sink.get_bytes(&o.path).await.expect("reported output must exist");
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
            EvidenceKind::Blob => "blobs/layer.tar.gz".to_owned(),
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

/// When evidence cannot be read, the run fails with a coded error and publishes nothing.
pub async fn profile_failure_leaves_no_output(profile: &Arc<dyn Profile>, request: &RunRequest) {
    let sink = InMemorySink::new();
    let result = run_into(profile, Arc::new(FailingEvidence), Arc::new(sink.clone()), request).await;
    let err = result.expect_err("a run whose evidence cannot be read must fail");
    assert!(err.code().starts_with("ERR_EXPORT_"), "errors need codes: {err:?}");
    assert!(sink.snapshot().is_empty(), "a failed run must leave nothing in the sink");
}

/// An evidence source that sets a cancel flag when the profile first opens a file.
#[derive(Debug)]
struct CancelOnRead {
    inner: Arc<dyn EvidenceSource>,
    flag: CancelFlag,
}

impl EvidenceSource for CancelOnRead {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&self, kind: EvidenceKind) -> Result<Vec<EvidenceItem>> {
        self.inner.list(kind)
    }
    fn open(&self, path: &ArtifactPath) -> Result<Box<dyn Read + Send>> {
        self.flag.cancel();
        self.inner.open(path)
    }
}

/// A run cancelled while the profile reads its evidence: the profile itself notices
/// ([`ExportContext::check_cancelled`]) and returns `ExportError::Cancelled`; through the
/// engine path the run fails the same way and publishes nothing.
pub async fn profile_honours_cancel(
    profile: &Arc<dyn Profile>,
    evidence: &Arc<dyn EvidenceSource>,
    request: &RunRequest,
) {
    // The profile alone, cancelled mid-export.
    let flag = CancelFlag::new();
    let cancelling = CancelOnRead { inner: Arc::clone(evidence), flag: flag.clone() };
    let staging = tempfile::tempdir().expect("tempdir");
    let progress = |_| {};
    let tenant = crate::id::TenantId::from_static("conformance");
    let run_id = crate::id::RunId::generate(&tenant);
    let mut ctx = ExportContext::outside_run(request, &cancelling, staging.path(), &flag, &progress, &run_id, &tenant);
    let result = profile.export(&mut ctx);
    assert!(flag.is_cancelled(), "the profile never opened an evidence file");
    assert!(
        matches!(result, Err(ExportError::Cancelled)),
        "cancelled mid-export, the profile must stop with ExportError::Cancelled (call ctx.check_cancelled() in \
         its loops), got {:?}",
        result.map(|_| ())
    );
    // The same through a run: nothing published.
    let sink = InMemorySink::new();
    let flag = CancelFlag::new();
    let cancelling = CancelOnRead { inner: Arc::clone(evidence), flag: flag.clone() };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = RunBuilder::from_arcs(Arc::clone(profile), Arc::new(cancelling), Arc::new(sink.clone()))
        .cancel(flag)
        .events(tx)
        .execute(request.clone())
        .await;
    assert!(matches!(result, Err(ExportError::Cancelled)), "a cancelled run fails with Cancelled: {result:?}");
    assert!(sink.snapshot().is_empty(), "a cancelled run must leave nothing in the sink");
    let mut names = Vec::new();
    while let Ok(e) = rx.try_recv() {
        names.push(e.name());
    }
    assert_eq!(names.first(), Some(&"started"));
    assert_eq!(names.last(), Some(&"failed"));
}

// ---------------------------------------------------------------------------------------------
// Evidence sources

/// Runs every evidence-source check. `source` should hold at least one file of some kind.
pub fn evidence_suite(source: &dyn EvidenceSource) {
    evidence_lists_sorted_safe_paths_of_its_kind(source);
    evidence_opens_what_it_lists(source);
    evidence_refuses_unlisted_and_unsafe_paths(source);
}

const KINDS: [EvidenceKind; 6] = EvidenceKind::ALL;

/// `list` is sorted, duplicate-free, and every path lies in one of the kind's directories.
pub fn evidence_lists_sorted_safe_paths_of_its_kind(source: &dyn EvidenceSource) {
    let mut total = 0;
    for kind in KINDS {
        let items = source.list(kind).expect("list");
        assert!(items.windows(2).all(|w| w[0].path < w[1].path), "{kind:?}: list must be sorted and unique");
        for item in &items {
            assert_eq!(EvidenceKind::of_path(&item.path), Some(kind), "{} listed as {kind:?}", item.path);
        }
        total += items.len();
    }
    assert!(total > 0, "the source under test lists no file at all: give the suite some evidence");
}

/// Every listed file opens, and reads exactly its listed size.
pub fn evidence_opens_what_it_lists(source: &dyn EvidenceSource) {
    for kind in KINDS {
        for item in source.list(kind).expect("list") {
            let mut bytes = Vec::new();
            source.open(&item.path).expect("a listed file must open").read_to_end(&mut bytes).expect("read");
            assert_eq!(bytes.len() as u64, item.size, "size of {}", item.path);
        }
    }
}

/// A path the source does not hold is an error (never an empty read).
pub fn evidence_refuses_unlisted_and_unsafe_paths(source: &dyn EvidenceSource) {
    let missing = p("advisories/no-such-file-in-any-source.json");
    assert!(source.open(&missing).is_err(), "opening an unlisted file must fail");
}

// ---------------------------------------------------------------------------------------------
// Run stores (feature `engine`)

#[cfg(feature = "engine")]
pub use stores::*;

#[cfg(feature = "engine")]
mod stores {
    use super::*;

    use crate::id::{ProfileId, RunId, TenantId};
    use crate::model::{Lease, Progress, Run, RunError, RunEvent as Event, RunStatus as Status, Timestamp};
    use crate::store::{is_lease_lost, Created, IdempotencyKey, NewRun, RunFilter, RunStore};

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).expect("valid tenant")
    }

    fn r(s: &str) -> RunId {
        RunId::parse(s).expect("valid run id")
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix(1_700_000_000 + secs).expect("time")
    }

    fn new_run(tenant: &str, id: &str, profile: &str, rank: i64, key: Option<&str>, body: &str) -> NewRun {
        let profile = ProfileId::parse(profile).expect("valid profile id");
        let mut req = RunRequest::new(profile.clone());
        req.targets = if body == "vex" { vec![crate::Target::Vex] } else { vec![crate::Target::Advisory] };
        NewRun {
            run: Run::queued(r(id), t(tenant), Some("p1".into()), profile, at(0)),
            request_hash: Sha256Digest::of(&crate::canonical::to_vec(&req).expect("json")),
            request: req,
            rank,
            idempotency: key.map(|k| IdempotencyKey { key: k.into(), expires_at: at(3600) }),
        }
    }

    /// Changes a stored run's record text behind the store's back (a hand edit, a broken
    /// tool, a damaged disk): `(run_id, new_record_text)`. Store-specific, for
    /// [`store_unreadable_records`].
    pub type Corrupt<'a> = &'a (dyn Fn(&'static str, &'static str) -> CorruptFuture + Sync);

    /// What a [`Corrupt`] returns.
    pub type CorruptFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

    /// One unreadable run record does not stop the store: `list` reports it apart
    /// ([`crate::store::Page::unreadable`]); `claim_next`, `reclaim_expired` and
    /// `due_for_expiry` set it aside (`failed`, no lease) and go on; `get` names it. Run it on
    /// a fresh store with a `corrupt` that rewrites a run's record text directly.
    pub async fn store_unreadable_records(store: &dyn RunStore, corrupt: Corrupt<'_>) {
        for (id, rank) in [("u1", 0), ("u2", 1), ("u3", 2)] {
            store.create(new_run("t-u", id, "json:raw", rank, None, "adv"), at(0)).await.expect("create");
        }
        corrupt("u1", "{not json").await;
        corrupt("u2", r#"{"runId": 5}"#).await;
        let page = store.list(&t("t-u"), &RunFilter::default()).await.expect("one bad record fails no list");
        assert_eq!(page.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["u3"]);
        let bad: Vec<&str> = page.unreadable.iter().map(|u| u.run_id.as_str()).collect();
        assert_eq!(bad, ["u2", "u1"]);
        assert!(page.unreadable.iter().all(|u| u.reason.contains(&u.run_id)), "{:?}", page.unreadable);
        let err = store.get(&t("t-u"), &r("u1")).await.expect_err("an unreadable run");
        assert_eq!(err.code(), "ERR_EXPORT_STORE_INVALID");
        assert!(err.to_string().contains("u1"), "{err}");

        // The queue moves past both to the readable run.
        let lease = Lease { lease_id: "lease-u".into(), lease_until: at(100) };
        let claimed = store.claim_next(at(1), &lease).await.expect("claim past unreadable runs").expect("u3");
        assert_eq!(claimed.run.run_id.as_str(), "u3");
        assert!(store.claim_next(at(1), &lease).await.expect("claim").is_none(), "u1 and u2 are set aside");
        let failed = RunFilter { status: Some(Status::Failed), ..Default::default() };
        let page = store.list(&t("t-u"), &failed).await.expect("list");
        assert_eq!(page.unreadable.iter().map(|u| u.run_id.as_str()).collect::<Vec<_>>(), ["u2", "u1"]);

        // A running run whose record breaks is set aside when its lease lapses.
        corrupt("u3", "[]").await;
        assert!(store.reclaim_expired(at(100), &lease).await.expect("a take-over past it").is_none());
        assert!(store.reclaim_expired(at(100), &lease).await.expect("again").is_none());
        let page = store.list(&t("t-u"), &failed).await.expect("list");
        assert_eq!(page.unreadable.len(), 3, "{page:?}");

        // A finished run past its expiry whose record breaks leaves the sweep.
        store.create(new_run("t-u", "u4", "json:raw", 0, None, "adv"), at(0)).await.expect("create");
        let mut run = store.claim_run(&r("u4"), at(1), &lease).await.expect("claim").expect("u4").run;
        run.status = Status::Succeeded;
        run.expires_at = Some(at(10));
        store
            .finish(&run, at(2), &Event::Completed { run_id: r("u4"), status: Status::Succeeded })
            .await
            .expect("finish");
        corrupt("u4", "").await;
        assert!(store.due_for_expiry(at(20), 10).await.expect("a sweep past it").is_empty());
        assert!(store.due_for_expiry(at(20), 10).await.expect("again").is_empty());
    }

    /// Runs every store check. The store must start empty.
    pub async fn store_suite(store: &dyn RunStore) {
        store_create_get_list_and_tenancy(store).await;
        store_idempotency(store).await;
        store_queue_order_and_claim(store).await;
        store_events(store).await;
        store_finish_is_one_step(store).await;
        store_expiry_running_and_durations(store).await;
        store_distributions(store).await;
        store_profiles(store).await;
        store_leases(store).await;
    }

    /// A lease no other call matches (ids differ, lapse far away).
    fn lease() -> Lease {
        Lease::new(at(1_000_000))
    }

    /// Leases: a claim holds one; only the holder renews it; saves, finishes and events that
    /// carry another lease (or none) are refused and change nothing (fencing); a lapsed lease
    /// is taken over exactly once; a run leaving `running` drops its lease.
    pub async fn store_leases(store: &dyn RunStore) {
        let lost = |e: ExportError| assert!(is_lease_lost(&e), "expected a lost lease: {e:?}");
        store.create(new_run("t-l", "l1", "json:raw", 0, None, "adv"), at(0)).await.expect("create");
        let mine = Lease { lease_id: "lease-a".into(), lease_until: at(100) };
        let c = store.claim_run(&r("l1"), at(1), &mine).await.expect("claim").expect("queued");
        assert_eq!(c.run.lease.as_ref(), Some(&mine), "a claim returns its lease");
        let stored = store.get(&t("t-l"), &r("l1")).await.expect("get");
        assert_eq!(stored.lease, None, "the lease is not part of the record");
        let stranger = Lease { lease_id: "lease-x".into(), lease_until: at(10_000) };
        lost(store.renew_lease(&r("l1"), &stranger).await.expect_err("only the holder renews"));
        let renewed = store.renew_lease(&r("l1"), &Lease { lease_until: at(200), ..mine.clone() }).await;
        assert!(!renewed.expect("renew"), "no cancel requested yet");
        assert!(store.reclaim_expired(at(150), &stranger).await.expect("reclaim").is_none(), "renewed until 200");

        let ev = Event::Started { run_id: r("l1"), profile_id: ProfileId::from_static("json:raw") };
        let mut forged = c.run.clone();
        forged.progress = Progress::of(1, 2);
        for lease in [Some(stranger.clone()), None] {
            forged.lease = lease;
            lost(store.save(&forged).await.expect_err("a save under another lease"));
            lost(store.append_event(&r("l1"), forged.lease.as_ref(), at(2), &ev).await.expect_err("an event"));
        }
        assert_eq!(store.get(&t("t-l"), &r("l1")).await.expect("get"), stored, "refused writes change nothing");
        assert!(store.events(&t("t-l"), &r("l1"), 0, 10).await.expect("events").is_empty());
        assert_eq!(store.append_event(&r("l1"), Some(&mine), at(2), &ev).await.expect("the holder appends"), 1);
        let mut held = c.run.clone();
        held.progress = Progress::of(1, 2);
        store.save(&held).await.expect("the holder saves");

        // A cancel request from another process reaches the holder at its next renewal.
        let err = store.request_cancel(&t("t-other"), &r("l1")).await.expect_err("another tenant's run");
        assert!(matches!(err, ExportError::NotFound { .. }), "{err:?}");
        assert!(store.request_cancel(&t("t-l"), &r("l1")).await.expect("request"), "l1 is running");
        let renewed = store.renew_lease(&r("l1"), &Lease { lease_until: at(200), ..mine.clone() }).await;
        assert!(renewed.expect("renew"), "the holder learns of the request");

        // Lapsed at 200: one caller takes it over, with its progress.
        let theirs = Lease { lease_id: "lease-b".into(), lease_until: at(500) };
        let taken = store.reclaim_expired(at(200), &theirs).await.expect("reclaim").expect("lapsed at 200");
        assert_eq!((taken.run_id.as_str(), taken.lease.as_ref()), ("l1", Some(&theirs)));
        assert_eq!((taken.status, taken.progress), (Status::Running, Progress::of(1, 2)));
        assert!(store.reclaim_expired(at(200), &stranger).await.expect("reclaim").is_none(), "taken over once");
        // The old holder is fenced out.
        lost(store.renew_lease(&r("l1"), &Lease { lease_until: at(900), ..mine.clone() }).await.expect_err("renew"));
        let mut late = held.clone();
        late.status = Status::Succeeded;
        let done = Event::Completed { run_id: r("l1"), status: Status::Succeeded };
        lost(store.finish(&late, at(201), &done).await.expect_err("a finish under a lost lease"));
        lost(store.append_event(&r("l1"), Some(&mine), at(201), &ev).await.expect_err("an event"));
        assert_eq!(store.get(&t("t-l"), &r("l1")).await.expect("get").status, Status::Running);
        assert_eq!(store.events(&t("t-l"), &r("l1"), 0, 10).await.expect("events").len(), 1);

        // The new holder requeues it: the lease goes with `running`.
        let mut requeued = taken.clone();
        requeued.status = Status::Queued;
        store.save(&requeued).await.expect("requeue");
        lost(store.renew_lease(&r("l1"), &theirs).await.expect_err("no lease while queued"));
        assert!(!store.request_cancel(&t("t-l"), &r("l1")).await.expect("request"), "not running: nothing to ask");
        assert!(store.reclaim_expired(at(1_000_000), &stranger).await.expect("reclaim").is_none(), "none running");
        let next = Lease { lease_id: "lease-c".into(), lease_until: at(400) };
        let again = store.claim_run(&r("l1"), at(300), &next).await.expect("claim").expect("queued again");
        assert_eq!((again.run.attempts, again.run.lease.as_ref()), (2, Some(&next)));
        let mut finished = again.run;
        finished.status = Status::Succeeded;
        finished.finished_at = Some(at(301));
        assert_eq!(store.finish(&finished, at(301), &done).await.expect("the holder finishes"), 2);
        lost(store.renew_lease(&r("l1"), &next).await.expect_err("no lease once final"));
        assert!(store.reclaim_expired(at(1_000_000), &stranger).await.expect("reclaim").is_none(), "none running");
    }

    /// Saved profiles: revisions are immutable, the latest is the default, tenants are apart.
    pub async fn store_profiles(store: &dyn RunStore) {
        use crate::saved::{ProfileSpec, SavedProfile};
        let spec = |name: &str, days: u32| -> ProfileSpec {
            serde_json::from_value(
                serde_json::json!({"name": name, "kind": "json", "variant": "raw", "retentionDays": days}),
            )
            .expect("spec")
        };
        let p = |tenant: &str, name: &str, rev: u32, days: u32| {
            SavedProfile::new(&t(tenant), spec(name, days), rev, at(rev as i64)).expect("profile")
        };
        store.put_profile(&p("t-p", "daily", 1, 7)).await.expect("put r1");
        store.put_profile(&p("t-p", "daily", 2, 14)).await.expect("put r2");
        store.put_profile(&p("t-p", "adhoc", 1, 1)).await.expect("put adhoc");
        store.put_profile(&p("t-q", "daily", 1, 30)).await.expect("put foreign");
        let again = store.put_profile(&p("t-p", "daily", 2, 99)).await.expect_err("a revision never changes");
        assert!(matches!(again, ExportError::Conflict { .. }), "{again:?}");
        let latest = store.get_profile(&t("t-p"), "daily", None).await.expect("latest");
        assert_eq!((latest.revision, latest.spec.retention_days), (2, Some(14)));
        assert_eq!(latest, p("t-p", "daily", 2, 14), "stored whole");
        let first = store.get_profile(&t("t-p"), "daily", Some(1)).await.expect("r1");
        assert_eq!(first.spec.retention_days, Some(7));
        for (tenant, name, rev) in [("t-p", "daily", Some(3)), ("t-p", "none", None), ("t-r", "daily", None)] {
            let err = store.get_profile(&t(tenant), name, rev).await.expect_err("absent");
            assert!(matches!(err, ExportError::ProfileNotFound { .. }), "{tenant}/{name}: {err:?}");
        }
        let list = store.list_profiles(&t("t-p")).await.expect("list");
        let names: Vec<_> = list.iter().map(|p| (p.spec.name.as_str(), p.revision)).collect();
        assert_eq!(names, vec![("adhoc", 1), ("daily", 2)], "latest revision of each, by name, own tenant only");
    }

    /// Distribution records: stored whole, per tenant, listed newest first and by run.
    pub async fn store_distributions(store: &dyn RunStore) {
        use crate::model::{DistributedArtifact, DistributionRecord, DistributionType};
        let artifact = DistributedArtifact::new(
            crate::path::ArtifactPath::parse("db.tar.gz").expect("path"),
            crate::hashing::Sha256Digest::of(b"x"),
            1,
            "registry.example/trivy-db@sha256:00",
        );
        let rec = |run: &str, tenant: &str, secs: i64| {
            DistributionRecord::succeeded(
                r(run),
                t(tenant),
                DistributionType::Oci,
                "registry.example/trivy-db:2",
                vec![artifact.clone()],
                at(secs),
            )
        };
        let (first, second, foreign) = (rec("d1", "t-d", 10), rec("d2", "t-d", 20), rec("d1", "t-e", 30));
        for d in [&first, &second, &foreign] {
            store.put_distribution(d).await.expect("put_distribution");
        }
        assert_eq!(store.get_distribution(&t("t-d"), &first.id).await.expect("get_distribution"), first);
        let err = store.get_distribution(&t("t-e"), &first.id).await.expect_err("another tenant's distribution");
        assert!(matches!(err, ExportError::NotFound { .. }), "{err:?}");
        let all = store.list_distributions(&t("t-d"), None).await.expect("list_distributions");
        assert_eq!(all.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [second.id.as_str(), first.id.as_str()]);
        let one = store.list_distributions(&t("t-d"), Some(&r("d1"))).await.expect("list_distributions");
        assert_eq!(one, std::slice::from_ref(&first));
        let mut failed = first.clone();
        failed.status = crate::model::DistributionStatus::Failed;
        store.put_distribution(&failed).await.expect("replace");
        assert_eq!(store.get_distribution(&t("t-d"), &first.id).await.expect("get").status, failed.status);
    }

    /// Create, get, list (newest first, filters, paging) and tenant isolation.
    pub async fn store_create_get_list_and_tenancy(store: &dyn RunStore) {
        for i in 0..5 {
            let c = store
                .create(new_run("t-a", &format!("a{i}"), "json:raw", i, None, "adv"), at(0))
                .await
                .expect("create");
            assert!(matches!(c, Created::New(_)));
        }
        store.create(new_run("t-b", "b0", "json:policy", 0, None, "adv"), at(0)).await.expect("create");
        assert_eq!(store.get(&t("t-a"), &r("a3")).await.expect("get").run_id, "a3");
        let err = store.get(&t("t-b"), &r("a3")).await.expect_err("another tenant's run must be invisible");
        assert!(matches!(err, ExportError::NotFound { .. }), "{err:?}");
        let page = store.list(&t("t-a"), &RunFilter { limit: Some(2), ..Default::default() }).await.expect("list");
        assert_eq!(page.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["a4", "a3"]);
        // The cursor is the tenant's own next run, not a position among every tenant's runs;
        // another tenant (or a made-up cursor) gets an invalid request, not a page.
        assert_eq!(page.next_cursor.as_deref(), Some("a2"));
        for (tenant, cursor) in [("t-b", "a2"), ("t-a", "b0"), ("t-a", "no-such-run"), ("t-a", "7")] {
            let f = RunFilter { cursor: Some(cursor.into()), ..Default::default() };
            let err = store.list(&t(tenant), &f).await.expect_err("a cursor of another tenant's runs");
            assert_eq!(err.code(), "ERR_EXPORT_REQUEST_INVALID", "{tenant} {cursor}: {err:?}");
        }
        let page2 = store
            .list(&t("t-a"), &RunFilter { limit: Some(2), cursor: page.next_cursor, ..Default::default() })
            .await
            .expect("list");
        assert_eq!(page2.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["a2", "a1"]);
        let b = store.list(&t("t-b"), &RunFilter::default()).await.expect("list");
        assert_eq!(b.runs.len(), 1);
        assert!(b.next_cursor.is_none());
        let f = store
            .list(
                &t("t-a"),
                &RunFilter { profile_id: Some(ProfileId::from_static("json:policy")), ..Default::default() },
            )
            .await
            .expect("list");
        assert!(f.runs.is_empty());
        let f = store
            .list(&t("t-a"), &RunFilter { status: Some(Status::Queued), ..Default::default() })
            .await
            .expect("list");
        assert_eq!(f.runs.len(), 5);
        assert!(
            store.events(&t("t-b"), &r("a1"), 0, 10).await.is_err(),
            "events of another tenant's run must be refused"
        );
        assert!(store
            .fail_if_queued(&t("t-b"), &r("a1"), RunError { code: "X".into(), message: "m".into() }, at(1))
            .await
            .is_err());
        // Drain the queue for the next checks.
        while let Some(c) = store.claim_next(at(1), &lease()).await.expect("claim") {
            let mut run = c.run;
            run.status = Status::Failed;
            store.save(&run).await.expect("save");
        }
    }

    /// Same key + same request → same run; same key + different request → conflict.
    pub async fn store_idempotency(store: &dyn RunStore) {
        let first = store.create(new_run("t-i", "i1", "json:raw", 0, Some("k1"), "adv"), at(10)).await.expect("create");
        let again =
            store.create(new_run("t-i", "i2", "json:raw", 0, Some("k1"), "adv"), at(20)).await.expect("create again");
        assert_eq!(again, Created::Existing(first.run().clone()), "same key and request must return the first run");
        let err =
            store.create(new_run("t-i", "i3", "json:raw", 0, Some("k1"), "vex"), at(20)).await.expect_err("conflict");
        assert!(matches!(err, ExportError::Conflict { .. }), "{err:?}");
        // The key can be looked up (the engine does, before its queue limits): the run and
        // the hash of its request; not for another tenant, not once it lapsed.
        let (hash, run) =
            store.find_idempotent(&t("t-i"), "k1", at(20)).await.expect("find").expect("the key is known");
        assert_eq!((hash, &run.run_id), (new_run("t-i", "i1", "json:raw", 0, None, "adv").request_hash, &r("i1")));
        assert!(store.find_idempotent(&t("t-x"), "k1", at(20)).await.expect("find").is_none(), "another tenant's key");
        assert!(store.find_idempotent(&t("t-i"), "k1", at(4000)).await.expect("find").is_none(), "a lapsed key");
        // Keys are per tenant.
        let other = store.create(new_run("t-j", "j1", "json:raw", 0, Some("k1"), "adv"), at(20)).await.expect("create");
        assert!(matches!(other, Created::New(_)));
        // After expiry the key is free again.
        let later =
            store.create(new_run("t-i", "i4", "json:raw", 0, Some("k1"), "vex"), at(4000)).await.expect("create");
        assert!(matches!(later, Created::New(_)));
        assert!(store.purge_idempotency(at(1_000_000)).await.expect("purge") >= 1);
        while let Some(c) = store.claim_next(at(1), &lease()).await.expect("claim") {
            let mut run = c.run;
            run.status = Status::Failed;
            store.save(&run).await.expect("save");
        }
    }

    /// Lowest rank first, then submission order; claim marks running and counts attempts;
    /// a queued run can be failed atomically, a running one not.
    pub async fn store_queue_order_and_claim(store: &dyn RunStore) {
        for (id, rank) in [("q1", 50), ("q2", 10), ("q3", 50), ("q4", 10)] {
            store.create(new_run("t-q", id, "json:raw", rank, None, "adv"), at(0)).await.expect("create");
        }
        assert_eq!(store.queued_count(None).await.expect("count"), 4);
        assert_eq!(store.queued_count(Some(&t("t-q"))).await.expect("count"), 4);
        assert_eq!(store.queued_count(Some(&t("t-none"))).await.expect("count"), 0);
        let cancelled = store
            .fail_if_queued(
                &t("t-q"),
                &r("q3"),
                RunError { code: "ERR_EXPORT_CANCELLED".into(), message: "cancelled".into() },
                at(5),
            )
            .await
            .expect("cancel");
        assert_eq!(cancelled.expect("was queued").status, Status::Failed);
        // Claiming one run by id, out of queue order; a second claim of it gets nothing.
        store.create(new_run("t-q", "q5", "json:raw", 99, None, "adv"), at(0)).await.expect("create");
        assert_eq!(
            store.events(&t("t-q"), &r("q3"), 0, 10).await.expect("events").last().map(|e| e.event.name()),
            Some("failed"),
            "fail_if_queued appends the failed event with the status"
        );
        let c = store.claim_run(&r("q5"), at(6), &lease()).await.expect("claim").expect("q5 is queued");
        assert_eq!((c.run.run_id.as_str(), c.run.status, c.run.attempts), ("q5", Status::Running, 1));
        assert!(store.claim_run(&r("q5"), at(6), &lease()).await.expect("claim").is_none());
        assert!(
            store.claim_run(&r("q3"), at(6), &lease()).await.expect("claim").is_none(),
            "failed runs cannot be claimed"
        );
        let mut run = c.run;
        run.status = Status::Succeeded;
        store.save(&run).await.expect("save");
        let mut claimed = Vec::new();
        while let Some(c) = store.claim_next(at(7), &lease()).await.expect("claim") {
            assert_eq!(c.run.status, Status::Running);
            assert_eq!(c.run.attempts, 1);
            assert_eq!(c.run.started_at, Some(at(7)));
            assert_eq!(c.request.profile_id, "json:raw");
            claimed.push(c.run);
        }
        let order: Vec<_> = claimed.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(order, ["q2", "q4", "q1"]);
        assert!(store
            .fail_if_queued(&t("t-q"), &r("q1"), RunError { code: "X".into(), message: "m".into() }, at(8))
            .await
            .expect("ok")
            .is_none());
        // A requeued run (retry) is claimed again, attempts counted.
        let mut run = claimed.pop().expect("q1");
        run.status = Status::Queued;
        store.save(&run).await.expect("save");
        let again = store.claim_next(at(9), &lease()).await.expect("claim").expect("requeued run");
        assert_eq!((again.run.run_id.as_str(), again.run.attempts, again.run.started_at), ("q1", 2, Some(at(7))));
        for mut run in claimed.into_iter().chain([again.run]) {
            run.status = Status::Succeeded;
            store.save(&run).await.expect("save");
        }
        // A run only its submitter executes: never taken from the queue, claimed by id.
        store
            .create(new_run("t-q", "q6", "json:raw", crate::store::LOCAL_RANK, None, "adv"), at(10))
            .await
            .expect("create");
        assert!(store.claim_next(at(11), &lease()).await.expect("claim").is_none(), "claim_next took a local run");
        let mut local = store.claim_run(&r("q6"), at(11), &lease()).await.expect("claim").expect("q6 by id").run;
        local.status = Status::Succeeded;
        store.save(&local).await.expect("save");
    }

    /// Event ids increase from 1 per run; `after` pages.
    pub async fn store_events(store: &dyn RunStore) {
        store.create(new_run("t-e", "e1", "json:raw", 0, None, "adv"), at(0)).await.expect("create");
        store.create(new_run("t-e", "e2", "json:raw", 0, None, "adv"), at(0)).await.expect("create");
        for i in 0..5u8 {
            let ev = Event::Progress { run_id: r("e1"), progress: Progress::of(u64::from(i), 5) };
            assert_eq!(
                store.append_event(&r("e1"), None, at(i64::from(i)), &ev).await.expect("append"),
                u64::from(i) + 1
            );
        }
        // A batch: consecutive ids in order; an empty one touches nothing; a fenced-out one
        // stores none of its events.
        let batch: Vec<Event> =
            (0..3u64).map(|i| Event::Progress { run_id: r("e1"), progress: Progress::of(10 + i, 20) }).collect();
        assert_eq!(store.append_events(&r("e1"), None, at(9), &batch).await.expect("append a batch"), 8);
        assert_eq!(store.append_events(&r("e1"), None, at(9), &[]).await.expect("an empty batch"), 0);
        let stranger = Lease { lease_id: "lease-x".into(), lease_until: at(10_000) };
        let err = store.append_events(&r("e1"), Some(&stranger), at(9), &batch).await.expect_err("a fenced-out batch");
        assert!(is_lease_lost(&err), "expected a lost lease: {err:?}");
        let stored = store.events(&t("t-e"), &r("e1"), 5, 100).await.expect("events");
        assert_eq!(stored.iter().map(|e| e.id).collect::<Vec<_>>(), [6, 7, 8]);
        assert_eq!(stored.iter().map(|e| e.event.clone()).collect::<Vec<_>>(), batch);
        let ev = Event::Started { run_id: r("e2"), profile_id: ProfileId::from_static("json:raw") };
        assert_eq!(store.append_event(&r("e2"), None, at(0), &ev).await.expect("append"), 1);
        let after2 = store.events(&t("t-e"), &r("e1"), 2, 3).await.expect("events");
        assert_eq!(after2.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(after2[0].event, Event::Progress { run_id: r("e1"), progress: Progress::of(2, 5) });
        assert_eq!(store.events(&t("t-e"), &r("e1"), 0, 2).await.expect("events").len(), 2);
        assert!(store.append_event(&r("nope"), None, at(0), &ev).await.is_err());
        while let Some(c) = store.claim_next(at(1), &lease()).await.expect("claim") {
            let mut run = c.run;
            run.status = Status::Failed;
            store.save(&run).await.expect("save");
        }
    }

    /// Expiry candidates, interrupted (`running`) runs and recent durations.
    pub async fn store_expiry_running_and_durations(store: &dyn RunStore) {
        store.create(new_run("t-x", "x1", "json:x", 0, None, "adv"), at(0)).await.expect("create");
        store.create(new_run("t-x", "x2", "json:x", 0, None, "adv"), at(0)).await.expect("create");
        store.create(new_run("t-x", "x3", "json:x", 0, None, "adv"), at(0)).await.expect("create");
        let mut a = store.claim_next(at(100), &lease()).await.expect("claim").expect("x1").run;
        a.status = Status::Succeeded;
        a.finished_at = Some(at(130));
        a.expires_at = Some(at(1000));
        store.save(&a).await.expect("save");
        let b = store.claim_next(at(200), &lease()).await.expect("claim").expect("x2").run;
        assert_eq!(
            store.running().await.expect("running").iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
            ["x2"]
        );
        assert!(store.due_for_expiry(at(999), 10).await.expect("due").is_empty());
        let due = store.due_for_expiry(at(1000), 10).await.expect("due");
        assert_eq!(due.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["x1"]);
        assert_eq!(store.recent_durations(&ProfileId::from_static("json:x"), 10).await.expect("durations"), [30.0]);
        let mut e = due[0].clone();
        e.status = Status::Expired;
        store.save(&e).await.expect("save");
        assert!(store.due_for_expiry(at(5000), 10).await.expect("due").is_empty(), "expired runs are not due again");
        let mut b = b;
        b.status = Status::Failed;
        store.save(&b).await.expect("save");
        let c = store.claim_next(at(300), &lease()).await.expect("claim").expect("x3");
        let mut c = c.run;
        c.status = Status::Failed;
        store.save(&c).await.expect("save");
    }

    /// `finish` stores the final record and its terminal event together.
    pub async fn store_finish_is_one_step(store: &dyn RunStore) {
        store.create(new_run("t-f", "f1", "json:raw", 0, None, "adv"), at(0)).await.expect("create");
        let mut run = store.claim_run(&r("f1"), at(1), &lease()).await.expect("claim").expect("queued").run;
        let ev = Event::Started { run_id: r("f1"), profile_id: ProfileId::from_static("json:raw") };
        assert_eq!(store.append_event(&r("f1"), run.lease.as_ref(), at(1), &ev).await.expect("append"), 1);
        run.status = Status::Succeeded;
        run.finished_at = Some(at(2));
        let done = Event::Completed { run_id: r("f1"), status: Status::Succeeded };
        assert_eq!(store.finish(&run, at(2), &done).await.expect("finish"), 2);
        assert_eq!(store.get(&t("t-f"), &r("f1")).await.expect("get").status, Status::Succeeded);
        let evs = store.events(&t("t-f"), &r("f1"), 0, 10).await.expect("events");
        assert_eq!(evs.last().map(|e| &e.event), Some(&done));
        let mut again = run.clone();
        again.status = Status::Failed;
        again.lease = None;
        let failed = Event::Failed { run_id: r("f1"), code: "ERR_EXPORT_INTERRUPTED".into(), message: "late".into() };
        store.finish(&again, at(3), &failed).await.expect_err("a final state is final");
        assert_eq!(store.get(&t("t-f"), &r("f1")).await.expect("get").status, Status::Succeeded);
        assert_eq!(
            store.events(&t("t-f"), &r("f1"), 0, 10).await.expect("events").len(),
            2,
            "no second terminal event"
        );
        let err = store.finish(&run_of("nope"), at(3), &done).await.expect_err("finishing an unknown run must fail");
        assert!(matches!(err, ExportError::NotFound { .. }), "{err:?}");
    }

    fn run_of(id: &str) -> Run {
        Run::queued(r(id), t("t-f"), None, ProfileId::from_static("json:raw"), at(0))
    }
}
