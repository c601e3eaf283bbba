//! Nothing requested is silently ignored: every field of `RunRequest` is either used (changing
//! the run's bytes, record or behaviour) or refused with `ERR_EXPORT_NOT_SUPPORTED`. The field
//! list is checked against what a fully populated request serialises to, so a new field fails
//! this test until it gets a check of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::engine::{Exporter, Submission};
use exportcore::{
    Compression, Distribution, DistributionType, Encryption, ExportError, Format, MemoryEvidence, Priority, ProfileId,
    Result, RunBuilder, RunOutcome, RunRequest, Sha256Digest, Target, TenantId, Timestamp,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const FIELDS: &[&str] = &[
    "profileId",
    "targets",
    "formats",
    "distribution",
    "retentionDays",
    "encryption",
    "priority",
    "createdAt",
    "compression",
    "compressionLevel",
    "timeoutSeconds",
    "strict",
    "selectors",
];

fn samples() -> exportcore::DirEvidence {
    exportcore::DirEvidence::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence")).unwrap()
}

fn base() -> RunRequest {
    let mut r = RunRequest::new(ProfileId::from_static("json:raw"));
    r.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    r
}

async fn run(request: RunRequest) -> Result<RunOutcome> {
    RunBuilder::new(exportcore_json::JsonRaw, samples(), exportcore::InMemorySink::new()).execute(request).await
}

async fn signed(request: RunRequest) -> Result<RunOutcome> {
    let pair = exportcore_crypto::generate(exportcore_crypto::Algorithm::Ed25519).unwrap();
    RunBuilder::new(exportcore_json::JsonRaw, samples(), exportcore::InMemorySink::new())
        .signer(exportcore_crypto::signer_from_pem(&pair.private_pem).unwrap())
        .execute(request)
        .await
}

fn digests(o: &RunOutcome) -> Vec<(String, Sha256Digest)> {
    o.run.outputs.iter().map(|o| (o.path.to_string(), o.sha256)).collect()
}

fn refused(result: Result<RunOutcome>, field: &str) {
    match result {
        Err(ExportError::NotSupported { feature }) => assert!(feature.contains(field), "{feature}"),
        other => panic!("{field}: expected NotSupported, got {:?}", other.map(|o| o.run.status)),
    }
}

#[test]
fn the_field_list_is_complete() {
    let mut full = base();
    full.targets = vec![Target::Advisory];
    full.formats = vec![Format::Json];
    full.distribution = Some(Distribution::new(DistributionType::Oci, Some("r/x".into())).signed("k"));
    full.retention_days = Some(1);
    full.encryption = Some(Encryption::new("age1x"));
    full.priority = Priority::High;
    full.compression = Some(Compression::Gzip);
    full.compression_level = Some(1);
    full.timeout_seconds = Some(1);
    full.strict = true;
    full.selectors = exportcore::Selectors::default().ecosystems(["PyPI"]);
    let v = serde_json::to_value(&full).unwrap();
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, FIELDS.iter().copied().collect::<BTreeSet<_>>(), "a RunRequest field has no check here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_output_field_changes_the_output() {
    let reference = digests(&run(base()).await.unwrap());
    let mut cases: Vec<(&str, RunRequest)> = Vec::new();
    let mut r = base();
    r.targets = vec![Target::Advisory];
    cases.push(("targets", r));
    let mut r = base();
    r.formats = vec![Format::Json];
    cases.push(("formats", r));
    let mut r = base();
    r.compression = Some(Compression::Gzip);
    cases.push(("compression", r));
    let mut r = base();
    r.compression_level = Some(1);
    cases.push(("compressionLevel", r));
    let mut r = base();
    r.created_at = Some(Timestamp::parse("2025-06-01T00:00:00Z").unwrap());
    cases.push(("createdAt", r));
    let mut r = base();
    r.selectors = exportcore::Selectors::default().ecosystems(["PyPI"]);
    cases.push(("selectors", r));
    for (field, request) in cases {
        let got = digests(&run(request).await.unwrap());
        assert_ne!(got, reference, "{field} did not change the output");
    }
    // profileId picks the profile: another one writes other artifacts.
    let policy = RunBuilder::new(exportcore_json::JsonPolicy, samples(), exportcore::InMemorySink::new())
        .execute({
            let mut r = base();
            r.profile_id = ProfileId::from_static("json:policy");
            r
        })
        .await
        .unwrap();
    assert_ne!(digests(&policy), reference, "profileId");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_signing_are_used() {
    let mut r = base();
    r.retention_days = Some(7);
    let o = run(r).await.unwrap();
    let exp = o.run.expires_at.expect("retentionDays sets expiresAt");
    assert!(o.run.outputs.iter().all(|out| out.expires_at == Some(exp)));
    assert!(run(base()).await.unwrap().run.expires_at.is_none());

    let mut r = base();
    r.distribution = Some(Distribution::new(DistributionType::Filesystem, None).signed("test"));
    let o = signed(r).await.unwrap();
    assert!(o.run.outputs.iter().any(|out| out.path == "manifest.dsse.json"), "signing wrote no signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_fields_are_refused_by_runs_and_submissions() {
    let mut enc = base();
    enc.encryption = Some(Encryption::new("age1recipient"));
    refused(run(enc.clone()).await, "encryption");
    let mut oci = base();
    oci.distribution = Some(Distribution::new(DistributionType::Oci, Some("registry.example/x".into())));
    refused(run(oci.clone()).await, "distribution.type");
    let mut object = base();
    object.distribution = Some(Distribution::new(DistributionType::Object, Some("s3://bucket/prefix".into())));
    refused(run(object.clone()).await, "distribution.type");
    let mut with_ref = base();
    with_ref.distribution = Some(Distribution::new(DistributionType::Filesystem, Some("/elsewhere".into())));
    refused(run(with_ref.clone()).await, "distribution.ref");

    let exporter = Exporter::builder()
        .profiles(exportcore_json::profiles())
        .sink(exportcore::InMemorySink::new())
        .evidence(samples())
        .build()
        .unwrap();
    let tenant = TenantId::from_static("t");
    for (field, request) in [("encryption", enc), ("distribution.type", oci), ("distribution.ref", with_ref)] {
        let err = exporter.submit(Submission::new(tenant.clone(), request)).await.unwrap_err();
        assert!(matches!(&err, ExportError::NotSupported { feature } if feature.contains(field)), "{field}: {err:?}");
    }
    // Disabled encryption asks for nothing and is accepted.
    let mut off = base();
    let mut disabled = Encryption::new("unused");
    disabled.enabled = false;
    off.encryption = Some(disabled);
    run(off).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_turns_skips_into_errors() {
    let mut ev = MemoryEvidence::new();
    ev.insert(
        "advisories/x.json",
        r#"{"id":"X-1","modified":"2025-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"NoSuchEcosystem","name":"p"},"versions":["1"]}]}"#,
    )
    .unwrap();
    // A usable advisory too: with nothing Trivy can use, even a lenient run fails (EvidenceEmpty).
    ev.insert(
        "advisories/y.json",
        r#"{"id":"Y-1","modified":"2025-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"a"},"versions":["1"]}]}"#,
    )
    .unwrap();
    let ev = Arc::new(ev);
    let mut r = RunRequest::new(ProfileId::from_static("trivy:db"));
    r.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    let lenient = RunBuilder::new(exportcore_trivy::TrivyDb, Arc::clone(&ev), exportcore::InMemorySink::new())
        .execute(r.clone())
        .await
        .unwrap();
    assert!(lenient.run.warnings.iter().any(|w| w.code.starts_with("WARN_TRIVY")), "{:?}", lenient.run.warnings);
    r.strict = true;
    let strict = RunBuilder::new(exportcore_trivy::TrivyDb, ev, exportcore::InMemorySink::new()).execute(r).await;
    assert!(strict.is_err(), "strict must fail on what a lenient run skips");
}

/// A profile that runs until cancelled (checking the flag), for the timeout check.
#[derive(Debug)]
struct UntilCancelled;

impl exportcore::Profile for UntilCancelled {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("test:slow", "waits for its cancel flag")
    }
    fn validate(&self, _: &RunRequest) -> Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> Result<()> {
        for _ in 0..2000 {
            ctx.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(ExportError::internal("test:slow", "was never cancelled"))
    }
}

/// A profile that records the priority of each run it executes, in order.
#[derive(Debug, Default)]
struct Recorder(Arc<std::sync::Mutex<Vec<Priority>>>);

impl exportcore::Profile for Recorder {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("test:record", "records priorities")
    }
    fn validate(&self, _: &RunRequest) -> Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> Result<()> {
        use exportcore::IoContext;
        self.0.lock().unwrap().push(ctx.request().priority);
        ctx.time_anchor(None);
        let spec = exportcore::ArtifactSpec::new("x", exportcore::ArtifactType::Data, "bin", "text/plain")?;
        ctx.write_artifact(spec, |w| w.write_all(b"x").at("x"))?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_and_timeout_are_used_by_the_engine() {
    // priority: with one worker, a high run submitted after two low ones runs first.
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let exporter = Exporter::builder()
        .profiles(exportcore::Profiles::new().with(Recorder(Arc::clone(&order))))
        .sink(exportcore::InMemorySink::new())
        .evidence(MemoryEvidence::new())
        .concurrency(1)
        .build()
        .unwrap();
    let tenant = TenantId::from_static("t");
    for p in [Priority::Low, Priority::Normal, Priority::High] {
        let mut r = RunRequest::new(ProfileId::from_static("test:record"));
        r.priority = p;
        exporter.submit(Submission::new(tenant.clone(), r)).await.unwrap();
    }
    exporter.run_until_idle().await;
    assert_eq!(*order.lock().unwrap(), [Priority::High, Priority::Normal, Priority::Low]);

    // timeoutSeconds: a run that would take 10 s fails after 1 s with ERR_EXPORT_TIMEOUT.
    let exporter = Exporter::builder()
        .profiles(exportcore::Profiles::new().with(UntilCancelled))
        .sink(exportcore::InMemorySink::new())
        .evidence(MemoryEvidence::new())
        .build()
        .unwrap();
    let mut r = RunRequest::new(ProfileId::from_static("test:slow"));
    r.timeout_seconds = Some(1);
    let id = exporter.submit(Submission::new(tenant.clone(), r)).await.unwrap().run_id;
    let run = exporter.execute_now(&tenant, &id).await.unwrap();
    assert_eq!(run.errors.first().map(|e| e.code.as_str()), Some("ERR_EXPORT_TIMEOUT"), "{:?}", run.errors);
}

/// Every profile of the workspace.
fn workspace_profiles() -> exportcore::Profiles {
    let mut all = exportcore_json::profiles();
    all.extend(exportcore_trivy::profiles());
    all.extend(exportcore_devportal::profiles());
    all.extend(exportcore_mirror::profiles());
    all
}

/// A `compression` a profile does not write is refused, never silently replaced by the one it
/// writes: each profile of the workspace, each compression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compression_the_profile_does_not_write_is_refused() {
    let all = workspace_profiles();
    let writes = |id: &str| -> Vec<Compression> {
        match id {
            "json:raw" | "json:policy" => Compression::ALL.to_vec(),
            "trivy:db" | "trivy:java-db" | "devportal:offline" => vec![Compression::Gzip],
            _ => vec![],
        }
    };
    let ids: Vec<ProfileId> = all.ids().cloned().collect();
    assert!(ids.len() >= 7, "{ids:?}");
    for id in ids {
        let profile = all.get(&id).unwrap();
        assert_eq!(profile.descriptor().compressions, writes(id.as_str()), "{id}");
        for c in Compression::ALL {
            let mut r = base();
            r.profile_id = id.clone();
            r.compression = Some(*c);
            let result = RunBuilder::from_arcs(
                Arc::clone(&profile),
                Arc::new(samples()),
                Arc::new(exportcore::InMemorySink::new()),
            )
            .execute(r)
            .await;
            if writes(id.as_str()).contains(c) {
                // Accepted (mirror:delta would still want a base; no profile here refuses it).
                assert!(result.is_ok(), "{id} {c}: {:?}", result.err());
            } else {
                refused(result, "compression");
            }
        }
    }
}

/// The latest `createdAt` there is, with a retention: every profile finishes or says what is
/// wrong; none panics on time arithmetic past the year 9999 (the mirror's TUF expiry would
/// be, and is refused naming `createdAt`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_representable_time_is_handled_by_every_profile() {
    let all = workspace_profiles();
    let ids: Vec<ProfileId> = all.ids().cloned().collect();
    for id in ids {
        let mut r = base();
        r.profile_id = id.clone();
        r.created_at = Some(Timestamp::parse("9999-12-31T23:59:59Z").unwrap());
        r.retention_days = Some(3650);
        let profile = all.get(&id).unwrap();
        let result = RunBuilder::from_arcs(profile, Arc::new(samples()), Arc::new(exportcore::InMemorySink::new()))
            .execute(r)
            .await;
        match (id.as_str(), result) {
            ("mirror:full", Err(e)) => {
                assert_eq!(e.code(), "ERR_EXPORT_REQUEST_INVALID", "{e:?}");
                assert!(e.to_string().contains("createdAt") && e.to_string().contains("9999"), "{e}");
            }
            ("mirror:delta", Err(e)) => assert_eq!(e.code(), "ERR_EXPORT_REQUEST_INVALID", "needs a base: {e:?}"),
            (_, Ok(o)) => assert!(o.run.expires_at.is_some(), "{id}: retention counts from the wall clock"),
            (_, Err(e)) => panic!("{id}: {e:?}"),
        }
    }
}
