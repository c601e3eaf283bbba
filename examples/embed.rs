//! Embedding a `json:raw` export in a service, in-process, into an in-memory sink.
//!
//! Run with `cargo run --example embed`.

use exportcore::{InMemorySink, MemoryEvidence, RunBuilder, RunRequest, RunStatus, SinkExt, Target, TenantId};

#[tokio::main]
async fn main() -> Result<(), exportcore::ExportError> {
    // Evidence from wherever the service keeps it; here, one OSV advisory in memory.
    let mut evidence = MemoryEvidence::new();
    evidence.insert("advisories/GHSA-demo.json", r#"{"id":"GHSA-demo","modified":"2025-01-01T00:00:00Z"}"#)?;

    let request = RunRequest::builder("json:raw").targets([Target::Advisory]).build()?;
    let sink = InMemorySink::new();
    let profile = exportcore_json::profiles().get(&request.profile_id)?;
    // Events arrive on a channel while the run goes; print them as they come.
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel::<exportcore::RunEvent>();
    let printer = tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            println!("event: {}", e.name());
        }
    });
    let outcome = RunBuilder::from_arcs(profile, std::sync::Arc::new(evidence), std::sync::Arc::new(sink.clone()))
        .tenant(TenantId::parse("tenant-a")?)
        .events(tx)
        .execute(request)
        .await?;
    // The run dropped its sender: the printer ends after the last event.
    let _ = printer.await;

    let run = outcome.run;
    assert_eq!(run.status, RunStatus::Succeeded);
    for output in &run.outputs {
        let bytes = sink.get_bytes(&output.path).await?;
        println!("{} {} bytes sha256:{}", output.path, bytes.len(), output.sha256);
    }
    Ok(())
}
