//! mirror:full against the real consumers (with `EXPORTCORE_INTEROP=1`): python-tuf's
//! `ngclient.Updater` verifies the TUF repository and every target (and refuses a tampered
//! target and expired metadata); the OCI layout verifier accepts `oci/`; skopeo copies each
//! artifact into a registry started here (loopback, killed by PID) and back with equal
//! digests; the real Trivy pulls its databases from that registry and finds exactly what it
//! finds with the local ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{interop_enabled, interop_py, keys, samples, text, Registry};
use exportcore::{DirEvidence, FsSink, RunBuilder, RunRequest, Timestamp};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

async fn build(out: &Path, signer: Arc<dyn exportcore::sign::Signer>) {
    build_with(exportcore_mirror::MirrorFull::default(), out, signer).await;
}

async fn build_with(profile: exportcore_mirror::MirrorFull, out: &Path, signer: Arc<dyn exportcore::sign::Signer>) {
    let req = RunRequest::builder("mirror:full")
        .created_at(Timestamp::parse("2025-06-01T00:00:00Z").unwrap())
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    RunBuilder::new(profile, DirEvidence::new(samples()).unwrap(), FsSink::new(out).unwrap())
        .signer(signer)
        .execute(req)
        .await
        .unwrap_or_else(|e| panic!("mirror:full failed: {}", e.report()));
}

fn python_tuf(out: &Path, reference_time: &str) -> std::process::Output {
    let (meta, targets) = (out.join("tuf/metadata"), out.join("tuf/targets"));
    let rt = std::ffi::OsString::from(reference_time);
    let args: [&Path; 4] = [&meta, &targets, Path::new("--reference-time"), Path::new(&rt)];
    interop_py("verify_tuf.py", &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tuf_verifies_the_mirror_and_refuses_tampering() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for alg in [exportcore_crypto::Algorithm::Ed25519, exportcore_crypto::Algorithm::EcdsaP256] {
        let k = keys(alg, tmp.path(), &format!("{alg:?}"));
        let out = tmp.path().join(format!("m-{alg:?}"));
        build(&out, Arc::clone(&k.signer)).await;
        let o = python_tuf(&out, "2025-06-02T00:00:00Z");
        assert!(o.status.success(), "{alg:?}: {}", text(&o));
        // Every file of mirror/: 22 plus the two sample blobs and their index.
        assert!(text(&o).contains("OK: TUF repository verified (25 targets)"), "{}", text(&o));
        // Expired timestamp (90 days).
        let o = python_tuf(&out, "2025-10-01T00:00:00Z");
        assert!(!o.status.success() && text(&o).contains("expired"), "{}", text(&o));
        python_tuf_refuses_a_changed_target(&out);
    }
}

/// One byte of the Trivy DB's TUF target changed (same length): python-tuf refuses it.
fn python_tuf_refuses_a_changed_target(out: &Path) {
    let export: Value = serde_json::from_slice(&std::fs::read(out.join("mirror/export.json")).unwrap()).unwrap();
    let db = export["files"].as_array().unwrap().iter().find(|f| f["path"] == "trivy/db.tar.gz").unwrap();
    let target = out.join(format!("tuf/targets/trivy/{}.db.tar.gz", db["sha256"].as_str().unwrap()));
    let mut bytes = std::fs::read(&target).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&target, bytes).unwrap();
    let o = python_tuf(out, "2025-06-02T00:00:00Z");
    assert!(!o.status.success(), "a tampered target passed python-tuf: {}", text(&o));
    assert!(text(&o).contains("db.tar.gz"), "{}", text(&o));
}

/// What the real Trivy finds with the mirror's own database tarballs, offline.
fn local_findings(out: &Path, cache: &Path) -> Vec<(String, String, String)> {
    for (tgz, dir) in [("db.tar.gz", "db"), ("javadb.tar.gz", "java-db")] {
        std::fs::create_dir_all(cache.join(dir)).unwrap();
        let ok = Command::new("tar")
            .arg("-xzf")
            .arg(out.join("mirror/trivy").join(tgz))
            .arg("-C")
            .arg(cache.join(dir))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    common::trivy_rootfs_findings(
        cache,
        &["--skip-db-update".into(), "--skip-java-db-update".into(), "--offline-scan".into()],
    )
}

fn skopeo(args: &[&str]) -> std::process::Output {
    Command::new("skopeo").args(args).output().expect("skopeo missing: run sh tests/interop/install.sh")
}

fn sha256_hex(bytes: &[u8]) -> String {
    exportcore::Sha256Digest::of(bytes).to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_trivy_use_the_oci_layout_through_a_registry() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let out = tmp.path().join("m");
    build(&out, Arc::clone(&k.signer)).await;
    let oci = out.join("oci");
    let o = interop_py("verify_oci_layout.py", &[&oci, Path::new("--strict-orphans")]);
    assert!(o.status.success(), "{}", text(&o));
    let tags = text(&o).lines().find_map(|l| l.split_once("(tags: ").map(|t| t.1.to_owned())).unwrap_or_default();
    for tag in ["mirror", "trivy-db", "trivy-java-db"] {
        assert!(tags.split([',', ')', ' ']).any(|t| t == tag), "tag {tag} missing: {}", text(&o));
    }

    let registry = Registry::start();
    let index: Value = serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    for (tag, dest) in [("trivy-db", "trivy-db:2"), ("trivy-java-db", "trivy-java-db:1"), ("mirror", "mirror:full")] {
        let src = format!("oci:{}:{tag}", oci.display());
        let dst = format!("docker://{}/{dest}", registry.addr());
        let o = skopeo(&["copy", "--dest-tls-verify=false", &src, &dst]);
        assert!(o.status.success(), "skopeo copy {tag}: {}", text(&o));
        let want = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_owned();
        let o = skopeo(&["inspect", "--tls-verify=false", "--raw", &dst]);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(sha256_hex(&o.stdout), want, "{tag}: the registry holds another manifest");
        let back = tmp.path().join(format!("back-{tag}"));
        let o = skopeo(&["copy", "--src-tls-verify=false", &dst, &format!("oci:{}:{tag}", back.display())]);
        assert!(o.status.success(), "{}", text(&o));
        let o = skopeo(&["inspect", "--raw", &format!("oci:{}:{tag}", back.display())]);
        assert_eq!(sha256_hex(&o.stdout), want, "{tag}: pulled back, the digest changed");
    }

    // Trivy downloads both databases from the registry into an empty cache and reports what
    // it reports with the local tarballs.
    let scan = |args: &[String], cache: &Path| common::trivy_rootfs_findings(cache, args);
    let remote_cache = tmp.path().join("remote-cache");
    let remote = scan(
        &[
            "--db-repository".into(),
            format!("{}/trivy-db:2", registry.addr()),
            "--java-db-repository".into(),
            format!("{}/trivy-java-db:1", registry.addr()),
        ],
        &remote_cache,
    );
    let local = local_findings(&out, &tmp.path().join("local-cache"));
    assert!(!local.is_empty());
    assert_eq!(remote, local, "findings with the DB pulled from the registry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tuf_takes_an_applied_delta_as_an_update_and_refuses_a_rollback() {
    if !interop_enabled() {
        return;
    }
    delta_as_an_update(exportcore_mirror::TufOptions::default(), "2025-06-11T00:00:00Z", "2025-06-12T00:00:00Z", 1)
        .await;
}

/// A delta made after the base's root expired renews the root (2.root.json, same keys):
/// python-tuf, trusting the base's root, follows the rotation and takes the update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tuf_follows_the_root_a_late_delta_renews() {
    if !interop_enabled() {
        return;
    }
    delta_as_an_update(exportcore_mirror::TufOptions::default(), "2026-06-15T00:00:00Z", "2026-06-15T12:00:00Z", 2)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tuf_walks_the_hashed_bins_of_a_large_mirror_and_of_its_delta() {
    if !interop_enabled() {
        return;
    }
    // Four targets a role: the samples' 25 files spread over hashed bins, as 10,000 would.
    let tuf = exportcore_mirror::TufOptions::default().max_targets_per_role(4);
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::EcdsaP256, tmp.path(), "k");
    let out = tmp.path().join("m");
    build_with(exportcore_mirror::MirrorFull::default().tuf(tuf.clone()), &out, Arc::clone(&k.signer)).await;
    let bins = std::fs::read_dir(out.join("tuf/metadata"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("1.bins-"))
        .count();
    assert!(bins >= 16, "{bins} bins");
    let o = python_tuf(&out, "2025-06-02T00:00:00Z");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("OK: TUF repository verified (25 targets)"), "{}", text(&o));
    // A target reached through its bin.
    python_tuf_refuses_a_changed_target(&out);
    delta_as_an_update(tuf, "2025-06-11T00:00:00Z", "2025-06-12T00:00:00Z", 1).await;
}

/// A delta of the samples less one advisory made at `created`, applied, is an update
/// python-tuf takes at `now` from the base it trusted (ending at root version `root`); the
/// base served after it is a rollback.
async fn delta_as_an_update(tuf_options: exportcore_mirror::TufOptions, created: &str, now: &str, root: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let old = tmp.path().join("old");
    build_with(exportcore_mirror::MirrorFull::default().tuf(tuf_options.clone()), &old, Arc::clone(&k.signer)).await;
    let ev2 = tmp.path().join("ev2");
    assert!(Command::new("cp").arg("-r").arg(samples()).arg(&ev2).status().unwrap().success());
    std::fs::remove_file(ev2.join("advisories/pypi/GHSA-r3xc-prgr-mg9p.json")).unwrap();
    let delta = tmp.path().join("delta");
    let req = RunRequest::builder("mirror:delta")
        .created_at(Timestamp::parse(created).unwrap())
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    RunBuilder::new(
        exportcore_mirror::MirrorDelta::new(&old).tuf(tuf_options),
        DirEvidence::new(&ev2).unwrap(),
        FsSink::new(&delta).unwrap(),
    )
    .signer(Arc::clone(&k.signer))
    .execute(req)
    .await
    .unwrap();
    let new = tmp.path().join("new");
    let options = exportcore::verify::VerifyOptions { verifiers: vec![Arc::clone(&k.verifier)], ..Default::default() };
    exportcore_mirror::apply(&old, &delta, &new, &options).unwrap();
    let tuf = |repo: &Path, trusted: &Path| {
        let (meta, targets, root) =
            (repo.join("tuf/metadata"), repo.join("tuf/targets"), old.join("tuf/metadata/1.root.json"));
        let trusted = trusted.join("tuf/metadata");
        let args: [&Path; 8] = [
            &meta,
            &targets,
            Path::new("--root"),
            &root,
            Path::new("--trusted-metadata"),
            &trusted,
            Path::new("--reference-time"),
            Path::new(now),
        ];
        interop_py("verify_tuf.py", &args)
    };
    // The new mirror, for a client that trusted the old one: an update (versions 2).
    let o = tuf(&new, &old);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("root v{root} ")), "{}", text(&o));
    assert!(text(&o).contains("timestamp v2, snapshot v2, targets v2"), "{}", text(&o));
    // The old mirror served to a client that has seen the new one: a rollback (after a
    // renewal, the old mirror's only root has expired, which the client sees first).
    let o = tuf(&old, &new);
    assert!(!o.status.success(), "a rollback passed: {}", text(&o));
    let why = if root == 1 { "must be >= 2" } else { "Final root.json is expired" };
    assert!(text(&o).contains(why), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_and_python_cryptography_open_what_we_seal_and_we_open_theirs() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let id_file = tmp.path().join("id.txt");
    let o = Command::new("age-keygen").arg("-o").arg(&id_file).output().expect("age-keygen missing");
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("age-keygen").arg("-y").arg(&id_file).output().unwrap();
    let recipient = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let out = tmp.path().join("m");
    let req = RunRequest::builder("mirror:full")
        .created_at(Timestamp::parse("2025-06-01T00:00:00Z").unwrap())
        .encryption(exportcore::Encryption::new(&recipient))
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    RunBuilder::new(
        exportcore_mirror::MirrorFull::default(),
        DirEvidence::new(samples()).unwrap(),
        FsSink::new(&out).unwrap(),
    )
    .signer(Arc::clone(&k.signer))
    .execute(req)
    .await
    .unwrap();
    let export: Value = serde_json::from_slice(&std::fs::read(out.join("mirror/export.json")).unwrap()).unwrap();
    let enc = &export["encryption"];
    // The age CLI unwraps the data key we wrapped.
    use base64::Engine as _;
    let wrapped =
        base64::engine::general_purpose::STANDARD.decode(enc["recipients"][0]["wrappedKey"].as_str().unwrap()).unwrap();
    std::fs::write(tmp.path().join("key.age"), wrapped).unwrap();
    let key_file = tmp.path().join("key.bin");
    let o = Command::new("age")
        .arg("--decrypt")
        .arg("-i")
        .arg(&id_file)
        .arg("-o")
        .arg(&key_file)
        .arg(tmp.path().join("key.age"))
        .output()
        .unwrap();
    assert!(o.status.success(), "age: {}", text(&o));
    let key = std::fs::read(&key_file).unwrap();
    assert_eq!(key.len(), 32);
    // Python's cryptography opens one sealed file with the recorded associated data; the
    // plaintext is what our decrypt gives.
    let identities = exportcore_mirror::encryption::read_identities(&id_file).unwrap();
    let plain = tmp.path().join("plain");
    exportcore_mirror::encryption::decrypt(&out, &identities, &plain, &Default::default()).unwrap();
    let rel = "data/raw/advisories/pypi.jsonl.zst";
    let aad = format!("{}:{rel}", enc["runId"].as_str().unwrap());
    let script = r#"
import sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = open(sys.argv[1], "rb").read()
mode, aad = sys.argv[2], sys.argv[3].encode()
src, dst = sys.argv[4], sys.argv[5]
data = open(src, "rb").read()
if mode == "open":
    out = AESGCM(key).decrypt(data[:12], data[12:], aad)
else:
    import os
    nonce = os.urandom(12)
    out = nonce + AESGCM(key).encrypt(nonce, data, aad)
open(dst, "wb").write(out)
"#;
    let py = |mode: &str, src: &Path, dst: &Path| {
        let o = Command::new(common::interop_python())
            .arg("-c")
            .arg(script)
            .arg(&key_file)
            .arg(mode)
            .arg(&aad)
            .arg(src)
            .arg(dst)
            .output()
            .unwrap();
        assert!(o.status.success(), "python {mode}: {}", text(&o));
    };
    let opened = tmp.path().join("opened");
    py("open", &out.join("mirror").join(rel), &opened);
    assert_eq!(std::fs::read(&opened).unwrap(), std::fs::read(plain.join(rel)).unwrap());
    // And we open what Python sealed.
    let sealed = tmp.path().join("sealed");
    py("seal", &plain.join(rel), &sealed);
    let mut key32 = [0u8; 32];
    key32.copy_from_slice(&key);
    let ours =
        exportcore_mirror::encryption::open_file(&key32, aad.as_bytes(), &std::fs::read(&sealed).unwrap()).unwrap();
    assert_eq!(ours, std::fs::read(plain.join(rel)).unwrap());
    assert!(exportcore_mirror::encryption::open_file(&key32, b"other:aad", &std::fs::read(&sealed).unwrap()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tuf_accepts_separate_role_keys_and_thresholds() {
    use exportcore_mirror::{Role, TufOptions};
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run_key = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "run");
    let t1 = keys(exportcore_crypto::Algorithm::EcdsaP256, tmp.path(), "t1");
    let t2 = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "t2");
    let s1 = keys(exportcore_crypto::Algorithm::EcdsaP256, tmp.path(), "s1");
    let tuf = TufOptions::default()
        .role_keys(Role::Timestamp, vec![Arc::clone(&t1.signer), Arc::clone(&t2.signer)], 2)
        .role_keys(Role::Snapshot, vec![Arc::clone(&s1.signer)], 1);
    let out = tmp.path().join("m");
    let req = RunRequest::builder("mirror:full")
        .created_at(Timestamp::parse("2025-06-01T00:00:00Z").unwrap())
        .distribution(exportcore::Distribution::new(exportcore::DistributionType::Filesystem, None).signed("k"))
        .build()
        .unwrap();
    RunBuilder::new(
        exportcore_mirror::MirrorFull::default().tuf(tuf),
        DirEvidence::new(samples()).unwrap(),
        FsSink::new(&out).unwrap(),
    )
    .signer(Arc::clone(&run_key.signer))
    .execute(req)
    .await
    .unwrap();
    let o = python_tuf(&out, "2025-06-02T00:00:00Z");
    assert!(o.status.success(), "{}", text(&o));
    // Below the timestamp threshold, python-tuf refuses too.
    let path = out.join("tuf/metadata/timestamp.json");
    let mut ts: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    ts["signatures"].as_array_mut().unwrap().pop();
    std::fs::write(&path, serde_json::to_vec(&ts).unwrap()).unwrap();
    let o = python_tuf(&out, "2025-06-02T00:00:00Z");
    assert!(!o.status.success() && text(&o).contains("1/2"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_push_of_a_mirror_gives_each_image_its_repository_and_trivy_pulls_both_databases() {
    use exportcore_distribution::{push_oci, OciTarget, PushOptions};
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let out = tmp.path().join("mirror");
    build(&out, Arc::clone(&k.signer)).await;
    let registry = Registry::start();
    let target = OciTarget::parse(&format!("oci://{}/center:2025-06-01", registry.addr()), "t").unwrap();
    let mut options = PushOptions::default();
    options.signer = Some(Arc::clone(&k.signer));
    let pushed = push_oci(&out, &target, None, &options).await.unwrap();
    // Each image of the layout, byte for byte, at HOST/center/<tag>:2025-06-01, signed.
    let index: Value = serde_json::from_slice(&std::fs::read(out.join("oci/index.json")).unwrap()).unwrap();
    let refs: Vec<&str> = pushed.images.iter().map(|i| i.reference.as_str()).collect();
    let want: Vec<String> = ["mirror", "trivy-db", "trivy-java-db"]
        .iter()
        .map(|t| format!("{}/center/{t}:2025-06-01", registry.addr()))
        .collect();
    assert_eq!(refs, want);
    let mut image_blobs = 0;
    for image in &pushed.images {
        let tag = image.reference.rsplit_once("/center/").unwrap().1.split(':').next().unwrap();
        let entry = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap();
        assert_eq!(image.digest, entry["digest"].as_str().unwrap(), "{tag}");
        let o = skopeo(&["inspect", "--tls-verify=false", "--raw", &format!("docker://{}", image.reference)]);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(format!("sha256:{}", sha256_hex(&o.stdout)), image.digest, "{tag}: the registry holds another");
        let manifest: Value = serde_json::from_slice(&o.stdout).unwrap();
        image_blobs += 1 + manifest["layers"].as_array().unwrap().len() as u64;
        assert!(image.signature_tag.is_some(), "{tag} is signed");
    }
    // The images' blobs were mounted from HOST/center, where the whole run went first.
    assert_eq!(pushed.stats.mounted, image_blobs, "{:?}", pushed.stats);
    // Trivy pulls both databases from their repositories and finds what the tarballs find.
    let scan = |args: &[String], cache: &Path| common::trivy_rootfs_findings(cache, args);
    let remote = scan(
        &[
            "--db-repository".into(),
            format!("{}/center/trivy-db:2025-06-01", registry.addr()),
            "--java-db-repository".into(),
            format!("{}/center/trivy-java-db:2025-06-01", registry.addr()),
        ],
        &tmp.path().join("remote-cache"),
    );
    let local = local_findings(&out, &tmp.path().join("local-cache"));
    assert!(!local.is_empty());
    assert_eq!(remote, local);
    // Pushed again: nothing goes up.
    let again = push_oci(&out, &target, None, &PushOptions::default()).await.unwrap();
    assert_eq!(again.stats.uploaded, 0, "{:?}", again.stats);
}

/// The manifest (or index) with digest `digest` in the layout `oci`.
fn layout_doc(oci: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").unwrap();
    serde_json::from_slice(&std::fs::read(oci.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// Every blob reachable from `digest` in the layout `oci`: the index, its parts, configs, layers.
fn reachable(oci: &Path, digest: &str, out: &mut std::collections::BTreeSet<String>) {
    out.insert(digest.to_owned());
    let doc = layout_doc(oci, digest);
    for d in doc["manifests"].as_array().into_iter().flatten() {
        reachable(oci, d["digest"].as_str().unwrap(), out);
    }
    for d in std::iter::once(&doc["config"]).chain(doc["layers"].as_array().into_iter().flatten()) {
        if let Some(d) = d["digest"].as_str() {
            out.insert(d.to_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_in_part_manifests_goes_through_skopeo_and_our_push_whole() {
    use exportcore_distribution::{push_oci, OciTarget, PushOptions};
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(exportcore_crypto::Algorithm::Ed25519, tmp.path(), "k");
    let out = tmp.path().join("m");
    build_with(exportcore_mirror::MirrorFull::default().oci_max_layers(4), &out, Arc::clone(&k.signer)).await;
    let oci = out.join("oci");
    let o = interop_py("verify_oci_layout.py", &[&oci, Path::new("--strict-orphans")]);
    assert!(o.status.success() && text(&o).contains(" 1 nested index(es)"), "{}", text(&o));
    let index: Value = serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "mirror")
        .unwrap();
    let want = entry["digest"].as_str().unwrap().to_owned();
    let parts: Vec<String> = layout_doc(&oci, &want)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["digest"].as_str().unwrap().to_owned())
        .collect();
    assert!(parts.len() > 1);

    // skopeo copies the index and every part to a registry and back, digests unchanged.
    let registry = Registry::start();
    let dst = format!("docker://{}/mirror:parts", registry.addr());
    let o = skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:mirror", oci.display()),
        &dst,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = skopeo(&["inspect", "--tls-verify=false", "--raw", &dst]);
    assert_eq!(
        format!("sha256:{}", sha256_hex(&o.stdout)),
        want,
        "the registry holds another index: {}\nnot {}",
        text(&o),
        String::from_utf8_lossy(&std::fs::read(oci.join("blobs/sha256").join(&want[7..])).unwrap())
    );
    for part in &parts {
        let at = format!("docker://{}/mirror@{part}", registry.addr());
        let o = skopeo(&["inspect", "--tls-verify=false", "--raw", &at]);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(&format!("sha256:{}", sha256_hex(&o.stdout)), part);
    }
    let back = tmp.path().join("back");
    let o = skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &dst,
        &format!("oci:{}:mirror", back.display()),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mut sent = std::collections::BTreeSet::new();
    reachable(&oci, &want, &mut sent);
    let mut got = std::collections::BTreeSet::new();
    reachable(&back, &want, &mut got);
    assert_eq!(got, sent, "pulled back, the image has other blobs");
    for d in &got {
        let hex = d.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(back.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(&format!("sha256:{}", sha256_hex(&bytes)), d);
    }

    // Our push: the run as an index of part manifests of at most 8 layers, the mirror image
    // as the layout's index; skopeo then pulls both whole from the registry.
    let target = OciTarget::parse(&format!("oci://{}/center:parts", registry.addr()), "t").unwrap();
    let mut options = PushOptions::default();
    options.signer = Some(Arc::clone(&k.signer));
    options.max_layers_per_manifest = Some(8);
    let pushed = push_oci(&out, &target, None, &options).await.unwrap();
    let o = skopeo(&["inspect", "--tls-verify=false", "--raw", &format!("docker://{}", pushed.reference)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(format!("sha256:{}", sha256_hex(&o.stdout)), pushed.digest);
    let run_index: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(run_index["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(run_index["artifactType"], exportcore_distribution::RUN_ARTIFACT_TYPE);
    let mut titles = Vec::new();
    for part in run_index["manifests"].as_array().unwrap() {
        let at = format!("docker://{}/center@{}", registry.addr(), part["digest"].as_str().unwrap());
        let o = skopeo(&["inspect", "--tls-verify=false", "--raw", &at]);
        let m: Value = serde_json::from_slice(&o.stdout).unwrap();
        let layers = m["layers"].as_array().unwrap();
        assert!((1..=8).contains(&layers.len()), "{}", layers.len());
        titles.extend(
            layers.iter().map(|l| l["annotations"]["org.opencontainers.image.title"].as_str().unwrap().to_owned()),
        );
    }
    let manifest = exportcore::Manifest::parse(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let mut files: Vec<String> = manifest.entries.iter().map(|e| e.path.to_string()).collect();
    files.extend(["manifest.json", "manifest.dsse.json", "provenance.dsse.json"].map(String::from));
    files.sort();
    titles.sort();
    assert_eq!(titles, files, "the parts list every file of the run once");
    let image = pushed.images.iter().find(|i| i.reference.contains("/center/mirror:")).unwrap();
    assert_eq!(image.digest, want);
    assert!(image.signature_tag.is_some());
    for (from, name) in [(pushed.reference.clone(), "run"), (image.reference.clone(), "image")] {
        let to = tmp.path().join(format!("pulled-{name}"));
        let o = skopeo(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{from}"),
            &format!("oci:{}:x", to.display()),
        ]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let o = interop_py("verify_oci_layout.py", &[&to, Path::new("--strict-orphans")]);
        assert!(o.status.success(), "{name}: {}", text(&o));
    }
}
