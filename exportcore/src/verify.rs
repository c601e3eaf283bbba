//! Offline verification of a run's output directory or of a bundle archive: every digest and
//! size in the manifest, no missing and no extra file, a canonical manifest, safe entry names.
//! Bundles listed in a run manifest are opened and verified too.
//!
//! ```no_run
//! let report = exportcore::verify::verify_path(std::path::Path::new("out/json-raw"))?;
//! for f in &report.failures {
//!     eprintln!("{}: {}", f.path, f.problem);
//! }
//! assert!(report.is_ok());
//! # Ok::<(), exportcore::ExportError>(())
//! ```

use crate::error::{ExportError, IoContext, Result};
use crate::hashing::{hash_reader, Hasher, Sha256Digest};
use crate::manifest::{Manifest, TimeSource, MANIFEST_FILE};
use crate::manifest::{PROVENANCE_FILE, SIGNED_MANIFEST_FILE};
use crate::model::ArtifactType;
use crate::model::Timestamp;
use crate::path::ArtifactPath;
use crate::sign::dsse::{self, Envelope};
use crate::sign::{provenance, Verifier};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// One verification failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyFailure {
    /// The file (for archive members: `archive!member`).
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// `ERR_EXPORT_VERIFY_FAILED`, or `ERR_EXPORT_STALE` for a staleness failure.
    pub code: &'static str,
}

/// How old a bundle may be: `createdAt` must lie within `[now - max_age, now + max_drift]`.
#[derive(Clone, Copy, Debug)]
pub struct StalenessPolicy {
    /// Oldest acceptable age.
    pub max_age: std::time::Duration,
    /// Allowed clock drift into the future.
    pub max_drift: std::time::Duration,
    /// The verifier's "now".
    pub now: Timestamp,
}

impl StalenessPolicy {
    /// Checks a manifest time.
    pub fn check(&self, created_at: Timestamp, source: TimeSource) -> std::result::Result<(), String> {
        let age = self.now.unix() - created_at.unix();
        if age < 0 && age.unsigned_abs() > self.max_drift.as_secs() {
            return Err(format!(
                "created at {created_at}, {}s after now ({}); allowed drift {}s",
                age.unsigned_abs(),
                self.now,
                self.max_drift.as_secs()
            ));
        }
        if age > 0 && age.unsigned_abs() > self.max_age.as_secs() {
            return Err(format!(
                "created at {created_at} (time source: {}), {}s old; maximum age {}s",
                serde_json::to_value(source).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                age,
                self.max_age.as_secs()
            ));
        }
        Ok(())
    }
}

/// What to check beyond digests.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Trusted keys: when non-empty, `manifest.dsse.json` and `provenance.dsse.json` must
    /// exist and carry a valid signature by one of them.
    pub verifiers: Vec<Arc<dyn Verifier>>,
    /// Refuse bundles outside this time window.
    pub staleness: Option<StalenessPolicy>,
    /// Top-level files of local state that are not part of the output (an applied mirror's
    /// `appliedExportIds.log`): neither checked nor reported as extra.
    pub local_files: Vec<String>,
}

/// What a verification found about signatures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Signatures {
    /// No signature envelope: the content is only consistent with its own manifest.
    #[default]
    Unsigned,
    /// Envelopes are present, but no key was given: nothing proves who made the content.
    NotChecked,
    /// Every envelope verified with a trusted key.
    Valid,
}

/// The outcome of a verification.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// What was verified.
    pub target: String,
    /// Entries whose digest was checked and matched.
    pub verified: u64,
    /// Everything that failed.
    pub failures: Vec<VerifyFailure>,
    /// Whether signatures were present and checked (meaningful when nothing failed).
    pub signatures: Signatures,
    /// What the run's selectors selected, as its manifest claims (`metadata.selection`), when
    /// the run had selectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<crate::select::Selection>,
    /// The size and SHA-256 of every regular file of a verified directory, by path relative
    /// to it, as this verification read them (each file once): checks layered on top (a
    /// mirror's OCI layout and TUF targets) look digests up here instead of reading the files
    /// again, so every check sees the same bytes.
    #[serde(skip)]
    pub digests: BTreeMap<String, (u64, Sha256Digest)>,
}

impl VerifyReport {
    /// True when nothing failed.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Reads `rel` (at most [`crate::files::MAX_MANIFEST_BYTES`]) from the directory this
    /// report verified, and returns its bytes only if they are the bytes the verification
    /// read: a caller that acts on a file after verifying its directory (decrypting with the
    /// keys a manifest names, applying a delta's diff) must act on the verified bytes, not on
    /// whatever a second read finds.
    ///
    /// # Errors
    /// `ERR_EXPORT_VERIFY_FAILED` when the file was not part of the verified directory or
    /// changed since; I/O errors.
    pub fn read_verified(&self, dir: &Path, rel: &str) -> Result<Vec<u8>> {
        let path = dir.join(rel);
        let Some(&(size, sha)) = self.digests.get(rel) else {
            return Err(ExportError::VerificationFailed {
                path: path.display().to_string(),
                reason: "not among the files this verification read".into(),
            });
        };
        let bytes = crate::files::read_capped(&path, crate::files::MAX_MANIFEST_BYTES)?;
        if bytes.len() as u64 != size || Sha256Digest::of(&bytes) != sha {
            return Err(ExportError::VerificationFailed {
                path: path.display().to_string(),
                reason: "changed since it was verified".into(),
            });
        }
        Ok(bytes)
    }
    fn fail(&mut self, path: impl Into<String>, problem: impl Into<String>) {
        self.failures.push(VerifyFailure {
            path: path.into(),
            problem: problem.into(),
            code: "ERR_EXPORT_VERIFY_FAILED",
        });
    }
    fn stale(&mut self, path: impl Into<String>, problem: impl Into<String>) {
        self.failures.push(VerifyFailure { path: path.into(), problem: problem.into(), code: "ERR_EXPORT_STALE" });
    }
    /// Converts a failed report into an error naming the first failure
    /// ([`ExportError::VerificationFailed`], or [`ExportError::Stale`]).
    pub fn into_result(self) -> Result<Self> {
        match self.failures.first() {
            None => Ok(self),
            Some(f) if f.code == "ERR_EXPORT_STALE" => {
                Err(ExportError::Stale { path: f.path.clone(), reason: f.problem.clone() })
            }
            Some(f) => Err(ExportError::VerificationFailed { path: f.path.clone(), reason: f.problem.clone() }),
        }
    }
}

/// Verifies a run output directory or a bundle archive file.
///
/// # Errors
/// Only I/O errors on `path` itself (missing, unreadable); everything else is a failure in
/// the report.
pub fn verify_path(path: &Path) -> Result<VerifyReport> {
    verify_path_with(path, &VerifyOptions::default())
}

/// [`verify_path`] with signature and staleness checks.
pub fn verify_path_with(path: &Path, options: &VerifyOptions) -> Result<VerifyReport> {
    let meta = std::fs::metadata(path).at(path)?;
    let mut report = VerifyReport { target: path.display().to_string(), ..Default::default() };
    if meta.is_dir() {
        verify_dir(path, options, &mut report)?;
    } else {
        if !options.verifiers.is_empty() {
            report.fail(
                report.target.clone(),
                "a lone bundle carries no signature; verify the run's output directory with --key",
            );
        }
        let f = crate::files::open_regular(path)?;
        if let Some(m) = verify_archive(f, "", &mut report) {
            check_time(&m, options, MANIFEST_FILE, &mut report);
        }
    }
    Ok(report)
}

fn check_time(m: &Manifest, options: &VerifyOptions, label: &str, report: &mut VerifyReport) {
    if let Some(policy) = &options.staleness {
        if let Err(e) = policy.check(m.created_at, m.created_at_source) {
            report.stale(label, e);
        }
    }
}

fn is_archive_name(name: &str) -> bool {
    [".tar", ".tar.gz", ".tgz", ".tar.zst"].iter().any(|s| name.ends_with(s))
}

fn read_manifest(bytes: &[u8], label: &str, report: &mut VerifyReport) -> Option<Manifest> {
    let version = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("version").and_then(|v| v.as_str()).map(str::to_owned));
    if let Some(v) = version.filter(|v| !v.starts_with("exportcore-")) {
        report.fail(label, format!("{FOREIGN_MANIFEST} (version {v:?})"));
        return None;
    }
    match Manifest::parse(bytes) {
        Err(e) => {
            report.fail(label, e);
            None
        }
        Ok(m) => {
            if m.to_canonical_bytes() != bytes {
                report.fail(label, "manifest is not in canonical JSON form (edited?)");
            }
            Some(m)
        }
    }
}

fn compare(
    manifest: &Manifest,
    found: &BTreeMap<String, (u64, Sha256Digest)>,
    prefix: &str,
    report: &mut VerifyReport,
) {
    for e in &manifest.entries {
        let label = format!("{prefix}{}", e.path);
        match found.get(e.path.as_str()) {
            None => report.fail(label, "missing (listed in the manifest)"),
            Some((size, _)) if *size != e.size => report.fail(label, format!("size {size} != manifest {}", e.size)),
            Some((_, digest)) if *digest != e.sha256 => {
                report.fail(label, format!("sha256 {digest} != manifest {}", e.sha256))
            }
            Some(_) => report.verified += 1,
        }
    }
    for path in found.keys() {
        if path != MANIFEST_FILE && manifest.entry(path).is_none() {
            report.fail(format!("{prefix}{path}"), "extra file (not listed in the manifest)");
        }
    }
}

/// Hashes every regular file of `dir` (relative path → size, SHA-256), on all workers; files
/// hard-linked to each other (a mirror's OCI blobs and TUF targets are links to its files) are
/// read once, and each other name of the same file is checked to still be that file after the
/// read (else it is read on its own).
fn hash_tree(dir: &Path, report: &mut VerifyReport) -> Result<BTreeMap<String, (u64, Sha256Digest)>> {
    let mut files: Vec<(String, std::path::PathBuf, Option<FileId>)> = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&d).at(&d)? {
            let entry = entry.at(&d)?;
            // No manifest lists a name that is not UTF-8: such a file is reported, never
            // folded (lossily) onto a listed name.
            let name = match entry.file_name().into_string() {
                Ok(name) => name,
                Err(raw) => {
                    let shown = raw.to_string_lossy().into_owned();
                    let at = if rel.is_empty() { shown } else { format!("{rel}/{shown}") };
                    report.fail(at, "a file name that is not UTF-8 (extra file, never listed)");
                    continue;
                }
            };
            let rel_child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let ft = entry.file_type().at(entry.path())?;
            if ft.is_dir() {
                stack.push((entry.path(), rel_child));
            } else if ft.is_file() {
                let id = crate::files::file_identity(&entry.metadata().at(entry.path())?);
                files.push((rel_child, entry.path(), id));
            } else {
                report.fail(rel_child, "not a regular file");
            }
        }
    }
    // One read per file: the first name of each (device, inode) in path order.
    files.sort();
    let mut first: BTreeMap<FileId, usize> = BTreeMap::new();
    let mut reads = Vec::new();
    for (i, (_, path, id)) in files.iter().enumerate() {
        match id {
            Some(id) if first.contains_key(id) => {}
            _ => {
                if let Some(id) = id {
                    first.insert(*id, i);
                }
                reads.push((i, path.clone()));
            }
        }
    }
    let mut hashed: BTreeMap<usize, Hashed> = BTreeMap::new();
    let read_one = |(i, path): (usize, std::path::PathBuf)| -> Result<(usize, Hashed)> {
        let f = crate::files::open_regular(&path)?;
        let id = f.metadata().ok().as_ref().and_then(crate::files::file_identity);
        let (size, digest) = hash_reader(f).at(&path)?;
        Ok((i, (size, digest, id)))
    };
    crate::parallel::ordered_map(reads.into_iter().map(Ok), crate::parallel::default_workers(), read_one, |(i, h)| {
        hashed.insert(i, h);
        Ok(())
    })?;
    let mut found = BTreeMap::new();
    for (i, (rel, path, id)) in files.iter().enumerate() {
        let own = match hashed.get(&i) {
            Some(&(size, digest, _)) => (size, digest),
            None => {
                let leader = id.and_then(|id| first.get(&id)).and_then(|j| hashed.get(j));
                // The file read under the first name must be the one this name still is.
                let now = std::fs::symlink_metadata(path).ok().as_ref().and_then(crate::files::file_identity);
                match leader {
                    Some(&(size, digest, Some(read_id))) if now == Some(read_id) && *id == Some(read_id) => {
                        (size, digest)
                    }
                    _ => {
                        let (_, (size, digest, _)) = read_one((i, path.clone()))?;
                        (size, digest)
                    }
                }
            }
        };
        found.insert(rel.clone(), own);
    }
    Ok(found)
}

/// A file's (device, inode).
type FileId = (u64, u64);

/// Size and digest of a file as read, and the identity of the file read.
type Hashed = (u64, Sha256Digest, Option<FileId>);

fn verify_dir(dir: &Path, options: &VerifyOptions, report: &mut VerifyReport) -> Result<()> {
    let mut found = hash_tree(dir, report)?;
    report.digests = found.clone();
    for local in &options.local_files {
        found.remove(local.as_str());
    }
    if !found.contains_key(MANIFEST_FILE) {
        report.fail(MANIFEST_FILE, "missing");
        return Ok(());
    }
    // The bytes the tree walk hashed, or an error if the file changed since: everything
    // below (entries, signatures) and every later `read_verified` must see one manifest.
    let bytes = report.read_verified(dir, MANIFEST_FILE)?;
    let Some(manifest) = read_manifest(&bytes, MANIFEST_FILE, report) else { return Ok(()) };
    if let Some(selection) = manifest.metadata.get("selection") {
        match serde_json::from_value(selection.clone()) {
            Ok(s) => report.selection = Some(s),
            Err(e) => report.fail(MANIFEST_FILE, format!("metadata.selection is malformed: {e}")),
        }
    }
    for sidecar in [SIGNED_MANIFEST_FILE, PROVENANCE_FILE] {
        found.remove(sidecar);
    }
    compare(&manifest, &found, "", report);
    check_time(&manifest, options, MANIFEST_FILE, report);
    check_signatures(dir, &bytes, &found, options, report)?;
    for e in &manifest.entries {
        let bundle = match e.kind {
            Some(kind) => kind == ArtifactType::Bundle,
            None => is_archive_name(e.path.as_str()),
        };
        // Databases the run built as archives (a Trivy `db.tar.gz`) are opened too when no key
        // vouches for the bytes: what `tar` would unpack from them must be plain files under
        // safe names. Data carried as it is (a mirror's blobs: image layers hold links) is not.
        let other_archive =
            e.kind == Some(ArtifactType::Database) && options.verifiers.is_empty() && is_archive_name(e.path.as_str());
        // An archive whose own digest already failed is not opened (nothing in it can be
        // trusted, and it may be a decompression bomb).
        let failed = report.failures.iter().any(|f| f.path == e.path.as_str());
        if (bundle || other_archive) && !failed && found.contains_key(e.path.as_str()) {
            let local = dir.join(e.path.as_str());
            let f = crate::files::open_regular(&local)?;
            verify_nested_archive(f, &format!("{}!", e.path), bundle, report);
        }
    }
    Ok(())
}

/// Checks `manifest.dsse.json` and `provenance.dsse.json` of a run directory: with trusted
/// keys both must be present and validly signed; without, a present signed manifest must at
/// least carry exactly `manifest.json`.
fn check_signatures(
    dir: &Path,
    manifest_bytes: &[u8],
    found: &BTreeMap<String, (u64, Sha256Digest)>,
    options: &VerifyOptions,
    report: &mut VerifyReport,
) -> Result<()> {
    let verifiers: Vec<&dyn Verifier> = options.verifiers.iter().map(|v| &**v as &dyn Verifier).collect();
    let present = [SIGNED_MANIFEST_FILE, PROVENANCE_FILE].iter().any(|f| dir.join(f).symlink_metadata().is_ok());
    report.signatures = match (present, verifiers.is_empty()) {
        (_, false) => Signatures::Valid, // any failure below makes the report fail
        (true, true) => Signatures::NotChecked,
        (false, true) => Signatures::Unsigned,
    };
    if let Some(payload) = open_envelope(dir, SIGNED_MANIFEST_FILE, dsse::MANIFEST_PAYLOAD_TYPE, &verifiers, report)? {
        if payload == manifest_bytes {
            report.verified += 1;
        } else {
            report.fail(SIGNED_MANIFEST_FILE, "signed payload differs from manifest.json");
        }
    }
    if let Some(statement) = open_envelope(dir, PROVENANCE_FILE, dsse::INTOTO_PAYLOAD_TYPE, &verifiers, report)? {
        check_subjects(&statement, manifest_bytes, found, report);
    }
    Ok(())
}

/// The payload of the DSSE envelope `name` in `dir`: checked against `verifiers` when there
/// are any (then the envelope must exist), only decoded otherwise. Failures go to the report
/// and give `None`.
fn open_envelope(
    dir: &Path,
    name: &str,
    payload_type: &str,
    verifiers: &[&dyn Verifier],
    report: &mut VerifyReport,
) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let bytes = match crate::files::read_capped(&path, crate::files::MAX_MANIFEST_BYTES) {
        Ok(b) => b,
        Err(ExportError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            if !verifiers.is_empty() {
                report.fail(name, "missing (a signature was required)");
            }
            return Ok(None);
        }
        // A FIFO, a directory, an endless file where the envelope should be: tampering, so a
        // failure of the check (exit 1), not an error of the tool.
        Err(ExportError::Io { source, .. })
            if matches!(source.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData) =>
        {
            report.fail(name, source.to_string());
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let payload = Envelope::parse_exact(&bytes, name).and_then(|env| {
        if verifiers.is_empty() {
            env.payload_bytes()
        } else {
            env.verify(payload_type, verifiers, name)
        }
    });
    match payload {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            report.fail(name, reason_of(e));
            Ok(None)
        }
    }
}

fn reason_of(e: ExportError) -> String {
    match e {
        ExportError::VerificationFailed { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn check_subjects(
    statement: &[u8],
    manifest_bytes: &[u8],
    found: &BTreeMap<String, (u64, Sha256Digest)>,
    report: &mut VerifyReport,
) {
    let v: serde_json::Value = match serde_json::from_slice(statement) {
        Ok(v) => v,
        Err(e) => return report.fail(PROVENANCE_FILE, format!("statement is not JSON: {e}")),
    };
    if v["_type"] != provenance::STATEMENT_TYPE {
        return report.fail(PROVENANCE_FILE, format!("not an in-toto Statement v1: {}", v["_type"]));
    }
    let mut subjects = BTreeMap::new();
    for s in v["subject"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or_default().to_owned();
        subjects.insert(name, s["digest"]["sha256"].as_str().unwrap_or_default().to_owned());
    }
    let manifest_digest = Sha256Digest::of(manifest_bytes).to_hex();
    let mut expected: BTreeMap<String, String> = found.iter().map(|(p, (_, d))| (p.clone(), d.to_hex())).collect();
    expected.insert(MANIFEST_FILE.into(), manifest_digest);
    if subjects == expected {
        report.verified += 1;
    } else {
        for (name, d) in &expected {
            match subjects.get(name) {
                None => report.fail(PROVENANCE_FILE, format!("{name} is not a subject")),
                Some(s) if s != d => report.fail(PROVENANCE_FILE, format!("subject {name} digest {s} != file {d}")),
                Some(_) => {}
            }
        }
        for name in subjects.keys().filter(|n| !expected.contains_key(*n)) {
            report.fail(PROVENANCE_FILE, format!("subject {name} has no file"));
        }
    }
}

/// An archive listed in a run manifest, checked inside: what `tar` would unpack from it (only
/// regular files under safe names, one compressed stream, nothing after its end). A bundle's
/// entries are also checked against its own `manifest.json`, unless that belongs to another
/// format (a profile's own layout, e.g. `devportal-offline/v1`, whose profile ships its own
/// verifier; its bytes are pinned by the run manifest's digest); an archive that is not a
/// bundle (`bundle` false: a Trivy DB's `db.tar.gz`) has no manifest to check against.
fn verify_nested_archive<R: Read + 'static>(r: R, prefix: &str, bundle: bool, report: &mut VerifyReport) {
    let mut inner = VerifyReport { target: report.target.clone(), ..Default::default() };
    verify_archive(r, prefix, &mut inner);
    let manifest = format!("{prefix}{MANIFEST_FILE}");
    let foreign = inner.failures.iter().any(|f| f.path == manifest && f.problem.starts_with(FOREIGN_MANIFEST));
    if !foreign && bundle {
        report.verified += inner.verified;
    }
    // Whatever is wrong with the archive itself stays a failure.
    inner.failures.retain(|f| {
        let listing =
            f.path == manifest && (f.problem.starts_with(FOREIGN_MANIFEST) || (!bundle && f.problem == "missing"));
        !listing
    });
    report.failures.extend(inner.failures);
}

/// Start of the failure text for a `manifest.json` of another format.
const FOREIGN_MANIFEST: &str = "not an exportcore manifest";

/// Verifies an archive stream; failures are prefixed with `prefix`. Returns the archive's
/// manifest when it could be read.
///
/// Reading stops early, without inflating the rest, at an entry whose size differs from what
/// an already read `manifest.json` declares (or that it does not list), and when the archive
/// expands like a decompression bomb before its manifest
/// ([`crate::archive::open_archive_guarded`]).
pub fn verify_archive<R: Read + 'static>(r: R, prefix: &str, report: &mut VerifyReport) -> Option<Manifest> {
    let label = if prefix.is_empty() { report.target.clone() } else { prefix.trim_end_matches('!').to_owned() };
    let (mut ar, guard) = match crate::archive::open_archive_guarded(r) {
        Ok(a) => a,
        Err(e) => {
            report.fail(label, format!("cannot read archive: {e}"));
            return None;
        }
    };
    let entries = match ar.entries() {
        Ok(e) => e,
        Err(e) => {
            report.fail(label, format!("cannot read archive: {e}"));
            return None;
        }
    };
    // The archive's manifest, read (once) as soon as its entry is: it declares the sizes of the
    // entries after it.
    let mut declared: Option<Manifest> = None;
    let mut manifest_seen = false;
    let mut found = BTreeMap::new();
    let mut rules = crate::archive::EntryRules::default();
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                report.fail(label, format!("archive is corrupt: {e}"));
                return None;
            }
        };
        let raw = match crate::archive::strict_entry_name(&mut entry) {
            Ok(name) => name,
            Err(problem) => {
                let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                report.fail(format!("{prefix}{shown}"), problem);
                return None;
            }
        };
        if let Err(problem) = rules.check(entry.header(), &raw) {
            // What tar would do with this entry is not what we read: nothing after it counts.
            report.fail(format!("{prefix}{raw}"), problem);
            return None;
        }
        let name = raw.trim_end_matches('/').to_owned();
        let kind = entry.header().entry_type();
        if declared.is_some() {
            // Room for the next entry's headers (a long name included).
            guard.allow(crate::archive::HEADER_ALLOWANCE);
        }
        if ArtifactPath::parse(&name).is_err() {
            report.fail(format!("{prefix}{raw}"), "unsafe entry name");
            continue;
        }
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            report.fail(format!("{prefix}{name}"), format!("not a regular file ({kind:?})"));
            continue;
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if let Some(m) = &declared {
            match m.entry(&name) {
                Some(e) if e.size == size => guard.allow(size),
                Some(e) => {
                    report.fail(format!("{prefix}{name}"), format!("size {size} != manifest {} (not read)", e.size));
                    return None;
                }
                None => {
                    report.fail(format!("{prefix}{name}"), "extra file (not listed in the manifest; not read)");
                    return None;
                }
            }
        }
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut keep = (name == MANIFEST_FILE).then(Vec::new);
        loop {
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    if let Some(k) = keep.as_mut() {
                        if k.len() < 64 << 20 {
                            k.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                Err(e) => {
                    report.fail(format!("{prefix}{name}"), format!("archive is corrupt: {e}"));
                    return None;
                }
            }
        }
        if let Some(k) = keep {
            manifest_seen = true;
            declared = read_manifest(&k, &format!("{prefix}{MANIFEST_FILE}"), report);
            if declared.is_some() {
                // Sizes are checked against it from here on: the archive may hold what it
                // declares, no more (not a ratio of its compressed size).
                guard.declared(crate::archive::TRAILER_ALLOWANCE);
            }
        }
        if found.insert(name.clone(), hasher.finish()).is_some() {
            report.fail(format!("{prefix}{name}"), "duplicate entry");
        }
    }
    if let Err(e) = crate::archive::finish_archive(ar) {
        report.fail(label, format!("archive is corrupt: {e}"));
        return None;
    }
    if !manifest_seen {
        report.fail(format!("{prefix}{MANIFEST_FILE}"), "missing");
        return None;
    }
    let m = declared?;
    compare(&m, &found, prefix, report);
    Some(m)
}

#[cfg(all(test, feature = "zstd"))]
mod tests {
    use super::*;
    use crate::manifest::{ManifestBuilder, ManifestEntry, TimeAnchor};

    /// A tar.zst of `entries` (name, declared size, bytes streamed), in the given order.
    fn tar_zst(entries: Vec<(&str, u64, Box<dyn Read>)>) -> Vec<u8> {
        tar_zst_then(entries, Vec::new())
    }

    /// [`tar_zst`], then `raw` entries appended with their headers as given (finished here).
    fn tar_zst_then(entries: Vec<(&str, u64, Box<dyn Read>)>, raw: Vec<(tar::Header, Box<dyn Read>)>) -> Vec<u8> {
        let enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap_or_else(|e| panic!("{e}"));
        let mut b = tar::Builder::new(enc);
        for (name, size, body) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, body).unwrap_or_else(|e| panic!("{e}"));
        }
        for (mut h, body) in raw {
            h.set_cksum();
            b.append(&h, body).unwrap_or_else(|e| panic!("{e}"));
        }
        b.into_inner().and_then(|e| e.finish()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn zeros(n: u64) -> Box<dyn Read> {
        Box::new(std::io::repeat(0).take(n))
    }

    fn manifest_listing(name: &str, size: u64) -> Vec<u8> {
        let mut b = ManifestBuilder::bundle("p", TimeAnchor::resolve(None, None));
        let entry = ManifestEntry::new(
            ArtifactPath::parse(name).unwrap_or_else(|e| panic!("{e}")),
            size,
            Sha256Digest::of(b""),
            "x",
        );
        b.add(entry).unwrap_or_else(|e| panic!("{e}"));
        b.build().to_canonical_bytes()
    }

    fn verify_bytes(bytes: Vec<u8>) -> VerifyReport {
        let mut report = VerifyReport { target: "bundle".into(), ..Default::default() };
        verify_archive(std::io::Cursor::new(bytes), "", &mut report);
        report
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_expansion_budget() {
        // 1 GiB of zeros before any manifest: a few hundred KiB compressed.
        let bomb = tar_zst(vec![("a.bin", 1 << 30, zeros(1 << 30))]);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let report = verify_bytes(bomb);
        assert!(report.failures.iter().any(|f| f.problem.contains("decompression bomb")), "{:?}", report.failures);
    }

    #[test]
    fn after_the_manifest_an_entry_of_another_size_is_not_inflated() {
        let manifest = manifest_listing("z.bin", 10);
        let len = manifest.len() as u64;
        let bytes = tar_zst(vec![
            ("manifest.json", len, Box::new(std::io::Cursor::new(manifest))),
            ("z.bin", 1 << 30, zeros(1 << 30)),
        ]);
        let report = verify_bytes(bytes);
        assert!(
            report.failures.iter().any(|f| f.path == "z.bin" && f.problem.contains("(not read)")),
            "{:?}",
            report.failures
        );
        let unlisted = tar_zst(vec![
            ("manifest.json", len, Box::new(std::io::Cursor::new(manifest_listing("z.bin", 10)))),
            ("y.bin", 5, zeros(5)),
        ]);
        let report = verify_bytes(unlisted);
        assert!(
            report.failures.iter().any(|f| f.path == "y.bin" && f.problem.contains("not listed")),
            "{:?}",
            report.failures
        );
    }

    /// A directory entry whose size field covers a hidden entry: the `tar` crate skips it, GNU
    /// tar unpacks it. Refused, whatever the manifest says.
    #[test]
    fn a_directory_entry_with_data_is_refused() {
        let mut hidden = tar::Header::new_ustar();
        hidden.set_path("a.bin").unwrap_or_else(|e| panic!("{e}"));
        hidden.set_size(4);
        hidden.set_mode(0o644);
        hidden.set_cksum();
        let mut smuggled = hidden.as_bytes().to_vec();
        smuggled.extend_from_slice(b"evil");
        smuggled.resize(1024, 0);
        let manifest = manifest_listing("a.bin", 0);
        let mut dir = tar::Header::new_ustar();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_path("d/").unwrap_or_else(|e| panic!("{e}"));
        dir.set_size(smuggled.len() as u64);
        dir.set_mode(0o755);
        let bytes = tar_zst_then(
            vec![
                ("manifest.json", manifest.len() as u64, Box::new(std::io::Cursor::new(manifest))),
                ("a.bin", 0, zeros(0)),
            ],
            vec![(dir, Box::new(std::io::Cursor::new(smuggled)))],
        );
        let report = verify_bytes(bytes);
        assert!(
            report.failures.iter().any(|f| f.path == "d/" && f.problem.contains("declares 1024 bytes")),
            "{:?}",
            report.failures
        );
    }

    /// `tar` reads a GNU long-name header's body whole before its entry reaches us: after the
    /// manifest, one declaring 256 MiB stops at what the manifest allows, before it is read
    /// into memory.
    #[test]
    fn after_the_manifest_an_oversized_long_name_header_is_not_read() {
        let manifest = manifest_listing("z.bin", 10);
        let mut long = tar::Header::new_gnu();
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_size(256 << 20);
        let bytes = tar_zst_then(
            vec![("manifest.json", manifest.len() as u64, Box::new(std::io::Cursor::new(manifest)))],
            vec![(long, Box::new(std::io::repeat(b'a').take(256 << 20)))],
        );
        let report = verify_bytes(bytes);
        assert!(
            report.failures.iter().any(|f| f.problem.contains("more than its manifest declares")),
            "{:?}",
            report.failures
        );
    }
}
