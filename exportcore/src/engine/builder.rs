//! [`ExporterBuilder`]: every engine setting, with defaults an embedder can keep.

use super::clock::{Clock, SystemClock};
use super::{EvidenceResolver, Exporter, Inner, SignerResolver};
use crate::error::{ExportError, Result};
use crate::evidence::EvidenceSource;
use crate::id::ProfileId;
use crate::manifest::TimeAnchor;
use crate::model::Limits;
use crate::profile::Profiles;
use crate::sink::Sink;
use crate::store::{MemoryStore, RunStore};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Builds an [`Exporter`]. Profiles, a sink and an evidence source are required.
#[derive(Clone)]
#[must_use]
pub struct ExporterBuilder {
    pub(super) profiles: Profiles,
    sink: Option<Arc<dyn Sink>>,
    pub(super) store: Arc<dyn RunStore>,
    evidence: Option<EvidenceResolver>,
    pub(super) signers: Option<SignerResolver>,
    pub(super) distributors: Vec<Arc<dyn crate::run::Distributor>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) limits: Limits,
    pub(super) concurrency: usize,
    pub(super) max_queued: u64,
    pub(super) max_queued_per_tenant: u64,
    pub(super) default_timeout: Duration,
    pub(super) profile_timeouts: HashMap<ProfileId, Duration>,
    pub(super) idempotency_ttl: Duration,
    pub(super) priority_aging: Duration,
    pub(super) max_attempts: u32,
    pub(super) retry_base: Duration,
    pub(super) per_run_prefix: bool,
    pub(super) staging_dir: Option<PathBuf>,
    pub(super) pinned_time: Option<TimeAnchor>,
    pub(super) poll_interval: Duration,
    pub(super) sweep_interval: Duration,
    pub(super) lease_ttl: Duration,
}

impl std::fmt::Debug for ExporterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterBuilder").field("concurrency", &self.concurrency).field("store", &self.store).finish()
    }
}

impl Default for ExporterBuilder {
    fn default() -> Self {
        Self {
            profiles: Profiles::new(),
            sink: None,
            store: Arc::new(MemoryStore::new()),
            evidence: None,
            signers: None,
            distributors: Vec::new(),
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
            concurrency: 2,
            max_queued: 1000,
            max_queued_per_tenant: u64::MAX,
            default_timeout: Limits::default().default_timeout,
            profile_timeouts: HashMap::new(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            priority_aging: Duration::from_secs(60),
            max_attempts: 3,
            retry_base: Duration::from_millis(500),
            per_run_prefix: true,
            staging_dir: None,
            pinned_time: None,
            poll_interval: Duration::from_millis(500),
            sweep_interval: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(30),
        }
    }
}

impl ExporterBuilder {
    /// The profiles runs may name.
    pub fn profiles(mut self, profiles: Profiles) -> Self {
        self.profiles = profiles;
        self
    }
    /// Where artifacts go.
    pub fn sink(self, sink: impl Sink) -> Self {
        self.sink_arc(Arc::new(sink))
    }
    /// Where artifacts go (shared).
    pub fn sink_arc(mut self, sink: Arc<dyn Sink>) -> Self {
        self.sink = Some(sink);
        self
    }
    /// Where runs are kept (default: a [`MemoryStore`]).
    pub fn store(self, store: impl RunStore) -> Self {
        self.store_arc(Arc::new(store))
    }
    /// Where runs are kept (shared).
    pub fn store_arc(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = store;
        self
    }
    /// One evidence source for every tenant.
    pub fn evidence(mut self, source: impl EvidenceSource) -> Self {
        let source: Arc<dyn EvidenceSource> = Arc::new(source);
        self.evidence = Some(Arc::new(move |_, _| Ok(Arc::clone(&source))));
        self
    }
    /// Evidence per tenant and project.
    pub fn evidence_resolver(mut self, resolver: EvidenceResolver) -> Self {
        self.evidence = Some(resolver);
        self
    }
    /// Resolves `keyRef`s of signing requests (called with the run's tenant at submission and
    /// again when the run starts).
    pub fn signer_resolver(mut self, resolver: SignerResolver) -> Self {
        self.signers = Some(resolver);
        self
    }
    /// Delivers runs whose request names a `distribution` this distributor handles (an OCI
    /// registry, object storage); its records are kept in the store.
    pub fn distributor(mut self, d: Arc<dyn crate::run::Distributor>) -> Self {
        self.distributors.push(d);
        self
    }
    /// The clock the engine records and compares times with (default: [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Request limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.default_timeout = limits.default_timeout;
        self.limits = limits;
        self
    }
    /// Runs executed at once (default 2).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Queued runs accepted before submissions get `ERR_EXPORT_RATE_LIMIT` (default 1000).
    pub fn max_queued(mut self, n: u64) -> Self {
        self.max_queued = n.max(1);
        self
    }
    /// The most queued runs one tenant may have (default: no limit but [`Self::max_queued`]):
    /// past it that tenant's submissions are refused (`ERR_EXPORT_RATE_LIMIT`, 429) while the
    /// others' go on, so no tenant fills the whole queue. A server of several tenants sets it
    /// (`exportctl serve --max-queued-per-tenant`, default 250).
    pub fn max_queued_per_tenant(mut self, n: u64) -> Self {
        self.max_queued_per_tenant = n.max(1);
        self
    }
    /// Timeout of runs whose request and profile set none (default 60 minutes).
    pub fn default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = d;
        self
    }
    /// Timeout of one profile's runs (a request's `timeoutSeconds` still wins).
    pub fn profile_timeout(mut self, profile_id: ProfileId, d: Duration) -> Self {
        self.profile_timeouts.insert(profile_id, d);
        self
    }
    /// How long idempotency keys live (default 24 hours).
    pub fn idempotency_ttl(mut self, d: Duration) -> Self {
        self.idempotency_ttl = d;
        self
    }
    /// Queue aging: a run of one priority class lower waits at most this much longer than
    /// one of a higher class submitted at the same time, so nothing starves (default 60 s).
    pub fn priority_aging(mut self, d: Duration) -> Self {
        self.priority_aging = d;
        self
    }
    /// Attempts per run for transient failures, and the first backoff (doubles, with jitter).
    pub fn retries(mut self, max_attempts: u32, base_delay: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.retry_base = base_delay;
        self
    }
    /// Publish each run under `runs/<run id>/` (default, see [`crate::RunId::sink_prefix`]) or
    /// at the sink root (one-shot CLIs).
    pub fn per_run_prefix(mut self, on: bool) -> Self {
        self.per_run_prefix = on;
        self
    }
    /// Where staging directories go (default: the system temp dir).
    pub fn staging_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.staging_dir = Some(dir.into());
        self
    }
    /// A pinned time for runs whose request has no `createdAt` (e.g. `SOURCE_DATE_EPOCH`).
    pub fn pinned_time(mut self, anchor: Option<TimeAnchor>) -> Self {
        self.pinned_time = anchor;
        self
    }
    /// How often idle workers look for work queued by other processes (default 500 ms).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    /// How often the retention sweep runs while started (default 60 s).
    pub fn sweep_interval(mut self, d: Duration) -> Self {
        self.sweep_interval = d;
        self
    }

    /// How long a worker's claim on a run lasts without a heartbeat (default 30 s, at least
    /// 1 s, at most a day: times past it overflow clocks and timers). The worker renews it every third of that; a worker that cannot renew in time
    /// stops the run without publishing more, and once the lease has lapsed any engine on the
    /// store requeues the run (or fails it `ERR_EXPORT_INTERRUPTED` when its attempts are
    /// spent). Shorter means faster failover after a crash, longer tolerates longer store
    /// outages.
    pub fn lease_ttl(mut self, d: Duration) -> Self {
        self.lease_ttl = d.clamp(Duration::from_secs(1), Duration::from_secs(86_400));
        self
    }

    /// The exporter.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming the missing part (sink, evidence).
    pub fn build(self) -> Result<Exporter> {
        let sink = self.sink.clone().ok_or_else(|| ExportError::invalid("sink", "an exporter needs a sink"))?;
        let evidence = self
            .evidence
            .clone()
            .ok_or_else(|| ExportError::invalid("evidence", "an exporter needs an evidence source"))?;
        let (events_tx, _) = tokio::sync::broadcast::channel(1024);
        Ok(Exporter {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(self.concurrency)),
                sink,
                evidence,
                cfg: self,
                wake: Notify::new(),
                events_tx,
                cancels: tokio::sync::Mutex::new(HashMap::new()),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExportError;

    #[test]
    fn build_names_what_is_missing() {
        let no_sink = ExporterBuilder::default().evidence(crate::MemoryEvidence::new()).build().unwrap_err();
        assert!(matches!(&no_sink, ExportError::RequestInvalid { field, .. } if field == "sink"), "{no_sink:?}");
        let no_ev = ExporterBuilder::default().sink(crate::InMemorySink::new()).build().unwrap_err();
        assert!(matches!(&no_ev, ExportError::RequestInvalid { field, .. } if field == "evidence"), "{no_ev:?}");
    }

    #[test]
    fn settings_are_clamped_to_usable_values() {
        let b = ExporterBuilder::default().concurrency(0).max_queued(0).retries(0, Duration::ZERO);
        assert_eq!((b.concurrency, b.max_queued, b.max_attempts), (1, 1, 1));
        // A lease so long it would overflow the clock (a panicking dispatcher) is a day.
        let b = ExporterBuilder::default().lease_ttl(Duration::MAX);
        assert_eq!(b.lease_ttl, Duration::from_secs(86_400));
        assert_eq!(ExporterBuilder::default().lease_ttl(Duration::ZERO).lease_ttl, Duration::from_secs(1));
    }
}
