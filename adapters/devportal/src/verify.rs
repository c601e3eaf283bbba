//! Offline verification of a devportal bundle (the `.tgz`, or the directory it was extracted
//! to), doing what `verify-offline.sh` does and a little more:
//!
//! 1. `checksums.txt` is well formed (root line first, `<sha256>  <path>` lines sorted by path,
//!    safe paths, LF, final newline) and its root is the SHA-256 of `manifest.json` (and, when
//!    given, the root the publisher announced);
//! 2. every file it lists exists with that digest; no file is missing or extra; nothing but
//!    regular files and directories, with safe UTF-8 names, no duplicates; the fixed files
//!    (`manifest.json`, `instructions-portable.txt`, `verify-offline.sh`) are there;
//! 3. `manifest.json` is a canonical `devportal-offline/v1` manifest whose entries are exactly
//!    the assets of `checksums.txt` with the same digests and the files' real sizes, and whose
//!    `bundleId`, `sources` and `totals` derive from its entries;
//! 4. `manifest.dsse.json`, when present, is a DSSE envelope of type [`PAYLOAD_TYPE`] whose
//!    payload is exactly `manifest.json`; with trusted keys it must be present and carry a
//!    valid signature by one of them.
//!
//! Failures are collected in an [`exportcore::verify::VerifyReport`]; only I/O errors on the
//! given path itself are `Err`.

use crate::checksums::{Checksums, CHECKSUMS_FILE};
use crate::manifest::{BundleManifest, Category, MANIFEST_VERSION};
use crate::{BUNDLE_FILE, INSTRUCTIONS_FILE, MANIFEST_ARTIFACT, PAYLOAD_TYPE, SIGNATURE_FILE, VERIFY_SCRIPT_FILE};
use exportcore::archive::open_archive;
use exportcore::hashing::{hash_reader, Hasher};
use exportcore::manifest::MANIFEST_FILE;
use exportcore::sign::dsse::Envelope;
use exportcore::sign::Verifier;
use exportcore::verify::{Signatures, VerifyFailure, VerifyOptions, VerifyReport};
use exportcore::{ArtifactPath, ExportError, Result, Sha256Digest};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// Largest `manifest.json`, `checksums.txt` or `manifest.dsse.json` read (64 MiB).
const MAX_KEPT: u64 = 64 << 20;

/// What to check besides the content.
#[derive(Clone, Debug, Default)]
pub struct BundleVerifyOptions {
    /// Trusted keys: when non-empty, `manifest.dsse.json` must exist and carry a valid
    /// signature over `manifest.json` by one of them.
    pub verifiers: Vec<Arc<dyn Verifier>>,
    /// The root the publisher announced (the run record's sha256 of
    /// `devportal-offline-manifest.json`): `checksums.txt` must carry exactly this root.
    pub expected_root: Option<Sha256Digest>,
}

/// Verifies a devportal bundle — the `.tgz` file or a directory it was extracted to — as
/// `verify-offline.sh` does; with `verifiers`, the DSSE signature must be present and valid.
///
/// # Errors
/// Only I/O errors on `path` itself; every problem with the bundle is a failure in the report.
///
/// ```no_run
/// let report = exportcore_devportal::verify_bundle("out/devportal-offline-bundle.tgz".as_ref(), &[])?;
/// for f in &report.failures {
///     eprintln!("{}: {}", f.path, f.problem);
/// }
/// # Ok::<(), exportcore::ExportError>(())
/// ```
pub fn verify_bundle(path: &Path, verifiers: &[Arc<dyn Verifier>]) -> Result<VerifyReport> {
    verify_bundle_with(path, &BundleVerifyOptions { verifiers: verifiers.to_vec(), expected_root: None })
}

/// [`verify_bundle`] with an expected root.
pub fn verify_bundle_with(path: &Path, options: &BundleVerifyOptions) -> Result<VerifyReport> {
    let mut report = VerifyReport { target: path.display().to_string(), ..Default::default() };
    check_bundle(path, options, "", &mut report)?;
    Ok(report)
}

fn check_bundle(path: &Path, options: &BundleVerifyOptions, prefix: &str, report: &mut VerifyReport) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| ExportError::io(path, e))?;
    let mut out = Out { report, prefix };
    let mut files = Files::default();
    if meta.is_dir() {
        read_tree(path, "", &mut files, &mut out)?;
    } else {
        let f = exportcore::files::open_regular(path)?;
        if !read_archive(f, &mut files, &mut out) {
            return Ok(());
        }
    }
    check(&files, options, &mut out);
    Ok(())
}

/// True when `path` is a devportal bundle: a tar (any compression exportcore reads) or a
/// directory whose `manifest.json` has version `devportal-offline/v1`. Cheap: an archive is
/// read only up to where `manifest.json` sorts.
pub fn is_bundle(path: &Path) -> bool {
    let is_ours = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .is_some_and(|v| v.get("version").and_then(|v| v.as_str()) == Some(MANIFEST_VERSION))
    };
    if path.is_dir() {
        return exportcore::files::read_capped(&path.join(MANIFEST_FILE), exportcore::files::MAX_MANIFEST_BYTES)
            .is_ok_and(|b| is_ours(&b));
    }
    let Ok(f) = exportcore::files::open_regular(path) else { return false };
    let Ok(mut ar) = open_archive(f) else { return false };
    let Ok(entries) = ar.entries() else { return false };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let name = entry.path_bytes();
        match name[..].cmp(MANIFEST_FILE.as_bytes()) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                let mut bytes = Vec::new();
                return entry.take(MAX_KEPT).read_to_end(&mut bytes).is_ok() && is_ours(&bytes);
            }
            // Bundles are sorted: past `manifest.json` without meeting it, this is not one.
            std::cmp::Ordering::Greater => return false,
        }
    }
    false
}

/// Verifies a run output directory holding a devportal bundle: exportcore's own checks of
/// the run (digests against the run manifest, signatures, staleness — minus its attempt to
/// read the bundle as an exportcore bundle, whose `manifest.json` it does not know), then
/// [`verify_bundle_with`] on `devportal-offline-bundle.tgz` with the run's trusted keys and,
/// as the expected root, the sha256 of `devportal-offline-manifest.json`. The bundle's
/// failures are named `devportal-offline-bundle.tgz!<path>`.
pub fn verify_run_output(dir: &Path, options: &VerifyOptions) -> Result<VerifyReport> {
    let mut report = exportcore::verify::verify_path_with(dir, options)?;
    let prefix = format!("{BUNDLE_FILE}!");
    report.failures.retain(|f| !f.path.starts_with(&prefix));
    let bundle = dir.join(BUNDLE_FILE);
    if bundle.is_file() {
        let expected_root = match exportcore::files::open_regular(&dir.join(MANIFEST_ARTIFACT)) {
            Ok(f) => Some(hash_reader(f).map_err(|e| ExportError::io(dir.join(MANIFEST_ARTIFACT), e))?.1),
            Err(_) => None,
        };
        let opts = BundleVerifyOptions { verifiers: options.verifiers.clone(), expected_root };
        check_bundle(&bundle, &opts, &prefix, &mut report)?;
    }
    Ok(report)
}

/// What `exportctl verify PATH` should call: a devportal bundle (`.tgz` or extracted
/// directory) goes to [`verify_bundle_with`] (with `options.verifiers`), a run output
/// directory holding one to [`verify_run_output`], anything else to
/// [`exportcore::verify::verify_path_with`].
///
/// `options.staleness` applies to run manifests only: a lone bundle's `generatedAt` does not
/// record where its time came from, so asking a lone bundle's age is a failure (never a
/// silent pass): verify the run directory instead.
pub fn verify_path_with(path: &Path, options: &VerifyOptions) -> Result<VerifyReport> {
    if is_bundle(path) {
        let opts = BundleVerifyOptions { verifiers: options.verifiers.clone(), expected_root: None };
        let mut report = verify_bundle_with(path, &opts)?;
        if options.staleness.is_some() {
            report.failures.push(VerifyFailure {
                path: path.display().to_string(),
                problem: "its age cannot be checked (--max-age, --max-drift): a lone devportal bundle records no \
                          time source; verify the run directory that holds it"
                    .into(),
                code: "ERR_EXPORT_VERIFY_FAILED",
            });
        }
        Ok(report)
    } else if path.is_dir() && path.join(BUNDLE_FILE).is_file() {
        verify_run_output(path, options)
    } else {
        exportcore::verify::verify_path_with(path, options)
    }
}

/// Failures go to the report, prefixed.
struct Out<'a> {
    report: &'a mut VerifyReport,
    prefix: &'a str,
}

impl Out<'_> {
    fn fail(&mut self, path: impl std::fmt::Display, problem: impl Into<String>) {
        self.report.failures.push(VerifyFailure {
            path: format!("{}{path}", self.prefix),
            problem: problem.into(),
            code: "ERR_EXPORT_VERIFY_FAILED",
        });
    }

    /// A failure of the bundle as a whole (its archive cannot be read).
    fn fail_bundle(&mut self, problem: impl Into<String>) {
        let path = if self.prefix.is_empty() {
            self.report.target.clone()
        } else {
            self.prefix.trim_end_matches('!').to_owned()
        };
        self.report.failures.push(VerifyFailure { path, problem: problem.into(), code: "ERR_EXPORT_VERIFY_FAILED" });
    }
}

/// The files of a bundle: digests of all, bytes of the few that are parsed.
#[derive(Default)]
struct Files {
    digests: BTreeMap<String, (u64, Sha256Digest)>,
    kept: BTreeMap<String, Vec<u8>>,
}

impl Files {
    fn keeps(name: &str) -> bool {
        [MANIFEST_FILE, CHECKSUMS_FILE, SIGNATURE_FILE].contains(&name)
    }

    /// Hashes one file; false (after reporting) when it cannot be read.
    fn add(&mut self, name: String, r: impl Read, out: &mut Out<'_>) -> bool {
        let mut r = r;
        let mut hasher = Hasher::new();
        let mut keep = Self::keeps(&name).then(Vec::new);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    if let Some(k) = keep.as_mut() {
                        if (k.len() as u64) < MAX_KEPT {
                            k.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.fail(&name, format!("cannot be read: {e}"));
                    return false;
                }
            }
        }
        let (size, digest) = hasher.finish();
        if let Some(k) = keep {
            if size > MAX_KEPT {
                out.fail(&name, format!("larger than {MAX_KEPT} bytes"));
            } else {
                self.kept.insert(name.clone(), k);
            }
        }
        if self.digests.insert(name.clone(), (size, digest)).is_some() {
            out.fail(&name, "duplicate entry");
        }
        true
    }
}

/// Reads an archive; false when it is unreadable or must not be read further (reported).
///
/// Decompression bombs: once `manifest.json` is read, an asset whose tar size differs from its
/// `sizeBytes` (or that it does not list) stops the reading before its data is inflated; before
/// that, the expansion is limited ([`exportcore::archive::open_archive_guarded`]).
fn read_archive(f: std::fs::File, files: &mut Files, out: &mut Out<'_>) -> bool {
    let mut declared: Option<BundleManifest> = None;
    let (mut ar, guard) = match exportcore::archive::open_archive_guarded(f) {
        Ok(a) => a,
        Err(e) => {
            out.fail_bundle(format!("cannot read archive: {e}"));
            return false;
        }
    };
    let entries = match ar.entries() {
        Ok(e) => e,
        Err(e) => {
            out.fail_bundle(format!("cannot read archive: {e}"));
            return false;
        }
    };
    let mut rules = exportcore::archive::EntryRules::default();
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.fail_bundle(format!("archive is corrupt: {e}"));
                return false;
            }
        };
        let raw = match exportcore::archive::strict_entry_name(&mut entry) {
            Ok(name) => name,
            Err(problem) => {
                // A name other tools read otherwise: nothing after it can be trusted.
                out.fail(String::from_utf8_lossy(&entry.path_bytes()), problem);
                return false;
            }
        };
        if let Err(problem) = rules.check(entry.header(), &raw) {
            // What tar would do with this entry is not what we read: nothing after it counts.
            out.fail(&raw, problem);
            return false;
        }
        let name = raw.strip_suffix('/').unwrap_or(&raw).to_owned();
        let kind = entry.header().entry_type();
        if declared.is_some() {
            // Room for the next entry's headers (a long name included).
            guard.allow(exportcore::archive::HEADER_ALLOWANCE);
        }
        if let Err(e) = ArtifactPath::parse(&name) {
            out.fail(&raw, format!("unsafe entry name: {e}"));
            continue;
        }
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            out.fail(&name, format!("not a regular file or directory ({kind:?})"));
            continue;
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if declared.is_some() {
            // Room for this entry's bytes (a fixed file: up to what is kept of it); a size the
            // manifest does not declare stops below before a byte is read.
            guard.allow(if is_fixed(&name) { size.min(MAX_KEPT) } else { size });
        }
        if let Some(m) = declared.as_ref().filter(|_| !is_fixed(&name)) {
            match m.entries.binary_search_by(|e| e.path.as_str().cmp(&name)) {
                Ok(i) if m.entries[i].size_bytes == size => {}
                Ok(i) => {
                    out.fail(
                        &name,
                        format!("size {size} != manifest.json sizeBytes {} (not read)", m.entries[i].size_bytes),
                    );
                    return false;
                }
                Err(_) => {
                    out.fail(&name, "not listed in manifest.json (not read)");
                    return false;
                }
            }
        }
        let is_manifest = name == MANIFEST_FILE;
        if !files.add(name, entry, out) {
            return false;
        }
        if is_manifest {
            declared = files.kept.get(MANIFEST_FILE).and_then(|b| BundleManifest::parse(b).ok());
            if declared.is_some() {
                // Sizes are checked against it from here on: the archive may hold what it
                // declares, no more.
                guard.declared(exportcore::archive::TRAILER_ALLOWANCE);
            }
        }
    }
    if let Err(e) = exportcore::archive::finish_archive(ar) {
        out.fail_bundle(format!("archive is corrupt: {e}"));
        return false;
    }
    true
}

/// Reads an extracted bundle directory.
fn read_tree(dir: &Path, rel: &str, files: &mut Files, out: &mut Out<'_>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .and_then(|d| d.collect::<std::io::Result<Vec<_>>>())
        .map_err(|e| ExportError::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let lossy = entry.file_name().to_string_lossy().into_owned();
        let shown = if rel.is_empty() { lossy.clone() } else { format!("{rel}/{lossy}") };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            out.fail(&shown, "file name is not UTF-8");
            continue;
        };
        let rel_child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let ft = entry.file_type().map_err(|e| ExportError::io(entry.path(), e))?;
        if ft.is_dir() {
            read_tree(&entry.path(), &rel_child, files, out)?;
        } else if ft.is_file() {
            let f = exportcore::files::open_regular(&entry.path())?;
            files.add(rel_child, f, out);
        } else {
            out.fail(&rel_child, "not a regular file or directory (symlink, device, FIFO or socket)");
        }
    }
    Ok(())
}

fn is_fixed(name: &str) -> bool {
    [CHECKSUMS_FILE, INSTRUCTIONS_FILE, SIGNATURE_FILE, MANIFEST_FILE, VERIFY_SCRIPT_FILE].contains(&name)
}

fn check(files: &Files, options: &BundleVerifyOptions, out: &mut Out<'_>) {
    let Some(text) = files.kept.get(CHECKSUMS_FILE) else {
        return out.fail(CHECKSUMS_FILE, "missing");
    };
    let checksums = match std::str::from_utf8(text).map_err(|_| "is not UTF-8".to_owned()).and_then(Checksums::parse) {
        Ok(c) => c,
        Err(e) => return out.fail(CHECKSUMS_FILE, e),
    };
    let manifest_bytes = files.kept.get(MANIFEST_FILE);

    // 1. The root.
    match manifest_bytes {
        None => out.fail(MANIFEST_FILE, "missing"),
        Some(b) => {
            let actual = Sha256Digest::of(b);
            if actual == checksums.root {
                out.report.verified += 1;
            } else {
                out.fail(
                    CHECKSUMS_FILE,
                    format!("root {} is not the sha256 of manifest.json ({actual})", checksums.root),
                );
            }
        }
    }
    if let Some(expected) = options.expected_root {
        if expected != checksums.root {
            out.fail(CHECKSUMS_FILE, format!("root {} is not the expected root {expected}", checksums.root));
        }
    }

    // 2. Files against checksums.txt.
    for (path, listed) in &checksums.files {
        match files.digests.get(path.as_str()) {
            None => out.fail(path, "missing (listed in checksums.txt)"),
            Some((_, got)) if got != listed => {
                out.fail(path, format!("sha256 {got} does not match checksums.txt ({listed})"))
            }
            Some(_) => out.report.verified += 1,
        }
    }
    for path in files.digests.keys() {
        if path != CHECKSUMS_FILE && checksums.get(path).is_none() {
            out.fail(path, "extra file (not listed in checksums.txt)");
        }
    }
    for required in [MANIFEST_FILE, INSTRUCTIONS_FILE, VERIFY_SCRIPT_FILE] {
        if checksums.get(required).is_none() {
            out.fail(CHECKSUMS_FILE, format!("does not list {required}"));
        }
    }
    for (path, _) in &checksums.files {
        if !is_fixed(path.as_str()) && !matches!(Category::of_path(path.as_str()), Ok(Some(_))) {
            out.fail(
                path,
                "not a file of a devportal bundle (expected portal/, specs/, sdks/<name>/, changelog/ or a fixed file)",
            );
        }
    }

    // 3. The manifest against checksums.txt and the files.
    let manifest = manifest_bytes.and_then(|b| match BundleManifest::parse(b) {
        Ok(m) => Some(m),
        Err(e) => {
            out.fail(MANIFEST_FILE, e);
            None
        }
    });
    if let (Some(m), Some(bytes)) = (&manifest, manifest_bytes) {
        for problem in m.check(bytes) {
            out.fail(MANIFEST_FILE, problem);
        }
        for e in &m.entries {
            match checksums.get(e.path.as_str()) {
                None => out.fail(&e.path, "listed in manifest.json but not in checksums.txt"),
                Some(d) if d != e.sha256 => {
                    out.fail(&e.path, format!("manifest.json sha256 {} differs from checksums.txt ({d})", e.sha256))
                }
                Some(_) => {}
            }
            if let Some((size, _)) = files.digests.get(e.path.as_str()) {
                if *size != e.size_bytes {
                    out.fail(&e.path, format!("size {size} != manifest.json sizeBytes {}", e.size_bytes));
                }
            }
        }
        // The bundle's own script and instructions are pinned by the (signed) manifest.
        for name in [INSTRUCTIONS_FILE, VERIFY_SCRIPT_FILE] {
            match (m.bundle_files.get(name), files.digests.get(name)) {
                (None, _) => out.fail(MANIFEST_FILE, format!("bundleFiles does not cover {name}")),
                (Some(want), Some((_, got))) if want != got => {
                    out.fail(name, format!("sha256 {got} differs from manifest.json bundleFiles ({want})"))
                }
                _ => {}
            }
        }
        if let Some(other) =
            m.bundle_files.keys().find(|k| ![INSTRUCTIONS_FILE, VERIFY_SCRIPT_FILE].contains(&k.as_str()))
        {
            out.fail(MANIFEST_FILE, format!("bundleFiles names {other:?}, not a bundle file"));
        }
        for (path, _) in &checksums.files {
            if !is_fixed(path.as_str()) && m.entries.binary_search_by(|e| e.path.cmp(path)).is_err() {
                out.fail(path, "listed in checksums.txt but not in manifest.json");
            }
        }
    }

    // 4. The signature.
    let verifiers: Vec<&dyn Verifier> = options.verifiers.iter().map(|v| &**v as &dyn Verifier).collect();
    out.report.signatures = match (files.kept.contains_key(SIGNATURE_FILE), verifiers.is_empty()) {
        (_, false) => Signatures::Valid, // a failure below makes the report fail
        (true, true) => Signatures::NotChecked,
        (false, true) => Signatures::Unsigned,
    };
    match files.kept.get(SIGNATURE_FILE) {
        None if !verifiers.is_empty() => out.fail(SIGNATURE_FILE, "missing (a signature was required)"),
        None => {}
        Some(b) => {
            let payload = Envelope::parse_exact(b, SIGNATURE_FILE).and_then(|env| {
                if verifiers.is_empty() {
                    if env.payload_type != PAYLOAD_TYPE {
                        return Err(ExportError::VerificationFailed {
                            path: SIGNATURE_FILE.into(),
                            reason: format!("payload type {:?}, expected {PAYLOAD_TYPE:?}", env.payload_type),
                        });
                    }
                    env.payload_bytes()
                } else {
                    env.verify(PAYLOAD_TYPE, &verifiers, SIGNATURE_FILE)
                }
            });
            match payload {
                Err(ExportError::VerificationFailed { reason, .. }) => out.fail(SIGNATURE_FILE, reason),
                Err(e) => out.fail(SIGNATURE_FILE, e.to_string()),
                Ok(p) if Some(&p) != manifest_bytes => {
                    out.fail(SIGNATURE_FILE, "the signed payload is not this manifest.json")
                }
                Ok(_) => out.report.verified += 1,
            }
        }
    }
}
