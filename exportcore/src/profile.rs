//! The [`Profile`] trait an adapter author implements, the [`ExportContext`] it works
//! through, and the [`Profiles`] registry.

use crate::error::{ExportError, IoContext, Result};
use crate::evidence::EvidenceSource;
use crate::hashing::{HashingWriter, Sha256Digest};
use crate::id::ProfileId;
use crate::manifest::{TimeAnchor, MANIFEST_FILE, PROVENANCE_FILE, SIGNED_MANIFEST_FILE};
use crate::model::{ArtifactType, Compression, Format, Progress, RunRequest, Target, Timestamp};
use crate::path::ArtifactPath;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What `GET /export-center/profiles` shows for a profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ProfileDescriptor {
    /// Id (`json:raw`, `trivy:db`, ...), `kind:variant` by convention.
    pub id: ProfileId,
    /// One-line description.
    pub description: String,
    /// Targets it understands (empty: it ignores `targets`).
    pub targets: Vec<Target>,
    /// Formats it understands (empty: it ignores `formats`).
    pub formats: Vec<Format>,
    /// Whether it implements the request's `encryption` (else a request asking for it is
    /// refused with `ERR_EXPORT_NOT_SUPPORTED`).
    pub encryption: bool,
    /// The values of the request's `compression` it writes (empty: it chooses its own, and a
    /// request naming one is refused with `ERR_EXPORT_NOT_SUPPORTED` rather than ignored).
    pub compressions: Vec<Compression>,
}

impl ProfileDescriptor {
    /// A descriptor for `id` (a literal: see [`ProfileId::from_static`]) that understands no
    /// targets or formats (it ignores them).
    pub fn new(id: &'static str, description: impl Into<String>) -> Self {
        Self {
            id: ProfileId::from_static(id),
            description: description.into(),
            targets: vec![],
            formats: vec![],
            encryption: false,
            compressions: vec![],
        }
    }
    /// The targets it understands.
    pub fn targets(mut self, targets: impl IntoIterator<Item = Target>) -> Self {
        self.targets = targets.into_iter().collect();
        self
    }
    /// The formats it understands.
    pub fn formats(mut self, formats: impl IntoIterator<Item = Format>) -> Self {
        self.formats = formats.into_iter().collect();
        self
    }
    /// The values of the request's `compression` it writes.
    pub fn compressions(mut self, compressions: impl IntoIterator<Item = Compression>) -> Self {
        self.compressions = compressions.into_iter().collect();
        self
    }
    /// Declares that it implements the request's `encryption`.
    #[must_use]
    pub fn encrypts(mut self) -> Self {
        self.encryption = true;
        self
    }
}

/// A format adapter.
///
/// # Contract
/// - `export` reads evidence through `ctx.evidence()` and writes every artifact through
///   [`ExportContext::write_artifact`]; it never touches the sink. The engine publishes the
///   artifacts, and a `manifest.json` describing them, only after `export` returned `Ok`.
/// - Output bytes depend only on the evidence and the request: every timestamp written comes
///   from [`ExportContext::time_anchor`], collections are sorted.
/// - `export` is blocking; the engine runs it on a blocking thread. Long loops call
///   [`ExportContext::check_cancelled`] and report [`ExportContext::progress`].
/// - Errors are [`ExportError`]s naming the input that caused them.
///
/// Run [`crate::conformance`]'s profile checks against any implementation.
pub trait Profile: Debug + Send + Sync + 'static {
    /// Id, description and capabilities.
    fn descriptor(&self) -> ProfileDescriptor;
    /// Rejects requests this profile cannot serve (before any work starts).
    fn validate(&self, request: &RunRequest) -> Result<()>;
    /// Produces the artifacts.
    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()>;
}

impl<P: Profile + ?Sized> Profile for Arc<P> {
    fn descriptor(&self) -> ProfileDescriptor {
        (**self).descriptor()
    }
    fn validate(&self, request: &RunRequest) -> Result<()> {
        (**self).validate(request)
    }
    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
        (**self).export(ctx)
    }
}

/// Checks `request.targets`/`formats`/`compression` against what a descriptor supports; a helper for
/// [`Profile::validate`].
pub fn check_supported(d: &ProfileDescriptor, request: &RunRequest) -> Result<()> {
    check_compression(d, request)?;
    for (i, t) in request.targets.iter().enumerate() {
        if !d.targets.contains(t) {
            return Err(ExportError::invalid(format!("targets[{i}]"), format!("profile {} does not export {t}", d.id)));
        }
    }
    for (i, f) in request.formats.iter().enumerate() {
        if !d.formats.contains(f) {
            return Err(ExportError::invalid(format!("formats[{i}]"), format!("profile {} does not write {f}", d.id)));
        }
    }
    Ok(())
}

/// `ERR_EXPORT_NOT_SUPPORTED` for a `compression` the profile does not write (the engine
/// checks it before every run; [`check_supported`] too).
pub fn check_compression(d: &ProfileDescriptor, request: &RunRequest) -> Result<()> {
    let Some(c) = request.compression.filter(|c| !d.compressions.contains(c)) else { return Ok(()) };
    let writes = match d.compressions.as_slice() {
        [] => "chooses its own compression (leave compression unset)".to_owned(),
        some => format!("writes {} only", some.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")),
    };
    Err(ExportError::NotSupported { feature: format!("compression {c}: profile {} {writes}", d.id) })
}

/// A registry of profiles by id.
#[derive(Clone, Debug, Default)]
pub struct Profiles {
    map: BTreeMap<ProfileId, Arc<dyn Profile>>,
}

impl Profiles {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a profile (replacing one with the same id).
    pub fn with(mut self, profile: impl Profile) -> Self {
        self.register(Arc::new(profile));
        self
    }
    /// Adds a profile (replacing one with the same id).
    pub fn register(&mut self, profile: Arc<dyn Profile>) {
        self.map.insert(profile.descriptor().id, profile);
    }
    /// Looks a profile up; `ERR_EXPORT_PROFILE_NOT_FOUND` when absent.
    pub fn get(&self, id: impl AsRef<str>) -> Result<Arc<dyn Profile>> {
        let id = id.as_ref();
        self.map.get(id).cloned().ok_or_else(|| ExportError::ProfileNotFound { profile: id.to_owned() })
    }
    /// Adds every profile of `other` (replacing ones with the same id): merges the registries
    /// of several adapter crates.
    pub fn extend(&mut self, other: Profiles) {
        self.map.extend(other.map);
    }
    /// Ids of all profiles, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &ProfileId> {
        self.map.keys()
    }
    /// Descriptors of all profiles, sorted by id.
    pub fn descriptors(&self) -> Vec<ProfileDescriptor> {
        self.map.values().map(|p| p.descriptor()).collect()
    }
}

/// A cancellation flag shared between the engine and a running profile. It remembers why:
/// a user's cancel, a timeout, or a lost lease. It can also carry a deadline (the end of the
/// worker's lease): once that instant passes, [`CancelFlag::check`] fails by itself, so a
/// worker cut off from its store stops before its lease can be taken over, even if no timer
/// task got to run (a paused process, a starved runtime).
#[derive(Clone, Debug, Default)]
pub struct CancelFlag(Arc<FlagState>);

#[derive(Debug, Default)]
struct FlagState {
    /// 0: not cancelled; 1: cancelled; `TIMEOUT_BIT | secs`; `LEASE_BIT`: the first reason.
    reason: AtomicU64,
    /// The lease is lost, whatever stopped the run first: a cancelled or timed-out run that
    /// then loses its lease must stop writing too (retries, cleanup).
    lease_lost: std::sync::atomic::AtomicBool,
    /// Milliseconds after [`flag_epoch`] at which the lease is lost (0: no deadline).
    deadline_ms: AtomicU64,
}

const TIMEOUT_BIT: u64 = 1 << 63;
const LEASE_BIT: u64 = 1 << 62;

/// The monotonic origin of deadlines (the first use in the process).
fn flag_epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl CancelFlag {
    /// A fresh, unset flag.
    pub fn new() -> Self {
        Self::default()
    }
    fn trip(&self, reason: u64) {
        let _ = self.0.reason.compare_exchange(0, reason, Ordering::SeqCst, Ordering::SeqCst);
    }
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.trip(1);
    }
    /// Cancels because the run exceeded `after_secs`.
    pub fn time_out(&self, after_secs: u64) {
        self.trip(TIMEOUT_BIT | after_secs.min(LEASE_BIT - 1));
    }
    /// Stops the run because its worker no longer holds the run's lease: it must not write
    /// or publish anything more (`ERR_EXPORT_INTERRUPTED`).
    pub fn lose_lease(&self) {
        self.0.lease_lost.store(true, Ordering::SeqCst);
        self.trip(LEASE_BIT);
    }
    /// Trips the flag as [`CancelFlag::lose_lease`] at `deadline` (moved by each call).
    pub fn set_deadline(&self, deadline: std::time::Instant) {
        let ms = deadline.saturating_duration_since(flag_epoch()).as_millis().max(1);
        self.0.deadline_ms.store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
    /// The reason reported: a lost lease before anything else (a worker without the lease
    /// must write nothing, whatever stopped the run first).
    fn reason(&self) -> u64 {
        if self.lease_lost() {
            return LEASE_BIT;
        }
        self.0.reason.load(Ordering::SeqCst)
    }
    /// True once cancelled (for any reason).
    pub fn is_cancelled(&self) -> bool {
        self.reason() != 0
    }
    /// True once the run's lease was lost (or its deadline passed), also after a cancel or a
    /// timeout.
    pub fn lease_lost(&self) -> bool {
        if self.0.lease_lost.load(Ordering::SeqCst) {
            return true;
        }
        let deadline = self.0.deadline_ms.load(Ordering::SeqCst);
        if deadline != 0 && flag_epoch().elapsed().as_millis() >= u128::from(deadline) {
            self.lose_lease();
            return true;
        }
        false
    }
    /// `Err(Cancelled)`, `Err(Timeout)` or `Err(Interrupted)` (lease lost) once cancelled.
    pub fn check(&self) -> Result<()> {
        match self.reason() {
            0 => Ok(()),
            LEASE_BIT => Err(ExportError::Interrupted {
                reason: "this worker lost the run's lease (it could not renew it in time, or another worker took \
                         the run over)"
                    .into(),
            }),
            v if v & TIMEOUT_BIT != 0 => Err(ExportError::Timeout { after_secs: v & !TIMEOUT_BIT }),
            _ => Err(ExportError::Cancelled),
        }
    }
}

/// Describes an artifact a profile is about to write.
#[derive(Clone, Debug)]
pub struct ArtifactSpec {
    /// Path within the run output.
    pub path: ArtifactPath,
    /// Artifact type.
    pub kind: ArtifactType,
    /// Format label.
    pub format: String,
    /// Media type.
    pub media_type: String,
}

impl ArtifactSpec {
    /// A spec; `path` is checked.
    pub fn new(
        path: &str,
        kind: ArtifactType,
        format: impl Into<String>,
        media_type: impl Into<String>,
    ) -> Result<Self> {
        Ok(Self { path: ArtifactPath::parse(path)?, kind, format: format.into(), media_type: media_type.into() })
    }
}

/// An artifact written to staging, complete, with its digest.
#[derive(Clone, Debug)]
pub struct StagedArtifact {
    /// What it is.
    pub spec: ArtifactSpec,
    /// Local staging file.
    pub local: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Digest.
    pub sha256: Sha256Digest,
}

/// What a profile sees of its run.
pub struct ExportContext<'a> {
    pub(crate) request: &'a RunRequest,
    pub(crate) evidence: &'a dyn EvidenceSource,
    pub(crate) staging: &'a Path,
    pub(crate) pinned: Option<TimeAnchor>,
    pub(crate) anchor: Option<TimeAnchor>,
    pub(crate) artifacts: Vec<StagedArtifact>,
    /// The paths of `artifacts`, for the written-twice check in constant time (a mirror
    /// stages hundreds of thousands).
    staged_paths: std::collections::HashSet<String>,
    pub(crate) progress: &'a (dyn Fn(Progress) + Send + Sync),
    pub(crate) cancel: &'a CancelFlag,
    pub(crate) scratch_seq: u64,
    pub(crate) signer: Option<Arc<dyn crate::sign::Signer>>,
    pub(crate) warnings: Vec<crate::model::RunError>,
    pub(crate) selection: Option<&'a crate::select::SelectedEvidence>,
    pub(crate) run_id: &'a crate::id::RunId,
    pub(crate) tenant: &'a crate::id::TenantId,
}

impl Debug for ExportContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportContext")
            .field("profile", &self.request.profile_id)
            .field("staging", &self.staging)
            .field("artifacts", &self.artifacts.len())
            .finish()
    }
}

impl<'a> ExportContext<'a> {
    /// A context outside any run: no time pinned or anchored yet, no signer, no selection.
    pub(crate) fn outside_run(
        request: &'a RunRequest,
        evidence: &'a dyn EvidenceSource,
        staging: &'a Path,
        cancel: &'a CancelFlag,
        progress: &'a (dyn Fn(Progress) + Send + Sync),
        run_id: &'a crate::id::RunId,
        tenant: &'a crate::id::TenantId,
    ) -> Self {
        Self {
            request,
            evidence,
            staging,
            pinned: None,
            anchor: None,
            artifacts: Vec::new(),
            staged_paths: std::collections::HashSet::new(),
            progress,
            cancel,
            scratch_seq: 0,
            signer: None,
            warnings: Vec::new(),
            selection: None,
            run_id,
            tenant,
        }
    }

    /// The validated request.
    pub fn request(&self) -> &RunRequest {
        self.request
    }

    /// The evidence to read.
    pub fn evidence(&self) -> &'a dyn EvidenceSource {
        self.evidence
    }

    /// The run's id (e.g. for associated data that binds an output to its run).
    pub fn run_id(&self) -> &crate::id::RunId {
        self.run_id
    }

    /// The tenant the run belongs to.
    pub fn tenant(&self) -> &crate::id::TenantId {
        self.tenant
    }

    /// Call when the profile found no records to export (`what` names what it looked for).
    /// Fails with `ERR_EXPORT_EVIDENCE_EMPTY` when the evidence holds none; returns `Ok` when
    /// the request's selectors left out every record the evidence holds, so the profile
    /// writes its outputs empty and the run succeeds with `WARN_EXPORT_SELECTION_EMPTY`.
    ///
    /// # Errors
    /// [`ExportError::EvidenceEmpty`] naming the evidence and `what`.
    pub fn no_records(&self, what: impl Into<String>) -> Result<()> {
        match self.selection {
            Some(s) if s.selection().seen() > 0 => Ok(()),
            _ => Err(ExportError::EvidenceEmpty { root: self.evidence.describe(), what: what.into() }),
        }
    }

    /// The request's targets, or `default` when it names none.
    pub fn targets_or(&self, default: &[Target]) -> Vec<Target> {
        if self.request.targets.is_empty() {
            default.to_vec()
        } else {
            self.request.targets.clone()
        }
    }

    /// The request's formats, or `default` when it names none.
    pub fn formats_or(&self, default: &[Format]) -> Vec<Format> {
        if self.request.formats.is_empty() {
            default.to_vec()
        } else {
            self.request.formats.clone()
        }
    }

    /// The request's compression, or `default`.
    pub fn compression_or(&self, default: Compression) -> Compression {
        self.request.compression.unwrap_or(default)
    }

    /// Archive settings for an archive compressed with `compression` and entries dated
    /// `mtime`, with the request's `compressionLevel` applied (an error when it is out of
    /// range for `compression`).
    pub fn archive_options(&self, compression: Compression, mtime: u64) -> Result<crate::archive::ArchiveOptions> {
        let mut o = crate::archive::ArchiveOptions::new(compression, mtime);
        if let Some(level) = self.request.compression_level {
            match compression {
                Compression::Gzip if level > 9 => {
                    return Err(ExportError::invalid(
                        "compressionLevel",
                        format!("{level} is out of range 1..=9 for gzip"),
                    ))
                }
                Compression::Gzip => o.gzip_level = level,
                Compression::Zstd => o.zstd_level = level as i32,
                Compression::None => {}
            }
        }
        Ok(o)
    }

    /// The run's signer, when the request enables signing. The engine signs the run manifest
    /// and provenance itself; a profile uses this only for signatures that live inside its
    /// own artifacts (e.g. a DSSE envelope inside a bundle).
    pub fn signer(&self) -> Option<&dyn crate::sign::Signer> {
        self.signer.as_deref()
    }

    /// Records a warning in the run record (`warnings[]`): something skipped or worked around
    /// that did not fail the run. `code` is a stable `WARN_*` string.
    pub fn warn(&mut self, code: &str, message: impl Into<String>) {
        self.warnings.push(crate::model::RunError { code: code.to_owned(), message: message.into() });
    }

    /// The pinned time if the request or the embedder pinned one.
    pub fn pinned_time(&self) -> Option<TimeAnchor> {
        self.pinned
    }

    /// The time to write into outputs: the pinned time, else `newest_evidence`, else the epoch.
    /// The first call fixes the anchor for the run (it is recorded in the run manifest).
    pub fn time_anchor(&mut self, newest_evidence: Option<Timestamp>) -> TimeAnchor {
        *self.anchor.get_or_insert_with(|| TimeAnchor::resolve(self.pinned, newest_evidence))
    }

    /// Reports progress.
    pub fn progress(&self, p: Progress) {
        (self.progress)(p);
    }

    /// `Err(Cancelled)` once the run was cancelled.
    pub fn check_cancelled(&self) -> Result<()> {
        self.cancel.check()
    }

    /// A fresh name in the staging area: never reused within the run, even when
    /// [`ExportContext::run_nested`] takes artifacts off the list.
    fn next_local(&mut self, what: &str) -> PathBuf {
        self.scratch_seq += 1;
        self.staging.join(format!("{what}-{}", self.scratch_seq))
    }

    /// A new scratch file in the run's staging area (deleted with it), for spooling.
    pub fn scratch_file(&mut self) -> Result<(PathBuf, File)> {
        let path = self.next_local("scratch");
        let f = File::options().read(true).write(true).create_new(true).open(&path).at(&path)?;
        staged_mode(&path)?;
        Ok((path, f))
    }

    /// Writes one artifact: `write` streams its bytes into the given writer; the bytes are
    /// hashed as they pass. The artifact counts only if `write` returns `Ok`.
    pub fn write_artifact<T>(
        &mut self,
        spec: ArtifactSpec,
        write: impl FnOnce(&mut dyn Write) -> Result<T>,
    ) -> Result<(StagedArtifact, T)> {
        self.check_new(&spec)?;
        let local = self.next_local("artifact");
        let file = File::create(&local).at(&local)?;
        staged_mode(&local)?;
        let mut w = HashingWriter::new(BufWriter::with_capacity(256 * 1024, file));
        let out = write(&mut w)?;
        w.flush().at(&local)?;
        let (_, size, sha256) = w.finish();
        let staged = StagedArtifact { spec, local, size, sha256 };
        self.push_artifact(staged.clone());
        Ok((staged, out))
    }

    /// Makes a finished local file an artifact without copying it: the file (e.g. one from
    /// [`ExportContext::scratch_file`], closed) is moved into staging and hashed once. For
    /// outputs that need random access while being built, such as a database file.
    pub fn adopt_file(&mut self, spec: ArtifactSpec, file: &Path) -> Result<StagedArtifact> {
        let (size, sha256) = crate::hashing::hash_reader(File::open(file).at(file)?).at(file)?;
        self.adopt_file_with_digest(spec, file, size, sha256)
    }

    /// [`ExportContext::adopt_file`] for a file whose size and digest the profile already
    /// computed (e.g. while archiving it), so it is not read again here. Publishing checks
    /// them: the sink's receipt must match, else the run fails.
    pub fn adopt_file_with_digest(
        &mut self,
        spec: ArtifactSpec,
        file: &Path,
        size: u64,
        sha256: Sha256Digest,
    ) -> Result<StagedArtifact> {
        self.check_new(&spec)?;
        let local = self.next_local("artifact");
        if std::fs::rename(file, &local).is_err() {
            // Another filesystem: copy, then drop the original.
            std::fs::copy(file, &local).at(file)?;
            std::fs::remove_file(file).at(file)?;
        }
        staged_mode(&local)?;
        let staged = StagedArtifact { spec, local, size, sha256 };
        self.push_artifact(staged.clone());
        Ok(staged)
    }

    /// Runs another profile inside this run, for composite profiles (a mirror holding a
    /// Trivy DB), and hands back the artifacts it staged, taken off this run's list:
    /// re-publish the ones to keep under new paths with [`ExportContext::alias_artifact`];
    /// the others are dropped. Its warnings and time anchor become this run's (anchor first
    /// to keep your own).
    ///
    /// # Errors
    /// Whatever the nested profile's `export` returns.
    pub fn run_nested(&mut self, profile: &dyn Profile) -> Result<Vec<StagedArtifact>> {
        let mark = self.artifacts.len();
        profile.export(self)?;
        let taken = self.artifacts.split_off(mark);
        for a in &taken {
            self.staged_paths.remove(a.spec.path.as_str());
        }
        Ok(taken)
    }

    /// [`ExportContext::run_nested`] over other evidence: the nested profile reads `evidence`
    /// instead of the run's (a mirror builds its Trivy DB from its own canonical records, so
    /// whoever holds those records can build the same DB again). The records are taken as
    /// already selected: the request's selectors are not applied to them again.
    ///
    /// # Errors
    /// Whatever the nested profile's `export` returns.
    pub fn run_nested_with(
        &mut self,
        profile: &dyn Profile,
        evidence: &dyn EvidenceSource,
    ) -> Result<Vec<StagedArtifact>> {
        let mut nested = ExportContext::outside_run(
            self.request,
            evidence,
            self.staging,
            self.cancel,
            self.progress,
            self.run_id,
            self.tenant,
        );
        nested.pinned = self.pinned;
        nested.anchor = self.anchor;
        nested.scratch_seq = self.scratch_seq;
        nested.signer = self.signer.clone();
        let result = profile.export(&mut nested);
        self.scratch_seq = nested.scratch_seq;
        self.anchor = self.anchor.or(nested.anchor);
        self.warnings.append(&mut nested.warnings);
        result?;
        Ok(nested.artifacts)
    }

    /// Publishes the bytes of an already staged artifact under a second path (e.g. an archive
    /// that is also an OCI blob), without copying them.
    pub fn alias_artifact(&mut self, spec: ArtifactSpec, of: &StagedArtifact) -> Result<StagedArtifact> {
        self.check_new(&spec)?;
        let staged = StagedArtifact { spec, local: of.local.clone(), size: of.size, sha256: of.sha256 };
        self.push_artifact(staged.clone());
        Ok(staged)
    }

    fn push_artifact(&mut self, staged: StagedArtifact) {
        self.staged_paths.insert(staged.spec.path.as_str().to_owned());
        self.artifacts.push(staged);
    }

    /// Refuses reserved names and paths already staged.
    fn check_new(&self, spec: &ArtifactSpec) -> Result<()> {
        if [MANIFEST_FILE, SIGNED_MANIFEST_FILE, PROVENANCE_FILE].contains(&spec.path.as_str()) {
            return Err(ExportError::PathUnsafe {
                path: spec.path.to_string(),
                reason: "reserved for the run's own manifest and signatures".into(),
            });
        }
        if self.staged_paths.contains(spec.path.as_str()) {
            return Err(ExportError::PathUnsafe {
                path: spec.path.to_string(),
                reason: "artifact written twice".into(),
            });
        }
        Ok(())
    }
}

/// Staged files are 0644 whatever the umask: the mode they are published with, so a sink can
/// link them instead of copying (the staging directory itself is private, 0700).
fn staged_mode(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).at(path)?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Runs a profile's `export` outside any run — no store, sink, manifest or signature — into
/// `staging` (an empty directory the caller owns and removes), with its time anchored at
/// `anchor`, and returns what it staged. For re-deriving an artifact from inputs a consumer
/// already holds and checking it against a signed digest (applying a mirror delta rebuilds
/// its Trivy DB this way): the same profile, request, evidence and anchor give the same bytes.
///
/// # Errors
/// Whatever the profile's `export` returns.
pub fn export_detached(
    profile: &dyn Profile,
    request: &RunRequest,
    evidence: &dyn EvidenceSource,
    staging: &Path,
    anchor: TimeAnchor,
) -> Result<Vec<StagedArtifact>> {
    let run_id = crate::id::RunId::parse("detached")?;
    let tenant = crate::id::TenantId::parse("detached")?;
    let cancel = CancelFlag::new();
    let mut ctx = ExportContext::outside_run(request, evidence, staging, &cancel, &|_| {}, &run_id, &tenant);
    ctx.anchor = Some(anchor);
    profile.export(&mut ctx)?;
    Ok(ctx.artifacts)
}

#[cfg(test)]
mod flag_tests {
    use super::*;

    /// A run stopped by a cancel or a timeout that then loses its lease reports the lost
    /// lease (so retries stop and its cleanup spares what another worker published).
    #[test]
    fn a_lost_lease_shows_through_an_earlier_cancel_or_timeout() {
        let cancelled = CancelFlag::new();
        cancelled.cancel();
        assert!(!cancelled.lease_lost());
        assert!(matches!(cancelled.check(), Err(ExportError::Cancelled)));
        cancelled.lose_lease();
        assert!(cancelled.lease_lost());
        assert!(matches!(cancelled.check(), Err(ExportError::Interrupted { .. })));

        let timed_out = CancelFlag::new();
        timed_out.time_out(5);
        timed_out.set_deadline(std::time::Instant::now() + std::time::Duration::from_millis(5));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(timed_out.lease_lost(), "the lease deadline passed after the timeout");
        assert!(matches!(timed_out.check(), Err(ExportError::Interrupted { .. })));

        let running = CancelFlag::new();
        running.set_deadline(std::time::Instant::now() + std::time::Duration::from_secs(3600));
        assert!(!running.is_cancelled() && !running.lease_lost());
    }
}
