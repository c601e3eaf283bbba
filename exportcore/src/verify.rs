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

use crate::archive::open_archive;
use crate::error::{ExportError, IoContext, Result};
use crate::hashing::{hash_reader, Hasher, Sha256Digest};
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::model::ArtifactType;
use crate::path::ArtifactPath;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// One verification failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyFailure {
    /// The file (for archive members: `archive!member`).
    pub path: String,
    /// What is wrong.
    pub problem: String,
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
}

impl VerifyReport {
    /// True when nothing failed.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
    fn fail(&mut self, path: impl Into<String>, problem: impl Into<String>) {
        self.failures.push(VerifyFailure { path: path.into(), problem: problem.into() });
    }
    /// Converts a failed report into [`ExportError::VerificationFailed`] naming the first failure.
    pub fn into_result(self) -> Result<Self> {
        match self.failures.first() {
            None => Ok(self),
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
    let meta = std::fs::metadata(path).at(path)?;
    let mut report = VerifyReport { target: path.display().to_string(), ..Default::default() };
    if meta.is_dir() {
        verify_dir(path, &mut report)?;
    } else {
        let f = std::fs::File::open(path).at(path)?;
        verify_archive(f, "", &mut report);
    }
    Ok(report)
}

fn is_archive_name(name: &str) -> bool {
    [".tar", ".tar.gz", ".tgz", ".tar.zst"].iter().any(|s| name.ends_with(s))
}

fn read_manifest(bytes: &[u8], label: &str, report: &mut VerifyReport) -> Option<Manifest> {
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

fn verify_dir(dir: &Path, report: &mut VerifyReport) -> Result<()> {
    let mut found = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&d).at(&d)? {
            let entry = entry.at(&d)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel_child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let ft = entry.file_type().at(entry.path())?;
            if ft.is_dir() {
                stack.push((entry.path(), rel_child));
            } else if ft.is_file() {
                let f = std::fs::File::open(entry.path()).at(entry.path())?;
                let (size, digest) = hash_reader(f).at(entry.path())?;
                found.insert(rel_child, (size, digest));
            } else {
                report.fail(rel_child, "not a regular file");
            }
        }
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    if !found.contains_key(MANIFEST_FILE) {
        report.fail(MANIFEST_FILE, "missing");
        return Ok(());
    }
    let bytes = std::fs::read(&manifest_path).at(&manifest_path)?;
    let Some(manifest) = read_manifest(&bytes, MANIFEST_FILE, report) else { return Ok(()) };
    compare(&manifest, &found, "", report);
    for e in &manifest.entries {
        if (e.kind == Some(ArtifactType::Bundle) || is_archive_name(e.path.as_str()))
            && found.contains_key(e.path.as_str())
        {
            let local = dir.join(e.path.as_str());
            let f = std::fs::File::open(&local).at(&local)?;
            verify_archive(f, &format!("{}!", e.path), report);
        }
    }
    Ok(())
}

/// Verifies an archive stream; failures are prefixed with `prefix`.
pub fn verify_archive<R: Read + 'static>(r: R, prefix: &str, report: &mut VerifyReport) {
    let label = if prefix.is_empty() { report.target.clone() } else { prefix.trim_end_matches('!').to_owned() };
    let mut ar = match open_archive(r) {
        Ok(a) => a,
        Err(e) => return report.fail(label, format!("cannot read archive: {e}")),
    };
    let entries = match ar.entries() {
        Ok(e) => e,
        Err(e) => return report.fail(label, format!("cannot read archive: {e}")),
    };
    let mut found = BTreeMap::new();
    let mut manifest_bytes = None;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => return report.fail(label, format!("archive is corrupt: {e}")),
        };
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = raw.trim_end_matches('/').to_owned();
        let kind = entry.header().entry_type();
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
                Err(e) => return report.fail(format!("{prefix}{name}"), format!("archive is corrupt: {e}")),
            }
        }
        if let Some(k) = keep {
            manifest_bytes = Some(k);
        }
        if found.insert(name.clone(), hasher.finish()).is_some() {
            report.fail(format!("{prefix}{name}"), "duplicate entry");
        }
    }
    let Some(bytes) = manifest_bytes else {
        return report.fail(format!("{prefix}{MANIFEST_FILE}"), "missing");
    };
    if let Some(m) = read_manifest(&bytes, &format!("{prefix}{MANIFEST_FILE}"), report) {
        compare(&m, &found, prefix, report);
    }
}
