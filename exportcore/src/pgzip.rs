//! A deterministic parallel gzip writer (the pigz scheme).
//!
//! The input is cut into fixed [`BLOCK`]-byte blocks. Each block is deflated on its own — on a
//! worker thread — primed with the 32 KiB of input before it as the dictionary, and ended with
//! a sync flush (an empty stored block) so the blocks concatenate into one raw deflate stream;
//! the last block ends the stream. The CRC-32 and length are computed on the caller's thread.
//! The result is a single-member gzip file any inflater reads.
//!
//! Block boundaries depend only on byte offsets and each block only on its own bytes and its
//! dictionary, so the output is byte-identical for any worker count and any pattern of `write`
//! calls. Memory is bounded: at most `2 × workers` blocks (input and output) are in flight.
//!
//! Why by hand: `flate2` is single-threaded; the crates that parallelise gzip bring their own
//! thread pools and channels and do not promise output independent of the thread count, which
//! our byte-identical builds need. The deflating itself is `flate2` (zlib-rs).

use flate2::{Compress, Compression, FlushCompress, Status};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Input bytes per independently deflated block.
pub(crate) const BLOCK: usize = 1 << 20;
/// The deflate window: how much preceding input primes each block.
const WINDOW: usize = 32 * 1024;

struct Job {
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
    reply: SyncSender<io::Result<Vec<u8>>>,
}

/// Deflates one block (raw deflate, no zlib header).
fn deflate_block(level: u32, data: &[u8], dict: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let mut pos = 0usize;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let before = c.total_in();
        let status = c.compress_vec(&data[pos..], &mut out, flush).map_err(io::Error::other)?;
        pos += (c.total_in() - before) as usize;
        match status {
            Status::StreamEnd => return Ok(out),
            // A sync flush is complete once all input is consumed and the output had room left.
            Status::Ok | Status::BufError if !last && pos == data.len() && out.len() < out.capacity() => {
                return Ok(out)
            }
            Status::Ok | Status::BufError => {}
        }
    }
}

struct Pool {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(workers: usize, level: u32) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..workers)
            .map(|_| {
                let rx = Arc::clone(&rx);
                std::thread::spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let _ = job.reply.send(deflate_block(level, &job.data, &job.dict, job.last));
                })
            })
            .collect();
        Self { jobs: Some(tx), threads }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None; // workers see the channel close and exit
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Writes a gzip stream (mtime 0, no name, OS byte 255) of everything written to it; see the
/// module docs. Call [`GzipWriter::finish`] to end the stream.
pub(crate) struct GzipWriter<W: Write> {
    inner: W,
    level: u32,
    buf: Vec<u8>,
    dict: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
    pool: Option<Pool>,
    in_flight: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    max_in_flight: usize,
    /// Deferred-head mode: the first block is held (`Some` once full) instead of deflated, so
    /// its bytes can still be patched; `inner` then receives only the later blocks.
    deferred: Option<Option<Vec<u8>>>,
}

/// What [`GzipWriter::finish_deferred`] leaves to write around the later blocks: `prefix`
/// (gzip header and the deflated first block) goes before them, `trailer` after.
pub(crate) struct DeferredParts<W> {
    pub(crate) inner: W,
    pub(crate) prefix: Vec<u8>,
    pub(crate) trailer: [u8; 8],
}

fn gzip_header(level: u32) -> [u8; 10] {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

impl<W: Write> GzipWriter<W> {
    /// Like [`GzipWriter::new`], but the first [`BLOCK`] bytes are held back until
    /// [`GzipWriter::finish_deferred`], which lets the caller patch them (all but their last
    /// 32 KiB): for a stream whose head (say, a tar header holding a size) is known last. The
    /// later blocks are deflated meanwhile and go to `inner`; the result, once assembled, is
    /// byte-identical to what [`GzipWriter::new`] writes for the patched stream.
    pub(crate) fn deferred(inner: W, level: u32, workers: usize) -> Self {
        Self::with(inner, level, workers, Some(None))
    }

    fn with(inner: W, level: u32, workers: usize, deferred: Option<Option<Vec<u8>>>) -> Self {
        let workers = workers.max(1);
        Self {
            inner,
            level: level.min(9),
            buf: Vec::with_capacity(BLOCK),
            dict: Vec::new(),
            crc: crc32fast::Hasher::new(),
            len: 0,
            pool: (workers > 1).then(|| Pool::new(workers, level.min(9))),
            in_flight: VecDeque::new(),
            max_in_flight: workers * 2,
            deferred,
        }
    }

    /// Ends a [`GzipWriter::deferred`] stream: `patch` may rewrite the held first block (or the
    /// whole stream, when it is shorter than a block) except its last 32 KiB.
    pub(crate) fn finish_deferred(
        mut self,
        patch: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<DeferredParts<W>> {
        let held = match self.deferred.take() {
            Some(held) => held,
            None => return Err(io::Error::other("not a deferred gzip stream")),
        };
        let mut prefix = gzip_header(self.level).to_vec();
        let mut crc = crc32fast::Hasher::new();
        match held {
            None => {
                // Shorter than a block: the whole stream is the head, deflated as the last block.
                let mut head = std::mem::take(&mut self.buf);
                patch(&mut head)?;
                crc.update(&head);
                prefix.extend_from_slice(&deflate_block(self.level, &head, &[], true)?);
            }
            Some(mut head) => {
                let window = head[BLOCK - WINDOW..].to_vec();
                patch(&mut head)?;
                if head.len() != BLOCK || head[BLOCK - WINDOW..] != window[..] {
                    return Err(io::Error::other("the patch changed the dictionary of the second block"));
                }
                self.submit(true)?;
                while let Some(rx) = self.in_flight.pop_front() {
                    self.write_out(rx)?;
                }
                crc.update(&head);
                crc.combine(&self.crc);
                prefix.extend_from_slice(&deflate_block(self.level, &head, &[], false)?);
            }
        }
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&crc.finalize().to_le_bytes());
        trailer[4..].copy_from_slice(&(self.len as u32).to_le_bytes());
        self.inner.flush()?;
        self.pool = None;
        Ok(DeferredParts { inner: self.inner, prefix, trailer })
    }

    /// A writer deflating at `level` (0–9) on `workers` threads (1 = on the caller's thread).
    pub(crate) fn new(mut inner: W, level: u32, workers: usize) -> io::Result<Self> {
        inner.write_all(&gzip_header(level.min(9)))?;
        Ok(Self::with(inner, level, workers, None))
    }

    fn write_out(&mut self, rx: Receiver<io::Result<Vec<u8>>>) -> io::Result<()> {
        let block = rx.recv().map_err(|_| io::Error::other("gzip worker stopped"))??;
        self.inner.write_all(&block)
    }

    /// Hands the buffered block to a worker (or deflates it here).
    fn submit(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(if last { 0 } else { BLOCK }));
        let dict = std::mem::take(&mut self.dict);
        // The next block's dictionary: the last WINDOW bytes of input so far.
        let tail = data.len().saturating_sub(WINDOW);
        if data.len() >= WINDOW {
            self.dict = data[tail..].to_vec();
        } else {
            let keep = dict.len().saturating_sub(WINDOW - data.len());
            self.dict = [&dict[keep..], &data[..]].concat();
        }
        if let Some(held @ None) = &mut self.deferred {
            // Deferred mode: the first block is kept for `finish_deferred`.
            *held = Some(data);
            return Ok(());
        }
        if self.pool.is_none() {
            let out = deflate_block(self.level, &data, &dict, last)?;
            return self.inner.write_all(&out);
        }
        if self.in_flight.len() >= self.max_in_flight {
            if let Some(rx) = self.in_flight.pop_front() {
                self.write_out(rx)?;
            }
        }
        match &self.pool {
            None => Ok(()),
            Some(pool) => {
                let (reply, rx) = mpsc::sync_channel(1);
                let jobs = pool.jobs.as_ref().ok_or_else(|| io::Error::other("gzip pool closed"))?;
                jobs.send(Job { data, dict, last, reply }).map_err(|_| io::Error::other("gzip worker stopped"))?;
                self.in_flight.push_back(rx);
                Ok(())
            }
        }
    }

    /// Ends the stream (last block, CRC-32, length) and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while let Some(rx) = self.in_flight.pop_front() {
            self.write_out(rx)?;
        }
        let crc = self.crc.clone().finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&(self.len as u32).to_le_bytes())?;
        self.inner.flush()?;
        self.pool = None;
        Ok(self.inner)
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if !matches!(self.deferred, Some(None)) {
            // (A deferred head is checksummed once patched.)
            self.crc.update(&data[..n]);
        }
        self.len += n as u64;
        if self.buf.len() == BLOCK {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Writes out finished blocks; the buffered partial block stays (flushing it would make the
    /// output depend on when callers flush).
    fn flush(&mut self) -> io::Result<()> {
        while let Some(rx) = self.in_flight.pop_front() {
            self.write_out(rx)?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gzip(data: &[u8], level: u32, workers: usize, chunk: usize) -> Vec<u8> {
        let mut w = GzipWriter::new(Vec::new(), level, workers).unwrap();
        for c in data.chunks(chunk.max(1)) {
            w.write_all(c).unwrap();
        }
        w.finish().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: numbered lines with a pseudo-random word.
        let mut s = Vec::with_capacity(len + 64);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while s.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.extend_from_slice(format!("{{\"n\":{},\"w\":\"{:x}\"}}\n", s.len(), x % 4096).as_bytes());
        }
        s.truncate(len);
        s
    }

    #[test]
    fn round_trips_at_block_edges() {
        for len in [0, 1, WINDOW - 1, WINDOW + 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 77] {
            let data = sample(len);
            let z = gzip(&data, 6, 2, 64 * 1024);
            assert_eq!(gunzip(&z), data, "len {len}");
        }
    }

    #[test]
    fn output_independent_of_workers_and_write_sizes() {
        let data = sample(3 * BLOCK + 12_345);
        let one = gzip(&data, 6, 1, 1 << 20);
        for (workers, chunk) in [(1, 7), (2, 4096), (3, 100_000), (4, 3 * BLOCK)] {
            assert_eq!(gzip(&data, 6, workers, chunk), one, "workers {workers}, chunk {chunk}");
        }
    }

    fn deferred(data: &[u8], patch_at: usize, patch: &[u8], workers: usize) -> io::Result<Vec<u8>> {
        let mut w = GzipWriter::deferred(Vec::new(), 6, workers);
        for c in data.chunks(70_000) {
            w.write_all(c)?;
        }
        let parts = w.finish_deferred(|head| {
            head[patch_at..patch_at + patch.len()].copy_from_slice(patch);
            Ok(())
        })?;
        Ok([parts.prefix, parts.inner, parts.trailer.to_vec()].concat())
    }

    #[test]
    fn deferred_head_gives_the_bytes_of_the_patched_stream() {
        for len in [10, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 999] {
            let mut data = sample(len);
            let patch = b"PATCHED!";
            let at = 3.min(len - patch.len().min(len));
            let got = deferred(&data, at, &patch[..patch.len().min(len)], 2).unwrap();
            data[at..at + patch.len().min(len)].copy_from_slice(&patch[..patch.len().min(len)]);
            assert_eq!(got, gzip(&data, 6, 1, 1 << 20), "len {len}");
            assert_eq!(gunzip(&got), data);
        }
        // Patching the last 32 KiB of the held block would change the next block's dictionary.
        let data = sample(2 * BLOCK);
        assert!(deferred(&data, BLOCK - 10, b"x", 2).is_err());
    }

    #[test]
    fn gnu_gzip_reads_it_and_checks_crc() {
        let data = sample(2 * BLOCK + 5);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.gz");
        std::fs::write(&f, gzip(&data, 1, 2, 65536)).unwrap();
        let out = std::process::Command::new("gzip").arg("-dc").arg(&f).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, data);
        // A flipped byte in the CRC is caught.
        let mut bad = std::fs::read(&f).unwrap();
        let n = bad.len();
        bad[n - 6] ^= 1;
        std::fs::write(&f, bad).unwrap();
        let out = std::process::Command::new("gzip").arg("-tq").arg(&f).output().unwrap();
        assert!(!out.status.success());
    }

    #[test]
    fn priming_keeps_the_ratio_close_to_one_stream() {
        let data = sample(4 * BLOCK);
        let ours = gzip(&data, 6, 2, 1 << 16).len();
        let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap().len();
        assert!(ours as f64 <= single as f64 * 1.01, "ours {ours} vs one stream {single}");
    }
}
