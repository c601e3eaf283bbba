//! The export center: an [`Exporter`] accepts runs, keeps them in a [`RunStore`], runs them on
//! a bounded worker pool in priority order, streams their events, retries transient failures,
//! enforces timeouts and retention, and never lets one tenant see another's runs.
//!
//! ```
//! use exportcore::engine::Exporter;
//! use exportcore::{InMemorySink, MemoryEvidence, RunRequest, RunStatus};
//! use futures::StreamExt;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # #[derive(Debug)] struct Hello;
//! # impl exportcore::Profile for Hello {
//! #     fn descriptor(&self) -> exportcore::ProfileDescriptor { exportcore::ProfileDescriptor { id: "hello:txt".into(), description: "hello".into(), targets: vec![], formats: vec![] } }
//! #     fn validate(&self, _: &RunRequest) -> exportcore::Result<()> { Ok(()) }
//! #     fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
//! #         ctx.write_artifact(exportcore::ArtifactSpec::new("hello.txt", exportcore::ArtifactType::Data, "text", "text/plain")?, |w| w.write_all(b"hi").map_err(|e| exportcore::ExportError::io("hello.txt", e)))?; Ok(())
//! #     }
//! # }
//! let exporter = Exporter::builder()
//!     .profiles(exportcore::Profiles::new().with(Hello))
//!     .sink(InMemorySink::new())
//!     .evidence(MemoryEvidence::new())
//!     .build()?;
//! let workers = exporter.start();
//! let accepted = exporter.submit("tenant-a", None, RunRequest::new("hello:txt"), Some("key-1")).await?;
//! let events: Vec<_> = exporter.events("tenant-a", &accepted.run_id, 0).collect().await;
//! assert_eq!(events.last().unwrap().as_ref().unwrap().event.name(), "completed");
//! assert_eq!(exporter.get("tenant-a", &accepted.run_id).await?.status, RunStatus::Succeeded);
//! workers.shutdown().await;
//! # Ok::<(), exportcore::ExportError>(())
//! # }).unwrap();
//! ```

use crate::error::{ExportError, Result};
use crate::evidence::EvidenceSource;
use crate::hashing::Sha256Digest;
use crate::manifest::TimeAnchor;
use crate::model::{Limits, Priority, Run, RunError, RunEvent, RunRequest, RunStatus, Timestamp};
use crate::path::ArtifactPath;
use crate::profile::{CancelFlag, Profiles};
use crate::run::{execute, new_run_id, EventFn, RunOptions};
use crate::sign::Signer;
use crate::sink::Sink;
use crate::store::{ClaimedRun, Created, IdempotencyKey, MemoryStore, NewRun, Page, RunFilter, RunStore, StoredEvent};
use futures::stream::{BoxStream, StreamExt};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};
use tracing::Instrument;

/// Resolves the evidence of a tenant (and project).
pub type EvidenceResolver = Arc<dyn Fn(&str, Option<&str>) -> Result<Arc<dyn EvidenceSource>> + Send + Sync>;
/// Resolves a request's `distribution.signing.keyRef` to a signer.
pub type SignerResolver = Arc<dyn Fn(&str) -> Result<Arc<dyn Signer>> + Send + Sync>;

/// The `202 Accepted` body of a submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Submitted {
    /// The run (the first one, when an idempotency key matched).
    pub run_id: String,
    /// Its status now.
    pub status: RunStatus,
    /// Expected seconds until it finishes, from recent runs of the same profile.
    pub estimate_seconds: u64,
    /// Set only when the caller should come back later.
    pub retry_after: Option<u64>,
}

/// What a retention sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    /// Runs marked expired.
    pub expired: usize,
    /// Artifacts deleted from the sink.
    pub artifacts_deleted: usize,
    /// Idempotency keys dropped.
    pub keys_purged: u64,
}

/// Builds an [`Exporter`]. Profiles, a sink and an evidence source are required.
#[derive(Clone)]
pub struct ExporterBuilder {
    profiles: Profiles,
    sink: Option<Arc<dyn Sink>>,
    store: Arc<dyn RunStore>,
    evidence: Option<EvidenceResolver>,
    signers: Option<SignerResolver>,
    limits: Limits,
    concurrency: usize,
    max_queued: u64,
    default_timeout: Duration,
    profile_timeouts: HashMap<String, Duration>,
    idempotency_ttl: Duration,
    priority_aging: Duration,
    max_attempts: u32,
    retry_base: Duration,
    per_run_prefix: bool,
    staging_dir: Option<std::path::PathBuf>,
    pinned_time: Option<TimeAnchor>,
    poll_interval: Duration,
    sweep_interval: Duration,
}

impl std::fmt::Debug for ExporterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterBuilder").field("concurrency", &self.concurrency).field("store", &self.store).finish()
    }
}

impl Default for ExporterBuilder {
    fn default() -> Self {
        Self {
            profiles: Profiles::new(),
            sink: None,
            store: Arc::new(MemoryStore::new()),
            evidence: None,
            signers: None,
            limits: Limits::default(),
            concurrency: 2,
            max_queued: 1000,
            default_timeout: Limits::default().default_timeout,
            profile_timeouts: HashMap::new(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            priority_aging: Duration::from_secs(60),
            max_attempts: 3,
            retry_base: Duration::from_millis(500),
            per_run_prefix: true,
            staging_dir: None,
            pinned_time: None,
            poll_interval: Duration::from_millis(500),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

impl ExporterBuilder {
    /// The profiles runs may name.
    pub fn profiles(mut self, profiles: Profiles) -> Self {
        self.profiles = profiles;
        self
    }
    /// Where artifacts go.
    pub fn sink(mut self, sink: impl Sink) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }
    /// Where artifacts go (shared).
    pub fn sink_arc(mut self, sink: Arc<dyn Sink>) -> Self {
        self.sink = Some(sink);
        self
    }
    /// Where runs are kept (default: a [`MemoryStore`]).
    pub fn store(mut self, store: impl RunStore) -> Self {
        self.store = Arc::new(store);
        self
    }
    /// One evidence source for every tenant.
    pub fn evidence(mut self, source: impl EvidenceSource) -> Self {
        let source: Arc<dyn EvidenceSource> = Arc::new(source);
        self.evidence = Some(Arc::new(move |_, _| Ok(Arc::clone(&source))));
        self
    }
    /// Evidence per tenant and project.
    pub fn evidence_resolver(mut self, resolver: EvidenceResolver) -> Self {
        self.evidence = Some(resolver);
        self
    }
    /// Resolves `keyRef`s of signing requests.
    pub fn signer_resolver(mut self, resolver: SignerResolver) -> Self {
        self.signers = Some(resolver);
        self
    }
    /// Request limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.default_timeout = limits.default_timeout;
        self.limits = limits;
        self
    }
    /// Runs executed at once (default 2).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Queued runs accepted before submissions get `ERR_EXPORT_RATE_LIMIT` (default 1000).
    pub fn max_queued(mut self, n: u64) -> Self {
        self.max_queued = n.max(1);
        self
    }
    /// Timeout of runs whose request and profile set none (default 60 minutes).
    pub fn default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = d;
        self
    }
    /// Timeout of one profile's runs (a request's `timeoutSeconds` still wins).
    pub fn profile_timeout(mut self, profile_id: impl Into<String>, d: Duration) -> Self {
        self.profile_timeouts.insert(profile_id.into(), d);
        self
    }
    /// How long idempotency keys live (default 24 hours).
    pub fn idempotency_ttl(mut self, d: Duration) -> Self {
        self.idempotency_ttl = d;
        self
    }
    /// Queue aging: a run of one priority class lower waits at most this much longer than
    /// one of a higher class submitted at the same time, so nothing starves (default 60 s).
    pub fn priority_aging(mut self, d: Duration) -> Self {
        self.priority_aging = d;
        self
    }
    /// Attempts per run for transient failures, and the first backoff (doubles, with jitter).
    pub fn retries(mut self, max_attempts: u32, base_delay: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.retry_base = base_delay;
        self
    }
    /// Publish each run under `runs/<run id>/` (default) or at the sink root (one-shot CLIs).
    pub fn per_run_prefix(mut self, on: bool) -> Self {
        self.per_run_prefix = on;
        self
    }
    /// Where staging directories go (default: the system temp dir).
    pub fn staging_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.staging_dir = Some(dir.into());
        self
    }
    /// A pinned time for runs whose request has no `createdAt` (e.g. `SOURCE_DATE_EPOCH`).
    pub fn pinned_time(mut self, anchor: Option<TimeAnchor>) -> Self {
        self.pinned_time = anchor;
        self
    }
    /// How often idle workers look for work queued by other processes (default 500 ms).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    /// How often the retention sweep runs while started (default 60 s).
    pub fn sweep_interval(mut self, d: Duration) -> Self {
        self.sweep_interval = d;
        self
    }

    /// The exporter.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming the missing part (sink, evidence).
    pub fn build(self) -> Result<Exporter> {
        let sink = self.sink.clone().ok_or_else(|| ExportError::invalid("sink", "an exporter needs a sink"))?;
        let evidence = self
            .evidence
            .clone()
            .ok_or_else(|| ExportError::invalid("evidence", "an exporter needs an evidence source"))?;
        let (events_tx, _) = watch::channel(0u64);
        Ok(Exporter {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(self.concurrency)),
                sink,
                evidence,
                cfg: self,
                wake: Notify::new(),
                events_tx,
                cancels: Mutex::new(HashMap::new()),
            }),
        })
    }
}

struct Inner {
    cfg: ExporterBuilder,
    sink: Arc<dyn Sink>,
    evidence: EvidenceResolver,
    semaphore: Arc<Semaphore>,
    wake: Notify,
    /// Bumped on every stored event; event streams wait on it.
    events_tx: watch::Sender<u64>,
    cancels: Mutex<HashMap<String, CancelFlag>>,
}

/// The export center engine. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Exporter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("cfg", &self.inner.cfg).finish()
    }
}

/// Handle of started workers; [`WorkerHandle::shutdown`] stops taking new runs and waits for
/// the running ones.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// Stops the dispatcher and waits for running runs to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn priority_index(p: Priority) -> i64 {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

fn millis(t: Timestamp) -> i64 {
    (t.as_offset_date_time().unix_timestamp_nanos() / 1_000_000) as i64
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_unix(t.unix().saturating_add(d.as_secs() as i64)).unwrap_or(t)
}

fn is_terminal_event(e: &RunEvent) -> bool {
    matches!(e, RunEvent::Completed { .. } | RunEvent::Failed { .. })
}

/// The sink prefix of a run's artifacts: `runs/<run id with unsafe characters replaced>`.
pub fn run_prefix(run_id: &str) -> Result<ArtifactPath> {
    let safe: String =
        run_id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    ArtifactPath::parse(format!("runs/{safe}"))
}

impl Exporter {
    /// A builder.
    pub fn builder() -> ExporterBuilder {
        ExporterBuilder::default()
    }

    /// The registered profiles.
    pub fn profiles(&self) -> &Profiles {
        &self.inner.cfg.profiles
    }

    /// The run store.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.inner.cfg.store
    }

    /// Accepts a run: validates the request against the limits and its profile, applies the
    /// idempotency key, queues it.
    ///
    /// # Errors
    /// `ERR_EXPORT_PROFILE_NOT_FOUND`, `ERR_EXPORT_REQUEST_INVALID` (also for an idempotency
    /// key reused with a different request), `ERR_EXPORT_RATE_LIMIT` when the queue is full.
    pub async fn submit(
        &self,
        tenant: &str,
        project: Option<&str>,
        request: RunRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Submitted> {
        let cfg = &self.inner.cfg;
        if tenant.trim().is_empty() {
            return Err(ExportError::invalid("tenant", "must not be empty"));
        }
        request.validate(&cfg.limits)?;
        let profile = cfg.profiles.get(&request.profile_id)?;
        profile.validate(&request)?;
        if request.signing_enabled() && cfg.signers.is_none() {
            return Err(ExportError::invalid("distribution.signing", "this exporter has no signing keys configured"));
        }
        let now = Timestamp::now();
        let hash_input = serde_json::json!({"project": project, "request": request});
        let request_hash = Sha256Digest::of(&crate::canonical::to_vec(&hash_input).unwrap_or_default());
        let queued = cfg.store.queued_count().await?;
        let avg = self.average_duration(&request.profile_id).await?;
        if queued >= cfg.max_queued {
            let retry_after = (avg / cfg.concurrency as f64).ceil().max(1.0) as u64;
            return Err(ExportError::RateLimit { retry_after_secs: retry_after });
        }
        let run = Run::queued(new_run_id(tenant), tenant, project.map(str::to_owned), &request.profile_id, now);
        let rank = millis(now) + priority_index(request.priority) * cfg.priority_aging.as_millis() as i64;
        let idempotency =
            idempotency_key.map(|k| IdempotencyKey { key: k.to_owned(), expires_at: plus(now, cfg.idempotency_ttl) });
        if idempotency_key.is_some_and(|k| k.is_empty() || k.len() > 256) {
            return Err(ExportError::invalid("Idempotency-Key", "must be 1 to 256 characters"));
        }
        let created = cfg.store.create(NewRun { run, request, request_hash, rank, idempotency }, now).await?;
        if let Created::New(_) = created {
            self.inner.wake.notify_one();
        }
        let run = created.run();
        let estimate = if run.status.is_terminal() {
            0
        } else {
            (avg * (1.0 + queued as f64 / cfg.concurrency as f64)).ceil() as u64
        };
        Ok(Submitted { run_id: run.run_id.clone(), status: run.status, estimate_seconds: estimate, retry_after: None })
    }

    async fn average_duration(&self, profile_id: &str) -> Result<f64> {
        let recent = self.inner.cfg.store.recent_durations(profile_id, 20).await?;
        Ok(if recent.is_empty() { 30.0 } else { recent.iter().sum::<f64>() / recent.len() as f64 })
    }

    /// A run of `tenant`.
    pub async fn get(&self, tenant: &str, run_id: &str) -> Result<Run> {
        self.inner.cfg.store.get(tenant, run_id).await
    }

    /// Runs of `tenant`, newest first, filtered and paged.
    pub async fn list(&self, tenant: &str, filter: &RunFilter) -> Result<Page> {
        self.inner.cfg.store.list(tenant, filter).await
    }

    /// The events of a run of `tenant` after event id `after`: stored ones first, then live
    /// ones as they happen; the stream ends after `completed` or `failed`. A foreign or
    /// unknown run yields one `ERR_EXPORT_NOT_FOUND` error.
    pub fn events(&self, tenant: &str, run_id: &str, after: u64) -> BoxStream<'static, Result<StoredEvent>> {
        struct State {
            this: Exporter,
            tenant: String,
            run_id: String,
            after: u64,
            buf: VecDeque<StoredEvent>,
            done: bool,
            /// The run is terminal: end once the buffer is drained.
            done_after_buffer: bool,
            rx: watch::Receiver<u64>,
        }
        let st = State {
            rx: self.inner.events_tx.subscribe(),
            this: self.clone(),
            tenant: tenant.to_owned(),
            run_id: run_id.to_owned(),
            after,
            buf: VecDeque::new(),
            done: false,
            done_after_buffer: false,
        };
        futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(ev) = st.buf.pop_front() {
                    st.after = ev.id;
                    if is_terminal_event(&ev.event) {
                        st.done = true;
                        st.buf.clear();
                    }
                    return Some((Ok(ev), st));
                }
                if st.done || st.done_after_buffer {
                    return None;
                }
                let store = &st.this.inner.cfg.store;
                st.rx.borrow_and_update();
                match store.events(&st.tenant, &st.run_id, st.after, 256).await {
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    Ok(evs) if !evs.is_empty() => {
                        st.buf.extend(evs);
                        continue;
                    }
                    Ok(_) => {}
                }
                // Nothing new: finished runs end the stream, live ones wait.
                match store.get(&st.tenant, &st.run_id).await {
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    Ok(run) if run.status.is_terminal() => {
                        // The engine saves the final status just before it appends the terminal
                        // event: give that event a moment to land, so the stream ends on it.
                        // (A process that died in between never appends it; then we end anyway.)
                        let mut tail = Vec::new();
                        for _ in 0..40 {
                            tail = store.events(&st.tenant, &st.run_id, st.after, 256).await.unwrap_or_default();
                            if tail.iter().any(|e| is_terminal_event(&e.event)) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                        if tail.is_empty() {
                            return None;
                        }
                        st.buf.extend(tail);
                        st.done_after_buffer = true;
                        continue;
                    }
                    Ok(_) => {}
                }
                let poll = st.this.inner.cfg.poll_interval;
                let _ = tokio::time::timeout(poll, st.rx.changed()).await;
            }
        })
        .boxed()
    }

    /// Cancels a run of `tenant`: a queued run fails at once, a running one (in this process)
    /// fails with `ERR_EXPORT_CANCELLED` as soon as its profile notices.
    pub async fn cancel(&self, tenant: &str, run_id: &str) -> Result<Run> {
        let store = &self.inner.cfg.store;
        let err = RunError::from(&ExportError::Cancelled);
        if let Some(run) = store.fail_if_queued(tenant, run_id, err.clone(), Timestamp::now()).await? {
            self.append(run_id, RunEvent::Failed { run_id: run_id.into(), code: err.code, message: err.message }).await;
            return Ok(run);
        }
        let run = store.get(tenant, run_id).await?;
        if run.status.is_terminal() {
            return Err(ExportError::invalid("runId", format!("run {run_id} already {}", run.status)));
        }
        // A run claimed a moment ago may not have registered its flag yet: look again briefly.
        for _ in 0..20 {
            let flag = self.inner.cancels.lock().unwrap_or_else(|p| p.into_inner()).get(run_id).cloned();
            if let Some(f) = flag {
                f.cancel();
                return Ok(run);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(ExportError::invalid("runId", format!("run {run_id} is running in another process")))
    }

    /// Marks runs left `running` by a process that died as failed (`ERR_EXPORT_INTERRUPTED`).
    /// Call it once at start-up, while no other engine uses the store.
    pub async fn recover_interrupted(&self) -> Result<Vec<String>> {
        let ids = recover_interrupted(&*self.inner.cfg.store).await?;
        self.inner.events_tx.send_modify(|n| *n += 1);
        Ok(ids)
    }

    /// Expires runs whose retention has elapsed and deletes their artifacts; drops lapsed
    /// idempotency keys.
    pub async fn sweep(&self, now: Timestamp) -> Result<SweepReport> {
        let cfg = &self.inner.cfg;
        let mut report = SweepReport::default();
        loop {
            let due = cfg.store.due_for_expiry(now, 100).await?;
            if due.is_empty() {
                break;
            }
            for mut run in due {
                for o in &run.outputs {
                    let path = self.artifact_path(&run.run_id, &o.path)?;
                    self.inner.sink.delete(&path).await?;
                    report.artifacts_deleted += 1;
                }
                run.status = RunStatus::Expired;
                cfg.store.save(&run).await?;
                metrics::counter!("exporter_runs_expired_total", "profile" => run.profile_id.clone()).increment(1);
                report.expired += 1;
            }
        }
        report.keys_purged = cfg.store.purge_idempotency(now).await?;
        Ok(report)
    }

    fn artifact_path(&self, run_id: &str, rel: &str) -> Result<ArtifactPath> {
        if self.inner.cfg.per_run_prefix {
            run_prefix(run_id)?.join(rel)
        } else {
            ArtifactPath::parse(rel)
        }
    }

    /// Starts the dispatcher (bounded worker pool) and the retention sweeper.
    pub fn start(&self) -> WorkerHandle {
        let (stop, mut stop_rx) = watch::channel(false);
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            let mut next_sweep = tokio::time::Instant::now();
            loop {
                if *stop_rx.borrow() {
                    break;
                }
                if tokio::time::Instant::now() >= next_sweep {
                    if let Err(e) = this.sweep(Timestamp::now()).await {
                        tracing::warn!(error = %e.report(), "retention sweep failed");
                    }
                    next_sweep = tokio::time::Instant::now() + this.inner.cfg.sweep_interval;
                }
                this.fill_slots(&mut running).await;
                while running.try_join_next().is_some() {}
                tokio::select! {
                    _ = this.inner.wake.notified() => {}
                    _ = tokio::time::sleep(this.inner.cfg.poll_interval) => {}
                    _ = stop_rx.changed() => {}
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
            while running.join_next().await.is_some() {}
        });
        WorkerHandle { stop, task }
    }

    async fn fill_slots(&self, running: &mut tokio::task::JoinSet<()>) {
        while let Ok(permit) = Arc::clone(&self.inner.semaphore).try_acquire_owned() {
            match self.inner.cfg.store.claim_next(Timestamp::now()).await {
                Ok(Some(claimed)) => {
                    let cancel = self.register_cancel(&claimed.run.run_id);
                    let this = self.clone();
                    running.spawn(async move {
                        this.run_claimed(claimed, cancel).await;
                        drop(permit);
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e.report(), "claiming a run failed");
                    break;
                }
            }
        }
    }

    /// Runs queued work until the queue is empty and every started run has finished
    /// (one-shot callers such as a CLI; servers use [`Exporter::start`]).
    pub async fn run_until_idle(&self) {
        let mut running = tokio::task::JoinSet::new();
        loop {
            self.fill_slots(&mut running).await;
            if running.join_next().await.is_none() {
                break;
            }
        }
    }

    /// Runs one queued run of `tenant` now, on the calling task, outside the pool (one-shot
    /// callers such as a CLI, which must not pick up other queued work). Returns the final
    /// record; a run that is no longer queued is returned as it is.
    pub async fn execute_now(&self, tenant: &str, run_id: &str) -> Result<Run> {
        let store = &self.inner.cfg.store;
        store.get(tenant, run_id).await?;
        if let Some(claimed) = store.claim_run(run_id, Timestamp::now()).await? {
            let cancel = self.register_cancel(run_id);
            self.run_claimed(claimed, cancel).await;
        }
        // Transient failures requeue the run; keep going until it is final.
        loop {
            let run = store.get(tenant, run_id).await?;
            if run.status != RunStatus::Queued {
                return Ok(run);
            }
            match store.claim_run(run_id, Timestamp::now()).await? {
                Some(claimed) => {
                    let cancel = self.register_cancel(run_id);
                    self.run_claimed(claimed, cancel).await
                }
                None => return store.get(tenant, run_id).await,
            }
        }
    }

    async fn append(&self, run_id: &str, event: RunEvent) {
        match self.inner.cfg.store.append_event(run_id, Timestamp::now(), &event).await {
            Ok(id) => {
                self.inner.events_tx.send_replace(id);
            }
            Err(e) => tracing::error!(run_id, error = %e.report(), "storing an event failed"),
        }
    }

    /// The cancel flag of a claimed run, registered before its task starts so `cancel` finds it.
    fn register_cancel(&self, run_id: &str) -> CancelFlag {
        let flag = CancelFlag::new();
        self.inner.cancels.lock().unwrap_or_else(|p| p.into_inner()).insert(run_id.to_owned(), flag.clone());
        flag
    }

    async fn run_claimed(&self, claimed: ClaimedRun, cancel: CancelFlag) {
        let span = tracing::info_span!("export_run", run_id = %claimed.run.run_id, tenant = %claimed.run.tenant,
            profile = %claimed.run.profile_id, attempt = claimed.run.attempts);
        self.run_claimed_inner(claimed, cancel).instrument(span).await;
    }

    async fn run_claimed_inner(&self, claimed: ClaimedRun, cancel: CancelFlag) {
        let cfg = &self.inner.cfg;
        let ClaimedRun { mut run, request } = claimed;
        let run_id = run.run_id.clone();
        let timeout = request
            .timeout_seconds
            .map(Duration::from_secs)
            .or_else(|| cfg.profile_timeouts.get(&request.profile_id).copied())
            .unwrap_or(cfg.default_timeout);
        let timer = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                cancel.time_out(timeout.as_secs());
            })
        };
        tracing::info!("run started");
        let outcome = self.attempt(&run, &request, cancel).await;
        timer.abort();
        self.inner.cancels.lock().unwrap_or_else(|p| p.into_inner()).remove(&run_id);

        let failed_code = match &outcome {
            Ok(r) => r.errors.first().map(|e| e.code.clone()),
            Err(e) => Some(e.code().to_owned()),
        };
        // Transient failures go back to the queue with exponential backoff and jitter.
        let transient =
            matches!(failed_code.as_deref(), Some("ERR_EXPORT_DISTRIBUTION_FAILED" | "ERR_EXPORT_RATE_LIMIT"));
        if transient && run.attempts < cfg.max_attempts {
            let backoff = cfg.retry_base.mul_f64(2f64.powi(run.attempts as i32 - 1));
            let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
            metrics::counter!("exporter_run_retries_total", "profile" => run.profile_id.clone()).increment(1);
            tracing::warn!(
                code = failed_code.as_deref().unwrap_or(""),
                attempt = run.attempts,
                ?backoff,
                "transient failure, retrying"
            );
            tokio::time::sleep(backoff + jitter).await;
            run.status = RunStatus::Queued;
            if let Err(e) = cfg.store.save(&run).await {
                tracing::error!(error = %e.report(), "requeue failed");
            }
            self.inner.wake.notify_one();
            return;
        }
        let now = Timestamp::now();
        match outcome {
            Ok(r) => {
                run.status = r.status;
                run.progress = r.progress;
                run.outputs = r.outputs;
                run.errors = r.errors;
                run.warnings = r.warnings;
                run.finished_at = r.finished_at;
                run.expires_at = r.expires_at;
            }
            Err(e) => {
                run.status = RunStatus::Failed;
                run.finished_at = Some(now);
                run.errors.push(RunError::from(&e));
            }
        }
        if let Err(e) = cfg.store.save(&run).await {
            tracing::error!(error = %e.report(), "saving the finished run failed");
        }
        let profile = run.profile_id.clone();
        let secs = run.started_at.zip(run.finished_at).map_or(0.0, |(a, b)| crate::store::seconds_between(a, b));
        metrics::histogram!("exporter_run_duration_seconds", "profile" => profile.clone()).record(secs);
        metrics::counter!("exporter_runs_total", "profile" => profile.clone(), "status" => run.status.as_str())
            .increment(1);
        let bytes: u64 = run.outputs.iter().map(|o| o.size).sum();
        metrics::counter!("exporter_run_bytes_total", "profile" => profile.clone()).increment(bytes);
        let terminal = match run.errors.first() {
            None => RunEvent::Completed { run_id: run_id.clone(), status: run.status },
            Some(e) => {
                metrics::counter!("exporter_run_failures_total", "profile" => profile, "error_code" => e.code.clone())
                    .increment(1);
                RunEvent::Failed { run_id: run_id.clone(), code: e.code.clone(), message: e.message.clone() }
            }
        };
        tracing::info!(status = %run.status, seconds = secs, bytes, "run finished");
        self.append(&run_id, terminal).await;
    }

    /// One attempt: resolve evidence and signer, execute, persist events as they come.
    async fn attempt(&self, run: &Run, request: &RunRequest, cancel: CancelFlag) -> Result<Run> {
        let cfg = &self.inner.cfg;
        let profile = cfg.profiles.get(&request.profile_id)?;
        let evidence = (self.inner.evidence)(&run.tenant, run.project.as_deref())?;
        let signer = match (request.signing_enabled(), &cfg.signers) {
            (true, Some(resolve)) => {
                let key_ref = request
                    .distribution
                    .as_ref()
                    .and_then(|d| d.signing.as_ref())
                    .and_then(|s| s.key_ref.clone())
                    .ok_or_else(|| {
                        ExportError::invalid("distribution.signing.keyRef", "required when signing is enabled")
                    })?;
                Some(resolve(&key_ref)?)
            }
            _ => None,
        };
        let prefix = if cfg.per_run_prefix { Some(run_prefix(&run.run_id)?) } else { None };
        let options = RunOptions {
            tenant: run.tenant.clone(),
            project: run.project.clone(),
            run_id: Some(run.run_id.clone()),
            pinned_time: cfg.pinned_time,
            staging_dir: cfg.staging_dir.clone(),
            cancel,
            signer,
            prefix,
        };
        // Events reach the store in order through a channel; terminal events are written by
        // the caller once retries are decided.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RunEvent>();
        let on_event: EventFn = Arc::new(move |e: &RunEvent| {
            let _ = tx.send(e.clone());
        });
        let writer = {
            let this = self.clone();
            let mut record = run.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    if is_terminal_event(&ev) {
                        continue;
                    }
                    if let RunEvent::Progress { progress, .. } = &ev {
                        record.progress = *progress;
                        if let Err(e) = this.inner.cfg.store.save(&record).await {
                            tracing::warn!(error = %e.report(), "saving progress failed");
                        }
                    }
                    this.append(&record.run_id, ev).await;
                }
            })
        };
        let result = execute(profile, evidence, Arc::clone(&self.inner.sink), request.clone(), options, on_event).await;
        let _ = writer.await;
        Ok(result)
    }
}

/// Marks runs left `running` by a process that died as failed (`ERR_EXPORT_INTERRUPTED`) and
/// appends their `failed` event. Only call it while no engine is running on `store`.
pub async fn recover_interrupted(store: &dyn RunStore) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for mut run in store.running().await? {
        let err = ExportError::Interrupted { reason: "the process running it stopped before it finished".into() };
        run.status = RunStatus::Failed;
        run.finished_at = Some(Timestamp::now());
        run.errors.push(RunError::from(&err));
        store.save(&run).await?;
        let ev = RunEvent::Failed { run_id: run.run_id.clone(), code: err.code().into(), message: err.report() };
        store.append_event(&run.run_id, Timestamp::now(), &ev).await?;
        metrics::counter!("exporter_runs_total", "profile" => run.profile_id.clone(), "status" => "failed")
            .increment(1);
        ids.push(run.run_id);
    }
    Ok(ids)
}
