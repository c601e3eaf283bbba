//! Executing one run: validate, let the profile stage its artifacts, write the run manifest,
//! publish everything to the sink (manifest last), and produce the run record and events.
//!
//! Nothing reaches the sink before the profile has finished successfully; every published
//! artifact is checked against the digest computed while staging; if publishing fails half
//! way, what was already published for this run is deleted again. A reader that sees
//! `manifest.json` therefore sees a complete run.

use crate::error::{ExportError, Result};
use crate::evidence::EvidenceSource;
use crate::manifest::{ManifestBuilder, ManifestEntry, TimeAnchor, TimeSource, MANIFEST_FILE};
use crate::model::{ArtifactType, Output, Progress, Run, RunError, RunEvent, RunRequest, RunStatus, Timestamp};
use crate::path::ArtifactPath;
use crate::profile::{ArtifactSpec, CancelFlag, ExportContext, Profile, StagedArtifact};
use crate::sink::{Sink, SinkExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A callback receiving run events as they happen.
pub type EventFn = Arc<dyn Fn(&RunEvent) + Send + Sync>;

/// Per-run settings that are not part of the request.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Owning tenant.
    pub tenant: String,
    /// Optional project.
    pub project: Option<String>,
    /// Run id (generated when `None`).
    pub run_id: Option<String>,
    /// A pinned time from the embedder (e.g. `SOURCE_DATE_EPOCH`); the request's `createdAt`
    /// wins over it.
    pub pinned_time: Option<TimeAnchor>,
    /// Where staging directories are created (default: the system temp dir).
    pub staging_dir: Option<PathBuf>,
    /// Cancellation.
    pub cancel: CancelFlag,
}

impl RunOptions {
    /// Options for `tenant` with everything else at its default.
    pub fn new(tenant: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            project: None,
            run_id: None,
            pinned_time: None,
            staging_dir: None,
            cancel: CancelFlag::new(),
        }
    }
}

/// A fresh run id: `export-run::<tenant>::<uuid v7>` (time-ordered).
pub fn new_run_id(tenant: &str) -> String {
    format!("export-run::{tenant}::{}", uuid::Uuid::now_v7())
}

/// Runs `profile` on `evidence` for `request`, publishing to `sink`. Always returns the final
/// run record: `succeeded` with its outputs, or `failed` with its errors (and nothing of it
/// left in the sink). `request` must already be validated against the limits.
pub async fn execute(
    profile: Arc<dyn Profile>,
    evidence: Arc<dyn EvidenceSource>,
    sink: Arc<dyn Sink>,
    request: RunRequest,
    options: RunOptions,
    on_event: EventFn,
) -> Run {
    let run_id = options.run_id.clone().unwrap_or_else(|| new_run_id(&options.tenant));
    let now = Timestamp::now();
    let mut run = Run {
        run_id: run_id.clone(),
        tenant: options.tenant.clone(),
        project: options.project.clone(),
        profile_id: request.profile_id.clone(),
        status: RunStatus::Running,
        submitted_at: now,
        started_at: Some(now),
        finished_at: None,
        expires_at: None,
        progress: Progress::default(),
        outputs: Vec::new(),
        errors: Vec::new(),
    };
    on_event(&RunEvent::Started { run_id: run_id.clone(), profile_id: request.profile_id.clone() });
    let progress = Arc::new(Mutex::new(Progress::default()));
    let mut published = Vec::new();
    let result =
        stage_and_publish(&profile, evidence, &sink, &request, &options, &run_id, &on_event, &progress, &mut published)
            .await;
    let finished = Timestamp::now();
    run.finished_at = Some(finished);
    run.progress = *progress.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(mut outputs) => {
            if let Some(days) = request.retention_days {
                let exp = finished.plus_days(days);
                run.expires_at = Some(exp);
                outputs.iter_mut().for_each(|o| o.expires_at = Some(exp));
            }
            run.outputs = outputs;
            run.status = RunStatus::Succeeded;
            run.progress = Progress { percent: 100, ..run.progress };
            on_event(&RunEvent::Completed { run_id, status: RunStatus::Succeeded });
        }
        Err(e) => {
            for path in published.iter().rev() {
                // Best effort: a failed rollback leaves files without a manifest, which no
                // reader takes for a complete run.
                let _ = sink.delete(path).await;
            }
            run.status = RunStatus::Failed;
            run.errors.push(RunError::from(&e));
            on_event(&RunEvent::Failed { run_id, code: e.code().to_owned(), message: e.report() });
        }
    }
    run
}

#[allow(clippy::too_many_arguments)]
async fn stage_and_publish(
    profile: &Arc<dyn Profile>,
    evidence: Arc<dyn EvidenceSource>,
    sink: &Arc<dyn Sink>,
    request: &RunRequest,
    options: &RunOptions,
    run_id: &str,
    on_event: &EventFn,
    progress: &Arc<Mutex<Progress>>,
    published: &mut Vec<ArtifactPath>,
) -> Result<Vec<Output>> {
    options.cancel.check()?;
    profile.validate(request)?;
    let pinned =
        request.created_at.map(|t| TimeAnchor { created_at: t, source: TimeSource::Request }).or(options.pinned_time);
    let staging_root = options.staging_dir.clone().unwrap_or_else(std::env::temp_dir);
    let staging = tempfile::Builder::new()
        .prefix("exportcore-run-")
        .tempdir_in(&staging_root)
        .map_err(|e| ExportError::io(&staging_root, e))?;

    let (artifacts, anchor) = {
        let profile = Arc::clone(profile);
        let request = request.clone();
        let staging_path = staging.path().to_path_buf();
        let cancel = options.cancel.clone();
        let run_id = run_id.to_owned();
        let on_event = Arc::clone(on_event);
        let progress = Arc::clone(progress);
        tokio::task::spawn_blocking(move || -> Result<(Vec<StagedArtifact>, TimeAnchor)> {
            let report = move |p: Progress| {
                let changed = {
                    let mut cur = progress.lock().unwrap_or_else(|e| e.into_inner());
                    let changed = cur.percent != p.percent || cur.items_total != p.items_total;
                    *cur = p;
                    changed
                };
                if changed {
                    on_event(&RunEvent::Progress { run_id: run_id.clone(), progress: p });
                }
            };
            let mut ctx = ExportContext {
                request: &request,
                evidence: &*evidence,
                staging: &staging_path,
                pinned,
                anchor: None,
                artifacts: Vec::new(),
                progress: &report,
                cancel: &cancel,
                scratch_seq: 0,
            };
            profile.export(&mut ctx)?;
            ctx.check_cancelled()?;
            let anchor = ctx.time_anchor(None);
            Ok((ctx.artifacts, anchor))
        })
        .await
        .map_err(|e| ExportError::Internal { implementer: "profile", message: format!("export task failed: {e}") })??
    };
    if artifacts.is_empty() {
        return Err(ExportError::Internal { implementer: "profile", message: "wrote no artifacts".into() });
    }

    // The run manifest, staged like any artifact.
    let mut builder = ManifestBuilder::run(&request.profile_id, anchor);
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
        sha256: crate::hashing::Sha256Digest::of(&manifest_bytes),
    };

    let mut ordered = artifacts;
    ordered.sort_by(|a, b| a.spec.path.cmp(&b.spec.path));
    ordered.push(manifest);
    let mut outputs = Vec::with_capacity(ordered.len());
    for a in ordered {
        options.cancel.check()?;
        published.push(a.spec.path.clone());
        let receipt = sink.put_file(&a.spec.path, &a.local).await?;
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
        on_event(&RunEvent::ArtifactReady {
            run_id: run_id.to_owned(),
            url: receipt.url.clone(),
            sha256: receipt.sha256,
            kind: a.spec.kind,
            path: a.spec.path.to_string(),
            size: receipt.size,
        });
        outputs.push(Output {
            kind: a.spec.kind,
            format: a.spec.format,
            url: receipt.url,
            sha256: receipt.sha256,
            expires_at: None,
            path: a.spec.path.to_string(),
            size: receipt.size,
            media_type: a.spec.media_type,
        });
    }
    Ok(outputs)
}

impl CancelFlag {
    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(ExportError::Cancelled)
        } else {
            Ok(())
        }
    }
}
