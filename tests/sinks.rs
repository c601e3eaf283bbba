//! Both core sinks run the shared sink conformance suite from outside the crate, as a
//! third-party sink would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::{conformance, FsSink, InMemorySink};

#[tokio::test]
async fn in_memory_sink_conforms() {
    conformance::sink_suite(&InMemorySink::new()).await;
}

#[tokio::test]
async fn fs_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::sink_suite(&FsSink::new(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn arc_and_box_forwarding_conform() {
    let sink: std::sync::Arc<dyn exportcore::Sink> = std::sync::Arc::new(InMemorySink::new());
    conformance::sink_suite(&sink).await;
    let boxed: Box<dyn exportcore::Sink> = Box::new(InMemorySink::new());
    conformance::sink_suite(&boxed).await;
}
