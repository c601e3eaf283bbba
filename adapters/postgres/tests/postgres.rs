//! The PostgreSQL store against a real server (Debian's `postgresql`), started by the test: a
//! cluster made with `initdb` in a temporary directory, on a loopback port, run as an
//! unprivileged user (`postgres` when the tests run as root), stopped by PID. Runs with
//! `EXPORTCORE_INTEROP=1` (then a missing PostgreSQL fails loudly).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::engine::{Exporter, Submission};
use exportcore::store::{Created, RunStore};
use exportcore::{RunRequest, RunStatus, TenantId};
use exportcore_postgres::PostgresStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../../tests/common/pg.rs"]
mod pg;
use pg::{free_port, Pg};

fn enabled() -> bool {
    let on = std::env::var("EXPORTCORE_INTEROP").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("postgres test not run: set EXPORTCORE_INTEROP=1 (scripts/test-all installs postgresql)");
    }
    on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_and_migrations() {
    if !enabled() {
        return;
    }
    let pg = Pg::start();
    let url = pg.database("conf").await;
    let store = PostgresStore::connect(&url).await.unwrap();
    exportcore::conformance::store_suite(&store).await;
    // Migrating again does nothing; two nodes starting together migrate once.
    assert_eq!(store.migrate().await.unwrap(), 0);
    let url2 = pg.database("twice").await;
    let (a, b) = tokio::join!(PostgresStore::connect(&url2), PostgresStore::connect(&url2));
    a.unwrap();
    b.unwrap();
    // A database from a newer build is refused and left alone.
    let (client, conn) = tokio_postgres::connect(&url2, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute("UPDATE exportcore_schema SET version = 999").await.unwrap();
    let err = PostgresStore::connect(&url2).await.unwrap_err();
    assert_eq!(err.code(), "ERR_EXPORT_STORE_INVALID");
    assert!(err.to_string().contains("newer"), "{err}");

    // One unreadable run record (not JSON, or JSON that is not a run) stops nothing.
    let url3 = pg.database("unreadable").await;
    let store = PostgresStore::connect(&url3).await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url3, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let client = Arc::new(client);
    let corrupt = move |run_id: &'static str, text: &'static str| {
        let client = Arc::clone(&client);
        Box::pin(async move {
            let n = client.execute("UPDATE runs SET record = $1 WHERE run_id = $2", &[&text, &run_id]).await.unwrap();
            assert_eq!(n, 1);
        }) as exportcore::conformance::CorruptFuture
    };
    exportcore::conformance::store_unreadable_records(&store, &corrupt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_shows_and_a_dead_server_is_an_io_error() {
    if !enabled() {
        return;
    }
    let port = free_port();
    let err =
        PostgresStore::connect(&format!("postgres://someone:hunter2-secret@127.0.0.1:{port}/db")).await.unwrap_err();
    assert_eq!(err.code(), "ERR_EXPORT_IO", "{err}");
    assert!(!err.report().contains("hunter2"), "{}", err.report());
    assert!(err.report().contains(&format!("someone@127.0.0.1:{port}/db")), "{}", err.report());
    let bad = PostgresStore::connect("mysql://nope").await.unwrap_err();
    assert_eq!(bad.code(), "ERR_EXPORT_REQUEST_INVALID");
}

fn request(profile: &str) -> RunRequest {
    RunRequest::builder(profile).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_one_store_claims_never_collide_and_keys_make_one_run() {
    if !enabled() {
        return;
    }
    let pg = Pg::start();
    let url = pg.database("shared").await;
    // Three "nodes": three stores (pools) on one database.
    let nodes: Vec<PostgresStore> =
        futures_join_all((0..3).map(|_| PostgresStore::connect(&url))).await.into_iter().map(Result::unwrap).collect();
    let tenant = TenantId::parse("acme").unwrap();
    // Concurrent submissions with one idempotency key from every node: one run.
    let mut handles = Vec::new();
    for i in 0..12 {
        let store = nodes[i % 3].clone();
        let tenant = tenant.clone();
        handles.push(tokio::spawn(async move {
            let run = exportcore::Run::queued(
                exportcore::RunId::generate(&tenant),
                tenant.clone(),
                None,
                exportcore::ProfileId::parse("json:raw").unwrap(),
                exportcore::Timestamp::now(),
            );
            let new = exportcore::store::NewRun {
                run,
                request: request("json:raw"),
                request_hash: exportcore::Sha256Digest::of(b"same request"),
                rank: 0,
                idempotency: Some(exportcore::store::IdempotencyKey {
                    key: "k-shared".into(),
                    expires_at: exportcore::Timestamp::now().plus_days(1),
                }),
            };
            store.create(new, exportcore::Timestamp::now()).await.unwrap()
        }));
    }
    let mut new = 0;
    let mut ids = std::collections::BTreeSet::new();
    for h in handles {
        let c = h.await.unwrap();
        new += usize::from(matches!(c, Created::New(_)));
        ids.insert(c.run().run_id.clone());
    }
    assert_eq!((new, ids.len()), (1, 1), "one run for one key, whichever node got it");

    // 200 queued runs claimed by three nodes at once: each exactly once.
    for _ in 0..200 {
        let run = exportcore::Run::queued(
            exportcore::RunId::generate(&tenant),
            tenant.clone(),
            None,
            exportcore::ProfileId::parse("json:raw").unwrap(),
            exportcore::Timestamp::now(),
        );
        let new = exportcore::store::NewRun {
            run,
            request: request("json:raw"),
            request_hash: exportcore::Sha256Digest::of(b"x"),
            rank: 0,
            idempotency: None,
        };
        nodes[0].create(new, exportcore::Timestamp::now()).await.unwrap();
    }
    let claimed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for (n, store) in nodes.iter().enumerate() {
        for _ in 0..3 {
            let (store, claimed) = (store.clone(), claimed.clone());
            workers.push(tokio::spawn(async move {
                let lease = exportcore::Lease::new(exportcore::Timestamp::now().plus_days(1));
                while let Some(c) = store.claim_next(exportcore::Timestamp::now(), &lease).await.unwrap() {
                    claimed.lock().unwrap().push((n, c.run.run_id.clone()));
                }
            }));
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    let claimed = claimed.lock().unwrap().clone();
    let unique: std::collections::BTreeSet<_> = claimed.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(claimed.len(), 201, "every queued run (200 + the keyed one) claimed");
    assert_eq!(unique.len(), claimed.len(), "no run claimed twice");
    let per_node: Vec<usize> = (0..3).map(|n| claimed.iter().filter(|(m, _)| *m == n).count()).collect();
    assert!(per_node.iter().filter(|&&c| c > 0).count() >= 2, "the work spread over nodes: {per_node:?}");

    // A forged id of another tenant is "not found" on every tenant-facing call.
    let (_, any) = &claimed[0];
    let other = TenantId::parse("intruder").unwrap();
    assert_eq!(nodes[1].get(&other, any).await.unwrap_err().code(), "ERR_EXPORT_NOT_FOUND");
    assert_eq!(nodes[1].events(&other, any, 0, 10).await.unwrap_err().code(), "ERR_EXPORT_NOT_FOUND");
    let e = exportcore::RunError { code: "ERR_EXPORT_CANCELLED".into(), message: "x".into() };
    assert_eq!(
        nodes[1].fail_if_queued(&other, any, e, exportcore::Timestamp::now()).await.unwrap_err().code(),
        "ERR_EXPORT_NOT_FOUND"
    );
    assert!(nodes[1].list(&other, &Default::default()).await.unwrap().runs.is_empty());
}

async fn futures_join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in fs {
        out.push(f.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_runs_on_postgres_and_survives_a_server_restart() {
    if !enabled() {
        return;
    }
    let mut pg = Pg::start();
    let url = pg.database("engine").await;
    let store = PostgresStore::connect(&url).await.unwrap();
    let exporter = Exporter::builder()
        .profiles(exportcore::Profiles::new().with(Hello))
        .sink(exportcore::InMemorySink::new())
        .evidence(exportcore::MemoryEvidence::new())
        .store(store.clone())
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let workers = exporter.start();
    let tenant = TenantId::parse("acme").unwrap();
    let wait = |id: exportcore::RunId| {
        let (exporter, tenant) = (exporter.clone(), tenant.clone());
        async move {
            let start = Instant::now();
            loop {
                if let Ok(run) = exporter.get(&tenant, &id).await {
                    if run.status.is_terminal() {
                        return run;
                    }
                }
                assert!(start.elapsed() < Duration::from_secs(60), "run {id} did not finish");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let a = exporter.submit(Submission::new(tenant.clone(), request("hello:txt"))).await.unwrap();
    assert_eq!(wait(a.run_id).await.status, RunStatus::Succeeded);
    // The server restarts: calls fail while it is down (ERR_EXPORT_IO), then the pool
    // reconnects and the engine goes on.
    pg.stop();
    let down = exporter.submit(Submission::new(tenant.clone(), request("hello:txt"))).await.unwrap_err();
    assert_eq!(down.code(), "ERR_EXPORT_IO", "{down}");
    pg.run();
    let mut accepted = None;
    for _ in 0..100 {
        match exporter.submit(Submission::new(tenant.clone(), request("hello:txt"))).await {
            Ok(s) => {
                accepted = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let b = accepted.expect("the store reconnects after the restart");
    assert_eq!(wait(b.run_id).await.status, RunStatus::Succeeded);
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sweeps_take_turns_across_nodes() {
    if !enabled() {
        return;
    }
    let pg = Pg::start();
    let url = pg.database("sweeps").await;
    let (a, b) = (PostgresStore::connect(&url).await.unwrap(), PostgresStore::connect(&url).await.unwrap());
    let held = a.sweep_guard().await.unwrap().expect("the first node sweeps");
    assert!(b.sweep_guard().await.unwrap().is_none(), "the second waits its turn");
    drop(held);
    let start = Instant::now();
    loop {
        if b.sweep_guard().await.unwrap().is_some() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the lock went with the dropped guard's connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two engines sweep the same due runs at the same moment: each run is expired once.
    let clock = exportcore::engine::ManualClock::new(exportcore::Timestamp::parse("2026-01-01T00:00:00Z").unwrap());
    let sink = exportcore::InMemorySink::new();
    let engine = |store: PostgresStore| {
        Exporter::builder()
            .profiles(exportcore::Profiles::new().with(Hello))
            .sink(sink.clone())
            .evidence(exportcore::MemoryEvidence::new())
            .store(store)
            .clock(clock.clone())
            .max_queued(1000)
            .build()
            .unwrap()
    };
    let (ea, eb) = (engine(a), engine(b));
    let tenant = TenantId::parse("acme").unwrap();
    for _ in 0..40 {
        let mut r = request("hello:txt");
        r.retention_days = Some(1);
        let id = ea.submit(Submission::new(tenant.clone(), r)).await.unwrap().run_id;
        ea.execute_now(&tenant, &id).await.unwrap();
    }
    assert_eq!(sink.snapshot().len(), 80);
    clock.advance(Duration::from_secs(2 * 86_400));
    let now = exportcore::engine::Clock::now(&clock);
    let (ra, rb) = tokio::join!(ea.sweep(now), eb.sweep(now));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.expired + rb.expired, 40, "each run expired once: {ra:?} {rb:?}");
    assert_eq!(ra.artifacts_deleted + rb.artifacts_deleted, 80, "{ra:?} {rb:?}");
    assert!(sink.snapshot().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_a_server_restart_in_its_middle() {
    if !enabled() {
        return;
    }
    let mut pg = Pg::start();
    let url = pg.database("midrun").await;
    let store = PostgresStore::connect(&url).await.unwrap();
    let exporter = Exporter::builder()
        .profiles(exportcore::Profiles::new().with(Slow(3000)))
        .sink(exportcore::InMemorySink::new())
        .evidence(exportcore::MemoryEvidence::new())
        .store(store.clone())
        .poll_interval(Duration::from_millis(50))
        .lease_ttl(Duration::from_secs(6))
        .build()
        .unwrap();
    let workers = exporter.start();
    let tenant = TenantId::parse("acme").unwrap();
    let id = exporter.submit(Submission::new(tenant.clone(), request("slow:txt"))).await.unwrap().run_id;
    let start = Instant::now();
    while exporter.get(&tenant, &id).await.unwrap().status != RunStatus::Running {
        assert!(start.elapsed() < Duration::from_secs(30), "the run did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server goes away for a while the run works, then comes back.
    pg.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.run();
    let run = loop {
        if let Ok(run) = exporter.get(&tenant, &id).await {
            if run.status.is_terminal() {
                break run;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the run did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((run.status, run.attempts), (RunStatus::Succeeded, 1), "{run:?}");
    let events = exporter.store().events(&tenant, &id, 0, 1000).await.unwrap();
    assert_eq!(events.first().map(|e| e.event.name()), Some("started"));
    assert_eq!(events.last().map(|e| e.event.name()), Some("completed"));
    workers.shutdown().await;
}

/// Sleeps `.0` ms in steps, checking for cancellation, then writes one artifact.
#[derive(Debug)]
struct Slow(u64);

impl exportcore::Profile for Slow {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("slow:txt", "sleeps, then says hello")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
        use exportcore::IoContext;
        for i in 0..self.0 / 50 {
            ctx.check_cancelled()?;
            ctx.progress(exportcore::Progress::of(i + 1, self.0 / 50));
            std::thread::sleep(Duration::from_millis(50));
        }
        let spec = exportcore::ArtifactSpec::new("slow.txt", exportcore::ArtifactType::Data, "text", "text/plain")?;
        ctx.write_artifact(spec, |w| w.write_all(b"hello\n").at("slow.txt"))?;
        Ok(())
    }
}

#[derive(Debug)]
struct Hello;

impl exportcore::Profile for Hello {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("hello:txt", "says hello")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
        use exportcore::IoContext;
        ctx.time_anchor(None);
        let spec = exportcore::ArtifactSpec::new("hello.txt", exportcore::ArtifactType::Data, "text", "text/plain")?;
        ctx.write_artifact(spec, |w| w.write_all(b"hello\n").at("hello.txt"))?;
        Ok(())
    }
}
