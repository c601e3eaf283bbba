//! Both core sinks run the shared sink conformance suite from outside the crate, as a
//! third-party sink would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::{conformance, FsSink, InMemorySink};

#[tokio::test]
async fn in_memory_sink_conforms() {
    conformance::sink_suite(&InMemorySink::new()).await;
}

#[tokio::test]
async fn fs_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::sink_suite(&FsSink::new(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn arc_and_box_forwarding_conform() {
    let sink: std::sync::Arc<dyn exportcore::Sink> = std::sync::Arc::new(InMemorySink::new());
    conformance::sink_suite(&sink).await;
    let boxed: Box<dyn exportcore::Sink> = Box::new(InMemorySink::new());
    conformance::sink_suite(&boxed).await;
}

/// A sink that fails the put of one path and is slow on the others, so several puts are in
/// flight when the failure comes back.
#[derive(Debug)]
struct FailsOne {
    inner: InMemorySink,
    fail: &'static str,
}

#[async_trait::async_trait]
impl exportcore::Sink for FailsOne {
    fn name(&self) -> &str {
        "fails-one"
    }
    fn url(&self, p: &exportcore::ArtifactPath) -> String {
        self.inner.url(p)
    }
    async fn put(
        &self,
        p: &exportcore::ArtifactPath,
        body: exportcore::ByteStream,
    ) -> exportcore::Result<exportcore::PutReceipt> {
        if p.as_str() == self.fail {
            return Err(exportcore::ExportError::DistributionFailed {
                target: "fails-one".into(),
                source: "disk full".into(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        self.inner.put(p, body).await
    }
    async fn get(&self, p: &exportcore::ArtifactPath) -> exportcore::Result<exportcore::ByteStream> {
        self.inner.get(p).await
    }
    async fn list(&self, p: Option<&exportcore::ArtifactPath>) -> exportcore::Result<Vec<exportcore::ObjectMeta>> {
        self.inner.list(p).await
    }
    async fn delete(&self, p: &exportcore::ArtifactPath) -> exportcore::Result<()> {
        self.inner.delete(p).await
    }
}

/// Writes ten small artifacts, `f0.txt` .. `f9.txt`.
#[derive(Debug)]
struct TenFiles;

impl exportcore::Profile for TenFiles {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("test:ten", "ten files")
    }
    fn validate(&self, _: &exportcore::RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
        for i in 0..10 {
            let spec = exportcore::ArtifactSpec::new(
                &format!("f{i}.txt"),
                exportcore::ArtifactType::Data,
                "txt",
                "text/plain",
            )?;
            ctx.write_artifact(spec, |w| {
                w.write_all(format!("file {i}").as_bytes()).map_err(|e| exportcore::ExportError::io("f", e))
            })?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_leaves_nothing_and_spares_paths_it_never_reached() {
    use exportcore::{Sink, SinkExt};
    let sink = std::sync::Arc::new(FailsOne { inner: InMemorySink::new(), fail: "f2.txt" });
    // An artifact from an earlier run at a path this run never gets to.
    let older = exportcore::ArtifactPath::parse("f9.txt").unwrap();
    sink.inner.put_bytes(&older, "older run".into()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let err = exportcore::RunBuilder::new(TenFiles, exportcore::MemoryEvidence::new(), std::sync::Arc::clone(&sink))
        .tenant(exportcore::TenantId::parse("t").unwrap())
        .events(tx)
        .execute(exportcore::RunRequest::new(exportcore::ProfileId::from_static("test:ten")))
        .await
        .expect_err("a failed publish fails the run");
    assert!(matches!(err, exportcore::ExportError::DistributionFailed { .. }), "{err:?}");
    assert_eq!(err.code(), "ERR_EXPORT_DISTRIBUTION_FAILED");
    // The event stream ends with `failed` and its code.
    let mut last = None;
    while let Ok(ev) = rx.try_recv() {
        last = Some(ev);
    }
    match last {
        Some(exportcore::RunEvent::Failed { code, .. }) => assert_eq!(code, "ERR_EXPORT_DISTRIBUTION_FAILED"),
        other => panic!("the last event must be `failed`: {other:?}"),
    }
    // Give any stray put time to land, then look.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let left: Vec<String> = sink.inner.list(None).await.unwrap().into_iter().map(|m| m.path.to_string()).collect();
    assert_eq!(left, ["f9.txt"], "only the older run's artifact may remain");
    assert_eq!(sink.inner.get_bytes(&older).await.unwrap(), &b"older run"[..]);
}
