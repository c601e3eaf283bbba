//! The bundle's `manifest.dsse.json` checked by a third-party DSSE verifier
//! (`tests/interop/verify_dsse.py`: `cryptography` plus a securesystemslib cross-check),
//! run with the interop venv's python. A missing venv fails the test loudly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use exportcore_crypto::Algorithm;
use exportcore_devportal::PAYLOAD_TYPE;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn verify_dsse(envelope: &Path, key: &Path) -> Output {
    let script = interop_dir().join("verify_dsse.py");
    assert!(script.exists(), "{} is missing", script.display());
    Command::new(interop_python())
        .arg(script)
        .arg(envelope)
        .arg(key)
        .args(["--payload-type", PAYLOAD_TYPE])
        .output()
        .unwrap()
}

#[test]
fn bundle_signature_verifies_with_verify_dsse_py() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for alg in [Algorithm::Ed25519, Algorithm::EcdsaP256] {
        let k = keys(alg, tmp.path(), &format!("{alg:?}"));
        let wrong = keys(alg, tmp.path(), &format!("{alg:?}-wrong"));
        let tgz = build_samples(&tmp.path().join(format!("out-{alg:?}")), Some(k.signer.clone()));
        let dir = tmp.path().join(format!("x-{alg:?}"));
        extract(&tgz, &dir);
        let env_path = dir.join("manifest.dsse.json");
        let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
        let root = exportcore::Sha256Digest::of(&manifest).to_hex();

        let o = verify_dsse(&env_path, &k.public_pem);
        let t = text(&o);
        assert!(o.status.success(), "{alg:?}: {t}");
        assert!(t.contains("securesystemslib cross-check: ok"), "{alg:?}: {t}");
        assert!(!t.contains("RAW r||s"), "P-256 signatures must be DER: {t}");
        // The signed payload is manifest.json: its sha256 is the bundle's root.
        assert!(t.contains(&format!("payload sha256={root}")), "{alg:?}: {t}");
        let env: Value = serde_json::from_slice(&std::fs::read(&env_path).unwrap()).unwrap();
        assert_eq!(STANDARD.decode(env["payload"].as_str().unwrap()).unwrap(), manifest);
        assert_eq!(env["signatures"][0]["keyid"], k.signer.key_id());

        // A wrong key, a tampered payload, a truncated signature.
        let o = verify_dsse(&env_path, &wrong.public_pem);
        assert!(!o.status.success(), "{alg:?} wrong key accepted: {}", text(&o));
        let mut payload = manifest.clone();
        payload[20] ^= 1;
        let mut t1 = env.clone();
        t1["payload"] = Value::String(STANDARD.encode(&payload));
        let mut t2 = env.clone();
        let sig = STANDARD.decode(env["signatures"][0]["sig"].as_str().unwrap()).unwrap();
        t2["signatures"][0]["sig"] = Value::String(STANDARD.encode(&sig[..sig.len() - 4]));
        for (what, bad) in [("tampered payload", t1), ("truncated signature", t2)] {
            let p = tmp.path().join("bad.json");
            std::fs::write(&p, bad.to_string()).unwrap();
            let o = verify_dsse(&p, &k.public_pem);
            assert!(!o.status.success(), "{alg:?} {what} accepted: {}", text(&o));
            assert!(text(&o).contains("FAIL"), "{}", text(&o));
        }
    }
}
