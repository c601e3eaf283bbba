//! The third-party profile of `examples/custom_profile.rs` passes the conformance suite, using
//! nothing but the public API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../examples/custom_profile.rs"]
mod custom_profile;

use exportcore::{conformance, DirEvidence, RunRequest};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_profile_conforms() {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence");
    conformance::profile_suite(
        Arc::new(custom_profile::CsvAdvisories),
        Arc::new(DirEvidence::new(samples).unwrap()),
        RunRequest::new(exportcore::ProfileId::from_static("csv:advisories")),
    )
    .await;
}

/// A profile that builds a file with random access (as a database is built), adopts it without
/// a copy, and publishes it a second time under another name.
#[derive(Debug)]
struct AdoptAndAlias;

impl exportcore::Profile for AdoptAndAlias {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("test:adopt", "adopts a scratch file")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
        use exportcore::{ArtifactSpec, ArtifactType};
        use std::io::{Seek, SeekFrom, Write};
        let (path, mut f) = ctx.scratch_file()?;
        f.write_all(b"....body").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"head").unwrap();
        drop(f);
        let spec = ArtifactSpec::new("db/file.bin", ArtifactType::Database, "bin", "application/octet-stream")?;
        let db = ctx.adopt_file(spec, &path)?;
        assert!(!path.exists(), "adopting moves the file");
        let alias = ArtifactSpec::new("blobs/file.bin", ArtifactType::Data, "bin", "application/octet-stream")?;
        ctx.alias_artifact(alias, &db)?;
        let again = ArtifactSpec::new("db/file.bin", ArtifactType::Data, "bin", "application/octet-stream")?;
        assert_eq!(ctx.alias_artifact(again, &db).unwrap_err().code(), "ERR_EXPORT_PATH_UNSAFE");
        let reserved = ArtifactSpec::new("manifest.json", ArtifactType::Data, "json", "application/json")?;
        assert_eq!(ctx.alias_artifact(reserved, &db).unwrap_err().code(), "ERR_EXPORT_PATH_UNSAFE");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_and_aliased_artifacts_are_published_with_their_digests() {
    use exportcore::{InMemorySink, MemoryEvidence, RunStatus, Sha256Digest, SinkExt};
    let sink = Arc::new(InMemorySink::new());
    let run = exportcore::RunBuilder::new(AdoptAndAlias, MemoryEvidence::new(), Arc::clone(&sink))
        .tenant(exportcore::TenantId::parse("t").unwrap())
        .execute(RunRequest::new(exportcore::ProfileId::from_static("test:adopt")))
        .await
        .unwrap_or_else(|e| panic!("run failed: {}", e.report()))
        .run;
    assert_eq!(run.status, RunStatus::Succeeded);
    let digest = Sha256Digest::of(b"headbody");
    for path in ["db/file.bin", "blobs/file.bin"] {
        let p = exportcore::ArtifactPath::parse(path).unwrap();
        assert_eq!(sink.get_bytes(&p).await.unwrap(), &b"headbody"[..], "{path}");
        assert_eq!(run.outputs.iter().find(|o| o.path == path).unwrap().sha256, digest, "{path}");
    }
}

/// Writes `dropped.txt`, then `x.txt` = "inner".
#[derive(Debug)]
struct Inner;

impl exportcore::Profile for Inner {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("test:inner", "one file")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
        use exportcore::{ArtifactSpec, ArtifactType};
        let spec = ArtifactSpec::new("dropped.txt", ArtifactType::Data, "txt", "text/plain")?;
        ctx.write_artifact(spec, |w| w.write_all(b"dropped").map_err(|e| exportcore::ExportError::io("d", e)))?;
        let spec = ArtifactSpec::new("x.txt", ArtifactType::Data, "txt", "text/plain")?;
        ctx.write_artifact(spec, |w| w.write_all(b"inner").map_err(|e| exportcore::ExportError::io("x", e)))?;
        Ok(())
    }
}

/// Nests [`Inner`], keeps `x.txt` under `nested/`, drops the rest, then writes its own file.
#[derive(Debug)]
struct Composite;

impl exportcore::Profile for Composite {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("test:composite", "nests test:inner")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
        use exportcore::{ArtifactSpec, ArtifactType};
        ctx.time_anchor(None);
        let staged = ctx.run_nested(&Inner)?;
        assert_eq!(staged.len(), 2);
        let x = staged.iter().find(|a| a.spec.path == "x.txt").unwrap();
        ctx.alias_artifact(ArtifactSpec::new("nested/x.txt", ArtifactType::Data, "txt", "text/plain")?, x)?;
        // Written after two artifacts left the list: must not reuse their staging files.
        for name in ["y.txt", "z.txt"] {
            let spec = ArtifactSpec::new(name, ArtifactType::Data, "txt", "text/plain")?;
            ctx.write_artifact(spec, |w| {
                w.write_all(name.as_bytes()).map_err(|e| exportcore::ExportError::io(name, e))
            })?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composite_profile_keeps_what_it_chooses_of_a_nested_one() {
    use exportcore::SinkExt as _;
    let sink = exportcore::InMemorySink::new();
    let outcome = exportcore::RunBuilder::new(Composite, exportcore::MemoryEvidence::new(), sink.clone())
        .execute(RunRequest::new(exportcore::ProfileId::from_static("test:composite")))
        .await
        .unwrap();
    let paths: Vec<&str> = outcome.run.outputs.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(paths, ["nested/x.txt", "y.txt", "z.txt", "manifest.json"]);
    for (path, want) in [("nested/x.txt", &b"inner"[..]), ("y.txt", b"y.txt"), ("z.txt", b"z.txt")] {
        let got = sink.get_bytes(&exportcore::ArtifactPath::parse(path).unwrap()).await.unwrap();
        assert_eq!(&got[..], want, "{path}");
    }
}

/// Lists the advisory files of whatever evidence it is given, and warns once.
#[derive(Debug)]
struct Lister;

impl exportcore::Profile for Lister {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("test:lister", "lists advisory files")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
        use exportcore::{ArtifactSpec, ArtifactType};
        let listed: Vec<String> =
            ctx.evidence().list(exportcore::EvidenceKind::Advisory)?.into_iter().map(|i| i.path.to_string()).collect();
        ctx.time_anchor(None);
        ctx.warn("WARN_TEST_LISTER", "listed");
        let spec = ArtifactSpec::new("list.txt", ArtifactType::Data, "txt", "text/plain")?;
        ctx.write_artifact(spec, |w| {
            w.write_all(listed.join("\n").as_bytes()).map_err(|e| exportcore::ExportError::io("list", e))
        })?;
        Ok(())
    }
}

/// Nests [`Lister`] over evidence of its own making, keeps its list, then writes a file.
#[derive(Debug)]
struct OverOther;

impl exportcore::Profile for OverOther {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("test:over-other", "nests test:lister over other evidence")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
        use exportcore::{ArtifactSpec, ArtifactType};
        let mut other = exportcore::MemoryEvidence::new();
        other.insert("advisories/other.json", "{}")?;
        let staged = ctx.run_nested_with(&Lister, &other)?;
        ctx.alias_artifact(ArtifactSpec::new("nested/list.txt", ArtifactType::Data, "txt", "text/plain")?, &staged[0])?;
        let spec = ArtifactSpec::new("after.txt", ArtifactType::Data, "txt", "text/plain")?;
        ctx.write_artifact(spec, |w| w.write_all(b"after").map_err(|e| exportcore::ExportError::io("after", e)))?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_profile_reads_the_evidence_it_is_given_and_a_detached_export_gives_the_same_bytes() {
    use exportcore::SinkExt as _;
    let mut run_evidence = exportcore::MemoryEvidence::new();
    run_evidence.insert("advisories/run.json", "{}").unwrap();
    let sink = exportcore::InMemorySink::new();
    let outcome = exportcore::RunBuilder::new(OverOther, run_evidence.clone(), sink.clone())
        .execute(RunRequest::new(exportcore::ProfileId::from_static("test:over-other")))
        .await
        .unwrap();
    let get = |p: &str| {
        let sink = sink.clone();
        let p = exportcore::ArtifactPath::parse(p).unwrap();
        async move { sink.get_bytes(&p).await.unwrap() }
    };
    assert_eq!(
        &get("nested/list.txt").await[..],
        b"advisories/other.json",
        "the nested profile read the run's evidence"
    );
    assert_eq!(&get("after.txt").await[..], b"after", "a staging file was reused");
    assert!(outcome.run.warnings.iter().any(|w| w.code == "WARN_TEST_LISTER"), "{:?}", outcome.run.warnings);

    // Detached: the same profile, request and evidence give what a run stages.
    let direct = exportcore::InMemorySink::new();
    let request = RunRequest::new(exportcore::ProfileId::from_static("test:lister"));
    exportcore::RunBuilder::new(Lister, run_evidence.clone(), direct.clone()).execute(request.clone()).await.unwrap();
    let staging = tempfile::tempdir().unwrap();
    let created_at = exportcore::Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
    let anchor = exportcore::TimeAnchor { created_at, source: exportcore::TimeSource::Request };
    let staged = exportcore::export_detached(&Lister, &request, &run_evidence, staging.path(), anchor).unwrap();
    let detached = std::fs::read(&staged[0].local).unwrap();
    let listed = direct.get_bytes(&exportcore::ArtifactPath::parse("list.txt").unwrap()).await.unwrap();
    assert_eq!(detached, &listed[..]);
    assert_eq!(&detached[..], b"advisories/run.json");
}
