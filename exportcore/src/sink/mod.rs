//! Where artifact bytes go: the [`Sink`] trait, [`SinkExt`] conveniences, and the two light
//! sinks that ship with the core, [`InMemorySink`] and [`FsSink`].

mod fs;
mod memory;

pub use fs::FsSink;
pub use memory::InMemorySink;

use crate::error::{ExportError, IoContext, Result};
use crate::hashing::Sha256Digest;
use crate::path::ArtifactPath;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use std::fmt::Debug;
use std::sync::Arc;

/// A stream of byte chunks, the body of every put and get.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// What a sink knows about a stored artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its path.
    pub path: ArtifactPath,
    /// Its size in bytes.
    pub size: u64,
}

/// The receipt of a completed put: what was made durable under `path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutReceipt {
    /// The path written.
    pub path: ArtifactPath,
    /// Bytes stored.
    pub size: u64,
    /// Digest of the bytes stored, computed by the sink while writing.
    pub sha256: Sha256Digest,
    /// Where a reader fetches it.
    pub url: String,
}

/// A destination for artifacts.
///
/// # Contract
/// - `put` is atomic: until it returns `Ok`, no reader (`get`, `list`) sees the new bytes
///   under `path`; if the body stream fails or the process dies, the previous content (or
///   absence) of `path` stays as it was. `Ok` means the bytes are durable.
/// - A body stream that yields an error, or a destination that refuses the bytes, makes `put`
///   fail with [`ExportError::distribution_failed`]`(self.name(), cause)` (the engine retries
///   those); the receipt's size and sha256 are of the bytes actually stored.
/// - `put` replaces an existing artifact.
/// - `list` returns artifacts sorted by path, only complete ones, filtered by prefix
///   (a path prefix, segment-wise: `raw` matches `raw/x` but not `rawx`).
/// - `delete` is idempotent: deleting a missing path succeeds.
/// - `get` on a missing path fails with [`ExportError::NotFound`].
///
/// Run [`crate::conformance`]'s sink checks against any implementation; `examples/custom_sink.rs`
/// is a complete third-party sink that does, and `docs/adapter-guide.md` walks through it.
#[async_trait]
pub trait Sink: Debug + Send + Sync + 'static {
    /// Short name for errors and logs (`fs`, `memory`, ...).
    fn name(&self) -> &str;
    /// Where the artifacts go, for messages a user acts on (a directory, a bucket URL). The
    /// default is [`Sink::name`]; `FsSink` gives its root directory.
    fn location(&self) -> String {
        self.name().to_owned()
    }
    /// The URL a reader would use for `path`.
    fn url(&self, path: &ArtifactPath) -> String;
    /// Stores `body` under `path`, atomically.
    async fn put(&self, path: &ArtifactPath, body: ByteStream) -> Result<PutReceipt>;
    /// Streams the artifact at `path`.
    async fn get(&self, path: &ArtifactPath) -> Result<ByteStream>;
    /// Lists complete artifacts under `prefix`, sorted by path.
    async fn list(&self, prefix: Option<&ArtifactPath>) -> Result<Vec<ObjectMeta>>;
    /// Removes the artifact at `path` (no error when absent).
    async fn delete(&self, path: &ArtifactPath) -> Result<()>;
    /// Removes everything under `prefix` (segment-wise, as [`Sink::list`]), including what an
    /// interrupted put left behind where the sink can tell (`FsSink`: its temporary files);
    /// returns how many artifacts it deleted. The engine calls it on the prefix of a run whose
    /// process died, so a crash leaves no partial output. The default lists and deletes.
    async fn delete_prefix(&self, prefix: &ArtifactPath) -> Result<usize> {
        let found = self.list(Some(prefix)).await?;
        for o in &found {
            self.delete(&o.path).await?;
        }
        Ok(found.len())
    }
    /// Stores the local file `file` under `path`, with the guarantees of `put`. The default
    /// streams it through `put`; a sink that can do better (link, server-side upload)
    /// overrides it. The file is not modified, but a sink may keep sharing its bytes (a hard
    /// link): the caller must not modify it afterwards.
    async fn put_file(&self, path: &ArtifactPath, file: &std::path::Path) -> Result<PutReceipt> {
        let f = tokio::fs::File::open(file).await.at(file)?;
        self.put(path, file_stream(f)).await
    }
    /// Stores several local files, each as [`Sink::put_file`] would, and returns one result
    /// per file it tried, in order. It starts no file after an error, so a list shorter than
    /// `files` means the files after its last result were not touched (a failed run's
    /// cleanup spares their paths). Every `Ok` is stored with `put_file`'s guarantees when
    /// this returns. The run engine publishes small artifacts in such batches. The default
    /// runs up to four `put_file`s at once; a sink that can share work across a batch
    /// overrides it (`FsSink` flushes each directory once a batch instead of once a file).
    async fn put_files(&self, files: &[(ArtifactPath, std::path::PathBuf)]) -> Vec<Result<PutReceipt>> {
        let mut results = Vec::with_capacity(files.len());
        let mut todo = files.iter();
        let mut running = futures::stream::FuturesOrdered::new();
        let mut failed = false;
        loop {
            while !failed && running.len() < 4 {
                let Some((path, file)) = todo.next() else { break };
                running.push_back(self.put_file(path, file));
            }
            let Some(r) = running.next().await else { break };
            failed |= r.is_err();
            results.push(r);
        }
        results
    }
}

macro_rules! forward_sink {
    ($($ty:ty),+) => {$(
        #[async_trait]
        impl<S: Sink + ?Sized> Sink for $ty {
            fn name(&self) -> &str { (**self).name() }
            fn location(&self) -> String { (**self).location() }
            fn url(&self, path: &ArtifactPath) -> String { (**self).url(path) }
            async fn put(&self, path: &ArtifactPath, body: ByteStream) -> Result<PutReceipt> { (**self).put(path, body).await }
            async fn get(&self, path: &ArtifactPath) -> Result<ByteStream> { (**self).get(path).await }
            async fn list(&self, prefix: Option<&ArtifactPath>) -> Result<Vec<ObjectMeta>> { (**self).list(prefix).await }
            async fn delete(&self, path: &ArtifactPath) -> Result<()> { (**self).delete(path).await }
            async fn delete_prefix(&self, prefix: &ArtifactPath) -> Result<usize> { (**self).delete_prefix(prefix).await }
            async fn put_file(&self, path: &ArtifactPath, file: &std::path::Path) -> Result<PutReceipt> { (**self).put_file(path, file).await }
            async fn put_files(&self, files: &[(ArtifactPath, std::path::PathBuf)]) -> Vec<Result<PutReceipt>> { (**self).put_files(files).await }
        }
    )+};
}
forward_sink!(Box<S>, Arc<S>);

/// Conveniences over any [`Sink`]. Implemented for every sink; do not implement it yourself.
#[async_trait]
pub trait SinkExt: Sink {
    /// Puts an in-memory body.
    async fn put_bytes(&self, path: &ArtifactPath, body: Bytes) -> Result<PutReceipt> {
        self.put(path, futures::stream::once(async move { Ok(body) }).boxed()).await
    }
    /// Reads a whole artifact into memory (tests and small files only).
    async fn get_bytes(&self, path: &ArtifactPath) -> Result<Bytes> {
        let mut stream = self.get(path).await?;
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(|e| sink_io(self.name(), e))?);
        }
        Ok(out.freeze())
    }
}

impl<S: Sink + ?Sized> SinkExt for S {}

/// Wraps a sink-side I/O error as a distribution failure naming the sink.
pub(crate) fn sink_io(sink: &str, e: std::io::Error) -> ExportError {
    ExportError::distribution_failed(sink, e)
}

/// A [`ByteStream`] over an open file, in 64 KiB chunks.
pub fn file_stream(file: tokio::fs::File) -> ByteStream {
    use tokio::io::AsyncReadExt;
    futures::stream::try_unfold(file, |mut f| async move {
        let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
        let n = f.read_buf(&mut buf).await?;
        Ok(if n == 0 { None } else { Some((buf.freeze(), f)) })
    })
    .boxed()
}
