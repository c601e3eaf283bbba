use super::{EvidenceItem, EvidenceKind, EvidenceSource};
use crate::error::{ExportError, Result};
use crate::path::ArtifactPath;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io::Read;

/// Evidence held in memory, keyed by relative path (`advisories/x.json`).
#[derive(Clone, Debug, Default)]
pub struct MemoryEvidence {
    files: BTreeMap<ArtifactPath, Bytes>,
}

impl MemoryEvidence {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file. Fails with `ERR_EXPORT_PATH_UNSAFE` for `..`, absolute or otherwise unsafe
    /// paths.
    pub fn insert(&mut self, path: &str, content: impl Into<Bytes>) -> Result<&mut Self> {
        let path = ArtifactPath::parse(path)?;
        self.files.insert(path, content.into());
        Ok(self)
    }
}

impl EvidenceSource for MemoryEvidence {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn list(&self, kind: EvidenceKind) -> Result<Vec<EvidenceItem>> {
        Ok(self
            .files
            .iter()
            .filter(|(p, _)| EvidenceKind::of_path(p) == Some(kind))
            .filter(|(p, _)| !p.as_str().split('/').any(|s| s.starts_with('.')))
            .map(|(p, b)| EvidenceItem { path: p.clone(), size: b.len() as u64 })
            .collect())
    }

    fn open(&self, path: &ArtifactPath) -> Result<Box<dyn Read + Send>> {
        let bytes = self.files.get(path).cloned().ok_or_else(|| ExportError::NotFound { path: path.to_string() })?;
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }
}
