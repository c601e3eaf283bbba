//! Scope selectors (issue 17): a run selecting 1 % of the evidence by ecosystem against the
//! same run without selectors, for `json:raw` and `trivy:db`.
//!
//! ```text
//! cargo run --release -p exportcore-benches --bin select-vs-full -- [--size 1G] [--repeat 3] [--dir DIR]
//! ```
//! Generates about `--size` of NDJSON advisories (seeded; every 100th one is the only kind of
//! `Alpine:v3.20`), then, per profile, alternates full and selected (`ecosystems:
//! ["Alpine:v3.20"]`) runs `--repeat` times in this process and prints the median times, the
//! ratio (selected / full; target at most 0.25) and the records selected / seen.
//! `--selected-only` skips the full runs (to profile the selected path).

use exportcore::run::RunBuilder;
use exportcore::{DirEvidence, FsSink, Profile, RunRequest, Selectors, Timestamp};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// mimalloc, as in the other bench binaries (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One run; its wall-clock seconds and the selection line of its manifest.
fn run(
    rt: &tokio::runtime::Runtime,
    profile: Arc<dyn Profile>,
    ev: &Path,
    out: &Path,
    sel: &Selectors,
) -> (f64, String) {
    let _ = std::fs::remove_dir_all(out);
    let start = Instant::now();
    let id = profile.descriptor().id;
    let outcome = rt.block_on(async {
        let mut req = RunRequest::new(id.clone());
        req.created_at = Timestamp::parse("2025-06-01T00:00:00Z").ok();
        req.selectors = sel.clone();
        RunBuilder::from_arcs(
            profile,
            Arc::new(DirEvidence::new(ev).expect("evidence")),
            Arc::new(FsSink::new(out).expect("sink")),
        )
        .staging_dir(out.parent().expect("parent"))
        .execute(req)
        .await
    });
    let secs = start.elapsed().as_secs_f64();
    if let Err(e) = outcome {
        panic!("{id} failed: {}", e.report());
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
    let counts = manifest["metadata"]["selection"]["counts"]["advisory"].clone();
    let line = if counts.is_null() { "all".into() } else { format!("{}/{}", counts["selected"], counts["seen"]) };
    (secs, line)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let size = exportcore_benches::arg(&args, "--size").and_then(exportcore_benches::parse_size).unwrap_or(1 << 30);
    // For profiling the selected path alone.
    let selected_only = args.iter().any(|a| a == "--selected-only");
    let repeat: usize = exportcore_benches::arg(&args, "--repeat").and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let tmp = match exportcore_benches::arg(&args, "--dir") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let ev = tmp.path().join("evidence");
    let opts = evidence_gen::GenOptions { rare_every: 100, ..evidence_gen::GenOptions::with_volume(size) };
    let summary = evidence_gen::generate(&ev, &opts).expect("generate");
    println!(
        "evidence: {} advisories, {:.0} MiB; selecting ecosystem {} (every 100th advisory)",
        summary.advisories,
        summary.bytes as f64 / (1 << 20) as f64,
        evidence_gen::RARE_ECOSYSTEM
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let selected = Selectors::default().ecosystems([evidence_gen::RARE_ECOSYSTEM]);
    let profiles: [Arc<dyn Profile>; 2] = [Arc::new(exportcore_json::JsonRaw), Arc::new(exportcore_trivy::TrivyDb)];
    println!("| profile | full (s) | selected 1 % (s) | ratio | target | records |");
    println!("|---|---|---|---|---|---|");
    let mut all_met = true;
    for profile in profiles {
        let id = profile.descriptor().id;
        let (mut full, mut sel, mut line) = (Vec::new(), Vec::new(), String::new());
        for _ in 0..repeat {
            if !selected_only {
                full.push(run(&rt, Arc::clone(&profile), &ev, &tmp.path().join("full"), &Selectors::default()).0);
            }
            let (s, l) = run(&rt, Arc::clone(&profile), &ev, &tmp.path().join("sel"), &selected);
            sel.push(s);
            line = l;
        }
        if selected_only {
            println!("| {id} | - | {:.2} | - | - | {line} |", exportcore_benches::median(&sel));
            continue;
        }
        let (f, s) = (exportcore_benches::median(&full), exportcore_benches::median(&sel));
        let ratio = s / f;
        let met = ratio <= 0.25;
        all_met &= met;
        println!(
            "| {id} | {f:.2} | {s:.2} | {ratio:.2}x | <= 0.25x {} | {line} |",
            if met { "met" } else { "NOT met" }
        );
    }
    if all_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
