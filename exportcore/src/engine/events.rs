//! A run's event stream: stored events first, then live ones, ending after the terminal event.

use super::Exporter;
use crate::error::Result;
use crate::id::{RunId, TenantId};
use crate::store::StoredEvent;
use futures::stream::{BoxStream, StreamExt};
use std::collections::VecDeque;
use tokio::sync::watch;

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
    rx: watch::Receiver<u64>,
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
                st.rx.borrow_and_update();
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
                let poll = st.this.inner.cfg.poll_interval;
                let _ = tokio::time::timeout(poll, st.rx.changed()).await;
            }
        })
        .boxed()
    }
}
