//! # exportcore-devportal
//!
//! The **`devportal:offline`** export profile ([`DevportalOffline`]) for [`exportcore`]: the
//! developer-portal assets of the evidence directory — `portal/` (the static site, required),
//! `specs/`, `sdks/<name>/` and `changelog/` (optional) — packed into one deterministic
//! `devportal-offline-bundle.tgz` that a reader can check and open with no network and none
//! of our code:
//!
//! ```text
//! changelog/**                 assets, as in the evidence (names in Unicode NFC)
//! checksums.txt                root <sha256 of manifest.json>, then "<sha256>  <path>" lines
//! instructions-portable.txt    how to verify and open the bundle offline
//! manifest.dsse.json           DSSE envelope over manifest.json (only when the run signs)
//! manifest.json                devportal-offline/v1 manifest (RFC 8785)
//! portal/**  sdks/<name>/**  specs/**
//! verify-offline.sh            POSIX sh verifier (0755)
//! ```
//!
//! Next to the bundle the run publishes `devportal-offline-manifest.json`, a copy of the
//! bundle's `manifest.json`: its sha256 in the run record is the bundle's **root**
//! ([`root_hash`]), the value to announce to the people who will verify the bundle.
//!
//! The tar is exportcore's deterministic writer (sorted entries, ustar, 0644 files, 0755
//! directories and scripts, uid/gid 0, one mtime = the run's pinned time, gzip header without
//! time or name), so the same assets and request give the same bytes. The layout, manifest
//! fields, `bundleId` derivation, content-type table and verification steps are in
//! `docs/devportal.md`.
//!
//! [`verify_bundle`] checks a bundle (the `.tgz` or its extracted directory) the way
//! `verify-offline.sh` does; [`verify_path_with`] is the drop-in for `exportctl verify`.
//!
//! ```
//! use exportcore::{FsSink, MemoryEvidence, RunBuilder, RunRequest, RunStatus, TenantId, Timestamp};
//! use exportcore_devportal::{root_hash, verify_bundle, DevportalOffline, BUNDLE_FILE, PROFILE_ID};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut evidence = MemoryEvidence::new();
//! evidence.insert("portal/index.html", "<h1>Export Center API</h1>")?;
//! evidence.insert("specs/export-center.openapi.yaml", "openapi: 3.1.0\n")?;
//! evidence.insert("sdks/python/client.py", "print('hi')\n")?;
//!
//! let out = tempfile::tempdir().map_err(|e| exportcore::ExportError::io("tempdir", e))?;
//! let mut request = RunRequest::builder(PROFILE_ID).build()?;
//! request.created_at = Timestamp::parse("2025-01-01T00:00:00Z").ok(); // pinned time
//! let profile = DevportalOffline::new().with_metadata("releaseVersion", "2025.1");
//! let run = RunBuilder::new(profile, evidence, FsSink::new(out.path())?)
//!     .tenant(TenantId::parse("tenant-a")?)
//!     .execute(request)
//!     .await?
//!     .run;
//! assert_eq!(run.status, RunStatus::Succeeded);
//!
//! let report = verify_bundle(&out.path().join(BUNDLE_FILE), &[])?;
//! assert!(report.is_ok(), "{:?}", report.failures);
//! let root = root_hash(&run).expect("the run published the manifest");
//! let checksums = exportcore_devportal::read_member(&out.path().join(BUNDLE_FILE), "checksums.txt")?;
//! assert!(checksums.starts_with(format!("root {root}\n").as_bytes()));
//! # Ok::<(), exportcore::ExportError>(())
//! # }).unwrap();
//! ```

#![deny(rustdoc::broken_intra_doc_links)]

mod assets;
pub mod checksums;
pub mod content_type;
pub mod manifest;
mod profile;
mod verify;

pub use manifest::{BundleManifest, Category, Entry, MANIFEST_VERSION};
pub use profile::DevportalOffline;
pub use verify::{
    is_bundle, verify_bundle, verify_bundle_with, verify_path_with, verify_run_output, BundleVerifyOptions,
};

use exportcore::{ExportError, Profiles, Result, Run, Sha256Digest};
use std::io::Read;
use std::path::Path;

/// The profile id.
pub const PROFILE_ID: &str = "devportal:offline";
/// File name of the bundle in the run output.
pub const BUNDLE_FILE: &str = "devportal-offline-bundle.tgz";
/// File name of the copy of the bundle's `manifest.json` published next to it; its sha256
/// is the bundle's root.
pub const MANIFEST_ARTIFACT: &str = "devportal-offline-manifest.json";
/// The DSSE envelope over `manifest.json` inside the bundle.
pub const SIGNATURE_FILE: &str = "manifest.dsse.json";
/// The instructions inside the bundle.
pub const INSTRUCTIONS_FILE: &str = "instructions-portable.txt";
/// The verification script inside the bundle.
pub const VERIFY_SCRIPT_FILE: &str = "verify-offline.sh";
/// DSSE payload type of the signed `manifest.json` (distinct from the run manifest's
/// `application/vnd.exportcore.manifest+json`, so one can never pass for the other).
pub const PAYLOAD_TYPE: &str = "application/vnd.exportcore.devportal-manifest+json";
/// The text of `verify-offline.sh`.
pub const VERIFY_SCRIPT: &str = include_str!("verify-offline.sh");
/// The text of `instructions-portable.txt`.
pub const INSTRUCTIONS: &str = include_str!("instructions-portable.txt");

/// A registry holding `devportal:offline` (with empty metadata).
pub fn profiles() -> Profiles {
    Profiles::new().with(DevportalOffline::new())
}

/// The bundle's root (sha256 of its `manifest.json`) from a succeeded run record: the sha256
/// of its `devportal-offline-manifest.json` output.
pub fn root_hash(run: &Run) -> Option<Sha256Digest> {
    run.outputs.iter().find(|o| o.path == MANIFEST_ARTIFACT).map(|o| o.sha256)
}

/// Reads one member of a bundle archive into memory (at most 64 MiB), e.g. `manifest.json`
/// or `checksums.txt`. `ERR_EXPORT_NOT_FOUND` when the archive has no such member.
pub fn read_member(bundle: &Path, member: &str) -> Result<Vec<u8>> {
    let bad = |e: std::io::Error| ExportError::io(bundle, e);
    let f = exportcore::files::open_regular(bundle)?;
    let mut ar = exportcore::archive::open_archive(f).map_err(bad)?;
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        if &entry.path_bytes()[..] == member.as_bytes() {
            let mut out = Vec::new();
            entry.take(64 << 20).read_to_end(&mut out).map_err(bad)?;
            return Ok(out);
        }
    }
    Err(ExportError::NotFound { path: format!("{}!{member}", bundle.display()) })
}
