//! Collecting the buckets of a Trivy DB in bounded memory, then writing the BoltDB file.
//!
//! Entries (bucket, package, key, `modified`, value) are gathered in runs of [`RUN_ENTRIES`];
//! each full run is sorted on a background thread and spilled, values included, to a scratch
//! file. Writing merges the runs (an external merge sort) reading each one sequentially, so
//! memory is bounded by two runs and the merge heads, whatever the number of advisories, and no
//! value is ever looked up at random. The merge yields entries in BoltDB order, which
//! [`crate::bolt::BoltWriter`] turns into the file page by page.

use exportcore::{ExportError, Result, Sha256Digest, Timestamp};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// Entries gathered in memory before a run is sorted and spilled (about 20 MB with values).
pub(crate) const RUN_ENTRIES: usize = 40_000;

/// Bytes of paths and values after which a run is spilled even if it has fewer entries:
/// records with long descriptions made a 40,000-entry run several times larger than usual.
const RUN_BYTES: usize = 16 << 20;

/// The name of the flat bucket holding vulnerability details.
pub(crate) const VULNERABILITY_BUCKET: &str = "vulnerability";
/// The name of the flat bucket holding one data source per advisory bucket.
pub(crate) const DATA_SOURCE_BUCKET: &str = "data-source";

/// One entry. `path` is `bucket NUL package NUL key` (package empty for the flat buckets), so
/// byte order of `path` is BoltDB order of (bucket, package, key); duplicates of a path sort by
/// `modified`, and the merge keeps the later one, or of two with the same `modified` the one
/// whose value has the larger SHA-256 (computed only for such ties).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    path: Box<[u8]>,
    modified_ms: i64,
    value: Box<[u8]>,
}

impl Entry {
    /// (bucket, package — empty for flat buckets —, key).
    fn split(&self) -> (&[u8], &[u8], &[u8]) {
        let mut parts = self.path.splitn(3, |b| *b == 0);
        let bucket = parts.next().unwrap_or_default();
        let pkg = parts.next().unwrap_or_default();
        (bucket, pkg, parts.next().unwrap_or_default())
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&(self.path.len() as u32).to_le_bytes())?;
        w.write_all(&self.path)?;
        w.write_all(&self.modified_ms.to_le_bytes())?;
        w.write_all(&(self.value.len() as u32).to_le_bytes())?;
        w.write_all(&self.value)
    }

    fn read(r: &mut impl Read) -> std::io::Result<Option<Entry>> {
        let mut b4 = [0u8; 4];
        match r.read_exact(&mut b4) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut path = vec![0u8; u32::from_le_bytes(b4) as usize];
        r.read_exact(&mut path)?;
        let mut b8 = [0u8; 8];
        r.read_exact(&mut b8)?;
        let modified_ms = i64::from_le_bytes(b8);
        r.read_exact(&mut b4)?;
        let mut value = vec![0u8; u32::from_le_bytes(b4) as usize];
        r.read_exact(&mut value)?;
        Ok(Some(Entry { path: path.into(), modified_ms, value: value.into() }))
    }

    fn digest(&self) -> [u8; 32] {
        *Sha256Digest::of(&self.value).as_bytes()
    }
}

/// What was written.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Written {
    pub(crate) advisory_entries: u64,
    pub(crate) vulnerabilities: u64,
}

/// The runs of one DB build: the one being gathered and those spilled.
pub(crate) struct Collector {
    /// Spilled runs are `{prefix}-run-{n}`.
    prefix: PathBuf,
    run: Vec<Entry>,
    /// Bytes of the paths and values in `run`.
    run_bytes: usize,
    runs: Vec<PathBuf>,
    /// The thread that sorts and spills full runs, one at a time (started with the first).
    spiller: Option<Spiller>,
    pushed_nested: u64,
    /// Buckets that already have their `data-source` entry.
    sources: BTreeSet<String>,
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

fn sort_and_write(mut run: Vec<Entry>, path: &Path) -> Result<()> {
    run.sort_unstable();
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io(path))?);
    for e in &run {
        e.write(&mut w).map_err(io(path))?;
    }
    w.flush().map_err(io(path))
}

impl Collector {
    /// Spills runs to files named after `prefix` (a scratch path of the run's staging area).
    pub(crate) fn new(prefix: PathBuf) -> Self {
        Self {
            prefix,
            run: Vec::with_capacity(RUN_ENTRIES),
            run_bytes: 0,
            runs: Vec::new(),
            spiller: None,
            pushed_nested: 0,
            sources: BTreeSet::new(),
        }
    }

    fn push(&mut self, bucket: &str, pkg: &str, key: &str, value: Vec<u8>, modified: Timestamp) -> Result<()> {
        if bucket.contains('\0') || pkg.contains('\0') {
            return Err(ExportError::internal(
                "trivy",
                format!("bucket or package name with a NUL byte: {bucket:?} / {pkg:?}"),
            ));
        }
        let mut path = Vec::with_capacity(bucket.len() + pkg.len() + key.len() + 2);
        path.extend_from_slice(bucket.as_bytes());
        path.push(0);
        path.extend_from_slice(pkg.as_bytes());
        path.push(0);
        path.extend_from_slice(key.as_bytes());
        self.run_bytes += path.len() + value.len();
        self.run.push(Entry { path: path.into(), modified_ms: millis(modified), value: value.into() });
        if self.run.len() >= RUN_ENTRIES || self.run_bytes >= RUN_BYTES {
            self.spill()?;
        }
        Ok(())
    }

    /// Hands the gathered run to the spiller thread, which sorts and writes it. The hand-over
    /// waits until the spiller has finished the previous run, so at most two runs are in memory.
    /// One long-lived thread, not one per run: an allocator keeps per-thread state, and a
    /// thread per run made peak memory grow with the number of runs.
    fn spill(&mut self) -> Result<()> {
        let run = std::mem::replace(&mut self.run, Vec::with_capacity(RUN_ENTRIES));
        self.run_bytes = 0;
        let mut name = self.prefix.as_os_str().to_owned();
        name.push(format!("-run-{}", self.runs.len()));
        let path = PathBuf::from(name);
        self.runs.push(path.clone());
        let spiller = self.spiller.get_or_insert_with(Spiller::start);
        if spiller.tx.send((run, path)).is_err() {
            // The spiller stopped on an error: report it.
            return self.join_spill();
        }
        Ok(())
    }

    /// Waits for every handed-over run to be on disk.
    fn join_spill(&mut self) -> Result<()> {
        match self.spiller.take() {
            Some(Spiller { tx, thread }) => {
                drop(tx);
                thread.join().map_err(|_| ExportError::internal("trivy", "index sort panicked"))?
            }
            None => Ok(()),
        }
    }

    /// Adds an advisory (nested bucket entry).
    pub(crate) fn nested(
        &mut self,
        root: &str,
        pkg: &str,
        id: &str,
        value: Vec<u8>,
        modified: Timestamp,
    ) -> Result<()> {
        if pkg.is_empty() {
            return Err(ExportError::internal("trivy", format!("{id}: empty package name")));
        }
        self.pushed_nested += 1;
        self.push(root, pkg, id, value, modified)
    }

    /// Adds a `vulnerability` bucket entry.
    pub(crate) fn vulnerability(&mut self, id: &str, value: Vec<u8>, modified: Timestamp) -> Result<()> {
        self.push(VULNERABILITY_BUCKET, "", id, value, modified)
    }

    /// Sets the `data-source` entry of a top-level bucket; the first one set wins.
    pub(crate) fn data_source(&mut self, bucket: &str, value: impl FnOnce() -> Vec<u8>) -> Result<()> {
        if self.sources.contains(bucket) {
            return Ok(());
        }
        self.sources.insert(bucket.to_owned());
        let epoch = Timestamp::from_unix(0)?;
        self.push(DATA_SOURCE_BUCKET, "", bucket, value(), epoch)
    }

    /// True when no advisory entry was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.pushed_nested == 0
    }

    /// Calls `put(bucket path, key, value)` for every winning entry in BoltDB order (sorted
    /// by bucket, package, key), merging the spilled runs; `progress(done, total)`.
    fn for_each_sorted(
        mut self,
        mut put: impl FnMut(&[&[u8]], &[u8], &[u8]) -> Result<()>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Written> {
        // The last run is sorted here, while the spiller finishes the one before, and merged
        // from memory: it is never written out.
        let mut last = std::mem::take(&mut self.run);
        last.sort_unstable();
        self.join_spill()?;
        let total = self.pushed_nested;
        let mut merge = Merge::open(&self.runs, last)?;
        let mut written = Written::default();
        let mut done = 0u64;
        while let Some(e) = merge.next_unique()? {
            let (bucket, pkg, key) = e.split();
            if pkg.is_empty() {
                if bucket == VULNERABILITY_BUCKET.as_bytes() {
                    written.vulnerabilities += 1;
                }
                put(&[bucket], key, &e.value)?;
            } else {
                written.advisory_entries += 1;
                put(&[bucket, pkg], key, &e.value)?;
            }
            done += 1;
            if done.is_multiple_of(20_000) {
                progress(done.min(total), total);
            }
        }
        progress(total, total);
        for r in &self.runs {
            let _ = std::fs::remove_file(r);
        }
        Ok(written)
    }

    /// Writes the BoltDB file at `out` (which must not exist); `progress(done, total)` counts
    /// entries merged.
    /// With `tee`, the file's bytes also stream there as they are written (see
    /// [`crate::bolt::BoltWriter::create_with_tee`]).
    pub(crate) fn write_bolt(
        self,
        out: &Path,
        tee: Option<&mut dyn Write>,
        progress: impl FnMut(u64, u64),
    ) -> Result<Written> {
        let bolt_err = |e: std::io::Error| ExportError::io(out, e);
        let mut db = match tee {
            Some(tee) => crate::bolt::BoltWriter::create_with_tee(out, tee),
            None => crate::bolt::BoltWriter::create(out),
        }
        .map_err(bolt_err)?;
        let written = self.for_each_sorted(|path, key, value| db.put(path, key, value).map_err(bolt_err), progress)?;
        db.finish().map_err(bolt_err)?;
        Ok(written)
    }
}

/// The spilling thread and the rendezvous channel runs are handed over on.
struct Spiller {
    tx: std::sync::mpsc::SyncSender<(Vec<Entry>, PathBuf)>,
    thread: JoinHandle<Result<()>>,
}

impl Spiller {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<Entry>, PathBuf)>(0);
        let thread = std::thread::spawn(move || {
            for (run, path) in rx {
                sort_and_write(run, &path)?;
            }
            Ok(())
        });
        Self { tx, thread }
    }
}

/// K-way merge of sorted runs, keeping the winning entry of each key.
struct Merge {
    /// Spilled runs, read sequentially.
    readers: Vec<(PathBuf, BufReader<File>)>,
    /// The last run, sorted in memory (source index `readers.len()`).
    last: std::vec::IntoIter<Entry>,
    heap: BinaryHeap<Reverse<(Entry, usize)>>,
    pending: Option<Entry>,
}

impl Merge {
    fn open(runs: &[PathBuf], last: Vec<Entry>) -> Result<Self> {
        let mut m = Merge { readers: Vec::new(), last: last.into_iter(), heap: BinaryHeap::new(), pending: None };
        for path in runs {
            let f = File::open(path).map_err(io(path))?;
            m.readers.push((path.clone(), BufReader::with_capacity(64 * 1024, f)));
        }
        for i in 0..=runs.len() {
            m.refill(i)?;
        }
        Ok(m)
    }

    fn refill(&mut self, i: usize) -> Result<()> {
        let next = match self.readers.get_mut(i) {
            Some((path, r)) => Entry::read(r).map_err(io(path))?,
            None => self.last.next(),
        };
        if let Some(e) = next {
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
            if e.path == current.path {
                // Sorted by `modified` within a key: a later one wins; a tie goes to the larger
                // value digest, so the winner does not depend on input order.
                if e.modified_ms > current.modified_ms || e.digest() > current.digest() {
                    current = e;
                }
            } else {
                self.pending = Some(e);
                break;
            }
        }
        Ok(Some(current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_unix(s).unwrap()
    }

    fn v(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn external_merge_keeps_the_winner_of_each_key_across_runs_in_bolt_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collector::new(dir.path().join("scratch"));
        // More entries than two runs, with duplicates spread over runs.
        let n = 2 * RUN_ENTRIES + RUN_ENTRIES / 2;
        for i in 0..n {
            let key = format!("k{:07}", i % (RUN_ENTRIES / 2));
            c.nested("b", "p", &key, v(&format!("v{i}")), ts(i as i64)).unwrap();
        }
        c.vulnerability("CVE-1", v("old"), ts(1)).unwrap();
        c.vulnerability("CVE-1", v("new"), ts(2)).unwrap();
        c.data_source("b", || b"{}".to_vec()).unwrap();
        c.data_source("b", || b"ignored".to_vec()).unwrap();
        // "b x" sorts after "b" as a bucket name even though ' ' < 'p'.
        c.nested("b x", "a", "k", v("bx"), ts(1)).unwrap();
        type Put = (Vec<Vec<u8>>, Vec<u8>, Vec<u8>);
        let mut seen: Vec<Put> = Vec::new();
        let written = c
            .for_each_sorted(
                |path, key, value| {
                    seen.push((path.iter().map(|p| p.to_vec()).collect(), key.to_vec(), value.to_vec()));
                    Ok(())
                },
                |_, _| {},
            )
            .unwrap();
        assert_eq!(written.advisory_entries, RUN_ENTRIES as u64 / 2 + 1);
        assert_eq!(written.vulnerabilities, 1);
        assert_eq!(seen.len(), RUN_ENTRIES / 2 + 3);
        let order: Vec<(Vec<Vec<u8>>, Vec<u8>)> = seen.iter().map(|(p, k, _)| (p.clone(), k.clone())).collect();
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(order, sorted, "sorted by (bucket path, key), unique");
        // Key k0000000 was written at i = 0, 50k, ..., 200k: the last (highest modified) wins.
        assert_eq!(seen[0].2, format!("v{}", 4 * (RUN_ENTRIES / 2)).as_bytes());
        let last = |bucket: &str| seen.iter().find(|(p, _, _)| p[0] == bucket.as_bytes()).unwrap();
        assert_eq!(last("b x").0, [b"b x".to_vec(), b"a".to_vec()]);
        assert_eq!(last(DATA_SOURCE_BUCKET).2, b"{}");
        assert_eq!(last(VULNERABILITY_BUCKET).2, b"new");
    }

    #[test]
    fn same_modified_time_breaks_ties_by_digest_whatever_the_order() {
        let run = |first: &str, second: &str| {
            let dir = tempfile::tempdir().unwrap();
            let mut c = Collector::new(dir.path().join("scratch"));
            c.nested("b", "p", "k", v(first), ts(5)).unwrap();
            c.nested("b", "p", "k", v(second), ts(5)).unwrap();
            let mut out = Vec::new();
            c.for_each_sorted(
                |_, _, value| {
                    out = value.to_vec();
                    Ok(())
                },
                |_, _| {},
            )
            .unwrap();
            out
        };
        assert_eq!(run("x", "y"), run("y", "x"));
    }
}
