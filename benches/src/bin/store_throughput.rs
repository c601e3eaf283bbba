//! Run-store throughput on SQLite (issue 4):
//!
//! ```text
//! cargo run --release -p exportcore-benches --bin store-throughput -- [--runs 10000] [--events 100000]
//! ```
//! 1. store level: submit (create) + claim + complete (save) `--runs` runs, each a committed
//!    transaction in a WAL-mode file; prints runs/s;
//! 2. append `--events` events across those runs; prints events/s;
//! 3. engine level: the same through `Exporter::submit` and the worker pool with a profile that
//!    writes one byte, into an in-memory sink (staging, digests, manifest, events included).

use exportcore::engine::{Exporter, Submission};
use exportcore::store::{IdempotencyKey, NewRun, RunStore, SqliteStore};
use exportcore::{
    ArtifactSpec, ArtifactType, ExportContext, InMemorySink, MemoryEvidence, Profile, ProfileDescriptor, ProfileId,
    Profiles, Progress, Run, RunEvent, RunId, RunRequest, RunStatus, Sha256Digest, TenantId, Timestamp,
};
use std::time::Instant;

/// mimalloc: allocation-heavy JSON parsing on several threads is markedly faster than with
/// glibc malloc (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug)]
struct Noop;

impl Profile for Noop {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new("bench:noop", "writes one byte")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut ExportContext<'_>) -> exportcore::Result<()> {
        let spec = ArtifactSpec::new("x", ArtifactType::Data, "bin", "application/octet-stream")?;
        ctx.write_artifact(spec, |w| w.write_all(b"x").map_err(|e| exportcore::ExportError::io("x", e)))?;
        Ok(())
    }
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> exportcore::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs = arg(&args, "--runs", 10_000);
    let events = arg(&args, "--events", 100_000);
    let engine_runs = arg(&args, "--engine-runs", 2_000);
    let dir = tempfile::tempdir().map_err(|e| exportcore::ExportError::io("tempdir", e))?;
    let store = SqliteStore::open(dir.path().join("bench.sqlite"))?;

    let request = RunRequest::new(ProfileId::from_static("bench:noop"));
    let tenant = TenantId::from_static("bench");
    let hash = Sha256Digest::of(b"bench");
    let start = Instant::now();
    let mut ids = Vec::with_capacity(runs as usize);
    for i in 0..runs {
        let now = Timestamp::now();
        let id = RunId::parse(format!("export-run::bench::{i:08}"))?;
        let run = Run::queued(id, tenant.clone(), None, request.profile_id.clone(), now);
        let idempotency =
            Some(IdempotencyKey { key: format!("k{i}"), expires_at: Timestamp::from_unix(now.unix() + 86_400)? });
        store
            .create(NewRun { run, request: request.clone(), request_hash: hash, rank: i as i64, idempotency }, now)
            .await?;
        let lease = exportcore::Lease::new(Timestamp::from_unix(now.unix() + 30)?);
        let claimed = store.claim_next(Timestamp::now(), &lease).await?.expect("queued run");
        let mut done = claimed.run;
        done.status = RunStatus::Succeeded;
        done.finished_at = Some(Timestamp::now());
        done.progress = Progress::of(1, 1);
        store.save(&done).await?;
        ids.push(done.run_id);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("store: {runs} runs submitted+claimed+completed in {secs:.2} s = {:.0} runs/s", runs as f64 / secs);

    let start = Instant::now();
    for i in 0..events {
        let id = &ids[(i % runs) as usize];
        let ev = RunEvent::Progress { run_id: id.clone(), progress: Progress::of(i, events) };
        store.append_event(id, None, Timestamp::now(), &ev).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("store: {events} events appended in {secs:.2} s = {:.0} events/s", events as f64 / secs);
    store.integrity_check()?;

    let exporter = Exporter::builder()
        .profiles(Profiles::new().with(Noop))
        .sink(InMemorySink::new())
        .evidence(MemoryEvidence::new())
        .store(SqliteStore::open(dir.path().join("engine.sqlite"))?)
        .concurrency(2)
        .max_queued(engine_runs + 1)
        .build()?;
    let start = Instant::now();
    for _ in 0..engine_runs {
        exporter.submit(Submission::new(tenant.clone(), request.clone())).await?;
    }
    exporter.run_until_idle().await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "engine: {engine_runs} no-op runs submitted and executed end to end (staging, manifest, events) in {secs:.2} s = {:.0} runs/s",
        engine_runs as f64 / secs
    );
    Ok(())
}
