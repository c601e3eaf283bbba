//! A third-party sink written against exportcore's public API only: `DedupSink` keeps
//! artifacts in memory by content, so a run that publishes the same bytes under several paths
//! (an archive that is also an OCI blob, a re-run of unchanged evidence) stores them once. It
//! passes the shared sink conformance suite (see `tests/custom_sink.rs`), and `main` runs
//! `json:raw` on the bundled samples into it.
//!
//! Run with `cargo run --example custom_sink`.

use exportcore::hashing::Hasher;
use exportcore::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    /// Path -> digest of its bytes.
    paths: BTreeMap<ArtifactPath, Sha256Digest>,
    /// Digest -> the bytes, stored once however many paths name them.
    blobs: BTreeMap<Sha256Digest, Bytes>,
}

/// An in-memory, content-addressed sink. Cloning shares the storage.
#[derive(Clone, Debug, Default)]
pub(crate) struct DedupSink {
    state: Arc<Mutex<State>>,
}

impl DedupSink {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Distinct blobs stored (after deduplication).
    pub(crate) fn blob_count(&self) -> usize {
        self.lock().blobs.len()
    }

    /// Drops blobs no path names any more.
    fn collect_garbage(st: &mut State) {
        let live: std::collections::BTreeSet<Sha256Digest> = st.paths.values().copied().collect();
        st.blobs.retain(|d, _| live.contains(d));
    }
}

#[async_trait]
impl Sink for DedupSink {
    fn name(&self) -> &str {
        "dedup"
    }

    fn url(&self, path: &ArtifactPath) -> String {
        format!("dedup:///{path}")
    }

    async fn put(&self, path: &ArtifactPath, mut body: ByteStream) -> Result<PutReceipt> {
        // Read the whole body first: a failing stream must leave `path` as it was (atomicity).
        let mut buf = Vec::new();
        let mut hasher = Hasher::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ExportError::distribution_failed(self.name(), e))?;
            hasher.update(&chunk);
            buf.extend_from_slice(&chunk);
        }
        let (size, sha256) = hasher.finish();
        let mut st = self.lock();
        st.blobs.entry(sha256).or_insert_with(|| Bytes::from(buf));
        st.paths.insert(path.clone(), sha256);
        Self::collect_garbage(&mut st);
        Ok(PutReceipt { path: path.clone(), size, sha256, url: self.url(path) })
    }

    async fn get(&self, path: &ArtifactPath) -> Result<ByteStream> {
        let st = self.lock();
        let bytes = st
            .paths
            .get(path)
            .and_then(|d| st.blobs.get(d))
            .cloned()
            .ok_or_else(|| ExportError::NotFound { path: path.to_string() })?;
        Ok(futures::stream::once(async move { Ok(bytes) }).boxed())
    }

    async fn list(&self, prefix: Option<&ArtifactPath>) -> Result<Vec<ObjectMeta>> {
        let st = self.lock();
        // BTreeMap iteration is sorted by path, as the contract asks.
        Ok(st
            .paths
            .iter()
            .filter(|(p, _)| prefix.is_none_or(|pre| p.starts_with(pre)))
            .map(|(p, d)| ObjectMeta { path: p.clone(), size: st.blobs.get(d).map_or(0, |b| b.len() as u64) })
            .collect())
    }

    async fn delete(&self, path: &ArtifactPath) -> Result<()> {
        let mut st = self.lock();
        st.paths.remove(path);
        Self::collect_garbage(&mut st);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence");
    let sink = DedupSink::default();
    let request = exportcore::RunRequest::builder("json:raw")
        .created_at(Timestamp::parse("2025-01-01T00:00:00Z").map_err(|e| ExportError::invalid("createdAt", e))?)
        .build()?;
    let outcome =
        exportcore::RunBuilder::new(exportcore_json::JsonRaw, exportcore::DirEvidence::new(samples)?, sink.clone())
            .execute(request)
            .await?;
    for o in outcome.outputs() {
        println!("{:<32} {:>9} bytes sha256:{}", o.path, o.size, o.sha256);
    }
    println!("{} outputs stored as {} blobs", outcome.outputs().len(), sink.blob_count());
    Ok(())
}
