//! Verifying a mirror run directory: the run manifest (every file, and its signatures), the
//! OCI layout's own digests, and the TUF chain at a chosen time, with every TUF target
//! compared to the file in `mirror/`.

use crate::tuf;
use exportcore::verify::{VerifyFailure, VerifyOptions, VerifyReport};
use exportcore::{Result, Timestamp};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// True when `dir` looks like the output of a mirror run (`mirror/export.json` or
/// `tuf/metadata/`).
pub fn is_mirror(dir: &Path) -> bool {
    dir.join("mirror/export.json").is_file() || dir.join("tuf/metadata").is_dir()
}

/// An export id as the applied-delta log holds them: `sha256:` and 64 hex digits.
pub(crate) fn is_export_id(line: &str) -> bool {
    line.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// True when `dir` is the output of a `mirror:delta` run (`delta/manifest.diff.json`).
pub fn is_delta(dir: &Path) -> bool {
    dir.join(crate::DIFF_FILE).is_file()
}

/// A delta holds only what its base lacks: no whole OCI layout or TUF chain to check until it
/// is applied. Here: its run manifest (every file, and the signatures with `options.verifiers`)
/// and that its diff and the new tree's manifest parse; [`crate::apply`] checks the rest
/// against the base.
fn verify_delta(dir: &Path, options: &VerifyOptions) -> Result<VerifyReport> {
    let mut report = exportcore::verify::verify_path_with(dir, options)?;
    let read = |rel: &str| exportcore::files::read_capped(&dir.join(rel), exportcore::files::MAX_MANIFEST_BYTES);
    match read(crate::DIFF_FILE).map(|b| serde_json::from_slice::<Value>(&b)) {
        Ok(Ok(diff)) if diff["version"] == crate::DIFF_VERSION => {}
        Ok(Ok(diff)) => fail(&mut report, crate::DIFF_FILE, format!("unknown version {}", diff["version"])),
        Ok(Err(e)) => fail(&mut report, crate::DIFF_FILE, format!("not JSON: {e}")),
        Err(e) => fail(&mut report, crate::DIFF_FILE, e.to_string()),
    }
    match read(crate::FULL_MANIFEST).map(|b| exportcore::Manifest::parse(&b)) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => fail(&mut report, crate::FULL_MANIFEST, e),
        Err(e) => fail(&mut report, crate::FULL_MANIFEST, e.to_string()),
    }
    Ok(report)
}

fn fail(report: &mut VerifyReport, path: impl Into<String>, problem: impl Into<String>) {
    report.failures.push(VerifyFailure {
        path: path.into(),
        problem: problem.into(),
        code: "ERR_EXPORT_VERIFY_FAILED",
    });
}

/// Verifies a mirror run directory at time `now` (TUF expiry) — a `mirror:delta` output only
/// as a delta can be on its own (its run manifest and signatures, its diff; see [`is_delta`]) —:
/// what
/// [`exportcore::verify::verify_path_with`] checks (the run manifest, every file's size and
/// digest, signatures with `options.verifiers`), then `oci/` ([`crate::check_layout`]), then
/// the TUF chain from `tuf/metadata/1.root.json` ([`tuf::verify`]): every target must exist
/// under `tuf/targets/` by its hash-prefixed name and in `mirror/` with the listed length
/// and SHA-256, and `mirror/export.json` must list exactly the same files. With trusted keys,
/// one of them must be a key of the TUF root role. An expired role is `ERR_EXPORT_STALE`.
///
/// # Errors
/// I/O errors reading the directory; every verification problem is in the report instead.
pub fn verify_path_with(dir: &Path, options: &VerifyOptions, now: Timestamp) -> Result<VerifyReport> {
    if is_delta(dir) {
        return verify_delta(dir, options);
    }
    // An applied mirror keeps its log of applied deltas: local state, outside every list.
    let mut options = options.clone();
    options.local_files.push(crate::APPLIED_LOG.to_owned());
    let mut report = exportcore::verify::verify_path_with(dir, &options)?;
    let log = dir.join(crate::APPLIED_LOG);
    if log.is_file() {
        match exportcore::files::read_capped_string(&log, exportcore::files::MAX_MANIFEST_BYTES) {
            Ok(text) if text.lines().all(is_export_id) => {}
            Ok(_) => fail(&mut report, crate::APPLIED_LOG, "not a list of export ids (sha256:<hex>, one per line)"),
            Err(e) => fail(&mut report, crate::APPLIED_LOG, e.to_string()),
        }
    }
    // Every file was read once above: the OCI and TUF checks use those digests.
    let digests = std::mem::take(&mut report.digests);
    let known = |rel: &str| digests.get(rel).copied();
    for p in crate::oci::check_layout_with(&dir.join("oci"), &|rel| known(&format!("oci/{rel}"))) {
        let (file, problem) = p.split_once(": ").unwrap_or(("oci", &p));
        fail(&mut report, file, problem);
    }
    let meta = dir.join("tuf/metadata");
    let fetch = |name: &str| -> std::result::Result<Option<Vec<u8>>, String> {
        let p = meta.join(name);
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
            Ok(_) => {}
        }
        exportcore::files::read_capped(&p, exportcore::files::MAX_MANIFEST_BYTES).map(Some).map_err(|e| e.to_string())
    };
    let verified = match tuf::verify(&fetch, now) {
        Ok(v) => v,
        Err(p) => {
            report.failures.push(VerifyFailure {
                path: format!("tuf/metadata/{}", p.file),
                problem: p.message,
                code: if p.stale { "ERR_EXPORT_STALE" } else { "ERR_EXPORT_VERIFY_FAILED" },
            });
            return Ok(report);
        }
    };
    if !options.verifiers.is_empty()
        && !verified.root_key_ids.iter().any(|id| options.verifiers.iter().any(|v| v.key_id() == id))
    {
        fail(&mut report, "tuf/metadata/1.root.json", "no trusted key (--key) is a key of the TUF root role");
    }
    let mut listed: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for t in &verified.targets {
        for local in [format!("tuf/targets/{}", t.hashed_path()), format!("mirror/{}", t.path)] {
            let path = dir.join(&local);
            let hashed = known(&local).map_or_else(|| exportcore::files::hash_regular(&path), Ok);
            match hashed {
                Ok((len, sha)) if len == t.length && sha == t.sha256 => {}
                Ok((len, sha)) => fail(
                    &mut report,
                    &local,
                    format!("length {len} / sha256 {sha} differ from the TUF target ({} / {})", t.length, t.sha256),
                ),
                Err(e) => fail(&mut report, &local, format!("TUF target missing or unreadable: {e}")),
            }
        }
        listed.insert(t.path.clone(), (t.length, t.sha256.to_hex()));
    }
    // export.json must describe the same files (it cannot list itself or the provenance
    // that names its digest).
    let export = exportcore::files::read_capped(&dir.join("mirror/export.json"), exportcore::files::MAX_MANIFEST_BYTES);
    match export.ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
        None => fail(&mut report, "mirror/export.json", "missing or not JSON"),
        Some(export) => {
            let mut files: BTreeMap<String, (u64, String)> = BTreeMap::new();
            for f in export["files"].as_array().into_iter().flatten() {
                let (Some(p), Some(size), Some(sha)) = (f["path"].as_str(), f["size"].as_u64(), f["sha256"].as_str())
                else {
                    fail(&mut report, "mirror/export.json", "a files[] entry lacks path, size or sha256");
                    continue;
                };
                files.insert(p.to_owned(), (size, sha.to_owned()));
            }
            let mut expected = listed.clone();
            expected.remove("export.json");
            expected.remove("provenance.json");
            if files != expected {
                fail(&mut report, "mirror/export.json", "its files[] differ from the TUF targets");
            }
        }
    }
    report.verified += verified.targets.len() as u64;
    report.digests = digests;
    Ok(report)
}
