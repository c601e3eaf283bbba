//! Durable runs: the [`RunStore`] trait and its two implementations, [`MemoryStore`] and (feature
//! `sqlite`) [`SqliteStore`]. Both run the shared store conformance suite
//! ([`crate::conformance::store_suite`]).

mod memory;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use crate::error::Result;
use crate::hashing::Sha256Digest;
use crate::id::{ProfileId, RunId, TenantId};
use crate::model::{Lease, Run, RunEvent, RunRequest, RunStatus, Timestamp};
use crate::saved::SavedProfile;
use async_trait::async_trait;
use serde::Serialize;
use std::fmt::Debug;

/// An idempotency key bound to a new run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The caller's key (`Idempotency-Key` header).
    pub key: String,
    /// When the binding lapses.
    pub expires_at: Timestamp,
}

/// A run to insert.
#[derive(Clone, Debug)]
pub struct NewRun {
    /// The record, `queued`.
    pub run: Run,
    /// Its request.
    pub request: RunRequest,
    /// SHA-256 of the request's canonical JSON (idempotency comparisons).
    pub request_hash: Sha256Digest,
    /// Queue rank: lower runs first (the engine derives it from priority and submission time).
    pub rank: i64,
    /// Optional idempotency key.
    pub idempotency: Option<IdempotencyKey>,
}

/// The queue rank of a run only its submitter executes ([`crate::Run::local`]):
/// [`RunStore::claim_next`] never takes a run of this rank; [`RunStore::claim_run`] does.
pub const LOCAL_RANK: i64 = i64::MAX;

/// The outcome of [`RunStore::create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// A new run was stored.
    New(Run),
    /// The idempotency key already named this run (same request); nothing was stored.
    Existing(Run),
}

impl Created {
    /// The run either way.
    pub fn run(&self) -> &Run {
        match self {
            Created::New(r) | Created::Existing(r) => r,
        }
    }
}

/// A run claimed by a worker.
#[derive(Clone, Debug)]
pub struct ClaimedRun {
    /// The record, now `running`, attempts incremented, holding the claim's lease.
    pub run: Run,
    /// Its request.
    pub request: RunRequest,
}

/// Filter and page for [`RunStore::list`].
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Only runs in this state.
    pub status: Option<RunStatus>,
    /// Only runs of this profile.
    pub profile_id: Option<ProfileId>,
    /// Only runs of this project.
    pub project: Option<String>,
    /// Page size (default 50, at most 200).
    pub limit: Option<usize>,
    /// Continue from this cursor ([`Page::next_cursor`] of the previous page: the id of the
    /// run that starts the next page).
    pub cursor: Option<String>,
}

impl RunFilter {
    /// The effective page size.
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 200)
    }
}

/// The error for a [`RunFilter::cursor`] that names no run of the tenant (for store
/// implementations). A cursor is the id of the first run of the next page, so it tells a
/// tenant nothing about other tenants' runs.
pub fn bad_cursor(cursor: &str) -> crate::ExportError {
    crate::ExportError::invalid("cursor", format!("{cursor:?} is not a cursor of this tenant's runs"))
}

/// One page of runs, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The runs.
    pub runs: Vec<Run>,
    /// Cursor of the next page, if any.
    pub next_cursor: Option<String>,
    /// Runs of this page whose stored record could not be read, reported apart so that one
    /// damaged record does not hide the others.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<UnreadableRun>,
}

/// A run whose stored record does not parse (see [`Page::unreadable`]). The store sets such a
/// run aside (`failed`, no lease, no expiry) when a claim, take-over or sweep meets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnreadableRun {
    /// Its id.
    pub run_id: String,
    /// What is wrong, with the store's location.
    pub reason: String,
}

/// A persisted event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    /// Increasing per run, from 1.
    pub id: u64,
    /// When it was recorded.
    pub at: Timestamp,
    /// The event.
    #[serde(flatten)]
    pub event: RunEvent,
}

/// Where runs, their events and idempotency keys live.
///
/// # Contract
/// - Every tenant-facing call takes the tenant and never returns, lists or changes another
///   tenant's run: a foreign run id is [`crate::ExportError::NotFound`].
/// - `create` is atomic with its idempotency check: same tenant + live key + same request hash
///   → `Existing` (nothing stored); same key + different request → `Conflict`.
/// - `claim_next` atomically moves the queued run with the lowest `(rank, submission order)`
///   to `running`, sets `startedAt` (first attempt), increments `attempts` and gives it the
///   caller's lease. Two callers never claim the same run.
/// - Fencing: `save`, `finish` and `append_events` change a run only when the lease they carry
///   is the run's current lease (both absent counts as equal); otherwise they fail with
///   [`lease_lost`] and change nothing. A run that leaves `running` loses its lease.
/// - `reclaim_expired` atomically gives one `running` run whose lease lapsed (or that has
///   none) the caller's lease; the old holder's writes fail from then on.
/// - Event ids increase by one per run, from 1; `append_events` stores all of its events or
///   none of them.
/// - `finish` and `fail_if_queued` change the status and append the terminal event in one
///   step: a run whose status is final always has its terminal event.
/// - A final state is final: `save` or `finish` of a `succeeded` or `failed` run to anything but
///   `expired` is refused and changes nothing (so a run has exactly one terminal event).
/// - `list` is newest first. A run whose record does not parse is listed in
///   [`Page::unreadable`], not an error for the whole page; claims, take-overs and expiry
///   sweeps set such a run aside (`failed`, no lease) and go on to the next.
///
/// Run [`crate::conformance::store_suite`] against any implementation.
#[async_trait]
pub trait RunStore: Debug + Send + Sync + 'static {
    /// Stores a new run (or returns the one its idempotency key names).
    async fn create(&self, new: NewRun, now: Timestamp) -> Result<Created>;
    /// One run of `tenant`.
    async fn get(&self, tenant: &TenantId, run_id: &RunId) -> Result<Run>;
    /// Runs of `tenant`, newest first.
    async fn list(&self, tenant: &TenantId, filter: &RunFilter) -> Result<Page>;
    /// Claims the next queued run, if any, under `lease` (never one of rank [`LOCAL_RANK`]).
    async fn claim_next(&self, now: Timestamp, lease: &Lease) -> Result<Option<ClaimedRun>>;
    /// Claims one specific run under `lease` if it is still queued (`None` otherwise).
    async fn claim_run(&self, run_id: &RunId, now: Timestamp, lease: &Lease) -> Result<Option<ClaimedRun>>;
    /// Moves the lapse of `lease` on a running run to `lease.lease_until`; [`lease_lost`] when
    /// the run is no longer running under that lease. Returns whether a cancel was requested
    /// ([`RunStore::request_cancel`]): the holder then cancels the run.
    async fn renew_lease(&self, run_id: &RunId, lease: &Lease) -> Result<bool>;
    /// Asks whoever holds a running run of `tenant` to cancel it (at its next renewal): `true`
    /// when the run is running, `false` when it is not (nothing changes).
    async fn request_cancel(&self, tenant: &TenantId, run_id: &RunId) -> Result<bool>;
    /// Takes over one `running` run whose lease lapsed at or before `now` (or that has none):
    /// it now holds `lease`, and is returned so the caller can requeue or fail it. `None` when
    /// no lease has lapsed.
    async fn reclaim_expired(&self, now: Timestamp, lease: &Lease) -> Result<Option<Run>>;
    /// Saves the mutable parts of a run (status, progress, outputs, errors, times, attempts),
    /// fenced by `run.lease`.
    async fn save(&self, run: &Run) -> Result<()>;
    /// Saves a run's final record and appends its terminal event (`completed` or `failed`) as
    /// one atomic operation: no reader sees the final status without the event. Returns the
    /// event's id.
    async fn finish(&self, run: &Run, at: Timestamp, terminal: &RunEvent) -> Result<u64>;
    /// Moves a still-queued run of `tenant` to `failed` with `error` and appends its `failed`
    /// event, atomically; `None` if it is not queued.
    async fn fail_if_queued(
        &self,
        tenant: &TenantId,
        run_id: &RunId,
        error: crate::model::RunError,
        now: Timestamp,
    ) -> Result<Option<Run>>;
    /// Appends events in order, fenced by `lease` (the writer's lease, `None` for a run that is
    /// not running), all or none: one transaction in the built-in stores. Returns the id of the
    /// last one (0 for no events, which touches nothing). The engine hands over whatever
    /// accumulated while the previous batch was written, so a run of many artifacts costs a
    /// few transactions rather than one per event.
    async fn append_events(
        &self,
        run_id: &RunId,
        lease: Option<&Lease>,
        at: Timestamp,
        events: &[RunEvent],
    ) -> Result<u64>;
    /// Appends one event ([`RunStore::append_events`] of one); returns its id.
    async fn append_event(
        &self,
        run_id: &RunId,
        lease: Option<&Lease>,
        at: Timestamp,
        event: &RunEvent,
    ) -> Result<u64> {
        self.append_events(run_id, lease, at, std::slice::from_ref(event)).await
    }
    /// Events of a run of `tenant` with id > `after`, oldest first, at most `limit`.
    async fn events(&self, tenant: &TenantId, run_id: &RunId, after: u64, limit: usize) -> Result<Vec<StoredEvent>>;
    /// Succeeded or failed runs whose `expiresAt` is at or before `now`.
    async fn due_for_expiry(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>>;
    /// Runs in state `running` (on start-up: left by a process that died).
    async fn running(&self) -> Result<Vec<Run>>;
    /// Durations in seconds of the latest succeeded runs of a profile, newest first.
    async fn recent_durations(&self, profile_id: &ProfileId, limit: usize) -> Result<Vec<f64>>;
    /// Number of queued runs: of `tenant`, or of every tenant.
    async fn queued_count(&self, tenant: Option<&TenantId>) -> Result<u64>;
    /// Drops idempotency keys that lapsed before `now`; returns how many.
    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64>;
    /// The run an unexpired idempotency key of `tenant` names, with the hash of the request it
    /// was made for. The engine asks before applying its queue limits, so a client retrying
    /// an accepted request gets its run, not a 429 (`create` stays the authority: two submits
    /// at once are still settled there). The default knows no keys (the limits then apply
    /// first, as before this method existed).
    async fn find_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<(Sha256Digest, Run)>> {
        let _ = (tenant, key, now);
        Ok(None)
    }
    /// Stores a distribution record (replacing one with the same id and tenant).
    async fn put_distribution(&self, record: &crate::model::DistributionRecord) -> Result<()>;
    /// One distribution record of `tenant` ([`crate::ExportError::NotFound`] for another
    /// tenant's).
    async fn get_distribution(&self, tenant: &TenantId, id: &str) -> Result<crate::model::DistributionRecord>;
    /// Distribution records of `tenant` (of one run, when given), newest first.
    async fn list_distributions(
        &self,
        tenant: &TenantId,
        run_id: Option<&RunId>,
    ) -> Result<Vec<crate::model::DistributionRecord>>;
    /// Stores a new revision of a saved profile. Revisions never change: storing a revision
    /// that exists (`tenant`, `name`, `revision`) is [`crate::ExportError::Conflict`] and
    /// changes nothing.
    async fn put_profile(&self, profile: &SavedProfile) -> Result<()>;
    /// A saved profile of `tenant` by name: revision `revision`, or the latest when `None`
    /// ([`crate::ExportError::NotFound`] for another tenant's).
    async fn get_profile(&self, tenant: &TenantId, name: &str, revision: Option<u32>) -> Result<SavedProfile>;
    /// The latest revision of each saved profile of `tenant`, by name.
    async fn list_profiles(&self, tenant: &TenantId) -> Result<Vec<SavedProfile>>;
    /// Retention sweeps of the processes sharing this store take turns: `Some(guard)` when
    /// the caller may sweep now (holding the guard until it is done), `None` while another
    /// process sweeps. The default (always `Some`) suits stores one process owns; a shared
    /// store overrides it (PostgreSQL: a session advisory lock).
    async fn sweep_guard(&self) -> Result<Option<SweepGuard>> {
        Ok(Some(SweepGuard::local()))
    }
}

/// Held while a retention sweep runs ([`RunStore::sweep_guard`]); dropping it lets another
/// process sweep.
pub struct SweepGuard(Option<Box<dyn std::any::Any + Send>>);

impl SweepGuard {
    /// A guard that holds nothing (a store one process owns).
    pub fn local() -> Self {
        Self(None)
    }
    /// A guard that keeps `held` (a lock, a connection holding one) until dropped.
    pub fn holding(held: impl std::any::Any + Send) -> Self {
        Self(Some(Box::new(held)))
    }
}

impl Debug for SweepGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SweepGuard").field(&self.0.is_some()).finish()
    }
}

/// The error a store returns when a write carries a lease that is not the run's current one:
/// another worker took the run over, or it left `running` ([`crate::ExportError::Conflict`]).
pub fn lease_lost(run_id: &RunId) -> crate::ExportError {
    crate::ExportError::Conflict { what: format!("run {run_id}"), reason: LEASE_LOST.into() }
}

const LEASE_LOST: &str = "the writer's lease is not the run's current lease (another worker took the run over)";

/// True for the error of [`lease_lost`].
pub fn is_lease_lost(e: &crate::ExportError) -> bool {
    matches!(e, crate::ExportError::Conflict { reason, .. } if reason == LEASE_LOST)
}

/// Fencing for store implementations: `Ok` when the writer's lease id is the stored one
/// (both absent counts as equal).
pub fn check_lease(run_id: &RunId, stored: Option<&str>, writer: Option<&Lease>) -> Result<()> {
    if stored == writer.map(|l| l.lease_id.as_str()) {
        Ok(())
    } else {
        Err(lease_lost(run_id))
    }
}

/// A stored run record, parsed; one that does not parse is `ERR_EXPORT_STORE_INVALID` naming
/// the store and the run (for store implementations, which then set the run aside).
pub fn read_run(store: &str, run_id: &str, record: &str) -> Result<Run> {
    serde_json::from_str(record).map_err(|e| unreadable(store, run_id, "record", e))
}

/// A stored run request, parsed, as [`read_run`].
pub fn read_request(store: &str, run_id: &str, request: &str) -> Result<RunRequest> {
    serde_json::from_str(request).map_err(|e| unreadable(store, run_id, "request", e))
}

fn unreadable(store: &str, run_id: &str, what: &str, e: serde_json::Error) -> crate::ExportError {
    crate::ExportError::StoreInvalid { path: store.to_owned(), reason: format!("run {run_id}: unreadable {what}: {e}") }
}

/// The error a store returns for an absent saved profile (for store implementations).
pub fn profile_not_found(tenant: &TenantId, name: &str, revision: Option<u32>) -> crate::ExportError {
    crate::ExportError::ProfileNotFound {
        profile: match revision {
            Some(r) => format!("{} revision {r}", crate::saved::profile_id(tenant, name)),
            None => crate::saved::profile_id(tenant, name),
        },
    }
}

/// The error a store returns for a saved-profile revision that exists (for store
/// implementations).
pub fn profile_conflict(p: &SavedProfile) -> crate::ExportError {
    crate::ExportError::Conflict {
        what: format!("profile {} revision {}", p.id, p.revision),
        reason: "that revision exists already and revisions never change".into(),
    }
}

/// Refuses to move a run out of a final state: `succeeded` and `failed` may only become
/// `expired`, `expired` nothing. (A run recovered as interrupted stays failed even if its
/// process was alive after all.) Store implementations call it before every status write.
pub fn check_transition(run_id: &RunId, current: &str, next: RunStatus) -> Result<()> {
    let allowed = match current {
        "succeeded" | "failed" => next == RunStatus::Expired || next.as_str() == current,
        "expired" => next == RunStatus::Expired,
        _ => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(crate::ExportError::invalid(
            "runId",
            format!("run {run_id} is already {current}: a final state is final (not {next})"),
        ))
    }
}

/// Seconds between two timestamps (0 when reversed): a run's duration for
/// [`RunStore::recent_durations`].
pub fn seconds_between(a: Timestamp, b: Timestamp) -> f64 {
    let d = b.as_offset_date_time() - a.as_offset_date_time();
    d.as_seconds_f64().max(0.0)
}
