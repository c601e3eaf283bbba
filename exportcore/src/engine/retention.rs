//! Retention: runs whose `expiresAt` has passed lose their artifacts and become `expired`;
//! lapsed idempotency keys are dropped.

use super::Exporter;
use crate::error::Result;
use crate::model::{RunStatus, Timestamp};
use serde::Serialize;

/// What a retention sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SweepReport {
    /// Runs marked expired.
    pub expired: usize,
    /// Artifacts deleted from the sink.
    pub artifacts_deleted: usize,
    /// Idempotency keys dropped.
    pub keys_purged: u64,
}

impl Exporter {
    /// Expires runs whose retention has elapsed at `now` and deletes their artifacts; drops
    /// lapsed idempotency keys. The started dispatcher calls it with the engine's clock. On a
    /// store shared by several processes one sweeps at a time; the others skip their turn
    /// (an empty report).
    pub async fn sweep(&self, now: Timestamp) -> Result<SweepReport> {
        let cfg = &self.inner.cfg;
        let mut report = SweepReport::default();
        let Some(_turn) = cfg.store.sweep_guard().await? else { return Ok(report) };
        loop {
            let due = cfg.store.due_for_expiry(now, 100).await?;
            if due.is_empty() {
                break;
            }
            for mut run in due {
                // The run manifest first (outputs list it last): a sweep stopped half-way
                // never leaves a manifest naming files that are gone.
                for o in run.outputs.iter().rev() {
                    let path = self.artifact_path(&run, &o.path)?;
                    self.inner.sink.delete(&path).await?;
                    report.artifacts_deleted += 1;
                }
                // Then whatever else is under the run's prefix: files a worker that lost its
                // lease landed in its own attempt's directory after the takeover cleared it.
                if cfg.per_run_prefix {
                    self.inner.sink.delete_prefix(&run.run_id.sink_prefix()?).await?;
                }
                run.status = RunStatus::Expired;
                cfg.store.save(&run).await?;
                metrics::counter!("exporter_runs_expired_total", "profile_kind" => run.profile_id.to_string())
                    .increment(1);
                report.expired += 1;
            }
        }
        report.keys_purged = cfg.store.purge_idempotency(now).await?;
        Ok(report)
    }

    /// Runs a sweep at the engine clock's now.
    pub async fn sweep_now(&self) -> Result<SweepReport> {
        self.sweep(self.now()).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::engine::{ManualClock, Submission};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_expire_on_the_engine_clock_and_lose_their_artifacts() {
        let clock = ManualClock::new(t0());
        let (ex, sink) = exporter(&clock);
        let id = ex.submit(Submission::new(tenant(), request(Some(1)))).await.unwrap().run_id;
        ex.execute_now(&tenant(), &id).await.unwrap();
        assert_eq!(sink.snapshot().len(), 2);
        clock.advance(Duration::from_secs(86_400 - 1));
        assert_eq!(ex.sweep_now().await.unwrap().expired, 0, "not due a second early");
        clock.advance(Duration::from_secs(1));
        let report = ex.sweep_now().await.unwrap();
        assert_eq!((report.expired, report.artifacts_deleted), (1, 2));
        assert!(sink.snapshot().is_empty());
        assert_eq!(ex.get(&tenant(), &id).await.unwrap().status, crate::RunStatus::Expired);
    }

    /// A sink that refuses to delete anything but a run manifest.
    #[derive(Debug, Default)]
    struct StickySink(crate::InMemorySink);

    #[async_trait::async_trait]
    impl crate::Sink for StickySink {
        fn name(&self) -> &str {
            "sticky"
        }
        fn url(&self, path: &crate::ArtifactPath) -> String {
            self.0.url(path)
        }
        async fn put(&self, path: &crate::ArtifactPath, body: crate::ByteStream) -> crate::Result<crate::PutReceipt> {
            self.0.put(path, body).await
        }
        async fn get(&self, path: &crate::ArtifactPath) -> crate::Result<crate::ByteStream> {
            self.0.get(path).await
        }
        async fn list(&self, prefix: Option<&crate::ArtifactPath>) -> crate::Result<Vec<crate::ObjectMeta>> {
            self.0.list(prefix).await
        }
        async fn delete(&self, path: &crate::ArtifactPath) -> crate::Result<()> {
            if !path.as_str().ends_with("manifest.json") {
                return Err(crate::ExportError::io(path.as_str(), std::io::Error::other("refused")));
            }
            self.0.delete(path).await
        }
    }

    /// A sweep stopped half-way has deleted the run manifest first: no manifest is left
    /// naming files that are gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_deletes_the_run_manifest_first() {
        let clock = ManualClock::new(t0());
        let sink = std::sync::Arc::new(StickySink::default());
        let ex = crate::engine::Exporter::builder()
            .profiles(crate::Profiles::new().with(crate::engine::test_support::Hello))
            .sink_arc(sink.clone())
            .evidence(crate::MemoryEvidence::new())
            .clock(clock.clone())
            .build()
            .unwrap();
        let id = ex.submit(Submission::new(tenant(), request(Some(1)))).await.unwrap().run_id;
        ex.execute_now(&tenant(), &id).await.unwrap();
        clock.advance(Duration::from_secs(86_400));
        assert!(ex.sweep_now().await.is_err(), "the sink refused the second delete");
        let left: Vec<String> = sink.0.snapshot().into_iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].ends_with("hello.txt"), "the manifest went first: {left:?}");
    }
}
