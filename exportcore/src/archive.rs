//! A streaming, deterministic tar writer (plain, gzip or zstd) and a matching reader.
//!
//! Built on the `tar`, `flate2` and `zstd` crates; what is ours is only the normalisation
//! those crates leave to the caller: entries must arrive in strictly increasing path order
//! (checked), parent directories are emitted once before their first child, every header is
//! ustar with uid/gid 0, empty owner names, mode 0644 (files) or 0755 (directories and
//! executables), and one pinned mtime; gzip has mtime 0, no file name and OS byte 255 and is
//! deflated in parallel blocks (see `pgzip`); zstd uses a fixed level with content checksums.
//! Both compress on several threads, and the output is identical for any worker count >= 1. Memory use is constant in the size of the data.
//!
//! ```
//! use exportcore::archive::{ArchiveWriter, ArchiveOptions, FileMode};
//! use exportcore::{ArtifactPath, Compression};
//! let mut w = ArchiveWriter::new(Vec::new(), ArchiveOptions::new(Compression::Gzip, 0))?;
//! w.append(&ArtifactPath::parse("data/a.txt")?, FileMode::Regular, 5, &b"hello"[..])?;
//! let bytes = w.finish()?;
//! assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
//! # Ok::<(), exportcore::ExportError>(())
//! ```

use crate::error::{ExportError, Result};
use crate::model::Compression;
use crate::path::ArtifactPath;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Permission class of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// 0644.
    Regular,
    /// 0755 (scripts).
    Executable,
}

impl FileMode {
    fn bits(self) -> u32 {
        match self {
            FileMode::Regular => 0o644,
            FileMode::Executable => 0o755,
        }
    }
}

/// Archive settings.
#[derive(Clone, Debug)]
pub struct ArchiveOptions {
    /// Compression of the tar stream.
    pub compression: Compression,
    /// mtime of every entry, seconds since the epoch.
    pub mtime: u64,
    /// zstd level (default 3).
    pub zstd_level: i32,
    /// gzip level (default 6).
    pub gzip_level: u32,
    /// Compression worker threads (gzip and zstd), at least 1 (default:
    /// [`crate::parallel::default_workers`], at most 4). Output does not depend on it.
    pub workers: u32,
}

impl ArchiveOptions {
    /// Defaults for `compression` with a pinned `mtime`.
    pub fn new(compression: Compression, mtime: u64) -> Self {
        let cores = crate::parallel::default_workers() as u32;
        Self { compression, mtime, zstd_level: 3, gzip_level: 6, workers: cores.clamp(1, 4) }
    }
}

/// File-name suffix for an archive with `compression` (`.tar`, `.tar.gz`, `.tar.zst`).
pub fn archive_suffix(compression: Compression) -> &'static str {
    match compression {
        Compression::None => ".tar",
        Compression::Gzip => ".tar.gz",
        Compression::Zstd => ".tar.zst",
    }
}

/// Media type for an archive with `compression`.
pub fn archive_media_type(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "application/x-tar",
        Compression::Gzip => "application/gzip",
        Compression::Zstd => "application/zstd",
    }
}

/// Short format label (`tar`, `tar+gzip`, `tar+zstd`).
pub fn archive_format(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "tar",
        Compression::Gzip => "tar+gzip",
        Compression::Zstd => "tar+zstd",
    }
}

enum Encoder<W: Write> {
    Plain(W),
    #[cfg(feature = "gzip")]
    Gzip(crate::pgzip::GzipWriter<W>),
    #[cfg(feature = "zstd")]
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            #[cfg(feature = "gzip")]
            Encoder::Gzip(w) => w.write(buf),
            #[cfg(feature = "zstd")]
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            #[cfg(feature = "gzip")]
            Encoder::Gzip(w) => w.flush(),
            #[cfg(feature = "zstd")]
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

/// zstd job size of multithreaded compression.
#[cfg(feature = "zstd")]
const ZSTD_JOB_SIZE: u32 = 2 << 20;

impl<W: Write> Encoder<W> {
    fn new(w: W, o: &ArchiveOptions) -> Result<Self> {
        match o.compression {
            Compression::None => Ok(Encoder::Plain(w)),
            #[cfg(feature = "gzip")]
            Compression::Gzip => crate::pgzip::GzipWriter::new(w, o.gzip_level, o.workers as usize)
                .map(Encoder::Gzip)
                .map_err(|e| ExportError::internal_caused("gzip", "starting the compressor", e)),
            #[cfg(feature = "zstd")]
            Compression::Zstd => {
                let mk = || -> io::Result<_> {
                    let mut e = zstd::stream::write::Encoder::new(w, o.zstd_level)?;
                    e.include_checksum(true)?;
                    e.multithread(o.workers.max(1))?;
                    // A fixed job size keeps the output the same for any worker count and bounds
                    // the compressor's buffers (the default for level 3 is 8 MiB per job).
                    e.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
                    Ok(e)
                };
                mk().map(Encoder::Zstd).map_err(|e| ExportError::internal_caused("zstd", "starting the compressor", e))
            }
            #[allow(unreachable_patterns)]
            other => {
                Err(ExportError::NotSupported { feature: format!("{other} compression (cargo feature disabled)") })
            }
        }
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            #[cfg(feature = "gzip")]
            Encoder::Gzip(w) => w.finish(),
            #[cfg(feature = "zstd")]
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

/// Writes a deterministic tar stream; see the module docs.
pub struct ArchiveWriter<W: Write> {
    builder: tar::Builder<Encoder<W>>,
    mtime: u64,
    last: Option<String>,
    dirs: std::collections::BTreeSet<String>,
}

impl<W: Write> std::fmt::Debug for ArchiveWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveWriter").field("last", &self.last).finish()
    }
}

fn tar_err(path: &str, e: io::Error) -> ExportError {
    ExportError::internal_caused("archive writer", path, e)
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive on `w`.
    pub fn new(w: W, options: ArchiveOptions) -> Result<Self> {
        let enc = Encoder::new(w, &options)?;
        let mut builder = tar::Builder::new(enc);
        builder.mode(tar::HeaderMode::Deterministic);
        builder.follow_symlinks(false);
        Ok(Self { builder, mtime: options.mtime, last: None, dirs: Default::default() })
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> Result<tar::Header> {
        entry_header(kind, mode, size, self.mtime)
    }

    /// Appends a file of exactly `size` bytes read from `data`. Paths must arrive in strictly
    /// increasing order; missing parent directory entries are written first.
    pub fn append<R: Read>(&mut self, path: &ArtifactPath, mode: FileMode, size: u64, data: R) -> Result<()> {
        let p = path.as_str();
        if let Some(last) = &self.last {
            if p <= last.as_str() {
                return Err(ExportError::internal(
                    "archive writer",
                    format!("entries out of order: {p:?} after {last:?}"),
                ));
            }
        }
        // Parent directories, outermost first.
        let segs: Vec<&str> = p.split('/').collect();
        for depth in 1..segs.len() {
            let dir = format!("{}/", segs[..depth].join("/"));
            if !self.dirs.contains(&dir) {
                let mut h = self.header(tar::EntryType::Directory, 0o755, 0)?;
                self.builder.append_data(&mut h, &dir, io::empty()).map_err(|e| tar_err(&dir, e))?;
                self.dirs.insert(dir);
            }
        }
        let mut h = self.header(tar::EntryType::Regular, mode.bits(), size)?;
        let mut counted = Counting::new(data.take(size));
        self.builder.append_data(&mut h, p, &mut counted).map_err(|e| tar_err(p, e))?;
        if counted.count() != size {
            // The source ended early (a file truncated while it was being read): an I/O error
            // a caller can tell apart and name its source.
            return Err(ExportError::io(
                p,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("declared {size} bytes but the data had {}", counted.count()),
                ),
            ));
        }
        self.last = Some(p.to_owned());
        Ok(())
    }

    /// Writes the tar trailer, finishes compression and returns the inner writer.
    pub fn finish(self) -> Result<W> {
        let enc = self.builder.into_inner().map_err(|e| tar_err("trailer", e))?;
        enc.finish().map_err(|e| tar_err("compression trailer", e))
    }
}

/// The normalised ustar header of every entry (see the module docs).
fn entry_header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_username("").map_err(|e| tar_err("", e))?;
    h.set_groupname("").map_err(|e| tar_err("", e))?;
    Ok(h)
}

/// The 512-byte header block of a regular top-level file, as [`ArchiveWriter`] writes it.
#[cfg(feature = "gzip")]
fn file_header_block(path: &ArtifactPath, mode: FileMode, size: u64, mtime: u64) -> Result<[u8; 512]> {
    let p = path.as_str();
    if p.contains('/') || p.len() > 100 {
        return Err(ExportError::internal(
            "archive writer",
            format!("{p:?}: a streamed archive holds top-level names of at most 100 bytes"),
        ));
    }
    let mut h = entry_header(tar::EntryType::Regular, mode.bits(), size, mtime)?;
    h.set_path(p).map_err(|e| tar_err(p, e))?;
    h.set_cksum();
    let mut block = [0u8; 512];
    block.copy_from_slice(h.as_bytes());
    Ok(block)
}

/// Zero bytes that pad `len` bytes of entry data to a whole 512-byte block.
#[cfg(feature = "gzip")]
fn tar_padding(len: u64) -> usize {
    ((512 - len % 512) % 512) as usize
}

/// A deterministic `.tar.gz` of some small top-level files followed by one large top-level
/// file whose size is known only at the end, and whose first bytes may be rewritten then
/// (e.g. a database whose header pages are written last).
///
/// The large file's bytes are deflated on worker threads *while it is being written* (into
/// `spill`, a scratch file), instead of after; only the first 1 MiB of the stream — the tar
/// headers and the head of the file — is held back and deflated at the end. The bytes are
/// identical to what [`ArchiveWriter`] writes for the same files (tested).
#[cfg(feature = "gzip")]
pub struct StreamedTarGz {
    gz: crate::pgzip::GzipWriter<io::BufWriter<std::fs::File>>,
    mtime: u64,
    path: ArtifactPath,
    mode: FileMode,
    /// Where the large file's header starts in the stream.
    header_at: usize,
    len: u64,
}

#[cfg(feature = "gzip")]
impl std::fmt::Debug for StreamedTarGz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedTarGz").field("path", &self.path).field("len", &self.len).finish()
    }
}

#[cfg(feature = "gzip")]
impl StreamedTarGz {
    /// Starts the archive: `leading` files (sorted, before `path`), then `path`, whose bytes
    /// are written through `Write`. `spill` is an empty scratch file. `options` must be gzip.
    pub fn new(
        spill: std::fs::File,
        options: &ArchiveOptions,
        leading: &[(ArtifactPath, FileMode, &[u8])],
        path: ArtifactPath,
        mode: FileMode,
    ) -> Result<Self> {
        if options.compression != Compression::Gzip {
            return Err(ExportError::internal("archive writer", "StreamedTarGz is gzip"));
        }
        let mut names: Vec<&ArtifactPath> = leading.iter().map(|(p, _, _)| p).collect();
        names.push(&path);
        if !names.windows(2).all(|w| w[0].as_str() < w[1].as_str()) {
            return Err(ExportError::internal(
                "archive writer",
                format!("entries out of order: {:?}", names.iter().map(|p| p.as_str()).collect::<Vec<_>>()),
            ));
        }
        let mut gz = crate::pgzip::GzipWriter::deferred(
            io::BufWriter::with_capacity(256 * 1024, spill),
            options.gzip_level,
            options.workers as usize,
        );
        let io_err = |e: io::Error| tar_err(path.as_str(), e);
        let mut header_at = 0;
        for (p, m, bytes) in leading {
            gz.write_all(&file_header_block(p, *m, bytes.len() as u64, options.mtime)?).map_err(io_err)?;
            gz.write_all(bytes).map_err(io_err)?;
            gz.write_all(&[0u8; 512][..tar_padding(bytes.len() as u64)]).map_err(io_err)?;
            header_at += 512 + bytes.len() + tar_padding(bytes.len() as u64);
        }
        // The large file's header, filled in by `finish`.
        gz.write_all(&[0u8; 512]).map_err(io_err)?;
        Ok(Self { gz, mtime: options.mtime, path, mode, header_at, len: 0 })
    }

    /// Ends the archive, with `head` replacing the large file's first `head.len()` bytes
    /// (which must lie in the stream's first 1 MiB − 32 KiB), and writes the whole `.tar.gz`
    /// into `out`.
    pub fn finish(mut self, head: &[u8], out: &mut dyn Write) -> Result<()> {
        let p = self.path.as_str().to_owned();
        let io_err = |e: io::Error| tar_err(&p, e);
        if head.len() as u64 > self.len {
            return Err(tar_err(&p, io::Error::other("the head patch is longer than the file")));
        }
        self.gz.write_all(&[0u8; 512][..tar_padding(self.len)]).map_err(io_err)?;
        self.gz.write_all(&[0u8; 1024]).map_err(io_err)?;
        let header = file_header_block(&self.path, self.mode, self.len, self.mtime)?;
        let (at, data_at) = (self.header_at, self.header_at + 512);
        let parts = self
            .gz
            .finish_deferred(|block| {
                let end = data_at + head.len();
                if end > block.len() {
                    return Err(io::Error::other("the head patch reaches past the held first block"));
                }
                block[at..data_at].copy_from_slice(&header);
                block[data_at..end].copy_from_slice(head);
                Ok(())
            })
            .map_err(io_err)?;
        let mut spill = parts.inner.into_inner().map_err(|e| io_err(e.into_error()))?;
        out.write_all(&parts.prefix).map_err(io_err)?;
        io::Seek::seek(&mut spill, io::SeekFrom::Start(0)).map_err(io_err)?;
        io::copy(&mut spill, out).map_err(io_err)?;
        out.write_all(&parts.trailer).map_err(io_err)
    }
}

#[cfg(feature = "gzip")]
impl Write for StreamedTarGz {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.gz.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens a (plain, gzip or zstd) tar archive for reading, strictly: a compressed archive is
/// exactly one gzip member or one zstd frame, its checksums (gzip CRC-32 and ISIZE, zstd
/// content checksum) are verified when the stream ends, and bytes after it are an error. Read
/// the entries, then call [`finish_archive`], which consumes the rest of the stream and fails
/// on anything `tar` could still unpack: data after the end-of-archive blocks, a second gzip
/// member or zstd frame, trailing garbage, a bad checksum.
pub fn open_archive<R: Read + 'static>(r: R) -> io::Result<tar::Archive<Box<dyn Read>>> {
    open_archive_guarded(r).map(|(archive, _)| archive)
}

/// [`open_archive`] with a guard against decompression bombs, for verifiers: while the guard is
/// armed, the archive may expand to at most 64 MiB plus 1024 times the compressed bytes read
/// so far (deflate cannot exceed about 1032:1; evidence compresses some 5-50:1); past that a
/// read fails with "decompression bomb". Disarm it once the archive's manifest is read and the
/// caller checks each entry's declared size against it (then even a legitimately huge,
/// very compressible file reads to its end).
#[cfg_attr(not(any(feature = "gzip", feature = "zstd")), allow(unreachable_code, unused_variables))]
pub fn open_archive_guarded<R: Read + 'static>(r: R) -> io::Result<(tar::Archive<Box<dyn Read>>, ExpansionGuard)> {
    let guard = ExpansionGuard::default();
    let mut r = BufReader::new(Counting { inner: r, read: Arc::clone(&guard.compressed) });
    let head = r.fill_buf()?;
    let decompressed: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        #[cfg(feature = "gzip")]
        {
            Box::new(Strict::Gzip(Box::new(flate2::bufread::GzDecoder::new(r))))
        }
        #[cfg(not(feature = "gzip"))]
        {
            return Err(io::Error::other("gzip support is disabled"));
        }
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        #[cfg(feature = "zstd")]
        {
            Box::new(Strict::Zstd(zstd::stream::read::Decoder::with_buffer(r)?.single_frame()))
        }
        #[cfg(not(feature = "zstd"))]
        {
            return Err(io::Error::other("zstd support is disabled"));
        }
    } else {
        // Plain tar: nothing expands, but the manifest's allowance still applies.
        Box::new(r)
    };
    let guarded = Guarded { inner: decompressed, guard: guard.clone() };
    Ok((tar::Archive::new(Box::new(guarded)), guard))
}

/// What [`ExpansionGuard::allow`] grants each entry after the manifest for its headers: a
/// 512-byte header, a GNU long name of up to 4096 bytes and its header, padding.
pub const HEADER_ALLOWANCE: u64 = 8192;

/// What [`ExpansionGuard::declared`] grants beyond the entries: end-of-archive blocks and a
/// writer's record padding.
pub const TRAILER_ALLOWANCE: u64 = 1 << 20;

/// Handle on the decompression-bomb guard of an archive opened by [`open_archive_guarded`].
///
/// Before the archive's manifest it limits the expansion by ratio; once the caller has read
/// the manifest it limits the archive to what the manifest declares
/// ([`ExpansionGuard::declared`], [`ExpansionGuard::allow`]). The second matters because
/// `tar` reads a GNU long-name or PAX header's body whole, before the caller sees its entry:
/// without a limit, a header declaring 8 GiB would be read into memory.
#[derive(Clone, Debug)]
pub struct ExpansionGuard {
    compressed: Arc<AtomicU64>,
    out: Arc<AtomicU64>,
    armed: Arc<AtomicBool>,
    /// After the manifest: the decompressed bytes allowed so far.
    allowed: Arc<AtomicU64>,
}

impl Default for ExpansionGuard {
    fn default() -> Self {
        Self {
            compressed: Arc::new(AtomicU64::new(0)),
            out: Arc::new(AtomicU64::new(0)),
            armed: Arc::new(AtomicBool::new(true)),
            allowed: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }
}

impl ExpansionGuard {
    /// The manifest is read: from here on the archive may hold `slack` more bytes (end
    /// blocks, headers) plus what [`ExpansionGuard::allow`] grants for each entry the caller
    /// accepts, instead of a ratio of its compressed size.
    pub fn declared(&self, slack: u64) {
        self.allowed.store(self.out.load(Ordering::Relaxed).saturating_add(slack), Ordering::Relaxed);
        self.armed.store(false, Ordering::Relaxed);
    }
    /// Grants `bytes` more: an accepted entry's size and its header.
    pub fn allow(&self, bytes: u64) {
        let _ = self.allowed.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| Some(a.saturating_add(bytes)));
    }
}

/// Counts the bytes read through it, in a counter others may share (the bomb guard reads the
/// compressed count while the decompressor reads).
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R> Counting<R> {
    fn new(inner: R) -> Self {
        Self { inner, read: Arc::new(AtomicU64::new(0)) }
    }
    fn count(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A decompressed stream that fails once it outgrows the guard's budget.
struct Guarded {
    inner: Box<dyn Read>,
    guard: ExpansionGuard,
}

impl Read for Guarded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let out = self.guard.out.fetch_add(n as u64, Ordering::Relaxed).saturating_add(n as u64);
        if !self.guard.armed.load(Ordering::Relaxed) {
            let allowed = self.guard.allowed.load(Ordering::Relaxed);
            if out > allowed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("holds more than its manifest declares (over {allowed} bytes; an oversized header?)"),
                ));
            }
        } else {
            let compressed = self.guard.compressed.load(Ordering::Relaxed);
            let budget = (64u64 << 20).saturating_add(compressed.saturating_mul(1024));
            if out > budget {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "expands to over {budget} bytes from {compressed} compressed before its manifest \
                         (a decompression bomb?)"
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// Refuses an entry whose name tools could read differently: only POSIX ustar headers (magic
/// `ustar\0`, version `00`, what [`ArchiveWriter`] writes; GNU `tar` takes the `prefix` field of
/// other variants that the `tar` crate ignores) without PAX extended headers (a PAX `path`
/// and a GNU long name on one entry: the crate takes one, GNU `tar` the other; PAX can also
/// make sparse files). GNU long names alone are read alike and allowed. Returns the entry's
/// name, which must be UTF-8.
///
/// # Errors
/// What is wrong, for a verification failure.
pub fn strict_entry_name<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::result::Result<String, String> {
    if entry.header().as_ustar().is_none() {
        return Err("not a POSIX ustar header (other tar readers may take another name)".into());
    }
    match entry.pax_extensions() {
        Ok(None) => {}
        Ok(Some(_)) => return Err("carries a PAX extended header (tar readers disagree on its name)".into()),
        Err(e) => return Err(format!("bad PAX extended header: {e}")),
    }
    String::from_utf8(entry.path_bytes().into_owned()).map_err(|_| "an entry name that is not UTF-8".into())
}

/// What a verifier accepts of an entry's header beyond its name: what [`ArchiveWriter`] writes,
/// and nothing a `tar` extraction would act on while our reader does not see it.
///
/// - A directory or other header-only entry has size 0: the `tar` crate skips `size` bytes
///   after any header, while GNU `tar`, Python and Go read a directory's "data" as more
///   entries and unpack them.
/// - A regular file's name does not end in `/` (GNU `tar` makes it a directory and unpacks
///   what its data holds).
/// - No setuid, setgid or sticky bit, nothing group- or other-writable; owner and group 0,
///   named `root` or nothing (extracted as root, `tar` restores the owner: another account
///   could change a verified file afterwards).
/// - No name is both a file and a directory, and no file lies under another file (extracted,
///   one replaces the other).
#[derive(Debug, Default)]
pub struct EntryRules {
    files: std::collections::HashSet<String>,
    dirs: std::collections::HashSet<String>,
}

impl EntryRules {
    /// Checks one entry (its raw name as [`strict_entry_name`] gave it); the problem otherwise.
    pub fn check(&mut self, header: &tar::Header, raw_name: &str) -> std::result::Result<(), String> {
        let kind = header.entry_type();
        let size = header.entry_size().map_err(|e| format!("bad size field: {e}"))?;
        let name = raw_name.trim_end_matches('/');
        if kind.is_file() && raw_name.ends_with('/') {
            return Err("a regular file whose name ends in '/' (tar would make it a directory)".into());
        }
        if !kind.is_file() && size != 0 {
            return Err(format!(
                "a {kind:?} entry that declares {size} bytes of data (tar would read them as entries)"
            ));
        }
        if !kind.is_file() && !kind.is_dir() {
            // Refused by the caller, by kind.
            return Ok(());
        }
        let mode = header.mode().map_err(|e| format!("bad mode field: {e}"))?;
        if mode & 0o7022 != 0 {
            return Err(format!("mode {:o}: setuid, setgid, sticky or group/other-writable", mode & 0o7777));
        }
        // A blank field reads as 0 (tar's own builder leaves them blank).
        let blank = |field: &[u8]| field.iter().all(|b| *b == 0 || *b == b' ');
        let old = header.as_old();
        let uid = if blank(&old.uid) { 0 } else { header.uid().map_err(|e| format!("bad uid field: {e}"))? };
        let gid = if blank(&old.gid) { 0 } else { header.gid().map_err(|e| format!("bad gid field: {e}"))? };
        if uid != 0 || gid != 0 {
            return Err(format!("owner {uid}:{gid} (only 0:0: extracted as root, tar gives the file that owner)"));
        }
        for (what, value) in [("owner", header.username_bytes()), ("group", header.groupname_bytes())] {
            if !matches!(value, Some(b"" | b"root") | None) {
                return Err(format!(
                    "{what} name {:?} (only root or none)",
                    String::from_utf8_lossy(value.unwrap_or_default())
                ));
            }
        }
        let ancestors = || name.match_indices('/').map(|(i, _)| &name[..i]);
        if kind.is_dir() {
            if self.files.contains(name) {
                return Err("a directory with the name of a file".into());
            }
            self.dirs.insert(name.to_owned());
        } else if kind.is_file() {
            if self.dirs.contains(name) {
                return Err("a file with the name of a directory".into());
            }
            if let Some(a) = ancestors().find(|a| self.files.contains(*a)) {
                return Err(format!("lies under {a:?}, which is a file"));
            }
            self.files.insert(name.to_owned());
            for a in ancestors() {
                self.dirs.insert(a.to_owned());
            }
        }
        Ok(())
    }
}

/// Consumes what is left of an archive opened by [`open_archive`] after its entries were read:
/// only zero bytes may follow the end-of-archive marker, and the compressed stream must end
/// exactly there (its checksums are verified on the way). An error means a reader such as
/// `tar` could see bytes the entries did not show.
pub fn finish_archive(archive: tar::Archive<Box<dyn Read>>) -> io::Result<()> {
    let mut rest = archive.into_inner();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = rest.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "data after the end of the archive ({} bytes past its end-of-archive marker)",
                    offset + i as u64
                ),
            ));
        }
        offset += n as u64;
        // A few records of zero padding are normal; megabytes of zeros are not an archive.
        if offset > 1 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "over 1 MiB of zeros after the archive"));
        }
    }
}

/// A decompressor that, at the end of its one member or frame, also requires the compressed
/// input to end.
#[cfg(any(feature = "gzip", feature = "zstd"))]
enum Strict<R: BufRead> {
    #[cfg(feature = "gzip")]
    Gzip(Box<flate2::bufread::GzDecoder<R>>),
    #[cfg(feature = "zstd")]
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

#[cfg(any(feature = "gzip", feature = "zstd"))]
impl<R: BufRead> Read for Strict<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, source, what) = match self {
            #[cfg(feature = "gzip")]
            Strict::Gzip(d) => (d.read(buf)?, d.get_mut(), "gzip member"),
            #[cfg(feature = "zstd")]
            Strict::Zstd(d) => (d.read(buf)?, d.get_mut(), "zstd frame"),
        };
        if n == 0 && !buf.is_empty() {
            let trailing = source.fill_buf()?.len();
            if trailing > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("trailing data after the {what} (a second member or appended bytes)"),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ArtifactPath {
        ArtifactPath::parse(s).unwrap()
    }

    fn build(c: Compression, workers: u32) -> Vec<u8> {
        let mut o = ArchiveOptions::new(c, 1_700_000_000);
        o.workers = workers;
        let mut w = ArchiveWriter::new(Vec::new(), o).unwrap();
        let big = vec![7u8; 3 << 20];
        w.append(&p("a.txt"), FileMode::Regular, 1, &b"a"[..]).unwrap();
        w.append(&p("d/big.bin"), FileMode::Regular, big.len() as u64, &big[..]).unwrap();
        w.append(&p("d/e/run.sh"), FileMode::Executable, 2, &b"#!"[..]).unwrap();
        w.append(&p("d/f.txt"), FileMode::Regular, 0, &b""[..]).unwrap();
        w.append(&p(&format!("long/{}", "x".repeat(150))), FileMode::Regular, 1, &b"l"[..]).unwrap();
        w.finish().unwrap()
    }

    /// Reads every entry the way `verify` does, then finishes the archive strictly.
    fn read_strictly(bytes: Vec<u8>) -> std::result::Result<Vec<String>, String> {
        let mut ar = open_archive(io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
        let mut names = Vec::new();
        for e in ar.entries().map_err(|e| e.to_string())? {
            let mut e = e.map_err(|e| e.to_string())?;
            names.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
            io::copy(&mut e, &mut io::sink()).map_err(|e| e.to_string())?;
        }
        finish_archive(ar).map_err(|e| e.to_string())?;
        Ok(names)
    }

    /// A small archive of `files`, uncompressed, with or without its end-of-archive blocks.
    fn plain_tar(files: &[(&str, &[u8])], end_marker: bool) -> Vec<u8> {
        let mut w = ArchiveWriter::new(Vec::new(), ArchiveOptions::new(Compression::None, 0)).unwrap();
        for (name, body) in files {
            w.append(&p(name), FileMode::Regular, body.len() as u64, *body).unwrap();
        }
        let mut bytes = w.finish().unwrap();
        if !end_marker {
            while bytes.len() >= 512 && bytes[bytes.len() - 512..].iter().all(|b| *b == 0) {
                bytes.truncate(bytes.len() - 512);
            }
        }
        bytes
    }

    #[cfg(feature = "gzip")]
    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[cfg(feature = "gzip")]
    #[test]
    fn strict_gzip_refuses_what_tar_could_see_beyond_the_verified_entries() {
        let genuine = build(Compression::Gzip, 2);
        assert_eq!(read_strictly(genuine.clone()).unwrap().len(), 8, "the genuine archive reads");
        // The attack: the genuine entries without their end marker, then a second gzip member
        // with a replaced and an extra file. `tar xzf` unpacks both members.
        let mut attack = gzip(&plain_tar(&[("a.txt", b"a")], false));
        attack.extend(gzip(&plain_tar(&[("a.txt", b"evil"), ("evil.js", b"alert(1)")], true)));
        let err = read_strictly(attack).unwrap_err();
        assert!(err.contains("trailing data after the gzip member"), "{err}");
        // Appended bytes, a flipped CRC-32, a flipped ISIZE.
        let mut appended = genuine.clone();
        appended.extend_from_slice(b"junk");
        assert!(read_strictly(appended).unwrap_err().contains("trailing data"));
        for (what, from_end) in [("crc", 8), ("isize", 1)] {
            let mut bad = genuine.clone();
            let i = bad.len() - from_end;
            bad[i] ^= 0x01;
            assert!(read_strictly(bad).is_err(), "a flipped {what} must fail");
        }
        // Data after the end-of-archive marker inside the one member.
        let mut inner = plain_tar(&[("a.txt", b"a")], true);
        inner.extend_from_slice(&plain_tar(&[("evil.js", b"x")], true));
        let err = read_strictly(gzip(&inner)).unwrap_err();
        assert!(err.contains("data after the end of the archive"), "{err}");
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn strict_zstd_checks_the_frame_checksum_and_refuses_a_second_frame() {
        let genuine = build(Compression::Zstd, 2);
        assert_eq!(read_strictly(genuine.clone()).unwrap().len(), 8);
        let mut bad = genuine.clone();
        let i = bad.len() - 2; // inside the 4-byte content checksum
        bad[i] ^= 0x01;
        assert!(read_strictly(bad).is_err(), "a flipped frame checksum must fail");
        let mut two = genuine;
        two.extend(zstd::encode_all(&plain_tar(&[("evil.js", b"x")], true)[..], 3).unwrap());
        assert!(read_strictly(two).unwrap_err().contains("trailing data after the zstd frame"));
    }

    #[test]
    fn strict_plain_tar_refuses_data_after_the_end_marker() {
        let mut bytes = plain_tar(&[("a.txt", b"a")], true);
        assert_eq!(read_strictly(bytes.clone()).unwrap(), ["a.txt"]);
        bytes.extend_from_slice(b"appended");
        assert!(read_strictly(bytes).unwrap_err().contains("data after the end of the archive"));
    }

    #[test]
    fn deterministic_and_normalised() {
        for c in Compression::ALL {
            assert_eq!(build(*c, 1), build(*c, 1), "{c}");
        }
        assert_eq!(build(Compression::Zstd, 1), build(Compression::Zstd, 3), "zstd output depends on workers");
        assert_eq!(build(Compression::Gzip, 1), build(Compression::Gzip, 3), "gzip output depends on workers");
        let bytes = build(Compression::Gzip, 1);
        assert_eq!(&bytes[4..8], &[0, 0, 0, 0], "gzip mtime");
        assert_eq!(bytes[9], 255, "gzip OS byte");
        let mut ar = open_archive(std::io::Cursor::new(bytes)).unwrap();
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.gid().unwrap(), 0);
            assert_eq!(h.mtime().unwrap(), 1_700_000_000);
            assert_eq!(h.username().unwrap(), Some(""));
            seen.push((e.path().unwrap().display().to_string(), h.mode().unwrap()));
        }
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names[..6], &["a.txt", "d/", "d/big.bin", "d/e/", "d/e/run.sh", "d/f.txt"]);
        assert_eq!(names[6], "long/");
        assert!(names[7].starts_with("long/xxx") && names[7].len() == 155, "{}", names[7]);
        let modes: Vec<u32> = seen.iter().map(|(_, m)| *m).collect();
        assert_eq!(modes, [0o644, 0o755, 0o644, 0o755, 0o755, 0o644, 0o755, 0o644]);
    }

    #[test]
    fn out_of_order_and_short_data_are_errors() {
        let mut w = ArchiveWriter::new(Vec::new(), ArchiveOptions::new(Compression::None, 0)).unwrap();
        w.append(&p("b"), FileMode::Regular, 0, &b""[..]).unwrap();
        assert!(w.append(&p("a"), FileMode::Regular, 0, &b""[..]).is_err());
        assert!(w.append(&p("c"), FileMode::Regular, 5, &b"abc"[..]).is_err());
    }

    #[test]
    fn streamed_tar_gz_equals_the_archive_writer() {
        let dir = tempfile::tempdir().unwrap();
        let meta = br#"{"Version":2}"#;
        for (len, workers) in [(100usize, 1u32), (crate::pgzip::BLOCK - 700, 2), (3 * crate::pgzip::BLOCK + 5, 3)] {
            let mut big: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut o = ArchiveOptions::new(Compression::Gzip, 1_700_000_000);
            o.workers = workers;
            // Stream with a zeroed head, patch it at the end.
            let spill = tempfile::tempfile_in(dir.path()).unwrap();
            let mut s = StreamedTarGz::new(
                spill,
                &o,
                &[(p("metadata.json"), FileMode::Regular, &meta[..])],
                p("trivy.db"),
                FileMode::Regular,
            )
            .unwrap();
            let head = big[..64.min(len)].to_vec();
            s.write_all(&vec![0u8; head.len()]).unwrap();
            s.write_all(&big[head.len()..]).unwrap();
            let mut streamed = Vec::new();
            s.finish(&head, &mut streamed).unwrap();
            let mut w = ArchiveWriter::new(Vec::new(), o.clone()).unwrap();
            w.append(&p("metadata.json"), FileMode::Regular, meta.len() as u64, &meta[..]).unwrap();
            w.append(&p("trivy.db"), FileMode::Regular, len as u64, &big[..]).unwrap();
            assert_eq!(streamed, w.finish().unwrap(), "len {len}");
            big.clear();
        }
        let spill = tempfile::tempfile_in(dir.path()).unwrap();
        let o = ArchiveOptions::new(Compression::Gzip, 0);
        assert!(
            StreamedTarGz::new(spill, &o, &[(p("z"), FileMode::Regular, &b""[..])], p("a"), FileMode::Regular).is_err()
        );
    }

    #[test]
    fn gnu_tar_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.tar.gz");
        std::fs::write(&file, build(Compression::Gzip, 1)).unwrap();
        let out = std::process::Command::new("tar").arg("-tvzf").arg(&file).output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(listing.contains("d/e/run.sh"), "{listing}");
        assert!(listing.lines().all(|l| l.contains(" 0/0 ")), "{listing}");
    }
}
