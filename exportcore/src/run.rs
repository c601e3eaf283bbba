//! Executing one run: validate, let the profile stage its artifacts, write the run manifest,
//! publish everything to the sink (manifest last), and produce the run record and events.
//!
//! Nothing reaches the sink before the profile has finished successfully; every published
//! artifact is checked against the digest computed while staging; if publishing fails half
//! way, what was already published for this run is deleted again. A reader that sees
//! `manifest.json` therefore sees a complete run.

use crate::error::{ExportError, Result};
use crate::evidence::{EvidenceSource, RecordingEvidence};
use crate::hashing::Sha256Digest;
use crate::manifest::{ManifestBuilder, ManifestEntry, TimeAnchor, TimeSource, MANIFEST_FILE};
use crate::model::{ArtifactType, Output, Progress, Run, RunError, RunEvent, RunRequest, RunStatus, Timestamp};
use crate::path::ArtifactPath;
use crate::profile::{ArtifactSpec, CancelFlag, ExportContext, Profile, StagedArtifact};
use crate::sign::provenance::{self, ProvenanceInput, Resource};
use crate::sign::{dsse, Signer};
use crate::sink::Sink;
use futures::StreamExt;
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
    /// The signer used when the request enables `distribution.signing` (the embedder resolves
    /// the request's `keyRef` to it).
    pub signer: Option<Arc<dyn Signer>>,
    /// Publish under this sink prefix (e.g. one directory per run) instead of the sink root.
    pub prefix: Option<ArtifactPath>,
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
            signer: None,
            prefix: None,
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
    let mut run = Run::queued(&run_id, &options.tenant, options.project.clone(), &request.profile_id, now);
    run.status = RunStatus::Running;
    run.started_at = Some(now);
    run.attempts = 1;
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
        Ok((mut outputs, warnings)) => {
            run.warnings = warnings;
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
) -> Result<(Vec<Output>, Vec<RunError>)> {
    options.cancel.check()?;
    profile.validate(request)?;
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
    let pinned =
        request.created_at.map(|t| TimeAnchor { created_at: t, source: TimeSource::Request }).or(options.pinned_time);
    let staging_root = options.staging_dir.clone().unwrap_or_else(std::env::temp_dir);
    let staging = tempfile::Builder::new()
        .prefix("exportcore-run-")
        .tempdir_in(&staging_root)
        .map_err(|e| ExportError::io(&staging_root, e))?;

    let (artifacts, anchor, warnings) = {
        let profile = Arc::clone(profile);
        let request = request.clone();
        let staging_path = staging.path().to_path_buf();
        let cancel = options.cancel.clone();
        let run_id = run_id.to_owned();
        let on_event = Arc::clone(on_event);
        let progress = Arc::clone(progress);
        let profile_signer = signer.clone();
        tokio::task::spawn_blocking(move || -> Result<(Vec<StagedArtifact>, TimeAnchor, Vec<RunError>)> {
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
                signer: profile_signer,
                warnings: Vec::new(),
            };
            profile.export(&mut ctx)?;
            ctx.check_cancelled()?;
            let anchor = ctx.time_anchor(None);
            Ok((ctx.artifacts, anchor, ctx.warnings))
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
            run_id,
            request,
            subjects,
            dependencies,
            time: anchor.created_at,
            tenant: &options.tenant,
        });
        let statement_bytes = crate::canonical::to_vec(&statement)
            .map_err(|e| ExportError::Internal { implementer: "provenance", message: e.to_string() })?;
        let signers: [&dyn Signer; 1] = [&**signer];
        let prov = dsse::sign(dsse::INTOTO_PAYLOAD_TYPE, &statement_bytes, &signers)?;
        ordered.push(stage_bytes(staging.path(), PROVENANCE_FILE, ArtifactType::Provenance, &prov.to_bytes())?);
        let signed = dsse::sign(dsse::MANIFEST_PAYLOAD_TYPE, &manifest_bytes, &signers)?;
        ordered.push(stage_bytes(staging.path(), SIGNED_MANIFEST_FILE, ArtifactType::Signature, &signed.to_bytes())?);
    }
    // Every artifact but the manifest is published up to PUBLISH_CONCURRENCY at a time (their
    // fsyncs and the sink's hashing overlap), results taken in path order; the manifest last.
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
    let mut todo = ordered.into_iter().zip(targets);
    let mut running = futures::stream::FuturesOrdered::new();
    let mut failure = None;
    loop {
        // Start more only while nothing has failed; after a failure, wait for the puts
        // already running, so none completes after the caller has cleaned up.
        while failure.is_none() && running.len() < PUBLISH_CONCURRENCY {
            let Some((a, target)) = todo.next() else { break };
            published.push(target.clone());
            running.push_back(async move {
                let receipt = sink.put_file(&target, &a.local).await;
                (a, receipt)
            });
        }
        let Some((a, receipt)) = running.next().await else { break };
        if failure.is_some() {
            continue;
        }
        match receipt.and_then(|r| published_output(sink, run_id, on_event, a, r)).and_then(|o| {
            options.cancel.check()?;
            Ok(o)
        }) {
            Ok(o) => outputs.push(o),
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(target) = manifest_target {
        published.push(target.clone());
        let receipt = sink.put_file(&target, &manifest.local).await?;
        outputs.push(published_output(sink, run_id, on_event, manifest, receipt)?);
    }
    Ok((outputs, warnings))
}

/// Artifacts published at once (the run manifest always goes alone, last).
const PUBLISH_CONCURRENCY: usize = 4;

/// Checks a sink's receipt against the staged artifact, announces it, and makes its output.
fn published_output(
    sink: &Arc<dyn Sink>,
    run_id: &str,
    on_event: &EventFn,
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
    on_event(&RunEvent::ArtifactReady {
        run_id: run_id.to_owned(),
        url: receipt.url.clone(),
        sha256: receipt.sha256,
        kind: a.spec.kind,
        path: a.spec.path.to_string(),
        size: receipt.size,
    });
    Ok(Output {
        kind: a.spec.kind,
        format: a.spec.format,
        url: receipt.url,
        sha256: receipt.sha256,
        expires_at: None,
        path: a.spec.path.to_string(),
        size: receipt.size,
        media_type: a.spec.media_type,
    })
}

/// Name of the DSSE envelope over `manifest.json` in a signed run.
pub const SIGNED_MANIFEST_FILE: &str = "manifest.dsse.json";
/// Name of the DSSE envelope holding the in-toto/SLSA provenance of a signed run.
pub const PROVENANCE_FILE: &str = "provenance.dsse.json";
/// Media type of DSSE envelopes.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

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
