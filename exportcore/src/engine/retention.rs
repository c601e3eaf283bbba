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
                for o in &run.outputs {
                    let path = self.artifact_path(&run.run_id, &o.path)?;
                    self.inner.sink.delete(&path).await?;
                    report.artifacts_deleted += 1;
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
}
