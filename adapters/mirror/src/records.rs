//! The mirror's own record shards as evidence: the Trivy DB of a mirror is built from them
//! (not from the evidence they came from), so anyone holding the shards — a site applying a
//! delta — builds the same DB again, byte for byte, instead of receiving it.

use exportcore::{ArtifactPath, EvidenceItem, EvidenceKind, EvidenceSource, ExportError, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The kinds the Trivy DB reads, and where their shards live under `mirror/`.
pub(crate) const SOURCES: [(EvidenceKind, &str, &str); 2] =
    [(EvidenceKind::Advisory, "data/raw/advisories", "advisories"), (EvidenceKind::Vex, "data/raw/vex", "vex")];

/// Record shards (`*.jsonl.zst`) read as `.ndjson` evidence files.
#[derive(Debug, Default)]
pub(crate) struct ShardEvidence {
    files: Vec<(EvidenceItem, EvidenceKind, PathBuf)>,
}

impl ShardEvidence {
    /// Adds the shard at `local`, `plain` bytes once decompressed, as
    /// `<advisories|vex>/<name>.ndjson`.
    pub(crate) fn add(&mut self, kind: EvidenceKind, name: &str, local: PathBuf, plain: u64) -> Result<()> {
        let dir = SOURCES.iter().find(|s| s.0 == kind).map_or("other", |s| s.2);
        let path = ArtifactPath::parse(format!("{dir}/{name}.ndjson"))?;
        self.files.push((EvidenceItem { path, size: plain }, kind, local));
        self.files.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        Ok(())
    }

    /// The shards of the mirror tree at `root` (the directory holding `mirror/`), sized by
    /// decompressing them.
    pub(crate) fn of_tree(root: &Path) -> Result<Self> {
        let mut out = Self::default();
        for (kind, dir, _) in SOURCES {
            let d = root.join("mirror").join(dir);
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ExportError::io(&d, e)),
            };
            for entry in entries {
                let p = entry.map_err(|e| ExportError::io(&d, e))?.path();
                let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".jsonl.zst"))
                else {
                    continue;
                };
                let name = name.to_owned();
                let plain =
                    std::io::copy(&mut open_shard(&p)?, &mut std::io::sink()).map_err(|e| ExportError::io(&p, e))?;
                out.add(kind, &name, p, plain)?;
            }
        }
        Ok(out)
    }
}

fn open_shard(p: &Path) -> Result<Box<dyn Read + Send>> {
    let f = exportcore::files::open_regular(p)?;
    Ok(Box::new(zstd::Decoder::new(f).map_err(|e| ExportError::io(p, e))?))
}

impl EvidenceSource for ShardEvidence {
    fn describe(&self) -> String {
        "the mirror's record shards".into()
    }
    fn list(&self, kind: EvidenceKind) -> Result<Vec<EvidenceItem>> {
        Ok(self.files.iter().filter(|f| f.1 == kind).map(|f| f.0.clone()).collect())
    }
    fn open(&self, path: &ArtifactPath) -> Result<Box<dyn Read + Send>> {
        match self.files.iter().find(|f| &f.0.path == path) {
            Some(f) => open_shard(&f.2),
            None => Err(ExportError::PathUnsafe { path: path.to_string(), reason: "not a listed shard".into() }),
        }
    }
}
