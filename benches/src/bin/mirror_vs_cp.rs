//! `mirror:full` against `cp -r` plus `sha256sum` of the same evidence, and `mirror:delta` of
//! 1 % changed records against the full build (issue 12).
//!
//! ```text
//! cargo run --release -p exportcore-benches --bin mirror-vs-cp -- [--sizes 100M,1G] [--blobs 0,0.5,0.9] [--repeat 1] [--dir DIR]
//! ```
//! Per size and blob share: generates about that much evidence (seeded), the share as
//! already-compressed blobs (incompressible files of 16 MiB under `blobs/`) and the rest as
//! NDJSON records; times the reference (`cp -r` of the evidence, then `sha256sum` of every
//! copied file) and our `mirror:full` of it (in a child process: wall time and peak RSS,
//! VmHWM), then changes the `modified` time of every 100th advisory and times `mirror:delta`
//! against the full build. Prints medians of `--repeat` runs, the ratios and peak RSS.

use exportcore::run::RunBuilder;
use exportcore::{DirEvidence, FsSink, Profile, RunRequest, Timestamp};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// mimalloc, as in the other bench binaries (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// In the child: one run, then "seconds peak_rss_kib" on stdout.
fn child(kind: &str, evidence: &Path, out: &Path, base: Option<&Path>) -> ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let start = Instant::now();
    let profile: Box<dyn Fn() -> std::sync::Arc<dyn Profile>> = match (kind, base) {
        ("delta", Some(b)) => {
            let b = b.to_path_buf();
            Box::new(move || std::sync::Arc::new(exportcore_mirror::MirrorDelta::new(&b)))
        }
        _ => Box::new(|| std::sync::Arc::new(exportcore_mirror::MirrorFull::default())),
    };
    let created = if kind == "delta" { "2026-01-02T00:00:00Z" } else { "2026-01-01T00:00:00Z" };
    // MIRROR_RSS_TRACE=1: resident memory every 100 ms and each event, on stderr, to see which
    // phase holds the peak.
    let trace = std::env::var("MIRROR_RSS_TRACE").is_ok_and(|v| v == "1");
    if trace {
        std::thread::spawn(move || loop {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or("0")
                    .to_owned()
            };
            eprintln!(
                "{:7.2}s VmRSS: {} kB anon {} file {} threads {}",
                start.elapsed().as_secs_f64(),
                field("VmRSS:"),
                field("RssAnon:"),
                field("RssFile:"),
                field("Threads:")
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        });
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<exportcore::RunEvent>();
    rt.spawn(async move {
        let mut last = None;
        while let Some(ev) = rx.recv().await {
            let percent = match &ev {
                exportcore::RunEvent::Progress { progress, .. } => Some(progress.percent),
                _ => None,
            };
            if trace && (percent.is_none() || percent != last) {
                eprintln!(
                    "{:7.2}s event {}",
                    start.elapsed().as_secs_f64(),
                    serde_json::to_string(&ev).unwrap_or_default()
                );
            }
            last = percent.or(last);
        }
    });
    let outcome = rt.block_on(async {
        let p = profile();
        let mut req = RunRequest::new(p.descriptor().id);
        req.created_at = Timestamp::parse(created).ok();
        // Signed (TUF needs it), with the key the parent made.
        req.distribution =
            Some(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("bench"));
        let pem = std::fs::read_to_string(out.parent().expect("parent").join("bench.key")).expect("bench.key");
        RunBuilder::from_arcs(
            p,
            std::sync::Arc::new(DirEvidence::new(evidence).expect("evidence")),
            std::sync::Arc::new(FsSink::new(out).expect("sink")),
        )
        .signer(exportcore_crypto::signer_from_pem(&pem).expect("signer"))
        .staging_dir(out.parent().expect("parent"))
        .events(tx)
        .execute(req)
        .await
    });
    if let Err(e) = outcome {
        eprintln!("run failed: {}", e.report());
        return ExitCode::from(1);
    }
    println!("{:.3} {}", start.elapsed().as_secs_f64(), exportcore_benches::vm_hwm_kib());
    ExitCode::SUCCESS
}

fn run_child(kind: &str, ev: &Path, out: &Path, base: Option<&Path>) -> (f64, f64) {
    let _ = std::fs::remove_dir_all(out);
    let mut c = Command::new(std::env::current_exe().expect("exe"));
    c.arg("--child").arg(kind).arg(ev).arg(out);
    if let Some(b) = base {
        c.arg(b);
    }
    let o = c.output().expect("child");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8_lossy(&o.stdout).into_owned();
    let f: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (f[0], f[1])
}

fn reference(ev: &Path, dir: &Path) -> f64 {
    let copy = dir.join("reference-copy");
    let _ = std::fs::remove_dir_all(&copy);
    let start = Instant::now();
    let script = "cp -r \"$1\" \"$2\" && find \"$2\" -type f -print0 | xargs -0 sha256sum > /dev/null";
    let st = Command::new("sh").arg("-c").arg(script).arg("sh").arg(ev).arg(&copy).status().expect("sh");
    assert!(st.success(), "reference failed");
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&copy);
    secs
}

/// What carrying a directory across costs: the bytes of its files, each hard-linked file once
/// (a mirror's OCI blobs and TUF targets are links to its files; `tar` stores them as links).
fn carried_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            if m.is_dir() {
                stack.push(e.path());
            } else if seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

/// `bytes` of already-compressed blobs (incompressible, seeded) in files of 16 MiB.
fn write_blobs(dir: &Path, bytes: u64) {
    const FILE: u64 = 16 << 20;
    std::fs::create_dir_all(dir).expect("blobs dir");
    let (mut left, mut i) = (bytes, 0u64);
    while left > 0 {
        let n = left.min(FILE);
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(dir.join(format!("layer-{i:05}.tar.gz"))).expect("blob"));
        exportcore_benches::write_incompressible(&mut f, n, 0x9e37_79b9 + i).expect("write blob");
        f.flush().expect("flush");
        left -= n;
        i += 1;
    }
}

/// A copy of `ev` with the `modified` time of every 100th advisory changed.
fn change_one_percent(ev: &Path, to: &Path) -> u64 {
    let _ = std::fs::remove_dir_all(to);
    assert!(Command::new("cp").arg("-r").arg(ev).arg(to).status().expect("cp").success());
    let mut changed = 0;
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(to.join("advisories")).expect("dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let mut n = 0u64;
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "ndjson")) {
        let input = std::io::BufReader::new(std::fs::File::open(f).expect("open"));
        let tmp = f.with_extension("tmp");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create"));
        for line in input.lines() {
            let mut line = line.expect("line");
            if n.is_multiple_of(100) {
                if let Some(i) = line.find("\"modified\":\"") {
                    let start = i + "\"modified\":\"".len();
                    line.replace_range(start..start + 20, "2025-12-31T00:00:00Z");
                    changed += 1;
                }
            }
            n += 1;
            writeln!(out, "{line}").expect("write");
        }
        out.flush().expect("flush");
        drop(out);
        std::fs::rename(&tmp, f).expect("rename");
    }
    changed
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2], Path::new(&args[3]), Path::new(&args[4]), args.get(5).map(Path::new));
    }
    let sizes: Vec<u64> = exportcore_benches::arg(&args, "--sizes")
        .unwrap_or("100M,1G")
        .split(',')
        .filter_map(exportcore_benches::parse_size)
        .collect();
    let shares: Vec<f64> =
        exportcore_benches::arg(&args, "--blobs").unwrap_or("0").split(',').filter_map(|s| s.parse().ok()).collect();
    let repeat: usize = exportcore_benches::arg(&args, "--repeat").and_then(|r| r.parse().ok()).unwrap_or(1).max(1);
    let tmp = match exportcore_benches::arg(&args, "--dir") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let pair = exportcore_crypto::generate(exportcore_crypto::Algorithm::Ed25519).expect("key");
    std::fs::write(tmp.path().join("bench.key"), &pair.private_pem).expect("bench.key");
    println!(
        "| evidence | blobs | cp -r + sha256sum (s) | mirror:full (s) | ratio | peak RSS full | verify (s) | delta 1 % (s) | delta / full | peak RSS delta | bytes full | bytes delta | apply (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (size, share) in sizes.iter().flat_map(|s| shares.iter().map(move |b| (*s, *b))) {
        let ev = tmp.path().join(format!("ev-{size}"));
        let _ = std::fs::remove_dir_all(&ev);
        let blob_bytes = (size as f64 * share.clamp(0.0, 1.0)) as u64;
        let summary =
            evidence_gen::generate(&ev, &evidence_gen::GenOptions::with_volume(size - blob_bytes)).expect("generate");
        write_blobs(&ev.join("blobs"), blob_bytes);
        let (mut refs, mut fulls, mut deltas, mut rss, mut delta_rss) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let full_out = tmp.path().join("full");
        let ev2 = tmp.path().join("ev2");
        let changed = change_one_percent(&ev, &ev2);
        let (mut verifies, mut applies, mut sizes) = (Vec::new(), Vec::new(), (0, 0));
        for _ in 0..repeat {
            refs.push(reference(&ev, tmp.path()));
            let (secs, kib) = run_child("full", &ev, &full_out, None);
            fulls.push(secs);
            rss.push(kib);
            // The far side's cost: verifying the whole mirror (every byte, the TUF chain), with
            // the publisher's key as a user does (`exportctl verify OUT --key`).
            let start = Instant::now();
            let now = Timestamp::parse("2026-01-02T00:00:00Z").expect("time");
            let options = exportcore::verify::VerifyOptions {
                verifiers: vec![exportcore_crypto::verifier_from_pem(&pair.public_pem).expect("verifier")],
                ..Default::default()
            };
            let report = exportcore_mirror::verify_path_with(&full_out, &options, now).expect("verify");
            assert!(report.is_ok(), "the full build does not verify: {:?}", report.failures.first());
            verifies.push(start.elapsed().as_secs_f64());
            let delta_out = tmp.path().join("delta");
            let (secs, kib) = run_child("delta", &ev2, &delta_out, Some(&full_out));
            deltas.push(secs);
            delta_rss.push(kib);
            sizes = (carried_bytes(&full_out), carried_bytes(&delta_out));
            // The far side again: applying the delta (patches, the Trivy DB built from the
            // records, every file checked), in process.
            let applied = tmp.path().join("applied");
            let _ = std::fs::remove_dir_all(&applied);
            let start = Instant::now();
            exportcore_mirror::apply(&full_out, &delta_out, &applied, &Default::default()).expect("apply");
            applies.push(start.elapsed().as_secs_f64());
            let _ = std::fs::remove_dir_all(&applied);
        }
        let (r, f, d) = (
            exportcore_benches::median(&refs),
            exportcore_benches::median(&fulls),
            exportcore_benches::median(&deltas),
        );
        // Peak RSS varies from run to run with scheduling (how many batches are in flight
        // when the spiller holds a run): the median and the range.
        let mib = |v: &[f64]| {
            let max = v.iter().copied().fold(0.0, f64::max) / 1024.0;
            let min = v.iter().copied().fold(f64::MAX, f64::min) / 1024.0;
            format!("{:.0} MiB ({min:.0}-{max:.0})", exportcore_benches::median(v) / 1024.0)
        };
        println!(
            "| {:.0} MiB, {} advisories ({changed} changed) | {:.0} MiB | {r:.2} | {f:.2} | {:.2}x (target <= 1.3x) | {} | {:.2} | {d:.2} | {:.2} (target <= 0.05) | {} | {:.0} MiB | {:.1} MiB ({:.1} %) | {:.2} |",
            (summary.bytes + blob_bytes) as f64 / f64::from(1 << 20),
            summary.advisories,
            blob_bytes as f64 / f64::from(1 << 20),
            f / r,
            mib(&rss),
            exportcore_benches::median(&verifies),
            d / f,
            mib(&delta_rss),
            sizes.0 as f64 / f64::from(1 << 20),
            sizes.1 as f64 / f64::from(1 << 20),
            100.0 * sizes.1 as f64 / sizes.0.max(1) as f64,
            exportcore_benches::median(&applies),
        );
        let _ = std::fs::remove_dir_all(&ev);
        let _ = std::fs::remove_dir_all(&ev2);
    }
    ExitCode::SUCCESS
}
