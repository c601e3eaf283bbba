//! Our signatures checked by third-party verifiers (`tests/interop/`): DSSE envelopes by
//! `verify_dsse.py` (cryptography + securesystemslib), provenance by `verify_intoto.py`
//! (in-toto), SM2/SM3 by OpenSSL (`verify_sm2.sh`). Each also fails on a tampered payload, a
//! wrong key and a truncated signature. The tools are installed by `scripts/test-all`; a
//! missing tool fails these tests loudly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use exportcore_crypto::Algorithm;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn envelope(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn write_json(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

/// Variants of an envelope: tampered payload, truncated signature.
fn tampered(dir: &Path, env: &Value, tag: &str) -> Vec<(String, PathBuf)> {
    let mut payload = STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
    payload[10] ^= 0x01;
    let mut t = env.clone();
    t["payload"] = Value::String(STANDARD.encode(&payload));
    let mut trunc = env.clone();
    let sig = STANDARD.decode(env["signatures"][0]["sig"].as_str().unwrap()).unwrap();
    trunc["signatures"][0]["sig"] = Value::String(STANDARD.encode(&sig[..sig.len() - 4]));
    vec![
        ("tampered payload".into(), write_json(dir, &format!("{tag}-payload.json"), &t)),
        ("truncated signature".into(), write_json(dir, &format!("{tag}-trunc.json"), &trunc)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsse_envelopes_verify_with_verify_dsse_py() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (i, alg) in [Algorithm::Ed25519, Algorithm::EcdsaP256].into_iter().enumerate() {
        let k = keys(alg, tmp.path(), &format!("k{i}"));
        let wrong = keys(alg, tmp.path(), &format!("wrong{i}"));
        let out = tmp.path().join(format!("out{i}"));
        signed_run(&out, k.signer.clone(), "json:policy").await;
        for (file, ptype) in [
            ("manifest.dsse.json", "application/vnd.exportcore.manifest+json"),
            ("provenance.dsse.json", "application/vnd.in-toto+json"),
        ] {
            let env_path = out.join(file);
            let ok = Command::new(interop_python())
                .arg(interop_dir().join("verify_dsse.py"))
                .arg(&env_path)
                .arg(&k.public_pem)
                .args(["--payload-type", ptype])
                .output()
                .unwrap();
            let t = text(&ok);
            assert!(ok.status.success(), "{alg:?} {file}: {t}");
            assert!(t.contains("securesystemslib cross-check: ok"), "{alg:?} {file}: {t}");
            assert!(!t.contains("RAW r||s"), "P-256 signatures must be DER: {t}");
            let o = interop_py("verify_dsse.py", &[&env_path, &wrong.public_pem]);
            assert!(!o.status.success(), "{alg:?} {file} wrong key accepted: {}", text(&o));
            for (what, bad) in tampered(tmp.path(), &envelope(&env_path), &format!("{i}-{file}")) {
                let o = interop_py("verify_dsse.py", &[&bad, &k.public_pem]);
                assert!(!o.status.success(), "{alg:?} {file} {what} accepted: {}", text(&o));
                assert!(text(&o).contains("FAIL"), "{}", text(&o));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provenance_verifies_with_in_toto() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(Algorithm::Ed25519, tmp.path(), "k");
    let wrong = keys(Algorithm::Ed25519, tmp.path(), "wrong");
    let out = tmp.path().join("out");
    signed_run(&out, k.signer.clone(), "json:policy").await;
    let prov = out.join("provenance.dsse.json");
    let bundle = out.join("json-policy.tar.zst");
    let manifest = out.join("manifest.json");
    let o = interop_py("verify_intoto.py", &[&prov, &k.public_pem, &bundle, &manifest]);
    assert!(o.status.success(), "{}", text(&o));
    let st: Value = {
        let env = envelope(&prov);
        serde_json::from_slice(&STANDARD.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap()
    };
    let deps = st["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    let evidence_files = 75 + 4 + 1; // advisories, VEX documents, the findings file
    assert_eq!(deps.len(), evidence_files, "every evidence file read is a dependency");
    assert!(st["predicate"]["runDetails"]["metadata"]["invocationId"]
        .as_str()
        .unwrap()
        .starts_with("export-run::tenant-a::"));
    assert_eq!(st["predicate"]["runDetails"]["metadata"]["startedOn"], "2025-01-01T00:00:00Z");
    // Wrong key, tampered statement, truncated signature.
    let o = interop_py("verify_intoto.py", &[&prov, &wrong.public_pem, &bundle, &manifest]);
    assert!(!o.status.success(), "{}", text(&o));
    for (what, bad) in tampered(tmp.path(), &envelope(&prov), "prov") {
        let o = interop_py("verify_intoto.py", &[&bad, &k.public_pem, &bundle, &manifest]);
        assert!(!o.status.success(), "{what} accepted: {}", text(&o));
    }
    // A changed artifact no longer matches its subject.
    let copy = tmp.path().join("json-policy.tar.zst");
    let mut bytes = std::fs::read(&bundle).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&copy, bytes).unwrap();
    let o = interop_py("verify_intoto.py", &[&prov, &k.public_pem, &copy, &manifest]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("json-policy.tar.zst"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sm2_signatures_verify_with_openssl() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(Algorithm::Sm2, tmp.path(), "sm2");
    let wrong = keys(Algorithm::Sm2, tmp.path(), "sm2-wrong");
    let out = tmp.path().join("out");
    signed_run(&out, k.signer.clone(), "json:raw").await;
    let env = envelope(&out.join("manifest.dsse.json"));
    let payload = STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload, std::fs::read(out.join("manifest.json")).unwrap());
    let pae = exportcore::sign::dsse::pae(env["payloadType"].as_str().unwrap(), &payload);
    let sig = STANDARD.decode(env["signatures"][0]["sig"].as_str().unwrap()).unwrap();
    let (pae_file, sig_file) = (tmp.path().join("pae.bin"), tmp.path().join("sig.der"));
    std::fs::write(&pae_file, &pae).unwrap();
    std::fs::write(&sig_file, &sig).unwrap();
    let sm2 = |file: &Path, sig: &Path, key: &Path| {
        Command::new("bash").arg(interop_dir().join("verify_sm2.sh")).arg(file).arg(sig).arg(key).output().unwrap()
    };
    let o = sm2(&pae_file, &sig_file, &k.public_pem);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("OK: SM2/SM3 signature verified"), "{}", text(&o));
    assert!(!text(&o).contains("WARNING"), "signature must be DER: {}", text(&o));
    // Wrong key.
    assert!(!sm2(&pae_file, &sig_file, &wrong.public_pem).status.success());
    // Tampered payload.
    let mut bad = pae;
    let last = bad.len() - 2;
    bad[last] ^= 0x01;
    let bad_file = tmp.path().join("bad.bin");
    std::fs::write(&bad_file, bad).unwrap();
    assert!(!sm2(&bad_file, &sig_file, &k.public_pem).status.success());
    // Truncated signature.
    let trunc = tmp.path().join("trunc.der");
    std::fs::write(&trunc, &sig[..sig.len() - 5]).unwrap();
    assert!(!sm2(&pae_file, &trunc, &k.public_pem).status.success());
    // And OpenSSL reads our SM2 public key as an SM2 key.
    let o =
        Command::new("openssl").args(["pkey", "-pubin", "-noout", "-text", "-in"]).arg(&k.public_pem).output().unwrap();
    assert!(text(&o).contains("SM2"), "{}", text(&o));
}

#[test]
fn openssl_generated_keys_load_and_openssl_verifies_our_signatures() {
    if !interop_enabled() {
        return;
    }
    // Keys made by openssl genpkey load as signers, and their signatures verify with openssl.
    let tmp = tempfile::tempdir().unwrap();
    for (alg, args) in [
        ("ed25519", vec!["-algorithm", "ed25519"]),
        ("p256", vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("sm2", vec!["-algorithm", "SM2"]),
    ] {
        let key = tmp.path().join(format!("{alg}.key"));
        let st = Command::new("openssl").arg("genpkey").args(&args).arg("-out").arg(&key).status().unwrap();
        assert!(st.success(), "openssl genpkey {alg}");
        let pub_path = tmp.path().join(format!("{alg}.pub"));
        assert!(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&pub_path)
            .status()
            .unwrap()
            .success());
        let signer = exportcore_crypto::signer_from_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();
        let verifier = exportcore_crypto::verifier_from_pem(&std::fs::read_to_string(&pub_path).unwrap()).unwrap();
        assert_eq!(signer.key_id(), verifier.key_id(), "{alg}");
        let sig = signer.sign(b"hello").unwrap();
        verifier.verify(b"hello", &sig).unwrap();
        let msg = tmp.path().join("msg");
        std::fs::write(&msg, b"hello").unwrap();
        let sig_file = tmp.path().join(format!("{alg}.sig"));
        std::fs::write(&sig_file, &sig).unwrap();
        let mut cmd = Command::new("openssl");
        cmd.args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(&pub_path)
            .arg("-in")
            .arg(&msg)
            .arg("-sigfile")
            .arg(&sig_file);
        match alg {
            "ed25519" => {
                cmd.arg("-rawin");
            }
            "p256" => {
                cmd.args(["-rawin", "-digest", "sha256"]);
            }
            _ => {
                cmd.args(["-rawin", "-digest", "sm3", "-pkeyopt", "distid:1234567812345678"]);
            }
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "openssl verify {alg}: {}", text(&o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_and_python_walkthrough_verifies_signed_runs() {
    if !interop_enabled() {
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/verify-signed-run.sh");
    let tmp = tempfile::tempdir().unwrap();
    let walk = |out: &Path, key: &Path| Command::new("sh").arg(&script).arg(out).arg(key).output().unwrap();
    for (i, alg) in [Algorithm::Ed25519, Algorithm::EcdsaP256, Algorithm::Sm2].into_iter().enumerate() {
        let k = keys(alg, tmp.path(), &format!("k{i}"));
        let out = tmp.path().join(format!("out{i}"));
        signed_run(&out, k.signer.clone(), "json:policy").await;
        let o = walk(&out, &k.public_pem);
        assert!(o.status.success(), "{alg:?}: {}", text(&o));
        let wrong = keys(alg, tmp.path(), &format!("w{i}"));
        assert!(!walk(&out, &wrong.public_pem).status.success(), "{alg:?} wrong key");
        let bundle = out.join("json-policy.tar.zst");
        let mut bytes = std::fs::read(&bundle).unwrap();
        bytes[50] ^= 0x01;
        std::fs::write(&bundle, bytes).unwrap();
        let o = walk(&out, &k.public_pem);
        assert!(!o.status.success(), "{alg:?} tampered bundle accepted");
        assert!(text(&o).contains("FAIL"), "{}", text(&o));
    }
}
