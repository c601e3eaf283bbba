//! `trivy:db` build time against Go's bbolt writing the same buckets (issue 6):
//!
//! ```text
//! cargo run --release -p exportcore-benches --bin trivy-vs-go -- [--advisories 200000]
//! ```
//! 1. generates N advisories (seeded) plus the bundled sample advisories;
//! 2. builds `trivy:db` with our profile in a child process (time, peak RSS, file size) — the
//!    whole pipeline: parse and check OSV, map, spool, sort, write BoltDB, tar.gz, OCI layout;
//! 3. dumps every (bucket path, key, value) of our DB, in stored order, as NDJSON, and times
//!    `benches/go-bbolt-writer` (real Go bbolt) writing exactly those entries;
//! 4. runs Go bbolt's `tx.Check` on our file (`go-bbolt-writer -check`);
//! 5. scans `tests/fixtures/trivy/rootfs` with the real Trivy using each DB and checks the
//!    findings are identical.
//!
//! Prints both times (medians of `--repeat N` runs each, default 3), the ratio, both file
//! sizes and our peak RSS. `--ours-only` stops after step 2. Environment: `BENCH_GZIP_LEVEL=N` builds `db.tar.gz` at gzip level N (the request's
//! `compressionLevel`); `BENCH_PHASES=1` prints when each phase of our build starts.

use bbolt_rs::{BucketApi, DbApi, TxApi};
use exportcore::run::RunBuilder;
use exportcore::{DirEvidence, FsSink, ProfileId, RunRequest, Timestamp};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// mimalloc: allocation-heavy JSON parsing on several threads is markedly faster than with
/// glibc malloc (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn child(evidence: &Path, out: &Path) -> ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let anon = exportcore_benches::AnonPeak::start();
    let start = Instant::now();
    let run = rt.block_on(async {
        let mut req = RunRequest::new(ProfileId::from_static("trivy:db"));
        req.created_at = Timestamp::parse("2025-06-01T00:00:00Z").ok();
        req.compression_level = std::env::var("BENCH_GZIP_LEVEL").ok().and_then(|l| l.parse().ok());
        let mut run = RunBuilder::new(
            exportcore_trivy::TrivyDb,
            DirEvidence::new(evidence).expect("evidence"),
            FsSink::new(out).expect("sink"),
        )
        .events(exportcore_benches::phase_printer(start));
        if let Some(dir) = out.parent() {
            run = run.staging_dir(dir);
        }
        run.execute(req).await
    });
    if let Err(e) = run {
        eprintln!("run failed: {}", e.report());
        return ExitCode::from(1);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{secs:.3} {} {}", exportcore_benches::vm_hwm_kib(), anon.finish());
    ExitCode::SUCCESS
}

/// Writes every entry of a Trivy DB as go-bbolt-writer input.
fn dump(db: &Path, out: &Path) -> u64 {
    let bolt = bbolt_rs::Bolt::open_ro(db).expect("open our trivy.db read-only");
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).expect("kv file"));
    let mut n = 0u64;
    bolt.view(|tx| {
        for (root, _) in tx.iter_buckets() {
            let rb = tx.bucket(root).expect("root bucket");
            let root_s = String::from_utf8_lossy(root).into_owned();
            for (k, v) in rb.iter_entries() {
                let line = serde_json::json!({"b": [root_s], "k": String::from_utf8_lossy(k), "v": String::from_utf8_lossy(v)});
                writeln!(w, "{line}").expect("write");
                n += 1;
            }
            for (pkg, _) in rb.iter_buckets() {
                let pb = rb.bucket(pkg).expect("package bucket");
                let pkg_s = String::from_utf8_lossy(pkg).into_owned();
                for (k, v) in pb.iter_entries() {
                    let line = serde_json::json!({"b": [root_s, pkg_s], "k": String::from_utf8_lossy(k), "v": String::from_utf8_lossy(v)});
                    writeln!(w, "{line}").expect("write");
                    n += 1;
                }
            }
        }
        Ok(())
    })
    .expect("read our trivy.db");
    w.flush().expect("flush");
    n
}

fn trivy_findings(trivy: &Path, db_dir: &Path, tmp: &Path, tag: &str) -> String {
    let cache = tmp.join(format!("cache-{tag}"));
    std::fs::create_dir_all(cache.join("db")).expect("cache");
    for f in ["trivy.db", "metadata.json"] {
        std::fs::copy(db_dir.join(f), cache.join("db").join(f)).expect("copy");
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/trivy/rootfs");
    let o = Command::new(trivy)
        .arg("rootfs")
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--skip-db-update", "--skip-java-db-update", "--offline-scan", "--scanners", "vuln", "--format", "json"])
        .arg(&fixture)
        .output()
        .expect("trivy");
    assert!(o.status.success(), "trivy: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report");
    let mut found: Vec<String> = v["Results"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["Vulnerabilities"].as_array().cloned().unwrap_or_default())
        .map(|f| {
            format!(
                "{} {} {} {} {}",
                f["VulnerabilityID"], f["PkgName"], f["InstalledVersion"], f["FixedVersion"], f["Severity"]
            )
        })
        .collect();
    found.sort();
    found.join("\n")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(Path::new(&args[2]), Path::new(&args[3]));
    }
    let n: u64 = args.windows(2).find(|w| w[0] == "--advisories").and_then(|w| w[1].parse().ok()).unwrap_or(200_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().expect("tempdir");
    let ev = tmp.path().join("evidence");
    let opts = evidence_gen::GenOptions { advisories: n, advisories_per_file: 50_000, ..Default::default() };
    evidence_gen::generate(&ev, &opts).expect("generate");
    let st = Command::new("cp")
        .arg("-r")
        .arg(root.join("samples/evidence/advisories"))
        .arg(ev.join("advisories/samples"))
        .status();
    assert!(st.is_ok_and(|s| s.success()), "copy samples");

    // Each side runs `--repeat` times (default 3); times are medians, RSS the largest peak.
    let repeat: usize =
        args.windows(2).find(|w| w[0] == "--repeat").and_then(|w| w[1].parse().ok()).unwrap_or(3).max(1);
    let out = tmp.path().join("ours");
    let mut ours_runs = Vec::new();
    for _ in 0..repeat {
        let _ = std::fs::remove_dir_all(&out);
        let o = Command::new(std::env::current_exe().expect("exe"))
            .arg("--child")
            .arg(&ev)
            .arg(&out)
            .output()
            .expect("child");
        if !o.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&o.stderr));
            return ExitCode::from(1);
        }
        let line = String::from_utf8_lossy(&o.stdout).into_owned();
        let f: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        ours_runs.push((f[0], f[1], f[2]));
    }
    let ours_times: Vec<f64> = ours_runs.iter().map(|r| r.0).collect();
    let ours_s = exportcore_benches::median(&ours_times);
    let rss_kib = ours_runs.iter().map(|r| r.1).fold(0.0, f64::max);
    let anon_kib = ours_runs.iter().map(|r| r.2).fold(0.0, f64::max);
    let our_db = out.join("db/trivy.db");
    let our_size = std::fs::metadata(&our_db).expect("db").len();

    if args.iter().any(|a| a == "--ours-only") {
        println!(
            "advisories {n}: ours {ours_s:.2} s, trivy.db {our_size} bytes, peak RSS {:.1} MiB, peak anon {:.1} MiB",
            rss_kib / 1024.0,
            anon_kib / 1024.0
        );
        return ExitCode::SUCCESS;
    }
    let kv = tmp.path().join("kv.ndjson");
    let entries = dump(&our_db, &kv);
    let go_bin = tmp.path().join("go-bbolt-writer");
    let st =
        Command::new("sh").arg(root.join("benches/go-bbolt-writer/build.sh")).arg(&go_bin).status().expect("build.sh");
    assert!(st.success(), "building the Go reference writer failed");
    // Go bbolt (what Trivy links) checks the file our page writer produced.
    let o = Command::new(&go_bin).arg("-check").arg(&our_db).output().expect("go check");
    assert!(o.status.success(), "Go bbolt rejects our trivy.db: {}", String::from_utf8_lossy(&o.stderr));
    println!("Go bbolt tx.Check on our trivy.db: ok ({} keys, buckets)", String::from_utf8_lossy(&o.stdout).trim());
    let go_db_dir = tmp.path().join("go-db");
    std::fs::create_dir_all(&go_db_dir).expect("dir");
    let go_db = go_db_dir.join("trivy.db");
    let mut go_times = Vec::new();
    for _ in 0..repeat {
        let start = Instant::now();
        let o = Command::new(&go_bin).args(["-batch", "20000", "-f"]).arg(&kv).arg(&go_db).output().expect("go writer");
        let go_wall = start.elapsed().as_secs_f64();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        go_times.push(String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(go_wall));
    }
    let go_s = exportcore_benches::median(&go_times);
    let go_size = std::fs::metadata(&go_db).expect("go db").len();
    std::fs::copy(out.join("db/metadata.json"), go_db_dir.join("metadata.json")).expect("metadata");

    println!("advisories: {n} generated + samples; {entries} DB entries; median of {repeat} runs each");
    println!("  ours: {}", ours_times.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>().join(" "));
    println!("  Go:   {}", go_times.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>().join(" "));
    println!("{:>28} {:>10} {:>14} {:>14} {:>14}", "", "seconds", "trivy.db bytes", "peak RSS MiB", "peak anon MiB");
    println!(
        "{:>28} {:>10.2} {:>14} {:>14.1} {:>14.1}",
        "ours (OSV -> db.tar.gz+OCI)",
        ours_s,
        our_size,
        rss_kib / 1024.0,
        anon_kib / 1024.0
    );
    println!("{:>28} {:>10.2} {:>14} {:>14} {:>14}", "Go bbolt (write KV only)", go_s, go_size, "-", "-");
    println!("ratio ours/go: {:.2}   size ours/go: {:.2}", ours_s / go_s, our_size as f64 / go_size as f64);

    let trivy = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/exportcore/trivy-venv/bin/trivy");
    if trivy.exists() {
        let a = trivy_findings(&trivy, &out.join("db"), tmp.path(), "ours");
        let b = trivy_findings(&trivy, &go_db_dir, tmp.path(), "go");
        println!("trivy findings identical with either DB: {} ({} findings)", a == b, a.lines().count());
        if a != b {
            return ExitCode::from(1);
        }
    } else {
        println!("trivy not installed (scripts/install-trivy.sh): findings comparison skipped");
    }
    ExitCode::SUCCESS
}
