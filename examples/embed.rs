//! Embedding a `json:raw` export in a service, in-process, into an in-memory sink.
//!
//! Run with `cargo run --example embed`.

use exportcore::{run, InMemorySink, MemoryEvidence, RunRequest, RunStatus, SinkExt, Target};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), exportcore::ExportError> {
    // Evidence from wherever the service keeps it; here, one OSV advisory in memory.
    let mut evidence = MemoryEvidence::new();
    evidence.insert("advisories/GHSA-demo.json", r#"{"id":"GHSA-demo","modified":"2025-01-01T00:00:00Z"}"#)?;

    let mut request = RunRequest::new("json:raw");
    request.targets = vec![Target::Advisory];
    let sink = InMemorySink::new();
    let on_event = Arc::new(|e: &exportcore::RunEvent| println!("event: {}", e.name()));
    let profile = exportcore_json::profiles().get(&request.profile_id)?;
    let run = run::execute(
        profile,
        Arc::new(evidence),
        Arc::new(sink.clone()),
        request,
        run::RunOptions::new("tenant-a"),
        on_event,
    )
    .await;

    assert_eq!(run.status, RunStatus::Succeeded);
    for output in &run.outputs {
        let bytes = sink.get_bytes(&output.path.parse()?).await?;
        println!("{} {} bytes sha256:{}", output.path, bytes.len(), output.sha256);
    }
    Ok(())
}
