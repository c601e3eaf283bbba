use super::{
    check_lease, lease_lost, read_request, read_run, seconds_between, ClaimedRun, Created, NewRun, Page, RunFilter,
    RunStore, StoredEvent, UnreadableRun,
};
use crate::error::{ExportError, Result};
use crate::hashing::Sha256Digest;
use crate::id::{ProfileId, RunId, TenantId};
use crate::model::{Lease, Run, RunError, RunEvent, RunStatus, Timestamp};
use crate::saved::SavedProfile;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// `PRAGMA application_id` of our stores ("EXC1"): tells our files from foreign SQLite files.
const APPLICATION_ID: i64 = 0x4558_4331;
/// The newest schema this build knows. `PRAGMA user_version` holds a store's version.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Forward migrations; entry `i` takes a store from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    project    TEXT,
    profile_id TEXT NOT NULL,
    status     TEXT NOT NULL,
    rank       INTEGER NOT NULL,
    expires_ms INTEGER,
    duration_s REAL,
    record     TEXT NOT NULL,
    request    TEXT NOT NULL
);
CREATE INDEX runs_queue   ON runs(rank, seq) WHERE status = 'queued';
CREATE INDEX runs_tenant  ON runs(tenant, seq);
CREATE INDEX runs_status  ON runs(status);
CREATE INDEX runs_profile ON runs(profile_id, seq);
CREATE INDEX runs_expiry  ON runs(expires_ms) WHERE status IN ('succeeded', 'failed');
CREATE TABLE events (
    run_id TEXT NOT NULL,
    id     INTEGER NOT NULL,
    at     TEXT NOT NULL,
    event  TEXT NOT NULL,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
CREATE TABLE idempotency (
    tenant       TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    expires_ms   INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE distributions (
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    record     TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID;
CREATE INDEX distributions_run ON distributions(tenant, run_id, created_ms);
"#,
    r#"
CREATE TABLE profiles (
    tenant   TEXT NOT NULL,
    name     TEXT NOT NULL,
    revision INTEGER NOT NULL,
    record   TEXT NOT NULL,
    PRIMARY KEY (tenant, name, revision)
) WITHOUT ROWID;
"#,
    r#"
ALTER TABLE runs ADD COLUMN lease_id TEXT;
ALTER TABLE runs ADD COLUMN lease_until_ms INTEGER;
ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_running ON runs(seq) WHERE status = 'running';
"#,
];

/// A run store in a SQLite file (WAL journal, `synchronous=FULL`: a committed change survives
/// a crash of the process and a power loss; recovery must never take a finished run for an
/// interrupted one and delete its outputs). The schema is versioned with `PRAGMA user_version` and migrated forward on open;
/// a corrupt file, a foreign database or a store from a newer version is refused with
/// `ERR_EXPORT_STORE_INVALID` and left untouched.
///
/// One engine process should own a store at a time (runs found `running` on start are
/// reported interrupted); any number of readers (`exportctl runs`) may open it alongside.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Db>,
    /// Jobs for the store's own thread, which runs them one at a time. Dropping the store
    /// drops the sender and ends the thread.
    jobs: std::sync::mpsc::Sender<Job>,
    /// Joined on drop, so the connection is closed (and the WAL checkpointed) when the last
    /// handle of the store is dropped, as with a plain connection.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (closed, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.db.path).finish()
    }
}

#[derive(Debug)]
struct Db {
    path: String,
    conn: Mutex<Connection>,
}

type Job = Box<dyn FnOnce(&mut Connection, &str) + Send>;

fn store_err(path: &str, e: rusqlite::Error) -> ExportError {
    use rusqlite::ErrorCode::{
        CannotOpen, DatabaseBusy, DatabaseCorrupt, DatabaseLocked, DiskFull, NotADatabase, PermissionDenied, ReadOnly,
        SystemIoFailure,
    };
    match e.sqlite_error_code() {
        // Another process held the write lock past the busy timeout: transient, so the engine
        // retries (it must not take a finished run's record for lost).
        Some(DatabaseBusy | DatabaseLocked) => ExportError::io(path, std::io::Error::other(e)),
        Some(DatabaseCorrupt | NotADatabase) => ExportError::StoreInvalid {
            path: path.to_owned(),
            reason: format!("corrupt or not a SQLite database: {e}"),
        },
        // The file system said no: an I/O error on the user's store path.
        Some(CannotOpen | DiskFull | PermissionDenied | ReadOnly | SystemIoFailure) => {
            ExportError::io(path, std::io::Error::other(e))
        }
        _ => ExportError::internal_caused("sqlite store", path, e),
    }
}

macro_rules! id_to_sql {
    ($($t:ty),+) => {$(
        impl rusqlite::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }
    )+};
}
id_to_sql!(TenantId, RunId, ProfileId);

/// True for an error caused by SQLITE_BUSY / SQLITE_LOCKED.
fn is_busy(e: &ExportError) -> bool {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    match e {
        ExportError::Io { source, .. } => source
            .get_ref()
            .and_then(|s| s.downcast_ref::<rusqlite::Error>())
            .and_then(rusqlite::Error::sqlite_error_code)
            .is_some_and(|c| matches!(c, DatabaseBusy | DatabaseLocked)),
        _ => false,
    }
}

fn json_err(path: &str, e: serde_json::Error) -> ExportError {
    ExportError::StoreInvalid { path: path.to_owned(), reason: format!("unreadable record: {e}") }
}

fn millis(t: Timestamp) -> i64 {
    (t.as_offset_date_time().unix_timestamp_nanos() / 1_000_000) as i64
}

impl SqliteStore {
    /// Opens (creating if missing) the store at `path`.
    ///
    /// # Errors
    /// `ERR_EXPORT_STORE_INVALID` for a corrupt or foreign file or a newer schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let label = path.display().to_string();
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_file() {
                return Err(ExportError::io(
                    path,
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
                ));
            }
            if meta.len() > 0 {
                let mut head = [0u8; 16];
                use std::io::Read;
                let ok = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok();
                if !ok || &head != b"SQLite format 3\0" {
                    return Err(ExportError::StoreInvalid { path: label, reason: "not a SQLite database".into() });
                }
            }
        }
        // Several processes opening a new store at once: setting WAL mode or migrating can meet
        // SQLITE_BUSY without the busy handler being consulted; try again for up to 10 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let conn = Connection::open(path).map_err(|e| store_err(&label, e))?;
            match Self::init(conn, label.clone()) {
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// A private in-memory SQLite store (tests, benches).
    pub fn open_in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(|e| store_err(":memory:", e))?;
        Self::init(conn, ":memory:".into())
    }

    fn init(mut conn: Connection, label: String) -> Result<Self> {
        let e = |err| store_err(&label, err);
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(e)?;
        // One read transaction: the three values from one snapshot, even while another process
        // creates the schema.
        let (app_id, version, tables) = {
            let tx = conn.transaction().map_err(e)?;
            let app_id: i64 = tx.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(e)?;
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(e)?;
            let tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).map_err(e)?;
            tx.commit().map_err(e)?;
            (app_id, version, tables)
        };
        let fresh = tables == 0 && version == 0 && app_id == 0;
        if !fresh && app_id != APPLICATION_ID {
            return Err(ExportError::StoreInvalid {
                path: label,
                reason: format!("a foreign SQLite database (application_id {app_id:#x}), not an exportcore run store"),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(ExportError::StoreInvalid {
                path: label,
                reason: format!(
                    "schema version {version} is newer than this build supports ({SCHEMA_VERSION}); upgrade"
                ),
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
        if version < SCHEMA_VERSION {
            // IMMEDIATE: one process migrates at a time; the others wait (busy timeout), then
            // read the version again and find nothing left to do.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(e)?;
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(e)?;
            for (v, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.execute_batch(sql).map_err(e)?;
                tx.pragma_update(None, "user_version", v as i64 + 1).map_err(e)?;
            }
            tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(e)?;
            tx.commit().map_err(e)?;
        }
        let db = Arc::new(Db { path: label, conn: Mutex::new(conn) });
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let worker = Arc::clone(&db);
        let thread = std::thread::Builder::new()
            .name("sqlite-store".into())
            .spawn(move || {
                for job in queue {
                    let mut conn = worker.conn.lock().unwrap_or_else(|p| p.into_inner());
                    // A call that panics answers nobody (its caller gets an error); the thread
                    // and the store live on.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn, &worker.path)));
                }
            })
            .map_err(|e| ExportError::io(&db.path, e))?;
        Ok(Self { inner: Arc::new(Inner { db, jobs, thread: Some(thread) }) })
    }

    /// Runs `PRAGMA integrity_check`; `Ok(())` when the file is sound.
    pub fn integrity_check(&self) -> Result<()> {
        let conn = self.inner.db.conn.lock().unwrap_or_else(|p| p.into_inner());
        let res: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| store_err(&self.inner.db.path, e))?;
        if res == "ok" {
            Ok(())
        } else {
            Err(ExportError::StoreInvalid {
                path: self.inner.db.path.clone(),
                reason: format!("integrity check: {res}"),
            })
        }
    }

    /// Runs `f` with the connection on the store's own thread. One thread for the store, not
    /// `block_in_place` or the blocking pool: under load those move runtime workers to new
    /// threads on every call, and a server ended up with hundreds of them (and their heaps).
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &str) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn, path| {
            let _ = tx.send(f(conn, path));
        });
        let gone = || ExportError::internal("sqlite store", "the store's thread did not answer (a call panicked)");
        self.inner.jobs.send(job).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Claims the first queued run (or `run_id` if given and queued).
    async fn claim(&self, run_id: Option<RunId>, now: Timestamp, lease: &Lease) -> Result<Option<ClaimedRun>> {
        let lease = lease.clone();
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(e)?;
            // Two statements so each uses its index (the queue's partial index, or the run id).
            let sql = if run_id.is_some() {
                "SELECT seq, run_id, record, request FROM runs WHERE status = 'queued' AND run_id = ?1"
            } else {
                "SELECT seq, run_id, record, request FROM runs WHERE status = 'queued' AND ?1 IS NULL AND rank < 9223372036854775807
                 ORDER BY rank, seq LIMIT 1"
            };
            let (seq, mut run, request) = loop {
                let row: Option<(i64, String, String, String)> = tx
                    .prepare_cached(sql)
                    .and_then(|mut st| {
                        st.query_row(params![run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).optional()
                    })
                    .map_err(e)?;
                let Some((seq, id, record, request)) = row else {
                    tx.commit().map_err(e)?;
                    return Ok(None);
                };
                match read_run(path, &id, &record).and_then(|run| Ok((run, read_request(path, &id, &request)?))) {
                    Ok((run, request)) => break (seq, run, request),
                    Err(err) => {
                        set_aside(&tx, path, seq, &err)?;
                        if run_id.is_some() {
                            tx.commit().map_err(e)?;
                            return Err(err);
                        }
                    }
                }
            };
            run.status = RunStatus::Running;
            run.started_at.get_or_insert(now);
            run.attempts += 1;
            tx.prepare_cached("UPDATE runs SET status = 'running', record = ?1 WHERE seq = ?2")
                .and_then(|mut st| st.execute(params![write_run(&run), seq]))
                .map_err(e)?;
            write_lease(&tx, path, seq, &lease)?;
            run.lease = Some(lease);
            tx.commit().map_err(e)?;
            Ok(Some(ClaimedRun { run, request }))
        })
        .await
    }
}

/// Gives the run at `seq` the lease `lease` (claims and take-overs).
fn write_lease(conn: &Connection, path: &str, seq: i64, lease: &Lease) -> Result<()> {
    conn.prepare_cached("UPDATE runs SET lease_id = ?1, lease_until_ms = ?2 WHERE seq = ?3")
        .and_then(|mut st| st.execute(params![lease.lease_id, millis(lease.lease_until), seq]))
        .map_err(|e| store_err(path, e))?;
    Ok(())
}

/// Sets aside a run whose record or request does not parse (edited by hand, written by a
/// broken tool, damaged on disk): `failed`, no lease, no expiry, so claims, take-overs and
/// retention sweeps move past it instead of failing on it forever. Its bytes stay for
/// inspection; reading it (`get`) keeps naming the problem, and `list` reports it apart.
fn set_aside(conn: &Connection, path: &str, seq: i64, err: &ExportError) -> Result<()> {
    tracing::error!(store = path, error = %err.report(), "a run record is unreadable: set aside as failed");
    conn.prepare_cached(
        "UPDATE runs SET status = 'failed', lease_id = NULL, lease_until_ms = NULL, expires_ms = NULL WHERE seq = ?1",
    )
    .and_then(|mut st| st.execute(params![seq]))
    .map_err(|e| store_err(path, e))?;
    Ok(())
}

fn write_run(run: &Run) -> String {
    serde_json::to_string(run).unwrap_or_default()
}

fn duration(run: &Run) -> Option<f64> {
    Some(seconds_between(run.started_at?, run.finished_at?))
}

fn not_found(run_id: &RunId) -> ExportError {
    ExportError::NotFound { path: format!("run {run_id}") }
}

/// Writes the mutable parts of `run` (inside the caller's transaction, if any). A final state
/// is final: a run already `succeeded` or `failed` only moves on to `expired`.
fn save_run(conn: &Connection, path: &str, run: &Run) -> Result<()> {
    let current: Option<(String, Option<String>)> = conn
        .prepare_cached("SELECT status, lease_id FROM runs WHERE run_id = ?1")
        .and_then(|mut s| s.query_row(params![run.run_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(|e| store_err(path, e))?;
    let (current, lease_id) = current.ok_or_else(|| not_found(&run.run_id))?;
    check_lease(&run.run_id, lease_id.as_deref(), run.lease.as_ref())?;
    super::check_transition(&run.run_id, &current, run.status)?;
    // A run that leaves `running` drops its lease; a running one keeps its (renewed) lapse.
    let n = conn
        .prepare_cached(
            "UPDATE runs SET status = ?1, expires_ms = ?2, duration_s = ?3, record = ?4,
             lease_id = CASE WHEN ?1 = 'running' THEN lease_id END,
             lease_until_ms = CASE WHEN ?1 = 'running' THEN lease_until_ms END,
             cancel_requested = CASE WHEN ?1 IN ('queued', 'running') THEN cancel_requested ELSE 0 END
             WHERE run_id = ?5",
        )
        .and_then(|mut s| {
            s.execute(params![
                run.status.as_str(),
                run.expires_at.map(millis),
                duration(run),
                write_run(run),
                run.run_id.as_str()
            ])
        })
        .map_err(|e| store_err(path, e))?;
    if n == 0 {
        return Err(not_found(&run.run_id));
    }
    Ok(())
}

/// Appends an event to a run (inside the caller's transaction), fenced by `lease`; returns
/// its id.
fn append(
    conn: &Connection,
    path: &str,
    run_id: &RunId,
    lease: Option<&Lease>,
    at: Timestamp,
    events: &[RunEvent],
) -> Result<u64> {
    let e = |err| store_err(path, err);
    let stored: Option<Option<String>> = conn
        .prepare_cached("SELECT lease_id FROM runs WHERE run_id = ?1")
        .and_then(|mut st| st.query_row(params![run_id.as_str()], |r| r.get(0)).optional())
        .map_err(e)?;
    let stored = stored.ok_or_else(|| not_found(run_id))?;
    check_lease(run_id, stored.as_deref(), lease)?;
    let mut id: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) FROM events WHERE run_id = ?1")
        .and_then(|mut st| st.query_row(params![run_id.as_str()], |r| r.get(0)))
        .map_err(e)?;
    let mut insert =
        conn.prepare_cached("INSERT INTO events (run_id, id, at, event) VALUES (?1, ?2, ?3, ?4)").map_err(e)?;
    let at = at.to_string();
    for event in events {
        id += 1;
        let body = serde_json::to_string(event).unwrap_or_default();
        insert.execute(params![run_id.as_str(), id, at, body]).map_err(e)?;
    }
    Ok(id as u64)
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn create(&self, new: NewRun, now: Timestamp) -> Result<Created> {
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(e)?;
            let tenant = new.run.tenant.clone();
            if let Some(k) = &new.idempotency {
                let existing: Option<(String, String, i64)> = tx
                    .prepare_cached("SELECT request_hash, run_id, expires_ms FROM idempotency WHERE tenant = ?1 AND key = ?2")
                    .and_then(|mut st| {
                        st.query_row(params![tenant, k.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
                    })
                    .map_err(e)?;
                if let Some((hash, run_id, expires)) = existing {
                    if expires > millis(now) {
                        if hash != new.request_hash.to_hex() {
                            return Err(ExportError::Conflict {
                            what: "Idempotency-Key".into(),
                            reason: format!("key {:?} was used for a different request (run {run_id})", k.key),
                        });
                        }
                        let record: Option<String> = tx
                            .query_row("SELECT record FROM runs WHERE run_id = ?1", params![run_id], |r| r.get(0))
                            .optional()
                            .map_err(e)?;
                        if let Some(record) = record {
                            return Ok(Created::Existing(read_run(path, &run_id, &record)?));
                        }
                    }
                }
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO idempotency (tenant, key, request_hash, run_id, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut st| st.execute(params![tenant, k.key, new.request_hash.to_hex(), new.run.run_id, millis(k.expires_at)]))
                .map_err(e)?;
            }
            let request = serde_json::to_string(&new.request).map_err(|err| json_err(path, err))?;
            tx.prepare_cached(
                "INSERT INTO runs (run_id, tenant, project, profile_id, status, rank, expires_ms, record, request)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut st| st.execute(params![
                    new.run.run_id,
                    tenant,
                    new.run.project,
                    new.run.profile_id,
                    new.run.status.as_str(),
                    new.rank,
                    new.run.expires_at.map(millis),
                    write_run(&new.run),
                    request
                ]))
            .map_err(e)?;
            tx.commit().map_err(e)?;
            Ok(Created::New(new.run))
        })
        .await
    }

    async fn get(&self, tenant: &TenantId, run_id: &RunId) -> Result<Run> {
        let (tenant, run_id) = (tenant.to_owned(), run_id.to_owned());
        self.with(move |conn, path| {
            let record: Option<String> = conn
                .query_row("SELECT record FROM runs WHERE run_id = ?1 AND tenant = ?2", params![run_id, tenant], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|e| store_err(path, e))?;
            read_run(path, run_id.as_str(), &record.ok_or_else(|| not_found(&run_id))?)
        })
        .await
    }

    async fn list(&self, tenant: &TenantId, filter: &RunFilter) -> Result<Page> {
        let tenant = tenant.to_owned();
        let filter = filter.clone();
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let end: i64 = match &filter.cursor {
                Some(c) => conn
                    .prepare_cached("SELECT seq FROM runs WHERE run_id = ?1 AND tenant = ?2")
                    .and_then(|mut st| st.query_row(params![c, tenant], |r| r.get(0)).optional())
                    .map_err(e)?
                    .ok_or_else(|| crate::store::bad_cursor(c))?,
                None => i64::MAX,
            };
            let limit = filter.page_size();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT run_id, record FROM runs WHERE tenant = ?1 AND seq <= ?2
                       AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR profile_id = ?4) AND (?5 IS NULL OR project = ?5)
                     ORDER BY seq DESC LIMIT ?6",
                )
                .map_err(e)?;
            let rows = stmt
                .query_map(
                    params![tenant, end, filter.status.map(|s| s.as_str()), filter.profile_id, filter.project, limit as i64 + 1],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )
                .map_err(e)?;
            let mut page = Page::default();
            for row in rows {
                let (run_id, record) = row.map_err(e)?;
                if page.runs.len() + page.unreadable.len() == limit {
                    page.next_cursor = Some(run_id);
                    break;
                }
                match read_run(path, &run_id, &record) {
                    Ok(run) => page.runs.push(run),
                    Err(err) => page.unreadable.push(UnreadableRun { run_id, reason: err.report() }),
                }
            }
            Ok(page)
        })
        .await
    }

    async fn claim_next(&self, now: Timestamp, lease: &Lease) -> Result<Option<ClaimedRun>> {
        self.claim(None, now, lease).await
    }

    async fn claim_run(&self, run_id: &RunId, now: Timestamp, lease: &Lease) -> Result<Option<ClaimedRun>> {
        self.claim(Some(run_id.clone()), now, lease).await
    }

    async fn renew_lease(&self, run_id: &RunId, lease: &Lease) -> Result<bool> {
        let (run_id, lease) = (run_id.clone(), lease.clone());
        self.with(move |conn, path| {
            let cancel: Option<bool> = conn
                .prepare_cached(
                    "UPDATE runs SET lease_until_ms = ?1 WHERE run_id = ?2 AND status = 'running' AND lease_id = ?3
                     RETURNING cancel_requested",
                )
                .and_then(|mut st| {
                    st.query_row(params![millis(lease.lease_until), run_id.as_str(), lease.lease_id], |r| r.get(0))
                        .optional()
                })
                .map_err(|e| store_err(path, e))?;
            cancel.ok_or_else(|| lease_lost(&run_id))
        })
        .await
    }

    async fn request_cancel(&self, tenant: &TenantId, run_id: &RunId) -> Result<bool> {
        let (tenant, run_id) = (tenant.clone(), run_id.clone());
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM runs WHERE run_id = ?1 AND tenant = ?2")
                .and_then(|mut st| st.query_row(params![run_id.as_str(), tenant.as_str()], |r| r.get(0)).optional())
                .map_err(e)?;
            let n = conn
                .prepare_cached(
                    "UPDATE runs SET cancel_requested = 1 WHERE run_id = ?1 AND tenant = ?2 AND status = 'running'",
                )
                .and_then(|mut st| st.execute(params![run_id.as_str(), tenant.as_str()]))
                .map_err(e)?;
            match status {
                None => Err(not_found(&run_id)),
                Some(_) => Ok(n == 1),
            }
        })
        .await
    }

    async fn reclaim_expired(&self, now: Timestamp, lease: &Lease) -> Result<Option<Run>> {
        let lease = lease.clone();
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(e)?;
            let (seq, mut run) = loop {
                let row: Option<(i64, String, String)> = tx
                    .prepare_cached(
                        "SELECT seq, run_id, record FROM runs WHERE status = 'running'
                         AND (lease_until_ms IS NULL OR lease_until_ms <= ?1) ORDER BY seq LIMIT 1",
                    )
                    .and_then(|mut st| {
                        st.query_row(params![millis(now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
                    })
                    .map_err(e)?;
                let Some((seq, id, record)) = row else {
                    tx.commit().map_err(e)?;
                    return Ok(None);
                };
                match read_run(path, &id, &record) {
                    Ok(run) => break (seq, run),
                    Err(err) => set_aside(&tx, path, seq, &err)?,
                }
            };
            write_lease(&tx, path, seq, &lease)?;
            run.lease = Some(lease);
            tx.commit().map_err(e)?;
            Ok(Some(run))
        })
        .await
    }

    async fn save(&self, run: &Run) -> Result<()> {
        let run = run.clone();
        self.with(move |conn, path| {
            // The fencing read and the update in one write transaction: IMMEDIATE takes the
            // write lock first (waiting out the busy timeout), so another process's write can
            // neither slip in between nor fail this one with SQLITE_BUSY_SNAPSHOT.
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| store_err(path, e))?;
            save_run(&tx, path, &run)?;
            tx.commit().map_err(|e| store_err(path, e))
        })
        .await
    }

    async fn finish(&self, run: &Run, at: Timestamp, terminal: &RunEvent) -> Result<u64> {
        let (run, terminal) = (run.clone(), terminal.clone());
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(e)?;
            save_run(&tx, path, &run)?;
            let id = append(&tx, path, &run.run_id, None, at, std::slice::from_ref(&terminal))?;
            tx.commit().map_err(e)?;
            Ok(id)
        })
        .await
    }

    async fn fail_if_queued(
        &self,
        tenant: &TenantId,
        run_id: &RunId,
        error: RunError,
        now: Timestamp,
    ) -> Result<Option<Run>> {
        let (tenant, run_id) = (tenant.clone(), run_id.clone());
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(e)?;
            let row: Option<(String, String)> = tx
                .query_row(
                    "SELECT status, record FROM runs WHERE run_id = ?1 AND tenant = ?2",
                    params![run_id.as_str(), tenant.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(e)?;
            let (status, record) = row.ok_or_else(|| not_found(&run_id))?;
            if status != "queued" {
                return Ok(None);
            }
            let mut run = read_run(path, run_id.as_str(), &record)?;
            run.status = RunStatus::Failed;
            run.finished_at = Some(now);
            run.errors.push(error.clone());
            save_run(&tx, path, &run)?;
            let failed = RunEvent::Failed { run_id: run_id.clone(), code: error.code, message: error.message };
            append(&tx, path, &run_id, None, now, std::slice::from_ref(&failed))?;
            tx.commit().map_err(e)?;
            Ok(Some(run))
        })
        .await
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
        let (run_id, events, lease) = (run_id.clone(), events.to_vec(), lease.cloned());
        self.with(move |conn, path| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| store_err(path, e))?;
            let id = append(&tx, path, &run_id, lease.as_ref(), at, &events)?;
            tx.commit().map_err(|e| store_err(path, e))?;
            Ok(id)
        })
        .await
    }

    async fn events(&self, tenant: &TenantId, run_id: &RunId, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let (tenant, run_id) = (tenant.to_owned(), run_id.to_owned());
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let owned: bool = conn
                .query_row("SELECT 1 FROM runs WHERE run_id = ?1 AND tenant = ?2", params![run_id, tenant], |_| {
                    Ok(true)
                })
                .optional()
                .map_err(e)?
                .unwrap_or(false);
            if !owned {
                return Err(not_found(&run_id));
            }
            let mut stmt = conn
                .prepare_cached("SELECT id, at, event FROM events WHERE run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3")
                .map_err(e)?;
            let rows = stmt
                .query_map(params![run_id, after as i64, limit as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
                })
                .map_err(e)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, at, body) = row.map_err(e)?;
                out.push(StoredEvent {
                    id: id as u64,
                    at: Timestamp::parse(&at)
                        .map_err(|reason| ExportError::StoreInvalid { path: path.to_owned(), reason })?,
                    event: serde_json::from_str(&body).map_err(|err| json_err(path, err))?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn due_for_expiry(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, run_id, record FROM runs WHERE status IN ('succeeded', 'failed') AND expires_ms <= ?1
                     ORDER BY seq LIMIT ?2",
                )
                .map_err(e)?;
            let rows: Vec<(i64, String, String)> = stmt
                .query_map(params![millis(now), limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(e)?
                .collect::<std::result::Result<_, _>>()
                .map_err(e)?;
            drop(stmt);
            let mut due = Vec::new();
            for (seq, id, record) in rows {
                match read_run(path, &id, &record) {
                    Ok(run) => due.push(run),
                    Err(err) => set_aside(conn, path, seq, &err)?,
                }
            }
            Ok(due)
        })
        .await
    }

    async fn running(&self) -> Result<Vec<Run>> {
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let mut stmt = conn
                .prepare_cached("SELECT run_id, record FROM runs WHERE status = 'running' ORDER BY seq")
                .map_err(e)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(e)?;
            let mut running = Vec::new();
            for row in rows {
                let (id, record) = row.map_err(e)?;
                // Unreadable ones are set aside by the next take-over (`reclaim_expired`).
                match read_run(path, &id, &record) {
                    Ok(run) => running.push(run),
                    Err(err) => tracing::error!(store = path, error = %err.report(), "a running run is unreadable"),
                }
            }
            Ok(running)
        })
        .await
    }

    async fn recent_durations(&self, profile_id: &ProfileId, limit: usize) -> Result<Vec<f64>> {
        let profile_id = profile_id.to_owned();
        self.with(move |conn, path| {
            let e = |err| store_err(path, err);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT duration_s FROM runs WHERE profile_id = ?1 AND status = 'succeeded' AND duration_s IS NOT NULL
                     ORDER BY seq DESC LIMIT ?2",
                )
                .map_err(e)?;
            let rows = stmt.query_map(params![profile_id, limit as i64], |r| r.get::<_, f64>(0)).map_err(e)?;
            rows.map(|r| r.map_err(e)).collect()
        })
        .await
    }

    async fn queued_count(&self, tenant: Option<&TenantId>) -> Result<u64> {
        let tenant = tenant.map(|t| t.as_str().to_owned());
        self.with(move |conn, path| {
            conn.query_row(
                "SELECT count(*) FROM runs WHERE status = 'queued' AND (?1 IS NULL OR tenant = ?1)",
                params![tenant],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| store_err(path, e))
        })
        .await
    }

    async fn find_idempotent(
        &self,
        tenant: &TenantId,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<(Sha256Digest, Run)>> {
        let (tenant, key) = (tenant.as_str().to_owned(), key.to_owned());
        self.with(move |conn, path| {
            let row: Option<(String, String, String)> = conn
                .query_row(
                    "SELECT i.request_hash, i.run_id, r.record FROM idempotency i JOIN runs r ON r.run_id = i.run_id
                     WHERE i.tenant = ?1 AND i.key = ?2 AND i.expires_ms > ?3",
                    params![tenant, key, millis(now)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(|e| store_err(path, e))?;
            let Some((hash, run_id, record)) = row else { return Ok(None) };
            let hash = hash.parse().map_err(|_| {
                ExportError::internal("sqlite", format!("{path}: idempotency key of run {run_id}: a malformed hash"))
            })?;
            Ok(Some((hash, read_run(path, &run_id, &record)?)))
        })
        .await
    }

    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64> {
        self.with(move |conn, path| {
            conn.execute("DELETE FROM idempotency WHERE expires_ms <= ?1", params![millis(now)])
                .map(|n| n as u64)
                .map_err(|e| store_err(path, e))
        })
        .await
    }

    async fn put_distribution(&self, record: &crate::model::DistributionRecord) -> Result<()> {
        let r = record.clone();
        let json =
            serde_json::to_string(&r).map_err(|e| ExportError::internal_caused("sqlite", "serialising a record", e))?;
        self.with(move |conn, path| {
            conn.execute(
                "INSERT OR REPLACE INTO distributions (tenant, id, run_id, created_ms, record) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.tenant.as_str(), r.id, r.run_id.as_str(), millis(r.created_at), json],
            )
            .map(|_| ())
            .map_err(|e| store_err(path, e))
        })
        .await
    }

    async fn get_distribution(&self, tenant: &TenantId, id: &str) -> Result<crate::model::DistributionRecord> {
        let (tenant, id) = (tenant.clone(), id.to_owned());
        self.with(move |conn, path| {
            let json: Option<String> = conn
                .query_row(
                    "SELECT record FROM distributions WHERE tenant = ?1 AND id = ?2",
                    params![tenant.as_str(), id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| store_err(path, e))?;
            let json = json.ok_or_else(|| ExportError::NotFound { path: format!("distribution {id}") })?;
            serde_json::from_str(&json).map_err(|e| ExportError::StoreInvalid {
                path: path.to_owned(),
                reason: format!("distribution {id}: {e}"),
            })
        })
        .await
    }

    async fn list_distributions(
        &self,
        tenant: &TenantId,
        run_id: Option<&RunId>,
    ) -> Result<Vec<crate::model::DistributionRecord>> {
        let (tenant, run_id) = (tenant.clone(), run_id.cloned());
        self.with(move |conn, path| {
            records(
                conn,
                path,
                "SELECT record FROM distributions WHERE tenant = ?1 AND (?2 IS NULL OR run_id = ?2) \
                 ORDER BY created_ms DESC, id DESC",
                params![tenant.as_str(), run_id.as_ref().map(|r| r.as_str().to_owned())],
                "a distribution record",
            )
        })
        .await
    }

    async fn put_profile(&self, profile: &SavedProfile) -> Result<()> {
        let p = profile.clone();
        let json = serde_json::to_string(&p)
            .map_err(|e| ExportError::internal_caused("sqlite", "serialising a profile", e))?;
        self.with(move |conn, path| {
            match conn.execute(
                "INSERT INTO profiles (tenant, name, revision, record) VALUES (?1, ?2, ?3, ?4)",
                params![p.tenant.as_str(), p.spec.name, p.revision, json],
            ) {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    Err(super::profile_conflict(&p))
                }
                Err(e) => Err(store_err(path, e)),
            }
        })
        .await
    }

    async fn get_profile(&self, tenant: &TenantId, name: &str, revision: Option<u32>) -> Result<SavedProfile> {
        let (tenant, name) = (tenant.clone(), name.to_owned());
        self.with(move |conn, path| {
            let json: Option<String> = conn
                .query_row(
                    "SELECT record FROM profiles WHERE tenant = ?1 AND name = ?2 AND (?3 IS NULL OR revision = ?3) \
                     ORDER BY revision DESC LIMIT 1",
                    params![tenant.as_str(), name, revision],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| store_err(path, e))?;
            let json = json.ok_or_else(|| super::profile_not_found(&tenant, &name, revision))?;
            serde_json::from_str(&json).map_err(|e| ExportError::StoreInvalid {
                path: path.to_owned(),
                reason: format!("profile {name}: {e}"),
            })
        })
        .await
    }

    async fn list_profiles(&self, tenant: &TenantId) -> Result<Vec<SavedProfile>> {
        let tenant = tenant.clone();
        self.with(move |conn, path| {
            records(
                conn,
                path,
                "SELECT p.record FROM profiles p WHERE p.tenant = ?1 AND p.revision = \
                 (SELECT MAX(q.revision) FROM profiles q WHERE q.tenant = p.tenant AND q.name = p.name) \
                 ORDER BY p.name",
                params![tenant.as_str()],
                "a saved profile",
            )
        })
        .await
    }
}

/// The JSON records (first column) of `sql`, parsed; a record that does not parse is
/// `ERR_EXPORT_STORE_INVALID` naming `what`.
fn records<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    path: &str,
    sql: &str,
    params: impl rusqlite::Params,
    what: &str,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| store_err(path, e))?;
    let rows = stmt.query_map(params, |row| row.get::<_, String>(0)).map_err(|e| store_err(path, e))?;
    let mut out = Vec::new();
    for json in rows {
        let json = json.map_err(|e| store_err(path, e))?;
        out.push(
            serde_json::from_str(&json)
                .map_err(|e| ExportError::StoreInvalid { path: path.to_owned(), reason: format!("{what}: {e}") })?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conforms_in_memory_and_on_disk() {
        crate::conformance::store_suite(&SqliteStore::open_in_memory().unwrap()).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        crate::conformance::store_suite(&store).await;
        store.integrity_check().unwrap();
        drop(store);
        // Reopening keeps everything.
        SqliteStore::open(&path).unwrap().integrity_check().unwrap();
    }

    #[tokio::test]
    async fn unreadable_records_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        let corrupt = move |run_id: &'static str, text: &'static str| {
            let path = path.clone();
            Box::pin(async move {
                let conn = Connection::open(&path).unwrap();
                conn.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                assert_eq!(
                    conn.execute("UPDATE runs SET record = ?1 WHERE run_id = ?2", params![text, run_id]).unwrap(),
                    1
                );
            }) as crate::conformance::CorruptFuture
        };
        crate::conformance::store_unreadable_records(&store, &corrupt).await;
        store.integrity_check().unwrap();
    }

    #[test]
    fn concurrent_first_opens_of_a_new_store_all_succeed() {
        for round in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("new-{round}.sqlite"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (path, barrier) = (path.clone(), std::sync::Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        SqliteStore::open(&path).map(|_| ()).map_err(|e| e.report())
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
            SqliteStore::open(&path).unwrap().integrity_check().unwrap();
        }
    }

    #[test]
    fn a_version_1_store_migrates_forward_and_keeps_its_runs() {
        use crate::model::{DistributionRecord, DistributionType};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute(
                "INSERT INTO runs (run_id, tenant, profile_id, status, rank, record, request) VALUES ('r1','t','json:raw','queued',0,'{}','{}')",
                [],
            )
            .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.pragma_update(None, "application_id", APPLICATION_ID).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let tenant = TenantId::parse("t").unwrap();
        let run = RunId::parse("r1").unwrap();
        let rec = DistributionRecord::succeeded(
            run.clone(),
            tenant.clone(),
            DistributionType::Oci,
            "r/x:1",
            vec![],
            Timestamp::now(),
        );
        rt.block_on(store.put_distribution(&rec)).unwrap();
        assert_eq!(rt.block_on(store.list_distributions(&tenant, Some(&run))).unwrap(), [rec]);
        let c = rusqlite::Connection::open(&path).unwrap();
        let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let runs: i64 = c.query_row("SELECT count(*) FROM runs", [], |r| r.get(0)).unwrap();
        assert_eq!(runs, 1, "the old run survived the migration");
    }

    #[test]
    fn refuses_bad_files_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Not a database.
        let junk = dir.path().join("junk.sqlite");
        std::fs::write(&junk, b"this is not a database at all, just text").unwrap();
        let err = SqliteStore::open(&junk).unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_STORE_INVALID");
        assert_eq!(std::fs::read(&junk).unwrap(), b"this is not a database at all, just text");
        // A foreign SQLite database.
        let foreign = dir.path().join("foreign.sqlite");
        {
            let c = Connection::open(&foreign).unwrap();
            c.execute_batch("CREATE TABLE customers (id INTEGER); INSERT INTO customers VALUES (1);").unwrap();
        }
        let before = std::fs::read(&foreign).unwrap();
        let err = SqliteStore::open(&foreign).unwrap_err();
        assert!(err.to_string().contains("foreign"), "{err}");
        assert_eq!(std::fs::read(&foreign).unwrap(), before);
        // A store from a newer schema.
        let newer = dir.path().join("newer.sqlite");
        drop(SqliteStore::open(&newer).unwrap());
        {
            let c = Connection::open(&newer).unwrap();
            c.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        }
        let err = SqliteStore::open(&newer).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
        // A truncated / corrupted store.
        let corrupt = dir.path().join("corrupt.sqlite");
        drop(SqliteStore::open(&corrupt).unwrap());
        let mut bytes = std::fs::read(&corrupt).unwrap();
        for b in bytes.iter_mut().skip(100).take(3000) {
            *b = 0xAB;
        }
        std::fs::write(&corrupt, &bytes).unwrap();
        let _ = std::fs::remove_file(corrupt.with_extension("sqlite-wal"));
        let res = SqliteStore::open(&corrupt).and_then(|s| s.integrity_check());
        assert_eq!(res.unwrap_err().code(), "ERR_EXPORT_STORE_INVALID");
    }
}
