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
//! blobs/**                        opaque files carried as they are (archives, image layers,
//!                                 pre-built databases), any name
//! ```
//! Hidden files (names starting with `.`) are ignored; any other file of an unsupported type
//! is an error naming it.

mod dir;
pub mod ijson;
mod memory;
pub mod osv;
mod recording;
pub mod schema;

pub use dir::DirEvidence;
pub use memory::MemoryEvidence;
pub use recording::RecordingEvidence;

use crate::error::{ExportError, Location, Result};
use crate::model::Timestamp;
use crate::path::ArtifactPath;
use serde_json::Value;
use std::fmt::Debug;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

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
    /// Opaque files carried byte for byte (`blobs/`): archives, image layers, pre-built
    /// databases. Not records: [`Records`] refuses this kind.
    Blob,
}

impl EvidenceKind {
    /// Every kind.
    pub const ALL: [Self; 6] = [Self::Advisory, Self::Vex, Self::Policy, Self::Java, Self::Portal, Self::Blob];

    /// True for the kinds whose files hold records ([`Records`] reads them); false for
    /// files taken as they are (portal assets, blobs).
    pub fn has_records(&self) -> bool {
        !matches!(self, Self::Portal | Self::Blob)
    }

    /// Top-level directories holding this kind.
    pub fn dirs(&self) -> &'static [&'static str] {
        match self {
            EvidenceKind::Advisory => &["advisories"],
            EvidenceKind::Vex => &["vex"],
            EvidenceKind::Policy => &["policy"],
            EvidenceKind::Java => &["java"],
            EvidenceKind::Portal => &["changelog", "portal", "sdks", "specs"],
            EvidenceKind::Blob => &["blobs"],
        }
    }

    /// The kind whose directory `path` lies in.
    pub fn of_path(path: &ArtifactPath) -> Option<Self> {
        let top = path.as_str().split('/').next().unwrap_or_default();
        Self::ALL.into_iter().find(|k| k.dirs().contains(&top))
    }

    /// Name used in messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            EvidenceKind::Advisory => "advisory",
            EvidenceKind::Vex => "vex",
            EvidenceKind::Policy => "policy",
            EvidenceKind::Java => "java",
            EvidenceKind::Portal => "portal",
            EvidenceKind::Blob => "blob",
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

/// Most bytes a batch buffer is allocated with before it is filled.
const MAX_BATCH_PREALLOC: usize = 8 << 20;

/// Largest single `.json` document or `.ndjson` line accepted (64 MiB).
pub const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// Where a raw record sits in its batch.
#[derive(Clone, Debug)]
struct RawEntry {
    path: Arc<str>,
    line: u64,
    whole_file: bool,
    range: std::ops::Range<usize>,
}

/// A batch of unparsed records, read sequentially and parsed anywhere (e.g. on worker
/// threads): [`RecordBatch::parse`] checks each record exactly as [`Records`] does.
#[derive(Clone, Debug)]
pub struct RecordBatch {
    kind: EvidenceKind,
    buf: Vec<u8>,
    entries: Vec<RawEntry>,
}

impl RecordBatch {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// The kind of evidence in the batch.
    pub fn kind(&self) -> EvidenceKind {
        self.kind
    }
    /// Raw bytes read for this batch.
    pub fn raw_bytes(&self) -> usize {
        self.buf.len()
    }
    /// Parses and checks record `i`.
    pub fn parse(&self, i: usize) -> Result<Record> {
        let e = &self.entries[i];
        parse_record(self.kind, e, &self.buf[e.range.clone()])
    }
    /// The raw bytes of record `i` (one trimmed `.ndjson` line, or a whole `.json` document),
    /// for profiles that read records without a `Value` tree (e.g. through
    /// [`osv::Osv::from_json`]); they must still check them ([`osv::Osv::check`]) and report
    /// failures at [`RecordBatch::location`].
    pub fn raw(&self, i: usize) -> &[u8] {
        &self.buf[self.entries[i].range.clone()]
    }
    /// Checks record `i` against I-JSON ([`ijson`]: unique member names, numbers that survive
    /// as doubles), as [`RecordBatch::parse`] does. Profiles that read [`RecordBatch::raw`]
    /// bytes through a typed view call it first.
    ///
    /// # Errors
    /// `ERR_EXPORT_EVIDENCE_INVALID` naming the file, line and member.
    pub fn check_ijson(&self, i: usize) -> Result<()> {
        let e = &self.entries[i];
        ijson_check(e, &self.buf[e.range.clone()])
    }
    /// Where record `i` starts: its file and line.
    pub fn location(&self, i: usize) -> Location {
        let e = &self.entries[i];
        Location::line(&*e.path, e.line)
    }
    /// Parses and checks every record, in order.
    pub fn records(&self) -> impl Iterator<Item = Result<Record>> + '_ {
        (0..self.len()).map(|i| self.parse(i))
    }
}

fn ijson_check(e: &RawEntry, bytes: &[u8]) -> Result<()> {
    ijson::check(bytes).map_err(|v| {
        let line =
            if e.whole_file { 1 + bytes[..v.offset].iter().filter(|b| **b == b'\n').count() as u64 } else { e.line };
        ExportError::evidence(Location::line(&*e.path, line), v.reason)
    })
}

fn parse_record(kind: EvidenceKind, e: &RawEntry, bytes: &[u8]) -> Result<Record> {
    ijson_check(e, bytes)?;
    let location = Location::line(&*e.path, e.line);
    let value: Value = serde_json::from_slice(bytes).map_err(|err| {
        let loc = if e.whole_file { Location::line(&*e.path, err.line() as u64) } else { location.clone() };
        let hint = if bytes.starts_with(b"\xEF\xBB\xBF") {
            " (the file starts with a UTF-8 byte order mark: remove it)"
        } else {
            ""
        };
        ExportError::evidence(loc, format!("malformed JSON: {err}{hint}"))
    })?;
    let timestamp = schema::check(kind, &value).map_err(|reason| ExportError::evidence(location.clone(), reason))?;
    Ok(Record { location: if e.whole_file { Location::file(&*e.path) } else { location }, value, timestamp })
}

/// An `.ndjson` file being read: its path, reader and the last line number read.
type OpenFile = (Arc<str>, BufReader<Box<dyn Read + Send>>, u64);

/// Streams the records of one kind, file by file in path order, line by line.
///
/// Memory use is bounded by the largest record, not the input size. Use it as an iterator of
/// parsed records, or take [`RecordBatch`]es with [`Records::next_batch`] to parse in parallel.
pub struct Records<'a> {
    source: &'a dyn EvidenceSource,
    kind: EvidenceKind,
    items: std::vec::IntoIter<EvidenceItem>,
    current: Option<OpenFile>,
    batch: RecordBatch,
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
    ///
    /// # Errors
    /// [`ExportError::Internal`] for a kind without records ([`EvidenceKind::has_records`]);
    /// whatever `list` returns.
    pub fn new(source: &'a dyn EvidenceSource, kind: EvidenceKind) -> Result<Self> {
        if !kind.has_records() {
            return Err(ExportError::internal("evidence", format!("{} evidence holds no records", kind.as_str())));
        }
        let items = source.list(kind)?;
        let bytes_total = items.iter().map(|i| i.size).sum();
        Ok(Self {
            source,
            kind,
            items: items.into_iter(),
            current: None,
            batch: RecordBatch { kind, buf: Vec::new(), entries: Vec::new() },
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

    /// Reads the next raw record into `self.batch`; false at the end.
    fn read_raw(&mut self) -> Result<bool> {
        loop {
            if let Some((path, reader, line)) = self.current.as_mut() {
                let buf = &mut self.batch.buf;
                let start = buf.len();
                let n = reader.by_ref().take(MAX_RECORD_BYTES + 1).read_until(b'\n', buf).map_err(|e| {
                    ExportError::evidence(Location::line(&**path, *line + 1), format!("read failed: {e}"))
                })?;
                if n == 0 {
                    self.current = None;
                    continue;
                }
                *line += 1;
                self.bytes_done += n as u64;
                if n as u64 > MAX_RECORD_BYTES {
                    return Err(ExportError::evidence(Location::line(&**path, *line), "line longer than 64 MiB"));
                }
                let (a, b) = trim_range(&buf[start..]);
                if a == b {
                    buf.truncate(start);
                    continue;
                }
                let entry =
                    RawEntry { path: Arc::clone(path), line: *line, whole_file: false, range: start + a..start + b };
                self.batch.entries.push(entry);
                return Ok(true);
            }
            let Some(item) = self.items.next() else { return Ok(false) };
            let name = item.path.file_name().to_ascii_lowercase();
            let path: Arc<str> = Arc::from(item.path.as_str());
            if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
                let reader = self.source.open(&item.path)?;
                self.current = Some((path, BufReader::with_capacity(256 * 1024, reader), 0));
            } else if name.ends_with(".json") {
                if item.size > MAX_RECORD_BYTES {
                    return Err(ExportError::evidence(Location::file(&*path), "document larger than 64 MiB"));
                }
                let buf = &mut self.batch.buf;
                let start = buf.len();
                let n = self
                    .source
                    .open(&item.path)?
                    .take(MAX_RECORD_BYTES + 1)
                    .read_to_end(buf)
                    .map_err(|e| ExportError::evidence(Location::file(&*path), format!("read failed: {e}")))?;
                self.bytes_done += n as u64;
                self.batch.entries.push(RawEntry { path, line: 1, whole_file: true, range: start..start + n });
                return Ok(true);
            } else {
                return Err(ExportError::evidence(
                    Location::file(&*path),
                    format!("unsupported {} evidence file (expected .json or .ndjson)", self.kind.as_str()),
                ));
            }
        }
    }

    /// The next batch of at least one and up to about `max_bytes` raw records; `None` at the end.
    pub fn next_batch(&mut self, max_bytes: usize) -> Result<Option<RecordBatch>> {
        if self.failed {
            return Ok(None);
        }
        self.batch.buf.clear();
        self.batch.entries.clear();
        loop {
            match self.read_raw() {
                Ok(true) if self.batch.buf.len() >= max_bytes => break,
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        if self.batch.entries.is_empty() {
            return Ok(None);
        }
        let kind = self.kind;
        // The next batch's buffer, sized up front: growing it by doubling costs copies and
        // page faults on every batch.
        let next = RecordBatch {
            kind,
            buf: Vec::with_capacity(max_bytes.min(MAX_BATCH_PREALLOC) + 64 * 1024),
            entries: Vec::with_capacity(self.batch.entries.len()),
        };
        Ok(Some(std::mem::replace(&mut self.batch, next)))
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_batch(0) {
            Ok(Some(batch)) => Some(batch.parse(0)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
        .inspect(|r| {
            if r.is_err() {
                self.failed = true;
            }
        })
    }
}

fn trim_range(b: &[u8]) -> (usize, usize) {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |i| i + 1);
    (start, end)
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

    #[test]
    fn blobs_are_listed_with_any_name_and_are_not_records() {
        let mut ev = MemoryEvidence::new();
        ev.insert("blobs/layers/a.tar.gz", "\x1f\u{8b}not json").unwrap();
        ev.insert("blobs/readme", "anything").unwrap();
        let listed: Vec<String> =
            ev.list(EvidenceKind::Blob).unwrap().into_iter().map(|i| i.path.as_str().to_owned()).collect();
        assert_eq!(listed, ["blobs/layers/a.tar.gz", "blobs/readme"]);
        assert_eq!(EvidenceKind::of_path(&ArtifactPath::parse("blobs/readme").unwrap()), Some(EvidenceKind::Blob));
        assert!(ev.list(EvidenceKind::Advisory).unwrap().is_empty());
        let err = Records::new(&ev, EvidenceKind::Blob).unwrap_err();
        assert!(err.to_string().contains("blob evidence holds no records"), "{err}");
        assert!(EvidenceKind::ALL.iter().filter(|k| !k.has_records()).eq([&EvidenceKind::Portal, &EvidenceKind::Blob]));
    }
}
