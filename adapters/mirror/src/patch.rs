//! Unit patches: a changed file carried as edits of its base version, for the files that
//! change a little when a few records do — record shards (`*.jsonl.zst`, one record per
//! line) and indexes (`*.index.json`, one entry per record). A delta of 1 % changed records
//! otherwise carries every shard and index whole, since a uniform change touches all of them.
//!
//! A file is a sequence of **units**: the lines of a decompressed shard, or the pieces of an
//! index split before each entry (`{"file":` can only appear as structure: inside a JSON
//! string a quote is escaped). A patch, zstd-compressed, is a magic line and then operations
//! on the base's units, in order: `C n` copies the next `n`, `S n` skips `n`, `I len` inserts
//! the `len` bytes that follow. Both sides stream: the producer keeps one sorted list of the
//! base's 64-bit unit hashes with counts (to tell "changed" from "moved"; 12 bytes a unit),
//! the applier nothing. A patch only
//! ever yields bytes whose SHA-256 the caller then checks against the signed list, so a hash
//! collision or a bad patch cannot install wrong bytes; it fails the apply.
//!
//! No maintained crate diffs streams of this size in bounded memory (`similar` holds both
//! sides; `bsdiff`/`zstd --patch-from` work on whole uncompressed files, up to gigabytes).

use exportcore::{ExportError, Result};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

/// The first line of every patch.
pub(crate) const PATCH_MAGIC: &str = "exportcore-mirror-patch/v1";

/// How a file splits into units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Units {
    /// A zstd-compressed JSON Lines shard: units are lines; rebuilt with the shard encoder.
    Shard,
    /// An index document: units start at each entry.
    Index,
}

/// Marks the start of an index entry (entries' keys are sorted: `file` comes first).
const ENTRY: &[u8] = b"{\"file\":";

/// The longest unit a reader accepts: six times the longest record evidence may hold. A
/// shard line is one record in canonical form, which can be longer than the record as given
/// (`9e20`, 4 bytes, is written `900000000000000000000`, 21: about 5.25 times at worst); an
/// index entry is far shorter. A file whose units are longer — a base swapped after its check
/// for a zstd bomb with no line break, or a sparse file with no entry marker — is an error,
/// not a buffer of gigabytes.
const MAX_UNIT: u64 = 6 * exportcore::evidence::MAX_RECORD_BYTES;

fn unit_too_long() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("a line or entry longer than {MAX_UNIT} bytes"))
}

impl Units {
    /// The kind of units of a `mirror/` path that patches apply to.
    pub(crate) fn of(path: &str) -> Option<Self> {
        if path.starts_with("mirror/data/raw/") || path.starts_with("mirror/data/policy/") {
            path.ends_with(".jsonl.zst").then_some(Self::Shard)
        } else if path.starts_with("mirror/indexes/") {
            path.ends_with(".index.json").then_some(Self::Index)
        } else {
            None
        }
    }

    /// The name recorded in a delta (`lines`, `entries`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Shard => "lines",
            Self::Index => "entries",
        }
    }

    /// Reads the units of the file at `path`.
    fn open(self, path: &Path) -> io::Result<UnitReader> {
        let file = std::fs::File::open(path)?;
        let inner: Box<dyn BufRead> = match self {
            Self::Shard => Box::new(BufReader::with_capacity(256 << 10, zstd::Decoder::new(file)?)),
            Self::Index => Box::new(BufReader::with_capacity(256 << 10, file)),
        };
        Ok(UnitReader { inner, units: self, pending: Vec::new(), start: 0, eof: false })
    }
}

/// Streams the units of one file.
struct UnitReader {
    inner: Box<dyn BufRead>,
    units: Units,
    pending: Vec<u8>,
    /// Where the unread part of `pending` starts.
    start: usize,
    eof: bool,
}

impl UnitReader {
    /// The next unit into `out` (cleared first); false at the end.
    fn next_into(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        match self.units {
            Units::Shard => {
                let n = self.inner.by_ref().take(MAX_UNIT + 1).read_until(b'\n', out)?;
                if n as u64 > MAX_UNIT {
                    return Err(unit_too_long());
                }
                Ok(n > 0)
            }
            Units::Index => {
                // A unit ends just before the next entry marker that is not at its start. The
                // consumed front of `pending` is dropped only when more is read (linear time).
                let mut from = 1;
                loop {
                    let hay = &self.pending[self.start..];
                    if let Some(p) = hay.get(from..).and_then(|h| memchr::memmem::find(h, ENTRY)) {
                        out.extend_from_slice(&hay[..from + p]);
                        self.start += from + p;
                        return Ok(true);
                    }
                    if self.eof {
                        out.extend_from_slice(hay);
                        self.start = self.pending.len();
                        return Ok(!out.is_empty());
                    }
                    if hay.len() as u64 > MAX_UNIT {
                        return Err(unit_too_long());
                    }
                    from = hay.len().saturating_sub(ENTRY.len() - 1).max(1);
                    self.pending.drain(..self.start);
                    self.start = 0;
                    let buf = self.inner.fill_buf()?;
                    if buf.is_empty() {
                        self.eof = true;
                        continue;
                    }
                    let n = buf.len();
                    self.pending.extend_from_slice(buf);
                    self.inner.consume(n);
                }
            }
        }
    }
}

/// A unit's 64-bit hash: word at a time, multiply and rotate (as FxHash, with a final mix).
/// Not collision resistant and need not be: a collision can only spoil a patch, and every
/// rebuilt file is checked against its SHA-256.
fn hash(unit: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = unit.len() as u64;
    let mut chunks = unit.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // Final avalanche (splitmix64), so near-equal units spread over the whole range.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// How many of each unit (by hash) a file has left to read, in a sorted list.
struct Remaining(Vec<(u64, u32)>);

impl Remaining {
    /// Counts the units of the file at `path`.
    fn of(units: Units, path: &Path) -> io::Result<Self> {
        let mut r = units.open(path)?;
        let (mut hashes, mut unit) = (Vec::new(), Vec::new());
        while r.next_into(&mut unit)? {
            hashes.push(hash(&unit));
        }
        hashes.sort_unstable();
        let mut counts: Vec<(u64, u32)> = Vec::new();
        for h in hashes {
            match counts.last_mut() {
                Some((last, n)) if *last == h => *n += 1,
                _ => counts.push((h, 1)),
            }
        }
        Ok(Self(counts))
    }
    fn get(&self, h: u64) -> u32 {
        self.0.binary_search_by_key(&h, |e| e.0).map_or(0, |i| self.0[i].1)
    }
    fn take(&mut self, h: u64) {
        if let Ok(i) = self.0.binary_search_by_key(&h, |e| e.0) {
            self.0[i].1 = self.0[i].1.saturating_sub(1);
        }
    }
}

/// Writes operations, merging runs of copies and skips.
struct OpWriter<W: Write> {
    out: W,
    run: Option<(u8, u64)>,
}

impl<W: Write> OpWriter<W> {
    fn op(&mut self, tag: u8) -> io::Result<()> {
        match &mut self.run {
            Some((t, n)) if *t == tag => *n += 1,
            _ => {
                self.flush_run()?;
                self.run = Some((tag, 1));
            }
        }
        Ok(())
    }
    fn flush_run(&mut self) -> io::Result<()> {
        if let Some((t, n)) = self.run.take() {
            writeln!(self.out, "{} {n}", t as char)?;
        }
        Ok(())
    }
    fn insert(&mut self, unit: &[u8]) -> io::Result<()> {
        self.flush_run()?;
        writeln!(self.out, "I {}", unit.len())?;
        self.out.write_all(unit)
    }
}

/// Writes into `patch` the edits that turn the file `base` into the file `new` (both of
/// `units`); returns the patch's size.
///
/// One pass over both files: equal units are copied; a new unit the rest of the base does
/// not hold is inserted (an added record, or the new version of a changed one); otherwise the
/// base unit is skipped (removed, an old version, or moved later, where it is inserted). A
/// record moved later costs one unit; one moved earlier costs the records between its two
/// places (evidence order rarely does that: files by path, records in file order).
pub(crate) fn make(units: Units, base: &Path, new: &Path, patch: &Path) -> io::Result<u64> {
    let mut rest_base = Remaining::of(units, base)?;
    let file = std::fs::File::create(patch)?;
    let mut enc = zstd::Encoder::new(io::BufWriter::with_capacity(256 << 10, file), 3)?;
    writeln!(enc, "{PATCH_MAGIC}")?;
    let mut w = OpWriter { out: enc, run: None };
    let (mut a, mut b) = (units.open(base)?, units.open(new)?);
    let (mut ua, mut ub) = (Vec::new(), Vec::new());
    let (mut more_a, mut more_b) = (a.next_into(&mut ua)?, b.next_into(&mut ub)?);
    while more_b {
        if more_a && ua == ub {
            w.op(b'C')?;
            rest_base.take(hash(&ua));
            more_a = a.next_into(&mut ua)?;
            more_b = b.next_into(&mut ub)?;
        } else if more_a && rest_base.get(hash(&ub)) > 0 {
            w.op(b'S')?;
            rest_base.take(hash(&ua));
            more_a = a.next_into(&mut ua)?;
        } else {
            w.insert(&ub)?;
            more_b = b.next_into(&mut ub)?;
        }
    }
    while more_a {
        w.op(b'S')?;
        more_a = a.next_into(&mut ua)?;
    }
    w.flush_run()?;
    let mut buf = w.out.finish()?;
    buf.flush()?;
    buf.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
    Ok(std::fs::metadata(patch)?.len())
}

/// An I/O error at `p`, for `map_err`.
fn io_at(p: &Path) -> impl Fn(io::Error) -> ExportError + '_ {
    move |e| ExportError::io(p, e)
}

/// A read error of the base at `p`: a unit over [`MAX_UNIT`] says so (the base is not the
/// file it was checked as), anything else is an I/O error.
fn base_err(p: &Path) -> impl Fn(io::Error) -> ExportError + '_ {
    move |e| match e.kind() {
        io::ErrorKind::InvalidData => {
            ExportError::VerificationFailed { path: p.display().to_string(), reason: e.to_string() }
        }
        _ => ExportError::io(p, e),
    }
}

/// Reads a decimal count.
fn count(text: &str, what: &str) -> std::result::Result<u64, String> {
    text.parse().map_err(|_| format!("{what}: {text:?} is not a count"))
}

/// Rebuilds a file of `size` bytes from its base and a patch into `out`, streaming; a shard
/// is compressed again exactly as `mirror:full` writes one ([`crate::tree::shard_encoder`]).
/// A patch that makes more than `size` bytes, or (a shard) more than 64 MiB plus 1024 times
/// `size` before compression, stops there: a small forged patch cannot fill the disk or run
/// for ever.
///
/// # Errors
/// `ERR_EXPORT_VERIFY_FAILED` naming the patch when it is malformed, does not fit the base
/// (too few units, units left over) or makes too much; I/O errors.
pub(crate) fn apply(units: Units, base: &Path, patch: &Path, size: u64, out: &mut dyn Write) -> Result<()> {
    let bad = |why: String| ExportError::VerificationFailed { path: patch.display().to_string(), reason: why };
    let too_much =
        |what: &str, limit: u64| bad(format!("makes more than {limit} bytes {what} (the file it rebuilds has {size})"));
    let mut out = Capped { inner: out, left: size, exceeded: false };
    let file = std::fs::File::open(patch).map_err(io_at(patch))?;
    let mut ops = BufReader::new(zstd::Decoder::new(file).map_err(io_at(patch))?);
    let mut line = String::new();
    read_op(&mut ops, &mut line).map_err(io_at(patch))?;
    if line.trim_end() != PATCH_MAGIC {
        return Err(bad(format!("not a patch (expected {PATCH_MAGIC})")));
    }
    let mut a = units.open(base).map_err(io_at(base))?;
    let plain_limit = (64u64 << 20).saturating_add(size.saturating_mul(1024));
    let (ran, plain_exceeded) = match units {
        Units::Shard => {
            let enc = crate::tree::shard_encoder(&mut out).map_err(io_at(patch))?;
            let mut plain = Capped { inner: enc, left: plain_limit, exceeded: false };
            let ran = run_ops(&mut ops, &mut a, &mut plain, patch, base);
            let exceeded = plain.exceeded;
            (ran.and_then(|()| plain.inner.finish().map(drop).map_err(io_at(patch))), exceeded)
        }
        Units::Index => (run_ops(&mut ops, &mut a, &mut out, patch, base), false),
    };
    match ran {
        Err(_) if plain_exceeded => Err(too_much("of records", plain_limit)),
        Err(_) if out.exceeded => Err(too_much("in all", size)),
        other => other,
    }
}

/// A writer that takes at most `left` more bytes, then fails (and says so in `exceeded`).
struct Capped<W> {
    inner: W,
    left: u64,
    exceeded: bool,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            self.exceeded = true;
            return Err(io::Error::other("over the size the patch may make"));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The longest operation line (`C 18446744073709551615` and the magic line are far shorter).
const MAX_OP_LINE: u64 = 64;

/// Reads one operation line of at most [`MAX_OP_LINE`] bytes (a forged patch cannot make
/// the applier buffer a line of gigabytes).
fn read_op(ops: &mut dyn BufRead, line: &mut String) -> io::Result<usize> {
    ops.take(MAX_OP_LINE).read_line(line)
}

/// Applies the operations that follow the magic line.
fn run_ops(ops: &mut dyn BufRead, a: &mut UnitReader, sink: &mut dyn Write, patch: &Path, base: &Path) -> Result<()> {
    let bad = |why: String| ExportError::VerificationFailed { path: patch.display().to_string(), reason: why };
    let (mut line, mut unit) = (String::new(), Vec::new());
    loop {
        line.clear();
        if read_op(ops, &mut line).map_err(io_at(patch))? == 0 {
            break;
        }
        if !line.ends_with('\n') {
            return Err(bad(format!("an operation longer than {MAX_OP_LINE} bytes or unterminated: {line:?}")));
        }
        let (tag, n) = line.trim_end().split_once(' ').ok_or_else(|| bad(format!("bad operation {line:?}")))?;
        let n = count(n, tag).map_err(bad)?;
        match tag {
            "C" | "S" => {
                for _ in 0..n {
                    if !a.next_into(&mut unit).map_err(base_err(base))? {
                        return Err(bad("runs past the end of its base".into()));
                    }
                    if tag == "C" {
                        sink.write_all(&unit).map_err(io_at(patch))?;
                    }
                }
            }
            "I" => {
                let copied = io::copy(&mut ops.take(n), sink).map_err(io_at(patch))?;
                if copied != n {
                    return Err(bad("ends inside an insertion".into()));
                }
            }
            other => return Err(bad(format!("unknown operation {other:?}"))),
        }
    }
    if a.next_into(&mut unit).map_err(base_err(base))? {
        return Err(bad("leaves units of its base unaccounted for".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(dir: &Path, name: &str, lines: &[&str]) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut enc = crate::tree::shard_encoder(std::fs::File::create(&p).unwrap()).unwrap();
        for l in lines {
            enc.write_all(l.as_bytes()).unwrap();
            enc.write_all(b"\n").unwrap();
        }
        enc.finish().unwrap();
        p
    }

    fn round_trip(units: Units, base: &Path, new: &Path, dir: &Path) -> u64 {
        let patch = dir.join("p");
        let size = make(units, base, new, &patch).unwrap();
        let mut out = Vec::new();
        let want = std::fs::metadata(new).unwrap().len();
        apply(units, base, &patch, want, &mut out).unwrap();
        assert_eq!(out, std::fs::read(new).unwrap(), "the patch does not rebuild the new file byte for byte");
        size
    }

    #[test]
    fn shards_rebuild_byte_for_byte_through_changes_inserts_removals_and_moves() {
        let tmp = tempfile::tempdir().unwrap();
        let base_lines: Vec<String> = (0..5000).map(|i| format!("{{\"id\":\"A-{i}\",\"v\":{i}}}")).collect();
        let mut new_lines = base_lines.clone();
        for i in (0..5000).step_by(100) {
            new_lines[i] = format!("{{\"id\":\"A-{i}\",\"v\":\"changed\"}}");
        }
        new_lines.remove(7);
        new_lines.insert(20, "{\"id\":\"NEW\"}".into());
        new_lines.swap(30, 4000);
        new_lines.push(new_lines[0].clone());
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let base = shard(tmp.path(), "base.jsonl.zst", &refs(&base_lines));
        let new = shard(tmp.path(), "new.jsonl.zst", &refs(&new_lines));
        let size = round_trip(Units::Shard, &base, &new, tmp.path());
        assert!(size * 10 < std::fs::metadata(&new).unwrap().len(), "patch of 1 % is {size} bytes");
        let empty = shard(tmp.path(), "empty.jsonl.zst", &[]);
        round_trip(Units::Shard, &empty, &new, tmp.path());
        round_trip(Units::Shard, &new, &empty, tmp.path());
    }

    /// A base swapped after its check for a file of one endless unit (a zstd bomb with no
    /// line break, a sparse index with no entry marker) fails at the unit limit instead of
    /// buffering it whole.
    #[test]
    fn a_unit_over_the_limit_is_an_error_not_a_buffer() {
        let tmp = tempfile::tempdir().unwrap();
        let bomb = tmp.path().join("bomb.jsonl.zst");
        let mut enc = crate::tree::shard_encoder(std::fs::File::create(&bomb).unwrap()).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..=(MAX_UNIT >> 20) {
            enc.write_all(&chunk).unwrap();
        }
        enc.finish().unwrap();
        assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20, "a small file");
        let sparse = tmp.path().join("sparse.index.json");
        std::fs::File::create(&sparse).unwrap().set_len(MAX_UNIT + 4096).unwrap();
        let patch = tmp.path().join("p");
        let mut enc = zstd::Encoder::new(std::fs::File::create(&patch).unwrap(), 3).unwrap();
        writeln!(enc, "{PATCH_MAGIC}\nC 1").unwrap();
        enc.finish().unwrap();
        for (units, base) in [(Units::Shard, &bomb), (Units::Index, &sparse)] {
            let e = apply(units, base, &patch, 100, &mut Vec::new()).unwrap_err();
            assert!(e.to_string().contains("longer than"), "{units:?}: {e}");
        }
    }

    #[test]
    fn indexes_split_at_entries_only() {
        let tmp = tempfile::tempdir().unwrap();
        let entry = |i: usize, sha: &str| {
            format!(
                "{{\"file\":\"f\",\"id\":\"x{{\\\"file\\\":{i}\",\"line\":{i},\"modified\":null,\"sha256\":\"{sha}\"}}"
            )
        };
        let doc = |n: usize, changed: usize| {
            let entries: Vec<String> = (0..n).map(|i| entry(i, if i == changed { "bb" } else { "aa" })).collect();
            format!("{{\"entries\":[{}],\"kind\":\"advisory\",\"version\":\"v1\"}}", entries.join(","))
        };
        let (base, new) = (tmp.path().join("a.index.json"), tmp.path().join("b.index.json"));
        std::fs::write(&base, doc(3000, usize::MAX)).unwrap();
        std::fs::write(&new, doc(3001, 1500)).unwrap();
        let mut r = Units::Index.open(&new).unwrap();
        let mut unit = Vec::new();
        assert!(r.next_into(&mut unit).unwrap());
        assert_eq!(unit, b"{\"entries\":[");
        assert!(r.next_into(&mut unit).unwrap());
        assert!(unit.starts_with(ENTRY) && unit.ends_with(b"},"), "{}", String::from_utf8_lossy(&unit));
        let size = round_trip(Units::Index, &base, &new, tmp.path());
        assert!(size < 2000, "patch of one changed and one added entry is {size} bytes");
    }

    #[test]
    fn bad_patches_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = shard(tmp.path(), "base.jsonl.zst", &["a", "b"]);
        let write_patch = |ops: &str| {
            let p = tmp.path().join("bad");
            std::fs::write(&p, zstd::encode_all(format!("{PATCH_MAGIC}\n{ops}").as_bytes(), 3).unwrap()).unwrap();
            p
        };
        for (ops, why) in [
            ("C 3\n", "past the end"),
            ("C 1\n", "unaccounted"),
            ("X 1\n", "unknown operation"),
            ("C two\n", "not a count"),
            ("C 2\nI 10\nabc", "inside an insertion"),
        ] {
            let e = apply(Units::Shard, &base, &write_patch(ops), 1 << 20, &mut Vec::new()).unwrap_err();
            assert_eq!(e.code(), "ERR_EXPORT_VERIFY_FAILED");
            assert!(e.to_string().contains(why), "{ops:?}: {e}");
        }
        std::fs::write(tmp.path().join("plain"), zstd::encode_all(&b"hello\n"[..], 3).unwrap()).unwrap();
        let e = apply(Units::Shard, &base, &tmp.path().join("plain"), 1 << 20, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("not a patch"), "{e}");
        // A small patch inserting an endless run of zeros stops at what the file may hold:
        // 64 MiB + 1024 x its size of records, or its size once compressed.
        let bomb = |name: &str, ops: &str| {
            let p = tmp.path().join(name);
            let mut enc = zstd::Encoder::new(std::fs::File::create(&p).unwrap(), 19).unwrap();
            enc.write_all(format!("{PATCH_MAGIC}\n{ops}I 18446744073709551615\n").as_bytes()).unwrap();
            std::io::copy(&mut std::io::repeat(0).take(80 << 20), &mut enc).unwrap();
            enc.finish().unwrap();
            assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
            p
        };
        let e = apply(Units::Shard, &base, &bomb("shard-bomb", "C 2\n"), 1000, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("makes more than"), "{e}");
        let empty_index = tmp.path().join("empty.index.json");
        std::fs::write(&empty_index, b"").unwrap();
        let e = apply(Units::Index, &empty_index, &bomb("index-bomb", ""), 1000, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("makes more than 1000 bytes in all"), "{e}");
    }
}
