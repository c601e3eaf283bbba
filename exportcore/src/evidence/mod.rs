//! Where records come from: the [`EvidenceSource`] trait, a directory reader
//! ([`DirEvidence`]), an in-memory source ([`MemoryEvidence`]) and a streaming record reader
//! ([`Records`]) that parses `.json` (one document) and `.ndjson` (one record per line) files
//! and checks each record against its kind's schema.
//!
//! Evidence layout (relative to the root):
//!
//! ```text
//! advisories/**/*.json|*.ndjson   OSV 1.6 advisories
//! vex/**/*.json|*.ndjson          OpenVEX 0.2.0 documents
//! policy/**/*.json|*.ndjson       policy findings
//! java/**/*.ndjson                Maven index entries
//! portal/ specs/ sdks/<name>/ changelog/   developer-portal assets
//! ```
//! Hidden files (names starting with `.`) are ignored; any other file of an unsupported type
//! is an error naming it.

mod dir;
mod memory;
pub mod schema;

pub use dir::DirEvidence;
pub use memory::MemoryEvidence;

use crate::error::{ExportError, Location, Result};
use crate::model::Timestamp;
use crate::path::ArtifactPath;
use serde_json::Value;
use std::fmt::Debug;
use std::io::{BufRead, BufReader, Read};

/// A kind of evidence, i.e. a top-level directory of the evidence layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EvidenceKind {
    /// OSV advisories (`advisories/`).
    Advisory,
    /// OpenVEX documents (`vex/`).
    Vex,
    /// Policy findings (`policy/`).
    Policy,
    /// Maven index entries (`java/`).
    Java,
    /// Developer-portal assets (`portal/`, `specs/`, `sdks/`, `changelog/`).
    Portal,
}

impl EvidenceKind {
    /// Top-level directories holding this kind.
    pub fn dirs(&self) -> &'static [&'static str] {
        match self {
            EvidenceKind::Advisory => &["advisories"],
            EvidenceKind::Vex => &["vex"],
            EvidenceKind::Policy => &["policy"],
            EvidenceKind::Java => &["java"],
            EvidenceKind::Portal => &["changelog", "portal", "sdks", "specs"],
        }
    }

    /// The kind whose directory `path` lies in.
    pub fn of_path(path: &ArtifactPath) -> Option<Self> {
        let top = path.as_str().split('/').next().unwrap_or_default();
        [Self::Advisory, Self::Vex, Self::Policy, Self::Java, Self::Portal]
            .into_iter()
            .find(|k| k.dirs().contains(&top))
    }

    /// Name used in messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            EvidenceKind::Advisory => "advisory",
            EvidenceKind::Vex => "vex",
            EvidenceKind::Policy => "policy",
            EvidenceKind::Java => "java",
            EvidenceKind::Portal => "portal",
        }
    }
}

impl From<crate::model::Target> for EvidenceKind {
    fn from(t: crate::model::Target) -> Self {
        match t {
            crate::model::Target::Advisory => EvidenceKind::Advisory,
            crate::model::Target::Vex => EvidenceKind::Vex,
            crate::model::Target::Policy => EvidenceKind::Policy,
        }
    }
}

/// One evidence file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvidenceItem {
    /// Path relative to the evidence root.
    pub path: ArtifactPath,
    /// Size in bytes.
    pub size: u64,
}

/// A source of evidence files.
///
/// # Contract
/// - `list` returns the files of one kind sorted by path, with safe relative paths; it fails
///   with [`ExportError::PathUnsafe`] for anything that escapes the source (symlinks out of
///   the tree), is not a regular file, or has a name that is not UTF-8.
/// - `open` streams a listed file; it must refuse paths outside the source.
/// - Both are blocking; profiles call them from a blocking context.
pub trait EvidenceSource: Debug + Send + Sync + 'static {
    /// Where the evidence lives, for messages (a directory path, `memory`, ...).
    fn describe(&self) -> String;
    /// Files of `kind`, sorted by path.
    fn list(&self, kind: EvidenceKind) -> Result<Vec<EvidenceItem>>;
    /// Opens a file for reading.
    fn open(&self, path: &ArtifactPath) -> Result<Box<dyn Read + Send>>;
}

impl<T: EvidenceSource + ?Sized> EvidenceSource for std::sync::Arc<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn list(&self, kind: EvidenceKind) -> Result<Vec<EvidenceItem>> {
        (**self).list(kind)
    }
    fn open(&self, path: &ArtifactPath) -> Result<Box<dyn Read + Send>> {
        (**self).open(path)
    }
}

/// One parsed, schema-checked record.
#[derive(Clone, Debug)]
pub struct Record {
    /// File and line it came from.
    pub location: Location,
    /// The record.
    pub value: Value,
    /// The record's own timestamp (`modified`, `timestamp`, `evaluatedAt`), if any.
    pub timestamp: Option<Timestamp>,
}

/// Largest single `.json` document or `.ndjson` line accepted (64 MiB).
pub const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// Streams the records of one kind, file by file in path order, line by line.
///
/// Memory use is bounded by the largest record, not the input size.
pub struct Records<'a> {
    source: &'a dyn EvidenceSource,
    kind: EvidenceKind,
    items: std::vec::IntoIter<EvidenceItem>,
    current: Option<(ArtifactPath, BufReader<Box<dyn Read + Send>>, u64)>,
    line_buf: Vec<u8>,
    bytes_total: u64,
    bytes_done: u64,
    failed: bool,
}

impl Debug for Records<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").field("kind", &self.kind).field("bytes_done", &self.bytes_done).finish()
    }
}

impl<'a> Records<'a> {
    /// Lists the files of `kind` and prepares to read them.
    pub fn new(source: &'a dyn EvidenceSource, kind: EvidenceKind) -> Result<Self> {
        let items = source.list(kind)?;
        let bytes_total = items.iter().map(|i| i.size).sum();
        Ok(Self {
            source,
            kind,
            items: items.into_iter(),
            current: None,
            line_buf: Vec::new(),
            bytes_total,
            bytes_done: 0,
            failed: false,
        })
    }

    /// Total size of the files being read.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_total
    }

    /// Bytes consumed so far.
    pub fn bytes_done(&self) -> u64 {
        self.bytes_done
    }

    fn parse(&self, path: &ArtifactPath, line: u64, bytes: &[u8], whole_file: bool) -> Result<Record> {
        let location = Location::line(path.as_str(), line);
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            let loc = if whole_file { Location::line(path.as_str(), e.line() as u64) } else { location.clone() };
            ExportError::evidence(loc, format!("malformed JSON: {e}"))
        })?;
        let timestamp = schema::check(self.kind, &value)
            .map_err(|reason| ExportError::evidence(location.clone(), reason))?;
        Ok(Record { location: if whole_file { Location::file(path.as_str()) } else { location }, value, timestamp })
    }

    fn next_record(&mut self) -> Result<Option<Record>> {
        loop {
            if let Some((path, reader, line)) = self.current.as_mut() {
                self.line_buf.clear();
                let n = reader
                    .by_ref()
                    .take(MAX_RECORD_BYTES + 1)
                    .read_until(b'\n', &mut self.line_buf)
                    .map_err(|e| ExportError::evidence(Location::line(path.as_str(), *line + 1), format!("read failed: {e}")))?;
                if n == 0 {
                    self.current = None;
                    continue;
                }
                *line += 1;
                self.bytes_done += n as u64;
                let (path, line) = (path.clone(), *line);
                if n as u64 > MAX_RECORD_BYTES {
                    return Err(ExportError::evidence(Location::line(path.as_str(), line), "line longer than 64 MiB"));
                }
                let text = trim_ascii(&self.line_buf);
                if text.is_empty() {
                    continue;
                }
                let buf = std::mem::take(&mut self.line_buf);
                let rec = self.parse(&path, line, trim_ascii(&buf), false);
                self.line_buf = buf;
                return rec.map(Some);
            }
            let Some(item) = self.items.next() else { return Ok(None) };
            let name = item.path.file_name().to_ascii_lowercase();
            if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
                let reader = self.source.open(&item.path)?;
                self.current = Some((item.path, BufReader::with_capacity(256 * 1024, reader), 0));
            } else if name.ends_with(".json") {
                if item.size > MAX_RECORD_BYTES {
                    return Err(ExportError::evidence(Location::file(item.path.as_str()), "document larger than 64 MiB"));
                }
                let mut buf = Vec::with_capacity(item.size as usize);
                self.source
                    .open(&item.path)?
                    .take(MAX_RECORD_BYTES + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| ExportError::evidence(Location::file(item.path.as_str()), format!("read failed: {e}")))?;
                self.bytes_done += buf.len() as u64;
                return self.parse(&item.path, 1, &buf, true).map(Some);
            } else {
                return Err(ExportError::evidence(
                    Location::file(item.path.as_str()),
                    format!("unsupported {} evidence file (expected .json or .ndjson)", self.kind.as_str()),
                ));
            }
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(r) => r.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn osv(id: &str) -> String {
        format!(r#"{{"id":"{id}","modified":"2024-01-0{}T00:00:00Z"}}"#, id.len() % 9 + 1)
    }

    #[test]
    fn reads_json_and_ndjson_in_path_order() {
        let mut ev = MemoryEvidence::new();
        ev.insert("advisories/b.ndjson", format!("{}\n\n{}\n", osv("B1"), osv("B22"))).unwrap();
        ev.insert("advisories/a/x.json", osv("A")).unwrap();
        let recs: Vec<Record> = Records::new(&ev, EvidenceKind::Advisory).unwrap().map(|r| r.unwrap()).collect();
        let ids: Vec<&str> = recs.iter().map(|r| r.value["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["A", "B1", "B22"]);
        assert_eq!(recs[2].location.to_string(), "advisories/b.ndjson:3");
    }

    #[test]
    fn malformed_json_names_file_and_line() {
        let mut ev = MemoryEvidence::new();
        ev.insert("advisories/a.ndjson", format!("{}\n{{\"id\": \n", osv("A"))).unwrap();
        let err = Records::new(&ev, EvidenceKind::Advisory).unwrap().find_map(|r| r.err()).unwrap();
        assert_eq!(err.code(), "ERR_EXPORT_EVIDENCE_INVALID");
        assert!(err.to_string().contains("advisories/a.ndjson:2"), "{err}");

        let mut ev = MemoryEvidence::new();
        ev.insert("advisories/p.json", "{\n  \"id\": \"X\",\n  \"modified\": 12,,\n}").unwrap();
        let err = Records::new(&ev, EvidenceKind::Advisory).unwrap().find_map(|r| r.err()).unwrap();
        assert!(err.to_string().contains("advisories/p.json:3"), "{err}");
    }

    #[test]
    fn unsupported_file_is_an_error() {
        let mut ev = MemoryEvidence::new();
        ev.insert("vex/readme.txt", "hello").unwrap();
        let err = Records::new(&ev, EvidenceKind::Vex).unwrap().find_map(|r| r.err()).unwrap();
        assert!(err.to_string().contains("vex/readme.txt"), "{err}");
    }
}
