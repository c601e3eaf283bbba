//! Crash safety: `exportctl run` is killed with SIGKILL at several points of a long run and
//! restarted. The run is then reported failed with `ERR_EXPORT_INTERRUPTED` (or it had
//! finished), no artifact reported ready is incomplete, no partial file sits under a final
//! name, and the SQLite store passes `PRAGMA integrity_check`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::store::{RunStore, SqliteStore};
use exportcore::verify::{verify_archive, VerifyReport};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn exportctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exportctl"));
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}

/// Final-named files of an output directory must each be complete.
fn assert_no_partial_files(out: &Path) {
    let Ok(rd) = std::fs::read_dir(out) else { return };
    for e in rd {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".exportcore-tmp-") {
            continue; // temporary files are never final names
        }
        let path = e.path();
        if name.ends_with(".tar.zst") {
            let mut report = VerifyReport::default();
            verify_archive(std::fs::File::open(&path).unwrap(), "", &mut report);
            assert!(report.is_ok(), "partial bundle under a final name: {name}: {:?}", report.failures);
        } else if name == "manifest.json" {
            let r = exportcore::verify::verify_path(out).unwrap();
            assert!(r.is_ok(), "manifest.json present but the run output does not verify: {:?}", r.failures);
        }
    }
}

#[test]
fn sigkill_at_several_points_then_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let ev = tmp.path().join("evidence");
    let opts = evidence_gen::GenOptions { advisories: 60_000, advisories_per_file: 20_000, ..Default::default() };
    evidence_gen::generate(&ev, &opts).unwrap();
    let store = tmp.path().join("runs.sqlite");
    let mut outcomes = Vec::new();
    for (i, delay_ms) in [0u64, 150, 500, 1200, 2500].into_iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let mut child = exportctl()
            .args(["run", "--profile", "json:policy", "--tenant", "crash"])
            .arg("--evidence")
            .arg(&ev)
            .arg("--out")
            .arg(&out)
            .arg("--store")
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for "started <run id>" on stderr, then kill after the delay.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let run_id = loop {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "exportctl ended before starting");
            if let Some(rest) = line.strip_prefix("started ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline);
        };
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        // Restart: any exportctl on the store recovers interrupted runs.
        let o = exportctl()
            .args(["runs", "show", &run_id, "--json", "--tenant", "crash"])
            .arg("--store")
            .arg(&store)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let state = run["status"].as_str().unwrap().to_owned();
        match state.as_str() {
            "failed" => assert_eq!(run["errors"][0]["code"], "ERR_EXPORT_INTERRUPTED", "kill at {delay_ms} ms: {run}"),
            "succeeded" => assert!(exportcore::verify::verify_path(&out).unwrap().is_ok()),
            other => panic!("run left {other} after a restart: {run}"),
        }
        outcomes.push((delay_ms, state, status.success()));
        // Every artifact the store reported ready is complete and matches its digest.
        let events = exportctl()
            .args(["runs", "events", &run_id, "--tenant", "crash"])
            .arg("--store")
            .arg(&store)
            .output()
            .unwrap();
        for l in String::from_utf8_lossy(&events.stdout).lines() {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            if e["event"] == "artifact_ready" {
                let bytes = std::fs::read(out.join(e["path"].as_str().unwrap())).expect("reported artifact exists");
                use sha2::Digest;
                assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), e["sha256"].as_str().unwrap());
            }
        }
        assert_no_partial_files(&out);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = SqliteStore::open(&store).unwrap();
            s.integrity_check().unwrap();
            assert!(s.running().await.unwrap().is_empty(), "no run stays 'running' after a restart");
        });
    }
    eprintln!("kill outcomes (delay ms, final status, exit ok): {outcomes:?}");
    // At least one kill landed mid-run (the run takes seconds in a debug build).
    assert!(outcomes.iter().any(|(_, s, _)| s == "failed"), "{outcomes:?}");
}

/// `exportcore-run-*` staging directories beside `dir`'s children.
fn staging_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(exportcore::run::STAGING_PREFIX))
        .collect();
    v.sort();
    v
}

/// Starts `exportctl run` on `ev` into `out` and returns once the run has started.
fn start_run(ev: &Path, out: &Path, store: &Path) -> std::process::Child {
    let mut child = exportctl()
        .args(["run", "--profile", "json:policy"])
        .arg("--evidence")
        .arg(ev)
        .arg("--out")
        .arg(out)
        .arg("--store")
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "exportctl ended before starting");
        if line.starts_with("progress") {
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    child
}

/// SIGTERM and SIGINT cancel a run cleanly (no staging left, `--out` as found); a SIGKILLed
/// run's staging, which nothing can clean at the time, is swept by the next run.
#[test]
fn signals_clean_up_and_killed_staging_is_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let ev = tmp.path().join("evidence");
    let opts = evidence_gen::GenOptions { advisories: 60_000, advisories_per_file: 20_000, ..Default::default() };
    evidence_gen::generate(&ev, &opts).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let store = tmp.path().join("runs.sqlite");
    let mut cancelled = 0;
    for (i, signal) in ["TERM", "INT"].into_iter().enumerate() {
        let out = work.join(format!("out-{i}"));
        let child = start_run(&ev, &out, &store);
        let st = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
        assert!(st.success());
        let o = child.wait_with_output().unwrap();
        if o.status.success() {
            eprintln!("SIG{signal}: the run finished before the signal landed");
            continue;
        }
        cancelled += 1;
        assert_eq!(o.status.code(), Some(1), "SIG{signal}");
        assert!(!out.exists(), "SIG{signal}: --out must be left as found (absent)");
        assert!(staging_dirs(&work).is_empty(), "SIG{signal}: staging left: {:?}", staging_dirs(&work));
    }
    // The run takes seconds in a debug build and the signal follows its first progress line.
    assert!(cancelled > 0, "no signal landed mid-run");
    let out = work.join("out-killed");
    let mut child = start_run(&ev, &out, &store);
    child.kill().unwrap();
    child.wait().unwrap();
    let left = staging_dirs(&work);
    assert!(!left.is_empty(), "a SIGKILLed run leaves its staging (nothing can clean it)");
    {
        // The next run into the same parent directory removes it.
        let next = work.join("out-next");
        let o = exportctl()
            .args(["run", "--profile", "json:raw", "--evidence"])
            .arg(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence"))
            .arg("--out")
            .arg(&next)
            .arg("--store")
            .arg(&store)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(staging_dirs(&work).is_empty(), "stale staging not swept: {:?}", staging_dirs(&work));
    }
}

/// SIGINT at any point of `mirror apply` leaves `--out` absent (exit 1,
/// `ERR_EXPORT_CANCELLED`) or whole (exit 0: a signal during the final rename waits for it,
/// one after it lets the command finish): never part of a tree, never a whole tree reported
/// as cancelled. The signals are spread from the start to past the end of an apply.
#[test]
fn a_signal_at_any_point_of_mirror_apply_leaves_out_absent_or_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let samples = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence");
    let prefix = tmp.path().join("signer");
    let ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(exportctl().args(["keygen", "--algorithm", "ed25519", "--out"]).arg(&prefix));
    let (key, public) = (tmp.path().join("signer.key"), tmp.path().join("signer.pub"));
    let (old, delta, ev2) = (tmp.path().join("old"), tmp.path().join("delta"), tmp.path().join("ev2"));
    let mirror = |profile: &str, ev: &Path, out: &Path, extra: &[&Path]| {
        let mut c = exportctl();
        c.args(["run", "--profile", profile, "--evidence"]).arg(ev).arg("--out").arg(out).arg("--sign-key").arg(&key);
        c.args(["--created-at", "2025-06-01T00:00:00Z", "--store"]).arg(tmp.path().join("runs.sqlite"));
        if let Some(base) = extra.first() {
            c.arg("--base").arg(base);
        }
        ok(&mut c);
    };
    mirror("mirror:full", &samples, &old, &[]);
    assert!(Command::new("cp").arg("-r").arg(&samples).arg(&ev2).status().unwrap().success());
    std::fs::remove_file(ev2.join("advisories/pypi/GHSA-r3xc-prgr-mg9p.json")).unwrap();
    mirror("mirror:delta", &ev2, &delta, &[&old]);
    let apply = |out: &Path| {
        let mut c = exportctl();
        c.args(["mirror", "apply", "--base"]).arg(&old).arg("--delta").arg(&delta).arg("--out").arg(out);
        c.arg("--key").arg(&public).stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let start = Instant::now();
    ok(&mut apply(&tmp.path().join("timed")));
    let took = start.elapsed();
    let (mut cancelled, mut finished) = (0, 0);
    // From a fifth of an apply to past its end; then, if the machine is so busy that none
    // finished, later and later (doubling) until one does.
    for i in 0..50u32 {
        if i >= 40 && finished > 0 {
            break;
        }
        let delay = if i < 40 { took * (i + 8) / 36 } else { took * (2 << (i - 40)) };
        let out = tmp.path().join(format!("new-{i}"));
        let child = apply(&out).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(0) => {
                finished += 1;
                let v = exportctl()
                    .args(["verify", out.to_str().unwrap(), "--key", public.to_str().unwrap()])
                    .args(["--now", "2025-06-02T00:00:00Z"])
                    .output()
                    .unwrap();
                assert!(v.status.success(), "signal {i}: exit 0 but --out does not verify: {v:?}");
            }
            Some(1) => {
                cancelled += 1;
                assert!(stderr.contains("ERR_EXPORT_CANCELLED"), "signal {i}: {stderr}");
                assert!(!out.exists(), "signal {i}: cancelled, but --out exists (part of a tree?)");
            }
            // Killed before the process installed its handlers: nothing was published.
            None => assert!(!out.exists(), "signal {i}: killed by the signal, but --out exists"),
            Some(c) => panic!("signal {i}: exit {c}: {stderr}"),
        }
    }
    eprintln!("apply takes {took:?}: {cancelled} cancelled, {finished} finished");
    assert!(cancelled > 0 && finished > 0, "the signals did not span an apply");
}
