//! Running queued work: the dispatcher's worker pool, one-shot execution, attempts, retries
//! with backoff, timeouts and the atomic finish of each run.

use super::Exporter;
use crate::error::{ExportError, Result};
use crate::id::RunId;
use crate::model::{Lease, Run, RunError, RunEvent, RunRequest, RunStatus};
use crate::profile::CancelFlag;
use crate::run::{RunBuilder, RunOutcome};
use crate::store::ClaimedRun;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// The most events the run writer stores in one [`crate::RunStore::append_events`].
const EVENT_BATCH: usize = 1024;

/// Handle of started workers; [`WorkerHandle::shutdown`] stops taking new runs and waits for
/// the running ones.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// Stops taking new runs (running ones go on); [`WorkerHandle::shutdown`] then waits for
    /// them.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
    /// Stops the dispatcher and waits for running runs to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A jitter fraction in `0..0.5` that differs between runs and attempts (no RNG needed: it
/// only has to spread retries of different runs apart).
fn jitter_fraction(run_id: &RunId, attempt: u32) -> f64 {
    let d = crate::hashing::Sha256Digest::of(format!("{run_id}/{attempt}").as_bytes());
    let b = d.as_bytes();
    f64::from(u16::from_le_bytes([b[0], b[1]])) / f64::from(u16::MAX) * 0.5
}

impl Exporter {
    /// Starts the dispatcher (bounded worker pool) and the retention sweeper.
    pub fn start(&self) -> WorkerHandle {
        let (stop, mut stop_rx) = watch::channel(false);
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            let mut next_sweep = tokio::time::Instant::now();
            let mut next_reclaim = tokio::time::Instant::now();
            loop {
                if *stop_rx.borrow() {
                    break;
                }
                if tokio::time::Instant::now() >= next_sweep {
                    if let Err(e) = this.sweep(this.now()).await {
                        tracing::warn!(error = %e.report(), "retention sweep failed");
                    }
                    next_sweep = tokio::time::Instant::now() + this.inner.cfg.sweep_interval;
                }
                if tokio::time::Instant::now() >= next_reclaim {
                    if let Err(e) = this.reclaim_expired().await {
                        tracing::warn!(error = %e.report(), "taking over runs with lapsed leases failed");
                    }
                    next_reclaim = tokio::time::Instant::now() + this.inner.cfg.lease_ttl / 2;
                }
                this.fill_slots(&mut running).await;
                while running.try_join_next().is_some() {}
                tokio::select! {
                    _ = this.inner.wake.notified() => {}
                    _ = tokio::time::sleep(this.inner.cfg.poll_interval) => {}
                    _ = stop_rx.changed() => {}
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
            while running.join_next().await.is_some() {}
        });
        WorkerHandle { stop, task }
    }

    async fn fill_slots(&self, running: &mut tokio::task::JoinSet<()>) {
        while let Ok(permit) = Arc::clone(&self.inner.semaphore).try_acquire_owned() {
            match self.claim(None).await {
                Ok(Some((claimed, cancel))) => {
                    let this = self.clone();
                    running.spawn(async move {
                        this.run_claimed(claimed, cancel).await;
                        drop(permit);
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e.report(), "claiming a run failed");
                    break;
                }
            }
        }
    }

    /// Claims the next queued run (or `run_id`) under a fresh lease and registers its cancel
    /// flag, under the cancel lock (see `Inner::cancels`). The flag trips by itself shortly
    /// before the lease lapses unless the heartbeat renews it.
    async fn claim(&self, run_id: Option<&RunId>) -> Result<Option<(ClaimedRun, CancelFlag)>> {
        let store = &self.inner.cfg.store;
        let mut cancels = self.inner.cancels.lock().await;
        let sent = std::time::Instant::now();
        let now = self.now();
        let lease = Lease::new(super::clock::plus(now, self.inner.cfg.lease_ttl));
        let claimed = match run_id {
            Some(id) => store.claim_run(id, now, &lease).await?,
            None => store.claim_next(now, &lease).await?,
        };
        let Some(c) = claimed else { return Ok(None) };
        let flag = CancelFlag::new();
        flag.set_deadline(self.lease_deadline(sent));
        // A cancel asked of the run while no worker held it (during a takeover or a requeue)
        // stays in the store: read it now, not at the first renewal a third of the TTL away
        // (a short run would finish first).
        match store.renew_lease(&c.run.run_id, &lease).await {
            Ok(true) => flag.cancel(),
            Ok(false) => {}
            Err(e) => tracing::warn!(run_id = %c.run.run_id, error = %e.report(), "reading a pending cancel failed"),
        }
        cancels.insert(c.run.run_id.clone(), flag.clone());
        Ok(Some((c, flag)))
    }

    /// When a worker must stop trusting a lease it asked for at `sent`: a sixth of the TTL
    /// before it lapses, a margin for clock skew between the nodes.
    fn lease_deadline(&self, sent: std::time::Instant) -> std::time::Instant {
        let ttl = self.inner.cfg.lease_ttl;
        sent + ttl - ttl / 6
    }

    /// Renews the lease of a running run every third of the TTL until aborted; a renewal the
    /// store refuses (the run was taken over) stops the run at once through its flag, one
    /// that reports a cancel request (from another process) cancels it.
    fn heartbeat(&self, run_id: RunId, lease: Lease, cancel: CancelFlag) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let ttl = this.inner.cfg.lease_ttl;
            loop {
                tokio::time::sleep(ttl / 3).await;
                let sent = std::time::Instant::now();
                let renewed =
                    Lease { lease_id: lease.lease_id.clone(), lease_until: super::clock::plus(this.now(), ttl) };
                match this.inner.cfg.store.renew_lease(&run_id, &renewed).await {
                    Ok(cancel_requested) => {
                        cancel.set_deadline(this.lease_deadline(sent));
                        if cancel_requested {
                            tracing::info!(%run_id, "cancel requested through the store");
                            cancel.cancel();
                        }
                    }
                    Err(e) if crate::store::is_lease_lost(&e) || cancel.lease_lost() => {
                        tracing::warn!(%run_id, "lease lost: another worker took the run over; stopping");
                        cancel.lose_lease();
                        return;
                    }
                    // The deadline trips the flag if this lasts; keep trying until then.
                    Err(e) => tracing::warn!(%run_id, error = %e.report(), "renewing the lease failed"),
                }
            }
        })
    }

    /// Takes over every running run whose lease lapsed (its worker died, hung or lost the
    /// store): back to the queue while attempts remain, else failed `ERR_EXPORT_INTERRUPTED`.
    /// [`Exporter::start`] calls it every half lease TTL on every node. Returns the runs
    /// taken over.
    pub async fn reclaim_expired(&self) -> Result<Vec<RunId>> {
        let cfg = &self.inner.cfg;
        let mut ids = Vec::new();
        loop {
            let now = self.now();
            let lease = Lease::new(super::clock::plus(now, cfg.lease_ttl));
            let Some(mut run) = cfg.store.reclaim_expired(now, &lease).await? else { break };
            // Requeued or failed, the run starts over or ends: what its dead worker left goes
            // (its attempt's prefix only: the next attempt publishes under its own).
            self.discard_partial_outputs(&run.run_id, Some(run.attempts)).await;
            let attempts = run.attempts;
            if attempts < cfg.max_attempts && !run.local {
                tracing::warn!(run_id = %run.run_id, attempts, "lease lapsed: run requeued");
                run.status = RunStatus::Queued;
                cfg.store.save(&run).await?;
                self.inner.wake.notify_one();
            } else {
                let err = ExportError::Interrupted {
                    reason: if run.local {
                        "the process that submitted it (and alone runs it) stopped renewing its lease".into()
                    } else {
                        format!("its worker stopped renewing the run's lease, and its {attempts} attempts are spent")
                    },
                };
                tracing::warn!(run_id = %run.run_id, attempts, "lease lapsed: run failed");
                run.status = RunStatus::Failed;
                run.finished_at = Some(now);
                run.errors.push(RunError::from(&err));
                let ev =
                    RunEvent::Failed { run_id: run.run_id.clone(), code: err.code().into(), message: err.report() };
                cfg.store.finish(&run, now, &ev).await?;
                metrics::counter!("exporter_runs_total", "profile_kind" => run.profile_id.to_string(), "status" => "failed")
                    .increment(1);
                metrics::counter!("exporter_run_failures_total", "profile_kind" => run.profile_id.to_string(),
                    "error_code" => err.code())
                .increment(1);
            }
            let _ = self.inner.events_tx.send(run.run_id.clone());
            ids.push(run.run_id);
        }
        Ok(ids)
    }

    /// Runs queued work until the queue is empty and every started run has finished
    /// (one-shot callers such as a CLI; servers use [`Exporter::start`]).
    pub async fn run_until_idle(&self) {
        let mut running = tokio::task::JoinSet::new();
        loop {
            self.fill_slots(&mut running).await;
            if running.join_next().await.is_none() {
                break;
            }
        }
    }

    /// Runs one queued run of `tenant` now, on the calling task, outside the pool (one-shot
    /// callers such as a CLI, which must not pick up other queued work). Returns the final
    /// record; a run that is no longer queued is returned as it is.
    pub async fn execute_now(&self, tenant: &crate::TenantId, run_id: &RunId) -> Result<Run> {
        let store = &self.inner.cfg.store;
        store.get(tenant, run_id).await?;
        // Transient failures requeue the run; keep going until it is final.
        while let Some((claimed, cancel)) = self.claim(Some(run_id)).await? {
            self.run_claimed(claimed, cancel).await;
        }
        store.get(tenant, run_id).await
    }

    async fn run_claimed(&self, claimed: ClaimedRun, cancel: CancelFlag) {
        let span = tracing::info_span!("export_run", run_id = %claimed.run.run_id, tenant = %claimed.run.tenant,
            profile = %claimed.run.profile_id, attempt = claimed.run.attempts);
        self.run_claimed_inner(claimed, cancel).instrument(span).await;
    }

    async fn run_claimed_inner(&self, claimed: ClaimedRun, cancel: CancelFlag) {
        let cfg = &self.inner.cfg;
        let ClaimedRun { mut run, request } = claimed;
        let timeout = request
            .timeout_seconds
            .map(Duration::from_secs)
            .or_else(|| cfg.profile_timeouts.get(&request.profile_id).copied())
            .unwrap_or(cfg.default_timeout);
        let timer = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                cancel.time_out(timeout.as_secs());
            })
        };
        let heartbeat = match &run.lease {
            Some(lease) => Some(self.heartbeat(run.run_id.clone(), lease.clone(), cancel.clone())),
            None => None,
        };
        tracing::info!("run started");
        let mut outcome = self.attempt(&run, &request, cancel.clone()).await;
        timer.abort();
        if cancel.lease_lost() {
            // Another worker owns the run now (or will once the lease lapses): write nothing.
            if let Some(h) = heartbeat {
                h.abort();
            }
            tracing::warn!("run abandoned: this worker lost its lease");
            self.inner.cancels.lock().await.remove(&run.run_id);
            return;
        }

        // Transient failures go back to the queue with exponential backoff and jitter, unless
        // the run was cancelled meanwhile.
        if let Err(e) = &outcome {
            if e.is_transient() && run.attempts < cfg.max_attempts {
                let backoff = cfg.retry_base.mul_f64(2f64.powi(run.attempts as i32 - 1));
                let jitter = backoff.mul_f64(jitter_fraction(&run.run_id, run.attempts));
                metrics::counter!("exporter_run_retries_total", "profile_kind" => run.profile_id.to_string())
                    .increment(1);
                tracing::warn!(code = e.code(), error = %e.report(), attempt = run.attempts, ?backoff, "transient failure, retrying the run");
                tokio::time::sleep(backoff + jitter).await;
                let mut cancels = self.inner.cancels.lock().await;
                match cancel.check() {
                    Ok(()) => {
                        run.status = RunStatus::Queued;
                        if let Err(e) = cfg.store.save(&run).await {
                            tracing::error!(error = %e.report(), "requeue failed");
                        }
                        cancels.remove(&run.run_id);
                        if let Some(h) = heartbeat {
                            h.abort();
                        }
                        self.inner.wake.notify_one();
                        return;
                    }
                    Err(cancelled) => outcome = Err(cancelled),
                }
            }
        }
        self.finish(run, request.retention_days, outcome, &cancel).await;
        if let Some(h) = heartbeat {
            h.abort();
        }
    }

    /// Records the end of a run: the final record and its terminal event in one store
    /// operation, then metrics; drops the run's cancel flag.
    async fn finish(
        &self,
        mut run: Run,
        retention_days: Option<u32>,
        outcome: Result<RunOutcome>,
        cancel: &CancelFlag,
    ) {
        let cfg = &self.inner.cfg;
        let now = self.now();
        run.finished_at = Some(now);
        let terminal = match outcome {
            Ok(RunOutcome { run: r, distributions, .. }) => {
                for mut d in distributions {
                    d.expires_at = retention_days.map(|days| now.plus_days(days));
                    if let Err(e) = cfg.store.put_distribution(&d).await {
                        tracing::error!(error = %e.report(), "saving a distribution record failed");
                    }
                }
                run.status = r.status;
                run.progress = r.progress;
                run.outputs = r.outputs;
                run.errors = r.errors;
                run.warnings = r.warnings;
                // Retention counts from the engine's clock, not the run's own wall time.
                run.expires_at = None;
                if let Some(days) = retention_days {
                    let exp = now.plus_days(days);
                    run.expires_at = Some(exp);
                    run.outputs.iter_mut().for_each(|o| o.expires_at = Some(exp));
                }
                RunEvent::Completed { run_id: run.run_id.clone(), status: run.status }
            }
            Err(e) => {
                run.status = RunStatus::Failed;
                let err = RunError::from(&e);
                metrics::counter!("exporter_run_failures_total", "profile_kind" => run.profile_id.to_string(),
                    "error_code" => err.code.clone())
                .increment(1);
                run.errors.push(err.clone());
                RunEvent::Failed { run_id: run.run_id.clone(), code: err.code, message: err.message }
            }
        };
        // A database restarting is waited out (until the lease's deadline), not taken for the
        // end of the run: the final record and its terminal event must land.
        // Each write under the cancel lock: a cancel either comes before it (and finds the run
        // running) or after the final record (and finds it finished, a 409). The lock is not
        // held across retries: a store that keeps failing must not stall every claim and
        // cancel of the engine.
        let stored = retry_io(cancel, || async {
            let _order = self.inner.cancels.lock().await;
            cfg.store.finish(&run, now, &terminal).await
        })
        .await;
        let mut cancels = self.inner.cancels.lock().await;
        match stored {
            Ok(_) => {
                let _ = self.inner.events_tx.send(run.run_id.clone());
            }
            Err(e) if crate::store::is_lease_lost(&e) || cancel.lease_lost() => {
                tracing::warn!("run abandoned: this worker lost its lease before finishing");
                cancels.remove(&run.run_id);
                return;
            }
            Err(e) => tracing::error!(error = %e.report(), "saving the finished run failed"),
        }
        cancels.remove(&run.run_id);
        drop(cancels);
        let profile = run.profile_id.to_string();
        let secs = run.started_at.zip(run.finished_at).map_or(0.0, |(a, b)| crate::store::seconds_between(a, b));
        metrics::histogram!("exporter_run_duration_seconds", "profile_kind" => profile.clone()).record(secs);
        metrics::counter!("exporter_runs_total", "profile_kind" => profile.clone(), "status" => run.status.as_str())
            .increment(1);
        let bytes: u64 = run.outputs.iter().map(|o| o.size).sum();
        metrics::counter!("exporter_run_bytes_total", "profile_kind" => profile).increment(bytes);
        tracing::info!(status = %run.status, seconds = secs, bytes, "run finished");
    }

    /// One attempt: resolve evidence and signer, execute, persist events as they come.
    async fn attempt(&self, run: &Run, request: &RunRequest, cancel: CancelFlag) -> Result<RunOutcome> {
        let cfg = &self.inner.cfg;
        let profile = cfg.profiles.get(&request.profile_id)?;
        let evidence = (self.inner.evidence)(&run.tenant, run.project.as_deref())?;
        let mut builder = RunBuilder::from_arcs(profile, evidence, Arc::clone(&self.inner.sink))
            .tenant(run.tenant.clone())
            .run_id(run.run_id.clone())
            .pinned_time(cfg.pinned_time)
            .cancel(cancel.clone());
        let writer_cancel = cancel;
        if let Some(p) = &run.project {
            builder = builder.project(p.clone());
        }
        if let Some(dir) = &cfg.staging_dir {
            builder = builder.staging_dir(dir.clone());
        }
        for d in &cfg.distributors {
            builder = builder.distributor(Arc::clone(d));
        }
        if cfg.per_run_prefix {
            builder = builder.prefix(run.run_id.attempt_prefix(run.attempts)?);
        }
        if request.signing_enabled() {
            builder = builder.signer(super::resolve_signer(cfg.signers.as_ref(), &run.tenant, request)?);
        }
        // Events reach the store in order through a channel; the terminal event is written by
        // `finish` with the final record, once retries are decided.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RunEvent>();
        // A write the store refuses for a lost lease stops the run (fencing).
        let writer = {
            let this = self.clone();
            let mut record = run.clone();
            tokio::spawn(async move {
                // Whatever arrived while the last batch was written goes in one store write: a
                // run publishing thousands of files costs a few transactions, not one each.
                let mut batch = Vec::new();
                while rx.recv_many(&mut batch, EVENT_BATCH).await > 0 {
                    batch.retain(|ev| !ev.is_terminal());
                    if batch.is_empty() || writer_cancel.lease_lost() {
                        batch.clear();
                        continue;
                    }
                    let progress = batch.iter().rev().find_map(|ev| match ev {
                        RunEvent::Progress { progress, .. } => Some(*progress),
                        _ => None,
                    });
                    if let Some(progress) = progress {
                        record.progress = progress;
                        if let Err(e) = this.inner.cfg.store.save(&record).await {
                            if crate::store::is_lease_lost(&e) {
                                writer_cancel.lose_lease();
                                batch.clear();
                                continue;
                            }
                            tracing::warn!(error = %e.report(), "saving progress failed");
                        }
                    }
                    if let Err(e) = retry_io(&writer_cancel, || this.append(&record, &batch)).await {
                        if crate::store::is_lease_lost(&e) {
                            writer_cancel.lose_lease();
                        }
                    }
                    batch.clear();
                }
            })
        };
        let result = builder.events(tx).execute(request.clone()).await;
        let _ = writer.await;
        result
    }

    async fn append(&self, run: &Run, events: &[RunEvent]) -> Result<()> {
        let run_id = &run.run_id;
        match self.inner.cfg.store.append_events(run_id, run.lease.as_ref(), self.now(), events).await {
            Ok(_) => {
                let _ = self.inner.events_tx.send(run_id.clone());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%run_id, error = %e.report(), "storing an event failed");
                Err(e)
            }
        }
    }
}

/// Runs a store write again while it fails with `ERR_EXPORT_IO` (a database restarting, a
/// connection lost), backing off from 50 ms to 1 s, until it succeeds, fails otherwise, or the
/// run's lease deadline passes (`cancel` then reports the lease lost).
async fn retry_io<T, F, Fut>(cancel: &CancelFlag, mut write: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match write().await {
            Err(e) if e.code() == "ERR_EXPORT_IO" && !cancel.lease_lost() => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::engine::{Clock, ManualClock, Submission};

    #[test]
    fn jitter_is_a_bounded_fraction_that_differs_between_runs() {
        let a = RunId::from_static("export-run::t::a");
        let b = RunId::from_static("export-run::t::b");
        let fs: Vec<f64> = (1..5).map(|n| jitter_fraction(&a, n)).chain([jitter_fraction(&b, 1)]).collect();
        assert!(fs.iter().all(|f| (0.0..=0.5).contains(f)), "{fs:?}");
        assert!(fs.windows(2).any(|w| w[0] != w[1]), "{fs:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn execute_now_finishes_with_record_and_terminal_event_together() {
        let clock = ManualClock::new(t0());
        let (ex, sink) = exporter(&clock);
        let id = ex.submit(Submission::new(tenant(), request(Some(2)))).await.unwrap().run_id;
        clock.advance(Duration::from_secs(10));
        let run = ex.execute_now(&tenant(), &id).await.unwrap();
        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(run.finished_at, Some(clock.now()));
        assert_eq!(run.expires_at, Some(clock.now().plus_days(2)), "retention counts from the engine clock");
        let events = ex.store().events(&tenant(), &id, 0, 100).await.unwrap();
        assert!(events.last().is_some_and(|e| e.event.is_terminal()));
        assert_eq!(sink.snapshot().len(), 2);
        assert!(ex.inner.cancels.lock().await.is_empty(), "the finished run's cancel flag is dropped");
    }
}
