//! The `devportal:offline` profile.

use crate::assets::{self, Asset};
use crate::checksums::{Checksums, CHECKSUMS_FILE};
use crate::content_type::{content_type, is_script};
use crate::manifest::{BundleManifest, Category, Entry};
use crate::{
    BUNDLE_FILE, INSTRUCTIONS, INSTRUCTIONS_FILE, MANIFEST_ARTIFACT, PAYLOAD_TYPE, PROFILE_ID, SIGNATURE_FILE,
    VERIFY_SCRIPT, VERIFY_SCRIPT_FILE,
};
use exportcore::archive::{ArchiveWriter, FileMode};
use exportcore::hashing::{Hasher, HashingReader};
use exportcore::manifest::MANIFEST_FILE;
use exportcore::sign::dsse;
use exportcore::{
    check_supported, ArtifactPath, ArtifactSpec, ArtifactType, Compression, EvidenceSource, ExportContext, ExportError,
    Location, Profile, ProfileDescriptor, Progress, Result, RunRequest, Sha256Digest,
};
use std::collections::BTreeMap;
use std::io::Read;

/// The `devportal:offline` profile: packs the portal assets of the evidence
/// (`portal/`, `specs/`, `sdks/<name>/`, `changelog/`) into `devportal-offline-bundle.tgz`
/// with a manifest, checksums, an optional DSSE signature, instructions and a POSIX
/// verification script. See the crate docs and `docs/devportal.md`.
///
/// `portal/` is required (`ERR_EXPORT_EVIDENCE_EMPTY` without it); the other groups are
/// optional and recorded in `manifest.json`'s `sources`.
#[derive(Clone, Debug, Default)]
pub struct DevportalOffline {
    metadata: BTreeMap<String, String>,
}

impl DevportalOffline {
    /// The profile with empty `metadata`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a `metadata` entry to every manifest it writes (`releaseVersion`, a build tag, ...).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// Bytes between cancellation checks and progress reports while hashing.
const CHECK_EVERY: u64 = 16 << 20;

impl Profile for DevportalOffline {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new(
            PROFILE_ID,
            "Developer portal, API specs, SDKs and changelog as a verifiable offline .tgz",
        )
        .compressions([Compression::Gzip])
    }

    fn validate(&self, request: &RunRequest) -> Result<()> {
        check_supported(&self.descriptor(), request)
    }

    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
        ctx.check_cancelled()?;
        let evidence = ctx.evidence();
        let assets = assets::collect(evidence)?;
        if !assets.iter().any(|a| a.category == Category::Portal) {
            return Err(ExportError::EvidenceEmpty {
                root: evidence.describe(),
                what: "portal/ (the devportal:offline bundle requires the portal site; specs/, sdks/ and changelog/ \
                       are optional)"
                    .into(),
            });
        }

        // Pass 1: size and digest of every asset, streamed.
        let total: u64 = assets.iter().map(|a| a.listed_size).sum();
        let mut done = 0u64;
        let mut entries = Vec::with_capacity(assets.len());
        for (i, a) in assets.iter().enumerate() {
            let (size, sha256) = hash_asset(ctx, evidence, a, &mut done, total, i as u64, assets.len() as u64)?;
            entries.push(Entry {
                category: a.category,
                path: a.path.clone(),
                sha256,
                size_bytes: size,
                content_type: content_type(a.path.as_str()).to_owned(),
            });
        }

        let anchor = ctx.time_anchor(None);
        let bundle_files =
            [(INSTRUCTIONS_FILE, INSTRUCTIONS.as_bytes()), (VERIFY_SCRIPT_FILE, VERIFY_SCRIPT.as_bytes())]
                .into_iter()
                .map(|(name, bytes)| (name.to_owned(), Sha256Digest::of(bytes)))
                .collect();
        let manifest = BundleManifest::new(anchor.created_at, self.metadata.clone(), bundle_files, entries);
        let manifest_bytes = manifest.to_bytes();
        let signature = match ctx.signer() {
            Some(signer) => Some(dsse::sign(PAYLOAD_TYPE, &manifest_bytes, &[signer])?.to_bytes()),
            None => None,
        };

        // Every member of the archive, by path.
        let mut members: BTreeMap<ArtifactPath, Member<'_>> = BTreeMap::new();
        add_bytes(&mut members, MANIFEST_FILE, &manifest_bytes, FileMode::Regular)?;
        add_bytes(&mut members, INSTRUCTIONS_FILE, INSTRUCTIONS.as_bytes(), FileMode::Regular)?;
        add_bytes(&mut members, VERIFY_SCRIPT_FILE, VERIFY_SCRIPT.as_bytes(), FileMode::Executable)?;
        if let Some(sig) = signature.as_deref() {
            add_bytes(&mut members, SIGNATURE_FILE, sig, FileMode::Regular)?;
        }
        // Both are sorted by bundle path.
        for (a, e) in assets.iter().zip(&manifest.entries) {
            debug_assert_eq!(a.path, e.path);
            let mode = if is_script(a.path.as_str()) { FileMode::Executable } else { FileMode::Regular };
            members.insert(
                a.path.clone(),
                Member { mode, size: e.size_bytes, sha256: e.sha256, source: Source::Asset(&a.source) },
            );
        }
        let checksums = Checksums {
            root: Sha256Digest::of(&manifest_bytes),
            files: members.iter().map(|(p, m)| (p.clone(), m.sha256)).collect(),
        }
        .render();
        members.insert(
            ArtifactPath::parse(CHECKSUMS_FILE)?,
            Member {
                mode: FileMode::Regular,
                size: checksums.len() as u64,
                sha256: Sha256Digest::of(checksums.as_bytes()),
                source: Source::Checksums,
            },
        );

        // Pass 2: the archive, in path order, every asset re-hashed as it streams in.
        let spec = ArtifactSpec::new(BUNDLE_FILE, ArtifactType::Bundle, "tar+gzip", "application/gzip")?;
        let mtime = anchor.mtime();
        let options = ctx.archive_options(Compression::Gzip, mtime)?;
        ctx.write_artifact(spec, |w| {
            let mut ar = ArchiveWriter::new(w, options)?;
            for (path, m) in &members {
                match m.source {
                    Source::Bytes(bytes) => ar.append(path, m.mode, m.size, bytes)?,
                    Source::Checksums => ar.append(path, m.mode, m.size, checksums.as_bytes())?,
                    Source::Asset(source) => {
                        let mut r = HashingReader::new(evidence.open(source)?);
                        ar.append(path, m.mode, m.size, &mut r).map_err(|e| match e {
                            ExportError::Io { source: io, .. } if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                                ExportError::evidence(
                                    Location::file(source.as_str()),
                                    format!("changed while the bundle was being written (it got shorter: {io})"),
                                )
                            }
                            other => other,
                        })?;
                        let (_, digest) = r.finish();
                        if digest != m.sha256 {
                            return Err(ExportError::evidence(
                                Location::file(source.as_str()),
                                "changed while the bundle was being written (sha256 differs between two reads)",
                            ));
                        }
                    }
                }
            }
            ar.finish()?;
            Ok(())
        })?;

        // The manifest again, next to the bundle: its sha256 in the run record is the root.
        let spec = ArtifactSpec::new(MANIFEST_ARTIFACT, ArtifactType::Manifest, "json", "application/json")?;
        ctx.write_artifact(spec, |w| w.write_all(&manifest_bytes).map_err(|e| ExportError::io(MANIFEST_ARTIFACT, e)))?;
        let n = assets.len() as u64;
        ctx.progress(Progress { percent: 100, items_completed: n, items_total: n });
        Ok(())
    }
}

/// Where a member's bytes come from.
#[derive(Clone, Copy, Debug)]
enum Source<'a> {
    /// Generated in memory (manifest, signature, instructions, script).
    Bytes(&'a [u8]),
    /// `checksums.txt` (rendered once every other member is known).
    Checksums,
    /// An evidence file.
    Asset(&'a ArtifactPath),
}

/// Adds a member generated in memory.
fn add_bytes<'a>(
    members: &mut BTreeMap<ArtifactPath, Member<'a>>,
    name: &str,
    bytes: &'a [u8],
    mode: FileMode,
) -> Result<()> {
    let m = Member { mode, size: bytes.len() as u64, sha256: Sha256Digest::of(bytes), source: Source::Bytes(bytes) };
    members.insert(ArtifactPath::parse(name)?, m);
    Ok(())
}

#[derive(Clone, Copy, Debug)]
struct Member<'a> {
    mode: FileMode,
    size: u64,
    sha256: Sha256Digest,
    source: Source<'a>,
}

/// Hashes one asset in constant memory, checking for cancellation and reporting progress
/// (the first half of the run's percent) every [`CHECK_EVERY`] bytes.
fn hash_asset(
    ctx: &ExportContext<'_>,
    evidence: &dyn EvidenceSource,
    asset: &Asset,
    done: &mut u64,
    total: u64,
    index: u64,
    count: u64,
) -> Result<(u64, Sha256Digest)> {
    ctx.check_cancelled()?;
    let mut r = evidence.open(&asset.source)?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut since_check = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ExportError::evidence(Location::file(asset.source.as_str()), format!("read failed: {e}")))
            }
        };
        hasher.update(&buf[..n]);
        *done += n as u64;
        since_check += n as u64;
        if since_check >= CHECK_EVERY {
            since_check = 0;
            ctx.check_cancelled()?;
            ctx.progress(half_progress(*done, total, index, count));
        }
    }
    ctx.progress(half_progress(*done, total, index + 1, count));
    Ok(hasher.finish())
}

fn half_progress(done: u64, total: u64, items: u64, count: u64) -> Progress {
    let percent = (done.min(total) as u128 * 50).checked_div(total as u128).unwrap_or(0) as u8;
    Progress { percent, items_completed: items, items_total: count }
}
