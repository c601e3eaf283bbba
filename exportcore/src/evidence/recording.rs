use super::{EvidenceItem, EvidenceKind, EvidenceSource};
use crate::error::Result;
use crate::hashing::{Hasher, Sha256Digest};
use crate::path::ArtifactPath;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

/// Wraps a source and records the SHA-256 of every file read to its end, for provenance
/// (`resolvedDependencies`). Hashing happens as the bytes stream past.
#[derive(Debug)]
pub struct RecordingEvidence {
    inner: Arc<dyn EvidenceSource>,
    seen: Arc<Mutex<BTreeMap<ArtifactPath, Sha256Digest>>>,
}

impl RecordingEvidence {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn EvidenceSource>) -> Self {
        Self { inner, seen: Arc::default() }
    }

    /// Every file read completely so far, with its digest, sorted by path.
    pub fn read_files(&self) -> Vec<(ArtifactPath, Sha256Digest)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(p, d)| (p.clone(), *d)).collect()
    }
}

struct DigestReader {
    inner: Box<dyn Read + Send>,
    hasher: Option<Hasher>,
    path: ArtifactPath,
    seen: Arc<Mutex<BTreeMap<ArtifactPath, Sha256Digest>>>,
}

impl Read for DigestReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            if n == 0 {
                if let Some(h) = self.hasher.take() {
                    let (_, digest) = h.finish();
                    self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(self.path.clone(), digest);
                }
            } else {
                h.update(&buf[..n]);
            }
        }
        Ok(n)
    }
}

impl EvidenceSource for RecordingEvidence {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&self, kind: EvidenceKind) -> Result<Vec<EvidenceItem>> {
        self.inner.list(kind)
    }
    fn open(&self, path: &ArtifactPath) -> Result<Box<dyn Read + Send>> {
        let inner = self.inner.open(path)?;
        Ok(Box::new(DigestReader {
            inner,
            hasher: Some(Hasher::new()),
            path: path.clone(),
            seen: Arc::clone(&self.seen),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{MemoryEvidence, Records};

    #[test]
    fn records_digests_of_files_read() {
        let mut ev = MemoryEvidence::new();
        ev.insert("advisories/a.json", r#"{"id":"A","modified":"2024-01-01T00:00:00Z"}"#).unwrap();
        ev.insert("vex/unread.json", "{}").unwrap();
        let rec = RecordingEvidence::new(Arc::new(ev));
        assert_eq!(Records::new(&rec, EvidenceKind::Advisory).unwrap().count(), 1);
        let files = rec.read_files();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0.as_str(), "advisories/a.json");
        assert_eq!(files[0].1, Sha256Digest::of(br#"{"id":"A","modified":"2024-01-01T00:00:00Z"}"#));
    }
}
