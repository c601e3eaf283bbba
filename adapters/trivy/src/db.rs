//! Collecting the buckets of a Trivy DB in bounded memory, then writing the BoltDB file.
//!
//! Values are spooled to a scratch file as advisories stream in; memory holds only the sorted
//! key index (bucket path, key → offset, length, merge rank), a few dozen bytes per entry. The
//! BoltDB file is written with `bbolt-rs` (a port of Go's bbolt; its `compat` feature writes the
//! magic Go bbolt — and so Trivy — accepts), in sorted key order, committing every
//! [`BATCH`] puts so dirty pages never pile up in memory.

use bbolt_rs::{BoltOptions, BucketRwApi, DbRwAPI, TxRwRefApi};
use exportcore::{ExportError, Result, Timestamp};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Puts per BoltDB transaction.
pub(crate) const BATCH: usize = 20_000;

/// Which duplicate wins: the later `modified`, then the larger value digest (deterministic).
type Rank = (Timestamp, [u8; 32]);

#[derive(Clone, Copy, Debug)]
struct Slot {
    rank: Rank,
    offset: u64,
    len: u32,
}

/// Spooled key → value pairs of the nested advisory buckets and the flat buckets.
pub(crate) struct Collector {
    spool: BufWriter<File>,
    spool_path: PathBuf,
    written: u64,
    /// (root bucket, package bucket, vuln id) → value
    nested: BTreeMap<(String, String, String), Slot>,
    /// (flat bucket, key) → value
    flat: BTreeMap<(String, String), Slot>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("nested", &self.nested.len()).field("flat", &self.flat.len()).finish()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |e| ExportError::io(path, e)
}

impl Collector {
    pub(crate) fn new(spool_path: PathBuf, file: File) -> Self {
        Self {
            spool: BufWriter::with_capacity(1 << 20, file),
            spool_path,
            written: 0,
            nested: BTreeMap::new(),
            flat: BTreeMap::new(),
        }
    }

    fn store(&mut self, value: &[u8]) -> Result<(u64, u32)> {
        let offset = self.written;
        self.spool.write_all(value).map_err(io(&self.spool_path))?;
        self.written += value.len() as u64;
        Ok((offset, value.len() as u32))
    }

    fn rank(modified: Timestamp, value: &[u8]) -> Rank {
        (modified, *exportcore::Sha256Digest::of(value).as_bytes())
    }

    /// Adds an advisory; of two for the same (bucket, package, id) the later-modified wins.
    pub(crate) fn nested(&mut self, root: &str, pkg: &str, id: &str, value: &[u8], modified: Timestamp) -> Result<()> {
        let rank = Self::rank(modified, value);
        let key = (root.to_owned(), pkg.to_owned(), id.to_owned());
        if self.nested.get(&key).is_some_and(|s| s.rank >= rank) {
            return Ok(());
        }
        let (offset, len) = self.store(value)?;
        self.nested.insert(key, Slot { rank, offset, len });
        Ok(())
    }

    /// Adds a key of a flat bucket (`vulnerability`, `data-source`) with the same merge rule.
    pub(crate) fn flat(&mut self, bucket: &str, key: &str, value: &[u8], modified: Timestamp) -> Result<()> {
        let rank = Self::rank(modified, value);
        let k = (bucket.to_owned(), key.to_owned());
        if self.flat.get(&k).is_some_and(|s| s.rank >= rank) {
            return Ok(());
        }
        let (offset, len) = self.store(value)?;
        self.flat.insert(k, Slot { rank, offset, len });
        Ok(())
    }

    /// Number of advisory entries.
    pub(crate) fn advisories(&self) -> usize {
        self.nested.len()
    }

    /// Number of entries in a flat bucket.
    pub(crate) fn flat_len(&self, bucket: &str) -> usize {
        self.flat.keys().filter(|(b, _)| b == bucket).count()
    }

    /// Writes the BoltDB file at `out`.
    pub(crate) fn write_bolt(mut self, out: &Path, mut progress: impl FnMut(usize, usize)) -> Result<()> {
        self.spool.flush().map_err(io(&self.spool_path))?;
        let mut spool = File::open(&self.spool_path).map_err(io(&self.spool_path))?;
        let bolt_err = |e: bbolt_rs::Error| ExportError::Internal { implementer: "bbolt", message: e.to_string() };
        let mut db = BoltOptions::builder().page_size(4096).no_sync().build().open(out).map_err(bolt_err)?;
        let mut read = |slot: &Slot| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; slot.len as usize];
            spool.seek(SeekFrom::Start(slot.offset)).map_err(io(&self.spool_path))?;
            spool.read_exact(&mut buf).map_err(io(&self.spool_path))?;
            Ok(buf)
        };
        // Gather each batch's values first (bbolt's closure cannot fail with our error type).
        let total = self.nested.len() + self.flat.len();
        let mut done = 0;
        let nested: Vec<_> = std::mem::take(&mut self.nested).into_iter().collect();
        for chunk in nested.chunks(BATCH) {
            let values = chunk.iter().map(|(_, s)| read(s)).collect::<Result<Vec<_>>>()?;
            db.update(|mut tx| {
                for (((root, pkg, id), _), value) in chunk.iter().zip(&values) {
                    let mut r = tx.create_bucket_if_not_exists(root.as_bytes())?;
                    r.set_fill_percent(1.0);
                    let mut p = r.create_bucket_if_not_exists(pkg.as_bytes())?;
                    p.set_fill_percent(1.0);
                    p.put(id.as_bytes(), value)?;
                }
                Ok(())
            })
            .map_err(bolt_err)?;
            done += chunk.len();
            progress(done, total);
        }
        let flat: Vec<_> = std::mem::take(&mut self.flat).into_iter().collect();
        for chunk in flat.chunks(BATCH) {
            let values = chunk.iter().map(|(_, s)| read(s)).collect::<Result<Vec<_>>>()?;
            db.update(|mut tx| {
                for (((bucket, key), _), value) in chunk.iter().zip(&values) {
                    let mut b = tx.create_bucket_if_not_exists(bucket.as_bytes())?;
                    b.set_fill_percent(1.0);
                    b.put(key.as_bytes(), value)?;
                }
                Ok(())
            })
            .map_err(bolt_err)?;
            done += chunk.len();
            progress(done, total);
        }
        drop(db);
        zero_meta_tails(out, 4096)
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
