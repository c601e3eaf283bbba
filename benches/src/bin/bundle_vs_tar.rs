//! Side-by-side: our bundle builds against `tar -c | zstd -3 | sha256sum` on the same
//! generated NDJSON evidence (issue 3). Two rows per size:
//!
//! - `bundle`: the core's bundle path — every evidence file streamed verbatim into the
//!   deterministic tar + zstd -3 archive, hashed on the way in (for the bundle's
//!   `manifest.json`) and out, then published atomically (fsync, rename) to an `FsSink`. The
//!   same work as the reference, plus the manifest and the durable publish.
//! - `json:raw`: the whole profile — additionally parse, schema-check and re-serialise every
//!   record in RFC 8785 canonical form before archiving it.
//!
//! ```text
//! cargo run --release -p exportcore-benches --bin bundle-vs-tar -- [--sizes 100M,1G] [--dir DIR] [--pretty]
//! ```
//! `--pretty` rewrites the generated advisories as real-world input looks: one pretty-printed
//! OSV document per `.json` file (not canonical, so json:raw takes its full parse path).
//! For each size it prints both wall-clock times (medians of `--repeat N` alternating runs,
//! default 3), the ratio (ours / reference) and the peak RSS of our build, measured in a child process (VmHWM) so sizes do not contaminate each
//! other.

use exportcore::archive::{ArchiveWriter, FileMode};
use exportcore::hashing::HashingReader;
use exportcore::run::RunBuilder;
use exportcore::{
    ArtifactPath, ArtifactSpec, ArtifactType, Compression, DirEvidence, EvidenceKind, ExportContext, FsSink,
    ManifestBuilder, ManifestEntry, Profile, ProfileDescriptor, ProfileId, RunRequest, Target, Timestamp,
};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Instant;

/// mimalloc: allocation-heavy JSON parsing on several threads is markedly faster than with
/// glibc malloc (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The core's bundle path with no format work: the advisory files verbatim, then a
/// `manifest.json` with their sizes and digests, in one deterministic tar.zst.
#[derive(Debug)]
struct VerbatimBundle;

impl Profile for VerbatimBundle {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new("bench:bundle", "evidence files verbatim in a deterministic bundle")
    }

    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }

    fn export(&self, ctx: &mut ExportContext<'_>) -> exportcore::Result<()> {
        let evidence = ctx.evidence();
        let items = evidence.list(EvidenceKind::Advisory)?;
        let anchor = ctx.time_anchor(None);
        let options = ctx.archive_options(Compression::Zstd, anchor.mtime())?;
        let spec = ArtifactSpec::new("evidence.tar.zst", ArtifactType::Bundle, "tar+zstd", "application/zstd")?;
        ctx.write_artifact(spec, |w| {
            let mut ar = ArchiveWriter::new(w, options)?;
            let mut manifest = ManifestBuilder::bundle("bench:bundle", anchor);
            for item in &items {
                let mut r = HashingReader::new(evidence.open(&item.path)?);
                ar.append(&item.path, FileMode::Regular, item.size, &mut r)?;
                let (size, sha256) = r.finish();
                manifest.add(ManifestEntry::new(item.path.clone(), size, sha256, "application/x-ndjson"))?;
            }
            let bytes = manifest.build().to_canonical_bytes();
            ar.append(&ArtifactPath::parse("manifest.json")?, FileMode::Regular, bytes.len() as u64, &bytes[..])?;
            ar.finish()?;
            Ok(())
        })?;
        Ok(())
    }
}

/// Child mode: build the bundle (`mode` = `bundle` or `json:raw`), print
/// "<seconds> <peak_rss_kib> <bundle_bytes>".
fn child(mode: &str, evidence: &Path, out: &Path) -> ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let start = Instant::now();
    let run = rt.block_on(async {
        let mut req =
            RunRequest::new(ProfileId::from_static(if mode == "bundle" { "bench:bundle" } else { "json:raw" }));
        if mode != "bundle" {
            req.targets = vec![Target::Advisory];
        }
        req.compression = Some(Compression::Zstd);
        req.created_at = Timestamp::parse("2025-01-01T00:00:00Z").ok();
        let profile: Arc<dyn Profile> =
            if mode == "bundle" { Arc::new(VerbatimBundle) } else { Arc::new(exportcore_json::JsonRaw) };
        RunBuilder::from_arcs(
            profile,
            Arc::new(DirEvidence::new(evidence).expect("evidence")),
            Arc::new(FsSink::new(out).expect("sink")),
        )
        .staging_dir(out.parent().unwrap_or(out))
        .events(exportcore_benches::phase_printer(start))
        .execute(req)
        .await
    });
    let secs = start.elapsed().as_secs_f64();
    let run = match run {
        Ok(o) => o.run,
        Err(e) => {
            eprintln!("run failed: {}", e.report());
            return ExitCode::from(1);
        }
    };
    let size = run.outputs.iter().find(|o| o.path.as_str().ends_with(".tar.zst")).map_or(0, |o| o.size);
    assert!(size > 0, "no bundle in {:?}", run.outputs);
    println!("{secs:.3} {} {size}", exportcore_benches::vm_hwm_kib());
    ExitCode::SUCCESS
}

fn reference(evidence: &Path) -> f64 {
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg("tar -c advisories | zstd -3 -q -c | sha256sum > /dev/null")
        .current_dir(evidence)
        .status()
        .expect("sh");
    assert!(status.success(), "reference pipeline failed (are tar, zstd and sha256sum installed?)");
    start.elapsed().as_secs_f64()
}

/// Rewrites every `.ndjson` advisory file under `dir` as one pretty-printed `.json` document per
/// advisory; returns the evidence's new total size.
fn prettify_advisories(dir: &Path) -> u64 {
    use std::io::{BufRead, Write};
    let mut n = 0u64;
    let mut files: Vec<PathBuf> =
        walk(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "ndjson")).collect();
    files.sort();
    for f in files {
        let reader = std::io::BufReader::new(std::fs::File::open(&f).expect("open"));
        for line in reader.lines() {
            let line = line.expect("read");
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line).expect("json");
            let out = f.with_file_name(format!("adv-{n:08}.json"));
            let mut w = std::io::BufWriter::new(std::fs::File::create(&out).expect("create"));
            serde_json::to_writer_pretty(&mut w, &v).expect("write");
            w.write_all(b"\n").expect("write");
            n += 1;
        }
        std::fs::remove_file(&f).expect("remove");
    }
    walk(dir.parent().unwrap_or(dir)).iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2], Path::new(&args[3]), Path::new(&args[4]));
    }
    let mut sizes = vec![100 << 20, 1 << 30];
    let mut base: Option<PathBuf> = None;
    let mut repeat = 3usize;
    let mut pretty = false;
    let mut i = 1;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--sizes", Some(v)) => sizes = v.split(',').filter_map(exportcore_benches::parse_size).collect(),
            ("--dir", Some(v)) => base = Some(PathBuf::from(v)),
            ("--repeat", Some(v)) if v.parse::<usize>().is_ok_and(|n| n >= 1) => repeat = v.parse().unwrap_or(3),
            ("--bench", _) => {
                i += 1;
                continue;
            }
            ("--pretty", _) => {
                pretty = true;
                i += 1;
                continue;
            }
            _ => {
                eprintln!("usage: bundle-vs-tar [--sizes 100M,1G] [--dir DIR] [--repeat N] [--pretty]");
                return ExitCode::from(2);
            }
        }
        i += 2;
    }
    let tmp = tempfile::tempdir_in(base.unwrap_or_else(std::env::temp_dir)).expect("tempdir");
    println!(
        "{:>8} {:>9} {:>10} {:>10} {:>7} {:>12} {:>12}",
        "input", "build", "ours_s", "tar|zstd_s", "ratio", "peak_rss_MiB", "bundle_MiB"
    );
    for size in sizes {
        let ev = tmp.path().join(format!("ev-{size}"));
        let mut summary = evidence_gen::generate(&ev, &evidence_gen::GenOptions::with_volume(size)).expect("generate");
        if pretty {
            summary.bytes = prettify_advisories(&ev.join("advisories"));
        }
        // Warm the page cache for both contenders alike.
        reference(&ev);
        for mode in ["bundle", "json:raw"] {
            // Ours and the reference alternate `repeat` times; times are medians, RSS the
            // largest peak (the machine's speed drifts; both sides drift together).
            let (mut ours_t, mut ref_t, mut rss_kib, mut bundle) = (Vec::new(), Vec::new(), 0f64, 0f64);
            let out = tmp.path().join(format!("out-{size}"));
            for _ in 0..repeat {
                let _ = std::fs::remove_dir_all(&out);
                let exe = std::env::current_exe().expect("exe");
                let o = Command::new(exe).arg("--child").arg(mode).arg(&ev).arg(&out).output().expect("child");
                if !o.status.success() {
                    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
                    return ExitCode::from(1);
                }
                let line = String::from_utf8_lossy(&o.stdout);
                let f: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                ours_t.push(f[0]);
                rss_kib = rss_kib.max(f[1]);
                bundle = f[2];
                ref_t.push(reference(&ev));
            }
            let (ours, reference_s) = (exportcore_benches::median(&ours_t), exportcore_benches::median(&ref_t));
            println!(
                "{:>7}M {:>9} {:>10.2} {:>10.2} {:>7.2} {:>12.1} {:>12.1}",
                summary.bytes >> 20,
                mode,
                ours,
                reference_s,
                ours / reference_s,
                rss_kib / 1024.0,
                bundle / (1u64 << 20) as f64
            );
            let _ = std::fs::remove_dir_all(&out);
        }
        let _ = std::fs::remove_dir_all(&ev);
    }
    ExitCode::SUCCESS
}
