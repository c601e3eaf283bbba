use super::{
    check_lease, lease_lost, seconds_between, ClaimedRun, Created, NewRun, Page, RunFilter, RunStore, StoredEvent,
};
use crate::error::{ExportError, Result};
use crate::hashing::Sha256Digest;
use crate::id::{ProfileId, RunId, TenantId};
use crate::model::{Lease, Run, RunError, RunEvent, RunRequest, RunStatus, Timestamp};
use crate::saved::SavedProfile;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

#[derive(Debug)]
struct Entry {
    run: Run,
    request: RunRequest,
    seq: u64,
    lease: Option<Lease>,
    cancel_requested: bool,
}

#[derive(Debug, Default)]
struct State {
    runs: HashMap<RunId, Entry>,
    by_seq: BTreeMap<u64, RunId>,
    queue: BTreeSet<(i64, u64, RunId)>,
    ranks: HashMap<RunId, i64>,
    events: HashMap<RunId, Vec<StoredEvent>>,
    idempotency: HashMap<(TenantId, String), (Sha256Digest, RunId, Timestamp)>,
    next_seq: u64,
    distributions: BTreeMap<(TenantId, String), crate::model::DistributionRecord>,
    profiles: BTreeMap<(TenantId, String, u32), SavedProfile>,
}

/// A run store in memory: for tests and embedders that need no durability.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn not_found(run_id: &RunId) -> ExportError {
    ExportError::NotFound { path: format!("run {run_id}") }
}

fn save(st: &mut State, run: &Run) -> Result<()> {
    let e = st.runs.get_mut(&run.run_id).ok_or_else(|| not_found(&run.run_id))?;
    check_lease(&run.run_id, e.lease.as_ref().map(|l| l.lease_id.as_str()), run.lease.as_ref())?;
    super::check_transition(&run.run_id, e.run.status.as_str(), run.status)?;
    let seq = e.seq;
    e.run = Run { lease: None, ..run.clone() };
    if run.status != RunStatus::Running {
        e.lease = None;
    }
    if run.status.is_terminal() {
        e.cancel_requested = false;
    }
    let rank = st.ranks.get(&run.run_id).copied().unwrap_or_default();
    let key = (rank, seq, run.run_id.clone());
    if run.status == RunStatus::Queued {
        st.queue.insert(key);
    } else {
        st.queue.remove(&key);
    }
    Ok(())
}

fn push_event(st: &mut State, run_id: &RunId, at: Timestamp, event: &RunEvent) -> u64 {
    let list = st.events.entry(run_id.clone()).or_default();
    let id = list.len() as u64 + 1;
    list.push(StoredEvent { id, at, event: event.clone() });
    id
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn create(&self, new: NewRun, now: Timestamp) -> Result<Created> {
        let mut st = self.lock();
        if let Some(k) = &new.idempotency {
            let slot = (new.run.tenant.clone(), k.key.clone());
            if let Some((hash, run_id, expires)) = st.idempotency.get(&slot).cloned() {
                if expires > now {
                    if hash != new.request_hash {
                        return Err(ExportError::Conflict {
                            what: "Idempotency-Key".into(),
                            reason: format!("key {:?} was used for a different request (run {run_id})", k.key),
                        });
                    }
                    if let Some(e) = st.runs.get(&run_id) {
                        return Ok(Created::Existing(e.run.clone()));
                    }
                }
                st.idempotency.remove(&slot);
            }
            st.idempotency.insert(slot, (new.request_hash, new.run.run_id.clone(), k.expires_at));
        }
        st.next_seq += 1;
        let seq = st.next_seq;
        let id = new.run.run_id.clone();
        st.by_seq.insert(seq, id.clone());
        st.queue.insert((new.rank, seq, id.clone()));
        st.ranks.insert(id.clone(), new.rank);
        st.runs.insert(
            id,
            Entry {
                run: Run { lease: None, ..new.run.clone() },
                request: new.request,
                seq,
                lease: None,
                cancel_requested: false,
            },
        );
        Ok(Created::New(new.run))
    }

    async fn get(&self, tenant: &TenantId, run_id: &RunId) -> Result<Run> {
        let st = self.lock();
        st.runs.get(run_id).filter(|e| e.run.tenant == *tenant).map(|e| e.run.clone()).ok_or_else(|| not_found(run_id))
    }

    async fn list(&self, tenant: &TenantId, filter: &RunFilter) -> Result<Page> {
        let st = self.lock();
        let end = match &filter.cursor {
            Some(c) => RunId::parse(c.clone())
                .ok()
                .and_then(|id| st.runs.get(&id))
                .filter(|e| e.run.tenant == *tenant)
                .map(|e| e.seq)
                .ok_or_else(|| crate::store::bad_cursor(c))?,
            None => u64::MAX,
        };
        let mut runs = Vec::new();
        let mut next_cursor = None;
        for (_, id) in st.by_seq.range(..=end).rev() {
            let e = &st.runs[id];
            let r = &e.run;
            if r.tenant != *tenant
                || filter.status.is_some_and(|s| s != r.status)
                || filter.profile_id.as_ref().is_some_and(|p| *p != r.profile_id)
                || filter.project.as_ref().is_some_and(|p| Some(p) != r.project.as_ref())
            {
                continue;
            }
            if runs.len() == filter.page_size() {
                next_cursor = Some(id.to_string());
                break;
            }
            runs.push(r.clone());
        }
        Ok(Page { runs, next_cursor, ..Default::default() })
    }

    async fn claim_next(&self, now: Timestamp, lease: &Lease) -> Result<Option<ClaimedRun>> {
        let mut st = self.lock();
        // The queue is ordered by rank: local runs (`LOCAL_RANK`) come last and are never taken.
        let Some(first) = st.queue.iter().next().filter(|q| q.0 != super::LOCAL_RANK).cloned() else { return Ok(None) };
        st.queue.remove(&first);
        let e = st.runs.get_mut(&first.2).ok_or_else(|| not_found(&first.2))?;
        e.run.status = RunStatus::Running;
        e.run.started_at.get_or_insert(now);
        e.run.attempts += 1;
        e.lease = Some(lease.clone());
        let run = Run { lease: e.lease.clone(), ..e.run.clone() };
        Ok(Some(ClaimedRun { run, request: e.request.clone() }))
    }

    async fn claim_run(&self, run_id: &RunId, now: Timestamp, lease: &Lease) -> Result<Option<ClaimedRun>> {
        let mut st = self.lock();
        let Some(e) = st.runs.get_mut(run_id) else { return Err(not_found(run_id)) };
        if e.run.status != RunStatus::Queued {
            return Ok(None);
        }
        e.run.status = RunStatus::Running;
        e.run.started_at.get_or_insert(now);
        e.run.attempts += 1;
        e.lease = Some(lease.clone());
        let claimed = ClaimedRun { run: Run { lease: e.lease.clone(), ..e.run.clone() }, request: e.request.clone() };
        let seq = e.seq;
        let rank = st.ranks.get(run_id).copied().unwrap_or_default();
        st.queue.remove(&(rank, seq, run_id.clone()));
        Ok(Some(claimed))
    }

    async fn renew_lease(&self, run_id: &RunId, lease: &Lease) -> Result<bool> {
        let mut st = self.lock();
        let e = st.runs.get_mut(run_id).ok_or_else(|| not_found(run_id))?;
        match &mut e.lease {
            Some(l) if l.lease_id == lease.lease_id && e.run.status == RunStatus::Running => {
                l.lease_until = lease.lease_until;
                Ok(e.cancel_requested)
            }
            _ => Err(lease_lost(run_id)),
        }
    }

    async fn request_cancel(&self, tenant: &TenantId, run_id: &RunId) -> Result<bool> {
        let mut st = self.lock();
        let e = st.runs.get_mut(run_id).filter(|e| e.run.tenant == *tenant).ok_or_else(|| not_found(run_id))?;
        let running = e.run.status == RunStatus::Running;
        e.cancel_requested |= running;
        Ok(running)
    }

    async fn reclaim_expired(&self, now: Timestamp, lease: &Lease) -> Result<Option<Run>> {
        let mut st = self.lock();
        let State { by_seq, runs, .. } = &mut *st;
        for id in by_seq.values() {
            let Some(e) = runs.get_mut(id) else { continue };
            if e.run.status == RunStatus::Running && e.lease.as_ref().is_none_or(|l| l.lease_until <= now) {
                e.lease = Some(lease.clone());
                return Ok(Some(Run { lease: e.lease.clone(), ..e.run.clone() }));
            }
        }
        Ok(None)
    }

    async fn save(&self, run: &Run) -> Result<()> {
        save(&mut self.lock(), run)
    }

    async fn fail_if_queued(
        &self,
        tenant: &TenantId,
        run_id: &RunId,
        error: RunError,
        now: Timestamp,
    ) -> Result<Option<Run>> {
        let mut st = self.lock();
        let e = st.runs.get_mut(run_id).filter(|e| e.run.tenant == *tenant).ok_or_else(|| not_found(run_id))?;
        if e.run.status != RunStatus::Queued {
            return Ok(None);
        }
        e.run.status = RunStatus::Failed;
        e.run.finished_at = Some(now);
        e.run.errors.push(error.clone());
        let (seq, run) = (e.seq, e.run.clone());
        let rank = st.ranks.get(run_id).copied().unwrap_or_default();
        st.queue.remove(&(rank, seq, run_id.clone()));
        let failed = RunEvent::Failed { run_id: run_id.clone(), code: error.code, message: error.message };
        push_event(&mut st, run_id, now, &failed);
        Ok(Some(run))
    }

    async fn finish(&self, run: &Run, at: Timestamp, terminal: &RunEvent) -> Result<u64> {
        let mut st = self.lock();
        save(&mut st, run)?;
        Ok(push_event(&mut st, &run.run_id, at, terminal))
    }

    async fn append_events(
        &self,
        run_id: &RunId,
        lease: Option<&Lease>,
        at: Timestamp,
        events: &[RunEvent],
    ) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut st = self.lock();
        let e = st.runs.get(run_id).ok_or_else(|| not_found(run_id))?;
        check_lease(run_id, e.lease.as_ref().map(|l| l.lease_id.as_str()), lease)?;
        Ok(events.iter().map(|event| push_event(&mut st, run_id, at, event)).last().unwrap_or(0))
    }

    async fn events(&self, tenant: &TenantId, run_id: &RunId, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let st = self.lock();
        st.runs.get(run_id).filter(|e| e.run.tenant == *tenant).ok_or_else(|| not_found(run_id))?;
        Ok(st
            .events
            .get(run_id)
            .map(|l| l.iter().filter(|e| e.id > after).take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn due_for_expiry(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        let st = self.lock();
        let mut due: Vec<&Entry> = st
            .runs
            .values()
            .filter(|e| matches!(e.run.status, RunStatus::Succeeded | RunStatus::Failed))
            .filter(|e| e.run.expires_at.is_some_and(|x| x <= now))
            .collect();
        due.sort_by_key(|e| e.seq);
        Ok(due.into_iter().take(limit).map(|e| e.run.clone()).collect())
    }

    async fn running(&self) -> Result<Vec<Run>> {
        let st = self.lock();
        let mut v: Vec<&Entry> = st.runs.values().filter(|e| e.run.status == RunStatus::Running).collect();
        v.sort_by_key(|e| e.seq);
        Ok(v.into_iter().map(|e| e.run.clone()).collect())
    }

    async fn recent_durations(&self, profile_id: &ProfileId, limit: usize) -> Result<Vec<f64>> {
        let st = self.lock();
        Ok(st
            .by_seq
            .values()
            .rev()
            .filter_map(|id| st.runs.get(id))
            .filter(|e| e.run.profile_id == *profile_id && e.run.status == RunStatus::Succeeded)
            .filter_map(|e| Some(seconds_between(e.run.started_at?, e.run.finished_at?)))
            .take(limit)
            .collect())
    }

    async fn queued_count(&self, tenant: Option<&TenantId>) -> Result<u64> {
        let st = self.lock();
        let Some(tenant) = tenant else { return Ok(st.queue.len() as u64) };
        Ok(st.queue.iter().filter(|(_, _, id)| st.runs.get(id).is_some_and(|e| e.run.tenant == *tenant)).count() as u64)
    }

    async fn find_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<(Sha256Digest, Run)>> {
        let st = self.lock();
        Ok(st
            .idempotency
            .get(&(tenant.clone(), key.to_owned()))
            .filter(|(_, _, expires)| *expires > now)
            .and_then(|(hash, run_id, _)| st.runs.get(run_id).map(|e| (*hash, e.run.clone()))))
    }

    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64> {
        let mut st = self.lock();
        let before = st.idempotency.len();
        st.idempotency.retain(|_, (_, _, exp)| *exp > now);
        Ok((before - st.idempotency.len()) as u64)
    }

    async fn put_distribution(&self, record: &crate::model::DistributionRecord) -> Result<()> {
        self.lock().distributions.insert((record.tenant.clone(), record.id.clone()), record.clone());
        Ok(())
    }

    async fn get_distribution(&self, tenant: &TenantId, id: &str) -> Result<crate::model::DistributionRecord> {
        self.lock()
            .distributions
            .get(&(tenant.clone(), id.to_owned()))
            .cloned()
            .ok_or_else(|| ExportError::NotFound { path: format!("distribution {id}") })
    }

    async fn list_distributions(
        &self,
        tenant: &TenantId,
        run_id: Option<&RunId>,
    ) -> Result<Vec<crate::model::DistributionRecord>> {
        let mut out: Vec<_> = self
            .lock()
            .distributions
            .values()
            .filter(|d| &d.tenant == tenant && run_id.is_none_or(|r| &d.run_id == r))
            .cloned()
            .collect();
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(out)
    }

    async fn put_profile(&self, profile: &SavedProfile) -> Result<()> {
        let key = (profile.tenant.clone(), profile.spec.name.clone(), profile.revision);
        let mut st = self.lock();
        if st.profiles.contains_key(&key) {
            return Err(super::profile_conflict(profile));
        }
        st.profiles.insert(key, profile.clone());
        Ok(())
    }

    async fn get_profile(&self, tenant: &TenantId, name: &str, revision: Option<u32>) -> Result<SavedProfile> {
        let st = self.lock();
        let lo = (tenant.clone(), name.to_owned(), 0);
        let hi = (tenant.clone(), name.to_owned(), u32::MAX);
        let mut revs = st.profiles.range(lo..=hi).map(|(_, p)| p);
        match revision {
            Some(r) => revs.find(|p| p.revision == r),
            None => revs.next_back(),
        }
        .cloned()
        .ok_or_else(|| super::profile_not_found(tenant, name, revision))
    }

    async fn list_profiles(&self, tenant: &TenantId) -> Result<Vec<SavedProfile>> {
        let st = self.lock();
        let mut latest: BTreeMap<&str, &SavedProfile> = BTreeMap::new();
        for ((t, name, _), p) in st.profiles.iter() {
            if t == tenant {
                latest.insert(name, p);
            }
        }
        Ok(latest.into_values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conforms() {
        crate::conformance::store_suite(&super::MemoryStore::new()).await;
    }
}
