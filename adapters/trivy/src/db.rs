//! Collecting the buckets of a Trivy DB in bounded memory, then writing the BoltDB file.
//!
//! Values are spooled to a scratch file as advisories stream in. Their index entries (bucket,
//! package, key → offset, length, merge rank) are sorted in runs of [`RUN_ENTRIES`] and spilled
//! to scratch files; writing merges the runs (an external merge sort), so memory is bounded by
//! one run, one transaction's values and the merge heads, whatever the number of advisories.
//! The BoltDB file is written with `bbolt-rs` (a port of Go's bbolt; its `compat` feature
//! writes the magic Go bbolt — and so Trivy — accepts), in sorted key order, committing every
//! [`BATCH`] puts.

use bbolt_rs::{BoltOptions, BucketRwApi, DbRwAPI, TxRwRefApi};
use exportcore::{ExportError, Result, Timestamp};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Puts per BoltDB transaction.
pub(crate) const BATCH: usize = 20_000;
/// Index entries sorted in memory before a run is spilled.
pub(crate) const RUN_ENTRIES: usize = 100_000;

/// The name of the flat bucket holding vulnerability details.
pub(crate) const VULNERABILITY_BUCKET: &str = "vulnerability";

/// One index entry. Sort order = BoltDB write order: nested advisory entries (group 0) by
/// bucket, package, key; then `vulnerability` (group 1) by key; duplicates by merge rank, so
/// the last of a key group wins: the later `modified`, then the larger value digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    group: u8,
    bucket: String,
    pkg: String,
    key: String,
    modified_ms: i64,
    digest: [u8; 32],
    offset: u64,
    len: u32,
}

impl Entry {
    fn same_key(&self, other: &Entry) -> bool {
        self.group == other.group && self.bucket == other.bucket && self.pkg == other.pkg && self.key == other.key
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&[self.group])?;
        for s in [&self.bucket, &self.pkg, &self.key] {
            w.write_all(&(s.len() as u32).to_le_bytes())?;
            w.write_all(s.as_bytes())?;
        }
        w.write_all(&self.modified_ms.to_le_bytes())?;
        w.write_all(&self.digest)?;
        w.write_all(&self.offset.to_le_bytes())?;
        w.write_all(&self.len.to_le_bytes())
    }

    fn read(r: &mut impl Read) -> std::io::Result<Option<Entry>> {
        let mut group = [0u8; 1];
        match r.read_exact(&mut group) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut string = || -> std::io::Result<String> {
            let mut n = [0u8; 4];
            r.read_exact(&mut n)?;
            let mut b = vec![0u8; u32::from_le_bytes(n) as usize];
            r.read_exact(&mut b)?;
            String::from_utf8(b).map_err(std::io::Error::other)
        };
        let (bucket, pkg, key) = (string()?, string()?, string()?);
        let mut b8 = [0u8; 8];
        r.read_exact(&mut b8)?;
        let modified_ms = i64::from_le_bytes(b8);
        let mut digest = [0u8; 32];
        r.read_exact(&mut digest)?;
        r.read_exact(&mut b8)?;
        let offset = u64::from_le_bytes(b8);
        let mut b4 = [0u8; 4];
        r.read_exact(&mut b4)?;
        Ok(Some(Entry { group: group[0], bucket, pkg, key, modified_ms, digest, offset, len: u32::from_le_bytes(b4) }))
    }
}

/// What was written.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Written {
    pub(crate) advisory_entries: u64,
    pub(crate) vulnerabilities: u64,
}

/// Spooled values and spilled index runs of one DB build.
pub(crate) struct Collector {
    dir: PathBuf,
    spool: BufWriter<File>,
    spool_path: PathBuf,
    written: u64,
    run: Vec<Entry>,
    runs: Vec<PathBuf>,
    pushed_nested: u64,
    /// `data-source` entries: one per top-level bucket, few.
    sources: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("runs", &self.runs.len()).field("buffered", &self.run.len()).finish()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |e| ExportError::io(path, e)
}

fn millis(t: Timestamp) -> i64 {
    (t.as_offset_date_time().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Collector {
    /// Spools values to `spool_path` (`file`); spills runs next to it.
    pub(crate) fn new(spool_path: PathBuf, file: File) -> Self {
        let dir = spool_path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Self {
            dir,
            spool: BufWriter::with_capacity(1 << 20, file),
            spool_path,
            written: 0,
            run: Vec::new(),
            runs: Vec::new(),
            pushed_nested: 0,
            sources: BTreeMap::new(),
        }
    }

    fn push(&mut self, group: u8, bucket: &str, pkg: &str, key: &str, value: &[u8], modified: Timestamp) -> Result<()> {
        let offset = self.written;
        self.spool.write_all(value).map_err(io(&self.spool_path))?;
        self.written += value.len() as u64;
        self.run.push(Entry {
            group,
            bucket: bucket.to_owned(),
            pkg: pkg.to_owned(),
            key: key.to_owned(),
            modified_ms: millis(modified),
            digest: *exportcore::Sha256Digest::of(value).as_bytes(),
            offset,
            len: value.len() as u32,
        });
        if self.run.len() >= RUN_ENTRIES {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        self.run.sort_unstable();
        let path = self.dir.join(format!("trivy-index-run-{}", self.runs.len()));
        let mut w = BufWriter::new(File::create(&path).map_err(io(&path))?);
        for e in self.run.drain(..) {
            e.write(&mut w).map_err(io(&path))?;
        }
        w.flush().map_err(io(&path))?;
        self.runs.push(path);
        Ok(())
    }

    /// Adds an advisory (nested bucket entry).
    pub(crate) fn nested(&mut self, root: &str, pkg: &str, id: &str, value: &[u8], modified: Timestamp) -> Result<()> {
        self.pushed_nested += 1;
        self.push(0, root, pkg, id, value, modified)
    }

    /// Adds a `vulnerability` bucket entry.
    pub(crate) fn vulnerability(&mut self, id: &str, value: &[u8], modified: Timestamp) -> Result<()> {
        self.push(1, VULNERABILITY_BUCKET, "", id, value, modified)
    }

    /// Sets the `data-source` entry of a top-level bucket.
    pub(crate) fn data_source(&mut self, bucket: &str, value: Vec<u8>) {
        self.sources.entry(bucket.to_owned()).or_insert(value);
    }

    /// True when no advisory entry was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.pushed_nested == 0
    }

    /// Writes the BoltDB file at `out`; `progress(done, total)` counts index entries merged.
    pub(crate) fn write_bolt(mut self, out: &Path, mut progress: impl FnMut(u64, u64)) -> Result<Written> {
        self.spool.flush().map_err(io(&self.spool_path))?;
        if !self.run.is_empty() {
            self.spill()?;
        }
        let total: u64 = self.pushed_nested;
        let mut spool = File::open(&self.spool_path).map_err(io(&self.spool_path))?;
        let bolt_err = |e: bbolt_rs::Error| ExportError::Internal { implementer: "bbolt", message: e.to_string() };
        let mut db = BoltOptions::builder().page_size(4096).no_sync().build().open(out).map_err(bolt_err)?;
        let mut merge = Merge::open(&self.runs)?;
        let mut written = Written::default();
        let mut batch: Vec<(Entry, Vec<u8>)> = Vec::with_capacity(BATCH);
        let mut done = 0u64;
        loop {
            let next = merge.next_unique()?;
            if let Some(e) = &next {
                let mut value = vec![0u8; e.len as usize];
                spool.seek(SeekFrom::Start(e.offset)).map_err(io(&self.spool_path))?;
                spool.read_exact(&mut value).map_err(io(&self.spool_path))?;
                if e.group == 0 {
                    written.advisory_entries += 1;
                } else {
                    written.vulnerabilities += 1;
                }
                done += 1;
                batch.push((e.clone(), value));
            }
            if batch.len() >= BATCH || (next.is_none() && !batch.is_empty()) {
                db.update(|mut tx| {
                    for (e, value) in &batch {
                        let mut b = tx.create_bucket_if_not_exists(e.bucket.as_bytes())?;
                        b.set_fill_percent(1.0);
                        if e.group == 0 {
                            let mut p = b.create_bucket_if_not_exists(e.pkg.as_bytes())?;
                            p.set_fill_percent(1.0);
                            p.put(e.key.as_bytes(), value)?;
                        } else {
                            b.put(e.key.as_bytes(), value)?;
                        }
                    }
                    Ok(())
                })
                .map_err(bolt_err)?;
                batch.clear();
                progress(done.min(total), total);
            }
            if next.is_none() {
                break;
            }
        }
        let sources = std::mem::take(&mut self.sources);
        db.update(|mut tx| {
            let mut b = tx.create_bucket_if_not_exists(b"data-source")?;
            b.set_fill_percent(1.0);
            for (bucket, value) in &sources {
                b.put(bucket.as_bytes(), value)?;
            }
            Ok(())
        })
        .map_err(bolt_err)?;
        drop(db);
        for r in &self.runs {
            let _ = std::fs::remove_file(r);
        }
        zero_meta_tails(out, 4096)?;
        Ok(written)
    }
}

/// K-way merge of sorted runs, keeping the last (highest-ranked) entry of each key.
struct Merge {
    readers: Vec<(PathBuf, BufReader<File>)>,
    heap: BinaryHeap<Reverse<(Entry, usize)>>,
    pending: Option<Entry>,
}

impl Merge {
    fn open(runs: &[PathBuf]) -> Result<Self> {
        let mut m = Merge { readers: Vec::new(), heap: BinaryHeap::new(), pending: None };
        for (i, path) in runs.iter().enumerate() {
            let f = File::open(path).map_err(io(path))?;
            m.readers.push((path.clone(), BufReader::with_capacity(64 * 1024, f)));
            m.refill(i)?;
        }
        Ok(m)
    }

    fn refill(&mut self, i: usize) -> Result<()> {
        let (path, r) = &mut self.readers[i];
        if let Some(e) = Entry::read(r).map_err(io(path))? {
            self.heap.push(Reverse((e, i)));
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<Option<Entry>> {
        let Some(Reverse((e, i))) = self.heap.pop() else { return Ok(None) };
        self.refill(i)?;
        Ok(Some(e))
    }

    /// The next key's winning entry.
    fn next_unique(&mut self) -> Result<Option<Entry>> {
        let mut current = match self.pending.take() {
            Some(e) => e,
            None => match self.pop()? {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        while let Some(e) = self.pop()? {
            if e.same_key(&current) {
                current = e; // sorted by rank within a key: later wins
            } else {
                self.pending = Some(e);
                break;
            }
        }
        Ok(Some(current))
    }
}

/// bbolt-rs 1.3.10 writes each meta page from an uninitialised arena buffer, so the bytes after
/// the 64-byte meta (header 16 + meta 64 = 80) hold whatever memory was there: the file would
/// differ between two identical builds and could leak process memory. Go bbolt zeroes them.
/// Nothing reads those bytes (the meta checksum covers only the meta fields), so we zero them.
fn zero_meta_tails(path: &Path, page_size: usize) -> Result<()> {
    const META_END: usize = 16 + 64;
    let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(io(path))?;
    let zeros = vec![0u8; page_size - META_END];
    for page in 0..2u64 {
        f.seek(SeekFrom::Start(page * page_size as u64 + META_END as u64)).map_err(io(path))?;
        f.write_all(&zeros).map_err(io(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_unix(s).unwrap()
    }

    #[test]
    fn external_merge_keeps_the_winner_of_each_key_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let mut c = Collector::new(spool.clone(), File::create(&spool).unwrap());
        // More entries than one run, with duplicates spread over runs.
        let n = RUN_ENTRIES + RUN_ENTRIES / 2;
        for i in 0..n {
            let key = format!("k{:07}", i % (RUN_ENTRIES / 2));
            c.nested("b", "p", &key, format!("v{i}").as_bytes(), ts(i as i64)).unwrap();
        }
        c.vulnerability("CVE-1", b"old", ts(1)).unwrap();
        c.vulnerability("CVE-1", b"new", ts(2)).unwrap();
        c.data_source("b", b"{}".to_vec());
        let mut merge_input = std::mem::take(&mut c.run);
        merge_input.sort_unstable();
        c.run = merge_input;
        c.spill().unwrap();
        assert!(c.runs.len() >= 2, "spilled {} runs", c.runs.len());
        let mut m = Merge::open(&c.runs).unwrap();
        let mut seen = Vec::new();
        while let Some(e) = m.next_unique().unwrap() {
            seen.push(e);
        }
        assert_eq!(seen.len(), RUN_ENTRIES / 2 + 1);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        // Key k0000000 was written at i = 0, 50k, 100k: the last (highest modified) wins.
        assert_eq!(seen[0].modified_ms, (RUN_ENTRIES as i64) * 1000);
        let vuln = seen.last().unwrap();
        assert_eq!((vuln.group, vuln.key.as_str(), vuln.modified_ms), (1, "CVE-1", 2000));
    }
}
