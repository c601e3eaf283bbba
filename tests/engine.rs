//! The run engine end to end, on both stores: lifecycle and events, the bounded pool, priority
//! order without starvation, idempotency, timeouts, cancellation, retries with backoff,
//! estimates and rate limits, retention, tenancy and recovery after a crash.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::engine::{Exporter, ExporterBuilder, ManualClock, Submission};
use exportcore::store::{MemoryStore, RunFilter, RunStore, SqliteStore};
use exportcore::{
    ArtifactSpec, ArtifactType, ByteStream, ExportContext, ExportError, InMemorySink, MemoryEvidence, ObjectMeta,
    Priority, Profile, ProfileDescriptor, ProfileId, Profiles, Progress, PutReceipt, RunId, RunRequest, RunStatus,
    Sink, SinkExt, TenantId, Timestamp,
};
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A profile that sleeps (checking for cancellation), tracks how many run at once and the
/// order runs start in, and writes one artifact.
#[derive(Debug, Default)]
struct Sleepy {
    sleep_ms: u64,
    active: AtomicUsize,
    max_active: AtomicUsize,
    started: Mutex<Vec<String>>,
}

impl Profile for Sleepy {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new("test:sleepy", "sleeps")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut ExportContext<'_>) -> exportcore::Result<()> {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        let label = format!("{:?}", ctx.request().priority);
        self.started.lock().unwrap().push(label);
        let steps = self.sleep_ms / 10;
        let mut result = Ok(());
        for i in 0..steps {
            if let Err(e) = ctx.check_cancelled() {
                result = Err(e);
                break;
            }
            ctx.progress(Progress::of(i + 1, steps));
            std::thread::sleep(Duration::from_millis(10));
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
        result?;
        let spec = ArtifactSpec::new("out.txt", ArtifactType::Data, "text", "text/plain")?;
        ctx.write_artifact(spec, |w| w.write_all(b"done").map_err(|e| ExportError::io("out.txt", e)))?;
        Ok(())
    }
}

fn builder(profile: Arc<Sleepy>, store: Arc<dyn RunStore>, sink: Arc<dyn Sink>, concurrency: usize) -> ExporterBuilder {
    let mut profiles = Profiles::new();
    profiles.register(profile);
    Exporter::builder()
        .profiles(profiles)
        .sink_arc(sink)
        .store(ArcStore(store))
        .evidence(MemoryEvidence::new())
        .concurrency(concurrency)
        .poll_interval(Duration::from_millis(20))
        .retries(3, Duration::from_millis(10))
}

fn exporter(profile: Arc<Sleepy>, store: Arc<dyn RunStore>, sink: Arc<dyn Sink>, concurrency: usize) -> Exporter {
    builder(profile, store, sink, concurrency).build().unwrap()
}

fn t(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

/// Submits `request` for `tenant` without project or idempotency key.
async fn submit(ex: &Exporter, tenant: &str, request: RunRequest) -> exportcore::Result<exportcore::engine::Submitted> {
    ex.submit(Submission::new(t(tenant), request)).await
}

/// Lets a test keep a handle on the store it gives the exporter.
#[derive(Debug)]
struct ArcStore(Arc<dyn RunStore>);

#[async_trait::async_trait]
impl RunStore for ArcStore {
    async fn create(
        &self,
        n: exportcore::store::NewRun,
        now: Timestamp,
    ) -> exportcore::Result<exportcore::store::Created> {
        self.0.create(n, now).await
    }
    async fn get(&self, t: &TenantId, id: &RunId) -> exportcore::Result<exportcore::Run> {
        self.0.get(t, id).await
    }
    async fn list(&self, t: &TenantId, f: &RunFilter) -> exportcore::Result<exportcore::store::Page> {
        self.0.list(t, f).await
    }
    async fn claim_next(
        &self,
        now: Timestamp,
        l: &exportcore::Lease,
    ) -> exportcore::Result<Option<exportcore::store::ClaimedRun>> {
        self.0.claim_next(now, l).await
    }
    async fn claim_run(
        &self,
        id: &RunId,
        now: Timestamp,
        l: &exportcore::Lease,
    ) -> exportcore::Result<Option<exportcore::store::ClaimedRun>> {
        self.0.claim_run(id, now, l).await
    }
    async fn renew_lease(&self, id: &RunId, l: &exportcore::Lease) -> exportcore::Result<bool> {
        self.0.renew_lease(id, l).await
    }
    async fn request_cancel(&self, t: &TenantId, id: &RunId) -> exportcore::Result<bool> {
        self.0.request_cancel(t, id).await
    }
    async fn reclaim_expired(
        &self,
        now: Timestamp,
        l: &exportcore::Lease,
    ) -> exportcore::Result<Option<exportcore::Run>> {
        self.0.reclaim_expired(now, l).await
    }
    async fn save(&self, r: &exportcore::Run) -> exportcore::Result<()> {
        self.0.save(r).await
    }
    async fn finish(
        &self,
        r: &exportcore::Run,
        at: Timestamp,
        terminal: &exportcore::RunEvent,
    ) -> exportcore::Result<u64> {
        self.0.finish(r, at, terminal).await
    }
    async fn fail_if_queued(
        &self,
        t: &TenantId,
        id: &RunId,
        e: exportcore::RunError,
        now: Timestamp,
    ) -> exportcore::Result<Option<exportcore::Run>> {
        self.0.fail_if_queued(t, id, e, now).await
    }
    async fn append_events(
        &self,
        id: &RunId,
        l: Option<&exportcore::Lease>,
        at: Timestamp,
        e: &[exportcore::RunEvent],
    ) -> exportcore::Result<u64> {
        self.0.append_events(id, l, at, e).await
    }
    async fn events(
        &self,
        t: &TenantId,
        id: &RunId,
        after: u64,
        limit: usize,
    ) -> exportcore::Result<Vec<exportcore::store::StoredEvent>> {
        self.0.events(t, id, after, limit).await
    }
    async fn due_for_expiry(&self, now: Timestamp, limit: usize) -> exportcore::Result<Vec<exportcore::Run>> {
        self.0.due_for_expiry(now, limit).await
    }
    async fn running(&self) -> exportcore::Result<Vec<exportcore::Run>> {
        self.0.running().await
    }
    async fn sweep_guard(&self) -> exportcore::Result<Option<exportcore::store::SweepGuard>> {
        self.0.sweep_guard().await
    }
    async fn recent_durations(&self, p: &ProfileId, limit: usize) -> exportcore::Result<Vec<f64>> {
        self.0.recent_durations(p, limit).await
    }
    async fn queued_count(&self, t: Option<&TenantId>) -> exportcore::Result<u64> {
        self.0.queued_count(t).await
    }
    async fn purge_idempotency(&self, now: Timestamp) -> exportcore::Result<u64> {
        self.0.purge_idempotency(now).await
    }
    async fn find_idempotent(
        &self,
        t: &TenantId,
        key: &str,
        now: Timestamp,
    ) -> exportcore::Result<Option<(exportcore::Sha256Digest, exportcore::Run)>> {
        self.0.find_idempotent(t, key, now).await
    }
    async fn put_distribution(&self, d: &exportcore::DistributionRecord) -> exportcore::Result<()> {
        self.0.put_distribution(d).await
    }
    async fn get_distribution(&self, t: &TenantId, id: &str) -> exportcore::Result<exportcore::DistributionRecord> {
        self.0.get_distribution(t, id).await
    }
    async fn list_distributions(
        &self,
        t: &TenantId,
        run: Option<&RunId>,
    ) -> exportcore::Result<Vec<exportcore::DistributionRecord>> {
        self.0.list_distributions(t, run).await
    }
    async fn put_profile(&self, p: &exportcore::saved::SavedProfile) -> exportcore::Result<()> {
        self.0.put_profile(p).await
    }
    async fn get_profile(
        &self,
        t: &TenantId,
        name: &str,
        revision: Option<u32>,
    ) -> exportcore::Result<exportcore::saved::SavedProfile> {
        self.0.get_profile(t, name, revision).await
    }
    async fn list_profiles(&self, t: &TenantId) -> exportcore::Result<Vec<exportcore::saved::SavedProfile>> {
        self.0.list_profiles(t).await
    }
}

fn stores() -> Vec<(&'static str, Arc<dyn RunStore>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("runs.sqlite")).unwrap();
    vec![("memory", Arc::new(MemoryStore::new()), None), ("sqlite", Arc::new(sqlite), Some(dir))]
}

fn req(priority: Priority) -> RunRequest {
    let mut r = RunRequest::new(ProfileId::from_static("test:sleepy"));
    r.priority = priority;
    r
}

async fn wait_terminal(ex: &Exporter, tenant: &str, id: &RunId) -> exportcore::Run {
    let events: Vec<_> = ex.events(&t(tenant), id, 0).collect().await;
    assert!(events.iter().all(|e| e.is_ok()), "{events:?}");
    ex.get(&t(tenant), id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_events_and_tenancy() {
    for (name, store, _dir) in stores() {
        let sink = InMemorySink::new();
        let ex = exporter(Arc::new(Sleepy { sleep_ms: 50, ..Default::default() }), store, Arc::new(sink.clone()), 2);
        let accepted = ex.submit(Submission::new(t("t-a"), req(Priority::Normal)).project("proj")).await.unwrap();
        assert_eq!(accepted.status, RunStatus::Queued, "{name}");
        assert!(accepted.estimate_seconds > 0);
        assert_eq!(ex.get(&t("t-a"), &accepted.run_id).await.unwrap().status, RunStatus::Queued);
        let workers = ex.start();
        let events: Vec<_> = ex.events(&t("t-a"), &accepted.run_id, 0).map(|e| e.unwrap()).collect().await;
        let names: Vec<&str> = events.iter().map(|e| e.event.name()).collect();
        assert_eq!(names.first(), Some(&"started"), "{name}: {names:?}");
        assert!(names.contains(&"progress"), "{name}: {names:?}");
        assert_eq!(names.iter().filter(|n| **n == "artifact_ready").count(), 2, "{name}: {names:?}");
        assert_eq!(names.last(), Some(&"completed"));
        assert!(events.windows(2).all(|w| w[1].id == w[0].id + 1), "ids increase by one");
        // Replay from the middle, after completion: the tail only, then the stream ends.
        let tail: Vec<_> = ex.events(&t("t-a"), &accepted.run_id, events[2].id).map(|e| e.unwrap().id).collect().await;
        assert_eq!(tail, events[3..].iter().map(|e| e.id).collect::<Vec<_>>());
        let run = ex.get(&t("t-a"), &accepted.run_id).await.unwrap();
        assert_eq!((run.status, run.progress.percent, run.attempts), (RunStatus::Succeeded, 100, 1));
        assert!(run.started_at.is_some() && run.finished_at.is_some());
        // Artifacts live under the prefix of the run's attempt.
        let prefix = run.run_id.attempt_prefix(1).unwrap();
        let stored = sink.list(Some(&prefix)).await.unwrap();
        assert_eq!(stored.len(), 2, "{name}");
        for o in &run.outputs {
            let path = ex.artifact_path(&run, &o.path).unwrap();
            assert!(stored.iter().any(|m| m.path == path), "{name}: {path} not in the sink");
        }
        // Tenancy: another tenant sees nothing of it.
        assert_eq!(ex.get(&t("t-b"), &run.run_id).await.unwrap_err().code(), "ERR_EXPORT_NOT_FOUND");
        assert!(ex.list(&t("t-b"), &RunFilter::default()).await.unwrap().runs.is_empty());
        let foreign: Vec<_> = ex.events(&t("t-b"), &run.run_id, 0).collect().await;
        assert_eq!(foreign.len(), 1);
        assert_eq!(foreign[0].as_ref().unwrap_err().code(), "ERR_EXPORT_NOT_FOUND");
        assert_eq!(ex.cancel(&t("t-b"), &run.run_id).await.unwrap_err().code(), "ERR_EXPORT_NOT_FOUND");
        assert_eq!(ex.list(&t("t-a"), &RunFilter::default()).await.unwrap().runs.len(), 1);
        // Unknown ids and profiles.
        assert_eq!(
            ex.get(&t("t-a"), &RunId::parse("export-run::t-a::nope").unwrap()).await.unwrap_err().code(),
            "ERR_EXPORT_NOT_FOUND"
        );
        let err = submit(&ex, "t-a", RunRequest::new(ProfileId::from_static("json:nope"))).await.unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_PROFILE_NOT_FOUND");
        workers.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_is_bounded_and_priority_ordered() {
    for (name, store, _dir) in stores() {
        let profile = Arc::new(Sleepy { sleep_ms: 40, ..Default::default() });
        let ex = exporter(Arc::clone(&profile), store, Arc::new(InMemorySink::new()), 3);
        let mut ids = Vec::new();
        for _ in 0..9 {
            ids.push(submit(&ex, "t", req(Priority::Normal)).await.unwrap().run_id);
        }
        ex.run_until_idle().await;
        assert_eq!(profile.max_active.load(Ordering::SeqCst), 3, "{name}: at most 3 at once, and the pool was used");
        for id in &ids {
            assert_eq!(ex.get(&t("t"), id).await.unwrap().status, RunStatus::Succeeded);
        }
        // Priority order with one worker: high, normal, low regardless of submission order.
        let profile = Arc::new(Sleepy { sleep_ms: 0, ..Default::default() });
        let ex = exporter(Arc::clone(&profile), Arc::new(MemoryStore::new()), Arc::new(InMemorySink::new()), 1);
        for p in [Priority::Low, Priority::Normal, Priority::High, Priority::Low, Priority::High] {
            submit(&ex, "t", req(p)).await.unwrap();
        }
        ex.run_until_idle().await;
        assert_eq!(*profile.started.lock().unwrap(), ["High", "High", "Normal", "Low", "Low"], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn low_priority_does_not_starve() {
    let profile = Arc::new(Sleepy { sleep_ms: 20, ..Default::default() });
    let mut profiles = Profiles::new();
    profiles.register(Arc::clone(&profile) as Arc<dyn Profile>);
    let ex = Exporter::builder()
        .profiles(profiles)
        .sink(InMemorySink::new())
        .evidence(MemoryEvidence::new())
        .concurrency(1)
        .priority_aging(Duration::from_millis(150))
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let workers = ex.start();
    let low = submit(&ex, "t", req(Priority::Low)).await.unwrap().run_id;
    // A steady stream of high-priority work that alone would keep the worker busy forever.
    let start = Instant::now();
    let mut submitted_high = 0;
    while start.elapsed() < Duration::from_millis(4000) {
        submit(&ex, "t", req(Priority::High)).await.unwrap();
        submitted_high += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if ex.get(&t("t"), &low).await.unwrap().status != RunStatus::Queued {
            break;
        }
    }
    let waited = start.elapsed();
    assert_ne!(
        ex.get(&t("t"), &low).await.unwrap().status,
        RunStatus::Queued,
        "low-priority run starved ({submitted_high} high runs)"
    );
    // Aging bounds the wait near 2 x 150 ms plus the high runs already ahead; without aging the
    // steady stream of high runs would keep it queued for the whole 4 s.
    assert!(waited < Duration::from_millis(2500), "low run waited {waited:?}");
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys() {
    for (name, store, _dir) in stores() {
        let clock = ManualClock::new(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
        let ex = Exporter::builder()
            .profiles(Profiles::new().with(Sleepy::default()))
            .sink(InMemorySink::new())
            .store(ArcStore(Arc::clone(&store)))
            .evidence(MemoryEvidence::new())
            .clock(clock.clone())
            .idempotency_ttl(Duration::from_secs(3600))
            .build()
            .unwrap();
        let a = ex.submit(Submission::new(t("t"), req(Priority::Normal)).idempotency_key("k")).await.unwrap();
        let b = ex.submit(Submission::new(t("t"), req(Priority::Normal)).idempotency_key("k")).await.unwrap();
        assert_eq!(a.run_id, b.run_id, "{name}");
        assert_eq!(ex.list(&t("t"), &RunFilter::default()).await.unwrap().runs.len(), 1, "no second run");
        let err = ex.submit(Submission::new(t("t"), req(Priority::High)).idempotency_key("k")).await.unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_CONFLICT");
        assert!(err.to_string().contains("different request"), "{err}");
        // Another tenant may use the same key.
        let c = ex.submit(Submission::new(t("other"), req(Priority::Normal)).idempotency_key("k")).await.unwrap();
        assert_ne!(c.run_id, a.run_id);
        // Keys live for their TTL on the engine's clock...
        clock.advance(Duration::from_secs(3599));
        let e = ex.submit(Submission::new(t("t"), req(Priority::Normal)).idempotency_key("k")).await.unwrap();
        assert_eq!(e.run_id, a.run_id, "{name}: the key is still live just before its TTL");
        // ...and then expire.
        clock.advance(Duration::from_secs(1));
        let d = ex.submit(Submission::new(t("t"), req(Priority::High)).idempotency_key("k")).await.unwrap();
        assert_ne!(d.run_id, a.run_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeout_and_cancel() {
    for (name, store, _dir) in stores() {
        let ex = exporter(
            Arc::new(Sleepy { sleep_ms: 5000, ..Default::default() }),
            store,
            Arc::new(InMemorySink::new()),
            2,
        );
        let mut r = req(Priority::Normal);
        r.timeout_seconds = Some(1);
        let timed = submit(&ex, "t", r).await.unwrap().run_id;
        let queued = submit(&ex, "t", req(Priority::Low)).await.unwrap().run_id;
        // Cancel a queued run before any worker starts: it fails at once.
        let c = ex.cancel(&t("t"), &queued).await.unwrap();
        assert_eq!(c.status, RunStatus::Failed);
        assert_eq!(c.errors[0].code, "ERR_EXPORT_CANCELLED");
        let running = submit(&ex, "t", req(Priority::Normal)).await.unwrap().run_id;
        let workers = ex.start();
        // Wait until the third run is running, then cancel it.
        loop {
            if ex.get(&t("t"), &running).await.unwrap().status == RunStatus::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        ex.cancel(&t("t"), &running).await.unwrap();
        let run = wait_terminal(&ex, "t", &running).await;
        assert_eq!(run.errors[0].code, "ERR_EXPORT_CANCELLED", "{name}");
        assert!(started.elapsed() < Duration::from_secs(2), "cancel must be prompt");
        let run = wait_terminal(&ex, "t", &timed).await;
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.errors[0].code, "ERR_EXPORT_TIMEOUT", "{name}: {run:?}");
        let events: Vec<_> = ex.events(&t("t"), &timed, 0).map(|e| e.unwrap()).collect().await;
        match &events.last().unwrap().event {
            exportcore::RunEvent::Failed { code, .. } => assert_eq!(code, "ERR_EXPORT_TIMEOUT"),
            other => panic!("{other:?}"),
        }
        assert!(ex.cancel(&t("t"), &timed).await.is_err(), "finished runs cannot be cancelled");
        workers.shutdown().await;
    }
}

/// A sink that fails the first `fail_puts` puts, and the first `fail_manifests` puts of a
/// run manifest, then delegates.
#[derive(Debug)]
struct Flaky {
    inner: InMemorySink,
    fail_puts: AtomicUsize,
    fail_manifests: AtomicUsize,
}

impl Flaky {
    fn new(fail_puts: usize, fail_manifests: usize) -> Self {
        Self {
            inner: InMemorySink::new(),
            fail_puts: AtomicUsize::new(fail_puts),
            fail_manifests: AtomicUsize::new(fail_manifests),
        }
    }
}

#[async_trait::async_trait]
impl Sink for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn url(&self, p: &exportcore::ArtifactPath) -> String {
        self.inner.url(p)
    }
    async fn put(&self, p: &exportcore::ArtifactPath, body: ByteStream) -> exportcore::Result<PutReceipt> {
        let counter = if p.as_str().ends_with("manifest.json") && self.fail_manifests.load(Ordering::SeqCst) > 0 {
            &self.fail_manifests
        } else {
            &self.fail_puts
        };
        if counter.load(Ordering::SeqCst) > 0 {
            counter.fetch_sub(1, Ordering::SeqCst);
            return Err(ExportError::DistributionFailed { target: "flaky".into(), source: "connection reset".into() });
        }
        self.inner.put(p, body).await
    }
    async fn get(&self, p: &exportcore::ArtifactPath) -> exportcore::Result<ByteStream> {
        self.inner.get(p).await
    }
    async fn list(&self, p: Option<&exportcore::ArtifactPath>) -> exportcore::Result<Vec<ObjectMeta>> {
        self.inner.list(p).await
    }
    async fn delete(&self, p: &exportcore::ArtifactPath) -> exportcore::Result<()> {
        self.inner.delete(p).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_retry_with_backoff() {
    for (name, store, _dir) in stores() {
        let flaky = Arc::new(Flaky::new(2, 0));
        let ex = exporter(Arc::new(Sleepy::default()), Arc::clone(&store), flaky.clone(), 1);
        let id = submit(&ex, "t", req(Priority::Normal)).await.unwrap().run_id;
        ex.run_until_idle().await;
        let run = ex.get(&t("t"), &id).await.unwrap();
        assert_eq!((run.status, run.attempts), (RunStatus::Succeeded, 3), "{name}: {:?}", run.errors);
        assert_eq!(flaky.inner.snapshot().len(), 2);
        // Always failing: gives up after the attempts, with the distribution code.
        let broken = Arc::new(Flaky::new(usize::MAX, 0));
        let ex = exporter(Arc::new(Sleepy::default()), Arc::clone(&store), broken.clone(), 1);
        let id = submit(&ex, "t", req(Priority::Normal)).await.unwrap().run_id;
        ex.run_until_idle().await;
        let run = ex.get(&t("t"), &id).await.unwrap();
        assert_eq!((run.status, run.attempts), (RunStatus::Failed, 3));
        assert_eq!(run.errors[0].code, "ERR_EXPORT_DISTRIBUTION_FAILED");
        assert!(broken.inner.snapshot().is_empty());
        // Exactly one terminal event despite three attempts.
        let events: Vec<_> = ex.events(&t("t"), &id, 0).map(|e| e.unwrap().event.name()).collect().await;
        assert_eq!(events.iter().filter(|n| **n == "failed").count(), 1, "{events:?}");
        assert_eq!(events.iter().filter(|n| **n == "started").count(), 3, "{events:?}");
        assert!(!events.contains(&"artifact_ready"), "a failed run announced downloads: {events:?}");
        // The first attempt publishes its data, then its manifest fails: it rolls back, and
        // only the attempt that commits announces its artifacts (`artifact_ready` means
        // downloadable), all of them just before `completed`.
        let late = Arc::new(Flaky::new(0, 1));
        let ex = exporter(Arc::new(Sleepy::default()), Arc::clone(&store), late.clone(), 1);
        let id = submit(&ex, "t", req(Priority::Normal)).await.unwrap().run_id;
        ex.run_until_idle().await;
        let run = ex.get(&t("t"), &id).await.unwrap();
        assert_eq!((run.status, run.attempts), (RunStatus::Succeeded, 2), "{name}: {:?}", run.errors);
        let events: Vec<_> = ex.events(&t("t"), &id, 0).map(|e| e.unwrap().event.name()).collect().await;
        let ready = events.iter().filter(|n| **n == "artifact_ready").count();
        assert_eq!(ready, run.outputs.len(), "{name}: one announcement per output: {events:?}");
        let tail = &events[events.len() - ready - 1..];
        assert!(tail[..ready].iter().all(|n| *n == "artifact_ready") && tail[ready] == "completed", "{events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn estimates_and_rate_limit() {
    let ex = Exporter::builder()
        .profiles(Profiles::new().with(Sleepy { sleep_ms: 1100, ..Default::default() }))
        .sink(InMemorySink::new())
        .evidence(MemoryEvidence::new())
        .max_queued(2)
        .build()
        .unwrap();
    let first = submit(&ex, "t", req(Priority::Normal)).await.unwrap();
    assert_eq!(first.estimate_seconds, 30, "no history: the default estimate");
    ex.run_until_idle().await;
    let second = submit(&ex, "t", req(Priority::Normal)).await.unwrap();
    assert!((1..=3).contains(&second.estimate_seconds), "from the last run's ~1.1 s: {}", second.estimate_seconds);
    submit(&ex, "t", req(Priority::Normal)).await.unwrap();
    let err = submit(&ex, "t", req(Priority::Normal)).await.unwrap_err();
    assert_eq!(err.code(), "ERR_EXPORT_RATE_LIMIT");
    match err {
        ExportError::RateLimit { retry_after_secs } => assert!(retry_after_secs >= 1),
        other => panic!("{other:?}"),
    }
}

/// One tenant at its share of the queue is refused while another still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_at_its_queue_share_does_not_keep_others_out() {
    for (name, store, _dir) in stores() {
        let ex = Exporter::builder()
            .profiles(Profiles::new().with(Sleepy::default()))
            .sink(InMemorySink::new())
            .evidence(MemoryEvidence::new())
            .store_arc(store)
            .max_queued(10)
            .max_queued_per_tenant(3)
            .build()
            .unwrap();
        let keyed = || Submission::new(t("greedy"), req(Priority::High)).idempotency_key("retry-me");
        let first = ex.submit(keyed()).await.unwrap();
        for _ in 0..2 {
            submit(&ex, "greedy", req(Priority::High)).await.unwrap();
        }
        let err = submit(&ex, "greedy", req(Priority::High)).await.unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_RATE_LIMIT", "{name}");
        // A retry of an accepted request gets its run, though its tenant's queue is full.
        let again = ex.submit(keyed()).await.unwrap_or_else(|e| panic!("{name}: {}", e.report()));
        assert_eq!(again.run_id, first.run_id, "{name}");
        // The same key with another request is still a conflict.
        let other = Submission::new(t("greedy"), req(Priority::Low)).idempotency_key("retry-me");
        assert_eq!(ex.submit(other).await.unwrap_err().code(), "ERR_EXPORT_CONFLICT", "{name}");
        submit(&ex, "polite", req(Priority::Normal)).await.expect("another tenant still gets in");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_expires_runs_and_deletes_artifacts() {
    for (name, store, _dir) in stores() {
        let sink = InMemorySink::new();
        let start = Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
        let clock = ManualClock::new(start);
        let ex = builder(Arc::new(Sleepy::default()), store, Arc::new(sink.clone()), 1)
            .clock(clock.clone())
            .build()
            .unwrap();
        let mut r = req(Priority::Normal);
        r.retention_days = Some(1);
        let id = submit(&ex, "t", r).await.unwrap().run_id;
        let keep = submit(&ex, "t", req(Priority::Normal)).await.unwrap().run_id;
        ex.run_until_idle().await;
        let run = ex.get(&t("t"), &id).await.unwrap();
        let exp = run.expires_at.expect("expiresAt set from retentionDays");
        assert_eq!(exp, start.plus_days(1), "{name}: retention counts from the engine clock at finish");
        assert!(run.outputs.iter().all(|o| o.expires_at == Some(exp)));
        assert_eq!(sink.snapshot().len(), 4);
        // A late file of a dead attempt (a worker that lost its lease, after the takeover
        // cleared its directory): not an output, gone with the run all the same.
        let orphan = id.attempt_prefix(7).unwrap().join("late.json").unwrap();
        sink.put_bytes(&orphan, "{}".into()).await.unwrap();
        // Not yet due, one second before.
        clock.advance(Duration::from_secs(24 * 3600 - 1));
        let report = ex.sweep_now().await.unwrap();
        assert_eq!(report.expired, 0, "{name}");
        clock.advance(Duration::from_secs(2));
        let report = ex.sweep_now().await.unwrap();
        assert_eq!((report.expired, report.artifacts_deleted), (1, 2), "{name}");
        assert_eq!(ex.get(&t("t"), &id).await.unwrap().status, RunStatus::Expired);
        assert_eq!(ex.get(&t("t"), &keep).await.unwrap().status, RunStatus::Succeeded);
        let left: Vec<String> = sink.snapshot().into_iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(left.len(), 2);
        let keep_prefix = format!("{}/", keep.sink_prefix().unwrap());
        assert!(left.iter().all(|p| p.starts_with(&keep_prefix)), "{left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interrupted_runs_are_reported_failed_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.sqlite");
    let id = {
        let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(&path).unwrap());
        let ex = exporter(Arc::new(Sleepy::default()), Arc::clone(&store), Arc::new(InMemorySink::new()), 1);
        let id = submit(&ex, "t", req(Priority::Normal)).await.unwrap().run_id;
        // A worker claims it and then the process "dies" before finishing.
        let lease = exportcore::Lease::new(Timestamp::now().plus_days(1));
        let claimed = store.claim_next(Timestamp::now(), &lease).await.unwrap().unwrap();
        assert_eq!(claimed.run.run_id, id);
        id
    };
    // What the dead process had published, and a put it was in the middle of; another run's
    // output beside it.
    let data = dir.path().join("data");
    let own = data.join(id.sink_prefix().unwrap().as_str());
    std::fs::create_dir_all(own.join("mirror")).unwrap();
    std::fs::write(own.join("mirror/export.json"), b"{}").unwrap();
    std::fs::write(own.join("mirror/.exportcore-tmp-0123"), b"half").unwrap();
    std::fs::create_dir_all(data.join("runs/other")).unwrap();
    std::fs::write(data.join("runs/other/manifest.json"), b"{}").unwrap();
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let ex = exporter(Arc::new(Sleepy::default()), store, Arc::new(exportcore::FsSink::new(&data).unwrap()), 1);
    assert_eq!(ex.recover_interrupted().await.unwrap(), vec![id.clone()]);
    let run = ex.get(&t("t"), &id).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.errors[0].code, "ERR_EXPORT_INTERRUPTED");
    assert!(!own.exists(), "the interrupted run's partial output and temporary file are gone");
    assert!(data.join("runs/other/manifest.json").exists(), "another run's output stays");
    let events: Vec<_> = ex.events(&t("t"), &id, 0).map(|e| e.unwrap().event.name()).collect().await;
    assert_eq!(events, ["failed"]);
    assert!(ex.recover_interrupted().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_follow_a_live_run() {
    let ex = exporter(
        Arc::new(Sleepy { sleep_ms: 300, ..Default::default() }),
        Arc::new(MemoryStore::new()),
        Arc::new(InMemorySink::new()),
        1,
    );
    let id = submit(&ex, "t", req(Priority::Normal)).await.unwrap().run_id;
    // Subscribe before any worker runs: the stream must wait, then follow, then end.
    let stream = ex.events(&t("t"), &id, 0);
    let collector = tokio::spawn(async move { stream.map(|e| e.unwrap().event.name()).collect::<Vec<_>>().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!collector.is_finished());
    let workers = ex.start();
    let names = tokio::time::timeout(Duration::from_secs(10), collector).await.unwrap().unwrap();
    assert_eq!(names.first(), Some(&"started"));
    assert_eq!(names.last(), Some(&"completed"));
    assert!(names.iter().filter(|n| **n == "progress").count() >= 3, "{names:?}");
    workers.shutdown().await;
}

#[tokio::test]
async fn builder_reports_missing_parts() {
    let err = Exporter::builder().evidence(MemoryEvidence::new()).build().unwrap_err();
    assert!(err.to_string().contains("sink"), "{err}");
    let err = Exporter::builder().sink(InMemorySink::new()).build().unwrap_err();
    assert!(err.to_string().contains("evidence"), "{err}");
    let sink = InMemorySink::new();
    sink.put_bytes(&"x".parse().unwrap(), "y".into()).await.unwrap();
}

/// Polls until `f` holds (at most 10 s).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_longer_than_its_lease_keeps_it_and_no_other_engine_takes_it() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let sink = Arc::new(InMemorySink::new());
    let slow = Arc::new(Sleepy { sleep_ms: 5000, ..Default::default() });
    let a =
        builder(slow.clone(), Arc::clone(&store), sink.clone(), 1).lease_ttl(Duration::from_secs(2)).build().unwrap();
    let b = builder(slow, Arc::clone(&store), sink.clone(), 1).lease_ttl(Duration::from_secs(2)).build().unwrap();
    let id = submit(&a, "t", req(Priority::Normal)).await.unwrap().run_id;
    let (wa, wb) = (a.start(), b.start());
    eventually("the run to finish", async || a.get(&t("t"), &id).await.unwrap().status.is_terminal()).await;
    let run = a.get(&t("t"), &id).await.unwrap();
    assert_eq!((run.status, run.attempts), (RunStatus::Succeeded, 1), "renewed three times over, never taken: {run:?}");
    let events: Vec<_> = a.events(&t("t"), &id, 0).map(|e| e.unwrap().event.name()).collect().await;
    assert_eq!(events.iter().filter(|e| **e == "started").count(), 1, "{events:?}");
    wa.shutdown().await;
    wb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_lease_is_taken_stops_and_writes_nothing_more() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let sink = Arc::new(InMemorySink::new());
    let slow = Arc::new(Sleepy { sleep_ms: 4000, ..Default::default() });
    let a =
        builder(slow.clone(), Arc::clone(&store), sink.clone(), 1).lease_ttl(Duration::from_secs(2)).build().unwrap();
    let id = submit(&a, "t", req(Priority::Normal)).await.unwrap().run_id;
    let wa = a.start();
    eventually("the run to start", async || a.get(&t("t"), &id).await.unwrap().status == RunStatus::Running).await;
    // Another node decides A is gone (a clock jump, a partition) and takes the run over.
    let thief = exportcore::Lease::new(Timestamp::now().plus_days(1));
    let taken = store.reclaim_expired(Timestamp::now().plus_days(2), &thief).await.unwrap().expect("running");
    assert_eq!(taken.run_id, id);
    let events_at_theft = store.events(&t("t"), &id, 0, 1000).await.unwrap().len();
    // A notices at its next renewal, stops, and writes nothing: no event, no progress, no file.
    eventually("A to let go", async || slow.active.load(Ordering::SeqCst) == 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = store.get(&t("t"), &id).await.unwrap();
    assert_eq!(run.status, RunStatus::Running, "still the thief's");
    assert_eq!(store.events(&t("t"), &id, 0, 1000).await.unwrap().len(), events_at_theft, "A appended nothing more");
    assert!(sink.snapshot().is_empty(), "A published nothing: {:?}", sink.snapshot().len());
    // The new holder requeues it; A's engine runs it to the end as a fresh attempt.
    let mut requeued = taken;
    requeued.status = RunStatus::Queued;
    store.save(&requeued).await.unwrap();
    eventually("the second attempt", async || a.get(&t("t"), &id).await.unwrap().status.is_terminal()).await;
    let run = a.get(&t("t"), &id).await.unwrap();
    assert_eq!((run.status, run.attempts), (RunStatus::Succeeded, 2), "{run:?}");
    let names: Vec<_> = a.events(&t("t"), &id, 0).map(|e| e.unwrap().event.name()).collect().await;
    assert_eq!(names.iter().filter(|e| **e == "completed" || **e == "failed").count(), 1, "{names:?}");
    wa.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_of_a_dead_worker_are_requeued_then_failed_when_attempts_are_spent() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    let sink = Arc::new(InMemorySink::new());
    let ex = builder(Arc::new(Sleepy::default()), Arc::clone(&store), sink.clone(), 1)
        .clock(clock.clone())
        .retries(2, Duration::from_millis(10))
        .lease_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let id = submit(&ex, "t", req(Priority::Normal)).await.unwrap().run_id;
    // A worker claims it (a 10 s lease), publishes part of it and dies.
    let dead = |clock: &ManualClock| exportcore::Lease::new(Timestamp::from_unix(clock.now().unix() + 10).unwrap());
    use exportcore::engine::Clock as _;
    store.claim_next(clock.now(), &dead(&clock)).await.unwrap().unwrap();
    let part = id.attempt_prefix(1).unwrap().join("part.json").unwrap();
    sink.put_bytes(&part, "{}".into()).await.unwrap();
    assert!(ex.reclaim_expired().await.unwrap().is_empty(), "the lease has not lapsed yet");
    assert_eq!(sink.snapshot().len(), 1, "a live worker's output stays");
    clock.advance(Duration::from_secs(10));
    assert_eq!(ex.reclaim_expired().await.unwrap(), vec![id.clone()]);
    assert_eq!(ex.get(&t("t"), &id).await.unwrap().status, RunStatus::Queued, "attempt 1 of 2: back to the queue");
    assert!(sink.snapshot().is_empty(), "the next attempt starts from an empty prefix");
    // Claimed again (attempt 2, under its own prefix); the worker of attempt 1, still alive
    // somewhere, lands a late file under its own prefix: neither touches the other's.
    store.claim_next(clock.now(), &dead(&clock)).await.unwrap().unwrap();
    let second = id.attempt_prefix(2).unwrap().join("part.json").unwrap();
    sink.put_bytes(&second, "{}".into()).await.unwrap();
    sink.put_bytes(&part, "late".into()).await.unwrap();
    clock.advance(Duration::from_secs(11));
    assert_eq!(ex.reclaim_expired().await.unwrap(), vec![id.clone()]);
    let run = ex.get(&t("t"), &id).await.unwrap();
    assert_eq!((run.status, run.attempts), (RunStatus::Failed, 2));
    assert_eq!(run.errors[0].code, "ERR_EXPORT_INTERRUPTED");
    // The takeover of attempt 2 deleted attempt 2's files only.
    let left: Vec<String> = sink.snapshot().into_iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(left, [part.to_string()]);
    let names: Vec<_> = ex.events(&t("t"), &id, 0).map(|e| e.unwrap().event.name()).collect().await;
    assert_eq!(names, ["failed"]);
}

/// A local run (`exportctl run`: its own evidence and output) is never taken by another
/// engine's workers, and when its process dies it fails instead of going back to the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_run_is_never_run_by_another_engine() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    let other = builder(Arc::new(Sleepy::default()), Arc::clone(&store), Arc::new(InMemorySink::new()), 1)
        .clock(clock.clone())
        .retries(3, Duration::from_millis(10))
        .lease_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let id = other.submit(Submission::new(t("t"), req(Priority::Normal)).local()).await.unwrap().run_id;
    assert!(other.get(&t("t"), &id).await.unwrap().local);
    use exportcore::engine::Clock as _;
    let lease = exportcore::Lease::new(Timestamp::from_unix(clock.now().unix() + 10).unwrap());
    assert!(store.claim_next(clock.now(), &lease).await.unwrap().is_none(), "the queue never hands it out");
    // Its own process claims it by id, then dies.
    store.claim_run(&id, clock.now(), &lease).await.unwrap().expect("claimed by id");
    clock.advance(Duration::from_secs(11));
    assert_eq!(other.reclaim_expired().await.unwrap(), vec![id.clone()]);
    let run = other.get(&t("t"), &id).await.unwrap();
    assert_eq!((run.status, run.attempts), (RunStatus::Failed, 1), "attempts remained, yet not requeued");
    assert_eq!(run.errors[0].code, "ERR_EXPORT_INTERRUPTED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_sent_to_another_engine_reaches_the_worker_at_its_next_renewal() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let sink = Arc::new(InMemorySink::new());
    let slow = Arc::new(Sleepy { sleep_ms: 20_000, ..Default::default() });
    let worker =
        builder(slow.clone(), Arc::clone(&store), sink.clone(), 1).lease_ttl(Duration::from_secs(2)).build().unwrap();
    // An API-only node: same store, never started.
    let api = builder(slow, Arc::clone(&store), sink.clone(), 1).build().unwrap();
    let id = submit(&api, "t", req(Priority::Normal)).await.unwrap().run_id;
    let w = worker.start();
    eventually("the run to start", async || api.get(&t("t"), &id).await.unwrap().status == RunStatus::Running).await;
    let asked = Instant::now();
    assert_eq!(api.cancel(&t("t"), &id).await.unwrap().status, RunStatus::Running, "accepted, still running");
    eventually("the cancel to land", async || api.get(&t("t"), &id).await.unwrap().status.is_terminal()).await;
    assert!(asked.elapsed() < Duration::from_secs(5), "within a renewal or two: {:?}", asked.elapsed());
    let run = api.get(&t("t"), &id).await.unwrap();
    assert_eq!((run.status, run.errors[0].code.as_str()), (RunStatus::Failed, "ERR_EXPORT_CANCELLED"));
    assert!(sink.snapshot().is_empty(), "a cancelled run publishes nothing");
    let err = api.cancel(&t("t"), &id).await.unwrap_err();
    assert_eq!(err.code(), "ERR_EXPORT_REQUEST_INVALID", "a finished run: {err}");
    w.shutdown().await;
}

/// A cancel asked while no worker holds the run (its worker died; the run is between a
/// takeover and its requeue) is kept by the store, and the next attempt honours it at its
/// claim, not a third of the lease TTL later: a short run cannot finish `succeeded` after the
/// cancel was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_asked_during_a_takeover_stops_the_next_attempt() {
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    let ex = builder(
        Arc::new(Sleepy { sleep_ms: 50, ..Default::default() }),
        Arc::clone(&store),
        Arc::new(InMemorySink::new()),
        1,
    )
    .clock(clock.clone())
    .retries(3, Duration::from_millis(10))
    .lease_ttl(Duration::from_secs(60))
    .build()
    .unwrap();
    let id = submit(&ex, "t", req(Priority::Normal)).await.unwrap().run_id;
    use exportcore::engine::Clock as _;
    let dead = exportcore::Lease::new(Timestamp::from_unix(clock.now().unix() + 10).unwrap());
    store.claim_next(clock.now(), &dead).await.unwrap().unwrap();
    // Asked through this engine, which does not run it: recorded in the store (202).
    let asked = ex.cancel(&t("t"), &id).await.unwrap();
    assert_eq!(asked.status, RunStatus::Running);
    clock.advance(Duration::from_secs(11));
    assert_eq!(ex.reclaim_expired().await.unwrap(), vec![id.clone()]);
    assert_eq!(ex.get(&t("t"), &id).await.unwrap().status, RunStatus::Queued);
    ex.run_until_idle().await;
    let run = ex.get(&t("t"), &id).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    assert_eq!(run.errors.last().unwrap().code, "ERR_EXPORT_CANCELLED");
}
