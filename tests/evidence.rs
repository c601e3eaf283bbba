//! Both core evidence sources run the shared evidence conformance suite from outside the
//! crate, as a third-party source would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::{conformance, DirEvidence, MemoryEvidence};

#[test]
fn dir_evidence_conforms() {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence");
    conformance::evidence_suite(&DirEvidence::new(samples).unwrap());
}

#[test]
fn memory_evidence_conforms() {
    let mut ev = MemoryEvidence::new();
    ev.insert("advisories/b.json", r#"{"id":"B","modified":"2025-01-01T00:00:00Z"}"#).unwrap();
    ev.insert("advisories/a.json", r#"{"id":"A","modified":"2025-01-01T00:00:00Z"}"#).unwrap();
    ev.insert("vex/x.json", "{}").unwrap();
    ev.insert("portal/index.html", "<p>").unwrap();
    conformance::evidence_suite(&ev);
}

#[test]
#[should_panic(expected = "lists no file")]
fn an_empty_source_does_not_pass_vacuously() {
    conformance::evidence_suite(&MemoryEvidence::new());
}
