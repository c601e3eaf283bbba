//! A run's event stream: stored events first, then live ones, ending after the terminal event.

use super::Exporter;
use crate::error::Result;
use crate::id::{RunId, TenantId};
use crate::store::StoredEvent;
use futures::stream::{BoxStream, StreamExt};
use std::collections::VecDeque;
use tokio::sync::broadcast;

struct State {
    this: Exporter,
    tenant: TenantId,
    run_id: RunId,
    after: u64,
    buf: VecDeque<StoredEvent>,
    /// Ended: the terminal event or an error was delivered.
    done: bool,
    /// The run is final and its remaining events are in `buf`: end once it is drained.
    ending: bool,
    rx: broadcast::Receiver<RunId>,
}

impl Exporter {
    /// The events of a run of `tenant` after event id `after`: stored ones first, then live
    /// ones as they happen; the stream ends after `completed` or `failed`. A foreign or
    /// unknown run yields one `ERR_EXPORT_NOT_FOUND` error.
    ///
    /// The store finishes a run and appends its terminal event in one step
    /// ([`crate::store::RunStore::finish`]), so a run seen final always has its terminal event:
    /// the stream never waits or polls for it.
    pub fn events(&self, tenant: &TenantId, run_id: &RunId, after: u64) -> BoxStream<'static, Result<StoredEvent>> {
        let st = State {
            rx: self.inner.events_tx.subscribe(),
            this: self.clone(),
            tenant: tenant.clone(),
            run_id: run_id.clone(),
            after,
            buf: VecDeque::new(),
            done: false,
            ending: false,
        };
        futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(ev) = st.buf.pop_front() {
                    st.after = ev.id;
                    if ev.event.is_terminal() {
                        st.done = true;
                        st.buf.clear();
                    }
                    return Some((Ok(ev), st));
                }
                if st.done || st.ending {
                    return None;
                }
                let store = &st.this.inner.cfg.store;
                match store.events(&st.tenant, &st.run_id, st.after, 256).await {
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    Ok(evs) if !evs.is_empty() => {
                        st.buf.extend(evs);
                        continue;
                    }
                    Ok(_) => {}
                }
                match store.get(&st.tenant, &st.run_id).await {
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    Ok(run) if run.status.is_terminal() => {
                        // Final: its terminal event is stored (it may have landed after the
                        // read above). Deliver what is left and end.
                        match store.events(&st.tenant, &st.run_id, st.after, 256).await {
                            Ok(tail) => st.buf.extend(tail),
                            Err(e) => {
                                st.done = true;
                                return Some((Err(e), st));
                            }
                        }
                        st.ending = true;
                        continue;
                    }
                    Ok(_) => {}
                }
                // Wait for an event of this run (a lagging receiver or the poll interval, for
                // events another process stored, also lead back to the store).
                let deadline = tokio::time::Instant::now() + st.this.inner.cfg.poll_interval;
                loop {
                    match tokio::time::timeout_at(deadline, st.rx.recv()).await {
                        Ok(Ok(id)) if id != st.run_id => continue,
                        Ok(Err(broadcast::error::RecvError::Closed)) => {
                            tokio::time::sleep_until(deadline).await;
                            break;
                        }
                        _ => break,
                    }
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::engine::{ManualClock, Submission};
    use crate::ExportError;
    use futures::StreamExt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finished_run_replays_and_ends_on_its_terminal_event() {
        let clock = ManualClock::new(t0());
        let (ex, _) = exporter(&clock);
        let id = ex.submit(Submission::new(tenant(), request(None))).await.unwrap().run_id;
        ex.execute_now(&tenant(), &id).await.unwrap();
        let all: Vec<_> = ex.events(&tenant(), &id, 0).collect().await;
        let names: Vec<_> = all.iter().map(|e| e.as_ref().unwrap().event.name()).collect();
        assert_eq!(names.first(), Some(&"started"));
        assert_eq!(names.last(), Some(&"completed"));
        // Resuming after the last id yields nothing and ends at once.
        let last = all.last().unwrap().as_ref().unwrap().id;
        assert!(ex.events(&tenant(), &id, last).collect::<Vec<_>>().await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_tenants_run_is_one_not_found_error() {
        let clock = ManualClock::new(t0());
        let (ex, _) = exporter(&clock);
        let id = ex.submit(Submission::new(tenant(), request(None))).await.unwrap().run_id;
        let other = crate::TenantId::from_static("other");
        let got: Vec<_> = ex.events(&other, &id, 0).collect().await;
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0], Err(ExportError::NotFound { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_queued_run_ends_its_stream_with_failed() {
        let clock = ManualClock::new(t0());
        let (ex, _) = exporter(&clock);
        let id = ex.submit(Submission::new(tenant(), request(None))).await.unwrap().run_id;
        ex.cancel(&tenant(), &id).await.unwrap();
        let got: Vec<_> = ex.events(&tenant(), &id, 0).collect().await;
        let last = got.last().unwrap().as_ref().unwrap();
        assert!(matches!(&last.event, crate::RunEvent::Failed { code, .. } if code == "ERR_EXPORT_CANCELLED"));
    }
}
