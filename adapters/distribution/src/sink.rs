//! [`ObjectSink`]: a [`Sink`] on any `object_store` store, so runs publish straight into
//! S3-compatible object storage (`exportctl serve --data s3://BUCKET/PREFIX`), the shared
//! artifact location of several nodes.

use crate::s3::{S3Config, S3Target};
use async_trait::async_trait;
use exportcore::sink::{ByteStream, ObjectMeta, PutReceipt, Sink};
use exportcore::{ArtifactPath, ExportError, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Parts of a multipart upload (and the largest single `PUT`): 8 MiB.
const PART: usize = 8 << 20;

/// A sink on an object store, under a key prefix.
///
/// - `put` streams the body through `object_store`'s buffered writer: one `PUT` up to 8 MiB,
///   else a multipart upload of 8 MiB parts (3 in flight). Both become visible only when they
///   complete; a failed body aborts the upload and leaves the previous object as it was. The
///   receipt's SHA-256 is of the bytes sent.
/// - `list` is the store's listing under the prefix (object stores list segment-wise and
///   show only complete objects), sorted by path.
/// - `delete` of a missing object succeeds.
///
/// It passes the core's sink conformance suite (against the local-filesystem store in unit
/// tests, against a real S3 server in the interop tests).
#[derive(Debug)]
pub struct ObjectSink {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
}

impl ObjectSink {
    /// A sink on `store`, under `prefix` (no leading or trailing `/`; empty for the root).
    /// `location` names it in messages (`s3://bucket/prefix`).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>, location: impl Into<String>) -> Self {
        Self { store, prefix: prefix.into().trim_matches('/').to_owned(), location: location.into() }
    }

    /// A sink on `s3://BUCKET/PREFIX` with `config` (endpoint, region, credentials, retries).
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` for a malformed URI or an unusable configuration.
    pub fn s3(uri: &str, config: &S3Config) -> Result<Self> {
        let target = S3Target::parse(uri, "data")?;
        Ok(Self::new(Arc::new(config.store(&target.bucket)?), target.prefix.clone(), target.url()))
    }

    fn key(&self, path: &ArtifactPath) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(path.as_str())
        } else {
            ObjectPath::from(format!("{}/{}", self.prefix, path.as_str()))
        }
    }

    fn failed(&self, cause: impl std::fmt::Display) -> ExportError {
        ExportError::distribution_failed(self.location.clone(), cause.to_string())
    }
}

#[async_trait]
impl Sink for ObjectSink {
    fn name(&self) -> &str {
        "object"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn url(&self, path: &ArtifactPath) -> String {
        format!("{}/{}", self.location.trim_end_matches('/'), path.as_str())
    }

    async fn put(&self, path: &ArtifactPath, mut body: ByteStream) -> Result<PutReceipt> {
        let key = self.key(path);
        let mut w = object_store::buffered::BufWriter::with_capacity(Arc::clone(&self.store), key, PART)
            .with_max_concurrency(3);
        let mut hasher = exportcore::hashing::Hasher::new();
        let copied: std::io::Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                w.write_all(&chunk).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = copied {
            // Abandons a multipart upload (a single PUT was never sent).
            let _ = w.abort().await;
            return Err(self.failed(format!("{path}: {e}")));
        }
        // The upload completes here (or fails whole): after a failed shutdown the writer
        // cannot be aborted; the store drops incomplete multipart uploads by its own rules.
        w.shutdown().await.map_err(|e| self.failed(format!("{path}: {e}")))?;
        let (size, sha256) = hasher.finish();
        Ok(PutReceipt { path: path.clone(), size, sha256, url: self.url(path) })
    }

    async fn get(&self, path: &ArtifactPath) -> Result<ByteStream> {
        match self.store.get(&self.key(path)).await {
            Ok(got) => Ok(got.into_stream().map_err(std::io::Error::other).boxed()),
            Err(object_store::Error::NotFound { .. }) => {
                Err(ExportError::NotFound { path: format!("{}/{path}", self.location) })
            }
            Err(e) => Err(self.failed(format!("{path}: {e}"))),
        }
    }

    async fn list(&self, prefix: Option<&ArtifactPath>) -> Result<Vec<ObjectMeta>> {
        let root = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let under = match prefix {
            Some(p) => Some(self.key(p)),
            None => root.clone(),
        };
        let found: Vec<object_store::ObjectMeta> =
            self.store.list(under.as_ref()).try_collect().await.map_err(|e| self.failed(e))?;
        let mut out = Vec::with_capacity(found.len());
        for m in found {
            let key = m.location.as_ref();
            let rel = match &root {
                Some(r) => key.strip_prefix(r.as_ref()).and_then(|k| k.strip_prefix('/')).unwrap_or(key),
                None => key,
            };
            // Keys this sink did not write (not a valid artifact path) are not artifacts.
            if let Ok(path) = ArtifactPath::parse(rel) {
                out.push(ObjectMeta { path, size: m.size });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn delete(&self, path: &ArtifactPath) -> Result<()> {
        match self.store.delete(&self.key(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(format!("{path}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conforms_on_the_local_filesystem_store() {
        let dir = tempfile::tempdir().unwrap();
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let sink = ObjectSink::new(Arc::new(fs), "exports/runs", "file://test");
        exportcore::conformance::sink_suite(&sink).await;
        assert!(dir.path().join("exports/runs").is_dir(), "objects live under the prefix");
    }
}
