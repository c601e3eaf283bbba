//! A third-party profile written against exportcore's public API only: `csv:advisories`
//! writes one CSV row per OSV advisory affected package (id, ecosystem, package, fixed
//! versions, modified, summary). It passes the shared conformance suite (see
//! `tests/custom_profile.rs`), and `main` runs it on the bundled samples.
//!
//! Run with `cargo run --example custom_profile`.

use exportcore::{
    ArtifactSpec, ArtifactType, EvidenceKind, ExportContext, ExportError, Profile, ProfileDescriptor, Progress,
    Records, Result, RunRequest,
};
use serde_json::Value;

/// The `csv:advisories` profile.
#[derive(Debug, Default)]
pub(crate) struct CsvAdvisories;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl Profile for CsvAdvisories {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new("csv:advisories", "One CSV row per advisory and affected package")
    }

    fn validate(&self, request: &RunRequest) -> Result<()> {
        if request.targets.is_empty() && request.formats.is_empty() {
            Ok(())
        } else {
            Err(ExportError::invalid("targets", "csv:advisories takes no targets or formats"))
        }
    }

    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
        let spec = ArtifactSpec::new("advisories.csv", ArtifactType::Data, "csv", "text/csv")?;
        let evidence = ctx.evidence();
        // Read first (checking for cancellation between records), then write the artifact:
        // `write_artifact` holds the context while its closure runs, so the closure cannot ask
        // it whether the run was cancelled. The rows are small; a profile with large outputs
        // streams them into `ctx.spool(..)` or a `ctx.scratch_file()` instead.
        let (mut lines, mut newest) = (Vec::new(), None);
        for rec in Records::new(evidence, EvidenceKind::Advisory)? {
            ctx.check_cancelled()?;
            let rec = rec?;
            newest = newest.max(rec.timestamp);
            let v = &rec.value;
            let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
            for aff in v["affected"].as_array().into_iter().flatten() {
                let fixed: Vec<&str> = aff["ranges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r["events"].as_array().into_iter().flatten())
                    .filter_map(|e| e["fixed"].as_str())
                    .collect();
                let cells = [
                    s("/id"),
                    aff.pointer("/package/ecosystem").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    aff.pointer("/package/name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    fixed.join(" "),
                    s("/modified"),
                    s("/summary"),
                ];
                let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
                lines.push(line.join(","));
            }
        }
        let rows = lines.len() as u64;
        ctx.write_artifact(spec, |w| {
            let io = |e: std::io::Error| ExportError::io("advisories.csv", e);
            writeln!(w, "id,ecosystem,package,fixed,modified,summary").map_err(io)?;
            for line in &lines {
                writeln!(w, "{line}").map_err(io)?;
            }
            Ok(())
        })?;
        if rows == 0 {
            // An error when the evidence holds no advisories; fine when selectors left them out.
            ctx.no_records("advisories")?;
        }
        // Record the time anchor for the run manifest (the CSV itself holds no generated times).
        ctx.time_anchor(newest);
        ctx.progress(Progress::of(rows, rows));
        Ok(())
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<()> {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence");
    let sink = exportcore::InMemorySink::new();
    let outcome = exportcore::RunBuilder::new(CsvAdvisories, exportcore::DirEvidence::new(samples)?, sink.clone())
        .tenant(exportcore::TenantId::parse("example")?)
        .execute(RunRequest::new(exportcore::ProfileId::from_static("csv:advisories")))
        .await?;
    let run = outcome.run;
    println!("{} {:?}", run.status, run.outputs.iter().map(|o| &o.path).collect::<Vec<_>>());
    Ok(())
}
