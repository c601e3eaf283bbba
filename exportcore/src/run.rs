//! Executing one run: validate, let the profile stage its artifacts, write the run manifest,
//! publish everything to the sink (manifest last), and produce the run record and events.
//!
//! Nothing reaches the sink before the profile has finished successfully; every published
//! artifact is checked against the digest computed while staging; if publishing fails half
//! way, what was already published for this run is deleted again. A reader that sees
//! `manifest.json` therefore sees a complete run.
//!
//! ```
//! # use exportcore::*;
//! # #[derive(Debug)] struct Hello;
//! # impl Profile for Hello {
//! #     fn descriptor(&self) -> ProfileDescriptor { ProfileDescriptor::new("hello:txt", "says hello") }
//! #     fn validate(&self, _: &RunRequest) -> Result<()> { Ok(()) }
//! #     fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
//! #         ctx.time_anchor(None);
//! #         ctx.write_artifact(ArtifactSpec::new("hello.txt", ArtifactType::Data, "text", "text/plain")?, |w| w.write_all(b"hi").at("hello.txt"))?; Ok(())
//! #     }
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
//! let sink = InMemorySink::new();
//! let outcome = run::RunBuilder::new(Hello, MemoryEvidence::new(), sink.clone())
//!     .tenant(TenantId::parse("tenant-a")?)
//!     .events(tx)
//!     .execute(RunRequest::builder("hello:txt").build()?)
//!     .await?;
//! assert_eq!(outcome.run.status, RunStatus::Succeeded);
//! assert_eq!(outcome.run.outputs.len(), 2); // hello.txt + manifest.json
//! assert_eq!(events.recv().await.map(|e| e.name()), Some("started"));
//! # Ok::<(), ExportError>(())
//! # }).unwrap();
//! ```

use crate::error::{ExportError, Result};
use crate::evidence::{EvidenceSource, RecordingEvidence};
use crate::hashing::Sha256Digest;
use crate::id::{RunId, TenantId};
use crate::manifest::{
    ManifestBuilder, ManifestEntry, TimeAnchor, TimeSource, DSSE_MEDIA_TYPE, MANIFEST_FILE, PROVENANCE_FILE,
    SIGNED_MANIFEST_FILE,
};
use crate::model::{ArtifactType, Output, Progress, Run, RunError, RunEvent, RunRequest, RunStatus, Timestamp};
use crate::path::ArtifactPath;
use crate::profile::{ArtifactSpec, CancelFlag, ExportContext, Profile, StagedArtifact};
use crate::select::SelectedEvidence;
use crate::sign::provenance::{self, ProvenanceInput, Resource};
use crate::sign::{dsse, Signer};
use crate::sink::Sink;
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// Where run events go: the sending half of a channel whose receiver the caller reads (or
/// drops: events to a closed channel are discarded).
pub type EventSender = UnboundedSender<RunEvent>;

/// The result of a successful run: its record (status `succeeded`, outputs, warnings).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunOutcome {
    /// The run record.
    pub run: Run,
    /// Where the request's `distribution` put the outputs (the engine stores these records).
    pub distributions: Vec<crate::model::DistributionRecord>,
}

/// What a [`Distributor`] is given: the published run and the request's `distribution`.
#[derive(Debug)]
#[non_exhaustive]
pub struct DistributeContext<'a> {
    /// The run, with its published outputs (their sink URLs).
    pub run: &'a Run,
    /// The request's `distribution`.
    pub distribution: &'a crate::model::Distribution,
    /// The run's signer, when the request is signed.
    pub signer: Option<&'a Arc<dyn Signer>>,
}

/// Delivers a run's published outputs to the destination a request's `distribution` names
/// (an OCI registry, object storage): the step after publishing, before the run succeeds.
/// A failure fails the run (`ERR_EXPORT_DISTRIBUTION_FAILED`, naming the target); transient
/// failures are retried by the distributor within its budget first.
#[async_trait::async_trait]
pub trait Distributor: std::fmt::Debug + Send + Sync + 'static {
    /// Whether it delivers this type.
    fn handles(&self, kind: crate::model::DistributionType) -> bool;
    /// Refuses, when the run is submitted, a destination it will not deliver to for `tenant`
    /// (one its operator did not allow that tenant: a server must not write where any tenant
    /// names, nor let one tenant write where another's deliveries go). Default: any.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming `distribution.ref`.
    fn accepts(&self, _tenant: &crate::TenantId, _distribution: &crate::model::Distribution) -> Result<()> {
        Ok(())
    }
    /// Delivers the run; returns the record of where everything went.
    async fn distribute(&self, ctx: DistributeContext<'_>) -> Result<crate::model::DistributionRecord>;
}

impl RunOutcome {
    /// The published outputs, manifest last.
    pub fn outputs(&self) -> &[Output] {
        &self.run.outputs
    }
}

/// Runs one export, outside any engine: the library's single-run entry point (the
/// [`Exporter`](crate::engine::Exporter) uses it for each attempt).
#[derive(Debug)]
#[must_use]
pub struct RunBuilder {
    profile: Arc<dyn Profile>,
    evidence: Arc<dyn EvidenceSource>,
    sink: Arc<dyn Sink>,
    tenant: Option<TenantId>,
    project: Option<String>,
    run_id: Option<RunId>,
    pinned_time: Option<TimeAnchor>,
    staging_dir: Option<PathBuf>,
    cancel: CancelFlag,
    signer: Option<Arc<dyn Signer>>,
    prefix: Option<ArtifactPath>,
    events: Option<EventSender>,
    distributors: Vec<Arc<dyn Distributor>>,
}

impl RunBuilder {
    /// A run of `profile` reading `evidence` and publishing to `sink` (each may be shared:
    /// `Arc<T>` implements the traits too).
    pub fn new(profile: impl Profile, evidence: impl EvidenceSource, sink: impl Sink) -> Self {
        Self::from_arcs(Arc::new(profile), Arc::new(evidence), Arc::new(sink))
    }
    /// [`RunBuilder::new`] from trait objects.
    pub fn from_arcs(profile: Arc<dyn Profile>, evidence: Arc<dyn EvidenceSource>, sink: Arc<dyn Sink>) -> Self {
        Self {
            profile,
            evidence,
            sink,
            tenant: None,
            project: None,
            run_id: None,
            pinned_time: None,
            staging_dir: None,
            cancel: CancelFlag::new(),
            signer: None,
            prefix: None,
            events: None,
            distributors: Vec::new(),
        }
    }

    /// Delivers runs whose request names a `distribution` of a type this distributor handles.
    pub fn distributor(mut self, d: Arc<dyn Distributor>) -> Self {
        self.distributors.push(d);
        self
    }
    /// Owning tenant (default `default`).
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }
    /// Project within the tenant.
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }
    /// The run id (default: a fresh [`RunId::generate`]).
    pub fn run_id(mut self, id: RunId) -> Self {
        self.run_id = Some(id);
        self
    }
    /// A pinned time from the embedder (e.g. `SOURCE_DATE_EPOCH`); the request's `createdAt`
    /// wins over it.
    pub fn pinned_time(mut self, anchor: Option<TimeAnchor>) -> Self {
        self.pinned_time = anchor;
        self
    }
    /// Where staging directories are created (default: the system temp dir).
    pub fn staging_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.staging_dir = Some(dir.into());
        self
    }
    /// A flag that cancels the run when set (or times it out, see [`CancelFlag::time_out`]).
    pub fn cancel(mut self, flag: CancelFlag) -> Self {
        self.cancel = flag;
        self
    }
    /// The signer used when the request enables `distribution.signing` (the caller resolves the
    /// request's `keyRef` to it).
    pub fn signer(mut self, signer: Arc<dyn Signer>) -> Self {
        self.signer = Some(signer);
        self
    }
    /// Publish under this sink prefix (e.g. one directory per run) instead of the sink root.
    pub fn prefix(mut self, prefix: ArtifactPath) -> Self {
        self.prefix = Some(prefix);
        self
    }
    /// Send run events here as they happen.
    pub fn events(mut self, events: EventSender) -> Self {
        self.events = Some(events);
        self
    }

    /// Runs `request` (already validated against the limits) to the end.
    ///
    /// # Errors
    /// The run's failure, with nothing of it left in the sink: the profile's or sink's error,
    /// `ERR_EXPORT_CANCELLED` / `ERR_EXPORT_TIMEOUT` when the flag was set, or
    /// `ERR_EXPORT_NOT_SUPPORTED` for request fields this build does not implement.
    pub async fn execute(self, request: RunRequest) -> Result<RunOutcome> {
        let tenant = match self.tenant.clone() {
            Some(t) => t,
            None => TenantId::parse("default")?,
        };
        let run_id = self.run_id.clone().unwrap_or_else(|| RunId::generate(&tenant));
        let now = Timestamp::now();
        let mut run = Run::queued(run_id.clone(), tenant, self.project.clone(), request.profile_id.clone(), now);
        run.status = RunStatus::Running;
        run.started_at = Some(now);
        run.attempts = 1;
        let emit = Emitter::new(self.events.clone());
        emit.send(RunEvent::Started { run_id: run_id.clone(), profile_id: request.profile_id.clone() });
        let progress = Arc::new(Mutex::new(Progress::default()));
        let mut published = Vec::new();
        let result = stage_and_publish(&self, &run, &request, &emit, &progress, &mut published)
            .await
            .map_err(|e| name_the_output(e, &self));
        let finished = Timestamp::now();
        run.finished_at = Some(finished);
        run.progress = *progress.lock().unwrap_or_else(|p| p.into_inner());
        let result = match result {
            Ok((outputs, warnings)) => {
                run.outputs = outputs;
                self.distribute(&run, &request, &emit).await.map(|d| (warnings, d))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((warnings, distributions)) => {
                run.warnings = warnings;
                if let Some(days) = request.retention_days {
                    let exp = finished.plus_days(days);
                    run.expires_at = Some(exp);
                    run.outputs.iter_mut().for_each(|o| o.expires_at = Some(exp));
                }
                run.status = RunStatus::Succeeded;
                run.progress = Progress { percent: 100, ..run.progress };
                emit.release();
                emit.send(RunEvent::Completed { run_id, status: RunStatus::Succeeded });
                Ok(RunOutcome { run, distributions })
            }
            Err(e) => {
                // A worker that lost its lease leaves the paths alone: they now belong to the
                // worker that took the run over.
                // (Checked before each delete: a rollback of thousands of files takes long.)
                for path in published.iter().rev() {
                    if self.cancel.lease_lost() {
                        break;
                    }
                    // Best effort: a failed rollback leaves files without a manifest, which no
                    // reader takes for a complete run.
                    let _ = self.sink.delete(path).await;
                }
                emit.send(RunEvent::Failed { run_id, code: e.code().to_owned(), message: e.report() });
                Err(e)
            }
        }
    }
}

impl RunBuilder {
    /// The distribution step: with a non-filesystem `distribution`, its distributor delivers
    /// the published run; each artifact it placed is announced again (`artifact_ready`) with
    /// its distributed location.
    async fn distribute(
        &self,
        run: &Run,
        request: &RunRequest,
        emit: &Emitter,
    ) -> Result<Vec<crate::model::DistributionRecord>> {
        let Some(d) = request.distribution.as_ref().filter(|d| d.kind != crate::model::DistributionType::Filesystem)
        else {
            return Ok(Vec::new());
        };
        let distributor =
            self.distributors.iter().find(|x| x.handles(d.kind)).ok_or_else(|| ExportError::NotSupported {
                feature: format!("distribution.type {}: no distributor for it is configured", d.kind),
            })?;
        self.cancel.check()?;
        let signer = if request.signing_enabled() { self.signer.as_ref() } else { None };
        let record = distributor.distribute(DistributeContext { run, distribution: d, signer }).await?;
        for a in &record.artifacts {
            let kind = run.outputs.iter().find(|o| o.path == a.path).map_or(ArtifactType::Data, |o| o.kind);
            emit.send(RunEvent::ArtifactReady {
                run_id: run.run_id.clone(),
                url: a.location.clone(),
                sha256: a.sha256,
                kind,
                path: a.path.clone(),
                size: a.size,
            });
        }
        Ok(vec![record])
    }
}

/// An I/O failure inside a run's staging directory (a full disk, most often) is reported on the
/// output the user named, with the staging file as detail: the temp name means nothing to them.
fn name_the_output(e: ExportError, options: &RunBuilder) -> ExportError {
    let root = options.staging_dir.clone().unwrap_or_else(std::env::temp_dir);
    match e {
        ExportError::Io { path, source }
            if path.starts_with(&root)
                && path
                    .strip_prefix(&root)
                    .ok()
                    .and_then(|rel| rel.components().next())
                    .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with(STAGING_PREFIX)) =>
        {
            let kind = source.kind();
            ExportError::Io {
                path: PathBuf::from(options.sink.location()),
                source: std::io::Error::new(kind, format!("{source} (while staging in {})", path.display())),
            }
        }
        other => other,
    }
}

/// Sends events to an optional channel; a closed receiver is not an error.
#[derive(Clone)]
/// Sends a run's events; `artifact_ready` events are held back until the run commits
/// ([`Emitter::release`], just before `completed`) and dropped when it fails: the event means
/// "downloadable", which no file of a failed or retried attempt is.
struct Emitter {
    tx: Option<EventSender>,
    held: Arc<Mutex<Vec<RunEvent>>>,
}

impl Emitter {
    fn new(tx: Option<EventSender>) -> Self {
        Self { tx, held: Arc::new(Mutex::new(Vec::new())) }
    }
    fn send(&self, e: RunEvent) {
        let Some(tx) = &self.tx else { return };
        if matches!(e, RunEvent::ArtifactReady { .. }) {
            self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(e);
        } else {
            let _ = tx.send(e);
        }
    }
    /// Sends the held `artifact_ready` events (the run committed).
    fn release(&self) {
        let Some(tx) = &self.tx else { return };
        for e in std::mem::take(&mut *self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
            let _ = tx.send(e);
        }
    }
}

/// Name prefix of the staging directories runs create (under
/// [`RunBuilder::staging_dir`], default the system temp dir).
pub const STAGING_PREFIX: &str = "exportcore-run-";

/// A staging directory's name until it is locked (the sweep leaves these alone unless they
/// are a minute old: a process killed between creating and locking one).
const NEW_STAGING_PREFIX: &str = ".exportcore-new-";

/// A run's staging directory, held locked for the run and removed when dropped. It is created
/// under a name the sweep ignores, locked, and only then renamed to its `exportcore-run-*`
/// name: a concurrent [`sweep_stale_staging`] (another process starting beside it) never sees
/// it unlocked.
struct Staging {
    path: std::path::PathBuf,
    _lock: std::fs::File,
}

impl Staging {
    fn create(root: &std::path::Path) -> Result<Self> {
        let fresh = tempfile::Builder::new()
            .prefix(NEW_STAGING_PREFIX)
            .tempdir_in(root)
            .map_err(|e| ExportError::io(root, e))?;
        let lock = std::fs::File::open(fresh.path())
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|e| ExportError::io(fresh.path(), e))?;
        let name = fresh.path().file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let path = root.join(name.replacen(NEW_STAGING_PREFIX, STAGING_PREFIX, 1));
        std::fs::rename(fresh.path(), &path).map_err(|e| ExportError::io(&path, e))?;
        let _ = fresh.keep();
        Ok(Self { path, _lock: lock })
    }

    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes staging directories left in `dir` by runs whose process died (SIGKILL, power loss):
/// every `exportcore-run-*` directory that no live run holds locked. Call it at start-up with
/// the staging directory the runs use; a running run's directory is never touched. Returns how
/// many were removed.
///
/// # Errors
/// `ERR_EXPORT_IO` when `dir` cannot be listed.
pub fn sweep_stale_staging(dir: &std::path::Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(ExportError::io(dir, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_staging = name.to_str().is_some_and(|n| n.starts_with(STAGING_PREFIX));
        // One being created now is not locked yet: only a minute-old one is a leftover.
        let is_old_new = name.to_str().is_some_and(|n| n.starts_with(NEW_STAGING_PREFIX))
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if !(is_staging || is_old_new) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        let Ok(f) = std::fs::File::open(&path) else { continue };
        if f.try_lock().is_ok() && std::fs::remove_dir_all(&path).is_ok() {
            tracing::info!(path = %path.display(), "removed stale staging directory");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Refuses request fields that this build accepts on the wire but does not implement yet, so
/// nothing requested is silently ignored.
pub fn check_implemented(
    request: &RunRequest,
    tenant: &crate::TenantId,
    profile: &crate::profile::ProfileDescriptor,
    distributors: &[Arc<dyn Distributor>],
) -> Result<()> {
    if request.encryption.as_ref().is_some_and(|e| e.enabled) && !profile.encryption {
        return Err(ExportError::NotSupported {
            feature: format!(
                "encryption.enabled: profile {} does not encrypt its outputs (mirror:full and mirror:delta do)",
                profile.id
            ),
        });
    }
    crate::profile::check_compression(profile, request)?;
    if let Some(d) = &request.distribution {
        use crate::model::DistributionType;
        if d.kind != DistributionType::Filesystem {
            let Some(x) = distributors.iter().find(|x| x.handles(d.kind)) else {
                return Err(ExportError::NotSupported {
                    feature: format!(
                        "distribution.type {}: no distributor for it is configured (the engine's own sink is \"filesystem\")",
                        d.kind
                    ),
                });
            };
            x.accepts(tenant, d)?;
        }
        if d.kind == DistributionType::Filesystem && d.reference.is_some() {
            return Err(ExportError::NotSupported {
                feature: "distribution.ref: runs publish to the engine's sink; a per-request destination is not \
                          implemented in this build"
                    .into(),
            });
        }
    }
    Ok(())
}

async fn stage_and_publish(
    options: &RunBuilder,
    run: &Run,
    request: &RunRequest,
    emit: &Emitter,
    progress: &Arc<Mutex<Progress>>,
    published: &mut Vec<ArtifactPath>,
) -> Result<(Vec<Output>, Vec<RunError>)> {
    let (profile, sink, run_id) = (&options.profile, &options.sink, &run.run_id);
    options.cancel.check()?;
    check_implemented(request, &run.tenant, &profile.descriptor(), &options.distributors)?;
    profile.validate(request)?;
    // Selectors in canonical order: the order a user wrote them in never changes a byte.
    let normalized;
    let request = if request.selectors.is_empty() {
        request
    } else {
        normalized = RunRequest { selectors: request.selectors.normalized(), ..request.clone() };
        &normalized
    };
    let evidence = Arc::clone(&options.evidence);
    let signer = match (request.signing_enabled(), &options.signer) {
        (false, _) => None,
        (true, Some(s)) => Some(Arc::clone(s)),
        (true, None) => {
            return Err(ExportError::invalid(
                "distribution.signing.keyRef",
                "signing is enabled but no signer is configured for this run",
            ))
        }
    };
    // With signing, record the digest of every evidence file read, for provenance.
    let recording = signer.as_ref().map(|_| Arc::new(RecordingEvidence::new(Arc::clone(&evidence))));
    let evidence: Arc<dyn EvidenceSource> = match &recording {
        Some(r) => Arc::clone(r) as Arc<dyn EvidenceSource>,
        None => evidence,
    };
    // Selectors are applied once, here, for every profile.
    let selected = if request.selectors.is_empty() {
        None
    } else {
        Some(Arc::new(SelectedEvidence::new(Arc::clone(&evidence), &request.selectors)?))
    };
    let evidence: Arc<dyn EvidenceSource> = match &selected {
        Some(s) => Arc::clone(s) as Arc<dyn EvidenceSource>,
        None => evidence,
    };
    let pinned =
        request.created_at.map(|t| TimeAnchor { created_at: t, source: TimeSource::Request }).or(options.pinned_time);
    let staging_root = options.staging_dir.clone().unwrap_or_else(std::env::temp_dir);
    let staging = Staging::create(&staging_root)?;

    let (artifacts, anchor, warnings) = {
        let profile = Arc::clone(profile);
        let request = request.clone();
        let staging_path = staging.path().to_path_buf();
        let cancel = options.cancel.clone();
        let run_id = run_id.clone();
        let emit = emit.clone();
        let progress = Arc::clone(progress);
        let profile_signer = signer.clone();
        let profile_selected = selected.clone();
        let tenant = run.tenant.clone();
        let ctx_run_id = run_id.clone();
        tokio::task::spawn_blocking(move || -> Result<(Vec<StagedArtifact>, TimeAnchor, Vec<RunError>)> {
            let report = move |p: Progress| {
                let (p, changed) = {
                    let mut cur = progress.lock().unwrap_or_else(|e| e.into_inner());
                    // Progress never goes back (a nested profile counts its own 0..100).
                    let p = Progress { percent: p.percent.max(cur.percent), ..p };
                    let changed = cur.percent != p.percent || cur.items_total != p.items_total;
                    *cur = p;
                    (p, changed)
                };
                if changed {
                    emit.send(RunEvent::Progress { run_id: run_id.clone(), progress: p });
                }
            };
            let mut ctx =
                ExportContext::outside_run(&request, &*evidence, &staging_path, &cancel, &report, &ctx_run_id, &tenant);
            ctx.pinned = pinned;
            ctx.signer = profile_signer;
            ctx.selection = profile_selected.as_deref();
            profile.export(&mut ctx)?;
            ctx.check_cancelled()?;
            if ctx.anchor.is_none() && ctx.pinned.is_none() {
                let id = request.profile_id.clone();
                ctx.warn(
                    "WARN_EXPORT_TIME_UNANCHORED",
                    format!(
                        "profile {id} never called ExportContext::time_anchor and no time was pinned: the run \
                         manifest is dated 1970-01-01T00:00:00Z"
                    ),
                );
            }
            let anchor = ctx.time_anchor(None);
            Ok((ctx.artifacts, anchor, ctx.warnings))
        })
        .await
        .map_err(|e| ExportError::internal_caused("profile", "the export task stopped", e))??
    };
    if artifacts.is_empty() {
        return Err(ExportError::internal("profile", "wrote no artifacts"));
    }
    let selection = selected.map(|s| s.selection());
    let mut warnings = warnings;
    if let Some(sel) = selection.as_ref().filter(|s| s.selected() == 0 && s.seen() > 0) {
        warnings.push(RunError {
            code: "WARN_EXPORT_SELECTION_EMPTY".into(),
            message: format!("the selectors kept none of the {} records read: the outputs hold no records", sel.seen()),
        });
    }

    // The run manifest, staged like any artifact.
    let mut builder = ManifestBuilder::run(request.profile_id.as_str(), anchor);
    if let Some(sel) = &selection {
        builder.metadata(
            "selection",
            serde_json::to_value(sel)
                .map_err(|e| ExportError::internal_caused("selection", "serialising the selection", e))?,
        );
    }
    for a in &artifacts {
        builder.add(
            ManifestEntry::new(a.spec.path.clone(), a.size, a.sha256, a.spec.media_type.clone())
                .with_kind(a.spec.kind, a.spec.format.clone()),
        )?;
    }
    let manifest_bytes = builder.build().to_canonical_bytes();
    let manifest_local = staging.path().join("run-manifest.json");
    std::fs::write(&manifest_local, &manifest_bytes).map_err(|e| ExportError::io(&manifest_local, e))?;
    let manifest = StagedArtifact {
        spec: ArtifactSpec::new(MANIFEST_FILE, ArtifactType::Manifest, "json", "application/json")?,
        local: manifest_local,
        size: manifest_bytes.len() as u64,
        sha256: Sha256Digest::of(&manifest_bytes),
    };

    let mut ordered = artifacts;
    ordered.sort_by(|a, b| a.spec.path.cmp(&b.spec.path));
    if let (Some(signer), Some(recording)) = (&signer, &recording) {
        let mut subjects: Vec<Resource> =
            ordered.iter().map(|a| Resource { name: a.spec.path.to_string(), sha256: a.sha256 }).collect();
        subjects.push(Resource { name: MANIFEST_FILE.into(), sha256: manifest.sha256 });
        let dependencies = recording
            .read_files()
            .into_iter()
            .map(|(path, sha256)| Resource { name: path.to_string(), sha256 })
            .collect();
        let statement = provenance::statement(&ProvenanceInput {
            run_id: run_id.as_str(),
            request,
            subjects,
            dependencies,
            time: anchor.created_at,
            tenant: run.tenant.as_str(),
            selection: selection.as_ref(),
        });
        let statement_bytes = crate::canonical::to_vec_direct(&statement)
            .map_err(|e| ExportError::internal_caused("provenance", "serialising the in-toto statement", e))?;
        let signers: [&dyn Signer; 1] = [&**signer];
        let prov = dsse::sign(dsse::INTOTO_PAYLOAD_TYPE, &statement_bytes, &signers)?;
        ordered.push(stage_bytes(staging.path(), PROVENANCE_FILE, ArtifactType::Provenance, &prov.to_bytes())?);
        let signed = dsse::sign(dsse::MANIFEST_PAYLOAD_TYPE, &manifest_bytes, &signers)?;
        ordered.push(stage_bytes(staging.path(), SIGNED_MANIFEST_FILE, ArtifactType::Signature, &signed.to_bytes())?);
    }
    // Every artifact but the manifest is published in batches (small files together, a large
    // one alone), up to PUBLISH_CONCURRENCY batches at a time (their fsyncs and the sink's
    // hashing overlap), results taken in path order; the manifest last, alone.
    let mut targets = Vec::with_capacity(ordered.len() + 1);
    for a in ordered.iter().chain(std::iter::once(&manifest)) {
        let target = match &options.prefix {
            Some(p) => p.join(a.spec.path.as_str())?,
            None => a.spec.path.clone(),
        };
        targets.push(target);
    }
    let manifest_target = targets.pop();
    options.cancel.check()?;
    let mut outputs = Vec::with_capacity(ordered.len() + 1);
    let mut todo = publish_batches(ordered.into_iter().zip(targets).collect()).into_iter();
    let mut running = futures::stream::FuturesOrdered::new();
    let mut failure = None;
    loop {
        // Start more only while nothing has failed; after a failure, wait for the puts
        // already running, so none completes after the caller has cleaned up.
        while failure.is_none() && running.len() < PUBLISH_CONCURRENCY {
            let Some(batch) = todo.next() else { break };
            published.extend(batch.iter().map(|(_, target)| target.clone()));
            running.push_back(async move {
                let files: Vec<(ArtifactPath, PathBuf)> =
                    batch.iter().map(|(a, target)| (target.clone(), a.local.clone())).collect();
                let receipts = sink.put_files(&files).await;
                (batch, receipts)
            });
        }
        let Some((batch, results)) = running.next().await else { break };
        if results.len() > batch.len() || (results.len() < batch.len() && results.iter().all(Result::is_ok)) {
            failure.get_or_insert(ExportError::DistributionFailed {
                target: sink.name().to_owned(),
                source: format!("{} results for a batch of {} files", results.len(), batch.len()).into(),
            });
        }
        // Files after the last result were never touched: a cleanup spares their paths.
        let untouched: std::collections::HashSet<&ArtifactPath> =
            batch.iter().skip(results.len()).map(|(_, target)| target).collect();
        if !untouched.is_empty() {
            published.retain(|p| !untouched.contains(p));
        }
        for ((a, _), r) in batch.into_iter().zip(results) {
            if failure.is_some() {
                break;
            }
            match r.and_then(|r| published_output(sink, run_id, emit, a, r)) {
                Ok(o) => outputs.push(o),
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_none() {
            if let Err(e) = options.cancel.check() {
                failure = Some(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(target) = manifest_target {
        // The manifest is the commit point: last chance for a cancel, a timeout or a lost lease.
        options.cancel.check()?;
        published.push(target.clone());
        let receipt = sink.put_file(&target, &manifest.local).await?;
        outputs.push(published_output(sink, run_id, emit, manifest, receipt)?);
    }
    Ok((outputs, warnings))
}

/// Batches of artifacts published at once (the run manifest always goes alone, last).
const PUBLISH_CONCURRENCY: usize = 4;
/// At most this many artifacts in one batch...
const BATCH_FILES: usize = 256;
/// ...and this many bytes; a larger artifact goes alone.
const BATCH_BYTES: u64 = 8 << 20;

/// Groups artifacts (in order) into the batches [`Sink::put_files`] takes: consecutive ones
/// up to [`BATCH_FILES`] files and [`BATCH_BYTES`] bytes, a larger one alone.
fn publish_batches(items: Vec<(StagedArtifact, ArtifactPath)>) -> Vec<Vec<(StagedArtifact, ArtifactPath)>> {
    let mut batches: Vec<Vec<(StagedArtifact, ArtifactPath)>> = Vec::new();
    let mut bytes = 0u64;
    for item in items {
        let size = item.0.size;
        match batches.last_mut() {
            Some(last) if last.len() < BATCH_FILES && bytes.saturating_add(size) <= BATCH_BYTES => {
                bytes += size;
                last.push(item);
            }
            _ => {
                bytes = size;
                batches.push(vec![item]);
            }
        }
    }
    batches
}

/// Checks a sink's receipt against the staged artifact, announces it, and makes its output.
fn published_output(
    sink: &Arc<dyn Sink>,
    run_id: &RunId,
    emit: &Emitter,
    a: StagedArtifact,
    receipt: crate::sink::PutReceipt,
) -> Result<Output> {
    if receipt.sha256 != a.sha256 || receipt.size != a.size {
        return Err(ExportError::DistributionFailed {
            target: sink.name().to_owned(),
            source: format!(
                "{}: stored {} bytes sha256 {} but staged {} bytes sha256 {}",
                a.spec.path, receipt.size, receipt.sha256, a.size, a.sha256
            )
            .into(),
        });
    }
    emit.send(RunEvent::ArtifactReady {
        run_id: run_id.clone(),
        url: receipt.url.clone(),
        sha256: receipt.sha256,
        kind: a.spec.kind,
        path: a.spec.path.clone(),
        size: receipt.size,
    });
    Ok(Output {
        kind: a.spec.kind,
        format: a.spec.format,
        url: receipt.url,
        sha256: receipt.sha256,
        expires_at: None,
        path: a.spec.path,
        size: receipt.size,
        media_type: a.spec.media_type,
    })
}

fn stage_bytes(dir: &std::path::Path, name: &str, kind: ArtifactType, bytes: &[u8]) -> Result<StagedArtifact> {
    let local = dir.join(format!("run-{name}"));
    std::fs::write(&local, bytes).map_err(|e| ExportError::io(&local, e))?;
    Ok(StagedArtifact {
        spec: ArtifactSpec::new(name, kind, "dsse", DSSE_MEDIA_TYPE)?,
        local,
        size: bytes.len() as u64,
        sha256: Sha256Digest::of(bytes),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_artifacts_publish_in_batches_and_a_large_one_alone() {
        use super::*;
        let item = |i: usize, size: u64| {
            let spec =
                ArtifactSpec::new(&format!("f{i}"), ArtifactType::Data, "raw", "application/octet-stream").unwrap();
            let path = spec.path.clone();
            (StagedArtifact { spec, local: PathBuf::from(format!("l{i}")), size, sha256: Sha256Digest::of(b"") }, path)
        };
        let mut items: Vec<_> = (0..600).map(|i| item(i, 10)).collect();
        items.insert(300, item(1000, BATCH_BYTES + 1));
        let batches = publish_batches(items);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [256, 44, 1, 256, 44], "{sizes:?}");
        assert_eq!(batches[2][0].0.size, BATCH_BYTES + 1);
        let order: Vec<String> = batches.iter().flatten().map(|(_, p)| p.to_string()).collect();
        assert_eq!(order[300], "f1000", "order is kept");
        assert_eq!(publish_batches((0..3).map(|i| item(i, BATCH_BYTES / 2)).collect()).len(), 2, "bytes bound a batch");
    }

    use super::*;

    #[test]
    fn sweeping_removes_only_unlocked_staging_directories() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let stale = root.path().join(format!("{STAGING_PREFIX}stale"));
        let live = root.path().join(format!("{STAGING_PREFIX}live"));
        let other = root.path().join("not-ours");
        for d in [&stale, &live, &other] {
            std::fs::create_dir_all(d.join("sub")).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(d.join("sub/f"), b"x").unwrap_or_else(|e| panic!("{e}"));
        }
        let lock = std::fs::File::open(&live).unwrap_or_else(|e| panic!("{e}"));
        lock.lock().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sweep_stale_staging(root.path()).unwrap_or_else(|e| panic!("{e}")), 1);
        assert!(!stale.exists() && live.exists() && other.exists());
        drop(lock);
        assert_eq!(sweep_stale_staging(root.path()).unwrap_or_else(|e| panic!("{e}")), 1);
        assert!(!live.exists() && other.exists());
        assert_eq!(sweep_stale_staging(&root.path().join("missing")).unwrap_or_else(|e| panic!("{e}")), 0);
    }
}
