//! Pushing runs to a real OCI registry (Debian's `docker-registry` on a loopback port, started
//! and killed by PID here; with `EXPORTCORE_INTEROP=1`): skopeo pulls back what we pushed with
//! the same digests, the project's cosign verifier accepts the signature, the real Trivy
//! downloads the pushed DB with `--db-repository` and finds what it finds locally; re-pushes
//! upload nothing, mounts work, basic auth is answered and wrong credentials are a typed error
//! that never shows the password; an output that does not verify is never pushed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{interop_enabled, interop_py, keys, samples, text, Registry};
use exportcore::{DirEvidence, FsSink, Profile, RunBuilder, RunRequest, Timestamp};
use exportcore_distribution::{push_oci, Credentials, OciTarget, PushOptions, Secret};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

async fn build(profile: impl Profile, out: &Path, signer: Arc<dyn exportcore::sign::Signer>) {
    let id = profile.descriptor().id;
    let req = RunRequest::builder(id.as_str())
        .created_at(Timestamp::parse("2025-06-01T00:00:00Z").unwrap())
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    RunBuilder::new(profile, DirEvidence::new(samples()).unwrap(), FsSink::new(out).unwrap())
        .signer(signer)
        .execute(req)
        .await
        .unwrap_or_else(|e| panic!("{id}: {}", e.report()));
}

fn skopeo(args: &[&str]) -> std::process::Output {
    Command::new("skopeo").args(args).output().expect("skopeo missing: run sh tests/interop/install.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_trivy_db_is_pulled_by_skopeo_cosign_and_trivy() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::EcdsaP256, tmp.path(), "k");
    let db = tmp.path().join("db");
    build(exportcore_trivy::TrivyDb, &db, Arc::clone(&k.signer)).await;
    let registry = Registry::start();
    let target = OciTarget::parse(&format!("oci://{}/mirror/trivy-db:2", registry.addr()), "t").unwrap();
    let mut options = PushOptions::default();
    options.signer = Some(Arc::clone(&k.signer));
    let pushed = push_oci(&db, &target, None, &options).await.unwrap();
    assert_eq!(pushed.stats.uploaded, 2, "{:?}", pushed.stats);
    // The manifest is the one of the run's own OCI layout, byte for byte.
    let index: Value = serde_json::from_slice(&std::fs::read(db.join("oci/index.json")).unwrap()).unwrap();
    assert_eq!(pushed.digest, index["manifests"][0]["digest"].as_str().unwrap());
    let remote = format!("docker://{}:2", pushed.reference.trim_end_matches(":2"));
    let o = skopeo(&["inspect", "--tls-verify=false", "--raw", &remote]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(format!("sha256:{}", exportcore::Sha256Digest::of(&o.stdout)), pushed.digest);
    // Pulled back with its signature: the cosign verifier accepts it.
    let back = tmp.path().join("back");
    let o = skopeo(&["copy", "--src-tls-verify=false", &remote, &format!("oci:{}:2", back.display())]);
    assert!(o.status.success(), "{}", text(&o));
    let sig_tag = pushed.signature_tag.clone().unwrap();
    let sig = format!("docker://{}/mirror/trivy-db:{sig_tag}", registry.addr());
    let o = skopeo(&["copy", "--src-tls-verify=false", &sig, &format!("oci:{}:{sig_tag}", back.display())]);
    assert!(o.status.success(), "{}", text(&o));
    let repo_ref = format!("{}/mirror/trivy-db", registry.addr());
    let o = interop_py(
        "verify_cosign_sig.py",
        &[
            &back,
            &k.public_pem,
            Path::new("--tag"),
            Path::new("2"),
            Path::new("--docker-reference"),
            Path::new(&repo_ref),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Trivy downloads it and finds what the local DB finds.
    let remote_cache = tmp.path().join("remote-cache");
    let remote_found = common::trivy_rootfs_findings(
        &remote_cache,
        &["--db-repository".into(), format!("{repo_ref}:2"), "--skip-java-db-update".into()],
    );
    let local_cache = tmp.path().join("local-cache");
    std::fs::create_dir_all(local_cache.join("db")).unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(db.join("db.tar.gz"))
        .arg("-C")
        .arg(local_cache.join("db"))
        .status()
        .unwrap()
        .success());
    let local_found = common::trivy_rootfs_findings(
        &local_cache,
        &["--skip-db-update".into(), "--skip-java-db-update".into(), "--offline-scan".into()],
    );
    assert!(!local_found.is_empty());
    assert_eq!(remote_found, local_found);

    // A second push uploads nothing; another repository mounts the blobs.
    let again = push_oci(&db, &target, None, &PushOptions::default()).await.unwrap();
    assert_eq!((again.stats.uploaded, again.stats.present), (0, 2));
    let other = OciTarget::parse(&format!("oci://{}/other/trivy-db:2", registry.addr()), "t").unwrap();
    let mut mount = PushOptions::default();
    mount.mount_from = vec!["mirror/trivy-db".into()];
    let mounted = push_oci(&db, &other, None, &mount).await.unwrap();
    assert_eq!((mounted.stats.uploaded, mounted.stats.mounted), (0, 2));
    assert_eq!(mounted.digest, pushed.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_run_goes_up_as_one_artifact_and_unverified_output_never_does() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let raw = tmp.path().join("raw");
    build(exportcore_json::JsonRaw, &raw, Arc::clone(&k.signer)).await;
    let registry = Registry::start();
    let target = OciTarget::parse(&format!("oci://{}/runs/json-raw:v1", registry.addr()), "t").unwrap();
    let pushed = push_oci(&raw, &target, None, &PushOptions::default()).await.unwrap();
    // Pulled back into a layout, every file of the run is a layer titled with its path.
    let back = tmp.path().join("back");
    let o = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}", pushed.reference),
        &format!("oci:{}:v1", back.display()),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = skopeo(&["inspect", "--raw", &format!("oci:{}:v1", back.display())]);
    let manifest: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(manifest["artifactType"], exportcore_distribution::RUN_ARTIFACT_TYPE);
    let mut titles: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["annotations"]["org.opencontainers.image.title"].as_str().unwrap())
        .collect();
    titles.sort();
    assert_eq!(titles, ["json-raw.tar.zst", "manifest.dsse.json", "manifest.json", "provenance.dsse.json"]);
    for l in manifest["layers"].as_array().unwrap() {
        let title = l["annotations"]["org.opencontainers.image.title"].as_str().unwrap();
        let blob = back.join("blobs/sha256").join(l["digest"].as_str().unwrap().trim_start_matches("sha256:"));
        assert_eq!(std::fs::read(blob).unwrap(), std::fs::read(raw.join(title)).unwrap(), "{title}");
    }
    // A changed file: nothing is pushed.
    std::fs::write(raw.join("json-raw.tar.zst"), b"tampered").unwrap();
    let t2 = OciTarget::parse(&format!("oci://{}/runs/tampered:v1", registry.addr()), "t").unwrap();
    let e = push_oci(&raw, &t2, None, &PushOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_VERIFY_FAILED", "{e}");
    let tags = registry.get("/v2/runs/tampered/tags/list").unwrap();
    assert!(!tags.contains("\"v1\""), "a tag was pushed for unverified output: {tags}");
    // A layout whose layer was changed (same length): the registry refuses the bytes for the
    // digest the manifest names; no tag appears.
    let db = tmp.path().join("db");
    build(exportcore_trivy::TrivyDb, &db, Arc::clone(&k.signer)).await;
    let layer = std::fs::read_dir(db.join("oci/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::remove_file(&layer).unwrap();
    std::fs::write(&layer, &bytes).unwrap();
    let t3 = OciTarget::parse(&format!("oci://{}/runs/bent-layer:2", registry.addr()), "t").unwrap();
    let e = push_oci(&db, &t3, None, &PushOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_DISTRIBUTION_FAILED", "{e}");
    let tags = registry.get("/v2/runs/bent-layer/tags/list").unwrap();
    assert!(!tags.contains("\"2\""), "a tag names a layer the registry refused: {tags}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_answered_and_wrong_credentials_fail_without_showing_them() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let db = tmp.path().join("db");
    build(exportcore_trivy::TrivyJavaDb, &db, Arc::clone(&k.signer)).await;
    let hash = bcrypt::hash("s3cret-pass", 4).unwrap();
    let registry = Registry::start_with_htpasswd("pusher", &hash);
    let target = OciTarget::parse(&format!("oci://{}/java-db:1", registry.addr()), "t").unwrap();
    let creds = |p: &str| Some(Credentials { username: "pusher".into(), password: Secret::new(p) });
    let e = push_oci(&db, &target, None, &PushOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_DISTRIBUTION_FAILED", "{e}");
    assert!(e.report().contains("asks for credentials") && e.report().contains(&registry.addr()), "{}", e.report());
    let e = push_oci(&db, &target, creds("wrong-pass-xyz"), &PushOptions::default()).await.unwrap_err();
    assert!(e.report().contains("credentials refused"), "{}", e.report());
    assert!(
        !e.report().contains("wrong-pass-xyz") && !format!("{e:?}").contains("wrong-pass-xyz"),
        "the password leaked"
    );
    let pushed = push_oci(&db, &target, creds("s3cret-pass"), &PushOptions::default()).await.unwrap();
    assert_eq!(pushed.stats.uploaded, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_distributes_after_publishing_and_fails_the_run_when_the_push_does() {
    use exportcore::engine::{Exporter, Submission};
    use exportcore::store::RunStore as _;
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let store = Arc::new(exportcore::store::MemoryStore::new());
    let exporter = Exporter::builder()
        .profiles(exportcore_trivy::profiles())
        .sink(FsSink::new(tmp.path().join("out")).unwrap())
        .store_arc(Arc::clone(&store) as Arc<dyn exportcore::store::RunStore>)
        .evidence(DirEvidence::new(samples()).unwrap())
        .distributor(Arc::new(exportcore_distribution::OciDistributor::new()))
        // One attempt: the push retries its own transient failures; the engine would retry
        // the whole run on top (three attempts by default).
        .retries(1, std::time::Duration::from_millis(10))
        .build()
        .unwrap();
    let tenant = exportcore::TenantId::parse("acme").unwrap();
    let submit = |reference: String| {
        let mut req = RunRequest::new(exportcore::ProfileId::from_static("trivy:db"));
        req.distribution = Some(exportcore::Distribution::new(exportcore::DistributionType::Oci, Some(reference)));
        Submission::new(tenant.clone(), req)
    };
    // `ref` without a scheme is a registry reference as well.
    let accepted = exporter.submit(submit(format!("{}/acme/trivy-db:2", registry.addr()))).await.unwrap();
    let run = exporter.execute_now(&tenant, &accepted.run_id).await.unwrap();
    assert_eq!(run.status, exportcore::RunStatus::Succeeded, "{:?}", run.errors);
    let records = store.list_distributions(&tenant, Some(&run.run_id)).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reference, format!("{}/acme/trivy-db:2", registry.addr()));
    assert!(records[0].artifacts.iter().any(|a| a.path == "db.tar.gz" && a.location.contains("@sha256:")));
    let events = store.events(&tenant, &run.run_id, 0, 100).await.unwrap();
    let distributed = events
        .iter()
        .filter(|e| matches!(&e.event, exportcore::RunEvent::ArtifactReady { url, .. } if url.contains("@sha256:")))
        .count();
    assert!(distributed >= 1, "an artifact_ready with the distributed location");
    let tags = registry.get("/v2/acme/trivy-db/tags/list").unwrap();
    assert!(tags.contains("\"2\""), "{tags}");

    // A registry that is not there: the run fails naming the target, and leaves no output.
    let dead =
        format!("127.0.0.1:{}/x:1", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let accepted = exporter.submit(submit(dead.clone())).await.unwrap();
    let run = exporter.execute_now(&tenant, &accepted.run_id).await.unwrap();
    assert_eq!(run.status, exportcore::RunStatus::Failed);
    assert_eq!(run.errors[0].code, "ERR_EXPORT_DISTRIBUTION_FAILED");
    assert!(run.errors[0].message.contains(&dead), "{}", run.errors[0].message);
    assert!(run.outputs.is_empty());
}

/// Writes one `blob.bin` of `mib` MiB (deterministic bytes that do not compress).
#[derive(Debug)]
struct BigBlob {
    mib: usize,
}

impl exportcore::Profile for BigBlob {
    fn descriptor(&self) -> exportcore::ProfileDescriptor {
        exportcore::ProfileDescriptor::new("test:blob", "one large file")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut exportcore::ExportContext<'_>) -> exportcore::Result<()> {
        ctx.time_anchor(None);
        let spec = exportcore::ArtifactSpec::new(
            "blob.bin",
            exportcore::ArtifactType::Data,
            "bin",
            "application/octet-stream",
        )?;
        let mib = self.mib;
        ctx.write_artifact(spec, |w| {
            let mut block = [0u8; 1 << 20];
            for i in 0..mib {
                let seed = exportcore::Sha256Digest::of(&i.to_be_bytes()).to_hex();
                for (j, b) in block.iter_mut().enumerate() {
                    *b = seed.as_bytes()[j % 64] ^ (j as u8);
                }
                w.write_all(&block).map_err(|e| exportcore::ExportError::io("blob", e))?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_uploads_check_digests_and_presigned_urls_serve_and_expire() {
    use common::S3Server;
    use exportcore_distribution::s3::{presign, push_s3, S3Config, S3Target};
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let raw = tmp.path().join("raw");
    build(exportcore_json::JsonRaw, &raw, Arc::clone(&k.signer)).await;
    let s3 = S3Server::start();
    let config = S3Config::new(s3.endpoint(), S3Server::ACCESS_KEY, S3Server::SECRET_KEY);
    let target = S3Target::parse("s3://exports/acme/run-1", "t").unwrap();
    let pushed = push_s3(&raw, &target, &config).await.unwrap();
    let keys: Vec<&str> = pushed.objects.iter().map(|o| o.key.as_str()).collect();
    assert!(
        keys.contains(&"acme/run-1/json-raw.tar.zst") && keys.last() == Some(&"acme/run-1/manifest.json"),
        "{keys:?}"
    );
    assert_eq!(pushed.bytes, pushed.objects.iter().map(|o| o.size).sum::<u64>(), "each byte counted once");
    // Credentials written into the endpoint URL never show in an error.
    let leaky = S3Config::new("http://ep-user:EP-SECRET@127.0.0.1:1", S3Server::ACCESS_KEY, S3Server::SECRET_KEY);
    let e = push_s3(&raw, &target, &leaky).await.unwrap_err().to_string();
    assert!(!e.contains("EP-SECRET") && !e.contains(S3Server::SECRET_KEY), "{e}");
    // A presigned GET serves the bytes to curl; expired, it is refused.
    let url =
        presign(&config, "exports", "acme/run-1/json-raw.tar.zst", std::time::Duration::from_secs(300)).await.unwrap();
    let got = tmp.path().join("got");
    let o = Command::new("curl").args(["-fsS", "-o"]).arg(&got).arg(&url).output().unwrap();
    assert!(o.status.success(), "curl: {}", text(&o));
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(raw.join("json-raw.tar.zst")).unwrap());
    let short =
        presign(&config, "exports", "acme/run-1/json-raw.tar.zst", std::time::Duration::from_secs(1)).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let o = Command::new("curl").args(["-fsS", "-o", "/dev/null", &short]).output().unwrap();
    assert!(!o.status.success(), "an expired presigned URL was served");
    // Wrong credentials: a typed failure naming the target, never the secret.
    let mut wrong = S3Config::new(s3.endpoint(), S3Server::ACCESS_KEY, "not-the-secret-key-xyz");
    wrong.max_retries = Some(0);
    let e = push_s3(&raw, &target, &wrong).await.unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_DISTRIBUTION_FAILED", "{e}");
    assert!(e.report().contains("s3://exports/acme/run-1"), "{}", e.report());
    assert!(!e.report().contains("not-the-secret-key-xyz") && !format!("{e:?}").contains("not-the-secret-key-xyz"));
    // 200 MiB: a multipart upload streamed from disk, read back and checked.
    let big = tmp.path().join("big");
    RunBuilder::new(BigBlob { mib: 200 }, exportcore::MemoryEvidence::new(), FsSink::new(&big).unwrap())
        .execute(RunRequest::new(exportcore::ProfileId::from_static("test:blob")))
        .await
        .unwrap();
    let pushed = push_s3(&big, &S3Target::parse("s3://exports/big", "t").unwrap(), &config).await.unwrap();
    let blob = pushed.objects.iter().find(|o| o.path == "blob.bin").unwrap();
    assert_eq!(blob.size, 200 << 20);
    // An unsigned run pushed over the signed one: the earlier signatures went first (none is
    // left beside a manifest it does not sign), the new manifest last.
    let before = presign(&config, "exports", "acme/run-1/manifest.dsse.json", std::time::Duration::from_secs(60));
    let o = Command::new("curl").args(["-fsS", "-o", "/dev/null", &before.await.unwrap()]).output().unwrap();
    assert!(o.status.success(), "the signed push left its envelope: {}", text(&o));
    push_s3(&big, &target, &config).await.unwrap();
    let after = presign(&config, "exports", "acme/run-1/manifest.dsse.json", std::time::Duration::from_secs(60));
    let o = Command::new("curl").args(["-fsS", "-o", "/dev/null", &after.await.unwrap()]).output().unwrap();
    assert!(!o.status.success(), "the old envelope still stands beside the new manifest");
    let manifest = presign(&config, "exports", "acme/run-1/manifest.json", std::time::Duration::from_secs(60));
    let got = tmp.path().join("manifest-after");
    let o = Command::new("curl").args(["-fsS", "-o"]).arg(&got).arg(manifest.await.unwrap()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(big.join("manifest.json")).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_killed_mid_push_and_restarted_gets_the_whole_push_and_never_a_dangling_tag() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    RunBuilder::new(BigBlob { mib: 300 }, exportcore::MemoryEvidence::new(), FsSink::new(&big).unwrap())
        .execute(RunRequest::new(exportcore::ProfileId::from_static("test:blob")))
        .await
        .unwrap();
    let mut registry = Registry::start();
    let target = OciTarget::parse(&format!("oci://{}/big:1", registry.addr()), "t").unwrap();
    let push = {
        let (big, target) = (big.clone(), target.clone());
        tokio::spawn(async move { push_oci(&big, &target, None, &PushOptions::default()).await })
    };
    // Kill it while the 300 MiB blob streams up; bring it back a moment later.
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    registry.kill();
    let tags = registry.get("/v2/big/tags/list");
    assert!(tags.is_none(), "the registry is down");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    registry.restart();
    let pushed = push.await.unwrap().unwrap();
    // Everything arrived: skopeo reads the manifest back, the big layer has the right digest.
    let o = skopeo(&["inspect", "--tls-verify=false", "--raw", &format!("docker://{}", pushed.reference)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(format!("sha256:{}", exportcore::Sha256Digest::of(&o.stdout)), pushed.digest);
    let manifest: Value = serde_json::from_slice(&o.stdout).unwrap();
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == "blob.bin")
        .unwrap();
    let sha = exportcore::hashing::hash_reader(std::fs::File::open(big.join("blob.bin")).unwrap()).unwrap().1;
    assert_eq!(layer["digest"], format!("sha256:{sha}"));
    // And the registry holds those bytes (it checked the digest when the upload closed).
    let again = push_oci(&big, &target, None, &PushOptions::default()).await.unwrap();
    assert_eq!(again.stats.uploaded, 0, "every blob is there: {:?}", again.stats);

    // Killed for good: the push fails after its budget, naming the target, and no tag exists.
    let target2 = OciTarget::parse(&format!("oci://{}/never:1", registry.addr()), "t").unwrap();
    let push = {
        let big = big.clone();
        tokio::spawn(async move { push_oci(&big, &target2, None, &PushOptions::default()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    registry.kill();
    let e = push.await.unwrap().unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_DISTRIBUTION_FAILED", "{e}");
    assert!(e.report().contains("never:1"), "{}", e.report());
    registry.restart();
    let tags = registry.get("/v2/never/tags/list").unwrap();
    assert!(!tags.contains("\"1\""), "a dangling tag: {tags}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_sink_passes_the_sink_conformance_suite_on_a_real_s3_server() {
    use common::S3Server;
    use exportcore_distribution::s3::S3Config;
    if !interop_enabled() {
        return;
    }
    let s3 = S3Server::start();
    let config = S3Config::new(s3.endpoint(), S3Server::ACCESS_KEY, S3Server::SECRET_KEY);
    let sink = exportcore_distribution::ObjectSink::s3("s3://exports/conformance", &config).unwrap();
    exportcore::conformance::sink_suite(&sink).await;
    // Wrong credentials: a typed failure naming the bucket, never the secret.
    let bad = S3Config::new(s3.endpoint(), S3Server::ACCESS_KEY, "not-the-secret-key-at-all");
    let sink = exportcore_distribution::ObjectSink::s3("s3://exports/conformance", &bad).unwrap();
    let p = exportcore::ArtifactPath::parse("x.txt").unwrap();
    use exportcore::SinkExt;
    let err = sink.put_bytes(&p, exportcore::prelude::Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(err.code(), "ERR_EXPORT_DISTRIBUTION_FAILED", "{err}");
    assert!(err.report().contains("s3://exports/conformance") && !err.report().contains("not-the-secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_a_full_disk_fails_the_push_without_a_tag_then_takes_it_once_there_is_room() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    RunBuilder::new(BigBlob { mib: 24 }, exportcore::MemoryEvidence::new(), FsSink::new(&big).unwrap())
        .execute(RunRequest::new(exportcore::ProfileId::from_static("test:blob")))
        .await
        .unwrap();
    // The registry's storage is a 4 MiB disk: the 24 MiB layer cannot fit.
    let registry = Registry::start_on_small_disk(4 << 20);
    let target = OciTarget::parse(&format!("oci://{}/full:1", registry.addr()), "t").unwrap();
    let e = push_oci(&big, &target, None, &PushOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), "ERR_EXPORT_DISTRIBUTION_FAILED", "{e}");
    assert!(e.report().contains("full:1") && e.report().contains("500"), "target and cause: {}", e.report());
    let full_errors = |r: &Registry| r.log().matches("no space left on device").count();
    assert!(full_errors(&registry) > 0, "the registry's disk was full: {}", registry.log());
    let tags = registry.get("/v2/full/tags/list").unwrap();
    assert!(!tags.contains("\"1\""), "a tag after a failed push: {tags}");

    // The registry answers 500 while a push retries; room appears; the retry gets its 201.
    let before = full_errors(&registry);
    let push = {
        let (big, target) = (big.clone(), target.clone());
        tokio::spawn(async move { push_oci(&big, &target, None, &PushOptions::default()).await })
    };
    let start = std::time::Instant::now();
    while full_errors(&registry) == before {
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "no 500 seen: {}", registry.log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    registry.grow_disk(256 << 20);
    let pushed = push.await.unwrap().unwrap_or_else(|e| panic!("{}", e.report()));
    let o = skopeo(&["inspect", "--tls-verify=false", "--raw", &format!("docker://{}", pushed.reference)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(format!("sha256:{}", exportcore::Sha256Digest::of(&o.stdout)), pushed.digest);
    let sha = exportcore::hashing::hash_reader(std::fs::File::open(big.join("blob.bin")).unwrap()).unwrap().1;
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("sha256:{sha}")), "the big layer is there");
}
