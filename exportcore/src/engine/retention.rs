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
    /// lapsed idempotency keys. The started dispatcher calls it with the engine's clock.
    pub async fn sweep(&self, now: Timestamp) -> Result<SweepReport> {
        let cfg = &self.inner.cfg;
        let mut report = SweepReport::default();
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
                metrics::counter!("exporter_runs_expired_total", "profile" => run.profile_id.to_string()).increment(1);
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
