//! Packing a bundle: spool each file to staging while hashing it ([`Spool`]), then write one
//! deterministic archive holding a `manifest.json` that lists every file ([`write_bundle`]).
//!
//! Spooling first is what keeps memory constant: a tar header needs the entry's size before
//! its bytes, and the manifest needs every digest before the archive is written.

use crate::archive::{archive_format, archive_media_type, ArchiveWriter, FileMode};
use crate::error::{IoContext, Result};
use crate::hashing::{HashingWriter, Sha256Digest};
use crate::manifest::{ManifestBuilder, ManifestEntry, MANIFEST_FILE};
use crate::model::{ArtifactType, Compression};
use crate::path::ArtifactPath;
use crate::profile::{ArtifactSpec, ExportContext, StagedArtifact};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// A file of a bundle, spooled to staging, with its digest.
#[derive(Clone, Debug)]
pub struct SpooledFile {
    /// Path inside the bundle.
    pub path: ArtifactPath,
    /// Staging file.
    pub local: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Digest.
    pub sha256: Sha256Digest,
    /// Media type.
    pub media_type: String,
    /// Record count, for records files.
    pub records: Option<u64>,
    /// Permission class.
    pub mode: FileMode,
}

/// A writer spooling one bundle file to staging. Create it with [`ExportContext::spool`].
#[derive(Debug)]
pub struct Spool {
    path: ArtifactPath,
    local: PathBuf,
    media_type: String,
    writer: HashingWriter<BufWriter<File>>,
}

impl Spool {
    /// Finishes the file; `records` is the record count to put in the manifest, if any.
    pub fn finish(mut self, records: Option<u64>) -> Result<SpooledFile> {
        self.writer.flush().at(&self.local)?;
        let (_, size, sha256) = self.writer.finish();
        Ok(SpooledFile {
            path: self.path,
            local: self.local,
            size,
            sha256,
            media_type: self.media_type,
            records,
            mode: FileMode::Regular,
        })
    }

    /// The bundle path being written.
    pub fn path(&self) -> &ArtifactPath {
        &self.path
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

impl ExportContext<'_> {
    /// Starts spooling a bundle file named `path` (inside the bundle).
    pub fn spool(&mut self, path: &str, media_type: impl Into<String>) -> Result<Spool> {
        let path = ArtifactPath::parse(path)?;
        let (local, file) = self.scratch_file()?;
        Ok(Spool {
            path,
            local,
            media_type: media_type.into(),
            writer: HashingWriter::new(BufWriter::with_capacity(256 * 1024, file)),
        })
    }
}

/// Writes the artifact `name` (a tar, tar.gz or tar.zst by `compression`) holding
/// `manifest.json` (built from `manifest` plus one entry per file) and `files`, in path order,
/// with the manifest's time as every entry's mtime. Returns the staged artifact.
pub fn write_bundle(
    ctx: &mut ExportContext<'_>,
    name: &str,
    compression: Compression,
    mut manifest: ManifestBuilder,
    files: Vec<SpooledFile>,
) -> Result<StagedArtifact> {
    for f in &files {
        let mut e = ManifestEntry::new(f.path.clone(), f.size, f.sha256, f.media_type.clone());
        e.records = f.records;
        manifest.add(e)?;
    }
    let manifest = manifest.build();
    let mtime = manifest.created_at.unix().max(0) as u64;
    let manifest_bytes = manifest.to_canonical_bytes();
    let manifest_path = ArtifactPath::parse(MANIFEST_FILE)?;
    let mut entries: Vec<(ArtifactPath, Option<&SpooledFile>)> =
        files.iter().map(|f| (f.path.clone(), Some(f))).collect();
    entries.push((manifest_path, None));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let spec =
        ArtifactSpec::new(name, ArtifactType::Bundle, archive_format(compression), archive_media_type(compression))?;
    let options = ctx.archive_options(compression, mtime)?;
    let (staged, ()) = ctx.write_artifact(spec, |w| {
        let mut ar = ArchiveWriter::new(w, options)?;
        for (path, file) in &entries {
            match file {
                None => ar.append(path, FileMode::Regular, manifest_bytes.len() as u64, &manifest_bytes[..])?,
                Some(f) => {
                    let src = File::open(&f.local).at(&f.local)?;
                    ar.append(path, f.mode, f.size, std::io::BufReader::with_capacity(256 * 1024, src))?;
                }
            }
        }
        ar.finish()?;
        Ok(())
    })?;
    for f in files {
        // Free staging space early; the tempdir removes anything left anyway.
        let _ = std::fs::remove_file(&f.local);
    }
    Ok(staged)
}
