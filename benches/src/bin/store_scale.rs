//! Scale-out of the run store (issue 15): submit + claim + complete throughput with 1, 2 and 4
//! worker processes sharing one PostgreSQL, next to the SQLite store in one process.
//!
//! ```text
//! cargo build --release -p exportcore-benches --bin store-scale
//! target/release/store-scale [--seconds 10] [--tasks 8] [--workers 1,2,4] [--fsync on|off]
//! ```
//! Needs Debian's `postgresql` (`tests/interop/install.sh` installs it): the benchmark starts
//! its own server (`initdb` in a temporary directory, loopback port, stopped by PID) with
//! PostgreSQL's durable defaults (`--fsync off` shows what the disk costs). Each worker
//! process runs `--tasks` loops of: create a queued run, claim the next queued run (timed: the
//! claim latency), finish it (`succeeded` and its terminal event, one transaction). Afterwards
//! the database is checked: every run succeeded, none was claimed twice (`attempts` = 1), each
//! has exactly one event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/pg.rs"]
mod pg;

use exportcore::store::{NewRun, RunStore, SqliteStore};
use exportcore::{Lease, ProfileId, Run, RunEvent, RunId, RunRequest, RunStatus, Sha256Digest, TenantId, Timestamp};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].as_str())
}

/// What one process did: runs completed and every claim's latency in microseconds.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Report {
    completed: u64,
    claims_us: Vec<u64>,
}

/// `tasks` loops of create + claim + finish on `store` until `until`.
async fn drive(store: Arc<dyn RunStore>, tag: &str, tasks: usize, until: Instant) -> Report {
    let mut loops = Vec::new();
    for task in 0..tasks {
        let (store, tag) = (Arc::clone(&store), tag.to_owned());
        loops.push(tokio::spawn(async move {
            let tenant = TenantId::from_static("bench");
            let request = RunRequest::new(ProfileId::from_static("json:raw"));
            let hash = Sha256Digest::of(b"bench");
            let mut report = Report::default();
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let now = Timestamp::now();
                let id = RunId::parse(format!("export-run::bench::{tag}-{task}-{n}")).unwrap();
                let run = Run::queued(id, tenant.clone(), None, request.profile_id.clone(), now);
                let new = NewRun { run, request: request.clone(), request_hash: hash, rank: 0, idempotency: None };
                store.create(new, now).await.unwrap();
                let lease = Lease::new(now.plus(Duration::from_secs(30)));
                let start = Instant::now();
                let claimed = store.claim_next(Timestamp::now(), &lease).await.unwrap();
                report.claims_us.push(start.elapsed().as_micros() as u64);
                // Another loop may have taken ours (and we one of theirs): the queue decides.
                let Some(claimed) = claimed else { continue };
                let mut done = claimed.run;
                done.status = RunStatus::Succeeded;
                done.finished_at = Some(Timestamp::now());
                let ev = RunEvent::Completed { run_id: done.run_id.clone(), status: RunStatus::Succeeded };
                store.finish(&done, Timestamp::now(), &ev).await.unwrap();
                report.completed += 1;
            }
            report
        }));
    }
    let mut all = Report::default();
    for l in loops {
        let r = l.await.unwrap();
        all.completed += r.completed;
        all.claims_us.extend(r.claims_us);
    }
    all
}

/// CPU seconds of process `pid` and its reaped children (`/proc/PID/stat` utime, stime,
/// cutime, cstime; PostgreSQL's backends are reaped by the postmaster when they disconnect).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // After the command name: state is field 3, utime..cstime are fields 14..=17.
    fields.get(11..15).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>() / 100.0)
}

fn p99_ms(lat: &mut [u64]) -> f64 {
    lat.sort_unstable();
    lat.get(lat.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0) as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = arg(&args, "--seconds").and_then(|s| s.parse().ok()).unwrap_or(10);
    let tasks: usize = arg(&args, "--tasks").and_then(|s| s.parse().ok()).unwrap_or(8);
    // A worker process: wait for the common start, drive, print the report.
    if let Some(url) = arg(&args, "--worker") {
        let start_ms: u128 = arg(&args, "--start-ms").and_then(|s| s.parse().ok()).unwrap();
        let tag = arg(&args, "--tag").unwrap_or("w");
        let store: Arc<dyn RunStore> = Arc::new(exportcore_postgres::PostgresStore::connect(url).await.unwrap());
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        tokio::time::sleep(Duration::from_millis(start_ms.saturating_sub(now_ms) as u64)).await;
        let report = drive(store, tag, tasks, Instant::now() + Duration::from_secs(seconds)).await;
        println!("{}", serde_json::to_string(&report).unwrap());
        return;
    }
    let workers: Vec<usize> =
        arg(&args, "--workers").unwrap_or("1,2,4").split(',').map(|s| s.parse().expect("--workers 1,2,4")).collect();
    let fsync = arg(&args, "--fsync").unwrap_or("on");
    println!("store-scale: submit + claim + complete, {tasks} concurrent loops per process, {seconds} s per point");

    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("bench.sqlite")).unwrap());
    let mut r = drive(sqlite, "sqlite", tasks, Instant::now() + Duration::from_secs(seconds)).await;
    let sqlite_rate = r.completed as f64 / seconds as f64;
    println!(
        "sqlite, 1 process (WAL, synchronous=NORMAL) : {sqlite_rate:>7.0} runs/s  claim p99 {:>6.2} ms",
        p99_ms(&mut r.claims_us)
    );

    let settings: &[&str] = if fsync == "off" { &["fsync=off", "synchronous_commit=off"] } else { &[] };
    let server = pg::Pg::start_with(settings);
    println!("postgresql {}, fsync {fsync}, on the same 2 cores", pg::bin_dir().display());
    let mut base = None;
    for n in workers {
        let url = server.database(&format!("scale{n}")).await;
        exportcore_postgres::PostgresStore::connect(&url).await.unwrap(); // migrate once
        let server_pid = server.pid().unwrap().to_string();
        let (server_cpu, workers_cpu) = (cpu_seconds(&server_pid), cpu_seconds("self"));
        let start_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 1500;
        let children: Vec<_> = (0..n)
            .map(|i| {
                Command::new(std::env::current_exe().unwrap())
                    .args(["--worker", &url, "--start-ms", &start_ms.to_string(), "--tag", &format!("p{i}")])
                    .args(["--seconds", &seconds.to_string(), "--tasks", &tasks.to_string()])
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut all = Report::default();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "a worker process failed");
            let r: Report = serde_json::from_slice(&out.stdout).unwrap();
            all.completed += r.completed;
            all.claims_us.extend(r.claims_us);
        }
        let rate = all.completed as f64 / seconds as f64;
        let base_rate = *base.get_or_insert(rate);
        // The workers' connections are closed: their backends' CPU is now the postmaster's.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let per_run_us = |cpu: f64| cpu / all.completed.max(1) as f64 * 1e6;
        let (server_cpu, workers_cpu) = (cpu_seconds(&server_pid) - server_cpu, cpu_seconds("self") - workers_cpu);
        // Exactly once: every run succeeded, with one attempt and one event.
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                        count(*) FILTER (WHERE (record::jsonb->>'attempts')::int <> 1),
                        (SELECT count(*) FROM (SELECT run_id FROM events GROUP BY run_id HAVING count(*) <> 1) x)
                 FROM runs WHERE status <> 'queued'",
                &[],
            )
            .await
            .unwrap();
        let (succeeded, twice, bad_events): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(succeeded as u64, all.completed, "every claimed run completed once");
        assert_eq!((twice, bad_events), (0, 0), "a run was claimed twice");
        println!(
            "postgresql, {n} worker process{}            : {rate:>7.0} runs/s  claim p99 {:>6.2} ms  scaling {:.2}x  ({succeeded} runs, none claimed twice)",
            if n == 1 { "  " } else { "es" },
            p99_ms(&mut all.claims_us),
            rate / base_rate,
        );
        println!(
            "    CPU per run: postgres {:.0} us, workers {:.0} us; {:.2} of 2 cores busy",
            per_run_us(server_cpu),
            per_run_us(workers_cpu),
            (server_cpu + workers_cpu) / seconds as f64
        );
    }
    println!("sqlite/postgres(1) ratio: {:.2}x", sqlite_rate / base.unwrap_or(1.0));
}
