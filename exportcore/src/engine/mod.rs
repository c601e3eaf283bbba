//! The export center: an [`Exporter`] accepts runs, keeps them in a [`RunStore`], runs them on
//! a bounded worker pool in priority order, streams their events, retries transient failures,
//! enforces timeouts and retention, and never lets one tenant see another's runs.
//!
//! A run's artifacts are published under `runs/<run id>/attempt-<n>/` of the sink
//! ([`RunId::attempt_prefix`]: each attempt its own, so a worker that lost its lease never
//! touches the files of the attempt that took over; turn prefixes off with
//! [`ExporterBuilder::per_run_prefix`]); [`Exporter::artifact_path`] maps an output to its
//! sink path.
//!
//! ```
//! use exportcore::engine::{Exporter, Submission};
//! use exportcore::{InMemorySink, MemoryEvidence, RunRequest, RunStatus, TenantId};
//! use futures::StreamExt;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # #[derive(Debug)] struct Hello;
//! # impl exportcore::Profile for Hello {
//! #     fn descriptor(&self) -> exportcore::ProfileDescriptor { exportcore::ProfileDescriptor::new("hello:txt", "hello") }
//! #     fn validate(&self, _: &RunRequest) -> exportcore::Result<()> { Ok(()) }
//! #     fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
//! #         use exportcore::IoContext; ctx.time_anchor(None);
//! #         ctx.write_artifact(exportcore::ArtifactSpec::new("hello.txt", exportcore::ArtifactType::Data, "text", "text/plain")?, |w| w.write_all(b"hi").at("hello.txt"))?; Ok(())
//! #     }
//! # }
//! let exporter = Exporter::builder()
//!     .profiles(exportcore::Profiles::new().with(Hello))
//!     .sink(InMemorySink::new())
//!     .evidence(MemoryEvidence::new())
//!     .build()?;
//! let workers = exporter.start();
//! let tenant = TenantId::parse("tenant-a")?;
//! let request = RunRequest::builder("hello:txt").build()?;
//! let accepted = exporter.submit(Submission::new(tenant.clone(), request).idempotency_key("key-1")).await?;
//! let events: Vec<_> = exporter.events(&tenant, &accepted.run_id, 0).collect().await;
//! assert_eq!(events.last().unwrap().as_ref().unwrap().event.name(), "completed");
//! assert_eq!(exporter.get(&tenant, &accepted.run_id).await?.status, RunStatus::Succeeded);
//! workers.shutdown().await;
//! # Ok::<(), exportcore::ExportError>(())
//! # }).unwrap();
//! ```

mod builder;
mod clock;
mod dispatch;
mod events;
mod retention;

pub use builder::ExporterBuilder;
pub use clock::{Clock, ManualClock, SystemClock};
pub use dispatch::WorkerHandle;
pub use retention::SweepReport;

use crate::error::{ExportError, Result};
use crate::evidence::EvidenceSource;
use crate::hashing::Sha256Digest;
use crate::id::{RunId, TenantId};
use crate::model::{Priority, Run, RunError, RunEvent, RunRequest, RunStatus, Timestamp};
use crate::path::ArtifactPath;
use crate::profile::{CancelFlag, Profiles};
use crate::saved::{ProfileSpec, SavedProfile};
use crate::sign::Signer;
use crate::sink::Sink;
use crate::store::{Created, IdempotencyKey, NewRun, Page, RunFilter, RunStore};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Notify, Semaphore};

/// Resolves the evidence of a tenant (and project).
pub type EvidenceResolver = Arc<dyn Fn(&TenantId, Option<&str>) -> Result<Arc<dyn EvidenceSource>> + Send + Sync>;
/// Resolves a request's `distribution.signing.keyRef` to a signer, for a tenant: a server
/// decides which keys each tenant may sign with (an unknown or foreign name is an error the
/// client sees at submission).
pub type SignerResolver = Arc<dyn Fn(&TenantId, &str) -> Result<Arc<dyn Signer>> + Send + Sync>;

/// A run to submit: tenant and request, optionally a project and an idempotency key.
#[derive(Clone, Debug)]
#[must_use]
pub struct Submission {
    tenant: TenantId,
    project: Option<String>,
    request: RunRequest,
    idempotency_key: Option<String>,
    local: bool,
}

impl Submission {
    /// `request` for `tenant`.
    pub fn new(tenant: TenantId, request: RunRequest) -> Self {
        Self { tenant, project: None, request, idempotency_key: None, local: false }
    }
    /// Only the submitting process executes the run ([`Exporter::execute_now`]): other
    /// engines sharing the store never claim it, and it fails rather than being requeued when
    /// this process stops ([`crate::Run::local`]).
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }
    /// The project within the tenant.
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }
    /// The caller's `Idempotency-Key`: a repeat with the same key and request returns the
    /// first run instead of queuing another.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// The `202 Accepted` body of a submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Submitted {
    /// The run (the first one, when an idempotency key matched).
    pub run_id: RunId,
    /// Its status now.
    pub status: RunStatus,
    /// Expected seconds until it finishes, from recent runs of the same profile.
    pub estimate_seconds: u64,
    /// Set only when the caller should come back later.
    pub retry_after: Option<u64>,
}

struct Inner {
    cfg: ExporterBuilder,
    sink: Arc<dyn Sink>,
    evidence: EvidenceResolver,
    semaphore: Arc<Semaphore>,
    wake: Notify,
    /// The run of every stored event; an event stream wakes only for its own run (and polls
    /// the store now and then for events other processes stored).
    events_tx: tokio::sync::broadcast::Sender<RunId>,
    /// Cancel flags of the runs this process has claimed. Claims and cancels hold the lock
    /// across their store calls, so a cancel never falls between a claim and its flag.
    cancels: tokio::sync::Mutex<HashMap<RunId, CancelFlag>>,
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

    /// The sink runs publish to.
    pub fn sink(&self) -> &Arc<dyn Sink> {
        &self.inner.sink
    }

    fn now(&self) -> Timestamp {
        self.inner.cfg.clock.now()
    }

    /// Accepts a run: validates the request against the limits and its profile, refuses what
    /// this build does not implement, applies the idempotency key, queues it.
    ///
    /// # Errors
    /// `ERR_EXPORT_PROFILE_NOT_FOUND`, `ERR_EXPORT_REQUEST_INVALID` (also for an idempotency
    /// key reused with a different request), `ERR_EXPORT_NOT_SUPPORTED` for request fields this
    /// build does not implement, `ERR_EXPORT_RATE_LIMIT` when the queue is full.
    pub async fn submit(&self, submission: Submission) -> Result<Submitted> {
        let Submission { tenant, project, request, idempotency_key, local } = submission;
        let cfg = &self.inner.cfg;
        request.validate(&cfg.limits)?;
        let hash_input = serde_json::json!({"project": project, "request": request});
        let request_hash = Sha256Digest::of(&crate::canonical::to_vec(&hash_input).unwrap_or_default());
        let (request, saved) = if crate::saved::is_saved_id(request.profile_id.as_str()) {
            let saved = self.saved_profile(&tenant, request.profile_id.as_str()).await?;
            let applied = saved.apply(request)?;
            applied.validate(&cfg.limits)?;
            (applied, Some(crate::model::SavedProfileRef { id: saved.id, revision: saved.revision }))
        } else {
            (request, None)
        };
        let profile = cfg.profiles.get(&request.profile_id)?;
        crate::run::check_implemented(&request, &tenant, &profile.descriptor(), &cfg.distributors)?;
        profile.validate(&request)?;
        if request.signing_enabled() {
            // Resolved now too, so a key the tenant may not use is a 400 at submission, not a
            // failed run later.
            resolve_signer(cfg.signers.as_ref(), &tenant, &request)?;
        }
        if idempotency_key.as_deref().is_some_and(|k| k.is_empty() || k.len() > 256) {
            return Err(ExportError::invalid("Idempotency-Key", "must be 1 to 256 characters"));
        }
        let now = self.now();
        let queued = cfg.store.queued_count(None).await?;
        let avg = self.average_duration(&request).await?;
        let estimate = |run: &Run| {
            if run.status.is_terminal() {
                0
            } else {
                (avg * (1.0 + queued as f64 / cfg.concurrency as f64)).ceil() as u64
            }
        };
        // A retry of an accepted request gets its run before any queue limit applies (its own
        // first submission may be what fills the queue).
        if let Some(key) = idempotency_key.as_deref() {
            if let Some((hash, run)) = cfg.store.find_idempotent(&tenant, key, now).await? {
                if hash != request_hash {
                    return Err(ExportError::Conflict {
                        what: "Idempotency-Key".into(),
                        reason: format!("key {key:?} was used for a different request (run {})", run.run_id),
                    });
                }
                let estimate_seconds = estimate(&run);
                return Ok(Submitted { run_id: run.run_id, status: run.status, estimate_seconds, retry_after: None });
            }
        }
        let retry_after = (avg / cfg.concurrency as f64).ceil().max(1.0) as u64;
        if queued >= cfg.max_queued {
            return Err(ExportError::RateLimit { retry_after_secs: retry_after });
        }
        // One tenant may hold only its share of the queue: the others still get in.
        if cfg.store.queued_count(Some(&tenant)).await? >= cfg.max_queued_per_tenant {
            return Err(ExportError::RateLimit { retry_after_secs: retry_after });
        }
        let mut run = Run::queued(RunId::generate(&tenant), tenant, project, request.profile_id.clone(), now);
        run.saved_profile = saved;
        run.local = local;
        let rank = if local {
            crate::store::LOCAL_RANK
        } else {
            millis(now) + priority_index(request.priority) * cfg.priority_aging.as_millis() as i64
        };
        let idempotency =
            idempotency_key.map(|key| IdempotencyKey { key, expires_at: clock::plus(now, cfg.idempotency_ttl) });
        let created = cfg.store.create(NewRun { run, request, request_hash, rank, idempotency }, now).await?;
        if let Created::New(_) = created {
            self.inner.wake.notify_one();
        }
        let run = created.run();
        Ok(Submitted {
            run_id: run.run_id.clone(),
            status: run.status,
            estimate_seconds: estimate(run),
            retry_after: None,
        })
    }

    async fn average_duration(&self, request: &RunRequest) -> Result<f64> {
        let recent = self.inner.cfg.store.recent_durations(&request.profile_id, 20).await?;
        Ok(if recent.is_empty() { 30.0 } else { recent.iter().sum::<f64>() / recent.len() as f64 })
    }

    fn check_spec(&self, tenant: &TenantId, spec: &ProfileSpec) -> Result<()> {
        spec.validate_shape()?;
        let request = spec.as_request()?;
        request.validate(&self.inner.cfg.limits)?;
        let profile = self.inner.cfg.profiles.get(&request.profile_id)?;
        crate::run::check_implemented(&request, tenant, &profile.descriptor(), &self.inner.cfg.distributors)?;
        profile.validate(&request)
    }

    /// Saves a new profile of `tenant` (revision 1).
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` for a spec no run could use (unknown `kind:variant` is
    /// `ERR_EXPORT_PROFILE_NOT_FOUND`); `ERR_EXPORT_CONFLICT` when the name exists.
    pub async fn create_profile(&self, tenant: &TenantId, spec: ProfileSpec) -> Result<SavedProfile> {
        self.check_spec(tenant, &spec)?;
        let store = &self.inner.cfg.store;
        match store.get_profile(tenant, &spec.name, None).await {
            Ok(p) => {
                return Err(ExportError::Conflict {
                    what: format!("profile {}", p.id),
                    reason: format!("it exists (revision {}); update it instead", p.revision),
                })
            }
            Err(ExportError::ProfileNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let saved = SavedProfile::new(tenant, spec, 1, self.now())?;
        store.put_profile(&saved).await?;
        Ok(saved)
    }

    /// Stores the next revision of the saved profile `id` of `tenant`; earlier revisions stay
    /// as they were.
    ///
    /// # Errors
    /// As [`Exporter::create_profile`]; `ERR_EXPORT_PROFILE_NOT_FOUND` for an unknown or foreign
    /// id; `ERR_EXPORT_REQUEST_INVALID` when the spec renames the profile; `ERR_EXPORT_CONFLICT`
    /// when another update stored the same revision first.
    pub async fn update_profile(&self, tenant: &TenantId, id: &str, spec: ProfileSpec) -> Result<SavedProfile> {
        let current = self.saved_profile(tenant, id).await?;
        if spec.name != current.spec.name {
            return Err(ExportError::invalid("name", format!("{:?} does not match the profile id {id}", spec.name)));
        }
        self.check_spec(tenant, &spec)?;
        let saved = SavedProfile::new(tenant, spec, current.revision + 1, self.now())?;
        self.inner.cfg.store.put_profile(&saved).await?;
        Ok(saved)
    }

    /// The latest revision of the saved profile `id` (`export-profile::<tenant>::<name>`) of
    /// `tenant`; another tenant's id is `ERR_EXPORT_PROFILE_NOT_FOUND`.
    pub async fn saved_profile(&self, tenant: &TenantId, id: &str) -> Result<SavedProfile> {
        let name =
            crate::saved::name_in(tenant, id).ok_or_else(|| ExportError::ProfileNotFound { profile: id.into() })?;
        self.inner.cfg.store.get_profile(tenant, &name, None).await
    }

    /// The latest revision of each saved profile of `tenant`.
    pub async fn saved_profiles(&self, tenant: &TenantId) -> Result<Vec<SavedProfile>> {
        self.inner.cfg.store.list_profiles(tenant).await
    }

    /// A run of `tenant`.
    pub async fn get(&self, tenant: &TenantId, run_id: &RunId) -> Result<Run> {
        self.inner.cfg.store.get(tenant, run_id).await
    }

    /// Runs of `tenant`, newest first, filtered and paged.
    pub async fn list(&self, tenant: &TenantId, filter: &RunFilter) -> Result<Page> {
        self.inner.cfg.store.list(tenant, filter).await
    }

    /// Cancels a run of `tenant`: a queued run fails at once; a running one fails with
    /// `ERR_EXPORT_CANCELLED` as soon as its profile notices, at once when this process runs
    /// it, else at its worker's next lease renewal (a third of the lease TTL at most).
    ///
    /// # Errors
    /// `ERR_EXPORT_NOT_FOUND` for a foreign or unknown run; `ERR_EXPORT_REQUEST_INVALID` for a
    /// finished run.
    pub async fn cancel(&self, tenant: &TenantId, run_id: &RunId) -> Result<Run> {
        let store = &self.inner.cfg.store;
        let cancels = self.inner.cancels.lock().await;
        let err = RunError::from(&ExportError::Cancelled);
        if let Some(run) = store.fail_if_queued(tenant, run_id, err, self.now()).await? {
            let _ = self.inner.events_tx.send(run_id.clone());
            return Ok(run);
        }
        let run = store.get(tenant, run_id).await?;
        if run.status.is_terminal() {
            return Err(ExportError::invalid("runId", format!("run {run_id} already {}", run.status)));
        }
        match cancels.get(run_id) {
            Some(flag) => {
                flag.cancel();
                Ok(run)
            }
            // Running in another process: its worker sees the request at its next renewal.
            None if store.request_cancel(tenant, run_id).await? => Ok(run),
            None => Err(ExportError::invalid("runId", format!("run {run_id} changed state meanwhile; ask again"))),
        }
    }

    /// Marks runs left `running` by a process that died as failed (`ERR_EXPORT_INTERRUPTED`)
    /// and, with per-run prefixes (the default), deletes what they had put in the sink, the
    /// temporary files of interrupted puts included ([`Sink::delete_prefix`]). Call it once at
    /// start-up, while no other engine uses the store.
    pub async fn recover_interrupted(&self) -> Result<Vec<RunId>> {
        let ids = recover_interrupted(&*self.inner.cfg.store, &*self.inner.cfg.clock).await?;
        for id in &ids {
            // No other engine runs now: every attempt's leftovers go.
            self.discard_partial_outputs(id, None).await;
            let _ = self.inner.events_tx.send(id.clone());
        }
        Ok(ids)
    }

    /// Deletes what a run whose worker died left under its sink prefix: attempt `attempt`'s
    /// prefix (a takeover: that worker may still be writing there, and only there), or the
    /// whole run's (`None`, recovery at start-up, when no other engine runs). Nothing without
    /// per-run prefixes: runs then share the sink's root, which its owner clears (`exportctl
    /// run` refuses a non-empty `--out`). A failure is logged, not returned: the run's record
    /// matters more than its leftovers.
    pub(crate) async fn discard_partial_outputs(&self, run_id: &RunId, attempt: Option<u32>) {
        if !self.inner.cfg.per_run_prefix {
            return;
        }
        let prefix = match attempt {
            Some(n) => run_id.attempt_prefix(n),
            None => run_id.sink_prefix(),
        };
        let Ok(prefix) = prefix else { return };
        match self.inner.sink.delete_prefix(&prefix).await {
            Ok(0) => {}
            Ok(files) => tracing::warn!(%run_id, files, "deleted the partial outputs of an interrupted run"),
            Err(e) => tracing::warn!(%run_id, error = %e.report(), "deleting an interrupted run's outputs failed"),
        }
    }

    /// Where the output `rel` of `run` (its last attempt, the one that published its
    /// outputs) lives in the sink.
    pub fn artifact_path(&self, run: &Run, rel: &ArtifactPath) -> Result<ArtifactPath> {
        if self.inner.cfg.per_run_prefix {
            run.run_id.attempt_prefix(run.attempts)?.join(rel.as_str())
        } else {
            Ok(rel.clone())
        }
    }
}

/// The signer a signing request names (`distribution.signing.keyRef`), for `tenant`.
pub(crate) fn resolve_signer(
    resolver: Option<&SignerResolver>,
    tenant: &TenantId,
    request: &RunRequest,
) -> Result<Arc<dyn Signer>> {
    let resolve = resolver
        .ok_or_else(|| ExportError::invalid("distribution.signing", "this exporter has no signing keys configured"))?;
    let key_ref = request
        .signing_key_ref()
        .ok_or_else(|| ExportError::invalid("distribution.signing.keyRef", "required when signing is enabled"))?;
    resolve(tenant, key_ref)
}

/// Marks runs left `running` by a process that died as failed (`ERR_EXPORT_INTERRUPTED`) and
/// appends their `failed` event, one atomic [`RunStore::finish`] each. Only call it while no
/// engine is running on `store`.
pub async fn recover_interrupted(store: &dyn RunStore, clock: &dyn Clock) -> Result<Vec<RunId>> {
    let mut ids = Vec::new();
    // Every running run is orphaned here, whatever its lease says: take each over as if its
    // lease had lapsed at the end of time.
    let end_of_time = Timestamp::parse("9999-12-31T23:59:59Z").map_err(|e| ExportError::internal("clock", e))?;
    let lease = crate::model::Lease::new(end_of_time);
    while let Some(mut run) = store.reclaim_expired(end_of_time, &lease).await? {
        let err = ExportError::Interrupted { reason: "the process running it stopped before it finished".into() };
        let now = clock.now();
        run.status = RunStatus::Failed;
        run.finished_at = Some(now);
        run.errors.push(RunError::from(&err));
        let ev = RunEvent::Failed { run_id: run.run_id.clone(), code: err.code().into(), message: err.report() };
        store.finish(&run, now, &ev).await?;
        metrics::counter!("exporter_runs_total", "profile_kind" => run.profile_id.to_string(), "status" => "failed")
            .increment(1);
        ids.push(run.run_id);
    }
    Ok(ids)
}

/// Shared by the engine modules' unit tests: a one-artifact profile and an exporter on a
/// manual clock.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::error::IoContext;
    use crate::profile::{ArtifactSpec, ExportContext, Profile, ProfileDescriptor};

    #[derive(Debug)]
    pub(crate) struct Hello;

    impl Profile for Hello {
        fn descriptor(&self) -> ProfileDescriptor {
            ProfileDescriptor::new("hello:txt", "says hello")
        }
        fn validate(&self, _: &RunRequest) -> Result<()> {
            Ok(())
        }
        fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
            ctx.time_anchor(None);
            let spec = ArtifactSpec::new("hello.txt", crate::ArtifactType::Data, "text", "text/plain")?;
            ctx.write_artifact(spec, |w| w.write_all(b"hello\n").at("hello.txt"))?;
            Ok(())
        }
    }

    pub(crate) fn t0() -> Timestamp {
        Timestamp::parse("2025-01-01T00:00:00Z").unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) fn exporter(clock: &ManualClock) -> (Exporter, crate::InMemorySink) {
        let sink = crate::InMemorySink::new();
        let exporter = Exporter::builder()
            .profiles(Profiles::new().with(Hello))
            .sink(sink.clone())
            .evidence(crate::MemoryEvidence::new())
            .clock(clock.clone())
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        (exporter, sink)
    }

    pub(crate) fn request(retention_days: Option<u32>) -> RunRequest {
        let mut r = RunRequest::new(crate::ProfileId::from_static("hello:txt"));
        r.retention_days = retention_days;
        r
    }

    pub(crate) fn tenant() -> TenantId {
        TenantId::from_static("t")
    }
}
