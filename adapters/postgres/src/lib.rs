//! A PostgreSQL [`RunStore`]: runs, events, idempotency keys, distribution records and saved
//! profiles in one database that many export-center processes share.
//!
//! Built on `tokio-postgres` with a `deadpool-postgres` pool (decision 89): the async client
//! every Rust Postgres stack builds on, and a pool with no runtime of its own; `sqlx` would add
//! compile-time query checking against a live database, which this workspace's offline builds
//! cannot have.
//!
//! - Migrations are versioned (`exportcore_schema`), applied at [`PostgresStore::connect`] under
//!   an advisory lock, so nodes starting together migrate once; a database from a newer build is
//!   refused.
//! - Claims take the next queued run with `FOR UPDATE SKIP LOCKED` in priority, then submission
//!   order, in one statement: two nodes never claim the same run, and neither waits for the
//!   other.
//! - Leases (`lease_id`, `lease_until_ms` columns) fence every write of a worker; lapsed ones
//!   are taken over with `SKIP LOCKED`; cancel requests wait in a column for the holder's next
//!   renewal (see `docs/operations.md`, "PostgreSQL and several nodes").
//! - Retention sweeps of several nodes take turns under a session advisory lock held on a
//!   connection taken out of the pool (the lock goes with the connection).
//! - Every statement is prepared once per connection (deadpool's statement cache).
//! - Idempotency keys are a primary key: two nodes receiving the same key at once create one run.
//! - Every query names the tenant; another tenant's run, event, record or profile is
//!   "not found".
//! - The connection's password (from the URL or `PGPASSWORD`) never appears in errors or logs:
//!   the store is named `user@host:port/db`.
//!
//! ```no_run
//! # async fn demo() -> exportcore::Result<()> {
//! let store = exportcore_postgres::PostgresStore::connect("postgres://exports@127.0.0.1:5432/exports").await?;
//! let exporter = exportcore::engine::Exporter::builder()
//!     .store(store)
//!     .sink(exportcore::InMemorySink::new())
//!     .evidence(exportcore::MemoryEvidence::new())
//!     .build()?;
//! # let _ = exporter; Ok(()) }
//! ```

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use exportcore::saved::SavedProfile;
use exportcore::store::{
    check_lease, lease_lost, read_request, read_run, ClaimedRun, Created, NewRun, Page, RunFilter, RunStore,
    StoredEvent, SweepGuard, UnreadableRun,
};
use exportcore::{
    DistributionRecord, ExportError, Lease, ProfileId, Result, Run, RunError, RunEvent, RunId, RunStatus, Sha256Digest,
    TenantId, Timestamp,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;
use tokio_postgres::Row;

/// Forward migrations; entry `i` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    seq            BIGSERIAL PRIMARY KEY,
    run_id         TEXT NOT NULL UNIQUE,
    tenant         TEXT NOT NULL,
    project        TEXT,
    profile_id     TEXT NOT NULL,
    status         TEXT NOT NULL,
    rank           BIGINT NOT NULL,
    expires_ms     BIGINT,
    duration_s     DOUBLE PRECISION,
    lease_id       TEXT,
    lease_until_ms BIGINT,
    record         TEXT NOT NULL,
    request        TEXT NOT NULL
);
CREATE INDEX runs_queue   ON runs(rank, seq) WHERE status = 'queued';
CREATE INDEX runs_tenant  ON runs(tenant, seq);
CREATE INDEX runs_running ON runs(seq) WHERE status = 'running';
CREATE INDEX runs_profile ON runs(profile_id, seq) WHERE status = 'succeeded';
CREATE INDEX runs_expiry  ON runs(expires_ms) WHERE status IN ('succeeded', 'failed');
CREATE TABLE events (
    run_id TEXT NOT NULL,
    id     BIGINT NOT NULL,
    at     TEXT NOT NULL,
    event  TEXT NOT NULL,
    PRIMARY KEY (run_id, id)
);
CREATE TABLE idempotency (
    tenant       TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    expires_ms   BIGINT NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_expiry ON idempotency(expires_ms);
CREATE TABLE distributions (
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    record     TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX distributions_run ON distributions(tenant, run_id, created_ms);
CREATE TABLE profiles (
    tenant   TEXT NOT NULL,
    name     TEXT NOT NULL,
    revision INTEGER NOT NULL,
    record   TEXT NOT NULL,
    PRIMARY KEY (tenant, name, revision)
);
"#,
    r#"
ALTER TABLE runs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;
"#,
];

/// The schema version this build writes (the number of migrations it knows).
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// SQLSTATEs that say "try again": connection exceptions (class 08), operator intervention
/// (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now), too many
/// connections (53300), serialization failure and deadlock (40001, 40P01).
fn transient(sqlstate: &str) -> bool {
    // 57014: a statement ended by `statement_timeout` (waiting on a lock): try again.
    sqlstate.starts_with("08")
        || matches!(sqlstate, "57P01" | "57P02" | "57P03" | "57014" | "53300" | "40001" | "40P01")
}

/// The session advisory lock a retention sweep holds (see [`RunStore::sweep_guard`]).
const SWEEP_LOCK: i64 = 0x4558_4353_5745_4550; // "EXCSWEEP"

/// The advisory lock migrations hold (any constant unique to this schema).
const MIGRATION_LOCK: i64 = 0x4558_4331_0000_0001;

/// A run store in PostgreSQL. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    label: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("db", &self.label).finish()
    }
}

fn millis(t: Timestamp) -> i64 {
    (t.as_offset_date_time().unix_timestamp_nanos() / 1_000_000) as i64
}

fn not_found(run_id: &RunId) -> ExportError {
    ExportError::NotFound { path: format!("run {run_id}") }
}

/// `postgres://USER@HOST:PORT/DB` of a parsed configuration (never its password).
fn config_label(cfg: &tokio_postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    format!(
        "postgres://{}@{}:{}/{}",
        cfg.get_user().unwrap_or(""),
        host,
        cfg.get_ports().first().copied().unwrap_or(5432),
        cfg.get_dbname().unwrap_or("")
    )
}

fn json_err(label: &str, e: serde_json::Error) -> ExportError {
    ExportError::StoreInvalid { path: label.to_owned(), reason: format!("a stored record does not parse: {e}") }
}

/// How many unreadable queue heads one claim sets aside before it gives up (and is retried).
const MAX_SET_ASIDE: usize = 16;

fn write_run(run: &Run) -> String {
    serde_json::to_string(run).unwrap_or_default()
}

fn duration(run: &Run) -> Option<f64> {
    Some(exportcore::store::seconds_between(run.started_at?, run.finished_at?))
}

impl PostgresStore {
    /// How `url` is named in messages: `postgres://USER@HOST:PORT/DB`, read the way the
    /// connection reads it, so no part of a password (which may hold `?`, `#` or `/`) or of
    /// the query (`?password=`) is ever shown; `postgres://…` for a URL that does not parse.
    pub fn label_of(url: &str) -> String {
        url.parse::<tokio_postgres::Config>().map_or_else(|_| "postgres://…".to_owned(), |cfg| config_label(&cfg))
    }

    /// Connects to `url` (`postgres://USER[:PASS]@HOST:PORT/DB`; without a password in the URL,
    /// `PGPASSWORD` is used) and applies the migrations this build knows.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` for a malformed URL; `ERR_EXPORT_IO` when the server cannot
    /// be reached; `ERR_EXPORT_STORE_INVALID` for a database from a newer build.
    pub async fn connect(url: &str) -> Result<Self> {
        let mut cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            ExportError::invalid("--store", format!("not a postgres:// URL: {e}"))
        })?;
        if cfg.get_password().is_none() {
            if let Ok(p) = std::env::var("PGPASSWORD") {
                cfg.password(p);
            }
        }
        cfg.application_name("exportcore");
        // A server that vanishes mid-call (a half-open connection) is noticed in under a
        // minute, not after the TCP retransmission timeout; a statement stuck behind a lock
        // ends in one (the engine retries I/O errors until the run's lease deadline).
        cfg.keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(15))
            .keepalives_interval(std::time::Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(std::time::Duration::from_secs(45));
        if cfg.get_options().is_none() {
            cfg.options("-c statement_timeout=60000");
        }
        let label = config_label(&cfg);
        let mgr = Manager::from_config(cfg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(mgr)
            .max_size(16)
            .wait_timeout(Some(std::time::Duration::from_secs(30)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| ExportError::internal_caused("postgres store", "building the pool", e))?;
        let store = Self { pool, label };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations this build knows (under an advisory lock); returns how many were
    /// applied. [`PostgresStore::connect`] calls it.
    ///
    /// # Errors
    /// As [`PostgresStore::connect`].
    pub async fn migrate(&self) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        self.execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS exportcore_schema (version INTEGER NOT NULL)")
            .await
            .map_err(|e| self.err(e))?;
        let row = self.query_opt(&tx, "SELECT version FROM exportcore_schema", &[]).await?;
        let version = match row {
            Some(r) => r.get::<_, i32>(0) as usize,
            None => {
                self.execute(&tx, "INSERT INTO exportcore_schema (version) VALUES (0)", &[]).await?;
                0
            }
        };
        if version > MIGRATIONS.len() {
            return Err(ExportError::StoreInvalid {
                path: self.label.clone(),
                reason: format!(
                    "schema version {version} is newer than this build supports ({}); upgrade",
                    MIGRATIONS.len()
                ),
            });
        }
        for sql in &MIGRATIONS[version..] {
            tx.batch_execute(sql).await.map_err(|e| self.err(e))?;
        }
        let n = MIGRATIONS.len() as i32;
        self.execute(&tx, "UPDATE exportcore_schema SET version = $1", &[&n]).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(MIGRATIONS.len() - version)
    }

    /// The store's name without its password: `postgres://user@host:port/db`.
    pub fn label(&self) -> &str {
        &self.label
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| ExportError::io(&self.label, std::io::Error::other(format!("cannot reach the database: {e}"))))
    }

    /// A database error: a server's SQL error is the store's fault (`STORE_INVALID`); a lost
    /// connection is I/O (the caller may retry).
    fn err(&self, e: tokio_postgres::Error) -> ExportError {
        match e.as_db_error() {
            // The server going away or not there yet (connection exceptions, shutdown, start-up,
            // too many connections) and transaction conflicts pass: I/O, which callers retry.
            Some(db) if transient(db.code().code()) => {
                ExportError::io(&self.label, std::io::Error::other(format!("{}: {}", db.code().code(), db.message())))
            }
            Some(db) => ExportError::StoreInvalid {
                path: self.label.clone(),
                reason: format!("{}: {}", db.code().code(), db.message()),
            },
            None => ExportError::io(&self.label, std::io::Error::other(e.to_string())),
        }
    }

    /// Sets aside a run whose record or request does not parse (as `SqliteStore` does):
    /// `failed`, no lease, no expiry, so claims, take-overs and sweeps move past it. Its text
    /// stays for inspection; `get` keeps naming the problem and `list` reports it apart.
    async fn set_aside(&self, c: &impl GenericClient, seq: i64) -> Result<()> {
        self.execute(
            c,
            "UPDATE runs SET status = 'failed', lease_id = NULL, lease_until_ms = NULL, expires_ms = NULL,
             cancel_requested = false WHERE seq = $1",
            &[&seq],
        )
        .await?;
        Ok(())
    }

    /// The claim's statement parses each record as `jsonb` on the server: a queue head that is
    /// not JSON at all makes it fail. This finds such heads (parsing in Rust) and sets them
    /// aside; true when it set one aside.
    async fn set_aside_unparsable_heads(&self, run_id: Option<&RunId>) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        let rows = self
            .query(
                &tx,
                "SELECT seq, run_id, record, request FROM runs WHERE status = 'queued'
                   AND ($1::TEXT IS NULL OR run_id = $1) AND ($1::TEXT IS NOT NULL OR rank < 9223372036854775807)
                 ORDER BY rank, seq LIMIT 100 FOR UPDATE SKIP LOCKED",
                &[&run_id.map(|r| r.as_str())],
            )
            .await?;
        let mut found = false;
        for row in &rows {
            let id: &str = row.get(1);
            let bad = serde_json::from_str::<serde_json::Value>(row.get(2)).is_err()
                || read_request(&self.label, id, row.get(3)).is_err();
            if bad {
                self.set_aside(&tx, row.get(0)).await?;
                found = true;
            }
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(found)
    }

    /// [`Self::claim_once`], setting aside unreadable queue heads on the way (up to
    /// [`MAX_SET_ASIDE`]). A specific run that is unreadable is set aside and its error
    /// returned.
    async fn claim(&self, run_id: Option<&RunId>, now: Timestamp, lease: &Lease) -> Result<Option<ClaimedRun>> {
        for _ in 0..MAX_SET_ASIDE {
            let client = self.client().await?;
            match self.claim_once(&client, run_id, now, lease).await {
                Ok(Ok(claimed)) => return Ok(claimed),
                // Claimed, but its record or request does not parse: set it aside.
                Ok(Err((seq, err))) => {
                    self.set_aside(&client, seq).await?;
                    if run_id.is_some() {
                        return Err(err);
                    }
                }
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION) => {
                    if !self.set_aside_unparsable_heads(run_id).await? {
                        return Err(self.err(e));
                    }
                    if let Some(id) = run_id {
                        return Err(ExportError::StoreInvalid {
                            path: self.label.clone(),
                            reason: format!("run {id}: unreadable record (not JSON)"),
                        });
                    }
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        Err(ExportError::StoreInvalid {
            path: self.label.clone(),
            reason: format!("{MAX_SET_ASIDE} unreadable runs at the head of the queue were set aside; claim again"),
        })
    }

    /// One statement, one round trip: the queue head (or `run_id`) is locked with `SKIP
    /// LOCKED`, so concurrent claimers take different runs and never wait for each other, and
    /// updated in place (status, attempts, first start, lease). The inner error is a claimed
    /// run whose record or request does not parse (its `seq`, to set it aside).
    #[allow(clippy::type_complexity)]
    async fn claim_once(
        &self,
        client: &impl GenericClient,
        run_id: Option<&RunId>,
        now: Timestamp,
        lease: &Lease,
    ) -> std::result::Result<std::result::Result<Option<ClaimedRun>, (i64, ExportError)>, tokio_postgres::Error> {
        const SET: &str = "UPDATE runs SET status = 'running', lease_id = $1, lease_until_ms = $2,
             record = (record::jsonb || jsonb_build_object('status', 'running',
                 'attempts', coalesce((record::jsonb->>'attempts')::int, 0) + 1,
                 'startedAt', coalesce(nullif(record::jsonb->'startedAt', 'null'::jsonb), to_jsonb($3::text))))::text";
        let (lease_id, until, started) = (lease.lease_id.as_str(), millis(lease.lease_until), now.to_string());
        let wanted = run_id.map(RunId::as_str);
        let (sql, params): (String, Vec<&(dyn ToSql + Sync)>) = match &wanted {
            Some(id) => (
                format!(
                    "{SET} WHERE seq = (SELECT seq FROM runs WHERE status = 'queued' AND run_id = $4
                     FOR UPDATE SKIP LOCKED) RETURNING seq, run_id, record, request"
                ),
                vec![&lease_id, &until, &started, id],
            ),
            None => (
                format!(
                    "{SET} WHERE seq = (SELECT seq FROM runs WHERE status = 'queued' AND rank < 9223372036854775807
                     ORDER BY rank, seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING seq, run_id, record, request"
                ),
                vec![&lease_id, &until, &started],
            ),
        };
        let st = client.prepare_cached(&sql).await?;
        let Some(row) = client.query_opt(&st, &params).await? else { return Ok(Ok(None)) };
        let id: &str = row.get(1);
        let parsed =
            read_run(&self.label, id, row.get(2)).and_then(|run| Ok((run, read_request(&self.label, id, row.get(3))?)));
        Ok(match parsed {
            Ok((mut run, request)) => {
                run.lease = Some(lease.clone());
                Ok(Some(ClaimedRun { run, request }))
            }
            Err(e) => Err((row.get(0), e)),
        })
    }

    /// Writes the mutable parts of `run` inside `tx`, fenced by its lease, refusing to leave a
    /// final state.
    async fn save_in(&self, tx: &impl GenericClient, run: &Run) -> Result<()> {
        let row = self
            .query_opt(tx, "SELECT status, lease_id FROM runs WHERE run_id = $1 FOR UPDATE", &[&run.run_id.as_str()])
            .await?;
        let row = row.ok_or_else(|| not_found(&run.run_id))?;
        check_lease(&run.run_id, row.get::<_, Option<&str>>(1), run.lease.as_ref())?;
        exportcore::store::check_transition(&run.run_id, row.get::<_, &str>(0), run.status)?;
        // A run that leaves `running` drops its lease; a running one keeps its (renewed) lapse.
        self.execute(
            tx,
            "UPDATE runs SET status = $1, expires_ms = $2, duration_s = $3, record = $4,
             lease_id = CASE WHEN $1 = 'running' THEN lease_id END,
             lease_until_ms = CASE WHEN $1 = 'running' THEN lease_until_ms END,
             cancel_requested = CASE WHEN $1 IN ('queued', 'running') THEN cancel_requested ELSE false END
             WHERE run_id = $5",
            &[&run.status.as_str(), &run.expires_at.map(millis), &duration(run), &write_run(run), &run.run_id.as_str()],
        )
        .await?;
        Ok(())
    }

    /// Appends an event inside `tx`, fenced by `lease` (the run's row lock orders concurrent
    /// appends).
    async fn append_in(
        &self,
        tx: &impl GenericClient,
        run_id: &RunId,
        lease: Option<&Lease>,
        at: Timestamp,
        events: &[RunEvent],
    ) -> Result<u64> {
        let row =
            self.query_opt(tx, "SELECT lease_id FROM runs WHERE run_id = $1 FOR UPDATE", &[&run_id.as_str()]).await?;
        let row = row.ok_or_else(|| not_found(run_id))?;
        check_lease(run_id, row.get::<_, Option<&str>>(0), lease)?;
        // The next ids and the insert in one statement, one round trip for the whole batch (the
        // run's row lock orders appends).
        let bodies: Vec<String> = events.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect();
        let sql = "WITH last AS (SELECT coalesce(max(id), 0) AS id FROM events WHERE run_id = $1)
                   INSERT INTO events (run_id, id, at, event)
                   SELECT $1, last.id + b.n, $2, b.body FROM last, unnest($3::text[]) WITH ORDINALITY AS b(body, n)
                   RETURNING id";
        let rows = self.query(tx, sql, &[&run_id.as_str(), &at.to_string(), &bodies]).await?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0)).max().unwrap_or(0) as u64)
    }

    /// `sql` prepared once per connection (deadpool's statement cache: one round trip per call
    /// instead of a parse round trip before each) and run on `c`; errors as [`Self::err`].
    async fn query(&self, c: &impl GenericClient, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let st = c.prepare_cached(sql).await.map_err(|e| self.err(e))?;
        c.query(&st, params).await.map_err(|e| self.err(e))
    }

    /// As [`Self::query`], at most one row.
    async fn query_opt(
        &self,
        c: &impl GenericClient,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let st = c.prepare_cached(sql).await.map_err(|e| self.err(e))?;
        c.query_opt(&st, params).await.map_err(|e| self.err(e))
    }

    /// As [`Self::query`], exactly one row.
    async fn query_one(&self, c: &impl GenericClient, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        let st = c.prepare_cached(sql).await.map_err(|e| self.err(e))?;
        c.query_one(&st, params).await.map_err(|e| self.err(e))
    }

    /// As [`Self::query`], for a statement's row count.
    async fn execute(&self, c: &impl GenericClient, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let st = c.prepare_cached(sql).await.map_err(|e| self.err(e))?;
        c.execute(&st, params).await.map_err(|e| self.err(e))
    }

    async fn records<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<T>> {
        let client = self.client().await?;
        let rows = self.query(&client, sql, params).await?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get::<_, &str>(0))
                    .map_err(|e| ExportError::StoreInvalid { path: self.label.clone(), reason: format!("{what}: {e}") })
            })
            .collect()
    }
}

#[async_trait]
impl RunStore for PostgresStore {
    async fn create(&self, new: NewRun, now: Timestamp) -> Result<Created> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        let tenant = new.run.tenant.as_str();
        if let Some(k) = &new.idempotency {
            // The key is the primary key: of two nodes inserting it at once, one waits for the
            // other's commit and then finds the key taken. A lapsed key is taken over.
            let hash = new.request_hash.to_hex();
            let take = "INSERT INTO idempotency (tenant, key, request_hash, run_id, expires_ms)
                        VALUES ($1, $2, $3, $4, $5)
                        ON CONFLICT (tenant, key) DO UPDATE
                          SET request_hash = EXCLUDED.request_hash, run_id = EXCLUDED.run_id,
                              expires_ms = EXCLUDED.expires_ms
                          WHERE idempotency.expires_ms <= $6
                        RETURNING run_id";
            let (run_id, expires) = (new.run.run_id.as_str(), millis(k.expires_at));
            let owned = self.query_opt(&tx, take, &[&tenant, &k.key, &hash, &run_id, &expires, &millis(now)]).await?;
            if owned.is_none() {
                let held = "SELECT i.request_hash, i.run_id, r.record
                            FROM idempotency i LEFT JOIN runs r ON r.run_id = i.run_id
                            WHERE i.tenant = $1 AND i.key = $2";
                let row = self.query_one(&tx, held, &[&tenant, &k.key]).await?;
                let (stored_hash, run_id, record): (String, String, Option<String>) =
                    (row.get(0), row.get(1), row.get(2));
                if stored_hash != hash {
                    return Err(ExportError::Conflict {
                        what: "Idempotency-Key".into(),
                        reason: format!("key {:?} was used for a different request (run {run_id})", k.key),
                    });
                }
                match record {
                    Some(record) => return Ok(Created::Existing(read_run(&self.label, &run_id, &record)?)),
                    None => {
                        self.execute(
                            &tx,
                            "UPDATE idempotency SET run_id = $3, expires_ms = $4 WHERE tenant = $1 AND key = $2",
                            &[&tenant, &k.key, &new.run.run_id.as_str(), &millis(k.expires_at)],
                        )
                        .await?;
                    }
                }
            }
        }
        let request = serde_json::to_string(&new.request).map_err(|e| json_err(&self.label, e))?;
        self.execute(
            &tx,
            "INSERT INTO runs (run_id, tenant, project, profile_id, status, rank, expires_ms, record, request)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &new.run.run_id.as_str(),
                &tenant,
                &new.run.project,
                &new.run.profile_id.as_str(),
                &new.run.status.as_str(),
                &new.rank,
                &new.run.expires_at.map(millis),
                &write_run(&new.run),
                &request,
            ],
        )
        .await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(Created::New(new.run))
    }

    async fn get(&self, tenant: &TenantId, run_id: &RunId) -> Result<Run> {
        let client = self.client().await?;
        let row = self
            .query_opt(
                &client,
                "SELECT record FROM runs WHERE run_id = $1 AND tenant = $2",
                &[&run_id.as_str(), &tenant.as_str()],
            )
            .await?;
        read_run(&self.label, run_id.as_str(), row.ok_or_else(|| not_found(run_id))?.get(0))
    }

    async fn list(&self, tenant: &TenantId, filter: &RunFilter) -> Result<Page> {
        let limit = filter.page_size();
        let client = self.client().await?;
        let end: i64 = match &filter.cursor {
            Some(c) => self
                .query_opt(&client, "SELECT seq FROM runs WHERE run_id = $1 AND tenant = $2", &[c, &tenant.as_str()])
                .await?
                .ok_or_else(|| exportcore::store::bad_cursor(c))?
                .get(0),
            None => i64::MAX,
        };
        let rows = self
            .query(
                &client,
                "SELECT run_id, record FROM runs WHERE tenant = $1 AND seq <= $2
                   AND ($3::TEXT IS NULL OR status = $3) AND ($4::TEXT IS NULL OR profile_id = $4)
                   AND ($5::TEXT IS NULL OR project = $5)
                 ORDER BY seq DESC LIMIT $6",
                &[
                    &tenant.as_str(),
                    &end,
                    &filter.status.map(|s| s.as_str()),
                    &filter.profile_id.as_ref().map(|p| p.as_str()),
                    &filter.project,
                    &(limit as i64 + 1),
                ],
            )
            .await?;
        let mut page = Page::default();
        for row in rows {
            let run_id: String = row.get(0);
            if page.runs.len() + page.unreadable.len() == limit {
                page.next_cursor = Some(run_id);
                break;
            }
            match read_run(&self.label, &run_id, row.get(1)) {
                Ok(run) => page.runs.push(run),
                Err(e) => page.unreadable.push(UnreadableRun { run_id, reason: e.report() }),
            }
        }
        Ok(page)
    }

    async fn claim_next(&self, now: Timestamp, lease: &Lease) -> Result<Option<ClaimedRun>> {
        self.claim(None, now, lease).await
    }

    async fn claim_run(&self, run_id: &RunId, now: Timestamp, lease: &Lease) -> Result<Option<ClaimedRun>> {
        self.claim(Some(run_id), now, lease).await
    }

    async fn renew_lease(&self, run_id: &RunId, lease: &Lease) -> Result<bool> {
        let client = self.client().await?;
        let row = self
            .query_opt(
                &client,
                "UPDATE runs SET lease_until_ms = $1 WHERE run_id = $2 AND status = 'running' AND lease_id = $3
                         RETURNING cancel_requested",
                &[&millis(lease.lease_until), &run_id.as_str(), &lease.lease_id.as_str()],
            )
            .await?;
        row.map(|r| r.get::<_, bool>(0)).ok_or_else(|| lease_lost(run_id))
    }

    async fn request_cancel(&self, tenant: &TenantId, run_id: &RunId) -> Result<bool> {
        let client = self.client().await?;
        // One statement: the run's row (tenant in the filter) and whether it was running.
        let row = self
            .query_opt(
                &client,
                "WITH hit AS (UPDATE runs SET cancel_requested = true
                                      WHERE run_id = $1 AND tenant = $2 AND status = 'running' RETURNING 1)
                         SELECT EXISTS (SELECT 1 FROM hit) FROM runs WHERE run_id = $1 AND tenant = $2",
                &[&run_id.as_str(), &tenant.as_str()],
            )
            .await?;
        row.map(|r| r.get::<_, bool>(0)).ok_or_else(|| not_found(run_id))
    }

    async fn reclaim_expired(&self, now: Timestamp, lease: &Lease) -> Result<Option<Run>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        let (row, mut run) = loop {
            let row = self
                .query_opt(
                    &tx,
                    "SELECT seq, run_id, record FROM runs WHERE status = 'running'
                     AND (lease_until_ms IS NULL OR lease_until_ms <= $1) ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
                    &[&millis(now)],
                )
                .await?;
            let Some(row) = row else {
                tx.commit().await.map_err(|e| self.err(e))?;
                return Ok(None);
            };
            match read_run(&self.label, row.get(1), row.get(2)) {
                Ok(run) => break (row, run),
                Err(_) => self.set_aside(&tx, row.get(0)).await?,
            }
        };
        self.execute(
            &tx,
            "UPDATE runs SET lease_id = $1, lease_until_ms = $2 WHERE seq = $3",
            &[&lease.lease_id.as_str(), &millis(lease.lease_until), &row.get::<_, i64>(0)],
        )
        .await?;
        run.lease = Some(lease.clone());
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(Some(run))
    }

    async fn save(&self, run: &Run) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        self.save_in(&tx, run).await?;
        tx.commit().await.map_err(|e| self.err(e))
    }

    async fn finish(&self, run: &Run, at: Timestamp, terminal: &RunEvent) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        self.save_in(&tx, run).await?;
        let id = self.append_in(&tx, &run.run_id, None, at, std::slice::from_ref(terminal)).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(id)
    }

    async fn fail_if_queued(
        &self,
        tenant: &TenantId,
        run_id: &RunId,
        error: RunError,
        now: Timestamp,
    ) -> Result<Option<Run>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        let row = self
            .query_opt(
                &tx,
                "SELECT status, record FROM runs WHERE run_id = $1 AND tenant = $2 FOR UPDATE",
                &[&run_id.as_str(), &tenant.as_str()],
            )
            .await?;
        let row = row.ok_or_else(|| not_found(run_id))?;
        if row.get::<_, &str>(0) != "queued" {
            return Ok(None);
        }
        let mut run = read_run(&self.label, run_id.as_str(), row.get(1))?;
        run.status = RunStatus::Failed;
        run.finished_at = Some(now);
        run.errors.push(error.clone());
        self.save_in(&tx, &run).await?;
        let failed = RunEvent::Failed { run_id: run_id.clone(), code: error.code, message: error.message };
        self.append_in(&tx, run_id, None, now, std::slice::from_ref(&failed)).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(Some(run))
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        let id = self.append_in(&tx, run_id, lease, at, events).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(id)
    }

    async fn events(&self, tenant: &TenantId, run_id: &RunId, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let client = self.client().await?;
        // One statement, tenant in the join: another tenant's run has no events and no row.
        let rows = self
            .query(
                &client,
                "SELECT e.id, e.at, e.event FROM runs r LEFT JOIN events e ON e.run_id = r.run_id AND e.id > $3
                 WHERE r.run_id = $1 AND r.tenant = $2 ORDER BY e.id LIMIT $4",
                &[&run_id.as_str(), &tenant.as_str(), &(after as i64), &(limit.max(1) as i64)],
            )
            .await?;
        if rows.is_empty() {
            return Err(not_found(run_id));
        }
        let mut out = Vec::new();
        for row in rows {
            let Some(id) = row.get::<_, Option<i64>>(0) else { continue };
            let at: String = row.get(1);
            out.push(StoredEvent {
                id: id as u64,
                at: Timestamp::parse(&at)
                    .map_err(|reason| ExportError::StoreInvalid { path: self.label.clone(), reason })?,
                event: serde_json::from_str(row.get::<_, &str>(2)).map_err(|e| json_err(&self.label, e))?,
            });
        }
        Ok(out)
    }

    async fn due_for_expiry(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        let client = self.client().await?;
        let rows = self
            .query(
                &client,
                "SELECT seq, run_id, record FROM runs WHERE status IN ('succeeded', 'failed') AND expires_ms <= $1
                 ORDER BY seq LIMIT $2",
                &[&millis(now), &(limit as i64)],
            )
            .await?;
        let mut due = Vec::new();
        for row in &rows {
            match read_run(&self.label, row.get(1), row.get(2)) {
                Ok(run) => due.push(run),
                Err(_) => self.set_aside(&client, row.get(0)).await?,
            }
        }
        Ok(due)
    }

    async fn running(&self) -> Result<Vec<Run>> {
        let client = self.client().await?;
        let rows =
            self.query(&client, "SELECT run_id, record FROM runs WHERE status = 'running' ORDER BY seq", &[]).await?;
        // Unreadable ones are set aside by the next take-over (`reclaim_expired`).
        Ok(rows.iter().filter_map(|r| read_run(&self.label, r.get(0), r.get(1)).ok()).collect())
    }

    async fn recent_durations(&self, profile_id: &ProfileId, limit: usize) -> Result<Vec<f64>> {
        let client = self.client().await?;
        let rows = self
            .query(
                &client,
                "SELECT duration_s FROM runs WHERE profile_id = $1 AND status = 'succeeded' AND duration_s IS NOT NULL
                 ORDER BY seq DESC LIMIT $2",
                &[&profile_id.as_str(), &(limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn queued_count(&self, tenant: Option<&TenantId>) -> Result<u64> {
        let client = self.client().await?;
        let sql = "SELECT count(*) FROM runs WHERE status = 'queued' AND ($1::TEXT IS NULL OR tenant = $1)";
        let row = self.query_one(&client, sql, &[&tenant.map(|t| t.as_str())]).await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn find_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<(Sha256Digest, Run)>> {
        let client = self.client().await?;
        let row = self
            .query_opt(
                &client,
                "SELECT i.request_hash, i.run_id, r.record FROM idempotency i JOIN runs r ON r.run_id = i.run_id
                 WHERE i.tenant = $1 AND i.key = $2 AND i.expires_ms > $3",
                &[&tenant.as_str(), &key, &millis(now)],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (hash, run_id, record): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let hash = hash.parse().map_err(|_| {
            ExportError::internal(
                "postgres",
                format!("{}: idempotency key of run {run_id}: a malformed hash", self.label),
            )
        })?;
        Ok(Some((hash, read_run(&self.label, &run_id, &record)?)))
    }

    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64> {
        let client = self.client().await?;
        self.execute(&client, "DELETE FROM idempotency WHERE expires_ms <= $1", &[&millis(now)]).await
    }

    async fn put_distribution(&self, record: &DistributionRecord) -> Result<()> {
        let json = serde_json::to_string(record)
            .map_err(|e| ExportError::internal_caused("postgres store", "serialising a record", e))?;
        let client = self.client().await?;
        self.execute(
            &client,
            "INSERT INTO distributions (tenant, id, run_id, created_ms, record) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant, id) DO UPDATE SET run_id = EXCLUDED.run_id, created_ms = EXCLUDED.created_ms,
                   record = EXCLUDED.record",
            &[&record.tenant.as_str(), &record.id, &record.run_id.as_str(), &millis(record.created_at), &json],
        )
        .await?;
        Ok(())
    }

    async fn get_distribution(&self, tenant: &TenantId, id: &str) -> Result<DistributionRecord> {
        let found: Vec<DistributionRecord> = self
            .records(
                "SELECT record FROM distributions WHERE tenant = $1 AND id = $2",
                &[&tenant.as_str(), &id],
                "a distribution record",
            )
            .await?;
        found.into_iter().next().ok_or_else(|| ExportError::NotFound { path: format!("distribution {id}") })
    }

    async fn list_distributions(&self, tenant: &TenantId, run_id: Option<&RunId>) -> Result<Vec<DistributionRecord>> {
        self.records(
            "SELECT record FROM distributions WHERE tenant = $1 AND ($2::TEXT IS NULL OR run_id = $2)
             ORDER BY created_ms DESC, id DESC",
            &[&tenant.as_str(), &run_id.map(|r| r.as_str())],
            "a distribution record",
        )
        .await
    }

    async fn put_profile(&self, profile: &SavedProfile) -> Result<()> {
        let json = serde_json::to_string(profile)
            .map_err(|e| ExportError::internal_caused("postgres store", "serialising a profile", e))?;
        let client = self.client().await?;
        let n = self
            .execute(
                &client,
                "INSERT INTO profiles (tenant, name, revision, record) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&profile.tenant.as_str(), &profile.spec.name, &(profile.revision as i32), &json],
            )
            .await?;
        if n == 0 {
            return Err(exportcore::store::profile_conflict(profile));
        }
        Ok(())
    }

    async fn get_profile(&self, tenant: &TenantId, name: &str, revision: Option<u32>) -> Result<SavedProfile> {
        let found: Vec<SavedProfile> = self
            .records(
                "SELECT record FROM profiles WHERE tenant = $1 AND name = $2 AND ($3::INTEGER IS NULL OR revision = $3)
                 ORDER BY revision DESC LIMIT 1",
                &[&tenant.as_str(), &name, &revision.map(|r| r as i32)],
                "a saved profile",
            )
            .await?;
        found.into_iter().next().ok_or_else(|| exportcore::store::profile_not_found(tenant, name, revision))
    }

    async fn list_profiles(&self, tenant: &TenantId) -> Result<Vec<SavedProfile>> {
        self.records(
            "SELECT DISTINCT ON (name) record FROM profiles WHERE tenant = $1 ORDER BY name, revision DESC",
            &[&tenant.as_str()],
            "a saved profile",
        )
        .await
    }

    /// A session advisory lock on a connection taken out of the pool: dropping the guard
    /// closes that connection, and the server releases the lock with it (also when the
    /// process dies mid-sweep).
    async fn sweep_guard(&self) -> Result<Option<SweepGuard>> {
        let client = self.client().await?;
        let row = self.query_one(&client, "SELECT pg_try_advisory_lock($1)", &[&SWEEP_LOCK]).await?;
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
        Ok(Some(SweepGuard::holding(deadpool_postgres::Object::take(client))))
    }
}
