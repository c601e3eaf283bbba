use super::{sink_io, ByteStream, ObjectMeta, PutReceipt, Sink};
use crate::error::{ExportError, Result};
use crate::hashing::Hasher;
use crate::path::ArtifactPath;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A sink that keeps artifacts in memory; for tests and embedders that hand bytes on
/// themselves. Cloning shares the same storage.
#[derive(Clone, Debug, Default)]
pub struct InMemorySink {
    objects: Arc<Mutex<BTreeMap<ArtifactPath, Bytes>>>,
}

impl InMemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<ArtifactPath, Bytes>> {
        // A panic while holding the lock cannot leave the map half-updated (single insert), so
        // a poisoned lock is safe to reuse.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of every artifact (path, bytes), sorted by path.
    pub fn snapshot(&self) -> Vec<(ArtifactPath, Bytes)> {
        self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[async_trait]
impl Sink for InMemorySink {
    fn name(&self) -> &str {
        "memory"
    }

    fn url(&self, path: &ArtifactPath) -> String {
        format!("memory:///{path}")
    }

    async fn put(&self, path: &ArtifactPath, mut body: ByteStream) -> Result<PutReceipt> {
        let mut buf = BytesMut::new();
        let mut hasher = Hasher::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| sink_io(self.name(), e))?;
            hasher.update(&chunk);
            buf.extend_from_slice(&chunk);
        }
        let (size, sha256) = hasher.finish();
        self.lock().insert(path.clone(), buf.freeze());
        Ok(PutReceipt { path: path.clone(), size, sha256, url: self.url(path) })
    }

    async fn get(&self, path: &ArtifactPath) -> Result<ByteStream> {
        let bytes = self.lock().get(path).cloned().ok_or_else(|| ExportError::NotFound { path: path.to_string() })?;
        Ok(futures::stream::once(async move { Ok(bytes) }).boxed())
    }

    async fn list(&self, prefix: Option<&ArtifactPath>) -> Result<Vec<ObjectMeta>> {
        Ok(self
            .lock()
            .iter()
            .filter(|(p, _)| prefix.is_none_or(|pre| p.starts_with(pre)))
            .map(|(p, b)| ObjectMeta { path: p.clone(), size: b.len() as u64 })
            .collect())
    }

    async fn delete(&self, path: &ArtifactPath) -> Result<()> {
        self.lock().remove(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conforms() {
        crate::conformance::sink_suite(&InMemorySink::new()).await;
    }
}
